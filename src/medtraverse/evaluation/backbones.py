"""Pretrained backbones, resolved offline: LPIPS's AlexNet trunk, Inception for FID, and the
ImageNet weights of the EfficientNet-B0 classifiers.

Nothing here downloads. Each backbone comes from a file the user placed (or a cache that
already holds it); when a file a real run needs is missing, ``check_backbones(params)`` stops
with one line saying where to put it, before any GPU work. The workflow calls it early; it also
runs as ``python -m medtraverse.evaluation.backbones --params JSON``.

Params keys read (all optional):

- ``lpips_backbone``: "alex" (default; LPIPS v0.1 with torchvision's ImageNet AlexNet trunk,
  comparable with the paper) or "random" (``lpips.LPIPS(net="alex", pnet_rand=True)`` with a
  fixed seed: offline, for the demo and tests; NOT comparable with the paper's numbers).
- ``lpips_alexnet_path``: the AlexNet state dict; default
  ``$TORCH_HOME/hub/checkpoints/alexnet-owt-7be5be79.pth`` (TORCH_HOME defaults to
  ``~/.cache/torch``).
- ``lpips_random_seed``: seed of the random trunk (default 0).
- ``inception_weights``: FID Inception weights, torchvision ``inception_v3_google-*.pth`` or
  pytorch-fid ``pt_inception-2015-12-05-*.pth``; default None = FID skipped with a message.
- ``pretrained`` (classifier params): None/"none"/"" = from scratch; a local ``.safetensors`` /
  ``.pth`` / ``.bin`` file; or a hub id such as ``timm/efficientnet_b0.ra_in1k`` (used from the
  local Hugging Face cache; fetched only when HF_HUB_OFFLINE is unset and the hub answers).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from medtraverse.core.errors import InputError, bad_input

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
LPIPS_BACKBONES = ("alex", "random")
# lpips's AlexNet trunk: which torchvision ``features`` index lands in which slice.
_ALEX_SLICES = {0: 1, 3: 2, 6: 3, 8: 4, 10: 5}


def torch_hub_checkpoints() -> Path:
    """torch.hub's checkpoint folder, computed without importing torch."""
    home = os.environ.get("TORCH_HOME")
    if not home:
        home = os.path.join(
            os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "torch"
        )
    return Path(home) / "hub" / "checkpoints"


def lpips_backbone(params: dict[str, Any]) -> str:
    """The normalised LPIPS backbone name: "alex" or "random"."""
    name = params.get("lpips_backbone", "alex")
    if name == "alexnet":
        name = "alex"
    if name not in LPIPS_BACKBONES:
        raise bad_input("params.lpips_backbone", f"got {name!r}", "'alex' or 'random'")
    return name


def lpips_label(params: dict[str, Any]) -> str:
    """How tables name the LPIPS numbers: ``alex`` (comparable) or ``random(seed=S)``."""
    if lpips_backbone(params) == "alex":
        return "alex"
    return f"random(seed={int(params.get('lpips_random_seed', 0))})"


def alexnet_weights_path(params: dict[str, Any]) -> Path:
    """Where the AlexNet trunk's state dict is expected."""
    path = params.get("lpips_alexnet_path")
    return Path(path) if path else torch_hub_checkpoints() / ALEXNET_FILE


def _load_state_dict(path: Path) -> dict[str, Any]:
    """A state dict from safetensors or ``torch.load(weights_only=True)``; never pickle."""
    import torch

    if path.suffix == ".safetensors":
        from medtraverse.core.io import read_safetensors

        return read_safetensors(path, "a state dict (safetensors)")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure is a bad weights file
        raise bad_input(
            path, f"cannot be read as weights ({type(err).__name__})", "a state dict"
        ) from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise bad_input(path, f"holds a {type(obj).__name__}", "a state dict")
    return obj


