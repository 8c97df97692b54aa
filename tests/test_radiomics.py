"""The segment-then-classify predictor (``predict_radiomics``): tumour features in physical
units, forests stored as tensors that reproduce scikit-learn, the Cox risk, and the model run
on packs, NIfTI cases, the CLI and inside the one-click analysis."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_radiogen.core.errors import ConfigError, RadiogenError
from napari_radiogen.core.progress import run as drive


def _forest(seed=0, n=80, f=7):
    from sklearn.ensemble import RandomForestClassifier
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, f))
    y = (X[:, 0] + 0.5 * X[:, 3] + rng.normal(size=n) > 0).astype(int)
    return RandomForestClassifier(60, min_samples_leaf=3, random_state=seed).fit(X, y), rng


def test_tree_ensemble_reproduces_sklearn_and_survives_a_model_file(tmp_path):
    from napari_radiogen.core.models import load_model, new_card, save_model
    from src_models.forest import TreeEnsemble, radiomics_forests
    rf, rng = _forest()
    te = TreeEnsemble(**TreeEnsemble.shape_of(rf)).load_sklearn(rf)
    X = rng.normal(size=(300, 7)) * 2
    np.testing.assert_allclose(te(torch.from_numpy(X)).numpy(), rf.predict_proba(X), atol=1e-6)
    # through a safetensors model file (no pickle) and the card's builder
    kw = {"n_features": 7, "tasks": {"idh": TreeEnsemble.shape_of(rf)}, "age_index": 0}
    m = radiomics_forests(**kw)
    m.forests["idh"].load_sklearn(rf)
    save_model(tmp_path / "rf.safetensors", m.state_dict(),
               new_card("rf", "prediction", {"builder": "src_models.forest:radiomics_forests",
                                             "kwargs": kw}))
    lm = load_model(str(tmp_path / "rf.safetensors"), task="prediction")
    out = lm.module(torch.from_numpy(X))
    np.testing.assert_allclose(out["probs"]["idh"][0].numpy(), rf.predict_proba(X), atol=1e-6)
    assert out["tree_probs"]["idh"].shape == (60, 300, 2)
    assert "risk" not in out                     # no Cox model was set


def test_fit_radiomics_imputes_training_medians_and_risk_follows_age():
    from napari_radiogen.core.train.tasks.prediction import RADIOMICS_CFG, fit_radiomics
    rng = np.random.default_rng(1)
    n, f = 90, 6
    X = rng.normal(size=(n, f))
    age = rng.uniform(25, 75, n)
    X[:, 0] = age                                 # feature 0 plays "age" for the risk below
    Y = np.stack([(X[:, 1] + rng.normal(scale=0.5, size=n) > 0),
                  (X[:, 2] > 0.5), (X[:, 3] > 0)], 1).astype(np.int64)
    Y[:5, 2] = -1                                 # missing labels are left out of that task
    T = np.exp(5 - 0.04 * (age - 50) + rng.normal(scale=0.3, size=n)) * 30   # older: shorter
    os_ = np.stack([T, (rng.random(n) < 0.7).astype(float)], 1)
    Xn = X.copy()
    Xn[::7, 4] = np.nan
    cfg = dict(RADIOMICS_CFG, n_estimators=50)
    import src_models.forest as F
    module, info = fit_radiomics(Xn, Y, age, os_, cfg, seed=0)
    module.age_index = 0
    assert set(info["oob_auc"]) == {"idh", "codel_1p19q", "grade"}
    assert info["oob_auc"]["idh"] > 0.7          # feature 1 drives IDH here
    med = np.nanmedian(Xn[:, 4])
    probe = X[:3].copy()
    filled = probe.copy()
    probe[:, 4] = np.nan
    filled[:, 4] = med
    with torch.no_grad():
        a, b = module(torch.from_numpy(probe)), module(torch.from_numpy(filled))
    for t in ("idh", "codel_1p19q", "grade"):
        np.testing.assert_allclose(a["probs"][t].numpy(), b["probs"][t].numpy())
    assert info["cox"]["beta"][0] > 0            # hazard rises with age
    young, old = X[:1].copy(), X[:1].copy()
    young[0, 0], old[0, 0] = 30.0, 70.0
    with torch.no_grad():
        r = module(torch.from_numpy(np.concatenate([young, old])))["risk"].numpy()
    assert r[1] > r[0]
    assert isinstance(module, F.RadiomicsForests)


def test_image_features_are_in_physical_units():
    from napari_radiogen.core.radiomics import IMAGE_FEATURES, image_features
    n, h, w = 20, 64, 64
    head = np.zeros((n, h, w), np.float32)
    head[:, 8:56, 8:56] = 100.0
    mask = np.zeros((n, h, w), np.uint8)
    mask[5:15, 20:40, 24:44] = 1
    flair = head.copy()
    flair[mask > 0] = 200.0                     # twice the head median
    f = image_features({"flair": flair, "t1": head}, mask, (2.0, 2.0, 5.0))
    assert list(f) == IMAGE_FEATURES
    assert f["volume_ml"] == pytest.approx(10 * 20 * 20 * 2 * 2 * 5 / 1000)
    assert f["extent_z_mm"] == pytest.approx(50.0)
    assert f["flair_mean"] == pytest.approx(2.0, rel=1e-3)
    assert f["t1_mean"] == pytest.approx(1.0, rel=1e-3)
    assert f["ratio_flair_t1"] == pytest.approx(2.0, rel=1e-3)
    assert np.isnan(f["t1ce_mean"]) and np.isnan(f["ratio_t1ce_t1"])    # not given: missing
    # the same object sampled twice as finely in-plane: same size, same shape measures
    up = lambda a: np.repeat(np.repeat(a, 2, 1), 2, 2)                   # noqa: E731
    g = image_features({"flair": up(flair), "t1": up(head)}, up(mask), (1.0, 1.0, 5.0))
    for k in ("volume_ml", "extent_z_mm", "max_area_cm2", "flair_mean", "bbox_fill",
              "elongation", "centroid_z_rel"):
        assert g[k] == pytest.approx(f[k], rel=1e-3), k
    assert g["surface_per_mm"] == pytest.approx(f["surface_per_mm"], rel=0.15)
    empty = image_features({"flair": flair}, np.zeros_like(mask), (2.0, 2.0, 5.0))
    assert empty["volume_ml"] == 0 and np.isnan(empty["flair_mean"])
    with pytest.raises(RadiogenError, match="3D mask"):
        image_features({"flair": flair[0]}, mask[0], (2.0, 2.0, 5.0))
    with pytest.raises(RadiogenError, match="not one grid"):
        image_features({"flair": flair[:, :32]}, mask, (2.0, 2.0, 5.0))


@pytest.fixture(scope="module")
def radiomics_model():
    from napari_radiogen.core.models import load_model
    return load_model("predict_radiomics", task="prediction")


def test_shipped_card_beats_the_baselines_on_the_same_folds(radiomics_model):
    card = radiomics_model.card
    m = card["metrics"]
    for t in ("idh", "codel_1p19q", "grade"):
        assert m[t]["auc_mean"] > m["compared_with"]["age_sex"][t], t
        assert m[t]["auc_mean"] > m["compared_with"]["mil"][t], t
    assert m["survival"]["c_index_mean"] > m["compared_with"]["age_sex"]["c_index"]
    assert card["input"]["features"] == __import__(
        "napari_radiogen.core.radiomics", fromlist=["FEATURES"]).FEATURES
    assert "out-of-fold" in card["training_data"]["masks"]


def test_predict_radiomics_on_a_pack_segments_it_first(radiomics_model):
    from napari_radiogen.core.phantom import make_pack_phantom
    from napari_radiogen.core.predict import predict
    case = make_pack_phantom(seed=3, n_slices=16)
    res = drive(predict(case, radiomics_model, device="cpu"))
    assert set(res.tasks) == {"idh", "codel_1p19q", "grade"}
    for probs in res.tasks.values():
        assert abs(sum(probs.values()) - 1) < 1e-5
    assert res.attention == {} and res.risk is not None
    assert "seg_lgg_segresnet2d" in res.features_source
    js = res.to_json()
    assert js["features"]["volume_ml"] is not None and "tree" in js["uncertainty"]["idh"]["method"]
    # a supplied segmentation is used as is; an empty one says the prediction means nothing
    empty = drive(predict(case, radiomics_model, device="cpu",
                          segmentation=np.zeros(case.geometry.shape, np.uint8)))
    assert empty.features["volume_ml"] == 0
    assert any("no tumour" in w for w in empty.warnings)
    with pytest.raises(ConfigError, match="not one grid"):
        drive(predict(case, radiomics_model, segmentation=np.zeros((3, 4, 5), np.uint8)))


def test_explain_radiomics_is_an_occlusion_map_inside_its_mask(radiomics_model):
    """The radiomics model has no image network: its explanation is occlusion (the default for
    it, the only method), zero outside the mask its features come from, in [0, 1] on the case
    grid; the networks' methods are refused for it and occlusion for the networks."""
    from napari_radiogen.core.explain import explain
    from napari_radiogen.core.phantom import make_pack_phantom
    case = make_pack_phantom(seed=1, n_slices=12)
    seg = (case.labels.array > 0).astype(np.uint8)
    res = drive(explain(case, radiomics_model, task="idh", segmentation=seg))
    assert res.method == "occlusion" and res.target_class == "mutant"
    h = res.heatmap
    assert h.shape == seg.shape and h.dtype == np.float32
    assert h.min() >= 0 and h.max() <= 1
    assert h[seg == 0].sum() == 0
    assert res.details["blocks"] >= 2 and res.details["mask"] == "segmentation supplied"
    assert res.synthetic_inputs == [] and res.metadata["synthetic_inputs"] == []
    if h.max() > 0:
        assert res.localisation == pytest.approx(1.0)       # the phantom's own mask
    else:
        assert any("unchanged" in w for w in res.warnings)
    empty = drive(explain(case, radiomics_model, task="grade",
                          segmentation=np.zeros_like(seg)))
    assert empty.heatmap.max() == 0 and any("no tumour" in w for w in empty.warnings)
    with pytest.raises(ConfigError, match="no image network"):
        drive(explain(case, radiomics_model, task="idh", method="gradcam"))
    with pytest.raises(ConfigError, match="not one grid"):
        drive(explain(case, radiomics_model, segmentation=np.zeros((3, 4, 5), np.uint8)))


