"""Geometry kept from load to export: NIfTI qform vs sform, codes written back, zero voxel
sizes refused, sheared grids, NIfTI-2, clear read errors, obliquity reported, and napari's 2D
view (oblique grids that differ are shown on the reference grid)."""
import gzip
import os
import subprocess
import sys
import warnings

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from conftest import ROOT
from napari_radiogen.core.case import Case, Geometry
from napari_radiogen.core.errors import CaseLoadError
from napari_radiogen.core.io import load_case, load_volume, write_volume
from napari_radiogen.core.io._nifti import (GeometryWarning, SourceGeometry, corner_distance,
                                            obliquity_deg)

RAS2LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
SHAPE = (20, 24, 10)                       # nibabel (x, y, z)


def rot(ax, ay, az):
    """A rotation from Euler angles (degrees, x then y then z)."""
    a, b, c = np.radians([ax, ay, az])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


ZOOMS = (0.9, 1.1, 3.0)
SFORM = np.eye(4)
SFORM[:3, :3] = rot(20, -12, 30) @ np.diag(ZOOMS)
SFORM[:3, 3] = (-30.0, 10.0, 12.0)
QFORM = np.eye(4)
QFORM[:3, :3] = np.diag(ZOOMS)


def data(seed=0):
    return np.random.default_rng(seed).integers(1, 1000, SHAPE).astype(np.int16)


def save(path, d, qform, qcode, sform, scode, cls=nib.Nifti1Image):
    img = cls(d, sform)
    img.set_sform(sform, int(scode))
    img.set_qform(qform, int(qcode))
    nib.save(img, str(path))
    return path


def placed_as(vol, affine_ras, d):
    """Largest distance (mm) between where ``vol`` puts voxel values and where ``affine_ras``
    (the source file's transform) puts them."""
    a = vol.geometry.affine_lps()
    src = RAS2LPS @ affine_ras
    arr = vol.array.transpose(2, 1, 0)
    worst = 0.0
    for idx in [(0, 0, 0), (3, 5, 2), (7, 1, 9), tuple(s - 1 for s in arr.shape)]:
        w = a @ np.array([*idx, 1.0])
        ijk = np.rint(np.linalg.solve(src, w)[:3]).astype(int)
        assert float(arr[idx]) == float(d[tuple(ijk)])         # the same voxel value
        worst = max(worst, float(np.abs((src @ np.array([*ijk, 1.0]) - w)[:3]).max()))
    return worst


# -- 1. qform vs sform ------------------------------------------------------------------------
@pytest.mark.parametrize("qc,sc", [(1, 2), (2, 2), (1, 4), (2, 1)])
def test_disagreeing_qform_and_sform_use_the_sform_and_say_so(tmp_path, qc, sc):
    d = data()
    f = save(tmp_path / "P1_t1.nii.gz", d, QFORM, qc, SFORM, sc)
    assert corner_distance(QFORM, SFORM, SHAPE) > 50            # they really disagree
    vol = load_volume(f)
    assert placed_as(vol, SFORM, d) < 1e-3                      # where nibabel/FSL put it
    ws = vol.meta.get("warnings") or []
    assert any("qform" in w and "sform" in w and "using the sform" in w for w in ws), ws
    assert vol.meta["nifti_codes"] == {"qform": qc, "sform": sc, "used": "sform"}
    # the case says it too (radiogen info and the napari reader show case.meta["warnings"])
    case = load_case(f)
    assert any("P1_t1.nii.gz" in w and "using the sform" in w for w in case.meta["warnings"])


def test_agreeing_transforms_are_silent_and_unchanged(tmp_path):
    d = data()
    f = save(tmp_path / "P1_t1.nii.gz", d, SFORM, 1, SFORM, 1)
    vol = load_volume(f)
    assert placed_as(vol, SFORM, d) < 1e-3
    assert not vol.meta.get("warnings") and "warnings" not in load_case(f).meta


def test_sheared_sform_is_used_not_the_qform_fallback(tmp_path):
    d = data()
    sh = SFORM.copy()
    sh[:3, 1] += 0.25 * sh[:3, 0]                               # a shear
    f = save(tmp_path / "P1_t1.nii.gz", d, sh, 1, sh, 1)        # qform stores it rigid
    img = nib.load(str(f))
    assert corner_distance(img.get_qform(), img.get_sform(), SHAPE) > 1.0
    vol = load_volume(f)
    assert placed_as(vol, img.get_sform(), d) < 1e-3
    assert any("sheared" in w for w in vol.meta["warnings"])
    # ITK's own note ("unexpected scales in sform") is replaced by the clear warning
    assert "sform" not in (vol.meta.get("reader_warnings") or "")


