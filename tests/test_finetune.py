"""Fine-tuning: ``init`` (config), ``radiogen train --init``; the starting weights, the input
checks, the card's provenance, and the shipped tumour-centred MIL fine-tuned on real packs."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_radiogen.core.errors import Cancelled, ConfigError  # noqa: E402
from napari_radiogen.core.progress import CancelToken  # noqa: E402
from napari_radiogen.core.models import load_state_dict_file  # noqa: E402
from napari_radiogen.core.train import engine  # noqa: E402

from test_train_engine import _threads, drive, tiny_cfg  # noqa: E402,F401 (autouse fixture)


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    """A phantom model trained from scratch (the model fine-tuned below)."""
    out = tmp_path_factory.mktemp("base") / "run"
    res, _ = drive(engine.train(tiny_cfg(name="phantom-base"), out, device="cpu"))
    return res.model_path


def _first_and_last(state):
    names = [n for n in state if n.endswith("weight")]
    return names[0], names[-1]


def test_fine_tuning_starts_from_the_init_weights_and_records_where_it_started(tmp_path,
                                                                               base_model):
    start = load_state_dict_file(base_model)
    first, last = _first_and_last(start)
    prefix = first.rsplit(".", 1)[0]
    bn = next(n for n in start if n.endswith("running_mean")).rsplit(".", 1)[0]
    # another seed: other test patients, some of which trained the base model
    cfg = tiny_cfg(name="phantom-ft", init=str(base_model), seed=1,
                   train={"epochs": 1, "lr": 5e-2, "freeze": [prefix, bn]})
    res, items = drive(engine.train(cfg, tmp_path / "ft", device="cpu"))
    assert any("fine-tuning from phantom-base" in it.message for it in items)
    tuned = load_state_dict_file(res.model_path)
    # the frozen layer is the init model's, bit for bit; the rest moved away from it
    assert torch.equal(tuned[first], start[first])
    assert not torch.equal(tuned[last], start[last])
    # a frozen normalisation layer keeps the statistics it was trained with (eval mode)
    assert torch.equal(tuned[f"{bn}.running_mean"], start[f"{bn}.running_mean"])
    assert torch.equal(tuned[f"{bn}.running_var"], start[f"{bn}.running_var"])
    card = json.loads(res.card_path.read_text())
    origin = card["fine_tuned_from"]
    import hashlib
    # the file is named, not its local path (cards are shared); its SHA-256 identifies it
    assert origin["name"] == "phantom-base" and origin["file"] == base_model.name
    assert origin["sha256"] == hashlib.sha256(base_model.read_bytes()).hexdigest()
    # the base model trained on patients of this run's test parts: seen, so not held out
    base_card = json.loads(base_model.with_suffix(".card.json").read_text())
    base_ids = set(base_card["training_data"]["patients"])
    tested = {i for f in json.loads((tmp_path / "ft" / "splits.json").read_text())
              for i in f["test"]}
    assert origin["test_patients_seen"] == sorted(base_ids & tested) != []
    assert "not held-out estimates" in card["metrics"]["protocol"]
    assert "not held-out" in (tmp_path / "ft" / "train.log").read_text()
    assert "NOT held-out" in (tmp_path / "ft" / "report" / "report.html").read_text()
    # the weights carry what the base model learnt: its patients count as trained on
    td = card["training_data"]
    assert base_ids <= set(td["patients"]) and set(td["fine_tuning_patients"]) <= \
        set(td["patients"])
    fold_card = json.loads(next((tmp_path / "ft" / "folds").glob("*.card.json")).read_text())
    assert fold_card["fine_tuned_from"]["sha256"] == origin["sha256"]
    assert card["architecture"] == json.loads(base_model.with_suffix(".card.json")
                                              .read_text())["architecture"]


def test_a_model_from_scratch_has_no_fine_tuning_record(tmp_path):
    res, items = drive(engine.train(tiny_cfg(train={"epochs": 1}), tmp_path / "r",
                                    device="cpu"))
    card = json.loads(res.card_path.read_text())
    assert "fine_tuned_from" not in card
    assert "not held-out" not in card["metrics"]["protocol"]
    assert not any("fine-tuning" in it.message for it in items)


def test_an_init_model_fed_other_inputs_is_refused_before_training(tmp_path, base_model):
    # the phantom grid differs (16 -> 24 pixels): the network would see another input size
    cfg = tiny_cfg(init=str(base_model), phantom={"size": 24})
    with pytest.raises(ConfigError, match="input_size"):
        drive(engine.train(cfg, tmp_path / "r", device="cpu"))
    assert not (tmp_path / "r" / "checkpoint.safetensors").exists()


@pytest.mark.parametrize("init,match", [
    ("seg_lgg_segresnet2d", "is a 'segmentation' model"),
    ("no_such_model", "init: no model named 'no_such_model'"),
])
def test_wrong_or_unknown_init_models_are_config_errors(tmp_path, init, match):
    with pytest.raises(ConfigError, match=match):
        drive(engine.train(tiny_cfg(init=init), tmp_path / "r", device="cpu"))


def test_whole_brain_task_refuses_the_tumour_centred_model():
    """prediction-mil builds whole-brain 3.75 mm slices: predict_mil_roi's weights expect the
    1.875 mm tumour window, and the engine says which input fields differ."""
    from napari_radiogen.core.train.base import TASKS
    from napari_radiogen.core.train.config import load_config
    cfg = load_config("prediction_mil", init="predict_mil_roi")
    with pytest.raises(ConfigError) as e:
        TASKS[cfg["task"]](cfg).init_model()
    msg = str(e.value)
    assert "spacing_mm" in msg and "input.kind" in msg and "normalisation" in msg
    # ... while the tumour-centred task accepts it (same card input fields)
    cfg = load_config("prediction_mil_roi_finetune")
    path, card = TASKS[cfg["task"]](cfg).init_model()
    assert path.stem == "predict_mil_roi" and card["input"]["kind"] == "mil_roi"


def test_freeze_patterns_reach_every_ensemble_member():
    from napari_radiogen.core.train.base import TASKS
    from napari_radiogen.core.train.config import load_config
    cfg = load_config("prediction_mil_roi_finetune")
    task = TASKS[cfg["task"]](cfg)
    model = task.make_model()
    task.freeze(model, ["members.*.encoders"])
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(".encoders." in n for n in frozen)
    assert {n.split(".")[1] for n in frozen} == {str(k) for k in range(len(model.members))}
    assert all(p.requires_grad for n, p in model.named_parameters() if ".encoders." not in n)


def test_cli_init_overrides_the_config(tmp_path, base_model, monkeypatch):
    from napari_radiogen.cli import main
    monkeypatch.setenv("RADIOGEN_MODELS_DIR", str(tmp_path / "models"))
    cfg = tmp_path / "c.json"
    # a YAML config is JSON-compatible
    cfg.write_text(json.dumps(tiny_cfg(name="phantom-cli", train={"epochs": 1})))
    cfg = cfg.rename(tmp_path / "c.yaml")
    assert main(["train", str(cfg), "--out", str(tmp_path / "r"), "--init", str(base_model),
                 "--device", "cpu", "--quiet", "--no-install"]) == 0
    card = json.loads((tmp_path / "r" / "phantom-cli.card.json").read_text())
    assert card["fine_tuned_from"]["name"] == "phantom-base"
    assert main(["train", str(cfg), "--out", str(tmp_path / "r2"), "--init", "nope",
                 "--device", "cpu", "--quiet"]) == 2


@pytest.mark.slow
def test_shipped_tumour_centred_model_fine_tuned_on_real_packs(tmp_path, shared_data):
    """`radiogen train prediction_mil_roi_finetune` on 6 real packs: the encoders stay the
    shipped ones, the heads move, and the result predicts a pack like the shipped model does."""
    from napari_radiogen.cli import main
    from napari_radiogen.core.io.cases import load_case
    from napari_radiogen.core.models import find_model, load_model
    from napari_radiogen.core.progress import run
    from napari_radiogen.core.predict import predict
    out = tmp_path / "ft"
    assert main(["train", "prediction_mil_roi_finetune", "--out", str(out), "--limit", "6",
                 "--epochs", "1", "--device", "cpu", "--quiet"]) == 0
    model = out / "predict_mil_roi_finetuned.safetensors"
    shipped = load_state_dict_file(find_model("predict_mil_roi"))
    tuned = load_state_dict_file(model)
    assert shipped.keys() == tuned.keys()
    enc = [n for n in shipped if ".encoders." in n and shipped[n].is_floating_point()]
    head = [n for n in shipped if ".heads." in n]
    assert all(torch.equal(tuned[n].float(), shipped[n].float()) for n in enc)
    assert any(not torch.equal(tuned[n].float(), shipped[n].float()) for n in head)
    card = json.loads(model.with_suffix(".card.json").read_text())
    assert card["input"]["kind"] == "mil_roi" and card["fine_tuned_from"]["name"] == \
        "predict_mil_roi"
    assert load_model(str(model)).card["normalisation"]["version"] == \
        load_model("predict_mil_roi").card["normalisation"]["version"]
    case = load_case(shared_data / "tcga-lgg" / "TCGA_CS_4941.h5")
    res = run(predict(case, str(model)))
    p = res.tasks["idh"]
    assert abs(sum(p.values()) - 1) < 1e-5 and all(0 <= v <= 1 for v in p.values())
    assert res.features_source      # the window was placed on the model's own segmentation
    assert np.isfinite(res.risk if res.risk is not None else 0.0)


def test_tumour_centred_3d_cnn_trained_from_its_config_predicts_through_a_window(
        tmp_path, shared_data):
    """`radiogen train prediction_cnn3d_roi` on 12 real packs: the engine windows each pack on
    its expert mask, and the model it writes is a tumour-centred 3D CNN that places its window
    on the case's segmentation when it predicts."""
    from napari_radiogen.cli import main
    from napari_radiogen.core.io.cases import load_case
    from napari_radiogen.core.progress import run
    from napari_radiogen.core.predict import predict
    out = tmp_path / "r"
    assert main(["train", "prediction_cnn3d_roi", "--out", str(out), "--limit", "12",
                 "--epochs", "1", "--no-install", "--device", "cpu", "--quiet"]) == 0
    model = out / "predict_cnn3d_roi_e2e.safetensors"
    card = json.loads(model.with_suffix(".card.json").read_text())
    assert card["input"]["kind"] == "volume3d_roi" and card["input"]["depth"] == 32
    assert card["normalisation"]["version"] == "roi-v2"
    case = load_case(shared_data / "tcga-lgg" / "TCGA_CS_4941.h5")
    res = run(predict(case, str(model), segmentation=case.labels.array,
                      segmentation_source="expert"))
    wt = case.labels.array > 0
    zs = np.where(wt.any((1, 2)))[0]
    assert res.slice_index[0] == max(0, zs.min() - 1) and res.features_source == \
        "segmentation expert"
    assert abs(sum(res.tasks["idh"].values()) - 1) < 1e-5


