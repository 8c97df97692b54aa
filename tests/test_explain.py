"""Explanations: heatmaps on the case grid, in [0, 1], localisation, rendering, CLI."""
import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from napari_radiogen.core.explain import explain, localisation_score, slices_to_native
from napari_radiogen.core.models import load_model
from napari_radiogen.core.progress import run


def test_localisation_score_counts_mass_near_the_mask():
    wt = np.zeros((20, 20, 20), bool)
    wt[8:12, 8:12, 8:12] = True
    inside = np.zeros(wt.shape, np.float32)
    inside[9:11, 9:11, 9:11] = 1
    far = np.zeros(wt.shape, np.float32)
    far[0:2, 0:2, 0:2] = 1
    assert localisation_score(inside, wt, (1, 1, 1)) == pytest.approx(1.0)
    assert localisation_score(far, wt, (1, 1, 1)) == pytest.approx(0.0)
    # 3 voxels away at 1 mm is inside the 5 mm margin; at 3 mm spacing (9 mm) it is not
    near = np.zeros(wt.shape, np.float32)
    near[10, 10, 15] = 1
    assert localisation_score(near, wt, (1, 1, 1)) == pytest.approx(1.0)
    assert localisation_score(near, wt, (3, 3, 3)) == pytest.approx(0.0)
    assert localisation_score(np.zeros(wt.shape), wt, (1, 1, 1)) is None


