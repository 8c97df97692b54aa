"""Small pieces shared by the dock widgets: a case picker, a device picker, layer placement."""
from __future__ import annotations

import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (QComboBox, QFrame, QHBoxLayout, QLabel, QPushButton, QScrollArea,
                            QSizePolicy, QWidget)

from ..core.case import Case, Geometry, Volume
from .layers import (LayerData, case_from_layers, geometry_kwargs, image_layer_data,
                     labels_layer_data, radiogen_meta)


def case_ids(viewer) -> List[str]:
    out: List[str] = []
    for layer in viewer.layers:
        cid = radiogen_meta(layer).get("case_id")
        if cid and cid not in out and not radiogen_meta(layer).get("result"):
            out.append(cid)
    return out


def closed_case_note(viewer, case_id: str) -> str:
    """A status's words when a job's case was closed while it ran (none of the case's own
    layers is left): its results are still added, not lost, and stand alone; else ""."""
    if case_id in case_ids(viewer):
        return ""
    return (f"; {case_id}'s images were closed during the run: its results are shown on "
            "their own")


class DockScroll(QScrollArea):
    """The dock's content in a scroll area that asks for the content's least height up to
    ``least`` px: beside other docks the dock keeps a useful share of the column (a bare
    scroll area could be squeezed to a few pixels) and scrolls the rest; its least width is
    the content's (no horizontal scrolling of the form)."""

    def __init__(self, content: QWidget, least: int = 240, parent=None):
        super().__init__(parent)
        self.least = least
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setWidget(content)

    def minimumSizeHint(self):  # noqa: N802 (Qt name)
        hint = super().minimumSizeHint()
        w = self.widget()
        if w is not None:
            m = w.minimumSizeHint()
            bar = self.verticalScrollBar().sizeHint().width()
            hint.setHeight(max(hint.height(), min(m.height(), self.least)))
            hint.setWidth(max(hint.width(), m.width() + bar))
        return hint


def scrolling_content(widget: QWidget) -> Tuple[QWidget, "DockScroll", Any]:
    """Give ``widget`` (a dock) its content in a :class:`DockScroll`: returns the content
    widget, the scroll area and the content's vertical layout. Beside other docks the content
    is taller than the dock and scrolls (squeezed below its minimum, a dock painted text over
    its plot and cut its rows)."""
    from qtpy.QtWidgets import QVBoxLayout
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    content = QWidget()
    scroll = DockScroll(content)
    outer.addWidget(scroll)
    return content, scroll, QVBoxLayout(content)


class CaseCombo(QComboBox):
    """Lists the cases open in the viewer; keeps itself up to date: on layers inserted,
    removed and renamed (the cohort browser puts the next case into the previous case's
    layers in place: new data, metadata and name, no insertion). A picked case that is no
    longer open gives way to the case whose layers changed last (the case now shown), else
    to the selected layer's case."""

    def __init__(self, viewer, parent=None):
        super().__init__(parent)
        self.viewer = viewer
        self._recent: Optional[str] = None       # the case whose layers came or changed last
        self.setToolTip("the case to work on (the result lands on this case)")
        events = viewer.layers.events
        events.inserted.connect(self._on_layers)
        events.removed.connect(self._on_layers)
        renamed = getattr(events, "renamed", None)     # napari's layer-list rename event
        if renamed is not None:
            renamed.connect(self._on_layers)
        name_axes_in_3d(viewer)       # every dock that works on a case has one of these
        self.refresh()

    def _on_layers(self, event: Any = None) -> None:
        kind = getattr(event, "type", None)
        layer = getattr(event, "value", None) if kind == "inserted" else None
        if kind == "renamed":
            try:
                layer = self.viewer.layers[event.index]
            except Exception:       # noqa: BLE001 - the list changed meanwhile
                layer = None
        rg = radiogen_meta(layer) if layer is not None else {}
        if rg.get("case_id") and not rg.get("result"):
            self._recent = rg["case_id"]
        self.refresh()

    def refresh(self, *_: Any) -> None:
        cur = self.currentText()
        ids = case_ids(self.viewer)
        if ids == [self.itemText(i) for i in range(self.count())]:
            return       # e.g. a result layer came or went: rebuilding would re-lay out the dock
        self.blockSignals(True)
        self.clear()
        self.addItems(ids)
        if cur in ids:
            self.setCurrentText(cur)
        elif self._recent in ids:
            self.setCurrentText(self._recent)
        elif self.viewer.layers.selection.active is not None:
            cid = radiogen_meta(self.viewer.layers.selection.active).get("case_id")
            if cid in ids:
                self.setCurrentText(cid)
        self.blockSignals(False)
        if self.currentText() != cur:        # the case changed: tell the dock (e.g. its model)
            self.currentIndexChanged.emit(self.currentIndex())
            self.currentTextChanged.emit(self.currentText())

    def case(self, include_labels: bool = True) -> Case:
        from ..core.errors import RadiogenError

        cid = self.currentText()
        if not cid:
            raise RadiogenError("no case is open: open a case with File > Open (napari-radiogen "
                                "reader) or File > Open Sample")
        case = case_from_layers(self.viewer.layers, cid, include_labels=include_labels)
        kinds = {radiogen_meta(l).get("kind") for l in self.viewer.layers
                 if radiogen_meta(l).get("case_id") == cid}
        if "slices" in kinds or (case.source and str(case.source).endswith((".h5", ".hdf5"))):
            case.kind = "slices"
        if case.kind == "slices" and case.source and not case.clinical:
            # a TCGA-LGG pack's age/sex live in the clinical.csv beside it (as on loading)
            from pathlib import Path

            from ..core.io.pack import clinical_row
            case.clinical = clinical_row(Path(case.source).parent / "clinical.csv",
                                         case.case_id)
        return case

    def case_or_notify(self, include_labels: bool = True) -> Optional[Case]:
        """The current case, or None after showing the reason (no case, unreadable layers)."""
        from napari.utils.notifications import show_error
        try:
            return self.case(include_labels)
        except Exception as e:  # a RadiogenError with a clear message
            show_error(str(e))
            return None


