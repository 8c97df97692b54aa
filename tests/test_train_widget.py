"""Training widget (pytest-qt): a short phantom run updates the curves, cancels, resumes, and the
training runs on a worker while the Qt event loop keeps ticking (how long the loop may pause is
a speed target for ``scripts/bench_viewer.py``, not a timed assertion here)."""
import time

import pytest

pytest.importorskip("napari")
torch = pytest.importorskip("torch")

from napari_radiogen.napari.diagnostics import EventLoopMeter  # noqa: E402
from napari_radiogen.napari.train_widget import TrainInputs, TrainingWidget  # noqa: E402

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
