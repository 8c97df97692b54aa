"""Cohort browser: the cases of a folder with their status, next/previous, Analyze all.

Analyze all runs ``core.pipeline.analyze_cohort`` in one background job: it keeps going past a
bad case (shown as failed with its message), writes ``<out>/summary.csv`` and skips cases whose
inputs and models have not changed since their cached result.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from qtpy.QtWidgets import (QFileDialog, QHBoxLayout, QLabel, QLineEdit, QListWidget,
                            QListWidgetItem, QProgressBar, QPushButton, QVBoxLayout, QWidget)

from ..core.pipeline import AnalysisOptions, Analyzer, CohortItem, analyze_cohort
import numpy as np

from ._common import _keep_selection, build_layer, move_layer, same_placement
from .layers import radiogen_meta
from .workers import start_job

STATUS_MARK = {"pending": "·", "done": "✓", "cached": "✓ (cached)", "failed": "✗",
               "cancelled": "–", "open": "▶"}


@dataclass
class CohortInputs:
    folder: str
    out_dir: str
    use_cache: bool = True


def default_out_dir(folder: str) -> str:
    """Beside the cohort folder, never inside it (results inside would be listed as cases on
    the next visit)."""
    p = Path(folder).expanduser().resolve()
    return str(p.parent / f"{p.name}-radiogen")


class CohortWidget(QWidget):
    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.cases: List[Path] = []
        self.status: dict = {}
        self.open_errors: dict = {}      # path -> why the case could not be opened
        self.current: int = -1
        self.job = None
        self.items: List[CohortItem] = []
        self.analyzer: Optional[Analyzer] = None
        self.open_job = None
        self._pending: Optional[int] = None           # the case being opened (or last tried)
        self._told: set = set()                      # cases whose warnings were said once

        self.folder = QLineEdit()
        self.folder.setPlaceholderText("folder of cases (case folders or .h5 packs)")
        browse = QPushButton("…")
        browse.clicked.connect(self._browse)
        self.out = QLineEdit()
        self.out.setPlaceholderText("output folder (default: <folder>-radiogen beside it)")
        load = QPushButton("List cases")
        load.clicked.connect(lambda: self.load_folder(self.folder.text()))
        self.list = QListWidget()
        self.list.itemDoubleClicked.connect(lambda it: self.open_case(self.list.row(it)))
        self.prev_btn = QPushButton("◀ Previous")
        self.next_btn = QPushButton("Next ▶")
        self.prev_btn.clicked.connect(lambda: self.step(-1))
        self.next_btn.clicked.connect(lambda: self.step(+1))
        self.run_btn = QPushButton("Analyze all")
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.run_btn.clicked.connect(self.analyze_all)
        self.cancel_btn.clicked.connect(self.cancel)
        self.bar = QProgressBar()
        self.info = QLabel("")
        self.info.setWordWrap(True)

        lay = QVBoxLayout(self)
        r = QHBoxLayout()
        r.addWidget(self.folder)
        r.addWidget(browse)
        lay.addLayout(r)
        lay.addWidget(self.out)
        lay.addWidget(load)
        lay.addWidget(self.list)
        r = QHBoxLayout()
        r.addWidget(self.prev_btn)
        r.addWidget(self.next_btn)
        lay.addLayout(r)
        r = QHBoxLayout()
        r.addWidget(self.run_btn)
        r.addWidget(self.cancel_btn)
        lay.addLayout(r)
        lay.addWidget(self.bar)
        lay.addWidget(self.info)

    def _browse(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Cohort folder")
        if d:
            self.folder.setText(d)
            self.load_folder(d)

    def inputs(self) -> CohortInputs:
        folder = self.folder.text().strip()
        return CohortInputs(folder=folder, out_dir=self.out.text().strip()
                            or default_out_dir(folder))

    def load_folder(self, folder: str) -> List[Path]:
        from napari.utils.notifications import show_error

        from ..core.errors import RadiogenError
        from ..core.io import list_cases
        self.folder.setText(str(folder))
        if not str(folder).strip():          # not the working directory by accident
            show_error("choose a cohort folder first")
            self.cases = []
            return self.cases
        try:
            self.cases = list_cases(folder)
        except RadiogenError as e:
            show_error(str(e))
            self.cases = []
            self.status, self.open_errors, self.current, self._pending = {}, {}, -1, None
            self._refresh()
            self.info.setText(str(e))               # stays in the panel, not only a toast
            return self.cases
        self.status = {str(c): "pending" for c in self.cases}
        self.open_errors = {}
        self.current = -1
        self._pending = None
        self._refresh()
        self.out.setPlaceholderText(f"output folder (default: {default_out_dir(folder)})")
        self.info.setText(f"{len(self.cases)} case(s)")
        return self.cases

    def _refresh(self) -> None:
        self.list.clear()
        for i, c in enumerate(self.cases):
            st = self.status.get(str(c), "pending")
            mark = STATUS_MARK.get(st, st)
            text = f"{mark}  {c.name}" + ("   ◀ open" if i == self.current else "")
            it = QListWidgetItem(text)
            msg = next((x.message for x in self.items if x.path == str(c) and x.message),
                       self.open_errors.get(str(c), ""))
            if msg:
                it.setToolTip(msg)
            self.list.addItem(it)

    # -- browsing -------------------------------------------------------------------------------
    def step(self, d: int):
        if not self.cases:
            return None
        if self.opening:
            return self.open_job                     # one case opens at a time
        target = self.current if self._pending is None else self._pending
        self._pending = (target + d) % len(self.cases)
        job = self.open_case(self._pending)
        return job

    def open_case(self, i: int):
        """Open case ``i`` in the viewer, replacing the previously opened cohort case; a case
        the cohort job has analysed comes with its results (segmentation, heatmaps) from the
        output folder. The case is read and its layers are built in a worker; the main thread
        swaps them in when it has loaded, updating the previous case's layers in place where
        the grids match (a bad case keeps the current one open). Returns the Job."""
        from ..core.progress import Progress

        path = self.cases[i]
        out_dir = self._results_dir()
        n = len(self.cases)
        self.info.setText(f"opening {path.name} ({i + 1}/{n}) ...")

        tell = str(path) not in self._told
        self._told.add(str(path))

        def gen(tok):
            yield Progress("open", 0, 1, path.name)
            yield prepare_case_layers(path, out_dir, cancel=tok, tell=tell)

        def show(prepared):
            swap_cohort_layers(self.viewer, prepared)
            self.current = i
            self._refresh()
            extra = f", with its results from {out_dir}" if prepared.n_results else ""
            self.info.setText(f"{path.name} ({i + 1}/{n}){extra}")

        def failed(exc):
            from ..core.errors import error_text
            self.status[str(path)] = "failed"
            self.open_errors[str(path)] = error_text(exc)     # the item's tooltip says why
            self._refresh()
            self.info.setText(f"{path.name} could not be opened: {error_text(exc)}")

        self.open_job = start_job(gen, name=f"Open {path.name}", on_result=show,
                                  on_error=failed, owner=self, viewer=self.viewer,
                                  progress_bar=False)
        return self.open_job

    @property
    def opening(self) -> bool:
        """A case is being read (its layers go in when the job delivers them)."""
        return self.open_job is not None and not self.open_job.done

    def _results_dir(self) -> Optional[str]:
        """Where this widget's cohort job writes (or wrote); None before a folder is chosen."""
        out = getattr(self, "_out_dir", None)
        if out:
            return out
        return self.inputs().out_dir if self.folder.text().strip() else None

    # -- batch ------------------------------------------------------------------------------------
    def analyze_all(self, use_cache: bool = True):
        if not self.cases:
            self.load_folder(self.folder.text())
        if not self.cases or (self.job is not None and not self.job.done):
            return None
        inp = self.inputs()
        self.analyzer = self.analyzer or Analyzer(AnalysisOptions())
        self.items = []
        self.bar.setRange(0, len(self.cases))
        self.run_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        cases, analyzer = list(self.cases), self.analyzer
        self._out_dir = inp.out_dir          # where this job writes (the field may change)
        self.job = start_job(
            lambda tok: analyze_cohort(cases, inp.out_dir, analyzer=analyzer,
                                       use_cache=use_cache, render=False, cancel=tok),
            name="Analyze cohort", on_progress=self._progress, on_yield=self._item,
            on_finished=self._finished, owner=self, viewer=self.viewer)
        return self.job

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()

    def _progress(self, p) -> None:
        if self.job is None or self.job.done:      # a late update must not hide the summary
            return
        self.bar.setValue(p.done)
        self.info.setText(p.message)

    def _item(self, item) -> None:
        if isinstance(item, CohortItem):
            self.items.append(item)
            self.status[item.path] = item.status
            self._refresh()

    def _finished(self, job) -> None:
        self.run_btn.setEnabled(True)
        self.cancel_btn.setEnabled(False)
        n_fail = sum(i.status == "failed" for i in self.items)
        out = getattr(self, "_out_dir", None) or self.inputs().out_dir
        if job.cancelled:
            # the cases the job did not reach are not pending any more: the run was cancelled
            for c in self.cases:
                if self.status.get(str(c), "pending") == "pending":
                    self.status[str(c)] = "cancelled"
            self._refresh()
            self.info.setText(f"cancelled after {len(self.items)} of {len(self.cases)} "
                              f"case(s)")
        else:
            self.bar.setValue(self.bar.maximum())
            self.info.setText(f"{len(self.items)} case(s), {n_fail} failed; summary: "
                              f"{Path(out) / 'summary.csv'}")


