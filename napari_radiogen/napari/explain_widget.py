"""Explain: Grad-CAM / Grad-CAM++ / LayerCAM / MIL attention heatmaps over the MRI, in 2D and 3D
(and the occlusion map of the radiomics model, which has no image network).

The heatmap layer is named ``<case> <task> <method>``, carries its case, model, task, method,
localisation score and the synthetic inputs it rests on (``synthetic_inputs``: its model's and
those of the tumour segmentation it was placed on) in its metadata, and is replaced cleanly on a
rerun. A threshold slider hides
low values; "3D view" switches napari to 3D with the tumour labels shown as surfaces; "Export
rendering" writes an off-screen pyvista PNG + turntable GIF.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (QComboBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel,
                            QProgressBar, QPushButton, QSlider, QVBoxLayout, QWidget)

from ..core.explain import KIND_METHODS, TASKS, explain, explained_kind, method_slug
from ._common import CaseCombo, add_layer_data, image_result_data, prepared_results
from .workers import start_job


@dataclass
class ExplainInputs:
    case_id: str
    task: str = "idh"
    method: str = "gradcam"
    model: Optional[str] = None


class ExplainWidget(QWidget):
    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.job = None
        self.result = None
        self.layer = None
        self._case = None
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
        self.threshold.setValue(20)
        self.threshold.valueChanged.connect(self._apply_threshold)
        self.opacity = QSlider(Qt.Horizontal)
        self.opacity.setRange(0, 100)
        self.opacity.setValue(50)
        self.opacity.valueChanged.connect(self._apply_threshold)
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
        from ..core.predict import default_model_name
        for m in list_models("prediction"):
            kind = explained_kind(m["card"])        # an ensemble: its image network's
            if kind in KIND_METHODS:
                self._kinds[m["name"]] = kind
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
                             model=self.model.currentText() or None)

    def run(self) -> None:
        if self.job is not None and not self.job.done:
            return
        inp = self.inputs()
        case = self.case_combo.case_or_notify()
        if case is None:
            return
        self._case = case
        self.run_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        self.score.setText("")
        self.bar.setRange(0, 4)
        seg = None if case.labels is not None else self._segmentation_labels(inp.case_id, case)
        existing = {layer.name for layer in self.viewer.layers}
        # the mask is made in the worker (a full-volume comparison off the main thread), and so
        # are the heatmap layer's data and, for a new layer, its napari object
        self.job = start_job(lambda tok: prepared_results(
                                 explain(case, inp.model, task=inp.task, method=inp.method,
                                         cancel=tok, wt_mask=None if seg is None else seg > 0),
                                 lambda res: heatmap_layer_data(res, inp.case_id), existing),
                             name=f"Explain {inp.task}", on_result=lambda r: self._show(r, inp),
                             on_progress=self._progress,
                             on_finished=self._finished, owner=self, viewer=self.viewer)

    def _segmentation_labels(self, case_id: str, case):
        """The labels of a segmentation result layer of this case on its reference grid (their
        whole tumour is the localisation score's mask when the case has no expert labels;
        without one the core segments the case itself)."""
        shape = case.sequences[case.reference].array.shape
        for layer in self.viewer.layers:
            rg = layer.metadata.get("radiogen", {}) if hasattr(layer, "metadata") else {}
            if type(layer).__name__ == "Labels" and rg.get("case_id") == case_id \
                    and rg.get("result") and rg.get("sequence") == "segmentation" \
                    and layer.data.shape == shape:
                return np.asarray(layer.data)
        return None

    def _progress(self, p) -> None:
        self.bar.setRange(0, max(p.total, 1))
        self.bar.setValue(min(p.done, max(p.total, 1)))

    def _show(self, prepared, inp: ExplainInputs) -> None:
        res = prepared.result
        self.result = res
        name = prepared.layer_data[1]["name"]
        # remove an older heatmap of this case for this task (any method): rerun replaces it
        for l in list(self.viewer.layers):
            rg = l.metadata.get("radiogen", {}) if hasattr(l, "metadata") else {}
            if rg.get("case_id") == inp.case_id and rg.get("task") == res.task \
                    and rg.get("sequence") == "heatmap" and l.name != name:
                self.viewer.layers.remove(l)
        self.layer = add_layer_data(self.viewer, prepared.layer_data, select=True,
                                    built=prepared.built)
        self._apply_threshold()
        loc = f"{res.localisation:.2f}" if res.localisation is not None else "n/a (no mask)"
        self.score.setText(f"{res.task} = {res.target_class} ({res.model}, {res.method}): "
                           f"heatmap mass within tumour + 5 mm: {loc}"
                           + (f" [{res.mask_source}]" if res.mask_source else "")
                           + "".join(f"\n⚠ {w}" for w in res.warnings))
        self.export_btn.setEnabled(self._case is not None and self._case.kind != "slices")

    def _apply_threshold(self, *_) -> None:
        if self.layer is None or self.layer not in self.viewer.layers:
            return
        self.layer.contrast_limits = (self.threshold.value() / 100.0, 1.0)
        self.layer.opacity = self.opacity.value() / 100.0

    def _finished(self, job) -> None:
        self.run_btn.setEnabled(True)
        self.cancel_btn.setEnabled(False)
        self.bar.setValue(self.bar.maximum() if not job.cancelled else 0)

    def show_3d(self) -> None:
        self.viewer.dims.ndisplay = 3
        if self.layer is not None and self.layer in self.viewer.layers:
            self.layer.rendering = "iso"
            self.layer.iso_threshold = max(0.3, self.threshold.value() / 100.0)
            self.layer.blending = "translucent"
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

        res, case = self.result, self._case
        stem = Path(out_dir) / f"{res.case_id}_{res.task}_{method_slug(res.method)}"

        def gen(tok):
            from ..core.progress import Progress
            yield Progress("render", 0, 1, "rendering")
            yield render_explanation(case, res, f"{stem}.png", f"{stem}.gif", n_frames=n_frames)

        def done(r) -> None:
            from napari.utils.notifications import show_info
            files = [Path(p).name for p in (r or {}).values() if isinstance(p, str)]
            msg = f"rendering written to {Path(out_dir)}: {', '.join(files)}"
            self.score.setText(msg)
            show_info(msg)

        return start_job(gen, name="Export rendering", owner=self, viewer=self.viewer,
                         on_result=done)


def heatmap_layer_data(res, case_id: str):
    """The image layer of an explanation (``<case> <task> <method>``); runs in the worker."""
    meta = {k: v for k, v in res.metadata.items() if k != "case_id"}
    return image_result_data(res.heatmap, res.geometry, case_id,
                             f"{case_id} {res.task} {res.method}", **meta)
