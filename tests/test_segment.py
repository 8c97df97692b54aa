"""Segmentation: metrics, inference on phantoms (tiny random nets), error messages, CLI outputs,
and the shipped models on real data (sample case Dice vs the card; BraTS geometry)."""
import json
from pathlib import Path

import numpy as np
import pytest

from napari_radiogen.core import segment as seg
from napari_radiogen.core.errors import CaseLoadError, MissingSequenceError
from napari_radiogen.core.phantom import make_pack_phantom, make_phantom
from napari_radiogen.core.progress import CancelToken, run

from conftest import shared_path

ROOT = Path(__file__).resolve().parent.parent


# -- helpers ----------------------------------------------------------------------------------

def _save_tiny(name: str, dims: int, tmp_dir: Path):
    """A tiny random segmentation model in the user models folder."""
    from napari_radiogen.core.models import new_card, save_model, user_models_dir
    from napari_radiogen.core.models import build_from_card

    if dims == 3:
        arch = {"builder": "src_models.segmentation:segresnet_3d",
                "kwargs": {"in_channels": 4, "out_channels": 3, "init_filters": 8}}
        fields = dict(sequences=["t1", "t1ce", "t2", "flair"],
                      required_sequences=["t1", "t1ce", "t2", "flair"], dims=3, spacing_mm=3.0,
                      roi_size=[64, 80, 64], normalisation="zscore")
    else:
        arch = {"builder": "src_models.segmentation:segresnet_2d",
                "kwargs": {"in_channels": 6, "out_channels": 1, "init_filters": 8,
                           "input_downsample": 2}}
        fields = dict(sequences=["flair", "t1", "t1ce"], required_sequences=["flair"], dims=2)
    card = new_card(name, "segmentation", arch, **fields)
    net = build_from_card(card)
    d = user_models_dir()
    return save_model(d / f"{name}.safetensors", net.state_dict(), card)


@pytest.fixture(scope="module")
def tiny3d(tmp_path_factory):
    from napari_radiogen.core.models import load_model
    p = _save_tiny("tiny_seg3d_test", 3, tmp_path_factory.mktemp("m"))
    return load_model(str(p), task="segmentation")


@pytest.fixture(scope="module")
def tiny2d(tmp_path_factory):
    from napari_radiogen.core.models import load_model
    p = _save_tiny("tiny_seg2d_test", 2, tmp_path_factory.mktemp("m"))
    return load_model(str(p), task="segmentation")


# -- metrics and label algebra ------------------------------------------------------------------

def test_regions_roundtrip_and_nesting():
    lab = np.array([0, 1, 2, 4, 3], dtype=np.uint8)
    r = seg.labels_to_regions(lab)
    assert r.tolist() == [[False, True, True, True, True], [False, True, False, True, True],
                          [False, False, False, True, True]]
    back = seg.regions_to_labels(r)
    assert back.tolist() == [0, 1, 2, 4, 4]
    # ET outside TC/WT is dropped (nesting enforced)
    odd = np.array([[0], [0], [1]], dtype=bool)
    assert seg.regions_to_labels(odd).tolist() == [0]


def test_dice_and_hd95_known_values():
    a = np.zeros((10, 10, 10), bool)
    b = np.zeros_like(a)
    assert seg.dice(a, b) == 1.0 and seg.hd95(a, b) == 0.0
    a[2:6, 2:6, 2:6] = True
    assert seg.dice(a, b) == 0.0 and np.isnan(seg.hd95(a, b))
    b[2:6, 2:6, 3:7] = True          # shifted by one voxel along x
    assert seg.dice(a, b) == pytest.approx(2 * 48 / 128)
    assert seg.hd95(a, b, (1, 1, 2.0)) == pytest.approx(2.0)


def test_volumes_ml():
    from napari_radiogen.core.case import Geometry
    g = Geometry(size=(10, 10, 10), spacing=(2.0, 2.0, 2.0), origin=(0, 0, 0))
    lab = np.zeros((10, 10, 10), np.uint8)
    lab[0, 0, :5] = 1
    lab[1, 0, :3] = 2
    lab[2, 0, :2] = 4
    v = seg.region_volumes_ml(lab, g)
    assert v["WT"] == pytest.approx(10 * 0.008) and v["TC"] == pytest.approx(7 * 0.008)
    assert v["ET"] == pytest.approx(2 * 0.008) and v["label_2"] == pytest.approx(3 * 0.008)


