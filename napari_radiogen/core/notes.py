"""Warnings that carry their kind.

A :class:`Note` is a warning's text (a plain ``str`` for JSON, comparisons and printing) with a
stable ``key`` set where the warning is made. Callers that must recognise a kind of warning
(an analysis leaving out the "synthetic input(s) used" notes of its stages because it lists the
synthetic inputs itself; an ensemble saying once what its members each say in their own words)
compare keys, not sentences. A key survives as long as the warning is passed along unchanged.
"""
from __future__ import annotations

from typing import Sequence


class Note(str):
    """A warning with a stable ``key`` for its kind (default: its text)."""
    key: str

    def __new__(cls, text: str, key: str = "") -> "Note":
        note = super().__new__(cls, text)
        note.key = key or text
        return note


#: kinds that more than one model or stage gives, each in its own words
AGE_UNKNOWN, SEX_UNKNOWN = "age unknown", "sex unknown"
OUTSIDE_DOMAIN_3D = "3D volume outside the validated domain"
SYNTHETIC_USED = "synthetic inputs used"
SYNTHETIC_SEGMENTATION = "synthetic inputs of the tumour segmentation"
#: the kinds an analysis that synthesised the inputs says itself (core.pipeline)
SYNTHETIC_KEYS = (SYNTHETIC_USED, SYNTHETIC_SEGMENTATION)
#: the case is among the model's training patients: its result there is in-sample
#: (core.insample); an ensemble says it once for its members
IN_SAMPLE = "case in the model's training data"


#: the input is not skull-stripped while the segmentation model was trained on skull-stripped
#: volumes: the tumour mask (and every result placed on it) may describe scalp or orbits
NOT_SKULL_STRIPPED = "input not skull-stripped"
#: warnings that make a result unreliable, not merely worth knowing: said first and apart
#: (``caution``), with the short words summaries and lists show
CAUTIONS = {NOT_SKULL_STRIPPED: "not skull-stripped: the tumour segmentation, and the "
                                "volumes, predictions and heatmaps resting on it, are "
                                "unreliable"}


def cautions(warnings: Sequence[str]) -> list:
    """The short words of the cautions among ``warnings`` (see :data:`CAUTIONS`), once each."""
    out = []
    for w in warnings:
        c = CAUTIONS.get(warning_key(w))
        if c is not None and c not in out:
            out.append(c)
    return out


def warning_key(w: str) -> str:
    """The kind of warning ``w``: its :class:`Note` key, else its text."""
    return getattr(w, "key", None) or str(w)


def synthetic_note(seqs: Sequence[str], tail: str = "", key: str = SYNTHETIC_USED) -> Note:
    """"synthetic input(s) used: <seqs><tail>", the one wording of the segmentation, prediction
    and explanation stages."""
    return Note(f"synthetic input(s) used: {', '.join(seqs)}{tail}", key)
