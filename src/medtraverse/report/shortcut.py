"""The shortcut study's report: does adding counterfactuals fix a shortcut?

``medtraverse shortcut-report --splits DIR --prepared DIR --arm NAME=CLASSIFIER ... --out DIR
[--factors FACTORS.parquet] --params JSON``

Every arm's classifier (``train-classifier`` folders, multi-label over A and B) scores the
balanced and the imbalanced test. Per arm, test and attribute: accuracy, AUROC, F1, accuracy in
each group, worst-group accuracy, majority-group (both/neither) and mixed-group accuracy, and the
shortcut gap (mixed minus majority; negative when the classifier leans on the other attribute).
95% intervals come from a bootstrap that resamples rows within each group (the same draws for
every arm, so differences between arms are paired). The verdict table gives, per attribute,
arm (b)'s gap minus arm (a)'s with its interval, and says whether (b) narrows, closes or does
not change the gap: measured, never assumed. With ``--factors`` (the twin's ``factors.parquet``)
the labels are also checked against what the twin drew (``truth.csv``: the share of test rows
whose label is the drawn finding).

Writes into ``--out``: ``metrics.csv`` (long: every value with its interval), ``metrics.md`` /
``metrics.tex`` (the headline columns), ``verdict.csv``/``.md``/``.tex``, ``truth.*`` (twin only),
``predictions.parquet``,
``shortcut.png`` (per-group accuracy per arm on the balanced test), ``provenance.json``.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medtraverse.core.errors import bad_input
from medtraverse.core.params import load_params, parse_params, setting
from medtraverse.data.shortcut import GROUPS
from medtraverse.evaluation.shortcut import (
    group_metrics,
    read_split,
    read_study,
    stratified_bootstrap,
)

STAGE = "shortcut-report"
TESTS = ("balanced_test", "imbalanced_test")
ARM_LABELS = {
    "confounded": "(a) confounded real",
    "augmented": "(b) + counterfactuals",
    "balanced": "(c) balanced real (oracle)",
    "counterfactual": "(d) counterfactuals only",
}
HEADLINE = ("accuracy", "auroc", "f1", "worst_group", "majority", "mixed", "gap")


@dataclass(frozen=True)
class ReportParams:
    """The ``shortcut.report`` settings."""

    n_boot: int = setting(1000, min=1, help="bootstrap resamples")
    threshold: float = setting(0.5, min=0.0, max=1.0, help="call threshold")
    seed: int = setting(0, min=0, help="global seed (bootstrap)")
    min_gap_change: float = setting(
        0.0, min=0.0, help="a change of the gap smaller than this counts as no change"
    )


def _parse_arms(items: list[str]) -> dict[str, Path]:
    arms: dict[str, Path] = {}
    for item in items:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise bad_input(f"--arm {item!r}", "not NAME=FOLDER", "e.g. confounded=DIR")
        arms[name] = Path(folder)
    return arms


def predict(classifier_dir: Path, files: list[Path], columns: tuple[str, str]) -> np.ndarray:
    """N x 2 probabilities of A and B from a classifier folder."""
    from medtraverse.evaluation.classify import load_classifier, load_image

    clf = load_classifier(classifier_dir)
    missing = [c for c in columns if c not in clf.attributes]
    if missing:
        raise bad_input(classifier_dir, f"no output for {missing[0]!r}", "a classifier over A, B")
    probs = clf.predict_proba([load_image(f, clf.image_size) for f in files])
    return probs[:, [clf.attributes.index(c) for c in columns]]


def evaluate(
    tests: dict[str, pd.DataFrame],
    probs: dict[str, dict[str, np.ndarray]],
    columns: tuple[str, str],
    params: ReportParams,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Long metrics table (arm, test, attribute, labels, metric, value, ci_low, ci_high) and the
    verdict table. ``probs[arm][test]`` is N x 2 in the test's row order."""
    from medtraverse.core.seeding import derive_seed

    rows: list[dict[str, Any]] = []
    verdict: list[dict[str, Any]] = []
    label_sets = {"labels": tests}
    for labels_name, frames in label_sets.items():
        for test, df in frames.items():
            groups = df["group"].to_numpy()
            ys = [df[c].to_numpy().astype(int) for c in columns]

            def stat(
                idx: np.ndarray, ys: list = ys, test: str = test, groups: np.ndarray = groups
            ) -> dict[str, float]:
                out: dict[str, float] = {}
                for arm, by_test in probs.items():
                    for j, col in enumerate(columns):
                        m = group_metrics(
                            ys[j][idx], by_test[test][idx, j], groups[idx], params.threshold
                        )
                        for key in HEADLINE:
                            out[f"{arm}|{col}|{key}"] = m[key]
                        for g in GROUPS:
                            out[f"{arm}|{col}|acc_{g}"] = m.get(f"acc_{g}", np.nan)
                if {"confounded", "augmented"} <= set(probs):
                    for col in columns:
                        out[f"diff|{col}"] = (
                            out[f"augmented|{col}|gap"] - out[f"confounded|{col}|gap"]
                        )
                return out

            full = stat(np.arange(len(df)))
            seed = derive_seed(params.seed, STAGE, f"{labels_name}/{test}")
            cis = stratified_bootstrap(groups, stat, params.n_boot, seed)
            for key, value in full.items():
                lo, hi = cis.get(key, (np.nan, np.nan))
                if key.startswith("diff|"):
                    col = key.split("|")[1]
                    change = "no clear change"
                    if lo > params.min_gap_change:
                        gap_lo, gap_hi = cis[f"augmented|{col}|gap"]
                        change = "closes" if gap_lo <= 0 <= gap_hi else "narrows"
                    elif hi < -params.min_gap_change:
                        change = "widens"
                    verdict.append(
                        {
                            "test": test,
                            "labels": labels_name,
                            "attribute": col,
                            "gap (a)": full[f"confounded|{col}|gap"],
                            "gap (b)": full[f"augmented|{col}|gap"],
                            "(b) - (a)": value,
                            "ci_low": lo,
                            "ci_high": hi,
                            "verdict": change,
                        }
                    )
                    continue
                arm, col, metric = key.split("|")
                rows.append(
                    {
                        "arm": arm,
                        "test": test,
                        "labels": labels_name,
                        "attribute": col,
                        "metric": metric,
                        "value": value,
                        "ci_low": lo,
                        "ci_high": hi,
                        "n": len(df),
                    }
                )
    return pd.DataFrame(rows), pd.DataFrame(verdict)


