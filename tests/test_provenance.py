"""Provenance records: checksums, the chain back through recorded folders, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

from medtraverse import cli
from medtraverse.core import provenance
from tests.oneline import assert_one_line_error, run_cli


def test_record_and_chain_follow_inputs_through_recorded_folders(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    (raw / "sub").mkdir(parents=True)
    (raw / "sub" / "table.csv").write_text("a,b\n1,2\n")
    provenance.record(raw, stage="synth", params={"n": 1})
    model = tmp_path / "model.bin"
    model.write_bytes(b"weights")
    provenance.record(model, stage="train", params={"lr": 0.1}, inputs=[raw / "sub" / "table.csv"])

    rec = provenance.load(model)
    assert rec["sha256"] == provenance.file_sha256(model)
    assert rec["inputs"][0]["sha256"] == provenance.file_sha256(raw / "sub" / "table.csv")
    assert rec["params_sha256"] == provenance.params_sha256({"lr": 0.1})
    stages = [(r["stage"], r["depth"]) for r in provenance.chain(model)]
    assert stages == [("train", 0), ("synth", 1)]  # the CSV is covered by the twin's record


def test_params_hash_ignores_key_order() -> None:
    assert provenance.params_sha256({"a": 1, "b": [1, 2]}) == provenance.params_sha256(
        {"b": [1, 2], "a": 1}
    )


def test_cli_prints_the_chain_and_rejects_a_missing_artifact(tmp_path: Path, capsys) -> None:
    out = tmp_path / "table.csv"
    out.write_text("x\n")
    provenance.record(out, stage="aggregate", params={}, inputs=[tmp_path / "gone"])
    assert cli.main(["provenance", "--json", str(out)]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["stage"] for r in records] == ["aggregate", "raw input"]
    proc = run_cli("provenance", str(tmp_path / "nothing"))
    assert_one_line_error(proc, "nothing", untouched=[tmp_path / "nothing"])
