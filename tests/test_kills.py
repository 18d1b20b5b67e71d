"""Real SIGKILLs of traverse, finetune, score and aggregate, then a rerun: outputs identical to an
uninterrupted run, byte for byte (provenance records up to their named volatile fields), work
saved before the kill reused (traverse's seed blocks, finetune's checkpoint), no temp leftover
read (aggregate given the score files the workflow names), nothing of the user's removed.

Each stage runs as ``medtraverse <stage>`` in a subprocess on the conftest tiny pipeline, so the
kill gives it no chance to clean up (see tests/kill.py).
"""

from __future__ import annotations

import json
import shlex
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.fakedata import write_prep
from tests.kill import (
    assert_blocks_reused,
    assert_same_outputs,
    cli,
    kill_when,
    leftovers,
    run,
    saved_blocks,
    tree,
)
from tests.workflow_utils import ROOT, snakemake

pytestmark = pytest.mark.slow

NEUTRAL = "Normal chest X-ray with no significant findings"
ATTRIBUTE = "Chest X-ray showing Support Devices"
TRAVERSE = {
    "steps": 10,
    "swap_steps": [2, 5, 8],
    "bezier_frames": 6,
    "batch_size": 2,
    "neutral": NEUTRAL,
    "attribute": ATTRIBUTE,
}
USER = b"the user's own notes\n"


def _user_files(folder: Path) -> dict[Path, bytes]:
    """A file and a folder of the user's beside a stage's output, to prove none is removed."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "NOTES.txt").write_bytes(USER)
    (folder / "mine").mkdir(exist_ok=True)
    (folder / "mine" / "keep.csv").write_bytes(b"a,b\n1,2\n")
    return {folder / "NOTES.txt": USER, folder / "mine" / "keep.csv": b"a,b\n1,2\n"}


def _assert_user_files(files: dict[Path, bytes]) -> None:
    for path, content in files.items():
        assert path.is_file() and path.read_bytes() == content, f"{path} was removed or changed"


def _traverse_argv(model: Path, out: Path, count: int = 8) -> list[str]:
    return cli(
        "traverse",
        "--model",
        model,
        "--out",
        out,
        "--dataset",
        "chexpert",
        "--trajectory",
        "support_devices",
        "--seed-start",
        "0",
        "--seed-count",
        str(count),
        "--params",
        json.dumps(TRAVERSE),
    )


@pytest.fixture(scope="module")
def clean(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted run of every stage: traverse -> classifier -> score -> aggregate."""
    from medtraverse.evaluation.classify import train_classifier

    root = tmp_path_factory.mktemp("clean")
    shard = root / "traversals" / "chexpert" / "support_devices" / "shard-0000"
    run(_traverse_argv(tiny_model, shard))
    prep = write_prep(root / "prep", n=24, test=2)
    train_classifier(
        prep / "manifest.parquet",
        root / "classifiers" / "sd_pe",
        ["support_devices", "pleural_effusion"],
        {"image_size": 32, "epochs": 1, "batch_size": 8, "seed": 0, "preset": "chexpert"},
    )
    score = root / "scores" / "chexpert" / "support_devices" / "shard-0000.parquet"
    run(_score_argv(shard, root / "classifiers" / "sd_pe", score))
    run(_aggregate_argv(root, root / "metrics" / "chexpert"))
    return root


def _score_argv(shard: Path, classifier: Path, out: Path) -> list[str]:
    params = {"batch_size": 8, "truth_detector": "chexpert"}
    return cli(
        "score", "--shard", shard, "--classifier", classifier, "--out", out, "--params",
        json.dumps(params),
    )  # fmt: skip


AGGREGATE = {
    "swap_steps": [2, 5, 8],
    "bezier_frames": [3, 4, 5],
    "n_boot": 50,
    "lpips_backbone": "random",
    "tsne_max_seeds": 8,
    "figure_seeds": 2,
}


def _aggregate_argv(root: Path, out: Path, files: list[Path] | None = None) -> list[str]:
    """Aggregate over the score parquets ``files`` (default: those under ``root``, a shell
    glob's view) and every shard folder of ``root``."""
    files = files or sorted((root / "scores" / "chexpert").glob("*/shard-*.parquet"))
    shards = sorted((root / "traversals" / "chexpert").glob("*/shard-*"))
    assert files and shards
    return cli(
        "aggregate", "--scores", *files, "--out", out, "--traversals", *shards,
        "--params", json.dumps(AGGREGATE),
    )  # fmt: skip


