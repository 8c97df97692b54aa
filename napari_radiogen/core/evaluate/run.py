"""``radiogen evaluate MODEL DATA``: a trained model on every patient of DATA, with a report.

A model whose card names its training task (``train_task``, or ``config.task``) is evaluated
with that task's ``evaluate`` (the engine's metrics); a prediction model made by the CPU
protocol goes through the inference path (:mod:`.cases`). Here, around both:

* DATA must exist (a folder, or a labels CSV whose folder is the data); the report's title
  names the data actually evaluated (a task that makes its own synthetic cases says so);
* a fold model of a training run (``<run>/folds/foldK_best.safetensors``, whose card names no
  task) takes the task and config from the run's ``config.json``, or is refused with a message
  naming the run's final model;
* a segmentation model is scored on the labels ``radiogen segment`` returns with it: the
  card's inference settings (its ``postprocess``: thresholds, the T1ce-enhancement ET rule,
  cleanup; and for 3D its grid, sequences and window) replace the training config's, with a
  note where they differ (:func:`inference_settings`); a BraTS segmentation model also takes
  one labelled case folder as DATA (a cohort of one);
* a case that cannot be read is left out, counted (``failed``) and listed with its reason
  (``failed_cases``), the others are scored (the CLI then exits 1);
* a metric that cannot be computed (NaN: one class only...) is listed with the reason, and the
  warnings of the libraries computing the metrics become notes of the report (only this
  thread's: :mod:`._warn`);
* no local path goes into the report: the data, the run and its config are named by their
  folder or file names.

It reuses the training engine's task registry and config loader.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

from ..errors import ConfigError, RadiogenError, error_text
from ..progress import CancelToken, Progress, check
from ._warn import collect_warnings, warning_texts

#: tasks that make their own (synthetic) cases and do not read DATA
SYNTHETIC_TASKS = {"phantom-demo": "synthetic phantoms"}
#: DATA values that name those cases instead of a folder (as a config's ``data:`` may)
SYNTHETIC_DATA = ("phantom", "synthetic")


def resolve_data(data: Union[str, Path], labels: Optional[str]) -> Tuple[Path, Optional[str]]:
    """``(data folder, labels CSV or None)`` from DATA (a folder or a labels CSV) and
    ``--labels``; ConfigError (exit 2) when they do not exist."""
    d = Path(data)
    if str(data) in SYNTHETIC_DATA and not d.exists():
        return d, labels                    # a synthetic task's own cases (checked later)
    if d.suffix.lower() == ".csv":
        if not d.is_file():
            raise ConfigError(f"DATA: no such file: {d}")
        labels = labels or str(d)
        d = d.parent
    elif not d.exists():
        raise ConfigError(f"DATA: no such folder: {d}")
    elif not d.is_dir():
        raise ConfigError(f"DATA: {d} is not a folder (give a data folder or a labels CSV)")
    if labels and not Path(labels).is_file():
        raise ConfigError(f"--labels: no such file: {labels}")
    return d, labels


def _fold_run(path: Path, card: Dict[str, Any]) -> Optional[Path]:
    """The run folder of a fold model (``<run>/folds/foldK_best.safetensors``), else None."""
    if card.get("fold") is None and not path.stem.startswith("fold"):
        return None
    if path.parent.name != "folds":
        return None
    return path.parent.parent


def _final_models(run: Path) -> List[Path]:
    return sorted(p for p in run.glob("*.safetensors") if p.stem != "checkpoint")


def task_of(path: Path, card: Dict[str, Any]) -> Tuple[Optional[str], Dict[str, Any], List[str]]:
    """``(training task name, its config, notes)`` of a model: from the card; for a fold model
    of a training run (the engine writes fold cards without the task), from the run's
    ``config.json``. A fold model without its run folder is refused with what to do."""
    tcfg = dict(card.get("config") or {})
    name = card.get("train_task") or tcfg.get("task")
    if name:
        return name, tcfg, []
    run = _fold_run(path, card)
    if run is None:
        return None, tcfg, []
    cfg_p = run / "config.json"
    try:
        rc = json.loads(cfg_p.read_text())
    except (OSError, ValueError):
        rc = {}
    if isinstance(rc, dict) and rc.get("task"):
        return str(rc["task"]), rc, [
            f"{path.name} is the model of fold {card.get('fold', '?')} of the run "
            f"{run.name}; its card names no training task, so the task ({rc['task']}) and "
            f"config were read from the run's {cfg_p.name}"]
    finals = _final_models(run)
    what = (f"evaluate the run's final model ({finals[0]})" if finals else
            "evaluate the run's final model (the .safetensors beside the run's config.json)")
    raise ConfigError(f"{path.name} is a fold model of a training run: its card names no "
                      f"training task and {cfg_p} cannot be read; {what}")


#: card fields that decide what a 3D segmentation model returns at inference
#: (``core.segment``: preparation, sliding window); the card's ``postprocess`` for any dims
_SEG3D_INFERENCE_KEYS = ("sequences", "spacing_mm", "roi_size", "overlap")


def inference_settings(card: Dict[str, Any], tcfg: Dict[str, Any]
                       ) -> Tuple[Dict[str, Any], List[str]]:
    """``(config, notes)``: the training config ``tcfg`` with the inference settings of a
    segmentation model's card in its ``model`` section, so that the task's ``evaluate`` scores
    the labels ``radiogen segment`` returns with this model. The card is what inference reads
    (e.g. a ``postprocess`` tuned after training: per-region thresholds, the T1ce-enhancement
    ET rule), and it may differ from the config of the run that trained the network; a note
    says where it does."""
    if card.get("task") != "segmentation":
        return tcfg, []
    model = dict(tcfg.get("model") or {})
    notes: List[str] = []
    pp = card.get("postprocess") or None
    if (model.get("postprocess") or None) != pp:
        notes.append("scored with the postprocess of the model's card (what radiogen segment "
                     f"applies: {json.dumps(pp, sort_keys=True) if pp else 'none'}), which "
                     "differs from the training run's config (" +
                     (json.dumps(model.get("postprocess"), sort_keys=True)
                      if model.get("postprocess") else "none") + ")")
    if pp:
        model["postprocess"] = dict(pp)
    else:
        model.pop("postprocess", None)
    if int(card.get("dims", 3) or 3) == 3:
        for k in _SEG3D_INFERENCE_KEYS:
            if card.get(k) is not None:
                model[k] = card[k]
    return {**tcfg, "model": model}, notes


def _absent_region_notes(preds: List[Dict[str, Any]]) -> List[str]:
    """A note per segmentation region absent from the truth and the prediction of some cases
    (each scores Dice 1.0, which raises the mean)."""
    from .report import _absent_both, normalise_predictions
    seg = normalise_predictions(preds)["segmentation"]
    out = []
    regions = list(dict.fromkeys(r for p in seg if isinstance(p["dice"], dict)
                                 for r in p["dice"]))
    for r in regions:
        rows = [p for p in seg if isinstance(p["dice"], dict) and p["dice"].get(r) is not None]
        k = sum(1 for p in rows if _absent_both(p, r))
        if k:
            out.append(f"dice_{r}: the region is absent from the truth (and the prediction) "
                       f"in {k} of {len(rows)} case(s), each scored Dice 1.0, which raises the "
                       "mean")
    return out


def _probe(task, pid: str) -> None:
    """Build and read every item of one patient's evaluation dataset (raises what fails)."""
    _, ds = task.make_datasets([], [pid])
    for i in range(len(ds)):
        ds[i]


