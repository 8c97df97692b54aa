"""Co-registration of a case's sequences onto its reference (core.register): a sequence shifted
in its header is moved back, aligned ones are left as they are, and analyze --register uses it."""
import numpy as np
import pytest

from napari_radiogen.core.case import Volume
from napari_radiogen.core.phantom import make_phantom
from napari_radiogen.core.prepare import case_registration_warnings
from napari_radiogen.core.progress import run
from napari_radiogen.core.register import moved_geometry, register_case


def _shifted(case, name, shift):
    v = case.sequences[name]
    g = v.geometry
    return case.with_sequence(name, Volume(
        v.array, g.with_(origin=tuple(o + d for o, d in zip(g.origin, shift))), meta=dict(v.meta)))


def test_moved_geometry_places_each_voxel_where_the_fixed_image_shows_it():
    case = make_phantom(1, shape=(10, 12, 14))
    g = case.geometry
    a = np.radians(10.0)
    r = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    c, t = np.array([5.0, -3.0, 2.0]), np.array([1.0, 2.0, -4.0])
    g2 = moved_geometry(g, r, c, t)
    for idx in ((0, 0, 0), (13, 11, 9), (4, 7, 2)):          # (x, y, z) voxel indices
        p_moving = np.asarray(g.to_image(np.zeros(g.shape, np.float32))
                              .TransformIndexToPhysicalPoint(idx))
        p_new = np.asarray(g2.to_image(np.zeros(g.shape, np.float32))
                           .TransformIndexToPhysicalPoint(idx))
        # the voxel now sits at the fixed point that maps to where it was: R (p - c) + c + t
        np.testing.assert_allclose(r @ (p_new - c) + c + t, p_moving, atol=1e-6)


def test_a_shifted_sequence_is_moved_back_and_aligned_ones_are_left():
    case = make_phantom(2, shape=(48, 64, 60), spacing=(1.5, 1.5, 1.5), skull_stripped=True)
    moved = _shifted(case, "t2", (3.0, 7.0, 0.0))
    assert [w.split(" ", 1)[0] for w in case_registration_warnings(moved)] == ["t2"]
    out, notes = run(register_case(moved))
    back = np.asarray(out.sequences["t2"].geometry.origin)
    np.testing.assert_allclose(back, case.sequences["t2"].geometry.origin, atol=1.0)
    assert out.sequences["t2"].array is moved.sequences["t2"].array     # header only
    assert out.sequences["t2"].meta["registered_onto"] == "flair"
    assert any(n.startswith("t2 registered onto flair (translation") for n in notes), notes
    for s in ("t1", "t1ce"):                                            # already aligned
        assert out.sequences[s] is moved.sequences[s]
        assert any(n.startswith(f"{s} left as it is") for n in notes), notes
    assert case_registration_warnings(out) == []


def test_a_synthetic_sequence_is_not_registered():
    case = make_phantom(3, shape=(40, 56, 52), skull_stripped=True)
    synth = _shifted(case, "t1", (6.0, 0.0, 0.0))
    synth = synth.with_sequence("t1", Volume(synth.sequences["t1"].array,
                                             synth.sequences["t1"].geometry, synthetic=True))
    out, notes = run(register_case(synth))
    assert out.sequences["t1"].geometry == synth.sequences["t1"].geometry
    assert not any(n.startswith("t1 ") for n in notes)


def test_analyze_with_register_moves_the_sequence_before_the_stages():
    from napari_radiogen.core.pipeline import AnalysisOptions, Analyzer, StageResult
    case = make_phantom(2, shape=(48, 64, 60), spacing=(1.5, 1.5, 1.5), skull_stripped=True)
    moved = _shifted(case, "t2", (0.0, 8.0, 0.0))
    loaded = []
    for opts in (AnalysisOptions(stages=()), AnalysisOptions(stages=(), register=True)):
        items = list(Analyzer(opts).analyze(moved))
        loaded.append(next(i.value for i in items if isinstance(i, StageResult)))
        res = items[-1]
        said = [w for w in res.warnings if w.startswith("t2 registered onto flair")]
        assert len(said) == int(opts.register), res.warnings
        assert res.registered == (["t2"] if opts.register else [])
    assert case_registration_warnings(loaded[0]) and not case_registration_warnings(loaded[1])
    # the option is part of what a cohort's cache depends on
    assert Analyzer(AnalysisOptions(register=True)).model_fingerprint()["options"] != \
        Analyzer(AnalysisOptions()).model_fingerprint()["options"]


