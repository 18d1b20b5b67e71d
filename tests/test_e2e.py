"""The real workflow on the seconds-scale smoke config: a local run, incremental reruns,
provenance, the report, and (when a local SLURM cluster is up) the same run through SLURM,
bit for bit.

The workflow runs from a copy of the project in a temporary folder, so tests can edit a stage's
source file there without touching the checkout.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from safetensors.torch import load_file

from tests.workflow_utils import BIN, ROOT, copy_project, dry_run, env, run_workflow

pytestmark = pytest.mark.slow
SMOKE = "config/smoke.yaml"
RUN = "results/smoke"


def _plan(workdir: Path, *args: str, config: str = SMOKE) -> dict[str, int]:
    return dry_run(config, workdir, *args, snakefile=workdir / "Snakefile")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke config run to completion once, locally."""
    workdir = copy_project(tmp_path_factory.mktemp("smoke-local"))
    proc = run_workflow(
        workdir, "--profile", "profiles/local", "--configfile", SMOKE, "--cores", "2"
    )
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    return workdir


def test_local_run_writes_every_stage(smoke: Path) -> None:
    run = smoke / RUN
    assert (run / "data/chexpert/prepared/manifest.parquet").is_file()
    assert (run / "models/chexpert/pipeline/model_index.json").is_file()
    assert (run / "models/chexpert/samples.png").is_file()
    shard = run / "traversals/chexpert/support_devices/shard-0000"
    latents = load_file(shard / "latents.safetensors")
    assert set(latents) == {f"{s}/{k}" for s in (0, 1) for k in ["neutral", "k2", "k4", "k6", "k8"]}
    meta = pd.read_parquet(shard / "meta.parquet")
    assert len(meta) == 2 * (1 + 4 + 6)
    scores = pd.read_parquet(run / "scores/chexpert/support_devices/shard-0001.parquet")
    assert {"p_support_devices", "p_pleural_effusion"} <= set(scores.columns)
    config = yaml.safe_load((smoke / SMOKE).read_text())["datasets"]["chexpert"]
    seeds = config["traverse"]["seeds"]["count"]
    cfrt = pd.read_csv(run / "metrics/chexpert/cfrt.csv")
    assert set(cfrt["trajectory"]) == set(config["traverse"]["trajectories"])
    assert set(cfrt["n_seeds"]) == {seeds}, cfrt[["trajectory", "n_seeds"]]
    per_seed = pd.read_parquet(run / "metrics/chexpert/cfrt_per_seed.parquet")
    assert sorted(set(per_seed["seed"])) == list(range(seeds))
    # real images: the configured test images inverted, traversed by every trajectory, scored
    images = config["invert"]["count"]
    real = run / "metrics-real/chexpert"
    real_cfrt = pd.read_csv(real / "cfrt.csv")
    assert set(real_cfrt["trajectory"]) == set(config["traverse"]["trajectories"])
    assert set(real_cfrt["judge"]) == {"classifier", "truth"}
    assert set(real_cfrt["n_images"]) == {images}, real_cfrt[["trajectory", "n_images"]]
    inversion = pd.read_csv(real / "inversion.csv").set_index("method")
    assert {"null_text", "ddim", "vae"} <= set(inversion.index)
    assert (inversion["n_images"] == images).all() and (inversion["mse"] > 0).all()
    identity = pd.read_csv(real / "identity.csv")
    assert {"thorax_width", "midline_x", "body_width"} <= set(identity["factor"])
    real_scores = pd.read_parquet(run / "scores-real/chexpert/support_devices/shard-0000.parquet")
    assert (real_scores["kind"] == "real").sum() == images
    assert (real_scores.loc[real_scores["kind"] == "real", "lpips_real"] == 0).all()
    viewer = (run / "viewer/chexpert.html").read_text()
    assert "data:image/" in viewer and "support_devices" in viewer
    assert not list(run.rglob("*.partial")), "scratch folders must be gone after a complete run"


def test_nothing_to_do_after_a_complete_run(smoke: Path) -> None:
    # dry_run fails unless Snakemake said "Nothing to be done": an unparsed table is not {}
    assert _plan(smoke) == {}


# The smoke config inverts two test images and traverses them: what follows a change upstream.
REAL_EVAL = {"score_real_shard", "aggregate_real", "render_viewer"}
REAL_TRAVERSE = {"traverse_real_shard", *REAL_EVAL}


