"""Training widget (pytest-qt): a short phantom run updates the curves, cancels, resumes, and the
training runs on a worker while the Qt event loop keeps ticking (how long the loop may pause is
a speed target for ``scripts/bench_viewer.py``, not a timed assertion here); the core's
messages in the widget's terms, a run folder's settings filled in for Resume, curves per fold
named by the score's metric, and progress shown at a limited rate (the newest wins)."""
import time

import pytest

pytest.importorskip("napari")
torch = pytest.importorskip("torch")

from napari_radiogen.napari.diagnostics import EventLoopMeter  # noqa: E402
from napari_radiogen.napari.train_widget import TrainInputs, TrainingWidget  # noqa: E402


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """These tests run torch on one thread (set in the main thread, which later threads take
    as their default): give the count back, so later tests see torch's own."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)

CFG = {"name": "widget-test", "task": "phantom-demo", "data": "phantom",
       "phantom": {"n": 12, "slices": 8, "size": 16, "seed": 0},
       "model": {"width": 4, "depth": 2},
       "train": {"epochs": 40, "batch_size": 2, "lr": 1e-2, "val_fraction": 0.25},
       "folds": 0, "test_fraction": 0.25}


def test_widget_runs_updates_curves_cancels_without_blocking(make_napari_viewer, qtbot, tmp_path,
                                                             monkeypatch):
    import threading

    from napari_radiogen.core.train import engine
    monkeypatch.setenv("RADIOGEN_MODELS_DIR", str(tmp_path / "models"))
    torch.set_num_threads(1)
    threads = set()
    train = engine.train

    def spy(*a, **k):                     # records the thread the training runs in
        threads.add(threading.get_ident())
        return (yield from train(*a, **k))

    monkeypatch.setattr(engine, "train", spy)
    viewer = make_napari_viewer()
    w = TrainingWidget(viewer)
    qtbot.addWidget(w)
    w.device.setCurrentText("cpu")
    meter = EventLoopMeter(20).start()
    inp = TrainInputs(config=CFG, out_dir=str(tmp_path / "run"), device="cpu", install=False)
    t0 = time.perf_counter()
    marks = {}
    job = w.start(inputs=inp)
    marks["started"] = time.perf_counter() - t0
    assert job is not None and w.cancel_btn.isEnabled()
    # the curves grow: wait for two epoch points
    qtbot.waitUntil(lambda: len(w.curves.ep_x) >= 2 and w.curves.n_rendered >= 2,
                   timeout=120_000)
    n_before = len(w.curves.ep_x)
    assert len(w.curves.met_y) >= 2 and len(w.curves.steps_y) > 0
    assert not w.curves.label.pixmap().isNull()
    assert w.bar.value() > 0 and "left" in w.status.text()
    marks["cancel"] = time.perf_counter() - t0
    w.cancel()
    qtbot.waitUntil(lambda: job.done, timeout=60_000)
    marks["done"] = time.perf_counter() - t0
    meter.stop()
    assert job.cancelled
    assert "cancelled" in w.status.text()
    assert (tmp_path / "run" / "checkpoint.safetensors").exists()
    assert w.start_btn.isEnabled() and not w.cancel_btn.isEnabled()
    assert n_before >= 2
    # the model trains on a worker thread and the event loop keeps ticking meanwhile
    assert threads and threading.get_ident() not in threads
    assert len(meter.gaps) >= 10, f"{len(meter.gaps)} ticks in {marks['done']:.1f} s"
    print(f"longest event-loop gap {meter.describe(t0)} ({marks})")


def test_widget_resume_finishes_and_installs(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    monkeypatch.setenv("RADIOGEN_MODELS_DIR", str(tmp_path / "models"))
    torch.set_num_threads(1)
    viewer = make_napari_viewer()
    w = TrainingWidget(viewer)
    qtbot.addWidget(w)
    cfg = dict(CFG, train=dict(CFG["train"], epochs=3), phantom=dict(CFG["phantom"], slices=2))
    inp = TrainInputs(config=cfg, out_dir=str(tmp_path / "run"), device="cpu", install=True)
    job = w.start(inputs=inp)
    qtbot.waitUntil(lambda: len(w.curves.ep_x) >= 1, timeout=120_000)
    w.cancel()
    qtbot.waitUntil(lambda: job.done, timeout=60_000)
    inp.resume = True
    job = w.start(inputs=inp)
    qtbot.waitUntil(lambda: job.done, timeout=120_000)
    assert w.result is not None and w.result.model_path.exists()
    assert [h["epoch"] for h in w.result.history] == [1, 2, 3]
    from napari_radiogen.core.models import list_models
    assert "widget-test" in [m["name"] for m in list_models()]
    # bad input is reported at once, before any job starts
    bad = TrainInputs(config=dict(cfg, task="nope"), out_dir=str(tmp_path / "bad"))
    assert w.start(inputs=bad) is None and "unknown task" in w.status.text()


def test_widget_fine_tunes_an_installed_model_of_the_same_kind(make_napari_viewer, qtbot,
                                                               tmp_path, monkeypatch):
    """'start from' lists the models the selected task trains (a user's installed model
    included, none of another kind); the run starts from the chosen one and its card says so."""
    import json

    from napari_radiogen.core.train import engine
    monkeypatch.setenv("RADIOGEN_MODELS_DIR", str(tmp_path / "models"))
    torch.set_num_threads(1)
    small = dict(CFG, name="phantom-base", train=dict(CFG["train"], epochs=1))
    for it in engine.train(small, tmp_path / "base", device="cpu", install=True):
        pass
    viewer = make_napari_viewer()
    w = TrainingWidget(viewer)
    qtbot.addWidget(w)
    # a shipped fine-tuning config: its own init first, scratch as an alternative
    i = next(k for k in range(w.config.count())
             if str(w.config.itemData(k)).endswith("prediction_mil_roi_finetune.yaml"))
    w.config.setCurrentIndex(i)
    # the models are checked off the main thread, then listed
    qtbot.waitUntil(lambda: w.init_listed_gen == w._init_gen, timeout=30_000)
    assert "predict_mil_roi" in w.init.itemText(0) and w.init.itemData(0) is None
    datas = [w.init.itemData(k) for k in range(w.init.count())]
    assert "" in datas and "predict_mil_roi" in datas and "seg_lgg_segresnet2d" not in datas
    # prediction models fed other inputs (whole-brain slices, volumes) are not offered
    assert "predict_mil" not in datas and "predict_cnn3d" not in datas
    # the phantom config: the installed phantom model is offered
    w.set_config(dict(small, name="phantom-ft"), "phantom")
    qtbot.waitUntil(lambda: w.init_listed_gen == w._init_gen, timeout=30_000)
    datas = [w.init.itemData(k) for k in range(w.init.count())]
    assert "phantom-base" in datas and "predict_mil_roi" not in datas
    w.init.setCurrentIndex(datas.index("phantom-base"))
    w.device.setCurrentText("cpu")
    w.install.setChecked(False)
    w.out_dir.setText(str(tmp_path / "ft"))
    assert w.inputs().init == "phantom-base"
    job = w.start()
    qtbot.waitUntil(lambda: job.done, timeout=120_000)
    assert w.result is not None, w.status.text()
    card = json.loads(w.result.card_path.read_text())
    assert card["fine_tuned_from"]["name"] == "phantom-base"
    # same seed and patients as the base run: its test patients were held out from it too
    assert not card["fine_tuned_from"]["test_patients_seen"]
    assert "not held-out" not in w.status.text()


def test_widget_terms_names_the_widgets_controls_not_the_cli_options():
    """The core's messages serve the command line: the widget shows them in its own terms."""
    from napari_radiogen.napari.train_widget import widget_terms
    cuda = widget_terms("CUDA was requested but no GPU is available; use --device cpu")
    assert cuda == 'CUDA was requested but no GPU is available; choose "cpu" in the device list'
    held = widget_terms("/r already holds a run; use --resume to continue it or choose another "
                        "--out folder")
    assert held == ("/r already holds a run; press Resume to continue it, or choose another "
                    "run folder")
    done = widget_terms("/r already holds a finished run (its model is /r/m.safetensors); "
                        "choose another --out folder to train again")
    assert done.endswith("; choose another run folder to train again"), done
    changed = widget_terms("/r: the checkpoint was made with another config, data or "
                           "--limit/--folds (changed: _limit: 30 -> 10, folds: 0 -> 3, "
                           "train.epochs: 6 -> 2); resume with the same options")
    assert "--" not in changed and "_limit" not in changed and "train.epochs" not in changed
    assert '"limit patients" or "validation"' in changed
    assert ("(changed: limit patients: 30 -> 10, validation: one held-out split -> 3-fold "
            "cross-validation, epochs: 6 -> 2)") in changed
    # a key one side lacks ("-"), as the fields say it; a value that is not one word is kept
    assert widget_terms("r (changed: _limit: 8 -> -, init: m -> -, data: [a, b] -> c)") == (
        "r (changed: limit patients: 8 -> all patients, start from: m -> from scratch, "
        "data folder: [a, b] -> c)")
    reduced = widget_terms("--limit 10: 5-fold CV reduced to 2 folds")
    assert reduced == '"limit patients" 10: 5-fold CV reduced to 2 folds'
    assert "start without" not in widget_terms("x: the checkpoint cannot be read; start without "
                                               "--resume")
    # an option the widget has no control for, and plain text, are kept as they are
    assert widget_terms("budget --max-minutes 5") == "budget --max-minutes 5"
    assert widget_terms("loss 0.5 - fine") == "loss 0.5 - fine"


