"""The CheXpert twin: patients, studies and views in CheXpert-v1.0-small's on-disk layout.

Each patient has one anatomy (thorax and lung shape, size, pose, brightness, ribs) shared by all
of their studies; each study re-poses and re-exposes it a little and draws its 13 labels
independently in the real encoding (1.0, 0.0, -1.0 uncertain, blank). Three findings are
rendered when, and only when, their label is 1.0 (so the U-zeros policy matches the pixels):

- Support Devices: a bright radio-opaque tube or line (endotracheal / nasogastric tube,
  central line), sometimes a pacemaker box with its lead;
- Pleural Effusion: a bright basal opacity in one or both lungs whose upper edge rises
  laterally (the meniscus);
- Cardiomegaly: the heart shadow 1.45-1.65x wider (cardio-thoracic ratio > 0.55).

The other labels are labels only. Sizes are chosen so the findings survive a resize to 32 px.
No Finding is 1.0 exactly when no other label is 1.0.

Layout: ``CheXpert-v1.0-small/{train,valid}.csv`` and the JPEGs (grey) at the ``Path`` values,
1-5 studies per train patient, a lateral view (``view2_lateral.jpg``, AP/PA blank) in about 30%
of the studies; valid.csv holds about 5% of the images, from held-out patients (numbered after
the train patients, one study each) with 0/1 labels only, like the real valid set. Every patient,
study and view draws from its own generator (``derive_seed(seed, "synth/chexpert", key)``), so
the first images do not change when ``n`` grows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image
from tqdm import tqdm

from medtraverse.core.formats import CHEXPERT_COLUMNS, CHEXPERT_LABELS, snake
from medtraverse.core.seeding import derive_seed
from medtraverse.data.synth import draw

DATASET_DIR = "CheXpert-v1.0-small"
STAGE = "synth/chexpert"
LABELS = list(CHEXPERT_LABELS)
COLUMNS = list(CHEXPERT_COLUMNS)
RENDERED = ("Support Devices", "Pleural Effusion", "Cardiomegaly")
# (P(1.0), P(0.0), P(-1.0)) per label; the rest is blank (not mentioned). Roughly CheXpert's
# shares, with Support Devices and Pleural Effusion a little rarer than in the real train set.
LABEL_PROBS: dict[str, tuple[float, float, float]] = {
    "Enlarged Cardiomediastinum": (0.05, 0.06, 0.05),
    "Cardiomegaly": (0.15, 0.07, 0.04),
    "Lung Opacity": (0.18, 0.03, 0.02),
    "Lung Lesion": (0.04, 0.005, 0.006),
    "Edema": (0.10, 0.09, 0.05),
    "Consolidation": (0.06, 0.12, 0.10),
    "Pneumonia": (0.03, 0.01, 0.07),
    "Atelectasis": (0.12, 0.005, 0.12),
    "Pneumothorax": (0.07, 0.25, 0.015),
    "Pleural Effusion": (0.30, 0.14, 0.05),
    "Pleural Other": (0.015, 0.001, 0.01),
    "Fracture": (0.04, 0.01, 0.003),
    "Support Devices": (0.35, 0.03, 0.01),
}
STUDIES_PER_PATIENT = ((1, 2, 3, 4, 5), (0.3, 0.25, 0.2, 0.15, 0.1))


@dataclass(frozen=True)
class ChexpertOptions:
    """What the twin looks like beyond n, size and seed."""

    valid_fraction: float = 0.05  # share of images in valid.csv (held-out patients)
    lateral_prob: float = 0.3  # chance that a study also has a lateral view
    jpeg_quality: int = 92
    # 1.0 as in CheXpert, where a study with no positive label is marked No Finding; lower values
    # leave it blank instead, so its caption is the neutral "Normal chest X-ray ..." prompt.
    no_finding_prob: float = 1.0
    # Scales the positive rate of labels that are not drawn (Edema, Lung Opacity, ...): the demo
    # lowers it so captions name mostly what the pixels show.
    unrendered_scale: float = 1.0
    # A confounded pool (the shortcut study): the chance that a study's Pleural Effusion label
    # copies its Support Devices label (positive with it; a positive effusion is dropped without
    # it), so both-or-neither studies are commoner than independent draws make them. 0 keeps the
    # independent draws (and every image) of the default twin.
    confound: float = 0.0


# --- sampling --------------------------------------------------------------------------------


def sample_anatomy(rng: np.random.Generator, sex: str) -> dict[str, float]:
    """One patient's anatomy, shared by all their studies.

    Lung height is tied to thorax width (x0.80-0.88) so a shortened lung reads as an effusion;
    the heart's width is 38-45% of the thorax (the cardio-thoracic ratio) before cardiomegaly.
    """
    d = rng.uniform(0.36, 0.42)
    lw = rng.uniform(0.24, 0.29)
    thorax = 2.0 * (d + lw)
    height = thorax * rng.uniform(0.80, 0.88)
    top = rng.uniform(-0.78, -0.66)
    return {
        "lung_offset": d,
        "lung_half_width": lw,
        "lung_top": top,
        "lung_bottom": top + height,
        "dome": rng.uniform(0.03, 0.08),
        "right_raise": rng.uniform(0.0, 0.05),
        "body_half_width": d + lw + rng.uniform(0.13, 0.2),
        "heart_half_width": 0.5 * thorax * rng.uniform(0.38, 0.45),
        "heart_half_height": rng.uniform(0.22, 0.27),
        "heart_dx": rng.uniform(0.05, 0.10),
        "heart_dy": rng.uniform(0.28, 0.34),
        "scale": rng.uniform(0.92, 1.04) + (0.02 if sex == "Male" else 0.0),
        "cx": float(np.clip(rng.normal(0.0, 0.025), -0.06, 0.06)),
        "cy": float(np.clip(rng.normal(0.0, 0.025), -0.06, 0.06)),
        "rotation": rng.uniform(-5.0, 5.0),
        "background": rng.uniform(0.02, 0.10),
        "tissue": rng.uniform(0.56, 0.68),
        "lung": rng.uniform(0.16, 0.27),
        "rib_spacing": rng.uniform(0.15, 0.19),
        "rib_phase": rng.uniform(0.0, 1.0),
        "rib_contrast": rng.uniform(0.04, 0.08),
        "rib_curve": rng.uniform(0.2, 0.35),
    }


def sample_labels(
    rng: np.random.Generator,
    valid: bool,
    no_finding_prob: float = 1.0,
    unrendered_scale: float = 1.0,
    confound: float = 0.0,
) -> dict[str, float]:
    """The 14 labels of one study; valid studies have only 0/1 (like the real valid set).

    No Finding is 1.0 exactly when no other label is 1.0 (else blank, or 0.0 in valid). With
    ``confound`` > 0 one more draw decides whether Pleural Effusion copies Support Devices.
    """
    out: dict[str, float] = {}
    for name in LABELS[1:]:
        p1, p0, pu = LABEL_PROBS[name]
        if name not in RENDERED:
            p1 *= unrendered_scale
        u = rng.random()
        if valid:
            out[name] = 1.0 if u < p1 else 0.0
        elif u < p1:
            out[name] = 1.0
        elif u < p1 + p0:
            out[name] = 0.0
        elif u < p1 + p0 + pu:
            out[name] = -1.0
        else:
            out[name] = math.nan
    if confound > 0.0 and rng.random() < confound:
        if out["Support Devices"] == 1.0:
            out["Pleural Effusion"] = 1.0
        elif out["Pleural Effusion"] == 1.0:
            out["Pleural Effusion"] = 0.0 if valid else math.nan
    positive = any(v == 1.0 for v in out.values())
    marked = rng.random() < no_finding_prob
    if positive:
        out["No Finding"] = 0.0 if valid else math.nan
    else:
        out["No Finding"] = 1.0 if (marked or valid) else math.nan
    return {name: out[name] for name in LABELS}


def sample_study(
    rng: np.random.Generator, valid: bool, lateral_prob: float, opts: ChexpertOptions | None = None
) -> dict[str, Any]:
    """Labels, pose/exposure jitter and finding geometry of one study (shared by its views)."""
    opts = opts or ChexpertOptions()
    labels = sample_labels(rng, valid, opts.no_finding_prob, opts.unrendered_scale, opts.confound)
    study: dict[str, Any] = {
        "labels": labels,
        "ap_pa": "AP" if rng.random() < 0.75 else "PA",
        "lateral": bool(rng.random() < lateral_prob),
        "dx": float(rng.normal(0.0, 0.02)),
        "dy": float(rng.normal(0.0, 0.02)),
        "drot": float(rng.normal(0.0, 1.5)),
        "gain": rng.uniform(0.93, 1.07),
        "gamma": rng.uniform(0.9, 1.1),
        "noise": rng.uniform(0.008, 0.025),
        "blur": rng.uniform(0.3, 0.6),  # px at 64 px, grows with sqrt(size)
    }
    # Geometry is drawn for every study (a fixed number of draws), used only if rendered.
    kinds = ("et_tube", "ng_tube", "line", "pacemaker")
    n_dev = 1 + int(rng.random() < 0.35)
    devices = []
    for _ in range(2):
        devices.append(
            {
                "kind": kinds[int(rng.choice(4, p=[0.3, 0.2, 0.3, 0.2]))],
                "side": 1.0 if rng.random() < 0.75 else -1.0,
                "x0": float(rng.normal(0.0, 0.04)),
                "tip": rng.uniform(0.0, 1.0),
                "width": rng.uniform(0.07, 0.09),
                "level": rng.uniform(0.93, 1.0),
                "box_y": rng.uniform(-0.8, -0.6),
                "box_x": rng.uniform(0.45, 0.6),
                "box_angle": rng.uniform(-15.0, 15.0),
            }
        )
    study["devices"] = devices[:n_dev]
    u = rng.random()
    study["effusion"] = {
        "side": "both" if u < 0.7 else ("left" if u < 0.85 else "right"),
        "frac": rng.uniform(0.24, 0.36),
        "meniscus": rng.uniform(0.18, 0.28),
        "opacity": rng.uniform(0.88, 0.97),
    }
    study["cardio_factor"] = rng.uniform(1.45, 1.65)
    return study


# --- rendering -------------------------------------------------------------------------------


def _device_paths(dev: dict[str, Any], a: dict[str, float], lateral: bool) -> tuple[list, Any]:
    """Control polylines (frame coordinates) and an optional box (cx, cy, hx, hy, angle)."""
    bottom = a["lung_bottom"]
    hy = bottom - a["heart_dy"]
    kind, side = dev["kind"], dev["side"]
    if lateral:
        if kind in ("et_tube", "ng_tube"):
            tip = -0.45 + 0.25 * dev["tip"] if kind == "et_tube" else bottom + 0.25
            return [draw.bezier([(-0.12, -1.15), (-0.05, -0.5), (0.0, tip)])], None
        if kind == "line":
            tip = -0.25 + 0.25 * dev["tip"]
            return [draw.bezier([(-0.35, -1.0), (-0.15, -0.6), (-0.05, tip)])], None
        box = (-0.62, dev["box_y"], 0.05, 0.11, 0.0)
        return [draw.bezier([(-0.62, dev["box_y"]), (-0.3, -0.4), (-0.3, hy)])], box
    if kind == "et_tube":
        tip = -0.45 + 0.25 * dev["tip"]
        return [draw.bezier([(dev["x0"], -1.15), (0.5 * dev["x0"], -0.7), (0.02, tip)])], None
    if kind == "ng_tube":
        ctrl = [(dev["x0"], -1.15), (0.0, -0.2), (0.05, bottom + 0.15), (0.35, bottom + 0.25)]
        return [draw.bezier(ctrl, 32)], None
    if kind == "line":
        tip = -0.25 + 0.25 * dev["tip"]
        ctrl = [(side * 0.8, -0.95), (side * 0.35, -0.72), (side * 0.08, -0.45), (side * 0.03, tip)]
        return [draw.bezier(ctrl, 32)], None
    bx, by = side * dev["box_x"], dev["box_y"]
    lead = [(bx, by), (side * 0.3, -0.45), (0.05, hy - 0.05), (a["heart_dx"] + 0.1, hy + 0.05)]
    return [draw.bezier(lead, 32)], (bx, by, 0.12, 0.085, dev["box_angle"])


def _draw_devices(
    img: np.ndarray,
    grid: draw.Grid,
    frame: draw.Frame,
    X: np.ndarray,
    Y: np.ndarray,
    study: dict[str, Any],
    a: dict[str, float],
    lateral: bool,
) -> None:
    for dev in study["devices"]:
        paths, box = _device_paths(dev, a, lateral)
        for pts in paths:
            width = dev["width"] * (0.75 if box is not None else 1.0) * frame.scale
            draw.paint(img, draw.stroke(grid, frame.to_image(pts), width), dev["level"])
        if box is not None:
            bx, by, hx, hy, ang = box
            c, s = math.cos(math.radians(ang)), math.sin(math.radians(ang))
            u, v = c * (X - bx) + s * (Y - by), -s * (X - bx) + c * (Y - by)
            dist = np.maximum(np.abs(u) - hx, np.abs(v) - hy)
            draw.paint(img, draw.inside(dist, grid.px / frame.scale), dev["level"])


class View(NamedTuple):
    """What drawing one view of a study needs: its anatomy, the study, which findings are
    drawn, the pixel grid, the body's frame and the study's random stream."""

    a: dict[str, float]
    study: dict[str, Any]
    render: dict[str, bool]
    grid: draw.Grid
    frame: draw.Frame
    rng: np.random.Generator


def _canvas(
    a: dict[str, float], grid: draw.Grid, frame: draw.Frame
) -> tuple[np.ndarray, np.ndarray, float, np.ndarray, np.ndarray]:
    """What both views start from: body coordinates, the soft anatomical edge width, the tissue
    level (brighter towards the feet) and a background-filled image."""
    X, Y = frame.coords(grid)
    edge = max(grid.px / frame.scale, 0.05)  # anatomical edges are soft
    tissue = a["tissue"] * (1.0 + 0.06 * Y)
    return X, Y, edge, tissue, np.full(X.shape, a["background"])


def _frontal(view: View) -> np.ndarray:
    a, study, render, grid, frame, rng = view
    X, Y, edge, tissue, img = _canvas(a, grid, frame)
    bw = a["body_half_width"]
    r = ((np.abs(X) / bw) ** 4 + (np.abs(Y - 0.35) / 1.3) ** 4) ** 0.25
    body = np.maximum(
        draw.inside((r - 1.0) * bw, edge), draw.inside(np.maximum(np.abs(X) - 0.22, Y + 0.7), edge)
    )
    draw.paint(img, body, tissue)
    # lungs, with ribs and faint vascular markings
    top, bottom, lw, d = a["lung_top"], a["lung_bottom"], a["lung_half_width"], a["lung_offset"]
    sides: dict[int, np.ndarray] = {}
    for side in (-1, 1):
        lc = side * d
        base = bottom - (a["right_raise"] if side == -1 else 0.0)
        ybot = base - a["dome"] * np.clip(1.0 - ((X - lc) / lw) ** 2, 0.0, 1.0)
        s = np.clip((Y - top) / (bottom - top), 0.0, 1.0)
        hw = lw * (0.4 + 0.6 * np.sqrt(s))
        dist = np.maximum(np.maximum(np.abs(X - lc) - hw, top - Y), Y - ybot)
        sides[side] = draw.inside(dist, edge)
    lungs = np.maximum(sides[-1], sides[1])
    v = (Y - a["rib_curve"] * X**2) / a["rib_spacing"] - a["rib_phase"]
    ribs = (0.5 + 0.5 * np.cos(2.0 * np.pi * v)) ** 6
    marks = 0.015 * draw.smooth_noise(rng, grid.size, 6)
    hilum = 0.05 * np.clip(1.0 - (np.abs(X) - (d - lw)) / lw, 0.0, 1.0)
    draw.paint(img, lungs, a["lung"] + a["rib_contrast"] * ribs + marks + hilum)
    # pleural effusion: fluid from the lung base up to a level that rises laterally
    if render["pleural_effusion"]:
        eff = study["effusion"]
        affected = {"both": (-1, 1), "left": (1,), "right": (-1,)}[eff["side"]]  # patient's side
        for side in affected:
            lc = side * d
            base = bottom - (a["right_raise"] if side == -1 else 0.0)
            t = np.clip(0.5 + side * (X - lc) / (2.0 * lw), 0.0, 1.0)
            level = base - eff["frac"] * (bottom - top) - eff["meniscus"] * t**2
            fluid = draw.smoothstep((Y - level) / 0.12) * eff["opacity"] * sides[side]
            draw.paint(img, fluid, tissue * 0.97)
    # heart, aortic knob, spine, clavicles
    factor = study["cardio_factor"] if render["cardiomegaly"] else 1.0
    hx = a["heart_dx"] + (0.04 if factor > 1.0 else 0.0)
    hy = bottom - a["heart_dy"] + (0.02 if factor > 1.0 else 0.0)
    hh = a["heart_half_height"] * (1.12 if factor > 1.0 else 1.0)
    heart = draw.inside(
        draw.ellipse_dist(X, Y, hx, hy, a["heart_half_width"] * factor, hh), edge * 0.8
    )
    draw.paint(img, heart, tissue * 1.02)
    knob = draw.inside(draw.ellipse_dist(X, Y, 0.1, top + 0.3, 0.09, 0.07), edge)
    draw.paint(img, knob, tissue)
    img += 0.05 * draw.inside(np.abs(X) - 0.085, edge) * (1.0 - lungs) * body
    for side in (-1, 1):
        pts = draw.bezier(
            [(side * 0.1, top + 0.05), (side * 0.4, top + 0.02), (side * 0.72, top - 0.12)]
        )
        img += 0.06 * draw.stroke(grid, frame.to_image(pts), 0.07 * frame.scale)
    return img


def _lateral(view: View) -> np.ndarray:
    a, study, render, grid, frame, rng = view
    X, Y, edge, tissue, img = _canvas(a, grid, frame)
    half_depth = 0.85 * a["body_half_width"]
    body = np.maximum(
        draw.inside(draw.ellipse_dist(X, Y, 0.0, 0.3, half_depth, 1.35), edge),
        draw.inside(np.maximum(np.abs(X + 0.05) - 0.25, Y + 0.7), edge),
    )
    draw.paint(img, body, tissue)
    top, bottom = a["lung_top"], a["lung_bottom"]
    la = 0.75 * (a["lung_offset"] + a["lung_half_width"])
    lb = 0.5 * (bottom - top)
    ybot = bottom - a["dome"] * np.clip(1.0 - ((X - 0.05) / la) ** 2, 0.0, 1.0)
    dist = np.maximum(
        draw.ellipse_dist(X, Y, 0.05, 0.5 * (top + bottom) - 0.05, la, lb + 0.05), Y - ybot
    )
    lung = draw.inside(dist, edge)
    marks = 0.015 * draw.smooth_noise(rng, grid.size, 6)
    draw.paint(img, lung, a["lung"] + 0.04 + marks)
    if render["pleural_effusion"]:
        eff = study["effusion"]
        t = np.clip((X - (0.05 - la)) / (2.0 * la), 0.0, 1.0)  # 0 anterior, 1 posterior
        level = bottom - 0.8 * eff["frac"] * (bottom - top) - eff["meniscus"] * t**2
        draw.paint(img, draw.smoothstep((Y - level) / 0.12) * eff["opacity"] * lung, tissue * 0.97)
    factor = study["cardio_factor"] if render["cardiomegaly"] else 1.0
    hy = bottom - a["heart_dy"]
    heart = draw.inside(
        draw.ellipse_dist(
            X, Y, -0.3, hy, a["heart_half_width"] * 0.9 * factor, a["heart_half_height"] * 1.1
        ),
        edge * 0.8,
    )
    draw.paint(img, heart, tissue * 1.02)
    spine_x = 0.75 * half_depth
    vert = 0.6 + 0.4 * np.cos(2.0 * np.pi * Y / 0.17)
    img += 0.08 * vert * draw.inside(np.abs(X - spine_x) - 0.08, edge) * body
    return img


def render_view(
    a: dict[str, float], study: dict[str, Any], lateral: bool, size: int, rng: np.random.Generator
) -> np.ndarray:
    """One grey uint8 image of a study's frontal or lateral view."""
    grid = draw.Grid(size)
    frame = draw.Frame(
        a["cx"] + study["dx"], a["cy"] + study["dy"], a["rotation"] + study["drot"], a["scale"]
    )
    labels = study["labels"]
    render = {snake(k): labels[k] == 1.0 for k in RENDERED}
    img = (_lateral if lateral else _frontal)(View(a, study, render, grid, frame, rng))
    img = study["gain"] * np.clip(img, 0.0, 1.0) ** study["gamma"]
    img *= 1.0 + 0.04 * draw.smooth_noise(rng, size, 3)
    if render["support_devices"]:
        X, Y = frame.coords(grid)
        _draw_devices(img, grid, frame, X, Y, study, a, lateral)
    img = draw.blur(img, study["blur"] * math.sqrt(size / 64.0))
    img += rng.normal(0.0, study["noise"], img.shape)
    return draw.to_uint8(img)


