"""The package's result maps on disk are never read as sequences.

``radiogen rank-sequences`` writes ``<case>_<target>_diffmap.nii.gz`` (which read as the target
sequence by name before), ``radiogen explain`` / ``analyze`` write heatmaps
``<case>_<task>_<method>.nii.gz`` (unrecognised by name, or a sequence when the case id carries a
sequence token, labels when it carries ``mask``/``seg``). Both now say what they are in their
header, :func:`detect_sequence` gives them no sequence, and the case reader ignores them (by name
or by header) with the reason in ``case.meta["ignored_outputs"]``. Segmentations ``*_seg*`` are
still the case's labels."""
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from napari_radiogen.core.case import Volume
from napari_radiogen.core.errors import CaseLoadError
from napari_radiogen.core.io import (WriteError, detect_sequence, list_cases, load_case,
                                     load_volume, scan_case, write_volume)
from napari_radiogen.core.io import maps as M

from test_synthetic_files import OBLIQUE, assert_same_geometry, blob, plain


def descrip(path) -> str:
    return nib.load(str(path)).header["descrip"].tobytes().rstrip(b"\0").decode()


def acquired_case(folder, prefix="P1", seqs=("t1", "t1ce", "t2", "flair")):
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, s in enumerate(seqs):
        plain(blob(i), folder / f"{prefix}_{s}.nii.gz")
    return folder


# -- names --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [
    "P1_t1_diffmap.nii.gz", "P1_t1ce_diffmap.nii.gz", "P1_t2_diffmap.nii.gz",
    "BraTS2021_00006_flair_diffmap.nii.gz", "TCGA_CS_4941_t1ce_diffmap.nii.gz",
    "P1_idh_gradcam.nii.gz", "P1_idh_gradcampp.nii.gz", "P1_grade_layercam.nii.gz",
    "P1_codel_1p19q_attention.nii.gz", "P1_grade_occlusion.nii.gz",
    # case ids that carry a sequence or labels token: a T1 scan, labels by name before
    "MRHR_T1_AX_idh_gradcam.nii.gz", "BraTS2021_00006_t2_grade_occlusion.nii.gz",
    "P1_brainmask_idh_gradcam.nii.gz", "P7_seg_idh_attention.nrrd",
])
def test_the_packages_maps_are_no_sequence(name):
    assert detect_sequence(name) == (None, "image")
    assert M.from_name(name) is not None


@pytest.mark.parametrize("name,expected", [
    ("P1_seg.nii.gz", ("labels", "labels")),                 # segmentations stay labels
    ("BraTS2021_00006_seg.nii.gz", ("labels", "labels")),
    ("P1_t1ce_synth.nii.gz", ("t1ce", "image")),              # synthetic outputs keep theirs
    ("P1_t1ce.nii.gz", ("t1ce", "image")),
    ("P1_attention.nii.gz", (None, "image")),
    ("BraTS-GLI-00000-000-t2f.nii.gz", ("flair", "image")),
])
def test_other_names_are_unchanged(name, expected):
    assert detect_sequence(name) == expected
    assert M.from_name(name) is None


def test_the_names_match_what_explain_writes():
    from napari_radiogen.core import explain as E
    assert tuple(M.TASKS) == tuple(E.TASKS)
    assert tuple(M.METHOD_SLUGS) == tuple(E.method_slug(m) for m in E.METHODS)


# -- headers ------------------------------------------------------------------------------------
def _ref(tmp_path):
    return load_volume(plain(blob(7), tmp_path / "ref_flair.nii.gz"))


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd", ".mha"])
def test_a_diffmap_volume_is_written_as_a_map_not_as_a_synthetic_sequence(tmp_path, ext):
    """rank_sequences' maps are ``synthetic=True`` Volumes with ``target``: written as they
    are, they must say 'differentiation map', not 'synthetic t1ce'."""
    ref = _ref(tmp_path)
    vol = Volume(array=ref.array * 0.001, geometry=ref.geometry, synthetic=True,
                 meta={"kind": "differentiation-map", "target": "t1ce",
                       "sources": ["t1", "t2", "flair"], "model": "synth_seq2seq2d"})
    out = write_volume(vol, tmp_path / f"scan{ext}")           # a name that says nothing
    back = load_volume(out)
    assert back.synthetic is False and "synthetic_marked_by" not in back.meta
    assert back.meta["radiogen_map"] == {"kind": "differentiation map", "target": "t1ce",
                                         "sources": ["t1", "t2", "flair"],
                                         "model": "synth_seq2seq2d"}
    assert_same_geometry(back.geometry, vol.geometry)
    np.testing.assert_allclose(back.array, vol.array, rtol=0, atol=1e-7)
    if ext == ".nii.gz":
        assert descrip(out) == ("napari-radiogen differentiation map t1ce from t1,t2,flair by "
                                "synth_seq2seq2d")
    else:
        r = sitk.ImageFileReader()
        r.SetFileName(str(out))
        r.ReadImageInformation()
        assert r.GetMetaData("radiogen_map") == "differentiation map"
        assert r.GetMetaData("radiogen_target") == "t1ce"
        assert "radiogen_synthetic" not in r.GetMetaDataKeys()
        np.testing.assert_allclose(r.GetDirection(), OBLIQUE, atol=1e-6)