def _epoch_item(fold, epoch, loss, score, n_folds=2, best=None):
    from napari_radiogen.core.train.engine import TrainProgress
    msg = f"fold {fold + 1}/{n_folds} epoch {epoch}/3 loss {loss:.4f}" + (
        f" best {best:.4f}" if best is not None else "")
    return TrainProgress(stage="epoch", done=epoch, total=9, message=msg, phase="validate",
                         fold=fold, n_folds=n_folds, epoch=epoch, epochs=3, step=2, steps=2,
                         loss=loss, metrics={"val_score": score, "val_auc": score,
                                             "val_accuracy": 0.5, "val_loss": loss + 0.1},
                         eta_s=5.0, best=best, epoch_end=True)


def test_curves_draw_one_line_per_fold_named_in_a_legend_and_the_metric(qtbot):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from napari_radiogen.napari.train_widget import _Curves
    c = _Curves()
    try:
        fig = Figure()
        FigureCanvasAgg(fig)
        # no data: neutral panels that say so, not empty +-0.04 axes
        c._plot(fig, c.snapshot())
        for ax in fig.axes:
            assert [t.get_text() for t in ax.texts] == ["no data yet"]
            assert len(ax.get_xticks()) == 0 and len(ax.get_yticks()) == 0
        assert fig.axes[1].get_title() == "validation score"
        for fold in (0, 1):
            for ep, score in ((1, 0.5), (2, 1.0), (3, 0.75)):
                c.add(_epoch_item(fold, ep, 0.7 - 0.01 * ep, score))
        # each fold restarts at its epoch 1 (no line joins fold 1's end to fold 2's start)
        assert c.ep_x == [1, 2, 3, 1, 2, 3] and c.ep_f == [0, 0, 0, 1, 1, 1]
        # the score equals AUC in every epoch (accuracy only in none): the panel says AUC
        assert c.metric_name == "AUC"
        c._plot(fig, c.snapshot())
        ax_l, ax_m = fig.axes
        assert ax_m.get_title() == "validation AUC"
        assert [list(ln.get_xdata()) for ln in ax_m.lines] == [[1, 2, 3], [1, 2, 3]]
        # the folds' colours serve both panels: one legend below them
        assert [t.get_text() for t in fig.legends[0].get_texts()] == ["fold 1", "fold 2"]
        assert not ax_m.texts and len(ax_m.get_xticks()) > 0
        # loss: train and validation lines per fold, the legend names the kinds
        assert len(ax_l.lines) == 4
        assert [t.get_text() for t in ax_l.get_legend().get_texts()] == ["train", "val"]
        # a run's saved history (state.json records) gives the same curves
        d = _Curves()
        d.add_history([{"fold": 1, "epoch": 1, "train_loss": 0.7, "val_score": 0.6,
                        "val_auc": 0.6, "val_loss": 0.8}], n_folds=3)
        assert d.ep_x == [1.0] and d.met_f == [0] and d.metric_name == "AUC"
        d.close()
        # the name the task gives its score wins over the guess from equal values
        e = _Curves()
        item = _epoch_item(0, 1, 0.6, 0.7)
        item.metrics["val_dice_WT"] = 0.7        # equal to the score by chance
        item.score_name = "dice"
        e.add(item)
        assert e.metric_name == "Dice"
        e.close()
    finally:
        c.close()