def test_slices_input_missing_channel_is_zero_not_flair():
    fl = np.random.default_rng(0).integers(1, 255, (3, 16, 16)).astype(np.uint8)
    x = seg.slices_input({"flair": fl, "t1": None, "t1ce": fl})
    assert x.shape == (3, 6, 16, 16)
    assert np.all(x[:, 1] == 0) and np.all(x[:, 4] == 0)        # t1 missing: zeros, flag 0
    assert np.all(x[:, 3] == 1) and np.all(x[:, 5] == 1)
    assert abs(float(x[:, 0].mean())) < 1e-3


# -- inference on phantoms ----------------------------------------------------------------------

def test_segment_phantom_volume(tiny3d):
    case = make_phantom(1)
    items = list(seg.segment(case, tiny3d, device="cpu"))
    res = items[-1]
    assert isinstance(res, seg.SegResult)
    assert res.labels.shape == case.geometry.shape and res.labels.dtype == np.uint8
    assert set(np.unique(res.labels)) <= {0, 1, 2, 4}
    assert res.geometry.same_grid(case.geometry)
    assert set(res.volumes_ml) >= {"WT", "TC", "ET", "label_1", "label_2", "label_4"}
    assert res.metrics is not None and set(res.metrics) == {"WT", "TC", "ET"}
    assert res.timings["total"] > 0 and res.kind == "volume"
    assert any(isinstance(i, seg.Progress) for i in items)
    assert not any("nominal" in w for w in res.warnings)    # a recorded spacing


def test_a_result_names_the_weights_file_it_came_from(tiny3d, tmp_path):
    """Two files may carry one model name (a run's own model beside the shipped one): a
    segmentation's JSON and the volume table give the weights file's SHA-256."""
    import hashlib

    from napari_radiogen.cli_cmds.segment import csv_row
    from napari_radiogen.core.models import load_model
    case = make_phantom(1)
    res = list(seg.segment(case, tiny3d, device="cpu"))[-1]
    digest = hashlib.sha256(tiny3d.path.read_bytes()).hexdigest()
    assert res.summary()["model_sha256"] == digest
    assert csv_row(res)["model_sha256"] == digest
    # the same name from other weights: another digest
    from safetensors import safe_open
    from safetensors.torch import save_file
    with safe_open(str(tiny3d.path), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) * 1.01 for k in f.keys()}
    other = tmp_path / tiny3d.path.name
    save_file(tensors, str(other), metadata=meta)
    lm = load_model(str(other), task="segmentation")
    assert lm.name == tiny3d.name
    res2 = list(seg.segment(case, lm, device="cpu"))[-1]
    assert res2.summary()["model_sha256"] not in (None, digest)


def test_a_synthetic_t1ce_is_said_to_make_et_and_tc_unreliable(tiny3d):
    """ET and TC rest on contrast enhancement, which a synthesised T1ce does not reliably
    show: a 3D segmentation made with one says so (and not when another input is synthetic)."""
    case = make_phantom(1)
    case.sequences["t1ce"].synthetic = True
    res = run(seg.segment(case, tiny3d, device="cpu"))
    assert res.synthetic_inputs == ["t1ce"]
    said = [w for w in res.warnings if w.startswith("T1ce is synthetic")]
    assert len(said) == 1 and "(ET, label 4)" in said[0] and "not reliable" in said[0]
    other = make_phantom(1)
    other.sequences["t2"].synthetic = True
    assert not any(w.startswith("T1ce is synthetic")
                   for w in run(seg.segment(other, tiny3d, device="cpu")).warnings)


