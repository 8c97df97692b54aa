"""Helpers the task families share: reading and validating a labels table (the user-cohort CSV
convention), small in-memory datasets, and patient-level aggregation of item predictions.

User-cohort CSV convention: one row per patient, a ``patient_id`` column, one column per label
(e.g. ``idh`` = ``mutant``/``wildtype``), optionally a ``path`` column with the patient's case
folder (relative to the CSV's folder). Validation is strict, before any training starts.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

import numpy as np

from ..errors import ConfigError


def without_images_note(table: str, ids: Sequence[str], folder: str,
                        what: str = "images") -> str:
    """The note for the rows of a labels table whose patients have no images in the data
    folder (left out): how many, and the first few ids."""
    ids = list(ids)
    few = ", ".join(map(str, ids[:5])) + (" ..." if len(ids) > 5 else "")
    return (f"{len(ids)} row(s) of {table} name patients with no {what} in {folder}; they are "
            f"left out: {few}")


def none_with_images_message(table: str, ids: Sequence[str], folder: str,
                             present: Sequence[str], what: str = "images") -> str:
    """The error for a labels table none of whose patients has images in the data folder."""
    ids, present = list(ids), list(present)
    have = (f"; the folder holds {len(present)}, e.g. {', '.join(map(str, present[:3]))}"
            if present else "; the folder holds none")
    return (f"{table}: none of its {len(ids)} patient(s) has {what} in {folder} (e.g. "
            f"{', '.join(map(str, ids[:3]))}{have}); check that the patient_id column names "
            "the files")


def read_label_table(path, label_columns: Sequence[str], *, id_column: str = "patient_id",
                     known_ids: Optional[Iterable[str]] = None, missing: str = "error",
                     min_classes: int = 2, allowed: Optional[Dict[str, Sequence[Any]]] = None,
                     unknown: str = "error", dropped: Optional[List[str]] = None,
                     folder: str = "the data folder"):
    """Read a CSV of patients and labels; return a pandas DataFrame indexed by patient id.

    Rows whose ids are not in ``known_ids`` (patients without images in ``folder``) are
    refused (``unknown="error"``), or with ``unknown="drop"`` left out, their ids appended to
    ``dropped`` (a real clinical table lists more patients than have images); a table none of
    whose patients has images is refused either way.

    Refused with :class:`ConfigError`: unreadable file, missing id/label columns, duplicate ids,
    unknown ids (see above), missing labels (unless ``missing="drop"``), label values outside
    ``allowed``, a label column with fewer than ``min_classes`` distinct values, and a table
    left empty.
    """
    import pandas as pd

    p = Path(path)
    if not p.exists():
        raise ConfigError(f"labels table not found: {p}")
    try:
        df = pd.read_csv(p, dtype={id_column: str})
    except Exception as e:
        raise ConfigError(f"{p.name}: not a readable CSV ({e})") from None
    if id_column not in df.columns:
        raise ConfigError(f"{p.name}: no {id_column!r} column (columns: "
                          f"{', '.join(map(str, df.columns[:12]))})")
    miss_cols = [c for c in label_columns if c not in df.columns]
    if miss_cols:
        raise ConfigError(f"{p.name}: label column(s) {', '.join(miss_cols)} not found")
    df[id_column] = df[id_column].astype(str).str.strip()
    dup = df[id_column][df[id_column].duplicated()].unique().tolist()
    if dup:
        raise ConfigError(f"{p.name}: duplicate patient ids: {', '.join(dup[:5])}")
    if known_ids is not None:
        known_ids = list(known_ids)
        known = set(known_ids)
        no_images = [i for i in df[id_column] if i not in known]
        if no_images and len(no_images) == len(df):
            raise ConfigError(none_with_images_message(p.name, no_images, folder,
                                                       sorted(known)))
        if no_images and unknown != "drop":
            raise ConfigError(f"{p.name}: {len(no_images)} patient(s) have no images in "
                              f"{folder}: {', '.join(no_images[:5])}"
                              f"{' ...' if len(no_images) > 5 else ''}")
        if no_images:
            df = df[df[id_column].isin(known)]
            if dropped is not None:
                dropped.extend(no_images)
    if "path" in df.columns:
        df["path"] = [str((p.parent / str(v)).resolve()) if isinstance(v, str) and v else None
                      for v in df["path"]]
        bad = [pid for pid, v in zip(df[id_column], df["path"]) if v and not Path(v).exists()]
        if bad:
            raise ConfigError(f"{p.name}: the path of {len(bad)} patient(s) does not exist: "
                              f"{', '.join(bad[:5])}")
    for c in label_columns:
        na = df[c].isna() | (df[c].astype(str).str.strip() == "")
        if na.any():
            if missing == "drop":
                df = df[~na]
            else:
                ids = df[id_column][na].tolist()
                raise ConfigError(f"{p.name}: {len(ids)} patient(s) lack the label {c!r}: "
                                  f"{', '.join(ids[:5])}{' ...' if len(ids) > 5 else ''} (fill "
                                  "them, remove the rows, or set `missing_labels: drop`)")
        if allowed and c in allowed:
            ok = {str(a) for a in allowed[c]}
            badv = sorted({str(v) for v in df[c] if str(v) not in ok})
            if badv:
                raise ConfigError(f"{p.name}: column {c!r} has unexpected value(s) "
                                  f"{', '.join(badv[:5])} (expected: {', '.join(sorted(ok))})")
        if df.empty:
            has = f" (the data folder holds {len(set(known_ids))} patient(s))" \
                if known_ids is not None else ""
            raise ConfigError(f"{p.name}: no patient has a row with a {c!r} label{has}: add "
                              f"their rows ({id_column}, {c})")
        n_cls = df[c].astype(str).nunique()
        if n_cls < min_classes:
            raise ConfigError(f"{p.name}: the label {c!r} has {n_cls} class(es) "
                              f"({', '.join(map(str, df[c].unique()[:3]))}); need {min_classes}")
    if df.empty:
        raise ConfigError(f"{p.name}: no patients left after validation")
    return df.set_index(id_column, drop=False)


class ItemDataset:
    """A list of items ``(x: np.ndarray, y, patient_id)`` as a torch-style dataset; an optional
    ``transform`` (e.g. MONAI transforms built by the task) is applied to ``x``."""

    def __init__(self, items: List[tuple], transform=None):
        self.items = items
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        import torch
        x, y, pid = self.items[i]
        x = torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32)
        if self.transform is not None:
            x = torch.as_tensor(self.transform(x), dtype=torch.float32)
        return x, torch.as_tensor(y), i

    def patient_ids(self) -> List[str]:
        return [it[2] for it in self.items]

    def labels(self) -> List[Any]:
        return [it[1] for it in self.items]


def predict_items(model, dataset: ItemDataset, device: str, batch_size: int = 64,
                  cancel=None) -> np.ndarray:
    """Softmax probabilities (N, C) of every item, in dataset order; ``cancel`` (a
    ``CancelToken``) is checked before each batch."""
    import torch
    from ..progress import check
    model.eval()
    out = []
    with torch.no_grad():
        for s in range(0, len(dataset), batch_size):
            check(cancel)
            xs = torch.stack([dataset[i][0] for i in range(s, min(len(dataset), s + batch_size))])
            out.append(torch.softmax(model(xs.to(device)).float(), 1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 2))


def patient_mean(ids: Sequence[str], values: np.ndarray) -> Dict[str, np.ndarray]:
    """Mean of item rows per patient id (order of first appearance)."""
    acc: Dict[str, List[np.ndarray]] = {}
    for pid, v in zip(ids, values):
        acc.setdefault(pid, []).append(v)
    return {k: np.mean(v, axis=0) for k, v in acc.items()}


def inverse_frequency_weights(labels: Sequence[Any]) -> List[float]:
    """Per-item weights so each class is drawn equally often by a weighted sampler."""
    from collections import Counter
    c = Counter(labels)
    return [1.0 / c[y] for y in labels]