def test_cnn3d_stage_freezing_reaches_every_member_of_the_shipped_ensemble():
    """`train.freeze: [3]` (conv1, bn1, layer1) on `--init predict_cnn3d`, a fold ensemble."""
    from napari_radiogen.core.train.base import TASKS
    from napari_radiogen.core.train.config import load_config
    cfg = load_config("prediction_cnn3d", init="predict_cnn3d")
    task = TASKS[cfg["task"]](cfg)
    model = task.make_model()
    task.freeze(model, [3])
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert {n.split(".")[1] for n in frozen} == {str(k) for k in range(len(model.members))}
    assert all(n.split(".")[3] in ("conv1", "bn1", "layer1") for n in frozen)
    assert any(p.requires_grad for n, p in model.named_parameters() if ".layer2." in n)


def test_prediction_tasks_report_the_age_sex_baseline_on_the_same_folds(shared_data):
    """The engine's prediction runs put the age/sex logistic baseline beside the model."""
    from napari_radiogen.core.train.base import TASKS
    from napari_radiogen.core.train.config import load_config
    cfg = load_config("prediction_mil_roi", data=str(shared_data / "tcga-lgg"))
    cfg["limit"] = 40
    task = TASKS[cfg["task"]](cfg)
    ids = [p["id"] for p in task.cohort]
    test = ids[::3]
    b = task.baseline([i for i in ids if i not in test], test)
    assert set(b) == {"auc_idh", "auc_codel_1p19q", "auc_grade", "c_index"}
    assert all(0.0 <= b[k] <= 1.0 for k in b if b[k] == b[k])
    assert b["auc_idh"] == b["auc_idh"] and b["c_index"] == b["c_index"]
    # a training part holding one class of a task: no baseline rather than a crash
    one = [i for i, p in zip(ids, task.cohort) if p["y"][0] == 1][:3]
    assert task.baseline(one, test) is None


