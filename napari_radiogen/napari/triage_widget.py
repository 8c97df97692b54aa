"""Tumour type dock widget: 2D triage of the slice under view (glioma / meningioma /
pituitary tumour / no tumour), following the user's scrolling and viewing orientation.

Thin: the core (:mod:`napari_radiogen.core.triage`) does the work in a worker through
:func:`napari_radiogen.napari.workers.start_job`. Only the latest slice request matters: while a
job runs, newer requests only mark the widget as "pending", and when the job ends the newest
slice is classified (stale slices are never queued).

The slice is the one napari shows: the displayed axes are the last two of ``viewer.dims.order``
(mapped onto the layer's own axes as napari does: ``Layer._world_to_layer_dims``) and the
slicing axis is the one before them.
In a 3D view the widget keeps working on that 2D slice (and says so). "Classify all slices"
runs along the same slicing axis; the per-slice plot and its summary belong to the layer they
were computed on and are hidden while another layer is selected (dropped when it goes away).
An empty slice (all zero or constant) gets no tumour call and is left out of the counts.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import numpy as np
from qtpy.QtWidgets import (QCheckBox, QComboBox, QFormLayout, QHBoxLayout, QLabel,
                            QProgressBar, QPushButton, QVBoxLayout, QWidget)

from ..core import triage as core_triage
from ..core.progress import Progress
from .workers import start_job

CAVEAT_STYLE = "color: #e0a030; font-size: 11px"


@dataclass(frozen=True)
class SliceRequest:
    """What to classify: a layer (by identity), the index of the slice in its data, the model."""
    layer_id: int
    layer_name: str
    index: Tuple[int, ...]          # indices of the non-displayed axes (layer data order)
    model: str
    cam: bool
    displayed: Tuple[int, ...] = ()  # displayed axes (layer data order: rows, columns)
    axis: Optional[int] = None       # slicing axis (layer data order); None for a 2D image

    @property
    def position(self) -> Optional[int]:
        """Index of the slice along :attr:`axis`."""
        if self.axis is None:
            return None
        others = [a for a in range(len(self.index) + len(self.displayed))
                  if a not in self.displayed]
        return self.index[others.index(self.axis)]


@dataclass(frozen=True)
class VolumeContext:
    """What a "Classify all slices" table is of: the layer, the slicing axis, and the indices
    it was taken at on the other non-displayed axes (a 4D layer's channel...)."""
    layer: Any                      # weakref.ref to the layer
    name: str
    axis: int
    fixed: Tuple[Tuple[int, int], ...]
    axis_text: str


def _layer_array(layer) -> Any:
    data = layer.data
    if getattr(layer, "multiscale", False):
        data = data[0]
    return data


def _pct(p: float) -> int:
    """A probability in whole percent (rounded: the label and the bars agree)."""
    return int(round(100.0 * float(p)))


def _ref(obj):
    try:
        return weakref.ref(obj)
    except TypeError:                                   # pragma: no cover - no weakrefs
        return lambda: obj


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
        self.volume_context: Optional[VolumeContext] = None
        self._cam_layer = None
        self._layer_ref = None                        # the layer the panel speaks of
        self._message = ""                            # a message about the selected layer
        self._running = ""                            # the running "all slices" job

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
        self.view_note = QLabel("")
        self.view_note.setWordWrap(True)
        self.view_note.setStyleSheet(CAVEAT_STYLE)
        self.view_note.setVisible(False)
        lay.addWidget(self.view_note)

        self.prediction_label = QLabel("-")
        self.prediction_label.setStyleSheet("font-weight: bold")
        self.prediction_label.setWordWrap(True)
        lay.addWidget(self.prediction_label)
        self.caveat_label = QLabel("")              # next to the call: skull-stripped input
        self.caveat_label.setWordWrap(True)
        self.caveat_label.setStyleSheet(CAVEAT_STYLE)
        self.caveat_label.setVisible(False)
        lay.addWidget(self.caveat_label)
        self.bars: Dict[str, QProgressBar] = {}
        bars = QFormLayout()
        for c in core_triage.CLASSES:
            b = QProgressBar()
            b.setRange(0, 100)                       # whole percent: shown as rounded
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
        self.viewer.dims.events.order.connect(self._on_view_changed)
        self.viewer.dims.events.ndisplay.connect(self._on_view_changed)
        self.layer_combo.currentIndexChanged.connect(self._on_layer_changed)
        self.model_combo.currentIndexChanged.connect(lambda *_: self.request_current())
        self.cam_box.toggled.connect(self._on_cam_toggled)
        self._update_view_note()
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
        self._update_status()

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
        self._on_layer_changed()

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

    # -- what the panel speaks of --------------------------------------------------------------
    def _on_layer_changed(self, *_: Any) -> None:
        """The selected layer changed (or a layer came or went): messages about the previous
        one go, its prediction goes, and the per-slice plot is shown only for its own layer."""
        layer = self.selected_layer()
        prev = self._layer_ref() if self._layer_ref is not None else None
        if layer is not prev:
            self._layer_ref = _ref(layer) if layer is not None else None
            self._message = ""
            if self.last_result is not None and (
                    layer is None or self.last_result[0].layer_id != id(layer)):
                self._clear_prediction()
            self._update_view_note()
        ctx = self.volume_context
        if ctx is not None:
            vl = ctx.layer()
            if vl is None or not any(ly is vl for ly in self.viewer.layers):
                self.volume_result = None           # the analysed layer went away
                self.volume_context = None
        self._sync_volume_view()
        self.request_current()

    def _clear_prediction(self) -> None:
        self.last_result = None
        self.prediction_label.setText("")
        self.caveat_label.setText("")
        self.caveat_label.setVisible(False)
        for b in self.bars.values():
            b.setValue(0)
            b.setFormat("%p%")

    def _volume_shown(self) -> bool:
        ctx = self.volume_context
        layer = self.selected_layer()
        return (ctx is not None and self.volume_result is not None and layer is not None
                and ctx.layer() is layer)

    def _summary(self) -> str:
        if not self._volume_shown():
            return ""
        name, table = self.volume_result
        ctx = self.volume_context
        counts = table.counts()
        text = (f"{name}: {len(table.names)} slices along {ctx.axis_text}; "
                + ", ".join(f"{core_triage.CLASS_NAMES.get(c, c)} {n}"
                            for c, n in counts.items()))
        if table.n_empty:
            text += f"; {table.n_empty} empty (no call, not counted)"
        if table.caveat:
            text += f"\nThe volume {table.caveat}."
        return text

    def _update_status(self) -> None:
        parts = []
        if self.model_combo.count() == 0:
            parts.append("No triage model installed.")
        if self._running:
            parts.append(self._running)
        elif self._message:
            parts.append(self._message)
        summary = self._summary()
        if summary:
            parts.append(summary)
        self.status.setText("\n".join(parts))

    def _sync_volume_view(self) -> None:
        if self.canvas is not None:
            self.canvas.setVisible(self._volume_shown())
        self._update_vline()
        self._update_status()

    # -- slice selection -----------------------------------------------------------------------
    def _layer_order(self, layer) -> Tuple[int, ...]:
        """The layer's axes in the viewer's order, mapped as napari slices a layer with fewer
        dimensions than the viewer (``Layer._world_to_layer_dims``): the layer's axis ``i`` is
        world axis ``offset + i`` (``offset`` = viewer ndim - layer ndim), so the entries of
        ``dims.order`` >= ``offset``, minus ``offset``. With a 4D viewer, a 3D layer and the
        order (3, 0, 1, 2) napari shows the layer's axes (0, 1) and slices its axis 2."""
        nd = int(layer.ndim)
        world = np.asarray(self.viewer.dims.order, dtype=int)
        ndim_world = int(self.viewer.dims.ndim)
        order = None
        fn = getattr(layer, "_world_to_layer_dims", None)      # napari's own (private) mapping
        if callable(fn):
            try:
                order = tuple(int(i) for i in fn(world_dims=world, ndim_world=ndim_world))
            except Exception:                                    # pragma: no cover - API drift
                order = None
        if order is None or sorted(order) != list(range(nd)):
            offset = ndim_world - nd                             # the same rule, by hand
            if offset >= 0:
                order = tuple(int(i) for i in world[world >= offset] - offset)
            else:                                                # pragma: no cover - defensive
                order = tuple(range(-offset)) + tuple(int(i) - offset for i in world)
        if sorted(order) != list(range(nd)):                     # pragma: no cover - defensive
            return tuple(range(nd))
        return order

    def view_axes(self, layer) -> Tuple[Optional[int], Tuple[int, int]]:
        """(slicing axis, (row axis, column axis)) in layer data order, as napari shows the
        layer in a 2D view: the displayed axes are the last two of the order, the slicing axis
        the one before them (None for a 2D image). In a 3D view: the same (2D slices)."""
        order = self._layer_order(layer)
        if len(order) < 2:
            return None, (0, 0)
        disp = (order[-2], order[-1])
        return (order[-3] if len(order) >= 3 else None), disp

    def _displayed_axes(self, layer) -> Tuple[int, int]:
        return self.view_axes(layer)[1]

    def current_index(self, layer) -> Tuple[int, ...]:
        """Indices (layer data order) of the non-displayed axes at the viewer's position."""
        ndim = layer.ndim
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

    def axis_text(self, layer, axis: Optional[int]) -> str:
        """How the slicing axis is named: the plane for a case volume from the plugin's reader
        (z, y, x in LPS order: axial, coronal, sagittal), else its index."""
        if axis is None:
            return ""
        nd = layer.ndim
        rg = (layer.metadata or {}).get("radiogen") or {}
        if rg.get("geometry") is not None and nd >= 3 and axis >= nd - 3:
            return f"the {core_triage.PLANE_NAMES[axis - (nd - 3)]} axis ({axis})"
        return f"axis {axis}"

    def _where(self, req: SliceRequest, layer=None) -> str:
        if req.axis is None:
            return ""
        layer = layer if layer is not None else self.selected_layer()
        if layer is not None:
            rg = (layer.metadata or {}).get("radiogen") or {}
            nd = layer.ndim
            if rg.get("geometry") is not None and nd >= 3 and req.axis >= nd - 3:
                plane = core_triage.PLANE_NAMES[req.axis - (nd - 3)]
                return f"{plane} slice {req.position}"
        return f"slice {req.position} (axis {req.axis})"

    def _slicer(self, layer, index: Tuple[int, ...]):
        """A function returning the 2D slice (run in the worker: lazy data is read there)."""
        data = _layer_array(layer)
        rgb = bool(getattr(layer, "rgb", False))
        disp = self._displayed_axes(layer)
        if layer.ndim <= 2 and not rgb:         # as shown: transposed in a permuted viewer
            return (lambda: np.asarray(data).T) if disp[0] > disp[1] else \
                (lambda: np.asarray(data))
        sl, it = [], iter(index)
        for a in range(layer.ndim):
            sl.append(slice(None) if a in disp else next(it))
        key, transpose = tuple(sl), disp[0] > disp[1]

        def get():
            a = np.asarray(data[key])
            if rgb:                                     # colour channels (last axis) -> grey
                a = a.astype(np.float32)[..., :3].mean(-1)
            return a.T if transpose else a
        return get

    def _on_step(self, event=None) -> None:
        self._update_vline()
        if self.follow_box.isChecked():
            self.request_current()

    def _on_view_changed(self, event=None) -> None:
        """dims.order or ndisplay changed: another slice is under view."""
        self._update_view_note()
        self._update_vline()
        if self.follow_box.isChecked():
            self.request_current()

    def _update_view_note(self) -> None:
        three_d = self.viewer.dims.ndisplay == 3
        layer = self.selected_layer()
        if three_d:
            axis = self.view_axes(layer)[0] if layer is not None else None
            where = f" along {self.axis_text(layer, axis)}" if axis is not None else ""
            self.view_note.setText(
                "3D view: this widget works on 2D slices. It classifies the slice at the "
                f"current position{where}, as the 2D view shows it.")
        self.view_note.setVisible(three_d)

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
        axis, disp = self.view_axes(layer)
        if layer.ndim <= 2:
            axis = None
        req = SliceRequest(layer_id=id(layer), layer_name=layer.name,
                           index=self.current_index(layer), model=model,
                           cam=self.cam_box.isChecked(), displayed=tuple(disp), axis=axis)
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
            caveat = core_triage.domain_caveat(arr, meta.get("case_id"))
            if req.cam:
                cam = core_triage.gradcam_slice(arr, model)
                yield (req, cam.triage, cam.heatmap, place, meta, caveat)
            else:
                yield (req, core_triage.classify_slice(arr, model), None, None, meta, caveat)

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
        if layer.ndim <= 2:
            return tuple(scale[list(disp)]), tuple(translate[list(disp)]), (), False
        others = [a for a in range(layer.ndim) if a not in disp]
        for a, i in zip(others, index):
            translate[a] += float(i) * scale[a]
        return tuple(scale), tuple(translate), tuple(others), disp[0] > disp[1]

    def _on_result(self, item) -> None:
        if not item:
            return
        req, tri, heat, place, meta, caveat = item
        layer = self.selected_layer()
        if layer is None or id(layer) != req.layer_id or (
                self._pending and req != self.last_request):
            return        # of a layer no longer selected, or superseded by a newer request
        self.last_result = (req, tri)
        where = self._where(req, layer)
        if tri.empty:
            text = "empty slice (no foreground): no tumour call"
            for b in self.bars.values():
                b.setValue(0)
                b.setFormat("-")
        else:
            text = f"{core_triage.CLASS_NAMES[tri.predicted]} ({_pct(tri.confidence)}%)"
            for c, b in self.bars.items():
                b.setValue(_pct(tri.probs.get(c, 0.0)))
                b.setFormat("%p%")
        self.prediction_label.setText(text + (f"  -  {where}" if where else ""))
        show_caveat = bool(caveat) and not tri.empty
        self.caveat_label.setText(f"This image {caveat}." if show_caveat else "")
        self.caveat_label.setVisible(show_caveat)
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
            ly.name = name
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
            self._message = "Select an image layer and a model first."
            self._update_status()
            return
        data = _layer_array(layer)
        if layer.ndim < 3:
            self._message = "The layer is 2D: there is only one slice."
            self._update_status()
            return
        rgb = bool(getattr(layer, "rgb", False))
        nd = layer.ndim
        axis, disp = self.view_axes(layer)
        others = [a for a in range(nd) if a not in disp]
        fixed = {a: i for a, i in zip(others, self.current_index(layer)) if a != axis}
        key = tuple(fixed[a] if a in fixed else slice(None) for a in range(nd))
        kept = [a for a in range(nd) if a not in fixed]          # axis and the displayed two
        perm = (kept.index(axis), kept.index(disp[0]), kept.index(disp[1]))
        name = layer.name
        case_id = ((layer.metadata or {}).get("radiogen") or {}).get("case_id") or name
        ctx = VolumeContext(layer=_ref(layer), name=name, axis=axis,
                            fixed=tuple(sorted(fixed.items())),
                            axis_text=self.axis_text(layer, axis))

        def gen(token):
            m = self._model(model)
            vol = np.asarray(data[key])
            if rgb:                                     # colour channels (last axis) -> grey
                vol = vol.astype(np.float32)[..., :3].mean(-1)
            vol = np.transpose(vol, perm)                  # (slice, rows, columns)
            for item in core_triage.classify_volume(vol, m, cancel=token, case_id=case_id):
                if isinstance(item, core_triage.TriageTable):
                    item.axis = axis                         # the layer's axis
                    yield (ctx, item)
                else:
                    yield item

        def finished(job):
            self.all_button.setEnabled(True)
            self._running = ""
            self._update_status()

        self.all_button.setEnabled(False)
        self._message = ""
        self._running = f"Classifying every slice of {name} along {ctx.axis_text} ..."
        self._update_status()
        self._volume_job = start_job(gen, name="Tumour type (all slices)",
                                     on_result=self._on_volume_result,
                                     on_finished=finished, owner=self)

    def _on_volume_result(self, item) -> None:
        if not item:
            return
        ctx, table = item
        layer = ctx.layer()
        if layer is None or not any(ly is layer for ly in self.viewer.layers):
            return                                       # the layer went away meanwhile
        self.volume_result = (ctx.name, table)
        self.volume_context = ctx
        self._plot(table, ctx)
        self._sync_volume_view()

    def _plot(self, table, ctx: VolumeContext) -> None:
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        if self.canvas is None:
            fig = Figure(figsize=(4, 2.8), tight_layout=True)
            self.canvas = FigureCanvasQTAgg(fig)
            self.canvas.setMinimumHeight(210)
            self._plot_holder.addWidget(self.canvas)
            self._plot_ax = fig.add_subplot(111)
        ax = self._plot_ax
        ax.clear()
        z = np.arange(len(table.names))
        empty = np.zeros(len(z), bool)
        empty[:len(table.empty)] = np.asarray(table.empty, bool)[:len(z)]
        probs = np.where(empty[:, None], np.nan, table.probs)   # no curve over empty slices
        for i, c in enumerate(table.classes):
            ax.plot(z, probs[:, i], label=core_triage.CLASS_NAMES.get(c, c), lw=1.2)
        if empty.any():
            edges = np.flatnonzero(np.diff(np.r_[0, empty.astype(int), 0]))
            for k, (a, b) in enumerate(zip(edges[::2], edges[1::2])):
                ax.axvspan(a - 0.5, b - 0.5, color="0.85", lw=0,
                           label="empty slice" if k == 0 else None)
        ax.set_xlabel(f"slice along {ctx.axis_text}", fontsize=8)
        ax.set_ylabel("probability", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_ylim(0, 1)
        ax.set_xlim(-0.5, max(len(z) - 0.5, 0.5))
        ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=3,
                  frameon=False, handlelength=1.5, columnspacing=1.0)
        self._vline = ax.axvline(0, color="k", lw=0.8, ls="--")
        self._update_vline()

    def _vline_position(self) -> Optional[int]:
        """Where the current slice is on the plot: only when the plot is of the selected layer,
        along the axis now sliced, at the same indices on the other non-displayed axes."""
        if not self._volume_shown():
            return None
        layer = self.selected_layer()
        ctx = self.volume_context
        axis, disp = self.view_axes(layer)
        if axis != ctx.axis:
            return None
        others = [a for a in range(layer.ndim) if a not in disp]
        idx = dict(zip(others, self.current_index(layer)))
        if any(idx.get(a) != i for a, i in ctx.fixed):
            return None
        return idx.get(axis)

    def _update_vline(self) -> None:
        if self._vline is None or self.canvas is None:
            return
        pos = self._vline_position()
        if pos is not None:
            self._vline.set_xdata([pos, pos])
        if self._vline.get_visible() != (pos is not None) or pos is not None:
            self._vline.set_visible(pos is not None)
            self.canvas.draw_idle()
