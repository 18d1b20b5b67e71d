"""The trajectory viewer: one self-contained HTML page from fake seed and real-image shards and
their scores; nothing external, same bytes on a rerun; in headless Chromium its own script moves
the sliders (the URL fragment's state goes through the input events a drag fires) and shows the
image and the probabilities of that row of the score table.

The screenshot in docs/figures/viewer.png comes from this fake (until a demo run replaces it):
``python -c "from tests.test_viewer import screenshot; screenshot('docs/figures/viewer.png')"``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medtraverse.report.viewer import ViewerParams, image_uri, viewer_data
from tests.fakedata import write_shard
from tests.oneline import assert_one_line_error, run_main
from tests.workflow_utils import chromium, chromium_command, dump_dom

KS = (5, 10, 45)
FRAMES = 5
TRAJECTORIES = ("support_devices", "pleural_effusion")


def strength(kind: str, k: int, frame: int) -> float:
    """How much of the attribute an image shows: 0 neutral, more the earlier the swap."""
    if kind in ("neutral", "real"):
        return 0.0
    if kind == "swap":
        return (50 - k) / 45
    return frame / (FRAMES - 1)


def xray(seed: int, trajectory: str, size: int = 48) -> Any:
    """``pixels`` for write_shard: a grey chest-like picture whose device line (support
    devices) or basal band (pleural effusion) grows with ``strength``."""

    def pixels(_seed: int, kind: str, k: int, frame: int) -> np.ndarray:
        s = strength(kind, k, frame)
        rng = np.random.default_rng(1000 * seed + 7 * _seed + int(100 * s))
        yy, xx = np.mgrid[0:size, 0:size] / size
        body = np.exp(-((((xx - 0.5) / 0.32) ** 2 + ((yy - 0.52) / 0.42) ** 2) ** 2))
        lungs = np.exp(-((np.abs(xx - 0.5) - 0.17) ** 2 / 0.012 + (yy - 0.5) ** 2 / 0.08))
        img = 30 + 150 * body - 70 * lungs + rng.normal(0, 6, (size, size))
        if trajectory == "support_devices":
            line = np.abs(yy - 0.25 - 0.35 * xx) < 0.025
            img[line & (xx > 0.3) & (xx < 0.3 + 0.5 * s)] = 250
        else:
            img += 90 * s * (yy > 0.8 - 0.2 * s) * (np.abs(xx - 0.5) < 0.35)
        return np.clip(img, 0, 255).astype(np.uint8)

    return pixels


def probability(trajectory: str, attribute: str, seed: int, kind: str, k: int, f: int) -> float:
    """Distinct three-decimal probabilities: the page's text must show exactly these."""
    if kind == "real":  # unlike its reconstruction (the neutral image)
        return round(0.3 + 0.01 * seed + (0.05 if attribute == trajectory else 0), 3)
    if attribute == trajectory:
        return round(0.05 + 0.85 * strength(kind, k, f) + 0.001 * seed, 3)
    return round(0.1 + 0.002 * seed + 0.003 * max(k, 0) + 0.007 * max(f, 0), 3)


def write_scores(meta: pd.DataFrame, out: Path, trajectory: str, real: bool) -> pd.DataFrame:
    rows = list(meta[["seed", "kind", "k", "frame"]].itertuples(index=False))
    scores = meta[["seed", "kind", "k", "frame", "t", "path", "dataset", "trajectory"]].copy()
    for attr in TRAJECTORIES:
        scores[f"p_{attr}"] = [probability(trajectory, attr, *r) for r in rows]
    scores["lpips"] = [
        round(
            0.0321 + 0.001 * r[0] if r[1] == "real" else 0.2 * strength(*r[1:]) + 0.0001 * r[0], 4
        )
        for r in rows
    ]
    scores["lpips_backbone"] = "random"
    if real:
        scores["lpips_real"] = [round(0.05 + 0.1 * strength(*r[1:]), 4) for r in rows]
    out.parent.mkdir(parents=True, exist_ok=True)
    scores.to_parquet(out, index=False)
    return scores


