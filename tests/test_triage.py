"""Tumour-type triage: normalisation, core classification, CLI on a folder and on the sample
case, the TrainTask's de-duplicated stratified folds."""
import csv
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from napari_radiogen.core import progress, triage

from conftest import shared_path

DATA = ("brain-tumour-4class", "train")


@pytest.fixture(scope="module")
def tiny_model():
    """An untrained compact CNN with a triage card (fast; tests the plumbing, not accuracy)."""
    import torch
    from napari_radiogen.core.models import LoadedModel, build_from_card, new_card

    torch.manual_seed(0)
    arch = {"builder": "src_models.triage:build_triage_resnet",
            "kwargs": {"widths": [4, 8, 8, 8]}}
    card = new_card("triage_tiny", "triage", arch, input_size=[32, 32],
                    classes=list(triage.CLASSES))
    net = build_from_card(card).eval()
    return LoadedModel(name="triage_tiny", card=card, module=net)


def test_normalisation_same_for_8bit_and_rescaled_intensities():
    rng = np.random.default_rng(0)
    img = np.zeros((100, 140), np.float32)
    img[20:80, 30:110] = rng.uniform(40, 200, size=(60, 80))
    a = triage.normalise_slice(img.astype(np.uint8), 64)
    b = triage.normalise_slice(img.astype(np.uint8).astype(np.float32) * 37.5 + 0.0, 64)
    assert a.shape == (64, 64) and a.dtype == np.float32
    assert 0.0 <= a.min() and a.max() <= 1.0 and a.max() > 0.9
    np.testing.assert_allclose(a, b, atol=1e-5)          # invariant to the intensity scale
    # cropped to the foreground: the object fills the width after normalisation
    assert (a[:, :3] > 0).any() and (a[:, -3:] > 0).any()
    assert triage.normalise_slice(np.zeros((50, 50)), 64).max() == 0.0   # empty slice


def test_gradcam_maps_back_to_the_source_grid(tiny_model):
    img = np.zeros((90, 120), np.float32)
    img[10:80, 20:100] = 100.0
    img[30:50, 40:60] = 400.0
    cam = triage.gradcam_slice(img, tiny_model)
    assert cam.heatmap.shape == img.shape
    assert cam.heatmap[:5].max() == 0.0 and cam.heatmap[:, :15].max() == 0.0   # background
    assert set(cam.triage.probs) == set(triage.CLASSES)
    assert abs(sum(cam.triage.probs.values()) - 1.0) < 1e-5


def test_classify_volume_batches_every_axial_slice(tiny_model):
    vol = np.random.default_rng(1).uniform(0, 500, size=(7, 40, 48)).astype(np.float32)
    vol[0] = 0
    table = progress.run(triage.classify_volume(vol, tiny_model))
    assert table.names == [f"volume:{z}" for z in range(7)]
    assert table.probs.shape == (7, 4) and np.allclose(table.probs.sum(1), 1, atol=1e-5)
    assert table.empty[0] and not any(table.empty[1:])
    one = triage.classify_slice(vol[3], tiny_model)
    np.testing.assert_allclose([one.probs[c] for c in triage.CLASSES], table.probs[3], atol=1e-5)


def test_empty_slices_get_no_call_and_are_not_counted(tiny_model):
    """All-zero and constant slices are empty: no tumour call, left out of the counts (the
    model's probabilities are kept, and ``predicted`` stays the argmax for the CSV)."""
    rng = np.random.default_rng(3)
    vol = rng.uniform(0, 500, size=(6, 40, 48)).astype(np.float32)
    vol[0] = 0
    vol[2] = 123.0                                   # constant: no contrast, nothing to see
    vol[5] = -7.0                                    # negative constant -> zeros
    assert triage.normalise_slice(vol[2], 32).max() == 0.0
    for z in (0, 2, 5):
        one = triage.classify_slice(vol[z], tiny_model)
        assert one.empty and one.call is None and one.predicted in triage.CLASSES
    one = triage.classify_slice(vol[1], tiny_model)
    assert not one.empty and one.call == one.predicted
    table = progress.run(triage.classify_volume(vol, tiny_model))
    assert table.empty == [True, False, True, False, False, True] and table.n_empty == 3
    assert table.calls[0] is None and table.calls[1] == table.predicted[1]
    counts = table.counts()
    assert list(counts) == list(triage.CLASSES) and sum(counts.values()) == 3
    assert len(table.predicted) == 6 and len(table.rows()) == 6    # the CSV keeps every slice


