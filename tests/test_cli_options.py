"""Option values the commands refuse before any work, in one line with exit status 2
(``--threads`` of every command that has it, ``rank-sequences --limit``, ``explain --frames``
and ``--layer``, ``models --task``), and the origin ``radiogen info --json`` reports: the
file's own, as SimpleITK reads it, beside that of the grid as loaded. Small phantoms, random
test models and tiny volumes only (CPU, a few seconds)."""
from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from napari_radiogen.core.phantom import make_pack_phantom

from _synth_helpers import tiny_model
from predict_helpers import write_pack

SAMPLE = Path(__file__).resolve().parent.parent / "napari_radiogen" / "data" / "BraTS2021_00006"


def run_cli(capsys, *args):
    """``(status, stdout, stderr)`` of ``radiogen ARGS`` in this process (argparse's errors
    exit through SystemExit)."""
    from napari_radiogen.cli import main
    try:
        rc = main([str(a) for a in args])
    except SystemExit as e:
        rc = e.code
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def assert_one_error_line(err: str, *words: str) -> str:
    """The one error line on stderr (the progress lines of the work begun, ``[stage] ...``,
    aside), with ``words`` in it."""
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("[")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("radiogen: error: "), err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def commands_with(option: str):
    """The commands whose parser has ``option``."""
    from napari_radiogen.cli import build_parser
    sub = next(a for a in build_parser()._actions
               if isinstance(a, argparse._SubParsersAction))
    return sorted(name for name, p in sub.choices.items()
                  if any(option in a.option_strings for a in p._actions))


@pytest.fixture(scope="module")
def tiny_synth(tmp_path_factory):
    return str(tiny_model(tmp_path_factory.mktemp("synth") / "tiny_synth.safetensors"))


def _pack(path: Path, seed: int = 0, n: int = 4) -> Path:
    return write_pack(path, make_pack_phantom(seed, n_slices=n))


# -- --threads: 1 or more, in every command that has it -----------------------------------------
#: the arguments each command with --threads needs besides it (a model that does not exist:
#: a value let through stops soon after, not after a synthesis)
THREADS_ARGS = {
    "synthesize": ["synthesize", SAMPLE, "--target", "t1ce", "--model", "no/such.safetensors"],
    "rank-sequences": ["rank-sequences", SAMPLE, "--model", "no/such.safetensors", "--no-maps"],
}


def test_every_command_with_threads_is_checked_here():
    assert commands_with("--threads") == sorted(THREADS_ARGS)


@pytest.mark.parametrize("value", ["0", "-1", "-2", "two"])
@pytest.mark.parametrize("command", sorted(THREADS_ARGS))
def test_threads_below_1_is_refused_before_any_work(command, value, tmp_path, capsys):
    import torch
    before = torch.get_num_threads()
    out = tmp_path / "o"
    rc, _, err = run_cli(capsys, *THREADS_ARGS[command], "--out", out, "--threads", value)
    assert rc == 2
    assert_one_error_line(err, f"{command}: argument --threads: ")
    assert ("must be 1 or more" if value != "two" else "not a whole number") in err
    assert not out.exists() and torch.get_num_threads() == before


def test_threads_sets_torch_threads(tiny_synth, tmp_path, capsys):
    import torch
    before = torch.get_num_threads()
    try:
        rc, _, err = run_cli(capsys, "synthesize", _pack(tmp_path / "P.h5"), "--target", "t1ce",
                             "--model", tiny_synth, "--out", tmp_path / "o", "--threads", "1")
        assert rc == 0, err
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


# -- rank-sequences --limit: 1 or more -----------------------------------------------------------
@pytest.mark.parametrize("value", ["0", "-1"])
def test_rank_sequences_limit_below_1_is_refused(value, tiny_synth, tmp_path, capsys):
    coh = tmp_path / "cohort"
    coh.mkdir()
    for i in range(3):
        _pack(coh / f"PACK{i}.h5", seed=i)
    out = tmp_path / "o"
    rc, _, err = run_cli(capsys, "rank-sequences", coh, "--out", out, "--model", tiny_synth,
                         "--device", "cpu", "--no-maps", "--limit", value)
    assert rc == 2
    assert_one_error_line(err, "rank-sequences: argument --limit: ")
    assert not out.exists()
    if value == "0":              # a value that is taken ranks that many cases
        out = tmp_path / "o2"
        rc, _, err = run_cli(capsys, "rank-sequences", coh, "--out", out, "--model", tiny_synth,
                             "--device", "cpu", "--no-maps", "--limit", "2")
        assert rc == 0, err
        js = json.loads((out / "ranking.json").read_text())
        assert [c["case_id"] for c in js["cases"]] == ["PACK0", "PACK1"]


