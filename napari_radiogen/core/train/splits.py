"""Patient-level splits: stratified by ``PatientRecord.strata``, grouped by ``.group``, seeded.

A patient (and every patient of its group) is always entirely in one part of a split, so no
slice, crop or duplicate of a held-out patient is ever seen in training.
"""
from __future__ import annotations

from collections import Counter
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..errors import ConfigError
from .base import PatientRecord


def _arrays(records: Sequence[PatientRecord]):
    ids = np.array([r.patient_id for r in records], dtype=object)
    y = np.array([("" if r.strata is None else str(r.strata)) for r in records], dtype=object)
    g = np.array([(r.group if r.group is not None else r.patient_id) for r in records],
                 dtype=object)
    return ids, y, g


def _split_iter(n_splits: int, y, g, seed: int):
    """StratifiedGroupKFold splits; stratification is dropped when no class has n_splits
    members (sklearn refuses that case), e.g. for tiny --limit runs."""
    import warnings
    from collections import Counter as _C
    from sklearn.model_selection import StratifiedGroupKFold
    if max(_C(list(y)).values()) < n_splits:
        y = np.zeros(len(y), dtype=int)
    cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # "least populated class has only n members"
        return list(cv.split(np.zeros(len(y)), y, g))


def check_unique(records: Sequence[PatientRecord]) -> None:
    dup = [k for k, n in Counter(r.patient_id for r in records).items() if n > 1]
    if dup:
        raise ConfigError(f"duplicate patient ids: {', '.join(map(str, dup[:5]))}")


def kfold(records: Sequence[PatientRecord], k: int, seed: int = 0
          ) -> List[Tuple[List[str], List[str]]]:
    """K (train_ids, test_ids) pairs; every patient is in exactly one test fold."""
    check_unique(records)
    n_groups = len({(r.group or r.patient_id) for r in records})
    if k < 2:
        raise ConfigError(f"folds must be >= 2 for cross-validation (got {k})")
    if n_groups < k:
        raise ConfigError(f"{k}-fold cross-validation needs at least {k} patients (groups); "
                          f"got {n_groups}")
    ids, y, g = _arrays(records)
    out = []
    for tr, te in _split_iter(k, y, g, seed):
        if len(tr) == 0 or len(te) == 0:
            raise ConfigError("a cross-validation split came out empty; use fewer folds")
        out.append((list(ids[tr]), list(ids[te])))
    return out


def holdout(records: Sequence[PatientRecord], fraction: float, seed: int = 0,
            min_train: int = 1) -> Tuple[List[str], List[str]]:
    """(train_ids, held_ids) with about ``fraction`` of the patients (>= 1) held out,
    stratified and grouped. ``fraction <= 0`` holds out nobody."""
    check_unique(records)
    ids, y, g = _arrays(records)
    if fraction <= 0:
        return list(ids), []
    groups = list(dict.fromkeys(g))
    if len(groups) < min_train + 1:
        raise ConfigError(f"cannot split {len(ids)} patient(s) into training and held-out parts "
                          f"(need at least {min_train + 1} patients)")
    n_splits = int(max(2, min(round(1.0 / fraction), len(groups))))
    tr, te = _split_iter(n_splits, y, g, seed)[0]
    if len(tr) < min_train or len(te) == 0:
        raise ConfigError(f"the split of {len(ids)} patients left an empty part; add patients "
                          "or lower the held-out fraction")
    return list(ids[tr]), list(ids[te])


def subset(records: Sequence[PatientRecord], ids: Sequence[str]) -> List[PatientRecord]:
    keep = set(ids)
    return [r for r in records if r.patient_id in keep]


def limit_records(records: Sequence[PatientRecord], n: Optional[int], seed: int = 0
                  ) -> List[PatientRecord]:
    """A seeded, stratum-balanced subset of ``n`` patients (for ``--limit`` smoke runs)."""
    records = list(records)
    if not n or n >= len(records):
        return records
    rng = np.random.default_rng(seed)
    by: dict = {}
    for i in rng.permutation(len(records)):
        r = records[int(i)]
        by.setdefault(r.strata, []).append(r)
    out: List[PatientRecord] = []
    keys = sorted(by, key=lambda s: str(s))
    while len(out) < n:
        for s in keys:                     # round-robin over strata: every class represented
            if by[s] and len(out) < n:
                out.append(by[s].pop(0))
    order = {r.patient_id: i for i, r in enumerate(records)}
    return sorted(out, key=lambda r: order[r.patient_id])


def check_split(name: str, records: Sequence[PatientRecord], ids: Sequence[str],
                need_classes: bool = True) -> None:
    """ConfigError if a split part is empty or (when stratified) has one class only."""
    if not ids:
        raise ConfigError(f"the {name} split is empty; add patients or change folds/fractions")
    if need_classes:
        strata = {r.strata for r in subset(records, ids)}
        if all(s is not None for s in strata) and len(strata) < 2:
            raise ConfigError(f"the {name} split has one class only ({next(iter(strata))!r}); "
                              "add patients of the other class(es) or use fewer folds")
