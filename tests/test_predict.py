"""Prediction: core predict on packs and NIfTI case folders, missing sequences, CLI (single
and batch), the networks' masking and freezing, and the shipped models on real data."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from napari_radiogen.core.errors import MissingSequenceError
from napari_radiogen.core.progress import Progress, run as drive

from predict_helpers import TINY, make_tiny_model, write_pack

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny():
    make_tiny_model()
    from napari_radiogen.core.models import load_model
    return load_model(TINY, task="prediction")


def _pack(seed=0, n=12):
    from napari_radiogen.core.phantom import make_pack_phantom
    return make_pack_phantom(seed=seed, n_slices=n)


def test_predict_pack_probabilities_attention_uncertainty(tiny):
    from napari_radiogen.core.predict import PredictionResult, predict
    case = _pack(n=12)
    items = list(predict(case, tiny, device="cpu"))
    assert any(isinstance(i, Progress) for i in items)
    res = items[-1]
    assert isinstance(res, PredictionResult)
    assert set(res.tasks) == {"idh", "codel_1p19q", "grade"}
    assert set(res.tasks["idh"]) == {"mutant", "wildtype"}
    assert set(res.tasks["grade"]) == {"2", "3"}
    for t, d in res.tasks.items():
        assert abs(sum(d.values()) - 1) < 1e-5
        assert 0 <= res.uncertainty[t]["sd"] <= 0.5
        assert len(res.uncertainty[t]["members"]) == 2
    # one weight per slice of the pack, per sequence, summing to 1
    assert set(res.attention) == {"t1", "flair", "t1ce"}
    for w in res.attention.values():
        assert len(w) == 12
        assert abs(sum(w) - 1) < 1e-3
    assert res.risk is not None
    j = res.to_json()
    json.dumps(j)
    assert j["model"] == TINY and j["card"]["name"] == TINY


def test_prediction_on_a_training_patient_says_it_is_in_sample(tiny):
    """A case among the patients the model's card lists as trained on: the prediction says its
    result is in-sample (once, kind IN_SAMPLE); a new case is not flagged."""
    import dataclasses
    from napari_radiogen.core.notes import IN_SAMPLE, warning_key
    from napari_radiogen.core.predict import predict
    lm = dataclasses.replace(tiny, card={**tiny.card, "training_data": {
        "patients": ["PHANTOM_PACK_0000", "PHANTOM_PACK_0005"]}})
    res = drive(predict(_pack(n=8), lm, device="cpu"))
    said = [w for w in res.warnings if warning_key(w) == IN_SAMPLE]
    assert said == [f"PHANTOM_PACK_0000 was in {TINY}'s training data: its predictions here are "
                    "in-sample, not a validation (expect them to be right more often than on "
                    "a new case)"]
    assert said[0] in res.to_json()["warnings"]
    other = drive(predict(_pack(seed=1, n=8), lm, device="cpu"))
    assert not any(warning_key(w) == IN_SAMPLE for w in other.warnings)


def test_prediction_json_is_strict_and_card_intervals_stay_in_range():
    """A non-finite number of a prediction (a feature of an empty mask) is null in its JSON;
    a card's AUC interval stored unclipped (a t-interval over folds) is shown within [0, 1]."""
    from napari_radiogen.core.predict import PredictionResult, card_summary
    res = PredictionResult(case_id="c", model="m", card={}, tasks={"idh": {"mutant": 0.5}},
                           uncertainty={}, attention={}, slice_index=[], risk=float("nan"),
                           features={"glcm_contrast": float("nan"), "volume_ml": 0.0})
    js = json.loads(json.dumps(res.to_json(), allow_nan=False))
    assert js["risk"] is None and js["features"]["glcm_contrast"] is None
    card = {"name": "ft", "task": "prediction", "metrics": {"cv": {
        "auc_grade": {"mean": 0.667, "ci95": [-0.768, 2.101]},
        "auc_idh": {"mean": 0.8, "ci95": [0.6, 0.95]}}}}
    v = card_summary(card)["validated"]
    assert v["grade"]["auc_ci95"] == [0.0, 1.0] and v["idh"]["auc_ci95"] == [0.6, 0.95]
    assert card["metrics"]["cv"]["auc_grade"]["ci95"] == [-0.768, 2.101]   # card untouched


