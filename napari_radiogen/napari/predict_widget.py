"""IDH / 1p19q / grade prediction dock widget.

Thin: picks a case and a model, optional age/sex (used when the model fuses them), runs
:func:`napari_radiogen.core.predict.predict` through :func:`workers.start_job`, then shows each
task's probability with its uncertainty (the ``±``: what it is, from the result's own
``uncertainty[task]["method"]``, is said in the labels' tooltips and a legend) and the model
card's validated AUC, and a plot of the per-slice attention along the slice axis (an ensemble's
is its image member's, named in the title). Clicking the plot moves the viewer to that slice.

A heading names the case and model the shown result belongs to; with another case selected in
the Case combo the result is greyed out and the heading says whose it is; a case closed while
its prediction ran gets ``_common.closed_case_note``. Where the model that ran is not the one
chosen (the preselected default gives way to ``predict_mil`` on a case it cannot predict) the
heading and the status say so, and the status names the device it ran on (the Device list may
say ``auto``; a segmentation moved to the CPU is among the warnings). The content scrolls when the dock is
shorter than it (beside other docks), so nothing is painted over or cut.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

import textwrap

import numpy as np
from qtpy.QtWidgets import QComboBox, QDoubleSpinBox, QFormLayout, QLabel, QWidget

from ..core.predict import attention_title
from ._common import (CaseCombo, on_device, closed_case_note, device_combo, run_cancel_row,
                      scrolling_content)
from .workers import start_job

#: what the ``±`` is when a result does not say (``uncertainty[task]["method"]``)
GENERIC_PM = "\u00b1: sd over ensemble members/folds (the spread of their probabilities)"

TASK_LABELS = {"idh": ("IDH mutant", "mutant"), "codel_1p19q": ("1p/19q co-deleted", "codel"),
               "grade": ("WHO grade 3", "3")}


@dataclass
class PredictInputs:
    case_id: str
    model: str
    age: Optional[float]
    sex: Optional[str]
    device: str = "auto"


class PredictionWidget(QWidget):
    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self._job = None
        self._models: Dict[str, Any] = {}
        self.result = None
        self.result_case_id: Optional[str] = None
        self._ref_layer_name: Optional[str] = None
        self._closed_note = ""
        self._title = ""
        #: the model chosen in the combo for the shown result (None: not known)
        self.requested_model: Optional[str] = None

        self.content, self.scroll, lay = scrolling_content(self)   # scrolls beside other docks
        form = QFormLayout()
        self.case_combo = CaseCombo(napari_viewer)
        self.model_combo = QComboBox()
        self.age_spin = QDoubleSpinBox()
        self.age_spin.setRange(0, 120)
        self.age_spin.setDecimals(0)
        # 0 = not given here: the case's own clinical table (a pack's clinical.csv) if it has
        # one, else unknown (the prediction then warns that it used the training value)
        self.age_spin.setSpecialValueText("from the case")
        self.sex_combo = QComboBox()
        self.sex_combo.addItems(["from the case", "F", "M"])
        self.device = device_combo()
        form.addRow("Case", self.case_combo)
        form.addRow("Model", self.model_combo)
        form.addRow("Age", self.age_spin)
        form.addRow("Sex", self.sex_combo)
        form.addRow("Device", self.device)
        lay.addLayout(form)
        self.run_button, self.cancel_button = run_cancel_row(lay, self.run, self.cancel)
        # whose result is shown (case, model), and whether it is the selected case's
        self.heading = QLabel("")
        self.heading.setWordWrap(True)
        self.heading.setHidden(True)
        lay.addWidget(self.heading)
        self.results_box = QWidget()
        res = QFormLayout(self.results_box)
        res.setContentsMargins(0, 0, 0, 0)
        res.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
        self.task_labels: Dict[str, QLabel] = {}
        for t, (title, _) in TASK_LABELS.items():
            lab = QLabel("-")
            lab.setWordWrap(True)
            res.addRow(title, lab)
            self.task_labels[t] = lab
        self.risk_label = QLabel("-")
        self.risk_label.setWordWrap(True)
        res.addRow("OS risk score", self.risk_label)
        self.pm_legend = QLabel("")         # what the ± is
        self.pm_legend.setWordWrap(True)
        self.pm_legend.setHidden(True)
        f = self.pm_legend.font()
        f.setPointSizeF(max(6.0, f.pointSizeF() * 0.9))
        self.pm_legend.setFont(f)
        res.addRow(self.pm_legend)
        lay.addWidget(self.results_box)
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure
        self.figure = Figure(figsize=(4, 2.4))
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.ax = self.figure.add_subplot(111)
        self.ax.set_xlabel("slice")
        self.ax.set_ylabel("attention")
        self.canvas.mpl_connect("button_press_event", self._on_click)
        self.canvas.mpl_connect("resize_event", self._on_resize)
        # beside other docks the plot would otherwise shrink to a few unreadable pixels
        self.canvas.setMinimumHeight(180)
        lay.addWidget(self.canvas)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        lay.addWidget(self.status)
        lay.addStretch(1)
        self.model_combo.currentIndexChanged.connect(self._on_model)
        self.case_combo.currentTextChanged.connect(self._update_heading)
        # the combo rebuilds itself with its signals blocked when a case closes or opens
        napari_viewer.layers.events.inserted.connect(self._update_heading)
        napari_viewer.layers.events.removed.connect(self._update_heading)
        self.refresh_models()

    # -- models --------------------------------------------------------------------------------
    def refresh_models(self) -> None:
        from ..core.models import list_models
        from ..core.predict import TASK
        ms = list_models(TASK)
        self._cards = {m["name"]: m["card"] for m in ms}
        from ..core.predict import default_model_name
        first = default_model_name() if self._cards else None
        names = sorted(self._cards, key=lambda n: (n != first, n))
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        self.model_combo.addItems(names)
        self.model_combo.blockSignals(False)
        self._on_model()
        if not names:
            self.status.setText("No prediction model installed.")

    def _on_model(self, *_: Any) -> None:
        card = self._cards.get(self.model_combo.currentText(), {})
        used = bool((card.get("clinical") or {}).get("used"))
        self.age_spin.setEnabled(used)
        self.sex_combo.setEnabled(used)
        tip = ("used by this model; 'from the case' takes the case's clinical table (a pack's "
               "clinical.csv) when it has one" if used
               else "this model does not use clinical data")
        self.age_spin.setToolTip(tip)
        self.sex_combo.setToolTip(tip)

    # -- run -----------------------------------------------------------------------------------
    def inputs(self) -> PredictInputs:
        age = self.age_spin.value() or None
        sex = self.sex_combo.currentText()
        return PredictInputs(case_id=self.case_combo.currentText(),
                             model=self.model_combo.currentText(), age=age,
                             sex=None if sex == "from the case" else sex,
                             device=self.device.currentText())

    def _load_model(self, name: str):
        from ..core.models import load_model
        from ..core.predict import TASK, default_model_name
        if name not in self._models:
            self._models[name] = load_model(name, task=TASK)
            # the preselected default may give way where it cannot predict (a 3D case
            # without T2: predict_mil instead, with a warning), as on the command line
            self._models[name].extras["as_default"] = name == default_model_name()
        return self._models[name]

    def run(self):
        from ..core.predict import predict
        inp = self.inputs()
        case = self.case_combo.case_or_notify(include_labels=False)
        if case is None:
            return None
        self._clear_results()           # nothing of an earlier run stays shown
        clinical = {k: v for k, v in (("age", inp.age), ("sex", inp.sex)) if v is not None}
        layers = [ly for ly in self.viewer.layers
                  if (ly.metadata or {}).get("radiogen", {}).get("case_id") == case.case_id
                  and (ly.metadata or {}).get("radiogen", {}).get("sequence") == case.reference]
        self._ref_layer_name = layers[0].name if layers else None
        self.status.setText(f"predicting {case.case_id} ...")
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        cid = case.case_id
        model_name = inp.model
        device = inp.device

        def factory(token):
            return predict(case, self._load_model(model_name) if model_name else None,
                           clinical=clinical or None, device=inp.device, cancel=token)

        self._job = start_job(factory, name="predict", viewer=self.viewer, owner=self,
                              on_result=lambda r: self.show_result(
                                  r, cid, requested=model_name, device=device),
                              on_error=lambda e: self.status.setText(f"error: {e}"),
                              on_finished=self._finished)
        return self._job

    def cancel(self):
        if self._job is not None:
            self._job.cancel()

    def _clear_results(self) -> None:
        self.result = None
        self.result_case_id = None
        self.requested_model = None
        self._closed_note = ""
        for lab in self.task_labels.values():
            lab.setText("-")
            lab.setToolTip("")
        self.risk_label.setText("-")
        self.pm_legend.setText("")
        self.pm_legend.setHidden(True)
        self._title = ""
        self.ax.clear()
        self.canvas.draw_idle()
        self._update_heading()

    def _update_heading(self, *_: Any) -> None:
        """Name the shown result's case and model; grey the result out while another case is
        selected (the result is not the selected case's)."""
        if self.result is None:
            self.heading.setText("")
            self.heading.setHidden(True)
            self.results_box.setEnabled(True)
            return
        cid, cur = self.result_case_id, self.case_combo.currentText()
        text = f"Result for {cid} ({self.result.model}"
        if self.substituted:
            text += (f": the chosen {self.requested_model} could not be used on this case, "
                     "see the first warning")
        text += ")"
        other = bool(cur) and cur != cid
        if other:
            text += f": not the selected case {cur} (Run to predict {cur})"
        if self._closed_note:
            text += self._closed_note
        self.heading.setText(text)
        self.heading.setHidden(False)
        self.results_box.setEnabled(not other)

    def _finished(self, job) -> None:
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if job.cancelled:
            self.status.setText("cancelled")

    @property
    def substituted(self) -> bool:
        """Whether the shown result is of another model than the one chosen for it (the
        default giving way to ``predict_mil``)."""
        return bool(self.result is not None and self.requested_model
                    and self.result.model != self.requested_model)

    # -- display -------------------------------------------------------------------------------
    def show_result(self, res, case_id: Optional[str] = None, *,
                    requested: Optional[str] = None, device: Optional[str] = None) -> None:
        """Show ``res``; ``requested``: the model chosen for the run (the heading and status
        say so where another one ran), ``device``: the Device list's choice (the status names
        the device the result ran on, which differs after a CUDA out-of-memory fallback)."""
        self.result = res
        self.result_case_id = case_id or res.case_id
        self.requested_model = requested
        # the case was closed while its prediction ran: the result stands on its own
        self._closed_note = closed_case_note(self.viewer, self.result_case_id)
        val = (res.card or {}).get("validated") or {}
        methods = []
        for t, (title, pos) in TASK_LABELS.items():
            if t not in res.tasks:
                self.task_labels[t].setText("-")
                self.task_labels[t].setToolTip("")
                continue
            p = res.tasks[t].get(pos, list(res.tasks[t].values())[-1])
            unc = res.uncertainty.get(t) or {}
            sd = unc.get("sd", 0.0)
            what = pm_text(unc)
            if what not in methods:
                methods.append(what)
            self.task_labels[t].setToolTip(
                f"{title}: probability {p:.3f} \u00b1 {sd:.3f}\n{what}"
                + (f"\nmembers: {', '.join(f'{v:.2f}' for v in unc['members'])}"
                   if unc.get("members") else ""))
            v = val.get(t) or {}
            held = (res.card or {}).get("held_out", True)
            auc = (f"; CV AUC {v['auc_mean']:.2f}"
                   + (f" [{v['auc_ci95'][0]:.2f}-{v['auc_ci95'][1]:.2f}]" if v.get("auc_ci95") else "")
                   + ("" if held else " (not held-out)")
                   if v.get("auc_mean") is not None else "")
            self.task_labels[t].setText(f"{p:.2f} \u00b1 {sd:.2f}{auc}")
        if res.risk is not None:
            c = (res.card or {}).get("c_index")
            self.risk_label.setText(f"{res.risk:+.2f}" + (f" (CV C-index {c:.2f})" if c else ""))
        else:
            self.risk_label.setText("-")
        self.pm_legend.setText("\n".join(_short(m) for m in methods))
        self.pm_legend.setToolTip("\n".join(methods))
        self.pm_legend.setHidden(not methods)
        self._update_heading()
        self.plot_attention(res)
        self.scroll.updateGeometry()
        msg = (f"{self.result_case_id}: done in {res.seconds:.1f} s with {res.model}"
               + (f" instead of {requested}" if self.substituted else "")
               + on_device(device, res) + self._closed_note)
        if res.warnings:
            msg += "\n" + "\n".join(f"warning: {w}" for w in res.warnings)
        self.status.setText(msg)

    def plot_attention(self, res) -> None:
        self.ax.clear()
        # only the slices the model scored (a volume's slices are subsampled to the training
        # spacing: the others have no attention, and a line through zeros would be a comb)
        idx = np.asarray(res.slice_index or [], dtype=int)
        for s, w in (res.attention or {}).items():
            w = np.asarray(w, dtype=float)
            x = idx if idx.size and idx.max() < len(w) else np.arange(len(w))
            self.ax.plot(x, w[x], label=s, lw=1.2, marker="." if len(x) < 60 else None)
        self._title = ""
        if res.attention:
            self.ax.legend(fontsize=7, loc="upper right")
            self._title = attention_title(res) or ""  # an ensemble shows its image member's
            if self._title:
                self.ax.set_title(self._fit_title(self._title), fontsize=8)
        else:
            self.ax.text(0.5, 0.5, f"{res.model} has no slice attention"
                         + (f"\n(features {res.features_source})" if res.features_source else ""),
                         ha="center", va="center", fontsize=8, transform=self.ax.transAxes)
        self.ax.set_xlabel("slice (click to go there)")
        self.ax.set_ylabel("attention")
        self.figure.tight_layout()
        self.canvas.draw_idle()

    def _fit_title(self, title: str) -> str:
        """``title`` wrapped to the figure's width (a long ensemble name was cut)."""
        width_pt = self.figure.get_figwidth() * 72.0
        chars = max(20, int(width_pt / (8 * 0.62)))      # 8 pt text, ~0.6 em a character
        return textwrap.fill(title, chars)

    def _on_resize(self, _event=None) -> None:
        if self._title:
            self.ax.set_title(self._fit_title(self._title), fontsize=8)
        try:
            self.figure.tight_layout()
        except Exception:   # noqa: BLE001 - a figure too small to lay out: keep as it is
            pass

    def _on_click(self, event) -> None:
        if event.inaxes is not self.ax or event.xdata is None:
            return
        self.go_to_slice(int(round(event.xdata)))

    def go_to_slice(self, index: int) -> None:
        """Move the viewer to slice ``index`` of the predicted case's reference volume."""
        layer = None
        if self._ref_layer_name and self._ref_layer_name in self.viewer.layers:
            layer = self.viewer.layers[self._ref_layer_name]
        if layer is None:
            for ly in self.viewer.layers:
                if (ly.metadata or {}).get("radiogen", {}).get("case_id") == self.result_case_id:
                    layer = ly
                    break
        if layer is None:
            return
        n = layer.data.shape[0]
        index = int(np.clip(index, 0, n - 1))
        centre = [index] + [s // 2 for s in layer.data.shape[1:]]
        world = np.asarray(layer.data_to_world(centre), dtype=float)
        axis = self.viewer.dims.ndim - layer.ndim
        self.viewer.dims.set_point(axis, float(world[0]))


def pm_text(unc: Dict[str, Any]) -> str:
    """What a probability's ``±`` is: the result's own description
    (``uncertainty[task]["method"]``, e.g. an ensemble's spread of its members) when it
    carries one, else a generic wording."""
    method = (unc or {}).get("method") or (unc or {}).get("description")
    return f"\u00b1: {method}" if method else GENERIC_PM


def _short(text: str) -> str:
    """A legend's short form of a ``±`` description: its words before the first
    parenthesis (the full text is the tooltip), unless that leaves too little."""
    head = text.split(" (", 1)[0]
    return head if len(head) >= 20 else text
