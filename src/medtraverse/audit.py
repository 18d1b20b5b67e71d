"""``medtraverse audit RESULTS_DIR [--configfile FILE] [--prune]``: can these numbers be trusted?

Compares what is on disk under a run folder with what the current config's DAG would make:

- **orphan**: a file or folder no job of the current DAG writes (shard 0001 after shrinking
  ``traverse.seeds.count``, a trajectory or classifier removed from the config, a decoy score
  file dropped beside the real ones, a half-written temp folder). Stages read only the files
  their rule names, so an orphan never reaches a number; it only misleads a reader of the folder.
- **stale**: an output Snakemake itself would remake (its ``--detailed-summary`` status: params,
  code or the set of input files changed, or an input is newer); Snakemake's metadata decides.
- **provenance**: an artifact whose own record (``provenance.json`` / ``<file>.prov.json``)
  disagrees with the job the current DAG would run: other params than the job's ``--params``,
  inputs the job no longer passes, or an input whose checksum changed since. This holds even
  when Snakemake's metadata is gone (a run folder copied off a cluster).

The DAG comes from Snakemake run as a subprocess (``-n --forceall`` for every job's outputs,
logs, benchmarks and shell command; ``--detailed-summary`` for its own change detection), with
``--nolock``, so a running workflow is not disturbed. ``--prune`` moves orphans into
``<run>/.trash/<timestamp>/`` (same relative paths); it never deletes and never touches a stale
artifact (Snakemake remakes those). Exit status 0 when clean (after pruning, when only orphans
were found), 1 when something is found, 2 on bad input.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medtraverse.core.errors import bad_input

TRASH = ".trash"
# Files a stage writes beside its declared output (not outputs, so Snakemake keeps them across
# reruns): fine-tuning's loss log and validation images go to ``<out>/..`` unless --logs is given.
SIDE_FILES: dict[str, tuple[str, ...]] = {"finetune_unet": ("loss.csv", "validation")}
# ``snakemake --report results/<run>/report.html`` (the Makefile's demo) writes beside the run.
REPORTS = ("report.html", "report.zip")
_JOB_HEADS = ("rule ", "localrule ", "checkpoint ", "localcheckpoint ")
_LIST_KEYS = ("input", "output", "log", "benchmark")


@dataclass
class Job:
    """One job of the dry run: its rule, files and shell command."""

    rule: str
    files: dict[str, list[str]] = field(default_factory=dict)
    shell: str = ""

    def __getitem__(self, key: str) -> list[str]:
        return self.files.get(key, [])


@dataclass(frozen=True)
class Finding:
    kind: str  # orphan | stale | provenance
    path: str  # relative to the working directory
    detail: str


# --------------------------------------------------------------------------------------------
# Snakemake, as a subprocess


def snakemake(workdir: Path, snakefile: Path, configfile: Path | None, *args: str) -> str:
    """Run Snakemake (this interpreter's) on the workflow; its stdout, or one line on failure."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(snakefile), "-d", str(workdir)]
    cmd += ["--nolock", *(["--configfile", str(configfile)] if configfile else []), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        last = next(
            (ln for ln in reversed(lines) if "error" in ln.lower()), lines[-1] if lines else ""
        )
        raise bad_input(
            f"snakemake {' '.join(args)}",
            f"failed ({last})",
            "a config and Snakefile that build a DAG",
        )
    return proc.stdout + proc.stderr


def parse_dry_run(text: str) -> list[Job]:
    """Jobs of ``snakemake -n -p`` output: rule, input/output/log/benchmark lists, shell."""
    jobs: list[Job] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(_JOB_HEADS) and line.rstrip().endswith(":"):
            jobs.append(Job(rule=line.split()[1].rstrip(":")))
        elif jobs and line.startswith("    ") and ":" in line:
            key, _, value = line.strip().partition(": ")
            if key in _LIST_KEYS:
                jobs[-1].files[key] = [v.strip() for v in value.split(", ") if v.strip()]
        elif jobs and line.startswith("Shell command:"):
            jobs[-1].shell = line.split(":", 1)[1].strip()
        elif jobs and line.strip() == "shell:" and i + 1 < len(lines):
            jobs[-1].shell = lines[i + 1].strip()
    return jobs


def parse_summary(text: str) -> dict[str, tuple[str, str]]:
    """``--detailed-summary`` rows: output path -> (status, rule)."""
    out: dict[str, tuple[str, str]] = {}
    rows = [ln.split("\t") for ln in text.splitlines() if "\t" in ln]
    if not rows or rows[0][0] != "output_file":
        return out
    head = rows[0]
    for row in rows[1:]:
        if len(row) == len(head):
            rec = dict(zip(head, row, strict=True))
            out[rec["output_file"]] = (rec["status"], rec["rule"])
    return out


# --------------------------------------------------------------------------------------------
# what is on disk, what the DAG makes


def _rel(path: str | Path, workdir: Path) -> str:
    """A path as the workflow writes it: relative to the working directory, normalised."""
    p = Path(path)
    if p.is_absolute():
        try:
            p = p.relative_to(workdir)
        except ValueError:
            return os.path.normpath(str(p))
    return os.path.normpath(str(p))


def _record_of(path: str) -> str:
    return f"{path}.prov.json"


def _shell_paths(shell: str, run_rel: str) -> list[str]:
    """Paths under the run folder named in a shell command (a stage's side folders, such as
    fine-tuning's ``--checkpoints``, kept out of ``output:`` so reruns resume from them)."""
    try:
        words = shlex.split(shell)
    except ValueError:
        return []
    return [w for w in words if os.path.normpath(w).startswith(run_rel + os.sep)]


def expected_paths(jobs: list[Job], workdir: Path, run_rel: str) -> tuple[set[str], set[str]]:
    """(files, folders) the DAG writes: outputs (folders keep everything inside them), their
    provenance records, logs, benchmarks and the side files and folders the jobs name."""
    files: set[str] = set()
    folders: set[str] = set()

    def add(rel: str) -> None:
        if (workdir / rel).is_dir():
            folders.add(rel)
        else:
            files.update((rel, _record_of(rel)))

    for job in jobs:
        for out in job["output"]:
            rel = _rel(out, workdir)
            add(rel)
            for name in SIDE_FILES.get(job.rule, ()):
                add(os.path.join(os.path.dirname(rel), name))
        files.update(_rel(p, workdir) for p in job["log"] + job["benchmark"])
        for path in _shell_paths(job.shell, run_rel):
            add(_rel(path, workdir))
    return files, folders


def _inside(rel: str, folders: set[str]) -> bool:
    parts = Path(rel).parts
    return any(os.path.join(*parts[:i]) in folders for i in range(1, len(parts)))


def _scratch(rel: str, owned: set[str]) -> bool:
    """Inside a job's scratch space: a shard's resume folder ``<out>.partial/`` or an atomic
    write's ``.<out>.<random>.tmp`` (a running job's, or a killed one's the rerun clears)."""
    for q in [Path(rel), *Path(rel).parents]:
        name, parent = q.name, str(q.parent)
        if name.endswith(".partial") and os.path.join(parent, name[: -len(".partial")]) in owned:
            return True
        if name.startswith(".") and name.endswith(".tmp"):
            base = name[1 : -len(".tmp")].rsplit(".", 1)[0]
            if os.path.join(parent, base) in owned:
                return True
    return False


def find_orphans(run: Path, workdir: Path, files: set[str], folders: set[str]) -> list[str]:
    """Paths under ``run`` that no job writes, collapsed to the topmost wholly orphan folder."""
    orphan_files, kept_dirs = [], set()
    owned = files | folders
    for root, dirs, names in os.walk(run):
        rel_root = _rel(root, workdir)
        if rel_root in folders:  # a directory output: everything inside is the job's
            dirs[:] = []
            kept_dirs.add(rel_root)
            continue
        if Path(root) == run:
            dirs[:] = [d for d in dirs if d != TRASH]
        for name in names:
            rel = os.path.join(rel_root, name)
            if rel in files or (Path(root) == run and name in REPORTS):
                kept_dirs.add(rel_root)
            elif not _inside(rel, folders) and not _scratch(rel, owned):
                orphan_files.append(rel)
    # every ancestor of something kept must stay; an orphan folder is one holding nothing kept
    keep = {str(p) for d in kept_dirs for p in [Path(d), *Path(d).parents]}
    keep |= {str(p) for f in folders for p in [Path(f), *Path(f).parents]}
    run_rel = _rel(run, workdir)
    out: set[str] = set()
    for rel in orphan_files:
        top = rel
        for parent in Path(rel).parents:
            if str(parent) in keep or str(parent) == run_rel or str(parent) == ".":
                break
            top = str(parent)
        out.add(top)
    # empty folders nobody writes are left alone: they hold no number
    return sorted(out)


# --------------------------------------------------------------------------------------------
# provenance records against the current jobs


def _params_of(shell: str) -> Any:
    """The JSON after ``--params`` in a job's shell command (None when there is none)."""
    try:
        words = shlex.split(shell)
    except ValueError:
        return None
    for i, word in enumerate(words[:-1]):
        if word == "--params" and not words[i + 1].startswith("@"):
            try:
                return json.loads(words[i + 1])
            except json.JSONDecodeError:
                return None
    return None


def _agrees(recorded: Any, current: Any) -> bool:
    """The record holds every value the job passes (a stage may record defaults it filled in)."""
    if isinstance(current, dict) and isinstance(recorded, dict):
        return all(k in recorded and _agrees(recorded[k], v) for k, v in current.items())
    return recorded == current


def check_record(job: Job, output: str, workdir: Path) -> list[Finding]:
    """Where an artifact's provenance record disagrees with the job the DAG would run now."""
    from medtraverse.core.provenance import describe_input, record_path

    rec_path = record_path(workdir / output)
    if not rec_path.is_file():
        return []
    try:
        rec = json.loads(rec_path.read_text())
        if not isinstance(rec, dict):
            raise ValueError
    except (OSError, ValueError):
        return [Finding("provenance", output, f"record {rec_path.name} cannot be read")]
    found: list[Finding] = []
    current = _params_of(job.shell)
    if current is not None and not _agrees(rec.get("params"), current):
        keys = sorted(
            k
            for k in set(current) | set(rec.get("params") or {})
            if not _agrees((rec.get("params") or {}).get(k), current.get(k))
        )
        found.append(Finding("provenance", output, f"params differ: {', '.join(keys)}"))
    job_inputs = {_rel(p, workdir) for p in job["input"]}
    not_passed, changed = [], []
    for entry in rec.get("inputs", []):
        path = _rel(entry.get("path", ""), workdir)
        if path not in job_inputs and not _inside(path, job_inputs):
            not_passed.append(path)
            continue
        if "sha256" in entry:
            now = describe_input(workdir / path)
            if now.get("sha256") != entry["sha256"]:
                changed.append(path)
    if not_passed:
        found.append(
            Finding(
                "provenance", output, f"read inputs the DAG no longer passes: {_few(not_passed)}"
            )
        )
    if changed:
        found.append(Finding("provenance", output, f"inputs changed since: {_few(changed)}"))
    return found


def _few(paths: list[str], n: int = 3) -> str:
    more = f" (+{len(paths) - n} more)" if len(paths) > n else ""
    return ", ".join(paths[:n]) + more


# --------------------------------------------------------------------------------------------
# the stage


def audit(
    run: str | Path,
    configfile: str | Path | None = None,
    workdir: str | Path | None = None,
    snakefile: str | Path | None = None,
) -> list[Finding]:
    """Every orphan, stale output and provenance disagreement under the run folder ``run``."""
    workdir = Path(workdir or Path.cwd()).resolve()
    snakefile = Path(snakefile).resolve() if snakefile else workdir / "Snakefile"
    run_path = Path(run) if Path(run).is_absolute() else Path.cwd() / run
    if not run_path.is_dir():
        raise bad_input(run, "not a folder", "a run folder such as results/<run>")
    if not snakefile.is_file():
        raise bad_input(snakefile, "not found", "the workflow's Snakefile (--snakefile)")
    config = Path(configfile).resolve() if configfile else None
    if config is not None and not config.is_file():
        raise bad_input(configfile, "not found", "the config file of the run (--configfile)")
    jobs = parse_dry_run(
        snakemake(workdir, snakefile, config, "-n", "--forceall", "-p", "--rerun-incomplete")
    )
    run_rel = _rel(run_path.resolve(), workdir)
    outputs = {_rel(o, workdir): job for job in jobs for o in job["output"]}
    if not any(o == run_rel or o.startswith(run_rel + os.sep) for o in outputs):
        raise bad_input(
            run,
            "holds none of the current DAG's outputs",
            "the run folder of this config (results/<run>) and its --configfile",
        )
    files, folders = expected_paths(jobs, workdir, run_rel)
    findings = [
        Finding("orphan", p, "folder" if (workdir / p).is_dir() else "file")
        for p in find_orphans(run_path.resolve(), workdir, files, folders)
    ]
    summary = parse_summary(snakemake(workdir, snakefile, config, "-n", "--detailed-summary"))
    for out, job in sorted(outputs.items()):
        if not out.startswith(run_rel + os.sep) or not (workdir / out).exists():
            continue
        status, _ = summary.get(out, ("ok", job.rule))
        if status not in ("ok", "missing"):
            findings.append(Finding("stale", out, f"snakemake: {status}"))
        findings += check_record(job, out, workdir)
    return findings


def prune(findings: list[Finding], run: Path, workdir: Path) -> list[tuple[str, Path]]:
    """Move the orphans into ``<run>/.trash/<timestamp>/`` (same relative paths); nothing is
    deleted. Returns (orphan, where it went)."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    trash = run / TRASH / stamp
    moved = []
    for f in findings:
        if f.kind != "orphan":
            continue
        src = workdir / f.path
        dest = trash / Path(os.path.relpath(src, run))
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(src), str(dest))
        moved.append((f.path, dest))
    return moved


def table(findings: list[Finding]) -> str:
    """The findings as an aligned text table."""
    rows = [("finding", "path", "detail")] + [(f.kind, f.path, f.detail) for f in findings]
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    lines = [f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]}" for r in rows]
    lines.insert(1, "-" * min(120, max(len(line) for line in lines)))
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=Path, help="the run folder, e.g. results/demo")
    parser.add_argument("--configfile", type=Path, default=None, help="the run's config file")
    parser.add_argument(
        "--directory",
        type=Path,
        default=None,
        help="the workflow's working directory (default: the current one)",
    )
    parser.add_argument(
        "--snakefile", type=Path, default=None, help="default: <directory>/Snakefile"
    )
    parser.add_argument(
        "--prune", action="store_true", help="move orphans into <run>/.trash/<timestamp>/"
    )


def main(args: argparse.Namespace) -> None:
    workdir = Path(args.directory or Path.cwd()).resolve()
    findings = audit(args.run, args.configfile, workdir, args.snakefile)
    if not findings:
        print(f"audit: {args.run}: clean (everything on disk is what the current DAG makes)")
        return
    print(table(findings))
    counts = {k: sum(f.kind == k for f in findings) for k in ("orphan", "stale", "provenance")}
    print("audit: " + ", ".join(f"{n} {k}" for k, n in counts.items() if n))
    if args.prune:
        run = (args.run if args.run.is_absolute() else Path.cwd() / args.run).resolve()
        for path, dest in prune(findings, run, workdir):
            print(f"audit: moved {path} -> {dest}")
        if counts["orphan"] == len(findings):
            return
    sys.exit(1)
