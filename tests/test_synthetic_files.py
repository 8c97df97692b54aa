"""The package's own synthetic volumes on disk are never read back as acquired scans.

A synthetic sequence says so in its file (NIfTI ``descrip``, NRRD/MetaImage key/value fields),
and a file named ``<case>_<sequence>_synth.<ext>`` (the name ``radiogen synthesize`` and
``radiogen analyze`` give their synthetic outputs) is synthetic whatever its header says; the
case reader marks such a sequence ``synthetic`` with its provenance, so every result lists it
as a synthetic input (``Case.synthetic_inputs()``)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from napari_radiogen.core.case import Geometry, Volume
from napari_radiogen.core.errors import CaseLoadError
from napari_radiogen.core.io import (detect_sequence, list_cases, load_case, load_volume,
                                     scan_case, write_volume)

from conftest import ROOT

SHAPE = (12, 20, 16)
OBLIQUE = sitk.Euler3DTransform((0, 0, 0), 0.1, 0.0, 0.2).GetMatrix()


def blob(seed=0, shape=SHAPE):
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    return (100.0 * (z ** 2 + y ** 2 + x ** 2 < 0.8) + rng.normal(0, 1, shape)).astype(
        np.float32)


def plain(arr, path, spacing=(0.9, 1.1, 3.0), origin=(10.0, -20.0, 30.0), direction=OBLIQUE):
    """A volume written by SimpleITK alone (empty NIfTI descrip: an acquired scan, or a
    synthetic output written before the package recorded it in the header)."""
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(direction)
    sitk.WriteImage(img, str(path))
    return Path(path)


def case_without_t1ce(folder, prefix="P1"):
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, s in enumerate(("t1", "t2", "flair")):
        plain(blob(i), folder / f"{prefix}_{s}.nii.gz")
    return folder


def synthetic_volume(tmp_path):
    """A synthetic t1ce as core.synthesize makes it: on an acquired scan's (oblique, non-LPS)
    grid, ``synthetic=True``, provenance in ``meta``."""
    src = load_volume(plain(blob(7), tmp_path / "ref_flair.nii.gz"))
    return Volume(array=src.array * 0.01, geometry=src.geometry, synthetic=True,
                  meta={"sequence": "t1ce", "synthetic": True, "sources": ["t1", "t2", "flair"],
                        "model": "synth_seq2seq2d"})


def assert_same_geometry(a: Geometry, b: Geometry):
    assert a.size == b.size and a.source_orientation == b.source_orientation
    np.testing.assert_allclose(a.spacing, b.spacing, atol=1e-6)
    np.testing.assert_allclose(a.origin, b.origin, atol=1e-5)
    np.testing.assert_allclose(a.direction, b.direction, atol=1e-6)


# -- the file says it is synthetic --------------------------------------------------------------
@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".nrrd", ".mha", ".nhdr", ".mhd"])
def test_a_synthetic_volume_says_so_in_its_file_and_reads_back_synthetic(tmp_path, ext):
    vol = synthetic_volume(tmp_path)
    out = write_volume(vol, tmp_path / f"scan{ext}")         # a name that says nothing
    back = load_volume(out)
    assert back.synthetic is True
    assert back.meta["sources"] == ["t1", "t2", "flair"] and back.meta["model"] == "synth_seq2seq2d"
    assert back.meta["sequence"] == "t1ce" and "file header" in back.meta["synthetic_marked_by"]
    # geometry and voxels exactly as written, on the source grid
    assert_same_geometry(back.geometry, vol.geometry)
    np.testing.assert_allclose(back.array, vol.array, rtol=0, atol=1e-6)
    r = sitk.ImageFileReader()
    r.SetFileName(str(out))
    r.ReadImageInformation()
    np.testing.assert_allclose(r.GetDirection(), OBLIQUE, atol=1e-6)
    if ext.startswith(".nii"):
        descrip = nib.load(str(out)).header["descrip"].tobytes().rstrip(b"\0").decode()
        assert descrip == "napari-radiogen synthetic t1ce from t1,t2,flair by synth_seq2seq2d"
        assert len(descrip) < 80
    else:
        assert r.GetMetaData("radiogen_synthetic") == "true"
        assert r.GetMetaData("radiogen_sources") == "t1,t2,flair"


def test_the_array_and_geometry_call_the_cli_makes_is_marked_by_its_synth_name(tmp_path):
    """``radiogen synthesize`` / ``analyze`` pass the array and geometry and name the file
    ``<case>_<target>_synth.nii.gz``: that file is marked synthetic too."""
    vol = synthetic_volume(tmp_path)
    out = write_volume(vol.array, vol.geometry, tmp_path / "P1_t1ce_synth.nii.gz")
    descrip = nib.load(str(out)).header["descrip"].tobytes().rstrip(b"\0").decode()
    assert descrip.startswith("napari-radiogen synthetic t1ce")
    # an explicit provenance is recorded whatever the name; labels and plain images are not
    out = write_volume(vol.array, vol.geometry, tmp_path / "x.nrrd",
                       synthetic={"sequence": "t2", "sources": ["t1"], "model": "m"})
    assert load_volume(out).meta["sources"] == ["t1"]
    out = write_volume(vol.array, vol.geometry, tmp_path / "P1_t1ce.nii.gz")
    assert nib.load(str(out)).header["descrip"].tobytes().rstrip(b"\0") == b""
    assert load_volume(out).synthetic is False
    lab = write_volume(np.zeros(vol.array.shape, np.uint8), vol.geometry,
                       tmp_path / "P1_seg.nii.gz", labels=True)
    assert nib.load(str(lab)).header["descrip"].tobytes().rstrip(b"\0") == b""


# -- the case reader ----------------------------------------------------------------------------
@pytest.mark.parametrize("name,seq,case_id", [
    ("BraTS2021_00006_t1ce_synth.nii.gz", "t1ce", "BraTS2021_00006"),
    ("P1_flair_synth.nrrd", "flair", "P1"),
    ("P1_t2_synth.mha", "t2", "P1"),
    ("BraTS-GLI-00000-000-t1c-synth.nii.gz", "t1ce", "BraTS-GLI-00000-000"),
])
def test_synth_names_keep_their_sequence_and_case_id(tmp_path, name, seq, case_id):
    from napari_radiogen.napari.reader import _case_id_from_file

    assert detect_sequence(name) == (seq, "image")
    f = plain(blob(), tmp_path / name)
    case = load_case(f)
    assert case.case_id == case_id and case.synthetic_inputs() == (seq,)
    assert _case_id_from_file(f, seq) == case_id          # the napari reader's layer names


def test_a_copied_synth_file_is_the_cases_synthetic_t1ce(tmp_path):
    """The audit's case: a synth output copied into a case folder lacking T1ce (here one with an
    empty header, as written before; the name alone marks it)."""
    d = case_without_t1ce(tmp_path / "P1")
    plain(blob(3) * 0.01, d / "P1_t1ce_synth.nii.gz")
    assert detect_sequence("P1_t1ce_synth.nii.gz") == ("t1ce", "image")
    case = load_case(d)
    assert case.case_id == "P1" and case.present == ("t1", "t1ce", "t2", "flair")
    t1ce = case.sequences["t1ce"]
    assert t1ce.synthetic is True and t1ce.meta["synthetic_marked_by"] == ["file name (_synth)"]
    assert case.synthetic_inputs() == ("t1ce",)
    assert not any(case.sequences[s].synthetic for s in ("t1", "t2", "flair"))
    assert case.meta["synthetic"] == ["t1ce"]
    assert case.meta["synthesized"]["t1ce"]["file"] == "P1_t1ce_synth.nii.gz"
    d_info = case.describe()
    assert d_info["sequences"]["t1ce"]["synthetic"] is True
    assert d_info["sequences"]["flair"]["synthetic"] is False
    # the header written by the package gives the provenance, under any name
    e = case_without_t1ce(tmp_path / "P2", prefix="P2")
    f = plain(blob(1), tmp_path / "ref_flair.nii.gz")
    g = load_volume(f).geometry
    write_volume(blob(3) * 0.01, g, e / "P2_t1ce.nii.gz",
                 synthetic={"sequence": "t1ce", "sources": ["t2", "flair"], "model": "m1"})
    shutil.move(e / "P2_t1ce.nii.gz", e / "P2_T1ce_renamed.nii.gz")
    c2 = load_case(e)
    assert c2.synthetic_inputs() == ("t1ce",)
    assert c2.sequences["t1ce"].meta["sources"] == ["t2", "flair"]
    assert c2.meta["synthesized"]["t1ce"] == {"sources": ["t2", "flair"], "model": "m1",
                                              "file": "P2_T1ce_renamed.nii.gz"}
    # ... and a name that says nothing gets its sequence from that header
    shutil.move(e / "P2_T1ce_renamed.nii.gz", e / "scan3.nii.gz")
    c3 = load_case(e)
    assert c3.synthetic_inputs() == ("t1ce",) and "unrecognised" not in c3.meta
    # a single synthetic file is a case of its own, with the case id of its name
    one = load_case(d / "P1_t1ce_synth.nii.gz")
    assert one.case_id == "P1" and one.synthetic_inputs() == ("t1ce",)


def test_the_sidecar_json_of_radiogen_synthesize_gives_the_provenance(tmp_path):
    d = case_without_t1ce(tmp_path / "P1")
    plain(blob(3) * 0.01, d / "P1_t1ce_synth.nii.gz")
    (d / "P1_t1ce_synth.json").write_text(json.dumps(
        {"case_id": "P1", "target": "t1ce", "sources": ["t2", "flair"], "synthetic": True,
         "model": "synth_seq2seq2d"}))
    v = load_case(d).sequences["t1ce"]
    assert v.synthetic and v.meta["sources"] == ["t2", "flair"]
    assert v.meta["model"] == "synth_seq2seq2d"


def test_acquired_file_is_preferred_over_a_synth_file_of_the_same_sequence(tmp_path):
    d = case_without_t1ce(tmp_path / "P1")
    plain(blob(5), d / "P1_t1ce.nii.gz")
    plain(blob(3) * 0.01, d / "P1_t1ce_synth.nii.gz")
    case = load_case(d)
    assert case.synthetic_inputs() == ()
    assert case.meta["files"]["t1ce"] == "P1_t1ce.nii.gz"
    assert "P1_t1ce_synth.nii.gz" in case.meta["synthetic_set_aside"][0]
    assert scan_case(d)["sequences"]["t1ce"] == "P1_t1ce.nii.gz"
    # choosing the synthetic one by override is the user's call: the clash is then said
    with pytest.raises(CaseLoadError, match="two files claim the sequence 't1ce'"):
        load_case(d, overrides={"P1_t1ce_synth.nii.gz": "t1ce"})
    ok = load_case(d, overrides={"P1_t1ce_synth.nii.gz": "t1ce", "P1_t1ce.nii.gz": "ignore"})
    assert ok.synthetic_inputs() == ("t1ce",)
    # two synthetic files of one sequence: as for any two files, the user chooses
    plain(blob(4) * 0.01, d / "P1_t1ce_synth.nrrd")
    (d / "P1_t1ce.nii.gz").unlink()
    with pytest.raises(CaseLoadError, match="two files claim the sequence 't1ce'"):
        load_case(d)


def test_a_flat_cohort_with_synth_files_groups_by_patient(tmp_path):
    d = tmp_path / "flat"
    d.mkdir()
    for p in ("P1", "P2"):
        for i, s in enumerate(("t1", "t2", "flair")):
            plain(blob(i), d / f"{p}_{s}.nii.gz")
    plain(blob(3) * 0.01, d / "P1_t1ce_synth.nii.gz")
    plain(blob(9), d / "P2_t1ce.nii.gz")
    plain(blob(8) * 0.01, d / "P2_t1ce_synth.nii.gz")
    assert [p.name for p in list_cases(d)] == ["P1", "P2"]
    assert load_case(d / "P1").synthetic_inputs() == ("t1ce",)
    assert load_case(d / "P2").synthetic_inputs() == ()
    assert scan_case(d / "P1")["synthetic"] == ["t1ce"]
    assert "synthetic" not in scan_case(d / "P2")


# -- downstream ---------------------------------------------------------------------------------
def _info_json(path):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-m", "napari_radiogen", "info", str(path), "--json"],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_radiogen_info_shows_the_synth_file_as_synthetic(tmp_path):
    d = case_without_t1ce(tmp_path / "P1")
    plain(blob(3) * 0.01, d / "P1_t1ce_synth.nii.gz")
    info = _info_json(d)
    assert info["sequences"]["t1ce"]["synthetic"] is True
    assert info["sequences"]["t1"]["synthetic"] is False


def test_segmentation_of_a_case_with_a_synth_file_lists_it(tmp_path):
    """Through the existing mechanism (Case.synthetic_inputs): the segmentation names the
    synthetic input and warns."""
    from napari_radiogen.core.models import load_model
    from napari_radiogen.core.phantom import make_phantom
    from napari_radiogen.core.progress import run
    from napari_radiogen.core.segment import segment

    from _models import write_random_models

    paths = write_random_models(tmp_path / "models")
    model = load_model(str(paths["seg"]), task="segmentation", device="cpu")
    ph = make_phantom(6, skull_stripped=True)
    d = tmp_path / "C1"
    d.mkdir()
    for s, v in ph.sequences.items():
        name = f"C1_{s}_synth.nii.gz" if s == "t1ce" else f"C1_{s}.nii.gz"
        plain(v.array, d / name, spacing=v.geometry.spacing, origin=v.geometry.origin,
              direction=v.geometry.direction)
    res = run(segment(load_case(d), model, device="cpu", compare=False))
    assert res.synthetic_inputs == ["t1ce"]
    assert any("synthetic input(s) used: t1ce" in w for w in res.warnings)


def test_radiogen_synthesize_records_sources_and_model_in_the_header(tmp_path):
    """``radiogen synthesize`` writes the synthetic Volume itself: the NIfTI header names the
    sequence, the sources and the model, so the provenance survives without the JSON beside
    it (a copy of the volume alone, under any name), on the exact grid of the reference."""
    from napari_radiogen.cli import main
    from napari_radiogen.core.phantom import make_phantom

    from _synth_helpers import tiny_model

    synth = tiny_model(tmp_path / "tiny_synth.safetensors")
    d = tmp_path / "P1"
    d.mkdir()
    ph = make_phantom(2, shape=(32, 48, 40), skull_stripped=True)
    for s in ("t1", "t2", "flair"):
        v = ph.sequences[s]
        plain(v.array, d / f"P1_{s}.nii.gz", spacing=v.geometry.spacing,
              origin=v.geometry.origin, direction=OBLIQUE)        # oblique, as acquired
    out = tmp_path / "out"
    assert main(["synthesize", str(d), "--target", "t1ce", "--sources", "t2", "flair",
                 "--model", str(synth), "--device", "cpu", "--out", str(out)]) == 0
    f = out / "P1_t1ce_synth.nii.gz"
    assert nib.load(str(f)).header["descrip"].tobytes().rstrip(b"\0").decode() == \
        "napari-radiogen synthetic t1ce from t2,flair by tiny-synth"
    # the JSON beside it: de-identified by default (the case id, not the case's path),
    # --identified writes the path
    info = json.loads((out / "P1_t1ce_synth.json").read_text())
    assert info["case_source"] == "P1" and info["deidentified"] is True
    assert str(d) not in json.dumps(info)
    assert info["file"] == "P1_t1ce_synth.nii.gz"             # beside the JSON, by its name
    assert str(out) not in json.dumps(info)
    out2 = tmp_path / "out2"
    assert main(["synthesize", str(d), "--target", "t1ce", "--sources", "t2", "flair",
                 "--model", str(synth), "--device", "cpu", "--out", str(out2),
                 "--identified"]) == 0
    info2 = json.loads((out2 / "P1_t1ce_synth.json").read_text())
    assert info2["deidentified"] is False
    assert Path(info2["case_source"]).resolve() == d.resolve()
    assert set(info2) == set(info)
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(f, alone / "scan.nii.gz")                  # no JSON, a name that says nothing
    back = load_volume(alone / "scan.nii.gz")
    assert back.synthetic and back.meta["synthetic_marked_by"] == ["file header"]
    assert back.meta["sequence"] == "t1ce" and back.meta["sources"] == ["t2", "flair"]
    assert back.meta["model"] == "tiny-synth"
    assert_same_geometry(back.geometry, load_volume(d / "P1_flair.nii.gz").geometry)
    # copied into the case: the case's synthetic t1ce, with its provenance
    shutil.copy(f, d / f.name)
    case = load_case(d)
    assert case.synthetic_inputs() == ("t1ce",)
    assert case.meta["synthesized"]["t1ce"] == {"sources": ["t2", "flair"],
                                                "model": "tiny-synth",
                                                "file": "P1_t1ce_synth.nii.gz"}
    assert "file header" in case.sequences["t1ce"].meta["synthetic_marked_by"]