def test_a_case_among_the_training_patients_is_flagged_in_sample(tiny3d):
    """The model's card lists the case among the patients its weights were trained on: the
    Dice is in-sample and the result says so (once); another case is not flagged."""
    import dataclasses
    from napari_radiogen.core.notes import IN_SAMPLE, warning_key
    lm = dataclasses.replace(tiny3d, card={**tiny3d.card, "training_data": {
        "patients": ["PHANTOM_0001", "PHANTOM_0009"]}})
    res = run(seg.segment(make_phantom(1), lm, device="cpu"))
    said = [w for w in res.warnings if warning_key(w) == IN_SAMPLE]
    assert said == [f"PHANTOM_0001 was in {lm.name}'s training data: its Dice here is "
                    "in-sample, not a validation"]
    assert said[0] in res.summary()["warnings"]
    other = run(seg.segment(make_phantom(1, case_id="NEW_0001"), lm,
                            device="cpu", compare=False))
    assert not any(warning_key(w) == IN_SAMPLE for w in other.warnings)
    # not scored against labels: the segmentation itself is in-sample
    unscored = run(seg.segment(make_phantom(1), lm, device="cpu",
                               compare=False))
    assert [w for w in unscored.warnings if warning_key(w) == IN_SAMPLE] == [
        f"PHANTOM_0001 was in {lm.name}'s training data: this segmentation is in-sample, not a "
        "validation (expect it to be better than on a new case)"]


def test_undefined_hd95_is_null_in_the_summary():
    """HD95 with exactly one empty mask is undefined (nan in memory); the summary that JSON
    files are written from holds None (strict JSON null)."""
    from napari_radiogen.core.case import Geometry
    a = np.zeros((8, 8, 8), np.uint8)
    a[2:5, 2:5, 2:5] = 4
    b = a.copy()
    b[b == 4] = 1                                    # same core, no enhancing tumour
    m = seg.compare_to_truth(b, a)
    assert np.isnan(m["ET"]["hd95_mm"]) and m["ET"]["dice"] == 0.0
    g = Geometry(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
                 direction=tuple(np.eye(3).ravel()), size=(8, 8, 8))
    res = seg.SegResult(case_id="c", labels=b, geometry=g, volumes_ml={"WT": 0.027},
                        model="m", metrics=m)
    js = json.loads(json.dumps(res.summary(), allow_nan=False))
    assert js["metrics_vs_labels"]["ET"]["hd95_mm"] is None
    assert js["metrics_vs_labels"]["WT"]["hd95_mm"] == 0.0


def test_native_and_thick_slice_inputs_are_flagged_for_3d_models(tiny3d):
    """A 3D model (trained on skull-stripped 1 mm BraTS volumes) on a scan with scalp and skull,
    or with thick slices, says so; a skull-stripped 1.5 mm case gets no such warning."""
    def warnings(case):
        return run(seg.segment(case, tiny3d, device="cpu")).warnings
    stripped = warnings(make_phantom(1, skull_stripped=True))
    assert not any("skull-stripped" in w or "thick slices" in w for w in stripped)
    native = warnings(make_phantom(1))                        # scalp, skull, noisy background
    assert any("not skull-stripped" in w for w in native)
    # a caution, not merely a warning: said first and apart by the front ends
    from napari_radiogen.core.notes import cautions
    assert cautions(native) and "unreliable" in cautions(native)[0]
    assert cautions(stripped) == []
    assert not any("thick slices" in w for w in native)
    thick = warnings(make_phantom(1, shape=(16, 80, 72), spacing=(1.5, 1.5, 5.5),
                                  skull_stripped=True))
    assert any("5.5 mm (thick slices)" in w for w in thick)
    assert not any("skull-stripped" in w for w in thick)
    # a card may say its model was trained on non-stripped volumes
    assert seg.domain_warnings(make_phantom(1), {"dims": 3, "skull_stripped_input": False},
                               "otsu") == []


def test_a_partial_field_of_view_reaches_the_segmentation_warnings(tiny3d):
    """A sequence whose field of view leaves part of the head zero-filled (core.prepare says
    so) is said in the segmentation's warnings, once."""
    from napari_radiogen.core.case import Volume
    c = make_phantom(1)
    t2 = c.sequences["t2"]
    g = t2.geometry
    k, n = 13, 46                                              # the central 64% of x
    part = Volume(np.ascontiguousarray(t2.array[:, :, k:k + n]),
                  g.with_(size=(n, g.size[1], g.size[2]),
                          origin=(g.origin[0] + k * g.spacing[0], g.origin[1], g.origin[2])))
    res = run(seg.segment(c.with_sequence("t2", part), tiny3d, device="cpu"))
    said = [w for w in res.warnings if w.startswith("t2 covers")]
    assert len(said) == 1 and "zero-filled" in said[0], res.warnings
    assert not any(w.startswith("t2 covers")
                   for w in run(seg.segment(c, tiny3d, device="cpu")).warnings)