def _variant(workdir: Path, name: str, change) -> str:
    """A copy of the smoke config with ``change(datasets.chexpert)`` applied; its path."""
    config = yaml.safe_load((workdir / SMOKE).read_text())
    change(config["datasets"]["chexpert"])
    path = workdir / "config" / f"smoke-{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return str(path)


def test_classifier_change_reruns_only_evaluation(smoke: Path) -> None:
    config = _variant(smoke, "lr", lambda d: d["classifiers"]["params"].update(learning_rate=0.05))
    jobs = _plan(smoke, config=config)
    # the real images' scores and metrics, and the viewer, follow; inversion and traversal not
    assert set(jobs) == {"all", "train_classifier", "score_shard", "aggregate_metrics", *REAL_EVAL}
    assert jobs["train_classifier"] == 2 and jobs["score_shard"] == 4
    assert jobs["score_real_shard"] == 2


def test_swap_steps_change_reruns_traversal_not_finetuning(smoke: Path) -> None:
    config = _variant(smoke, "k", lambda d: d["traverse"]["params"].update(swap_steps=[3, 6]))
    jobs = _plan(smoke, config=config)
    # real images are traversed again from the same inversions (not inverted again)
    assert set(jobs) == {
        "all",
        "traverse_shard",
        "score_shard",
        "aggregate_metrics",
        *REAL_TRAVERSE,
    }
    assert jobs["traverse_shard"] == 4 and jobs["traverse_real_shard"] == 2


def test_editing_a_report_module_reruns_only_metrics(smoke: Path) -> None:
    # report/ is imported by aggregation alone (evaluation/metrics.py also runs in scoring and
    # classifier training, so editing it reruns those too: see tests/test_reruns.py)
    module = smoke / "src/medtraverse/report/figures.py"
    assert module.is_file()  # an edit to a missing path would create a file and prove nothing
    module.write_text(module.read_text() + "\n# an edit\n")
    try:
        jobs = _plan(smoke)
    finally:
        module.write_text(module.read_text().removesuffix("\n# an edit\n"))
        stamp = (smoke / "src/medtraverse/core/errors.py").stat().st_mtime
        os.utime(module, (stamp, stamp))
    assert set(jobs) == {"all", "aggregate_metrics", "aggregate_real", "render_viewer"}


def test_new_trajectory_adds_only_its_own_jobs(smoke: Path) -> None:
    cardiomegaly = {
        "neutral": "Normal chest X-ray with no significant findings",
        "attribute": "Chest X-ray showing pleural fluid",  # a new wording, a known target
        "target": "pleural_effusion",
    }
    config = _variant(smoke, "plus", lambda d: d["traverse"]["trajectories"].update(c=cardiomegaly))
    jobs = _plan(smoke, config=config)
    assert set(jobs) == {
        "all",
        "traverse_shard",
        "score_shard",
        "aggregate_metrics",
        *REAL_TRAVERSE,
    }
    assert jobs["traverse_shard"] == 2 and jobs["score_shard"] == 2
    assert jobs["traverse_real_shard"] == 1 and jobs["score_real_shard"] == 1


# Output files that are not artifacts: Snakemake's logs and benchmarks, and the records.
# Job logs and benchmarks, and fine-tuning's resume state (scratch, not a result)
NOT_ARTIFACTS = ("logs/", "benchmarks/", "models/chexpert/checkpoints/")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree_sha(folder: Path) -> str:
    """A folder's checksum as the record format defines it (relative names and file checksums,
    records excluded), computed here from hashlib."""
    digest = hashlib.sha256()
    for item in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = item.relative_to(folder).as_posix()
        if rel != "provenance.json" and not rel.endswith(".prov.json"):
            digest.update(rel.encode() + b"\0" + _sha(item).encode() + b"\n")
    return digest.hexdigest()


def _record_of(path: Path, run: Path) -> Path | None:
    """The record covering ``path``: its own, or that of the nearest recorded folder above."""
    for candidate in [path, *path.parents]:
        if candidate == run.parent:
            return None
        own = candidate / "provenance.json" if candidate.is_dir() else None
        beside = candidate.with_name(candidate.name + ".prov.json")
        for rec in (own, beside):
            if rec is not None and rec.is_file() and rec != path:
                return rec
    return None


