"""Base models: the tiny offline Stable Diffusion, real SD 1.5 folders, and one loader for both.

Two kinds of base, chosen by ``params.base`` of ``medtraverse build-base``:

- ``"tiny"``: a Stable Diffusion pipeline small enough for a 2-core CPU, built from config dicts
  with random weights, deterministic from the seed (CLIP text encoder hidden 32, 2 layers,
  4 heads; U-Net (32, 64); VAE (16, 32, 32) with 4x downsampling; SD 1.5's DDIM schedule; a
  tiny CLIP vocabulary from :mod:`medtraverse.models.tokenizer`). It is a stock diffusers
  ``StableDiffusionPipeline`` folder (safetensors), so every later stage runs the same code as
  for SD 1.5. Its VAE is random until ``medtraverse train-vae`` trains it (demo only).
- anything else: a local folder or a hub id of a diffusers ``StableDiffusionPipeline`` (SD 1.5).
  ``build-base`` does not copy it (4 GB); it checks the layout (``model_index.json`` and the
  ``unet``, ``vae``, ``text_encoder``, ``tokenizer``, ``scheduler`` sub-folders) and writes a
  pointer folder ``<out>/base.json`` + ``provenance.json``. :func:`load_pipeline` follows such a
  pointer, so downstream stages take the base folder either way.

Loading is offline (``local_files_only``) whenever ``HF_HUB_OFFLINE`` is set or the path exists.
"""

from __future__ import annotations

import argparse
import json
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medtraverse.core.errors import bad_input
from medtraverse.core.io import atomic_path, check_output, check_safetensors, write_json
from medtraverse.core.params import load_params, parse_params, setting
from medtraverse.core.seeding import derive_seed

if TYPE_CHECKING:
    import torch
    from diffusers import StableDiffusionPipeline

POINTER_FILE = "base.json"
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")

# SD 1.5's noise schedule (its scheduler_config.json), used by the tiny base too.
SD15_SCHEDULER: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "prediction_type": "epsilon",
}


@dataclass
class TinyArch:
    """Architecture of the tiny base (the ``build-base`` params other than ``base``/``seed``)."""

    resolution: int = setting(32, min=1, help="px of the images")
    text_hidden_size: int = setting(32, min=1, help="text encoder width")
    text_layers: int = setting(2, min=1, help="text encoder layers")
    text_heads: int = setting(4, min=1, help="text encoder heads (divide the width)")
    text_intermediate_size: int = setting(37, min=1, help="text encoder MLP width")
    unet_block_out_channels: tuple[int, ...] = setting((32, 64), min=1, help="U-Net widths")
    unet_layers_per_block: int = setting(2, min=1, help="U-Net layers per block")
    # diffusers' UNet2DConditionModel reads its ``attention_head_dim`` as the number of heads
    # (SD 1.5's 8 heads of 40 channels); here 8 heads of a 32-wide block are 4 channels each
    unet_attention_head_dim: int = setting(
        8, min=1, help="U-Net attention heads (diffusers' attention_head_dim)"
    )
    vae_block_out_channels: tuple[int, ...] = setting((16, 32, 32), min=1, help="VAE widths")
    vae_layers_per_block: int = setting(1, min=1, help="VAE layers per block")
    vae_norm_num_groups: int = setting(8, min=1, help="VAE group norm groups")
    extra_prompts: list[str] = setting(default_factory=list, help="more words for the tokenizer")

    @classmethod
    def from_dict(cls, arch: dict[str, Any], where: str = "params") -> TinyArch:
        """Typed and checked, with one-line errors naming the key."""
        return parse_params(cls, arch, where)

    def validate(self, where: str) -> None:
        """Widths given, resolution divisible by the downsampling, heads dividing the width."""
        for key in ("unet_block_out_channels", "vae_block_out_channels"):
            if not getattr(self, key):
                raise bad_input(f"{where}.{key}", "got an empty list", "a list of integers")
        scale = 2 ** (len(self.vae_block_out_channels) - 1)
        if self.resolution % (scale * 2 ** (len(self.unet_block_out_channels) - 1)):
            raise bad_input(
                f"{where}.resolution",
                f"got {self.resolution}",
                "a multiple of the VAE and U-Net downsampling factors",
            )
        if self.text_hidden_size % self.text_heads:
            raise bad_input(f"{where}.text_heads", f"got {self.text_heads}", "a divisor of hidden")


