"""The napari side of I/O: reader, writers, sample data, through a real viewer (pytest-qt,
pytest-xvfb). Real data from ../shared/data; tests skip when it is absent."""
from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED, shared_path

napari = pytest.importorskip("napari")
nib = pytest.importorskip("nibabel")
sitk = pytest.importorskip("SimpleITK")

from napari_radiogen.core.errors import RadiogenError  # noqa: E402
from napari_radiogen.napari.layers import (LABEL_COLORS, case_from_layers,  # noqa: E402
                                           geometry_from_transform, layer_geometry)
from napari_radiogen.napari.reader import get_reader  # noqa: E402

PLUGIN = "napari-radiogen"
SEQS = ("t1", "t1ce", "t2", "flair")


def _lps_image(path):
    img = sitk.ReadImage(str(path))
    return sitk.DICOMOrient(img, "LPS")


def _by_type(layers):
    images = [ly for ly in layers if isinstance(ly, napari.layers.Image)]
    labels = [ly for ly in layers if isinstance(ly, napari.layers.Labels)]
    return images, labels


def _check_physical(layer, lps_img, tol=1e-3):
    """Voxel (z, y, x) of the layer lands where SimpleITK puts that voxel (LPS mm)."""
    nz, ny, nx = layer.data.shape
    for idx in [(0, 0, 0), (nz - 1, ny // 2, nx - 1), (nz // 2, ny - 1, 0)]:
        world = np.asarray(layer.data_to_world(idx))
        expected = lps_img.TransformIndexToPhysicalPoint(tuple(int(i) for i in idx[::-1]))
        np.testing.assert_allclose(world, expected[::-1], atol=tol)


# -- get_reader ------------------------------------------------------------------------------------
def test_get_reader_declines_what_it_cannot_read(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "empty").mkdir()
    assert get_reader(str(tmp_path / "notes.txt")) is None
    assert get_reader(str(tmp_path / "empty")) is None
    assert get_reader(str(tmp_path / "missing.nii.gz")) is None
    assert get_reader([str(tmp_path / "a.nii.gz"), str(tmp_path / "b.nii.gz")]) is None


def test_get_reader_accepts_cases_volumes_and_packs():
    case = shared_path("brats2021", "BraTS2021_00006")
    assert callable(get_reader(str(case)))
    assert callable(get_reader(str(case / "BraTS2021_00006_flair.nii.gz")))
    assert callable(get_reader([str(case)]))
    assert callable(get_reader(str(shared_path("tcga-lgg", "TCGA_CS_4941.h5"))))
    # a cohort (of packs, of case folders) is not a case
    assert get_reader(str(shared_path("tcga-lgg"))) is None
    assert get_reader(str(shared_path("brats2021"))) is None


# -- reading through the viewer --------------------------------------------------------------------
def test_open_brats_case(make_napari_viewer):
    case = shared_path("brats2021", "BraTS2021_00006")
    viewer = make_napari_viewer()
    layers = viewer.open(str(case), plugin=PLUGIN)
    images, labels = _by_type(layers)
    assert len(images) == 4 and len(labels) == 1 and len(layers) == 5
    assert {ly.name for ly in images} == {f"BraTS2021_00006 {s}" for s in SEQS}
    ref = _lps_image(case / "BraTS2021_00006_flair.nii.gz")
    origin_zyx = tuple(ref.GetOrigin()[::-1])
    for ly in layers:
        np.testing.assert_allclose(ly.scale, (1, 1, 1))
        np.testing.assert_allclose(ly.translate, origin_zyx, atol=1e-4)
        assert ly.data.shape == (155, 240, 240)
        rg = ly.metadata["radiogen"]
        assert set(rg) >= {"case_id", "geometry", "sequence", "source", "synthetic"}
        assert rg["case_id"] == "BraTS2021_00006" and rg["synthetic"] is False
        assert rg["geometry"].shape == ly.data.shape
    # only the reference sequence is visible; contrast from percentiles, not the full range
    visible = [ly.metadata["radiogen"]["sequence"] for ly in images if ly.visible]
    assert visible == ["flair"]
    flair = next(ly for ly in images if ly.metadata["radiogen"]["sequence"] == "flair")
    lo, hi = flair.contrast_limits
    assert 0 <= lo < hi < float(flair.data.max())
    # labels: BraTS values with names and colours
    seg = labels[0]
    assert seg.metadata["radiogen"]["sequence"] == "labels"
    assert set(np.unique(seg.data)) == {0, 1, 2, 4}
    names = dict(zip(seg.features["index"], seg.features["name"]))
    assert names[1].startswith("necrotic") and names[2] == "oedema"
    assert names[4] == "enhancing tumour"
    np.testing.assert_allclose(seg.get_color(4), LABEL_COLORS[4], atol=1e-6)
    np.testing.assert_allclose(seg.get_color(2), LABEL_COLORS[2], atol=1e-6)
    _check_physical(seg, _lps_image(case / "BraTS2021_00006_seg.nii.gz"))
    # and back: the layers rebuild the case on the same grid
    rebuilt = case_from_layers(viewer.layers)
    assert rebuilt.case_id == "BraTS2021_00006" and rebuilt.present == SEQS
    assert rebuilt.labels is not None and rebuilt.on_one_grid()


def test_open_native_scans_on_their_own_grids(make_napari_viewer, monkeypatch):
    # on request (NAPARI_RADIOGEN_DISPLAY_GRID=native) every scan keeps its own grid
    from napari_radiogen.napari import layers as L

    monkeypatch.setenv(L.DISPLAY_GRID_ENV, "native")
    said = []
    monkeypatch.setattr(L, "notify", said.append)
    folder = shared_path("tcga-native", "TCGA-FG-6692", "native")
    viewer = make_napari_viewer()
    layers = viewer.open(str(folder), plugin=PLUGIN)
    images, labels = _by_type(layers)
    assert len(images) == 4 and not labels
    assert {ly.metadata["radiogen"]["sequence"] for ly in images} == set(SEQS)
    shapes = {ly.data.shape for ly in images}
    assert len(shapes) > 1, "the native scans have different grids"
    for ly in images:
        np.testing.assert_allclose(ly.scale, (5.5, 0.8984375, 0.8984375), atol=1e-3)
        src = Path(ly.metadata["radiogen"]["source"])
        assert src.parent == folder
        # oblique acquisitions: every voxel at its physical position
        _check_physical(ly, _lps_image(src))
    # the translate of each layer is its own origin
    translates = {tuple(np.round(ly.translate, 2)) for ly in images}
    assert len(translates) > 1
    # and the user is told that napari's 2D view cannot overlay them
    assert any("do not overlay" in m and "3D view" in m for m in said), said


def test_open_native_oblique_scans_overlay_in_2d_by_default(make_napari_viewer, monkeypatch):
    """napari's 2D view draws a grid without its tilt: sequences on different oblique grids
    are shown resampled onto the reference (FLAIR) grid, and the user is told."""
    from napari_radiogen.napari import layers as L

    monkeypatch.delenv(L.DISPLAY_GRID_ENV, raising=False)
    said = []
    monkeypatch.setattr(L, "notify", said.append)
    folder = shared_path("tcga-native", "TCGA-FG-6692", "native")
    viewer = make_napari_viewer()
    layers = viewer.open(str(folder), plugin=PLUGIN)
    images, _ = _by_type(layers)
    by = {ly.metadata["radiogen"]["sequence"]: ly for ly in images}
    flair = by["flair"]
    _check_physical(flair, _lps_image(Path(flair.metadata["radiogen"]["source"])))
    for s in ("t1", "t1ce", "t2"):
        ly = by[s]
        assert ly.metadata["radiogen"]["display_resampled_onto"] == "flair"
        assert ly.data.shape == flair.data.shape
        np.testing.assert_allclose(ly.affine.affine_matrix, flair.affine.affine_matrix)
        np.testing.assert_allclose(ly._data_to_world.affine_matrix,
                                   flair._data_to_world.affine_matrix, atol=1e-9)
        assert Path(ly.metadata["radiogen"]["source"]).parent == folder   # the file read
    assert any("resampled" in m and "flair grid" in m for m in said), said
    assert any("oblique (16.9 deg" in m and "3D view" in m for m in said), said
    # the T1ce is not co-registered with the FLAIR: the user is told when the case opens
    offset = [m for m in said if "looks offset" in m]
    assert len(offset) == 1 and offset[0].startswith("native: t1ce looks offset from flair"), said


def test_open_sri24_case_with_labels(make_napari_viewer):
    folder = shared_path("tcga-native", "TCGA-FG-6692", "sri24")
    viewer = make_napari_viewer()
    layers = viewer.open(str(folder), plugin=PLUGIN)
    images, labels = _by_type(layers)
    assert len(images) == 4 and len(labels) == 1
    assert {ly.metadata["radiogen"]["sequence"] for ly in images} == set(SEQS)
    assert set(np.unique(labels[0].data)) <= {0, 1, 2, 4}
    np.testing.assert_allclose(labels[0].scale, (1, 1, 1))


def test_open_hdf5_pack(make_napari_viewer):
    pack = shared_path("tcga-lgg", "TCGA_CS_4941.h5")
    viewer = make_napari_viewer()
    layers = viewer.open(str(pack), plugin=PLUGIN)
    images, labels = _by_type(layers)
    assert 1 <= len(images) <= 3 and len(labels) == 1
    assert {ly.metadata["radiogen"]["sequence"] for ly in images} <= {"t1", "t1ce", "flair"}
    n = labels[0].data.shape[0]
    assert labels[0].data.shape == (n, 128, 128)
    assert set(np.unique(labels[0].data)) <= {0, 1}
    names = dict(zip(labels[0].features["index"], labels[0].features["name"]))
    assert names[1] == "FLAIR abnormality"


def test_open_single_seg_file_as_labels(make_napari_viewer):
    seg = shared_path("brats2021", "BraTS2021_00006", "BraTS2021_00006_seg.nii.gz")
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(seg), plugin=PLUGIN)
    assert isinstance(layer, napari.layers.Labels)
    assert layer.metadata["radiogen"]["case_id"] == "BraTS2021_00006"


def test_reader_error_reaches_the_user_as_one_line(make_napari_viewer, tmp_path):
    bad = tmp_path / "broken_flair.nii.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00" + b"not a nifti file at all" * 10)
    viewer = make_napari_viewer()
    # with an explicit plugin napari re-raises the reader's own error
    with pytest.raises(RadiogenError) as info:
        viewer.open(str(bad), plugin=PLUGIN)
    msg = str(info.value)
    assert "\n" not in msg and "broken_flair.nii.gz" in msg
    # chosen by file type (File > Open, once the user picked napari-radiogen for *.nii.gz and
    # ticked "remember"), napari wraps it in ReaderPluginError, whose text (the notification
    # the user sees) ends with the one-line message
    from napari.errors import ReaderPluginError
    from napari.settings import get_settings

    settings = get_settings()
    saved = dict(settings.plugins.extension2reader)
    settings.plugins.extension2reader = {**saved, "*.nii.gz": PLUGIN}
    try:
        with pytest.raises(ReaderPluginError) as wrapped:
            viewer.open(str(bad), plugin=None)
    finally:
        settings.plugins.extension2reader = saved
    assert isinstance(wrapped.value.original_error, RadiogenError)
    assert str(wrapped.value).rstrip().endswith(msg)
    assert len(viewer.layers) == 0