def test_status_shows_best_once_and_updates_at_a_limited_rate(make_napari_viewer, qtbot):
    from napari_radiogen.napari import train_widget as tw
    w = tw.TrainingWidget(make_napari_viewer())
    qtbot.addWidget(w)
    w._set_running(True)
    w._curves_at = 0.0                       # a render is due at the first update
    n0 = w.curves.n_requested
    items = [_epoch_item(0, ep, 0.66, 1.0 if ep == 1 else 0.5, n_folds=1, best=1.0)
             for ep in range(1, 41)]
    for p in items:                          # a burst, without the event loop in between
        w._on_progress(p)
    # the first is shown at once, the others wait for the timer (the newest wins) ...
    assert w.status.text().startswith("fold 1/1 epoch 1/3 loss 0.6600")
    assert w.curves.n_requested == n0 + 1
    # ... but every epoch is kept for the curves
    assert len(w.curves.ep_x) == 40
    qtbot.waitUntil(lambda: "epoch 40/3" in w.status.text(), timeout=10_000)
    text = w.status.text()
    # the core's line says "best 1.0000" already: shown once, named by its metric
    assert text.count("best") == 1 and "best AUC 1.000" in text, text
    qtbot.waitUntil(lambda: not w.curves.dirty, timeout=10_000)
    assert w.curves.n_requested <= n0 + 3
    # the status keeps its height while a run reports (no relayout per update)
    h = w.status.height()
    w._on_progress(_epoch_item(0, 41, 0.66, 0.5, n_folds=1, best=1.0))
    assert w.status.minimumHeight() == w.status.maximumHeight() == h