# --- the dataset -----------------------------------------------------------------------------


def _patient(rng: np.random.Generator) -> dict[str, Any]:
    sex = "Male" if rng.random() < 0.55 else "Female"
    age = int(rng.integers(18, 91))
    return {"sex": sex, "age": age, "anatomy": sample_anatomy(rng, sex)}


def _views(
    split: str, pid: int, patient: dict[str, Any], n_studies: int, seed: int, opts: ChexpertOptions
) -> Any:
    """Yield (study number, view number, lateral, study) for one patient, in path order."""
    for s in range(1, n_studies + 1):
        srng = np.random.default_rng(derive_seed(seed, STAGE, f"{split}/patient{pid}/study{s}"))
        study = sample_study(srng, split == "valid", opts.lateral_prob, opts)
        study["age"] = patient["age"] + (s - 1) // 2
        yield s, 1, False, study
        if study["lateral"]:
            yield s, 2, True, study


def _add_views(
    plan: list[dict[str, Any]],
    limit: int,
    split: str,
    pid: int,
    key: str,
    patient: dict[str, Any],
    views: Any,
) -> None:
    """Append one patient's ``views`` (from :func:`_views`) to ``plan`` until it holds ``limit``
    images; the views past the limit are never drawn."""
    for s, v, lateral, study in views:
        if len(plan) >= limit:
            break
        plan.append(
            {
                "split": split,
                "pid": pid,
                "key": key,
                "study": s,
                "view": v,
                "lateral": lateral,
                "patient": patient,
                "data": study,
            }
        )