class StatusLine(QWidget):
    """A one-line status text (e.g. the current stage of a job) that is cheap to update.

    A QLabel in a layout asks the whole window to re-lay out on every new text, and with
    napari's OpenGL canvas in the window each extra repaint is composited by OpenGL (by the
    CPU under software rendering): about twice the cost of the repaint itself. Here the label
    has no layout around it (its container has a fixed height and places it by hand), so a new
    text repaints just the line."""

    def __init__(self, text: str = "", parent=None):
        super().__init__(parent)
        self._label = QLabel(text, self)
        self._label.setTextInteractionFlags(Qt.TextInteractionFlag.NoTextInteraction)
        self.setFixedHeight(self._label.fontMetrics().height() + 4)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setMinimumWidth(10)

    def resizeEvent(self, event) -> None:  # noqa: N802 (Qt name)
        self._label.setGeometry(0, 0, self.width(), self.height())
        super().resizeEvent(event)

    def setText(self, text: str) -> None:  # noqa: N802 (QLabel's name)
        self._label.setText(text)
        self.setToolTip(text)

    def text(self) -> str:
        return self._label.text()


def device_combo() -> QComboBox:
    c = QComboBox()
    c.addItems(["auto", "cpu", "cuda"])
    c.setToolTip("auto: the GPU when there is one; a CUDA out-of-memory falls back to the CPU")
    return c


def on_device(device: Optional[str], result: Any = None) -> str:
    """`` on cpu`` / `` on cuda``: where ``result`` ran (its ``device``: ``cpu`` after a CUDA
    out-of-memory fallback) or, for a result that does not say, the device a Device choice
    (``auto``...) stands for ("" when not known)."""
    ran = getattr(result, "device", None)
    if ran:
        return f" on {ran}"
    if not device:
        return ""
    try:
        from ..core.models import resolve_device
        return f" on {resolve_device(device)}"
    except Exception:      # noqa: BLE001 - the run itself said what was wrong with it
        return ""


def run_cancel_row(layout, on_run, on_cancel) -> Tuple[QPushButton, QPushButton]:
    """A Run / Cancel button row added to ``layout`` (Cancel disabled until a job runs)."""
    row = QHBoxLayout()
    run_btn, cancel_btn = QPushButton("Run"), QPushButton("Cancel")
    cancel_btn.setEnabled(False)
    run_btn.clicked.connect(on_run)
    cancel_btn.clicked.connect(on_cancel)
    row.addWidget(run_btn)
    row.addWidget(cancel_btn)
    layout.addLayout(row)
    return run_btn, cancel_btn


def reference_geometry(viewer, case_id: str) -> Optional[Geometry]:
    for layer in viewer.layers:
        rg = radiogen_meta(layer)
        if rg.get("case_id") == case_id and rg.get("geometry") is not None \
                and type(layer).__name__ == "Image" and not rg.get("result"):
            return rg.get("geometry")
    return None