def test_pack_unavailable_channel_is_masked_not_used(tiny, tmp_path):
    """A channel marked unavailable (a FLAIR copy) is not loaded; the model masks it."""
    from napari_radiogen.core.io import load_case
    from napari_radiogen.core.predict import case_to_input, predict
    case = _pack(seed=1)
    p = write_pack(tmp_path / "P1.h5", case, available=(True, True, False))
    loaded = load_case(p)
    assert "t1ce" not in loaded.sequences
    inp = case_to_input(loaded, ["t1", "flair", "t1ce"])
    assert inp.seq_mask.tolist() == [True, True, False]
    assert np.all(inp.x[2] == 0)
    res = drive(predict(loaded, tiny, device="cpu"))
    assert "t1ce" not in res.attention
    assert any("t1ce missing" in w for w in res.warnings)


def test_missing_required_sequence_clear_message(tiny):
    from napari_radiogen.core.predict import predict
    case = _pack()
    del case.sequences["flair"]
    with pytest.raises(MissingSequenceError, match="flair"):
        drive(predict(case, tiny, device="cpu"))


def test_non_brain_volumes_are_refused_not_predicted(tiny):
    """A volume too small or too thin to hold a head gets the segmentation's clear message
    from predict and explain too, not probabilities about noise."""
    from napari_radiogen.core.errors import CaseLoadError
    from napari_radiogen.core.explain import explain
    from napari_radiogen.core.phantom import make_phantom
    from napari_radiogen.core.predict import predict
    cube = make_phantom(0, shape=(12, 12, 12), spacing=(1.0, 1.0, 1.0))
    with pytest.raises(CaseLoadError, match="2D or too thin for a 3D brain model"):
        drive(predict(cube, tiny, device="cpu"))
    with pytest.raises(CaseLoadError, match="2D or too thin for a 3D brain model"):
        drive(explain(cube, tiny))


def test_predict_nifti_case_folder_t2_ignored(tiny, tmp_path):
    from napari_radiogen.core.io import load_case, write_volume
    from napari_radiogen.core.phantom import make_phantom
    from napari_radiogen.core.predict import predict
    ph = make_phantom(seed=2, shape=(40, 64, 56), spacing=(1.5, 1.5, 1.5), skull_stripped=True)
    folder = tmp_path / "CASE7"
    folder.mkdir()
    for s, v in ph.sequences.items():
        write_volume(v.array, v.geometry, folder / f"CASE7_{s}.nii.gz")
    case = load_case(folder)
    assert case.kind == "volume"
    res = drive(predict(case, tiny, clinical={"age": 60, "sex": "F"}, device="cpu"))
    nz = case.sequences[case.reference].array.shape[0]
    assert all(len(w) == nz for w in res.attention.values())
    # slices sampled about every 4 mm among head slices (1.5 mm spacing -> every 3rd)
    assert 5 <= len(res.slice_index) <= nz // 2
    assert max(res.slice_index) < nz
    assert any("t2 ignored" in w for w in res.warnings)
    assert not any("age unknown" in w for w in res.warnings)
    # a model trained on slice packs says a 3D volume is outside its domain; a pack is not
    from napari_radiogen.core.notes import OUTSIDE_DOMAIN_3D, warning_key
    assert OUTSIDE_DOMAIN_3D not in [warning_key(w) for w in res.warnings]   # no datasets
    import copy
    packs = copy.copy(tiny)
    packs.card = {**tiny.card, "training_data": {
        "datasets": ["TCGA-LGG (Buda et al. 2019 slice packs, 88 patients)"]}}
    res = drive(predict(case, packs, clinical={"age": 60, "sex": "F"}, device="cpu"))
    dom = [w for w in res.warnings if warning_key(w) == OUTSIDE_DOMAIN_3D]
    assert len(dom) == 1 and "trained on TCGA-LGG slice packs" in dom[0]
    res = drive(predict(_pack(n=12), packs, device="cpu"))
    assert OUTSIDE_DOMAIN_3D not in [warning_key(w) for w in res.warnings]