def truth_agreement(
    tests: dict[str, pd.DataFrame], truth: dict[str, pd.DataFrame], columns: tuple[str, str]
) -> pd.DataFrame:
    """Per test and attribute, the share of rows whose label is the twin's ground truth."""
    rows = []
    for test, df in tests.items():
        for col in columns:
            same = df[col].to_numpy().astype(int) == truth[test][col].to_numpy()
            rows.append({"test": test, "attribute": col, "agreement": float(same.mean())})
    return pd.DataFrame(rows)


def wide_table(long: pd.DataFrame) -> pd.DataFrame:
    """One row per arm, test and attribute; value [ci] per headline metric."""
    part = long[long["labels"] == "labels"]
    out = []
    for (arm, test, col), g in part.groupby(["arm", "test", "attribute"], sort=False):
        cells = g.set_index("metric")
        row: dict[str, Any] = {
            "arm": ARM_LABELS.get(arm, arm),
            "test": test.replace("_test", ""),
            "attribute": col,
        }
        for key in HEADLINE:
            v, lo, hi = cells.loc[key, ["value", "ci_low", "ci_high"]]
            row[key] = (
                f"{v:.3f} [{lo:.3f}, {hi:.3f}]" if key in ("worst_group", "gap") else (f"{v:.3f}")
            )
        out.append(row)
    return pd.DataFrame(out)