def test_a_missing_localisation_says_why_in_the_json_and_the_dock():
    """An empty map (no positive evidence for the class in the layer) is not a missing mask."""
    from napari_radiogen.core.case import Geometry
    from napari_radiogen.core.explain import ExplainResult
    from napari_radiogen.napari.explain_widget import result_text
    g = Geometry(size=(8, 8, 4), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    empty = ExplainResult("c", "idh", "gradcam", "m", "mutant", np.zeros((4, 8, 8), np.float32),
                          g, localisation=None, mask_source="ground truth")
    assert empty.localisation_missing.startswith("the map is empty")
    assert empty.metadata["localisation_missing"] == empty.localisation_missing
    assert "n/a (the map is empty" in result_text(empty)
    no_mask = ExplainResult("c", "idh", "gradcam", "m", "mutant", np.ones((4, 8, 8), np.float32),
                            g)
    assert no_mask.localisation_missing == "no tumour mask"
    assert "n/a (no tumour mask)" in result_text(no_mask)
    scored = ExplainResult("c", "idh", "gradcam", "m", "mutant", np.ones((4, 8, 8), np.float32),
                           g, localisation=0.4, mask_source="ground truth")
    assert scored.localisation_missing is None
    assert "localisation_missing" not in scored.metadata


def test_explain_reuses_the_prediction_slice_stack(models, sample, monkeypatch):
    """Explaining right after predicting uses the slices the prediction made (the analysis
    does this) and gives the same heatmap as rebuilding them."""
    from napari_radiogen.core import predict as P
    lm = load_model(str(models["mil"]))
    pred = run(P.predict(sample, lm, device="cpu"))
    assert pred.inputs is not None and "inputs" not in pred.to_json()
    fresh = run(explain(sample, lm, task="idh", method="gradcam"))

    def no_rebuild(*a, **k):
        raise AssertionError("case_to_input called again")

    monkeypatch.setattr(P, "case_to_input", no_rebuild)
    reused = run(explain(sample, lm, task="idh", method="gradcam", inputs=pred.inputs))
    np.testing.assert_allclose(reused.heatmap, fresh.heatmap, atol=1e-6)


@pytest.mark.parametrize("method", ["gradcam", "layercam", "attention"])
def test_mil_heatmap_on_case_grid(models, sample, method):
    lm = load_model(str(models["mil"]))
    res = run(explain(sample, lm, task="idh", method=method))
    ref = sample.sequences[sample.reference]
    assert res.heatmap.shape == ref.array.shape
    assert res.geometry.same_grid(ref.geometry)
    assert res.heatmap.dtype == np.float32
    assert 0.0 <= res.heatmap.min() and res.heatmap.max() <= 1.0 and res.heatmap.max() > 0.5
    assert res.localisation is not None and 0.0 <= res.localisation <= 1.0
    assert res.mask_source == "ground truth"
    # (almost) nothing outside the head: background voxels carry <= 2% of the heatmap mass
    assert res.heatmap[ref.array == 0].sum() <= 0.02 * res.heatmap.sum()


def test_without_ground_truth_the_segmentation_localises_and_missing_inputs_are_said(
        models, sample):
    """No expert mask: the localisation is scored against the default segmentation model's
    whole tumour (and says so); a sequence the model runs without is named in the warnings;
    ``localise=False`` (the analysis, which passes its own segmentation) segments nothing."""
    import copy
    lm = load_model(str(models["mil"]))
    case = copy.copy(sample)
    case.labels = None
    res = run(explain(case, lm, task="idh", method="gradcam"))
    assert res.mask_source is not None and res.mask_source.startswith("segmentation (seg_")
    assert res.localisation is not None and 0.0 <= res.localisation <= 1.0
    assert not any("missing" in w for w in res.warnings)
    quiet = run(explain(case, lm, task="idh", method="gradcam", localise=False))
    assert quiet.localisation is None and quiet.mask_source is None

    no_t1 = copy.copy(case)
    no_t1.sequences = {k: v for k, v in case.sequences.items() if k != "t1"}
    res = run(explain(no_t1, lm, task="idh", method="gradcam"))
    assert any(w.startswith("t1 missing: masked") for w in res.warnings)
    # the 3D segmentation model needs all four sequences: no score, and the reason
    assert res.localisation is None
    assert any("could not be segmented" in w and "t1" in w for w in res.warnings)


def test_a_localisation_segmentation_from_a_synthetic_input_is_listed():
    """No expert mask: the segmentation the explanation makes for its localisation score reads
    a synthetic T1ce the model itself does not: the result lists it and says so once."""
    from napari_radiogen.core.notes import SYNTHETIC_SEGMENTATION, warning_key
    from napari_radiogen.core.phantom import make_pack_phantom
    from predict_helpers import make_tiny_model
    make_tiny_model("predict_tiny_t1flair_test", sequences=("t1", "flair"))
    lm = load_model("predict_tiny_t1flair_test", task="prediction")
    case = make_pack_phantom(seed=4, n_slices=10)
    case.labels = None
    res = run(explain(case, lm, task="idh", method="attention"))
    assert res.mask_source == "segmentation (seg_lgg_segresnet2d)"
    assert res.synthetic_inputs == [] and not any("synthetic" in w for w in res.warnings)
    case.sequences["t1ce"].synthetic = True
    res = run(explain(case, lm, task="idh", method="attention"))
    assert res.synthetic_inputs == ["t1ce"] and res.metadata["synthetic_inputs"] == ["t1ce"]
    said = [w for w in res.warnings if "synthetic" in w]
    assert len(said) == 1 and warning_key(said[0]) == SYNTHETIC_SEGMENTATION, res.warnings
    assert "t1ce" in said[0] and "localisation score" in said[0]
    # no localisation segmentation, nothing synthetic the heatmap rests on
    assert run(explain(case, lm, task="idh", method="attention",
                       localise=False)).synthetic_inputs == []


def test_cnn3d_gradcam_on_case_grid(models, sample):
    lm = load_model(str(models["cnn3d"]))
    res = run(explain(sample, lm, task="grade", method="gradcam++"))
    assert res.heatmap.shape == sample.geometry.shape
    assert 0.0 <= res.heatmap.min() and res.heatmap.max() <= 1.0


def test_pack_heatmap_stays_in_the_head(models):
    """On a 2D pack (mostly background around the head) the heatmap is restricted to the head,
    as on 3D cases: the localisation score is not diluted by background mass."""
    from napari_radiogen.core.phantom import make_pack_phantom
    from napari_radiogen.core.predict import foreground
    case = make_pack_phantom(seed=1, n_slices=10)
    for v in case.sequences.values():       # a dark border around the head, like a real pack
        v.array[:, :12] = 0
        v.array[:, :, :12] = 0
    res = run(explain(case, load_model(str(models["mil"])), task="idh", method="attention"))
    from scipy import ndimage
    head = np.zeros(res.heatmap.shape, bool)
    for v in case.sequences.values():
        head |= foreground(v.array)
    head = np.stack([ndimage.binary_fill_holes(h) for h in head])       # the head, holes filled
    assert res.heatmap.shape == case.sequences["flair"].array.shape
    assert res.heatmap[:, :12].sum() == 0 and res.heatmap[:, :, :12].sum() == 0
    assert res.heatmap[~head].sum() <= 0.02 * res.heatmap.sum()
    assert res.localisation is not None


def test_explain_rejects_bad_requests(models, sample):
    from napari_radiogen.core.errors import ConfigError, MissingSequenceError
    lm = load_model(str(models["mil"]))
    with pytest.raises(ConfigError):
        run(explain(sample, lm, task="mgmt"))
    with pytest.raises(ConfigError):
        run(explain(sample, lm, task="idh", target="maybe"))
    no_flair = sample.__class__(case_id="x", sequences={"t1": sample.sequences["t1"]})
    with pytest.raises(MissingSequenceError, match="flair"):
        run(explain(no_flair, lm, task="idh"))


def test_slices_to_native_inverts_the_pack_binning():
    class Inp:
        inplane = None
        slice_index = np.arange(4)
    stack = np.zeros((4, 64, 64), np.float32)
    stack[2, 10:20, 30:40] = 1
    out = slices_to_native(stack, Inp, (4, 128, 128))
    assert out.shape == (4, 128, 128)
    ys, xs = np.where(out[2] > 0.5)
    assert 18 <= ys.min() <= 22 and 38 <= ys.max() <= 41 and 58 <= xs.min() <= 62


def test_render_png_without_display(models, sample, tmp_path):
    from napari_radiogen.core.explain import render_explanation
    lm = load_model(str(models["mil"]))
    res = run(explain(sample, lm, task="idh", method="attention"))
    env_display = os.environ.pop("DISPLAY", None)
    try:
        out = render_explanation(sample, res, tmp_path / "r.png", tmp_path / "r.gif", n_frames=3)
    finally:
        if env_display is not None:
            os.environ["DISPLAY"] = env_display
    from PIL import Image
    img = np.asarray(Image.open(out["png"]).convert("RGB"))
    assert img.std() > 5, "blank rendering"
    assert Image.open(out["gif"]).n_frames == 3
    # no frames asked for: the PNG, and no GIF (it used to fail with an IndexError)
    out = render_explanation(sample, res, tmp_path / "r0.png", tmp_path / "r0.gif", n_frames=0)
    assert os.path.exists(out["png"]) and "gif" not in out
    assert not (tmp_path / "r0.gif").exists()


def test_rendering_marks_the_patient_sides(tmp_path):
    """The letters stand beside the faces they name (canonical LPS: L at high x, P at high y,
    S at high z), and the rendering draws them: from the default view (in front of the face,
    above) a tumour in the patient's left half is on the image's right, the side of L."""
    from PIL import Image

    from napari_radiogen.core.render import orientation_marks, render_3d
    marks = orientation_marks((40, 50, 60), (2.0, 1.0, 1.0))
    assert set(marks) == set("RLAPIS")
    for axis, (low, high) in enumerate((("R", "L"), ("A", "P"), ("I", "S"))):
        extent = (59.0, 49.0, 78.0)[axis]
        assert marks[low][axis] < 0 and marks[high][axis] > extent
        other = [a for a in range(3) if a != axis]
        assert np.allclose([marks[low][a] for a in other], [marks[high][a] for a in other])
    labels = np.zeros((40, 50, 60), np.uint8)
    labels[15:25, 20:30, 42:54] = 4                         # patient's left (high x)
    env_display = os.environ.pop("DISPLAY", None)
    try:
        out = render_3d(brain=None, labels=labels, spacing_zyx=(1.0, 1.0, 1.0),
                        out_png=tmp_path / "m.png", n_frames=0)
    finally:
        if env_display is not None:
            os.environ["DISPLAY"] = env_display
    img = np.asarray(Image.open(out["png"]).convert("RGB")).astype(int)
    tumour = (img[..., 0] > 150) & (img[..., 1] > 120) & (img[..., 2] < 90)
    white = (img.min(axis=-1) > 230)
    assert tumour.any() and white.sum() > 50, "no tumour or no letters drawn"
    half = img.shape[1] / 2
    assert np.nonzero(tumour)[1].mean() > half
    cols = np.nonzero(white)[1]
    assert (cols < half - 40).any() and (cols > half + 40).any()     # R and L, either side


def test_cli_explain_writes_aligned_heatmap(models, tmp_path):
    from napari_radiogen.core.sample import sample_case_path
    case = sample_case_path()
    r = subprocess.run([sys.executable, "-m", "napari_radiogen", "explain", str(case), "--task",
                        "idh", "--out", str(tmp_path), "--model", str(models["mil"]),
                        "--frames", "0"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    nii = list(tmp_path.glob("*_idh_gradcam.nii.gz"))
    assert len(nii) == 1
    flair = next(case.glob("*_flair.nii.gz"))
    a, b = nib.load(str(nii[0])), nib.load(str(flair))
    assert a.shape == b.shape
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-5)
    data = a.get_fdata()
    assert data.min() >= 0 and data.max() <= 1
    info = json.loads(next(tmp_path.glob("*_idh_gradcam.json")).read_text())
    assert 0 <= info["localisation"] <= 1 and (tmp_path / info["png"]).exists()
    assert str(tmp_path) not in json.dumps(info)          # sibling files by relative name
    assert info["synthetic_inputs"] == []


def test_cli_explain_bad_task_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "napari_radiogen", "explain", str(tmp_path),
                        "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0


def test_upsample_cam_is_cell_centred():
    """A strided feature map's cell k covers input pixels [k*s, (k+1)*s): the upsampled peak
    sits in the middle of that block (corner alignment would shift it by half a cell)."""
    from napari_radiogen.core.explain import upsample_cam
    cam = np.zeros((1, 4, 4), np.float32)
    cam[0, 1, 2] = 1.0
    up = upsample_cam(cam, (1, 64, 64))
    y, x = np.unravel_index(np.argmax(up[0]), (64, 64))
    assert 22 <= y <= 25 and 38 <= x <= 41          # block rows 16..31, cols 32..47
    legacy = upsample_cam(cam, (1, 64, 64), centred=False)
    y0, _ = np.unravel_index(np.argmax(legacy[0]), (64, 64))
    assert y0 != y                                  # the legacy zoom is shifted


def _blob_evidence_cams(case):
    """Fake per-slice CAM ingredients on a phantom pack: strong evidence on the tumour cells of
    the tumour slices, faint uniform evidence (plus noise) on every other slice."""
    lab = case.labels.array > 0                                      # (N, 128, 128)
    N = lab.shape[0]
    cells = lab.reshape(N, 16, 8, 16, 8).mean((2, 4)) > 0.25         # (N, 16, 16)
    rng = np.random.default_rng(0)

    def fake(module, x, seq_mask, clinical, sequences, task, cls_idx, method, layer, cancel,
             normalized=False):
        ev = 0.02 + 0.01 * rng.random((N, 16, 16)).astype(np.float32)
        ev[cells] = 1.0
        if normalized:                      # what torchcam's default does: per-slice min-max
            lo = ev.min((1, 2), keepdims=True)
            ev = (ev - lo) / (ev.max((1, 2), keepdims=True) - lo + 1e-8)
        return {s: ev.copy() for s in sequences}, np.full((len(sequences), N), 1.0 / N)
    return fake, cells


def test_heatmap_background_near_zero_and_evidence_localises(models, monkeypatch):
    """Slices without evidence stay (near) 0 and the between-slice weighting comes from the
    evidence and attention: the heatmap's background is near 0 and its mass is on the blob.
    The legacy fusion (per-slice min-max) lifts every slice to full strength: mass everywhere."""
    from napari_radiogen.core import explain as E
    from napari_radiogen.core.phantom import make_pack_phantom
    from napari_radiogen.core.predict import foreground
    from scipy import ndimage
    case = make_pack_phantom(seed=3, n_slices=12)
    fake, cells = _blob_evidence_cams(case)
    assert cells.any() and not cells.all(1).all(1).any()
    monkeypatch.setattr(E, "_mil_cams", fake)
    lm = load_model(str(models["mil"]))
    new = run(explain(case, lm, task="idh", method="gradcam"))
    old = run(explain(case, lm, task="idh", method="gradcam", fusion="legacy"))
    wt = case.labels.array > 0
    sp = (5.0, 1.875, 1.875)
    head = np.stack([ndimage.binary_fill_holes(foreground(a)) for a in case.sequences["flair"].array])
    away = head & (ndimage.distance_transform_edt(~wt, sampling=sp) > 10)
    assert np.median(new.heatmap[away]) < 0.05
    assert new.heatmap.max() == pytest.approx(1.0)
    free = ~wt.any((1, 2))                           # tumour-free slices: faint evidence only
    assert free.any()
    assert new.heatmap[free][head[free]].mean() < 0.05
    assert old.heatmap[free][head[free]].mean() > 0.15       # the floor the legacy maps had
    assert new.localisation > 0.6
    assert new.localisation > old.localisation + 0.2


def test_explain_rejects_unknown_fusion(models, sample):
    from napari_radiogen.core.errors import ConfigError
    with pytest.raises(ConfigError, match="fusion"):
        run(explain(sample, load_model(str(models["mil"])), task="idh", fusion="minmax"))


@pytest.mark.parametrize("kind", ["mil", "cnn3d"])
def test_an_explanation_carries_its_networks_probability_of_the_class(models, sample, kind):
    """A heatmap for a class is not a prediction of it: the result carries the explained
    network's probability of that class, the one its prediction gives, for the dock to say."""
    from napari_radiogen.core.predict import predict
    lm = load_model(str(models[kind]))
    pred = run(predict(sample, lm, device="cpu"))
    for target in ("codel", "non-codel"):
        res = run(explain(sample, lm, task="codel_1p19q", target=target, method="gradcam"))
        assert res.details["probability"] == pytest.approx(
            pred.tasks["codel_1p19q"][target], abs=1e-5)
        assert res.details["probability_model"] == lm.name
