"""Evaluate a shipped or user prediction model on a cohort through the inference path.

``radiogen evaluate MODEL DATA`` runs a model's training task's ``evaluate`` when its card names
one. Prediction models made by the CPU protocol (``scripts/cv_prediction.py``: ``predict_mil``,
``predict_cnn3d``, ``predict_radiomics``) have no engine task; they are evaluated here instead:
every case of DATA goes through :func:`core.predict.predict`, exactly as a user's case would
(segmentation included for a segment-then-classify model), and the probabilities are scored
against the labels of DATA's ``clinical.csv`` (or ``--labels``): AUC with a bootstrap 95 % CI per
task, Brier score, and the C-index of the OS risk. A case that fails to load or predict is
reported and skipped; patients in the model's training data are counted and flagged.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Union

import numpy as np

from ..errors import ConfigError, RadiogenError
from ..progress import CancelToken, Progress, check


def _labels_table(data: Path, labels: Optional[str]):
    import pandas as pd
    src = Path(labels) if labels else data / "clinical.csv"
    if not src.is_file():
        raise ConfigError(f"no labels: {src} not found (give --labels CSV with patient_id and "
                          "idh / codel_1p19q / grade [/ os_days, os_event] columns)")
    tab = pd.read_csv(src)
    if "patient_id" not in tab.columns:
        raise ConfigError(f"{src.name} has no patient_id column")
    return tab.set_index(tab["patient_id"].astype(str)), src


def evaluate_prediction_cases(model, data: Union[str, Path], out_dir: Union[str, Path], *,
                              device: str = "auto", labels: Optional[str] = None,
                              limit: Optional[int] = None,
                              cancel: Optional[CancelToken] = None) -> Iterator[Any]:
    """Yields ``Progress`` then an ``engine.EvalResult`` (report written to ``out_dir``)."""
    from ..io import list_cases, load_case
    from ..models import find_model, load_model, resolve_device
    from ..predict import CLASSES, predict
    from ..train.engine import EvalResult
    from ..train.tasks.prediction import TASKS, _label, cindex
    from .metrics import auc_with_ci
    from .report import write_report

    data = Path(data)
    if data.suffix.lower() == ".csv":
        labels = labels or str(data)
        data = data.parent
    path = find_model(str(model))
    dev = resolve_device(device)
    yield Progress(stage="evaluate", message=f"loading {path.name}")
    lm = load_model(str(path), task="prediction", device=dev)
    tab, src = _labels_table(data, labels)
    paths = list_cases(str(data))
    if limit:
        paths = paths[:int(limit)]
    trained_on = set((lm.card.get("training_data") or {}).get("patients") or [])
    classes = lm.card.get("classes") or CLASSES
    rows: List[Dict[str, Any]] = []
    failed: Dict[str, str] = {}
    for i, p in enumerate(paths):
        check(cancel)
        yield Progress(stage="evaluate", done=i, total=len(paths), message=Path(p).name)
        try:
            case = load_case(p)
            res = None
            for item in predict(case, lm, device=dev, cancel=cancel):
                if not isinstance(item, Progress):
                    res = item
        except RadiogenError as e:
            if type(e).__name__ == "Cancelled":
                raise
            failed[Path(p).name] = str(e)
            continue
        row: Dict[str, Any] = {"patient_id": case.case_id}
        lab = tab.loc[case.case_id] if case.case_id in tab.index else None
        for t in TASKS:
            if t not in res.tasks:
                continue
            row[t] = float(res.tasks[t].get(classes[t][-1], list(res.tasks[t].values())[-1]))
            y = _label(t, lab.get(t)) if lab is not None else -1
            if y >= 0:
                row[f"y_{t}"] = y
        if res.risk is not None:
            row["risk"] = float(res.risk)
            if lab is not None:
                for k in ("os_days", "os_event"):
                    v = lab.get(k)
                    if v is not None and v == v:
                        row[k] = float(v)
        rows.append(row)
    if not rows:
        raise ConfigError(f"no case of {data} could be predicted"
                          + (f" ({next(iter(failed.values()))})" if failed else ""))
    summary: Dict[str, Any] = {}
    metrics: Dict[str, Any] = {}
    for t in TASKS:
        ys = np.array([r[f"y_{t}"] for r in rows if f"y_{t}" in r and t in r])
        ps = np.array([r[t] for r in rows if f"y_{t}" in r and t in r])
        if len(np.unique(ys)) < 2:
            continue
        a = auc_with_ci(ys, ps)
        summary[f"auc_{t}"] = {"mean": a["auc"], "sd": None, "ci95": a["ci95"], "n": a["n"],
                               "per_fold": [a["auc"]]}
        metrics[f"auc_{t}"] = float(a["auc"])
        metrics[f"brier_{t}"] = float(np.mean((ps - ys) ** 2))
    surv = [r for r in rows if "risk" in r and "os_days" in r and "os_event" in r]
    if len(surv) >= 3:
        c = cindex([r["os_days"] for r in surv], [r["os_event"] for r in surv],
                   [r["risk"] for r in surv])
        if c == c:
            summary["c_index"] = {"mean": c, "sd": None, "ci95": [None, None], "n": len(surv),
                                  "per_fold": [c]}
            metrics["c_index"] = float(c)
    overlap = sorted({r["patient_id"] for r in rows} & trained_on)
    note = (f"{len(overlap)} of the {len(rows)} patients were in the model's training data: "
            "these metrics are not independent" if overlap else
            "none of these patients was in the model's training data")
    out = Path(out_dir)
    html_p, json_p = write_report(
        out, title=f"{path.stem} on {data.name}", summary=summary, predictions=rows,
        card={**lm.card, "metrics": {"protocol": (
            f"evaluation through the inference path (core.predict) on {len(rows)} cases of "
            f"{data}, labels from {src.name}; {note}"
            + (f"; {len(failed)} case(s) failed: {', '.join(sorted(failed))}" if failed
               else ""))}})
    yield Progress(stage="evaluate", done=len(paths), total=len(paths), message="done")
    yield EvalResult(out_dir=out, report_path=html_p, report_json=json_p,
                     metrics={**metrics, "n_patients": len(rows),
                              "in_training_data": len(overlap), "failed": len(failed),
                              "note": note},
                     n_patients=len(rows), model=path.stem)


__all__ = ["evaluate_prediction_cases"]