def test_resume_refuses_another_init_model(tmp_path, base_model):
    other = tmp_path / "other"
    res, _ = drive(engine.train(tiny_cfg(name="phantom-other", train={"epochs": 1}), other,
                                device="cpu"))
    cfg = tiny_cfg(name="ft", init=str(base_model), train={"epochs": 2})
    tok = CancelToken()
    gen = engine.train(cfg, tmp_path / "run", device="cpu", cancel=tok)
    with pytest.raises(Cancelled):
        for it in gen:
            if getattr(it, "epoch_end", False):
                tok.cancel()
    with pytest.raises(ConfigError, match="another init model file"):
        drive(engine.train(dict(cfg, init=str(res.model_path)), tmp_path / "run",
                           device="cpu", resume=True))
    r2, _ = drive(engine.train(cfg, tmp_path / "run", device="cpu", resume=True))
    assert json.loads(r2.card_path.read_text())["fine_tuned_from"]["name"] == "phantom-base"


def test_resume_refuses_the_same_init_path_with_other_content(tmp_path, base_model):
    import shutil
    init = tmp_path / "init.safetensors"
    shutil.copy(base_model, init)
    cfg = tiny_cfg(name="ft", init=str(init), train={"epochs": 2})
    tok = CancelToken()
    with pytest.raises(Cancelled):
        for it in engine.train(cfg, tmp_path / "run", device="cpu", cancel=tok):
            if getattr(it, "epoch_end", False):
                tok.cancel()
    other, _ = drive(engine.train(tiny_cfg(name="o", train={"epochs": 1}), tmp_path / "o",
                                  device="cpu"))
    shutil.copy(other.model_path, init)              # same path, other weights
    with pytest.raises(ConfigError, match="another init model file"):
        drive(engine.train(cfg, tmp_path / "run", device="cpu", resume=True))


