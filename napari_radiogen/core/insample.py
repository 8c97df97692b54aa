"""Results on a case the model was trained on are in-sample, and say so.

A model card lists the patients whose data trained (or selected) the shipped weights:
``training_data.shipped_model_trained_on`` where the card tells them apart from the
cross-validation cohort (the shipped segmentation cards: ``training_data.patients`` is their CV
cohort there, and a fold model may have been shipped), else ``training_data.patients`` (the
training engine's cards, the prediction and synthesis cards). A Dice, a prediction or a
localisation score on one of those patients is not a validation figure: the model has seen
the case (and for a segmentation model, its expert labels). :func:`in_sample_note` is the one
check, used by segmentation, prediction, explanation and synthesis; it returns a
:class:`~napari_radiogen.core.notes.Note` of kind ``IN_SAMPLE`` naming the case and the model.

Case ids are compared ignoring case and ``-`` / ``_`` (TCGA barcodes are written both ways).

A batch (``radiogen predict FOLDER``, ``segment``, ``analyze``) says the note once for all its
in-sample cases (:func:`batch_in_sample_lines`: how many, a few names), not once per case; each
case's own JSON keeps its note. The note records its model and meaning
(:func:`in_sample_parts`), also when only its text is left (a summary table's warnings).
"""
from __future__ import annotations

import re
from typing import Any, Dict, FrozenSet, Iterable, List, Optional, Sequence, Tuple

from .notes import IN_SAMPLE, Note, warning_key

#: what an in-sample result means, by kind of result
DICE = "its Dice here is in-sample, not a validation"
SEGMENTATION = ("this segmentation is in-sample, not a validation (expect it to be better than "
                "on a new case)")
PREDICTION = ("its predictions here are in-sample, not a validation (expect them to be right "
              "more often than on a new case)")
LOCALISATION = "its localisation score here is in-sample, not a validation"
SYNTHESIS = ("this synthetic volume is in-sample, not a validation (expect it closer to the "
             "real scan than on a new case)")
SYNTHESIS_METRICS = "its PSNR/SSIM against the real scan here are in-sample, not a validation"


def _norm(case_id: Any) -> str:
    return str(case_id).strip().upper().replace("-", "_")


def training_patients(card: Optional[Dict[str, Any]]) -> FrozenSet[str]:
    """The ids of the patients the shipped weights of ``card`` were trained on (normalised,
    see the module docstring); empty when the card does not list them."""
    td = (card or {}).get("training_data")
    if not isinstance(td, dict):
        return frozenset()
    ids = td.get("shipped_model_trained_on")
    if not isinstance(ids, (list, tuple)):
        ids = td.get("patients")
    if not isinstance(ids, (list, tuple)):
        return frozenset()
    return frozenset(_norm(i) for i in ids if isinstance(i, (str, int)))


def in_training_data(case_id: Optional[str], card: Optional[Dict[str, Any]]) -> bool:
    """Was ``case_id`` among the training patients of the model of ``card``?"""
    return bool(case_id) and _norm(case_id) in training_patients(card)


def in_sample_note(case_id: Optional[str], model_name: str, card: Optional[Dict[str, Any]],
                   meaning: str, patient_ids: Iterable[str] = ()) -> Optional[Note]:
    """``"<case> was in <model>'s training data: <meaning>"`` (kind ``IN_SAMPLE``) when the case
    is among the model's training patients, else None. ``meaning``: :data:`DICE`,
    :data:`SEGMENTATION`, :data:`PREDICTION`, :data:`LOCALISATION` or own words.
    ``patient_ids``: the patient ids the case's file names (or DICOM headers) carry besides its id
    (``case.meta["patient_ids"]``, see :func:`case_patient_ids`)."""
    if in_training_data(case_id, card):
        return _note(f"{case_id} was in {model_name}'s training data: {meaning}", model_name,
                     meaning)
    for pid in patient_ids or ():
        if in_training_data(pid, card):
            # the id is not written: outputs are de-identified, and the case id is what the
            # user named the case by
            return _note(f"{case_id}: its file names or DICOM headers carry the id of a patient "
                         f"in {model_name}'s training data: {meaning}", model_name, meaning)
    return None


def _note(text: str, model_name: str, meaning: str) -> Note:
    note = Note(text, IN_SAMPLE)
    note.model, note.meaning = str(model_name), str(meaning)   # for a batch's one summary
    return note


#: the two wordings of :func:`in_sample_note`, to recognise its text where only the text is left
_TEXT = re.compile(r"^.*?(?: was in |: its file names or DICOM headers carry the id of a "
                   r"patient in )(?P<model>[^\s']+)'s training data: (?P<meaning>.+)$", re.S)


def in_sample_parts(w: Any) -> Optional[Tuple[str, str]]:
    """``(model, meaning)`` of an in-sample note (:func:`in_sample_note`), else None. A
    :class:`Note` carries them; a plain string (a note read back from a JSON file or a summary
    table) is recognised by its wording."""
    if getattr(w, "model", None) and getattr(w, "meaning", None):
        return str(w.model), str(w.meaning)
    key = warning_key(w)
    if key != IN_SAMPLE and key != str(w):      # a note of another kind
        return None
    m = _TEXT.match(str(w))
    return (m.group("model"), m.group("meaning")) if m else None


def batch_in_sample_lines(found: Dict[Tuple[str, str], Sequence[str]], n_cases: int,
                          shown: int = 3) -> List[str]:
    """What a batch says once for its in-sample cases: one line per model and meaning,
    ``"in-sample: 88 of 88 cases were in predict_x's training data (A, B, C and 85 more):
    <meaning>; each case's JSON says so"``. ``found``: ``{(model, meaning): [case ids]}``
    (see :func:`in_sample_parts`); ``n_cases``: the cases of the batch."""
    out = []
    for (model, meaning), ids in found.items():
        ids = list(dict.fromkeys(ids))
        if not ids:
            continue
        names = ", ".join(ids[:shown]) + (f" and {len(ids) - shown} more" if len(ids) > shown
                                          else "")
        were = "case was" if len(ids) == 1 else "cases were"
        out.append(f"in-sample: {len(ids)} of {n_cases} {were} in {model}'s training data "
                   f"({names}): {meaning}; each case's JSON says so")
    return out


def case_patient_ids(case: Any) -> List[str]:
    """The patient ids a case carries besides its case id (``meta["patient_ids"]``, set by
    the reader from the file and folder names, or a DICOM series' patient id)."""
    ids = (getattr(case, "meta", None) or {}).get("patient_ids") or []
    return [str(i) for i in ids if isinstance(i, str)]


def case_in_sample_note(case: Any, model_name: str, card: Optional[Dict[str, Any]],
                        meaning: str) -> Optional[Note]:
    """:func:`in_sample_note` for a :class:`~napari_radiogen.core.case.Case`: its id and the
    patient ids its file names or DICOM headers carry."""
    return in_sample_note(case.case_id, model_name, card, meaning, case_patient_ids(case))


__all__ = ["training_patients", "in_training_data", "in_sample_note", "case_patient_ids",
           "case_in_sample_note", "in_sample_parts", "batch_in_sample_lines", "DICE", "SEGMENTATION", "PREDICTION", "LOCALISATION",
           "SYNTHESIS", "SYNTHESIS_METRICS"]