def test_provenance_records_cover_every_artifact_with_true_checksums(smoke: Path) -> None:
    run = smoke / RUN
    files = [p for p in run.rglob("*") if p.is_file()]
    records = [p for p in files if p.name == "provenance.json" or p.name.endswith(".prov.json")]
    uncovered = [
        p.relative_to(run).as_posix()
        for p in files
        if p not in records
        and not p.relative_to(run).as_posix().startswith(NOT_ARTIFACTS)
        and p.name != "report.html"
        and _record_of(p, run) is None
    ]
    assert not uncovered, uncovered[:20]
    stages = set()
    for rec_file in records:
        rec = json.loads(rec_file.read_text())
        where = rec_file.relative_to(run).as_posix()
        stages.add(rec["stage"])
        artifact = Path(rec["artifact"])
        artifact = artifact if artifact.is_absolute() else smoke / artifact
        assert artifact.exists(), where
        if artifact.is_file():
            assert rec["sha256"] == _sha(artifact), where
        canonical = json.dumps(rec["params"], sort_keys=True, separators=(",", ":"), default=str)
        assert rec["params_sha256"] == hashlib.sha256(canonical.encode()).hexdigest(), where
        assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", rec["git_commit"] or ""), (where, rec)
        for package in ("python", "medtraverse", "numpy", "pandas"):
            assert rec["versions"].get(package), (where, package)
        assert rec["device"].get("host") and rec["device"].get("platform"), where
        for entry in rec["inputs"]:
            path = Path(entry["path"])
            path = path if path.is_absolute() else smoke / path
            assert not entry.get("missing") and path.exists(), (where, entry["path"])
            if path.is_file():
                assert entry["sha256"] == _sha(path), (where, entry["path"])
            elif entry["hashed"] == "record":
                assert entry["sha256"] == _sha(path / "provenance.json"), (where, entry["path"])
            else:
                assert entry["sha256"] == _tree_sha(path), (where, entry["path"])
    assert {"synth", "prepare", "finetune", "traverse", "score", "aggregate"} <= stages


def test_provenance_chain_from_metrics_reaches_the_raw_tables(smoke: Path) -> None:
    metrics = smoke / RUN / "metrics/chexpert"
    proc = subprocess.run(
        [str(BIN / "medtraverse"), "provenance", "--json", str(metrics)],
        capture_output=True,
        text=True,
        env=env(),
        cwd=smoke,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    chain = json.loads(proc.stdout)
    stages = {rec["stage"] for rec in chain}
    assert {"aggregate", "score", "traverse", "finetune", "prepare", "synth"} <= stages
    prepare = [r for r in chain if r["stage"] == "prepare"]
    assert prepare, [r["stage"] for r in chain]
    raw = [e["path"] for r in prepare for e in r["inputs"] if e["path"].endswith(".csv")]
    assert raw, prepare[0]["inputs"]  # the twin's CheXpert tables, by checksum
    synth = [r for r in chain if r["stage"] == "synth"]
    assert synth and max(r["depth"] for r in synth) > max(r["depth"] for r in prepare)


def test_report_is_self_contained(smoke: Path, tmp_path: Path) -> None:
    report = smoke / RUN / "report.html"
    proc = run_workflow(smoke, "--configfile", SMOKE, "--report", str(report), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    html = report.read_text()
    # nothing is fetched from elsewhere: no external script, style sheet, image or frame, also
    # where Snakemake embeds a description inside the page's script (quotes escaped: src=\")
    tag = r"<(?:script|link|img|iframe)[^>]*?(?:src|href)\s*=\s*\\?[\"']?\s*(?:https?:)?//"
    external = re.findall(tag, html, flags=re.I)
    assert external == [], external[:3]
    assert "Metrics" in html and "Models" in html
    from tests.workflow_utils import chromium, dump_dom

    browser = chromium("the report")
    dom = dump_dom(browser, report.as_uri(), tmp_path / "profile", budget_ms=20000, timeout=300)
    # the page's scripts ran offline and drew the report: its navigation lists the categories
    app = dom.split('id="app"', 1)[-1]
    assert "<nav" in app and "<li" in app, dom[-2000:]
    assert "Metrics" in app and "Models" in app


def _files(root: Path, pattern: str) -> dict[str, Path]:
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob(pattern))}


