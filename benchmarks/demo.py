"""The demo's cost, stage by stage, beside the machine's own yardstick, in one run.

Machines of one kind differ up to 3x in speed, so a demo time alone says little. This runs
the yardstick (``benchmarks/traverse.py``'s authors path: one stock pipeline call per seed
and per swap step, batch 1, 8 seeds), then the whole demo DAG and its report in a fresh run
folder (one Snakemake start, as ``make demo``), then the yardstick again, and reports the
demo's wall-clock, each rule's time (from Snakemake's ``benchmark:`` files) and the ratio
demo / yardstick that the demo's time target is stated in.
The ratio uses the mean of the two yardsticks: on a shared machine one yardstick alone has
been seen to drift by 40% within the hour, and bracketing the demo shows how much.

    python benchmarks/demo.py                          # config/demo.yaml, 2 cores
    python benchmarks/demo.py --config config/demo-isic.yaml --json isic.json
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def yardstick(tmp: Path) -> float:
    """Seconds of the authors path (batch-1 per-k calls) of benchmarks/traverse.py."""
    out = tmp / "traverse.json"
    script = ROOT / "benchmarks" / "traverse.py"
    cmd = [sys.executable, str(script), "--authors-only", "--json", str(out)]
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return float(json.loads(out.read_text())["runs"]["authors (batch 1)"]["seconds"])


def run_demo(config: Path, run: str, cores: int, tmp: Path) -> tuple[float, Path]:
    """Wall-clock seconds of the demo DAG in a fresh ``results/<run>``, and that folder."""
    cfg = yaml.safe_load(config.read_text())
    cfg["run"] = run
    folder = ROOT / cfg.get("results", "results") / run
    if folder.exists():
        shutil.rmtree(folder)
    copy = tmp / "config.yaml"
    copy.write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = [str(BIN / "snakemake"), "--profile", "profiles/local", "--configfile", str(copy)]
    # as `make demo`: the report in the same start (--report-after-run), so it is timed too
    cmd += ["--cores", str(cores), "--report", str(folder / "report.html"), "--report-after-run"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, env=env)
    return time.perf_counter() - start, folder


def rule_times(folder: Path) -> dict[str, dict[str, float]]:
    """Per rule: jobs, summed and longest job seconds, from the ``benchmarks/<rule>/...tsv``."""
    out: dict[str, dict[str, float]] = defaultdict(lambda: {"jobs": 0, "sum_s": 0.0, "max_s": 0.0})
    for tsv in sorted((folder / "benchmarks").rglob("*.tsv")):
        rule = tsv.relative_to(folder / "benchmarks").parts[0]
        with tsv.open() as fh:
            for row in csv.DictReader(fh, delimiter="\t"):
                seconds = float(row["s"])
                out[rule]["jobs"] += 1
                out[rule]["sum_s"] += seconds
                out[rule]["max_s"] = max(out[rule]["max_s"], seconds)
    return dict(out)


def cfrt_rows(folder: Path) -> list[dict[str, Any]]:
    """The CFRT tables the demo wrote (every dataset), as rows."""
    rows: list[dict[str, Any]] = []
    for table in sorted((folder / "metrics").glob("*/cfrt.csv")):
        with table.open() as fh:
            rows += [{"dataset": table.parent.name, **row} for row in csv.DictReader(fh)]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=ROOT / "config" / "demo.yaml")
    ap.add_argument("--run", default="demo-bench", help="run folder name under results/")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--json", type=Path, help="write the numbers here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        before = yardstick(Path(tmp))
        print(f"yardstick (authors path) before: {before:.1f} s", file=sys.stderr)
        wall, folder = run_demo(args.config, args.run, args.cores, Path(tmp))
        after = yardstick(Path(tmp))
        print(f"yardstick (authors path) after: {after:.1f} s", file=sys.stderr)
    stick = 0.5 * (before + after)
    rules = rule_times(folder)
    report = {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs",
        "config": str(args.config),
        "cores": args.cores,
        "yardstick_s": stick,
        "yardstick_before_after_s": [before, after],
        "demo_wall_s": wall,
        "demo_over_yardstick": wall / stick,
        "rules": rules,
        "cfrt": cfrt_rows(folder),
    }
    print(
        f"\ndemo {wall:.0f} s = {wall / stick:.1f} x yardstick ({stick:.1f} s: the mean of "
        f"{before:.1f} s before and {after:.1f} s after)\n"
    )
    print("| rule | jobs | summed s | longest job s |\n|---|---:|---:|---:|")
    for rule, r in sorted(rules.items(), key=lambda kv: -kv[1]["sum_s"]):
        print(f"| {rule} | {r['jobs']:.0f} | {r['sum_s']:.0f} | {r['max_s']:.0f} |")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