def test_run_folder_fills_in_the_runs_settings_and_resume_uses_them(make_napari_viewer, qtbot,
                                                                    tmp_path, monkeypatch):
    """A run folder that holds a run sets epochs, validation and limit to the run's own; Resume
    with other values takes the run's (and says so); Start there is refused in the widget's
    terms; the resumed curves start from the run's saved epochs."""
    from napari.utils import notifications

    from napari_radiogen.core.train import engine
    monkeypatch.setenv("RADIOGEN_MODELS_DIR", str(tmp_path / "models"))
    torch.set_num_threads(1)
    cfg = dict(CFG, train=dict(CFG["train"], epochs=2), phantom=dict(CFG["phantom"], slices=2))
    run = tmp_path / "run"
    for _ in engine.train(cfg, run, device="cpu", epochs=2, limit=8, folds=0):
        pass
    shown = []
    monkeypatch.setattr(notifications, "show_error", lambda m: shown.append(("error", m)))
    monkeypatch.setattr(notifications, "show_info", lambda m: shown.append(("info", m)))
    w = TrainingWidget(make_napari_viewer())
    qtbot.addWidget(w)
    w.set_config(cfg, "phantom")
    w.device.setCurrentText("cpu")
    w.install.setChecked(False)
    w.epochs.setValue(5)
    w.folds.setCurrentIndex(w.folds.findData(3))
    w.out_dir.setText(str(run))
    w.out_dir.editingFinished.emit()
    assert (w.epochs.value(), w.folds.currentData(), w.limit.value()) == (2, 0, 8)
    assert "holds a run" in w.status.text() and "epochs 2 (was 5)" in w.status.text()
    assert w.resume_btn.isEnabled()
    # Start in it: the engine refuses, in the widget's words (status and notification); the
    # run has finished, so Resume is not offered as the way on
    job = w.start()
    qtbot.waitUntil(lambda: job.done, timeout=60_000)
    assert "already holds a finished run" in w.status.text(), w.status.text()
    assert "choose another run folder to train again" in w.status.text(), w.status.text()
    assert "--" not in w.status.text() and "press Resume" not in w.status.text()
    assert shown and shown[-1][0] == "error" and "--" not in shown[-1][1]
    # Resume with other values: the run's own are used, and the widget says so
    w.epochs.setValue(7)
    w.limit.setValue(0)
    job = w.start(resume=True)
    assert job is not None
    assert (w.epochs.value(), w.limit.value()) == (2, 8)
    assert "epochs 2 (was 7)" in w.status.text() and "limit patients 8 (was all patients)" \
        in w.status.text()
    assert any(k == "info" and "epochs 2 (was 7)" in m for k, m in shown), shown
    # the curves show the run's saved epochs at once
    assert w.curves.ep_x == [1.0, 2.0]
    qtbot.waitUntil(lambda: job.done, timeout=120_000)
    assert job.error is None and w.result is not None, w.status.text()
    # a folder without a run changes nothing
    w.epochs.setValue(4)
    w.out_dir.setText(str(tmp_path / "new"))
    w.out_dir.editingFinished.emit()
    assert w.epochs.value() == 4


