"""core.io: sequence detection, volume/case/pack/DICOM reading, checks on bad input, writers."""
import csv
import gzip
import re
import subprocess
import sys
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from napari_radiogen.core.case import Geometry
from napari_radiogen.core.errors import CaseLoadError, GeometryError, RadiogenError
from napari_radiogen.core.io import (GridError, WriteError, detect_sequence, list_cases,
                                     load_case, load_volume, scan_case, write_pack_mask,
                                     write_volume)

from conftest import shared_path

# ------------------------------------------------------------------------------------------------
# synthetic data helpers (independent of core.phantom)


def blob(shape=(12, 20, 16), seed=0, value=100.0):
    """A smooth ellipsoid 'head' with noise: (z, y, x) float32."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = z ** 2 + y ** 2 + x ** 2
    return (value * (r < 0.8) + rng.normal(0, 1, shape)).astype(np.float32)


def write_sitk(arr, path, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=None):
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    sitk.WriteImage(img, str(path))
    return Path(path)


def make_case(folder, names=("t1", "t1ce", "t2", "flair"), seg=True, shape=(12, 20, 16),
              prefix="CASE_001", sep="_", **geo):
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, n in enumerate(names):
        write_sitk(blob(shape, seed=i), folder / f"{prefix}{sep}{n}.nii.gz", **geo)
    if seg:
        lab = np.zeros(shape, np.uint8)
        lab[4:8, 8:12, 6:10] = 2
        lab[5:7, 9:11, 7:9] = 1
        lab[6, 10, 8] = 4
        write_sitk(lab, folder / f"{prefix}{sep}seg.nii.gz", **geo)
    return folder


def write_dicom_series(arr, folder, *, description="T1 AX", series_uid=None, spacing=(0.9, 0.9, 3.0),
                       origin=(-10.0, -12.0, 5.0), patient="PHANTOM1", start_index=0,
                       study_uid="1.2.826.0.1.3680043.2.1125.777.1", series_number=None,
                       study_date=None):
    """Write a (z, y, x) int16 array as one DICOM MR series (one file per slice)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    img = sitk.GetImageFromArray(arr.astype(np.int16))
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    series_uid = series_uid or f"1.2.826.0.1.3680043.2.1125.{abs(hash(description)) % 10**8}.1"
    direction = img.GetDirection()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    tags = [("0008|0031", "120000"), ("0008|0021", "20240101"), ("0008|0060", "MR"),
            ("0008|0008", "DERIVED\\SECONDARY"), ("0020|000e", series_uid),
            ("0020|000d", study_uid), ("0010|0020", patient), ("0010|0010", "Phantom^One"),
            ("0008|103e", description), ("0018|0050", str(spacing[2])),
            ("0020|0037", "\\".join(map(str, (direction[0], direction[3], direction[6],
                                             direction[1], direction[4], direction[7]))))]
    if series_number is not None:
        tags.append(("0020|0011", str(series_number)))
    if study_date is not None:
        tags.append(("0008|0020", study_date))
    for i in range(img.GetDepth()):
        sl = img[:, :, i]
        for k, v in tags:
            sl.SetMetaData(k, v)
        sl.SetMetaData("0008|0018", f"{series_uid}.{i + 1}")
        sl.SetMetaData("0020|0032", "\\".join(map(str, img.TransformIndexToPhysicalPoint((0, 0, i)))))
        sl.SetMetaData("0020|0013", str(i + 1))
        writer.SetFileName(str(folder / f"IM{start_index + i:04d}.dcm"))
        writer.Execute(sl)
    return folder


# ------------------------------------------------------------------------------------------------
# detection

@pytest.mark.parametrize("name,expected", [
    ("BraTS2021_00006_t1.nii.gz", ("t1", "image")),
    ("BraTS2021_00006_t1ce.nii.gz", ("t1ce", "image")),
    ("BraTS2021_00006_t2.nii.gz", ("t2", "image")),
    ("BraTS2021_00006_flair.nii.gz", ("flair", "image")),
    ("BraTS2021_00006_seg.nii.gz", ("labels", "labels")),
    ("BraTS-GLI-00000-000-t1n.nii.gz", ("t1", "image")),
    ("BraTS-GLI-00000-000-t1c.nii.gz", ("t1ce", "image")),
    ("BraTS-GLI-00000-000-t2w.nii.gz", ("t2", "image")),
    ("BraTS-GLI-00000-000-t2f.nii.gz", ("flair", "image")),
    ("BraTS-GLI-00000-000-seg.nii.gz", ("labels", "labels")),
    ("MRHR_T1_AX_POST_GAD_OtherEXampleTCIA_TCGA-FG-6692_Si_TCGA-FG-6692_MRHR_T1_AX_POST_GAD_SE_13"
     "_se2d1r_t1c.nii.gz", ("t1ce", "image")),
    ("T1_AX_OtherEXampleTCIA_TCGA-FG-6692_Si_TCGA-FG-6692_T1_AX_SE_10_se2d1_t1.nii.gz",
     ("t1", "image")),
    ("MRHR_T2_AX_OtherEXampleTCIA_TCGA-FG-6692_Si_TCGA-FG-6692_MRHR_T2_AX_SE_2_tse2d1_11_t2.nii.gz",
     ("t2", "image")),
    ("MRHR_FLAIR_AX_OtherEXampleTCIA_TCGA-FG-6692_Si_TCGA-FG-6692_MRHR_FLAIR_AX_SE_IR_5_tir2d1_21"
     "_fla.nii.gz", ("flair", "image")),
    ("OtherEXampleFromTCIA_fla_bet.nii.gz", ("flair", "image")),
    ("OtherEXampleFromTCIA_t1c_bet.nii.gz", ("t1ce", "image")),
    ("OtherEXampleFromTCIA_t1_bet.nii.gz", ("t1", "image")),
    ("OtherEXampleFromTCIA_t2_bet.nii.gz", ("t2", "image")),
    ("fused_algorithms_seg.nii.gz", ("labels", "labels")),
    ("T2_FLAIR_AX.nii.gz", ("flair", "image")),
    ("t2-flair.nrrd", ("flair", "image")),
    ("sub-01_ce-gadolinium_T1w.nii.gz", ("t1ce", "image")),
    ("sub-01_T1w.nii.gz", ("t1", "image")),
    ("sub-01_T2w.mha", ("t2", "image")),
    ("MPRAGE_POST.nii", ("t1ce", "image")),
    ("tumour_mask.nii.gz", ("labels", "labels")),
    ("label_map.nrrd", ("labels", "labels")),
    ("scan3.nii.gz", (None, "image")),
    ("T2_star_GRE.nii.gz", (None, "image")),
    ("DWI_b1000.nii.gz", (None, "image")),
    # "seg" / "mask" / "label" inside a case id is no label file when a sequence is named
    ("SEGTRUNC_t1.nii.gz", ("t1", "image")),
    ("SEGTRUNC_flair.nii.gz", ("flair", "image")),
    ("SEGTRUNC_seg.nii.gz", ("labels", "labels")),
    ("Masker01_T2w.nii.gz", ("t2", "image")),
    ("brainmask.nii.gz", ("labels", "labels")),
    ("P1_aseg.mgz.nii.gz", ("labels", "labels")),
    ("P1_segmentation.nii.gz", ("labels", "labels")),
    ("segtumour.nii.gz", ("labels", "labels")),
])
def test_detect_sequence_names(name, expected):
    assert detect_sequence(name) == expected


