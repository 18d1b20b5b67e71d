"""Caption templates: data from the config, turned into prompts the same way the authors did.

CheXpert (authors' ``create_captions``): ``prefix + separator.join(findings equal to 1)`` in the
template's order, or ``empty`` when none is 1. With No Finding = 1 this gives "Chest X-ray
showing No Finding": the authors' behaviour, kept on purpose.

ISIC (authors' ``create_captions``): ``labels[label]`` then ``showing + separator.join(present
artifacts)`` or ``no_artifacts``; an artifact's text is its name with underscores as spaces
unless ``artifact_text`` names it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from medtraverse.core.errors import bad_input
from medtraverse.core.formats import CHEXPERT_LABELS, ISIC_ARTIFACTS
from medtraverse.core.params import parse_params, setting

CHEXPERT_FINDINGS: tuple[str, ...] = (
    "No Finding",
    "Cardiomegaly",
    "Lung Opacity",
    "Edema",
    "Pneumonia",
    "Pneumothorax",
    "Pleural Effusion",
    "Support Devices",
)
ISIC_LABELS: tuple[str, ...] = ("MEL", "NV")


def check_names(names: list[str], allowed: tuple[str, ...], where: str, kind: str) -> None:
    """Every name must be one of ``allowed`` (labels, artifacts): one line naming the stray."""
    for name in names:
        if name not in allowed:
            raise bad_input(where, f"unknown {kind} {name!r}", "one of " + ", ".join(allowed))


@dataclass(frozen=True)
class ChexpertCaption:
    """The CheXpert caption template (METHOD.md section 2)."""

    prefix: str = setting("Chest X-ray showing ", help="before the findings")
    separator: str = setting(", ", help="between findings")
    empty: str = setting(
        "Normal chest X-ray with no significant findings", help="caption without findings"
    )
    findings: tuple[str, ...] = setting(CHEXPERT_FINDINGS, help="labels named, in this order")

    @classmethod
    def from_params(cls, params: Any, where: str) -> ChexpertCaption:
        """Typed template (one-line errors naming the key); None: the defaults."""
        return parse_params(cls, params, where)

    def validate(self, where: str) -> None:
        """Findings are CheXpert labels."""
        check_names(list(self.findings), CHEXPERT_LABELS, f"{where}.findings", "label")

    def prompt(self, labels: Mapping[str, int]) -> str:
        """The caption of one image from its labels (after the uncertain policy)."""
        present = [name for name in self.findings if int(labels[name]) == 1]
        return self.prefix + self.separator.join(present) if present else self.empty


@dataclass(frozen=True)
class IsicCaption:
    """The ISIC caption template (METHOD.md section 2)."""

    labels: dict[str, str] = setting(
        default_factory=lambda: {
            "MEL": "a dermoscopic image with melanoma (MEL)",
            "NV": "a dermoscopic image with melanocytic nevus (NV)",
        },
        help="caption of each class (MEL and NV)",
    )
    showing: str = setting(" showing ", help="before the artifacts")
    separator: str = setting(", ", help="between artifacts")
    no_artifacts: str = setting(" with no visible artifacts", help="caption tail without any")
    artifacts: tuple[str, ...] = setting(ISIC_ARTIFACTS, help="artifacts named, in this order")
    artifact_text: dict[str, str] = setting(default_factory=dict, help="artifact -> its words")

    @classmethod
    def from_params(cls, params: Any, where: str) -> IsicCaption:
        """Typed template (one-line errors naming the key); None: the defaults."""
        return parse_params(cls, params, where)

    def validate(self, where: str) -> None:
        """Labels for exactly MEL and NV; artifacts are Bissoto et al.'s."""
        if set(self.labels) != set(ISIC_LABELS):
            raise bad_input(
                f"{where}.labels", f"got keys {sorted(self.labels)}", "exactly MEL and NV"
            )
        for key, names in (("artifacts", self.artifacts), ("artifact_text", self.artifact_text)):
            check_names(list(names), ISIC_ARTIFACTS, f"{where}.{key}", "artifact")

    def text_of(self, artifact: str) -> str:
        return self.artifact_text.get(artifact, artifact.replace("_", " "))

    def prompt(self, label: str, flags: Mapping[str, int]) -> str:
        """The caption of one lesion from its label and 0/1 artifact flags."""
        present = [self.text_of(a) for a in self.artifacts if int(flags[a]) == 1]
        tail = self.showing + self.separator.join(present) if present else self.no_artifacts
        return self.labels[label] + tail

    def as_dict(self) -> dict[str, Any]:
        return {
            "labels": dict(self.labels),
            "showing": self.showing,
            "separator": self.separator,
            "no_artifacts": self.no_artifacts,
            "artifacts": list(self.artifacts),
            "artifact_text": dict(self.artifact_text),
        }
