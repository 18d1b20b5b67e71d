"""A trajectory viewer: one self-contained HTML page per dataset, to look at traversals.

``medtraverse viewer --traversals SHARD [SHARD ...] --scores PARQUET [PARQUET ...]
[--real-traversals SHARD ...] [--real-scores PARQUET ...] --out HTML --params JSON``

- ``--traversals`` / ``--scores``: seed shards (``medtraverse traverse``) and their score
  parquets (``medtraverse score``); ``--real-traversals`` / ``--real-scores``: shards from
  inverted real images (``medtraverse traverse-real``) and their scores. Each path is named, or
  ``@LIST`` stands for the paths a text file lists; folders are not searched.

The page (``results/<run>/viewer/<dataset>.html``) needs no server and no network: every image
is a ``data:`` URI, script and style are inline, and its content security policy forbids any
fetch. Pick a trajectory and a seed or a real image, then drag one slider through the swap steps
(neutral, then k = 5, 10, ...) and another through the Bezier frames; beside each image are the
classifier probabilities (the score files' ``p_<attribute>`` columns, the trajectory's target
first and marked), LPIPS (``lpips``: a swap to its neutral image, a frame to frame 0) and, for
real images, ``lpips_real`` (to the real image) when the scores carry it, with a small plot of
each probability along the slider. A real image is shown beside them with its own scores (the
score files' ``real`` row: its probabilities, and ``lpips`` of its reconstruction to it).

The URL fragment sets the state through the same events a user's drag fires:
``#traj=<name>&item=<seed-<n> | real-<id>>&k=<k | neutral>&frame=<n>``; the page then marks
``<body data-state="ready">``. Same inputs and params, same bytes (sorted keys, no timestamps).

Params (the dataset's ``viewer`` section), defaults in brackets: seeds [16] (the first seeds of
each trajectory), real_images [32], frames [null: all; else at most this many Bezier frames,
evenly spaced], image_size [128] (largest side of an embedded image), display_size [256]
(side of an image on screen; small images are scaled up, pixelated), image_format ["jpeg"],
jpeg_quality [85], targets [{}: trajectory -> target attribute, filled by the workflow],
title [null].
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medtraverse.core.errors import bad_input
from medtraverse.core.inputs import exact_files
from medtraverse.core.io import read_parquet
from medtraverse.core.params import load_params, parse_params, setting
from medtraverse.evaluation.score import META_COLUMNS
from medtraverse.report.aggregate import read_scores, target_names
from medtraverse.traversal.shards import shard_folders

STAGE = "viewer"
KEY = ["trajectory", "seed", "kind", "k", "frame"]
DIGITS = 5  # probabilities and LPIPS in the page (three shown; the rest for tooltips)


@dataclass(frozen=True)
class ViewerParams:
    """The viewer's settings (``datasets.<d>.viewer``, plus the trajectories' targets)."""

    seeds: int = setting(16, min=1, help="seeds per trajectory in the page (the first ones)")
    real_images: int = setting(32, min=0, help="real images per trajectory in the page")
    frames: int | None = setting(None, min=2, help="Bezier frames shown, evenly spaced (null: all)")
    image_size: int = setting(128, min=8, help="largest side of an embedded image in px")
    display_size: int = setting(
        256, min=32, help="side of an image on screen in px (small images scaled up, pixelated)"
    )
    image_format: str = setting("jpeg", choices=("jpeg", "png"), help="embedded image format")
    jpeg_quality: int = setting(85, min=1, max=95, help="JPEG quality of embedded images")
    targets: dict[str, Any] = setting(
        default_factory=dict, help="trajectory -> target attribute (filled by the workflow)"
    )
    title: str | None = setting(None, help="page title (default: the dataset's name)")


# --- images -----------------------------------------------------------------------------------


def image_uri(path: Path, spec: ViewerParams) -> str:
    """``path`` as a ``data:`` URI: fitted into ``image_size`` px, re-encoded (same bytes for
    the same file and settings)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            mode = "L" if img.mode in ("L", "I;16", "I", "1") else "RGB"
            img = img.convert(mode)
    except OSError as err:
        raise bad_input(path, f"cannot be read as an image ({err})", "a PNG image") from None
    scale = spec.image_size / max(img.size)
    if scale < 1:
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        img = img.resize(size, Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    if spec.image_format == "jpeg":
        img.save(buf, format="JPEG", quality=spec.jpeg_quality)
        mime = "image/jpeg"
    else:
        img.save(buf, format="PNG")
        mime = "image/png"
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


class ImageTable:
    """The page's images, each once (a frame equal to the neutral image costs nothing)."""

    def __init__(self, spec: ViewerParams) -> None:
        self.spec = spec
        self.uris: list[str] = []
        self._index: dict[str, int] = {}
        self._by_path: dict[Path, int] = {}

    def add(self, path: Path) -> int:
        if path not in self._by_path:
            uri = image_uri(path, self.spec)
            if uri not in self._index:
                self._index[uri] = len(self.uris)
                self.uris.append(uri)
            self._by_path[path] = self._index[uri]
        return self._by_path[path]


# --- inputs -----------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return round(float(value), DIGITS)


def _read_shards(folders: list[Path], option: str, real: bool) -> pd.DataFrame:
    """The shards' meta rows with their folder; image paths are checked only for the rows the
    page shows (a paper-scale trajectory holds 150,000 images)."""
    parts = []
    for folder in folders:
        where = folder / "meta.parquet"
        meta = read_parquet(where, "a traversal shard's meta.parquet")
        needed = [*META_COLUMNS, *(("image_id", "real_path") if real else ())]
        missing = [c for c in needed if c not in meta.columns]
        if missing:
            made_by = "medtraverse traverse-real" if real else "medtraverse traverse"
            raise bad_input(
                f"{option} {folder}",
                f"no column {missing[0]!r} in meta.parquet",
                f"a shard written by '{made_by}'",
            )
        if "trajectory" not in meta.columns:
            meta["trajectory"] = folder.parent.name
        if "dataset" not in meta.columns:
            meta["dataset"] = folder.parent.parent.name
        meta["shard_dir"] = str(folder)
        if real:  # a row for the real image itself, as the score files of real shards hold
            first = meta.drop_duplicates("seed")
            first = first.assign(kind="real", k=-1, frame=-1, t=math.nan, path=first["real_path"])
            meta = pd.concat([meta, first], ignore_index=True)
        parts.append(meta)
    if not parts:
        return pd.DataFrame(columns=[*KEY, "dataset", "path", "shard_dir"])
    meta = pd.concat(parts, ignore_index=True)
    for col in ("seed", "k", "frame"):
        meta[col] = meta[col].astype(int)
    return meta


def _inside(folder: str, rel: Any) -> Path:
    """A path of a shard's meta.parquet, checked to be an existing file inside the shard."""
    root = Path(folder).resolve()
    path = (root / str(rel)).resolve()
    if not rel or not path.is_relative_to(root) or not path.is_file():
        raise bad_input(
            Path(folder) / "meta.parquet",
            f"image {str(rel)!r} not found in the shard",
            "paths of existing images inside the shard",
        )
    return path


def _join(meta: pd.DataFrame, files: list[Path]) -> tuple[pd.DataFrame, list[str]]:
    """Meta rows with their scores (``p_*``, ``lpips``, ``lpips_real``; NaN where unscored)."""
    if not files:
        return meta, []
    scores = read_scores(files)
    keep = [c for c in scores.columns if c.startswith("p_") or c in ("lpips", "lpips_real")]
    dup = scores.duplicated(KEY)
    if dup.any():
        row = scores[dup].iloc[0]
        raise bad_input(
            f"score row {dict(row[KEY])}", "given twice", "each image scored once (shards once)"
        )
    attrs = [c[2:] for c in keep if c.startswith("p_")]
    return meta.merge(scores[KEY + keep], on=KEY, how="left"), attrs


def _frame_subset(frames: list[int], limit: int | None) -> list[int]:
    if limit is None or len(frames) <= limit:
        return frames
    picks = np.unique(np.linspace(0, len(frames) - 1, limit).round().astype(int))
    return [frames[i] for i in picks]


def _entry(row: Any, attrs: list[str], images: ImageTable) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "i": images.add(_inside(row.shard_dir, row.path)),
        "p": [_number(getattr(row, f"p_{a}", None)) for a in attrs],
    }
    for col, key in (("lpips", "l"), ("lpips_real", "r")):
        value = _number(getattr(row, col, None))
        if value is not None:
            entry[key] = value
    return entry