# -- explain: --frames 0 or more, --layer a layer of the network ----------------------------------
def test_explain_negative_frames_is_refused(models, tmp_path, capsys):
    out = tmp_path / "o"
    rc, _, err = run_cli(capsys, "explain", _pack(tmp_path / "P.h5"), "--model", models["mil"],
                         "--out", out, "--device", "cpu", "--frames", "-1")
    assert rc == 2
    assert_one_error_line(err, "explain: argument --frames: ", "must be 0 or more")
    assert not out.exists()


def test_explain_unknown_layer_is_one_line_naming_the_valid_ones(models, tmp_path, capsys):
    out = tmp_path / "o"
    rc, _, err = run_cli(capsys, "explain", _pack(tmp_path / "P.h5"), "--model", models["mil"],
                         "--out", out, "--device", "cpu", "--no-render", "--layer", "net.nope")
    assert rc == 2
    line = assert_one_error_line(err, "unknown layer 'net.nope'", "net.layer3", "net.layer4")
    assert "target_layer" not in line and not out.exists()


@pytest.mark.parametrize("kind", ["mil", "cnn3d"])
def test_the_core_refuses_an_unknown_layer_and_takes_a_known_one(kind, models):
    """core.explain (what the Explain widget runs) says the bad name before any work, for the
    slice models and the 3D CNN alike; a module inside a stage is a layer too."""
    from napari_radiogen.core.errors import ConfigError
    from napari_radiogen.core.explain import cam_layers, explain
    from napari_radiogen.core.models import load_model
    from napari_radiogen.core.progress import run
    lm = load_model(str(models[kind]))
    case = make_pack_phantom(0, n_slices=4) if kind == "mil" else None
    if case is None:
        from napari_radiogen.core.io import load_case
        case = load_case(SAMPLE)
    with pytest.raises(ConfigError, match=r"unknown layer 'proj' for .*choose one of net\.conv1"):
        run(explain(case, lm, layer="proj", localise=False, device="cpu"))
    names = cam_layers(lm.module, lm.card["input"]["kind"])
    assert "net.layer2" in names and "net.layer2.0" in names and "proj" not in names
    if kind == "mil":            # a name it lists is taken (the 3D run is the slow one)
        res = run(explain(case, lm, layer="net.layer2.0", localise=False, device="cpu"))
        assert res.heatmap.shape == case.sequences[case.reference].array.shape


# -- models --task: an unknown task is an error, a known one without models is said ---------------
def test_models_unknown_task_is_an_error_naming_the_tasks(capsys):
    for extra in ([], ["--json"]):
        rc, out, err = run_cli(capsys, "models", "--task", "nosuchtask", *extra)
        assert rc == 2 and not out
        assert_one_error_line(err, "unknown task 'nosuchtask'", "prediction", "segmentation",
                              "synthesis", "triage")


def test_models_known_task_without_models_keeps_its_message(capsys):
    from napari_radiogen.core.models import list_models, model_tasks
    tasks = model_tasks()
    assert {"prediction", "segmentation", "synthesis", "triage"} <= set(tasks)
    empty = [t for t in tasks if not list_models(t)]
    if not empty:
        pytest.skip("every known task has a model installed")
    rc, out, err = run_cli(capsys, "models", "--task", empty[0])
    assert rc == 0 and out.strip() == f"no models installed for task {empty[0]!r}", (out, err)
    rc, out, _ = run_cli(capsys, "models", "--task", "prediction")
    assert rc == 0 and "predict_mil" in out


