"""The ISIC 2019 twin: dermoscopy-like images, the ground-truth table and Bissoto-style artifacts.

Each image is a skin background of varied tone with one lesion: melanomas (MEL) irregular and
multi-tone (brown, black, blue-grey), nevi (NV) round and uniformly brown; about 10% of the
images are of the other classes (BCC, BKL, ...) for the preparation stage to filter out.
Artifacts are drawn independently of the class and of each other and rendered visibly:
hair (dark thin curves), gel bubbles (bright circles with rims), a ruler (a white band with
tick marks near an edge), ink (purple marker strokes), dark corners (the dermoscope's round
field of view), and the rarer gel border and colour patches.

Artifact tables (Bissoto et al. format, MEL and NV rows only, like the real subset):
``isic_bias.csv`` with 0/1 flags and ``isic_bias_soft.csv`` with probabilities. The rule
linking them to the pixels: a drawn artifact is *clear* (soft score in [0.905, 0.999],
flag 1, rendered at full strength) or, with probability ``borderline_prob``, *borderline*
(soft score in [0.6, 0.89], flag 0, rendered faintly at 25-40% strength half of the time and
not at all otherwise); an artifact not drawn has a soft score below 0.1 (90%) or in
[0.1, 0.6) (10%), flag 0, and is not rendered. So the flags are exactly the soft scores
thresholded at 0.9, and the threshold picks what is clearly visible.

Like the real release, the twin can also hold several images of one lesion
(``lesion_repeat_prob``: an image re-photographs one of the last few lesions, same class,
skin and lesion shape, new artifacts and pose), with ``ISIC_2019_Training_Metadata.csv``
(``lesion_id`` blank for ``no_lesion_id_fraction`` of the single-image lesions),
``_downsampled`` ids (``downsampled_fraction``: ``ISIC_0000017_downsampled`` in the ground truth
and the file name, ``ISIC_0000017.png`` in the artifact tables), annotations for a subset only
(``annotated_fraction`` of the MEL/NV images in ``isic_bias.csv``/``isic_bias_soft.csv``), and
the authors' merged soft-score table for every MEL/NV image (``ISIC2019_Artifacts_merged.csv``).
``artifact_scale`` thickens the thin artifacts (hair, ink, bubble rims, ruler ticks) so a tiny
model sees them at 32 px.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from medtraverse.core.errors import bad_input
from medtraverse.core.formats import ISIC_ARTIFACTS, ISIC_CLASSES
from medtraverse.core.seeding import derive_seed
from medtraverse.data.synth import draw

STAGE = "synth/isic"
CLASSES = list(ISIC_CLASSES)
ARTIFACTS = list(ISIC_ARTIFACTS)
BIAS_COLUMNS = ["image", *ARTIFACTS, "label", "label_string"]
GT_FILE = "ISIC_2019_Training_GroundTruth.csv"
IMAGE_DIR = "ISIC_2019_Training_Input"
META_FILE = "ISIC_2019_Training_Metadata.csv"
META_COLUMNS = ["image", "age_approx", "anatom_site_general", "lesion_id", "sex"]
# Relative shares of the other classes (the real training set has no UNK image).
OTHER_SHARES = {"BCC": 0.35, "BKL": 0.30, "AK": 0.10, "SCC": 0.08, "DF": 0.08, "VASC": 0.09}
ARTIFACT_PROBS = {
    "dark_corner": 0.3,
    "hair": 0.35,
    "gel_border": 0.08,
    "gel_bubble": 0.3,
    "ruler": 0.3,
    "ink": 0.25,
    "patches": 0.03,
}


@dataclass(frozen=True)
class IsicOptions:
    """What the twin looks like beyond n, size and seed."""

    mel_fraction: float = 0.3  # MEL share among the MEL and NV images (real: 0.23)
    other_fraction: float = 0.1  # share of images of the other classes
    borderline_prob: float = 0.15  # share of drawn artifacts that are borderline
    jpeg_quality: int = 92
    artifact_probs: dict[str, float] = field(default_factory=lambda: dict(ARTIFACT_PROBS))
    annotated_fraction: float = 1.0  # MEL/NV images in the Bissoto tables (real: 0.15)
    downsampled_fraction: float = 0.0  # ids with the `_downsampled` suffix (real: 0.08)
    lesion_repeat_prob: float = 0.0  # an image of an earlier lesion (real: about 0.5)
    no_lesion_id_fraction: float = 0.08  # single-image lesions without an id (real: 0.08)
    artifact_scale: float = 0.0  # thin artifacts' extra width: 0 as before, 1.0 doubled

    def check(self, where: str) -> None:
        if self.other_fraction >= 1.0:
            raise bad_input(
                f"{where}.other_fraction",
                f"got {self.other_fraction}",
                "a share below 1 (MEL and NV images are needed)",
            )


# --- sampling --------------------------------------------------------------------------------


def sample_artifact(rng: np.random.Generator, p: float, borderline_prob: float) -> dict[str, Any]:
    """Draw one artifact's state, soft score, 0/1 flag and rendering strength (see module doc)."""
    present, borderline, faint = (
        rng.random() < p,
        rng.random() < borderline_prob,
        rng.random() < 0.5,
    )
    u_clear, u_border, u_faint = (
        rng.uniform(0.905, 0.999),
        rng.uniform(0.6, 0.89),
        rng.uniform(0.25, 0.4),
    )
    low = rng.uniform(0.0, 0.1) if rng.random() < 0.9 else rng.uniform(0.1, 0.6)
    if present and not borderline:
        return {"flag": 1, "soft": u_clear, "strength": 1.0}
    if present:
        return {"flag": 0, "soft": u_border, "strength": u_faint if faint else 0.0}
    return {"flag": 0, "soft": low, "strength": 0.0}


