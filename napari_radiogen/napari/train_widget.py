"""Training dock widget: pick a config (or a task), a model to fine-tune (or none), data, device,
epochs, validation scheme;
Start / Cancel / Resume; live loss and metric curves, progress with time left and the best
score so far. The run itself is ``core.train.engine.train`` driven by ``workers.start_job``."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import threading

from qtpy.QtCore import QObject, Qt, Signal
from qtpy.QtWidgets import (QCheckBox, QComboBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel,
                            QLineEdit, QProgressBar, QPushButton, QSpinBox, QVBoxLayout, QWidget)


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
    install: bool = True
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

        def gen(token):
            return train(cfg, self.out_dir, device=self.device, epochs=self.epochs,
                         limit=self.limit, resume=self.resume, folds=self.folds, cancel=token,
                         install=self.install)
        return gen


def _fmt_s(s: Optional[float]) -> str:
    if s is None:
        return "?"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class _InitLister(QObject):
    """Carries the 'start from' model list from its worker thread to the widget."""
    listed = Signal(int, object)


class _Curves(QObject):
    """Loss (left) and validation score (right) per epoch, drawn by matplotlib.

    The data live in the main thread (updated from Progress); the figure is rendered with
    matplotlib's Agg backend on a background thread and shown as an image, because one
    matplotlib draw takes 0.1-0.5 s on a busy CPU and the viewer must never freeze for that
    long. Only the newest data are rendered (older requests are skipped)."""

    rendered = Signal(object)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.label = QLabel()
        self.label.setMinimumSize(320, 200)
        self.label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.n_rendered = 0
        self._pending = None
        self._cv = threading.Condition()
        self._stop = False
        self._last_req = 0.0
        self.rendered.connect(self._show)
        self._thread = threading.Thread(target=self._loop, name="radiogen-curves", daemon=True)
        self._thread.start()
        self.reset()

    # -- data (main thread) ----------------------------------------------------------------------
    def reset(self):
        self.steps_x: List[float] = []
        self.steps_y: List[float] = []
        self.ep_x: List[float] = []
        self.ep_y: List[float] = []
        self.val_loss_x: List[float] = []
        self.val_loss: List[float] = []
        self.met_x: List[float] = []
        self.met_y: List[float] = []
        self._x0 = 0.0
        self._fold = None

    def add(self, p) -> None:
        if p.fold != self._fold:                      # folds continue along the x axis
            self._x0 = self.ep_x[-1] if self.ep_x else 0.0
            self._fold = p.fold
        if p.epoch_end:
            x = self._x0 + p.epoch
            self.ep_x.append(x)
            self.ep_y.append(p.loss)
            if "val_loss" in p.metrics:
                self.val_loss_x.append(x)
                self.val_loss.append(p.metrics["val_loss"])
            if "val_score" in p.metrics:
                self.met_x.append(x)
                self.met_y.append(p.metrics["val_score"])
            self.draw(force=True)
        elif p.phase == "train" and p.loss is not None and p.steps:
            self.steps_x.append(self._x0 + p.epoch - 1 + p.step / p.steps)
            self.steps_y.append(p.loss)
            self.draw()

    def draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_req < 0.5:
            return
        self._last_req = now
        snap = {k: list(getattr(self, k)) for k in ("steps_x", "steps_y", "ep_x", "ep_y",
                                                    "val_loss_x", "val_loss", "met_x", "met_y")}
        try:
            snap["size"] = (max(320, self.label.width()), max(200, self.label.height()))
        except RuntimeError:          # the widget is gone
            self.close()
            return
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
            self.label.setPixmap(QPixmap.fromImage(qimg))
        except RuntimeError:          # the widget is gone
            self.close()
            return
        self.n_rendered += 1

    # -- rendering (background thread) -------------------------------------------------------
    def _loop(self) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        fig = Figure(figsize=(4, 2.5), dpi=80)
        FigureCanvasAgg(fig)
        ax_l, ax_m = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
        fig.subplots_adjust(left=0.12, right=0.98, bottom=0.15, top=0.88, wspace=0.35)
        ax_l.set_title("loss", fontsize=8)
        ax_m.set_title("validation score", fontsize=8)
        for ax in (ax_l, ax_m):
            ax.tick_params(labelsize=7)
            ax.set_xlabel("epoch", fontsize=7)
        step_ln, = ax_l.plot([], [], lw=0.8, alpha=0.5, label="running")
        ep_ln, = ax_l.plot([], [], "o-", ms=3, label="train")
        vl_ln, = ax_l.plot([], [], "s--", ms=3, label="val")
        met_ln, = ax_m.plot([], [], "o-", ms=3)
        ax_l.legend(fontsize=6)
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
                step_ln.set_data(snap["steps_x"], snap["steps_y"])
                ep_ln.set_data(snap["ep_x"], snap["ep_y"])
                vl_ln.set_data(snap["val_loss_x"], snap["val_loss"])
                met_ln.set_data(snap["met_x"], snap["met_y"])
                for ax in (ax_l, ax_m):
                    ax.relim()
                    ax.autoscale_view()
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
        self.out_dir = QLineEdit()
        self.out_dir.setPlaceholderText("new folder under the user runs folder")
        form.addRow("run folder", self.out_dir)
        self.install = QCheckBox("install the model (it appears in the other widgets)")
        self.install.setChecked(True)
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
        lay.addWidget(self.status)
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
        self.start_btn.setEnabled(not running)
        self.resume_btn.setEnabled(not running and bool(self.out_dir.text().strip()))
        self.cancel_btn.setEnabled(running)

    def start(self, resume: bool = False, inputs: Optional[TrainInputs] = None):
        from ..core.errors import RadiogenError
        from .workers import start_job
        if self.job is not None and not self.job.done:
            return self.job
        inp = inputs or self.inputs(resume=resume)
        try:
            factory = inp.factory()           # config errors show at once, before any work
        except RadiogenError as e:
            from napari.utils.notifications import show_error
            self.status.setText(f"error: {e}")
            show_error(f"Training: {e}")
            return None
        self.out_dir.setText(inp.out_dir)
        if not resume:
            self.curves.reset()
            self.curves.draw(force=True)
        self.best = None
        self.result = None
        self.status.setText("starting...")
        self._set_running(True)
        self.job = start_job(factory, name="Training", on_progress=self._on_progress,
                             on_result=self._on_result, on_error=self._on_error,
                             on_finished=self._on_finished, viewer=self.viewer, owner=self,
                             leave_core=False)
        return self.job

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()
            self.status.setText("cancelling: the last good checkpoint is kept (Resume continues)")

    def _on_progress(self, p) -> None:
        if p.total:
            self.bar.setValue(int(1000 * min(1.0, p.done / p.total)))
        if getattr(p, "best", None) is not None:
            self.best = p.best
        self._eta = getattr(p, "eta_s", None)
        best = f"  best {self.best:.3f}" if self.best is not None else ""
        self.status.setText(f"{p.message}  left {_fmt_s(self._eta)}{best}")
        if hasattr(p, "epoch_end"):
            self.curves.add(p)

    def _on_result(self, res) -> None:
        self.result = res
        self.bar.setValue(1000)
        summ = ", ".join(f"{k} {v['mean']:.3f}" for k, v in (res.cv_summary or {}).items()
                         if v.get("mean") is not None and k != "score")
        inst = f"; installed as {res.installed_path.stem}" if res.installed_path else ""
        origin = (res.card or {}).get("fine_tuned_from") or {}
        caveat = (f"\nnot held-out: {origin['name']} had trained on "
                  f"{len(origin['test_patients_seen'])} of the test patients"
                  if origin.get("test_patients_seen") else "")
        self.status.setText(f"done: {res.model_path}{inst}\nreport: {res.report_path}\n{summ}"
                            f"{caveat}")
        self._fill_init()           # a model the run installed can be fine-tuned next

    def _on_error(self, exc) -> None:
        from ..core.errors import Cancelled
        if not isinstance(exc, Cancelled):     # a cancellation is reported when the job ends
            self.status.setText(f"error: {exc}")

    def _on_finished(self, job) -> None:
        if job.cancelled:   # also when the run ended by itself just as the user cancelled
            self.status.setText(f"cancelled; the last good checkpoint is in {self.out_dir.text()}"
                                " (Resume continues)")
        self._set_running(False)
        self.curves.draw(force=True)