# -- opening a case (worker: read, build; main thread: swap) -------------------------------------
@dataclass
class PreparedCase:
    """A cohort case's layers, data and napari objects, made in the worker."""
    case_id: str
    layer_data: List[Tuple[Any, Dict[str, Any], str]] = field(default_factory=list)
    built: List[Any] = field(default_factory=list)
    n_results: int = 0


def result_layer_data_from(out_dir: Optional[str], case) -> List[Tuple[Any, Dict[str, Any], str]]:
    """The layer data of the results a cohort job wrote for ``case`` under
    ``out_dir/<case_id>/`` (``analysis.json``: its segmentation and heatmap volumes), named as
    the Segment and Explain widgets name theirs; nothing when the case has not been analysed.
    Files whose grid is not the case's are left out."""
    import json

    from ..core.io import load_volume
    from .reader import read_volume_file

    if not out_dir:
        return []
    d = Path(out_dir) / case.case_id
    try:
        info = json.loads((d / "analysis.json").read_text())
    except (OSError, ValueError):
        return []
    files = info.get("files") or {}
    models = info.get("models") or {}
    g = case.geometry
    out: List[Tuple[Any, Dict[str, Any], str]] = []
    seg = files.get("segmentation")
    if seg and str(seg).endswith((".nii.gz", ".nii")):
        try:
            vol = load_volume(d / Path(seg).name, labels=True)
        except Exception:          # a file removed or damaged since: the case still opens
            vol = None
        if vol is not None and vol.geometry.same_grid(g):
            # the Segment widget's layer of that result (its name, metadata)
            from types import SimpleNamespace
            from .segment_widget import result_layer_data
            res = SimpleNamespace(model=models.get("segmentation") or "model", kind="volume",
                                  synthetic_inputs=list(info.get("synthetic_inputs") or []),
                                  labels=vol.array, geometry=vol.geometry)
            out.append(result_layer_data(res, case.case_id))
    for key, f in files.items():
        if not key.startswith("heatmap_") or not str(f).endswith((".nii.gz", ".nii")):
            continue
        try:
            ld = read_volume_file(d / Path(f).name, tell=False)   # on the case's shown grid
        except Exception:
            continue
        for data, kw, kind in ld:
            if tuple(np.shape(data)) == tuple(g.shape):
                out.append((data, kw, kind))
    return out