def sample_image(rng: np.random.Generator, opts: IsicOptions) -> dict[str, Any]:
    """Class, skin, lesion and artifact draws of one image (a fixed number of draws)."""
    u = rng.random()
    if u < opts.other_fraction:
        names = list(OTHER_SHARES)
        label = names[int(rng.choice(len(names), p=list(OTHER_SHARES.values())))]
    else:
        label = "MEL" if rng.random() < opts.mel_fraction else "NV"
    mel = label == "MEL"
    tone = rng.uniform(0.0, 1.0) ** 1.3
    light, dark = np.array([236, 200, 182]), np.array([160, 108, 82])
    skin = (light + tone * (dark - light)) / 255.0
    redness = rng.uniform(-0.02, 0.05)
    skin = np.clip(skin + np.array([redness, -redness, -0.5 * redness]), 0.0, 1.0)
    lesion = {
        "cx": float(np.clip(rng.normal(0.0, 0.07), -0.15, 0.15)),
        "cy": float(np.clip(rng.normal(0.0, 0.07), -0.15, 0.15)),
        "radius": rng.uniform(0.35, 0.55) if mel else rng.uniform(0.28, 0.45),
        "aspect": rng.uniform(0.75, 1.0),
        "angle": rng.uniform(0.0, 180.0),
        "amps": rng.uniform(0.0, 0.09, 6) if mel else rng.uniform(0.0, 0.015, 6),
        "phases": rng.uniform(0.0, 2 * np.pi, 6),
        "darkness": rng.uniform(0.45, 0.7),
        "edge": rng.uniform(0.02, 0.04) if mel else rng.uniform(0.05, 0.08),
        "dark_share": rng.uniform(0.2, 0.45),
        "blue_share": rng.uniform(0.1, 0.3),
    }
    artifacts = {
        a: sample_artifact(rng, opts.artifact_probs[a], opts.borderline_prob) for a in ARTIFACTS
    }
    return {
        "label": label,
        "skin": skin,
        "tone": tone,
        "lesion": lesion,
        "artifacts": artifacts,
        "light_falloff": rng.uniform(0.05, 0.12),
        "blur": rng.uniform(0.3, 0.6),  # px at 64 px, grows with sqrt(size)
        "noise": rng.uniform(0.01, 0.025),
        "scale": 1.0 + opts.artifact_scale,
    }


# --- rendering -------------------------------------------------------------------------------