# -- 2. writing keeps the source's transform and codes --------------------------------------
@pytest.mark.parametrize("qc,sc", [(1, 2), (2, 2), (1, 4), (0, 4), (1, 1)])
def test_mask_written_for_a_nifti_keeps_its_transforms_and_codes(tmp_path, qc, sc):
    d = data()
    f = save(tmp_path / "P1_t1.nii.gz", d, QFORM if qc else SFORM, qc, SFORM, sc)
    src = nib.load(str(f))
    vol = load_volume(f)
    out = write_volume(vol.array > 500, vol.geometry, tmp_path / "P1_seg.nii.gz", labels=True)
    o = nib.load(str(out))
    assert (int(o.header["qform_code"]), int(o.header["sform_code"])) == (qc, sc)
    # every viewer puts the mask where it puts the source: same qform and same sform
    assert corner_distance(o.get_sform(), src.get_sform(), SHAPE) < 1e-3
    if qc:
        assert corner_distance(o.get_qform(), src.get_qform(), SHAPE) < 1e-3
    assert corner_distance(o.affine, src.affine, SHAPE) < 1e-3      # nibabel's choice
    mask = np.asarray(o.dataobj)
    np.testing.assert_array_equal(mask, (d > 500).astype(np.uint8))
    # and read back by the package, it lies on the source's grid
    back = load_volume(out, labels=True)
    assert back.geometry.same_grid(vol.geometry)


def test_result_on_another_grid_keeps_the_codes(tmp_path):
    d = data()
    f = save(tmp_path / "P1_t1.nii.gz", d, SFORM, 0, SFORM, 4)          # MNI space
    vol = load_volume(f)
    g = vol.geometry.with_(size=(10, 10, 5))                           # a sub-grid
    assert isinstance(g, SourceGeometry)
    out = write_volume(np.zeros(g.shape, np.float32), g, tmp_path / "P1_map.nii.gz")
    o = nib.load(str(out))
    assert (int(o.header["qform_code"]), int(o.header["sform_code"])) == (0, 4)
    back = load_volume(out)                                          # on the sub-grid
    assert back.geometry.same_grid(g)
    assert not back.meta.get("warnings")


def test_non_nifti_sources_are_written_as_scanner_space(tmp_path):
    img = sitk.GetImageFromArray(np.ones((5, 6, 7), np.float32))
    img.SetSpacing((1.0, 2.0, 3.0))
    img.SetOrigin((4.0, 5.0, 6.0))
    sitk.WriteImage(img, str(tmp_path / "P1_t1.nrrd"))
    vol = load_volume(tmp_path / "P1_t1.nrrd")
    out = write_volume(vol, tmp_path / "P1_t1_copy.nii.gz")
    o = nib.load(str(out))
    assert (int(o.header["qform_code"]), int(o.header["sform_code"])) == (1, 1)
    back = sitk.ReadImage(str(out))
    np.testing.assert_allclose(back.GetOrigin(), (4.0, 5.0, 6.0), atol=1e-4)
    np.testing.assert_allclose(back.GetSpacing(), (1.0, 2.0, 3.0), atol=1e-5)


def test_source_geometry_equals_the_plain_geometry():
    g = Geometry(size=(2, 3, 4), spacing=(1.0, 1.0, 2.0), origin=(0.0, 1.0, 2.0))
    s = SourceGeometry(size=(2, 3, 4), spacing=(1.0, 1.0, 2.0), origin=(0.0, 1.0, 2.0))
    assert g == s and s == g and hash(g) == hash(s) and g.same_grid(s)
    assert s.with_(size=(2, 3, 5)) != g