def test_occlusion_blocks_tile_the_mask_within_the_budget():
    from napari_radiogen.core.radiomics import occlusion_blocks
    m = np.zeros((20, 64, 64), bool)
    m[2:18, 10:50, 10:50] = True
    ids, n, edge = occlusion_blocks(m, (1.0, 1.0, 5.0), block_mm=10.0, max_blocks=1000)
    assert ((ids > 0) == m).all() and set(np.unique(ids[m])) == set(range(1, n + 1))
    assert edge == 10.0 and n == 8 * 4 * 4          # 16 slices of 5 mm, 40 x 40 mm in-plane
    ids2, n2, edge2 = occlusion_blocks(m, (1.0, 1.0, 5.0), block_mm=10.0, max_blocks=40)
    assert n2 <= 40 and edge2 > 10.0 and ((ids2 > 0) == m).all()


def test_occlusion_finds_the_block_that_carries_the_evidence():
    """A probability driven by the tumour's mean FLAIR: removing the bright corner of the
    tumour changes it most, so the map peaks there."""
    from napari_radiogen.core.progress import Progress
    from napari_radiogen.core.radiomics import FEATURES, occlusion_map
    head = np.zeros((16, 64, 64), np.float32)
    head[:, 4:60, 4:60] = 100.0
    m = np.zeros(head.shape, bool)
    m[4:12, 16:48, 16:48] = True
    flair = head.copy()
    flair[m] = 150.0
    flair[8:12, 16:24, 16:24] = 600.0            # the evidence: one bright corner
    i = FEATURES.index("flair_mean")
    gen = occlusion_map({"flair": flair}, m, (2.0, 2.0, 5.0), {"age": 50.0, "sex_male": 1.0},
                        lambda x: 1 / (1 + np.exp(-(x[:, i] - 2.0))))
    seen = []
    try:
        while True:
            seen.append(next(gen))
    except StopIteration as stop:
        heat, info = stop.value
    assert seen and all(isinstance(p, Progress) for p in seen)
    assert heat[~m].sum() == 0
    zc, yc, xc = np.unravel_index(np.argmax(heat), heat.shape)
    assert 8 <= zc < 12 and 16 <= yc < 24 and 16 <= xc < 24
    assert info["max_change"] > 0 and info["blocks"] > 1


