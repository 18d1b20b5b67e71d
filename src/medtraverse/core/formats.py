"""The real datasets' on-disk vocabularies, in one place: the twins write them, prepare reads them,
the tokenizer learns their words."""

from __future__ import annotations

# CheXpert train.csv / valid.csv: five metadata columns, then the 14 labels.
CHEXPERT_META_COLUMNS: tuple[str, ...] = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")
CHEXPERT_LABELS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
CHEXPERT_COLUMNS: tuple[str, ...] = (*CHEXPERT_META_COLUMNS, *CHEXPERT_LABELS)

# ISIC_2019_Training_GroundTruth.csv: `image` then one-hot diagnosis columns.
ISIC_CLASSES: tuple[str, ...] = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK")
# Bissoto et al.'s artifact annotations (snake_case, as in their table's header).
ISIC_ARTIFACTS: tuple[str, ...] = (
    "dark_corner",
    "hair",
    "gel_border",
    "gel_bubble",
    "ruler",
    "ink",
    "patches",
)


def snake(name: str) -> str:
    """Manifest column name of a label: ``"Pleural Effusion"`` -> ``"pleural_effusion"``."""
    return name.strip().lower().replace(" ", "_").replace("/", "_")