def test_maps_are_marked_by_name_or_explicitly(tmp_path):
    ref = _ref(tmp_path)
    # the array + geometry call (core.pipeline.write_outputs today): marked by its name
    out = write_volume(ref.array, ref.geometry, tmp_path / "P1_idh_gradcampp.nii.gz")
    assert descrip(out) == "napari-radiogen heatmap idh gradcam++"
    out = write_volume(ref.array, ref.geometry, tmp_path / "P1_t2_diffmap.nii.gz")
    assert descrip(out) == "napari-radiogen differentiation map t2"
    # explicit, under any name; the record fits NIfTI's 80 bytes
    out = write_volume(ref.array, ref.geometry, tmp_path / "heat.nii",
                       radiogen_map={"kind": "heatmap", "task": "codel_1p19q",
                                     "method": "gradcam++", "model": "x" * 70})
    assert descrip(out) == "napari-radiogen heatmap codel_1p19q gradcam++"
    assert load_volume(out).meta["radiogen_map"]["method"] == "gradcam++"
    # False: never marked; an acquired scan's name: not marked
    out = write_volume(ref.array, ref.geometry, tmp_path / "P1_grade_occlusion.nii.gz",
                       radiogen_map=False)
    assert descrip(out) == ""
    out = write_volume(ref.array, ref.geometry, tmp_path / "P1_flair.nii.gz")
    assert descrip(out) == "" and "radiogen_map" not in load_volume(out).meta
    with pytest.raises(WriteError, match="not a synthetic sequence"):
        write_volume(ref.array, ref.geometry, tmp_path / "m.nii.gz",
                     synthetic={"sequence": "t1ce"}, radiogen_map={"kind": "heatmap"})
    with pytest.raises(ValueError, match="unknown map kind"):
        write_volume(ref.array, ref.geometry, tmp_path / "m.nii.gz",
                     radiogen_map={"kind": "probability"})


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd"])
def test_what_the_caller_gives_explicitly_wins_over_the_file_name(tmp_path, ext):
    """A synthetic volume written under a map-like name is synthetic (was a TypeError), a map
    given explicitly under a _synth name is a map; both at once is a one-line user error."""
    from napari_radiogen.core.errors import RadiogenError
    ref = _ref(tmp_path)
    prov = {"sequence": "t1ce", "sources": ["t1", "t2"], "model": "synth_seq2seq2d"}
    for given in (prov, True):
        out = write_volume(ref.array, ref.geometry, tmp_path / f"P1_idh_gradcam{ext}",
                           synthetic=given)
        back = load_volume(out)
        assert back.synthetic is True and "radiogen_map" not in back.meta, given
        assert_same_geometry(back.geometry, ref.geometry)
        if ext == ".nii.gz":
            assert descrip(out).startswith("napari-radiogen synthetic")
    assert back.meta["synthetic_marked_by"] == ["file header"]
    # a synthetic Volume given as such: its rank_sequences-like map meta is not used either
    vol = Volume(ref.array, ref.geometry, synthetic=True,
                 meta={"kind": "differentiation-map", "target": "t1ce"})
    back = load_volume(write_volume(vol, tmp_path / f"P1_t1ce_diffmap{ext}", synthetic=prov))
    assert back.synthetic is True and back.meta["sequence"] == "t1ce"
    # a map given explicitly under a synthetic-output name
    out = write_volume(ref.array, ref.geometry, tmp_path / f"P1_t1ce_synth{ext}",
                       radiogen_map={"kind": "heatmap", "task": "idh", "method": "gradcam"})
    assert load_volume(out).meta["radiogen_map"]["task"] == "idh"
    # both explicitly: a user error (WriteError is a RadiogenError), one line, naming the file
    for syn in (prov, True):
        with pytest.raises(RadiogenError) as e:
            write_volume(ref.array, ref.geometry, tmp_path / f"x{ext}", synthetic=syn,
                         radiogen_map={"kind": "heatmap", "task": "idh"})
        assert "\n" not in str(e.value) and f"x{ext}" in str(e.value)
    assert not (tmp_path / f"x{ext}").exists()
    # nothing explicit: the name decides, as before
    out = write_volume(ref.array, ref.geometry, tmp_path / f"P2_idh_gradcam{ext}")
    assert load_volume(out).meta["radiogen_map"]["kind"] == "heatmap"