# -- sample data -----------------------------------------------------------------------------------
def test_sample_case_entry(make_napari_viewer):
    viewer = make_napari_viewer()
    layers = viewer.open_sample(PLUGIN, "brats2021_00006")
    images, labels = _by_type(layers)
    assert len(images) == 4 and len(labels) == 1
    assert set(np.unique(labels[0].data)) == {0, 1, 2, 4}
    # the brain-cropped copy sits exactly where it sits in the full-size source
    src = SHARED / "brats2021" / "BraTS2021_00006" / "BraTS2021_00006_seg.nii.gz"
    if src.exists():
        _check_physical(labels[0], _lps_image(
            Path(labels[0].metadata["radiogen"]["source"])))
        crop = _lps_image(Path(labels[0].metadata["radiogen"]["source"]))
        whole = _lps_image(src)
        idx = whole.TransformPhysicalPointToIndex(crop.GetOrigin())
        a = sitk.GetArrayViewFromImage(whole)
        nz, ny, nx = labels[0].data.shape
        np.testing.assert_array_equal(
            a[idx[2]:idx[2] + nz, idx[1]:idx[1] + ny, idx[0]:idx[0] + nx], labels[0].data)
        assert int((a > 0).sum()) == int((labels[0].data > 0).sum())


def test_phantom_entry(make_napari_viewer):
    viewer = make_napari_viewer()
    layers = viewer.open_sample(PLUGIN, "phantom")
    images, labels = _by_type(layers)
    assert len(images) == 4 and len(labels) == 1
    assert all(ly.metadata["radiogen"]["case_id"] for ly in layers)