def prepare_case_layers(path, out_dir: Optional[str] = None, cancel=None,
                        tell: bool = True) -> PreparedCase:
    """Read the case at ``path`` and build its layers (and those of its results under
    ``out_dir``, if any) for :func:`swap_cohort_layers`; runs in the worker. ``tell``: say
    what the user must know about the case's files and grids (napari warnings), as the
    reader does; the browser says it the first time a case is opened."""
    from ..core.io import load_case
    from ..core.progress import check
    from .layers import case_to_layer_data, notify
    from .reader import _mark_synthetic_layers

    case = load_case(path)
    check(cancel)
    if tell:
        for w in case.meta.get("warnings") or []:
            notify(f"{case.case_id}: {w}")
    lds = _mark_synthetic_layers(case, case_to_layer_data(case, source=str(path),
                                                          notify_user=tell))
    results = result_layer_data_from(out_dir, case)
    prep = PreparedCase(case.case_id, n_results=len(results))
    for data, kw, kind in lds + results:
        kw["metadata"]["radiogen"]["cohort"] = True
        prep.layer_data.append((data, kw, kind))
        check(cancel)
        prep.built.append(build_layer((data, kw, kind)))
    return prep


def _slot(kind: str, meta: Dict[str, Any]) -> Tuple[Any, ...]:
    """What a cohort layer is, whatever the case: the same slot of the next case updates it."""
    return (kind, meta.get("sequence"), bool(meta.get("result")), meta.get("task"),
            meta.get("method"), bool(meta.get("synthetic")))