def write_run(root: Path, seeds_per_shard: int = 2, shards: int = 2, size: int = 48) -> Path:
    """Seed shards and scores of both trajectories, and one real-image shard of support
    devices (image ids img000, img001, a real.png each, ``lpips_real`` in its scores)."""
    for traj in TRAJECTORIES:
        for n in range(shards):
            seeds = range(n * seeds_per_shard, (n + 1) * seeds_per_shard)
            shard = root / "traversals" / "chexpert" / traj / f"shard-{n:04d}"
            meta = write_shard(
                shard, seeds, KS, FRAMES, xray(0, traj, size), dataset="chexpert", trajectory=traj
            )
            write_scores(
                meta, root / "scores" / "chexpert" / traj / f"shard-{n:04d}.parquet", traj, False
            )
    traj = "support_devices"
    shard = root / "real" / "chexpert" / traj / "shard-0000"
    meta = write_shard(
        shard, (0, 1), KS, FRAMES, xray(1, traj, size), dataset="chexpert", trajectory=traj
    )
    meta["image_id"] = [f"img{s:03d}" for s in meta["seed"]]
    meta["real_path"] = [f"images/{s}/real.png" for s in meta["seed"]]
    meta.to_parquet(shard / "meta.parquet", index=False)
    for seed in (0, 1):
        Image.fromarray(xray(2 + seed, traj, size)(seed, "neutral", -1, -1)).save(
            shard / "images" / str(seed) / "real.png"
        )
    # the score contract of real shards: a "real" row per image, the real image itself, first
    reals = meta.drop_duplicates("seed").assign(kind="real", path=lambda d: d["real_path"])
    scored = pd.concat([reals, meta]).sort_values("seed", kind="stable")
    write_scores(
        scored, root / "scores-real" / "chexpert" / traj / "shard-0000.parquet", traj, True
    )
    return root


def inputs(root: Path) -> list[str]:
    """The viewer's command-line inputs for the run under ``root`` (each path named)."""
    args = ["--traversals", *map(str, sorted((root / "traversals").glob("*/*/shard-*")))]
    args += ["--scores", *map(str, sorted((root / "scores").glob("*/*/shard-*.parquet")))]
    args += ["--real-traversals", *map(str, sorted((root / "real").glob("*/*/shard-*")))]
    args += ["--real-scores", *map(str, sorted((root / "scores-real").glob("*/*/*.parquet")))]
    return args


PARAMS = {"targets": {t: t for t in TRAJECTORIES}, "image_format": "png", "display_size": 192}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_run(tmp_path_factory.mktemp("viewer-run"))


@pytest.fixture(scope="module")
def page(run: Path) -> Path:
    from medtraverse.cli import main

    out = run / "viewer" / "chexpert.html"
    assert main(["viewer", *inputs(run), "--out", str(out), "--params", json.dumps(PARAMS)]) == 0
    return out


def page_data(html: str) -> dict[str, Any]:
    blob = re.search(r'<script type="application/json" id="viewer-data">(.*?)</script>', html, re.S)
    assert blob is not None
    return json.loads(blob.group(1))