def load_lpips(params: dict[str, Any], device: str = "cpu") -> tuple[Any, str]:
    """LPIPS v0.1 (AlexNet) in eval mode on ``device`` and its table label.

    The linear heads ship with the lpips package. The trunk is torchvision's ImageNet AlexNet
    read from ``alexnet_weights_path`` ("alex"), or random with a fixed seed ("random").
    """
    import lpips
    import torch

    name = lpips_backbone(params)
    if name == "alex":
        path = alexnet_weights_path(params)
        if not path.is_file():
            raise InputError(_alexnet_missing(path))
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torchvision's "pretrained is deprecated"
        torch.manual_seed(int(params.get("lpips_random_seed", 0)))
        model = lpips.LPIPS(net="alex", version="0.1", pnet_rand=True, verbose=False)
    if name == "alex":
        state = _load_state_dict(path)
        trunk = {}
        for index, slice_no in _ALEX_SLICES.items():
            for part in ("weight", "bias"):
                key = f"features.{index}.{part}"
                if key not in state:
                    raise bad_input(path, f"no key {key!r}", "torchvision's AlexNet state dict")
                trunk[f"slice{slice_no}.{index}.{part}"] = state[key]
        model.net.load_state_dict(trunk, strict=True)
    model.eval().requires_grad_(False)
    return model.to(device), lpips_label(params)


def _alexnet_missing(path: Path) -> str:
    return (
        f"{path}: LPIPS AlexNet trunk not found; place torchvision's {ALEXNET_FILE} there "
        "(or set metrics.lpips_alexnet_path; lpips_backbone: random runs offline but is not "
        "comparable with the paper)"
    )


# --------------------------------------------------------------------------------------------
# Inception (FID)


def inception_weights_path(params: dict[str, Any]) -> Path | None:
    """The Inception weights file named in params, or None."""
    path = params.get("inception_weights")
    return Path(path) if path else None


def load_inception(path: Path, device: str = "cpu") -> Any:
    """Inception-v3 giving 2048-d pool features for images in [-1, 1] at 299 px.

    A pytorch-fid state dict (fc with 1008 outputs) gets pytorch-fid's patched blocks (TF-style
    pooling), so its features match pytorch-fid; a torchvision state dict loads as is.
    """
    import torch
    from torchvision.models.inception import Inception3

    state = _load_state_dict(Path(path))
    fc = state.get("fc.weight")
    if fc is None:
        raise bad_input(path, "no key 'fc.weight'", "an Inception-v3 state dict")
    fid_style = fc.shape[0] == 1008
    model = Inception3(
        num_classes=fc.shape[0], aux_logits=not fid_style, transform_input=False, init_weights=False
    )
    if fid_style:
        _patch_fid_blocks(model)
    else:
        state = {k: v for k, v in state.items() if not k.startswith("AuxLogits.")}
        model.AuxLogits = None
        model.aux_logits = False
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise bad_input(
            path,
            f"keys do not match Inception-v3 (missing {missing[:2]}, unexpected {unexpected[:2]})",
            "torchvision or pytorch-fid Inception weights",
        )
    model.fc = torch.nn.Identity()
    return model.eval().requires_grad_(False).to(device)


def inception_features(model: Any, images: Any) -> Any:
    """2048-d pool features of a float batch N x 3 x H x W in [-1, 1] (resized to 299 bilinear)."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        x = F.interpolate(images, size=(299, 299), mode="bilinear", align_corners=False)
        return model(x)


def _patch_fid_blocks(model: Any) -> None:
    """pytorch-fid's FID Inception: TF-style average pooling (padding excluded) in the A, C and
    E blocks and max pooling in the last E block."""
    import torch
    import torch.nn.functional as F
    from torchvision.models import inception as tvi

    def pool(x: Any, kind: str = "avg") -> Any:
        if kind == "max":
            return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)

    class FIDInceptionA(tvi.InceptionA):
        def forward(self, x: Any) -> Any:
            b1 = self.branch1x1(x)
            b5 = self.branch5x5_2(self.branch5x5_1(x))
            b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
            bp = self.branch_pool(pool(x))
            return torch.cat([b1, b5, b3, bp], 1)

    class FIDInceptionC(tvi.InceptionC):
        def forward(self, x: Any) -> Any:
            b1 = self.branch1x1(x)
            b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
            bd = self.branch7x7dbl_1(x)
            for layer in (
                self.branch7x7dbl_2,
                self.branch7x7dbl_3,
                self.branch7x7dbl_4,
                self.branch7x7dbl_5,
            ):
                bd = layer(bd)
            bp = self.branch_pool(pool(x))
            return torch.cat([b1, b7, bd, bp], 1)

    class FIDInceptionE(tvi.InceptionE):
        pool_kind = "avg"

        def forward(self, x: Any) -> Any:
            b1 = self.branch1x1(x)
            b3 = self.branch3x3_1(x)
            b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
            bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
            bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
            bp = self.branch_pool(pool(x, self.pool_kind))
            return torch.cat([b1, b3, bd, bp], 1)

    class FIDInceptionE2(FIDInceptionE):
        pool_kind = "max"

    model.Mixed_5b = FIDInceptionA(192, pool_features=32)
    model.Mixed_5c = FIDInceptionA(256, pool_features=64)
    model.Mixed_5d = FIDInceptionA(288, pool_features=64)
    model.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
    model.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
    model.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
    model.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
    model.Mixed_7b = FIDInceptionE(1280)
    model.Mixed_7c = FIDInceptionE2(2048)


# --------------------------------------------------------------------------------------------
# EfficientNet-B0 classifier weights


def pretrained_spec(params: dict[str, Any]) -> str | None:
    """The classifier's ``pretrained`` value, None when training from scratch."""
    value = params.get("pretrained")
    if value is None or (
        isinstance(value, str) and value.strip().lower() in {"", "none", "null", "false"}
    ):
        return None
    if value is False:
        return None
    if not isinstance(value, str):
        raise bad_input("params.pretrained", f"got {value!r}", "null, a weights file or a hub id")
    return value