def _items(
    meta: pd.DataFrame, attrs: list[str], images: ImageTable, spec: ViewerParams, real: bool
) -> list[dict[str, Any]]:
    seeds = sorted(meta["seed"].unique())[: spec.real_images if real else spec.seeds]
    out = []
    for seed in seeds:
        rows = meta[meta["seed"] == seed]
        swaps = rows[rows["kind"].isin(("neutral", "swap"))]
        swaps = swaps.assign(_n=swaps["kind"] == "swap")
        swaps = swaps.sort_values(["_n", "k"])
        frames = rows[rows["kind"] == "bezier"].sort_values("frame")
        shown = set(_frame_subset(list(frames["frame"]), spec.frames))
        frames = frames[frames["frame"].isin(shown)]
        item: dict[str, Any] = {
            "swap": [
                {"k": int(r.k), **_entry(r, attrs, images)} for r in swaps.itertuples(index=False)
            ],
            "bezier": [
                {"f": int(r.frame), "t": _number(r.t), **_entry(r, attrs, images)}
                for r in frames.itertuples(index=False)
            ],
        }
        first = rows.iloc[0]
        if real:
            item["id"] = f"real-{first['image_id']}"
            item["label"] = str(first["image_id"])
            real_row = next(rows[rows["kind"] == "real"].itertuples(index=False))
            item["real"] = _entry(real_row, attrs, images)
        else:
            item["id"] = f"seed-{int(seed)}"
            item["label"] = f"seed {int(seed)}"
        for col, key in (("neutral_prompt", "neutral"), ("attribute_prompt", "attribute")):
            if col in rows.columns and isinstance(first[col], str):
                item[key] = first[col]
        out.append(item)
    return out


