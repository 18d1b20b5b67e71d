"""A tiny CLIP byte-level BPE vocabulary, written offline for the tiny base model.

Why: the demo and the tests need a CLIP tokenizer without downloading the 49,408-token vocabulary.
A vocabulary with the 256 byte characters, their end-of-word forms, whole-word merges for every
word of the project's prompts, and CLIP's two special tokens (~600 tokens, a few KB) is enough:
stock ``CLIPTokenizer`` loads it, and every prompt word becomes a single token. Any other text
still tokenizes (into single characters), so no prompt can fail.

``transformers`` 5 no longer exports ``bytes_to_unicode``; it is written here (same table as
OpenAI's CLIP and GPT-2).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

from medtraverse.core.formats import CHEXPERT_LABELS, ISIC_ARTIFACTS

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
END_OF_WORD = "</w>"

# CLIP's pre-tokenization (letters runs, single digits, runs of other symbols), applied after
# lowercasing. ``[^\W\d_]`` is "a letter" in Python's ``re``.
_WORD_RE = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+|_+")

ISIC_ARTIFACT_WORDS = tuple(a.replace("_", " ") for a in ISIC_ARTIFACTS)

# Every prompt the project writes (METHOD.md sections 2 and 4), as text: the vocabulary gets a
# whole-word token for each word in them.
PROMPT_TEXTS: tuple[str, ...] = (
    "Normal chest X-ray with no significant findings",
    "Chest X-ray showing " + ", ".join(CHEXPERT_LABELS),
    "a dermoscopic image with melanoma (MEL) showing " + ", ".join(ISIC_ARTIFACT_WORDS),
    "a dermoscopic image with melanocytic nevus (NV) with no visible artifacts",
    "a dermoscopic image with melanoma (MEL) showing ink",
    "a dermoscopic image with melanoma (MEL) showing gel bubbles",
    "a dermoscopic image with melanoma (MEL) with a ruler visible",
    "a dermoscopic image with melanoma (MEL) with hairs visible on skin",
    "dark corners gel borders patch rulers inks and of the in on",
)


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """Map each byte to a printable unicode character (OpenAI's table, as in CLIP and GPT-2)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {byte: chr(code) for byte, code in zip(printable, codes, strict=True)}


def words_of(texts: Iterable[str]) -> list[str]:
    """The distinct pre-tokenized words of ``texts`` (lowercased, as CLIP's tokenizer sees them),
    in first-seen order."""
    seen: dict[str, None] = {}
    for text in texts:
        for word in _WORD_RE.findall(" ".join(text.lower().split())):
            seen.setdefault(word, None)
    return list(seen)


def _symbols(word: str) -> list[str]:
    """A word as byte-level characters, the last one carrying the end-of-word mark."""
    table = bytes_to_unicode()
    chars = [table[b] for b in word.encode("utf-8")]
    chars[-1] = chars[-1] + END_OF_WORD
    return chars


def _apply_bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's BPE: repeatedly merge the adjacent pair with the lowest rank."""
    symbols = list(symbols)
    while len(symbols) > 1:
        pairs = [(ranks.get((symbols[i], symbols[i + 1])), i) for i in range(len(symbols) - 1)]
        ranked = [(r, i) for r, i in pairs if r is not None]
        if not ranked:
            break
        best = min(r for r, _ in ranked)
        pair = next((symbols[i], symbols[i + 1]) for r, i in ranked if r == best)
        merged: list[str] = []
        i = 0
        while i < len(symbols):
            if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
                merged.append(symbols[i] + symbols[i + 1])
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return symbols


def build_vocab(
    texts: Iterable[str] = PROMPT_TEXTS,
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and merges that make every word of ``texts`` one token.

    Merges are added word by word, each one at the end of the list, merging the first two pieces
    the current merges leave; a word that is already whole is never changed by a later merge
    (a later merge has a higher rank than every merge the word used), so all words stay whole.
    """
    table = bytes_to_unicode()
    base = [table[b] for b in range(256)]
    tokens: list[str] = base + [c + END_OF_WORD for c in base]
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    known = set(tokens)
    for word in words_of(texts):
        while True:
            pieces = _apply_bpe(_symbols(word), ranks)
            if len(pieces) == 1:
                break
            pair = (pieces[0], pieces[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            if pair[0] + pair[1] not in known:
                known.add(pair[0] + pair[1])
                tokens.append(pair[0] + pair[1])
    tokens += [BOS, EOS]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def write_vocab(out_dir: str | Path, texts: Iterable[str] = PROMPT_TEXTS) -> Path:
    """Write ``vocab.json`` and ``merges.txt`` into ``out_dir`` (for ``CLIPTokenizer``)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab(texts)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False) + "\n")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (out_dir / "merges.txt").write_text("\n".join(lines) + "\n")
    return out_dir


def build_tokenizer(texts: Iterable[str] = PROMPT_TEXTS, *, max_length: int = 77):  # noqa: ANN201
    """A stock ``CLIPTokenizer`` over the tiny vocabulary (padding with ``<|endoftext|>`` like
    SD 1.5's tokenizer)."""
    from transformers import CLIPTokenizer

    vocab, merges = build_vocab(texts)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length, pad_token=EOS)
