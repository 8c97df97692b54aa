"""Analyze case: the one-click job (synthesise missing -> segment -> predict -> explain).

Thin: a small input dataclass, then ``core.pipeline.Analyzer.analyze`` runs through
``workers.start_job``. Layers appear stage by stage on the case the run was started from, a
results panel shows probabilities (with the models' validated AUCs), volumes, the Dice against
the labels that came with the case where it has them, the class each heatmap explains, and
warnings, and Export writes the de-identified report and all files. Cancel leaves the layers
as they were before the run (added ones removed, a previous run's results put back). A
segmentation layer the user edited is kept (renamed ``<name> (edited)``, hidden) rather than
written over, as in the Segment dock. With *co-register the sequences first*, each sequence
the registration moved is shown as ``<case> <sequence> (registered)`` in its layer's place
(the layer as read is hidden, and shown again if the run is cancelled or fails), so the viewer
shows what the models read.
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Tuple

from qtpy.QtWidgets import (QCheckBox, QComboBox, QFileDialog, QFormLayout, QHBoxLayout,
                            QProgressBar, QPushButton, QTextBrowser, QVBoxLayout, QWidget)

from ..core.case import Case
from ..core.pipeline import (STAGES, AnalysisOptions, AnalysisResult, Analyzer, StageResult,
                             write_outputs)
from ..core.register import moved_sequences
from ._common import (CaseCombo, ResultLayers, StatusLine, build_if_new, build_layer,
                      closed_case_note, device_combo, image_result_data)
from .layers import LayerData, radiogen_meta, registered_layer_data
from .explain_widget import heatmap_layer_data, result_text
from .segment_widget import VOLUME_ROWS, set_aside_edited, track_edits
from .segment_widget import result_layer_data as segmentation_layer_data
from .workers import start_job


#: least seconds between two progress updates of the dock (each one repaints the window: with a
#: software-rendered canvas that is ~15 ms of CPU taken from the models)
PROGRESS_INTERVAL = 0.25


@dataclass
class AnalyzeInputs:
    case_id: str
    device: str = "auto"
    explain_tasks: Tuple[str, ...] = ("idh",)
    method: str = "gradcam"
    synthesize_missing: bool = True
    register: bool = False                     # co-register the sequences first (a translation)
    seg_model: Optional[str] = None            # None: automatic (shipped default for the case)
    pred_model: Optional[str] = None


class AnalyzeWidget(QWidget):
    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.analyzer: Optional[Analyzer] = None
        self.job = None
        self.result: Optional[AnalysisResult] = None
        self._run_layers = ResultLayers(napari_viewer)   # what the current run added/replaced
        self._inputs: Optional[AnalyzeInputs] = None
        #: edited segmentation layers this run set aside: (layer, its name before, visible)
        self._kept: List[Tuple[Any, str, bool]] = []
        #: sequence layers this run hid behind their registered copies: (layer, visible)
        self._hidden: List[Tuple[Any, bool]] = []

        self.case_combo = CaseCombo(napari_viewer)
        self.device = device_combo()
        self.seg_model = QComboBox()
        self.pred_model = QComboBox()
        self.refresh_models()
        self.method = QComboBox()
        self.method.addItems(["gradcam", "gradcam++", "layercam", "attention"])
        self.task_boxes = {t: QCheckBox(t) for t in ("idh", "codel_1p19q", "grade")}
        self.task_boxes["idh"].setChecked(True)
        self.synth = QCheckBox("synthesise a missing sequence the models need")
        self.synth.setChecked(True)
        # off by default, as in `radiogen analyze`; the layers shown keep their own placement
        self.register = QCheckBox("co-register the sequences first")
        self.register.setToolTip("A SimpleITK mutual-information translation of each acquired "
                                 "sequence onto the reference, used by this analysis; each "
                                 "shift is said in the results. The image layers are not "
                                 "moved; the results lie on the reference's grid.")
        self.run_btn = QPushButton("Analyze")
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.export_btn = QPushButton("Export report…")
        self.export_btn.setEnabled(False)
        self.bar = QProgressBar()
        self.bar.setRange(0, len(STAGES))
        # a status text whose changes do not re-lay out the window on every progress update
        self.stage = StatusLine("")
        self.results = QTextBrowser()
        self.results.setMinimumHeight(220)

        form = QFormLayout()
        form.addRow("case", self.case_combo)
        form.addRow("device", self.device)
        form.addRow("segmentation", self.seg_model)
        form.addRow("prediction", self.pred_model)
        row = QHBoxLayout()
        for b in self.task_boxes.values():
            row.addWidget(b)
        form.addRow("explain", row)
        form.addRow("method", self.method)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.synth)
        lay.addWidget(self.register)
        btns = QHBoxLayout()
        btns.addWidget(self.run_btn)
        btns.addWidget(self.cancel_btn)
        btns.addWidget(self.export_btn)
        lay.addLayout(btns)
        lay.addWidget(self.bar)
        lay.addWidget(self.stage)
        lay.addWidget(self.results)
        self.run_btn.clicked.connect(self.run)
        self.cancel_btn.clicked.connect(self.cancel)
        self.export_btn.clicked.connect(self._export_dialog)
        _warm_imports()


    # -- inputs ---------------------------------------------------------------------------------
    def refresh_models(self) -> None:
        from ..core.models import list_models
        for combo, task in ((self.seg_model, "segmentation"), (self.pred_model, "prediction")):
            cur = combo.currentText()
            combo.clear()
            combo.addItem("(automatic)")
            combo.addItems([m["name"] for m in list_models(task)])
            if cur:
                combo.setCurrentText(cur)

    def inputs(self) -> AnalyzeInputs:
        auto = "(automatic)"
        seg, pred = self.seg_model.currentText(), self.pred_model.currentText()
        return AnalyzeInputs(case_id=self.case_combo.currentText(),
                             device=self.device.currentText(),
                             explain_tasks=tuple(t for t, b in self.task_boxes.items()
                                                 if b.isChecked()),
                             method=self.method.currentText(),
                             synthesize_missing=self.synth.isChecked(),
                             register=self.register.isChecked(),
                             seg_model=None if seg in ("", auto) else seg,
                             pred_model=None if pred in ("", auto) else pred)

    def _analyzer(self, inp: AnalyzeInputs) -> Analyzer:
        opts = AnalysisOptions(device=inp.device, explain_tasks=inp.explain_tasks,
                               explain_method=inp.method,
                               synthesize_missing=inp.synthesize_missing,
                               register=inp.register,
                               seg_model=inp.seg_model, pred_model=inp.pred_model)
        if self.analyzer is None:
            self.analyzer = Analyzer(opts)
        else:
            self.analyzer.reconfigure(opts)        # models are loaded once and reused
        return self.analyzer

    # -- run --------------------------------------------------------------------------------------
    def run(self) -> None:
        if self.job is not None and not self.job.done:
            return
        inp = self.inputs()
        case = self.case_combo.case_or_notify()
        if case is None:
            return
        self._inputs = inp
        self._run_layers.clear()
        self._kept = []
        self._hidden = []
        # the previous run's result, its panel and Export stay until this run delivers its
        # own: a cancelled or failed rerun leaves the previous layers, and they stay readable
        # and exportable with them
        analyzer = self._analyzer(inp)
        self.run_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        self._set_bar(0)
        cid = inp.case_id
        # several heatmaps stacked (additive) hide the anatomy: a new heatmap layer is shown
        # for the first task only (the others are in the layer list)
        shown = {"heatmap": False}
        # the layer names as the run starts (read here, in the main thread): a result whose
        # layer exists is written into it in place, so only the others need a layer object
        existing = {layer.name for layer in self.viewer.layers}

        def job(tok):
            # the result layers' data (dtype, label table, contrast limits, kwargs) and, for a
            # new layer, the layer object are built here, in the worker: the main thread only
            # hands them to napari (which adds the object, or updates a layer of that name
            # that exists by then)
            for item in analyzer.analyze(case, cancel=tok):
                if isinstance(item, StageResult):
                    layers = stage_layers(item, cid, before=case)
                    if item.stage == "explain":
                        layers = [(d, {**kw, "visible": not shown["heatmap"]}, k)
                                  for d, kw, k in layers]
                        shown["heatmap"] = True
                    item = PreparedStage(item, layers,
                                         [build_if_new(ld, existing) for ld in layers])
                yield item

        self.job = start_job(job, name=f"Analyze {inp.case_id}", on_progress=self._progress,
                             on_yield=self._stage_done, on_result=self._done,
                             on_finished=self._finished, owner=self, viewer=self.viewer,
                             progress_bar=False,   # the dock's own bar names each stage
                             # every update repaints the window through the canvas's OpenGL
                             # compositor: at most one per interval, stage changes included
                             progress_interval=PROGRESS_INTERVAL, coalesce_stages=True)

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()

    def _progress(self, p) -> None:
        v = min(p.done, self.bar.maximum())
        self._set_bar(v)
        text = f"{p.stage}: {p.message}"[:90]
        if self.stage.text() != text:
            self.stage.setText(text)

    def _set_bar(self, value: int) -> None:
        """QProgressBar.setValue repaints at once (a window flush of its own): fold it into
        the next regular repaint, with the status text's."""
        if self.bar.value() != value:
            self.bar.setUpdatesEnabled(False)
            self.bar.setValue(value)
            self.bar.setUpdatesEnabled(True)

    def _stage_done(self, item: Any) -> None:
        if not isinstance(item, PreparedStage):
            return
        job = self.job
        built = item.built or [None] * len(item.layers)
        for layer_data, layer in zip(item.layers, built):
            if job is not None and (job.cancelled or job.error is not None):
                return            # a stage delivered after Cancel adds nothing
            if item.stage == "segment":
                # a segmentation layer the user edited is kept aside, not written over
                name = layer_data[1]["name"]
                was = self.viewer.layers[name] if name in self.viewer.layers else None
                visible = bool(was.visible) if was is not None else True
                kept = set_aside_edited(self.viewer, name)
                if kept is not None:
                    self._kept.append((was, name, visible))
                    if layer is None:
                        layer = build_layer(layer_data)
            # new layers do not take the user's selection (nor swap the layer controls)
            added = self._run_layers.add(layer_data, select=False, built=layer)
            if item.stage == "segment":
                track_edits(added)
            if item.stage == "load":
                self._in_place_of(added, radiogen_meta(layer_data[1]))
            if job is not None and job.done and (job.cancelled or job.error is not None):
                # defensive: had Qt events been processed while the layer was built (napari's
                # layer creation does not do so today), the job may have ended, cancelled, and
                # _finished rolled back already; roll back again
                self._run_layers.rollback()
                return

    def _done(self, res: AnalysisResult) -> None:
        self.result = res
        self.export_btn.setEnabled(True)
        self.results.setHtml(results_html(res))

    def _finished(self, job) -> None:
        self.run_btn.setEnabled(True)
        self.cancel_btn.setEnabled(False)
        if job.cancelled or job.error is not None:
            # no half-made results: the layers are as they were before this run
            self._run_layers.rollback()
            self._restore_kept()
            self._restore_hidden()
            self.stage.setText("cancelled" if job.cancelled else f"failed: {job.error}")
        else:
            self._run_layers.clear()
            self._set_bar(self.bar.maximum())
            closed = closed_case_note(self.viewer, self.result.case_id) \
                if self.result is not None else ""
            kept = "".join(f"; your edits are kept in the hidden layer '{ly.name}'"
                           for ly, _, _ in self._kept if ly in self.viewer.layers)
            self._kept = []
            self._hidden = []
            self.stage.setText(f"done in {job.elapsed:.1f} s{closed}{kept}")

    def _in_place_of(self, registered, rg: dict) -> None:
        """Show a registered sequence's layer where its layer as read is: just above it in the
        layer list, visible as it was, and hide the layer as read (put back by
        :meth:`_restore_hidden`)."""
        layers = self.viewer.layers

        def as_read(meta: dict) -> bool:
            return (meta.get("case_id") == rg["case_id"]
                    and meta.get("sequence") == rg["sequence"]
                    and not meta.get("registered_onto") and not meta.get("synthetic"))
        originals = [ly for ly in layers if ly is not registered
                     and type(ly).__name__ == "Image" and as_read(radiogen_meta(ly))]
        if not originals:
            return
        registered.visible = any(ly.visible for ly in originals)
        for ly in originals:
            self._hidden.append((ly, ly.visible))
            ly.visible = False
        # just above the topmost layer as read (move's indices are before the move)
        layers.move(layers.index(registered), max(layers.index(ly) for ly in originals) + 1)

    def _restore_hidden(self) -> None:
        """A cancelled or failed run shows the layers as read it hid again."""
        for layer, visible in self._hidden:
            if layer in self.viewer.layers:
                layer.visible = visible
        self._hidden = []

    def _restore_kept(self) -> None:
        """A cancelled or failed run gives the edited layers it set aside their names (and
        visibility) back."""
        for layer, name, visible in reversed(self._kept):
            if layer in self.viewer.layers and name not in self.viewer.layers:
                layer.name = name
                layer.visible = visible
        self._kept = []

    # -- export ---------------------------------------------------------------------------------
    def _export_dialog(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Export the report to…")
        if d:
            self.export(d)

    def export(self, out_dir, render: bool = True) -> dict:
        if self.result is None:
            from napari.utils.notifications import show_error
            show_error("nothing to export: run Analyze first")
            return {}
        paths = write_outputs(self.result, Path(out_dir), render=render)
        from napari.utils.notifications import show_info
        show_info(f"report written: {paths.get('report_html')}")
        return paths


@dataclass
class PreparedStage:
    """A pipeline stage's result with its layers' data, built in the worker thread."""
    result: StageResult
    layers: List[LayerData] = field(default_factory=list)
    #: per layer, its napari layer object when the worker built one (a new layer), else None
    built: List[Any] = field(default_factory=list)

    @property
    def stage(self) -> str:
        return self.result.stage


#: the Segment widget's names of the volumes (``label_1`` -> "label 1 necrotic/non-enh. core")
VOLUME_NAMES = {k: name for k, name in VOLUME_ROWS if k.startswith("label_")}


def stage_layers(item: StageResult, cid: str, before: Optional[Case] = None) -> List[LayerData]:
    """The layer data (``(data, kwargs, layer_type)``) a stage's result shows as, on case
    ``cid`` (captured when the run started; ``before``: the case the run was given, whose
    sequences the load stage's co-registration may have moved). Pure numpy: runs in the
    worker thread."""
    v = item.value
    out: List[LayerData] = []
    if item.stage == "load" and before is not None:
        out.extend(registered_layer_data(v, moved_sequences(before, v)))
    elif item.stage == "synthesize":
        for s in v.synthetic_inputs():
            vol = v.sequences[s]
            out.append(image_result_data(vol.array, vol.geometry, cid, f"{cid} {s} (synthetic)",
                                         colormap="gray", opacity=1.0, contrast=None,
                                         synthetic=True, sequence=s, blending="translucent",
                                         visible=False))
    elif item.stage == "segment":
        # the Segment widget's layer: the same name, label names and metadata (the synthetic
        # inputs as sequence names)
        out.append(segmentation_layer_data(v, cid))
    elif item.stage == "explain":
        # the Explain widget's layer: the same name and metadata (synthetic inputs included)
        out.append(heatmap_layer_data(v, cid))
    return out


#: the prediction table's short headers (full meaning in the legend below it): the dock's
#: default width holds the table with no word broken
PREDICTION_HEADERS = ("task", "call", "P ± SD", "AUC")


def _nobreak(text: str) -> str:
    """Escaped ``text`` that Qt's rich text does not break (spaces made non-breaking)."""
    return html.escape(text).replace(" ", "&nbsp;")


def explanation_line(e, classes=None) -> str:
    """One explanation in words: the class its heatmap explains (as the Explain dock says it,
    with the explained network's probability of that class where the result carries it), the
    method, and the heatmap's localisation."""
    loc = f"{e.localisation:.2f}" if e.localisation is not None else "n/a"
    if (e.details or {}).get("probability") is not None:
        head = result_text(e, classes).split("\n", 1)[0]
    else:
        t = e.target_class
        head = f"heatmap for {e.task} {t}" if str(t).isdigit() else f"heatmap for {t}"
        head += " (the evidence for it, whatever the prediction)"
    return f"{e.task}: {head}; {e.method}; heatmap mass in tumour + 5 mm: {loc}"


def results_html(res: AnalysisResult) -> str:
    parts = [f"<b>{html.escape(res.case_id)}</b>"]
    # what makes the whole result unreliable comes first, apart from the warnings
    for c in res.cautions():
        parts.append(f"<p style='color:#e33'><b>CAUTION: {html.escape(c)}</b></p>")
    classes = None
    if res.prediction is not None:
        classes = {t: list(p) for t, p in res.prediction.tasks.items()}
        val = (res.prediction.card or {}).get("validated") or {}
        rows = []
        for t, probs in res.prediction.tasks.items():
            best = max(probs, key=probs.get)
            auc = (val.get(t) or {}).get("auc_mean")
            sd = (res.prediction.uncertainty.get(t) or {}).get("sd")
            p = f"{probs[best]:.2f}" + (f" ± {sd:.2f}" if sd is not None else "")
            call = f"grade {best}" if t == "grade" and str(best).isdigit() else str(best)
            rows.append("<tr>" + "".join(
                f"<td>{_nobreak(c)}</td>" for c in
                (t, call, p, f"{auc:.2f}" if isinstance(auc, (int, float)) else "n/a"))
                + "</tr>")
        parts.append("<table border=1 cellpadding=2><tr>"
                     + "".join(f"<th>{_nobreak(h)}</th>" for h in PREDICTION_HEADERS)
                     + "</tr>" + "".join(rows) + "</table>")
        parts.append("<p style='color:#888'>call: the most probable class; P ± SD: its "
                     "probability ± the spread of the model's members; AUC: the model's "
                     "validated AUC for the task</p>")
    if res.segmentation is not None:
        seg = res.segmentation
        vols = seg.volumes_ml
        parts.append("<p>volumes (mL): " + ", ".join(
            f"{html.escape(VOLUME_NAMES.get(k, k))} {v:.1f}" for k, v in vols.items()) + "</p>")
        metrics = getattr(seg, "metrics", None) or {}
        if metrics:
            dice = ", ".join(f"{html.escape(r)} {float(m['dice']):.3f}"
                             for r, m in metrics.items() if m.get("dice") is not None)
            from ..core.case_report import labels_origin
            parts.append(f"<p>Dice against {html.escape(labels_origin(res.case))}: {dice}</p>")
    for e in res.explanations:
        parts.append(f"<p>{html.escape(explanation_line(e, classes))}</p>")
    if res.warnings:
        parts.append("<p style='color:#d80'>" + "<br>".join(
            "⚠ " + html.escape(w) for w in res.warnings) + "</p>")
    parts.append("<p style='color:#888'>" + ", ".join(
        f"{k} {v:.1f}s" for k, v in res.timings.items()) + "</p>")
    return "".join(parts)


def _warm_imports() -> None:
    """Import the model stack when the dock opens, not in the middle of a run (a first import
    in the worker holds the interpreter for hundreds of ms and would stall the viewer)."""
    import monai.inferers  # noqa: F401
    import torch  # noqa: F401
    import torchcam.methods  # noqa: F401

    from ..core import explain, predict, segment, synthesize  # noqa: F401