def test_segment_cancel(tiny3d):
    tok = CancelToken()
    tok.cancel()
    from napari_radiogen.core.errors import Cancelled
    with pytest.raises(Cancelled):
        run(seg.segment(make_phantom(2), tiny3d, device="cpu", cancel=tok))


def test_missing_sequence_names_it(tiny3d):
    case = make_phantom(3, sequences=("t1", "t2", "flair"))
    with pytest.raises(MissingSequenceError) as e:
        run(seg.segment(case, tiny3d, device="cpu"))
    msg = str(e.value)
    assert "t1ce" in msg and "needs t1, t1ce, t2, flair" in msg


def test_2d_and_wrong_kind_inputs_get_clear_messages(tiny3d, tiny2d):
    with pytest.raises(CaseLoadError, match="2D slice pack"):
        run(seg.segment(make_pack_phantom(0, n_slices=6), tiny3d, device="cpu"))
    thin = make_phantom(4, shape=(3, 64, 64))
    with pytest.raises(CaseLoadError, match="2D or too thin"):
        run(seg.segment(thin, tiny3d, device="cpu"))
    with pytest.raises(CaseLoadError, match="3D volume"):
        run(seg.segment(make_phantom(5), tiny2d, device="cpu"))


def test_segment_pack_phantom(tiny2d):
    case = make_pack_phantom(0, n_slices=6)
    res = run(seg.segment(case, tiny2d, device="cpu"))
    assert res.kind == "slices" and res.labels.shape == case.labels.array.shape
    assert set(np.unique(res.labels)) <= {0, 1}
    assert set(res.volumes_ml) == {"WT"}
    # the pack records no spacing: its volume is said to be on the nominal one
    assert any("nominal spacing 1.875 x 1.875 x 5 mm" in w and "approximate" in w
               for w in res.warnings)
    # FLAIR-only pack: runs, says so
    only = make_pack_phantom(1, n_slices=6)
    for s in ("t1", "t1ce"):
        only.sequences.pop(s)
    res2 = run(seg.segment(only, tiny2d, device="cpu"))
    assert any("t1" in w for w in res2.warnings)


# -- CLI ------------------------------------------------------------------------------------------

def _write_pack(path: Path, case) -> None:
    import h5py
    img = np.stack([case.sequences[s].array for s in ("t1", "flair", "t1ce")], 1)
    with h5py.File(path, "w") as f:
        f.create_dataset("image", data=img.astype(np.uint8))
        f.create_dataset("mask", data=case.labels.array.astype(np.uint8))
        f.attrs["channel_names"] = ["t1", "flair", "t1ce"]
        f.attrs["available"] = [True, True, True]


def test_cli_pack_and_batch_with_bad_case(tiny2d, tmp_path, capsys):
    import h5py
    from napari_radiogen.cli import main

    cohort = tmp_path / "cohort"
    cohort.mkdir()
    case = make_pack_phantom(0, n_slices=5)
    _write_pack(cohort / "P1.h5", case)
    # a bad case: a 3D volume, which the 2D slice model must refuse (batch goes on)
    from napari_radiogen.core.io import write_volume
    vol = make_phantom(0).sequences["flair"]
    (cohort / "P2").mkdir()
    write_volume(vol.array, vol.geometry, cohort / "P2" / "P2_flair.nii.gz")
    out = tmp_path / "out"
    rc = main(["segment", str(cohort), "--out", str(out), "--model", "tiny_seg2d_test",
               "--device", "cpu"])
    assert rc == 1                                           # one case failed, batch went on
    with h5py.File(out / "P1_seg.h5") as f:
        assert f["mask"].shape == case.labels.array.shape
    js = json.loads((out / "P1_seg.json").read_text())
    assert "WT" in js["volumes_ml"]
    assert any("nominal spacing" in w for w in js["warnings"])      # what the mL stand on
    # de-identified by default: the case id, not the case's path (which may name the patient)
    assert js["source"] == "P1" and js["deidentified"] is True
    assert str(cohort) not in json.dumps(js)
    import csv
    rows = list(csv.DictReader(open(out / "volumes.csv")))
    assert [r["status"] for r in rows] == ["ok", "failed"]
    cap = capsys.readouterr()
    err = cap.err
    assert "P2" in err and "failed" in err
    assert "FLAIR abnormality (WT)" in cap.out + err and "at nominal spacing" in cap.out + err
    # --identified: the path the case was read from
    out2 = tmp_path / "out2"
    assert main(["segment", str(cohort / "P1.h5"), "--out", str(out2), "--model",
                 "tiny_seg2d_test", "--device", "cpu", "--identified"]) == 0
    ji = json.loads((out2 / "P1_seg.json").read_text())
    assert ji["deidentified"] is False and Path(ji["source"]).name == "P1.h5"
    assert set(ji) == set(js)


