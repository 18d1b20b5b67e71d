"""Neutral vs attribute samples from the same seeds: a quick look at what fine-tuning learned.

Rows are seeds, columns are prompts (the neutral prompt first). Every cell of a row starts from
the same initial noise ``z_T`` (``torch.Generator().manual_seed(seed)``, as the traversal does),
so a row shows what the prompt alone changes. Sampler: DDIM, 50 steps, eta 0, guidance 7.5
(METHOD.md section 4), all in params.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medtraverse.core.errors import bad_input
from medtraverse.core.io import atomic_path, check_output
from medtraverse.core.params import load_params, parse_params, setting

if TYPE_CHECKING:
    import torch
    from PIL import Image

DEFAULT_PROMPTS = [
    "Normal chest X-ray with no significant findings",
    "Chest X-ray showing Support Devices",
    "Chest X-ray showing Pleural Effusion",
]


@dataclass
class SampleParams:
    """``sample-grid`` params with their defaults."""

    prompts: list[str] = setting(
        default_factory=lambda: list(DEFAULT_PROMPTS), help="rows: neutral prompt first"
    )
    seeds: list[int] | int = setting(
        default_factory=lambda: list(range(8)), min=0, help="columns: seeds, or a count"
    )
    steps: int = setting(50, min=1, help="DDIM steps")
    guidance: float = setting(7.5, min=0, help="classifier-free guidance scale")
    eta: float = setting(0.0, min=0, help="DDIM eta")
    cell: int = setting(96, min=1, help="px of a grid cell")
    labels: bool = setting(True, help="write the prompts beside the rows")

    @classmethod
    def from_dict(cls, params: dict[str, Any], where: str = "params") -> SampleParams:
        """Typed settings; a seed count becomes the seeds 0..count-1."""
        out = parse_params(cls, params, where)
        if isinstance(out.seeds, int):
            out.seeds = list(range(out.seeds))
        return out

    def validate(self, where: str) -> None:
        """At least one prompt and one seed."""
        if not self.prompts:
            raise bad_input(f"{where}.prompts", "got an empty list", "at least one prompt")
        if self.seeds in (0, []):
            raise bad_input(f"{where}.seeds", f"got {self.seeds!r}", "a count >= 1 or seeds")


def initial_latents(pipe: Any, seed: int) -> torch.Tensor:
    """``z_T`` of one seed: float32 (1, 4, h, w) from ``torch.Generator().manual_seed(seed)``."""
    import torch

    size = int(pipe.unet.config.sample_size)
    channels = int(pipe.unet.config.in_channels)
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randn((1, channels, size, size), generator=gen, dtype=torch.float32)


def generate(
    pipe: Any, prompts: list[str], seeds: list[int], *, steps: int, guidance: float, eta: float
) -> list[list[Image.Image]]:
    """Images ``[seed][prompt]`` with DDIM; each seed's initial noise shared across prompts."""
    import torch
    from diffusers import DDIMScheduler
    from tqdm.auto import tqdm

    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    size = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
    device, dtype = pipe.unet.device, pipe.unet.dtype
    rows = []
    for seed in tqdm(seeds, desc="sample-grid", unit="seed", leave=False):
        latents = initial_latents(pipe, seed).repeat(len(prompts), 1, 1, 1)
        with torch.no_grad():
            out = pipe(
                prompt=list(prompts),
                height=size,
                width=size,
                num_inference_steps=steps,
                guidance_scale=guidance,
                eta=eta,
                latents=latents.to(device, dtype),
                output_type="pil",
            )
        rows.append(list(out.images))
    return rows


def grid_image(
    cells: list[list[Image.Image]], *, cell: int = 96, headers: list[str] | None = None
) -> Image.Image:
    """Tile ``cells[row][col]`` (nearest-neighbour upscaled to ``cell`` px) with optional
    column headers."""
    from PIL import Image, ImageDraw

    n_rows, n_cols = len(cells), max(len(r) for r in cells)
    wrapped = [_wrap(text, max(8, cell // 6)) for text in headers or []]
    head = 4 + 12 * max(len(lines) for lines in wrapped) if wrapped else 0
    canvas = Image.new("RGB", (n_cols * cell, head + n_rows * cell), "white")
    draw = ImageDraw.Draw(canvas)
    for c, lines in enumerate(wrapped):
        draw.multiline_text((c * cell + 2, 1), "\n".join(lines), fill="black", spacing=1)
    for r, row in enumerate(cells):
        for c, img in enumerate(row):
            canvas.paste(img.resize((cell, cell), Image.NEAREST), (c * cell, head + r * cell))
    return canvas


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + len(word) + 1 > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return [*lines, line]


def sample_grid(model: str | Path | Any, out: str | Path, params: dict[str, Any]) -> Path:
    """Write the PNG grid of ``params.prompts`` x ``params.seeds`` for a pipeline folder (or
    a loaded pipeline) atomically, with provenance."""
    from medtraverse.core import provenance
    from medtraverse.models.pipeline import load_pipeline

    spec = SampleParams.from_dict(params)
    pipe = load_pipeline(model) if isinstance(model, str | Path) else model
    cells = generate(
        pipe, spec.prompts, spec.seeds, steps=spec.steps, guidance=spec.guidance, eta=spec.eta
    )
    image = grid_image(cells, cell=spec.cell, headers=spec.prompts if spec.labels else None)
    out = Path(out)
    with atomic_path(out, stage="sample-grid") as tmp:
        image.save(tmp, format="PNG")
    inputs = [model] if isinstance(model, str | Path) else []
    provenance.record(out, stage="sample-grid", params=params, inputs=inputs, seeds=spec.seeds)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="pipeline folder")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument(
        "--params",
        default="{}",
        help='JSON: {"prompts": [neutral, attribute, ...], "seeds": 8 or [..], "steps": 50, '
        '"guidance": 7.5, "eta": 0.0, "cell": 96, "labels": true}',
    )


def main(args: argparse.Namespace) -> None:
    check_output(args.out, "sample-grid", "file")  # before any work; never replaces user data
    if not Path(args.model).exists():
        raise bad_input(args.model, "no such folder", "a pipeline folder")
    print(sample_grid(args.model, args.out, load_params(args.params)))
