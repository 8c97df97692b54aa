"""Evaluate a shipped or user prediction model on a cohort through the inference path.

``radiogen evaluate MODEL DATA`` runs a model's training task's ``evaluate`` when its card names
one. Prediction models made by the CPU protocol (``scripts/cv_prediction.py``: ``predict_mil``,
``predict_cnn3d``, ``predict_radiomics``) have no engine task; they are evaluated here instead:
every case of DATA goes through :func:`core.predict.predict`, exactly as a user's case would
(segmentation included for a segment-then-classify model), and the probabilities are scored
against the labels of DATA's ``clinical.csv`` (or ``--labels``): AUC with a bootstrap 95 % CI per
task, Brier score, and the C-index of the OS risk. A case that fails to load or predict is
reported and skipped; patients in the model's training data are counted and flagged. Library
warnings raised while a case is predicted become notes of the report (only this thread's:
:mod:`._warn`); no local path goes into the report (DATA is named by its folder name).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Union

import numpy as np

from ..errors import ConfigError, RadiogenError
from ..progress import CancelToken, Progress, check


#: label columns a prediction model is scored on (any one of them makes a labels table usable)
LABEL_COLUMNS = ("idh", "codel_1p19q", "grade", "os_days", "os_event")


def _labels_table(data: Path, labels: Optional[str], tasks: List[str]):
    import pandas as pd
    src = Path(labels) if labels else data / "clinical.csv"
    expected = list(tasks) + ["os_days", "os_event"]
    if not src.is_file():
        raise ConfigError(f"no labels: {src} not found (give --labels CSV with patient_id and "
                          f"{' / '.join(tasks)} [/ os_days, os_event] columns)")
    try:
        tab = pd.read_csv(src, dtype={"patient_id": str})
    except Exception as e:
        raise ConfigError(f"{src.name}: not a readable CSV ({' '.join(str(e).split())})") \
            from None
    if "patient_id" not in tab.columns:
        raise ConfigError(f"{src.name} has no patient_id column")
    if not any(c in tab.columns for c in expected):
        raise ConfigError(f"{src.name} has none of the model's label columns (expected "
                          f"patient_id and one or more of {', '.join(expected)}; it has "
                          f"{', '.join(map(str, tab.columns[:12]))})")
    tab["patient_id"] = tab["patient_id"].astype(str).str.strip()
    tab = tab.drop_duplicates("patient_id")
    return tab.set_index("patient_id", drop=False), src


def without_paths(text: str, data: Path) -> str:
    """``text`` (a failed case's reason, a warning) with DATA's local path replaced by its
    folder name: a report names no local path."""
    d = Path(data)
    out = str(text)
    if not d.name:                      # a file system root: nothing to shorten
        return out
    for form in {str(d.resolve()), str(d.absolute()), str(d)}:
        if form not in ("", ".", d.name):
            out = out.replace(form.rstrip("/\\"), d.name)
    return out


def _case_name(p: Union[str, Path]) -> str:
    """The patient id a case path most likely has (its name without the volume extension)."""
    name = Path(p).name
    for ext in (".nii.gz", ".nii", ".h5", ".hdf5", ".mha", ".nrrd"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


#: how a case's labels name its stratum for ``--limit`` (label values -> words)
_STRATUM_WORDS = {"idh": ("IDH-wt", "IDH-mut", "IDH ?"),
                  "codel_1p19q": ("non-codel", "codel", "1p/19q ?"),
                  "grade": ("grade 2", "grade 3", "grade ?")}


def _stratum(lab, columns) -> str:
    """A labelled case's stratum: the combination of its labels (IDH, 1p/19q, grade) among
    the table's columns, as the training's ``--limit`` balances a prediction cohort over its
    subtype and grade."""
    from ..train.tasks.prediction import TASKS, _label
    words = []
    for t in TASKS:
        if t in columns:
            y = _label(t, lab.get(t))
            words.append(_STRATUM_WORDS[t][y if y in (0, 1) else 2])
    return " ".join(words) or "unlabelled"


def limit_cases(paths: List[Path], tab, limit: int, seed: int = 0):
    """``(chosen paths, ids without a row, notes, protocol)``: ``limit`` cases of ``paths`` balanced over
    the strata of their labels (:func:`_stratum`) with the training's ``--limit`` rule
    (``splits.limit_records``: seeded, drawn in turn from each stratum), in listing order.
    A case's id is its file name, else the id its headers give (``io.scan_case``, no pixel
    data read); cases without a row in the labels table are returned (left out, counted),
    cases whose id cannot be read are not drawn (a note names them). ``protocol`` is the
    report protocol's words for the subsample (None when every labelled case is taken)."""
    from ..io import scan_case
    from ..train.base import PatientRecord
    from ..train.splits import limit_records
    from .run import _subsample_kind, limit_note
    pool: List[PatientRecord] = []
    no_labels: List[str] = []
    unread: List[str] = []
    for p in paths:
        pid = _case_name(p)
        if pid not in tab.index:
            try:
                pid = str(scan_case(p)["case_id"])
            except Exception:          # unreadable: its id is unknown
                unread.append(Path(p).name)
                continue
            if pid not in tab.index:
                no_labels.append(pid)
                continue
        pool.append(PatientRecord(str(p), strata=_stratum(tab.loc[pid], tab.columns),
                                  info={"id": pid}))
    chosen = limit_records(pool, int(limit), seed)
    notes = []
    note = limit_note(pool, chosen, int(limit), what="cases",
                      strata="the combinations of their labels")
    if note:
        notes.append(note)
    if unread:
        notes.append(f"--limit {limit}: {len(unread)} case(s) whose id could not be read were "
                     f"not drawn: {', '.join(unread[:5])}" + (" ..." if len(unread) > 5 else ""))
    keep = {r.patient_id for r in chosen}
    protocol = (f"--limit {limit}: a {_subsample_kind(pool)} subsample of its {len(pool)} "
                "labelled cases, see the notes") if len(chosen) < len(pool) else None
    return [p for p in paths if str(p) in keep], no_labels, notes, protocol