# -- 5. sheared grids written to NIfTI --------------------------------------------------------
def test_sheared_grid_written_to_nifti_keeps_the_full_affine_and_warns(tmp_path):
    rng = np.random.default_rng(4)
    d = rng.integers(0, 1000, (10, 12, 14)).astype(np.int16)       # z, y, x
    hdr = ("NRRD0004\ntype: short\ndimension: 3\nspace: right-anterior-superior\n"
           "sizes: 14 12 10\nspace directions: (0.8,0,0) (0,0.9,0.1) (0,-0.2,3)\n"
           "kinds: domain domain domain\nendian: little\nencoding: raw\n"
           "space origin: (10,20,30)\n\n")
    (tmp_path / "P1_t1.nrrd").write_bytes(hdr.encode() + d.astype("<i2").tobytes())
    vol = load_volume(tmp_path / "P1_t1.nrrd")
    with pytest.warns(GeometryWarning, match="sheared.*sform.*nrrd"):
        out = write_volume(vol, tmp_path / "P1_t1_out.nii.gz")
    o = nib.load(str(out))
    expect = np.eye(4)
    expect[:3, :3] = np.array([[0.8, 0, 0], [0, 0.9, 0.1], [0, -0.2, 3]]).T
    expect[:3, 3] = (10, 20, 30)
    assert corner_distance(o.get_sform(), expect, (14, 12, 10)) < 1e-3
    assert int(o.header["sform_code"]) > 0
    np.testing.assert_array_equal(np.asarray(o.dataobj).astype(np.int16), d.transpose(2, 1, 0))
    # a rigid grid gives no such warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", GeometryWarning)
        write_volume(np.zeros((3, 4, 5), np.float32),
                     Geometry(size=(5, 4, 3), spacing=(1, 1, 1), origin=(0, 0, 0)),
                     tmp_path / "plain.nii.gz")


# -- 3. zero voxel size ------------------------------------------------------------------------
def _patched_nifti(path, pixdim3=0.0, codes=(0, 0)):
    """A .nii.gz whose header bytes say pixdim[3] = ``pixdim3`` and qform/sform ``codes``
    (nibabel itself would not write a zero voxel size)."""
    img = nib.Nifti1Image(np.ones((8, 8, 4), np.float32), np.diag([1.0, 1.0, 2.0, 1.0]))
    raw = bytearray(img.header.binaryblock) + b"\0" * 4 + np.asarray(img.dataobj).T.tobytes()
    raw[88:92] = np.float32(pixdim3).tobytes()                  # pixdim[3]
    raw[252:254] = np.int16(codes[0]).tobytes()                  # qform_code
    raw[254:256] = np.int16(codes[1]).tobytes()                  # sform_code
    path.write_bytes(gzip.compress(bytes(raw)))
    return path


def test_zero_voxel_size_is_refused_without_stderr_noise(tmp_path, capfd):
    p = _patched_nifti(tmp_path / "zero_t1.nii.gz")
    raw = nib.Nifti1Header.from_fileobj(gzip.open(p), check=False)
    assert float(raw["pixdim"][3]) == 0.0
    capfd.readouterr()
    with pytest.raises(CaseLoadError, match=r"zero_t1.nii.gz: voxel size pixdim\[3\] is 0"):
        load_volume(p)
    assert "pixdim" not in capfd.readouterr().err


def test_zero_pixdim_with_a_valid_sform_is_read_from_the_sform(tmp_path, capfd):
    img = nib.Nifti1Image(np.ones((8, 8, 4), np.float32), SFORM)
    img.set_sform(SFORM, 2)
    img.set_qform(None, 0)
    img.header["pixdim"][1:4] = (0.0, 0.0, 0.0)
    p = tmp_path / "zs_t1.nii.gz"
    img.to_filename(str(p))
    capfd.readouterr()
    vol = load_volume(p)
    assert "pixdim" not in capfd.readouterr().err
    assert sorted(vol.geometry.spacing) == pytest.approx(sorted(ZOOMS), abs=1e-4)


# -- 6. NIfTI-2 and read errors -------------------------------------------------------------
def test_nifti2_is_read_with_its_geometry(tmp_path):
    d = data().astype(np.float32)
    f = save(tmp_path / "P2_t1.nii", d, SFORM, 1, SFORM, 1, cls=nib.Nifti2Image)
    vol = load_volume(f)
    assert placed_as(vol, SFORM, d) < 1e-3


def test_read_errors_are_one_clear_sentence(tmp_path):
    img = sitk.GetImageFromArray(np.ones((6, 8, 10), np.float32))
    sitk.WriteImage(img, str(tmp_path / "a_t1.mhd"))
    os.remove(tmp_path / "a_t1.raw")
    with pytest.raises(CaseLoadError, match=r"a_t1.mhd: its voxel data file a_t1.raw is "
                                            r"missing"):
        load_volume(tmp_path / "a_t1.mhd")
    sitk.WriteImage(img, str(tmp_path / "ok.nrrd"), useCompression=True)
    b = (tmp_path / "ok.nrrd").read_bytes()
    (tmp_path / "cut_t1.nrrd").write_bytes(b[: len(b) - 200])
    with pytest.raises(CaseLoadError) as ei:
        load_volume(tmp_path / "cut_t1.nrrd")
    msg = str(ei.value)
    assert "cut_t1.nrrd" in msg and "[nrrd]" not in msg and "\n" not in msg and len(msg) < 300