def test_cli_missing_sequence_exit2(tiny3d, tmp_path, capsys):
    from napari_radiogen.cli import main
    from napari_radiogen.core.io import write_volume

    case = make_phantom(6, sequences=("t1", "t2", "flair"))
    d = tmp_path / "C1"
    d.mkdir()
    for s, v in case.sequences.items():
        write_volume(v.array, v.geometry, d / f"C1_{s}.nii.gz")
    rc = main(["segment", str(d), "--out", str(tmp_path / "o"), "--model", "tiny_seg3d_test"])
    assert rc == 2
    assert "t1ce" in capsys.readouterr().err


# -- shipped models on real data -------------------------------------------------------------------

def _shipped(name):
    from napari_radiogen.core.models import SHIPPED_DIR
    p = SHIPPED_DIR / f"{name}.safetensors"
    if not p.exists():
        pytest.skip(f"shipped model {name} not present")
    return p


@pytest.mark.parametrize("name", ["seg_brats_attunet", "seg_brats_segresnet",
                                  "seg_brats_attunet2mm"])
def test_sample_case_reproduces_card_dice(name):
    from napari_radiogen.core.models import load_model
    from napari_radiogen.core.sample import load_sample_case

    _shipped(name)
    m = load_model(name, task="segmentation")
    ref = (m.card.get("sample_case") or {}).get("dice")
    assert ref, "the card must store the shipped model's Dice on the bundled sample case"
    res = run(seg.segment(load_sample_case(), m, device="cpu"))
    for r in ("WT", "TC", "ET"):
        assert abs(res.metrics[r]["dice"] - ref[r]) <= 0.02, (r, res.metrics[r], ref[r])
    # the sample case is among the patients of the shipped weights (their cards say so): its
    # Dice is in-sample, and the result says it
    from napari_radiogen.core.notes import IN_SAMPLE, warning_key
    trained = m.card["training_data"]["shipped_model_trained_on"]
    assert "BraTS2021_00006" in trained
    said = [w for w in res.warnings if warning_key(w) == IN_SAMPLE]
    assert said == [f"BraTS2021_00006 was in {name}'s training data: its Dice here is "
                    "in-sample, not a validation"]
    # strict JSON: an undefined HD95 (seg_brats_attunet predicts no ET here) is null
    js = json.loads(json.dumps(res.summary(), allow_nan=False))
    for r, d in res.metrics.items():
        assert js["metrics_vs_labels"][r]["hd95_mm"] == (
            d["hd95_mm"] if np.isfinite(d["hd95_mm"]) else None)


@pytest.mark.slow
def test_cli_brats_case_aligned_with_flair(tmp_path):
    import nibabel as nib
    from napari_radiogen.cli import main

    _shipped("seg_brats_attunet2mm")                 # the CLI's default 3D model
    case_dir = shared_path("brats2021", "BraTS2021_01476")
    rc = main(["segment", str(case_dir), "--out", str(tmp_path), "--device", "cpu"])
    assert rc == 0
    out = nib.load(str(tmp_path / "BraTS2021_01476_seg.nii.gz"))
    flair = nib.load(str(case_dir / "BraTS2021_01476_flair.nii.gz"))
    assert out.shape == (240, 240, 155) == flair.shape
    assert np.allclose(out.affine, flair.affine, atol=1e-4)
    lab = np.asarray(out.dataobj)
    assert set(np.unique(lab)) <= {0, 1, 2, 4}
    gt = np.asarray(nib.load(str(case_dir / "BraTS2021_01476_seg.nii.gz")).dataobj)
    assert seg.dice(lab > 0, gt > 0) > 0.3          # aligned: overlaps the expert WT
    js = json.loads((tmp_path / "BraTS2021_01476_seg.json").read_text())
    assert js["volumes_ml"]["WT"] > 0
    assert (tmp_path / "volumes.csv").exists()