def _evaluate(task, module, ids: List[str], dev: str):
    import torch
    _, ds = task.make_datasets([], ids)
    with torch.no_grad():
        return task.evaluate(module, ds, dev)


def _strata_counts(records) -> Dict[str, int]:
    out: Dict[str, int] = {}
    for r in records:
        out[str(r.strata)] = out.get(str(r.strata), 0) + 1
    return dict(sorted(out.items()))


def _subsample_kind(records) -> str:
    """How ``splits.limit_records`` drew the subsample: round-robin over two or more strata
    (stratum-balanced), else a seeded random one."""
    strata = {r.strata for r in records}
    return ("stratum-balanced" if len(strata) >= 2 and all(s is not None for s in strata)
            else "seeded random")


def limit_note(records, limited, limit: Optional[int], *, what: str = "patients",
               strata: str = "the task's strata") -> Optional[str]:
    """The note of a ``--limit`` evaluation (None when every patient is evaluated): the
    subsample is drawn by ``splits.limit_records``, round-robin over the strata (the class
    labels of a classifier; ``strata`` says what they are), so its class balance is not the
    cohort's: metrics that depend on prevalence (accuracy, F1, Brier score, calibration) do
    not describe the cohort; AUC and per-case scores (Dice, HD95) do not depend on it."""
    if not limit or len(limited) >= len(records):
        return None
    if _subsample_kind(records) != "stratum-balanced":
        return (f"--limit {limit}: {len(limited)} of the {len(records)} {what}, a seeded "
                "random subsample")
    fmt = lambda c: ", ".join(f"{k}: {v}" for k, v in c.items())    # noqa: E731
    return (f"--limit {limit}: the {len(limited)} {what} are a stratum-balanced subsample of "
            f"the {len(records)} (drawn in turn from each stratum, here {strata} "
            f"{fmt(_strata_counts(limited))}; the cohort has {fmt(_strata_counts(records))}), "
            "not a random one: metrics that depend on prevalence (accuracy, F1, Brier score, "
            "calibration) reflect this subsample's balance, not the cohort's prevalence; AUC "
            "and per-case scores (Dice, HD95) do not depend on it")