def test_analysis_outputs_hold_the_registered_sequence(tmp_path):
    """write_outputs writes each sequence the registration moved (its voxels as read, its
    header moved back) and names it in analysis.json; an analysis without it writes none."""
    import json

    from napari_radiogen.core.io import load_volume
    from napari_radiogen.core.pipeline import AnalysisOptions, Analyzer, write_outputs
    case = make_phantom(2, shape=(48, 64, 60), spacing=(1.5, 1.5, 1.5), skull_stripped=True)
    moved = _shifted(case, "t2", (0.0, 8.0, 0.0))
    for register in (False, True):
        res = run(Analyzer(AnalysisOptions(stages=(), register=register)).analyze(moved))
        out = tmp_path / str(register)
        paths = write_outputs(res, out, report=False)
        files = sorted(p.name for p in (out / case.case_id).iterdir())
        js = json.loads((out / case.case_id / "analysis.json").read_text())
        assert js["registered"] == (["t2"] if register else [])
        if not register:
            assert not any("registered" in f for f in files), files
            continue
        vol = load_volume(paths["registered_t2"])
        assert js["files"]["registered_t2"] == f"{case.case_id}_t2_registered.nii.gz"
        np.testing.assert_allclose(vol.geometry.origin, case.sequences["t2"].geometry.origin,
                                   atol=1.0)
        np.testing.assert_allclose(vol.array, case.sequences["t2"].array, rtol=1e-6)
        assert not vol.synthetic


@pytest.mark.parametrize("flag", [False, True])
def test_cli_register_flag(flag):
    import argparse

    from napari_radiogen.cli_cmds import analyze
    p = argparse.ArgumentParser()
    analyze.add_arguments(p)
    args = p.parse_args(["case", "--out", "o"] + (["--register"] if flag else []))
    assert args.register is flag


def test_segment_and_predict_register_flag_on_a_shifted_copy_of_the_sample(sample_path, tmp_path):
    """`radiogen segment --register` / `predict --register`: the shifted T2 of a copy of the
    sample is moved back first and said in the JSON; without the flag the offset is warned."""
    import json

    import SimpleITK as sitk
    from _sample_helpers import sample_copy

    from napari_radiogen.cli import main
    case = sample_copy(tmp_path / "BraTS2021_00006", (0.0, 8.0, 0.0))
    t2 = case / "BraTS2021_00006_t2.nii.gz"
    for flag in ([], ["--register"]):
        out = tmp_path / ("reg" if flag else "plain")
        assert main(["segment", str(case), "--out", str(out), "--device", "cpu", *flag]) == 0
        warnings = json.loads((out / "BraTS2021_00006_seg.json").read_text())["warnings"]
        moved = [w for w in warnings if w.startswith("t2 registered onto flair")]
        offset = [w for w in warnings if w.startswith("t2 looks offset from flair")]
        assert (len(moved), len(offset)) == ((1, 0) if flag else (0, 1)), warnings
        # the moved T2 is written beside the mask, back where the unshifted sample has it
        reg = out / "BraTS2021_00006_t2_registered.nii.gz"
        assert reg.exists() is bool(flag)
        js = json.loads((out / "BraTS2021_00006_seg.json").read_text())
        assert js["registered"] == (["t2"] if flag else [])
        if flag:
            assert js["files"]["registered_t2"] == reg.name
            back = sitk.ReadImage(str(reg)).GetOrigin()
            np.testing.assert_allclose(
                back, sitk.ReadImage(str(sample_path / t2.name)).GetOrigin(), atol=1.0)
    assert main(["predict", str(case), "--out", str(tmp_path / "pred"), "--device", "cpu",
                 "--register"]) == 0
    js = json.loads((tmp_path / "pred" / "BraTS2021_00006_predictions.json").read_text())
    assert any(w.startswith("t2 registered onto flair") for w in js["warnings"]), js["warnings"]


def test_the_check_of_the_same_voxels_is_reused_and_an_edit_is_seen(monkeypatch):
    """A case's co-registration check runs when it is opened and again in every analysis: the
    same voxels on the same grids are not compared again, while a header move or an edit of
    the voxels in place is."""
    from napari_radiogen.core import prepare as P
    calls = []
    real = P._sequence_offsets

    def counted(*a, **kw):
        calls.append(1)
        return real(*a, **kw)
    monkeypatch.setattr(P, "_sequence_offsets", counted)
    case = make_phantom(4, shape=(48, 64, 60), spacing=(1.5, 1.5, 1.5), skull_stripped=True)
    assert case_registration_warnings(case) == [] and len(calls) == 1
    assert case_registration_warnings(case) == [] and len(calls) == 1      # reused
    vols = {s: case.sequences[s] for s in ("flair", "t2")}
    first = P.sequence_offsets(vols, case.geometry)
    first["t2"] = "changed by the caller"
    assert P.sequence_offsets(vols, case.geometry)["t2"] != "changed by the caller"
    moved = _shifted(case, "t2", (3.0, 7.0, 0.0))                          # a header move
    assert [w.split(" ", 1)[0] for w in case_registration_warnings(moved)] == ["t2"]
    n = len(calls)
    # the voxels of t2 rolled by 5 voxels (7.5 mm) along y, in place: the header is the same
    a = case.sequences["t2"].array
    a[...] = np.roll(a.copy(), 5, axis=1)
    said = case_registration_warnings(case)
    assert len(calls) == n + 1
    assert [w.split(" ", 1)[0] for w in said] == ["t2"], said
