"""Sequence synthesis and ranking dock widget.

Thin: pick a case (its present and missing sequences are listed), a target sequence or "fill all
missing", a synthesis model and a device; Run starts :func:`core.synthesize.synthesize` (or
:func:`core.synthesize.fill_missing`) through :func:`workers.start_job`. Each synthetic volume
lands on the case it was started from as an image layer named ``<case_id> <target> (synthetic)``
with ``metadata["radiogen"]["synthetic"] = True``, placed with the case's reference geometry (same
scale / translate as the acquired sequences). Such a layer counts as that sequence of the case for
the other widgets (segmentation, prediction), which then report that they used a synthetic input.

Rank runs :func:`core.synthesize.rank_sequences` on the case: a bar chart of each sequence's
contribution (matplotlib, in the dock), and per target the imaging-differentiation map (MAE of
generating it from each single source) as a heatmap layer ``<case_id> <target> differentiation
map``.

The result's text names the case it was made for (and says so with
``_common.closed_case_note`` when that case was closed during the run). The dock's content
scrolls when the dock is shorter than it (beside other docks) and the chart keeps a readable
height.

The result layers' data and, for a layer whose name is not in the viewer when the job starts,
their napari objects are built in the worker thread (:func:`synth_layers`,
:func:`diffmap_layers`, ``_common.build_if_new``); the main thread only inserts them, or updates
an existing layer of that name in place.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional

from qtpy.QtWidgets import (QComboBox, QFormLayout, QHBoxLayout, QLabel, QPushButton,
                            QVBoxLayout, QWidget)

from ..core.case import SEQUENCES
from ._common import (CaseCombo, add_layer_data, build_if_new, closed_case_note, device_combo,
                      image_result_data, scrolling_content)
from .layers import LayerData, case_layers, image_layer_data, radiogen_meta
from .workers import start_job

FILL_ALL = "fill all missing"
#: the contribution chart's least height (beside other docks it collapsed to a few pixels)
CHART_MIN_HEIGHT = 200


@dataclass
class PreparedSynth:
    """A synthesis or ranking result with its layers' data and, per layer, its napari object
    when the layer is new (None: a layer of that name existed at Start and is updated in
    place), all made in the worker thread."""
    result: Any
    layers: List[LayerData] = field(default_factory=list)
    built: List[Any] = field(default_factory=list)


def prepared(gen, layers_of, existing) -> Iterator[Any]:
    """Relay a job's items (run it in the worker); each result goes out as a
    :class:`PreparedSynth` with ``layers_of(result)`` and their layer objects
    (``_common.build_if_new``: ``existing`` is the viewer's layer names read at Start)."""
    from ..core.progress import Progress
    for item in gen:
        if item is not None and not isinstance(item, Progress):
            lds = layers_of(item)
            item = PreparedSynth(item, lds, [build_if_new(ld, existing) for ld in lds])
        yield item


@dataclass
class SynthInputs:
    case_id: str
    target: str                 # a sequence name or FILL_ALL
    model: Optional[str]        # model name / path (None = default)
    device: str = "auto"


class SynthesisWidget(QWidget):
    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self._job = None
        self.result: Any = None
        self.result_layers: List[Any] = []
        self.ranking: Any = None
        self.map_layers: List[Any] = []

        self.content, self.scroll, lay = scrolling_content(self)   # scrolls beside other docks
        form = QFormLayout()
        form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
        self.case_combo = CaseCombo(napari_viewer)
        self.case_combo.currentTextChanged.connect(self._update_sequences)
        self.present_label = QLabel("")
        self.present_label.setWordWrap(True)
        self.target_combo = QComboBox()
        self.target_combo.setToolTip("the sequence to generate from the acquired ones")
        self.model_combo = QComboBox()
        self.device = device_combo()
        form.addRow("Case", self.case_combo)
        form.addRow("Sequences", self.present_label)
        form.addRow("Target", self.target_combo)
        form.addRow("Model", self.model_combo)
        form.addRow("Device", self.device)
        lay.addLayout(form)
        row = QHBoxLayout()
        self.run_btn = QPushButton("Run")
        self.run_btn.clicked.connect(self.run)
        self.rank_btn = QPushButton("Rank sequences")
        self.rank_btn.setToolTip("contribution of each sequence (z-scored PSNR/SSIM of single-"
                                 "source synthesis) and differentiation maps")
        self.rank_btn.clicked.connect(self.rank)
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.cancel_btn.clicked.connect(self.cancel)
        for b in (self.run_btn, self.rank_btn, self.cancel_btn):
            row.addWidget(b)
        lay.addLayout(row)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        lay.addWidget(self.status)
        self.metrics_label = QLabel("")
        self.metrics_label.setWordWrap(True)
        lay.addWidget(self.metrics_label)
        self._figure = None
        self._canvas = None
        self._chart_box = QVBoxLayout()
        lay.addLayout(self._chart_box)
        lay.addStretch(1)

        self._refresh_models()
        napari_viewer.layers.events.inserted.connect(self._update_sequences)
        napari_viewer.layers.events.removed.connect(self._update_sequences)
        self._update_sequences()

    # -- state ------------------------------------------------------------------------------------
    def _refresh_models(self) -> None:
        from ..core.models import list_models
        self.model_combo.clear()
        for m in list_models("synthesis"):
            self.model_combo.addItem(m["name"], m["path"])
        if self.model_combo.count() == 0:
            self.model_combo.addItem("(no synthesis model installed)", None)

    def set_model_path(self, path: str, name: Optional[str] = None) -> None:
        """Select a model file that is not in the registry (tests, user files)."""
        self.model_combo.addItem(name or str(path), str(path))
        self.model_combo.setCurrentIndex(self.model_combo.count() - 1)

    def _sequences(self, case_id: str) -> Dict[str, bool]:
        """{sequence: synthetic} of the case's image layers."""
        out: Dict[str, bool] = {}
        for seq, layer in case_layers(list(self.viewer.layers), case_id).items():
            if seq in SEQUENCES:
                out[seq] = bool(radiogen_meta(layer).get("synthetic"))
        return out

    def _update_sequences(self, *_: Any) -> None:
        cid = self.case_combo.currentText()
        seqs = self._sequences(cid) if cid else {}
        present = [s + (" (synthetic)" if seqs[s] else "") for s in SEQUENCES if s in seqs]
        missing = [s for s in SEQUENCES if s not in seqs]
        self.present_label.setText(
            f"present: {', '.join(present) or 'none'}\nmissing: {', '.join(missing) or 'none'}"
            if cid else "open a case first")
        cur = self.target_combo.currentText()
        self.target_combo.blockSignals(True)
        self.target_combo.clear()
        items = ([FILL_ALL] if missing else []) + missing + [s for s in SEQUENCES if s in seqs]
        self.target_combo.addItems(items)
        if cur in items:
            self.target_combo.setCurrentText(cur)
        self.target_combo.blockSignals(False)

    @property
    def missing(self) -> List[str]:
        cid = self.case_combo.currentText()
        seqs = self._sequences(cid) if cid else {}
        return [s for s in SEQUENCES if s not in seqs]

    def inputs(self) -> SynthInputs:
        return SynthInputs(case_id=self.case_combo.currentText(),
                           target=self.target_combo.currentText(),
                           model=self.model_combo.currentData(),
                           device=self.device.currentText())

    def _busy(self, busy: bool) -> None:
        self.run_btn.setEnabled(not busy)
        self.rank_btn.setEnabled(not busy)
        self.cancel_btn.setEnabled(busy)

    # -- actions ----------------------------------------------------------------------------------
    def run(self) -> None:
        from ..core.errors import RadiogenError
        from napari.utils.notifications import show_error

        inp = self.inputs()
        try:
            case = self.case_combo.case(include_labels=False)     # captured now, not at finish
            if inp.model is None:
                raise RadiogenError("no synthesis model is installed")
        except RadiogenError as e:
            show_error(str(e))
            return
        from ..core import synthesize as S

        if inp.target == FILL_ALL:
            needed = list(SEQUENCES)
            core = lambda tok: S.fill_missing(case, inp.model, needed,  # noqa: E731
                                              device=inp.device, cancel=tok)
            name = f"fill missing ({inp.case_id})"
        else:
            core = lambda tok: S.synthesize(case, inp.model, inp.target,  # noqa: E731
                                            device=inp.device, cancel=tok)
            name = f"synthesize {inp.target} ({inp.case_id})"
        # layer names as the job starts (main thread): a new result layer is built, napari
        # object included, in the worker; an existing one is updated in place
        existing = {layer.name for layer in self.viewer.layers}

        def factory(tok):
            return prepared(core(tok), lambda res: synth_layers(res, case, inp.case_id),
                            existing)

        self.status.setText(f"{name}: running")
        self._busy(True)
        self._job = start_job(factory, name=name, viewer=self.viewer, owner=self,
                              on_result=lambda r: self._on_result(inp, case, r),
                              on_progress=lambda p: self.status.setText(str(p)),
                              on_finished=self._on_finished)

    def _add_layers(self, prep: PreparedSynth) -> List[Any]:
        """Insert the layers the worker prepared (or update existing ones in place)."""
        built = prep.built or [None] * len(prep.layers)
        return [add_layer_data(self.viewer, ld, select=True, built=b)
                for ld, b in zip(prep.layers, built)]

    def _on_result(self, inp: SynthInputs, case, prep: PreparedSynth) -> None:
        from ..core.case import Case
        from ..core.synthesize import SynthResult
        res = prep.result
        self.result = res
        # the case was closed during the run: its layers are still added, and stand alone
        note = closed_case_note(self.viewer, inp.case_id)
        self.result_layers = self._add_layers(prep)
        txt = ""
        if isinstance(res, SynthResult):
            txt = f"{res.target} from {'+'.join(res.sources)} in {res.seconds:.1f} s"
            if res.psnr is not None:
                txt += (f"; vs the real {res.target}: PSNR {res.psnr:.2f} dB, "
                        f"SSIM {res.ssim:.3f} (brain)")
            if res.warnings:
                txt += "; " + "; ".join(map(str, res.warnings))
        elif isinstance(res, Case):
            added = _added(res, case)
            txt = f"synthesised: {', '.join(added) or 'nothing missing'}"
        self.metrics_label.setText(f"{inp.case_id}: {txt}{note}")
        self._update_sequences()
        self.scroll.updateGeometry()

    def rank(self) -> None:
        from ..core.errors import RadiogenError
        from napari.utils.notifications import show_error

        inp = self.inputs()
        try:
            case = self.case_combo.case(include_labels=False)
            if inp.model is None:
                raise RadiogenError("no synthesis model is installed")
        except RadiogenError as e:
            show_error(str(e))
            return
        from ..core import synthesize as S
        name = f"rank sequences ({inp.case_id})"
        existing = {layer.name for layer in self.viewer.layers}     # read at Start (see run)
        self.status.setText(f"{name}: running")
        self._busy(True)
        self._job = start_job(lambda tok: prepared(
                                  S.rank_sequences(case, inp.model, device=inp.device,
                                                   cancel=tok),
                                  lambda res: diffmap_layers(res, inp.case_id, inp.target),
                                  existing),
                              name=name, viewer=self.viewer, owner=self,
                              on_result=lambda r: self._on_rank(inp, r),
                              on_progress=lambda p: self.status.setText(str(p)),
                              on_finished=self._on_finished)

    def _on_rank(self, inp: SynthInputs, prep: PreparedSynth) -> None:
        res = prep.result
        self.ranking = res
        c = res.cases[0]
        note = closed_case_note(self.viewer, inp.case_id)
        self._draw_chart(c.scores, f"{c.case_id}: sequence contribution")
        self.map_layers = self._add_layers(prep)
        for ld, layer in zip(prep.layers, self.map_layers):
            if layer.visible != ld[1]["visible"]:     # a layer updated in place
                layer.visible = ld[1]["visible"]
        order = sorted(c.scores.items(), key=lambda kv: -kv[1]["contribution"])
        self.metrics_label.setText(f"{inp.case_id}: contribution: " + ", ".join(
            f"{s} {v['contribution']:+.2f}" for s, v in order)
            + "".join(f"; {w}" for w in res.warnings) + note)
        self.scroll.updateGeometry()

    def _draw_chart(self, scores, title: str) -> None:
        from matplotlib.figure import Figure
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from ..core.synthesize import plot_scores
        if self._canvas is None:
            self._figure = Figure(figsize=(4, 2.8))
            self._canvas = FigureCanvasQTAgg(self._figure)
            self._canvas.setMinimumHeight(CHART_MIN_HEIGHT)
            self._chart_box.addWidget(self._canvas)
        self._figure.clear()
        plot_scores(self._figure.add_subplot(111), scores, title)
        self._figure.tight_layout()
        self._canvas.draw_idle()

    def cancel(self) -> None:
        if self._job is not None:
            self._job.cancel()

    def _on_finished(self, job) -> None:
        self._busy(False)
        if job.cancelled:
            self.status.setText(f"{job.name}: cancelled")
        elif job.error is not None:
            self.status.setText(f"{job.name}: failed ({job.error})")
        else:
            self.status.setText(f"{job.name}: done in {job.elapsed:.1f} s")


# -- result layers (pure numpy + layer kwargs: built in the worker) ------------------------------
def _added(res, case) -> List[str]:
    """The sequences a fill-missing run added to ``case`` (the case captured at Run)."""
    return [s for s in res.synthetic_inputs() if s not in case.sequences]


def synthetic_layer_data(case_id: str, vol, target: str, info: Dict[str, Any]) -> LayerData:
    """The image layer ``<case_id> <target> (synthetic)`` of a synthetic volume, placed with
    its case's reference geometry; ``metadata["radiogen"]["synthetic"]`` is True."""
    # translucent: shown as itself on top (added to the visible sequence below, additive
    # blending washed the brain out to white)
    data, kw, kind = image_layer_data(vol, case_id=case_id, sequence=target,
                                      name=f"{case_id} {target} (synthetic)",
                                      contrast=(0.0, 1.0), blending="translucent", **info)
    kw["metadata"]["radiogen"]["synthetic"] = True
    return data, kw, kind


def synth_layers(res, case, case_id: str) -> List[LayerData]:
    """The layers of a synthesis (one volume) or fill-missing (each added sequence) result;
    ``case``: the case as captured at Run; ``case_id``: the case the layers land on."""
    from ..core.case import Case
    from ..core.synthesize import SynthResult
    if isinstance(res, SynthResult):
        return [synthetic_layer_data(case_id, res.volume, res.target,
                                     {"sources": res.sources, "model": res.model,
                                      "metrics": res.to_json().get("metrics")})]
    if isinstance(res, Case):
        info = res.meta.get("synthesized", {})
        return [synthetic_layer_data(case_id, res.sequences[s], s, dict(info.get(s, {})))
                for s in _added(res, case)]
    return []


def diffmap_layers(res, case_id: str, target: str) -> List[LayerData]:
    """The differentiation-map heatmap layers ``<case_id> <t> differentiation map`` of a
    ranking's (first) case; only the one of ``target`` (the widget's target at Run) is visible,
    or the first when ``target`` has no map."""
    c = res.cases[0]
    show = target if target in c.maps else None
    first = next(iter(c.maps), None)
    return [image_result_data(vol.array, vol.geometry, case_id,
                              f"{case_id} {t} differentiation map",
                              colormap="inferno", opacity=0.6,
                              contrast=(0.0, max(0.05, float(vol.array.max()))),
                              sequence=f"diffmap-{t}", target=t,
                              sources=vol.meta.get("sources"), kind="differentiation-map",
                              visible=(t == show) if show else (t == first))
            for t, vol in c.maps.items()]