def _order(attrs: list[str], target: Any) -> tuple[list[str], list[str]]:
    """(the attributes with the target's first, the target's attributes that were scored)."""
    names = target_names(target if isinstance(target, str) else tuple(target)) if target else []
    first = [a for a in names if a in attrs]
    return first + [a for a in attrs if a not in first], first


def viewer_data(
    traversals: Sequence[Path],
    scores: Sequence[Path],
    spec: ViewerParams,
    real_traversals: Sequence[Path] = (),
    real_scores: Sequence[Path] = (),
) -> dict[str, Any]:
    """The page's data: trajectories, their seeds and real images, and the image table."""
    seed_meta, seed_attrs = _join(
        _read_shards(list(traversals), "--traversals", False), list(scores)
    )
    real_meta, real_attrs = _join(
        _read_shards(list(real_traversals), "--real-traversals", True), list(real_scores)
    )
    datasets = sorted(set(seed_meta["dataset"].astype(str)) | set(real_meta["dataset"].astype(str)))
    if len(datasets) > 1:
        raise bad_input("--traversals", f"shards of datasets {datasets}", "one dataset's shards")
    attrs = sorted(set(seed_attrs) | set(real_attrs))
    images = ImageTable(spec)
    trajectories = []
    names = sorted(set(seed_meta["trajectory"].astype(str)) | set(real_meta["trajectory"]))
    for name in names:
        order, target = _order(attrs, spec.targets.get(name))
        items = _items(seed_meta[seed_meta["trajectory"] == name], order, images, spec, False)
        items += _items(real_meta[real_meta["trajectory"] == name], order, images, spec, True)
        trajectories.append({"name": name, "attributes": order, "target": target, "items": items})
    return {
        "dataset": datasets[0] if datasets else "",
        "trajectories": trajectories,
        "images": images.uris,
    }


