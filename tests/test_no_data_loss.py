"""Never destroy, never guess: an output path that is not the stage's own earlier output is
refused with one line and left byte-for-byte as it was; a stage reruns onto its own output; a
truncated or mismatched weights, latents or provenance file is one line naming it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from medtraverse.core.errors import InputError
from medtraverse.core.io import atomic_path, check_output
from tests import test_aggregate, test_classify, test_traverse
from tests.fakedata import write_shard
from tests.oneline import assert_one_line_error, run_cli

# the other modules' fixtures, shared by name: a tiny trained classifier, a tiny pipeline folder,
# fake score parquets with their shards
trained = test_classify.trained
model_dir = test_traverse.model_dir
fake_run = test_aggregate.fake_run

TRAVERSE = {"steps": 4, "swap_steps": [2], "bezier_frames": 2, "batch_size": 1}


def snapshot(root: Path) -> dict[Path, bytes | None]:
    """Every file under ``root`` with its bytes (folders as None): what must survive."""
    return {p: (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def assert_survived(root: Path, before: dict[Path, bytes | None]) -> None:
    assert snapshot(root) == before, f"{root} was changed"


def user_folder(path: Path) -> dict[Path, bytes | None]:
    """A folder of the user's own files (with a subfolder), and its snapshot."""
    (path / "notes").mkdir(parents=True)
    (path / "thesis.tex").write_text("\\section{Results}\n")
    (path / "notes" / "data.csv").write_bytes(b"a,b\n1,2\n")
    return snapshot(path)


def no_temps(parent: Path) -> None:
    """No temporary folder of an atomic write was left beside the target."""
    assert not [p.name for p in parent.iterdir() if p.name.endswith((".tmp", ".partial"))]


def truncate(path: Path, keep: int | None = None) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 if keep is None else keep])


def traverse_args(model: Path, out: Path) -> list[str]:
    return [
        "traverse",
        "--model",
        str(model),
        "--out",
        str(out),
        "--dataset",
        "chexpert",
        "--trajectory",
        "support_devices",
        "--neutral",
        "a chest x-ray",
        "--attribute",
        "a chest x-ray with support devices",
        "--seed-start",
        "0",
        "--seed-count",
        "1",
        "--params",
        json.dumps(TRAVERSE),
    ]


@pytest.fixture
def shard(tmp_path: Path) -> Path:
    folder = tmp_path / "shard-0000"
    write_shard(folder, seeds=(0,), ks=(5,), frames=2)
    return folder


# --- the core rule, function level ----------------------------------------------------------


def test_atomic_path_refuses_what_is_not_the_stages_own_output(tmp_path: Path) -> None:
    user = tmp_path / "mine"
    before = user_folder(user)
    for stage in ("score", "aggregate", None):
        with pytest.raises(InputError, match="mine: exists and is a (non-empty )?folder"):
            with atomic_path(user, stage) as tmp:
                tmp.write_text("x")
    assert_survived(user, before)
    other = tmp_path / "other"
    other.mkdir()
    (other / "provenance.json").write_text(json.dumps({"stage": "prepare"}))
    with pytest.raises(InputError, match="the output of stage 'prepare'"):
        check_output(other, "aggregate", "folder")
    no_temps(tmp_path)


def test_atomic_path_replaces_the_stages_own_output_and_an_empty_folder(tmp_path: Path) -> None:
    out = tmp_path / "metrics"
    out.mkdir()  # empty: holds nothing to lose
    for n in (1, 2):
        with atomic_path(out, "aggregate") as tmp:
            tmp.mkdir()
            (tmp / "table.csv").write_text(f"run {n}\n")
            (tmp / "provenance.json").write_text(json.dumps({"stage": "aggregate"}))
        assert (out / "table.csv").read_text() == f"run {n}\n"
    no_temps(tmp_path)
    with pytest.raises(InputError, match="not a file"):
        check_output(out, "aggregate", "file")


# --- score ----------------------------------------------------------------------------------


def test_score_out_onto_a_user_folder_or_file_is_refused(tmp_path: Path, trained, shard) -> None:
    _, clf, _ = trained
    user = tmp_path / "results"
    before = user_folder(user)
    base = ["score", "--shard", str(shard), "--classifier", str(clf), "--out"]
    line = assert_one_line_error(run_cli(*base, str(user)), str(user), "a folder of 2 entries")
    assert "written earlier by 'medtraverse score'" in line
    assert_survived(user, before)
    table = tmp_path / "table.parquet"
    table.write_bytes(b"the user's table")
    assert_one_line_error(
        run_cli(*base, str(table)),
        str(table),
        "no provenance record table.parquet.prov.json",
        before={table: b"the user's table"},
    )
    no_temps(tmp_path)


def test_score_reruns_onto_its_own_output_but_not_over_a_bad_record(
    tmp_path: Path, trained, shard
) -> None:
    _, clf, _ = trained
    out = tmp_path / "scores" / "shard-0000.parquet"
    args = ["score", "--shard", str(shard), "--classifier", str(clf), "--out", str(out)]
    for _ in range(2):
        proc = run_cli(*args)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert json.loads(Path(f"{out}.prov.json").read_text())["stage"] == "score"
    record = Path(f"{out}.prov.json")
    truncate(record)
    kept = {out: out.read_bytes(), record: record.read_bytes()}
    assert_one_line_error(run_cli(*args), str(out), "cannot be read", before=kept)


def test_truncated_classifier_weights_name_the_file(tmp_path: Path, trained, shard) -> None:
    _, clf, _ = trained
    broken = tmp_path / "clf"
    shutil.copytree(clf, broken)
    truncate(broken / "model.safetensors")
    out = tmp_path / "s.parquet"
    proc = run_cli("score", "--shard", str(shard), "--classifier", str(broken), "--out", str(out))
    line = assert_one_line_error(proc, str(broken / "model.safetensors"), "truncated or corrupt")
    assert "a classifier's weights" in line
    assert not out.exists()