def _is_local(spec: str) -> bool:
    return (
        spec.endswith((".safetensors", ".pth", ".pt", ".bin"))
        or os.sep in spec
        and Path(spec).exists()
    )


CLASSIFIER_ARCHS = ("efficientnet_b0", "small_cnn")
SMALL_CNN_WIDTHS = (32, 64, 96, 128)


def small_cnn(num_classes: int, drop_rate: float) -> Any:
    """A plain CNN for classifiers trained from scratch on small images (the demos): four
    conv3x3-BN-ReLU-maxpool blocks, global *max* pooling, dropout and a linear head.

    Why: offline there are no ImageNet weights, and an EfficientNet-B0 from scratch on a few
    hundred 64 px twin images reads the small, coloured artifacts poorly (ink AUROC 0.76-0.88),
    its global average diluting a few purple pixels; this net reads all of them at AUROC 1.0,
    in 106 s against 136 s (docs/benchmarks.md). Max pooling asks "is it anywhere"."""
    from torch import nn

    layers: list[Any] = []
    width = 3
    for out in SMALL_CNN_WIDTHS:
        layers += [
            nn.Conv2d(width, out, 3, padding=1, bias=False),
            nn.BatchNorm2d(out),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        ]
        width = out
    layers += [
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
        nn.Dropout(drop_rate),
        nn.Linear(width, num_classes),
    ]
    return nn.Sequential(*layers)


def create_classifier(
    arch: str, num_classes: int, drop_rate: float, pretrained: str | None
) -> tuple[Any, str]:
    """The classifier network of ``arch`` and where its weights came from (see
    :func:`create_efficientnet`); ``small_cnn`` has no pretrained weights."""
    check_classifier_arch(arch, pretrained)
    if arch == "efficientnet_b0":
        return create_efficientnet(num_classes, drop_rate, pretrained)
    return small_cnn(num_classes, drop_rate), "scratch"


def check_classifier_arch(arch: str, pretrained: str | None) -> None:
    """A known ``arch``, and no ImageNet weights asked of ``small_cnn`` (one-line errors)."""
    if arch not in CLASSIFIER_ARCHS:
        raise bad_input("params.arch", f"got {arch!r}", f"one of {', '.join(CLASSIFIER_ARCHS)}")
    if arch == "small_cnn" and pretrained is not None:
        raise bad_input(
            "params.pretrained",
            f"got {pretrained!r} with arch small_cnn",
            "none (small_cnn is trained from scratch; ImageNet weights are for efficientnet_b0)",
        )


