"""Training dock widget: pick a config (or a task), a model to fine-tune (or none), data, device,
epochs, validation scheme;
Start / Cancel / Resume (a run folder that holds a run fills in its settings); live loss and
metric curves (one line per fold), progress with time left and the best score so far, shown at
most every ``UPDATE_MS``; the core's messages in the widget's terms (:func:`widget_terms`).
The run itself is ``core.train.engine.train`` driven by ``workers.start_job``."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import threading

from qtpy.QtCore import QObject, Qt, QTimer, Signal
from qtpy.QtWidgets import (QCheckBox, QComboBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel,
                            QLineEdit, QProgressBar, QPushButton, QSpinBox, QVBoxLayout, QWidget)


#: least milliseconds between two status updates, and seconds between two curve renders
UPDATE_MS = 250
CURVES_S = 1.0
#: lines the status shows (its height is fixed)
STATUS_LINES = 4
#: the "install the model" checkbox's tooltip
INSTALL_TIP = ("install the trained model under its name so that the other widgets offer it "
               "(an installed model of that name is replaced, and the status says so). Setting "
               '"limit patients" unticks it: a limited run is a smoke run and is not installed '
               "unless you tick it again (as radiogen train --limit)")


@dataclass
class TrainInputs:
    config: Any                      # path / shipped config name / dict
    out_dir: str
    data: Optional[str] = None       # overrides cfg["data"] (case folders + labels CSV, packs)
    labels: Optional[str] = None     # overrides cfg["labels"]
    device: str = "auto"
    epochs: Optional[int] = None
    folds: Optional[int] = None
    limit: Optional[int] = None
    resume: bool = False
    #: None = the CLI's rule: installed unless ``limit`` is set (a smoke run); True/False: as
    #: the user chose
    install: Optional[bool] = None
    #: fine-tuning: a model name or file to start from; None = the config's ``init`` (if any),
    #: "" = from scratch even when the config names one
    init: Optional[str] = None
    name: Optional[str] = None       # overrides the config's model name

    def factory(self):
        from ..core.train.config import load_config
        from ..core.train.engine import train
        over: Dict[str, Any] = {}
        if self.data:
            over["data"] = self.data
        if self.labels:
            over["labels"] = self.labels
        if self.init:
            over["init"] = self.init
        if self.name:
            over["name"] = self.name
        cfg = load_config(self.config, **over)
        if self.init == "":
            cfg.pop("init", None)
        install = self.will_install
        #: whether the run has validation patients (``train.val_fraction`` > 0): without them
        #: the curves' validation panel says so instead of waiting for data
        self.has_validation = float((cfg.get("train") or {}).get("val_fraction", 0.2) or 0) > 0
        self.install_note = None
        if (install or self.resume) and not self.name:
            # the CLI's rule: a resumed run keeps its name (installed or not: the engine
            # refuses another one), a shipped config's becomes -user
            from ..core.train.engine import default_install_name
            cfg["name"], self.install_note = default_install_name(cfg, self.out_dir,
                                                                  resume=self.resume)

        def gen(token):
            return train(cfg, self.out_dir, device=self.device, epochs=self.epochs,
                         limit=self.limit, resume=self.resume, folds=self.folds, cancel=token,
                         install=install)
        return gen

    @property
    def will_install(self) -> bool:
        """Whether the run installs its model: as chosen, else (``install`` None) unless a
        patient limit makes it a smoke run (``radiogen train --limit`` installs only with
        ``--install``)."""
        return bool(self.install) if self.install is not None else not self.limit


#: the core's messages serve the command line too: the option names they mention, as the
#: widget's controls (applied by :func:`widget_terms` to every message the widget shows)
_CLI_PHRASES = [
    (r"use --device cpu", 'choose "cpu" in the device list'),
    (r"use --resume to continue it or choose another --out folder",
     "press Resume to continue it, or choose another run folder"),
    (r"choose another --out folder to train again", "choose another run folder to train again"),
    (r"start without --resume", "start a new run (Start) in another run folder"),
    (r"--limit/--folds", '"limit patients" or "validation"'),
    (r"resume with the same --init file", 'resume with the same "start from" model'),
    (r"resume with the same options", "resume with the same settings"),
    (r"`radiogen train --name`, or the Training widget's model name", "or the model name field"),
    (r"give an existing folder with --data FOLDER", "choose an existing folder as the data folder"),
    (r"Give your data with --data FOLDER", "Choose your own folder as the data folder"),
]
_CLI_OPTIONS = {
    "device": 'the "device" list', "resume": "Resume", "out": "the run folder",
    "limit": '"limit patients"', "folds": '"validation"', "epochs": '"epochs"',
    "data": "the data folder", "labels": "the labels CSV", "init": '"start from"',
    "name": "the model name", "install": '"install the model"',
    "no-install": '"install the model" unticked',
}
#: config keys in a resume refusal's "changed: key: old -> new" list, as the widget's fields
#: (the engine's internal keys included: ``_limit`` is "limit patients", ``_source`` the
#: config file, which the engine names so itself)
_CFG_KEYS = {"_limit": "limit patients", "folds": "validation", "train.epochs": "epochs",
             "data": "data folder", "labels": "labels CSV", "init": "start from",
             "name": "model name", "_source": "config file"}


def _folds_value(v: str) -> str:
    """A ``folds`` value as the "validation" list says it."""
    if v in ("0", "1"):
        return "one held-out split"
    return f"{v}-fold cross-validation" if v.isdigit() else v


#: the values of those keys as the fields show them (``-``: the key one side lacks)
_CFG_VALUES = {"_limit": lambda v: "all patients" if v in ("-", "0") else v,
               "folds": _folds_value,
               "init": lambda v: "from scratch" if v == "-" else v}


def widget_terms(text: str) -> str:
    """A core message in the widget's vocabulary: ``--device`` is the device list,
    ``--resume`` the Resume button, ``--out`` the run folder, ``--limit``/``--folds`` the
    "limit patients"/"validation" fields; in a resume refusal's list of changed settings
    (``changed: _limit: 8 -> -, folds: 0 -> 3``) the config keys are the fields and their
    values as the fields show them (``limit patients: 8 -> all patients, validation: one
    held-out split -> 3-fold cross-validation``); other text is kept as it is."""
    import re
    for pat, rep in _CLI_PHRASES:
        text = re.sub(pat, lambda m, r=rep: r, text)
    # an option with its placeholder ("--data FOLDER") is the control alone: never the
    # placeholder word after the control's name
    text = re.sub(r"--([a-z][a-z-]*)(?: (?:FOLDER|FILE|CSV|NAME|N)\b)?",
                  lambda m: _CLI_OPTIONS.get(m.group(1), m.group(0)), text)
    if "changed: " in text:
        def field(m) -> str:
            key, old, new = m.group(2), m.group(3), m.group(4)
            shown = _CFG_VALUES.get(key)
            if shown is not None and old is not None:
                return f"{m.group(1)}{_CFG_KEYS[key]}: {shown(old)} -> {shown(new)}"
            return f"{m.group(1)}{_CFG_KEYS[key]}: " + (f"{old} -> {new}" if old else "")
        keys = "|".join(re.escape(k) for k in _CFG_KEYS)
        # a one-word value pair is put in the field's words; any other value stays as it is
        text = re.sub(rf"(changed: |, )({keys}): (?:([^\s,()]+) -> ([^\s,()]+)(?=[,)]|$))?",
                      field, text)
    return text


def read_run(folder: Any) -> Optional[Dict[str, Any]]:
    """The settings of the run a run folder holds (None when it holds none): ``epochs``,
    ``folds`` and ``limit`` (0 = all patients) from the engine's ``config.json``, and from its
    ``state.json`` where the last checkpoint stands (``fold``/``n_folds``/``epoch``, 1-based),
    the epoch ``history`` (the curves so far) and, for a run that has finished (the engine's
    rule, :func:`engine.finished_run`: a resume of it trains and installs nothing), its model
    file as ``finished``."""
    import json
    try:
        d = Path(str(folder)).expanduser()
        if not str(folder).strip() or not (d / "config.json").is_file():
            return None
        cfg = json.loads((d / "config.json").read_text())
        train = cfg.get("train") or {}
        run: Dict[str, Any] = {"epochs": int(train["epochs"]) if train.get("epochs") else None,
                               "folds": int(cfg.get("folds") or 0),
                               "limit": int(cfg.get("_limit") or 0), "source": cfg.get("_source"),
                               "task": cfg.get("task"), "history": []}
    except (OSError, ValueError, TypeError, KeyError):
        return None
    try:
        st = json.loads((d / "state.json").read_text())
        run["n_folds"] = int(st.get("n_folds") or 1)
        run["fold"] = int(st.get("fold") or 0) + 1
        run["epoch"] = int(st.get("epoch") or 0)
        run["stage_done"] = bool(st.get("stage_done"))
        run["history"] = [h for h in st.get("history") or [] if isinstance(h, dict)]
        from ..core.train.engine import finished_run
        n_stages = run["n_folds"] + (1 if cfg.get("final", "best_fold") == "retrain" else 0)
        done = finished_run(d, st, n_stages)
        if done is not None:
            run["finished"] = done.model_path
    except (OSError, ValueError, TypeError, AttributeError):
        pass
    return run


def _fmt_s(s: Optional[float]) -> str:
    if s is None:
        return "?"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class _InitLister(QObject):
    """Carries the 'start from' model list from its worker thread to the widget."""
    listed = Signal(int, object)


#: validation metric names as the curves' title shows them (other keys: "_" -> " ")
_METRIC_NAMES = {"auc": "AUC", "macro_f1": "macro F1", "psnr_db": "PSNR (dB)", "ssim": "SSIM",
                 "c_index": "C-index", "dice": "Dice", "accuracy": "accuracy", "mae": "MAE",
                 "mean_auc_cindex": "mean of AUCs and C-index"}


def _metric_label(key: str) -> str:
    if key.startswith("mean:"):
        return "mean " + _metric_label(key[5:])
    if key in _METRIC_NAMES:
        return _METRIC_NAMES[key]
    head, _, tail = key.partition("_")
    if head in _METRIC_NAMES and tail:
        return f"{_METRIC_NAMES[head]} {tail}"
    return key.replace("_", " ")


def score_metric_candidates(metrics: Dict[str, Any]) -> Optional[List[str]]:
    """The validation metrics an epoch's ``val_score`` is (the task's ``evaluate`` names its
    selection score only ``score``): the ``val_*`` keys with the same value, and ``mean:<p>``
    where it is the mean of the ``val_<p>_<x>`` group (Dice over the tumour regions). None when
    the epoch has no finite score."""
    import math
    vals = {k[4:]: float(v) for k, v in metrics.items() if k.startswith("val_")
            and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
    score = vals.pop("score", None)
    if score is None:
        return None
    vals.pop("loss", None)
    tol = 1e-9 * max(1.0, abs(score))
    out = [k for k, v in vals.items() if abs(v - score) <= tol]
    groups: Dict[str, List[float]] = {}
    for k, v in vals.items():
        head, _, tail = k.partition("_")
        if tail and "_" not in tail:
            groups.setdefault(head, []).append(v)
    out += [f"mean:{h}" for h, g in groups.items()
            if len(g) >= 2 and abs(sum(g) / len(g) - score) <= tol]
    return out


class _Curves(QObject):
    """Loss (left) and validation score (right) per epoch of each fold, drawn by matplotlib.

    The data live in the main thread (updated from Progress, or from a run's saved history);
    the figure is rendered with matplotlib's Agg backend on a background thread and shown as an
    image, because one matplotlib draw takes 0.1-0.5 s on a busy CPU and the viewer must never
    freeze for that long. Only the newest data are rendered (older requests are skipped); the
    widget asks for a render (``draw``) at its own pace, ``dirty`` says new data wait.

    Each fold is one line (x = its own epochs, colour = fold, named in the legend); the
    validation panel is titled with the metric the score is (``metric_name``); without data the
    panels say so instead of showing empty axes (the validation panel says when the run has no
    validation set, ``has_validation`` False). The figure is drawn at the label's size (again
    after a resize; the label never asks for the image's width, so the dock can narrow) with a
    constrained layout and the folds named below the panels: nothing is cut at its edges."""

    rendered = Signal(object)

    def __init__(self, parent=None):
        super().__init__(parent)
        from qtpy.QtWidgets import QSizePolicy
        self.label = QLabel()
        self.label.setMinimumSize(320, 200)
        self.label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        # the image follows the label's width, never the reverse (a pixmap wider than the dock
        # would widen the widget past the dock's edge)
        self.label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.label.installEventFilter(self)
        self._resized = QTimer(self)
        self._resized.setSingleShot(True)
        self._resized.setInterval(150)
        self._resized.timeout.connect(self.draw)
        self.n_rendered = 0
        self.n_requested = 0
        self._pending = None
        self._cv = threading.Condition()
        self._stop = False
        self.rendered.connect(self._show)
        self._thread = threading.Thread(target=self._loop, name="radiogen-curves", daemon=True)
        self._thread.start()
        self.reset()

    # -- data (main thread) ----------------------------------------------------------------------
    _SERIES = ("steps_x", "steps_y", "steps_f", "ep_x", "ep_y", "ep_f", "val_loss_x", "val_loss",
               "val_loss_f", "met_x", "met_y", "met_f")

    def reset(self):
        # x = epoch within the fold, *_f = the fold (0-based; == n_folds: the final retrain)
        for k in self._SERIES:
            setattr(self, k, [])
        self.n_folds = 1
        self.has_validation: Optional[bool] = None   # False: the run has no validation set
        self._metric_keys: Optional[List[str]] = None
        self._score_name: Optional[str] = None      # the task's own name for it, when given
        self.dirty = True

    @property
    def metric_name(self) -> Optional[str]:
        """What the validation score is ("AUC", "mean Dice"...), None while unknown: the name
        the training task gives it (``TrainProgress.score_name``), else the ``val_*`` metric
        whose values it has had in every epoch."""
        if self._score_name:
            return _metric_label(self._score_name)
        return _metric_label(self._metric_keys[0]) if self._metric_keys else None

    def _epoch(self, fold: int, epoch: float, loss, metrics: Dict[str, Any]) -> None:
        if loss is not None:
            self.ep_x.append(epoch)
            self.ep_y.append(loss)
            self.ep_f.append(fold)
        if metrics.get("val_loss") is not None:
            self.val_loss_x.append(epoch)
            self.val_loss.append(metrics["val_loss"])
            self.val_loss_f.append(fold)
        if metrics.get("val_score") is not None:
            self.met_x.append(epoch)
            self.met_y.append(metrics["val_score"])
            self.met_f.append(fold)
        cands = score_metric_candidates(metrics)
        if cands is not None:
            self._metric_keys = (cands if self._metric_keys is None
                                 else [c for c in self._metric_keys if c in cands])
        self.dirty = True

    def add(self, p) -> None:
        name = getattr(p, "score_name", None)
        if name and name != "score":
            self._score_name = str(name)
        if p.epoch_end or p.phase == "train":      # (the prepare and report items name no fold)
            self.n_folds = max(1, int(p.n_folds or 1))
        if p.epoch_end:
            self._epoch(p.fold, p.epoch, p.loss, p.metrics)
        elif p.phase == "train" and p.loss is not None and p.steps:
            self.steps_x.append(p.epoch - 1 + p.step / p.steps)
            self.steps_y.append(p.loss)
            self.steps_f.append(p.fold)
            self.dirty = True

    def add_history(self, history: List[Dict[str, Any]], n_folds: int = 1) -> None:
        """The epochs a run's ``state.json`` records (``fold`` 1-based, ``train_loss``,
        ``val_*``), e.g. before a resume continues them."""
        self.n_folds = max(1, int(n_folds or 1))
        for h in history:
            try:
                self._epoch(int(h["fold"]) - 1, float(h["epoch"]), h.get("train_loss"), h)
            except (KeyError, TypeError, ValueError):
                continue

    def snapshot(self) -> Dict[str, Any]:
        """A copy of the data for :meth:`_plot`."""
        snap: Dict[str, Any] = {k: list(getattr(self, k)) for k in self._SERIES}
        snap["n_folds"] = self.n_folds
        snap["metric"] = self.metric_name
        snap["no_val"] = self.has_validation is False
        return snap

    def eventFilter(self, obj, event) -> bool:
        from qtpy.QtCore import QEvent
        if obj is self.label and event.type() == QEvent.Type.Resize:
            self._resized.start()          # one render at the new size once resizing stops
        return False

    def draw(self) -> None:
        """Render the current data (on the background thread)."""
        snap = self.snapshot()
        try:
            snap["size"] = (max(320, self.label.width()), max(200, self.label.height()))
        except RuntimeError:          # the widget is gone
            self.close()
            return
        self.dirty = False
        self.n_requested += 1
        with self._cv:
            self._pending = snap
            self._cv.notify()

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()

    def _show(self, img) -> None:
        from qtpy.QtGui import QImage, QPixmap
        buf, w, h = img
        qimg = QImage(buf, w, h, 4 * w, QImage.Format.Format_RGBA8888).copy()
        try:
            lw, lh = self.label.width(), self.label.height()
            if w > lw or h > lh:           # the label shrank meanwhile: fit until the re-render
                qimg = qimg.scaled(lw, lh, Qt.AspectRatioMode.KeepAspectRatio,
                                   Qt.TransformationMode.SmoothTransformation)
            self.label.setPixmap(QPixmap.fromImage(qimg))
        except RuntimeError:          # the widget is gone
            self.close()
            return
        self.n_rendered += 1

    # -- rendering (background thread) -------------------------------------------------------
    @staticmethod
    def fold_name(fold: int, n_folds: int) -> str:
        return "final (all patients)" if fold >= n_folds else f"fold {fold + 1}"

    @classmethod
    def _plot(cls, fig, snap) -> None:
        from matplotlib.lines import Line2D
        from matplotlib.ticker import MaxNLocator
        fig.clear()
        # constrained: tick labels, titles and the folds' legend fit inside the image
        fig.set_layout_engine("constrained", w_pad=0.02, h_pad=0.02, wspace=0.04)
        ax_l, ax_m = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
        ax_l.set_title("loss", fontsize=8)
        ax_m.set_title(f"validation {snap['metric'] or 'score'}", fontsize=8)
        folds = sorted(set(snap["steps_f"]) | set(snap["ep_f"]) | set(snap["val_loss_f"])
                       | set(snap["met_f"]))
        multi = len(folds) > 1 or snap["n_folds"] > 1
        styles = {"running": dict(lw=0.8, alpha=0.4), "train": dict(marker="o", ms=3),
                  "val": dict(marker="s", ms=3, ls="--")}

        def series(ax, kind, xs, ys, fs):
            for i, f in enumerate(folds):
                pts = [(x, y) for x, y, g in zip(xs, ys, fs) if g == f]
                if pts:
                    ax.plot(*zip(*pts), color=f"C{i % 10}", **styles[kind],
                            label=None if multi else kind)
        series(ax_l, "running", snap["steps_x"], snap["steps_y"], snap["steps_f"])
        series(ax_l, "train", snap["ep_x"], snap["ep_y"], snap["ep_f"])
        series(ax_l, "val", snap["val_loss_x"], snap["val_loss"], snap["val_loss_f"])
        series(ax_m, "train", snap["met_x"], snap["met_y"], snap["met_f"])
        for ax, has in ((ax_l, snap["steps_x"] or snap["ep_x"]), (ax_m, snap["met_x"])):
            if not has:          # neutral, not an empty +-0.04 frame
                ax.set_xticks([])
                ax.set_yticks([])
                text = ("no validation set\n(the config's train.val_fraction is 0)"
                        if ax is ax_m and snap.get("no_val") else "no data yet")
                ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center",
                        va="center", fontsize=8, color="0.5", wrap=True)
                continue
            ax.tick_params(labelsize=7)
            ax.set_xlabel("epoch of the fold" if multi else "epoch", fontsize=7)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if snap["steps_x"] or snap["ep_x"]:
            if multi:       # colour = fold (named on the right), style = kind
                kinds = [k for k, xs in (("running", "steps_x"), ("train", "ep_x"),
                                         ("val", "val_loss_x")) if snap[xs]]
                ax_l.legend([Line2D([], [], color="0.4", **styles[k]) for k in kinds], kinds,
                            fontsize=6, loc="best", framealpha=0.6)
            else:
                ax_l.legend(fontsize=6, loc="best", framealpha=0.6)
        if multi and folds:     # the folds' colours, for both panels: one row below them
            fig.legend([Line2D([], [], color=f"C{i % 10}", marker="o", ms=3)
                        for i in range(len(folds))],
                       [cls.fold_name(f, snap["n_folds"]) for f in folds], fontsize=6,
                       loc="outside lower center", ncols=min(len(folds), 4), frameon=False)

    def _loop(self) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        fig = Figure(figsize=(4, 2.5), dpi=80)
        FigureCanvasAgg(fig)
        while True:
            with self._cv:
                while self._pending is None and not self._stop:
                    self._cv.wait()
                if self._stop:
                    return
                snap, self._pending = self._pending, None
            try:
                w, h = snap["size"]
                fig.set_size_inches(w / fig.dpi, h / fig.dpi)
                self._plot(fig, snap)
                fig.canvas.draw()
                buf = bytes(fig.canvas.buffer_rgba())
                wpx, hpx = fig.canvas.get_width_height()
                self.rendered.emit((buf, wpx, hpx))
            except RuntimeError:           # the widget was deleted meanwhile
                return
            except Exception:              # a failed plot must never break the run
                continue


class TrainingWidget(QWidget):
    def __init__(self, napari_viewer=None):
        super().__init__()
        self.viewer = napari_viewer
        self.job = None
        self.result = None
        self.best: Optional[float] = None
        self._eta: Optional[float] = None
        from ..core.train.config import list_configs
        from ..core.train import tasks as _tasks  # noqa: F401  (registers the families)
        from ..core.train.base import TASKS

        lay = QVBoxLayout(self)
        form = QFormLayout()
        self.config = QComboBox()
        for c in list_configs():
            self.config.addItem(f"{c['name']} ({c['task']})", c["path"])
        for t in sorted(TASKS):
            self.config.addItem(f"task: {t}", {"task": t})
        self.config.addItem("Browse for a YAML config...", "__browse__")
        self.config.activated.connect(self._config_chosen)
        form.addRow("config / task", self.config)
        self.init = QComboBox()
        self._init_gen = 0
        self.init_listed_gen = 0          # the last listing shown (tests wait on it)
        self._lister = _InitLister(self)
        self._lister.listed.connect(self._init_listed)
        self.init.setToolTip("fine-tune: start from a trained model of the same kind (its "
                             "architecture and weights); the input it expects is checked "
                             "before training")
        form.addRow("start from", self.init)
        self.config.currentIndexChanged.connect(lambda *_: self._fill_init())
        self.data = self._path_row(form, "data folder", self._browse_data,
                                   "from the config (folder of cases + labels CSV, or packs)")
        self.labels = self._path_row(form, "labels CSV", self._browse_labels,
                                     "from the config (patient_id + label columns [+ path])")
        self.device = QComboBox()
        self.device.addItems(["auto", "cpu", "cuda"])
        form.addRow("device", self.device)
        self.epochs = QSpinBox()
        self.epochs.setRange(0, 10000)
        self.epochs.setSpecialValueText("from config")
        form.addRow("epochs", self.epochs)
        self.folds = QComboBox()
        self.folds.addItem("from config", None)
        self.folds.addItem("one held-out split", 0)
        for k in (3, 5, 10):
            self.folds.addItem(f"{k}-fold cross-validation", k)
        form.addRow("validation", self.folds)
        self.limit = QSpinBox()
        self.limit.setRange(0, 100000)
        self.limit.setSpecialValueText("all patients")
        form.addRow("limit patients", self.limit)
        self.model_name = QLineEdit()
        self.model_name.setPlaceholderText("from the config")
        self.model_name.setToolTip("name of the produced (and installed) model")
        form.addRow("model name", self.model_name)
        self.out_dir = self._path_row(form, "run folder", self._browse_out,
                                      "new folder under the user runs folder")
        self.out_dir.setToolTip("a folder that holds a run fills in that run's epochs, "
                                "validation and limit (Resume continues it)")
        self.out_dir.editingFinished.connect(self._run_folder_chosen)
        self.install = QCheckBox("install the model (it appears in the other widgets)")
        self.install.setChecked(True)
        self.install.setToolTip(INSTALL_TIP)
        # a limited run is a smoke run: not installed unless ticked again (as the CLI's --limit)
        self._install_auto_off = False       # "install the model" unticked by the limit
        self._limit_seen = 0
        self.limit.valueChanged.connect(self._limit_changed)
        form.addRow(self.install)
        lay.addLayout(form)
        btns = QHBoxLayout()
        self.start_btn = QPushButton("Start")
        self.cancel_btn = QPushButton("Cancel")
        self.resume_btn = QPushButton("Resume")
        self.start_btn.clicked.connect(lambda: self.start(resume=False))
        self.cancel_btn.clicked.connect(self.cancel)
        self.resume_btn.clicked.connect(lambda: self.start(resume=True))
        for w in (self.start_btn, self.cancel_btn, self.resume_btn):
            btns.addWidget(w)
        lay.addLayout(btns)
        self.bar = QProgressBar()
        self.bar.setRange(0, 1000)
        lay.addWidget(self.bar)
        self.status = QLabel("idle")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.status.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
        lay.addWidget(self.status)
        # progress is shown at most every UPDATE_MS (the newest wins): each repaint of the label,
        # the bar or the curves costs the main thread ~15 ms under a software-rendered viewer,
        # time the viewer needs while the run takes the CPU
        self._latest = None
        self._cancelling = False
        self._curves_at = 0.0
        self._ui_timer = QTimer(self)
        self._ui_timer.setSingleShot(True)
        self._ui_timer.setInterval(UPDATE_MS)
        self._ui_timer.timeout.connect(self._tick)
        self.curves = _Curves(self)
        lay.addWidget(self.curves.label)
        self.destroyed.connect(lambda *_: self.curves.close())
        self._fill_init()
        self._set_running(False)
        # import torch/MONAI/sklearn... now, in the main thread: imported later by the run's
        # worker thread they would hold the GIL and freeze the viewer for seconds
        from ..core.train.engine import warm_up
        warm_up()

    # -- inputs ---------------------------------------------------------------------------------
    def _limit_changed(self, n: int) -> None:
        """A patient limit makes the run a smoke run: "install the model" unticks itself (the
        user may tick it again); back to all patients, a box it unticked is ticked again."""
        if n and not self._limit_seen and self.install.isChecked():
            self.install.setChecked(False)
            self._install_auto_off = True
            if self.job is None or self.job.done:
                self._say('"limit patients" set: a smoke run is not installed ("install the '
                          'model" unticked; tick it to install the model anyway)')
        elif not n:
            if self._install_auto_off and not self.install.isChecked():
                self.install.setChecked(True)
            self._install_auto_off = False
        self._limit_seen = n

    def _config_chosen(self, i: int) -> None:
        if self.config.itemData(i) == "__browse__":
            path, _ = QFileDialog.getOpenFileName(self, "Training config", "", "YAML (*.yaml *.yml)")
            if path:
                self.config.insertItem(0, Path(path).name, path)
                self.config.setCurrentIndex(0)

    def _config_key(self, key: str) -> Optional[str]:
        """A top-level key (``task``, ``init``) of the selected config, read without
        loading it (None when it cannot be read)."""
        cfg = self.config.currentData()
        if isinstance(cfg, dict):
            return cfg.get(key)
        if not cfg or cfg == "__browse__":
            return None
        try:
            import yaml
            from ..core.train.config import find_config
            return (yaml.safe_load(find_config(cfg).read_text()) or {}).get(key)
        except Exception:
            return None

    def _fill_init(self) -> None:
        """'start from': the config's choice, scratch, or a model the selected task trains."""
        from ..core.models import list_models
        from ..core.train.base import TASKS
        task = TASKS.get(self._config_key("task") or "")
        own = self._config_key("init")
        self.init.clear()
        self.init.addItem(f"as the config says ({own or 'from scratch'})", None)
        if own:
            self.init.addItem("from scratch", "")
        self._init_gen += 1
        if task is None:
            return
        gen, cfg = self._init_gen, self.config.currentData()

        def work():          # off the main thread: some tasks read their data for the check
            items = []
            try:
                probe = self._probe_task(task, cfg)
                for m in list_models(task.model_task):
                    if probe is None or self._compatible(probe, m["card"]):
                        items.append((f"fine-tune {m['name']} ({m['origin']})", m["name"]))
            finally:
                try:
                    self._lister.listed.emit(gen, items)
                except RuntimeError:          # the widget was closed meanwhile
                    pass
        threading.Thread(target=work, daemon=True, name="radiogen-init-models").start()

    def _init_listed(self, gen: int, items) -> None:
        if gen != self._init_gen:             # the config changed meanwhile
            return
        for label, name in items:
            self.init.addItem(label, name)
        self.init_listed_gen = gen

    @staticmethod
    def _probe_task(task_cls, cfg):
        """The config's task object (for the input checks; None if unreadable)."""
        try:
            from ..core.train.config import load_config
            cfg = load_config(dict(cfg) if isinstance(cfg, dict) else cfg)
            cfg.pop("init", None)
            return task_cls(cfg)
        except Exception:
            return None

    @staticmethod
    def _compatible(task, card) -> bool:
        """A model the engine would accept as ``init`` for ``task`` (same input, same
        network). When the check itself fails (an unreadable card), the model is listed and
        the engine's own check speaks at Start."""
        try:
            return not task.init_mismatches(card) and not task.architecture_conflicts(card)
        except Exception:
            return True

    @staticmethod
    def _path_row(form, label: str, browse, placeholder: str) -> QLineEdit:
        """A path field with a '...' browse button, added to ``form``."""
        edit = QLineEdit()
        edit.setPlaceholderText(placeholder)
        b = QPushButton("...")
        b.setMaximumWidth(30)
        b.clicked.connect(browse)
        row = QHBoxLayout()
        row.addWidget(edit)
        row.addWidget(b)
        form.addRow(label, row)
        return edit

    def _browse_data(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Data folder")
        if d:
            self.data.setText(d)

    def _browse_out(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Run folder", self.out_dir.text().strip())
        if d:
            self.out_dir.setText(d)
            self._run_folder_chosen()

    def _run_folder_chosen(self) -> None:
        """A run folder that holds a run: its epochs, validation and limit fill the fields."""
        if self.job is not None and not self.job.done:
            return
        self._set_running(False)
        run = read_run(self.out_dir.text().strip())
        if run is None:
            return
        changed = self._apply_run(run)
        filled = (f" ({', '.join(changed)})" if changed else "")
        if run.get("finished"):
            self._say(f"the run folder holds a run that has already finished (its model: "
                      f"{run['finished']}); its settings are filled in{filled}. Resume trains "
                      "and installs nothing: start a new run in another run folder to train "
                      "again")
            return
        where = ""
        if run.get("fold"):
            f, n = run["fold"], run["n_folds"]
            stage = ("the final model" if f > n else f"fold {f}/{n}" if n > 1 else "training")
            where = (f"; its checkpoint: {stage} finished" if run.get("stage_done")
                     else f"; its checkpoint: {stage}, epoch {run['epoch']}")
        self._say(f"the run folder holds a run{where}; its settings are filled in{filled}: "
                  "Resume continues it")

    def _apply_run(self, run: Dict[str, Any]) -> List[str]:
        """Set epochs, validation and limit to the run's own; returns what changed, e.g.
        ``["epochs 6 (was 10)"]``."""
        changed = []
        src = run.get("source")
        cur = self.config.currentData()
        if src and isinstance(cur, str) and cur != src:
            i = self.config.findData(src)
            if i >= 0:
                changed.append(f"config {self.config.itemText(i)}")
                self.config.setCurrentIndex(i)
        if run.get("epochs") and self.epochs.value() != run["epochs"]:
            changed.append(f"epochs {run['epochs']} (was {self.epochs.text()})")
            self.epochs.setValue(run["epochs"])
        folds = run["folds"] if run["folds"] >= 2 else 0
        if self.folds.currentData() != folds:
            i = self.folds.findData(folds)
            if i < 0:
                self.folds.addItem(f"{folds}-fold cross-validation", folds)
                i = self.folds.count() - 1
            changed.append(f"validation: {self.folds.itemText(i)} (was "
                           f"{self.folds.currentText()})")
            self.folds.setCurrentIndex(i)
        if self.limit.value() != run["limit"]:
            old = self.limit.text()
            self.limit.setValue(run["limit"])
            changed.append(f"limit patients {self.limit.text()} (was {old})")
        return changed

    def _browse_labels(self) -> None:
        p, _ = QFileDialog.getOpenFileName(self, "Labels table", "", "CSV (*.csv)")
        if p:
            self.labels.setText(p)

    def set_config(self, cfg: Any, label: str = "custom") -> None:
        """Select a config programmatically (path, name or dict)."""
        self.config.insertItem(0, label, cfg)
        self.config.setCurrentIndex(0)

    def inputs(self, resume: bool = False) -> TrainInputs:
        cfg = self.config.currentData()
        out = self.out_dir.text().strip()
        if not out:
            from ..core.models import user_models_dir
            name = (cfg.get("name") or cfg.get("task")) if isinstance(cfg, dict) else Path(
                str(cfg)).stem
            out = str(user_models_dir().parent / "runs" /
                      f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")
            self.out_dir.setText(out)
        return TrainInputs(config=cfg, out_dir=out, data=self.data.text().strip() or None,
                           labels=self.labels.text().strip() or None,
                           device=self.device.currentText(),
                           epochs=self.epochs.value() or None, folds=self.folds.currentData(),
                           limit=self.limit.value() or None, resume=resume,
                           install=self.install.isChecked(), init=self.init.currentData(),
                           name=self.model_name.text().strip() or None)

    # -- run ------------------------------------------------------------------------------------
    def _set_running(self, running: bool) -> None:
        if running:
            # a fixed height while progress comes in: the panel keeps its layout whatever the
            # length of the text (the wrapped label's height followed each text); the whole
            # text of a message is in its tooltip
            self.status.setFixedHeight(self.status.fontMetrics().lineSpacing() * STATUS_LINES
                                       + 4)
        else:                          # the end of a run: as high as its message
            self.status.setMinimumHeight(0)
            self.status.setMaximumHeight(16777215)
        self.start_btn.setEnabled(not running)
        self.resume_btn.setEnabled(not running and bool(self.out_dir.text().strip()))
        self.cancel_btn.setEnabled(running)

    def _has_checkpoint(self) -> bool:
        from ..core.train.checkpoint import CHECKPOINT
        out = self.out_dir.text().strip()
        return bool(out) and (Path(out) / CHECKPOINT).exists()

    def _say(self, text: str) -> None:
        """A status that is not a progress update (its whole text also in the tooltip)."""
        self.status.setText(text)
        self.status.setToolTip(text)

    def start(self, resume: bool = False, inputs: Optional[TrainInputs] = None):
        from ..core.errors import RadiogenError
        from .workers import start_job
        if self.job is not None and not self.job.done:
            return self.job
        note, run = "", None
        if resume and inputs is None:
            # the run's own epochs, folds and limit: any other ones make the engine refuse
            run = read_run(self.out_dir.text().strip())
            changed = self._apply_run(run) if run is not None else []
            if changed:
                note = f" (with the run's own settings: {', '.join(changed)})"
        inp = inputs or self.inputs(resume=resume)
        if resume and run is None:
            run = read_run(inp.out_dir)
        try:
            factory = inp.factory()           # config errors show at once, before any work
        except RadiogenError as e:
            from napari.utils.notifications import show_error
            self._say(f"error: {widget_terms(str(e))}")
            show_error(f"Training: {widget_terms(str(e))}")
            return None
        self.out_dir.setText(inp.out_dir)
        self.curves.reset()
        self.curves.has_validation = getattr(inp, "has_validation", None)
        if resume and run is not None:        # the epochs so far, from the run's state.json
            self.curves.add_history(run.get("history") or [], run.get("n_folds") or 1)
        self.curves.draw()
        self._curves_at = time.monotonic()
        self.best = None
        self.result = None
        self._latest = None
        self._cancelling = False
        named = getattr(inp, "install_note", None)
        self._say(("resuming..." if resume else "starting...") + note
                  + (f" ({named})" if named else ""))
        if note or named:
            from napari.utils.notifications import show_info
            show_info(f"Training: {'resuming' + note if note else named}")
        self._set_running(True)
        # notify=False: the widget words the notifications itself (widget_terms)
        self.job = start_job(factory, name="Training", on_progress=self._on_progress,
                             on_result=self._on_result, on_error=self._on_error,
                             on_finished=self._on_finished, viewer=self.viewer, owner=self,
                             leave_core=False, notify=False,
                             progress_interval=UPDATE_MS / 1000)
        return self.job

    def cancel(self) -> None:
        if self.job is not None and not self.job.done:
            self.job.cancel()
            self._cancelling = True
            self._say("cancelling: " + (
                "the last good checkpoint is kept (Resume continues)" if self._has_checkpoint()
                else "no epoch has ended yet, so there will be nothing to resume"))

    def _on_progress(self, p) -> None:
        """Keeps the newest progress (curve points are all kept); shows it at most every
        UPDATE_MS, the first one at once."""
        self._latest = p
        if hasattr(p, "epoch_end"):
            self.curves.add(p)
        if not self._ui_timer.isActive():
            self._tick()

    def _tick(self) -> None:
        p, self._latest = self._latest, None
        if p is not None:
            self._show_progress(p)
        if self.curves.dirty and time.monotonic() - self._curves_at >= CURVES_S:
            self.curves.draw()
            self._curves_at = time.monotonic()
        if p is not None or self.curves.dirty:
            self._ui_timer.start()

    def _stop_updates(self) -> None:
        self._ui_timer.stop()
        self._latest = None

    def _show_progress(self, p) -> None:
        import re
        if p.total:
            self.bar.setValue(int(1000 * min(1.0, p.done / p.total)))
        if getattr(p, "best", None) is not None:
            self.best = p.best
        self._eta = getattr(p, "eta_s", None)
        if self._cancelling:
            return
        # the core's epoch line names its best score already: shown once, with its metric
        msg = widget_terms(re.sub(r"\s+best\s+\S+", "", p.message or p.stage))
        name = self.curves.metric_name
        best = (f"  best {name + ' ' if name else ''}{self.best:.3f}"
                if self.best is not None else "")
        left = f"  left {_fmt_s(self._eta)}" if p.total else ""
        self.status.setText(f"{msg}{left}{best}")

    def _on_result(self, res) -> None:
        self._stop_updates()
        self.result = res
        self.bar.setValue(1000)
        if getattr(res, "already_finished", False):
            self._say_already_finished(res)
            return
        summ = ", ".join(f"{k} {v['mean']:.3f}" for k, v in (res.cv_summary or {}).items()
                         if v.get("mean") is not None and k != "score")
        inst = f"; installed as {res.installed_path.stem}" if res.installed_path else ""
        if getattr(res, "replaced", None):       # as the CLI's note says it
            inst += f"\nnote: replaced the installed model {res.replaced}"
        origin = (res.card or {}).get("fine_tuned_from") or {}
        caveat = (f"\nnot held-out: {origin['name']} had trained on "
                  f"{len(origin['test_patients_seen'])} of the test patients"
                  if origin.get("test_patients_seen") else "")
        self._say(f"done: {res.model_path}{inst}\nreport: {res.report_path}\n{summ}{caveat}")
        self._fill_init()           # a model the run installed can be fine-tuned next

    def _say_already_finished(self, res) -> None:
        """A Resume of a run that had finished: the engine trained, wrote and installed
        nothing (``TrainResult.already_finished``); the status says so and names the run's
        existing model, which is not offered as a new one (no "done", no install)."""
        from napari.utils.notifications import show_info
        card = f"\ncard: {res.card_path}" if res.card_path else ""
        report = f"\nreport: {res.report_path}" if res.report_path else ""
        self._say(f"already finished: the run in {res.run_dir} had finished before this "
                  "Resume; nothing was trained or installed. Its model, from when it "
                  f"finished, is {res.model_path}{card}{report}\nStart a new run in another "
                  "run folder to train again")
        show_info(f"Training: the run in {res.run_dir} had already finished; nothing was "
                  f"trained or installed (its model: {res.model_path.name})")

    def _on_error(self, exc) -> None:
        from napari.utils.notifications import show_error
        from ..core.errors import Cancelled, RadiogenError
        self._stop_updates()
        if isinstance(exc, Cancelled):     # a cancellation is reported when the job ends
            return
        msg = widget_terms(str(exc))
        self._say(f"error: {msg}")
        show_error(f"Training: {msg}" if isinstance(exc, RadiogenError)
                   else f"Training failed: {type(exc).__name__}: {msg}")

    def _on_finished(self, job) -> None:
        self._stop_updates()
        if job.cancelled:   # also when the run ended by itself just as the user cancelled
            from napari.utils.notifications import show_info
            if self._has_checkpoint():
                self._say(f"cancelled; the last good checkpoint is in {self.out_dir.text()}"
                          " (Resume continues)")
            else:
                self._say("cancelled before the first epoch ended: there is nothing to "
                          "resume; Start begins the run again")
            show_info("Training: cancelled")
        self._cancelling = False
        self._set_running(False)
        self.curves.draw()
        self._curves_at = time.monotonic()