def test_traverse_killed_after_a_seed_block_resumes_identically(
    tiny_model: Path, clean: Path, tmp_path: Path
) -> None:
    shard = tmp_path / "traversals" / "chexpert" / "support_devices" / "shard-0000"
    user = _user_files(shard.parent)
    scratch = shard.with_name(shard.name + ".partial")

    def a_block_saved() -> bool:
        return scratch.is_dir() and any(
            p.name.startswith("seeds-") and not p.name.endswith(".tmp") for p in scratch.iterdir()
        )

    from medtraverse.traversal.engine import FOLDERS

    kill_when(_traverse_argv(tiny_model, shard), a_block_saved, seed=1)
    assert not shard.exists()  # the declared output never half-written
    saved = saved_blocks(scratch, FOLDERS)
    run(_traverse_argv(tiny_model, shard))
    n = assert_same_outputs(
        clean / "traversals" / "chexpert" / "support_devices" / "shard-0000",
        shard,
        clean_root=clean,
        resumed_root=tmp_path,
    )
    assert n > 8 * (1 + 3 + 6)  # PNGs, latents, meta and the record
    assert leftovers(shard.parent) == []
    _assert_user_files(user)
    # the same bytes would come from starting over: the saved blocks' files prove the resume
    assert_blocks_reused(saved, shard)


def test_finetune_killed_after_a_checkpoint_resumes_identically(
    tiny_model: Path, tmp_path: Path
) -> None:
    from medtraverse.models.cache import build_cache

    prep = write_prep(tmp_path / "prep", n=12, test=2)
    cache = build_cache(tiny_model, prep, tmp_path / "cache", {"flip": True})
    params = {
        "train_batch_size": 4,
        "learning_rate": 1e-3,
        "max_train_steps": 6,
        "checkpointing_steps": 2,
        "checkpoints_total_limit": 2,
        "prompt_dropout": 0.3,
    }

    def argv(root: Path) -> list[str]:
        return cli(
            "finetune", "--base", tiny_model, "--cache", cache, "--out", root / "pipeline",
            "--checkpoints", root / "checkpoints", "--params", json.dumps(params),
        )  # fmt: skip

    once, twice = tmp_path / "once", tmp_path / "twice"
    run(argv(once))
    user = _user_files(twice)
    ckpts = twice / "checkpoints"

    def a_checkpoint_saved() -> bool:
        return ckpts.is_dir() and any(p.name.startswith("checkpoint-") for p in ckpts.iterdir())

    kill_when(argv(twice), a_checkpoint_saved, seed=2, max_delay_s=0.2)
    assert not (twice / "pipeline").exists()
    run(argv(twice))
    record = json.loads((twice / "pipeline" / "provenance.json").read_text())["extra"]
    assert record["resumed_from_step"] and record["resumed_from_step"] >= 2  # it did resume
    assert_same_outputs(
        once / "pipeline",
        twice / "pipeline",
        clean_root=once,
        resumed_root=twice,
        record_drop=[
            "extra.resumed_from_step",
            "extra.trained_steps_this_run",
            "extra.samples_per_second",  # wall-clock
            "extra.train_seconds",
        ],
    )
    assert (once / "loss.csv").read_bytes() == (twice / "loss.csv").read_bytes()
    assert tree(once / "checkpoints").keys() == tree(twice / "checkpoints").keys()
    assert leftovers(twice) == []
    _assert_user_files(user)


