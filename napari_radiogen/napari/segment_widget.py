"""Tumour segmentation dock widget.

Thin: pick a case, a segmentation model (shipped + user, ``core.models.list_models``) and a
device; Run starts :func:`napari_radiogen.core.segment.segment` through
:func:`workers.start_job`. The labels layer lands on the case the run was started from (its id
is captured at Run), placed with that case's geometry and named ``<case_id> segmentation``.
Shows the volumes (mL) of WT / TC / ET and of each label, Dice / HD95 per region when the case
has a ground-truth labels layer, a 3D surfaces toggle (which centres the view on the result),
and exports of the labels (with the case geometry, via ``core.io``) and of the volume table
(CSV).

A rerun updates the result layer in place, unless the user edited it since it was made (painted,
filled, erased or set its data: :func:`track_edits` flags it in its ``radiogen`` metadata): the
edited layer is then kept, renamed ``<name> (edited)`` and hidden, the new result comes as a
new layer, and the status says so.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
from qtpy.QtWidgets import (QCheckBox, QComboBox, QFileDialog, QFormLayout, QHBoxLayout,
                            QLabel, QPushButton, QTableWidget, QTableWidgetItem, QVBoxLayout,
                            QWidget)

from ._common import (EDITED, CaseCombo, add_layer_data, build_layer, closed_case_note,
                      device_combo, labels_result_data, prepared_results, run_cancel_row)
from .layers import LayerData
from .workers import start_job

VOLUME_ROWS = [("WT", "whole tumour (1+2+4)"), ("TC", "tumour core (1+4)"),
               ("ET", "enhancing tumour (4)"), ("label_1", "label 1 necrotic/non-enh. core"),
               ("label_2", "label 2 oedema"), ("label_4", "label 4 enhancing")]


@dataclass
class SegmentInputs:
    case_id: str
    model: str
    device: str = "auto"


def _fit_table(table) -> None:
    """Columns share the dock's width (the first takes the rest) and every row is shown: no
    cut-off labels, no scrollbars for six rows."""
    from qtpy.QtWidgets import QAbstractScrollArea, QHeaderView
    h = table.horizontalHeader()
    h.setSectionResizeMode(0, QHeaderView.Stretch)
    for c in range(1, table.columnCount()):
        h.setSectionResizeMode(c, QHeaderView.ResizeToContents)
    table.setSizeAdjustPolicy(QAbstractScrollArea.AdjustToContents)
    table.setWordWrap(True)


class SegmentationWidget(QWidget):
    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self._job = None
        self._models: Dict[str, Any] = {}
        self._cards: Dict[str, Dict[str, Any]] = {}
        self.result = None
        self.result_case_id: Optional[str] = None
        self.result_layer = None

        lay = QVBoxLayout(self)
        form = QFormLayout()
        self.case_combo = CaseCombo(napari_viewer)
        self.model_combo = QComboBox()
        self.model_combo.setToolTip("3D models segment 4-sequence volumes into labels 1/2/4; "
                                    "2D models segment slice packs (FLAIR abnormality)")
        self.device = device_combo()
        form.addRow("Case", self.case_combo)
        form.addRow("Model", self.model_combo)
        form.addRow("Device", self.device)
        lay.addLayout(form)
        self.run_button, self.cancel_button = run_cancel_row(lay, self.run, self.cancel)
        self.progress_label = QLabel("")
        self.progress_label.setWordWrap(True)
        lay.addWidget(self.progress_label)

        self.volume_table = QTableWidget(len(VOLUME_ROWS), 2)
        self.volume_table.setHorizontalHeaderLabels(["region / label", "volume (mL)"])
        for i, (_, title) in enumerate(VOLUME_ROWS):
            self.volume_table.setItem(i, 0, QTableWidgetItem(title))
            self.volume_table.setItem(i, 1, QTableWidgetItem("-"))
        self.volume_table.verticalHeader().setVisible(False)
        _fit_table(self.volume_table)
        lay.addWidget(self.volume_table)
        self.metrics_table = QTableWidget(0, 3)
        self.metrics_table.setHorizontalHeaderLabels(["region", "Dice", "HD95 (mm)"])
        self.metrics_table.verticalHeader().setVisible(False)
        self.metrics_table.setToolTip("agreement with the case's ground-truth labels layer")
        self.metrics_table.setVisible(False)
        _fit_table(self.metrics_table)
        lay.addWidget(self.metrics_table)

        self.surface_check = QCheckBox("3D surfaces")
        self.surface_check.setToolTip("show the segmentation as iso-surfaces in the 3D view")
        self.surface_check.toggled.connect(self.set_3d)
        lay.addWidget(self.surface_check)
        row2 = QHBoxLayout()
        self.export_labels_button = QPushButton("Export labels...")
        self.export_csv_button = QPushButton("Export volumes CSV...")
        self.export_labels_button.clicked.connect(self._export_labels_dialog)
        self.export_csv_button.clicked.connect(self._export_csv_dialog)
        self.export_labels_button.setEnabled(False)
        self.export_csv_button.setEnabled(False)
        row2.addWidget(self.export_labels_button)
        row2.addWidget(self.export_csv_button)
        lay.addLayout(row2)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        lay.addWidget(self.status)
        lay.addStretch(1)
        self.refresh_models()
        self.case_combo.currentIndexChanged.connect(self._pick_model_for_case)
        napari_viewer.layers.events.removed.connect(self._on_layer_removed)

    def _on_layer_removed(self, event) -> None:
        """The result's labels layer deleted: Export writes the result as the model gave it
        (edits made on the layer are gone with it), and the status says so."""
        if self.result is None or event.value is not self.result_layer:
            return
        self.result_layer = None
        self.status.setText(f"{self.result_case_id}: the segmentation layer was removed; "
                            f"Export writes the model's labels as they came (without edits)")

    # -- models --------------------------------------------------------------------------------
    def refresh_models(self) -> None:
        from ..core.models import list_models
        from ..core.segment import TASK
        ms = list_models(TASK)
        self._cards = {m["name"]: m["card"] for m in ms}
        preferred = ("seg_brats_attunet2mm", "seg_brats_attunet", "seg_lgg_segresnet2d",
                     "seg_brats_segresnet")
        names = sorted((m["name"] for m in ms),
                       key=lambda n: (n not in preferred, preferred.index(n)
                                      if n in preferred else 0, n))
        self.model_combo.clear()
        self.model_combo.addItems(names)
        self._pick_model_for_case()
        if not names:
            self.status.setText("No segmentation model installed.")

    def _pick_model_for_case(self, *_: Any) -> None:
        """Preselect a model of the right kind (3D for volumes, 2D for slice packs)."""
        from .layers import radiogen_meta
        cid = self.case_combo.currentText()
        kinds = {radiogen_meta(l).get("case_kind") for l in self.viewer.layers
                 if radiogen_meta(l).get("case_id") == cid}
        want = 2 if "slices" in kinds else 3
        cur = self._cards.get(self.model_combo.currentText(), {})
        if int(cur.get("dims", 3)) == want:
            return
        for i in range(self.model_combo.count()):
            if int(self._cards.get(self.model_combo.itemText(i), {}).get("dims", 3)) == want:
                self.model_combo.setCurrentIndex(i)
                return

    def _load_model(self, name: str, device: str):
        from ..core.models import load_model
        from ..core.segment import TASK
        key = (name, device)
        if key not in self._models:
            self._models[key] = load_model(name, task=TASK, device=device)
        return self._models[key]

    # -- run -----------------------------------------------------------------------------------
    def inputs(self) -> SegmentInputs:
        return SegmentInputs(case_id=self.case_combo.currentText(),
                             model=self.model_combo.currentText(),
                             device=self.device.currentText())

    def run(self):
        from ..core.models import resolve_device
        from ..core.segment import segment

        if self._job is not None and not self._job.done:
            return self._job
        inp = self.inputs()
        if not inp.model:
            from napari.utils.notifications import show_error
            self.status.setText("no segmentation model is installed")
            show_error("Tumour segmentation: no segmentation model is installed")
            return None
        case = self.case_combo.case_or_notify(include_labels=True)
        if case is None:
            return None
        case_id = case.case_id          # captured now: the result lands on this case
        self._clear_results()           # nothing of an earlier run stays shown or exportable
        dev = resolve_device(inp.device)

        # layer names as the run starts (main thread): a new result layer is built, napari
        # object included, in the worker; an existing one is updated in place
        existing = {layer.name for layer in self.viewer.layers}

        def factory(token):
            model = self._load_model(inp.model, dev)
            return prepared_results(segment(case, model, device=dev, cancel=token),
                                    lambda res: result_layer_data(res, case_id), existing)

        self.status.setText(f"segmenting {case_id} with {inp.model} ...")
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self._job = start_job(factory, name=f"Segmentation of {case_id}",
                              on_result=lambda r: self._on_result(r, case_id),
                              on_progress=self._on_progress, on_finished=self._on_finished,
                              on_error=self._on_error, viewer=self.viewer, owner=self)
        return self._job

    def cancel(self) -> None:
        if self._job is not None:
            self._job.cancel()

    def _clear_results(self) -> None:
        self.result = None
        self.result_layer = None
        self.export_labels_button.setEnabled(False)
        self.export_csv_button.setEnabled(False)
        for i in range(self.volume_table.rowCount()):
            item = self.volume_table.item(i, 1)
            if item is not None:
                item.setText("-")
        self.metrics_table.setRowCount(0)
        self.metrics_table.setVisible(False)

    def _on_progress(self, p) -> None:
        self.progress_label.setText(str(p))

    def _on_error(self, exc) -> None:
        from ..core.errors import error_text
        self.status.setText(error_text(exc))     # a problem with the input: its message only

    def _on_finished(self, job) -> None:
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.progress_label.setText("")      # the status line says how it ended
        if job.cancelled:
            self.status.setText("cancelled")

    def _on_result(self, prepared, case_id: str) -> None:
        if prepared is None:
            return
        res = prepared.result
        self.result = res
        self.result_case_id = case_id
        # a layer of that name the user edited is kept (renamed, hidden), never written over
        kept = set_aside_edited(self.viewer, prepared.layer_data[1]["name"])
        built = prepared.built
        if kept is not None and built is None:
            built = build_layer(prepared.layer_data)
        self.result_layer = add_layer_data(self.viewer, prepared.layer_data, select=True,
                                           built=built)
        track_edits(self.result_layer)
        self._fill_tables(res)
        self.export_labels_button.setEnabled(True)
        self.export_csv_button.setEnabled(True)
        if self.surface_check.isChecked():
            self.set_3d(True)
        msg = f"{case_id}: done in {res.timings.get('total', 0):.1f} s on {res.device}"
        msg += closed_case_note(self.viewer, case_id)
        if kept is not None:
            msg += (f"; your edits of the previous segmentation are kept in the hidden layer "
                    f"'{kept}'; the new result is a new layer")
        if res.warnings:
            msg += "; " + "; ".join(res.warnings)
        self.status.setText(msg)

    def _fill_tables(self, res) -> None:
        for i, (key, title) in enumerate(VOLUME_ROWS):
            v = res.volumes_ml.get(key)
            if res.kind == "slices" and key != "WT":
                v = None
            if res.kind == "slices" and key == "WT":
                self.volume_table.item(i, 0).setText("FLAIR abnormality (nominal spacing)")
            else:
                self.volume_table.item(i, 0).setText(title)
            self.volume_table.item(i, 1).setText("-" if v is None else f"{v:.2f}")
        m = res.metrics or {}
        self.metrics_table.setRowCount(len(m))
        for i, (r, d) in enumerate(m.items()):
            hd = d.get("hd95_mm")
            self.metrics_table.setItem(i, 0, QTableWidgetItem(r))
            self.metrics_table.setItem(i, 1, QTableWidgetItem(f"{d['dice']:.3f}"))
            self.metrics_table.setItem(i, 2, QTableWidgetItem(
                "-" if hd is None or not np.isfinite(hd) else f"{hd:.1f}"))
        self.metrics_table.setVisible(bool(m))

    # -- 3D ------------------------------------------------------------------------------------
    SURFACE_BACKDROP_OPACITY = 0.25

    def set_3d(self, on: bool) -> None:
        """Tumour regions as surfaces in napari's 3D view, the camera centred on the result and
        zoomed to fit it (other cases open elsewhere in world space would otherwise leave it
        off-centre or tiny; their layers are left as they are). The case's visible image volumes
        are dimmed meanwhile (their additive MIP over the surfaces washed them out to white)
        and get their opacity back when the view returns to 2D."""
        from napari.layers import Image

        from .layers import radiogen_meta
        layer = self.result_layer
        dimmed = getattr(self, "_dimmed", {})
        if on:
            # the view is fitted on entering 3D and for a new result layer, not when a rerun
            # updates the shown layer in place (the user's 3D camera stays as they left it)
            refit = self.viewer.dims.ndisplay != 3 or getattr(self, "_fitted", None) is not layer
            self.viewer.dims.ndisplay = 3
            if layer is not None and layer in self.viewer.layers:
                try:
                    layer.rendering = "iso_categorical"
                except Exception:  # older napari
                    pass
                cid = radiogen_meta(layer).get("case_id")
                for ly in self.viewer.layers:
                    if isinstance(ly, Image) and ly.visible and ly not in dimmed \
                            and radiogen_meta(ly).get("case_id") == cid \
                            and ly.opacity > self.SURFACE_BACKDROP_OPACITY:
                        dimmed[ly] = ly.opacity
                        ly.opacity = self.SURFACE_BACKDROP_OPACITY
                if refit:
                    fit_view_to(self.viewer, layer)
                    self._fitted = layer
        else:
            self.viewer.dims.ndisplay = 2
            for ly, opacity in dimmed.items():
                if ly in self.viewer.layers and ly.opacity == self.SURFACE_BACKDROP_OPACITY:
                    ly.opacity = opacity             # unless the user changed it meanwhile
            dimmed = {}
            self._fitted = None
        self._dimmed = dimmed

    # -- export --------------------------------------------------------------------------------
    def volume_rows(self) -> List[Dict[str, Any]]:
        res = self.result
        if res is None:
            return []
        row: Dict[str, Any] = {"case_id": self.result_case_id, "model": res.model,
                               "kind": res.kind}
        for k, v in res.volumes_ml.items():
            row[f"{k}_ml"] = round(float(v), 4)
        for r, d in (res.metrics or {}).items():
            row[f"dice_{r}"] = round(float(d["dice"]), 4)
            if d.get("hd95_mm") is not None:
                row[f"hd95_{r}_mm"] = d["hd95_mm"]
        return [row]

    def export_csv(self, path) -> Path:
        from ..core.errors import RadiogenError
        rows = self.volume_rows()
        if not rows:
            raise RadiogenError("nothing to export: run a segmentation first")
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        return p

    def export_labels(self, path) -> Path:
        """Write the (possibly edited) labels layer with the case geometry."""
        from ..core.errors import RadiogenError
        from ..core.io import write_pack_mask, write_volume
        res = self.result
        if res is None:
            raise RadiogenError("nothing to export: run a segmentation first")
        data = np.asarray(self.result_layer.data if self.result_layer is not None
                          and self.result_layer in self.viewer.layers else res.labels)
        p = Path(path)
        if p.suffix in (".h5", ".hdf5"):
            return write_pack_mask(data, p, attrs={"model": res.model})
        return write_volume(data, res.geometry, p, labels=True)

    def _export_labels_dialog(self) -> None:
        default = f"{self.result_case_id}_seg" + (".h5" if self.result and
                                                  self.result.kind == "slices" else ".nii.gz")
        path, _ = QFileDialog.getSaveFileName(self, "Export labels", default,
                                              "NIfTI (*.nii.gz *.nii);;NRRD (*.nrrd);;"
                                              "MetaImage (*.mha);;HDF5 pack mask (*.h5)")
        if path:
            self.status.setText(f"labels written to {self.export_labels(path)}")

    def _export_csv_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export volume table",
                                              f"{self.result_case_id}_volumes.csv", "CSV (*.csv)")
        if path:
            self.status.setText(f"volume table written to {self.export_csv(path)}")


def result_layer_data(res, case_id: str) -> LayerData:
    """The labels layer of a segmentation result, named after the model (never the name of the
    case's own expert labels layer). Pure numpy: runs in the worker."""
    meta = {"model": res.model, "kind": res.kind, "synthetic_inputs": list(res.synthetic_inputs)}
    if res.kind == "slices":
        meta["label_names"] = {0: "background", 1: "FLAIR abnormality"}
    name = f"{case_id} segmentation ({res.model})"
    if res.synthetic_inputs:        # said in the layer list too: ET/TC rest on a synthetic T1ce
        name += f" from synthetic {'+'.join(res.synthetic_inputs)}"
    return labels_result_data(res.labels, res.geometry, case_id, name, **meta)


# EDITED (from _common): the key, in a result labels layer's ``radiogen`` metadata, that says
# the user edited it; the layer helpers keep it as it was when they write data

#: a labels layer's events that mean its labels changed: a brush / fill / eraser stroke
#: (``paint``, ``labels_update``) or new data set on it (``data``)
EDIT_EVENTS = ("paint", "labels_update", "data")


def _on_layer_edit(event) -> None:
    layer = getattr(event, "source", None)
    meta = getattr(layer, "metadata", None)
    rg = meta.get("radiogen") if isinstance(meta, dict) else None
    if isinstance(rg, dict) and not rg.get(EDITED):
        rg[EDITED] = True


def track_edits(layer) -> None:
    """Flag ``layer`` as edited (``radiogen.edited``) from now on when its labels change (a cheap
    flag set by the layer's events, not a comparison of arrays); the flag starts False. Call it
    after the layer got its result (an update in place sets its data, which counts as an
    edit)."""
    if layer is None:
        return
    for name in EDIT_EVENTS:
        emitter = getattr(layer.events, name, None)
        if emitter is not None:
            emitter.connect(_on_layer_edit)      # connected once however often it is called
    rg = layer.metadata.get("radiogen") if isinstance(layer.metadata, dict) else None
    if isinstance(rg, dict):
        rg[EDITED] = False


def set_aside_edited(viewer, name: str) -> Optional[str]:
    """A result labels layer named ``name`` that the user edited (see :func:`track_edits`) is
    renamed ``<name> (edited)`` (or ``(edited 2)``...) and hidden, so that a rerun adds its
    result beside it instead of writing over the edits; returns the new name, or None when
    there is no such layer or it was not edited (a rerun then updates it in place)."""
    if not name or name not in viewer.layers:
        return None
    old = viewer.layers[name]
    meta = old.metadata.get("radiogen") if isinstance(old.metadata, dict) else None
    if not isinstance(meta, dict) or not meta.get(EDITED):
        return None
    new = f"{name} (edited)"
    n = 2
    while new in viewer.layers:
        new = f"{name} (edited {n})"
        n += 1
    old.name = new
    old.visible = False
    return new


def fit_view_to(viewer, layer) -> None:
    """Centre the camera on ``layer``'s world extent and zoom so that it fills the canvas (in
    the current 2D/3D display); the layers themselves are left as they are."""
    try:
        viewer.fit_to_view(layers=[layer])
        return
    except TypeError:            # an older napari without ``layers=``: centre only
        pass
    ext = np.asarray(layer.extent.world, dtype=float)
    mid = (ext[0] + ext[1]) / 2
    viewer.camera.center = tuple(mid[list(viewer.dims.displayed)])