def test_detect_sequence_on_every_shared_file(shared_data):
    """Every sequence file under shared/data is recognised as what its folder says it is."""
    seen = 0
    for case in sorted((shared_data / "brats2021").iterdir()):
        for f in case.glob("*.nii.gz"):
            suffix = f.name[:-7].rsplit("_", 1)[1]
            want = ("labels", "labels") if suffix == "seg" else (suffix, "image")
            assert detect_sequence(f.name) == want, f.name
            seen += 1
    native = shared_data / "tcga-native" / "TCGA-FG-6692"
    for f in sorted(native.rglob("*.nii.gz")):
        name, kind = detect_sequence(f.name)
        if "seg" in f.name:
            assert kind == "labels"
        else:
            tail = f.name[:-7].replace("_bet", "").rsplit("_", 1)[1]
            want = {"t1": "t1", "t1c": "t1ce", "t2": "t2", "fla": "flair"}[tail]
            assert (name, kind) == (want, "image"), f.name
        seen += 1
    assert seen >= 40 + 9


# ------------------------------------------------------------------------------------------------
# shared data


@pytest.fixture(scope="module")
def brats_case():
    return load_case(shared_path("brats2021", "BraTS2021_00006"))


def test_brats_case_loads(brats_case):
    c = brats_case
    assert c.case_id == "BraTS2021_00006" and c.kind == "volume"
    assert c.present == ("t1", "t1ce", "t2", "flair") and c.missing == ()
    for v in c.sequences.values():
        assert v.array.shape == (155, 240, 240) and v.array.dtype == np.float32
        assert v.geometry.spacing == pytest.approx((1, 1, 1))
        assert v.geometry.source_orientation == "LPS"
        assert v.geometry.is_axis_aligned()
    assert c.labels.array.dtype == np.uint8
    assert set(np.unique(c.labels.array)) == {0, 1, 2, 4}
    assert c.on_one_grid() and c.reference == "flair"
    assert c.meta["labels_grid"] == "flair"


def test_brats_cohort_listing_and_scan(shared_data):
    cases = list_cases(shared_data / "brats2021")
    assert [p.name for p in cases] == sorted(p.name for p in (shared_data / "brats2021").iterdir()
                                            if p.is_dir())
    assert len(cases) == 8
    for p in cases:
        s = scan_case(p)
        assert set(s["sequences"]) == {"t1", "t1ce", "t2", "flair"}
        assert s["labels"].endswith("_seg.nii.gz") and not s["unrecognised"]
    with pytest.raises(CaseLoadError, match="cohort folder of 8 case"):
        load_case(shared_data / "brats2021")


@pytest.mark.slow
def test_every_brats_case_loads(shared_data):
    for p in list_cases(shared_data / "brats2021"):
        c = load_case(p)
        assert c.present == ("t1", "t1ce", "t2", "flair") and c.on_one_grid()
        vals = set(np.unique(c.labels.array).tolist())
        assert vals <= {0, 1, 2, 4} and {1, 2} & vals, (p.name, vals)
        if p.name in ("BraTS2021_01477", "BraTS2021_01480", "BraTS2021_01483"):
            assert 4 not in vals          # documented in the data README


def test_native_case_geometry():
    c = load_case(shared_path("tcga-native", "TCGA-FG-6692", "native"))
    assert c.case_id == "native" and c.present == ("t1", "t1ce", "t2", "flair")
    assert c.meta["patient_ids"] == ["TCGA-FG-6692"]        # from its file names
    assert c.labels is None and not c.on_one_grid()
    geoms = {s: v.geometry for s, v in c.sequences.items()}
    for s, g in geoms.items():
        assert g.spacing == pytest.approx((0.898, 0.898, 5.5), abs=0.01), s
        assert g.shape[0] == 26
        assert g.source_orientation == "LAS"          # as scanned; canonical in memory is LPS
        d = g.direction_matrix
        assert np.all(np.diag(d) > 0.9), (s, d)       # LPS voxel order, slightly oblique
        assert not g.is_axis_aligned()
    distinct = []
    for g in geoms.values():
        if not any(g.same_grid(h) for h in distinct):
            distinct.append(g)
    # T1 and T1 post-Gd share one grid in this study; T2 and FLAIR each have their own
    assert len(distinct) == 3
    assert geoms["t1"].same_grid(geoms["t1ce"]) and not geoms["t2"].same_grid(geoms["flair"])


def test_sri24_case_with_fused_labels():
    c = load_case(shared_path("tcga-native", "TCGA-FG-6692", "sri24"))
    assert c.present == ("t1", "t1ce", "t2", "flair") and c.on_one_grid()
    assert c.meta["patient_ids"] == ["TCGA-FG-6692"]        # from the folder holding it
    assert c.labels.path.endswith("fused_algorithms_seg.nii.gz")
    assert set(np.unique(c.labels.array)) <= {0, 1, 2, 4}