# A score run stopped at the last instant of its atomic write (the finished parquet in its hidden
# temp folder, not yet renamed) and SIGKILLed there: the state a kill mid-write leaves.
STOP_BEFORE_RENAME = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    import medtraverse.core.io as io
    marker, out = Path(sys.argv[1]), Path(sys.argv[2])
    real = os.replace
    def replace(src, dst):
        if Path(dst) == out:
            marker.write_text(str(src))
            time.sleep(600)
        return real(src, dst)
    io.os.replace = replace
    from medtraverse.cli import main
    sys.exit(main(sys.argv[3:]))
    """
)


@pytest.fixture
def killed_score(clean: Path, tmp_path: Path) -> tuple[Path, Path, dict[Path, bytes]]:
    """A scores folder where score was SIGKILLed mid-write, then rerun to completion."""
    shard = clean / "traversals" / "chexpert" / "support_devices" / "shard-0000"
    scores = tmp_path / "scores" / "chexpert"
    out = scores / "support_devices" / "shard-0000.parquet"
    user = _user_files(out.parent)
    marker = tmp_path / "at-rename"
    argv = _score_argv(shard, clean / "classifiers" / "sd_pe", out)
    driver = [argv[0], "-c", STOP_BEFORE_RENAME, str(marker), str(out), *argv[3:]]
    kill_when(driver, marker.exists, seed=3, max_delay_s=0.1)
    temp = Path(marker.read_text())
    assert temp.is_file() and temp.parent.name.endswith(".tmp")  # the kill left the temp write
    assert not out.exists()
    run(argv)
    return scores, out, user


def test_score_killed_mid_write_reruns_identically(
    clean: Path, killed_score: tuple[Path, Path, dict[Path, bytes]], tmp_path: Path
) -> None:
    _, out, user = killed_score
    ref = clean / "scores" / "chexpert" / "support_devices" / "shard-0000.parquet"
    assert out.read_bytes() == ref.read_bytes()
    assert_same_outputs(
        ref.with_name(ref.name + ".prov.json"),
        out.with_name(out.name + ".prov.json"),
        clean_root=clean,
        resumed_root=[tmp_path, clean],
    )
    _assert_user_files(user)


def _workflow_scores(results: Path) -> list[Path]:
    """The ``--scores`` the workflow's aggregate job passes when its results folder is
    ``results`` (common.smk ``score_files``), for this file's one trajectory and shard: read
    from the job's shell command in a Snakemake dry run of the smoke config so narrowed."""
    config = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    config.update(results=str(results.parent), run=results.name)
    chexpert = config["datasets"]["chexpert"]
    chexpert.pop("invert", None)
    chexpert["traverse"]["seeds"] = {"start": 0, "count": 8, "shard_size": 8}
    trajectories = chexpert["traverse"]["trajectories"]
    chexpert["traverse"]["trajectories"] = {"support_devices": trajectories["support_devices"]}
    path = results / "workflow.yaml"
    path.write_text(yaml.safe_dump(config))
    target = results / "metrics" / "chexpert"
    proc = snakemake(
        "-n", "-p", str(target), "--configfile", str(path), workdir=path.with_suffix(""),
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    calls = [
        shlex.split(line.split(":", 1)[1])
        for line in (proc.stdout + proc.stderr).splitlines()
        if "medtraverse aggregate " in line
    ]
    assert len(calls) == 1, calls
    argv = calls[0]
    after = argv[argv.index("--scores") + 1 :]
    files = [Path(a) for a in after[: next(i for i, a in enumerate(after) if a.startswith("-"))]]
    assert files, argv
    return files


def test_aggregate_never_reads_a_killed_score_write(
    clean: Path, killed_score: tuple[Path, Path, dict[Path, bytes]], tmp_path: Path
) -> None:
    """The killed score left its finished parquet in a hidden temp folder beside the real one;
    aggregate, given the score files the workflow passes it, must read only the real one."""
    scores, _, _ = killed_score
    assert leftovers(scores), "the kill's temp write should still be there to be ignored"
    files = _workflow_scores(tmp_path)  # the results folder: tmp_path/scores/chexpert/...
    assert files == [scores / "support_devices" / "shard-0000.parquet"], files
    out = tmp_path / "metrics" / "chexpert"
    run(_aggregate_argv(clean, out, files=files))
    ref = clean / "metrics" / "chexpert"
    for name in ("cfrt.csv", "cfrt_per_seed.parquet", "probability.csv", "summary.csv"):
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name


def test_aggregate_killed_mid_write_reruns_identically(clean: Path, tmp_path: Path) -> None:
    out = tmp_path / "metrics" / "chexpert"
    user = _user_files(out.parent)

    def writing() -> bool:  # its atomic output folder exists: tables are being written
        return any(p.name.startswith(".chexpert.") for p in out.parent.iterdir())

    kill_when(_aggregate_argv(clean, out), writing, seed=4, max_delay_s=0.05)
    assert not out.exists()
    run(_aggregate_argv(clean, out))
    n = assert_same_outputs(
        clean / "metrics" / "chexpert", out, clean_root=clean, resumed_root=[tmp_path, clean]
    )
    assert n >= 10 and (out / "cfrt.csv").is_file()
    cfrt = pd.read_csv(out / "cfrt.csv")
    assert set(cfrt["n_seeds"]) == {8}  # every configured seed, not just the ones written first
    _assert_user_files(user)