# -- writers ---------------------------------------------------------------------------------------
def test_labels_written_through_the_plugin_match_the_source_file(make_napari_viewer, tmp_path):
    case = shared_path("brats2021", "BraTS2021_00006")
    src = case / "BraTS2021_00006_seg.nii.gz"
    viewer = make_napari_viewer()
    layers = viewer.open(str(case), plugin=PLUGIN)
    seg = next(ly for ly in layers if isinstance(ly, napari.layers.Labels))
    out = tmp_path / "seg_out.nii.gz"
    written = napari.save_layers(str(out), [seg], plugin=PLUGIN)
    assert [Path(p) for p in written] == [out]
    a, b = nib.load(str(src)), nib.load(str(out))
    assert b.shape == a.shape
    np.testing.assert_array_equal(np.asarray(b.dataobj), np.asarray(a.dataobj))
    np.testing.assert_allclose(b.affine, a.affine, atol=1e-5)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_image_written_back_on_the_oblique_source_grid(make_napari_viewer, tmp_path, suffix):
    folder = shared_path("tcga-native", "TCGA-FG-6692", "native")
    viewer = make_napari_viewer()
    layers = viewer.open(str(folder), plugin=PLUGIN)
    flair = next(ly for ly in layers if ly.metadata["radiogen"]["sequence"] == "flair")
    out = tmp_path / f"flair{suffix}"
    napari.save_layers(str(out), [flair], plugin=PLUGIN)
    src = sitk.ReadImage(flair.metadata["radiogen"]["source"])
    got = sitk.ReadImage(str(out))
    assert got.GetSize() == src.GetSize()
    np.testing.assert_allclose(got.GetOrigin(), src.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(got.GetDirection(), src.GetDirection(), atol=1e-5)
    np.testing.assert_allclose(got.GetSpacing(), src.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(sitk.GetArrayViewFromImage(got),
                               sitk.GetArrayViewFromImage(src), atol=1e-3)


def test_writer_falls_back_to_the_layer_transform(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    data = np.zeros((6, 7, 8), dtype=np.uint8)
    data[2:4, 3:5, 1:6] = 2
    layer = viewer.add_labels(data, scale=(3.0, 1.5, 0.5), translate=(-10.0, 20.0, 5.0))
    out = tmp_path / "plain.nii.gz"
    napari.save_layers(str(out), [layer], plugin=PLUGIN)
    img = sitk.ReadImage(str(out))
    np.testing.assert_allclose(img.GetSpacing(), (0.5, 1.5, 3.0))
    np.testing.assert_allclose(img.GetOrigin(), (5.0, 20.0, -10.0))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), data)
    # and the generic transform helper agrees with napari's own data_to_world
    g = layer_geometry(layer)
    assert g.spacing == pytest.approx((0.5, 1.5, 3.0))
    g2 = geometry_from_transform(layer.as_layer_data_tuple()[1], data.shape)
    assert g2.same_grid(g)


def test_writer_rejects_non_volume_layers(tmp_path):
    from napari_radiogen.napari.writer import write_image

    with pytest.raises(RadiogenError, match="3D"):
        write_image(str(tmp_path / "x.nii.gz"), np.zeros((4, 4)), {})
    with pytest.raises(RadiogenError):
        write_image(str(tmp_path / "x.png"), np.zeros((4, 4, 4)), {})


def test_a_synthetic_layer_is_written_as_synthetic_and_read_back_so(tmp_path):
    """A layer whose radiogen metadata says synthetic (the synthesis widget's) is written with
    its provenance in the file (NIfTI descrip, NRRD fields), on its exact grid; reading the file
    back, alone or in a case folder, gives a synthetic layer again."""
    from napari_radiogen.core.case import Volume
    from napari_radiogen.core.io import load_case, load_volume
    from napari_radiogen.napari.layers import image_layer_data
    from napari_radiogen.napari.reader import read_path
    from napari_radiogen.napari.writer import write_image

    oblique = sitk.Euler3DTransform((0, 0, 0), 0.1, 0.0, 0.2).GetMatrix()
    rng = np.random.default_rng(0)
    case = tmp_path / "P1"
    case.mkdir()
    for s in ("t1", "t2", "flair"):
        img = sitk.GetImageFromArray(rng.random((6, 9, 8)).astype(np.float32) + 1)
        img.SetSpacing((0.9, 1.1, 3.0))
        img.SetOrigin((10.0, -20.0, 30.0))
        img.SetDirection(oblique)
        sitk.WriteImage(img, str(case / f"P1_{s}.nii.gz"))
    ref = load_volume(case / "P1_flair.nii.gz")
    synth = Volume(ref.array * 0.5, ref.geometry, synthetic=True)
    data, kw, _ = image_layer_data(synth, case_id="P1", sequence="t1ce",
                                   name="P1 t1ce (synthetic)", sources=["t1", "t2", "flair"],
                                   model="synth_seq2seq2d")
    meta = {**kw, "metadata": kw["metadata"]}
    out = Path(write_image(str(case / "scan_new.nii.gz"), data, meta)[0])
    descrip = nib.load(str(out)).header["descrip"].tobytes().rstrip(b"\0").decode()
    assert descrip == "napari-radiogen synthetic t1ce from t1,t2,flair by synth_seq2seq2d"
    np.testing.assert_allclose(nib.load(str(out)).affine,
                               nib.load(str(case / "P1_flair.nii.gz")).affine, atol=1e-6)
    nrrd = Path(write_image(str(tmp_path / "t1ce.nrrd"), data, meta)[0])
    r = sitk.ImageFileReader()
    r.SetFileName(str(nrrd))
    r.ReadImageInformation()
    assert r.GetMetaData("radiogen_synthetic") == "true"
    np.testing.assert_allclose(r.GetDirection(), oblique, atol=1e-6)
    # read back alone: a synthetic t1ce layer with its provenance
    (layer,) = read_path(str(out))
    rg = layer[1]["metadata"]["radiogen"]
    assert rg["synthetic"] is True and rg["sequence"] == "t1ce"
    assert rg["sources"] == ["t1", "t2", "flair"] and layer[1]["name"].endswith("(synthetic)")
    np.testing.assert_allclose(layer[0], synth.array, atol=1e-6)
    # and in its case folder (where no file name says t1ce): the case's synthetic t1ce
    c = load_case(case)
    assert c.synthetic_inputs() == ("t1ce",)
    layers = {ly[1]["metadata"]["radiogen"]["sequence"]: ly for ly in read_path(str(case))}
    assert layers["t1ce"][1]["metadata"]["radiogen"]["synthetic"] is True
    assert layers["t1ce"][1]["name"] == "P1 t1ce (synthetic)"
    assert layers["flair"][1]["metadata"]["radiogen"]["synthetic"] is False
    # an acquired layer written under a plain name stays unmarked
    data, kw, _ = image_layer_data(ref, case_id="P1", sequence="flair")
    plain = Path(write_image(str(tmp_path / "flair_copy.nii.gz"), data, kw)[0])
    assert nib.load(str(plain)).header["descrip"].tobytes().rstrip(b"\0") == b""
    assert load_volume(plain).synthetic is False


def _write_dicom_series(folder, array, spacing=(0.9, 0.9, 3.0), origin=(-20.0, 10.0, 5.0)):
    """A minimal MR DICOM series (one file per slice), as SimpleITK's examples write it."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    uid = "1.2.826.0.1.3680043.2.1125.1.4242"
    for k in range(array.shape[0]):
        sl = sitk.GetImageFromArray(array[k:k + 1].astype(np.int16))
        sl.SetSpacing(spacing)
        sl.SetOrigin((origin[0], origin[1], origin[2] + k * spacing[2]))
        for tag, value in {"0008|0060": "MR", "0020|000e": uid, "0008|103e": "AX FLAIR",
                           "0020|0032": f"{origin[0]}\\{origin[1]}\\{origin[2] + k * spacing[2]}",
                           "0020|0037": "1\\0\\0\\0\\1\\0", "0020|0013": str(k + 1),
                           "0018|0050": str(spacing[2])}.items():
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"IM{k:04d}.dcm"))
        writer.Execute(sl)


def test_open_dicom_series_folder(make_napari_viewer, tmp_path):
    rng = np.random.default_rng(0)
    vol = rng.integers(0, 1000, size=(5, 12, 10)).astype(np.int16)
    _write_dicom_series(tmp_path / "series", vol)
    assert callable(get_reader(str(tmp_path / "series")))
    viewer = make_napari_viewer()
    layers = viewer.open(str(tmp_path / "series"), plugin=PLUGIN)
    images, labels = _by_type(layers)
    assert len(images) == 1 and not labels
    np.testing.assert_allclose(images[0].scale, (3.0, 0.9, 0.9), atol=1e-4)
    np.testing.assert_allclose(images[0].translate, (5.0, 10.0, -20.0), atol=1e-3)
    np.testing.assert_array_equal(images[0].data, vol)


def test_geometry_kwargs_round_trip_for_oblique_grids():
    from napari_radiogen.core.case import Geometry
    from napari_radiogen.napari.layers import geometry_kwargs

    c, s = np.cos(0.3), np.sin(0.3)
    oblique = Geometry(size=(8, 7, 6), spacing=(0.9, 0.9, 5.5), origin=(-90.7, -148.2, -32.9),
                       direction=(1, 0, 0, 0, c, -s, 0, s, c))
    kw = geometry_kwargs(oblique)
    assert "rotate" in kw and kw["scale"] == pytest.approx((5.5, 0.9, 0.9))
    assert geometry_from_transform(kw, oblique.shape).same_grid(oblique)
    straight = oblique.with_(direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert set(geometry_kwargs(straight)) == {"scale", "translate"}
    mirrored = oblique.with_(direction=(-1, 0, 0, 0, 1, 0, 0, 0, 1))
    kw = geometry_kwargs(mirrored)
    assert set(kw) == {"affine"}
    assert geometry_from_transform(kw, mirrored.shape).same_grid(mirrored)


def test_label_values_and_compact_labels_layer_data():
    """The fast label histogram agrees with np.unique; result labels are stored as uint8 when
    they fit (napari draws them without conversion) and keep a wider type when they do not."""
    from napari_radiogen.core.case import Geometry, Volume
    from napari_radiogen.napari.layers import label_values, labels_layer_data
    rng = np.random.default_rng(0)
    for a in (rng.integers(0, 5, (4, 5, 6)).astype(np.int64), np.array([3, 1], np.uint64),
              np.array([True, False]), np.array([-1, 5]), np.array([0.5, 2.0]),
              np.zeros(0, np.uint8), np.array([70000, 1], np.int32)):
        np.testing.assert_array_equal(label_values(a), np.unique(a))
    g = Geometry(size=(6, 5, 4), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
                 direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    lab = rng.integers(0, 5, (4, 5, 6)).astype(np.int64)
    data, kw, kind = labels_layer_data(Volume(lab, g), case_id="c", compact=True)
    assert kind == "labels" and data.dtype == np.uint8
    np.testing.assert_array_equal(data, lab)
    assert set(kw["features"]["index"]) >= set(np.unique(lab).tolist())
    wide = lab.copy()
    wide[0, 0, 0] = 300
    data, _, _ = labels_layer_data(Volume(wide, g), case_id="c", compact=True)
    assert data.dtype == np.int64 and data[0, 0, 0] == 300
    data, _, _ = labels_layer_data(Volume(lab, g), case_id="c")      # default: dtype kept
    assert data.dtype == np.int64


def test_a_heatmap_or_differentiation_map_layer_is_written_as_a_map(tmp_path):
    """Saved from the viewer under any name, a heatmap layer (Explain/Analyze) and a
    differentiation-map layer (the ranking's, a synthetic Volume) say in their file that they
    are maps: never marked synthetic, and a case folder they are copied into ignores them."""
    from napari_radiogen.core.io import load_case
    from napari_radiogen.core.phantom import make_phantom
    from napari_radiogen.napari._common import image_result_data
    from napari_radiogen.napari.writer import write_image
    from napari_radiogen.core.io import write_volume
    case = make_phantom(1, case_id="P1")
    folder = tmp_path / "P1"
    folder.mkdir()
    for s, v in case.sequences.items():
        write_volume(v, folder / f"P1_{s}.nii.gz")
    g = case.geometry
    heat = np.random.default_rng(0).random(g.shape).astype(np.float32)
    layers = {
        "heat.nii.gz": image_result_data(heat, g, "P1", "P1 idh gradcam", model="m",
                                         task="idh", method="gradcam"),
        "t1ce_copy.nii.gz": image_result_data(heat, g, "P1", "P1 t1ce differentiation map",
                                              sequence="diffmap-t1ce", target="t1ce",
                                              sources=["t1", "t2"], kind="differentiation-map"),
    }
    before = load_case(folder)
    for name, (data, kw, _) in layers.items():
        out = Path(write_image(str(folder / name), data, kw)[0])
        descrip = nib.load(str(out)).header["descrip"].tobytes().rstrip(b"\0").decode()
        assert descrip.startswith(("napari-radiogen heatmap idh gradcam",
                                   "napari-radiogen differentiation map t1ce")), descrip
        assert "synthetic" not in descrip
    after = load_case(folder)
    assert sorted(after.sequences) == sorted(before.sequences)
    assert after.synthetic_inputs() == ()
    for s in before.sequences:
        np.testing.assert_array_equal(after.sequences[s].array, before.sequences[s].array)


@pytest.mark.parametrize("name,rmap,layer_name,expect", [
    # by its name and its header (what radiogen explain / analyze writes)
    ("P1_idh_gradcampp.nii.gz", {"kind": "heatmap", "task": "idh", "method": "gradcam++",
                                 "model": "test_mil"},
     "P1 idh gradcam++", {"kind": "heatmap", "task": "idh", "method": "gradcam++",
                          "model": "test_mil"}),
    # by its name only (a heatmap written before the header was filled)
    ("P2_grade_occlusion.nii.gz", False, "P2 grade occlusion",
     {"kind": "heatmap", "task": "grade", "method": "occlusion"}),
    # by its header only, under a name that says nothing; NRRD
    ("ranking.nrrd", {"kind": "differentiation map", "target": "t1ce",
                      "sources": ["t1", "t2", "flair"], "model": "synth_seq2seq2d"},
     "ranking t1ce differentiation map",
     {"kind": "differentiation map", "target": "t1ce", "sources": ["t1", "t2", "flair"],
      "model": "synth_seq2seq2d"}),
    ("P3_t2_diffmap.nii.gz", None, "P3 t2 differentiation map",
     {"kind": "differentiation map", "target": "t2"}),
])
def test_a_map_file_opened_in_the_viewer_is_saved_as_a_map_again(tmp_path, name, rmap,
                                                                  layer_name, expect):
    """A heatmap or differentiation map read by the plugin's reader is a map layer (the
    metadata the Explain/Analyze and Synthesis widgets give theirs), so saving it under a
    neutral name writes a file that still says it is a map, on the same grid."""
    from napari_radiogen.core.io import load_volume, write_volume
    from napari_radiogen.napari.reader import read_path
    from napari_radiogen.napari.writer import write_image
    from test_synthetic_files import assert_same_geometry, blob, plain

    ref = load_volume(plain(blob(3), tmp_path / "ref_flair.nii.gz"))
    arr = (ref.array - ref.array.min()) / (ref.array.max() - ref.array.min())
    src = tmp_path / "maps" / name
    if rmap is False:       # no header: SimpleITK alone, the map known by its name
        img = sitk.ReadImage(str(tmp_path / "ref_flair.nii.gz"))
        img = sitk.GetImageFromArray(sitk.GetArrayFromImage(img).astype(np.float32) * 0.001)
        img.CopyInformation(sitk.ReadImage(str(tmp_path / "ref_flair.nii.gz")))
        src.parent.mkdir()
        sitk.WriteImage(img, str(src))
    else:
        write_volume(arr, ref.geometry, src, radiogen_map=rmap)
    first = load_volume(src)
    assert first.meta["radiogen_map"] == expect

    [(data, kw, kind)] = read_path(str(src))
    rg = kw["metadata"]["radiogen"]
    assert kind == "image" and kw["name"] == layer_name
    assert kw["colormap"] == "inferno" and rg["result"] is True     # a result, not a case
    if expect["kind"] == "heatmap":
        assert rg["sequence"] == "heatmap"
        assert {k: rg.get(k) for k in ("task", "method")} == {
            k: expect.get(k) for k in ("task", "method")}
    else:
        assert rg["kind"] == "differentiation-map" and rg["target"] == expect["target"]
        assert rg["sequence"] == f"diffmap-{expect['target']}"
        assert rg.get("sources") == expect.get("sources")
    assert rg.get("model") == expect.get("model")

    for neutral in ("scan.nii.gz", "scan.mha"):
        out = Path(write_image(str(tmp_path / "saved" / neutral), data, kw)[0])
        back = load_volume(out)
        assert back.meta["radiogen_map"] == expect, neutral
        assert back.synthetic is False
        assert_same_geometry(back.geometry, first.geometry)
        np.testing.assert_allclose(back.array, first.array, rtol=0, atol=1e-6)


def test_a_synthetic_layer_saved_under_a_map_like_name_is_written_synthetic(tmp_path):
    """A synthetic layer's metadata says what it is: a map-like file name does not make it a
    map (nor raise), and the file reads back synthetic."""
    from napari_radiogen.core.case import Volume
    from napari_radiogen.core.io import load_volume
    from napari_radiogen.napari.layers import image_layer_data
    from napari_radiogen.napari.writer import write_image
    from test_synthetic_files import assert_same_geometry, blob, plain

    ref = load_volume(plain(blob(4), tmp_path / "ref_flair.nii.gz"))
    syn = Volume(ref.array * 0.01, ref.geometry, synthetic=True)
    data, kw, _ = image_layer_data(syn, case_id="P1", sequence="t1ce",
                                   name="P1 t1ce (synthetic)", sources=["t1", "t2", "flair"],
                                   model="synth_seq2seq2d")
    out = Path(write_image(str(tmp_path / "P1_idh_gradcam.nii.gz"), data, kw)[0])
    descrip = nib.load(str(out)).header["descrip"].tobytes().rstrip(b"\0").decode()
    assert descrip == "napari-radiogen synthetic t1ce from t1,t2,flair by synth_seq2seq2d"
    back = load_volume(out)
    assert back.synthetic is True and "radiogen_map" not in back.meta
    assert back.meta["sequence"] == "t1ce" and back.meta["model"] == "synth_seq2seq2d"
    assert_same_geometry(back.geometry, ref.geometry)


def test_reader_errors_speak_of_renaming_not_of_command_line_options(tmp_path):
    """A case folder whose file names do not say the sequence: the viewer cannot pass the
    command line's --sequence FILE=SEQ, so the reader's error says to rename the files."""
    import nibabel as nib
    from napari_radiogen.core.errors import CaseLoadError
    from napari_radiogen.napari.reader import get_reader
    case = tmp_path / "P9"
    case.mkdir()
    for n in ("scan_a", "scan_b"):
        nib.save(nib.Nifti1Image(np.random.default_rng(0).random((8, 9, 7)).astype(np.float32),
                                 np.eye(4)), str(case / f"{n}.nii.gz"))
    reader = get_reader(str(case))
    assert reader is not None
    with pytest.raises(CaseLoadError) as e:
        reader(str(case))
    msg = str(e.value)
    assert "scan_a.nii.gz" in msg and "rename them so each name says its sequence" in msg
    assert "--sequence" not in msg


def test_a_case_with_a_broken_file_opens_with_the_rest_and_says_why(make_napari_viewer,
                                                                     tmp_path, monkeypatch):
    """Nothing the user can look at is lost: a case whose T2 file is truncated opens with its
    other sequences, and a notification names the file and the reason."""
    from napari_radiogen.napari import layers as L
    from test_io import _case_folder_with_a_broken_t2
    said = []
    monkeypatch.setattr(L, "notify", said.append)
    folder = _case_folder_with_a_broken_t2(tmp_path / "P1")
    viewer = make_napari_viewer()
    layers = viewer.open(str(folder), plugin=PLUGIN)
    images, _ = _by_type(layers)
    assert {ly.metadata["radiogen"]["sequence"] for ly in images} == {"t1", "t1ce", "flair"}
    told = [s for s in said if "t2 is not shown" in s]
    assert len(told) == 1 and "P1_t2.nii.gz" in told[0] and "truncated" in told[0]