def _batched(viewer):
    """napari's batched layer-list update: the canvas rebuilds its scene graph (and runs its
    full garbage collection) once after all removals and insertions, not after each."""
    batched = getattr(viewer.layers, "batched_update", None)
    return batched() if batched is not None else contextlib.nullcontext()


def swap_cohort_layers(viewer, prep: PreparedCase) -> List[Any]:
    """Put ``prep``'s layers in the viewer in place of the previous cohort case's (main
    thread). A previous layer of the same slot (kind, sequence, result, task) takes the new
    data in place (no new visuals: a texture upload, not napari's layer insertion), moved onto
    the new case's grid (:func:`move_layer`) when that differs; layers of slots the new case
    lacks are removed and those of new slots inserted (worker-built). The user's layer
    selection is left alone. Returns the case's layers.

    Inserting new layers costs napari main-thread time (about a second for a first BraTS
    case's five layers); putting them in one per event-loop turn was tried and made it worse
    (the canvas redraws every layer between two insertions). Each removal costs napari a full
    garbage collection (0.2-0.5 s): several are batched into one, and a case on another grid
    no longer removes its predecessor's layers (1.4-2 s before, BraTS <-> native TCGA).
    Opening the next case of the same grid costs tens of ms."""
    old: Dict[Tuple[Any, ...], List[Any]] = {}
    for layer in [ly for ly in viewer.layers if radiogen_meta(ly).get("cohort")]:
        old.setdefault(_slot(type(layer).__name__.lower(), radiogen_meta(layer)),
                       []).append(layer)
    keep: List[Any] = []
    new_layers: List[Any] = []
    moved = False
    for (data, kw, kind), built in zip(prep.layer_data, prep.built):
        cands = old.get(_slot(kind, kw["metadata"]["radiogen"])) or []
        layer = cands.pop(0) if cands else None
        same_labels = kind != "labels" or (radiogen_meta(layer).get("label_names")
                                           == kw["metadata"]["radiogen"].get("label_names")
                                           if layer is not None else False)
        if layer is not None and same_labels:
            if np.shape(layer.data) == np.shape(data) and same_placement(layer, kw):
                layer.data = data
            elif move_layer(layer, data, kw):
                moved = True
            else:
                old.setdefault(("__remove__",), []).append(layer)
                new_layers.append(built)
                continue
            layer.metadata = kw["metadata"]
            if kind == "image" and kw.get("contrast_limits") is not None:
                lo, hi = kw["contrast_limits"]
                r0, r1 = layer.contrast_limits_range
                layer.contrast_limits_range = (min(r0, lo), max(r1, hi))
                layer.contrast_limits = kw["contrast_limits"]
            layer.name = kw["name"]
            keep.append(layer)
            continue
        if layer is not None:
            old.setdefault(("__remove__",), []).append(layer)
        new_layers.append(built)
    gone = [ly for layers in old.values() for ly in layers if ly in viewer.layers]
    with _keep_selection(viewer), \
            (_batched(viewer) if len(gone) > 1 else contextlib.nullcontext()):
        for layers in old.values():
            for layer in layers:
                if layer in viewer.layers:
                    viewer.layers.remove(layer)
        for layer in new_layers:
            viewer.layers.append(layer)
    if moved:       # another grid: show its middle, as napari does for a first layer
        viewer.reset_view()
        viewer.dims.set_point(range(viewer.dims.ndim),
                              [(r.start + r.stop) / 2 for r in viewer.dims.range])
    return keep + new_layers