def test_a_resume_refused_for_other_settings_names_the_widgets_fields(make_napari_viewer, qtbot,
                                                                      tmp_path, monkeypatch):
    """The engine's refusal to resume with other settings lists the changed config keys; the
    widget shows them as its fields with their values as the fields say them: the internal
    ``_limit`` is "limit patients" (no limit: "all patients"), ``folds`` the "validation"
    choice."""
    from napari_radiogen.core.train import engine
    monkeypatch.setenv("RADIOGEN_MODELS_DIR", str(tmp_path / "models"))
    torch.set_num_threads(1)
    cfg = dict(CFG, train=dict(CFG["train"], epochs=1), phantom=dict(CFG["phantom"], slices=2))
    run = tmp_path / "run"
    for _ in engine.train(cfg, run, device="cpu", limit=8, folds=0):
        pass
    w = TrainingWidget(make_napari_viewer())
    qtbot.addWidget(w)
    inp = TrainInputs(config=cfg, out_dir=str(run), device="cpu", install=False, resume=True,
                      limit=None, folds=2)
    job = w.start(resume=True, inputs=inp)
    qtbot.waitUntil(lambda: job.done, timeout=60_000)
    text = w.status.text()
    assert job.error is not None and w.result is None
    assert ("(changed: limit patients: 8 -> all patients, validation: one held-out split -> "
            "2-fold cross-validation)") in text, text
    assert "_limit" not in text and "folds:" not in text and "--" not in text


def test_resuming_a_finished_run_says_nothing_was_trained_or_installed(make_napari_viewer, qtbot,
                                                                       tmp_path, monkeypatch):
    """Resume on a run that has finished: the engine trains, writes and installs nothing
    (``already_finished``); the widget says so, naming the run's existing model, instead of
    "done" with a model it would seem to have just trained; the run folder says it before."""
    from napari.utils import notifications

    from napari_radiogen.core.models import list_models
    from napari_radiogen.core.train import engine
    monkeypatch.setenv("RADIOGEN_MODELS_DIR", str(tmp_path / "models"))
    torch.set_num_threads(1)
    cfg = dict(CFG, train=dict(CFG["train"], epochs=1), phantom=dict(CFG["phantom"], slices=2))
    run = tmp_path / "run"
    for _ in engine.train(cfg, run, device="cpu", folds=0):     # finished, not installed
        pass
    model = run / "widget-test.safetensors"
    mtime = model.stat().st_mtime_ns
    shown = []
    monkeypatch.setattr(notifications, "show_info", lambda m: shown.append(m))
    w = TrainingWidget(make_napari_viewer())
    qtbot.addWidget(w)
    w.set_config(cfg, "phantom")
    w.device.setCurrentText("cpu")
    assert w.install.isChecked()
    w.out_dir.setText(str(run))
    w.out_dir.editingFinished.emit()
    assert "already finished" in w.status.text() and str(model) in w.status.text()
    assert "Resume continues it" not in w.status.text()
    job = w.start(resume=True)
    qtbot.waitUntil(lambda: job.done, timeout=120_000)
    text = w.status.text()
    assert job.error is None and w.result is not None and w.result.already_finished
    assert text.startswith(f"already finished: the run in {run} had finished")
    assert "nothing was trained or installed" in text and str(model) in text
    assert "done:" not in text and "installed as" not in text
    assert any("already finished" in m and model.name in m for m in shown), shown
    # nothing was installed or rewritten
    assert "widget-test" not in [m["name"] for m in list_models()]
    assert model.stat().st_mtime_ns == mtime