def create_efficientnet(
    num_classes: int, drop_rate: float, pretrained: str | None
) -> tuple[Any, str]:
    """``timm`` EfficientNet-B0 (head: dropout ``drop_rate`` + linear) and where its weights came
    from: "scratch", "file:<path>" or "hub:<id>". A hub id that cannot be had offline falls back
    to scratch with the reason in the returned string ("scratch (...)")."""
    import timm

    def scratch() -> Any:
        return timm.create_model(
            "efficientnet_b0", pretrained=False, num_classes=num_classes, drop_rate=drop_rate
        )

    if pretrained is None:
        return scratch(), "scratch"
    if _is_local(pretrained) and not pretrained.startswith(("hf-hub:", "timm/")):
        path = Path(pretrained)
        if not path.is_file():
            raise bad_input(
                "params.pretrained", f"{path} does not exist", "an EfficientNet-B0 weights file"
            )
        model = scratch()
        state = _load_state_dict(path)
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("classifier.")]
        if missing or unexpected:
            raise bad_input(
                path,
                f"keys do not match timm efficientnet_b0 (missing {missing[:2]}, "
                f"unexpected {unexpected[:2]})",
                "timm EfficientNet-B0 ImageNet weights",
            )
        return model, f"file:{path}"
    hub_id = pretrained.removeprefix("hf-hub:")
    cached = _hub_cached_file(hub_id)
    try:
        if cached is not None:
            model = timm.create_model(
                "efficientnet_b0",
                pretrained=True,
                num_classes=num_classes,
                drop_rate=drop_rate,
                pretrained_cfg_overlay={"file": str(cached)},
            )
            return model, f"hub:{hub_id} (cache {cached})"
        if _hub_offline():
            return (
                scratch(),
                f"scratch (hub id {hub_id} not in the local cache and HF_HUB_OFFLINE is set)",
            )
        model = timm.create_model(
            "efficientnet_b0",
            pretrained=True,
            num_classes=num_classes,
            drop_rate=drop_rate,
            pretrained_cfg_overlay={"hf_hub_id": hub_id},
        )
        return model, f"hub:{hub_id}"
    except Exception as err:  # noqa: BLE001 - any hub failure means training from scratch
        return scratch(), f"scratch (hub id {hub_id} unavailable: {type(err).__name__})"


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _hub_cached_file(hub_id: str) -> Path | None:
    """The weights file of ``hub_id`` in the local Hugging Face cache (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for name in ("model.safetensors", "pytorch_model.bin"):
        try:
            hit = try_to_load_from_cache(hub_id, name)
        except Exception:  # noqa: BLE001 - a malformed id is simply not cached
            return None
        if isinstance(hit, str) and Path(hit).is_file():
            return Path(hit)
    return None


# --------------------------------------------------------------------------------------------
# the early check


def check_backbones(params: dict[str, Any], lpips: bool = True) -> list[str]:
    """Check every backbone the params ask for; raise a one-line InputError for a missing one a
    run needs (LPIPS AlexNet, a named classifier weights file), return info lines otherwise
    (e.g. FID to be skipped). ``lpips=False``: LPIPS is not computed (taken from the scores).
    Imports no torch, touches no GPU."""
    lines = []
    if not lpips:
        lines.append("LPIPS: not computed here (read from the scores, or no shard folders)")
    elif lpips_backbone(params) == "alex":
        path = alexnet_weights_path(params)
        if not path.is_file():
            raise InputError(_alexnet_missing(path))
        lines.append(f"LPIPS: AlexNet trunk {path}")
    else:
        lines.append(f"LPIPS: {lpips_label(params)} trunk (not comparable with the paper)")
    inception = inception_weights_path(params)
    if inception is None:
        lines.append("FID: skipped (no inception_weights in params)")
    elif not inception.is_file():
        lines.append(f"FID: skipped: no Inception weights at {inception}")
    else:
        lines.append(f"FID: Inception weights {inception}")
    spec = pretrained_spec(params)
    if spec is not None and _is_local(spec) and not spec.startswith(("hf-hub:", "timm/")):
        if not Path(spec).is_file():
            raise bad_input(
                "params.pretrained", f"{spec} does not exist", "an EfficientNet-B0 weights file"
            )
        lines.append(f"classifier: ImageNet weights {spec}")
    elif spec is not None:
        where = _hub_cached_file(spec.removeprefix("hf-hub:"))
        lines.append(
            f"classifier: {spec} "
            + (f"in cache {where}" if where else "not cached (scratch if offline)")
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    """``python -m medtraverse.evaluation.backbones --params JSON``: the check; 2 on a miss."""
    from medtraverse.core.params import load_params

    parser = argparse.ArgumentParser(
        prog="python -m medtraverse.evaluation.backbones", description=check_backbones.__doc__
    )
    parser.add_argument("--params", default="{}", help="metrics/classifier params (JSON or @file)")
    args = parser.parse_args(argv)
    try:
        for line in check_backbones(load_params(args.params)):
            print(line)
    except InputError as err:
        print(f"medtraverse backbones: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