def plot(long: pd.DataFrame, columns: tuple[str, str], path: Path) -> None:
    """Per-group accuracy of each arm on the balanced test, one panel per attribute."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    part = long[(long["labels"] == "labels") & (long["test"] == "balanced_test")]
    arms = list(dict.fromkeys(part["arm"]))
    fig, axes = plt.subplots(1, len(columns), figsize=(5.2 * len(columns), 3.6), sharey=True)
    width = 0.8 / max(1, len(arms))
    for ax, col in zip(np.atleast_1d(axes), columns, strict=True):
        for i, arm in enumerate(arms):
            cells = part[(part["arm"] == arm) & (part["attribute"] == col)].set_index("metric")
            keys = [f"acc_{g}" for g in GROUPS]
            v = cells.loc[keys, "value"].to_numpy(float)
            err = np.abs(cells.loc[keys, ["ci_low", "ci_high"]].to_numpy(float).T - v)
            x = np.arange(len(GROUPS)) + (i - (len(arms) - 1) / 2) * width
            ax.bar(x, v, width, yerr=err, capsize=2, label=ARM_LABELS.get(arm, arm))
        ax.set_xticks(np.arange(len(GROUPS)), list(GROUPS))
        ax.set_title(f"{col}: accuracy per group (balanced test)")
        ax.set_ylim(0, 1.05)
        ax.axhline(0.5, color="grey", lw=0.6, ls=":")
    np.atleast_1d(axes)[0].set_ylabel("accuracy (95% CI)")
    np.atleast_1d(axes)[-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def shortcut_report(
    splits: str | Path,
    prepared: str | Path,
    arms: dict[str, Path],
    out: str | Path,
    raw: dict[str, Any],
    factors: str | Path | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score every arm on both tests and write tables, figure and provenance."""
    from medtraverse.core import provenance
    from medtraverse.core.io import atomic_path
    from medtraverse.core.tables import write_tables

    params = parse_params(ReportParams, raw, "shortcut.report")
    splits, prepared, out = Path(splits), Path(prepared), Path(out)
    if not arms:
        raise bad_input("--arm", "none given", "at least one NAME=CLASSIFIER")
    study = read_study(splits)
    columns = (study["a_column"], study["b_column"])
    tests = {t: read_split(splits, t) for t in TESTS}
    probs: dict[str, dict[str, np.ndarray]] = {}
    preds = []
    for arm, folder in arms.items():
        probs[arm] = {}
        for t, df in tests.items():
            p = predict(folder, [prepared / f for f in df["path"]], columns)
            probs[arm][t] = p
            preds.append(
                pd.DataFrame(
                    {
                        "arm": arm,
                        "test": t,
                        "image_id": df["image_id"].to_numpy(),
                        "group": df["group"].to_numpy(),
                        **{f"y_{c}": df[c].to_numpy() for c in columns},
                        **{f"p_{c}": p[:, j] for j, c in enumerate(columns)},
                    }
                )
            )
    truth = None
    if factors is not None:
        fac = pd.read_parquet(factors)
        truth = {}
        for t, df in tests.items():
            joined = df[["source_path", "group"]].merge(
                fac, left_on="source_path", right_on="path", how="left"
            )
            if joined[f"{columns[0]}_rendered"].isna().any():
                raise bad_input(factors, f"misses rows of {t}", "the twin the splits came from")
            truth[t] = pd.DataFrame(
                {
                    "group": df["group"].to_numpy(),
                    **{c: joined[f"{c}_rendered"].astype(int).to_numpy() for c in columns},
                }
            )
    long, verdict = evaluate(tests, probs, columns, params)
    agreement = truth_agreement(tests, truth, columns) if truth else None
    wide = wide_table(long)
    with atomic_path(out, stage=STAGE) as tmp:
        tmp.mkdir(parents=True)
        note = (
            f"A = {study['a']}, B = {study['b']}; worst-group and gap with 95% bootstrap "
            f"intervals ({params.n_boot} resamples within groups); gap = mixed - both/neither"
        )
        write_tables(tmp, "metrics", long, wide, note=note, caption="Shortcut study")
        if not verdict.empty:
            vnote = "(b) - (a): change of the shortcut gap from adding counterfactuals"
            write_tables(tmp, "verdict", verdict, note=vnote, caption="Does (b) close the gap?")
        if agreement is not None:
            tnote = "share of test rows whose label equals what the twin drew (factors.parquet)"
            write_tables(tmp, "truth", agreement, note=tnote, caption="Labels against the twin")
        pd.concat(preds, ignore_index=True).to_parquet(tmp / "predictions.parquet", index=False)
        plot(long, columns, tmp / "shortcut.png")
    inputs = [splits, *arms.values(), *([Path(factors)] if factors else [])]
    provenance.record(
        out, stage=STAGE, params=asdict(params), inputs=inputs, seeds={"seed": params.seed}
    )
    return long, verdict


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--splits", type=Path, required=True, help="shortcut-splits folder")
    parser.add_argument("--prepared", type=Path, required=True, help="the prepared dataset folder")
    parser.add_argument(
        "--arm", action="append", default=[], help="NAME=CLASSIFIER_DIR, once per arm"
    )
    parser.add_argument("--factors", type=Path, default=None, help="the twin's factors.parquet")
    parser.add_argument("--out", type=Path, required=True, help="the report folder to write")
    parser.add_argument("--params", default="{}", help="shortcut.report (JSON or @file)")


def main(args: argparse.Namespace) -> None:
    from medtraverse.core.io import check_output

    check_output(args.out, STAGE, "folder")  # before any work; never replaces user data
    _, verdict = shortcut_report(
        args.splits,
        args.prepared,
        _parse_arms(args.arm),
        args.out,
        load_params(args.params),
        factors=args.factors,
    )
    if not verdict.empty:
        print(verdict.to_string(index=False))