# -- the case reader ----------------------------------------------------------------------------
def _same_case(a, b):
    assert a.present == b.present and a.case_id == b.case_id
    assert a.meta["files"] == b.meta["files"]
    assert a.synthetic_inputs() == b.synthetic_inputs()
    for s in a.present:
        np.testing.assert_array_equal(a.sequences[s].array, b.sequences[s].array)
    assert (a.labels is None) == (b.labels is None)


def test_copied_diffmap_and_gradcam_do_not_change_the_case(tmp_path):
    d = acquired_case(tmp_path / "P1")
    plain(np.zeros(blob().shape, np.uint8), d / "P1_seg.nii.gz")
    before = load_case(d)
    ref = before.sequences["flair"]
    # written by the package (headers say what they are), then copied into the case folder
    out = tmp_path / "out"
    write_volume(Volume(ref.array * 0.001, ref.geometry, synthetic=True,
                        meta={"kind": "differentiation-map", "target": "t1ce",
                              "sources": ["t1", "t2", "flair"], "model": "m"}),
                 out / "P1_t1ce_diffmap.nii.gz")
    write_volume(ref.array / ref.array.max(), ref.geometry, out / "P1_idh_gradcam.nii.gz",
                 radiogen_map={"kind": "heatmap", "task": "idh", "method": "gradcam"})
    for f in out.iterdir():
        shutil.copy(f, d / f.name)
    after = load_case(d)
    _same_case(before, after)
    assert after.labels is not None and after.meta["files"]["labels"] == "P1_seg.nii.gz"
    ignored = after.meta["ignored_outputs"]
    assert len(ignored) == 2 and "unrecognised" not in after.meta
    assert ignored[0].startswith("P1_idh_gradcam.nii.gz (a napari-radiogen heatmap for idh")
    assert ignored[1].startswith("P1_t1ce_diffmap.nii.gz (a napari-radiogen differentiation "
                                 "map of t1ce")
    assert "ignored_outputs" not in before.meta
    assert "ignored_outputs" in after.describe()["meta"]          # radiogen info --json
    assert scan_case(d)["sequences"] == {s: f"P1_{s}.nii.gz" for s in before.present}
    assert sorted(scan_case(d)["ignored_outputs"]) == ["P1_idh_gradcam.nii.gz",
                                                       "P1_t1ce_diffmap.nii.gz"]
    assert scan_case(d)["unrecognised"] == []


def test_a_diffmap_is_not_the_missing_sequence_and_a_renamed_map_is_known_by_its_header(
        tmp_path):
    """Before, a copied ``P1_t1ce_diffmap`` became the t1ce of a case lacking one; a map
    renamed to a scan's name is still recognised by its header."""
    d = acquired_case(tmp_path / "P1", seqs=("t1", "t2", "flair"))
    before = load_case(d)
    g = before.sequences["flair"].geometry
    plain(blob(5) * 0.001, d / "P1_t1ce_diffmap.nii.gz")          # an old one: no header
    case = load_case(d)
    _same_case(before, case)
    assert case.missing == ("t1ce",) and "by its name" in case.meta["ignored_outputs"][0]
    (d / "P1_t1ce_diffmap.nii.gz").unlink()
    write_volume(blob(5) * 0.001, g, d / "P1_t1ce.nrrd",
                 radiogen_map={"kind": "heatmap", "task": "grade", "method": "occlusion"})
    case = load_case(d)
    _same_case(before, case)
    assert case.meta["ignored_outputs"] == [
        "P1_t1ce.nrrd (a napari-radiogen heatmap for grade by occlusion (radiogen explain / "
        "analyze), recognised by its header: not a sequence)"]
    # the user may still read it as a sequence, by name
    forced = load_case(d, overrides={"P1_t1ce.nrrd": "t1ce"})
    assert "t1ce" in forced.present and "ignored_outputs" not in forced.meta