def test_classify_volume_along_another_axis(tiny_model):
    vol = np.random.default_rng(4).uniform(0, 500, size=(5, 30, 9)).astype(np.float32)
    vol[:, :, 4] = 0
    table = progress.run(triage.classify_volume(vol, tiny_model, axis=2, case_id="c1"))
    assert table.axis == 2 and table.names == [f"c1:{x}" for x in range(9)]
    assert table.probs.shape == (9, 4) and table.empty == [x == 4 for x in range(9)]
    one = triage.classify_slice(vol[:, :, 6], tiny_model)
    np.testing.assert_allclose([one.probs[c] for c in triage.CLASSES], table.probs[6], atol=1e-5)
    assert progress.run(triage.classify_volume(vol, tiny_model)).axis == 0
    with pytest.raises(triage.RadiogenError):
        progress.run(triage.classify_volume(vol, tiny_model, axis=3))


def test_domain_caveat_for_skull_stripped_inputs():
    """BraTS-like inputs (a BraTS case id, or an exactly-zero background around the brain) get
    a caveat; noisy backgrounds and the training collection's PNG slices do not."""
    from napari_radiogen.core.sample import load_sample_case
    rng = np.random.default_rng(5)
    brain = np.zeros((8, 60, 60), np.float32)
    yy, xx = np.mgrid[:60, :60]
    brain[1:7, (yy - 30) ** 2 + (xx - 30) ** 2 < 20 ** 2] = 300.0     # zero all around
    assert "skull-stripped" in triage.domain_caveat(brain)
    assert "skull-stripped" in triage.domain_caveat(brain[4])
    noisy = brain + rng.uniform(1, 20, brain.shape).astype(np.float32)
    assert triage.domain_caveat(noisy) is None and triage.domain_caveat(noisy[4]) is None
    assert "BraTS case" in triage.domain_caveat(noisy, case_id="BraTS2021_01476")
    assert triage.domain_caveat(np.zeros((20, 20))) is None         # empty: nothing to judge
    case = load_sample_case()
    ref = case.sequences[case.reference].array
    assert triage.domain_caveat(ref[ref.shape[0] // 2]) is not None  # the sample is BraTS
    src = shared_path(*DATA)
    for c in triage.CLASSES:
        for f in sorted((src / c).glob("*.png"))[:5]:
            assert triage.domain_caveat(triage.read_image(f)) is None, f


def test_classify_volume_reports_the_caveat(tiny_model):
    from napari_radiogen.core.sample import load_sample_case
    case = load_sample_case()
    table = progress.run(triage.classify_volume(case, tiny_model))
    assert table.case_id == case.case_id and "BraTS case" in table.caveat
    assert table.axis == 0 and table.n_empty == sum(table.empty)


def _disk_png(path, noisy, seed):
    """A 8-bit 'slice': a bright disk on an exactly-zero background (skull-stripped-like), or
    on a noisy background (as scans with skull)."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:64, :72]
    img = np.zeros((64, 72), np.float32)
    img[(yy - 32) ** 2 + (xx - 36) ** 2 < 22 ** 2] = 120.0
    img += rng.uniform(0, 60, img.shape) * (img > 0)
    if noisy:
        img += rng.uniform(1, 25, img.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)
    return path


def test_classify_images_says_how_many_look_skull_stripped(tmp_path, tiny_model, monkeypatch,
                                                          capsys):
    """A folder of images: the table's caveat counts the skull-stripped-like images (and names
    a few), the CLI prints it; a folder of images with noisy backgrounds gets none."""
    folder = tmp_path / "imgs"
    for i in range(2):
        _disk_png(folder / f"stripped_{i}.png", noisy=False, seed=i)
    for i in range(3):
        _disk_png(folder / "sub" / f"skull_{i}.png", noisy=True, seed=10 + i)
    table = progress.run(triage.classify_images(folder, tiny_model))
    assert len(table.names) == 5 and table.caveat is not None
    assert table.caveat.startswith("2 of 5 images look skull-stripped")
    assert "stripped_0.png" in table.caveat and "stripped_1.png" in table.caveat
    assert "skull_" not in table.caveat and "may be wrong" in table.caveat
    clean = progress.run(triage.classify_images(folder / "sub", tiny_model))
    assert len(clean.names) == 3 and clean.caveat is None
    # one image given as a file
    one = progress.run(triage.classify_images([folder / "stripped_0.png"], tiny_model))
    assert one.caveat.startswith("1 of 1 images")
    many = triage.images_caveat([f"{i}.png" for i in range(5)], 9)
    assert many.startswith("5 of 9") and "0.png, 1.png, 2.png, ..." in many

    from napari_radiogen.cli import main
    monkeypatch.setattr(triage, "load_triage_model", lambda *a, **k: tiny_model)
    assert main(["classify-slices", str(folder), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "warning: 2 of 5 images look skull-stripped" in out
    assert main(["classify-slices", str(folder / "sub"), "--out", str(tmp_path / "o2"),
                 "--quiet"]) == 0
    assert "skull-stripped" not in capsys.readouterr().out


def test_task_metrics_are_the_evaluate_metrics():
    """The triage training task scores as ``radiogen evaluate`` does: a class absent from the
    truth has no recall (None; NaN in the CV scalars) and is left out of the macro F1, which
    equals the core's; with every class present both agree with sklearn's macro F1."""
    from sklearn.metrics import f1_score
    from napari_radiogen.core.evaluate.metrics import classification_metrics as core
    from napari_radiogen.core.train.tasks.triage import classification_metrics, flat_metrics

    y = [0, 0, 1, 1, 2]                                 # no 'notumor' case
    prob = np.eye(4)[[0, 1, 1, 1, 3]]                   # one pituitary called notumor
    m = classification_metrics(y, prob)
    c = core(y, prob, classes=list(triage.CLASSES))
    assert m["macro_f1"] == pytest.approx(c["f1"])
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8 + 0.0) / 3)   # not / 4
    assert m["recall"] == {k: c["recall_per_class"][k] for k in triage.CLASSES}
    assert m["recall"]["notumor"] is None and m["f1"]["notumor"] is None
    assert m["precision"]["pituitary"] is None and m["precision"]["notumor"] == 0.0
    assert m["support"] == {"glioma": 2, "meningioma": 2, "pituitary": 1, "notumor": 0}
    assert m["accuracy"] == pytest.approx(0.6) and m["confusion"] == c["confusion"]
    f = flat_metrics(m)
    assert np.isnan(f["recall_notumor"]) and f["recall_glioma"] == 0.5
    assert f["score"] == f["macro_f1"] == pytest.approx(m["macro_f1"])

    y4 = [0, 1, 2, 3, 0, 1, 2, 3]
    p4 = np.eye(4)[[0, 1, 2, 3, 1, 1, 3, 3]]
    m4 = classification_metrics(y4, p4)
    assert m4["macro_f1"] == pytest.approx(f1_score(y4, p4.argmax(1), average="macro"))
    assert m4["macro_f1"] == pytest.approx(core(y4, p4)["f1"])


def test_classify_volume_cancels(tiny_model):
    tok = progress.CancelToken()
    tok.cancel()
    from napari_radiogen.core.errors import Cancelled
    with pytest.raises(Cancelled):
        progress.run(triage.classify_volume(np.ones((5, 20, 20)), tiny_model, cancel=tok))


def _pngs(tmp_path, n_per_class=2):
    src = shared_path(*DATA)
    folder = tmp_path / "slices"
    files = []
    for i, c in enumerate(triage.CLASSES):
        for f in sorted((src / c).glob("*.png"))[:n_per_class]:
            dst = folder / ("nested/deeper" if i % 2 else "") / f"{c}_{f.name}"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, dst)
            files.append(dst.relative_to(folder).as_posix())
    return folder, sorted(files)


def _read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_shipped_models_and_cards():
    """Both architectures are shipped, load safely, and their cards carry the CV protocol,
    metrics, confusion matrix, baseline, the comparison on the same folds and the citations."""
    from napari_radiogen.core.models import list_models
    shipped = {m["name"]: m["card"] for m in list_models("triage") if m["origin"] == "shipped"}
    assert {"triage_resnet", "triage_vit"} <= set(shipped)
    for name in ("triage_resnet", "triage_vit"):
        card = shipped[name]
        assert card["classes"] == list(triage.CLASSES)
        assert card["normalisation"] == triage.NORMALISATION_DOC
        cv = card["metrics"]["cv"]
        for k in ("accuracy", "macro_f1", *[f"recall_{c}" for c in triage.CLASSES]):
            assert 0 <= cv[k]["mean"] <= 1 and len(cv[k]["per_fold"]) >= 3
        cm = np.array(card["metrics"]["pooled_held_out"]["confusion"])
        assert cm.shape == (4, 4) and cm.sum() == card["comparison"]["n_images"]
        assert card["comparison"]["folds_identical"]
        assert card["baseline"]["macro_f1"]["mean"] > 0.25
        assert "reproduce" in card and card["citations"]
        m = triage.load_triage_model(name)
        assert triage.model_input_size(m) == card["input_size"][0]


def _shipped_or_skip():
    from napari_radiogen.core.models import list_models
    if not any(m["origin"] == "shipped" for m in list_models("triage")):
        pytest.skip("no shipped triage model (napari_radiogen/weights/triage_*.safetensors)")


def test_cli_on_a_folder_of_pngs(tmp_path):
    from napari_radiogen.cli import main
    _shipped_or_skip()
    folder, files = _pngs(tmp_path, 5)
    out = tmp_path / "out"
    assert main(["classify-slices", str(folder), "--out", str(out)]) == 0
    rows = _read_csv(out / "tumour_type.csv")
    assert list(rows[0]) == ["file", *triage.CLASSES, "predicted", "empty", "status", "message"]
    assert {r["empty"] for r in rows} == {"0"} and {r["status"] for r in rows} == {"ok"}
    assert sorted(r["file"] for r in rows) == files             # nested files, relative paths
    assert any("/" in r["file"] for r in rows)
    for r in rows:
        p = np.array([float(r[c]) for c in triage.CLASSES])
        assert abs(p.sum() - 1) < 1e-3 and r["predicted"] == triage.CLASSES[int(p.argmax())]
    # the shipped model is far better than chance (25 %) on these images (CV accuracy ~0.9;
    # the best-fold model did not train on all of them)
    right = sum(r["file"].split("/")[-1].startswith(r["predicted"] + "_") for r in rows)
    assert right >= 0.7 * len(rows)


def test_cli_on_a_volume_gives_empty_slices_no_call(tmp_path, capsys):
    """A volume's slices with no foreground get no call in the CSV (``predicted`` empty,
    ``empty`` 1) and are left out of the printed counts, which say how many there were."""
    from napari_radiogen.cli import main
    from napari_radiogen.core.phantom import make_phantom
    from napari_radiogen.core.io import write_volume
    _shipped_or_skip()
    case = make_phantom(0, shape=(24, 48, 48), case_id="PH1")
    flair = case.sequences["flair"]
    arr = flair.array.copy()
    arr[:4] = 0                                       # four blank slices along axis 0
    f = write_volume(arr, flair.geometry, tmp_path / "PH1_flair.nii.gz")
    out = tmp_path / "out"
    assert main(["classify-slices", str(f), "--out", str(out), "--quiet"]) == 0
    rows = _read_csv(out / "tumour_type.csv")
    blank = [r for r in rows if r["empty"] == "1"]
    assert len(blank) >= 4 and all(r["predicted"] == "" for r in blank)
    assert all(r["predicted"] in triage.CLASSES for r in rows if r["empty"] == "0")
    text = capsys.readouterr().out
    counted = sum(int(x) for x in re.findall(r"(?:glioma|meningioma|pituitary|notumor) (\d+)",
                                             text))
    assert counted == len(rows) - len(blank)
    assert f"{len(blank)} empty slice(s), no call" in text


def test_cli_on_a_single_image_and_a_missing_path(tmp_path, capsys):
    from napari_radiogen.cli import main
    _shipped_or_skip()
    folder, files = _pngs(tmp_path, 1)
    out = tmp_path / "one"
    assert main(["classify-slices", str(folder / files[0]), "--out", str(out)]) == 0
    rows = _read_csv(out / "tumour_type.csv")
    assert [r["file"] for r in rows] == [Path(files[0]).name]
    assert main(["classify-slices", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "radiogen: error:" in capsys.readouterr().err


def test_cli_on_the_sample_case(tmp_path):
    from napari_radiogen.cli import main
    from napari_radiogen.core.sample import SAMPLE_CASE_ID, sample_case_path
    _shipped_or_skip()
    out = tmp_path / "case"
    assert main(["classify-slices", str(sample_case_path()), "--out", str(out)]) == 0
    rows = _read_csv(out / "tumour_type.csv")
    from napari_radiogen.core.io import load_case
    case = load_case(sample_case_path())
    nz = case.sequences[case.reference].array.shape[0]
    assert [r["file"] for r in rows] == [f"{SAMPLE_CASE_ID}:{z}" for z in range(nz)]
    assert {r["predicted"] for r in rows if r["empty"] == "0"} <= set(triage.CLASSES)
    assert {r["predicted"] for r in rows if r["empty"] == "1"} <= {""}


def _bad_image_folder(tmp_path):
    """ok_a.png, ok_b.png (synthetic grey images), fake.png (3 bytes), trunc.png (the first
    200 bytes of a real PNG)."""
    from PIL import Image
    folder = tmp_path / "slices_bad"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("ok_a.png", "ok_b.png"):
        img = np.zeros((64, 64), np.uint8)
        img[10:54, 12:52] = rng.integers(40, 220, size=(44, 40), dtype=np.uint8)
        Image.fromarray(img).save(folder / name)
    (folder / "fake.png").write_bytes(b"abc")
    (folder / "trunc.png").write_bytes((folder / "ok_a.png").read_bytes()[:200])
    return folder


def test_classify_images_skip_unreadable_lists_them(tmp_path, tiny_model):
    """core: an unreadable image stops classify_images (its CaseLoadError), unless
    ``skip_unreadable``: then it is listed in ``failed`` by its name (no full path) and the
    others are classified."""
    from napari_radiogen.core.errors import CaseLoadError
    folder = _bad_image_folder(tmp_path)
    with pytest.raises(CaseLoadError, match="cannot read as an image"):
        progress.run(triage.classify_images(folder, tiny_model))
    table = progress.run(triage.classify_images(folder, tiny_model, skip_unreadable=True))
    assert table.names == ["ok_a.png", "ok_b.png"] and table.probs.shape == (2, 4)
    failed = dict(table.failed)
    assert sorted(failed) == ["fake.png", "trunc.png"]
    assert all(str(tmp_path) not in why for why in failed.values())
    assert failed["fake.png"].startswith("fake.png: cannot read as an image")
    rows = table.rows()
    assert [(r["file"], r["status"]) for r in rows] == [
        ("ok_a.png", "ok"), ("ok_b.png", "ok"), ("fake.png", "failed"), ("trunc.png", "failed")]
    # nothing readable: an empty table with every image failed, not a crash
    only_bad = tmp_path / "only_bad"
    only_bad.mkdir()
    shutil.copy(folder / "fake.png", only_bad / "fake.png")
    table = progress.run(triage.classify_images(only_bad, tiny_model, skip_unreadable=True))
    assert table.names == [] and [n for n, _ in table.failed] == ["fake.png"]


def test_cli_folder_with_unreadable_images_goes_on(tmp_path, tiny_model, capsys, monkeypatch):
    """classify-slices on a folder is a batch: an unreadable image gets a failed row with its
    error (named relative to the folder), the others are classified, the summary counts the
    failed ones and the exit status is 1 (as segment / predict on a folder); a single
    unreadable image is still an input error (exit 2)."""
    from napari_radiogen.cli import main
    monkeypatch.setattr(triage, "load_triage_model", lambda *a, **k: tiny_model)
    folder = _bad_image_folder(tmp_path)
    out = tmp_path / "out"
    assert main(["classify-slices", str(folder), "--out", str(out), "--quiet"]) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert "2 slice(s) classified" in captured.out
    assert "2 image(s) could not be read" in captured.out
    assert "fake.png: FAILED: cannot read as an image" in captured.err
    assert "radiogen: 2 of 4 image(s) failed: fake.png, trunc.png" in captured.err
    rows = _read_csv(out / "tumour_type.csv")
    assert [(r["file"], r["status"]) for r in rows] == [
        ("ok_a.png", "ok"), ("ok_b.png", "ok"), ("fake.png", "failed"), ("trunc.png", "failed")]
    ok = [r for r in rows if r["status"] == "ok"]
    assert all(r["predicted"] in triage.CLASSES for r in ok)
    bad = {r["file"]: r for r in rows if r["status"] == "failed"}
    assert bad["fake.png"]["message"].startswith("fake.png: cannot read as an image")
    assert bad["trunc.png"]["predicted"] == "" and bad["trunc.png"]["glioma"] == ""
    assert not any(str(tmp_path) in r["message"] for r in rows)
    # one unreadable image given as PATH: an input error, one line, exit 2
    assert main(["classify-slices", str(folder / "fake.png"), "--out", str(tmp_path / "o2"),
                 "--quiet"]) == 2
    assert "radiogen: error:" in capsys.readouterr().err


def test_folds_deduplicated_and_stratified(tmp_path):
    """Exact duplicates are merged (one record, group = hash) and folds are stratified."""
    from napari_radiogen.core.train.splits import kfold
    from napari_radiogen.core.train.tasks.triage import Triage2DTask

    src = shared_path(*DATA)
    root = tmp_path / "data"
    for c in triage.CLASSES:
        (root / c).mkdir(parents=True)
        for f in sorted((src / c).glob("*.png"))[:6]:
            shutil.copy(f, root / c / f.name)
    g = sorted((root / "glioma").glob("*.png"))
    shutil.copy(g[0], root / "glioma" / "copy_of_first.png")          # an exact duplicate
    task = Triage2DTask({"data": str(root), "model": {"arch": "resnet", "input_size": 32},
                         "train": {"augment": False}, "seed": 0})
    recs = task.patients()
    assert len(recs) == 24
    dup = [r for r in recs if r.info["duplicates"]]
    assert len(dup) == 1 and dup[0].patient_id == "glioma/" + g[0].name
    assert dup[0].info["duplicates"] == ["glioma/copy_of_first.png"]
    assert len({r.group for r in recs}) == len(recs)
    folds = kfold(recs, 3, 0)
    for tr, te in folds:
        assert not set(tr) & set(te)
        cls = [r.strata for r in recs if r.patient_id in te]
        assert sorted(set(cls)) == sorted(triage.CLASSES) and len(cls) == 8
    ds = task.dataset([r.patient_id for r in recs[:5]])
    x, y = ds[0]
    assert tuple(x.shape) == (1, 32, 32) and 0 <= float(x.min()) and float(x.max()) <= 1
    # baseline and evaluate speak the engine's language (scalar metrics + score)
    m = task.build_model()
    ev = task.evaluate(m, task.dataset([r.patient_id for r in recs]), "cpu")
    assert {"score", "accuracy", "macro_f1", "recall_glioma"} <= set(ev)
    assert len(ev["predictions"]) == 24 and ev["predictions"][0]["classes"] == list(triage.CLASSES)


def test_bench_helper(tiny_model):
    vol = np.random.default_rng(2).uniform(0, 300, size=(12, 40, 40)).astype(np.float32)
    r = triage.bench_triage(tiny_model, volume=vol, repeats=2)
    assert r["volume_slices"] == 12 and r["one_slice_s"] > 0 and r["volume_s"] > 0


def test_vit_token_gradcam_is_not_empty():
    """The ViT's CAM hooks a block whose patch tokens still reach the class token."""
    import torch
    from napari_radiogen.core.models import LoadedModel, build_from_card, new_card

    torch.manual_seed(0)
    arch = {"builder": "src_models.triage:build_triage_vit",
            "kwargs": {"img_size": 32, "patch_size": 8, "hidden_size": 16, "mlp_dim": 32,
                       "num_layers": 2, "num_heads": 2}}
    card = new_card("vit_tiny", "triage", arch, input_size=[32, 32], classes=list(triage.CLASSES))
    m = LoadedModel(name="vit_tiny", card=card, module=build_from_card(card).eval())
    img = np.zeros((60, 80), np.float32)
    img[5:55, 10:70] = 100.0
    img[20:35, 30:45] = 400.0
    cam = triage.gradcam_slice(img, m)
    assert cam.heatmap.shape == img.shape and cam.heatmap.max() > 0
    assert cam.heatmap[:3].max() == 0.0


