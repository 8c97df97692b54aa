"""Prediction: core predict on packs and NIfTI case folders, missing sequences, CLI (single
and batch), the networks' masking and freezing, and the shipped models on real data."""
from __future__ import annotations

import csv
import json
import time
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


def test_four_sequence_model_uses_t2(tmp_path):
    """A model trained with T2 (4 encoders) takes it; the 3-sequence models ignore it."""
    from napari_radiogen.core.models import load_model
    from napari_radiogen.core.phantom import make_phantom
    from napari_radiogen.core.predict import predict
    make_tiny_model("predict_tiny4_test", sequences=("t1", "t1ce", "t2", "flair"))
    lm = load_model("predict_tiny4_test", task="prediction")
    ph = make_phantom(seed=5, shape=(30, 56, 56), skull_stripped=True)
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


@pytest.mark.parametrize("name", ["predict_mil", "predict_cnn3d"])
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
    t0 = time.process_time()      # CPU time: wall time on a shared CI box is meaningless
    res = drive(predict(case, lm, device="cpu"))
    assert time.process_time() - t0 < 5.0
    assert len(res.attention["flair"]) == case.sequences["flair"].array.shape[0]
    assert not any("age unknown" in w for w in res.warnings)   # clinical.csv beside the pack
    brats = sorted((shared_data / "brats2021").glob("BraTS2021_*"))[0]
    case = load_case(brats)
    t0 = time.process_time()      # CPU time: wall time on a shared CI box is meaningless
    res = drive(predict(case, lm, device="cpu"))
    assert time.process_time() - t0 < 5.0
    assert any("t2 ignored" in w for w in res.warnings)
    assert 0 <= res.tasks["idh"]["mutant"] <= 1