def test_a_map_alone_is_not_a_case(tmp_path):
    ref = _ref(tmp_path)
    f = write_volume(ref.array, ref.geometry, tmp_path / "P1_t1_diffmap.nii.gz")
    with pytest.raises(CaseLoadError, match="differentiation map of t1 .*not a case"):
        load_case(f)
    g = write_volume(ref.array, ref.geometry, tmp_path / "scan.mha",
                     radiogen_map={"kind": "heatmap", "task": "idh"})
    with pytest.raises(CaseLoadError, match="heatmap for idh .*recognised by its header"):
        load_case(g)
    assert load_case(g, overrides={"scan.mha": "flair"}).present == ("flair",)
    d = tmp_path / "maps_only"
    d.mkdir()
    shutil.copy(f, d / f.name)
    with pytest.raises(CaseLoadError, match="no image sequence found; ignored: "
                                            "P1_t1_diffmap.nii.gz"):
        load_case(d)


def test_a_flat_cohort_with_maps_still_groups_by_patient(tmp_path):
    d = tmp_path / "flat"
    for p in ("P1", "P2"):
        acquired_case(d, prefix=p, seqs=("t1", "t2", "flair"))
    plain(blob(3), d / "P1_t2_diffmap.nii.gz")
    plain(blob(3), d / "P2_idh_gradcam.nii.gz")
    assert [p.name for p in list_cases(d)] == ["P1", "P2"]
    assert load_case(d / "P1").present == ("t1", "t2", "flair")


# -- end to end: the CLI's own outputs copied into the case folder ---------------------------
@pytest.fixture(scope="module")
def cli_outputs(tmp_path_factory):
    """A phantom case and what ``radiogen rank-sequences`` and ``radiogen explain`` write for
    it (tiny random models, CPU)."""
    from napari_radiogen.cli import main
    from napari_radiogen.core.phantom import make_phantom

    from _models import write_random_models
    from _synth_helpers import tiny_model

    tmp = tmp_path_factory.mktemp("maps_cli")
    models = write_random_models(tmp / "models")
    synth = tiny_model(tmp / "tiny_synth.safetensors")
    case = tmp / "P1"
    case.mkdir()
    for s, v in make_phantom(3, skull_stripped=True).sequences.items():
        write_volume(v, case / f"P1_{s}.nii.gz")
    assert main(["rank-sequences", str(case), "--model", str(synth), "--device", "cpu",
                 "--out", str(tmp / "rank")]) == 0
    assert main(["explain", str(case), "--model", str(models["mil"]), "--no-render",
                 "--out", str(tmp / "explain")]) == 0
    return case, tmp / "rank", tmp / "explain"


def test_cli_maps_record_what_they_are(cli_outputs):
    case, rank, explain = cli_outputs
    d = descrip(rank / "P1_t1ce_diffmap.nii.gz")
    assert d.startswith("napari-radiogen differentiation map t1ce from t1,t2,flair by ")
    assert descrip(explain / "P1_idh_gradcam.nii.gz") == "napari-radiogen heatmap idh gradcam " \
                                                          "by test_mil"
    ref = load_case(case).sequences["flair"]           # the reference grid, exactly
    for f in (rank / "P1_t1ce_diffmap.nii.gz", explain / "P1_idh_gradcam.nii.gz"):
        v = load_volume(f)
        assert v.synthetic is False and v.meta["radiogen_map"]["kind"] in M.KINDS
        assert_same_geometry(v.geometry, ref.geometry)


def test_cli_maps_copied_into_the_case_folder_change_nothing(cli_outputs, tmp_path):
    case, rank, explain = cli_outputs
    d = tmp_path / "P1"
    shutil.copytree(case, d)
    before = load_case(d)
    shutil.copy(rank / "P1_t1ce_diffmap.nii.gz", d)
    shutil.copy(explain / "P1_idh_gradcam.nii.gz", d)
    # ... also under names that say nothing: the headers say what they are
    shutil.copy(rank / "P1_flair_diffmap.nii.gz", d / "scan7.nii.gz")
    after = load_case(d)
    _same_case(before, after)
    assert len(after.meta["ignored_outputs"]) == 3 and "unrecognised" not in after.meta