def test_cropped_features_match_the_whole_grid():
    """The mask's features run on its bounding box: the same numbers as a whole-grid
    computation (written out here), also for a tumour against the grid's edge."""
    from scipy import ndimage
    from napari_radiogen.core.radiomics import (RING_MM, FeatureContext, _inplane, head_mask,
                                                image_features)
    rng = np.random.default_rng(0)
    head = np.zeros((12, 48, 48), np.float32)
    head[:, 2:46, :] = 100.0 + rng.normal(0, 5, (12, 44, 48)).astype(np.float32)
    flair = head * (1 + rng.random(head.shape).astype(np.float32))
    sp = (1.5, 1.5, 5.0)
    for box in ((slice(3, 9), slice(10, 30), slice(12, 26)),     # inside
                (slice(0, 5), slice(30, 48), slice(0, 9))):      # against the edges
        m = np.zeros(head.shape, bool)
        m[box] = rng.random(m[box].shape) > 0.2
        f = image_features({"flair": flair}, m, sp)
        assert f == image_features({"flair": flair}, m, sp, FeatureContext({"flair": flair},
                                                                           m.shape))
        hm = head_mask(flair)
        it = max(1, int(round(RING_MM / 1.5)))
        ring = ndimage.binary_dilation(m, structure=_inplane(), iterations=it) & ~m & hm
        hmed = float(np.median(flair[hm]))
        ratio = (flair[m] / hmed).mean() / (flair[ring].mean() / hmed + 1e-6)
        edge = m & ~ndimage.binary_erosion(m, structure=_inplane())
        hz, hy, hx = np.nonzero(hm)
        z, y, x = np.nonzero(m)
        assert f["flair_ring_ratio"] == pytest.approx(ratio, rel=1e-6)
        assert f["surface_per_mm"] == pytest.approx(edge.sum() / m.sum() / 1.5, rel=1e-9)
        assert f["centroid_ap_mm"] == pytest.approx((y.mean() - hy.mean()) * 1.5, rel=1e-9)
        assert f["centroid_z_rel"] == pytest.approx((z.mean() - hz.min())
                                                    / (hz.max() - hz.min()), rel=1e-9)
        assert f["n_components"] == ndimage.label(m)[1]
        assert f["flair_bright_fraction"] == pytest.approx(
            (flair[m] > np.percentile(flair[hm], 95)).mean(), rel=1e-9)


