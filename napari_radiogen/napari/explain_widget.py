"""Explain: Grad-CAM / Grad-CAM++ / LayerCAM / MIL attention heatmaps over the MRI, in 2D and 3D
(and the occlusion map of the radiomics model, which has no image network).

The heatmap layer is named ``<case> <task> <method>``, carries its case, model, task, method,
localisation score and the synthetic inputs it rests on (``synthetic_inputs``: its model's and
those of the tumour segmentation it was placed on) in its metadata, and is replaced cleanly on a
rerun; a new heatmap hides (never removes) the case's heatmaps of other tasks and methods, which
would otherwise add up (additive blending). A threshold slider hides low values (and sets the
iso-surface level in 3D); "3D view" switches napari to 3D with the tumour labels shown as
surfaces and napari's axes arrows named after the patient sides they point to (P, L, S), and
heatmaps arriving later in 3D take the same style; "Export rendering" writes an
off-screen pyvista PNG + turntable GIF of the shown result with the case it was computed on.

The dock's text says which class the heatmap explains (the evidence for that class, whatever
the model predicts) and the explained network's probability for it (``details["probability"]``).
The Device list (the Predict dock's) says where the networks run (``auto``: the GPU when there
is one); the text names the device the result ran on (the CPU after a GPU out-of-memory).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (QComboBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel,
                            QProgressBar, QPushButton, QSlider, QVBoxLayout, QWidget)

from ..core.errors import error_text
from ..core.explain import KIND_METHODS, TASKS, explain, explained_kind, method_slug
from ._common import (HEATMAP_FLOOR, CaseCombo, add_layer_data, closed_case_note,
                      device_combo, image_result_data, mark_patient_axes, on_device,
                      prepared_results, remove_layers)
from .workers import start_job


#: the lowest iso-surface level in 3D (below it the surface wraps most of the head)
ISO_FLOOR = 0.3


@dataclass
class ExplainInputs:
    case_id: str
    task: str = "idh"
    method: str = "gradcam"
    model: Optional[str] = None
    device: str = "auto"


class ExplainWidget(QWidget):
    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.job = None
        #: the shown result and the case it was computed on: set together, only when a run
        #: succeeds (the export renders this pair, never a result with another case)
        self.result = None
        self._case = None
        self.layer = None
        self._result_text = ""       # the result's lines in the dock (an export appends to it)
        self._style_3d = False       # "3D view" was chosen: new heatmaps in 3D take its style
        self._shown = False
        self.case_combo = CaseCombo(napari_viewer)
        self.model = QComboBox()
        self.method = QComboBox()
        self._fill_models()
        self.model.currentTextChanged.connect(self._fill_methods)
        self._fill_methods()
        self.task = QComboBox()
        self.task.addItems(list(TASKS))
        self.threshold = QSlider(Qt.Horizontal)
        self.threshold.setRange(0, 95)
        self.threshold.setValue(int(round(HEATMAP_FLOOR * 100)))
        self.threshold.setToolTip("heatmap values below this are hidden; in 3D, the iso-surface "
                                  f"level (at least {ISO_FLOOR:.2f})")
        self.threshold.valueChanged.connect(self._apply_threshold)
        self.opacity = QSlider(Qt.Horizontal)
        self.opacity.setRange(0, 100)
        self.opacity.setValue(50)
        self.opacity.valueChanged.connect(self._apply_threshold)
        self.device = device_combo()
        self.run_btn = QPushButton("Explain")
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.view3d_btn = QPushButton("3D view")
        self.export_btn = QPushButton("Export rendering…")
        self.export_btn.setEnabled(False)
        self.bar = QProgressBar()
        self.score = QLabel("")
        self.score.setWordWrap(True)

        form = QFormLayout()
        form.addRow("case", self.case_combo)
        form.addRow("model", self.model)
        form.addRow("task", self.task)
        form.addRow("method", self.method)
        form.addRow("threshold", self.threshold)
        form.addRow("opacity", self.opacity)
        form.addRow("Device", self.device)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        r = QHBoxLayout()
        for b in (self.run_btn, self.cancel_btn, self.view3d_btn, self.export_btn):
            r.addWidget(b)
        lay.addLayout(r)
        lay.addWidget(self.bar)
        lay.addWidget(self.score)
        lay.addStretch(1)
        self.run_btn.clicked.connect(self.run)
        self.cancel_btn.clicked.connect(lambda: self.job and self.job.cancel())
        self.view3d_btn.clicked.connect(self.show_3d)
        self.export_btn.clicked.connect(self._export_dialog)

    def _fill_models(self) -> None:
        from ..core.models import list_models
        self.model.clear()
        self._kinds = {}
        self._classes = {}
        from ..core.predict import default_model_name
        for m in list_models("prediction"):
            kind = explained_kind(m["card"])        # an ensemble: its image network's
            if kind in KIND_METHODS:
                self._kinds[m["name"]] = kind
                self._classes[m["name"]] = m["card"].get("classes") or {}
                self.model.addItem(m["name"])
        # the prediction widget's and the command line's default comes first
        if self._kinds and default_model_name() in self._kinds:
            self.model.setCurrentText(default_model_name())

    def _fill_methods(self, *_) -> None:
        """The methods of the chosen model's kind (occlusion only for the radiomics model)."""
        kind = self._kinds.get(self.model.currentText(), "mil")
        keep = self.method.currentText()
        self.method.clear()
        self.method.addItems(list(KIND_METHODS[kind]))
        if keep in KIND_METHODS[kind]:
            self.method.setCurrentText(keep)

    def inputs(self) -> ExplainInputs:
        return ExplainInputs(case_id=self.case_combo.currentText(), task=self.task.currentText(),
                             method=self.method.currentText(),
                             model=self.model.currentText() or None,
                             device=self.device.currentText())

    def run(self) -> None:
        if self.job is not None and not self.job.done:
            return
        inp = self.inputs()
        case = self.case_combo.case_or_notify()
        if case is None:
            return
        self.run_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        self.export_btn.setEnabled(False)        # until this run has a result
        self.score.setText("")
        self._result_text = ""
        self._shown = False                      # this run's result reached the viewer
        self.bar.setRange(0, 4)
        self.bar.setValue(0)
        seg = None if case.labels is not None else self._segmentation_labels(inp.case_id, case)
        existing = {layer.name for layer in self.viewer.layers}
        # the mask is made in the worker (a full-volume comparison off the main thread), and so
        # are the heatmap layer's data and, for a new layer, its napari object
        self.job = start_job(lambda tok: prepared_results(
                                 explain(case, _as_named(inp.model), task=inp.task,
                                         method=inp.method, device=inp.device,
                                         cancel=tok, wt_mask=None if seg is None else seg > 0),
                                 lambda res: heatmap_layer_data(res, inp.case_id,
                                                                requested_model=inp.model),
                                 existing),
                             name=f"Explain {inp.task}",
                             on_result=lambda r: self._show(r, inp, case,
                                                            seg_layer=seg is not None),
                             on_progress=self._progress,
                             on_finished=self._finished, owner=self, viewer=self.viewer)

    def _segmentation_labels(self, case_id: str, case):
        """The labels of a segmentation result layer of this case on its reference grid (their
        whole tumour is the localisation score's mask when the case has no expert labels;
        without one the core segments the case itself)."""
        shape = case.sequences[case.reference].array.shape
        found = []
        for layer in self.viewer.layers:
            rg = layer.metadata.get("radiogen", {}) if hasattr(layer, "metadata") else {}
            if type(layer).__name__ == "Labels" and rg.get("case_id") == case_id \
                    and rg.get("result") and rg.get("sequence") == "segmentation" \
                    and layer.data.shape == shape:
                found.append(layer)
        # the one shown wins over a hidden one (a rerun keeps an edited result hidden beside
        # the new one, "... (edited)")
        found.sort(key=lambda ly: not ly.visible)
        return np.asarray(found[0].data) if found else None

    def _progress(self, p) -> None:
        self.bar.setRange(0, max(p.total, 1))
        self.bar.setValue(min(p.done, max(p.total, 1)))

    def _show(self, prepared, inp: ExplainInputs, case=None, seg_layer: bool = False) -> None:
        res = prepared.result
        name = prepared.layer_data[1]["name"]
        # remove an older heatmap of this case for this task (any method): rerun replaces it
        older = []
        for l in list(self.viewer.layers):
            rg = l.metadata.get("radiogen", {}) if hasattr(l, "metadata") else {}
            if rg.get("case_id") == inp.case_id and rg.get("task") == res.task \
                    and rg.get("sequence") == "heatmap" and l.name != name:
                older.append(l)
        remove_layers(self.viewer, older)
        self.layer = add_layer_data(self.viewer, prepared.layer_data, select=True,
                                    built=prepared.built)
        self.layer.visible = True
        hidden = self._hide_other_heatmaps(inp.case_id)
        if self._style_3d and self.viewer.dims.ndisplay == 3:
            self._style_layer_3d(self.layer)
        self._apply_threshold()
        # the result and its case go together (the export renders this pair)
        self.result, self._case = res, case
        self._result_text = result_text(res, self._classes.get(inp.model or "", {}),
                                        requested_model=inp.model, seg_layer=seg_layer,
                                        device=inp.device)
        note = closed_case_note(self.viewer, inp.case_id)
        extra = []
        if hidden:
            extra.append(f"{hidden} other heatmap{'s' if hidden > 1 else ''} of {inp.case_id} "
                         "hidden (kept in the layer list)")
        if note:
            extra.append(note.lstrip("; "))
        if extra:
            self._result_text += "\n" + "; ".join(extra)
        self.score.setText(self._result_text)
        self._shown = True

    def _hide_other_heatmaps(self, case_id: str) -> int:
        """Hide (not remove) the case's visible heatmaps other than the new one: additive
        heatmaps of several tasks or methods would add up. Returns how many were hidden."""
        n = 0
        for l in self.viewer.layers:
            rg = l.metadata.get("radiogen", {}) if hasattr(l, "metadata") else {}
            if l is not self.layer and rg.get("case_id") == case_id \
                    and rg.get("sequence") == "heatmap" and rg.get("task") and l.visible:
                l.visible = False
                n += 1
        return n

    def _apply_threshold(self, *_) -> None:
        if self.layer is None or self.layer not in self.viewer.layers:
            return
        self.layer.contrast_limits = (self.threshold.value() / 100.0, 1.0)
        if str(self.layer.rendering) == "iso":
            self.layer.iso_threshold = self._iso_level()
        self.layer.opacity = self.opacity.value() / 100.0

    def _iso_level(self) -> float:
        return max(ISO_FLOOR, self.threshold.value() / 100.0)

    def _style_layer_3d(self, layer) -> None:
        layer.rendering = "iso"
        layer.iso_threshold = self._iso_level()
        layer.blending = "translucent"

    def _finished(self, job) -> None:
        self.run_btn.setEnabled(True)
        self.cancel_btn.setEnabled(False)
        if job.error is None and not job.cancelled and self._shown:
            self.bar.setValue(self.bar.maximum())
        else:
            # no completion shown, and nothing of an older run to export: the dock would
            # otherwise pair it with this run's settings
            self.bar.setValue(0)
            self.export_btn.setEnabled(False)
            if job.cancelled:
                self.score.setText("cancelled: no heatmap was made")
            elif job.error is not None:
                self.score.setText(f"failed: {error_text(job.error)}")
            else:
                self.score.setText("failed: the heatmap could not be shown (see the log)")
            return
        self.export_btn.setEnabled(self._case.kind != "slices")

    def show_3d(self) -> None:
        self.viewer.dims.ndisplay = 3
        mark_patient_axes(self.viewer)      # arrows named P, L, S: which side is the left
        self._style_3d = True
        if self.layer is not None and self.layer in self.viewer.layers:
            self._style_layer_3d(self.layer)
        for l in self.viewer.layers:
            if type(l).__name__ == "Labels":
                l.rendering = "iso_categorical"

    def _export_dialog(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Export the rendering to…")
        if d:
            self.export_rendering(d)

    def export_rendering(self, out_dir, n_frames: int = 24):
        """PNG + GIF rendering in a worker; returns the Job."""
        from ..core.explain import render_explanation

        res, case = self.result, self._case      # one pair: the shown result and its case
        if res is None or case is None:
            from ..core.errors import RadiogenError
            raise RadiogenError("no heatmap to render: run Explain first")
        stem = Path(out_dir) / f"{res.case_id}_{res.task}_{method_slug(res.method)}"

        def gen(tok):
            from ..core.progress import Progress
            yield Progress("render", 0, 1, "rendering")
            yield render_explanation(case, res, f"{stem}.png", f"{stem}.gif", n_frames=n_frames)

        def done(r) -> None:
            from napari.utils.notifications import show_info
            files = [Path(p).name for p in (r or {}).values() if isinstance(p, str)]
            msg = f"rendering written to {Path(out_dir)}: {', '.join(files)}"
            # the score and warnings stay; the export line is added below them
            self.score.setText("\n".join(t for t in (self._result_text, msg) if t))
            show_info(msg)

        return start_job(gen, name="Export rendering", owner=self, viewer=self.viewer,
                         on_result=done)


def heatmap_layer_data(res, case_id: str, requested_model: Optional[str] = None):
    """The image layer of an explanation (``<case> <task> <method>``); runs in the worker.
    ``model`` in its metadata is the network the heatmap explains (for an ensemble, its image
    network); ``requested_model``, when given, is the model the user chose."""
    meta = {k: v for k, v in res.metadata.items() if k != "case_id"}
    if requested_model:
        meta["requested_model"] = requested_model
    # values under the floor drawn black (nothing, in additive blending): a heatmap's faint
    # low values fill its whole window (predict_mil_roi: a 120 mm box) and read as a finding
    return image_result_data(res.heatmap, res.geometry, case_id,
                             f"{case_id} {res.task} {res.method}",
                             contrast=(HEATMAP_FLOOR, 1.0), contrast_range=(0.0, 1.0),
                             **meta)


def mask_label(res, seg_layer: bool = False) -> str:
    """Where the localisation mask came from, worded the same for every model:
    ``ground truth``, ``segmentation (<model>)`` or ``segmentation (<layer>)``."""
    src = res.mask_source or ""
    if not src.startswith("segmentation") or "(" in src:
        return src
    if seg_layer:
        return "segmentation (the case's segmentation layer)"
    window = str((res.details or {}).get("window_source") or "")
    if window.startswith("the tumour segmented by "):
        return f"segmentation ({window[len('the tumour segmented by '):]})"
    return src


def _as_named(model: Optional[str]) -> Optional[str]:
    """The model as the core should take it: the default model is passed as no choice, so
    that it gives way where it cannot explain (a case the window's segmentation cannot
    segment falls back to predict_mil, as the Predict dock's prediction does)."""
    from ..core.predict import default_model_name
    return None if not model or model == default_model_name() else model


def result_text(res, classes=None, requested_model: Optional[str] = None,
                seg_layer: bool = False, device: Optional[str] = None) -> str:
    """The dock's lines for an explanation: the class the heatmap explains (with the model's
    probability for it where the result carries one), what made it (``device``: the Device
    list's choice; the line names the device the result ran on, as the Predict dock's status
    does: the CPU after a CUDA out-of-memory fallback), its localisation score and its
    warnings."""
    from ..core.predict import CLASSES
    names = list((classes or {}).get(res.task) or CLASSES.get(res.task) or [])
    prob = getattr(res, "probability", None)
    if prob is None:
        prob = (res.details or {}).get("probability")

    def said(c: str) -> str:               # grade's classes are numbers: "grade 3"
        return f"{res.task} {c}" if str(c).isdigit() else str(c)

    target = said(res.target_class)
    if prob is not None:
        others = [said(c) for c in names if c != res.target_class]
        pred = target if prob >= 0.5 or not others else " / ".join(others)
        who = (res.details or {}).get("probability_model") or res.model
        head = f"heatmap for {target} (P = {float(prob):.2f} by {who}, which predicts {pred})"
    else:
        head = (f"heatmap for {target}: the evidence for it, shown whatever the model "
                "predicts (its probability: the Predict dock)")
    model = res.model
    if requested_model and requested_model != res.model:
        model = f"{res.model}, the image network of {requested_model}"
    made = f"{res.task}; {model}; {res.method}"
    on = on_device(device, res)
    if on:
        made += f";{on}"
    lines = [head, made]
    loc = f"heatmap mass within tumour + 5 mm: {res.localisation_text}"
    if res.localisation is not None:
        label = mask_label(res, seg_layer)
        if label:
            loc += f" [{label}]"
        if res.method == "occlusion":
            loc += (" (by construction: the occlusion map lies inside the model's own "
                    "segmentation, so this measures that segmentation, not learned attention)")
    lines.append(loc)
    lines.extend(f"⚠ {w}" for w in res.warnings)
    return "\n".join(lines)
