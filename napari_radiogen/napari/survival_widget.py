"""Survival dock widget: load a cohort table (a clinical CSV/TSV with survival time and event
columns; or model outputs, ``radiogen predict``'s or ``analyze``'s summary.csv, then *Join
clinical table...* adds the clinical table's columns on the case id and the predicted groups:
``core.evaluate.survival.join_outputs``), choose the time, event and grouping columns, see
Kaplan-Meier curves with the log-rank p, Cox HR and C-index, and export them (figure,
statistics JSON, per-patient CSV: de-identified, patients by row number, unless "include
patient ids" is ticked).

Everything but the drawing is in ``core.evaluate.survival``: reading the table
(``read_table``) and guessing its columns (``guess_columns``), the statistics and the
Kaplan-Meier tables (``analyze_table``), drawing (``draw_km``, plain matplotlib from the
fitted tables) and the export (``write_survival_outputs``). Reading, fitting and exporting run
in worker jobs (``workers.start_job``): the main thread only sets the combos, buttons and
messages, and draws. One job at a time: loading a table cancels the job under way."""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (QCheckBox, QComboBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel,
                            QLineEdit, QPushButton, QScrollArea, QVBoxLayout, QWidget)

from ..core.errors import Cancelled, error_text

log = logging.getLogger(__name__)

NONE = "(none)"
CHOOSE = "(choose)"

_WARM_UP: Optional[threading.Thread] = None


def warm_up() -> threading.Thread:
    """Import, on a background thread and once per process, what the first table and the first
    Kaplan-Meier run need (pandas, lifelines: about a second the first time) while the user
    picks a table, instead of in the main thread at the first click. Only imports: the fitting
    itself runs in the job's worker."""
    global _WARM_UP
    if _WARM_UP is None:
        def work():
            try:
                import pandas  # noqa: F401
                import lifelines  # noqa: F401
            except Exception:  # pragma: no cover - an optimisation only
                log.debug("survival warm-up failed", exc_info=True)
        _WARM_UP = threading.Thread(target=work, name="radiogen-survival-warm-up", daemon=True)
        _WARM_UP.start()
    return _WARM_UP


@dataclass
class SurvivalInputs:
    table: str
    time_col: Optional[str]
    event_col: Optional[str]
    group_col: Optional[str] = None


def _hr_line(name: str, v: dict) -> str:
    if v.get("hr") is None:
        return f"HR {name}: not estimable ({v.get('not_estimable') or 'no estimate'})"
    return f"HR {name}: {v['hr']:.2f} [{v['ci95'][0]:.2f}, {v['ci95'][1]:.2f}], p = {v['p']:.3g}"


def stats_text(a) -> str:
    """The statistics block the widget shows for a ``SurvivalAnalysis``."""
    lines = [f"n = {a.n}, events = {a.events}"]
    if a.logrank_p is not None:
        lines.append(f"log-rank p = {a.logrank_p:.3g}")
    elif a.logrank_not_testable:
        lines.append(f"log-rank: not testable ({a.logrank_not_testable})")
    lines += [_hr_line(k, v) for k, v in a.hr.items()]
    if a.c_index is not None:
        lines.append(f"C-index = {a.c_index:.3f}"
                     + (f" ({a.c_index_direction})" if a.c_index_direction else ""))
    elif a.c_index_not_defined:
        lines.append(f"C-index: not defined ({a.c_index_not_defined})")
    med = ", ".join(f"{g}: {'not reached' if m is None else f'{m:g}'}"
                    for g, m in a.median_survival.items())
    lines.append(f"median survival: {med}")
    # each HR line says why it is not estimable: the note that repeats it is left out here
    lines += [n for n in a.notes if not str(n).startswith("HR not estimable")]
    return "\n".join(lines)