def test_occlusion_map_lists_the_synthetic_inputs_of_its_mask(radiomics_model):
    """The occlusion map rests on the tumour mask its features come from: a mask made from a
    synthetic T2 (say, by a 3D model on a case whose T2 was synthesised) is listed, as its
    prediction lists it, and said once; a synthetic input the model reads itself too."""
    from napari_radiogen.core.explain import explain
    from napari_radiogen.core.notes import SYNTHETIC_SEGMENTATION, SYNTHETIC_USED, warning_key
    from napari_radiogen.core.phantom import make_pack_phantom
    from napari_radiogen.core.predict import predict
    case = make_pack_phantom(seed=1, n_slices=12)
    seg = (case.labels.array > 0).astype(np.uint8)
    res = drive(explain(case, radiomics_model, task="idh", segmentation=seg,
                        segmentation_synthetic=["t2"]))
    assert res.synthetic_inputs == ["t2"] and res.metadata["synthetic_inputs"] == ["t2"]
    said = [w for w in res.warnings if warning_key(w) == SYNTHETIC_SEGMENTATION]
    assert said == ["synthetic input(s) used: t2, through the tumour segmentation supplied by "
                    "the caller"], res.warnings
    pred = drive(predict(case, radiomics_model, device="cpu", segmentation=seg,
                         segmentation_synthetic=["t2"]))
    assert pred.synthetic_inputs == res.synthetic_inputs
    case.sequences["t1ce"].synthetic = True
    res = drive(explain(case, radiomics_model, task="idh", segmentation=seg,
                        segmentation_synthetic=["t1ce", "t2"]))
    assert res.synthetic_inputs == ["t1ce", "t2"]
    assert [w for w in res.warnings if warning_key(w) == SYNTHETIC_USED] == [
        "synthetic input(s) used: t1ce"]
    assert [w for w in res.warnings if warning_key(w) == SYNTHETIC_SEGMENTATION] == [
        "synthetic input(s) used: t2, through the tumour segmentation supplied by the caller"]


@pytest.mark.slow
def test_analysis_feeds_its_segmentation_to_the_prediction_and_the_occlusion_map(tmp_path):
    from napari_radiogen.core.pipeline import AnalysisOptions, Analyzer
    from napari_radiogen.core.sample import sample_case_path
    an = Analyzer(AnalysisOptions(pred_model="predict_radiomics", device="cpu",
                                  stages=("load", "segment", "predict", "explain")))
    res = drive(an.analyze(sample_case_path()))
    assert res.errors == {}
    assert res.models["prediction"] == "predict_radiomics"
    seg_name = res.models["segmentation"]
    assert res.prediction.features_source == f"segmentation of this analysis ({seg_name})"
    wt_ml = float((res.segmentation.labels > 0).sum() * res.segmentation.geometry.voxel_volume_ml)
    assert res.prediction.features["volume_ml"] == pytest.approx(wt_ml, rel=1e-4)
    assert len(res.explanations) == 1
    ex = res.explanations[0]
    assert ex.model == "predict_radiomics" and ex.method == "occlusion"   # not Grad-CAM
    assert ex.details["mask"] == "segmentation supplied"
    assert ex.heatmap[res.segmentation.labels == 0].sum() == 0           # the analysis's mask
    assert any("no gradcam heatmap: explained by occlusion" in w for w in res.warnings)