@contextmanager
def _keep_selection(viewer, keep: bool = True) -> Iterator[None]:
    """Insert layers without making them the selected (active) layer.

    napari selects every inserted layer, which swaps the layer-controls panel in the main
    thread (about a fifth of the cost of adding a layer) and takes the user's selection away
    while they work; results arriving from a background job should do neither."""
    layers = viewer.layers
    prev = getattr(layers, "_activate_on_insert", None)
    if not keep or prev is None:
        yield
        return
    layers._activate_on_insert = False
    try:
        yield
    finally:
        layers._activate_on_insert = prev


def same_placement(layer, kw: Dict[str, Any]) -> bool:
    """Does ``layer`` sit where new layer data with kwargs ``kw`` would (the whole
    data-to-world transform: spacing, origin and rotation of the radiogen geometry, else
    scale/translate)? Then its data can be replaced in place."""
    old_g = radiogen_meta(layer).get("geometry")
    new_g = radiogen_meta(kw).get("geometry")
    if old_g is not None and new_g is not None:
        return bool(np.allclose(old_g.napari_affine(), new_g.napari_affine(), atol=1e-6))
    return (np.allclose(layer.scale, kw.get("scale", layer.scale))
            and np.allclose(layer.translate, kw.get("translate", layer.translate))
            and "rotate" not in kw and "affine" not in kw)


#: the patient side each world axis of a radiogen layer points to: layers are placed in LPS mm,
#: (z, y, x) order (see layers.geometry_kwargs)
PATIENT_AXES = ("S", "P", "L")


def mark_patient_axes(viewer) -> bool:
    """Show napari's axes overlay with each arrow named after the patient side it points to
    (:data:`PATIENT_AXES`), so a 3D view says where right and left are. Only for a 3D world
    whose axes still have napari's default names (``-3 -2 -1``, or ``0 1 2`` in older napari):
    names the user or another plugin gave are kept. Returns whether the names were set."""
    dims = viewer.dims
    if dims.ndim != 3:
        return False
    names = tuple(str(a) for a in dims.axis_labels)
    if names != PATIENT_AXES and names not in (("-3", "-2", "-1"), ("0", "1", "2")):
        return False
    dims.axis_labels = PATIENT_AXES
    viewer.axes.visible = True
    return True


#: viewers whose 2D/3D switch names the axes (:func:`name_axes_in_3d`), by id (an entry goes
#: with its viewer)
_AXES_FOLLOWED: Dict[int, Any] = {}


def name_axes_in_3d(viewer) -> None:
    """From now on, whenever ``viewer`` turns to 3D with a case open (napari's own 2D/3D
    button, or code), :func:`mark_patient_axes` names and shows its axes, as the Explain dock's
    *3D view* does. Once per viewer; the docks that work on a case call it."""
    ref = _AXES_FOLLOWED.get(id(viewer))
    if ref is not None and ref() is viewer:
        return
    key = id(viewer)
    viewer_ref = weakref.ref(viewer, lambda _: _AXES_FOLLOWED.pop(key, None))
    _AXES_FOLLOWED[key] = viewer_ref

    def on_ndisplay(event: Any = None) -> None:
        v = viewer_ref()
        if v is None or v.dims.ndisplay != 3:
            return
        if any(radiogen_meta(layer).get("case_id") for layer in v.layers):
            mark_patient_axes(v)
    viewer.dims.events.ndisplay.connect(on_ndisplay)


@contextmanager
def paint_later(viewer, when: bool = True) -> Iterator[None]:
    """Hold the viewer window's repaint until the next turn of the event loop (``when``).

    Adding a layer makes napari post a repaint of the window (its canvas, the new layer's
    controls, the layer list), which Qt runs straight after the addition, in the same turn:
    the main thread is then busy for both in one go. Held, the repaint runs in a later turn,
    so the event loop (input, timers) gets a turn between the two."""
    win = getattr(getattr(viewer, "window", None), "_qt_window", None)
    if not when or win is None or not win.updatesEnabled():
        yield
        return
    win.setUpdatesEnabled(False)
    try:
        yield
    finally:
        from qtpy.QtCore import QTimer

        def resume() -> None:
            try:
                win.setUpdatesEnabled(True)
            except RuntimeError:          # the window was closed meanwhile
                pass
        QTimer.singleShot(0, resume)


def draw_now(viewer) -> None:
    """Draw the viewer's canvas now (a synchronous repaint); nothing without a Qt window."""
    try:
        native = viewer.window._qt_viewer.canvas._scene_canvas.native
    except AttributeError:
        return
    native.repaint()