def test_baseline_places_probabilities_in_their_class_columns():
    """A fold whose training slices lack a class: the logistic baseline's probabilities go in
    the columns of the classes it saw (clf.classes_), not shifted onto the wrong classes."""
    from types import SimpleNamespace
    from napari_radiogen.core.train.tasks.triage import Triage2DTask
    rng = np.random.default_rng(0)

    def slices(labels):
        x = np.zeros((len(labels), 1, 32, 32), np.float32)
        for i, c in enumerate(labels):           # each class its own bright quadrant
            r, q = divmod(int(c), 2)
            x[i, 0, 16 * r:16 * r + 16, 16 * q:16 * q + 16] = 0.8 + 0.1 * rng.random()
        return SimpleNamespace(x=x, y=np.asarray(labels))
    train = slices([0, 1, 3] * 8)                 # no slice of class 2 in training
    test = slices([0, 1, 3, 0, 1, 3])
    task = Triage2DTask.__new__(Triage2DTask)
    task.dataset = lambda ids: train if ids == "train" else test
    m = task.baseline("train", "test")
    assert m["accuracy"] == 1.0
    assert all(m[f"recall_{triage.CLASSES[c]}"] == 1.0 for c in (0, 1, 3))


def test_triage_training_augments_from_the_epoch_seed(tmp_path):
    """The triage task's batch augmentation is drawn from numpy's global generator, which the
    engine seeds at every epoch: the same epoch seed gives the same augmented loss (a resumed
    run repeats the uninterrupted one), another seed another one. A generator kept by the task
    restarted with each process."""
    import torch
    from napari_radiogen.core.train.engine import seed_everything
    from napari_radiogen.core.train.tasks.triage import Triage2DTask
    task = Triage2DTask({"task": "triage-2d", "data": str(tmp_path), "model": {"arch": "resnet"},
                         "train": {"augment": True}, "seed": 0})
    torch.manual_seed(0)
    net = task.make_model()
    x = torch.rand(4, 1, 64, 64)
    y = torch.tensor([0, 1, 2, 3])

    def loss(seed):
        seed_everything(seed)
        return float(task.training_step(net, (x, y), "cpu")[0].detach())
    first = loss(7)
    loss(8)                                            # the task's state moves on
    assert loss(7) == first
    assert loss(9) != first
