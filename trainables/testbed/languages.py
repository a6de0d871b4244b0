"""The eleven synthetic twins of the paper's languages.

Each twin writes in its own block of Unicode letters, so no two twins share a
character and therefore no WordPiece token (the no-shared-vocabulary setting of
Conneau et al. 2020). Its basic word order and adjective position come from its
real twin, so typology varies across the set as it does in the paper.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

SYNTHETIC_PREFIX = "syn-"


@dataclass(frozen=True)
class Twin:
    code: str  # e.g. "syn-ur"
    real: str  # e.g. "ur"
    order: str  # "SVO", "SOV" or "VSO"
    adjective_after_noun: bool
    letter_range: tuple[int, int]  # inclusive code points of its script

    @property
    def letters(self) -> tuple[str, ...]:
        lo, hi = self.letter_range
        chars = (chr(c) for c in range(lo, hi + 1))
        # Letters only, and only those that no Unicode normalisation rewrites.
        return tuple(
            c for c in chars
            if unicodedata.category(c) in ("Ll", "Lo") and unicodedata.normalize("NFKC", c) == c
        )


_TABLE = [
    # real, order, adjective after noun, script block
    ("en", "SVO", False, (0x0061, 0x007A)),  # Latin
    ("fr", "SVO", True, (0x0101, 0x017F)),  # Latin Extended-A
    ("de", "SVO", False, (0x03B1, 0x03C9)),  # Greek
    ("zh", "SVO", False, (0x3041, 0x3096)),  # Hiragana
    ("ru", "SVO", False, (0x0430, 0x044F)),  # Cyrillic
    ("es", "SVO", True, (0x0561, 0x0586)),  # Armenian
    ("fa", "SOV", True, (0x10D0, 0x10FA)),  # Georgian
    ("ur", "SOV", False, (0x05D0, 0x05EA)),  # Hebrew
    ("ar", "VSO", True, (0x0627, 0x064A)),  # Arabic
    ("hi", "SOV", False, (0x0915, 0x0939)),  # Devanagari consonants
    ("sw", "SVO", True, (0x1200, 0x1248)),  # Ethiopic
]

TWINS: dict[str, Twin] = {
    SYNTHETIC_PREFIX + real: Twin(SYNTHETIC_PREFIX + real, real, order, adj_after, rng)
    for real, order, adj_after, rng in _TABLE
}

# Shared anchor forms (the optional knob) use a script no twin uses.
ANCHOR_LETTERS = tuple(chr(c) for c in range(0x0041, 0x005B))  # Latin capitals


def is_synthetic(language: str) -> bool:
    return language.startswith(SYNTHETIC_PREFIX)


def real_language(language: str) -> str:
    """The paper language a code stands for: 'syn-fr' -> 'fr', 'fr' -> 'fr'."""
    return language[len(SYNTHETIC_PREFIX):] if is_synthetic(language) else language
