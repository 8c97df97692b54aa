"""The tumour-centred slice model (``input.kind == "mil_roi"``): its window, its use of the
case's segmentation in prediction and explanation, and its training loader."""
from __future__ import annotations

import numpy as np
import pytest

from napari_radiogen.core.errors import ConfigError, RadiogenError
from napari_radiogen.core.progress import run as drive

from predict_helpers import make_tiny_model, write_pack

ROI = "predict_tiny_roi_test"


@pytest.fixture(scope="module")
def roi_model():
    make_tiny_model(ROI, kind="mil_roi")
    from napari_radiogen.core.models import load_model
    return load_model(ROI, task="prediction")


def _pack(seed=0, n=14):
    from napari_radiogen.core.phantom import make_pack_phantom
    return make_pack_phantom(seed=seed, n_slices=n)


def test_window_is_centred_on_the_tumour_and_spans_its_slices():
    from napari_radiogen.core.predict import ROI_SIZE, roi_case_to_input
    case = _pack()
    wt = case.labels.array > 0
    inp = roi_case_to_input(case, ["t1", "flair", "t1ce"], wt)
    zs = np.where(wt.any((1, 2)))[0]
    # the tumour's slices and one either side (packs: 5 mm slices, every slice kept)
    assert list(inp.slice_index) == list(range(max(0, zs.min() - 1),
                                               min(wt.shape[0], zs.max() + 2)))
    assert inp.x.shape == (3, len(inp.slice_index), ROI_SIZE, ROI_SIZE)
    assert inp.seq_mask.all() and np.isfinite(inp.x).all()
    # packs are cropped, not resampled: the window's tumour is the mask's tumour, centred
    assert inp.inplane[2:] == (1.0, 1.0)
    t = inp.tumour
    assert abs(t.sum() - wt[inp.slice_index].sum()) < 1e-3
    yy, xx = np.nonzero(t.sum(0))
    assert abs((yy.min() + yy.max()) / 2 - (ROI_SIZE - 1) / 2) <= 1
    assert abs((xx.min() + xx.max()) / 2 - (ROI_SIZE - 1) / 2) <= 1
    # the window's images are the case's pixels (z-scored over the whole volume)
    cy, cx = inp.inplane[:2]
    y0, x0 = int(cy - (ROI_SIZE - 1) / 2), int(cx - (ROI_SIZE - 1) / 2)
    k = inp.slice_index[len(inp.slice_index) // 2]
    raw = case.sequences["flair"].array[k, max(y0, 0):y0 + ROI_SIZE, max(x0, 0):x0 + ROI_SIZE]
    win = inp.x[1, len(inp.slice_index) // 2][max(-y0, 0):, max(-x0, 0):][:raw.shape[0], :raw.shape[1]]
    assert np.corrcoef(raw.ravel(), win.ravel())[0, 1] > 0.999


def test_window_resamples_a_volume_to_the_window_spacing():
    from napari_radiogen.core.phantom import make_phantom
    from napari_radiogen.core.predict import ROI_SPACING_MM, roi_case_to_input
    case = make_phantom(seed=1, spacing=(1.0, 1.0, 1.0))
    wt = case.labels.array > 0
    inp = roi_case_to_input(case, ["t1", "flair", "t1ce"], wt)
    assert inp.inplane[2] == pytest.approx(1.0 / ROI_SPACING_MM)
    # 1 mm slices are sampled about every 4 mm over the tumour (+ one slice either side)
    assert np.all(np.diff(inp.slice_index) == 4)
    zs = np.where(wt.any((1, 2)))[0]
    assert inp.slice_index.min() >= zs.min() - 1 and inp.slice_index.max() <= zs.max() + 1
    # the tumour's in-plane area is preserved by the resampling (mm^2)
    k = int(np.argmax(wt[inp.slice_index].sum((1, 2))))
    area_case = wt[inp.slice_index[k]].sum() * 1.0
    area_win = inp.tumour[k].sum() * ROI_SPACING_MM ** 2
    assert area_win == pytest.approx(area_case, rel=0.15)


def test_no_tumour_and_a_foreign_grid_are_clear_errors():
    from napari_radiogen.core.predict import roi_case_to_input
    case = _pack()
    with pytest.raises(RadiogenError, match="no tumour"):
        roi_case_to_input(case, ["t1", "flair", "t1ce"], np.zeros(case.labels.array.shape, bool))
    with pytest.raises(ConfigError, match="not one grid"):
        roi_case_to_input(case, ["t1", "flair", "t1ce"], np.ones((3, 4, 5), bool))


def test_prediction_uses_the_given_segmentation_and_says_so(roi_model):
    from napari_radiogen.core.predict import predict
    case = _pack()
    wt = case.labels.array > 0
    res = drive(predict(case, roi_model, device="cpu", segmentation=case.labels.array,
                        segmentation_source="from the test"))
    assert res.features_source == "segmentation from the test"
    assert res.to_json()["features_source"] == "segmentation from the test"
    zs = np.where(wt.any((1, 2)))[0]
    assert res.slice_index[0] == zs.min() - 1 and res.slice_index[-1] == zs.max() + 1
    # attention over the window's slices only, zero elsewhere
    w = np.asarray(res.attention["flair"])
    assert len(w) == wt.shape[0] and abs(w.sum() - 1) < 1e-3
    assert (w[: zs.min() - 1] == 0).all()
    # a different tumour moves the window and changes the inputs the network saw
    moved = np.zeros_like(case.labels.array)
    moved[2:5, 10:30, 10:30] = 1
    res2 = drive(predict(case, roi_model, device="cpu", segmentation=moved))
    assert res2.slice_index == [1, 2, 3, 4, 5]
    assert not np.allclose(res.inputs.inplane[:2], res2.inputs.inplane[:2])
    with pytest.raises(RadiogenError, match="no tumour"):
        drive(predict(case, roi_model, device="cpu",
                      segmentation=np.zeros_like(case.labels.array)))


def test_prediction_without_a_segmentation_segments_the_case(roi_model):
    """No segmentation given: the 2D model the card names segments the pack first."""
    from napari_radiogen.core.predict import predict
    case = _pack(seed=2)
    items = list(predict(case, roi_model, device="cpu"))
    assert any(getattr(i, "message", "").startswith("segmenting (seg_lgg_segresnet2d)")
               for i in items)
    res = items[-1]
    assert res.features_source == "segmented by seg_lgg_segresnet2d"
    assert abs(sum(res.tasks["idh"].values()) - 1) < 1e-5


def test_explanation_lies_in_the_window_on_the_case_grid(roi_model):
    from napari_radiogen.core.explain import explain, slices_to_native
    from napari_radiogen.core.predict import roi_case_to_input
    case = _pack()
    res = drive(explain(case, roi_model, task="idh", method="gradcam",
                        segmentation=case.labels.array))
    assert res.heatmap.shape == case.labels.array.shape
    assert res.heatmap.min() >= 0 and res.heatmap.max() <= 1 and res.heatmap.max() > 0
    assert res.localisation is not None and res.mask_source == "ground truth"
    inp = roi_case_to_input(case, ["t1", "flair", "t1ce"], case.labels.array > 0)
    fov = slices_to_native(np.ones(inp.x.shape[1:], np.float32), inp, case.labels.array.shape)
    assert res.heatmap[fov <= 0].max() == 0          # nothing outside the model's window
    att = drive(explain(case, roi_model, task="grade", method="attention",
                        segmentation=case.labels.array))
    assert set(att.slice_weights) == {"t1", "flair", "t1ce"}


def test_explanation_without_ground_truth_localises_on_the_window_segmentation(roi_model):
    from napari_radiogen.core.explain import explain
    case = _pack()
    seg = case.labels.array.copy()
    case.labels = None
    # localise=False: no second segmentation for the score, the window's tumour is used
    res = drive(explain(case, roi_model, task="idh", segmentation=seg, localise=False))
    assert res.mask_source == "segmentation" and res.localisation is not None


@pytest.fixture(scope="module")
def roi_t1_flair():
    """A tumour-centred model on T1 and FLAIR only: a T1ce the 2D segmentation model reads
    reaches its heatmap through the window alone."""
    make_tiny_model("predict_tiny_roi_t1flair_test", kind="mil_roi", sequences=("t1", "flair"))
    from napari_radiogen.core.models import load_model
    return load_model("predict_tiny_roi_t1flair_test", task="prediction")


def _said(res, key):
    from napari_radiogen.core.notes import warning_key
    return [w for w in res.warnings if warning_key(w) == key]


def test_explanation_lists_the_synthetic_inputs_of_the_segmentation_its_window_is_on(
        roi_t1_flair):
    """As the prediction does: a heatmap placed on a segmentation made from a synthetic T1ce
    lists T1ce (result, JSON metadata, the heatmap layer's metadata) and says so once, in a
    note of its kind; one made without synthetic inputs lists none and says nothing."""
    from napari_radiogen.core.explain import explain
    from napari_radiogen.core.notes import SYNTHETIC_SEGMENTATION, SYNTHETIC_USED
    from napari_radiogen.core.predict import predict
    from napari_radiogen.napari.explain_widget import heatmap_layer_data
    case = _pack()
    seg = case.labels.array
    plain = drive(explain(case, roi_t1_flair, task="idh", segmentation=seg))
    assert plain.synthetic_inputs == [] and plain.metadata["synthetic_inputs"] == []
    assert not any("synthetic" in w for w in plain.warnings), plain.warnings

    res = drive(explain(case, roi_t1_flair, task="idh", segmentation=seg,
                        segmentation_source="from the test", segmentation_synthetic=["t1ce"]))
    assert res.synthetic_inputs == ["t1ce"]
    assert res.metadata["synthetic_inputs"] == ["t1ce"]
    said = _said(res, SYNTHETIC_SEGMENTATION)
    assert said == ["synthetic input(s) used: t1ce, through the tumour segmentation from the "
                    "test"], res.warnings
    assert _said(res, SYNTHETIC_USED) == []             # the model does not read T1ce itself
    assert sum("synthetic" in w for w in res.warnings) == 1
    assert res.details["window_source"] == "the tumour segmentation from the test"
    meta = heatmap_layer_data(res, case.case_id)[1]["metadata"]["radiogen"]
    assert meta["synthetic_inputs"] == ["t1ce"]
    # the prediction with the same segmentation lists the same, in the same words
    pred = drive(predict(case, roi_t1_flair, device="cpu", segmentation=seg,
                         segmentation_source="from the test", segmentation_synthetic=["t1ce"]))
    assert pred.synthetic_inputs == res.synthetic_inputs
    assert _said(pred, SYNTHETIC_SEGMENTATION) == said
    # the prediction's slice stack reused (as the analysis does): its window's segmentation
    reused = drive(explain(case, roi_t1_flair, task="idh", inputs=pred.inputs,
                           segmentation=seg, segmentation_synthetic=["t1ce"]))
    assert reused.synthetic_inputs == ["t1ce"] and len(_said(reused, SYNTHETIC_SEGMENTATION)) == 1


def test_explanation_that_segments_the_case_lists_the_synthetic_inputs_it_read(roi_t1_flair):
    """No segmentation given: the explanation segments the case as its prediction does, and
    the T1ce synthesised for that segmentation is listed (said once, by the segmentation)."""
    from napari_radiogen.core.explain import explain
    from napari_radiogen.core.predict import predict
    case = _pack(seed=2)
    assert drive(explain(case, roi_t1_flair, task="idh")).synthetic_inputs == []
    case.sequences["t1ce"].synthetic = True
    res = drive(explain(case, roi_t1_flair, task="idh"))
    assert res.details["window_source"] == "the tumour segmented by seg_lgg_segresnet2d"
    assert res.synthetic_inputs == ["t1ce"] and res.metadata["synthetic_inputs"] == ["t1ce"]
    said = [w for w in res.warnings if "synthetic input(s) used" in w]
    assert len(said) == 1 and said[0].startswith("segmentation (seg_lgg_segresnet2d): "
                                                  "synthetic input(s) used: t1ce"), res.warnings
    # prefixed by the segmentation's name, the note keeps its kind (an analysis that lists the
    # synthetic inputs itself leaves it out by kind)
    from napari_radiogen.core.notes import SYNTHETIC_SEGMENTATION
    assert _said(res, SYNTHETIC_SEGMENTATION) == said
    assert _said(drive(predict(case, roi_t1_flair, device="cpu")), SYNTHETIC_SEGMENTATION) == said
    assert drive(predict(case, roi_t1_flair, device="cpu")).synthetic_inputs == ["t1ce"]


def test_training_loader_windows_each_pack_on_its_expert_mask(tmp_path):
    from napari_radiogen.core.predict import ROI_SIZE
    from napari_radiogen.core.train.tasks import prediction as P
    case = _pack(seed=3, n=12)
    write_pack(tmp_path / "PH_0.h5", case)
    (tmp_path / "clinical.csv").write_text(
        "patient_id,idh,codel_1p19q,grade,age_at_initial_pathologic,gender,os_days,os_event,"
        "idh_codel_subtype\nPH_0,mutant,codel,2,40,1,300,0,x|2\n")
    p = P.load_cohort(str(tmp_path), roi=True)[0]
    q = P.load_cohort(str(tmp_path), roi=True, roi_jitter=4)[0]
    wt = case.labels.array > 0
    zs = np.where(wt.any((1, 2)))[0]
    assert p["x"].shape[1] == zs.max() - zs.min() + 3
    assert p["x"].shape[-2:] == (ROI_SIZE, ROI_SIZE) and q["x"].shape[-1] == ROI_SIZE + 8
    # the wider stored window has the same centre: its centre crop is the plain window
    assert np.allclose(P.centre_crop(q["x"], ROI_SIZE), p["x"], atol=1e-5)
    assert np.allclose(p["tarea"], p["tmask"].astype(np.float32).reshape(len(p["tarea"]), -1).mean(1),
                       atol=1e-3)
    assert (p["tarea"][1:-1] > 0).all()              # the tumour's slices all hold tumour


@pytest.mark.shared
@pytest.mark.parametrize("name", ["predict_mil_roi", "predict_cnn3d_roi"])
def test_shipped_roi_model_on_a_real_pack(name, shared_data):
    from napari_radiogen.core.io import load_case
    from napari_radiogen.core.models import list_models, load_model
    from napari_radiogen.core.predict import predict
    if name not in {m["name"] for m in list_models("prediction")}:
        pytest.skip(f"{name} is not installed")
    lm = load_model(name, task="prediction", device="cpu")
    case = load_case(shared_data / "tcga-lgg" / "TCGA_CS_4941.h5")
    res = drive(predict(case, lm, device="cpu"))
    assert res.features_source == "segmented by seg_lgg_segresnet2d"
    wt = case.labels.array > 0
    zs = np.where(wt.any((1, 2)))[0]
    # the window found from the model's own segmentation covers the expert tumour's slices
    assert min(res.slice_index) <= zs.min() and max(res.slice_index) >= zs.max()
    assert 0 <= res.tasks["idh"]["mutant"] <= 1


def test_fit_window_scales_with_the_tumour():
    """``{"mode": "fit"}``: the window is the tumour's extent + margins, clipped, in 64 px."""
    from napari_radiogen.core.errors import ConfigError as CE
    from napari_radiogen.core.predict import ROI_SIZE, roi_case_to_input, window_spacing
    fit = {"mode": "fit", "margin_mm": 15, "min_mm": 60, "max_mm": 180}
    assert window_spacing(None, 10, 10) == window_spacing({"mode": "fixed"}, 300, 300)
    assert window_spacing(fit, 50, 30) * ROI_SIZE == pytest.approx(80)
    assert window_spacing(fit, 10, 10) * ROI_SIZE == pytest.approx(60)
    assert window_spacing(fit, 400, 10) * ROI_SIZE == pytest.approx(180)
    with pytest.raises(CE, match="window mode"):
        window_spacing({"mode": "auto"}, 1, 1)
    case = _pack()
    wt = case.labels.array > 0
    fixed = roi_case_to_input(case, ["t1", "flair", "t1ce"], wt)
    fitted = roi_case_to_input(case, ["t1", "flair", "t1ce"], wt, fit)
    # this tumour is smaller than 120 mm - 2 margins: its window is finer, and the tumour
    # covers fy^2 times more window pixels
    fy = fitted.inplane[2]
    assert fy > 1.0 and fitted.inplane[3] == fy
    assert fitted.tumour.sum() == pytest.approx(fixed.tumour.sum() * fy ** 2, rel=0.1)


def test_stray_specks_do_not_move_the_window():
    """The window is placed on the largest connected part of the segmentation."""
    from napari_radiogen.core.predict import roi_case_to_input
    case = _pack()
    wt = case.labels.array > 0
    clean = roi_case_to_input(case, ["t1", "flair", "t1ce"], wt)
    specks = wt.copy()
    specks[0, 2:4, 2:4] = True                     # far corner, another slice
    specks[-1, 120:122, 120:122] = True
    noisy = roi_case_to_input(case, ["t1", "flair", "t1ce"], specks)
    assert noisy.inplane == clean.inplane
    assert list(noisy.slice_index) == list(clean.slice_index)


def test_a_tiny_segmented_tumour_is_warned_about(roi_model):
    from napari_radiogen.core.predict import predict
    case = _pack()
    tiny = np.zeros_like(case.labels.array)
    tiny[6, 60:63, 60:63] = 1                       # 9 px x 1.875^2 x 5 mm = 0.16 mL
    res = drive(predict(case, roi_model, device="cpu", segmentation=tiny))
    assert any("only 0.2 mL" in w and "false positive" in w for w in res.warnings)
    res = drive(predict(case, roi_model, device="cpu", segmentation=case.labels.array))
    assert not any("false positive" in w for w in res.warnings)


def test_without_the_segmentation_sequences_the_default_gives_way_and_a_named_model_says_why(
        roi_model):
    """A 3D case lacking T2 cannot be segmented by the BraTS models: the default tumour-centred
    model falls back to predict_mil with a warning; naming the model gives a clear error."""
    from napari_radiogen.core.errors import MissingSequenceError
    from napari_radiogen.core.phantom import make_phantom
    from napari_radiogen.core.predict import predict, window_or_fallback
    case = make_phantom(seed=3, sequences=("t1", "t1ce", "flair"), skull_stripped=True)
    lm, why = window_or_fallback(case, roi_model, explicit=False)
    assert lm.name == "predict_mil"
    assert "lacks t2" in why and "predicted with predict_mil" in why
    with pytest.raises(MissingSequenceError, match="centres its window on the tumour "
                                                   "segmentation.*lacks t2.*choose predict_mil"):
        drive(predict(case, roi_model, device="cpu"))
    # with a segmentation given there is nothing to segment: no fallback, no error
    same, none = window_or_fallback(case, roi_model, explicit=True, segmenting=False)
    assert same is roi_model and none is None


def test_run_returns_what_a_core_step_returns_with_its_progress_relayed(roi_model):
    """``core.progress.run`` drives a step such as ``tumour_labels`` (progress yielded, result
    returned) as well as a job (result yielded)."""
    from napari_radiogen.core.predict import tumour_labels
    case = _pack()
    seen, warns = [], []
    labels, source = drive(tumour_labels(case, roi_model.card, "cpu", None, None, "", warns),
                           on_progress=seen.append)
    assert source == "segmented by seg_lgg_segresnet2d"
    assert labels.shape == case.labels.array.shape and (labels > 0).any()
    assert seen and all("segmenting (seg_lgg_segresnet2d)" in p.message for p in seen)


# -- the tumour-centred 3D CNN (``input.kind == "volume3d_roi"``) --------------------------------
ROI3D = "predict_tiny_roi3d_test"


@pytest.fixture(scope="module")
def roi3d_model():
    make_tiny_model(ROI3D, kind="volume3d_roi")
    from napari_radiogen.core.models import load_model
    return load_model(ROI3D, task="prediction")


def test_3d_cnn_on_the_window_predicts_from_the_segmented_tumour(roi3d_model):
    from napari_radiogen.core.predict import predict, uses_segmentation
    assert uses_segmentation(roi3d_model.card)
    case = _pack()
    wt = case.labels.array > 0
    res = drive(predict(case, roi3d_model, device="cpu", segmentation=case.labels.array,
                        segmentation_source="from the test"))
    zs = np.where(wt.any((1, 2)))[0]
    assert res.slice_index[0] == zs.min() - 1 and res.slice_index[-1] == zs.max() + 1
    assert res.features_source == "segmentation from the test"
    assert res.attention == {}                      # a volume network has no slice attention
    for t in ("idh", "codel_1p19q", "grade"):
        assert abs(sum(res.tasks[t].values()) - 1) < 1e-5
    assert len(res.uncertainty["idh"]["members"]) == 2
    # the network sees the window: another tumour, other inputs, another answer
    moved = np.zeros_like(case.labels.array)
    moved[2:5, 10:30, 10:30] = 1
    res2 = drive(predict(case, roi3d_model, device="cpu", segmentation=moved))
    assert res2.slice_index == [1, 2, 3, 4, 5]
    assert res2.tasks["idh"] != res.tasks["idh"]
    with pytest.raises(RadiogenError, match="no tumour"):
        drive(predict(case, roi3d_model, device="cpu",
                      segmentation=np.zeros_like(case.labels.array)))


def test_3d_cnn_on_the_window_without_a_segmentation_segments_the_case(roi3d_model):
    from napari_radiogen.core.predict import predict
    items = list(predict(_pack(seed=2), roi3d_model, device="cpu"))
    assert items[-1].features_source == "segmented by seg_lgg_segresnet2d"


def test_3d_cnn_on_the_window_explained_inside_the_window_on_the_case_grid(roi3d_model):
    from napari_radiogen.core.explain import explain, slices_to_native
    from napari_radiogen.core.predict import roi_case_to_input
    case = _pack()
    res = drive(explain(case, roi3d_model, task="idh", method="gradcam",
                        segmentation=case.labels.array))
    assert res.heatmap.shape == case.labels.array.shape
    assert res.heatmap.min() >= 0 and res.heatmap.max() == pytest.approx(1.0)
    assert res.localisation is not None and res.mask_source == "ground truth"
    inp = roi_case_to_input(case, ["t1", "flair", "t1ce"], case.labels.array > 0)
    fov = slices_to_native(np.ones(inp.x.shape[1:], np.float32), inp, case.labels.array.shape)
    assert res.heatmap[fov <= 0].max() == 0          # nothing outside the model's window
    assert res.heatmap[fov > 0].max() > 0
    with pytest.raises(ConfigError, match="tumour-centred 3D CNN"):
        drive(explain(case, roi3d_model, task="idh", method="attention",
                      segmentation=case.labels.array))
