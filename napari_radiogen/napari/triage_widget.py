"""Tumour type dock widget: 2D triage of the slice under view (glioma / meningioma /
pituitary tumour / no tumour), following the user's scrolling.

Thin: the core (:mod:`napari_radiogen.core.triage`) does the work in a worker through
:func:`napari_radiogen.napari.workers.start_job`. Only the latest slice request matters: while a
job runs, newer requests only mark the widget as "pending", and when the job ends the newest
slice is classified (stale slices are never queued).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import numpy as np
from qtpy.QtWidgets import (QCheckBox, QComboBox, QFormLayout, QHBoxLayout, QLabel,
                            QProgressBar, QPushButton, QVBoxLayout, QWidget)

from ..core import triage as core_triage
from ..core.progress import Progress
from .workers import start_job


@dataclass(frozen=True)
class SliceRequest:
    """What to classify: a layer (by identity), the index of the slice in its data, the model."""
    layer_id: int
    layer_name: str
    index: Tuple[int, ...]          # indices of the non-displayed axes (layer data order)
    model: str
    cam: bool


def _layer_array(layer) -> Any:
    data = layer.data
    if getattr(layer, "multiscale", False):
        data = data[0]
    return data


class TumourTypeWidget(QWidget):
    """Classifies the current slice of the selected image layer; per-slice plot; Grad-CAM."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self._models: Dict[str, Any] = {}
        self._job = None
        self._pending = False
        self._volume_job = None
        self.last_request: Optional[SliceRequest] = None
        self.last_result = None                       # (SliceRequest, SliceTriage)
        self.volume_result = None                     # (layer name, TriageTable)
        self._cam_layer = None

        lay = QVBoxLayout(self)
        form = QFormLayout()
        self.layer_combo = QComboBox()
        self.model_combo = QComboBox()
        form.addRow("Image layer", self.layer_combo)
        form.addRow("Model", self.model_combo)
        lay.addLayout(form)
        row = QHBoxLayout()
        self.follow_box = QCheckBox("Follow slice")
        self.follow_box.setChecked(True)
        self.cam_box = QCheckBox("Grad-CAM overlay")
        row.addWidget(self.follow_box)
        row.addWidget(self.cam_box)
        lay.addLayout(row)

        self.prediction_label = QLabel("-")
        self.prediction_label.setStyleSheet("font-weight: bold")
        lay.addWidget(self.prediction_label)
        self.bars: Dict[str, QProgressBar] = {}
        bars = QFormLayout()
        for c in core_triage.CLASSES:
            b = QProgressBar()
            b.setRange(0, 1000)
            b.setFormat("%p%")
            bars.addRow(core_triage.CLASS_NAMES[c], b)
            self.bars[c] = b
        lay.addLayout(bars)

        self.all_button = QPushButton("Classify all slices")
        self.all_button.clicked.connect(self.classify_all)
        lay.addWidget(self.all_button)
        self.canvas = None
        self._plot_ax = None
        self._vline = None
        self._plot_holder = QVBoxLayout()
        lay.addLayout(self._plot_holder)

        note = QLabel(core_triage.TRIAGE_NOTE)
        note.setWordWrap(True)
        note.setStyleSheet("color: #c89b3c; font-size: 10px")
        lay.addWidget(note)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        lay.addWidget(self.status)
        lay.addStretch(1)

        self._refresh_models()
        self._refresh_layers()
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self.viewer.layers.selection.events.active.connect(self._on_active)
        self.viewer.dims.events.current_step.connect(self._on_step)
        self.layer_combo.currentIndexChanged.connect(lambda *_: self.request_current())
        self.model_combo.currentIndexChanged.connect(lambda *_: self.request_current())
        self.cam_box.toggled.connect(self._on_cam_toggled)
        self.request_current()

    # -- lists ---------------------------------------------------------------------------------
    def _refresh_models(self) -> None:
        from ..core.models import list_models
        names = [m["name"] for m in list_models(core_triage.TASK)]
        pref = [n for n in core_triage.PREFERRED_MODELS if n in names]
        names = pref + [n for n in names if n not in pref]
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        self.model_combo.addItems(names)
        self.model_combo.blockSignals(False)
        if not names:
            self.status.setText("No triage model installed.")

    def _image_layers(self):
        from napari.layers import Image
        return [ly for ly in self.viewer.layers if isinstance(ly, Image)
                and ly.name != getattr(self._cam_layer, "name", None)
                and not (ly.metadata or {}).get("radiogen", {}).get("triage_cam")]

    def _refresh_layers(self, *_: Any) -> None:
        current = self.layer_combo.currentText()
        names = [ly.name for ly in self._image_layers()]
        self.layer_combo.blockSignals(True)
        self.layer_combo.clear()
        self.layer_combo.addItems(names)
        active = self.viewer.layers.selection.active
        visible = [ly.name for ly in reversed(self._image_layers()) if ly.visible]
        pick = current if current in names else (
            active.name if active is not None and active.name in names else
            (visible[0] if visible else None))      # the topmost visible image, not the first
        if pick:
            self.layer_combo.setCurrentText(pick)
        self.layer_combo.blockSignals(False)
        if not names:                      # the image went away: so does what was said of it
            self.last_result = None
            self.prediction_label.setText("")
            for b in self.bars.values():
                b.setValue(0)
        self.request_current()

    def _on_active(self, event=None) -> None:
        ly = self.viewer.layers.selection.active
        if ly is not None and ly.name in [self.layer_combo.itemText(i)
                                          for i in range(self.layer_combo.count())]:
            self.layer_combo.setCurrentText(ly.name)

    def selected_layer(self):
        name = self.layer_combo.currentText()
        for ly in self._image_layers():
            if ly.name == name:
                return ly
        return None

    # -- slice selection -----------------------------------------------------------------------
    def _displayed_axes(self, layer) -> Tuple[int, int]:
        nd = layer.ndim
        if self.viewer.dims.ndisplay == 2:
            disp = [a - (self.viewer.dims.ndim - nd) for a in self.viewer.dims.displayed]
            disp = [a for a in disp if a >= 0]
            if len(disp) == 2:
                return tuple(disp)  # type: ignore[return-value]
        return (nd - 2, nd - 1)

    def current_index(self, layer) -> Tuple[int, ...]:
        """Indices (layer data order) of the non-displayed axes at the viewer's position."""
        ndim = layer.ndim - (1 if getattr(layer, "rgb", False) else 0)
        if ndim <= 2:
            return ()
        pt = np.asarray(layer.world_to_data(self.viewer.dims.point), dtype=float)
        shape = _layer_array(layer).shape
        disp = self._displayed_axes(layer)
        idx = []
        for a in range(ndim):
            if a in disp:
                continue
            idx.append(int(np.clip(np.round(pt[a]), 0, shape[a] - 1)))
        return tuple(idx)

    def _slicer(self, layer, index: Tuple[int, ...]):
        """A function returning the 2D slice (run in the worker: lazy data is read there)."""
        data = _layer_array(layer)
        if getattr(layer, "rgb", False):
            return lambda: np.asarray(data).astype(np.float32)[..., :3].mean(-1)
        if data.ndim <= 2:
            return lambda: np.asarray(data)
        disp = self._displayed_axes(layer)
        sl, it = [], iter(index)
        for a in range(data.ndim):
            sl.append(slice(None) if a in disp else next(it))
        key, transpose = tuple(sl), disp[0] > disp[1]
        return lambda: (np.asarray(data[key]).T if transpose else np.asarray(data[key]))

    def _on_step(self, event=None) -> None:
        self._update_vline()
        if self.follow_box.isChecked():
            self.request_current()

    def _on_cam_toggled(self, on: bool) -> None:
        if not on and self._cam_layer is not None and self._cam_layer in self.viewer.layers:
            self.viewer.layers.remove(self._cam_layer)
            self._cam_layer = None
        self.request_current(force=True)

    # -- classification of the current slice ---------------------------------------------------
    def _model(self, name: str):
        if name not in self._models:
            self._models[name] = core_triage.load_triage_model(name)
        return self._models[name]

    def request_current(self, force: bool = False) -> Optional[SliceRequest]:
        """Ask for the current slice; runs now, or after the running job (latest wins)."""
        layer = self.selected_layer()
        model = self.model_combo.currentText()
        if layer is None or not model:
            return None
        req = SliceRequest(layer_id=id(layer), layer_name=layer.name,
                           index=self.current_index(layer), model=model,
                           cam=self.cam_box.isChecked())
        if not force and self.last_result is not None and self.last_result[0] == req:
            return req
        self.last_request = req
        if self._job is not None and not self._job.done:
            self._pending = True          # only the newest request is run when the job ends
            return req
        self._start(req, layer)
        return req

    def _start(self, req: SliceRequest, layer) -> None:
        self._pending = False
        get_slice = self._slicer(layer, req.index)
        place = self._cam_placement(layer, req.index)
        meta = dict((layer.metadata or {}).get("radiogen") or {})

        def factory(token):
            yield Progress("triage", 0, 1, req.layer_name)
            model = self._model(req.model)
            arr = get_slice()
            if req.cam:
                cam = core_triage.gradcam_slice(arr, model)
                yield (req, cam.triage, cam.heatmap, place, meta)
            else:
                yield (req, core_triage.classify_slice(arr, model), None, None, meta)

        self._job = start_job(factory, name="Tumour type", on_result=self._on_result,
                              on_finished=self._on_finished, owner=self, progress_bar=False)

    def _cam_placement(self, layer, index):
        """Where the CAM of slice ``index`` goes: (scale, translate, axes to add, transposed).
        For a slice of an n-D image, a one-slice layer at that slice (added axes = the
        non-displayed ones; not a 2D layer drawn over every slice); for a 2D or RGB image, a 2D
        layer with the displayed axes' scale and translate."""
        disp = self._displayed_axes(layer)
        scale = np.asarray(layer.scale, dtype=float)
        translate = np.asarray(layer.translate, dtype=float).copy()
        if getattr(layer, "rgb", False) or _layer_array(layer).ndim <= 2:
            return tuple(scale[list(disp)]), tuple(translate[list(disp)]), (), False
        others = [a for a in range(layer.ndim) if a not in disp]
        for a, i in zip(others, index):
            translate[a] += float(i) * scale[a]
        return tuple(scale), tuple(translate), tuple(others), disp[0] > disp[1]

    def _on_result(self, item) -> None:
        if not item:
            return
        req, tri, heat, place, meta = item
        self.last_result = (req, tri)
        self.prediction_label.setText(
            f"{core_triage.CLASS_NAMES[tri.predicted]} ({100 * tri.confidence:.0f}%)"
            + ("  [empty slice]" if tri.empty else "")
            + (f"  slice {req.index[-1]}" if req.index else ""))
        for c, b in self.bars.items():
            b.setValue(int(round(1000 * tri.probs.get(c, 0.0))))
        if heat is not None:
            self._show_cam(req, heat, place, meta)

    def _show_cam(self, req, heat, place, meta) -> None:
        name = f"Grad-CAM ({req.layer_name})"
        md = {"radiogen": {"case_id": meta.get("case_id"), "sequence": "triage-gradcam",
                           "source": meta.get("source"), "synthetic": False,
                           "triage_cam": True, "of_layer": req.layer_name,
                           "slice_index": list(req.index)}}
        scale, translate, others, transposed = place
        if others:      # one slice of the volume, at its place (see _cam_placement)
            heat = np.expand_dims(heat.T if transposed else heat, others)
        ly = self._cam_layer
        if ly is not None and ly in self.viewer.layers and ly.data.shape == heat.shape:
            ly.data = heat
            ly.scale, ly.translate = scale, translate
            ly.metadata = md
        else:
            if ly is not None and ly in self.viewer.layers:
                self.viewer.layers.remove(ly)
            self._cam_layer = self.viewer.add_image(
                heat, name=name, colormap="inferno", opacity=0.45, blending="additive",
                contrast_limits=(0.0, 1.0), scale=scale, translate=translate, metadata=md)
            src = self.selected_layer()
            if src is not None:   # keep the user's selection on the image
                self.viewer.layers.selection.active = src

    def _on_finished(self, job) -> None:
        if self._pending:
            self.request_current()

    # -- all slices ----------------------------------------------------------------------------
    def classify_all(self) -> None:
        layer = self.selected_layer()
        model = self.model_combo.currentText()
        if layer is None or not model:
            self.status.setText("Select an image layer and a model first.")
            return
        data = _layer_array(layer)
        if data.ndim < 3 or getattr(layer, "rgb", False):
            self.status.setText("The layer is 2D: there is only one slice.")
            return
        vol = np.asarray(data)
        if vol.ndim > 3:
            vol = vol[tuple(self.current_index(layer)[:vol.ndim - 3])]
        name = layer.name
        case_id = ((layer.metadata or {}).get("radiogen") or {}).get("case_id") or name

        def gen(token):
            m = self._model(model)
            for item in core_triage.classify_volume(vol, m, cancel=token):
                if isinstance(item, core_triage.TriageTable):
                    item.case_id = case_id
                    yield (name, item)
                else:
                    yield item

        self.all_button.setEnabled(False)
        self.status.setText(f"Classifying every axial slice of {name} ...")
        self._volume_job = start_job(gen, name="Tumour type (all slices)",
                                     on_result=self._on_volume_result,
                                     on_finished=lambda j: self.all_button.setEnabled(True),
                                     owner=self)

    def _on_volume_result(self, item) -> None:
        if not item:
            return
        name, table = item
        self.volume_result = (name, table)
        counts = {c: table.predicted.count(c) for c in table.classes}
        self.status.setText(f"{name}: {len(table.names)} slices; " + ", ".join(
            f"{core_triage.CLASS_NAMES[c]} {n}" for c, n in counts.items()))
        self._plot(table)

    def _plot(self, table) -> None:
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        if self.canvas is None:
            fig = Figure(figsize=(4, 2.4), tight_layout=True)
            self.canvas = FigureCanvasQTAgg(fig)
            self.canvas.setMinimumHeight(180)
            self._plot_holder.addWidget(self.canvas)
            self._plot_ax = fig.add_subplot(111)
        ax = self._plot_ax
        ax.clear()
        z = np.arange(len(table.names))
        for i, c in enumerate(table.classes):
            ax.plot(z, table.probs[:, i], label=core_triage.CLASS_NAMES.get(c, c), lw=1.2)
        ax.set_xlabel("axial slice")
        ax.set_ylabel("probability")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=6, loc="upper right")
        self._vline = ax.axvline(0, color="k", lw=0.8, ls="--")
        self._update_vline()

    def _update_vline(self) -> None:
        if self._vline is None or self.canvas is None:
            return
        layer = self.selected_layer()
        if layer is None:
            return
        idx = self.current_index(layer)
        if idx:
            self._vline.set_xdata([idx[-1], idx[-1]])
            self.canvas.draw_idle()