def _lesion(
    img: np.ndarray, grid: draw.Grid, item: dict[str, Any], rng: np.random.Generator
) -> dict:
    les, label, skin = item["lesion"], item["label"], item["skin"]
    c, s = math.cos(math.radians(les["angle"])), math.sin(math.radians(les["angle"]))
    dx, dy = grid.x - les["cx"], grid.y - les["cy"]
    u, v = c * dx + s * dy, (-s * dx + c * dy) / les["aspect"]
    rr, phi = np.hypot(u, v), np.arctan2(v, u)
    ks = np.arange(2, 8)[:, None, None]
    wobble = (les["amps"][:, None, None] * np.cos(ks * phi + les["phases"][:, None, None])).sum(0)
    radius = les["radius"] * (1.0 + wobble)
    alpha = draw.inside(rr - radius, max(les["edge"], grid.px))
    depth = np.clip(1.0 - rr / np.maximum(radius, 1e-6), 0.0, 1.0)  # 1 at the centre
    brown = skin * les["darkness"] * np.array([1.0, 0.82, 0.7])
    if label == "NV":
        colour = brown[None, None, :] * (1.0 - 0.12 * depth)[..., None]
        net = 0.04 * np.cos(14.0 * u) * np.cos(14.0 * v)
        colour = colour * (1.0 + net)[..., None]
    elif label == "MEL":
        colour = np.broadcast_to(brown * 0.9, img.shape).copy()
        n1 = draw.smooth_noise(rng, grid.size, 5)
        n2 = draw.smooth_noise(rng, grid.size, 4)
        inner = alpha > 0.5  # blotch and veil shares are taken within the lesion
        blot = draw.smoothstep((n1 - np.quantile(n1[inner], 1.0 - les["dark_share"])) / 0.3)
        veil = draw.smoothstep((n2 - np.quantile(n2[inner], 1.0 - les["blue_share"])) / 0.3)
        draw.paint(colour, blot * 0.95, np.array([45, 30, 25]) / 255.0)
        draw.paint(colour, veil * 0.85 * (1.0 - blot), np.array([100, 112, 128]) / 255.0)
    else:
        colour = np.broadcast_to(_other_colour(label, skin), img.shape).copy()
        if label == "DF":
            draw.paint(colour, draw.smoothstep(depth / 0.5 - 0.6) * 0.7, skin * 1.05)
        if label in ("BCC", "SCC"):  # a few red vessels
            for _ in range(3):
                p0 = np.array([les["cx"], les["cy"]]) + rng.uniform(-0.5, 0.5, 2) * les["radius"]
                pts = draw.bezier(
                    np.stack([p0, p0 + rng.uniform(-0.2, 0.2, 2), p0 + rng.uniform(-0.3, 0.3, 2)])
                )
                draw.paint(colour, draw.stroke(grid, pts, 0.03), np.array([170, 40, 50]) / 255.0)
    draw.paint(img, alpha, colour)
    return {"irregularity": float(les["amps"].sum())}


def _other_colour(label: str, skin: np.ndarray) -> np.ndarray:
    return {
        "BCC": skin * np.array([1.02, 0.8, 0.84]),
        "AK": skin * np.array([1.0, 0.78, 0.76]),
        "SCC": skin * np.array([1.0, 0.75, 0.75]),
        "BKL": skin * 0.72 * np.array([1.0, 0.9, 0.8]),
        "DF": skin * 0.6 * np.array([1.0, 0.82, 0.72]),
        "VASC": np.array([150, 35, 60]) / 255.0,
    }[label]


def _ink(img, grid, item, strength, rng) -> int:
    les = item["lesion"]
    n = int(rng.integers(1, 4)) if strength >= 1.0 else 1
    colour = (np.array([110, 45, 150]) + rng.uniform(0, 1) * np.array([-50, 5, 10])) / 255.0
    for _ in range(n):
        width = rng.uniform(0.08, 0.12) * item["scale"]
        if rng.random() < 0.6:  # an arc around the lesion
            r = les["radius"] * 1.35 + rng.uniform(0.05, 0.2)
            a0 = rng.uniform(0, 2 * np.pi)
            ang = a0 + np.linspace(0.0, rng.uniform(1.0, 3.8), 24)
            pts = np.stack([les["cx"] + r * np.cos(ang), les["cy"] + r * np.sin(ang)], 1)
        else:  # a short line or a dot beside it
            p0 = rng.uniform(-0.85, 0.85, 2)
            p1 = p0 + rng.uniform(-0.3, 0.3, 2) * (rng.random() < 0.7)
            width *= 1.0 if np.any(p1 != p0) else 1.6
            pts = np.stack([p0, p1])
        draw.paint(img, draw.stroke(grid, pts, width) * strength * rng.uniform(0.75, 0.9), colour)
    return n