def test_the_widget_names_a_shipped_configs_model_as_the_cli_does(tmp_path, monkeypatch):
    """No model name given, install on: a shipped config's model is named <name>-user (the
    engine would refuse the shipped name), with the reason; a name the user gives is kept."""
    from napari_radiogen.core import models
    from napari_radiogen.core.train import engine
    from napari_radiogen.napari.train_widget import TrainInputs
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / "phantom-demo.safetensors").write_bytes(b"")
    monkeypatch.setattr(models, "SHIPPED_DIR", shipped)
    seen = []
    monkeypatch.setattr(engine, "train", lambda cfg, out, **kw: seen.append(cfg["name"]))
    inp = TrainInputs(config="phantom_demo", out_dir=str(tmp_path / "r"), install=True)
    inp.factory()(None)
    assert seen == ["phantom-demo-user"] and "phantom-demo-user" in inp.install_note
    inp = TrainInputs(config="phantom_demo", out_dir=str(tmp_path / "r"), install=True,
                      name="mine")
    inp.factory()(None)
    assert seen[-1] == "mine" and inp.install_note is None


def test_widget_says_when_it_replaced_an_installed_model(make_napari_viewer, qtbot, tmp_path):
    """The CLI's "note: replaced the installed model ..." is in the widget's status too."""
    from types import SimpleNamespace
    w = TrainingWidget(make_napari_viewer())
    qtbot.addWidget(w)
    res = SimpleNamespace(model_path=tmp_path / "m.safetensors", report_path=tmp_path / "r.html",
                          installed_path=tmp_path / "models" / "m.safetensors", card={},
                          cv_summary={"auc": {"mean": 0.8}},
                          replaced="m (trained 2026-01-02T03:04:05+00:00, run old-run)")
    w._on_result(res)
    assert ("note: replaced the installed model m (trained 2026-01-02T03:04:05+00:00, run "
            "old-run)") in w.status.text()
    w._on_result(SimpleNamespace(**dict(vars(res), replaced=None)))
    assert "replaced" not in w.status.text()


def test_a_patient_limit_unticks_install_as_the_cli_does(make_napari_viewer, qtbot, tmp_path,
                                                         monkeypatch):
    """A run limited to N patients is a smoke run: not installed unless the user ticks
    "install the model" again (radiogen train --limit installs only with --install)."""
    from napari_radiogen.core.train import engine
    w = TrainingWidget(make_napari_viewer())
    qtbot.addWidget(w)
    w.out_dir.setText(str(tmp_path / "r"))
    assert w.install.isChecked() and "limit patients" in w.install.toolTip()
    w.limit.setValue(8)
    assert not w.install.isChecked() and w.inputs().install is False
    assert "not installed" in w.status.text()
    w.limit.setValue(12)                       # another limit: still the smoke run's choice
    assert not w.install.isChecked()
    w.install.setChecked(True)                 # the user asks for it: installed after all
    w.limit.setValue(10)
    assert w.install.isChecked() and w.inputs().install is True
    w.limit.setValue(0)
    assert w.install.isChecked()
    w.limit.setValue(5)
    w.limit.setValue(0)                        # back to all patients: ticked as before
    assert w.install.isChecked() and w.inputs().install is True
    w.install.setChecked(False)
    w.limit.setValue(5)
    w.limit.setValue(0)                        # the user's own "no" stays
    assert not w.install.isChecked()
    # the inputs' own default follows the same rule
    seen = []
    monkeypatch.setattr(engine, "train", lambda cfg, out, **kw: seen.append(kw["install"]))
    TrainInputs(config=CFG, out_dir=str(tmp_path / "a"), limit=4).factory()(None)
    TrainInputs(config=CFG, out_dir=str(tmp_path / "b")).factory()(None)
    TrainInputs(config=CFG, out_dir=str(tmp_path / "c"), limit=4, install=True).factory()(None)
    assert seen == [False, True, True]


def test_a_missing_data_folder_is_named_in_the_widgets_words(make_napari_viewer, qtbot,
                                                             tmp_path, monkeypatch):
    """Not "give an existing folder with the data folder FOLDER" (the CLI's --data FOLDER
    rewritten word by word)."""
    from napari.utils import notifications

    from napari_radiogen.napari.train_widget import widget_terms
    monkeypatch.setattr(notifications, "show_error", lambda m: None)
    w = TrainingWidget(make_napari_viewer())
    qtbot.addWidget(w)
    i = next(k for k in range(w.config.count())
             if str(w.config.itemData(k)).endswith("phantom_demo.yaml"))
    w.config.setCurrentIndex(i)
    w.data.setText(str(tmp_path / "nowhere"))
    w.out_dir.setText(str(tmp_path / "r"))
    assert w.start() is None
    text = w.status.text()
    assert "data folder not found" in text and "FOLDER" not in text and "--" not in text, text
    assert text.endswith("choose an existing folder as the data folder"), text
    shared = widget_terms("data folder not found: the config's '../shared/data/x' (the shared "
                          "data beside the repository). Give your data with --data FOLDER, or "
                          "set RADIOGEN_SHARED_DATA to the folder that holds 'x'")
    assert "FOLDER" not in shared and "Choose your own folder as the data folder" in shared
    assert widget_terms("use --limit N") == 'use "limit patients"'
    assert widget_terms("use --max-minutes N") == "use --max-minutes N"   # no control: as is