def test_cli_explain_with_the_radiomics_model(tmp_path):
    from napari_radiogen.cli import main
    from napari_radiogen.core.phantom import make_pack_phantom
    from predict_helpers import write_pack
    pack = write_pack(tmp_path / "PH_0005.h5", make_pack_phantom(seed=5, n_slices=12))
    assert main(["explain", str(pack), "--out", str(tmp_path / "o"),
                 "--model", "predict_radiomics", "--task", "codel_1p19q"]) == 0
    js = json.loads((tmp_path / "o" / "PH_0005_codel_1p19q_occlusion.json").read_text())
    assert js["method"] == "occlusion" and js["model"] == "predict_radiomics"
    assert js["details"]["mask"].startswith("segmented by seg_lgg_segresnet2d")
    assert js["synthetic_inputs"] == []
    assert (tmp_path / "o" / "PH_0005_codel_1p19q_occlusion.h5").exists()
    assert main(["explain", str(pack), "--out", str(tmp_path / "o"), "--model",
                 "predict_radiomics", "--method", "attention"]) != 0


def test_cli_predict_with_the_radiomics_model(tmp_path):
    from napari_radiogen.cli import main
    from napari_radiogen.core.phantom import make_pack_phantom
    from predict_helpers import write_pack
    pack = write_pack(tmp_path / "PH_0007.h5", make_pack_phantom(seed=7, n_slices=14))
    assert main(["predict", str(pack), "--out", str(tmp_path / "o"),
                 "--model", "predict_radiomics", "--age", "61", "--sex", "F"]) == 0
    js = json.loads((tmp_path / "o" / "PH_0007_predictions.json").read_text())
    assert js["model"] == "predict_radiomics"
    assert set(js["tasks"]["idh"]) == {"mutant", "wildtype"}
    assert js["card"]["validated"]["idh"]["auc_mean"] > 0.8
    assert "features" in js and js["attention"] == {}
    # de-identified by default, as radiogen analyze writes its predictions.json: the age and
    # sex the model read are not in the file, which says so
    assert "age" not in js["features"] and "sex_male" not in js["features"]
    assert js["deidentified"] is True
    assert js["removed_fields"] == ["features.age", "features.sex_male"]
    assert "volume_ml" in js["features"]
    # --identified: kept, and the rest of the file unchanged
    assert main(["predict", str(pack), "--out", str(tmp_path / "i"),
                 "--model", "predict_radiomics", "--age", "61", "--sex", "F",
                 "--identified"]) == 0
    ji = json.loads((tmp_path / "i" / "PH_0007_predictions.json").read_text())
    assert ji["features"]["age"] == 61.0 and ji["features"]["sex_male"] == 0.0
    assert ji["deidentified"] is False and "removed_fields" not in ji
    assert ji["tasks"] == js["tasks"]
    assert {k: v for k, v in ji["features"].items() if k not in ("age", "sex_male")} \
        == js["features"]
    assert set(ji) - {"seconds"} == set(js) - {"removed_fields", "deidentification", "seconds"}


@pytest.mark.shared
def test_shipped_radiomics_on_a_real_pack(shared_data):
    from napari_radiogen.core.io.pack import load_pack
    from napari_radiogen.core.predict import predict
    case = load_pack(shared_data / "tcga-lgg" / "TCGA_CS_4941.h5")
    res = drive(predict(case, "predict_radiomics", device="cpu"))
    truth_ml = float((case.labels.array > 0).sum() * case.geometry.voxel_volume_ml)
    # the shipped 2D model segments this pack with Dice ~0.86 (its card's sample_pack)
    assert res.features["volume_ml"] == pytest.approx(truth_ml, rel=0.3)
    assert res.features["age"] == pytest.approx(float(case.clinical["age_at_initial_pathologic"]))
    assert not any("unknown" in w for w in res.warnings)