def evaluate_prediction_cases(model, data: Union[str, Path], out_dir: Union[str, Path], *,
                              device: str = "auto", labels: Optional[str] = None,
                              limit: Optional[int] = None,
                              cancel: Optional[CancelToken] = None) -> Iterator[Any]:
    """Yields ``Progress`` then an ``engine.EvalResult`` (report written to ``out_dir``).

    ``EvalResult.metrics``: the AUCs / Brier scores / C-index, ``n_patients`` (scored),
    ``in_training_data``, ``failed`` (the number of cases that could not be read or
    predicted: left out) with ``failed_cases`` (``[{"case", "reason"}]``), ``no_labels`` (the
    number of cases of DATA without a row in the labels table: left out) with
    ``no_labels_cases`` (their ids, sorted), ``unscored`` (``[{"metric", "reason"}]``: a task
    with one class only among the labelled patients) and ``notes``. report.json has the same
    keys, and ``data`` (DATA's folder name, no path)."""
    from ..errors import error_text
    from ..io import list_cases, load_case
    from ..models import find_model, load_model, resolve_device
    from ..predict import CLASSES, predict
    from ..train.engine import EvalResult
    from ..train.tasks.prediction import TASKS, _label, cindex
    from .metrics import auc_with_ci
    from ._warn import collect_warnings, ignore_warnings, warning_texts
    from .report import write_report

    data = Path(data)
    if data.suffix.lower() == ".csv":
        labels = labels or str(data)
        data = data.parent
    if not data.is_dir():
        raise ConfigError(f"DATA: no such folder: {data}")
    if limit is not None and int(limit) < 1:
        raise ConfigError(f"--limit must be a positive number of patients (got {limit})")
    path = find_model(str(model))
    tab, src = _labels_table(data, labels, list(TASKS))
    scored_cols = [c for c in LABEL_COLUMNS if c in tab.columns]
    paths = list_cases(str(data))
    dev = resolve_device(device)
    yield Progress(stage="evaluate", message=f"loading {path.name}")
    lm = load_model(str(path), task="prediction", device=dev)
    trained_on = set((lm.card.get("training_data") or {}).get("patients") or [])
    classes = lm.card.get("classes") or CLASSES
    rows: List[Dict[str, Any]] = []
    failed: List[Dict[str, str]] = []
    no_labels: List[str] = []
    warned: List[str] = []
    notes: List[str] = []
    subsample = None                    # --limit: how the cases were drawn (protocol)
    if limit and int(limit) < len(paths):
        # balanced over the label strata (the training's --limit rule), not the first N
        paths, no_labels, limit_notes, subsample = limit_cases(paths, tab, int(limit))
        notes.extend(limit_notes)
    total = len(paths)
    attempted = 0
    for p in paths:
        check(cancel)
        name = Path(p).name
        guess = _case_name(p)
        case = None
        counted = False
        try:
            if guess not in tab.index:
                case = load_case(p)            # its own id may differ from the file name
                if case.case_id not in tab.index:
                    no_labels.append(case.case_id)
                    continue
            attempted += 1
            counted = True
            yield Progress(stage="evaluate", done=attempted - 1, total=total, message=name)
            if case is None:
                case = load_case(p)
            res = None
            with collect_warnings() as caught:   # this thread's warnings only
                for item in predict(case, lm, device=dev, cancel=cancel):
                    if not isinstance(item, Progress):
                        res = item
            # a library's warning: a note of the report, not stderr
            warned.extend(t for t in warning_texts(caught, f"{name}: ") if t not in warned)
        except (RadiogenError, OSError, ValueError, KeyError, RuntimeError) as e:
            if type(e).__name__ == "Cancelled":
                raise
            attempted += 0 if counted else 1
            failed.append({"case": name, "reason": without_paths(error_text(e), data)})
            continue
        if case.case_id not in tab.index:
            no_labels.append(case.case_id)
            continue
        row: Dict[str, Any] = {"patient_id": case.case_id}
        lab = tab.loc[case.case_id]
        for t in TASKS:
            if t not in res.tasks:
                continue
            row[t] = float(res.tasks[t].get(classes[t][-1], list(res.tasks[t].values())[-1]))
            y = _label(t, lab.get(t)) if t in tab.columns else -1
            if y >= 0:
                row[f"y_{t}"] = y
        if res.risk is not None:
            row["risk"] = float(res.risk)
            for k in ("os_days", "os_event"):
                v = lab.get(k) if k in tab.columns else None
                if v is not None and v == v:
                    row[k] = float(v)
        rows.append(row)
    if not rows:
        why = (f" ({failed[0]['case']}: {failed[0]['reason']})" if failed else
               f" (none of its {len(no_labels)} case(s) has a row in {src.name})" if no_labels
               else "")
        raise ConfigError(f"no case of {data} could be predicted{why}")
    summary: Dict[str, Any] = {}
    metrics: Dict[str, Any] = {}
    unscored: List[Dict[str, str]] = []
    for t in TASKS:
        if t not in tab.columns:
            continue
        ys = np.array([r[f"y_{t}"] for r in rows if f"y_{t}" in r and t in r])
        ps = np.array([r[t] for r in rows if f"y_{t}" in r and t in r])
        u = np.unique(ys)
        if len(u) < 2:
            names = ", ".join(classes[t][int(c)] for c in u) or "none"
            unscored.append({"metric": f"auc_{t}", "reason": (
                f"one class only among the {len(ys)} labelled patient(s) ({names}): an AUC "
                "needs both" if len(ys) else f"no patient has a {t} label in {src.name}")})
            continue
        a = auc_with_ci(ys, ps)
        summary[f"auc_{t}"] = {"mean": a["auc"], "sd": None, "ci95": a["ci95"], "n": a["n"]}
        if a.get("ci_note"):
            notes.append(f"auc_{t}: {a['ci_note']}")
        metrics[f"auc_{t}"] = float(a["auc"])
        metrics[f"brier_{t}"] = float(np.mean((ps - ys) ** 2))
        summary[f"brier_{t}"] = {"mean": metrics[f"brier_{t}"], "sd": None,
                                 "ci95": [None, None], "n": int(len(ys))}
    surv = [r for r in rows if "risk" in r and "os_days" in r and "os_event" in r]
    if "os_days" in tab.columns and any("risk" in r for r in rows):
        c = float("nan")
        if len(surv) >= 3:
            with ignore_warnings():
                c = cindex([r["os_days"] for r in surv], [r["os_event"] for r in surv],
                           [r["risk"] for r in surv])
        if c == c:
            summary["c_index"] = {"mean": c, "sd": None, "ci95": [None, None], "n": len(surv)}
            metrics["c_index"] = float(c)
        else:
            unscored.append({"metric": "c_index", "reason": (
                f"{len(surv)} patient(s) with survival data and "
                f"{int(sum(r['os_event'] for r in surv))} event(s): a C-index needs at least 3 "
                "patients, 1 event and a comparable pair")})
    overlap = sorted({r["patient_id"] for r in rows} & trained_on)
    note = (f"{len(overlap)} of the {len(rows)} patients were in the model's training data: "
            "these metrics are in-sample, not held out" if overlap else
            "none of these patients was in the model's training data")
    if no_labels:
        notes.insert(0, f"{len(no_labels)} case(s) of {data.name} have no row in {src.name} "
                        f"and were left out: {', '.join(sorted(no_labels)[:10])}"
                        + (" ..." if len(no_labels) > 10 else ""))
    notes.extend(f"{u['metric']} not computed: {u['reason']}" for u in unscored)
    notes.extend(without_paths(w, data) for w in warned[:20])
    out = Path(out_dir)
    html_p, json_p = write_report(
        out, title=f"{path.stem} on {data.name}", summary=summary, predictions=rows,
        card={**lm.card, "metrics": {"protocol": (
            f"evaluation through the inference path (core.predict) on {len(rows)} cases of "
            f"{data.name}"
            + (f" ({subsample})" if subsample else "")
            + f", labels from {src.name} (columns {', '.join(scored_cols)}); {note}")}},
        evaluation={"data": data.name, "n_patients": len(rows),
                    "in_training_data": len(overlap), "failed": len(failed),
                    "failed_cases": failed, "no_labels": len(no_labels),
                    "no_labels_cases": sorted(no_labels), "unscored": unscored,
                    "notes": notes})
    yield Progress(stage="evaluate", done=total, total=total, message="done")
    yield EvalResult(out_dir=out, report_path=html_p, report_json=json_p,
                     metrics={**metrics, "n_patients": len(rows),
                              "in_training_data": len(overlap), "failed": len(failed),
                              "failed_cases": failed, "no_labels": len(no_labels),
                              "no_labels_cases": sorted(no_labels), "unscored": unscored,
                              "notes": notes, "note": note},
                     n_patients=len(rows), model=path.stem)


__all__ = ["evaluate_prediction_cases", "LABEL_COLUMNS"]