def test_shipped_pack_model_reproduces_card_dice():
    """The shipped 2D model's Dice on the pack its card names is what the card says."""
    from napari_radiogen.core.io import load_case
    from napari_radiogen.core.models import load_model

    _shipped("seg_lgg_segresnet2d")
    m = load_model("seg_lgg_segresnet2d", task="segmentation")
    ref = m.card.get("sample_pack")
    if not ref:
        pytest.skip("this card stores no sample-pack Dice (older model)")
    res = run(seg.segment(load_case(shared_path("tcga-lgg", f"{ref['patient_id']}.h5")), m,
                          device="cpu"))
    assert abs(res.metrics["WT"]["dice"] - ref["dice_WT"]) <= 0.02


def test_shipped_pack_model_on_real_pack(tmp_path):
    import h5py
    from napari_radiogen.cli import main

    _shipped("seg_lgg_segresnet2d")
    pack = shared_path("tcga-lgg", "TCGA_CS_4941.h5")
    rc = main(["segment", str(pack), "--out", str(tmp_path), "--device", "cpu"])
    assert rc == 0
    with h5py.File(tmp_path / "TCGA_CS_4941_seg.h5") as f, h5py.File(pack) as g:
        assert f["mask"].shape == g["mask"].shape


def test_configs_load_and_tasks_register():
    from napari_radiogen.core.train.config import load_config
    for name in ("segmentation_brats", "segmentation_brats_attunet", "segmentation_lgg",
                 "segmentation_brats_attunet2mm", "segmentation_brats_attunet2mm_long",
                 "segmentation_brats_attunet2mm_et", "segmentation_lgg_full",
                 "segmentation_lgg_attunet_full", "segmentation_lgg_long",
                 "segmentation_lgg_xlong", "segmentation_lgg_xxlong", "segmentation_lgg_gpu",
                 "segmentation_lgg_gpu_full"):
        cfg = load_config(name)
        assert cfg["task"] in ("segmentation-brats", "segmentation-lgg")


def test_2mm_long_config_changes_only_the_step_count():
    """The shipped seg_brats_attunet2mm run (600 steps) keeps the 300-step protocol otherwise."""
    from napari_radiogen.core.train.config import load_config
    a = load_config("segmentation_brats_attunet2mm")
    b = load_config("segmentation_brats_attunet2mm_long")
    assert b["train"]["epochs"] == 2 * a["train"]["epochs"]
    for c in (a, b):
        c["train"].pop("epochs")
        c.pop("_source", None)
    assert a == b


def test_et_config_changes_only_the_et_sampling_and_the_batch_dice():
    """segmentation_brats_attunet2mm_et is the _long protocol with ET-centred patches (the
    tumour-centred share unchanged) and batch Dice, nothing else."""
    from napari_radiogen.core.train.config import load_config
    a = load_config("segmentation_brats_attunet2mm_long")
    b = load_config("segmentation_brats_attunet2mm_et")
    assert b["model"]["pos_fraction"] + b["model"]["et_fraction"] == pytest.approx(
        a["model"]["pos_fraction"], abs=1e-9)
    assert b["train"]["loss"].pop("batch") is True
    for c in (a, b):
        for k in ("pos_fraction", "et_fraction"):
            c["model"].pop(k, None)
        c.pop("_source", None)
        c.pop("description")
    assert a == b