def test_head_that_does_not_match_model_json_names_both(tmp_path: Path, trained, shard) -> None:
    _, clf, _ = trained
    broken = tmp_path / "clf"
    shutil.copytree(clf, broken)
    meta = json.loads((broken / "model.json").read_text())
    meta["attributes"] = [*meta["attributes"], "cardiomegaly"]
    (broken / "model.json").write_text(json.dumps(meta))
    out = tmp_path / "s.parquet"
    proc = run_cli("score", "--shard", str(shard), "--classifier", str(broken), "--out", str(out))
    assert_one_line_error(
        proc, str(broken / "model.safetensors"), "does not match model.json (3 attributes)"
    )
    assert not out.exists()


# --- traverse, sample-grid, build-base ------------------------------------------------------


def test_traverse_out_a_file_fails_before_any_work(tmp_path: Path, model_dir: Path) -> None:
    out = tmp_path / "shard-0000"
    out.write_text("not a shard")
    proc = run_cli(*traverse_args(model_dir, out))
    line = assert_one_line_error(proc, str(out), "a file (11 bytes), not a folder")
    assert "'medtraverse traverse'" in line
    assert out.read_text() == "not a shard"
    no_temps(tmp_path)


def test_traverse_refuses_another_stages_folder_and_a_foreign_partial(
    tmp_path: Path, model_dir: Path
) -> None:
    before = snapshot(model_dir)
    proc = run_cli(*traverse_args(model_dir, model_dir))  # --out the model itself
    assert_one_line_error(proc, str(model_dir), "exists and is a folder of")
    assert_survived(model_dir, before)
    out = tmp_path / "shard-0000"
    partial = tmp_path / "shard-0000.partial"
    kept = user_folder(partial)
    proc = run_cli(*traverse_args(model_dir, out))
    assert_one_line_error(proc, str(partial), "without settings.json", untouched=[out])
    assert_survived(partial, kept)


def test_traverse_reruns_onto_its_own_shard(tmp_path: Path, model_dir: Path) -> None:
    out = tmp_path / "shard-0000"
    latents = []
    for _ in range(2):
        proc = run_cli(*traverse_args(model_dir, out))
        assert proc.returncode == 0, proc.stderr[-2000:]
        latents.append((out / "latents.safetensors").read_bytes())
    assert latents[0] == latents[1]
    no_temps(tmp_path)


def test_sample_grid_out_onto_a_folder_is_refused_and_reruns_onto_its_png(
    tmp_path: Path, model_dir: Path
) -> None:
    user = tmp_path / "figures"
    before = user_folder(user)
    params = json.dumps({"prompts": ["a", "b"], "seeds": 1, "steps": 2, "cell": 16})
    args = ["sample-grid", "--model", str(model_dir), "--params", params, "--out"]
    assert_one_line_error(run_cli(*args, str(user)), str(user), "not a file")
    assert_survived(user, before)
    png = tmp_path / "samples.png"
    for _ in range(2):
        proc = run_cli(*args, str(png))
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert png.read_bytes().startswith(b"\x89PNG")
    no_temps(tmp_path)


def test_build_base_reruns_onto_its_own_folder(tmp_path: Path) -> None:
    out = tmp_path / "base"
    for _ in range(2):
        proc = run_cli("build-base", "--out", str(out))
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "model_index.json").is_file() and (out / "provenance.json").is_file()
    no_temps(tmp_path)


def test_model_without_unet_names_the_missing_folder(tmp_path: Path, model_dir: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    shutil.rmtree(model / "unet")
    out = tmp_path / "shard-0000"
    proc = run_cli(*traverse_args(model, out))
    assert_one_line_error(proc, str(model / "unet"), "missing folder", untouched=[out])
    no_temps(tmp_path)


def test_truncated_pipeline_weights_name_the_file(tmp_path: Path, model_dir: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    truncate(weights)
    out = tmp_path / "samples.png"
    proc = run_cli("sample-grid", "--model", str(model), "--out", str(out))
    assert_one_line_error(proc, str(weights), "truncated or corrupt", untouched=[out])


# --- aggregate, provenance -------------------------------------------------------------------


def test_truncated_latents_name_the_file(tmp_path: Path, fake_run: Path) -> None:
    shards = sorted((fake_run / "traversals" / "chexpert" / "support_devices").glob("shard-*"))
    copies = []
    for src in shards:
        copies.append(tmp_path / "traversals" / src.name)
        shutil.copytree(src, copies[-1])
    truncate(copies[0] / "latents.safetensors")
    scores = sorted((fake_run / "scores" / "chexpert" / "support_devices").glob("*.parquet"))
    out = tmp_path / "metrics"
    params = json.dumps({**test_aggregate.PARAMS, "figures": False})
    proc = run_cli(
        "aggregate",
        "--scores",
        *map(str, scores),
        "--traversals",
        *map(str, copies),
        "--out",
        str(out),
        "--params",
        params,
    )
    assert_one_line_error(
        proc, str(copies[0] / "latents.safetensors"), "truncated or corrupt", untouched=[out]
    )


def test_truncated_provenance_record_names_the_file(tmp_path: Path) -> None:
    artifact = tmp_path / "base"
    artifact.mkdir()
    record = artifact / "provenance.json"
    record.write_text(json.dumps({"stage": "build-base", "inputs": []}))
    truncate(record, keep=10)
    assert_one_line_error(run_cli("provenance", str(artifact)), str(record), "cannot be read")