# -- 4. obliquity in radiogen info and napari's 2D view ---------------------------------------
def test_obliquity_angle():
    assert obliquity_deg(np.eye(3)) == pytest.approx(0.0, abs=1e-9)
    assert obliquity_deg(np.diag([-1.0, 1.0, -1.0])) == pytest.approx(0.0, abs=1e-9)
    assert obliquity_deg(rot(17, 0, 0)) == pytest.approx(17.0, abs=1e-6)
    perm = np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]], float)
    assert obliquity_deg(perm @ rot(0, 0, 5)) == pytest.approx(5.0, abs=1e-6)


def _info(*args):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "napari_radiogen", "info", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)


def test_radiogen_info_shows_the_warning_and_the_tilt(tmp_path):
    import json

    f = save(tmp_path / "P1_t1.nii.gz", data(), QFORM, 1, SFORM, 2)
    r = _info(f)
    assert r.returncode == 0, r.stderr
    assert "warning: t1 (P1_t1.nii.gz): the NIfTI qform" in r.stdout
    assert "oblique" in r.stdout and " deg" in r.stdout
    assert r.stderr.strip() == ""
    j = json.loads(_info(f, "--json").stdout)
    assert j["sequences"]["t1"]["obliquity_deg"] == pytest.approx(
        obliquity_deg(SFORM[:3, :3] / np.array(ZOOMS)), abs=0.01)
    assert j["sequences"]["t1"]["nifti_codes"]["used"] == "sform"
    assert any("using the sform" in w for w in j["meta"]["warnings"])


def _oblique_case(tmp_path):
    """A case whose t1 and flair are on different oblique grids."""
    out = tmp_path / "obl"
    out.mkdir()
    for name, angle, seed in (("flair", 17.0, 1), ("t1", 5.0, 2)):
        a = np.eye(4)
        a[:3, :3] = rot(angle, 0, 0) @ np.diag((1.0, 1.0, 3.0))
        a[:3, 3] = (-10.0, -12.0, -15.0)
        save(out / f"P9_{name}.nii.gz", data(seed).astype(np.float32) + 1, a, 1, a, 1)
    return out


def test_oblique_grids_that_differ_are_shown_on_the_reference_grid(tmp_path, monkeypatch):
    from napari_radiogen.napari import layers as L

    said = []
    monkeypatch.setattr(L, "notify", said.append)
    monkeypatch.delenv(L.DISPLAY_GRID_ENV, raising=False)
    case = load_case(_oblique_case(tmp_path))
    assert not case.on_one_grid()
    lds = L.case_to_layer_data(case)
    geoms = {kw["metadata"]["radiogen"]["sequence"]: kw["metadata"]["radiogen"]["geometry"]
             for _, kw, _ in lds}
    assert geoms["t1"].same_grid(geoms["flair"])
    t1 = next(kw for _, kw, _ in lds if kw["metadata"]["radiogen"]["sequence"] == "t1")
    assert t1["metadata"]["radiogen"]["display_resampled_onto"] == "flair"
    assert any("resampled" in m and "flair grid" in m and "native" in m for m in said)
    assert any("oblique" in m and "3D view" in m for m in said)
    # native grids on request: each on its own grid, and the 2D misalignment is said
    said.clear()
    monkeypatch.setenv(L.DISPLAY_GRID_ENV, "native")
    lds = L.case_to_layer_data(case)
    geoms = {kw["metadata"]["radiogen"]["sequence"]: kw["metadata"]["radiogen"]["geometry"]
             for _, kw, _ in lds}
    assert not geoms["t1"].same_grid(geoms["flair"])
    assert any("do not overlay" in m and "3D view" in m for m in said)


def test_axis_aligned_case_is_shown_as_read_and_silently(tmp_path, monkeypatch):
    from napari_radiogen.napari import layers as L

    said = []
    monkeypatch.setattr(L, "notify", said.append)
    case = Case("c", {"t1": load_volume(save(tmp_path / "c_t1.nii.gz", data(), np.diag(
        [-1.0, -1.0, 2.0, 1.0]), 1, np.diag([-1.0, -1.0, 2.0, 1.0]), 1))})
    lds = L.case_to_layer_data(case)
    assert "rotate" not in lds[0][1] and said == []


