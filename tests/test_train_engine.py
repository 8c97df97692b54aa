"""The training engine on CPU: phantom runs, checkpoints/resume/cancel, config errors, safety."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_radiogen.core.errors import Cancelled, ConfigError, ModelFileError  # noqa: E402
from napari_radiogen.core.progress import CancelToken  # noqa: E402
from napari_radiogen.core.train import engine  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def tiny_cfg(**over):
    cfg = {"name": "phantom-test", "task": "phantom-demo", "data": "phantom",
           "phantom": {"n": 12, "slices": 2, "size": 16, "seed": 0},
           "model": {"width": 4, "depth": 2},
           "train": {"epochs": 2, "batch_size": 4, "lr": 1e-2, "val_fraction": 0.25,
                     "sampler": "weighted", "loss": {"name": "focal"}, "grad_clip": 1.0},
           "folds": 0, "test_fraction": 0.25, "seed": 0}
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    return cfg


def drive(gen, on_progress=None):
    result, items = None, []
    for it in gen:
        if isinstance(it, engine.TrainResult):
            result = it
        else:
            items.append(it)
            if on_progress:
                on_progress(it)
    return result, items


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_two_epoch_phantom_run_writes_checkpoint_card_report(tmp_path, monkeypatch):
    monkeypatch.setenv("RADIOGEN_MODELS_DIR", str(tmp_path / "models"))
    res, items = drive(engine.train(tiny_cfg(), tmp_path / "run", device="cpu", install=True))
    assert res is not None
    run = tmp_path / "run"
    assert (run / "checkpoint.safetensors").exists() and (run / "state.json").exists()
    assert res.model_path.exists() and res.card_path.exists()
    assert res.report_path.exists() and res.report_json.exists()
    assert (run / "report" / "figures" / "curves.png").exists()
    card = json.loads(res.card_path.read_text())
    assert card["task"] == "demo-classification"
    assert card["config"]["train"]["epochs"] == 2
    assert set(card["training_data"]["cohort"]) == {f"phantom-{i:03d}" for i in range(12)}
    splits0 = json.loads((tmp_path / "run" / "splits.json").read_text())[0]
    assert set(card["training_data"]["patients"]) == set(splits0["train"]) | set(splits0["val"])
    assert "cv" in card["metrics"] and "auc" in card["metrics"]["cv"]
    assert card["final_model"]["mode"] == "best_fold"
    # two epoch-end progress items with losses and metrics, and a time-left estimate
    ends = [p for p in items if getattr(p, "epoch_end", False)]
    assert [p.epoch for p in ends] == [1, 2]
    assert all(p.loss is not None and "val_auc" in p.metrics for p in ends)
    assert any(p.eta_s is not None for p in items)
    # after the first epoch the time left counts down at one rate within an epoch (the epoch's
    # wall time per step, validation included): no drop-then-jump sawtooth
    e2 = [p.eta_s for p in items if getattr(p, "stage", "") == "train" and p.epoch == 2
          and getattr(p, "fold", None) == ends[0].fold]
    steps = [a - b for a, b in zip(e2, e2[1:]) if b > 0]
    assert len(steps) >= 2 and max(steps) - min(steps) < 1e-9 * max(1.0, max(steps))
    # the held-out patients never trained the model, and are disjoint from validation
    splits = json.loads((run / "splits.json").read_text())[0]
    assert not set(splits["test"]) & (set(splits["train"]) | set(splits["val"]))
    # installed into the user models folder, loadable, and the task check works
    from napari_radiogen.core import models
    names = [m["name"] for m in models.list_models("demo-classification")]
    assert "phantom-test" in names
    lm = models.load_model("phantom-test", task="demo-classification")
    assert lm.module(torch.zeros(1, 1, 16, 16)).shape == (1, 2)
    with pytest.raises(ModelFileError):
        models.load_model("phantom-test", task="segmentation")
    report = json.loads(res.report_json.read_text())
    assert report["classification"]["blob"]["n"] == len(splits["test"])


def test_cv_folds_and_retrain(tmp_path):
    cfg = tiny_cfg(folds=3, final="retrain", train={"epochs": 1})
    res, _ = drive(engine.train(cfg, tmp_path / "cv", device="cpu"))
    assert len(res.fold_metrics) == 3
    tests = [set(json.loads((tmp_path / "cv" / "splits.json").read_text())[i]["test"])
             for i in range(3)]
    assert set().union(*tests) == {f"phantom-{i:03d}" for i in range(12)}
    assert sum(len(t) for t in tests) == 12
    s = res.cv_summary["auc"]
    assert s["n"] == 3 and len(s["per_fold"]) == 3
    assert res.card["final_model"]["mode"] == "retrain"
    assert "chosen by inner validation" in res.card["final_model"]["note"]
    # 3 fold stages + the retrain on all 12 patients
    assert {h["fold"] for h in res.history} == {1, 2, 3, 4}
    assert res.history[-1]["samples"] == 12 * 2


def test_retrain_without_inner_validation_does_not_claim_one(tmp_path):
    cfg = tiny_cfg(folds=2, final="retrain", train={"epochs": 2, "val_fraction": 0.0})
    res, _ = drive(engine.train(cfg, tmp_path / "cv", device="cpu"))
    fm = res.card["final_model"]
    assert fm["mode"] == "retrain" and fm["epochs"] == 2
    assert "inner validation" in fm["note"] and "chosen by inner validation" not in fm["note"]
    assert "time budget" not in fm["note"]


def _cancelled_in_epoch_2(run, cfg):
    """Start ``cfg`` in ``run`` and cancel it at the first step of its second epoch."""
    tok = CancelToken()

    def on_p(p):
        if p.phase == "train" and p.epoch == 2 and p.step == 1:
            tok.cancel()
    with pytest.raises(Cancelled):
        drive(engine.train(cfg, run, device="cpu", cancel=tok), on_p)


def test_cancel_mid_epoch_keeps_checkpoint_and_resume_finishes(tmp_path):
    run = tmp_path / "run"
    cfg = tiny_cfg(train={"epochs": 3})
    _cancelled_in_epoch_2(run, cfg)
    st = json.loads((run / "state.json").read_text())
    assert st["epoch"] == 1 and st["fold"] == 0
    before = (run / "checkpoint.safetensors").read_bytes()
    # a fresh run into the same folder is refused; a resume with other options too
    with pytest.raises(ConfigError):
        drive(engine.train(cfg, run, device="cpu"))
    with pytest.raises(ConfigError, match=r"changed: train\.batch_size: \d+ -> 2"):
        drive(engine.train(tiny_cfg(train={"epochs": 3, "batch_size": 2}), run, device="cpu",
                           resume=True))
    with pytest.raises(ConfigError, match=r"train\.epochs: 3 -> 5.*the number of epochs"):
        drive(engine.train(tiny_cfg(train={"epochs": 5}), run, device="cpu", resume=True))
    assert (run / "checkpoint.safetensors").read_bytes() == before
    res, items = drive(engine.train(cfg, run, device="cpu", resume=True))
    epochs = [h["epoch"] for h in res.history]
    assert epochs == [1, 2, 3]
    assert [p.epoch for p in items if getattr(p, "epoch_end", False)] == [2, 3]
    assert res.model_path.exists()


def test_interrupted_checkpoint_write_keeps_last_good(tmp_path, monkeypatch):
    """A kill during the write of a checkpoint never corrupts the previous one."""
    from napari_radiogen.core import models
    from napari_radiogen.core.train import checkpoint as ck
    run = tmp_path / "run"
    cfg = tiny_cfg(train={"epochs": 2})
    real = models._atomic_write_bytes
    calls = {"n": 0}

    def dying(path, data):
        if Path(path).name == "checkpoint.safetensors":
            calls["n"] += 1
            if calls["n"] == 2:          # the second epoch's checkpoint dies half-written
                with open(Path(path).parent / ".partial.tmp", "wb") as f:
                    f.write(data[: len(data) // 2])
                raise KeyboardInterrupt
        return real(path, data)
    monkeypatch.setattr(ck, "_atomic_write_bytes", dying)
    with pytest.raises(KeyboardInterrupt):
        drive(engine.train(cfg, run, device="cpu"))
    tensors, state = ck.read_checkpoint(run)
    assert state["epoch"] == 1
    monkeypatch.setattr(ck, "_atomic_write_bytes", real)
    res, _ = drive(engine.train(cfg, run, device="cpu", resume=True))
    assert [h["epoch"] for h in res.history] == [1, 2]


def test_state_copy_is_strict_json_and_the_checkpoint_keeps_non_finite_scores(tmp_path):
    """``state.json`` (the readable copy) is strict JSON: a NaN validation score and the -inf
    best score a run starts from read null. The checkpoint's own state gives them back as they
    were, so a resumed run compares scores as the first did."""
    from napari_radiogen.core.train import checkpoint as ck
    import numpy as np
    from _json_helpers import strict_load
    m = torch.nn.Linear(3, 2)
    state = {"epoch": 2, "best": {"score": float("-inf"), "epoch": 0},
             "history": [{"epoch": 1, "val_auc": float("nan")}]}
    ck.save_checkpoint(tmp_path, m, state=state)
    st = strict_load(tmp_path / "state.json")
    assert st["best"]["score"] is None and st["history"][0]["val_auc"] is None
    _, back = ck.read_checkpoint(tmp_path)
    assert back["best"]["score"] == float("-inf") and np.isnan(back["history"][0]["val_auc"])


def test_checkpoint_roundtrip_restores_optimizer(tmp_path):
    from napari_radiogen.core.train import checkpoint as ck
    m = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(m.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=10)
    for _ in range(3):
        opt.zero_grad()
        m(torch.randn(4, 3)).sum().backward()
        opt.step()
        sched.step()
    ck.save_checkpoint(tmp_path, m, opt, state={"epoch": 3}, scheduler=sched)
    m2 = torch.nn.Linear(3, 2)
    opt2 = torch.optim.AdamW(m2.parameters(), lr=0.1)
    sched2 = torch.optim.lr_scheduler.OneCycleLR(opt2, max_lr=0.1, total_steps=10)
    tensors, state = ck.read_checkpoint(tmp_path)
    ck.load_into(tensors, state, m2, opt2, sched2)
    assert state["epoch"] == 3
    assert torch.equal(m.weight, m2.weight)
    a, b = opt.state_dict(), opt2.state_dict()
    for pid in a["state"]:
        for k, v in a["state"][pid].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(b["state"][pid][k]))
    assert sched.get_last_lr() == sched2.get_last_lr()


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickled_checkpoint_with_code_is_refused(tmp_path):
    from napari_radiogen.core.models import load_state_dict_file
    p = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(2), "payload": _Evil()}, p)
    with pytest.raises(ModelFileError, match="refused"):
        load_state_dict_file(p)
    # a custom class (not just a reduce to os.system) is refused too
    p2 = tmp_path / "custom.pt"
    torch.save({"w": torch.nn.Linear(2, 2)}, p2)
    with pytest.raises(ModelFileError):
        load_state_dict_file(p2)
    # plain tensors load
    p3 = tmp_path / "ok.pt"
    torch.save({"w": torch.ones(2)}, p3)
    assert torch.equal(load_state_dict_file(p3)["w"], torch.ones(2))


# ---- bad input, refused before training ------------------------------------------------------
def test_unknown_task_and_sequence_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown task"):
        drive(engine.train(tiny_cfg(task="no-such-task"), tmp_path / "a", device="cpu"))
    with pytest.raises(ConfigError, match="unknown sequence"):
        drive(engine.train(tiny_cfg(sequences=["dwi"]), tmp_path / "b", device="cpu"))
    with pytest.raises(ConfigError, match="epochs"):
        drive(engine.train(tiny_cfg(train={"epochs": 0}), tmp_path / "c", device="cpu"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_empty_split_is_config_error(tmp_path):
    with pytest.raises(ConfigError):
        drive(engine.train(tiny_cfg(phantom={"n": 3}, folds=5), tmp_path / "a", device="cpu"))
    assert not (tmp_path / "a").exists()


def _lgg_like(tmp_path, rows, header="patient_id,idh\n"):
    import h5py
    import numpy as np
    d = tmp_path / "packs"
    d.mkdir(exist_ok=True)
    for pid in ("P1", "P2", "P3", "P4"):
        with h5py.File(d / f"{pid}.h5", "w") as f:
            f["image"] = np.zeros((2, 3, 128, 128), np.uint8)
            f["mask"] = np.zeros((2, 128, 128), np.uint8)
    (d / "labels.csv").write_text(header + "".join(rows))
    return {"task": "lgg-idh-slices", "data": str(d), "labels": str(d / "labels.csv"),
            "train": {"epochs": 1}}


@pytest.mark.parametrize("rows,match", [
    (["P8,mutant\n", "P9,wildtype\n"], r"labels.csv: none of its 2 patient\(s\) has images in "
                                          r"packs \(e.g. P8, P9; the folder holds 4, e.g. P1"),
    (["P1,mutant\n", "P2,\n", "P3,wildtype\n"], "lack the label"),
    (["P1,mutant\n", "P2,mutant\n", "P3,mutant\n"], "class"),
    (["P1,mutant\n", "P2,banana\n", "P3,wildtype\n"], "unexpected value"),
])
def test_bad_label_tables_are_config_errors(tmp_path, rows, match):
    cfg = _lgg_like(tmp_path, rows)
    with pytest.raises(ConfigError, match=match):
        drive(engine.train(cfg, tmp_path / "run", device="cpu"))
    assert not (tmp_path / "run").exists()


def test_missing_sequence_in_packs_is_config_error(tmp_path):
    cfg = _lgg_like(tmp_path, ["P1,mutant\n", "P2,wildtype\n"])
    cfg["sequences"] = ["flair", "t2"]
    with pytest.raises(ConfigError, match="t2"):
        drive(engine.train(cfg, tmp_path / "run", device="cpu"))


def test_losses():
    from napari_radiogen.core.train.losses import FocalLoss, cox_ph_loss, make_loss
    logits = torch.randn(8, 3)
    y = torch.randint(0, 3, (8,))
    ce = torch.nn.functional.cross_entropy(logits, y)
    assert torch.allclose(FocalLoss(gamma=0)(logits, y), ce, atol=1e-6)
    assert FocalLoss(gamma=2)(logits, y) < ce
    assert isinstance(make_loss({"name": "dicece"}), torch.nn.Module)
    with pytest.raises(ConfigError):
        make_loss({"name": "focal", "class_weights": [1, 2]}, n_classes=3)
    # Cox partial likelihood against a direct computation (no ties)
    risk = torch.tensor([0.5, -0.2, 1.0, 0.1])
    t = torch.tensor([5.0, 3.0, 1.0, 8.0])
    e = torch.tensor([1.0, 0.0, 1.0, 1.0])
    ll = 0.0
    for i in range(4):
        if e[i]:
            ll += risk[i] - torch.log(torch.exp(risk[t >= t[i]]).sum())
    assert torch.allclose(cox_ph_loss(risk, t, e), -ll / 3, atol=1e-6)


def test_cli_train_list_and_errors(tmp_path):
    from napari_radiogen.cli import main
    assert main(["train", "--list"]) == 0
    assert main(["train", "no-such-config", "--out", str(tmp_path / "x")]) == 2


def test_limit4_real_lgg_patients(tmp_path, shared_data):
    cfg = {"name": "lgg-smoke", "task": "lgg-idh-slices", "data": str(shared_data / "tcga-lgg"),
           "missing_labels": "drop", "model": {"slices": 2, "size": 32, "width": 4, "depth": 2},
           "train": {"epochs": 2, "batch_size": 4, "val_fraction": 0.25}, "folds": 0,
           "test_fraction": 0.25}
    res, items = drive(engine.train(cfg, tmp_path / "lgg", device="cpu", limit=4))
    assert res.model_path.exists() and res.card_path.exists() and res.report_path.exists()
    card = json.loads(res.card_path.read_text())
    assert len(card["training_data"]["cohort"]) == 4
    assert all(p.startswith("TCGA_") for p in card["training_data"]["cohort"])
    assert "smoke run limited to 4" in card["metrics"]["protocol"]
    assert [h["epoch"] for h in res.history] == [1, 2]


@pytest.mark.slow
def test_cli_limit4_real_lgg_with_the_prediction_family(tmp_path, shared_data, monkeypatch):
    """`radiogen train <prediction config> --limit 4 --epochs 2` on real TCGA-LGG patients."""
    from napari_radiogen.core.train.base import TASKS
    from napari_radiogen.core.train.config import CONFIG_DIR
    cfgs = [c for c in ("prediction_mil", "prediction_cnn3d") if (CONFIG_DIR / f"{c}.yaml").exists()]
    if "prediction-mil" not in TASKS or not cfgs:
        pytest.skip("the prediction family is not registered")
    from napari_radiogen.cli import main
    out = tmp_path / "run"
    monkeypatch.setenv("RADIOGEN_MODELS_DIR", str(tmp_path / "models"))
    assert main(["train", cfgs[0], "--out", str(out), "--limit", "4", "--epochs", "2",
                 "--device", "cpu", "--quiet"]) == 0
    assert (out / "checkpoint.safetensors").exists()
    models = [p for p in out.glob("*.safetensors") if p.name != "checkpoint.safetensors"]
    assert len(models) == 1
    card = json.loads(models[0].with_suffix(".card.json").read_text())
    assert len(card["training_data"]["cohort"]) == 4
    assert (out / "report" / "report.html").exists()
    assert not (tmp_path / "models").exists()          # --limit runs are not installed
    st = json.loads((out / "state.json").read_text())
    assert {h["epoch"] for h in st["history"]} == {1, 2}


def test_freeze_and_early_stopping(tmp_path):
    from napari_radiogen.core.models import load_state_dict_file
    from napari_radiogen.core.train.base import TASKS
    from napari_radiogen.core.train.config import load_config
    # frozen prefixes keep their initial weights (same seed -> same init)
    cfg = tiny_cfg(train={"epochs": 2, "freeze": ["features.0."]})
    res, _ = drive(engine.train(cfg, tmp_path / "f", device="cpu"))
    torch.manual_seed(int(cfg.get("seed", 0)))
    init = TASKS["phantom-demo"](load_config(cfg)).build_model().state_dict()
    final = load_state_dict_file(res.model_path)
    assert torch.equal(final["features.0.weight"], init["features.0.weight"])
    assert not torch.equal(final["head.weight"], init["head.weight"])
    with pytest.raises(ConfigError, match="froze every"):
        drive(engine.train(tiny_cfg(train={"freeze": [""]}), tmp_path / "g", device="cpu"))
    # early stopping: with lr 0 the validation score never improves after epoch 1
    res, _ = drive(engine.train(tiny_cfg(train={"epochs": 6, "patience": 2, "lr": 0.0}),
                                tmp_path / "e", device="cpu"))
    assert [h["epoch"] for h in res.history] == [1, 2, 3]
    assert res.fold_metrics[0]["best_epoch"] == 1


@pytest.mark.slow
def test_sigkill_mid_run_then_resume(tmp_path):
    """A real `kill -9` of `radiogen train` leaves a readable checkpoint; --resume finishes."""
    import signal
    import time
    import yaml
    from napari_radiogen.core.train import checkpoint as ck
    cfg = tiny_cfg(train={"epochs": 10}, phantom={"n": 12, "slices": 8, "size": 16})
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "napari_radiogen", "train", str(path), "--out", str(out),
           "--device", "cpu", "--no-install", "--quiet"]
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        end = time.time() + 180
        while time.time() < end:
            st = out / "state.json"
            if st.exists() and json.loads(st.read_text()).get("epoch", 0) >= 2:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the run did not reach epoch 2")
        p.send_signal(signal.SIGKILL)
        p.wait(30)
    finally:
        if p.poll() is None:
            p.kill()
    _, state = ck.read_checkpoint(out)               # never corrupt
    assert state["epoch"] >= 2
    r = subprocess.run(cmd + ["--resume"], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    hist = json.loads((out / "state.json").read_text())["history"]
    assert [h["epoch"] for h in hist] == list(range(1, 11))


# --- audit fixes: reproducibility, fold choice, cards, input errors -------------------------
def _hist(res):
    return [{k: v for k, v in h.items() if k != "time_s"} for h in res.history]


def test_a_fixed_seed_gives_identical_runs_augmentation_included(tmp_path):
    """MONAI random transforms carry their own generator: the engine seeds them (and numpy,
    random, torch) from the config seed, so two runs give the same history; another seed
    gives another one (the augmentation is on, so the test can fail)."""
    cfg = tiny_cfg(train={"augment": True, "epochs": 2})
    a, _ = drive(engine.train(cfg, tmp_path / "a", device="cpu"))
    b, _ = drive(engine.train(cfg, tmp_path / "b", device="cpu"))
    assert _hist(a) == _hist(b)
    c, _ = drive(engine.train(tiny_cfg(train={"augment": True, "epochs": 2}, seed=5),
                              tmp_path / "c", device="cpu"))
    assert [h["train_loss"] for h in _hist(c)] != [h["train_loss"] for h in _hist(a)]


def test_seed_everything_reaches_monai_transforms():
    from napari_radiogen.core.train.base import TASKS
    from napari_radiogen.core.train.config import load_config
    task = TASKS["phantom-demo"](load_config(tiny_cfg(train={"augment": True})))
    x = torch.zeros(1, 16, 16)
    outs = []
    for _ in range(2):
        ds = task.make_datasets(["phantom-000"], [])[0]
        engine.seed_everything(3, ds)
        outs.append(torch.stack([torch.as_tensor(ds.transform(x)) for _ in range(4)]))
    assert torch.equal(outs[0], outs[1])
    assert outs[0].abs().sum() > 0           # the noise transform did run


def test_the_best_fold_is_never_chosen_by_comparing_an_auc_with_a_loss():
    f1 = {"fold": 1, "best_score": 0.0, "best_val_loss": 0.90, "score_name": "auc"}
    f2 = {"fold": 2, "best_score": None, "best_val_loss": 0.70, "score_name": "auc"}
    src, metric, why = engine._pick_fold([f1, f2])
    assert src["fold"] == 2 and metric == "loss" and "undefined in fold(s) 2" in why
    f2b = dict(f2, best_score=0.4)
    src, metric, why = engine._pick_fold([f1, f2b])
    assert src["fold"] == 2 and metric == "auc" and why is None
    # inside a fold: an epoch with a defined score ranks above one ranked by its loss only
    defined = engine._epoch_result({"score": 0.0, "loss": 5.0}, 1)
    loss_only = engine._epoch_result({"score": float("nan"), "loss": 0.01}, 2)
    assert engine._score_key(defined) > engine._score_key(loss_only)


def test_a_one_class_validation_split_is_ranked_by_loss_and_the_card_says_so(tmp_path):
    # 4 patients, val_fraction 0.25: every validation split holds one patient (one class),
    # so the AUC is undefined in every fold and the folds are ranked by validation loss
    cfg = tiny_cfg(phantom={"n": 8, "slices": 2, "size": 16, "seed": 0}, folds=2,
                   train={"epochs": 1, "sampler": None})
    res, items = drive(engine.train(cfg, tmp_path / "r", device="cpu"))
    card = json.loads(res.card_path.read_text())
    assert card["final_model"]["metric"] == "loss"
    losses = {f["fold"]: f["val_loss"] for f in card["metrics"]["per_fold"]}
    assert card["final_model"]["fold"] == min(losses, key=losses.get)
    assert all(f["val_score"] is None for f in card["metrics"]["per_fold"])
    assert any(p.score_name == "auc" for p in items if isinstance(p, engine.TrainProgress)
               and p.epoch_end)


def test_cards_hold_no_local_paths_and_fold_cards_name_their_task(tmp_path):
    res, _ = drive(engine.train(tiny_cfg(), tmp_path / "run", device="cpu"))
    text = res.card_path.read_text()
    assert str(tmp_path) not in text
    card = json.loads(text)
    assert card["datasets"].startswith("synthetic phantoms")
    assert card["datasets"] == card["training_data"]["datasets"]
    assert "12 patients used by this run" in card["datasets"]
    fold = json.loads((tmp_path / "run" / "folds" / "fold1_best.card.json").read_text())
    assert fold["train_task"] == "phantom-demo" and fold["config"]["task"] == "phantom-demo"
    # and `evaluate` takes a fold model now
    from napari_radiogen.core.evaluate.run import evaluate_model
    ev = [x for x in evaluate_model(str(tmp_path / "run" / "folds" / "fold1_best.safetensors"),
                                    "phantom", tmp_path / "ev", device="cpu")]
    assert isinstance(ev[-1], engine.EvalResult) and ev[-1].n_patients == 12


def test_the_dataset_text_describes_the_folder_a_run_used(tmp_path, shared_data):
    import napari_radiogen.core.train.tasks  # noqa: F401  (registers the tasks; run alone too)
    from napari_radiogen.core.train.base import TASKS
    from napari_radiogen.core.train.config import load_config
    base = {"task": "lgg-idh-slices", "missing_labels": "drop"}
    task = TASKS["lgg-idh-slices"](load_config({**base, "data": str(shared_data / "tcga-lgg")}))
    assert engine.uses_default_data(task, task.cfg)
    assert "Buda" in engine.dataset_description(task, task.cfg, 7)
    own = tmp_path / "mycohort"
    own.mkdir()
    cfg = load_config({**base, "data": str(own)})
    text = engine.dataset_description(TASKS["lgg-idh-slices"](cfg), cfg, 7)
    assert "mycohort" in text and "Buda" not in text and "7 patients" in text
    assert str(tmp_path) not in text
    assert engine.card_config(cfg)["data"] == "mycohort"
    # the shipped dataset's papers are cited for the shipped dataset only
    assert any("Buda" in c for c in engine.data_card_fields(task, task.cfg, 7)["citations"])
    assert engine.data_card_fields(TASKS["lgg-idh-slices"](cfg), cfg, 7)["citations"] == []
    # ... while a method's paper stays cited whatever the data (the segmentation networks)
    seg = load_config({"task": "segmentation-lgg", "data": str(own)})
    cites = engine.data_card_fields(TASKS["segmentation-lgg"](seg), seg, 7)["citations"]
    assert cites and any("SegResNet" in c for c in cites)
    assert not any("Buda" in c or "TCIA" in c for c in cites)


def test_a_corrupt_pack_is_named_before_anything_is_written(tmp_path, shared_data):
    import shutil
    import pandas as pd
    src = shared_data / "tcga-lgg"
    df = pd.read_csv(src / "clinical.csv", dtype={"patient_id": str}).dropna(subset=["idh"])
    ids = list(df[df.idh == "mutant"].patient_id[:3]) + list(df[df.idh == "wildtype"].patient_id[:3])
    d = tmp_path / "cohort"
    d.mkdir()
    for i in ids[1:]:
        shutil.copy(src / f"{i}.h5", d)
    (d / f"{ids[0]}.h5").write_bytes(b"not hdf5" * 50)
    df[df.patient_id.isin(ids)].to_csv(d / "clinical.csv", index=False)
    cfg = {"task": "lgg-idh-slices", "data": str(d), "train": {"epochs": 1}}
    with pytest.raises(ConfigError, match=f"{ids[0]}.h5: not a readable HDF5 pack"):
        drive(engine.train(cfg, tmp_path / "run", device="cpu"))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("train,match", [
    ({"lr": "abc"}, "train.lr must be a number"), ({"lr": -1}, r"train.lr must be in"),
    ({"grad_clip": "abc"}, "train.grad_clip must be a number"),
    ({"weight_decay": -0.1}, "train.weight_decay"), ({"patience": 1.5}, "train.patience"),
    ({"max_minutes": 0}, "train.max_minutes"), ({"epoch": 1}, "did you mean 'epochs'"),
])
def test_bad_train_values_and_unknown_keys_are_config_errors(tmp_path, train, match):
    with pytest.raises(ConfigError, match=match):
        drive(engine.train(tiny_cfg(train=train), tmp_path / "run", device="cpu"))
    assert not (tmp_path / "run").exists()


def test_unknown_top_level_key_and_bad_names_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'folds'"):
        drive(engine.train(tiny_cfg(fold=2), tmp_path / "run", device="cpu"))
    for bad in ("../evil", "a b/c", "", ".hidden"):
        with pytest.raises(ConfigError, match="model name"):
            drive(engine.train(tiny_cfg(name=bad), tmp_path / "run", device="cpu"))
    assert not (tmp_path / "run").exists() and not (tmp_path / "evil.safetensors").exists()


@pytest.mark.parametrize("kw", [{"limit": 0}, {"limit": -5}, {"max_minutes": 0},
                                {"max_minutes": -1}, {"epochs": 0}])
def test_non_positive_limits_are_refused(tmp_path, kw):
    with pytest.raises(ConfigError, match="must be a positive"):
        drive(engine.train(tiny_cfg(), tmp_path / "run", device="cpu", **kw))


def test_a_limit_too_small_to_split_says_how_many_patients_are_needed(tmp_path):
    with pytest.raises(ConfigError, match=r"--limit 3 leaves too few .* --limit \d+ or more"):
        drive(engine.train(tiny_cfg(folds=2), tmp_path / "run", device="cpu", limit=3))
    assert not (tmp_path / "run").exists()


def test_a_time_budget_cut_is_said_and_recorded(tmp_path):
    # a budget of a few milliseconds per fold: every fold stops after its first epoch
    cfg = tiny_cfg(train={"epochs": 5, "max_minutes": 1e-5})
    res, items = drive(engine.train(cfg, tmp_path / "run", device="cpu"))
    ends = [p for p in items if getattr(p, "epoch_end", False)]
    assert len(ends) == 1 and "time budget" in ends[0].message
    card = json.loads(res.card_path.read_text())
    pf = card["metrics"]["per_fold"][0]
    assert pf["epochs_trained"] == 1 and pf["epochs_planned"] == 5
    assert "stopped after 1 of 5 epochs" in card["metrics"]["protocol"]


def test_installing_over_an_earlier_model_says_which_it_replaced(tmp_path, monkeypatch):
    monkeypatch.setenv("RADIOGEN_MODELS_DIR", str(tmp_path / "models"))
    a, _ = drive(engine.train(tiny_cfg(train={"epochs": 1}), tmp_path / "a", device="cpu",
                              install=True))
    assert a.replaced is None
    b, _ = drive(engine.train(tiny_cfg(train={"epochs": 1}), tmp_path / "b", device="cpu",
                              install=True))
    assert b.replaced and b.replaced.startswith("phantom-test (") and "run a" in b.replaced


def test_synthesis_cache_files_are_named_by_a_hash_only(tmp_path, monkeypatch):
    import numpy as np
    from napari_radiogen.core.train.tasks import synthesis
    monkeypatch.setattr(synthesis, "preprocess_lgg", lambda p: {"x": np.zeros(2)})
    synthesis.load_patient("TCGA_DU_5874", "lgg", tmp_path / "TCGA_DU_5874.h5", tmp_path / "c")
    names = [f.name for f in (tmp_path / "c").iterdir()]
    assert len(names) == 1 and "TCGA" not in names[0] and "5874" not in names[0]


def test_prediction_task_score_is_undefined_where_no_auc_or_cindex_is():
    import numpy as np
    """A validation set with one class of every task and no event: the prediction tasks' score
    is NaN (which the engine ranks below any real score), not 0.0 (an AUC of 0, the worst
    real one); with both classes of a task, a real AUC."""
    from napari_radiogen.core.train.tasks import prediction as P

    task = P.MILPredictionTask.__new__(P.MILPredictionTask)

    def forward(model, b, device):
        i = int(b["id"][0][1:])
        return {"logits": {t: torch.tensor([[0.0, float(i)]]) for t in P.TASKS}}
    task._forward = forward

    def item(i, y):
        return {"x": np.zeros((2, 3, 4, 4), np.float32), "seq_mask": np.ones(2, bool),
                "y": np.array([y, y, y]), "clinical": np.zeros(2, np.float32),
                "os": np.array([100.0 + i, 0.0], np.float32), "id": f"p{i}"}
    model = torch.nn.Linear(1, 1)
    res = task.evaluate(model, [item(i, 0) for i in range(4)], "cpu")
    assert np.isnan(res["score"])
    assert np.isnan(task.evaluate(model, [], "cpu")["score"])
    res = task.evaluate(model, [item(0, 0), item(1, 0), item(2, 1), item(3, 1)], "cpu")
    assert res["score"] == pytest.approx(1.0) and res["auc_idh"] == pytest.approx(1.0)


def test_a_labels_table_without_rows_says_so(tmp_path):
    from napari_radiogen.core.errors import ConfigError
    from napari_radiogen.core.train.datasets_util import read_label_table
    (tmp_path / "clinical.csv").write_text("patient_id,idh\n")
    with pytest.raises(ConfigError, match=r"no patient has a row with a 'idh' label \(the data "
                                          r"folder holds 2 patient\(s\)\)"):
        read_label_table(tmp_path / "clinical.csv", ["idh"], known_ids=["A", "B"])


# --- random-sample training sets: a sample depends on (seed, epoch, index) alone --------------
def _lgg_seg_cfg(data, **train):
    return {"name": "seg-resume-test", "task": "segmentation-lgg", "data": str(data),
            "model": {"arch": "segresnet", "init_filters": 8, "input_downsample": 2,
                      "crop": 64, "pos_fraction": 0.5, "drop_sequence_p": 0.2,
                      "samples_per_epoch": 12},
            "train": {"epochs": 3, "batch_size": 4, "lr": 5e-3, "val_fraction": 0.0,
                      "patience": 0, "augment": True, **train},
            "folds": 2, "final": "best_fold", "seed": 0}


def test_a_resumed_segmentation_run_draws_what_the_uninterrupted_run_drew(tmp_path):
    """The 2D segmentation task draws random patches per epoch. Each patch comes from the
    seed, the epoch and its index, not from a count of the draws a process made: a run
    cancelled in epoch 3 and resumed gives the uninterrupted run's history (a per-process
    count replayed epoch 1's patches after the resume, and every rank of a distributed run
    drew the same patches)."""
    from napari_radiogen.core.phantom import make_pack_phantom
    from predict_helpers import write_pack
    data = tmp_path / "packs"
    data.mkdir()
    for i in range(4):
        write_pack(data / f"PH_{i:02d}.h5", make_pack_phantom(seed=i, n_slices=8, size=64))
    cfg = _lgg_seg_cfg(data)
    a, _ = drive(engine.train(cfg, tmp_path / "a", device="cpu"))
    tok = CancelToken()

    def on_p(p):
        if p.phase == "train" and p.fold == 0 and p.epoch == 3 and p.step == 1:
            tok.cancel()
    with pytest.raises(Cancelled):
        drive(engine.train(cfg, tmp_path / "b", device="cpu", cancel=tok), on_p)
    b, _ = drive(engine.train(cfg, tmp_path / "b", device="cpu", resume=True))
    assert [h["epoch"] for h in b.history if h["fold"] == 1] == [1, 2, 3]
    assert _hist(a) == _hist(b)
    times = [h["time_s"] for h in b.history]           # the run's clock, not the process's
    assert times == sorted(times) and times[0] > 0


def test_random_sample_sets_draw_by_epoch_and_index_not_by_call_order(tmp_path):
    from napari_radiogen.core.phantom import make_pack_phantom
    from napari_radiogen.core.train.tasks.segmentation import _LggTrain, read_pack_for_training
    from predict_helpers import write_pack
    items = [read_pack_for_training(str(write_pack(
        tmp_path / f"P{i}.h5", make_pack_phantom(seed=i, n_slices=8, size=64))))
        for i in range(2)]
    ds = _LggTrain(items, n=8, crop=32, pos_fraction=0.5, augment=True, drop_p=0.2, seed=3)
    ds.set_epoch(2)
    first = [ds[k][0].numpy() for k in range(8)]
    again = _LggTrain(items, n=8, crop=32, pos_fraction=0.5, augment=True, drop_p=0.2, seed=3)
    again.set_epoch(2)
    for k in (5, 0, 7):                               # another order, another instance
        np.testing.assert_array_equal(again[k][0].numpy(), first[k])
    assert not all(np.array_equal(first[0], x) for x in first[1:])   # the indices differ
    ds.set_epoch(3)
    assert not all(np.array_equal(ds[k][0].numpy(), first[k]) for k in range(8))


def test_time_left_counts_the_test_folds_still_to_run(tmp_path):
    """The time left counted training steps only: 'testing fold 2 ... (left 0:00)' was said
    while that fold's test (and the report) still had to run. Once a test fold has been timed,
    the estimate includes the test folds left, the one starting included."""
    cfg = tiny_cfg(folds=2, final="best_fold", train={"epochs": 1})
    res, items = drive(engine.train(cfg, tmp_path / "r", device="cpu"))
    tests = [p for p in items if getattr(p, "phase", "") == "test"]
    assert [p.fold for p in tests] == [0, 1]
    assert tests[1].eta_s is not None and tests[1].eta_s > 0


# --- rows of a clinical table without images, resume messages, cancel during a test -----------
def test_rows_of_the_labels_table_without_a_pack_are_left_out_and_said_once(tmp_path):
    """A real clinical table lists more patients than have packs: the run goes on with the
    patients that have one, and says once how many rows had none (naming a few)."""
    from napari_radiogen.core.train.base import TASKS
    from napari_radiogen.core.train.config import load_config
    rows = ["P1,mutant\n", "P2,wildtype\n", "P3,mutant\n", "P4,wildtype\n"]
    cfg = _lgg_like(tmp_path, rows + [f"Q{i},mutant\n" for i in range(7)])
    task = TASKS["lgg-idh-slices"](load_config(cfg))
    assert [r.patient_id for r in task.patients()] == ["P1", "P2", "P3", "P4"]
    assert task.notes == ["7 row(s) of labels.csv name patients with no pack (.h5) in packs; "
                          "they are left out: Q0, Q1, Q2, Q3, Q4 ..."]
    task.patients()
    assert len(task.notes) == 1
    # the engine says it once, before anything is written
    gen = engine.train(cfg, tmp_path / "run", device="cpu")
    said = []
    for it in gen:
        said.append(it.message)
        if it.message.startswith("note:"):
            break
    gen.close()
    assert said[-1] == "note: " + task.notes[0]
    assert not (tmp_path / "run").exists()


def test_prediction_cohort_leaves_out_clinical_rows_without_a_pack(tmp_path):
    from napari_radiogen.core.phantom import make_pack_phantom
    from napari_radiogen.core.train.tasks import prediction as P
    from predict_helpers import write_pack
    for k in range(2):
        write_pack(tmp_path / f"PH_{k}.h5", make_pack_phantom(seed=k, n_slices=6))
    head = "patient_id,idh,codel_1p19q,grade,os_days,os_event\n"
    (tmp_path / "clinical.csv").write_text(
        head + "".join(f"{p},mutant,codel,2,300,1\n" for p in ("PH_0", "GONE_1", "PH_1",
                                                                "GONE_2")))
    missing = []
    assert [p["id"] for p in P.load_cohort(str(tmp_path), no_pack=missing)] == ["PH_0", "PH_1"]
    assert missing == ["GONE_1", "GONE_2"]
    task = P.MILPredictionTask({"data": str(tmp_path), "model": {}})
    assert [r.patient_id for r in task.patients()] == ["PH_0", "PH_1"]
    assert task.notes == [f"2 row(s) of clinical.csv name patients with no pack (.h5) in "
                          f"{tmp_path.name}; they are left out: GONE_1, GONE_2"]
    # refused only when no row has a pack
    (tmp_path / "clinical.csv").write_text(head + "GONE_1,mutant,codel,2,300,1\n")
    with pytest.raises(ConfigError, match=r"clinical.csv: none of its 1 patient\(s\) has a pack "
                                          r"\(<patient_id>.h5\) in .*e.g. GONE_1; the folder "
                                          r"holds 2, e.g. PH_0, PH_1"):
        P.load_cohort(str(tmp_path))


def test_prediction_cohort_limit_counts_patients_with_a_pack(tmp_path):
    """``limit`` (the config's ``limit:``, scripts' --limit) takes the first N patients that
    have a pack, in the table's order: rows without a pack do not use up the limit (with
    more usable patients in the table, N patients are loaded, not fewer); the note names the
    rows without a pack that were left out before the limit was reached."""
    from napari_radiogen.core.phantom import make_pack_phantom
    from napari_radiogen.core.train.tasks import prediction as P
    from predict_helpers import write_pack
    for k in range(3):
        write_pack(tmp_path / f"PH_{k}.h5", make_pack_phantom(seed=k, n_slices=6))
    head = "patient_id,idh,codel_1p19q,grade,os_days,os_event\n"
    (tmp_path / "clinical.csv").write_text(
        head + "".join(f"{p},mutant,codel,2,300,1\n" for p in ("PH_0", "GONE_1", "GONE_2",
                                                                "PH_1", "PH_2", "GONE_3")))
    for limit, ids, gone in ((2, ["PH_0", "PH_1"], ["GONE_1", "GONE_2"]),
                             (3, ["PH_0", "PH_1", "PH_2"], ["GONE_1", "GONE_2"]),
                             (9, ["PH_0", "PH_1", "PH_2"], ["GONE_1", "GONE_2", "GONE_3"]),
                             (None, ["PH_0", "PH_1", "PH_2"], ["GONE_1", "GONE_2", "GONE_3"])):
        missing = []
        assert [p["id"] for p in P.load_cohort(str(tmp_path), limit=limit,
                                               no_pack=missing)] == ids, limit
        assert missing == gone, limit
    task = P.MILPredictionTask({"data": str(tmp_path), "model": {}, "limit": 2})
    assert [r.patient_id for r in task.patients()] == ["PH_0", "PH_1"]
    assert task.notes == [f"2 row(s) of clinical.csv name patients with no pack (.h5) in "
                          f"{tmp_path.name}; they are left out: GONE_1, GONE_2"]
    # still refused when no row has a pack, naming all of them
    (tmp_path / "clinical.csv").write_text(head + "GONE_1,mutant,codel,2,300,1\n"
                                           "GONE_2,mutant,codel,2,300,1\n")
    with pytest.raises(ConfigError, match=r"none of its 2 patient\(s\) has a pack"):
        P.load_cohort(str(tmp_path), limit=1)


def test_resume_changes_name_paths_relative_to_the_working_folder(tmp_path, monkeypatch):
    saved = tmp_path / "config.json"
    saved.write_text(json.dumps({"task": "t", "data": str(tmp_path / "cohort_a"),
                                 "labels": "/elsewhere/l.csv", "_source": str(tmp_path / "a.yaml"),
                                 "train": {"epochs": 3}}))
    monkeypatch.chdir(tmp_path)
    got = engine.config_changes(saved, {"task": "t", "data": str(tmp_path / "cohort_b"),
                                        "labels": "/elsewhere/l.csv",
                                        "_source": str(tmp_path / "cfg" / "b.yaml"),
                                        "train": {"epochs": 3}, "_limit": 8})
    assert got == ["_limit: - -> 8", "config file: a.yaml -> cfg/b.yaml",
                   "data: cohort_a -> cohort_b"]
    assert engine.shown_path("/elsewhere/l.csv") == "/elsewhere/l.csv"


def test_a_cancel_during_a_test_fold_stops_the_test(tmp_path):
    """The engine's cancel reaches the task's evaluate loop: a cancel while the (last) fold is
    tested stops there (it used to run the test to its end and then finish the run)."""
    tok = CancelToken()

    def on_p(p):
        if p.phase == "test":
            tok.cancel()
    with pytest.raises(Cancelled):
        drive(engine.train(tiny_cfg(train={"epochs": 1}), tmp_path / "run", device="cpu",
                           cancel=tok), on_p)
    st = json.loads((tmp_path / "run" / "state.json").read_text())
    assert st["completed"] == [] and not st.get("stage_done")
    assert not (tmp_path / "run" / "phantom-test.safetensors").exists()


def test_predict_items_stops_within_one_batch_of_a_cancel():
    from napari_radiogen.core.train.datasets_util import ItemDataset, predict_items
    tok = CancelToken()
    calls = []

    class Net(torch.nn.Module):
        def forward(self, x):
            calls.append(len(x))
            tok.cancel()
            return torch.zeros(len(x), 2)
    ds = ItemDataset([(np.zeros((1, 4, 4), np.float32), 0, f"p{i}") for i in range(10)])
    with pytest.raises(Cancelled):
        predict_items(Net(), ds, "cpu", batch_size=3, cancel=tok)
    assert calls == [3]


# --- refusals before any training -------------------------------------------------------------
def test_a_mid_run_resume_with_another_model_name_is_refused(tmp_path):
    """The fold models of a run are named as it goes: a resume with another name (`--name`)
    is refused naming the change, as a resume with other options is; the same name goes on."""
    run = tmp_path / "run"
    cfg = tiny_cfg(train={"epochs": 3})
    _cancelled_in_epoch_2(run, cfg)
    before = (run / "checkpoint.safetensors").read_bytes()
    with pytest.raises(ConfigError, match=r"changed: name: phantom-test -> foo\).*--name "
                                          r"phantom-test"):
        drive(engine.train(tiny_cfg(name="foo", train={"epochs": 3}), run, device="cpu",
                           resume=True))
    assert (run / "checkpoint.safetensors").read_bytes() == before
    assert json.loads((run / "config.json").read_text())["name"] == "phantom-test"
    res, _ = drive(engine.train(cfg, run, device="cpu", resume=True))
    assert res.model_path.name == "phantom-test.safetensors"


def test_a_run_folder_that_is_a_file_is_refused_in_one_line(tmp_path):
    """The engine refuses it (the Training widget has no CLI check before it), with the CLI's
    words, and leaves the file as it was."""
    f = tmp_path / "run"
    f.write_text("not a folder")
    with pytest.raises(ConfigError, match=r"^\S*run: cannot create the output folder \(a file "
                                          r"of that name exists\)$"):
        drive(engine.train(tiny_cfg(), f, device="cpu"))
    with pytest.raises(ConfigError, match=r"cannot create the output folder \(\S*run is a "
                                          r"file\)"):
        drive(engine.train(tiny_cfg(), f / "sub", device="cpu"))
    assert f.read_text() == "not a folder"


def test_a_brats_case_lacking_a_sequence_is_named_before_training(tmp_path):
    """A case without one of the sequences the model trains on was found only when a fold
    tested (or trained) on it, after earlier folds had trained: it is refused before any
    epoch, named with what it lacks, and no run folder is left."""
    from test_evaluate import _write_brats_case
    data = tmp_path / "cohort"
    for i in range(4):
        _write_brats_case(data / f"PH_{i:02d}", seed=i)
    (data / "PH_02" / "PH_02_t1ce.nii.gz").unlink()
    cfg = {"name": "seg-missing", "task": "segmentation-brats", "data": str(data),
           "model": {"arch": "segresnet", "init_filters": 8, "spacing_mm": 4.0,
                     "patch_size": [16, 16, 16], "roi_size": [32, 32, 32],
                     "samples_per_epoch": 2, "eval_hd95": False},
           "train": {"epochs": 1, "batch_size": 2, "val_fraction": 0.0, "augment": False},
           "folds": 2, "seed": 0}
    items = []
    with pytest.raises(ConfigError, match=r"^PH_02 lacks t1ce: the model trains on t1, t1ce, "
                                          r"t2, flair .*leave those cases out of --data$"):
        drive(engine.train(cfg, tmp_path / "run", device="cpu"), items.append)
    assert not any(getattr(p, "phase", None) in ("train", "test") for p in items)
    assert not (tmp_path / "run").exists()