class SurvivalWidget(QWidget):
    def __init__(self, napari_viewer=None):
        super().__init__()
        self.viewer = napari_viewer
        self.df = None
        self.source: Optional[str] = None      # the path of the table in self.df
        self.joined_with: Optional[str] = None  # the clinical table joined to it, if any
        self.analysis = None
        self.job = None
        lay = QVBoxLayout(self)
        row = QHBoxLayout()
        self.path = QLineEdit()
        self.path.setPlaceholderText("cohort table with survival time and event columns "
                                     "(e.g. clinical.csv)")
        self.path.setToolTip(
            "a CSV/TSV table, one row per patient, with a survival time and an event (0/1 or "
            "alive/dead) column, e.g. TCGA-LGG's clinical.csv. radiogen predict's (or "
            "analyze's) summary.csv has no survival columns: for survival by predicted group, "
            "open it, then Join clinical table...")
        self.path.returnPressed.connect(lambda: self.load_table(self.path.text()))
        b = QPushButton("Open...")
        b.clicked.connect(self._browse)
        self.join_btn = QPushButton("Join clinical table...")
        self.join_btn.setToolTip(
            "the table open holds model outputs (a case_id column, e.g. radiogen predict's "
            "summary.csv): add the survival columns of a clinical table, matched on the case "
            "id, and predicted groups (predicted_idh, predicted_1p19q, predicted_grade at "
            "p >= 0.5; risk_group: above or below the median risk)")
        self.join_btn.clicked.connect(self._browse_join)
        row.addWidget(self.path)
        row.addWidget(b)
        row.addWidget(self.join_btn)
        lay.addLayout(row)
        form = QFormLayout()
        self.time_col, self.event_col, self.group_col = QComboBox(), QComboBox(), QComboBox()
        form.addRow("time", self.time_col)
        form.addRow("event (1 = event)", self.event_col)
        form.addRow("group by", self.group_col)
        lay.addLayout(form)
        for cb in (self.time_col, self.event_col, self.group_col):
            cb.currentTextChanged.connect(self._update_buttons)
        btns = QHBoxLayout()
        self.run_btn = QPushButton("Kaplan-Meier")
        self.run_btn.clicked.connect(self.analyze)
        self.export_btn = QPushButton("Export...")
        self.export_btn.setToolTip("write the figure (PNG), the statistics (JSON) and the "
                                   "per-patient table (CSV) into a folder")
        self.export_btn.clicked.connect(self.export)
        self.identified = QCheckBox("include patient ids")
        self.identified.setToolTip("off (default): the exported per-patient table names "
                                   "patients by their row number in the table, not their id")
        btns.addWidget(self.run_btn)
        btns.addWidget(self.export_btn)
        btns.addWidget(self.identified)
        lay.addLayout(btns)
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure
        self.figure = Figure(figsize=(4, 3), tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(240)      # docked beside another widget it collapsed
        self.ax = self.figure.add_subplot(1, 1, 1)
        lay.addWidget(self.canvas)
        self.stats = QLabel("")
        self.stats.setWordWrap(True)
        self.stats.setAlignment(Qt.AlignTop | Qt.AlignLeft)
        self.stats.setTextInteractionFlags(Qt.TextSelectableByMouse)
        scroll = QScrollArea()                 # many groups or notes scroll, never overflow
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QScrollArea.NoFrame)
        scroll.setMinimumHeight(110)
        scroll.setWidget(self.stats)
        lay.addWidget(scroll)
        self._update_buttons()
        warm_up()

    # -- state ----------------------------------------------------------------------------------
    def _chosen(self, cb: QComboBox) -> Optional[str]:
        t = cb.currentText()
        return None if t in ("", NONE, CHOOSE) else t

    def _start(self, gen, name: str, on_result, on_error, notify: bool = False):
        """Start ``gen`` as the widget's one job (no progress bar: its jobs take a second or
        less, and the status line says what runs; no torch). Its callbacks run only while it
        is still the widget's job (a newer table supersedes it), and a cancellation says
        nothing; ``notify=False``: the widget words its own messages."""
        from .workers import start_job
        mine = {}

        def result(r) -> None:
            if mine.get("job") is self.job:
                on_result(r)

        def error(e: BaseException) -> None:
            if mine.get("job") is self.job and not isinstance(e, Cancelled):
                on_error(e)

        self.job = start_job(gen, name=name, on_result=result, on_error=error,
                             on_finished=lambda j: self._update_buttons(),
                             viewer=self.viewer, owner=self, progress_bar=False,
                             notify=notify, uses_torch=False)
        mine["job"] = self.job
        return self.job

    def _busy(self) -> bool:
        return self.job is not None and not self.job.done

    def _update_buttons(self, *_) -> None:
        ready = (self.df is not None and self._chosen(self.time_col) is not None
                 and self._chosen(self.event_col) is not None)
        self.run_btn.setEnabled(ready and not self._busy())
        self.join_btn.setEnabled(self.df is not None and "case_id" in self.df.columns
                                 and self.joined_with is None and not self._busy())
        self.export_btn.setEnabled(self.analysis is not None and not self._busy())

    def _set_result(self, a) -> None:
        self.analysis = a
        self.ax.clear()
        if a is not None:
            from ..core.evaluate.survival import draw_km
            draw_km(self.ax, a)
        self.canvas.draw_idle()
        self._update_buttons()

    def _reset(self, message: str, cancel: bool = True) -> None:
        """No table: nothing to analyse, nothing shown that belonged to the previous one (and
        the job under way cancelled, unless ``cancel`` is False)."""
        if cancel and self._busy():
            self.job.cancel()
        self.df = None
        self.source = None
        self.joined_with = None
        for cb in (self.time_col, self.event_col, self.group_col):
            cb.blockSignals(True)
            cb.clear()
            cb.blockSignals(False)
        self._set_result(None)
        self.stats.setText(message)

    # -- table ----------------------------------------------------------------------------------
    def _browse(self) -> None:
        p, _ = QFileDialog.getOpenFileName(self, "Cohort table", "",
                                           "Tables (*.csv *.tsv);;All files (*)")
        if p:
            self.load_table(p)

    def load_table(self, path: str):
        """Read ``path`` and guess its columns in a worker job (pandas' import and reading
        can take a while: never in the main thread); returns the job. The previous table,
        its curves and its job are dropped at once; a table that cannot be used leaves the
        widget empty, saying why."""
        path = str(path)
        self.path.setText(path)
        self._reset(f"reading {Path(path).name or path}...")

        def gen(token):
            from ..core.evaluate.survival import guess_columns, read_table
            token.check()
            df = read_table(path)
            token.check()
            yield df, guess_columns(df)

        def loaded(res) -> None:
            if res is not None:
                self._fill(path, *res)

        def failed(e: BaseException) -> None:
            self._reset(f"cannot use this table: {error_text(e)}", cancel=False)

        self._start(gen, "Survival table", loaded, failed)
        self._update_buttons()
        return self.job

    def _browse_join(self) -> None:
        start = str(Path(self.source).parent) if self.source else ""
        p, _ = QFileDialog.getOpenFileName(self, "Clinical table to join", start,
                                           "Tables (*.csv *.tsv);;All files (*)")
        if p:
            self.join_table(p)

    def join_table(self, path: str):
        """Join the clinical table at ``path`` to the model outputs open
        (``core.evaluate.survival.join_outputs``, in a worker job) and show the joined table,
        its columns guessed again (a predicted group is a grouping); returns the job, or None
        when no outputs table is open. A table that cannot be joined leaves the outputs as
        they are, saying why."""
        if self.df is None or "case_id" not in self.df.columns or self._busy():
            return None
        outputs, source, path = self.df, self.source, str(path)
        self.stats.setText(f"joining {Path(path).name}...")

        def gen(token):
            from ..core.evaluate.survival import guess_columns, join_outputs, read_table
            token.check()
            j = join_outputs(outputs, read_table(path))
            token.check()
            yield j, guess_columns(j.df)

        def joined(res) -> None:
            if res is not None and self.df is outputs:
                j, g = res
                self._fill(source, j.df, g, joined_with=path, note=j.message)

        def failed(e: BaseException) -> None:
            if self.df is outputs:
                self.stats.setText(f"cannot join {Path(path).name}: {error_text(e)}")

        self._start(gen, "Survival join", joined, failed)
        self._update_buttons()
        return self.job

    def _fill(self, path: str, df, g, joined_with: Optional[str] = None,
              note: str = "") -> None:
        """The table read (main thread): the combos with the guessed columns chosen."""
        self.df = df
        self.source = path
        self.joined_with = joined_with
        cols = [str(c) for c in df.columns]
        for cb, first, pick in ((self.time_col, CHOOSE, g.time), (self.event_col, CHOOSE, g.event),
                                (self.group_col, NONE, g.group)):
            cb.blockSignals(True)
            cb.clear()
            cb.addItems([first] + cols)
            cb.setCurrentText(pick or first)
            cb.blockSignals(False)
        self._update_buttons()
        msg = f"{len(df)} rows, {len(cols)} columns" + (f"\n{note}" if note else "")
        self.stats.setText(msg + (f"\n{g.message}" if g.message else ""))

    def inputs(self) -> SurvivalInputs:
        return SurvivalInputs(self.source or self.path.text(), self._chosen(self.time_col),
                              self._chosen(self.event_col), self._chosen(self.group_col))

    # -- analysis -------------------------------------------------------------------------------
    def analyze(self):
        from ..core.progress import Progress
        inp = self.inputs()
        if self.df is None or not inp.time_col or not inp.event_col or self._busy():
            return None
        df = self.df

        def gen(token):
            # lifelines is imported and every fit made here, in the worker: the main thread
            # only draws the fitted tables (_show)
            from ..core.evaluate.survival import analyze_table
            yield Progress(stage="survival", message="fitting")
            token.check()
            yield analyze_table(df, inp.time_col, inp.event_col, inp.group_col)

        # the previous curves stay drawn until the new ones come (a redraw costs the main
        # thread more than the fit takes); what is exported is the result shown, and none now
        self.analysis = None
        self.stats.setText("fitting...")
        self.run_btn.setEnabled(False)
        self.export_btn.setEnabled(False)
        # a fit cancelled because another table was opened says nothing over that one
        return self._start(gen, "Survival", self._show, self._failed, notify=True)

    def _failed(self, e: BaseException) -> None:
        self._set_result(None)
        self.stats.setText(f"error: {e}")

    def _show(self, a) -> None:
        self._set_result(a)
        self.stats.setText(stats_text(a))

    # -- export ---------------------------------------------------------------------------------
    def export(self):
        """Ask for a folder (main thread), then write the figure, the statistics and the
        per-patient table in a worker job (matplotlib's Agg rendering and the CSV); returns
        the job (its ``result``: ``{"figure"|"statistics"|"patients": path}``), or None when
        there is nothing to export or the dialog was cancelled. De-identified unless
        "include patient ids" is ticked."""
        if self.analysis is None or self._busy():
            return None
        start = str(Path(self.source).parent) if self.source else ""
        folder = QFileDialog.getExistingDirectory(self, "Export the survival analysis into",
                                                  start)
        if not folder:
            return None
        a = self.analysis
        source = Path(self.source).name if self.source else None
        if source and self.joined_with:
            source += f" joined with {Path(self.joined_with).name}"
        identified = self.identified.isChecked()

        def gen(token):
            from ..core.evaluate.survival import write_survival_outputs
            token.check()
            yield write_survival_outputs(a, folder, source=source, identified=identified)

        def written(paths) -> None:
            if self.analysis is a and paths:
                self.stats.setText(
                    f"{stats_text(a)}\nexported to {folder}"
                    + (" (with patient ids)" if identified else " (de-identified)") + ": "
                    + ", ".join(p.name for p in paths.values()))

        def failed(e: BaseException) -> None:
            if self.analysis is a:
                self.stats.setText(f"{stats_text(a)}\nexport failed: {error_text(e)}")

        self.stats.setText(f"{stats_text(a)}\nexporting...")
        self._start(gen, "Survival export", written, failed)
        self._update_buttons()
        return self.job