def remove_layers(viewer, layers) -> None:
    """Remove ``layers`` from ``viewer`` one at a time, drawing the canvas between two.

    Removing two or more layers with no draw in between (in one event-loop turn, or in a
    ``batched_update``) leaves vispy's GL state such that the next draw of a changed layer
    crashes the process in ``glDrawArrays`` on Mesa's software renderers (llvmpipe and
    softpipe; plain napari 0.9 shows it without this package; compare napari issues #8471
    and #6472). A repaint between two removals avoids it; it costs one draw per layer."""
    todo = [ly for ly in layers if ly in viewer.layers]
    for k, layer in enumerate(todo):
        if k:
            draw_now(viewer)
        viewer.layers.remove(layer)


def move_layer(layer, data, kw: Dict[str, Any]) -> bool:
    """Give ``layer`` new data of any shape (same number of dimensions) and the placement of
    layer kwargs ``kw`` (``scale``, ``translate``, ``rotate``, ``shear``, ``affine``: those
    absent are the identity), keeping its visuals and controls. Returns False, changing nothing, where it cannot (other ``ndim``).

    napari removes a layer with a full garbage collection (``gc.collect()`` in its canvas,
    about half a second with napari's heap) and inserts one with new visuals and controls:
    moving a layer costs a texture upload instead."""
    new = np.asarray(data) if not hasattr(data, "ndim") else data
    if new.ndim != layer.ndim:
        return False
    n = layer.ndim
    aff = kw.get("affine")
    aff = np.eye(n + 1) if aff is None else \
        np.asarray(getattr(aff, "affine_matrix", aff), dtype=float)
    scale = np.asarray(kw.get("scale", np.ones(n)), dtype=float)
    translate = np.asarray(kw.get("translate", np.zeros(n)), dtype=float)
    rotate = np.asarray(kw.get("rotate", np.eye(n)), dtype=float)
    shear = np.asarray(kw.get("shear", np.zeros(n * (n - 1) // 2)), dtype=float)
    quiet = _set_transform_quietly(layer, scale, translate, rotate, shear, aff)
    if not quiet:       # napari's public setters: each one updates the viewer (slower)
        layer.scale, layer.translate, layer.rotate = scale, translate, rotate
        layer.shear, layer.affine = shear, aff
    if tuple(layer.data.shape) == tuple(new.shape):
        set_layer_data(layer, data)
    else:
        layer.data = data
    if quiet:
        layer.events.affine()   # the canvas takes the new transform (one matrix update)
    return True


def placement(layer) -> Dict[str, Any]:
    """``layer``'s whole placement as layer kwargs (``scale``, ``translate``, ``rotate``,
    ``shear`` and ``affine``), for :func:`move_layer` to put it back."""
    return {"scale": np.array(layer.scale, float), "translate": np.array(layer.translate, float),
            "rotate": np.array(layer.rotate, float), "shear": np.array(layer.shear, float),
            "affine": np.array(layer.affine.affine_matrix, float)}


def _set_transform_quietly(layer, scale, translate, rotate, shear, aff) -> bool:
    """Set ``layer``'s transforms without napari's per-setter updates (each of the five
    setters recomputes the viewer's extent, dims and slices: about 15 ms apiece on a BraTS
    volume); the caller then sets the data, which updates them once. Uses napari's private
    transform chain; False where that is not as expected (another napari version)."""
    try:
        from napari.layers.utils.layer_utils import coerce_affine

        chain = layer._transforms
        d2p = chain["data2physical"]
        new_aff = coerce_affine(aff, ndim=layer.ndim, name="physical2world")
        d2p.scale, d2p.translate = np.asarray(scale), np.asarray(translate)
        d2p.rotate, d2p.shear = rotate, shear
        chain[2] = new_aff
        layer._clear_extent()
    except Exception:       # noqa: BLE001 - any mismatch: use the public setters
        return False
    return True


#: the key, in a result labels layer's ``radiogen`` metadata, that says the user edited it
#: (set on the layer's data events: :func:`segment_widget.track_edits`)
EDITED = "edited"


@contextmanager
def not_an_edit(layer) -> Iterator[None]:
    """Data the program writes into ``layer`` (a new result, a move to another grid, a
    rollback) is no edit of the user's: the layer's ``radiogen.edited`` flag, which its data
    event would set, is left as it was before the write (with the metadata the layer has)."""
    def rg():
        md = getattr(layer, "metadata", None)
        r = md.get("radiogen") if isinstance(md, dict) else None
        return r if isinstance(r, dict) else None
    before = rg()
    had = before is not None and EDITED in before
    flag = before.get(EDITED) if had else None
    try:
        yield
    finally:
        after = rg()
        if after is not None:
            if had:
                after[EDITED] = flag
            else:
                after.pop(EDITED, None)


#: the colormap (name) each image layer's content last asked for (:func:`build_layer`,
#: :func:`update_layer`): a layer whose colormap is another one was recoloured by the user
_ASKED_COLORMAP: "weakref.WeakKeyDictionary[Any, str]" = weakref.WeakKeyDictionary()


def _colormap_name(cmap: Any) -> Optional[str]:
    return cmap if isinstance(cmap, str) else getattr(cmap, "name", None)


def _ask_colormap(layer, cmap: Any) -> None:
    """Record the colormap ``layer``'s content asks for (see :func:`_follow_colormap`)."""
    name = _colormap_name(cmap)
    if name is not None:
        try:
            _ASKED_COLORMAP[layer] = name
        except TypeError:             # not weak-referenceable: nothing to remember it by
            pass


def _follow_colormap(layer, cmap: Any) -> bool:
    """An image layer given new content in place takes the colormap ``cmap`` that content asks
    for, as a new layer would; only where the content asks for the one its previous content
    asked for and the user picked another one, the user's colormap stays. Returns whether the
    colormap was set."""
    name = _colormap_name(cmap)
    if cmap is None or name is None or not hasattr(layer, "colormap"):
        return False
    try:
        before = _ASKED_COLORMAP.get(layer)
    except TypeError:                 # not weak-referenceable
        before = None
    _ask_colormap(layer, cmap)
    current = _colormap_name(layer.colormap)
    if current == name or (before == name and current != before):
        return False
    layer.colormap = cmap
    return True


def _follow_label_look(layer, kw: Dict[str, Any], names_before: Any) -> bool:
    """A labels layer whose new content names other classes (``radiogen.label_names``) takes
    that content's class names (``features``: what napari shows on hover) and colours; the
    same classes leave both alone (setting the colormap costs napari a shader rebuild)."""
    if radiogen_meta(kw).get("label_names") == names_before:
        return False
    changed = False
    if "features" in kw:
        layer.features = kw["features"]
        changed = True
    if "colormap" in kw:
        layer.colormap = kw["colormap"]
        changed = True
    return changed


def update_layer(layer, data, kw: Dict[str, Any], kind: str) -> Optional[bool]:
    """Give an existing ``layer`` new layer data ``(data, kw, kind)`` in place: its data (a
    texture upload when the shape and placement are those it has, else a move to the new grid
    with :func:`move_layer`), metadata, contrast limits (with the slider range the result
    asks for, :func:`apply_contrast`), name, and what the new content looks like where it
    differs from the previous content's: an image's colormap (:func:`_follow_colormap`: one the
    user picked stays where the content asks for the same as before), a labels layer's class
    names and colours when its classes change (:func:`_follow_label_look`). Its other visuals
    and controls stay (opacity, visibility: the user's): no removal (a full garbage
    collection in napari) and no insertion (new visuals and controls).

    Returns None, changing nothing, where ``layer`` cannot take the data (another layer type
    or number of dimensions); else whether it moved to another shape or grid."""
    if type(layer).__name__.lower() != kind or np.ndim(data) != layer.ndim:
        return None
    same = tuple(np.shape(layer.data)) == tuple(np.shape(data)) and same_placement(layer, kw)
    names_before = radiogen_meta(layer).get("label_names")
    if "metadata" in kw:
        layer.metadata = kw["metadata"]
    with not_an_edit(layer):
        if same:
            set_layer_data(layer, data)
        else:
            move_layer(layer, data, kw)
    if kind == "image":
        _follow_colormap(layer, kw.get("colormap"))
        apply_contrast(layer, kw.get("contrast_limits"))
    elif kind == "labels":
        _follow_label_look(layer, kw, names_before)
    if kw.get("name"):
        layer.name = kw["name"]
    return not same


def _selection_of(viewer, layer) -> Tuple[bool, bool]:
    """Whether ``layer`` is selected, and whether it is the active (only selected) layer."""
    sel = viewer.layers.selection
    return layer in sel, sel.active is layer


def replace_layer(viewer, data, kwargs: Dict[str, Any], layer_type: str, *,
                  select: bool = True, built: Any = None):
    """Add a layer, or update the existing one of the same name (reruns replace cleanly).

    An existing layer of the same type takes the new data in place (:func:`update_layer`),
    on another grid too; one of another type is removed and the new layer goes where it was
    in the layer list. ``select=False`` leaves the viewer's layer selection as it is (for
    results delivered by a background job); ``select=True`` selects the layer as napari
    selects a layer it adds, except that a replaced layer (updated in place or of another
    type) does not take the selection from another layer the user selected. Either way a
    layer of another type replacing a selected one is selected in its place.
    ``built``: the layer object made from the same data by :func:`build_layer` in a worker
    thread; it is added when the layer is new (else it is built here)."""
    name = kwargs.get("name")
    layers = viewer.layers
    at, was = None, (False, False)
    if name in layers:
        old = layers[name]
        # update in place: no new visuals or controls (adding a layer costs napari hundreds
        # of ms of main-thread work; replacing the data costs a texture upload)
        if update_layer(old, data, kwargs, layer_type) is not None:
            if select and not layers.selection:      # as napari selects a layer it adds
                layers.selection.active = old
            return old
        was, at = _selection_of(viewer, old), layers.index(old)
        with _keep_selection(viewer):
            layers.remove(name)
    if built is None or built.name != name:
        built = build_layer((data, kwargs, layer_type))
    if at is None:                       # a new layer: napari's own add
        with _keep_selection(viewer, not select):
            layers.append(built)
        return built
    with _keep_selection(viewer):
        layers.insert(min(at, len(layers)), built)
    selected, active = was
    if active or (select and not selected and not (set(layers.selection) - {built})):
        layers.selection.active = built
    elif selected:                      # one of several selected layers
        layers.selection.add(built)
    return built


#: a labels layer's drawing-tool overlays (napari's names); see :func:`defer_tool_overlays`
TOOL_OVERLAYS = ("polygon", "brush_stroke")


def defer_tool_overlays(layer) -> None:
    """Create a labels layer's polygon and brush overlays when the user first picks a tool
    other than pan/zoom, not when the layer is added.

    napari builds the vispy visuals of a layer's visible overlays in the main thread as the
    layer is inserted: for a labels layer's polygon and brush-stroke overlays that is a large
    part of the insertion (napari 0.9.2, software rendering), spent on tools a result layer may
    never be edited with. Overlays that are not visible are created
    by napari when they become visible, which this arranges on the first change to any mode
    but pan/zoom and transform (pick and fill included)."""
    overlays = getattr(layer, "_overlays", None)
    if overlays is None or getattr(layer, "events", None) is None \
            or not hasattr(layer.events, "mode"):
        return
    deferred = [overlays[k] for k in TOOL_OVERLAYS if k in overlays and overlays[k].visible]
    if not deferred:
        return
    for o in deferred:
        o.visible = False

    def on_mode(event=None) -> None:
        if str(layer.mode) in ("pan_zoom", "transform"):
            return
        layer.events.mode.disconnect(on_mode)
        for o in deferred:
            o.visible = True

    layer.events.mode.connect(on_mode)


def build_layer(layer_data: LayerData):
    """The napari layer object of one ``(data, kwargs, layer_type)`` tuple, built where it is
    called (a worker thread: constructing the layer, with its label table and colormap, is
    then not the main thread's work); labels layers get their tool
    overlays on demand (:func:`defer_tool_overlays`). The main thread only inserts it."""
    from napari.layers import Layer
    data, kw, kind = layer_data
    layer = Layer.create(data, dict(kw), kind)
    if kind == "labels":
        defer_tool_overlays(layer)
    elif kind == "image":
        _ask_colormap(layer, kw.get("colormap"))
    apply_contrast(layer)
    return layer


def apply_contrast(layer, limits=None) -> None:
    """Set an image layer's contrast ``limits`` (default: the ones it has) and its slider's
    range: the limits widened to the range a result asks for (``radiogen.contrast_range``;
    napari makes the range the given limits, so a heatmap shown from its floor could not be
    lowered). The range is set from these alone, so a layer moved to another case does not
    keep the previous data's range. Nothing without ``limits`` and a requested range."""
    rng = radiogen_meta(layer).get("contrast_range")
    if not hasattr(layer, "contrast_limits_range") or (limits is None and rng is None):
        return
    lo, hi = (float(v) for v in (layer.contrast_limits if limits is None else limits))
    rng = rng or (lo, hi)
    layer.contrast_limits_range = (min(float(rng[0]), lo), max(float(rng[1]), hi))
    layer.contrast_limits = (lo, hi)


def _owns_result_labels(layer) -> bool:
    """A result labels layer holding its own numpy array (see :func:`set_layer_data`)."""
    return (type(layer).__name__ == "Labels" and bool(radiogen_meta(layer).get("result"))
            and isinstance(layer.data, np.ndarray))


def set_layer_data(layer, data) -> None:
    """Give ``layer`` new data of the same shape.

    A result labels layer gets the values written into its own array and a refresh: setting
    ``Labels.data`` makes napari rebuild the layer's colormap shader, a GL program relink of
    20-60 ms of main thread on a software (Mesa) renderer, although the colormap did not
    change. Only result layers (``radiogen.result``) are written into: their arrays are the
    layer's own (:func:`labels_result_data` copies), never a case's or a result's."""
    cur = layer.data
    new = np.asarray(data)
    if _owns_result_labels(layer) and cur is not new and cur.flags.writeable \
            and cur.shape == new.shape and cur.dtype == new.dtype:
        np.copyto(cur, new)
        layer.refresh()
        return
    layer.data = data


def layer_data_snapshot(layer):
    """What :func:`set_layer_data` needs to put ``layer``'s data back later: a copy where the
    layer's array may be written into, else the array itself."""
    return layer.data.copy() if _owns_result_labels(layer) else layer.data


@dataclass
class PreparedResult:
    """A job's result with its layer's data and, for a new layer, its napari object, both made
    in the worker thread by :func:`prepared_results` (the main thread only adds them)."""
    result: Any
    layer_data: LayerData
    built: Any = None


def prepared_results(gen, layer_data_of: Callable[[Any], LayerData], existing) -> Iterator[Any]:
    """Relay a job's items (run it in the worker); each result (a non-Progress item) goes out
    as a :class:`PreparedResult` with ``layer_data_of(result)`` and, when its layer name is not
    in ``existing`` (the viewer's layer names read in the main thread when the job started),
    the layer object from :func:`build_layer`; an existing layer is updated in place."""
    from ..core.progress import Progress
    for item in gen:
        if item is not None and not isinstance(item, Progress):
            ld = layer_data_of(item)
            item = PreparedResult(item, ld, build_if_new(ld, existing))
        yield item


def build_if_new(layer_data: LayerData, existing) -> Any:
    """:func:`build_layer` for a layer whose name is not in ``existing`` (the viewer's layer
    names read in the main thread when the job started); None for one that exists, which the
    main thread updates in place."""
    return None if layer_data[1]["name"] in existing else build_layer(layer_data)


def add_layer_data(viewer, layer_data: LayerData, *, select: bool = False, built: Any = None):
    """Add (or update in place) one ``(data, kwargs, layer_type)`` tuple, e.g. one built in a
    worker thread by :func:`labels_result_data` / :func:`image_result_data` (``built``: its
    layer object from :func:`build_layer`); by default the user's layer selection is left
    alone."""
    data, kw, kind = layer_data
    # a new layer: the window's repaint after it in a turn of its own (see paint_later)
    with paint_later(viewer, built is not None or kw["name"] not in viewer.layers):
        return replace_layer(viewer, data, kw, kind, select=select, built=built)


class ResultLayers:
    """The layers one background run adds or replaces, so that a cancelled or failed run can
    leave the viewer as it found it: layers it added are removed, layers it replaced (a
    previous run's results) get their data, metadata, contrast and placement back (a result
    of another shape or grid moved the layer) and look (colormap; a labels layer's class names
    and colours), and a previous result that was swapped for a layer of another type is put
    back where it was, selected if it was."""

    def __init__(self, viewer):
        self.viewer = viewer
        self._before: Dict[str, Optional[Tuple[Any, ...]]] = {}
        self.names: List[str] = []

    def add(self, layer_data: LayerData, *, select: bool = False, built: Any = None):
        name = layer_data[1]["name"]
        if name not in self._before:
            layers = self.viewer.layers
            if name in layers:
                old = layers[name]
                self._before[name] = (old, layer_data_snapshot(old), dict(old.metadata),
                                      getattr(old, "contrast_limits", None), layers.index(old),
                                      placement(old), _look(old),
                                      _selection_of(self.viewer, old))
            else:
                self._before[name] = None
            self.names.append(name)
        entry = self._before[name]
        layer = add_layer_data(self.viewer, layer_data, select=select, built=built)
        if name not in self._before:
            # rolled back while the layer was being built (only if something processed Qt
            # events in there): keep what it replaced, so that the caller's next rollback
            # takes this one back too
            self._before[name] = entry
            self.names.append(name)
        return layer

    def rollback(self) -> None:
        layers = self.viewer.layers
        removed = 0
        reselect: List[Tuple[Any, Tuple[bool, bool]]] = []
        with _keep_selection(self.viewer):
            for name in reversed(self.names):
                prev = self._before[name]
                cur = layers[name] if name in layers else None
                if cur is not None and (prev is None or cur is not prev[0]):
                    if removed:
                        draw_now(self.viewer)       # see remove_layers
                    layers.remove(cur)              # added by the run, or a swapped-in layer
                    removed += 1
                if prev is None:
                    continue
                old, data, meta, clim, index, where, look, was = prev
                if old not in layers:
                    layers.insert(min(index, len(layers)), old)
                    reselect.append((old, was))
                _restore_look(old, look)
                old.metadata = meta
                now = placement(old)
                with not_an_edit(old):
                    if tuple(old.data.shape) != tuple(np.shape(data)) or any(
                            not np.allclose(now[k], where[k]) for k in where):
                        move_layer(old, data, where)    # moved by the run: back to its grid
                    else:
                        set_layer_data(old, data)
                if clim is not None:
                    old.contrast_limits = clim
        sel = layers.selection
        for old, (selected, active) in reselect:    # a swapped-out layer: its selection back
            if active and not (set(sel) - {old}):
                sel.active = old
            elif selected:
                sel.add(old)
        self.clear()

    def clear(self) -> None:
        self._before = {}
        self.names = []


def _look(layer) -> Dict[str, Any]:
    """What :func:`update_layer` may change of ``layer``'s look (for a rollback)."""
    look: Dict[str, Any] = {"colormap": getattr(layer, "colormap", None)}
    try:
        look["asked"] = _ASKED_COLORMAP.get(layer)
    except TypeError:
        look["asked"] = None
    if type(layer).__name__ == "Labels":
        look["features"] = layer.features
    return look


def _restore_look(layer, look: Dict[str, Any]) -> None:
    """Put back a look saved by :func:`_look` where it was changed (napari keeps the objects
    it was given or made: an unchanged look is not set again)."""
    if look.get("colormap") is not None and layer.colormap is not look["colormap"]:
        layer.colormap = look["colormap"]
    if "features" in look and layer.features is not look["features"]:
        layer.features = look["features"]
    if look.get("asked") is not None:
        _ask_colormap(layer, look["asked"])


def labels_result_data(labels: np.ndarray, geometry: Geometry, case_id: str, name: str,
                       **meta: Any) -> LayerData:
    """The layer data of a segmentation result (no viewer needed: safe in a worker thread).
    The array is a copy: the layer owns it (:func:`set_layer_data` writes into it)."""
    return labels_layer_data(Volume(np.array(labels), geometry), case_id=case_id, name=name,
                             sequence="segmentation", result=True, compact=True, **meta)


#: heatmap values below this are drawn black (nothing, in additive blending) at first: the
#: Explain dock's threshold slider starts there, and the Analyze dock and the cohort browser
#: show their heatmaps the same way
HEATMAP_FLOOR = 0.2


def image_result_data(array: np.ndarray, geometry: Geometry, case_id: str, name: str,
                      *, colormap: str = "inferno", opacity: float = 0.5,
                      contrast=(0.0, 1.0), synthetic: bool = False, sequence: str = "heatmap",
                      blending: str = "additive", visible: bool = True,
                      **meta: Any) -> LayerData:
    """The layer data of an image result (float32, contrast limits computed here when
    ``contrast`` is None); no viewer needed, so it can be built in a worker thread."""
    vol = Volume(np.asarray(array, np.float32), geometry, synthetic=synthetic)
    return image_layer_data(vol, case_id=case_id, sequence=sequence, name=name,
                            colormap=colormap, opacity=opacity, contrast=contrast,
                            blending=blending, visible=visible, result=not synthetic, **meta)


def add_image_result(viewer, array: np.ndarray, geometry: Geometry, case_id: str, name: str,
                     *, colormap: str = "inferno", opacity: float = 0.5,
                     contrast=(0.0, 1.0), synthetic: bool = False, sequence: str = "heatmap",
                     blending: str = "additive", **meta: Any):
    data, kw, kind = image_result_data(array, geometry, case_id, name, colormap=colormap,
                                       opacity=opacity, contrast=contrast, synthetic=synthetic,
                                       sequence=sequence, blending=blending, **meta)
    return replace_layer(viewer, data, kw, kind)


__all__ = ["CaseCombo", "StatusLine", "device_combo", "run_cancel_row", "replace_layer", "update_layer",
           "add_image_result", "add_layer_data", "labels_result_data",
           "image_result_data", "reference_geometry", "case_ids", "geometry_kwargs"]