_CASE_ERRORS = (RadiogenError, OSError, ValueError, KeyError, IndexError, RuntimeError)


def evaluate_model(model: str, data: Union[str, Path], out_dir: Union[str, Path], *,
                   device: str = "auto", labels: Optional[str] = None,
                   limit: Optional[int] = None, config: Optional[Dict[str, Any]] = None,
                   cancel: Optional[CancelToken] = None) -> Iterator[Any]:
    """Yields ``Progress`` items, then an ``engine.EvalResult`` whose ``metrics`` hold the
    scalar metrics, ``n_patients`` (scored), ``in_training_data``, ``failed`` (the number of
    cases left out because they could not be read), ``failed_cases``
    (``[{"case", "reason"}]``), ``unscored`` (``[{"metric", "reason"}]``) and ``notes``;
    report.json has the same keys, and ``data`` (DATA's folder name, no path)."""
    from ..models import find_model, load_model, read_card, resolve_device
    from ..train import splits as sp
    from ..train.base import TASKS
    from ..train.config import load_config
    from ..train.engine import EvalResult, _release, _scalars
    from .cases import without_paths
    from .report import write_report

    if limit is not None and int(limit) < 1:
        raise ConfigError(f"--limit must be a positive number of patients (got {limit})")
    data, labels = resolve_data(data, labels)
    path = find_model(model)
    card = read_card(path)
    task_name, tcfg, notes = task_of(path, card)
    if not Path(data).exists() and task_name not in SYNTHETIC_TASKS:
        raise ConfigError(f"DATA: no such folder: {data} ({data} names the synthetic cases "
                          f"of {', '.join(SYNTHETIC_TASKS)} only)")
    if not task_name and card.get("task") == "prediction":
        from .cases import evaluate_prediction_cases
        yield from evaluate_prediction_cases(path, data, out_dir, device=device, labels=labels,
                                             limit=limit, cancel=cancel)
        return
    if not task_name:
        raise ConfigError(f"{path.name}: its card names no training task (no train_task or "
                          "config.task), so it cannot be evaluated; evaluate the model a "
                          "training run installed (radiogen models lists them)")
    # the card's labels (a file name) and init belong to the training run, not to this data
    tcfg = {k: v for k, v in tcfg.items() if k not in ("_source", "init", "labels")}
    # score what the user-facing command returns: the card's inference settings
    tcfg, inf_notes = inference_settings(card, tcfg)
    notes.extend(inf_notes)
    cfg_in = {**tcfg, **(config or {}), "task": task_name, "data": str(data)}
    if labels:
        cfg_in["labels"] = labels
    cfg = load_config(cfg_in)
    task = TASKS[task_name](cfg)
    task.cancel = cancel             # the task's evaluate loop checks it once per batch
    records = task.patients()
    # e.g. rows of the labels table without images (left out)
    notes.extend(n for n in (getattr(task, "notes", None) or []) if n not in notes)
    n_all = len(records)
    limited = sp.limit_records(records, limit, int(cfg.get("seed", 0)))
    subsample = limit_note(records, limited, limit)
    kind = _subsample_kind(records)
    if subsample:
        notes.append(subsample)
    records = limited
    ids = [r.patient_id for r in records]
    if not ids:
        raise ConfigError(f"no patients found in {data}")
    synthetic = SYNTHETIC_TASKS.get(task_name)
    data_name = synthetic or data.name
    if synthetic and data.exists():
        notes.append(f"task {task_name} evaluates on {synthetic} it generates itself; "
                     f"DATA ({data.name}) is not read")
    dev = resolve_device(device)
    yield Progress(stage="evaluate", message=f"loading {path.name}")
    lm = load_model(str(path), task=card.get("task"), device=dev)
    check(cancel)
    yield Progress(stage="evaluate", done=0, total=1,
                   message=f"evaluating on {len(ids)} patients")
    failed: List[Dict[str, str]] = []
    ok = list(ids)
    with collect_warnings() as caught:       # this thread's warnings only
        try:
            m = _evaluate(task, lm.module, ok, dev)
        except _CASE_ERRORS as e:
            if type(e).__name__ == "Cancelled":
                raise
            first = e
            # which cases fail? read each one's data; score the others
            for pid in ids:
                check(cancel)
                try:
                    _probe(task, pid)
                except _CASE_ERRORS as e2:
                    if type(e2).__name__ == "Cancelled":
                        raise
                    failed.append({"case": pid, "reason": without_paths(error_text(e2),
                                                                        data)})
            if not failed:
                raise                        # not a case's data: the task itself failed
            bad = {f["case"] for f in failed}
            ok = [i for i in ids if i not in bad]
            if not ok:
                raise ConfigError(f"no case of {data} could be evaluated ({failed[0]['case']}: "
                                  f"{failed[0]['reason']})") from first
            m = _evaluate(task, lm.module, ok, dev)
    notes.extend(without_paths(t, data) for t in warning_texts(caught, "metrics: ")
                 if t not in notes)
    check(cancel)
    scal = _scalars(m)
    # a class absent from the truth has no recall (the triage task's per-class dicts)
    support = m.get("support") if isinstance(m.get("support"), dict) else {}
    unscored: List[Dict[str, str]] = []
    for c, n in support.items():
        if n == 0 and f"recall_{c}" in scal:
            scal[f"recall_{c}"] = None
            unscored.append({"metric": f"recall_{c}",
                             "reason": f"no case of class {c} among the evaluated patients"})
    absent = [c for c, n in support.items() if n == 0]
    if absent and "macro_f1" in scal:
        notes.append(f"macro_f1 averages over the classes among the evaluated patients "
                     f"({', '.join(absent)}: no case, left out)")
    for k, v in list(scal.items()):
        if isinstance(v, float) and not math.isfinite(v):
            scal[k] = None
            unscored.append({"metric": k, "reason": (
                f"undefined on these {len(ok)} patients (e.g. one class only, or no event)")})
    trained_on = set(((card.get("training_data") or {}).get("patients")) or [])
    overlap = sorted(set(ok) & trained_on)
    note = (f"{len(overlap)} of the {len(ok)} patients were in the model's training data: "
            "these metrics are in-sample, not held out" if overlap else
            "none of these patients was in the model's training data")
    notes.extend(f"{u['metric']} not computed: {u['reason']}" for u in unscored)
    notes.extend(_absent_region_notes(m.get("predictions") or []))
    summary = {k: {"mean": v, "sd": None, "ci95": [None, None], "n": len(ok)}
               for k, v in scal.items() if v is not None and k != "n"}
    out = Path(out_dir)
    html_p, json_p = write_report(
        out, title=f"{path.stem} on {data_name}", summary=summary,
        predictions=m.get("predictions") or [],
        card={**card, "metrics": {"protocol": f"evaluation of a trained model on {len(ok)} "
                                              f"patients of {data_name}"
                                              + (f" (--limit {limit}: a "
                                                 f"{kind} subsample of "
                                                 f"its {n_all} patients, see the notes)"
                                                 if subsample else "") + f"; {note}"}},
        evaluation={"data": data_name, "n_patients": len(ok),
                    "in_training_data": len(overlap), "failed": len(failed),
                    "failed_cases": failed, "unscored": unscored, "notes": notes})
    del lm
    _release(dev)
    yield Progress(stage="evaluate", done=1, total=1, message="done")
    yield EvalResult(out_dir=out, report_path=html_p, report_json=json_p,
                     metrics={**{k: v for k, v in scal.items() if k != "n"},
                              "n_patients": len(ok), "in_training_data": len(overlap),
                              "failed": len(failed), "failed_cases": failed,
                              "unscored": unscored, "notes": notes,
                              "note": note},
                     n_patients=len(ok), model=path.stem)


__all__ = ["evaluate_model", "resolve_data", "task_of"]