def test_napari_reader_tells_about_an_oblique_single_file(tmp_path, monkeypatch):
    from napari_radiogen.napari import layers as L
    from napari_radiogen.napari.reader import read_path

    said = []
    monkeypatch.setattr(L, "notify", said.append)
    folder = _oblique_case(tmp_path)
    read_path(str(folder / "P9_flair.nii.gz"))
    assert any("oblique grid (17.0 deg" in m and "3D view" in m for m in said), said
    said.clear()
    f = save(tmp_path / "Q_t1.nii.gz", data(), QFORM, 1, SFORM, 2)
    read_path(str(f))
    assert any("using the sform" in m for m in said), said


def test_reader_warnings_reach_the_results_that_use_the_files():
    """What the readers said about a case's files (case.meta["warnings"], "<seq> (<file>):
    ...") reaches the prepared case of the sequences used, hence the segmentation's warnings;
    a warning about a sequence not used stays out."""
    from napari_radiogen.core.phantom import make_phantom
    from napari_radiogen.core.prepare import prepare as prepare_case
    case = make_phantom(0)
    said = ["t1 (P_t1.nii.gz): qform and sform differ by 67 mm; using the sform",
            "t2 (P_t2.nii.gz): sheared grid"]
    case.meta["warnings"] = list(said)
    prep = prepare_case(case, ["t1", "flair"])
    assert said[0] in prep.warnings and said[1] not in prep.warnings
    assert said[1] in prepare_case(case, ["t2"]).warnings


def test_layers_shown_resampled_stand_for_the_volumes_as_read(tmp_path, monkeypatch,
                                                              make_napari_viewer):
    """The display copies are for the eye only: a case rebuilt from the layers (what the
    widgets analyse) holds each sequence as read, on its own grid, as the command line reads
    it, and saving such a layer writes the file's own grid; an edited layer is taken (and
    written) as edited, on the grid it is shown on."""
    from napari_radiogen.core.io import load_volume
    from napari_radiogen.napari import layers as L
    from napari_radiogen.napari.writer import write_image

    monkeypatch.setattr(L, "notify", lambda m: None)
    monkeypatch.delenv(L.DISPLAY_GRID_ENV, raising=False)
    case = load_case(_oblique_case(tmp_path))
    viewer = make_napari_viewer()
    for data, kw, kind in L.case_to_layer_data(case):
        getattr(viewer, f"add_{kind}")(data, **kw)
    t1_layer = next(ly for ly in viewer.layers if L.radiogen_meta(ly).get("sequence") == "t1")
    assert t1_layer.metadata["radiogen"]["geometry"].same_grid(case.sequences["flair"].geometry)
    rebuilt = L.case_from_layers(viewer.layers, case.case_id)
    for s, v in case.sequences.items():
        assert rebuilt.sequences[s].geometry.same_grid(v.geometry), s
        np.testing.assert_array_equal(rebuilt.sequences[s].array, v.array)
    out = write_image(str(tmp_path / "saved_t1.nii.gz"), t1_layer.data,
                      t1_layer.as_layer_data_tuple()[1])[0]
    back = load_volume(out)
    assert back.geometry.same_grid(case.sequences["t1"].geometry)
    np.testing.assert_allclose(back.array, case.sequences["t1"].array)
    # an edit: the layer is what it shows now
    edited = np.asarray(t1_layer.data).copy()
    edited[0, 0, 0] += 100.0
    t1_layer.data = edited
    rebuilt = L.case_from_layers(viewer.layers, case.case_id)
    assert rebuilt.sequences["t1"].geometry.same_grid(case.sequences["flair"].geometry)
    with pytest.warns(UserWarning, match="was edited"):
        out = write_image(str(tmp_path / "edited_t1.nii.gz"), t1_layer.data,
                          t1_layer.as_layer_data_tuple()[1])[0]
    assert load_volume(out).geometry.same_grid(case.sequences["flair"].geometry)


def test_the_cohort_browser_says_a_cases_grids_once(tmp_path, monkeypatch):
    """The cohort browser tells what the reader tells about an oblique case the first time the
    case is opened, not at every visit."""
    from napari_radiogen.napari import cohort_widget as cw
    from napari_radiogen.napari import layers as L
    said = []
    monkeypatch.setattr(L, "notify", said.append)
    monkeypatch.delenv(L.DISPLAY_GRID_ENV, raising=False)
    folder = _oblique_case(tmp_path)
    prep = cw.prepare_case_layers(folder, None, tell=True)
    assert any("resampled" in m for m in said) and prep.layer_data
    said.clear()
    cw.prepare_case_layers(folder, None, tell=False)
    assert said == []
