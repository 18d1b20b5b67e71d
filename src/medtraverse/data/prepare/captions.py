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
from dataclasses import dataclass, field
from typing import Any

from medtraverse.core.errors import bad_input
from medtraverse.core.formats import CHEXPERT_LABELS, ISIC_ARTIFACTS

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


def typed(params: Mapping[str, Any], key: str, kind: Any, default: Any, where: str) -> Any:
    """``params[key]`` checked against ``kind`` (floats accept ints, never bools), or the default.

    ``kind`` may be ``"str-list"`` (a list of strings) or ``"str-dict"`` (str -> str).
    """
    if key not in params:
        return default
    value = params[key]
    name = f"{where}.{key}"
    if kind == "str-list":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad_input(name, f"got {value!r}", "a list of strings")
        return list(value)
    if kind == "str-dict":
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise bad_input(name, f"got {value!r}", "a mapping of strings to strings")
        return dict(value)
    if isinstance(value, bool) and kind is not bool:
        raise bad_input(name, f"got {value!r}", _kind_name(kind))
    if kind is float and isinstance(value, int):
        return float(value)
    if not isinstance(value, kind):
        raise bad_input(name, f"got {value!r} ({type(value).__name__})", _kind_name(kind))
    return value


def _kind_name(kind: Any) -> str:
    return {float: "a number", int: "an integer", str: "a string", bool: "true or false"}.get(
        kind, getattr(kind, "__name__", str(kind))
    )


def check_keys(params: Mapping[str, Any], known: set[str], where: str) -> None:
    """Reject unknown keys, so a typo in the config is an error and not a silent default."""
    for key in params:
        if key not in known:
            raise bad_input(f"{where}.{key}", "unknown key", f"one of {', '.join(sorted(known))}")


def check_names(names: list[str], allowed: tuple[str, ...], where: str, kind: str) -> None:
    """Every name must be one of ``allowed`` (labels, artifacts): one line naming the stray."""
    for name in names:
        if name not in allowed:
            raise bad_input(where, f"unknown {kind} {name!r}", "one of " + ", ".join(allowed))


@dataclass(frozen=True)
class ChexpertCaption:
    """The CheXpert caption template (METHOD.md section 2)."""

    prefix: str = "Chest X-ray showing "
    separator: str = ", "
    empty: str = "Normal chest X-ray with no significant findings"
    findings: tuple[str, ...] = CHEXPERT_FINDINGS

    @classmethod
    def from_params(cls, params: Any, where: str) -> ChexpertCaption:
        if params is None:
            return cls()
        if not isinstance(params, dict):
            raise bad_input(where, f"got {params!r}", "a mapping of caption template keys")
        check_keys(params, {"prefix", "separator", "empty", "findings"}, where)
        findings = typed(params, "findings", "str-list", list(CHEXPERT_FINDINGS), where)
        check_names(findings, CHEXPERT_LABELS, f"{where}.findings", "label")
        return cls(
            prefix=typed(params, "prefix", str, cls.prefix, where),
            separator=typed(params, "separator", str, cls.separator, where),
            empty=typed(params, "empty", str, cls.empty, where),
            findings=tuple(findings),
        )

    def prompt(self, labels: Mapping[str, int]) -> str:
        """The caption of one image from its labels (after the uncertain policy)."""
        present = [name for name in self.findings if int(labels[name]) == 1]
        return self.prefix + self.separator.join(present) if present else self.empty


@dataclass(frozen=True)
class IsicCaption:
    """The ISIC caption template (METHOD.md section 2)."""

    labels: Mapping[str, str] = field(
        default_factory=lambda: {
            "MEL": "a dermoscopic image with melanoma (MEL)",
            "NV": "a dermoscopic image with melanocytic nevus (NV)",
        }
    )
    showing: str = " showing "
    separator: str = ", "
    no_artifacts: str = " with no visible artifacts"
    artifacts: tuple[str, ...] = ISIC_ARTIFACTS
    artifact_text: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_params(cls, params: Any, where: str) -> IsicCaption:
        if params is None:
            return cls()
        if not isinstance(params, dict):
            raise bad_input(where, f"got {params!r}", "a mapping of caption template keys")
        keys = {"labels", "showing", "separator", "no_artifacts", "artifacts", "artifact_text"}
        check_keys(params, keys, where)
        default = cls()
        labels = typed(params, "labels", "str-dict", dict(default.labels), where)
        if set(labels) != set(ISIC_LABELS):
            raise bad_input(f"{where}.labels", f"got keys {sorted(labels)}", "exactly MEL and NV")
        artifacts = typed(params, "artifacts", "str-list", list(ISIC_ARTIFACTS), where)
        text = typed(params, "artifact_text", "str-dict", {}, where)
        for key, names in (("artifacts", artifacts), ("artifact_text", list(text))):
            check_names(names, ISIC_ARTIFACTS, f"{where}.{key}", "artifact")
        return cls(
            labels=labels,
            showing=typed(params, "showing", str, default.showing, where),
            separator=typed(params, "separator", str, default.separator, where),
            no_artifacts=typed(params, "no_artifacts", str, default.no_artifacts, where),
            artifacts=tuple(artifacts),
            artifact_text=text,
        )

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
