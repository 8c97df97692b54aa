"""The one-click analysis: prepare -> synthesise missing -> segment -> predict -> explain.

One orchestration for the CLI (``radiogen analyze``), the napari Analyze and Cohort widgets,
the tests and the benchmark. :class:`Analyzer` loads each model once and reuses it across cases;
:meth:`Analyzer.analyze` is a generator that yields :class:`Progress` (stage names), a
:class:`StageResult` as each stage finishes (so a viewer can show layers stage by stage), and
finally an :class:`AnalysisResult`. Cancelling (the token) stops at the next check of any stage.

:func:`analyze_cohort` runs a folder of cases, keeps going past a bad case (recorded as a
failure with its message), writes a summary CSV, and skips a case whose inputs and models have
not changed since its cached result (``<out>/<case_id>/analysis.json``).
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from .case import Case
from .errors import Cancelled, ModelFileError, RadiogenError, error_text
from .notes import IN_SAMPLE, SYNTHETIC_KEYS, warning_key
from .progress import CancelToken, Progress, check

STAGES = ("load", "synthesize", "segment", "predict", "explain")
LOW_CONFIDENCE = 0.65          # max class probability under this -> a warning


@dataclass
class AnalysisOptions:
    seg_model: Optional[str] = None            # None: the default shipped model for the case kind
    pred_model: Optional[str] = None
    synth_model: Optional[str] = None
    synthesize_missing: bool = True
    explain_tasks: Sequence[str] = ("idh",)
    explain_method: str = "gradcam"
    device: str = "auto"
    stages: Sequence[str] = STAGES


@dataclass
class StageResult:
    stage: str
    case_id: str
    value: Any
    seconds: float = 0.0


def _add_warnings(res: "AnalysisResult", warnings) -> None:
    """A stage's warnings, once each; a stage's own "synthetic input(s) used" note is left out
    when the analysis synthesised the inputs (its own warning names them already)."""
    for w in warnings:
        if res.synthesized and warning_key(w) in SYNTHETIC_KEYS:
            continue
        if w not in res.warnings:
            res.warnings.append(w)


@dataclass
class AnalysisResult:
    case_id: str
    case: Optional[Case] = None
    segmentation: Any = None                   # core.segment.SegResult
    prediction: Any = None                     # core.predict.PredictionResult
    explanations: List[Any] = field(default_factory=list)   # core.explain.ExplainResult
    synthesized: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    errors: Dict[str, str] = field(default_factory=dict)    # stage -> message (non-fatal)
    timings: Dict[str, float] = field(default_factory=dict)
    models: Dict[str, str] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        """Every model stage that ran failed: no segmentation, no prediction, only errors (e.g.
        an input that is not a brain MRI)."""
        return bool(self.errors) and self.segmentation is None and self.prediction is None

    def summary(self) -> Dict[str, Any]:
        row: Dict[str, Any] = {"case_id": self.case_id}
        if self.segmentation is not None:
            for k, v in self.segmentation.volumes_ml.items():
                row[f"volume_{k}_ml"] = round(float(v), 3)
        if self.prediction is not None:
            for t, probs in self.prediction.tasks.items():
                for c, p in probs.items():
                    row[f"p_{t}_{c}"] = round(float(p), 4)
            if self.prediction.risk is not None:
                row["os_risk"] = round(float(self.prediction.risk), 4)
        for e in self.explanations:
            if e.localisation is not None:
                row[f"localisation_{e.task}_{e.method}"] = round(float(e.localisation), 3)
        row["synthetic_inputs"] = ";".join(self.synthesized)
        row["warnings"] = " | ".join(self.warnings)
        row["errors"] = " | ".join(f"{k}: {v}" for k, v in self.errors.items())
        row["seconds"] = round(sum(self.timings.values()), 2)
        return row


def _relay(gen, stage: str, k: int, n: int):
    """Re-yield a core step's progress under a pipeline stage; return the step's result."""
    result = None
    for item in gen:
        if isinstance(item, Progress):
            yield Progress(stage, k, n, item.message)
        else:
            result = item
    return result


class Analyzer:
    """Holds the loaded models (once) and analyses cases with them."""

    def __init__(self, options: Optional[AnalysisOptions] = None):
        self.options = options or AnalysisOptions()
        self._models: Dict[str, Any] = {}

    def reconfigure(self, options: AnalysisOptions) -> None:
        """New options; the loaded models are kept unless the device or a model choice changed."""
        keep = ("device", "seg_model", "pred_model", "synth_model")
        if any(getattr(options, a) != getattr(self.options, a) for a in keep):
            self._models.clear()
        self.options = options

    # -- models ---------------------------------------------------------------------------------
    def _model(self, key: str, task: str, name: Optional[str], prefer: Sequence[str] = (),
               select=None):
        from .models import list_models, load_model, resolve_device

        if key in self._models:
            return self._models[key]
        if name is None:
            cands = [m for m in list_models(task) if select is None or select(m["card"])]
            names = [m["name"] for m in cands]
            pick = next((p for p in prefer if p in names), names[0] if names else None)
            if pick is None:
                raise ModelFileError(f"no {task} model suitable for this case is installed")
            name = pick
        dev = resolve_device(self.options.device)
        lm = load_model(name, task=task, device=dev)
        self._models[key] = lm
        return lm

    def seg_model(self, case: Case):
        from .segment import PREFERRED_MODELS, fits_case
        dims = 2 if case.kind == "slices" else 3
        return self._model(f"seg{dims}", "segmentation", self.options.seg_model,
                           prefer=PREFERRED_MODELS, select=lambda c: fits_case(c, case))

    def pred_model(self):
        from .predict import DEFAULT_MODELS
        lm = self._model("pred", "prediction", self.options.pred_model, prefer=DEFAULT_MODELS)
        # a model picked for the user, not named by them, may give way where it cannot predict
        # (a tumour-centred model on a case its segmentation model cannot read), as in
        # ``radiogen predict`` (core.predict.window_or_fallback)
        lm.extras["as_default"] = self.options.pred_model is None
        return lm

    def explain_model(self):
        """The prediction model whose heatmaps are computed: the prediction model itself (the
        radiomics model is explained by occlusion, the networks by the chosen CAM method)."""
        return self.pred_model()

    def synth_model(self):
        return self._model("synth", "synthesis", self.options.synth_model)

    def model_fingerprint(self) -> Dict[str, str]:
        """Names and dates of the models the options select (for the cohort cache)."""
        from .models import list_models

        out = {}
        for task in ("segmentation", "prediction", "synthesis"):
            out[task] = ";".join(f"{m['name']}@{m['card'].get('date')}" for m in list_models(task))
        out["options"] = json.dumps({k: (list(v) if isinstance(v, (list, tuple)) else v)
                                     for k, v in vars(self.options).items()}, sort_keys=True)
        return out

    # -- one case -------------------------------------------------------------------------------
    def analyze(self, case_or_path: Union[Case, str, os.PathLike], *,
                cancel: Optional[CancelToken] = None
                ) -> Iterator[Union[Progress, StageResult, AnalysisResult]]:
        from . import explain as E
        from . import predict as P
        from . import segment as S

        opts = self.options
        stages = [s for s in STAGES if s in opts.stages]
        n = len(stages)
        res = AnalysisResult(case_id="?")
        t = time.perf_counter()
        yield Progress("load", 0, n, "reading the case")
        if isinstance(case_or_path, Case):
            case = case_or_path
        else:
            from .io import load_case
            case = load_case(case_or_path)
        res.case_id = case.case_id
        res.timings["load"] = time.perf_counter() - t
        check(cancel)
        yield StageResult("load", case.case_id, case, res.timings["load"])

        def stage_error(stage: str, e: Exception) -> None:
            if isinstance(e, Cancelled):
                raise e
            res.errors[stage] = str(e)
            res.warnings.append(f"{stage} skipped: {e}")

        # -- models (loaded once per Analyzer, reused across cases) ---------------------------
        t = time.perf_counter()
        for getter in (lambda: self.seg_model(case), self.pred_model):
            try:
                getter()
            except ModelFileError:
                pass                  # reported by the stage that needs it
        res.timings["models"] = time.perf_counter() - t

        # -- synthesise what the models need --------------------------------------------------
        if "synthesize" in stages:
            t = time.perf_counter()
            yield Progress("synthesize", stages.index("synthesize"), n, "checking sequences")
            try:
                needed = set()
                for getter in (lambda: self.seg_model(case), self.pred_model):
                    try:
                        lm = getter()
                    except ModelFileError:
                        continue
                    needed |= set(lm.card.get("required_sequences")
                                  or lm.card.get("sequences") or [])
                missing = sorted(s for s in needed if s not in case.sequences)
                if missing and case.kind == "slices":
                    res.warnings.append(f"{', '.join(missing)} missing in this slice pack; the "
                                        "models mask it")
                elif missing and opts.synthesize_missing:
                    from .synthesize import fill_missing
                    sm = self.synth_model()
                    case = yield from _relay(
                        fill_missing(case, sm, needed=missing, device=opts.device,
                                     cancel=cancel), "synthesize", stages.index("synthesize"), n)
                    res.synthesized = list(missing)
                    res.warnings.append(f"synthetic input(s): {', '.join(missing)} generated "
                                        f"by {sm.name}; results that use them say so")
                    yield StageResult("synthesize", case.case_id, case,
                                      time.perf_counter() - t)
            except RadiogenError as e:
                stage_error("synthesize", e)
            res.timings["synthesize"] = time.perf_counter() - t
        check(cancel)

        # -- segment ---------------------------------------------------------------------------
        wt_mask = None
        if "segment" in stages:
            t = time.perf_counter()
            k = stages.index("segment")
            yield Progress("segment", k, n, "loading model")
            try:
                lm = self.seg_model(case)
                res.models["segmentation"] = lm.name
                res.segmentation = yield from _relay(
                    S.segment(case, lm, device=opts.device, cancel=cancel), "segment", k, n)
                _add_warnings(res, res.segmentation.warnings)
                wt_mask = res.segmentation.labels > 0
                yield StageResult("segment", case.case_id, res.segmentation,
                                  time.perf_counter() - t)
            except RadiogenError as e:
                stage_error("segment", e)
            res.timings["segment"] = time.perf_counter() - t
        check(cancel)

        # -- predict ---------------------------------------------------------------------------
        if "predict" in stages:
            t = time.perf_counter()
            k = stages.index("predict")
            yield Progress("predict", k, n, "loading model")
            try:
                lm = self.pred_model()
                res.models["prediction"] = lm.name
                seg = (res.segmentation.labels if res.segmentation is not None
                       and _uses_segmentation(lm) else None)
                res.prediction = yield from _relay(
                    P.predict(case, lm, device=opts.device, cancel=cancel, segmentation=seg,
                              segmentation_source="of this analysis ("
                              f"{res.models.get('segmentation')})",
                              segmentation_synthetic=(res.segmentation.synthetic_inputs
                                                      if seg is not None else ())),
                    "predict", k, n)
                _add_warnings(res, res.prediction.warnings)
                for task, probs in res.prediction.tasks.items():
                    if max(probs.values()) < LOW_CONFIDENCE:
                        res.warnings.append(f"low confidence for {task} "
                                            f"(max probability {max(probs.values()):.2f})")
                yield StageResult("predict", case.case_id, res.prediction,
                                  time.perf_counter() - t)
            except RadiogenError as e:
                stage_error("predict", e)
            res.timings["predict"] = time.perf_counter() - t
        check(cancel)

        # -- explain ---------------------------------------------------------------------------
        if "explain" in stages and res.prediction is not None:
            t = time.perf_counter()
            k = stages.index("explain")
            lm = self.explain_model()
            gt = case.labels is not None and case.labels.array.shape == case.geometry.shape
            methods = E.KIND_METHODS.get(E.explained_kind(lm.card), ())
            # a method the model does not have (Grad-CAM for the radiomics model): its own
            method = opts.explain_method if opts.explain_method in methods else None
            if method is None and methods:
                res.warnings.append(f"{lm.name} has no {opts.explain_method} heatmap: explained "
                                    f"by {methods[0]}")
            seg = (res.segmentation.labels if res.segmentation is not None
                   and _uses_segmentation(lm) else None)
            # the synthetic inputs of the segmentation the heatmap is placed on: this analysis's,
            # else the one the prediction made for the window its inputs reuse
            seg_synth, seg_source = ((res.segmentation.synthetic_inputs,
                                      f"of this analysis ({res.models.get('segmentation')})")
                                     if seg is not None else
                                     (res.prediction.synthetic_inputs, "of the prediction"))
            ex_tasks: Dict[Tuple[str, str], List[str]] = {}
            for task in opts.explain_tasks:
                yield Progress("explain", k, n,
                               f"{method or (methods[:1] or [opts.explain_method])[0]} for {task}")
                try:
                    ex = yield from _relay(
                        E.explain(case, lm, task=task, method=method,
                                  wt_mask=None if gt else wt_mask, segmentation=seg,
                                  inputs=res.prediction.inputs, localise=False,
                                  segmentation_source=seg_source,
                                  segmentation_synthetic=seg_synth,
                                  cancel=cancel), "explain", k, n)
                    res.explanations.append(ex)
                    # e.g. an ensemble's heatmap is its image member's: the report says so;
                    # its "synthetic input(s) used" notes are the prediction's (same model, same
                    # segmentation) or the analysis's own: left out by kind; "in-sample
                    # localisation" names its model and is the same for every task: said once
                    for w in ex.warnings:
                        if w in res.warnings or warning_key(w) in SYNTHETIC_KEYS:
                            continue
                        if warning_key(w) == IN_SAMPLE:
                            _add_warnings(res, [w])
                            continue
                        # a note every task's heatmap gives (e.g. which member of an ensemble
                        # the heatmaps explain) is said once, naming the tasks
                        tasks = ex_tasks.setdefault((ex.method, w), [])
                        before = _explain_note(ex.method, tasks, w)
                        tasks.append(task)
                        if before in res.warnings:
                            res.warnings[res.warnings.index(before)] = _explain_note(
                                ex.method, tasks, w)
                        else:
                            _add_warnings(res, [_explain_note(ex.method, tasks, w)])
                    yield StageResult("explain", case.case_id, ex, time.perf_counter() - t)
                except RadiogenError as e:
                    stage_error(f"explain {task}", e)
                check(cancel)
            res.timings["explain"] = time.perf_counter() - t
        res.case = case
        yield Progress("done", n, n, f"{case.case_id} analysed")
        yield res


def _explain_note(method: str, tasks: Sequence[str], w: str) -> str:
    return f"explanation ({method}, {', '.join(tasks)}): {w}"


def _uses_segmentation(lm) -> bool:
    """A segment-then-classify predictor (``predict_radiomics``) rather than an image network."""
    from .predict import uses_segmentation
    return uses_segmentation(lm.card)


# -- outputs ----------------------------------------------------------------------------------
def write_outputs(res: AnalysisResult, out_dir: os.PathLike, *, report: bool = True,
                  render: bool = True, deidentify: bool = True) -> Dict[str, str]:
    """Write every result of one case under ``out_dir/<case_id>/`` and return the paths.

    Every JSON file is strict (an undefined number is ``null``, :mod:`core.outputs`). With
    ``deidentify`` (the default) no file holds a clinical field: the age and sex the
    prediction read are left out of ``predictions.json``, the report and ``analysis.json``,
    which say which fields were removed (the prediction itself used them)."""
    from .explain import method_slug
    from .io import write_pack_mask, write_volume
    from .outputs import deidentification_fields, prediction_for_output, write_json

    case = res.case
    d = Path(out_dir) / res.case_id
    d.mkdir(parents=True, exist_ok=True)
    paths: Dict[str, str] = {}
    if res.segmentation is not None:
        seg = res.segmentation
        if seg.kind == "slices":
            p = d / f"{res.case_id}_seg.h5"
            write_pack_mask(seg.labels, p)
        else:
            p = d / f"{res.case_id}_seg.nii.gz"
            write_volume(seg.labels, seg.geometry, p, labels=True)
        paths["segmentation"] = str(p)
        p = write_json(d / f"{res.case_id}_seg.json", seg.summary())
        paths["segmentation_json"] = str(p)
    removed: List[str] = []
    if res.prediction is not None:
        pred, removed = prediction_for_output(res.prediction.to_json(), deidentify)
        p = write_json(d / f"{res.case_id}_predictions.json",
                       {**pred, **deidentification_fields(deidentify, removed)})
        paths["predictions"] = str(p)
    for e in res.explanations:
        stem = f"{res.case_id}_{e.task}_{method_slug(e.method)}"
        # NIfTI on the case's grid (a pack's nominal grid, as `radiogen explain` writes it);
        # for a pack also the .h5 beside it
        p = d / f"{stem}.nii.gz"
        write_volume(e.heatmap.astype(np.float32), e.geometry, p,
                     radiogen_map={"kind": "heatmap", "task": e.task, "method": e.method,
                                   "model": e.model})
        paths[f"heatmap_{e.task}"] = str(p)
        if case is not None and case.kind == "slices":
            import h5py
            p = d / f"{stem}.h5"
            with h5py.File(p, "w") as f:
                f.create_dataset("heatmap", data=e.heatmap, compression="gzip")
            paths[f"heatmap_{e.task}_h5"] = str(p)
    for s in res.synthesized:
        if case is not None and s in case.sequences and case.kind != "slices":
            p = d / f"{res.case_id}_{s}_synth.nii.gz"
            # the synthetic Volume: the file records the sequence, its sources and the model
            write_volume(case.sequences[s], p)
            paths[f"synthetic_{s}"] = str(p)
    if report and case is not None:
        from .case_report import write_case_report
        paths.update(write_case_report(res, d, render=render, deidentify=deidentify,
                                       files=paths))
    summary = {"case_id": res.case_id,
               **deidentification_fields(deidentify, [f"prediction.{r}" for r in removed]),
               "summary": res.summary(), "files": paths,
               "models": res.models, "timings_s": {k: round(v, 3) for k, v in res.timings.items()},
               "warnings": res.warnings, "errors": res.errors,
               "synthetic_inputs": res.synthesized,
               # each heatmap's provenance, with the synthetic inputs it rests on
               "explanations": [e.metadata for e in res.explanations]}
    p = write_json(d / "analysis.json", summary)
    paths["analysis"] = str(p)
    return paths


# -- cohorts ----------------------------------------------------------------------------------
def input_fingerprint(path: os.PathLike) -> str:
    """Hash of the files of a case (names, sizes, modification times)."""
    p = Path(path)
    files = sorted(p.rglob("*")) if p.is_dir() else [p]
    h = hashlib.sha1()
    for f in files:
        if f.is_file():
            st = f.stat()
            h.update(f"{f.relative_to(p) if p.is_dir() else f.name}:{st.st_size}:"
                     f"{int(st.st_mtime)}".encode())
    return h.hexdigest()


@dataclass
class CohortItem:
    path: str
    case_id: Optional[str] = None
    status: str = "pending"          # pending | done | cached | failed | cancelled
    message: str = ""
    summary: Dict[str, Any] = field(default_factory=dict)


def analyze_cohort(paths: Sequence[os.PathLike], out_dir: os.PathLike, *,
                   analyzer: Optional[Analyzer] = None, use_cache: bool = True,
                   report: bool = True, render: bool = False, deidentify: bool = True,
                   cancel: Optional[CancelToken] = None
                   ) -> Iterator[Union[Progress, StageResult, CohortItem, List[CohortItem]]]:
    """Analyse each case of ``paths``; yields a :class:`CohortItem` per case as it finishes and
    the list of all items at the end; ``out_dir/summary.csv`` collects one row per case."""
    analyzer = analyzer or Analyzer()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    models_fp = analyzer.model_fingerprint()
    items: List[CohortItem] = []
    for i, path in enumerate(paths):
        check(cancel)
        item = CohortItem(path=str(path))
        yield Progress("cohort", i, len(paths), f"{Path(path).name}")
        # what the outputs depend on: a case cached without its report, or with clinical fields,
        # is done again for a run that asks otherwise
        fp = {"inputs": input_fingerprint(path), "models": models_fp,
              "outputs": {"report": report, "render": render, "deidentify": deidentify}}
        cached = _find_cache(out, path, fp) if use_cache else None
        if cached is not None:
            item.case_id, item.status, item.summary = cached["case_id"], "cached", cached["summary"]
            items.append(item)
            yield item
            continue
        try:
            res = None
            for x in analyzer.analyze(path, cancel=cancel):
                if isinstance(x, AnalysisResult):
                    res = x
                elif isinstance(x, Progress):
                    yield Progress(x.stage, i, len(paths), f"{Path(path).name}: {x.message}")
                else:
                    yield x
            item.case_id = res.case_id
            write_outputs(res, out, report=report, render=render, deidentify=deidentify)
            item.summary = res.summary()
            if res.failed:            # reported, and not cached: the next run tries again
                item.status = "failed"
                item.message = "; ".join(f"{k}: {v}" for k, v in res.errors.items())
            else:
                a = out / res.case_id / "analysis.json"
                data = json.loads(a.read_text())
                data["fingerprint"] = fp
                # the cache key; the path itself (it may hold a patient's name) only when the
                # outputs are not de-identified
                data["source_sha256"] = _source_key(path)
                if not deidentify:
                    data["source"] = str(Path(path).resolve())
                a.write_text(json.dumps(data, indent=2, default=float))
                item.status = "done"
        except Cancelled:
            item.status, item.message = "cancelled", "cancelled by the user"
            items.append(item)
            _write_summary(out, items)
            raise
        except RadiogenError as e:
            item.status, item.message = "failed", str(e)
        except Exception as e:          # any other error of one case fails that case only
            item.status, item.message = "failed", error_text(e)
        if not item.case_id:
            from .io import case_id_of
            item.case_id = case_id_of(path)
        items.append(item)
        yield item
    _write_summary(out, items)
    yield Progress("cohort", len(paths), len(paths), "done")
    yield items


def _source_key(path: os.PathLike) -> str:
    return hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()


def _find_cache(out: Path, path: os.PathLike, fp: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    key = _source_key(path)
    for a in out.glob("*/analysis.json"):
        try:
            data = json.loads(a.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if data.get("source_sha256") == key and data.get("fingerprint") == fp:
            return data
    return None


def _write_summary(out: Path, items: List[CohortItem]) -> Path:
    rows = []
    for it in items:
        row = {"path": it.path, "case_id": it.case_id or "", "status": it.status,
               "message": it.message}
        row.update(it.summary)
        rows.append(row)
    keys: List[str] = []
    for r in rows:
        for k in r:
            if k not in keys:
                keys.append(k)
    p = out / "summary.csv"
    tmp = p.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, p)
    return p
