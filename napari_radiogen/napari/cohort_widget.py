"""Cohort browser: the cases of a folder with their status, next/previous, Analyze all.

Analyze all runs ``core.pipeline.analyze_cohort`` in one background job: it keeps going past a
bad case (shown as failed with its message), writes ``<out>/summary.csv`` and skips cases whose
inputs and models have not changed since their cached result.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from qtpy.QtWidgets import (QFileDialog, QHBoxLayout, QLabel, QLineEdit, QListWidget,
                            QListWidgetItem, QProgressBar, QPushButton, QVBoxLayout, QWidget)

from ..core.pipeline import (NOT_REACHED_CACHED, AnalysisOptions, Analyzer, CohortItem,
                             analyze_cohort)
import numpy as np

from ._common import (HEATMAP_FLOOR, _keep_selection, build_layer, name_axes_in_3d,
                      remove_layers, update_layer)
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
        name_axes_in_3d(napari_viewer)       # napari's 3D button names the patient's sides
        self.cases: List[Path] = []
        self.status: dict = {}
        self.open_errors: dict = {}      # path -> why the case could not be opened
        self.current: int = -1
        self.job = None
        self.items: List[CohortItem] = []
        self.analyzer: Optional[Analyzer] = None
        self.open_job = None
        self._pending: Optional[int] = None           # the case being opened (or last tried)
        self._queued: Optional[int] = None            # asked for while another case opened
        self._reload: Optional[str] = None            # reopen this case (its results came)
        self._shown_results = 0                       # result layers the shown case came with
        self._quiet = False                           # the open in progress leaves the panel be
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
            self._queued = self._reload = None
            self._refresh()
            self.info.setText(str(e))               # stays in the panel, not only a toast
            return self.cases
        self.status = {str(c): "pending" for c in self.cases}
        self.open_errors = {}
        self.current = -1
        self._pending = None
        self._queued = self._reload = None
        self._refresh()
        self.out.setPlaceholderText(f"output folder (default: {default_out_dir(folder)})")
        self.info.setText(f"{len(self.cases)} case(s)")
        return self.cases

    def _refresh(self) -> None:
        self.list.clear()
        for i, c in enumerate(self.cases):
            st = self.status.get(str(c), "pending")
            mark = STATUS_MARK.get(st, st)
            # an analysis made unreliable by its input (not skull-stripped): not a plain tick
            caution = next((x.summary.get("caution") for x in self.items
                            if x.path == str(c) and (x.summary or {}).get("caution")), "")
            if caution and st in ("done", "cached"):
                mark = "⚠" + mark[1:]
            text = f"{mark}  {c.name}" + ("   ◀ open" if i == self.current else "")
            it = QListWidgetItem(text)
            msg = next((x.message for x in self.items if x.path == str(c) and x.message),
                       self.open_errors.get(str(c), ""))
            if caution:
                msg = f"CAUTION: {caution}" + (f"\n{msg}" if msg else "")
            if msg:
                it.setToolTip(msg)
            self.list.addItem(it)

    # -- browsing -------------------------------------------------------------------------------
    def step(self, d: int):
        """Next (``d=+1``) or previous (``-1``) case, counted from the case shown (a case that
        could not be opened is not where the browser stands, and is passed over: a
        double-click on it tries again). Clicks while a case opens are coalesced: they count
        from the case asked for last, which opens when the open in progress ends (the cases
        in between are not read). Returns the open job."""
        if not self.cases:
            return None
        n = len(self.cases)
        if self.opening:
            base = self._queued if self._queued is not None else self._pending
        else:
            base = self.current if self.current >= 0 else (-1 if d > 0 else 0)
        target = (base + d) % n
        for _ in range(n - 1):
            if str(self.cases[target]) not in self.open_errors or target == self.current:
                break
            target = (target + d) % n
        return self.open_case(target)

    @property
    def busy(self) -> bool:
        """A case is opening or waits to open (a click made during an open)."""
        return self.opening or self._queued is not None

    def open_case(self, i: int, quiet: bool = False):
        """Open case ``i`` in the viewer, replacing the previously opened cohort case and the
        layers of that case the docks added (results of Analyze or Segment: said in the panel);
        a case the cohort job has analysed comes with its results (segmentation, heatmaps) from
        the output folder. The case is read and its layers are built in a worker; the main
        thread swaps them in when it has loaded, updating the previous case's layers in place
        where the grids match (a bad case keeps the current one open). While another case
        opens, ``i`` waits and opens after it (the last one asked for). ``quiet``: the panel's
        text is left alone (the shown case reopened with the results a batch made). Returns
        the Job (the one in progress when ``i`` waits)."""
        from ..core.progress import Progress

        n = len(self.cases)
        if self.opening:
            if i == self._pending and self._queued is None:
                if not quiet:               # the case opening is the one asked for: say so
                    self._quiet = False
                    self.info.setText(f"opening {self.cases[i].name} ({i + 1}/{n}) ...")
                return self.open_job
            self._queued = i
            then = "" if i == self._pending else f", then {self.cases[i].name} ({i + 1}/{n})"
            self.info.setText(f"opening {self.cases[self._pending].name} ...{then}")
            return self.open_job
        self._queued = None
        self._pending = i
        self._quiet = quiet
        path = self.cases[i]
        out_dir = self._results_dir()
        if not quiet:
            self.info.setText(f"opening {path.name} ({i + 1}/{n}) ...")

        tell = str(path) not in self._told
        self._told.add(str(path))

        def gen(tok):
            yield Progress("open", 0, 1, path.name)
            yield prepare_case_layers(path, out_dir, cancel=tok, tell=tell)

        def show(prepared):
            report: Dict[str, Any] = {}
            swap_cohort_layers(self.viewer, prepared, report=report)
            self.current = i
            self._shown_results = prepared.n_results
            if self.open_errors.pop(str(path), None) is not None \
                    and not any(x.path == str(path) for x in self.items):
                self.status[str(path)] = "pending"       # it opens now (a file put right)
            self._refresh()
            if self._quiet:
                return
            extra = f", with its results from {out_dir}" if prepared.n_results else ""
            self.info.setText(f"{path.name} ({i + 1}/{n}){extra}{closed_note(report)}")

        def failed(exc):
            from ..core.errors import error_text
            if self._quiet:
                return                  # the case stays shown as it was
            self.status[str(path)] = "failed"
            self.open_errors[str(path)] = error_text(exc)     # the item's tooltip says why
            self._refresh()
            self.info.setText(f"{path.name} could not be opened: {error_text(exc)}")

        self.open_job = start_job(gen, name=f"Open {path.name}", on_result=show,
                                  on_error=failed, on_finished=self._opened, owner=self,
                                  viewer=self.viewer, progress_bar=False)
        return self.open_job

    def _opened(self, job) -> None:
        """An open ended: go on to the case asked for meanwhile, or reopen the shown case
        whose results the batch wrote meanwhile."""
        if job.cancelled:
            self._queued = self._reload = None
            return
        nxt, self._queued = self._queued, None
        if nxt is not None and nxt != self._pending:
            self.open_case(nxt)
            return
        reload, self._reload = self._reload, None
        if reload is not None and 0 <= self.current < len(self.cases) \
                and str(self.cases[self.current]) == reload:
            self.open_case(self.current, quiet=True)

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
        self._started_at = time.time() - 0.05  # a summary.csv older than this run is not read
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
            self._take_results(item)

    def _take_results(self, item: CohortItem) -> None:
        """The shown case's results appear as soon as the batch has written them: the case is
        reopened (in place: its layers stay, its result layers come)."""
        if item.status not in ("done", "cached") or not 0 <= self.current < len(self.cases):
            return
        if str(self.cases[self.current]) != item.path:
            return
        if item.status == "cached" and self._shown_results:
            return                       # it came with these results when it was opened
        if self.opening or self._queued is not None:
            self._reload = item.path     # after the open in progress, if it is still shown
            return
        self.open_case(self.current, quiet=True)

    def _take_summary(self, out) -> None:
        """After a cancelled run: the rows of the summary it wrote as it stopped, for the cases
        whose item did not reach the panel (a case that finished just as Cancel was pressed:
        the job drops what arrives after a cancel; a case not reached whose earlier results are
        still valid). A summary older than the run is not read."""
        import csv

        from ..core.io import case_id_of
        p = Path(out) / "summary.csv"
        try:
            if p.stat().st_mtime < getattr(self, "_started_at", 0.0):
                return
            with open(p, newline="") as f:
                rows = {r.get("case_id"): r for r in csv.DictReader(f)}
        except (OSError, csv.Error):
            return
        seen = {i.path for i in self.items}
        for c in self.cases:
            if str(c) in seen:
                continue
            try:
                row = rows.get(case_id_of(c))
            except Exception:                  # a case whose id cannot be read: none
                row = None
            if row is None or row.get("status") not in ("done", "cached", "failed"):
                continue
            keys = ("path", "case_id", "status", "message")
            item = CohortItem(path=str(c), case_id=row.get("case_id"), status=row["status"],
                              message=row.get("message", ""),
                              summary={k: v for k, v in row.items() if k not in keys and v})
            self.items.append(item)
            self.status[str(c)] = item.status

    def _finished(self, job) -> None:
        self.run_btn.setEnabled(True)
        self.cancel_btn.setEnabled(False)
        n_fail = sum(i.status == "failed" for i in self.items)
        out = getattr(self, "_out_dir", None) or self.inputs().out_dir
        if job.cancelled:
            self._take_summary(out)
            # the cases the job did not reach are not pending any more: the run was cancelled
            for c in self.cases:
                if self.status.get(str(c), "pending") == "pending":
                    self.status[str(c)] = "cancelled"
            self._refresh()
            done = sum(i.message != NOT_REACHED_CACHED for i in self.items)
            self.info.setText(f"cancelled after {done} of {len(self.cases)} case(s)")
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
                if kw["metadata"]["radiogen"].get("sequence") == "heatmap" \
                        and tuple(kw.get("contrast_limits") or ()) == (0.0, 1.0):
                    # shown from the floor, as the Explain and Analyze docks show theirs
                    kw["contrast_limits"] = (HEATMAP_FLOOR, 1.0)
                    kw["metadata"]["radiogen"]["contrast_range"] = (0.0, 1.0)
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
    from .reader import _mark_synthetic_layers, tell_misregistered, tell_unreadable

    case = load_case(path, skip_unreadable=True)     # a broken file is said, the rest shown
    check(cancel)
    if tell:
        tell_unreadable(case)
        for w in case.meta.get("warnings") or []:
            notify(f"{case.case_id}: {w}")
        tell_misregistered(case)
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


def closed_note(report: Dict[str, Any]) -> str:
    """The panel's words for what :func:`swap_cohort_layers` closed or set aside of the
    previous case beyond its cohort layers (``report``); "" when nothing."""
    out = ""
    closed, kept = report.get("closed") or [], report.get("kept") or []
    case = report.get("case") or "the previous case"
    if closed:
        what = "result layer" if report.get("all_results") else "layer"
        out += (f"; closed {len(closed)} {what}{'s' if len(closed) > 1 else ''} of {case} "
                "with it; export results you want to keep, or use Analyze all, whose results "
                "reopen with the case")
    if kept:
        out += (f"; kept {', '.join(kept)} (edited) hidden: export it or delete the layer")
    return out


def swap_cohort_layers(viewer, prep: PreparedCase,
                       report: Optional[Dict[str, Any]] = None) -> List[Any]:
    """Put ``prep``'s layers in the viewer in place of the previous cohort case's (main
    thread). A previous layer of the same slot (kind, sequence, result, task) takes the new
    data in place (no new visuals: a texture upload, not napari's layer insertion), moved onto
    the new case's grid (:func:`move_layer`) when that differs; layers of slots the new case
    lacks are removed and those of new slots inserted (worker-built), each where a first open
    puts it among the case's layers (an image or the case's labels below the results). The
    user's layer selection is left alone, except that a selected layer the new case's layer
    of its slot replaces (labels naming other classes: a new layer) hands its selection to
    that layer. Returns the case's layers.

    The previous case's other layers (results of the Analyze or Segment docks, a synthetic
    sequence: its ``case_id``, no cohort flag) go with it too, updated in place where the new
    case has their slot; ``report`` (a dict) gets their names (``closed``), the previous
    case's id (``case``) and whether all were results (``all_results``). A result labels layer
    the user edited is never written over or removed: it is hidden and kept (``kept``).
    Reopening the case shown updates its layers and keeps the docks' ones it has no slot for.
    Layers of other cases are left alone.

    Inserting new layers costs napari main-thread time (about a second for a first BraTS
    case's five layers); putting them in one per event-loop turn was tried and made it worse
    (the canvas redraws every layer between two insertions). Each removal costs napari a full
    garbage collection (0.2-0.5 s; a batched removal, one collection for all, crashed Mesa's
    software renderer: see :func:`_common.remove_layers`), so a case on another grid no longer
    removes its predecessor's layers but moves them (1.4-2 s before, BraTS <-> native TCGA).
    Opening the next case of the same grid costs tens of ms."""
    from .segment_widget import EDITED

    cohort = [ly for ly in viewer.layers if radiogen_meta(ly).get("cohort")]
    prev_ids = {radiogen_meta(ly).get("case_id") for ly in cohort} - {None}
    same_case = prev_ids == {prep.case_id}
    docks = [ly for ly in viewer.layers if not radiogen_meta(ly).get("cohort")
             and radiogen_meta(ly).get("case_id") in prev_ids]
    edited = [ly for ly in cohort + docks if radiogen_meta(ly).get(EDITED)]
    docks = [ly for ly in docks if ly not in edited]
    stays = set(map(id, docks)) if same_case else set()     # kept when no slot takes them
    old: Dict[Tuple[Any, ...], List[Any]] = {}
    for layer in [ly for ly in cohort if ly not in edited] + docks:  # cohort layers first
        old.setdefault(_slot(type(layer).__name__.lower(), radiogen_meta(layer)),
                       []).append(layer)
    closed: List[str] = []
    all_results = True
    if not same_case:
        for layer in docks:
            closed.append(layer.name)
            all_results = all_results and bool(radiogen_meta(layer).get("result"))
    keep: List[Any] = []
    placed: List[Any] = []                # the case's layer of each of prep's, in prep's order
    new_layers: List[Any] = []
    updates: List[Tuple[Any, Any, Dict[str, Any], str]] = []
    successors: List[Tuple[Any, Any]] = []  # (a layer of the slot that goes, the new one)
    for (data, kw, kind), built in zip(prep.layer_data, prep.built):
        cands = old.get(_slot(kind, kw["metadata"]["radiogen"])) or []
        layer = cands.pop(0) if cands else None
        if layer is not None:
            stays.discard(id(layer))
        same_labels = kind != "labels" or (radiogen_meta(layer).get("label_names")
                                           == kw["metadata"]["radiogen"].get("label_names")
                                           if layer is not None else False)
        if layer is not None and same_labels and np.ndim(data) == layer.ndim:
            updates.append((layer, data, kw, kind))
            keep.append(layer)
            placed.append(layer)
            continue
        if layer is not None:
            old.setdefault(("__remove__",), []).append(layer)
            successors.append((layer, built))
        new_layers.append(built)
        placed.append(built)
    if not same_case:
        for layer in edited:                 # the user's work: set aside, not lost
            layer.visible = False
            rg = layer.metadata.get("radiogen") if isinstance(layer.metadata, dict) else None
            if isinstance(rg, dict):
                rg.pop("cohort", None)           # not the cohort case's layer any more
    gone = [ly for layers in old.values() for ly in layers
            if ly in viewer.layers and id(ly) not in stays]
    fresh = set(map(id, new_layers))
    sel = viewer.layers.selection
    follow = [(built, sel.active is layer) for layer, built in successors if layer in sel]
    moved = False
    with _keep_selection(viewer):
        # the layers that go, first: they are not re-sliced on the next case's grid (one at
        # a time with a draw between: napari's batched removal, one garbage collection for
        # all, crashed the software renderer on the next draw, see remove_layers)
        remove_layers(viewer, gone)
        for layer, data, kw, kind in updates:
            moved = bool(update_layer(layer, data, kw, kind)) or moved
        for k, layer in enumerate(placed):
            if id(layer) not in fresh:
                continue
            viewer.layers.insert(_insert_at(viewer, placed, k), layer)
    # a selected layer replaced by a new one of its slot: the new one is selected in its place
    # (as napari selects a layer it adds)
    for built, active in follow:
        if active and not (set(sel) - {built}):
            sel.active = built
        else:
            sel.add(built)
    if moved:       # another grid: show its middle, as napari does for a first layer
        viewer.reset_view()
        viewer.dims.set_point(range(viewer.dims.ndim),
                              [(r.start + r.stop) / 2 for r in viewer.dims.range])
    if report is not None:
        report.update(case=", ".join(sorted(prev_ids)), closed=closed,
                      all_results=all_results,
                      kept=[ly.name for ly in edited] if not same_case else [])
    return keep + new_layers


def _insert_at(viewer, placed: List[Any], k: int) -> int:
    """Where the case's ``k``-th layer goes: just above the case's layer before it in a first
    open's order, else just below the one after it, else on top."""
    layers = viewer.layers
    for j in range(k - 1, -1, -1):
        if placed[j] in layers:
            return layers.index(placed[j]) + 1
    for j in range(k + 1, len(placed)):
        if placed[j] in layers:
            return layers.index(placed[j])
    return len(layers)