def test_four_sequence_model_uses_t2(tmp_path):
    """A model trained with T2 (4 encoders) takes it; the 3-sequence models ignore it."""
    from napari_radiogen.core.models import load_model
    from napari_radiogen.core.phantom import make_phantom
    from napari_radiogen.core.predict import predict
    make_tiny_model("predict_tiny4_test", sequences=("t1", "t1ce", "t2", "flair"))
    lm = load_model("predict_tiny4_test", task="prediction")
    ph = make_phantom(seed=5, shape=(30, 56, 56), spacing=(2.0, 2.0, 2.5), skull_stripped=True)
    res = drive(predict(ph, lm, device="cpu"))
    assert set(res.attention) == {"t1", "t1ce", "t2", "flair"}
    assert not any("ignored" in w for w in res.warnings)
    del ph.sequences["t2"]
    res = drive(predict(ph, lm, device="cpu"))
    assert "t2" not in res.attention and any("t2 missing" in w for w in res.warnings)


def test_volume_input_resampled_to_training_resolution():
    from napari_radiogen.core.phantom import make_phantom
    from napari_radiogen.core.predict import SIZE, volume_case_to_input
    ph = make_phantom(seed=3, shape=(30, 96, 96), spacing=(1.0, 1.0, 2.0), skull_stripped=True)
    inp = volume_case_to_input(ph, ["t1", "flair", "t1ce"])
    assert inp.x.shape[2:] == (SIZE, SIZE)
    assert inp.seq_mask.all()
    # 96 mm of head at 3.75 mm/pixel ~ 26 pixels of foreground across: not stretched to 64
    fg = (inp.x[1, len(inp.slice_index) // 2] > -1).sum(1).max()
    assert 15 <= fg <= 35
    # normalised: foreground ~ zero mean
    v = inp.x[1][inp.x[1] > -1.5]
    assert abs(float(v.mean())) < 1.0


def test_cli_single_and_batch(tiny, tmp_path):
    from napari_radiogen.cli import main
    coh = tmp_path / "cohort"
    coh.mkdir()
    for i in range(2):
        write_pack(coh / f"PACK{i}.h5", _pack(seed=i, n=10))
    out = tmp_path / "out1"
    assert main(["predict", str(coh / "PACK0.h5"), "--out", str(out), "--model", TINY,
                 "--device", "cpu", "--age", "50", "--sex", "M"]) == 0
    j = json.loads((out / "PACK0_predictions.json").read_text())
    assert j["case_id"] == "PACK0" and j["model"] == TINY
    for k in ("card", "tasks", "uncertainty", "attention", "synthetic_inputs", "warnings"):
        assert k in j
    assert set(j["tasks"]["codel_1p19q"]) == {"codel", "non-codel"}
    assert len(j["attention"]["flair"]) == 10
    assert not (out / "summary.csv").exists()
    out2 = tmp_path / "out2"
    assert main(["predict", str(coh), "--out", str(out2), "--model", TINY, "--device", "cpu"]) == 0
    rows = list(csv.DictReader(open(out2 / "summary.csv")))
    assert [r["case_id"] for r in rows] == ["PACK0", "PACK1"]
    assert all(r["status"] == "ok" and 0 <= float(r["p_idh_mutant"]) <= 1 for r in rows)
    assert (out2 / "PACK1_predictions.json").exists()


def test_cli_missing_sequence_exit_2(tiny, tmp_path, capsys):
    from napari_radiogen.cli import main
    from napari_radiogen.core.io import write_volume
    from napari_radiogen.core.phantom import make_phantom
    ph = make_phantom(seed=4, shape=(24, 48, 48), sequences=("t1", "t1ce", "t2"))
    folder = tmp_path / "CASE9"
    folder.mkdir()
    for s, v in ph.sequences.items():
        write_volume(v.array, v.geometry, folder / f"CASE9_{s}.nii.gz")
    assert main(["predict", str(folder), "--out", str(tmp_path / "o"), "--model", TINY]) == 2
    err = capsys.readouterr().err
    assert "radiogen: error: missing sequence(s): flair" in err


def test_mil_masking_and_attention_pooling():
    import torch
    from src_models.mil import MILPredictor
    torch.manual_seed(0)
    m = MILPredictor(widths=[4, 8, 8, 8], embed_dim=8, attn_hidden=8, fusion_hidden=8).eval()
    x = torch.randn(2, 3, 6, 32, 32)
    sl = torch.ones(2, 6, dtype=torch.bool)
    sl[1, 4:] = False
    sm = torch.tensor([[True, True, False], [True, True, True]])
    with torch.no_grad():
        o1 = m(x, sl, sm)
        x2 = x.clone()
        x2[0, 2] = 100.0          # a masked sequence's data must not matter
        x2[1, :, 4:] = 50.0       # nor padding slices
        o2 = m(x2, sl, sm)
    for t in o1["logits"]:
        assert torch.allclose(o1["logits"][t], o2["logits"][t], atol=1e-5)
    a = o1["attention"]
    assert torch.allclose(a[1, :, 4:], torch.zeros(3, 2))
    assert torch.allclose(a[1].sum(-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(a[0, 2], torch.zeros(6))


def test_cnn3d_freezing_and_cox_loss():
    import torch
    from src_models.cnn3d import build_cnn3d, freeze_stages, train_mode, trainable_fraction
    from src_models.survival import cox_partial_likelihood
    m = build_cnn3d(widths=[4, 8, 8, 8], depth=16, input_size=32)
    out = m(torch.randn(2, 3, 16, 32, 32), torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool))
    assert out["logits"]["idh"].shape == (2, 2) and out["risk"].shape == (2,)
    frozen = freeze_stages(m, 3)
    assert frozen and all(n.startswith(("net.conv1", "net.bn1", "net.layer1")) for n in frozen)
    assert 0 < trainable_fraction(m) < 1
    train_mode(m)
    assert not m.net.bn1.training and m.net.layer2[0].bn1.training
    # Cox: ordering risks with survival lowers the loss
    t = torch.tensor([1.0, 2.0, 3.0, 4.0])
    e = torch.tensor([1.0, 1.0, 1.0, 0.0])
    good = cox_partial_likelihood(torch.tensor([3.0, 2.0, 1.0, 0.0]), t, e)
    bad = cox_partial_likelihood(torch.tensor([0.0, 1.0, 2.0, 3.0]), t, e)
    assert good < bad


def test_train_tasks_registered():
    from napari_radiogen.core.train.base import TASKS
    import napari_radiogen.core.train.tasks  # noqa: F401
    assert "prediction-mil" in TASKS and "prediction-cnn3d" in TASKS


# -- the shipped models on real data -----------------------------------------------------------
def _shipped(name):
    p = ROOT / "napari_radiogen" / "weights" / f"{name}.safetensors"
    if not p.exists():
        pytest.skip(f"{name} weights not shipped yet")
    return p


@pytest.mark.parametrize("name", ["predict_mil", "predict_cnn3d", "predict_cnn3d_roi"])
def test_shipped_model_card(name):
    from napari_radiogen.core.models import read_card
    card = read_card(_shipped(name))
    assert card["task"] == "prediction"
    for t in ("idh", "codel_1p19q", "grade"):
        m = card["metrics"][t]
        assert 0 <= m["auc_mean"] <= 1 and m["auc_ci95"][0] <= m["auc_ci95"][1]
        assert "brier" in m and t in card["baseline"]["age_sex_logistic"]
    assert card["metrics"]["survival"]["c_index_mean"] > 0
    assert "protocol" in card["metrics"] and card["citations"]
    assert len(card["training_data"]["patients"]) == 88


@pytest.mark.slow
@pytest.mark.shared
def test_shipped_mil_on_real_pack_and_brats(shared_data):
    from napari_radiogen.core.io import load_case
    from napari_radiogen.core.models import load_model
    from napari_radiogen.core.predict import predict
    _shipped("predict_mil")
    lm = load_model("predict_mil", task="prediction", device="cpu")
    case = load_case(shared_data / "tcga-lgg" / "TCGA_CS_4941.h5")
    res = drive(predict(case, lm, device="cpu"))       # speed: radiogen bench, not a test
    assert len(res.attention["flair"]) == case.sequences["flair"].array.shape[0]
    assert not any("age unknown" in w for w in res.warnings)   # clinical.csv beside the pack
    brats = sorted((shared_data / "brats2021").glob("BraTS2021_*"))[0]
    case = load_case(brats)
    res = drive(predict(case, lm, device="cpu"))       # speed: radiogen bench, not a test
    assert any("t2 ignored" in w for w in res.warnings)
    assert 0 <= res.tasks["idh"]["mutant"] <= 1


@pytest.mark.shared
def test_shipped_tumour_centred_model_on_a_training_patient_says_so_once(shared_data):
    """TCGA_CS_4941 is among the patients of predict_mil_roi and of the segmentation placing
    its window (seg_lgg_segresnet2d): the prediction says it is in-sample once, naming
    itself; the segmentation it made does not repeat it."""
    from napari_radiogen.core.io import load_case
    from napari_radiogen.core.notes import IN_SAMPLE, warning_key
    from napari_radiogen.core.predict import predict
    _shipped("predict_mil_roi")
    res = drive(predict(load_case(shared_data / "tcga-lgg" / "TCGA_CS_4941.h5"),
                        "predict_mil_roi", device="cpu"))
    assert [w for w in res.warnings if "training data" in w] == [
        "TCGA_CS_4941 was in predict_mil_roi's training data: its predictions here are "
        "in-sample, not a validation (expect them to be right more often than on a new case)"]
    assert warning_key(next(w for w in res.warnings if "training data" in w)) == IN_SAMPLE


# -- auxiliary tumour-mask supervision (training only) ------------------------------------------
def _phantom_cohort(tmp_path, n=4, n_slices=10):
    """Phantom packs (with masks) + a clinical.csv, read by the training loader."""
    from napari_radiogen.core.train.tasks import prediction as P
    rows = []
    for k in range(n):
        case = _pack(seed=k, n=n_slices)
        write_pack(tmp_path / f"PH_{k}.h5", case)
        rows.append(f"PH_{k},{['mutant', 'wildtype'][k % 2]},{['codel', 'non-codel'][k % 2]},"
                    f"{2 + k % 2},{40 + k},{1 + k % 2},{300 + 50 * k},{k % 2},x|{2 + k % 2}")
    (tmp_path / "clinical.csv").write_text(
        "patient_id,idh,codel_1p19q,grade,age_at_initial_pathologic,gender,os_days,os_event,"
        "idh_codel_subtype\n" + "\n".join(rows) + "\n")
    return P.load_cohort(str(tmp_path))


def test_tumour_targets_follow_the_pack_mask(tmp_path):
    cohort = _phantom_cohort(tmp_path, n=1, n_slices=12)
    p = cohort[0]
    case = _pack(seed=0, n=12)
    m = case.labels.array > 0
    assert p["tmask"].shape == p["x"].shape[1:]                    # (N, 64, 64) like the input
    assert np.allclose(p["tarea"], m.reshape(12, -1).mean(1), atol=1e-3)
    assert ((p["tarea"] > 0) == m.any((1, 2))).all()
    assert (p["tarea"] > 0).any() and (p["tarea"] == 0).any()      # the phantom has both kinds


def test_aux_tumour_loss_and_attention_kl():
    import torch
    from src_models.mil import SliceAuxModel, attention_kl, tumour_aux_loss
    mask = torch.zeros(4, 64, 64)
    mask[0, 8:24, 8:24] = 1
    mask[1, 40:56, 30:50] = 1                                        # slices 2, 3: no tumour
    tgt = torch.nn.functional.adaptive_avg_pool2d(mask.unsqueeze(1), (8, 8))
    good_map, bad_map = 8 * (tgt - 0.5), 8 * (0.5 - tgt)
    good_pres, bad_pres = torch.tensor([4., 4, -4, -4]), -torch.tensor([4., 4, -4, -4])
    assert tumour_aux_loss(good_pres, good_map, mask) < 0.5 * tumour_aux_loss(bad_pres, bad_map, mask)
    keep = torch.tensor([False] * 4)
    assert float(tumour_aux_loss(bad_pres, bad_map, mask, keep)) == 0.0  # missing sequence: no loss
    # heads: shapes, and the encoders are the MIL model's (the shipped architecture is unchanged)
    aux = SliceAuxModel(widths=[4, 8, 8, 8], tumour_heads=True)
    o = aux(torch.randn(4, 3, 64, 64))["flair"]
    assert o["tumour"].shape == (4,) and o["tumour_map"].shape == (4, 1, 8, 8)
    # attention supervision: low when attention follows the tumour area, high when it avoids it
    area = torch.tensor([[0.0, 0.02, 0.05, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    sl = torch.ones(2, 5, dtype=torch.bool)
    on = torch.softmax(torch.log(area[0] + 1e-3), 0)
    off = torch.softmax(-torch.log(area[0] + 1e-3), 0)
    att_on = torch.stack([on.expand(3, 5), torch.full((3, 5), 0.2)])
    att_off = torch.stack([off.expand(3, 5), torch.full((3, 5), 0.2)])
    assert attention_kl(att_on, area, sl) < 0.2 * attention_kl(att_off, area, sl)
    # a bag without tumour and masked sequences add nothing
    sm = torch.tensor([[False, False, False], [True, True, True]])
    assert float(attention_kl(att_off, area, sl, sm)) == 0.0


def test_mil_fold_with_aux_supervision_is_segmentation_free(tmp_path):
    """One tiny fold of the protocol with mask supervision: the aux heads train, the MIL model
    that comes out has exactly the inference architecture and predicts without any mask."""
    import torch
    from napari_radiogen.core.train.tasks import prediction as P
    from src_models.mil import build_mil_ensemble
    cohort = _phantom_cohort(tmp_path, n=6, n_slices=8)
    arch = {"sequences": ["t1", "flair", "t1ce"], "widths": [4, 8, 8, 8], "layers": [1, 1, 1, 1],
            "attn_hidden": 8, "embed_dim": 8, "fusion_hidden": 8, "tumour_pool": True}
    cfg = {"arch": arch, "enc_epochs": 1, "enc_batch": 16, "mil_epochs": 3,
           "aux": {"tumour_weight": 1.0, "label_bg_weight": 0.1, "att_weight": 0.5}}
    res, state = P.mil_fold(cohort, [0, 1, 2, 3, 4], [5], cfg, seed=0, log=lambda *_: None)
    assert 0 <= res["probs"]["idh"][0] <= 1 and np.isfinite(res["risk"]).all()
    ens = build_mil_ensemble(n_members=1, **arch)
    ens.members[0].load_state_dict(state, strict=True)       # no extra (aux) keys, none missing
    assert not any(k.startswith(("presence", "tumour_map")) for k in state)
    # the encoders' own tumour map (trained on the masks) feeds the slice feature at inference
    enc = ens.members[0].encoders["flair"].eval()
    xs = torch.from_numpy(cohort[5]["x"][1][:, None])
    with torch.no_grad():
        f, fmap, tlogits = enc.forward_maps(xs)
        assert torch.allclose(f, enc(xs), atol=1e-6) and tlogits.shape == (xs.shape[0], 1, 8, 8)
        assert f.shape[1] == enc.out_dim == 8 + 8 + 1
    for p in cohort:
        p["tmask"] = p["tarea"] = None                  # no mask anywhere: inference still works
    ens.eval()
    x = torch.from_numpy(cohort[5]["x"][None])
    with torch.no_grad():
        out = ens(x, torch.ones(1, x.shape[2], dtype=torch.bool))
    assert out["probs"]["idh"].shape == (1, 1, 2)
    with pytest.raises(Exception, match="mask"):
        P.train_encoders(cohort, [0, 1], arch, epochs=1, aux={})


def test_whole_brain_models_say_a_sequence_offset_from_the_reference(tiny):
    """The slice (and volume) models read the sequences together on the reference grid
    without core.prepare.prepare, which checks their co-registration for the segmentation:
    the prediction and its explanation check it themselves. A sequence shifted 8 mm in its
    header is said; the aligned case, and an offset sequence the model does not read, are
    not."""
    from napari_radiogen.core.case import Volume
    from napari_radiogen.core.explain import explain
    from napari_radiogen.core.phantom import make_phantom
    from napari_radiogen.core.predict import predict

    def shifted(case, name, mm):
        v = case.sequences[name]
        g = v.geometry
        return case.with_sequence(name, Volume(v.array, g.with_(
            origin=(g.origin[0], g.origin[1] + mm, g.origin[2])), meta=dict(v.meta)))

    def offsets(res):
        return [str(w) for w in res.warnings if "looks offset" in str(w)]

    case = make_phantom(3, shape=(48, 64, 60), spacing=(1.5, 1.5, 1.5))
    assert not offsets(drive(predict(case, tiny, device="cpu")))
    moved = shifted(case, "t1", 8.0)
    said = offsets(drive(predict(moved, tiny, device="cpu")))
    assert len(said) == 1 and said[0].startswith("t1 looks offset from flair"), said
    heat = drive(explain(moved, tiny, task="idh", device="cpu", localise=False))
    assert offsets(heat) == said
    # T2 is not one of the model's sequences (t1, flair, t1ce)
    assert not offsets(drive(predict(shifted(case, "t2", 8.0), tiny, device="cpu")))