# --- the page ---------------------------------------------------------------------------------

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:16px;color:#222;background:#fafafa}
h1{font-size:18px;margin:0 0 4px}
.prompts{color:#555;margin:0 0 10px;font-size:13px}
.controls label{margin-right:14px}
select{font:inherit}
.panels{display:flex;flex-wrap:wrap;gap:16px;margin-top:10px}
.panel{background:#fff;border:1px solid #ddd;border-radius:6px;padding:10px;width:VIEWpx}
.panel h2{font-size:14px;margin:0 0 6px}
.panel img{width:VIEWpx;height:VIEWpx;object-fit:contain;background:#000;
image-rendering:pixelated;display:block}
.panel input[type=range]{width:100%;margin:8px 0 2px}
.pos{font-weight:600}
table.probs{border-collapse:collapse;width:100%;margin-top:4px;font-size:12px}
table.probs td{padding:1px 3px;white-space:nowrap}
td.bar{width:45%}
td.bar div{height:9px;border-radius:2px}
tr.target td{font-weight:700}
.lpips{font-size:12px;color:#333;margin-top:4px}
svg{display:block;margin-top:6px}
.hidden{display:none}
"""

SCRIPT = r"""
(function(){
"use strict";
var DATA = JSON.parse(document.getElementById("viewer-data").textContent);
var COLOURS = ["#d0504a","#4a7bd0","#3a9a5a","#b07a20","#8a4ab0","#2a9aa0","#777777"];
var $ = function(id){ return document.getElementById(id); };
var trajSel = $("traj"), itemSel = $("item");
var state = {traj: null, item: null};

function fmt(v){ return v === null || v === undefined ? "\u2014" : v.toFixed(3); }

function fill(sel, groups){
  sel.textContent = "";
  groups.forEach(function(g){
    var parent = sel;
    if (g.label){ parent = document.createElement("optgroup"); parent.label = g.label;
      sel.appendChild(parent); }
    g.options.forEach(function(o){
      var opt = document.createElement("option"); opt.value = o[0]; opt.textContent = o[1];
      parent.appendChild(opt);
    });
  });
}

function probs(table, traj, entry){
  table.textContent = "";
  traj.attributes.forEach(function(a, j){
    var tr = document.createElement("tr");
    if (traj.target.indexOf(a) >= 0) tr.className = "target";
    var name = document.createElement("td"); name.textContent = a;
    var val = document.createElement("td"); val.className = "p"; val.textContent = fmt(entry.p[j]);
    var bar = document.createElement("td"); bar.className = "bar";
    var fillDiv = document.createElement("div");
    fillDiv.style.width = ((entry.p[j] || 0) * 100).toFixed(1) + "%";
    fillDiv.style.background = COLOURS[j % COLOURS.length];
    bar.appendChild(fillDiv);
    tr.appendChild(name); tr.appendChild(val); tr.appendChild(bar); table.appendChild(tr);
  });
}

function chart(svgBox, traj, entries, at, label){
  var w = VIEW, h = 84, top = 4, bottom = 18, n = entries.length, parts = [];
  var x = function(i){ return n > 1 ? 4 + i * (w - 8) / (n - 1) : w / 2; };
  var y = function(v){ return h - bottom - v * (h - top - bottom); };
  parts.push('<rect x="0" y="0" width="' + w + '" height="' + (h - bottom + 2) +
             '" fill="#f4f4f4"/>');
  var text = function(xp, anchor, s){ return '<text x="' + xp + '" y="' + (h - 4) +
    '" font-size="10" fill="#555" text-anchor="' + anchor + '">' + s + "</text>"; };
  if (n){ parts.push(text(2, "start", label(entries[0])));
    parts.push(text(w - 2, "end", label(entries[n - 1])));
    parts.push(text(w / 2, "middle", "p along the slider")); }
  parts.push('<line x1="0" x2="' + w + '" y1="' + y(0.5) + '" y2="' + y(0.5) +
             '" stroke="#bbb" stroke-dasharray="3,3"/>');
  traj.attributes.forEach(function(a, j){
    var pts = [];
    entries.forEach(function(e, i){ if (e.p[j] !== null) pts.push(x(i).toFixed(1) + "," +
      y(e.p[j]).toFixed(1)); });
    var width = traj.target.indexOf(a) >= 0 ? 2 : 1;
    parts.push('<polyline fill="none" stroke-width="' + width + '" stroke="' +
               COLOURS[j % COLOURS.length] + '" points="' + pts.join(" ") + '"/>');
  });
  parts.push('<line x1="' + x(at) + '" x2="' + x(at) + '" y1="0" y2="' + (h - bottom + 2) +
             '" stroke="#222"/>');
  svgBox.innerHTML = '<svg width="' + w + '" height="' + h + '" role="img">' +
    parts.join("") + "</svg>";
}

function lpipsText(entry, ref){
  var out = [];
  if (entry.l !== undefined) out.push("LPIPS to " + ref + " " + fmt(entry.l));
  if (entry.r !== undefined) out.push("LPIPS to the real image " + fmt(entry.r));
  return out.join(" \u00b7 ");
}

function swapLabel(e){ return e.k < 0 ? "neutral" : "k = " + e.k; }
function frameShort(e){ return "frame " + e.f; }
function frameLabel(e){
  return "frame " + e.f + (e.t === null ? "" : " (t = " + e.t.toFixed(3) + ")");
}

function show(which){
  var traj = state.traj, item = state.item;
  var entries = item[which], slider = $(which + "-slider");
  var at = Math.min(parseInt(slider.value, 10) || 0, Math.max(entries.length - 1, 0));
  var entry = entries[at], panel = $(which + "-panel");
  if (!entry){ panel.classList.add("hidden"); return; }
  panel.classList.remove("hidden");
  $(which + "-img").src = DATA.images[entry.i];
  $(which + "-pos").textContent = which === "swap" ? swapLabel(entry) : frameLabel(entry);
  probs($(which + "-probs"), traj, entry);
  $(which + "-lpips").textContent = lpipsText(entry, which === "swap" ? "neutral" : "frame 0");
  chart($(which + "-chart"), traj, entries, at, which === "swap" ? swapLabel : frameShort);
}

function selectItem(){
  state.item = state.traj.items.filter(function(it){ return it.id === itemSel.value; })[0] ||
    state.traj.items[0];
  var item = state.item;
  ["swap", "bezier"].forEach(function(which){
    var slider = $(which + "-slider");
    slider.max = Math.max(item[which].length - 1, 0);
    slider.value = 0;
    show(which);
  });
  var realPanel = $("real-panel");
  if (item.real === undefined){ realPanel.classList.add("hidden"); }
  else { realPanel.classList.remove("hidden"); $("real-img").src = DATA.images[item.real.i];
    $("real-pos").textContent = item.label; probs($("real-probs"), state.traj, item.real);
    $("real-lpips").textContent = item.real.l === undefined ? "" :
      "LPIPS of the reconstruction (neutral) to it " + fmt(item.real.l); }
  var text = [];
  if (item.neutral) text.push("neutral: \u201c" + item.neutral + "\u201d");
  if (item.attribute) text.push("attribute: \u201c" + item.attribute + "\u201d");
  $("prompts").textContent = text.join("  \u2192  ");
}

function selectTraj(){
  state.traj = DATA.trajectories.filter(function(t){ return t.name === trajSel.value; })[0];
  var seeds = [], reals = [];
  state.traj.items.forEach(function(it){
    (it.real === undefined ? seeds : reals).push([it.id, it.label]); });
  var groups = [];
  if (seeds.length) groups.push({label: "seeds", options: seeds});
  if (reals.length) groups.push({label: "real images", options: reals});
  fill(itemSel, groups);
  selectItem();
}

function fire(el, type){ el.dispatchEvent(new Event(type, {bubbles: true})); }

function applyHash(){
  var hash = {};
  location.hash.replace(/^#/, "").split("&").forEach(function(kv){
    var i = kv.indexOf("="); if (i > 0) hash[kv.slice(0, i)] = decodeURIComponent(kv.slice(i + 1));
  });
  if (hash.traj !== undefined && hash.traj !== trajSel.value){
    trajSel.value = hash.traj; fire(trajSel, "change"); }
  if (hash.item !== undefined && hash.item !== itemSel.value){
    itemSel.value = hash.item; fire(itemSel, "change"); }
  var moves = [["swap", hash.k, function(e){ return hash.k === "neutral" ? e.k < 0 :
                 String(e.k) === hash.k; }],
               ["bezier", hash.frame, function(e){ return String(e.f) === hash.frame; }]];
  moves.forEach(function(m){
    if (m[1] === undefined) return;
    var at = state.item[m[0]].findIndex(m[2]);
    if (at >= 0){ var slider = $(m[0] + "-slider"); slider.value = at; fire(slider, "input"); }
  });
}

if (!DATA.trajectories.length){ $("empty").classList.remove("hidden"); return; }
fill(trajSel, [{options: DATA.trajectories.map(function(t){ return [t.name, t.name]; })}]);
trajSel.addEventListener("change", selectTraj);
itemSel.addEventListener("change", selectItem);
["swap", "bezier"].forEach(function(which){
  $(which + "-slider").addEventListener("input", function(){ show(which); });
});
selectTraj();
$("main").classList.remove("hidden");
applyHash();
window.addEventListener("hashchange", applyHash);
document.body.setAttribute("data-state", "ready");
})();
"""

CSP = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
    "base-uri 'none'; form-action 'none'"
)


def _panel(which: str, title: str) -> str:
    return (
        f'<div class="panel" id="{which}-panel"><h2>{title}: <span class="pos" id="{which}-pos">'
        f'</span></h2><img id="{which}-img" alt="{title}">'
        f'<input type="range" id="{which}-slider" min="0" max="0" value="0" step="1" '
        f'aria-label="{title}"><table class="probs" id="{which}-probs"></table>'
        f'<div class="lpips" id="{which}-lpips"></div><div id="{which}-chart"></div></div>'
    )


def render_html(data: dict[str, Any], spec: ViewerParams) -> str:
    """The page: inline style, data and script; nothing it refers to lies outside it."""
    view = str(spec.display_size)
    title = html.escape(spec.title or f"Trajectory viewer: {data['dataset']}")
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)
    blob = blob.replace("<", "\\u003c")  # no "</script>" inside the data
    real = (
        '<div class="panel hidden" id="real-panel"><h2>real image: <span class="pos" '
        'id="real-pos"></span></h2><img id="real-img" alt="real image">'
        '<table class="probs" id="real-probs"></table><div class="lpips" id="real-lpips"></div>'
        "</div>"
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        '<meta name="viewport" content="width=device-width,initial-scale=1">\n'
        f"<title>{title}</title>\n<style>{STYLE.replace('VIEW', view)}</style>\n</head>\n"
        f"<body>\n<h1>{title}</h1>\n"
        "<noscript>This viewer needs JavaScript (it runs offline, in this file).</noscript>\n"
        '<p class="hidden" id="empty">No trajectories were given.</p>\n'
        '<div class="hidden" id="main">\n<div class="controls">'
        '<label>trajectory <select id="traj"></select></label>'
        '<label>seed or real image <select id="item"></select></label></div>\n'
        '<p class="prompts" id="prompts"></p>\n<div class="panels">'
        f"{_panel('swap', 'swap')}{_panel('bezier', 'Bezier')}{real}</div>\n</div>\n"
        f'<script type="application/json" id="viewer-data">{blob}</script>\n'
        f"<script>{SCRIPT.replace('VIEW', view)}</script>\n</body></html>\n"
    )


def write_viewer(
    traversals: Sequence[Path],
    scores: Sequence[Path],
    out: Path,
    params: dict[str, Any],
    real_traversals: Sequence[Path] = (),
    real_scores: Sequence[Path] = (),
) -> dict[str, Any]:
    """Write the page to ``out`` (atomically) with its provenance record; returns the data."""
    from medtraverse.core import provenance
    from medtraverse.core.io import atomic_path

    spec = parse_params(ViewerParams, params)
    data = viewer_data(traversals, scores, spec, real_traversals, real_scores)
    page = render_html(data, spec)
    with atomic_path(out, stage=STAGE) as tmp:
        tmp.write_text(page, encoding="utf-8")
    provenance.record(
        out,
        stage=STAGE,
        params=asdict(spec),
        inputs=[*traversals, *scores, *real_traversals, *real_scores],
        extra={
            "trajectories": [t["name"] for t in data["trajectories"]],
            "images": len(data["images"]),
            "bytes": len(page.encode("utf-8")),
        },
    )
    return data


def add_arguments(parser: argparse.ArgumentParser) -> None:
    def paths(option: str, help_: str) -> None:
        parser.add_argument(option, nargs="*", action="extend", default=[], help=help_)

    paths("--traversals", "seed shard folders, each named (or @LIST: a file naming one a line)")
    paths("--scores", "their score parquets, each named (or @LIST)")
    paths("--real-traversals", "real-image shard folders ('medtraverse traverse-real'), or @LIST")
    paths("--real-scores", "their score parquets, or @LIST")
    parser.add_argument("--out", type=Path, required=True, help="the HTML page to write")
    parser.add_argument("--params", default="{}", help="viewer params as JSON or @file")


def main(args: argparse.Namespace) -> None:
    from medtraverse.core.io import check_output

    check_output(args.out, STAGE, "file")  # before any work; never replaces user data
    params = load_params(args.params)
    parse_params(ViewerParams, params)  # bad settings stop before any image is read
    traversals = shard_folders(args.traversals, "--traversals")
    real_traversals = shard_folders(args.real_traversals, "--real-traversals")
    what = "score parquet ('medtraverse score')"
    scores = exact_files(args.scores, "--scores", ".parquet", what)
    real_scores = exact_files(args.real_scores, "--real-scores", ".parquet", what)
    if not traversals and not real_traversals:
        raise bad_input("--traversals", "no shard folder given", "traversal shard folders")
    data = write_viewer(traversals, scores, args.out, params, real_traversals, real_scores)
    size = args.out.stat().st_size
    print(
        f"viewer: {len(data['trajectories'])} trajectories, {len(data['images'])} images, "
        f"{size / 1e6:.1f} MB -> {args.out}",
        file=sys.stderr,
    )