def _hair(img, grid, strength, rng, scale: float = 1.0) -> int:
    n = int(rng.integers(4, 11)) if strength >= 1.0 else int(rng.integers(1, 3))
    for _ in range(n):
        a = rng.uniform(0, 2 * np.pi)
        b = a + np.pi + rng.normal(0.0, 0.8)
        p0, p3 = (
            1.5 * np.array([math.cos(a), math.sin(a)]),
            1.5 * np.array([math.cos(b), math.sin(b)]),
        )
        ctrl = np.stack([p0, rng.uniform(-0.8, 0.8, 2), rng.uniform(-0.8, 0.8, 2), p3])
        colour = np.array([35, 25, 20]) / 255.0 * rng.uniform(0.6, 1.3)
        cov = draw.stroke(grid, draw.bezier(ctrl, 40), rng.uniform(0.045, 0.065) * scale)
        draw.paint(img, cov * strength * rng.uniform(0.8, 0.95), colour)
    return n


def _bubbles(img, grid, strength, rng, scale: float = 1.0) -> int:
    n = int(rng.integers(1, 6)) if strength >= 1.0 else 1
    white = np.array([245, 248, 250]) / 255.0
    for _ in range(n):
        r = rng.uniform(0.1, 0.25)
        cx, cy = rng.uniform(-0.8, 0.8, 2)
        rim = rng.uniform(0.06, 0.08) * scale
        d = np.hypot(grid.x - cx, grid.y - cy)
        draw.paint(img, draw.inside(d - r, grid.px) * 0.15 * strength, white)
        draw.paint(img, draw.inside(np.abs(d - r) - rim / 2, grid.px) * 0.85 * strength, white)
        hl = np.hypot(grid.x - (cx - 0.35 * r), grid.y - (cy - 0.35 * r))
        draw.paint(img, draw.inside(hl - 0.22 * r, grid.px) * 0.9 * strength, white)
    return n


def _gel_border(img, grid, strength, rng) -> None:
    ang = rng.uniform(0, 2 * np.pi)
    dist = rng.uniform(1.6, 2.2)
    cx, cy = dist * math.cos(ang), dist * math.sin(ang)
    radius = dist - rng.uniform(0.6, 1.4) + 1.0
    d = np.hypot(grid.x - cx, grid.y - cy) - radius
    draw.paint(img, draw.inside(d, 0.05) * 0.05 * strength, np.ones(3))
    draw.paint(img, draw.inside(np.abs(d) - 0.02, grid.px) * 0.25 * strength, np.ones(3))


def _ruler(img, grid, strength, rng, scale: float = 1.0) -> str:
    edges = {"right": 0.0, "bottom": 90.0, "left": 180.0, "top": 270.0}
    edge = list(edges)[int(rng.integers(0, 4))]
    phi = math.radians(edges[edge] + rng.uniform(-3.0, 3.0))
    nrm = grid.x * math.cos(phi) + grid.y * math.sin(phi)
    tan = -grid.x * math.sin(phi) + grid.y * math.cos(phi)
    offset, width = rng.uniform(0.7, 0.84), rng.uniform(0.2, 0.26)
    band = draw.inside(np.abs(nrm - offset) - width / 2, grid.px)
    draw.paint(img, band * 0.9 * strength, np.array([240, 238, 228]) / 255.0)
    spacing = rng.uniform(0.12, 0.16)
    q = (tan - rng.uniform(0, spacing)) / spacing
    k = np.round(q)
    along = np.abs(q - k) * spacing
    length = np.where(k % 5 == 0, 0.75, 0.45) * width
    inner = offset - width / 2
    tick = (
        draw.inside(along - 0.015 * scale, grid.px)
        * draw.inside(nrm - inner - length, grid.px)
        * band
    )
    draw.paint(img, tick * 0.9 * strength, np.array([30, 30, 30]) / 255.0)
    return edge


def _patch(img, grid, strength, rng) -> None:
    colours = np.array([[250, 210, 40], [60, 170, 80], [240, 130, 40]]) / 255.0
    ang = rng.uniform(0, 2 * np.pi)
    cx, cy = 0.72 * math.cos(ang), 0.72 * math.sin(ang)
    half = rng.uniform(0.1, 0.16)
    d = np.maximum(np.abs(grid.x - cx), np.abs(grid.y - cy)) - half
    draw.paint(img, draw.inside(d, grid.px) * 0.95 * strength, colours[int(rng.integers(0, 3))])