def test_ensembles_train_on_their_mean_probability():
    from napari_radiogen.core.train.tasks.prediction import ensemble_as_one
    probs = torch.tensor([[[0.2, 0.8]], [[0.6, 0.4]]])        # (members, batch, classes)
    out = ensemble_as_one({"probs": {"idh": probs}, "risk": torch.tensor([[1.0], [3.0]])})
    assert torch.allclose(torch.softmax(out["logits"]["idh"], -1), probs.mean(0))
    assert torch.allclose(out["risk"], torch.tensor([2.0]))
    single = {"logits": {"idh": torch.zeros(1, 2)}}
    assert ensemble_as_one(single) is single


def test_stage_numbers_are_refused_where_the_task_has_no_stages(tmp_path, base_model):
    with pytest.raises(ConfigError, match="stage number"):
        drive(engine.train(tiny_cfg(train={"freeze": [3]}), tmp_path / "r", device="cpu"))


def test_a_window_other_than_the_init_models_is_refused():
    """predict_mil_roi's card has no input.window (the fixed window): a config fitting the
    window to the tumour feeds other inputs."""
    from napari_radiogen.core.train.base import TASKS
    from napari_radiogen.core.train.config import load_config
    cfg = load_config("prediction_mil_roi_finetune")
    cfg["model"]["window"] = {"mode": "fit", "margin_mm": 15}
    with pytest.raises(ConfigError, match="input.window"):
        TASKS[cfg["task"]](cfg).init_model()


def test_a_config_describing_another_network_than_the_init_is_refused(tmp_path, base_model):
    cfg = tiny_cfg(init=str(base_model), model={"width": 8})       # the base has width 4
    with pytest.raises(ConfigError, match="width: 4 in the model, 8 here"):
        drive(engine.train(cfg, tmp_path / "r", device="cpu"))