# -- info --json: the file's own origin --------------------------------------------------------
def _write(path: Path, code: str, tilt_deg: float = 0.0) -> Path:
    """A 11x9x7 volume stored with the axes of orientation ``code`` (tilted by ``tilt_deg``
    about z), a non-zero origin and unequal spacings, written by SimpleITK."""
    arr = np.random.default_rng(0).random((7, 9, 11)).astype(np.float32) + 1
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((1.1, 0.9, 2.5))
    img.SetOrigin((-113.66, 74.62, -46.86))
    m = np.array(sitk.DICOMOrientImageFilter_GetDirectionCosinesFromOrientation(code))
    m = m.reshape(3, 3)
    a = np.deg2rad(tilt_deg)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    img.SetDirection(tuple((rot @ m).ravel()))
    sitk.WriteImage(img, str(path))
    return path


@pytest.mark.parametrize("code, name, tilt", [("LAS", "ORI_t1.nii.gz", 0.0),
                                              ("PIR", "ORI_t1.nii.gz", 0.0),
                                              ("RAI", "ORI_t1.nrrd", 4.0)])
def test_info_json_reports_the_files_own_origin(code, name, tilt, tmp_path, capsys):
    from napari_radiogen.core.io import load_volume
    f = _write(tmp_path / name, code, tilt)
    rc, out, err = run_cli(capsys, "info", f, "--json")
    assert rc == 0, err
    v = json.loads(out)["sequences"]["t1"]
    assert v["orientation"] == code
    want = sitk.ReadImage(str(f)).GetOrigin()
    np.testing.assert_allclose(v["origin_xyz_mm"], want, atol=2e-3)
    # the grid as loaded (LPS voxel order) starts elsewhere, and is said under its own name
    loaded = load_volume(f).geometry.origin
    np.testing.assert_allclose(v["reoriented_origin_xyz_mm"], loaded, atol=2e-3)
    assert not np.allclose(loaded, want, atol=1.0)


def test_info_json_origin_of_a_nibabel_file_stored_las(tmp_path, capsys):
    """A NIfTI written by nibabel with its x axis towards the left and y towards the front
    (LAS, as the native TCGA scans): the origin is the one SimpleITK reads for the file (LPS
    mm), not the re-oriented grid's."""
    import nibabel as nib
    aff = np.array([[-0.9, 0, 0, 113.7], [0, 0.9, 0, -125.2], [0, 0, 5.5, -46.9], [0, 0, 0, 1]])
    f = tmp_path / "NIB_flair.nii.gz"
    arr = np.random.default_rng(1).random((12, 10, 6)).astype(np.float32) + 1
    nib.save(nib.Nifti1Image(arr, aff), str(f))
    rc, out, err = run_cli(capsys, "info", f, "--json")
    assert rc == 0, err
    v = json.loads(out)["sequences"]["flair"]
    assert v["orientation"] == "LAS"        # x runs to the left, y to the front: not LPS
    np.testing.assert_allclose(v["origin_xyz_mm"], sitk.ReadImage(str(f)).GetOrigin(),
                               atol=2e-3)
    assert v["origin_xyz_mm"] != v["reoriented_origin_xyz_mm"]


def test_source_origin_for_every_orientation():
    """Geometry.source_origin undoes the re-orientation for each of the 48 axis orders and
    directions (a tilted grid included): the origin of the image as it was before it."""
    from napari_radiogen.core.case import Geometry, canonicalize
    img = sitk.GetImageFromArray(np.zeros((5, 4, 3), np.float32))
    img.SetSpacing((1.5, 0.7, 3.0))
    img.SetOrigin((12.5, -30.25, 71.0))
    for perm in itertools.permutations("LPS"):
        for signs in itertools.product((0, 1), repeat=3):
            code = "".join({"L": "LR", "P": "PA", "S": "SI"}[c][s] for c, s in zip(perm, signs))
            m = np.array(sitk.DICOMOrientImageFilter_GetDirectionCosinesFromOrientation(code))
            a = np.deg2rad(5.0)
            rot = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
            img.SetDirection(tuple((rot @ m.reshape(3, 3)).ravel()))
            canon, got_code = canonicalize(img)
            g = Geometry.from_image(canon, source_orientation=got_code)
            assert got_code == code
            np.testing.assert_allclose(g.source_origin, img.GetOrigin(), atol=1e-6,
                                       err_msg=code)