def _sacct_states(job_ids: list[str], timeout: float = 900) -> dict[str, str]:
    """Final sacct state per job, waiting out accounting's lag."""
    deadline = time.monotonic() + timeout
    while True:
        out = subprocess.run(
            ["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(job_ids)],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        states = dict(line.split("|", 1) for line in out.splitlines() if "|" in line)
        if all(states.get(j) == "COMPLETED" for j in job_ids) or time.monotonic() > deadline:
            return states
        time.sleep(1)


# What a CPU-only cluster must change in the shipped profile, and nothing else: the CI
# cluster's account and partition, no GPUs, and requests the one 2-CPU node can satisfy.
CI_ACCOUNT = {"slurm_account": "ci", "slurm_partition": "debug"}
NODE_MEM_MB, NODE_CPUS = 2000, 2


def _cpu_cluster_profile(dest: Path) -> Path:
    """A workflow profile layered over profiles/slurm (values here override the shipped ones):
    the shipped per-rule requests, with GPUs removed and memory and CPUs capped to the node."""
    shipped = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    rules = {}
    for rule, res in shipped["set-resources"].items():
        res = {**res, "mem_mb": min(res.get("mem_mb", NODE_MEM_MB), NODE_MEM_MB)}
        if "gpu" in res:
            res["gpu"] = 0
        if "cpus_per_task" in res:
            res["cpus_per_task"] = min(res["cpus_per_task"], NODE_CPUS)
        rules[rule] = res
    defaults = {**shipped["default-resources"], **CI_ACCOUNT}
    defaults["mem_mb"] = min(defaults["mem_mb"], NODE_MEM_MB)
    dest.mkdir(parents=True)
    # and, for seconds-long jobs, the plugin's first status poll sooner than the shipped 20 s
    # (it grows by 10 s a poll while nothing finishes): when, not what, a job runs
    profile = {
        "default-resources": defaults,
        "set-resources": rules,
        "slurm-init-seconds-before-status-checks": 5,
    }
    (dest / "config.yaml").write_text(yaml.safe_dump(profile))
    return dest


# Fields of a provenance record (and of a stage's own summary) that say when and where a job
# ran, not what it made; everything else must be equal byte for byte.
VOLATILE = {
    "created",
    "device",
    "seconds",
    "train_seconds",
    "images_per_second",
    "samples_per_second",
}


def _stable(value: object) -> object:
    """A record without its volatile fields; an input hashed by its record (which holds the
    record's creation time) keeps its path, not that checksum."""
    if isinstance(value, dict):
        if value.get("hashed") == "record":
            value = {k: v for k, v in value.items() if k != "sha256"}
        return {k: _stable(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def _outputs(run: Path) -> dict[str, Path]:
    """Every file of a run but Snakemake's job logs and benchmarks (wall clock, host) and the
    global RNG states in fine-tuning's resume checkpoints (accelerate saves Python's, NumPy's
    and torch's global generators, which training never draws from: its noise, timesteps and
    order come from seeded generators of its own, and its resumed weights are compared)."""
    return {
        rel: p
        for rel, p in _files(run, "*").items()
        if p.is_file()
        and not rel.startswith(("logs/", "benchmarks/"))
        and not re.search(r"/checkpoints/checkpoint-\d+/random_states_\d+\.pkl$", rel)
    }


@pytest.mark.slurm
def test_slurm_run_matches_the_local_run_bit_for_bit(
    smoke: Path, cluster: None, tmp_path: Path
) -> None:
    workdir = copy_project(tmp_path / "smoke-slurm")
    overrides = _cpu_cluster_profile(tmp_path / "cpu-cluster")
    proc = run_workflow(
        workdir,
        *("--profile", "profiles/slurm", "--workflow-profile", str(overrides)),
        *("--configfile", SMOKE),
        timeout=2400,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    job_ids = re.findall(r"submitted with SLURM jobid (\d+)", output)
    # Every job but `all` (a local rule) went through sbatch, once (no retry hid a failure).
    assert len(job_ids) == len(_files(workdir / RUN / "logs", "*.log")), output[-3000:]
    states = _sacct_states(job_ids)
    assert all(states.get(j) == "COMPLETED" for j in job_ids), states

    local, slurm = _outputs(smoke / RUN), _outputs(workdir / RUN)
    local.pop("report.html", None)  # made by another test, when it ran first
    assert local.keys() == slurm.keys()
    kinds = {Path(rel).suffix for rel in local}
    assert {".safetensors", ".parquet", ".png", ".csv", ".json", ".md", ".tex"} <= kinds, kinds
    differ = []
    for rel, path in local.items():
        a, b = path.read_bytes(), slurm[rel].read_bytes()
        if a == b:
            continue
        if rel.endswith(".json") and _stable(json.loads(a)) == _stable(json.loads(b)):
            continue  # only when and where it ran differ
        differ.append(rel)
    assert not differ, differ[:20]