def test_a_fine_tuned_model_may_not_replace_its_init_or_hide_a_shipped_model(
        tmp_path, base_model, monkeypatch):
    monkeypatch.setenv("RADIOGEN_MODELS_DIR", str(tmp_path / "models"))
    for name, what in (("phantom-base", "replace the model it starts from"),
                       ("predict_mil_roi", "hide the shipped model")):
        cfg = tiny_cfg(name=name, init=str(base_model), train={"epochs": 1})
        with pytest.raises(ConfigError, match=what):
            drive(engine.train(cfg, tmp_path / name, device="cpu", install=True))
        assert not (tmp_path / name / "checkpoint.safetensors").exists()
    # a model trained from scratch may not hide a shipped one either
    with pytest.raises(ConfigError, match="hide the shipped model"):
        drive(engine.train(tiny_cfg(name="predict_mil_roi", train={"epochs": 1}),
                           tmp_path / "scratch", device="cpu", install=True))
    # not installed: the run may keep the name
    res, _ = drive(engine.train(tiny_cfg(name="phantom-base", init=str(base_model),
                                         train={"epochs": 1}), tmp_path / "ok", device="cpu"))
    assert res.installed_path is None


def test_a_freeze_pattern_that_names_nothing_is_refused(tmp_path, base_model):
    cfg = tiny_cfg(init=str(base_model), train={"epochs": 1, "freeze": ["members.*.encoders"]})
    with pytest.raises(ConfigError, match="names no parameter"):
        drive(engine.train(cfg, tmp_path / "r", device="cpu"))


def test_a_missing_init_file_says_so(tmp_path):
    with pytest.raises(ConfigError, match="model file not found"):
        drive(engine.train(tiny_cfg(init=str(tmp_path / "nope.safetensors")), tmp_path / "r",
                           device="cpu"))


@pytest.mark.parametrize("config,model", [
    ("segmentation_lgg_gpu", "seg_lgg_segresnet2d"), ("synthesis", "synth_seq2seq2d"),
    ("triage_resnet", "triage_resnet"), ("triage_vit", "triage_vit"),
    ("segmentation_brats", "seg_brats_segresnet"),
    ("segmentation_brats_attunet", "seg_brats_attunet"),
    ("segmentation_brats_attunet2mm", "seg_brats_attunet2mm"),
    ("prediction_cnn3d", "predict_cnn3d"), ("prediction_mil", "predict_mil"),
    ("prediction_mil_roi", "predict_mil_roi"), ("prediction_cnn3d_roi", "predict_cnn3d_roi")])
def test_every_shipped_model_is_accepted_by_the_config_family_that_made_it(config, model):
    """No false refusal: the input and network checks pass for each shipped model with its
    own config (free-text descriptions worded differently are not a mismatch)."""
    from napari_radiogen.core.train.base import TASKS
    from napari_radiogen.core.train.config import load_config
    cfg = load_config(config, init=model)
    path, card = TASKS[cfg["task"]](cfg).init_model()
    assert path.stem == model


def test_a_config_of_another_network_family_is_refused():
    from napari_radiogen.core.train.base import TASKS
    from napari_radiogen.core.train.config import load_config
    cfg = load_config("segmentation_brats_attunet", init="seg_brats_segresnet")
    with pytest.raises(ConfigError, match="segresnet_3d in the model, .*attention_unet_3d here"):
        TASKS[cfg["task"]](cfg).init_model()


def test_engine_cards_show_their_cv_auc_and_whether_it_is_held_out(capsys):
    """The prediction JSON / widgets read an engine card's CV table (``metrics.cv``), and a
    fine-tuned model whose init saw test patients is marked, also by `radiogen models`."""
    from napari_radiogen.cli_cmds.models import _headline
    from napari_radiogen.core.predict import card_summary
    cv = {"auc_idh": {"mean": 0.81, "ci95": [0.7, 0.9]}, "c_index": {"mean": 0.66},
          "auc": {"mean": 0.81, "ci95": [0.7, 0.9]}}
    card = {"name": "m", "task": "prediction", "metrics": {"cv": cv, "protocol": "p"}}
    s = card_summary(card)
    assert s["validated"]["idh"]["auc_mean"] == 0.81 and s["c_index"] == 0.66
    assert s["held_out"] is True and "not held-out" not in _headline(card)
    card["fine_tuned_from"] = {"name": "predict_mil_roi", "test_patients_seen": ["a"]}
    assert card_summary(card)["held_out"] is False
    assert "not held-out: fine-tuned from predict_mil_roi" in _headline(card)