def test_page_is_self_contained_and_the_same_bytes_on_a_rerun(
    run: Path, page: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    html = page.read_text()
    assert re.search(r"https?:|ftp:|//[a-z0-9.-]+\.[a-z]{2,}/", html, re.I) is None
    attr = r"""<[a-z][^>]*?\s(?:src|href|srcset|action|poster|data)\s*=\s*["']?([^"'\s>]*)"""
    refs = re.findall(attr, html, re.I)
    assert all(ref.startswith(("data:", "#")) for ref in refs), refs
    assert "<link" not in html and "@import" not in html and "url(" not in html
    assert "default-src 'none'" in html  # the policy forbids any fetch, should one slip in
    data = page_data(html)
    assert data["images"] and all(
        re.fullmatch(r"data:image/png;base64,[A-Za-z0-9+/=]+", uri) for uri in data["images"]
    )
    assert [t["name"] for t in data["trajectories"]] == sorted(TRAJECTORIES)
    sd = next(t for t in data["trajectories"] if t["name"] == "support_devices")
    assert sd["attributes"][0] == "support_devices" and sd["target"] == ["support_devices"]
    ids = [item["id"] for item in sd["items"]]
    assert ids == ["seed-0", "seed-1", "seed-2", "seed-3", "real-img000", "real-img001"]
    assert [e["k"] for e in sd["items"][0]["swap"]] == [-1, *KS]
    assert [e["f"] for e in sd["items"][0]["bezier"]] == list(range(FRAMES))
    assert "r" in sd["items"][-1]["swap"][1] and "r" not in sd["items"][0]["swap"][1]
    # the same inputs give the same bytes: to another path, and over its own earlier page
    again = run / "viewer" / "again.html"
    args = ["viewer", *inputs(run), "--params", json.dumps(PARAMS)]
    assert run_main(capsys, *args, "--out", str(again)).returncode == 0
    assert again.read_bytes() == page.read_bytes()
    assert run_main(capsys, *args, "--out", str(page)).returncode == 0
    assert again.read_bytes() == page.read_bytes()
    record = json.loads((page.parent / "chexpert.html.prov.json").read_text())
    assert record["stage"] == "viewer" and len(record["inputs"]) == len(inputs(run)) - 4


def test_seeds_real_images_and_frames_are_capped(run: Path) -> None:
    folders = sorted((run / "traversals").glob("*/*/shard-*"))
    scores = sorted((run / "scores").glob("*/*/*.parquet"))
    spec = ViewerParams(seeds=3, frames=3, real_images=1, image_size=16)
    data = viewer_data(
        folders,
        scores,
        spec,
        sorted((run / "real").glob("*/*/shard-*")),
        sorted((run / "scores-real").glob("*/*/*.parquet")),
    )
    sd = next(t for t in data["trajectories"] if t["name"] == "support_devices")
    assert [i["id"] for i in sd["items"]] == ["seed-0", "seed-1", "seed-2", "real-img000"]
    assert [e["f"] for e in sd["items"][0]["bezier"]] == [0, 2, 4]
    uri = data["images"][sd["items"][0]["swap"][0]["i"]]
    assert uri.startswith("data:image/jpeg;base64,")
    assert image_uri(folders[0] / "images/0/neutral.png", spec) == uri
    # without scores the images are still shown, with no probabilities
    bare = viewer_data(folders[:1], [], spec)
    assert bare["trajectories"][0]["items"][0]["swap"][0]["p"] == []


def test_bad_input_is_one_line_and_writes_nothing(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "v.html"
    shard = str(run / "traversals/chexpert/support_devices/shard-0000")
    gone = tmp_path / "shard-0000"  # a copy missing one image the page would show
    shutil.copytree(shard, gone)
    (gone / "images/0/k10.png").unlink()
    cases = [
        (["--traversals", shard, "--params", '{"seeds": 0}'], "params.seeds"),
        (["--traversals", shard, "--params", '{"colour": 1}'], "unknown key"),
        (["--traversals", str(run / "traversals")], "not a traversal shard folder"),
        (["--traversals", shard, "--scores", str(run / "scores")], "folders are not searched"),
        (["--traversals", shard, shard], "given twice"),
        (["--real-traversals", shard], "no column 'image_id' in meta.parquet"),
        (["--traversals", str(gone)], "image 'images/0/k10.png' not found in the shard"),
        ([], "no shard folder given"),
    ]
    for args, needle in cases:
        proc = run_main(capsys, "viewer", *args, "--out", str(out))
        assert_one_line_error(proc, needle, prefix="medtraverse viewer: error:", untouched=[out])


# --- in a browser -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> str:
    """Headless Chromium; its absence skips the test unless MEDTRAVERSE_REQUIRE_BROWSER=1."""
    return chromium("the viewer")


def page_dom(browser: str, page: Path, fragment: str, profile: Path) -> str:
    """The viewer's DOM after its script ran, opened with the URL fragment ``fragment``."""
    return dump_dom(browser, page.as_uri() + (f"#{fragment}" if fragment else ""), profile)


def shown(dom: str, which: str) -> dict[str, Any]:
    """What the page shows in one panel: image source, position, probabilities, LPIPS."""
    img = re.search(rf'<img[^>]*id="{which}-img"[^>]*>', dom)
    src = re.search(r'src="([^"]*)"', img.group(0)) if img else None
    pos = re.search(rf'id="{which}-pos">([^<]*)<', dom)
    table = re.search(rf'id="{which}-probs">(.*?)</table>', dom, re.S)
    lpips = re.search(rf'id="{which}-lpips">([^<]*)<', dom)
    return {
        "ready": 'data-state="ready"' in dom,
        "src": src.group(1) if src else None,
        "pos": pos.group(1) if pos else None,
        "probs": re.findall(r'<td class="p">([^<]*)</td>', table.group(1)) if table else [],
        "lpips": lpips.group(1) if lpips else "",
    }


def expected(data: dict[str, Any], traj: str, item: str, which: str, at: int) -> dict[str, Any]:
    """What the panel must show for entry ``at``, from the score table's values."""
    t = next(t for t in data["trajectories"] if t["name"] == traj)
    it = next(i for i in t["items"] if i["id"] == item)
    entry = it[which][at]
    return {"src": data["images"][entry["i"]], "probs": [f"{p:.3f}" for p in entry["p"]]}


def test_the_script_moves_the_sliders_in_chromium(
    run: Path, page: Path, browser: str, tmp_path: Path
) -> None:
    html = page.read_text()
    data = page_data(html)
    scores = pd.read_parquet(run / "scores/chexpert/support_devices/shard-0001.parquet")

    def row(seed: int, kind: str, k: int, frame: int) -> list[str]:
        sel = scores[(scores.seed == seed) & (scores.kind == kind)]
        sel = sel[(sel.k == k) & (sel.frame == frame)]
        assert len(sel) == 1
        return [f"{sel.iloc[0]['p_' + a]:.3f}" for a in ("support_devices", "pleural_effusion")]

    # opened plainly: the first trajectory's first seed, neutral image and frame 0
    dom = page_dom(browser, page, "", tmp_path / "p0")
    start = shown(dom, "swap")
    assert start["ready"] and start["pos"] == "neutral", dom[-3000:]
    assert start["src"] == expected(data, "pleural_effusion", "seed-0", "swap", 0)["src"]

    # the fragment picks trajectory and seed, then moves both sliders by input events
    fragment = "traj=support_devices&item=seed-3&k=10&frame=3"
    dom = page_dom(browser, page, fragment, tmp_path / "p1")
    swap, bezier = shown(dom, "swap"), shown(dom, "bezier")
    assert swap["ready"] and swap["pos"] == "k = 10", dom[-3000:]
    assert swap["src"] == expected(data, "support_devices", "seed-3", "swap", 2)["src"]
    assert swap["src"] != start["src"]
    assert swap["probs"] == row(3, "swap", 10, -1)  # exactly the score table's row for k = 10
    lp = scores[(scores.seed == 3) & (scores.kind == "swap") & (scores.k == 10)].lpips.iloc[0]
    assert swap["lpips"] == f"LPIPS to neutral {lp:.3f}"
    assert bezier["pos"] == "frame 3 (t = 0.750)"
    assert bezier["src"] == expected(data, "support_devices", "seed-3", "bezier", 3)["src"]
    assert bezier["probs"] == row(3, "bezier", -1, 3)
    assert 'id="real-panel"' in dom and re.search(r'class="panel hidden" id="real-panel"', dom)

    # a real image: its panel is shown, with LPIPS to the real image beside the swap's
    dom = page_dom(browser, page, "traj=support_devices&item=real-img001&k=45", tmp_path / "p2")
    swap = shown(dom, "swap")
    assert swap["pos"] == "k = 45" and "LPIPS to the real image" in swap["lpips"], dom[-3000:]
    assert swap["src"] == expected(data, "support_devices", "real-img001", "swap", 3)["src"]
    assert re.search(r'class="panel" id="real-panel"', dom)
    real = next(t for t in data["trajectories"] if t["name"] == "support_devices")["items"][-1]
    img = re.search(r'<img[^>]*id="real-img"[^>]*>', dom)
    assert img and f'src="{data["images"][real["real"]["i"]]}"' in img.group(0)
    scores = pd.read_parquet(run / "scores-real/chexpert/support_devices/shard-0000.parquet")
    mine = scores[(scores.seed == 1) & (scores.kind == "real")].iloc[0]
    assert shown(dom, "real")["probs"] == [
        f"{mine.p_support_devices:.3f}",
        f"{mine.p_pleural_effusion:.3f}",
    ]
    assert (
        shown(dom, "real")["lpips"]
        == f"LPIPS of the reconstruction (neutral) to it {mine.lpips:.3f}"
    )


def test_a_broken_script_fails_the_dom_check(page: Path, browser: str, tmp_path: Path) -> None:
    """The check above sees what the script drew: a page whose script fails shows nothing."""
    broken = tmp_path / "broken.html"
    html = page.read_text()
    assert html.count('"use strict";') == 1
    broken.write_text(html.replace('"use strict";', '"use strict"; var = ;'))
    dom = page_dom(browser, broken, "traj=support_devices&item=seed-3&k=10", tmp_path / "p")
    assert 'id="swap-img"' in dom  # the page itself loaded
    swap = shown(dom, "swap")
    assert not swap["ready"] and swap["src"] is None and swap["probs"] == [] and not swap["pos"]


def screenshot(png: str | Path, seeds: int = 4) -> Path:
    """docs/figures/viewer.png from the fake run, 96 px images (until a demo run replaces it)."""
    import tempfile

    from medtraverse.cli import main

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "chromium not installed"
    with tempfile.TemporaryDirectory() as tmp:
        root = write_run(Path(tmp), seeds_per_shard=seeds // 2, size=96)
        out = root / "viewer.html"
        params = json.dumps({**PARAMS, "display_size": 224})
        assert main(["viewer", *inputs(root), "--out", str(out), "--params", params]) == 0
        target = Path(png).resolve()
        url = out.as_uri() + "#traj=support_devices&item=real-img001&k=10&frame=3"
        subprocess.run(
            chromium_command(
                browser,
                Path(tmp) / "profile",
                "--hide-scrollbars",
                f"--screenshot={target}",
                "--window-size=1100,700",
                url,
            ),
            check=True,
            capture_output=True,
            timeout=120,
        )
    return target