def tiny_configs(arch: TinyArch, vocab_size: int, bos: int, eos: int) -> dict[str, dict[str, Any]]:
    """Config dicts of the tiny base's components (text encoder, U-Net, VAE, scheduler)."""
    vae_scale = 2 ** (len(arch.vae_block_out_channels) - 1)
    n_unet = len(arch.unet_block_out_channels)
    return {
        "text_encoder": {
            "vocab_size": vocab_size,
            "hidden_size": arch.text_hidden_size,
            "intermediate_size": arch.text_intermediate_size,
            "num_hidden_layers": arch.text_layers,
            "num_attention_heads": arch.text_heads,
            "max_position_embeddings": 77,
            "hidden_act": "quick_gelu",
            "projection_dim": arch.text_hidden_size,
            "bos_token_id": bos,
            "eos_token_id": eos,
            "pad_token_id": eos,
        },
        "unet": {
            "sample_size": arch.resolution // vae_scale,
            "in_channels": 4,
            "out_channels": 4,
            "down_block_types": ["CrossAttnDownBlock2D"] + ["DownBlock2D"] * (n_unet - 1),
            "up_block_types": ["UpBlock2D"] * (n_unet - 1) + ["CrossAttnUpBlock2D"],
            "block_out_channels": list(arch.unet_block_out_channels),
            "layers_per_block": arch.unet_layers_per_block,
            "cross_attention_dim": arch.text_hidden_size,
            "attention_head_dim": arch.unet_attention_head_dim,
        },
        "vae": {
            "in_channels": 3,
            "out_channels": 3,
            "down_block_types": ["DownEncoderBlock2D"] * len(arch.vae_block_out_channels),
            "up_block_types": ["UpDecoderBlock2D"] * len(arch.vae_block_out_channels),
            "block_out_channels": list(arch.vae_block_out_channels),
            "layers_per_block": arch.vae_layers_per_block,
            "latent_channels": 4,
            "norm_num_groups": arch.vae_norm_num_groups,
            "sample_size": arch.resolution,
        },
        "scheduler": dict(SD15_SCHEDULER),
    }


def sd15_configs(vocab_size: int = 49408, bos: int = 49406, eos: int = 49407) -> dict[str, dict]:
    """SD 1.5's architecture as config dicts (CLIP ViT-L/14 text tower, U-Net, VAE, DDIM).

    For benchmarks with random weights: building from these needs no download.
    """
    return {
        "text_encoder": {
            "vocab_size": vocab_size,
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "max_position_embeddings": 77,
            "hidden_act": "quick_gelu",
            "projection_dim": 768,
            "bos_token_id": bos,
            "eos_token_id": eos,
            "pad_token_id": eos,
        },
        "unet": {
            "sample_size": 64,
            "in_channels": 4,
            "out_channels": 4,
            "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
            "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
            "block_out_channels": [320, 640, 1280, 1280],
            "layers_per_block": 2,
            "cross_attention_dim": 768,
            "attention_head_dim": 8,
        },
        "vae": {
            "in_channels": 3,
            "out_channels": 3,
            "down_block_types": ["DownEncoderBlock2D"] * 4,
            "up_block_types": ["UpDecoderBlock2D"] * 4,
            "block_out_channels": [128, 256, 512, 512],
            "layers_per_block": 2,
            "latent_channels": 4,
            "norm_num_groups": 32,
            "sample_size": 512,
            "scaling_factor": 0.18215,
        },
        "scheduler": dict(SD15_SCHEDULER),
    }