def test_curves_say_the_run_has_no_validation_set_and_fit_the_dock(make_napari_viewer, qtbot,
                                                                   tmp_path):
    """A config without validation patients (val_fraction 0, as segmentation_lgg): the
    validation panel says so, not "no data yet" (also after the run). The image never makes
    the widget wider than the dock, and legends, titles and ticks lie inside it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from napari_radiogen.napari.train_widget import _Curves
    cfg = dict(CFG, train=dict(CFG["train"], val_fraction=0.0))
    inp = TrainInputs(config=cfg, out_dir=str(tmp_path / "r"))
    inp.factory()
    assert inp.has_validation is False
    inp = TrainInputs(config=CFG, out_dir=str(tmp_path / "r"))
    inp.factory()
    assert inp.has_validation is True

    c = _Curves()
    try:
        c.has_validation = False
        for fold in (0, 1, 2):
            for ep in (1, 2, 3):
                it = _epoch_item(fold, ep, 0.7 - 0.01 * ep, None, n_folds=3)
                it.metrics = {}
                c.add(it)
        fig = Figure(figsize=(320 / 80, 200 / 80), dpi=80)        # the label's least size
        FigureCanvasAgg(fig)
        c._plot(fig, c.snapshot())
        fig.canvas.draw()
        ax_l, ax_m = fig.axes
        assert [t.get_text() for t in ax_m.texts] == [
            "no validation set\n(the config's train.val_fraction is 0)"]
        r = fig.canvas.get_renderer()
        box = fig.bbox
        for a in [ax_l, ax_m, *fig.legends]:
            bb = a.get_tightbbox(r) if hasattr(a, "get_tightbbox") else a.get_window_extent(r)
            assert bb.x0 >= box.x0 - 1 and bb.x1 <= box.x1 + 1, (a, bb, box)
            assert bb.y0 >= box.y0 - 1 and bb.y1 <= box.y1 + 1, (a, bb, box)
        c.reset()
        assert c.has_validation is None
    finally:
        c.close()

    # in the widget: the run's config decides; a wide image does not widen the widget
    w = TrainingWidget(make_napari_viewer())
    qtbot.addWidget(w)
    w.show()
    qtbot.waitExposed(w)
    min_w = w.minimumSizeHint().width()
    wide = 3 * max(w.width(), min_w)
    w.curves._show((bytes(4 * wide * 50), wide, 50))
    assert w.minimumSizeHint().width() == min_w
    assert w.curves.label.pixmap().width() <= w.curves.label.width()
    # a resize renders the curves again at the label's new size
    n = w.curves.n_requested
    w.resize(w.width() + 80, w.height())
    qtbot.waitUntil(lambda: w.curves.n_requested > n, timeout=5_000)


def test_a_run_folder_that_is_a_file_is_refused_in_one_line(make_napari_viewer, qtbot,
                                                            tmp_path, monkeypatch):
    """Start with a file as the run folder: the engine's one-line refusal (the CLI's words),
    not a NotADirectoryError traceback."""
    from napari.utils import notifications
    monkeypatch.setattr(notifications, "show_error", lambda m: None)
    monkeypatch.setenv("RADIOGEN_MODELS_DIR", str(tmp_path / "models"))
    f = tmp_path / "run"
    f.write_text("not a folder")
    w = TrainingWidget(make_napari_viewer())
    qtbot.addWidget(w)
    job = w.start(inputs=TrainInputs(config=CFG, out_dir=str(f), device="cpu", install=False))
    if job is not None:
        qtbot.waitUntil(lambda: job.done, timeout=60_000)
    text = w.status.text()
    assert "cannot create the output folder (a file of that name exists)" in text, text
    assert "NotADirectoryError" not in text and w.result is None