def _pack_with_missing(folder):
    with open(folder / "clinical.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["available_t1ce"] in ("0", "False", "false"):
                return row["patient_id"]
    return None


def test_tcga_lgg_pack():
    folder = shared_path("tcga-lgg")
    c = load_case(folder / "TCGA_CS_4941.h5")
    assert c.kind == "slices" and c.case_id == "TCGA_CS_4941"
    assert c.present == ("t1", "t1ce", "flair")
    n = c.sequences["flair"].array.shape[0]
    assert c.sequences["flair"].array.shape == (n, 128, 128)
    g = c.geometry
    assert g.nominal and g.spacing == pytest.approx((1.875, 1.875, 5.0))
    assert set(np.unique(c.labels.array)) <= {0, 1} and c.labels.array.any()
    assert "FLAIR abnormality" in c.meta["labels_meaning"]
    assert c.clinical["idh"] in ("mutant", "wildtype") and c.clinical["n_slices"] == n
    with h5py.File(folder / "TCGA_CS_4941.h5") as f:
        assert np.array_equal(c.sequences["t1ce"].array, f["image"][:, 2].astype(np.float32))
    pid = _pack_with_missing(folder)
    assert pid is not None
    c2 = load_case(folder / f"{pid}.h5")
    assert "t1ce" not in c2.sequences and "t1ce" in c2.meta["unavailable"]


def test_pack_through_a_symlink_finds_its_clinical_table(tmp_path):
    """A pack linked into another folder (a user's own cohort of links) still reads the
    clinical table beside the real file."""
    folder = shared_path("tcga-lgg")
    link = tmp_path / "TCGA_CS_4941.h5"
    link.symlink_to(folder / "TCGA_CS_4941.h5")
    c = load_case(link)
    assert c.clinical and c.clinical == load_case(folder / "TCGA_CS_4941.h5").clinical


def test_unknown_model_lists_the_models_of_its_task():
    from napari_radiogen.core.errors import ModelFileError
    from napari_radiogen.core.models import list_models, load_model
    with pytest.raises(ModelFileError) as e:
        load_model("nosuchmodel", task="segmentation")
    msg = str(e.value)
    assert "segmentation models:" in msg
    for m in list_models():
        assert (m["name"] in msg) == (m.get("task") == "segmentation"), m["name"]


def test_tcga_lgg_cohort_and_4class_is_not_a_case(shared_data):
    packs = list_cases(shared_data / "tcga-lgg")
    assert len(packs) == len(list((shared_data / "tcga-lgg").glob("*.h5"))) and len(packs) > 50
    assert all(p.suffix == ".h5" for p in packs)
    with pytest.raises(CaseLoadError, match="no MRI volumes found"):
        load_case(shared_data / "brain-tumour-4class")
    with pytest.raises(CaseLoadError, match="no MRI volumes found"):
        list_cases(shared_data / "brain-tumour-4class")
    assert [p.name for p in list_cases(shared_data / "tcga-native")] == ["native", "sri24"]


# ------------------------------------------------------------------------------------------------
# round trips through the writers


def test_roundtrip_brats_seg_nibabel(brats_case, tmp_path):
    src = Path(brats_case.labels.path)
    out = write_volume(brats_case.labels.array, brats_case.labels.geometry,
                       tmp_path / "seg.nii.gz", labels=True)
    a, b = nib.load(str(src)), nib.load(str(out))
    assert np.allclose(a.affine, b.affine, atol=1e-5)
    assert np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
    assert b.get_data_dtype() == np.uint8


def test_roundtrip_native_non_lps_nibabel(tmp_path):
    folder = shared_path("tcga-native", "TCGA-FG-6692", "native")
    src = next(folder.glob("*FLAIR*fla.nii.gz"))
    v = load_volume(src)
    assert v.geometry.source_orientation == "LAS"
    thr = float(np.percentile(v.array, 90))
    lab = (v.array > thr).astype(np.uint8)
    lab[v.array > np.percentile(v.array, 99)] = 2
    for name in ("lab.nii.gz", "lab.nii"):
        out = write_volume(lab, v.geometry, tmp_path / name, labels=True)
        a, b = nib.load(str(src)), nib.load(str(out))
        assert np.allclose(a.affine, b.affine, atol=1e-5), (a.affine, b.affine)
        data = np.asarray(a.dataobj).astype(np.float32)
        want = (data > thr).astype(np.uint8)
        want[data > np.percentile(v.array, 99)] = 2
        assert np.array_equal(np.asarray(b.dataobj), want)
    # and back through our reader: same canonical array and geometry
    back = load_volume(tmp_path / "lab.nii.gz", labels=True)
    assert np.array_equal(back.array, lab) and back.geometry.same_grid(v.geometry)


@pytest.mark.parametrize("ext", [".nrrd", ".mha", ".nii.gz", ".nhdr", ".mhd"])
def test_roundtrip_formats(tmp_path, ext):
    oblique = sitk.Euler3DTransform((0, 0, 0), 0.1, 0.0, 0.2).GetMatrix()
    src = write_sitk(blob(), tmp_path / "src.nii.gz", spacing=(0.9, 1.1, 3.0),
                     origin=(10.0, -20.0, 30.0), direction=oblique)
    v = load_volume(src)
    out = write_volume(v.array * 2, v.geometry, tmp_path / f"out{ext}")
    w = load_volume(out)
    assert w.geometry.same_grid(v.geometry)
    assert np.allclose(w.array, v.array * 2)
    r = sitk.ReadImage(str(out))
    assert np.allclose(r.GetDirection(), oblique, atol=1e-6)


def test_write_volume_errors(tmp_path):
    g = Geometry(size=(4, 5, 6), spacing=(1, 1, 1), origin=(0, 0, 0))
    with pytest.raises(GeometryError):
        write_volume(np.zeros((3, 3, 3)), g, tmp_path / "x.nii.gz")
    with pytest.raises(WriteError, match="file type"):
        write_volume(np.zeros(g.shape), g, tmp_path / "x.png")
    with pytest.raises(WriteError, match="0..255"):
        write_volume(np.full(g.shape, 300), g, tmp_path / "x.nii.gz", labels=True)
    assert issubclass(WriteError, RadiogenError)


def test_pack_mask_roundtrip_and_synthetic_pack(tmp_path):
    n = 5
    img = np.random.default_rng(1).integers(0, 255, (n, 3, 16, 16), dtype=np.uint8)
    mask = np.zeros((n, 16, 16), np.uint8)
    mask[2, 4:9, 4:9] = 1
    with h5py.File(tmp_path / "P1.h5", "w") as f:
        f.create_dataset("image", data=img)
        f.create_dataset("mask", data=mask)
        f.attrs["available"] = np.array([False, True, True])
        f.attrs["channel_names"] = np.array(["t1", "flair", "t1ce"], dtype=object)
    with open(tmp_path / "clinical.csv", "w") as f:
        f.write("patient_id,idh,age_at_initial_pathologic\nP1,mutant,41\nP2,wildtype,60\n")
    c = load_case(tmp_path / "P1.h5")
    assert c.present == ("t1ce", "flair") and c.meta["unavailable"] == ["t1"]
    assert np.array_equal(c.sequences["flair"].array, img[:, 1].astype(np.float32))
    assert c.clinical == {"patient_id": "P1", "idh": "mutant", "age_at_initial_pathologic": 41}
    out = write_pack_mask(c.labels.array, tmp_path / "out" / "P1_mask.h5")
    with h5py.File(out) as f:
        assert np.array_equal(f["mask"][()], mask) and f["mask"].dtype == np.uint8
    assert list_cases(tmp_path) == [tmp_path / "P1.h5"]
    with pytest.raises(CaseLoadError, match="reference sequence 't2'"):
        load_case(tmp_path / "P1.h5", reference="t2")
    assert load_case(tmp_path / "P1.h5", reference="t1ce").reference == "t1ce"


# ------------------------------------------------------------------------------------------------
# synthetic cases: success paths


def test_synthetic_case_brats2023_names_and_label_map(tmp_path):
    f = make_case(tmp_path / "BraTS-GLI-00001-000", names=("t1n", "t1c", "t2w", "t2f"),
                  seg=False, prefix="BraTS-GLI-00001-000", sep="-")
    lab = np.zeros((12, 20, 16), np.uint8)
    lab[4:8, 8:12, 6:10] = 2
    lab[5:7, 9:11, 7:9] = 3                      # BraTS 2023 enhancing tumour
    write_sitk(lab, f / "BraTS-GLI-00001-000-seg.nii.gz")
    c = load_case(f)
    assert c.case_id == "BraTS-GLI-00001-000" and c.present == ("t1", "t1ce", "t2", "flair")
    assert set(np.unique(c.labels.array)) == {0, 2, 4} and "3->4" in c.labels.meta["label_map"]


def test_single_file_case_and_overrides(tmp_path):
    p = write_sitk(blob(), tmp_path / "BraTS2021_00099_flair.nii.gz")
    c = load_case(p)
    assert c.case_id == "BraTS2021_00099" and c.present == ("flair",)
    q = write_sitk(blob(), tmp_path / "scan3.nii.gz")
    with pytest.raises(CaseLoadError, match="--sequence scan3.nii.gz=SEQ"):
        load_case(q)
    assert load_case(q, overrides={"scan3.nii.gz": "t2"}).present == ("t2",)
    assert load_case(q, overrides={"T1c": "scan3.nii.gz"}).present == ("t1ce",)   # seq -> file
    with pytest.raises(CaseLoadError, match="one side must be a sequence"):
        load_case(q, overrides={"scan3.nii.gz": "pd"})
    with pytest.raises(CaseLoadError, match="labels file on its own"):
        load_case(write_sitk(np.zeros((4, 5, 6), np.uint8), tmp_path / "x_seg.nii.gz"))


def test_folder_overrides_and_unrecognised_files(tmp_path):
    f = make_case(tmp_path / "c1", names=("t1", "flair"))
    write_sitk(blob(), f / "series7.nii.gz")
    (f / "notes.txt").write_text("hello")
    c = load_case(f)
    assert c.present == ("t1", "flair") and c.meta["unrecognised"] == ["series7.nii.gz"]
    c = load_case(f, overrides={"series7": "t2"}, reference="t1")
    assert c.present == ("t1", "t2", "flair") and c.reference == "t1"
    assert c.meta["overrides"] == ["series7.nii.gz=t2"]
    c = load_case(f, overrides={"CASE_001_t1.nii.gz": "ignore"})
    assert c.present == ("flair",)
    with pytest.raises(CaseLoadError, match="names no file"):
        load_case(f, overrides={"nothere.nii.gz": "t2"})


def test_a_case_named_by_its_folder_keeps_the_patient_id_of_its_file_names(tmp_path):
    """A case folder with a generic name (``native``) is the case ``native``; the patient id
    its file names (or the folder holding it) carry is kept for the in-sample check, which
    then warns as it does for a case named by the id; names that disagree give none."""
    from napari_radiogen.core.insample import PREDICTION, case_patient_ids, in_sample_note
    c = load_case(make_case(tmp_path / "native", names=("t1", "flair"), seg=False,
                            prefix="MR_AX_TCIA_TCGA_AB_1234_Si"))
    assert c.case_id == "native" and case_patient_ids(c) == ["TCGA_AB_1234"]
    card = {"training_data": {"patients": ["TCGA-AB-1234", "TCGA-CS-0001"]}}
    note = in_sample_note(c.case_id, "m", card, PREDICTION, case_patient_ids(c))
    assert note is not None and note.startswith("native: its file names or DICOM headers carry "
                                                "the id of a patient in m's training data")
    assert "1234" not in note                  # outputs are de-identified: no patient id
    assert in_sample_note(c.case_id, "m", card, PREDICTION) is None     # the id alone: none
    assert in_sample_note(c.case_id, "m", {"training_data": {"patients": ["TCGA-CS-0001"]}},
                          PREDICTION, case_patient_ids(c)) is None
    held = load_case(make_case(tmp_path / "TCGA-XY-0042" / "pre", names=("flair",), seg=False))
    assert case_patient_ids(held) == ["TCGA-XY-0042"]
    named = load_case(make_case(tmp_path / "TCGA-XY-0043", names=("flair",), seg=False))
    assert case_patient_ids(named) == []                      # its id already is one
    mixed = make_case(tmp_path / "two", names=("flair",), seg=False, prefix="TCGA-AA-0001")
    make_case(mixed, names=("t1",), seg=False, prefix="TCGA-BB-0002")
    assert case_patient_ids(load_case(mixed)) == []           # two patients: none taken


def test_list_cases_synthetic_cohort(tmp_path):
    make_case(tmp_path / "coh" / "A")
    make_case(tmp_path / "coh" / "B", names=("flair",), seg=False)
    (tmp_path / "coh" / "README.txt").write_text("x")
    assert [p.name for p in list_cases(tmp_path / "coh")] == ["A", "B"]
    assert list_cases(tmp_path / "coh" / "A") == [tmp_path / "coh" / "A"]
    with pytest.raises(CaseLoadError, match="cohort folder of 2"):
        load_case(tmp_path / "coh")


# ------------------------------------------------------------------------------------------------
# bad input: one clear error each


def test_missing_and_empty(tmp_path):
    with pytest.raises(CaseLoadError, match="no such file"):
        load_case(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CaseLoadError, match="empty folder"):
        load_case(tmp_path / "empty")
    with pytest.raises(CaseLoadError, match="empty folder"):
        list_cases(tmp_path / "empty")
    (tmp_path / "x_flair.nii.gz").write_bytes(b"")
    with pytest.raises(CaseLoadError, match=r"x_flair.nii.gz: empty file"):
        load_volume(tmp_path / "x_flair.nii.gz")
    (tmp_path / "pic.png").write_bytes(b"\x89PNG....")
    with pytest.raises(CaseLoadError, match="unsupported file type"):
        load_volume(tmp_path / "pic.png")


def test_truncated_and_corrupt_files(tmp_path):
    p = write_sitk(blob((20, 30, 40)), tmp_path / "ok_t1.nii.gz")
    data = p.read_bytes()
    (tmp_path / "trunc_t1.nii.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(CaseLoadError, match=r"trunc_t1.nii.gz: truncated gzip"):
        load_volume(tmp_path / "trunc_t1.nii.gz")
    raw = gzip.decompress(data)
    (tmp_path / "trunc_t1.nii").write_bytes(raw[: len(raw) - 1000])
    with pytest.raises(CaseLoadError, match=r"trunc_t1.nii: truncated NIfTI"):
        load_volume(tmp_path / "trunc_t1.nii")
    (tmp_path / "bad_t1.nii.gz").write_bytes(gzip.compress(b"this is not a nifti header" * 3))
    with pytest.raises(CaseLoadError, match=r"bad_t1.nii.gz: not a valid NIfTI"):
        load_volume(tmp_path / "bad_t1.nii.gz")
    (tmp_path / "junk_t1.nii.gz").write_bytes(b"\x1f\x8b\x08\x00" + b"\xff" * 200)
    with pytest.raises(CaseLoadError, match=r"junk_t1.nii.gz: (corrupt|truncated) gzip"):
        load_volume(tmp_path / "junk_t1.nii.gz")
    q = write_sitk(blob(), tmp_path / "ok.mha")
    d = q.read_bytes()
    (tmp_path / "trunc.mha").write_bytes(d[: len(d) * 3 // 4])
    with pytest.raises(CaseLoadError, match=r"trunc.mha: truncated MetaImage file") as ei:
        load_volume(tmp_path / "trunc.mha")
    assert "No such file" not in str(ei.value)      # ITK's text said so of an existing file
    # a case folder with one truncated file fails as a whole (nothing half-loaded)
    f = make_case(tmp_path / "case", names=("t1", "flair"))
    (f / "CASE_001_flair.nii.gz").write_bytes(data[: len(data) // 3])
    with pytest.raises(CaseLoadError, match="CASE_001_flair.nii.gz: truncated gzip"):
        load_case(f)


def test_dimensionality_errors(tmp_path):
    write_sitk(np.zeros((20, 30), np.float32), tmp_path / "two_t1.nii.gz")
    with pytest.raises(CaseLoadError, match=r"two_t1.nii.gz: 2D image"):
        load_volume(tmp_path / "two_t1.nii.gz")
    write_sitk(np.zeros((1, 20, 30), np.float32), tmp_path / "flat_t1.nii.gz")
    with pytest.raises(CaseLoadError, match=r"2D image"):
        load_volume(tmp_path / "flat_t1.nii.gz")
    aff = np.diag([-1.0, -1.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(np.zeros((6, 7, 8, 3), np.float32), aff), tmp_path / "four.nii.gz")
    with pytest.raises(CaseLoadError, match=r"four.nii.gz: 4D image with 3 volumes"):
        load_volume(tmp_path / "four.nii.gz")
    arr = np.arange(6 * 7 * 8, dtype=np.float32).reshape(6, 7, 8, 1)
    nib.save(nib.Nifti1Image(arr, aff), tmp_path / "single.nii.gz")
    v = load_volume(tmp_path / "single.nii.gz")
    assert v.array.shape == (8, 7, 6) and v.geometry.spacing == pytest.approx((1, 1, 2))
    assert np.array_equal(v.array, np.transpose(arr[..., 0], (2, 1, 0)))   # RAS diag(-1,-1,+) = LPS
    rgb = sitk.Compose([sitk.Image(5, 6, 7, sitk.sitkUInt8)] * 3)
    sitk.WriteImage(rgb, str(tmp_path / "rgb.nrrd"))
    with pytest.raises(CaseLoadError, match="3 values per voxel"):
        load_volume(tmp_path / "rgb.nrrd")


def test_nan_inf_voxels(tmp_path):
    a = blob()
    a[0, 0, :3] = np.nan
    a[1, 1, 1] = np.inf
    write_sitk(a, tmp_path / "nan_t2.nii.gz")
    with pytest.raises(CaseLoadError, match=r"nan_t2.nii.gz: 4 NaN/Inf voxel"):
        load_volume(tmp_path / "nan_t2.nii.gz")       # ITK alone would read NaN as 0
    write_sitk(a, tmp_path / "nan_t2.nrrd")
    with pytest.raises(CaseLoadError, match=r"nan_t2.nrrd: 4 NaN/Inf voxel"):
        load_volume(tmp_path / "nan_t2.nrrd")
    b = np.zeros((4, 5, 6), np.float32)
    b[0, 0, 0] = 1.5
    write_sitk(b, tmp_path / "frac_seg.nii.gz")
    with pytest.raises(CaseLoadError, match="non-integer"):
        load_volume(tmp_path / "frac_seg.nii.gz")


def test_nan_share_is_said_as_a_readable_percentage(tmp_path):
    """100% reads "100%" (was "1e+02%"), small shares keep two significant digits."""
    a = np.full((12, 20, 16), np.nan, np.float32)
    write_sitk(a, tmp_path / "all_t2.nii.gz")
    with pytest.raises(CaseLoadError, match=r"3840 NaN/Inf voxel\(s\) of 3840 \(100%\)") as e:
        load_volume(tmp_path / "all_t2.nii.gz")
    assert "e+" not in str(e.value)
    b = blob()
    b.flat[:21] = np.nan                                  # 21 of 3840 = 0.546875 %
    write_sitk(b, tmp_path / "few_t2.nrrd")               # the ITK path (not nibabel's)
    with pytest.raises(CaseLoadError, match=r"\(0\.55%\)"):
        load_volume(tmp_path / "few_t2.nrrd")
    write_sitk(b, tmp_path / "few_t2.nii.gz")
    with pytest.raises(CaseLoadError, match=r"\(0\.55%\)"):
        load_volume(tmp_path / "few_t2.nii.gz")
    c = blob()
    c.flat[:3839] = np.inf                                # all but one: not rounded to 100%
    write_sitk(c, tmp_path / "most_t2.mha")
    with pytest.raises(CaseLoadError, match=r"\(>99\.9%\)"):
        load_volume(tmp_path / "most_t2.mha")


def test_duplicate_and_unknown_sequences(tmp_path):
    f = make_case(tmp_path / "dup", names=("t1", "flair"))
    write_sitk(blob(), f / "other_FLAIR_AX.nii.gz")
    with pytest.raises(CaseLoadError, match=r"two files claim the sequence 'flair': "
                                            r"CASE_001_flair.nii.gz and other_FLAIR_AX.nii.gz"):
        load_case(f)
    assert load_case(f, overrides={"other_FLAIR_AX.nii.gz": "ignore"}).present == ("t1", "flair")
    g = tmp_path / "unk"
    g.mkdir()
    write_sitk(blob(), g / "scan1.nii.gz")
    write_sitk(blob(), g / "scan2.mha")
    with pytest.raises(CaseLoadError, match=r"no recognised sequence.*scan1.nii.gz, scan2.mha"):
        load_case(g)
    h = make_case(tmp_path / "twoseg", names=("t1",))
    write_sitk(np.zeros((12, 20, 16), np.uint8), h / "mask.nii.gz")
    with pytest.raises(CaseLoadError, match="two files claim the labels"):
        load_case(h)


def test_grids_that_cannot_be_combined(tmp_path):
    f = make_case(tmp_path / "far", names=("t1",), seg=False)
    write_sitk(blob(), f / "CASE_001_flair.nii.gz", origin=(500.0, 0.0, 0.0))
    with pytest.raises(GridError, match="do not overlap in space") as e:
        load_case(f)
    assert isinstance(e.value, CaseLoadError) and isinstance(e.value, GeometryError)
    # different but overlapping grids are fine (native scans), labels must match one of them
    g = make_case(tmp_path / "shifted", names=("t1",), seg=False)
    write_sitk(blob((10, 20, 16)), g / "CASE_001_flair.nii.gz", origin=(3.0, 2.0, 1.0),
               spacing=(1.0, 1.0, 1.2))
    c = load_case(g)
    assert not c.on_one_grid()
    write_sitk(np.zeros((12, 20, 17), np.uint8), g / "CASE_001_seg.nii.gz")
    c = load_case(g)                     # the images are still a case; the labels left out
    assert c.labels is None and c.present == ("t1", "flair")
    assert any("CASE_001_seg.nii.gz" in w and "on no sequence's grid" in w
               and "left out" in w for w in c.meta["warnings"])


# ------------------------------------------------------------------------------------------------
# DICOM


def test_dicom_series_roundtrip(tmp_path):
    arr = (blob((6, 20, 16)) * 10).astype(np.int16)
    d = write_dicom_series(arr, tmp_path / "FLAIR_AX", description="AX FLAIR")
    v = load_volume(d)
    assert v.array.shape == (6, 20, 16) and v.array.dtype == np.float32
    assert np.array_equal(v.array, arr.astype(np.float32))
    assert v.geometry.spacing == pytest.approx((0.9, 0.9, 3.0), abs=1e-4)
    assert v.geometry.origin == pytest.approx((-10.0, -12.0, 5.0), abs=1e-4)
    assert v.meta["series_description"] == "AX FLAIR"
    # a single file of the series reads the whole series
    assert load_volume(d / "IM0003.dcm").array.shape == (6, 20, 16)
    c = load_case(d)
    assert c.present == ("flair",) and c.case_id == "FLAIR_AX"


def test_dicom_two_series_in_one_folder(tmp_path):
    d = tmp_path / "study"
    write_dicom_series(blob((5, 16, 16)), d, description="T1 AX POST GAD", start_index=0,
                       series_uid="1.2.826.0.1.3680043.2.1125.42.1")
    write_dicom_series(blob((5, 16, 16), seed=3), d, description="T2 FLAIR AX", start_index=100,
                       series_uid="1.2.826.0.1.3680043.2.1125.42.2")
    with pytest.raises(CaseLoadError, match=r"2 DICOM series.*T1 AX POST GAD.*T2 FLAIR AX"):
        load_volume(d)
    v = load_volume(d, series="flair")
    assert v.meta["series_description"] == "T2 FLAIR AX" and v.array.shape == (5, 16, 16)
    assert load_volume(d, series="42.1").meta["series_description"] == "T1 AX POST GAD"
    with pytest.raises(CaseLoadError, match="no DICOM series matches 'dwi'"):
        load_volume(d, series="dwi")
    c = load_case(d)                                # descriptions name distinct sequences
    assert c.present == ("t1ce", "flair") and c.on_one_grid()
    c = load_case(d, series="FLAIR")
    assert c.present == ("flair",)
    # series in subfolders of a case folder
    e = tmp_path / "case"
    write_dicom_series(blob((5, 16, 16)), e / "T1", description="", series_uid="1.2.3.4.1")
    write_dicom_series(blob((5, 16, 16)), e / "T2", description="", series_uid="1.2.3.4.2")
    c = load_case(e)
    assert c.present == ("t1", "t2") and c.case_id == "case"


def test_broken_dicom(tmp_path):
    d = tmp_path / "broken"
    d.mkdir()
    for i in range(3):
        (d / f"IM{i}.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"\x01\x02" * 50)
    with pytest.raises(CaseLoadError, match="no readable DICOM series"):
        load_volume(d)
    with pytest.raises(CaseLoadError, match="no readable DICOM series"):
        load_case(d)
    e = write_dicom_series(blob((5, 16, 16)), tmp_path / "cut", description="T1 AX")
    f = sorted(e.glob("*.dcm"))[2]
    f.write_bytes(f.read_bytes()[:400])
    with pytest.raises(CaseLoadError, match="missing slices"):
        load_volume(e)                 # ITK alone drops the slice and stretches the spacing
    single = write_dicom_series(blob((1, 16, 16)), tmp_path / "one", description="T1 AX")
    with pytest.raises(CaseLoadError, match="single slice"):
        load_volume(single)


# ------------------------------------------------------------------------------------------------


def test_io_imports_no_torch_or_qt():
    code = ("import sys, napari_radiogen.core.io as m; "
            "bad = [k for k in ('torch', 'napari', 'qtpy', 'PyQt6', 'magicgui') if k in sys.modules];"
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_flat_cohort_folder_of_volume_groups(tmp_path):
    f = tmp_path / "flat"
    make_case(f, names=("t1", "flair"), prefix="P1")
    make_case(f, names=("t1", "flair"), seg=False, prefix="P2")
    cases = list_cases(f)
    assert [p.name for p in cases] == ["P1", "P2"] and all(p.parent == f for p in cases)
    c = load_case(cases[0])
    assert c.case_id == "P1" and c.present == ("t1", "flair") and c.labels is not None
    assert scan_case(cases[1])["sequences"] == {"t1": "P2_t1.nii.gz", "flair": "P2_flair.nii.gz"}
    with pytest.raises(CaseLoadError, match="cohort folder of 2"):
        load_case(f)
    with pytest.raises(CaseLoadError, match="no such file"):
        load_case(f / "P3")


def test_dicom_two_series_same_sequence_needs_a_choice(tmp_path):
    d = tmp_path / "study"
    write_dicom_series(blob((5, 16, 16)), d, description="T1 AX", series_uid="1.2.3.9.1")
    write_dicom_series(blob((5, 16, 16)), d, description="T1 SAG", series_uid="1.2.3.9.2",
                       start_index=100)
    with pytest.raises(CaseLoadError, match=r"two series claim the sequence 't1'.*"
                                            r"UID 1\.2\.3\.9\.1\b.*UID 1\.2\.3\.9\.2\b.*"
                                            r"--sequence UID=ignore"):
        load_case(d)
    assert load_case(d, series="T1 SAG").meta["files"] == {"t1": "series 'T1 SAG'"}
    c = load_case(d, overrides={"T1 SAG": "t1ce"})
    assert c.present == ("t1", "t1ce")


def _export(folder, patient, study, descriptions, *, by_number=True, seed=0, first=1,
            study_date=None):
    """A scanner/PACS export of one study: a numbered subfolder per series (001/ 002/ ...,
    from ``first``), or (``by_number=False``) every series' files in ``folder`` itself."""
    for i, desc in enumerate(descriptions, first):
        sub = folder / f"{i:03d}" if by_number else folder
        write_dicom_series((blob((4, 16, 16), seed=seed + i) * 10).astype(np.int16), sub,
                           description=desc, patient=patient, study_uid=study,
                           series_uid=f"{study}.{i}", series_number=i,
                           start_index=100 * i + 1000 * seed, study_date=study_date)


def test_an_export_of_two_studies_of_one_patient_is_one_case_of_one_session(tmp_path):
    """001/ 002/ from a first visit and 003/ 004/ from a follow-up (one patient, a subfolder
    per series) are one case, not a cohort of one-series cases; series of studies acquired on
    different dates are refused, each study's series named (not the dates), and leaving one
    study out reads the other; studies of one day are one session; subfolders that are each a
    study of their own stay a cohort."""
    from napari_radiogen.core.io import scan_folder
    a, b = "1.2.826.0.1.3680043.2.1125.8.1", "1.2.826.0.1.3680043.2.1125.8.2"
    ex = tmp_path / "export"
    _export(ex, "PHANTOM1", a, ["AX FLAIR", "AX T1 SE"], study_date="20200101")
    _export(ex, "PHANTOM1", b, ["AX T2 TSE", "AX FLAIR"], first=3, study_date="20210601")
    assert scan_folder(ex).kind == "case" and list_cases(ex) == [ex]
    with pytest.raises(CaseLoadError) as e:
        load_case(ex)
    msg = str(e.value)
    assert "2 studies acquired on different dates" in msg, msg
    assert f"study 1: 001/ series 'AX FLAIR'" in msg and f"UID {b}.3" in msg, msg
    assert "--sequence UID=ignore" in msg and "2020" not in msg and "2021" not in msg
    # napari's Open cannot pass --sequence: the viewer says to separate the studies' series
    from napari_radiogen.napari.reader import get_reader
    with pytest.raises(CaseLoadError) as e:
        get_reader(str(ex))(str(ex))
    assert "move each study's series into a folder of their own" in str(e.value)
    assert "--sequence" not in str(e.value)
    c = load_case(ex, overrides={f"{b}.3": "ignore", f"{b}.4": "ignore"})
    assert c.present == ("t1", "flair")
    assert c.sequences["flair"].meta["series_uid"] == f"{a}.1"
    # one day, two studies (e.g. a contrast series sent as a study of its own): one session
    day = tmp_path / "day"
    _export(day, "PHANTOM1", a, ["AX FLAIR", "AX T1 SE"], study_date="20200101")
    _export(day, "PHANTOM1", b, ["AX T2 TSE"], first=3, study_date="20200101")
    assert load_case(day).present == ("t1", "t2", "flair")
    # a subfolder per study (each holding its series): a cohort of visits, as before
    visits = tmp_path / "visits"
    _export(visits / "v1", "PHANTOM1", a, ["AX FLAIR", "AX T1 SE"], by_number=False,
            study_date="20200101")
    _export(visits / "v2", "PHANTOM1", b, ["AX FLAIR", "AX T2 TSE"], by_number=False,
            study_date="20210601")
    assert scan_folder(visits).kind == "cohort"
    assert list_cases(visits) == [visits / "v1", visits / "v2"]


def test_a_study_exported_with_a_subfolder_per_series_is_one_case(tmp_path):
    """001/ 002/ 003/, each one series of one patient's study (the usual export layout), is one
    case whose sequences come from the SeriesDescription (was: a cohort of one case per
    series, none recognised); subfolders of different patients stay a cohort."""
    from napari_radiogen.core.io import scan_folder
    case = tmp_path / "study"
    _export(case, "PHANTOM1", "1.2.826.0.1.3680043.2.1125.5.1",
            ["AX FLAIR", "AX T1 SE", "AX T2 TSE"])
    assert scan_folder(case).kind == "case" and list_cases(case) == [case]
    c = load_case(case)
    assert c.present == ("t1", "t2", "flair") and c.case_id == "study"
    assert c.meta["files"]["flair"] == "001/ series 'AX FLAIR'"
    assert scan_case(case)["sequences"] == {"flair": "001/", "t1": "002/", "t2": "003/"}
    assert scan_case(case)["unrecognised"] == []
    # a cohort of such exports: one case per patient folder, its sequences listed
    coh = tmp_path / "cohort"
    _export(coh / "PA", "PHANTOM1", "1.2.826.0.1.3680043.2.1125.5.2", ["AX FLAIR", "AX T1 SE"])
    _export(coh / "PB", "PHANTOM2", "1.2.826.0.1.3680043.2.1125.5.3", ["AX FLAIR", "AX T2 TSE"])
    assert list_cases(coh) == [coh / "PA", coh / "PB"]
    assert set(scan_case(coh / "PB")["sequences"]) == {"flair", "t2"}
    # a folder of patients' series (different patients and studies): still a cohort
    mixed = tmp_path / "patients"
    _export(mixed / "001", "PHANTOM1", "1.2.826.0.1.3680043.2.1125.5.4", ["AX FLAIR"],
            by_number=False)
    _export(mixed / "002", "PHANTOM2", "1.2.826.0.1.3680043.2.1125.5.5", ["AX FLAIR"],
            by_number=False)
    assert scan_folder(mixed).kind == "cohort"
    assert list_cases(mixed) == [mixed / "001", mixed / "002"]


def test_dicom_series_of_two_patients_are_not_one_case(tmp_path):
    """Series of two patients (PatientID) in one folder are refused, each patient's series
    named by description and UID (the patients' ids are not written); leaving one patient's
    series out with --sequence UID=ignore reads the other's."""
    from napari_radiogen.napari.reader import get_reader
    d = tmp_path / "mixed"
    _export(d, "PHANTOM1", "1.2.826.0.1.3680043.2.1125.6.1", ["AX FLAIR"], by_number=False)
    _export(d, "PHANTOM2", "1.2.826.0.1.3680043.2.1125.6.2", ["AX FLAIR", "AX T1 SE"],
            by_number=False, seed=5)
    with pytest.raises(CaseLoadError) as e:
        load_case(d)
    msg = str(e.value)
    assert "DICOM series of 2 different patients" in msg, msg
    assert re.search(r"patient 1: series 'AX FLAIR' \(series number 1, 4 files, "
                     r"UID 1\.2\.826\.0\.1\.3680043\.2\.1125\.6\.1\.1\); patient 2: ", msg), msg
    assert "--sequence UID=ignore" in msg and "PHANTOM" not in msg
    c = load_case(d, overrides={"1.2.826.0.1.3680043.2.1125.6.1.1": "ignore"})
    assert c.present == ("t1", "flair")
    assert c.sequences["flair"].meta["series_uid"] == "1.2.826.0.1.3680043.2.1125.6.2.1"
    # the same series in sequence-named subfolders: refused too
    e2 = tmp_path / "named"
    _export(e2 / "FLAIR", "PHANTOM1", "1.2.826.0.1.3680043.2.1125.6.3", ["AX FLAIR"],
            by_number=False)
    _export(e2 / "T1", "PHANTOM2", "1.2.826.0.1.3680043.2.1125.6.4", ["AX T1 SE"],
            by_number=False)
    with pytest.raises(CaseLoadError, match="2 different patients"):
        load_case(e2)
    # the viewer cannot pass --sequence: it says to separate the patients' files
    with pytest.raises(CaseLoadError) as e:
        get_reader(str(d))(str(d))
    assert "move each patient's files into a folder of their own" in str(e.value)


def test_two_series_of_one_description_are_told_apart_by_uid(tmp_path):
    """Two series 'AX FLAIR' (a repeat): the error lists each one's series number and UID and
    says --sequence UID=ignore, which works even where one UID begins the other; the
    description matches both, which the override error says with the UIDs; the viewer's
    advice works for a flat folder (no series folder to open)."""
    from napari_radiogen.napari.reader import get_reader
    d = tmp_path / "study"
    st = "1.2.826.0.1.3680043.2.1125.7"
    for i, (desc, uid) in enumerate([("AX FLAIR", f"{st}.1"), ("AX FLAIR", f"{st}.10"),
                                     ("AX T1 SE", f"{st}.2")]):
        write_dicom_series((blob((4, 16, 16), seed=i) * 10).astype(np.int16), d,
                           description=desc, series_uid=uid, series_number=i + 1,
                           start_index=100 * i)
    with pytest.raises(CaseLoadError) as e:
        load_case(d)
    msg = str(e.value)
    assert (f"two series claim the sequence 'flair': series 'AX FLAIR' (series number 1, 4 "
            f"files, UID {st}.1); series 'AX FLAIR' (series number 2, 4 files, UID {st}.10); "
            "leave one out with --sequence UID=ignore") in msg, msg
    assert "--series" not in msg
    c = load_case(d, overrides={f"{st}.1": "ignore"})          # exact UID, not a prefix
    assert c.present == ("t1", "flair") and c.sequences["flair"].meta["series_uid"] == f"{st}.10"
    c = load_case(d, overrides={f"{st}.10": "ignore"})
    assert c.sequences["flair"].meta["series_uid"] == f"{st}.1"
    with pytest.raises(CaseLoadError, match=rf"matches 2 series .*UID {re.escape(st)}\.1\).*"
                                            r"name the series by its UID"):
        load_case(d, overrides={"AX FLAIR": "ignore"})
    with pytest.raises(CaseLoadError) as e:
        get_reader(str(d))(str(d))
    vmsg = str(e.value)
    assert "move the files of all but one of them out of the case folder" in vmsg, vmsg
    assert "open one series folder" not in vmsg and "--series" not in vmsg


def test_dicom_series_whose_descriptions_say_no_sequence(tmp_path):
    """Descriptions that say nothing ('Series 1'): the CLI advice names them by description
    or UID; the viewer's says to put each series in a subfolder named after its sequence,
    which reads."""
    from napari_radiogen.napari.reader import get_reader
    d = tmp_path / "study"
    _export(d, "PHANTOM1", "1.2.826.0.1.3680043.2.1125.8.1", ["Series 1", "Series 2"],
            by_number=False)
    with pytest.raises(CaseLoadError, match=r"among the DICOM series: series 'Series 1', series "
                                            r"'Series 2'; name them with --sequence "
                                            r"'DESCRIPTION=SEQ' \(or UID=SEQ\)"):
        load_case(d)
    assert load_case(d, overrides={"Series 1": "t1", "Series 2": "flair"}).present == (
        "t1", "flair")
    with pytest.raises(CaseLoadError) as e:
        get_reader(str(d))(str(d))
    vmsg = str(e.value)
    assert "subfolder of its own named after its sequence (T1/, T1CE/, T2/, FLAIR/)" in vmsg
    assert "CASE_flair.nii.gz" not in vmsg
    e2 = tmp_path / "sorted"
    _export(e2 / "T1", "PHANTOM1", "1.2.826.0.1.3680043.2.1125.8.2", ["Series 1"], by_number=False)
    _export(e2 / "FLAIR", "PHANTOM1", "1.2.826.0.1.3680043.2.1125.8.2", ["Series 2"],
            by_number=False)
    assert load_case(e2).present == ("t1", "flair")


def test_dicom_patient_id_of_a_training_patient_is_carried(tmp_path):
    """A DICOM case whose series' PatientID is a TCGA/BraTS/UCSF-PDGM id carries it in
    meta['patient_ids'] (the in-sample check), as a file name with that id does."""
    d = tmp_path / "study"
    _export(d, "TCGA-FG-6692", "1.2.826.0.1.3680043.2.1125.9.1", ["AX FLAIR", "AX T1 SE"],
            by_number=False)
    assert load_case(d).meta["patient_ids"] == ["TCGA-FG-6692"]
    e = tmp_path / "other"
    _export(e, "PHANTOM1", "1.2.826.0.1.3680043.2.1125.9.2", ["AX FLAIR"], by_number=False)
    assert "patient_ids" not in load_case(e).meta


def test_a_blank_sequence_is_refused_by_name(tmp_path):
    """An all-zero (or constant) sequence is not read as a featureless scan: the load names
    the file and the sequence; labels that are all zero (no tumour) stay valid."""
    from napari_radiogen.core.io import load_case
    from napari_radiogen.core.phantom import make_phantom
    case = make_phantom(2, shape=(24, 32, 28))
    folder = tmp_path / "C1"
    folder.mkdir()
    for s, v in case.sequences.items():
        arr = np.zeros_like(v.array) if s == "flair" else v.array
        write_volume(arr, v.geometry, folder / f"C1_{s}.nii.gz")
    write_volume(np.zeros(case.geometry.shape, np.uint8), case.geometry, folder / "C1_seg.nii.gz",
                 labels=True)
    # named by its path, as the readers' other errors name a file
    with pytest.raises(CaseLoadError, match=re.escape(f"{folder / 'C1_flair.nii.gz'}: the flair "
                                                      "image is blank")):
        load_case(folder)
    write_volume(case.sequences["flair"].array, case.geometry, folder / "C1_flair.nii.gz")
    loaded = load_case(folder)
    assert set(loaded.sequences) == {"t1", "t1ce", "t2", "flair"}
    assert loaded.labels is not None and not loaded.labels.array.any()


def test_a_2d_picture_is_said_to_be_2d(tmp_path):
    """A PNG given as a case is named as a 2D picture, whichever entry point reads it."""
    from napari_radiogen.core.io import load_case
    png = tmp_path / "slice.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    for fn in (load_case, list_cases):
        with pytest.raises(CaseLoadError, match=r"a 2D picture \(PNG\) is not an MRI case"):
            fn(png)


def test_percent_is_exported_by_core_io_and_maps_share_the_header_helpers():
    """``percent`` is part of core.io's interface (core.prepare imports it from there, not
    from a private module); the synthetic-volume and result-map markings share one set of
    header helpers."""
    import ast
    from pathlib import Path

    import napari_radiogen.core.io as io
    from napari_radiogen.core import prepare
    from napari_radiogen.core.io import maps, synthetic
    assert "percent" in io.__all__ and io.percent(1, 3) == "33%"
    assert prepare.percent is io.percent
    tree = ast.parse(Path(prepare.__file__).read_text())
    private = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
               and n.module and n.module != "__future__"
               and any(part.startswith("_") for part in n.module.split("."))]
    assert private == []
    assert maps.NOTES_KEYS is synthetic.NOTES_KEYS
    assert maps.DESCRIP_BYTES == synthetic.DESCRIP_BYTES == 79
    assert synthetic.merge({"a": 1}, {"a": 2, "b": 3}) == {"a": 1, "b": 3}
    assert not hasattr(maps, "_clean") and not hasattr(synthetic, "_clean_token")


def _case_folder_with_a_broken_t2(folder):
    from napari_radiogen.core.io import write_volume
    from napari_radiogen.core.phantom import make_phantom
    c = make_phantom(3, shape=(16, 20, 18))
    folder.mkdir(parents=True)
    for s, v in c.sequences.items():
        write_volume(v.array, v.geometry, folder / f"P1_{s}.nii.gz")
    good = (folder / "P1_t2.nii.gz").read_bytes()
    (folder / "P1_t2.nii.gz").write_bytes(good[: len(good) // 2])      # truncated copy
    return folder


def test_a_viewer_reads_what_it_can_of_a_case_with_a_broken_file(tmp_path):
    """The command line reads a case strictly (a truncated T2 stops it with one line naming
    the file); ``skip_unreadable`` (the viewer) leaves the broken file out, says why in
    ``meta["unreadable"]`` and reads the rest; a case with nothing readable still fails."""
    from napari_radiogen.core.errors import RadiogenError
    from napari_radiogen.core.io import load_case
    folder = _case_folder_with_a_broken_t2(tmp_path / "P1")
    with pytest.raises(RadiogenError, match="P1_t2.nii.gz"):
        load_case(folder)
    case = load_case(folder, skip_unreadable=True)
    assert case.present == ("t1", "t1ce", "flair")
    assert list(case.meta["unreadable"]) == ["t2"]
    assert "P1_t2.nii.gz" in case.meta["unreadable"]["t2"]
    assert "t2" not in case.meta["files"]
    for s in ("t1", "t1ce", "flair"):
        (folder / f"P1_{s}.nii.gz").write_bytes(b"\x1f\x8b\x08garbage")
    with pytest.raises(RadiogenError, match="P1_"):
        load_case(folder, skip_unreadable=True)