def pipeline_from_configs(
    configs: dict[str, dict[str, Any]], tokenizer: Any, *, seed: int = 0
) -> StableDiffusionPipeline:
    """A ``StableDiffusionPipeline`` with random weights, each component seeded on its own."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline
    from diffusers import UNet2DConditionModel as UNet
    from transformers import CLIPTextConfig, CLIPTextModel

    def seeded(name: str, make: Any) -> Any:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, "tiny-base", name))
            return make().eval()

    text_encoder = seeded(
        "text_encoder", lambda: CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))
    )
    unet = seeded("unet", lambda: UNet(**configs["unet"]))
    vae = seeded("vae", lambda: AutoencoderKL(**configs["vae"]))
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler(**configs["scheduler"]),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_tiny_pipeline(
    out_dir: str | Path, *, seed: int = 0, stage: str | None = None, **arch: Any
) -> Path:
    """Write the tiny base pipeline folder at ``out_dir`` (atomically), deterministic from
    ``seed``; ``arch`` overrides :class:`TinyArch` fields; ``stage`` lets that stage replace its
    own earlier output (``core.io.atomic_path``). Returns ``out_dir``."""
    from medtraverse.models.tokenizer import PROMPT_TEXTS, build_tokenizer, write_vocab

    spec = TinyArch.from_dict(arch)
    texts = list(PROMPT_TEXTS) + list(spec.extra_prompts)
    tokenizer = build_tokenizer(texts)
    configs = tiny_configs(
        spec, len(tokenizer), int(tokenizer.bos_token_id), int(tokenizer.eos_token_id)
    )
    pipe = pipeline_from_configs(configs, tokenizer, seed=seed)
    out_dir = Path(out_dir)
    with atomic_path(out_dir, stage=stage) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        write_vocab(tmp / "tokenizer", texts)  # for transformers 4's slow CLIPTokenizer too
    return out_dir


def resolve_base(path_or_id: str | Path) -> str:
    """A pipeline folder or hub id, following a ``build-base`` pointer folder (``base.json``)."""
    path = Path(path_or_id)
    if path.is_dir() and not (path / "model_index.json").exists():
        pointer = path / POINTER_FILE
        if pointer.exists():
            return str(json.loads(pointer.read_text())["resolved"])
        raise bad_input(path, "no model_index.json or base.json", "a diffusers pipeline folder")
    return str(path_or_id)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() not in {"", "0", "false", "no"}


def load_pipeline(
    path_or_id: str | Path, *, dtype: torch.dtype | None = None, device: str = "cpu"
) -> StableDiffusionPipeline:
    """Load a ``StableDiffusionPipeline`` (tiny or SD 1.5) from a folder, pointer folder or hub
    id, without the safety checker; offline whenever ``HF_HUB_OFFLINE`` is set or the path
    exists. ``dtype`` defaults to float32."""
    import diffusers
    import torch
    import transformers
    from diffusers import StableDiffusionPipeline

    diffusers.utils.logging.disable_progress_bar()  # a tiny pipeline loads in 0.1 s
    transformers.utils.logging.disable_progress_bar()
    target = resolve_base(path_or_id)
    local = Path(target).exists()
    if not local and (Path(target).is_absolute() or str(target).startswith(".")):
        raise bad_input(target, "no such folder", "a diffusers StableDiffusionPipeline folder")
    if local:
        check_pipeline_files(target)
    try:
        with warnings.catch_warnings():
            # newer diffusers rename torch_dtype to dtype; torch_dtype works on every version
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            pipe = StableDiffusionPipeline.from_pretrained(
                target,
                torch_dtype=dtype or torch.float32,
                local_files_only=local or _offline(),
                safety_checker=None,
                feature_extractor=None,
                requires_safety_checker=False,
            )
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise bad_input(target, f"cannot load a pipeline ({first})", "a SD pipeline") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def pipeline_resolution(pipe: StableDiffusionPipeline) -> int:
    """The image size the pipeline was built for (U-Net latent size x VAE downsampling)."""
    return int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)


def is_tiny(path: str | Path) -> bool:
    """Whether a base folder is a full pipeline folder (tiny) rather than a pointer (real)."""
    return (Path(path) / "model_index.json").exists()


def check_pipeline_files(path: str | Path) -> None:
    """A local pipeline folder's layout and every safetensors header, so a missing component or
    a truncated weights file is one line naming it rather than a loader's error."""
    path = Path(path)
    check_pipeline_folder(path)
    for name in COMPONENTS:
        for weights in sorted((path / name).glob("*.safetensors")):
            check_safetensors(weights, f"the pipeline's {name} weights (safetensors)")


