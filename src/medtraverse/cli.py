"""The one entry point: ``medtraverse <stage> ...``.

Each stage lives in its own module, which defines ``add_arguments(parser)`` and ``main(args)``.
Only the chosen stage's module is imported, so ``medtraverse synth`` does not pay for torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from medtraverse.core.errors import InputError

STAGES: dict[str, tuple[str, str]] = {
    "synth": ("medtraverse.data.synth", "write a synthetic twin of CheXpert or ISIC 2019"),
    "prepare": (
        "medtraverse.data.prepare",
        "build the manifest (splits, prompts, labels, resized images)",
    ),
    "annotate-artifacts": (
        "medtraverse.evaluation.artifacts",
        "ISIC: soft artifact scores for every MEL/NV image (EfficientNet-B0 on the annotated)",
    ),
    "build-base": (
        "medtraverse.models.pipeline",
        "build the tiny base pipeline, or check a real SD folder",
    ),
    "train-vae": ("medtraverse.models.vae", "train the tiny base's VAE (demo only)"),
    "cache": (
        "medtraverse.models.cache",
        "encode training images and prompts once with the frozen encoders",
    ),
    "finetune": (
        "medtraverse.models.finetune",
        "fine-tune the U-Net (accelerate, checkpoints, resume)",
    ),
    "sample-grid": (
        "medtraverse.models.samples",
        "neutral vs attribute samples from the same seeds",
    ),
    "traverse": (
        "medtraverse.traversal.engine",
        "generate one shard of swap trajectories and Bezier frames",
    ),
    "invert": (
        "medtraverse.traversal.invert",
        "invert real images to start latents (DDIM, null-text) for traversal",
    ),
    "traverse-real": (
        "medtraverse.traversal.real",
        "swap trajectories and Bezier frames from an inversion shard's real images",
    ),
    "train-classifier": (
        "medtraverse.evaluation.classify",
        "train an EfficientNet-B0 attribute classifier",
    ),
    "score": (
        "medtraverse.evaluation.score",
        "classifier probabilities for every generated image of a shard",
    ),
    "aggregate": (
        "medtraverse.report.aggregate",
        "CFRT, LPIPS, cosine, t-SNE, FID with bootstrap CIs",
    ),
    "aggregate-real": (
        "medtraverse.report.real",
        "real images: inversion error, CFRT per k, LPIPS, identity change, the recommended k",
    ),
    "figures": ("medtraverse.report.figures", "traversal grids, Bezier strips and metric plots"),
    "viewer": (
        "medtraverse.report.viewer",
        "one self-contained HTML page per dataset to slide through the trajectories",
    ),
    "shortcut-splits": (
        "medtraverse.data.shortcut",
        "confounded train/val and balanced/imbalanced test splits (shortcut study)",
    ),
    "shortcut-arm": (
        "medtraverse.evaluation.shortcut",
        "one arm's training set: confounded, + counterfactuals, balanced, or counterfactuals",
    ),
    "shortcut-report": (
        "medtraverse.report.shortcut",
        "per-arm, per-group metrics with bootstrap CIs, tables and a figure",
    ),
    "provenance": ("medtraverse.core.provenance", "print an artifact's provenance chain"),
    "audit": (
        "medtraverse.audit",
        "what on disk the current config no longer makes, or made differently (--prune)",
    ),
    "submit": ("medtraverse.hpc.submit", "run one stage as a one-off SLURM job (submitit)"),
}


# Stages that start no compute (no --threads), and compute stages that never load torch.
NO_THREADS = frozenset({"provenance", "audit", "submit"})
TORCH_FREE = frozenset(
    {
        "synth",
        "prepare",
        "aggregate-real",
        "figures",
        "viewer",
        "shortcut-splits",
        "shortcut-report",
    }
)


def _usage() -> str:
    lines = ["usage: medtraverse <stage> [options]", "", "stages:"]
    lines += [f"  {name:<17} {help_}" for name, (_, help_) in STAGES.items()]
    lines += ["", "Run 'medtraverse <stage> --help' for a stage's options."]
    return "\n".join(lines)


def build_parser(stage: str) -> argparse.ArgumentParser:
    """The argument parser of one stage (imports that stage's module)."""
    module_name, help_ = STAGES[stage]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"medtraverse {stage}", description=help_)
    module.add_arguments(parser)
    if stage not in NO_THREADS:
        parser.add_argument(
            "--threads",
            type=int,
            default=None,
            help="CPU threads (default: SLURM_CPUS_PER_TASK, else OMP_NUM_THREADS, else the "
            "CPUs this process may use; never more than those)",
        )
    parser.set_defaults(_main=module.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, run the stage, and turn bad input into one line and exit status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print(_usage())
        return 0 if argv else 2
    stage, rest = argv[0], argv[1:]
    if stage not in STAGES:
        print(
            f"medtraverse: error: unknown stage {stage!r}; expected one of {', '.join(STAGES)}",
            file=sys.stderr,
        )
        return 2
    parser = build_parser(stage)
    args = parser.parse_args(rest)
    try:
        if stage not in NO_THREADS:
            from medtraverse.core.threads import apply_threads, resolve_threads

            args.threads = resolve_threads(args.threads)
            apply_threads(args.threads, torch_too=stage not in TORCH_FREE)
        args._main(args)
    except InputError as err:
        print(f"medtraverse {stage}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
