"""Survival dock widget: load a cohort table (clinical CSV or a predictions CSV), choose the
time, event and grouping columns, see Kaplan-Meier curves with the log-rank p, Cox HR and
C-index. The statistics are ``core.evaluate.survival.analyze_table`` (lifelines)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from qtpy.QtWidgets import (QComboBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel, QLineEdit,
                            QPushButton, QVBoxLayout, QWidget)

NONE = "(none)"


@dataclass
class SurvivalInputs:
    table: str
    time_col: str
    event_col: str
    group_col: Optional[str] = None


def _guess(cols, keys):
    low = [c.lower() for c in cols]
    for k in keys:
        for c, lc in zip(cols, low):
            if lc == k:
                return c
    for k in keys:
        for c, lc in zip(cols, low):
            # a substring match, but never a model output (os_risk is no survival time)
            if k in lc and "risk" not in lc and not lc.startswith("p_"):
                return c
    return None


class SurvivalWidget(QWidget):
    def __init__(self, napari_viewer=None):
        super().__init__()
        self.viewer = napari_viewer
        self.df = None
        self.analysis = None
        self.job = None
        lay = QVBoxLayout(self)
        row = QHBoxLayout()
        self.path = QLineEdit()
        self.path.setPlaceholderText("cohort CSV (e.g. clinical.csv or predictions.csv)")
        self.path.returnPressed.connect(lambda: self.load_table(self.path.text()))
        b = QPushButton("Open...")
        b.clicked.connect(self._browse)
        row.addWidget(self.path)
        row.addWidget(b)
        lay.addLayout(row)
        form = QFormLayout()
        self.time_col, self.event_col, self.group_col = QComboBox(), QComboBox(), QComboBox()
        form.addRow("time", self.time_col)
        form.addRow("event (1 = event)", self.event_col)
        form.addRow("group by", self.group_col)
        lay.addLayout(form)
        self.run_btn = QPushButton("Kaplan-Meier")
        self.run_btn.clicked.connect(self.analyze)
        self.run_btn.setEnabled(False)
        lay.addWidget(self.run_btn)
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure
        self.figure = Figure(figsize=(4, 3), tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(240)      # docked beside another widget it collapsed
        self.ax = self.figure.add_subplot(1, 1, 1)
        lay.addWidget(self.canvas)
        self.stats = QLabel("")
        self.stats.setWordWrap(True)
        lay.addWidget(self.stats)

    def _browse(self) -> None:
        p, _ = QFileDialog.getOpenFileName(self, "Cohort table", "", "Tables (*.csv *.tsv)")
        if p:
            self.load_table(p)

    def load_table(self, path: str) -> None:
        import pandas as pd
        try:
            sep = "\t" if str(path).endswith(".tsv") else ","
            df = pd.read_csv(path, sep=sep)
        except Exception as e:
            self.stats.setText(f"cannot read {Path(path).name}: {e}")
            return
        self.df = df
        self.path.setText(str(path))
        cols = [str(c) for c in df.columns]
        for cb in (self.time_col, self.event_col, self.group_col):
            cb.clear()
        self.time_col.addItems(cols)
        self.event_col.addItems(cols)
        self.group_col.addItems([NONE] + cols)
        t = _guess(cols, ["os_days", "time", "days", "survival", "os"])
        e = _guess(cols, ["os_event", "event", "death", "status", "dead"])
        g = _guess(cols, ["risk_group", "group", "idh", "predicted"])
        if t:
            self.time_col.setCurrentText(t)
        if e:
            self.event_col.setCurrentText(e)
        if g:
            self.group_col.setCurrentText(g)
        self.run_btn.setEnabled(True)
        self.stats.setText(f"{len(df)} rows, {len(cols)} columns")

    def inputs(self) -> SurvivalInputs:
        g = self.group_col.currentText()
        return SurvivalInputs(self.path.text(), self.time_col.currentText(),
                              self.event_col.currentText(), None if g in ("", NONE) else g)

    def analyze(self):
        from ..core.progress import Progress
        from .workers import start_job
        if self.df is None:
            return None
        inp = self.inputs()
        df = self.df

        def gen(token):
            from ..core.evaluate.survival import analyze_table
            yield Progress(stage="survival", message="fitting")
            token.check()
            yield analyze_table(df, inp.time_col, inp.event_col, inp.group_col)

        self.run_btn.setEnabled(False)
        self.job = start_job(gen, name="Survival", on_result=self._show,
                             on_finished=lambda j: self.run_btn.setEnabled(True),
                             on_error=lambda e: self.stats.setText(f"error: {e}"),
                             viewer=self.viewer, owner=self)
        return self.job

    def _show(self, a) -> None:
        from ..core.evaluate.survival import plot_km
        self.analysis = a
        self.ax.clear()
        plot_km(self.ax, a.time, a.event, a.group)
        self.ax.set_xlabel(self.time_col.currentText())
        self.ax.legend(fontsize=7)
        self.canvas.draw_idle()
        lines = [f"n = {a.n}, events = {a.events}"]
        if a.logrank_p is not None:
            lines.append(f"log-rank p = {a.logrank_p:.3g}")
        for k, v in a.hr.items():
            lines.append(f"HR {k}: {v['hr']:.2f} [{v['ci95'][0]:.2f}, {v['ci95'][1]:.2f}], "
                         f"p = {v['p']:.3g}")
        if a.c_index is not None:
            lines.append(f"C-index = {a.c_index:.3f}")
        med = ", ".join(f"{g}: {'not reached' if m is None else f'{m:g}'}"
                        for g, m in a.median_survival.items())
        lines.append(f"median survival: {med}")
        lines += a.notes
        self.stats.setText("\n".join(lines))