def check_pipeline_folder(path: str | Path) -> dict[str, Any]:
    """Check a local SD pipeline folder's layout; return its ``model_index.json``."""
    path = Path(path)
    index = path / "model_index.json"
    if not index.is_file():
        raise bad_input(path, "no model_index.json", "a diffusers StableDiffusionPipeline folder")
    try:
        model_index = json.loads(index.read_text())
    except json.JSONDecodeError as err:
        raise bad_input(index, f"not valid JSON ({err.msg})", "a model_index.json") from None
    for name in COMPONENTS:
        if name not in model_index:
            raise bad_input(index, f"no {name!r} entry", f"entries {', '.join(COMPONENTS)}")
        if not (path / name).is_dir():
            raise bad_input(path / name, "missing folder", f"the pipeline's {name} sub-folder")
    return model_index


def _hub_model_index(repo_id: str) -> tuple[str, dict[str, Any]]:
    """Resolve a hub id to its (cached) snapshot and read its model_index.json."""
    from huggingface_hub import hf_hub_download

    try:
        index = hf_hub_download(repo_id, "model_index.json", local_files_only=_offline())
    except Exception as err:  # noqa: BLE001 - any hub failure is one line for the user
        raise bad_input(
            f"params.base={repo_id!r}",
            f"not a local folder and not available from the hub ({type(err).__name__})",
            "a StableDiffusionPipeline folder or a hub id (cached when HF_HUB_OFFLINE is set)",
        ) from None
    model_index = json.loads(Path(index).read_text())
    missing = [c for c in COMPONENTS if c not in model_index]
    if missing:
        raise bad_input(repo_id, f"model_index.json lacks {missing[0]!r}", "a SD pipeline")
    return repo_id, model_index


@dataclass
class BaseParams:
    """``build-base`` params: ``base`` ("tiny" or a path/hub id), ``seed``, and the tiny arch."""

    base: str = setting("tiny", help='"tiny", a local pipeline folder, or a hub id')
    seed: int = setting(0, min=0, help="global seed")
    arch: dict[str, Any] = setting(default_factory=dict, help="tiny architecture (TinyArch)")

    @classmethod
    def from_dict(cls, params: dict[str, Any], where: str = "params") -> BaseParams:
        """``base`` and ``seed`` typed; the other keys are the tiny architecture (checked now:
        one line, nothing written)."""
        arch = dict(params)
        head = {key: arch.pop(key) for key in ("base", "seed") if key in arch}
        out = parse_params(cls, head, where)
        if not out.base:
            raise bad_input(f"{where}.base", "got ''", '"tiny" or a path or hub id')
        if out.base == "tiny":
            TinyArch.from_dict(arch, where)
        elif arch:
            key = sorted(arch)[0]
            raise bad_input(f"{where}.{key}", "architecture keys apply only to base 'tiny'", "none")
        out.arch = arch
        return out


def build_base(out: str | Path, params: dict[str, Any]) -> Path:
    """Build the tiny base or write a checked pointer to a real one, plus provenance."""
    from medtraverse.core import provenance

    spec = BaseParams.from_dict(params)
    out = Path(out)
    if spec.base == "tiny":
        build_tiny_pipeline(out, seed=spec.seed, stage="build-base", **spec.arch)
        extra = {"kind": "tiny", "arch": asdict(TinyArch.from_dict(spec.arch))}
        provenance.record(out, stage="build-base", params=params, seeds=spec.seed, extra=extra)
        return out
    local = Path(spec.base).expanduser()
    if local.exists():
        model_index = check_pipeline_folder(local)
        resolved, inputs = str(local.resolve()), [local / "model_index.json"]
    else:
        resolved, model_index = _hub_model_index(spec.base)
        inputs = []
    pointer = {
        "kind": "real",
        "base": spec.base,
        "resolved": resolved,
        "model_index": model_index,
    }
    with atomic_path(out, stage="build-base") as tmp:
        tmp.mkdir()
        write_json(tmp / POINTER_FILE, pointer)
    provenance.record(out, stage="build-base", params=params, inputs=inputs, extra=pointer)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="base model folder to write")
    parser.add_argument(
        "--params",
        default="{}",
        help='JSON: {"base": "tiny" | path | hub id, "seed": 0, tiny arch keys such as '
        '"resolution": 32}',
    )


def main(args: argparse.Namespace) -> None:
    check_output(args.out, "build-base", "folder")  # before any work; never replaces user data
    params = load_params(args.params)
    print(build_base(args.out, params))
