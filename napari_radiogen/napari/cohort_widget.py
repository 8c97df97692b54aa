"""Cohort browser: the cases of a folder with their status, next/previous, Analyze all.

Analyze all runs ``core.pipeline.analyze_cohort`` in one background job: it keeps going past a
bad case (shown as failed with its message), writes ``<out>/summary.csv`` and skips cases whose
inputs and models have not changed since their cached result.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from qtpy.QtWidgets import (QFileDialog, QHBoxLayout, QLabel, QLineEdit, QListWidget,
                            QListWidgetItem, QProgressBar, QPushButton, QVBoxLayout, QWidget)

from ..core.pipeline import AnalysisOptions, Analyzer, CohortItem, analyze_cohort
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
        self.status = {str(c): "pending" for c in self.cases}
        self.open_errors = {}
        self.current = -1
        self._pending = None
        self._refresh()
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
        if self.open_job is not None and not self.open_job.done:
            return self.open_job                     # one case opens at a time
        target = self.current if self._pending is None else self._pending
        self._pending = (target + d) % len(self.cases)
        job = self.open_case(self._pending)
        return job

    def open_case(self, i: int):
        """Open case ``i`` in the viewer, replacing the previously opened cohort case. The case
        is read in a worker; the layers are swapped in when it has loaded (a bad case keeps the
        current one open). Returns the Job."""
        from ..core.io import load_case
        from ..core.progress import Progress
        from .layers import case_to_layer_data

        path = self.cases[i]

        def gen(tok):
            yield Progress("open", 0, 1, path.name)
            yield case_to_layer_data(load_case(path))

        def show(layer_data):
            for l in [l for l in self.viewer.layers if radiogen_meta(l).get("cohort")]:
                self.viewer.layers.remove(l)
            for data, kw, kind in layer_data:
                kw["metadata"]["radiogen"]["cohort"] = True
                getattr(self.viewer, f"add_{kind}")(data, **kw)
            self.current = i
            self._refresh()

        def failed(exc):
            from ..core.errors import error_text
            self.status[str(path)] = "failed"
            self.open_errors[str(path)] = error_text(exc)     # the item's tooltip says why
            self._refresh()

        self.open_job = start_job(gen, name=f"Open {path.name}", on_result=show,
                                  on_error=failed, owner=self, viewer=self.viewer,
                                  progress_bar=False)
        return self.open_job

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
            self.info.setText("cancelled")
        else:
            self.bar.setValue(self.bar.maximum())
            self.info.setText(f"{len(self.items)} case(s), {n_fail} failed; summary: "
                              f"{Path(out) / 'summary.csv'}")