def _plan(n: int, seed: int, opts: ChexpertOptions) -> list[dict[str, Any]]:
    """Every image to write, in order. Train patients are drawn one by one until ``n`` minus the
    valid share is reached, so the first images do not depend on ``n``."""
    n_valid = 0 if n < 2 else max(1, round(opts.valid_fraction * n))
    n_train = n - n_valid
    plan: list[dict[str, Any]] = []
    pid = 0
    while len(plan) < n_train:
        pid += 1
        prng = np.random.default_rng(derive_seed(seed, STAGE, f"train/patient{pid}"))
        patient = _patient(prng)
        n_studies = int(prng.choice(STUDIES_PER_PATIENT[0], p=STUDIES_PER_PATIENT[1]))
        views = _views("train", pid, patient, n_studies, seed, opts)
        _add_views(plan, n_train, "train", pid, f"train/patient{pid}", patient, views)
    j = 0
    while len(plan) < n:
        j += 1
        prng = np.random.default_rng(derive_seed(seed, STAGE, f"valid/{j}"))
        patient = _patient(prng)
        views = _views("valid", j, patient, 1, seed, opts)
        _add_views(plan, n, "valid", pid + j, f"valid/{j}", patient, views)
    return plan


def write(root: Path, n: int, size: int, seed: int, opts: ChexpertOptions) -> dict[str, Any]:
    """Write the twin under ``root`` (CSV tables, JPEGs, factors.parquet); return a summary."""
    import pandas as pd

    plan = _plan(n, seed, opts)
    tables: dict[str, list[dict[str, Any]]] = {"train": [], "valid": []}
    factors: list[dict[str, Any]] = []
    for item in tqdm(plan, desc="synth chexpert", unit="img", disable=None):
        study, patient, a = item["data"], item["patient"], item["patient"]["anatomy"]
        view_name = f"view{item['view']}_{'lateral' if item['lateral'] else 'frontal'}"
        image_id = f"patient{item['pid']:05d}/study{item['study']}/{view_name}"
        rel = f"{DATASET_DIR}/{item['split']}/{image_id}.jpg"
        vrng = np.random.default_rng(
            derive_seed(seed, STAGE, f"{item['key']}/study{item['study']}/view{item['view']}")
        )
        pixels = render_view(a, study, item["lateral"], size, vrng)
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, format="JPEG", quality=opts.jpeg_quality)
        labels = study["labels"]
        row = {
            "Path": rel,
            "Sex": patient["sex"],
            "Age": study["age"],
            "Frontal/Lateral": "Lateral" if item["lateral"] else "Frontal",
            "AP/PA": None if item["lateral"] else study["ap_pa"],
            **labels,
        }
        tables[item["split"]].append(row)
        render = {snake(k): labels[k] == 1.0 for k in RENDERED}
        fac: dict[str, Any] = {
            "path": rel,
            "image_id": image_id,
            "split": item["split"],
            "patient_id": f"patient{item['pid']:05d}",
            "study": item["study"],
            "view": item["view"],
            "frontal_lateral": row["Frontal/Lateral"],
            "ap_pa": row["AP/PA"],
            "sex": patient["sex"],
            "age": study["age"],
        }
        fac.update({snake(k): labels[k] for k in LABELS})
        fac.update({f"{k}_rendered": v for k, v in render.items()})
        devs = study["devices"] if render["support_devices"] else []
        fac["device_kinds"] = ",".join(d["kind"] for d in devs)
        eff = study["effusion"]
        # the patient's side, as radiologists say it: patient left = image right
        fac["effusion_side"] = eff["side"] if render["pleural_effusion"] else ""
        fac["effusion_frac"] = eff["frac"] if render["pleural_effusion"] else math.nan
        fac["cardio_factor"] = study["cardio_factor"] if render["cardiomegaly"] else 1.0
        fac.update({f"anat_{k}": v for k, v in a.items()})
        fac.update(
            {f"study_{k}": study[k] for k in ("dx", "dy", "drot", "gain", "gamma", "noise", "blur")}
        )
        factors.append(fac)
    base = root / DATASET_DIR
    base.mkdir(parents=True, exist_ok=True)
    for split, rows in tables.items():
        table = pd.DataFrame(rows, columns=COLUMNS)
        table["Age"] = table["Age"].astype("int64")
        table.to_csv(base / f"{split}.csv", index=False)
    pd.DataFrame(factors).to_parquet(root / "factors.parquet", index=False)
    frontal = [f for f in factors if f["frontal_lateral"] == "Frontal"]
    return {
        "images": len(factors),
        "train_images": len(tables["train"]),
        "valid_images": len(tables["valid"]),
        "patients": len({f["patient_id"] for f in factors}),
        "lateral_images": len(factors) - len(frontal),
        **{
            f"{k}_rendered": int(sum(f[f"{k}_rendered"] for f in factors))
            for k in map(snake, RENDERED)
        },
    }