def test_et_centred_patches_and_batch_dice():
    """With et_fraction 1 every patch of a case with enhancing tumour contains ET at its
    centre; the batch Dice loss of a patch pair where only one patch holds the region is
    lower when the region is found than when the channel stays empty."""
    import torch
    from napari_radiogen.core.train.tasks.segmentation import _BratsTrain, _loss_fn
    y = np.zeros((3, 40, 40, 40), np.float32)
    y[0, 5:30, 5:30, 5:30] = 1
    y[1, 10:25, 10:25, 10:25] = 1
    y[2, 12:16, 12:16, 12:16] = 1
    x = np.random.default_rng(0).normal(size=(4, 40, 40, 40)).astype(np.float32)
    ds = _BratsTrain([{"x": x, "y": y}], n=20, patch=(16, 16, 16), pos_fraction=0.0,
                     augment=False, seed=0, et_fraction=1.0)
    for i in range(20):
        _, ys = ds[i]
        assert ys[2].sum() > 0
    loss = _loss_fn({"batch": True})
    tgt = torch.zeros(2, 3, 8, 8, 8)
    tgt[0, 2, 2:4, 2:4, 2:4] = 1
    found = torch.full_like(tgt, -8.0)
    found[tgt > 0] = 8.0
    empty = torch.full_like(tgt, -8.0)
    assert loss(found, tgt)[0] < loss(empty, tgt)[0]


@pytest.mark.parametrize("name,epochs", [("segmentation_lgg_long", 18),
                                         ("segmentation_lgg_xlong", 24),
                                         ("segmentation_lgg_xxlong", 30)])
def test_lgg_schedule_configs_change_only_the_step_count(name, epochs):
    """segmentation_lgg_long / _xlong / _xxlong are segmentation_lgg_full with 18 / 24 / 30
    epochs (1800 / 2400 / 3000 optimiser steps) instead of 12, nothing else; their descriptions differ (the ship
    script tells the shipped run by its description)."""
    from napari_radiogen.core.train.config import load_config
    a = load_config("segmentation_lgg_full")
    b = load_config(name)
    assert (a["train"].pop("epochs"), b["train"].pop("epochs")) == (12, epochs)
    assert a.pop("description") != b.pop("description")
    for c in (a, b):
        c.pop("_source", None)
    assert a == b


def _differ_only_in(name_a, name_b, changed):
    """Configs ``name_a`` and ``name_b`` differ in the ``changed`` ``{(section, key): (value in
    a, value in b)}`` and their descriptions, in nothing else."""
    from napari_radiogen.core.train.config import load_config
    a, b = load_config(name_a), load_config(name_b)
    for (sec, key), (va, vb) in changed.items():
        assert (a[sec].pop(key, None), b[sec].pop(key, None)) == (va, vb), key
    assert a.pop("description") != b.pop("description")
    for c in (a, b):
        c.pop("_source", None)
    assert a == b


def test_lgg_gpu_config_changes_only_width_batch_schedule_and_workers():
    """segmentation_lgg_gpu (the shipped 2D model's run) is segmentation_lgg_xxlong with a
    wider net, bigger batches, more samples, DataLoader workers and a time budget; folds,
    sampling, augmentation, loss and lr are the same."""
    _differ_only_in("segmentation_lgg_xxlong", "segmentation_lgg_gpu", {
        ("model", "init_filters"): (8, 16), ("model", "samples_per_epoch"): (1600, 12800),
        ("train", "batch_size"): (16, 32), ("train", "epochs"): (30, 25),
        ("train", "num_workers"): (0, 6), ("train", "max_minutes"): (None, 12)})


def test_lgg_gpu_full_config_changes_only_the_schedule_length():
    """segmentation_lgg_gpu_full (a run whose one-cycle schedule ends, not shipped) is
    segmentation_lgg_gpu with 20 epochs, more DataLoader workers (the samples do not depend on
    them) and a time budget that does not cut the 20 epochs."""
    _differ_only_in("segmentation_lgg_gpu", "segmentation_lgg_gpu_full", {
        ("train", "epochs"): (25, 20), ("train", "num_workers"): (6, 10),
        ("train", "max_minutes"): (12, 22)})


def test_lgg_attunet_config_changes_only_the_network():
    """The 2D architecture comparison: segmentation_lgg_attunet_full is segmentation_lgg_full
    with the attention U-Net instead of SegResNet, nothing else."""
    from napari_radiogen.core.train.config import load_config
    a = load_config("segmentation_lgg_full")
    b = load_config("segmentation_lgg_attunet_full")
    assert (a["model"]["arch"], b["model"]["arch"]) == ("segresnet", "attention_unet")
    for c in (a, b):
        for k in ("arch", "init_filters", "channels", "strides"):
            c["model"].pop(k, None)
        for k in ("_source", "description", "name"):
            c.pop(k, None)
    assert a == b