def _dark_corner(img, grid, strength, rng) -> float:
    cx, cy = rng.normal(0.0, 0.04, 2)
    radius = rng.uniform(0.92, 1.15) if strength >= 1.0 else rng.uniform(1.28, 1.36)
    soft = rng.uniform(0.03, 0.08)
    outside = 1.0 - draw.inside(np.hypot(grid.x - cx, grid.y - cy) - radius, soft)
    draw.paint(img, outside * max(strength, 0.6), np.array([8, 8, 8]) / 255.0)
    return radius


def render(item: dict[str, Any], size: int, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """One RGB uint8 image, and what was drawn (counts, geometry) for factors.parquet."""
    grid = draw.Grid(size)
    skin = item["skin"]
    img = np.broadcast_to(skin, (size, size, 3)).copy()
    img *= (1.0 + 0.05 * draw.smooth_noise(rng, size, 4))[..., None]
    img *= (1.0 + 0.02 * draw.smooth_noise(rng, size, 12))[..., None]
    info: dict[str, Any] = _lesion(img, grid, item, rng)
    strength = {a: item["artifacts"][a]["strength"] for a in ARTIFACTS}
    info["ink_strokes"] = _ink(img, grid, item, strength["ink"], rng) if strength["ink"] else 0
    if strength["patches"]:
        _patch(img, grid, strength["patches"], rng)
    scale = item["scale"]
    info["hair_count"] = _hair(img, grid, strength["hair"], rng, scale) if strength["hair"] else 0
    if strength["gel_border"]:
        _gel_border(img, grid, strength["gel_border"], rng)
    info["bubble_count"] = (
        _bubbles(img, grid, strength["gel_bubble"], rng, scale) if strength["gel_bubble"] else 0
    )
    info["ruler_edge"] = (
        _ruler(img, grid, strength["ruler"], rng, scale) if strength["ruler"] else ""
    )
    r2 = (grid.x**2 + grid.y**2) / 2.0
    img *= (1.0 - item["light_falloff"] * r2)[..., None]
    info["fov_radius"] = (
        _dark_corner(img, grid, strength["dark_corner"], rng)
        if strength["dark_corner"]
        else math.nan
    )
    img = draw.blur(img, item["blur"] * math.sqrt(size / 64.0))
    img += rng.normal(0.0, item["noise"], img.shape)
    return draw.to_uint8(img), info


# --- the dataset -----------------------------------------------------------------------------


SITES = ("anterior torso", "posterior torso", "lower extremity", "upper extremity", "head/neck")
RECENT_LESIONS = 5  # a repeat photographs one of the last few lesions (real ids are clustered)


def sample_lesion_layout(rng: np.random.Generator, opts: IsicOptions) -> dict[str, Any]:
    """Per-image draws of the release's layout (a fixed number, so prefixes do not depend on n):
    repeat an earlier lesion or not, which one, blank id, ``_downsampled`` id, annotated, and
    the metadata's age, site and sex."""
    return {
        "repeat": rng.random() < opts.lesion_repeat_prob,
        "pick": int(rng.integers(0, RECENT_LESIONS)),
        "no_id": rng.random() < opts.no_lesion_id_fraction,
        "downsampled": rng.random() < opts.downsampled_fraction,
        "annotated": rng.random() < opts.annotated_fraction,
        "age": int(rng.integers(3, 18)) * 5,
        "site": SITES[int(rng.integers(0, len(SITES)))],
        "sex": "female" if rng.random() < 0.5 else "male",
    }


def write(root: Path, n: int, size: int, seed: int, opts: IsicOptions) -> dict[str, Any]:
    """Write the twin under ``root`` (GT and metadata tables, images, artifact tables,
    factors.parquet)."""
    import pandas as pd

    from medtraverse.data.prepare.isic import MERGED_FILE, write_merged

    (root / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    gt, meta, bias, soft, merged, factors = [], [], [], [], [], []
    layout_rng = np.random.default_rng(derive_seed(seed, STAGE, "layout"))
    lesions: dict[str, dict[str, Any]] = {}  # lesion id -> the first image's draws
    recent: list[str] = []
    for i in tqdm(range(n), desc="synth isic", unit="img", disable=None):
        layout = sample_lesion_layout(layout_rng, opts)
        image_id = f"ISIC_{i:07d}" + ("_downsampled" if layout["downsampled"] else "")
        rng = np.random.default_rng(derive_seed(seed, STAGE, i))
        item = sample_image(rng, opts)
        if layout["repeat"] and recent:
            lesion_id = recent[-1 - layout["pick"] % len(recent)]
            first = lesions[lesion_id]
            pose = {k: item["lesion"][k] for k in ("cx", "cy", "angle")}
            item.update({k: first[k] for k in ("label", "skin", "tone")})
            item["lesion"] = {**first["lesion"], **pose}
        elif layout["no_id"]:
            lesion_id = ""
        else:
            lesion_id = f"IL_{len(lesions):07d}"
            lesions[lesion_id] = item
            recent = [*recent[-(RECENT_LESIONS - 1) :], lesion_id]
        pixels, info = render(item, size, rng)
        rel = f"{IMAGE_DIR}/{image_id}.jpg"
        # 4:4:4 chroma keeps thin colour strokes (ink) at 32-64 px
        Image.fromarray(pixels).save(
            root / rel, format="JPEG", quality=opts.jpeg_quality, subsampling=0
        )
        label = item["label"]
        onehot = {c: float(c == label) for c in CLASSES}
        gt.append({"image": image_id, **onehot})
        meta.append(
            {
                "image": image_id,
                "age_approx": layout["age"],
                "anatom_site_general": layout["site"],
                "lesion_id": lesion_id,
                "sex": layout["sex"],
            }
        )
        arts = item["artifacts"]
        annotated = label in ("MEL", "NV") and layout["annotated"]
        if label in ("MEL", "NV"):
            # ISIC 2018-style ids in the artifact tables: no `_downsampled`, `.png`
            name = f"ISIC_{i:07d}.png"
            tail = {"label": int(label == "MEL"), "label_string": label}
            scores = {a: round(arts[a]["soft"], 4) for a in ARTIFACTS}
            if annotated:
                bias.append({"image": name, **{a: arts[a]["flag"] for a in ARTIFACTS}, **tail})
                soft.append({"image": name, **scores, **tail})
            merged.append({"image": image_id, **onehot, **scores, "label_string": label})
        les = item["lesion"]
        fac: dict[str, Any] = {
            "path": rel,
            "image_id": image_id,
            "lesion_id": lesion_id,
            "label": label,
            "mel": int(label == "MEL"),
            "in_bias_table": annotated,
        }
        for a in ARTIFACTS:
            fac[a] = arts[a]["flag"]
            fac[f"{a}_soft"] = arts[a]["soft"]
            fac[f"{a}_strength"] = arts[a]["strength"]
            fac[f"{a}_rendered"] = arts[a]["strength"] > 0.0
        fac.update(
            {f"lesion_{k}": les[k] for k in ("cx", "cy", "radius", "aspect", "angle", "darkness")}
        )
        fac["lesion_irregularity"] = info.pop("irregularity")
        fac["skin_tone"] = item["tone"]
        fac.update({f"skin_{c}": float(v) for c, v in zip("rgb", item["skin"], strict=True)})
        fac.update(info)
        factors.append(fac)
    pd.DataFrame(gt, columns=["image", *CLASSES]).to_csv(root / GT_FILE, index=False)
    pd.DataFrame(meta, columns=META_COLUMNS).to_csv(root / META_FILE, index=False)
    pd.DataFrame(bias, columns=BIAS_COLUMNS).to_csv(root / "isic_bias.csv", sep=";")
    pd.DataFrame(soft, columns=BIAS_COLUMNS).to_csv(
        root / "isic_bias_soft.csv", sep=";", float_format="%.4f"
    )
    if merged:
        write_merged(root / MERGED_FILE, merged)
    pd.DataFrame(factors).to_parquet(root / "factors.parquet", index=False)
    table = pd.DataFrame(factors)
    named = table["lesion_id"] != ""
    return {
        "images": n,
        "classes": {k: int(v) for k, v in table["label"].value_counts().sort_index().items()},
        "bias_rows": len(bias),
        "merged_rows": len(merged),
        "lesions": int(table.loc[named, "lesion_id"].nunique() + (~named).sum()),
        **{f"{a}_flag": int(table[a].sum()) for a in ARTIFACTS},
        **{f"{a}_rendered": int(table[f"{a}_rendered"].sum()) for a in ARTIFACTS},
    }
