"""CLI robustness: an unusable --out, a case that raises something else than a RadiogenError in a
batch, failed rows' case ids, explain file names and slice-pack outputs, rank-sequences cohorts
with bad cases, progress on stderr when it is not a terminal, analyze's exit status when stages
fail, the same --device choices everywhere, --age bounds, --sequence FILE=SEQ on every command
that reads a case, and help / progress / listing cosmetics. Small phantoms and random
test models only (CPU, a few seconds)."""
from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_radiogen.core.phantom import make_pack_phantom
from napari_radiogen.core.progress import Progress

from _synth_helpers import tiny_model
from predict_helpers import TINY, make_tiny_model, write_pack


def main(*args) -> int:
    from napari_radiogen.cli import main as cli_main
    return cli_main([str(a) for a in args])


@pytest.fixture(scope="module")
def tiny_pred():
    make_tiny_model()
    return TINY


@pytest.fixture(scope="module")
def tiny_synth(tmp_path_factory):
    return str(tiny_model(tmp_path_factory.mktemp("synth") / "tiny_synth.safetensors"))


def _pack(path: Path, seed: int = 0, n: int = 6, **kw) -> Path:
    return write_pack(path, make_pack_phantom(seed, n_slices=n), **kw)


def _corrupt(path: Path) -> Path:
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 200)       # an HDF5 signature, then nothing
    return path


@pytest.fixture
def pack(tmp_path) -> Path:
    return _pack(tmp_path / "PACK0.h5")


# -- 1. --out is a file ------------------------------------------------------------------------
def _out_args(command, case, models, tiny_synth):
    return {"segment": ["segment", case, "--device", "cpu"],
            "predict": ["predict", case, "--device", "cpu"],
            "synthesize": ["synthesize", case, "--target", "t1ce", "--model", tiny_synth,
                           "--device", "cpu"],
            "rank-sequences": ["rank-sequences", case, "--model", tiny_synth, "--device", "cpu",
                               "--no-maps"],
            "explain": ["explain", case, "--model", models["mil"], "--no-render"],
            "analyze": ["analyze", case, "--seg-model", models["seg"], "--pred-model",
                        models["mil"], "--device", "cpu", "--no-render", "--no-report"],
            }[command]


@pytest.mark.parametrize("command", ["segment", "predict", "synthesize", "rank-sequences",
                                     "explain", "analyze"])
def test_out_is_a_file_is_one_clear_line(command, pack, models, tiny_synth, tmp_path, capsys):
    afile = tmp_path / "afile.txt"
    afile.write_text("not a folder")
    args = _out_args(command, pack, models, tiny_synth)
    assert main(*args, "--out", afile) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith(f"radiogen: error: {afile}: cannot create the output folder")
    assert err.strip().count("\n") == 0
    # a folder below a file: the same, naming the file on the way
    assert main(*args, "--out", afile / "sub") == 2
    err = capsys.readouterr().err
    assert f"{afile / 'sub'}: cannot create the output folder ({afile} is a file)" in err
    assert afile.read_text() == "not a folder"


@pytest.mark.parametrize("command", ["predict", "explain", "rank-sequences"])
def test_bad_input_leaves_no_output_folder(command, models, tiny_pred, tiny_synth, tmp_path,
                                           capsys):
    png = tmp_path / "slice.png"
    from PIL import Image
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(png)
    out = tmp_path / "out"
    args = {"predict": ["predict", png, "--model", tiny_pred, "--device", "cpu"],
            "explain": ["explain", png, "--model", models["mil"]],
            "rank-sequences": ["rank-sequences", png, "--model", tiny_synth]}[command]
    assert main(*args, "--out", out) == 2
    assert "radiogen: error:" in capsys.readouterr().err
    assert not out.exists()


# -- 2. batch: any exception of one case -------------------------------------------------------
def test_batch_goes_on_past_any_exception_and_ids_failed_rows(tiny_pred, tmp_path, capsys,
                                                               monkeypatch):
    from napari_radiogen.core import predict as P
    coh = tmp_path / "cohort"
    coh.mkdir()
    for i in range(2):
        _pack(coh / f"PACK{i}.h5", seed=i)
    _corrupt(coh / "PACK9.h5")
    real = P.predict

    def flaky(case, *a, **k):
        if case.case_id == "PACK1":
            raise ValueError("boom from a library\nsecond line")
        return real(case, *a, **k)

    monkeypatch.setattr(P, "predict", flaky)
    out = tmp_path / "out"
    assert main("predict", coh, "--out", out, "--model", tiny_pred, "--device", "cpu") == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "PACK1: FAILED: ValueError: boom from a library second line" in err
    assert "PACK9: FAILED: " in err and "PACK9.h5:" in err
    assert (out / "PACK0_predictions.json").exists()
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert [(r["case_id"], r["status"]) for r in rows] == [
        ("PACK0", "ok"), ("PACK1", "failed"), ("PACK9", "failed")]
    assert rows[1]["message"] == "ValueError: boom from a library second line"
    # a failed row still says which model was asked for
    assert {r["model"] for r in rows} == {rows[0]["model"]} and rows[0]["model"]


def test_batch_still_stops_on_keyboard_interrupt(tiny_pred, tmp_path, capsys, monkeypatch):
    from napari_radiogen.core import predict as P
    coh = tmp_path / "cohort"
    coh.mkdir()
    for i in range(2):
        _pack(coh / f"PACK{i}.h5", seed=i)

    def interrupted(case, *a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(P, "predict", interrupted)
    assert main("predict", coh, "--out", tmp_path / "out", "--model", tiny_pred,
                "--device", "cpu") == 130
    assert "interrupted" in capsys.readouterr().err


def test_analyze_cohort_goes_on_past_any_exception(models, tmp_path, capsys, monkeypatch):
    from napari_radiogen.core import pipeline
    coh = tmp_path / "cohort"
    coh.mkdir()
    for i in range(2):
        _pack(coh / f"PACK{i}.h5", seed=i)
    real = pipeline.Analyzer.analyze

    def flaky(self, case_or_path, **k):
        if Path(str(case_or_path)).name == "PACK1.h5":
            raise OSError("disk on fire")
        return real(self, case_or_path, **k)

    monkeypatch.setattr(pipeline.Analyzer, "analyze", flaky)
    out = tmp_path / "out"
    rc = main("analyze", coh, "--out", out, "--seg-model", models["seg"], "--pred-model",
              models["mil"], "--device", "cpu", "--explain", "none", "--no-render", "--no-report")
    captured = capsys.readouterr()
    assert rc == 1, captured.err
    assert "Traceback" not in captured.err
    assert "PACK1: failed (OSError: disk on fire)" in captured.out
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert sorted(r["status"] for r in rows) == ["done", "failed"]
    bad = next(r for r in rows if r["status"] == "failed")
    assert bad["message"] == "OSError: disk on fire" and bad["case_id"] == "PACK1"
    assert bad["path"] == ""          # de-identified: the case's file name stays out
    assert (out / "PACK0" / "analysis.json").exists()


# -- 3. / 5. explain: file names, slice packs -----------------------------------------------------
def test_explain_gradcampp_file_names(models, pack, tmp_path):
    out = tmp_path / "out"
    assert main("explain", pack, "--task", "grade", "--method", "gradcam++", "--model",
                models["mil"], "--out", out, "--no-render") == 0
    names = sorted(p.name for p in out.iterdir())
    assert "PACK0_grade_gradcampp.nii.gz" in names and "PACK0_grade_gradcampp.json" in names
    assert not any("gradcampppp" in n for n in names)


def test_explain_pack_writes_nifti_on_the_pack_grid_and_png(models, pack, tmp_path):
    from napari_radiogen.core.io import load_case, load_volume
    out = tmp_path / "out"
    assert main("explain", pack, "--task", "idh", "--model", models["mil"], "--out", out) == 0
    nii = out / "PACK0_idh_gradcam.nii.gz"
    vol = load_volume(nii)
    case = load_case(pack)
    assert vol.geometry.same_grid(case.geometry)        # the pack's nominal grid
    assert vol.array.shape == case.sequences[case.reference].array.shape
    assert vol.array.dtype == np.float32
    assert vol.array.min() >= 0 and vol.array.max() <= 1 and vol.array.max() > 0
    import nibabel as nib
    assert nib.load(str(nii)).get_data_dtype() == np.float32
    info = json.loads((out / "PACK0_idh_gradcam.json").read_text())
    # the JSON names its sibling files relative to its folder, not by the --out path
    assert info["heatmap"] == nii.name and str(out) not in json.dumps(info)
    import h5py
    with h5py.File(out / info["heatmap_h5"]) as f:            # the .h5 stays, as an extra
        np.testing.assert_allclose(f["heatmap"][()], vol.array, atol=1e-6)
    from PIL import Image
    png = Image.open(out / info["png"])
    assert info["png"] == "PACK0_idh_gradcam.png"
    assert np.asarray(png.convert("L")).std() > 5           # not blank
    assert not list(out.glob("*.gif"))


# -- 4. rank-sequences cohort with bad cases ------------------------------------------------------
def test_rank_cohort_skips_bad_cases(tiny_synth, tmp_path, capsys):
    from napari_radiogen.core import progress
    from napari_radiogen.core.io import load_case
    from napari_radiogen.core.synthesize import rank_sequences
    coh = tmp_path / "cohort"
    coh.mkdir()
    good = [_pack(coh / f"PACK{i}.h5", seed=i, n=4) for i in range(2)]
    _corrupt(coh / "PACK7.h5")                                     # cannot be loaded
    _pack(coh / "PACK8.h5", seed=8, n=4, available=(False, True, False))   # FLAIR only
    (coh / "empty").mkdir()                                        # no case: said, not failed
    out = tmp_path / "out"
    assert main("rank-sequences", coh, "--out", out, "--model", tiny_synth,
                "--device", "cpu") == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "PACK7" in err and "PACK8" in err
    assert "skipped: empty/: " in err
    js = json.loads((out / "ranking.json").read_text())
    assert [c["case_id"] for c in js["cases"]] == ["PACK0", "PACK1"]
    assert js["cohort"]["n_cases"] == 2
    failed = {f["case"]: f["message"] for f in js["failed"]}
    assert set(failed) == {"PACK7", "PACK8"}
    assert "PACK7.h5" in failed["PACK7"] and "at least 2" in failed["PACK8"]
    # de-identified: the messages and the map files name no absolute path
    assert failed["PACK7"].startswith("PACK7.h5: ") and str(tmp_path) not in json.dumps(js)
    assert [s["folder"] for s in js["skipped"]] == ["empty/"]
    assert js["cases"][0]["map_files"]["flair"] == "PACK0_flair_diffmap.nii.gz"
    assert (out / "PACK0_flair_diffmap.nii.gz").exists() and (out / "ranking.png").exists()
    # the cohort scores are those of ranking the good cases together
    ref = progress.run(rank_sequences([load_case(p) for p in good], tiny_synth, device="cpu",
                                      maps=False))
    for s, v in ref.cohort_scores.items():
        for k, x in v.items():
            assert js["cohort"]["scores"][s][k] == pytest.approx(x, abs=1e-6)


def test_rank_cohort_in_the_core_reports_each_bad_case_and_goes_on(tiny_synth, tmp_path):
    """core.synthesize.rank_cohort (what the CLI runs on a folder): a case that cannot be
    loaded or ranked comes out as a RankFailure in its turn, the others are ranked, and a
    cohort where none can be is an error; cancelling stops it."""
    from napari_radiogen.core.errors import Cancelled, RadiogenError
    from napari_radiogen.core.progress import CancelToken, Progress
    from napari_radiogen.core.synthesize import RankFailure, RankResult, rank_cohort
    paths = [_pack(tmp_path / "PACK0.h5", seed=0, n=4), _corrupt(tmp_path / "PACK7.h5"),
             _pack(tmp_path / "PACK1.h5", seed=1, n=4)]
    items = list(rank_cohort(paths, tiny_synth, device="cpu", maps=False))
    kinds = [type(i).__name__ for i in items if not isinstance(i, Progress)]
    assert kinds == ["RankFailure", "RankResult"]
    failure = next(i for i in items if isinstance(i, RankFailure))
    assert failure.case == "PACK7" and "PACK7.h5" in failure.message
    res = items[-1]
    assert isinstance(res, RankResult) and [c.case_id for c in res.cases] == ["PACK0", "PACK1"]
    with pytest.raises(RadiogenError, match="none of the 1 case"):
        list(rank_cohort([paths[1]], tiny_synth, device="cpu"))
    tok = CancelToken()
    tok.cancel()
    with pytest.raises(Cancelled):
        list(rank_cohort(paths, tiny_synth, device="cpu", cancel=tok))


def test_rank_cohort_all_failed_is_exit_2(tiny_synth, tmp_path, capsys):
    coh = tmp_path / "cohort"
    coh.mkdir()
    _pack(coh / "A.h5", n=4, available=(False, True, False))       # FLAIR only: unrankable
    _corrupt(coh / "B.h5")
    out = tmp_path / "out"
    assert main("rank-sequences", coh, "--out", out, "--model", tiny_synth) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "none of the 2 case(s) could be ranked" in err.splitlines()[-1]
    assert not out.exists()


def test_rank_single_bad_case_is_still_exit_2(tiny_synth, tmp_path, capsys):
    p = _pack(tmp_path / "ONE.h5", n=4, available=(False, True, False))
    assert main("rank-sequences", p, "--out", tmp_path / "o", "--model", tiny_synth) == 2
    assert "at least 2" in capsys.readouterr().err


# -- 6. progress on stderr ------------------------------------------------------------------------
class _TTY(io.StringIO):
    def isatty(self):
        return True


def test_progress_line_plain_lines_off_a_terminal():
    from napari_radiogen.cli_cmds._common import ProgressLine
    s = io.StringIO()
    with ProgressLine(s) as show:
        for i in range(5):
            show(Progress("segment", i, 5, f"step {i}"))
        show(Progress("predict", 0, 2))
        show(Progress("predict", 1, 2))
    text = s.getvalue()
    assert "\r" not in text and text.endswith("\n")
    assert [ln.split("]")[0] for ln in text.splitlines()] == ["[segment", "[predict"]


def test_progress_line_on_a_terminal_ends_its_line():
    from napari_radiogen.cli_cmds._common import ProgressLine
    s = _TTY()
    with pytest.raises(RuntimeError):
        with ProgressLine(s) as show:
            show(Progress("segment", 1, 5))
            raise RuntimeError
    assert s.getvalue().startswith("\r[segment]") and s.getvalue().endswith("\n")


def _failing_explain(*a, **k):
    from napari_radiogen.core.errors import RadiogenError
    yield Progress("explain", 0, 4, "loading model")
    yield Progress("explain", 1, 4, "preparing slices")
    raise RadiogenError("the model refused this case")


def test_explain_progress_off_a_terminal_and_error_on_its_own_line(pack, tmp_path, capsys,
                                                                     monkeypatch):
    from napari_radiogen.core import explain as E
    monkeypatch.setattr(E, "explain", _failing_explain)
    assert main("explain", pack, "--out", tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert "\r" not in err
    assert err.splitlines() == ["[explain]   0.0% (0/4) loading model",
                                "radiogen: error: the model refused this case"]


def test_explain_progress_on_a_terminal_then_error_on_its_own_line(pack, tmp_path, monkeypatch):
    from napari_radiogen.core import explain as E
    monkeypatch.setattr(E, "explain", _failing_explain)
    tty = _TTY()
    monkeypatch.setattr(sys, "stderr", tty)
    assert main("explain", pack, "--out", tmp_path / "o") == 2
    err = tty.getvalue()
    assert err.startswith("\r[explain]")
    assert "\nradiogen: error: the model refused this case\n" in err


# -- 7. analyze: the exit status of one case follows its stages -----------------------------------
def _analyze(case, out, *extra):
    return main("analyze", case, "--out", out, "--device", "cpu", "--explain", "none",
                "--no-render", "--no-report", *extra)


def test_analyze_one_case_all_stages_ran_exits_0(models, pack, tmp_path, capsys):
    out = tmp_path / "out"
    assert _analyze(pack, out, "--pred-model", models["mil"]) == 0     # default 2D seg model
    captured = capsys.readouterr()
    assert "skipped" not in captured.out and "analysed in part" not in captured.err
    assert (out / "PACK0" / "analysis.json").exists()


def test_analyze_one_case_with_a_failed_stage_exits_1_with_its_outputs(models, pack, tmp_path,
                                                                      capsys):
    out = tmp_path / "out"
    # a 3D segmentation model on a 2D slice pack: the segment stage fails, predict runs
    assert _analyze(pack, out, "--seg-model", models["seg"], "--pred-model", models["mil"]) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert "warning: segment skipped:" in captured.out and "idh:" in captured.out
    assert "radiogen: PACK0: analysed in part; 1 stage(s) failed: segment: " in captured.err
    analysis = json.loads((out / "PACK0" / "analysis.json").read_text())
    assert "segment" in analysis["errors"]
    assert (out / "PACK0" / "PACK0_predictions.json").exists()


def test_analyze_one_case_with_nothing_analysed_exits_2_and_writes_nothing(
        models, pack, tmp_path, capsys, monkeypatch):
    from napari_radiogen.core import predict as P
    from napari_radiogen.core.errors import RadiogenError

    def refuse(*a, **k):
        raise RadiogenError("missing sequence(s): t1ce")
        yield                                                   # a generator, as predict is

    monkeypatch.setattr(P, "predict", refuse)
    out = tmp_path / "out"
    assert _analyze(pack, out, "--seg-model", models["seg"], "--pred-model", models["mil"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("radiogen: error: PACK0: nothing could be analysed: segment: ")
    assert "; predict: missing sequence(s): t1ce" in last
    assert not out.exists()


def test_analyze_cohort_case_with_a_failed_stage_exits_1(models, tmp_path, capsys):
    coh = tmp_path / "cohort"
    coh.mkdir()
    for i in range(2):
        _pack(coh / f"PACK{i}.h5", seed=i)
    out = tmp_path / "out"
    assert _analyze(coh, out, "--seg-model", models["seg"], "--pred-model", models["mil"]) == 1
    captured = capsys.readouterr()
    assert "PACK0: done, with errors (segment: " in captured.out
    assert "(2 cases, 0 failed, 2 with errors)" in captured.out
    # the cached rerun says the same
    assert _analyze(coh, out, "--seg-model", models["seg"], "--pred-model", models["mil"]) == 1
    assert "PACK1: cached, with errors (segment: " in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (["--seg-model", "nosuchmodel"], "--seg-model: no model named 'nosuchmodel'"),
    (["--pred-model", "nosuchmodel"], "--pred-model: no model named 'nosuchmodel'"),
    (["--synth-model", "nosuchmodel"], "--synth-model: no model named 'nosuchmodel'"),
    (["--explain", "idh,nosuchtask"], "--explain: unknown task(s) nosuchtask"),
    (["--device", "cuda"], "CUDA was requested but no GPU is available; use --device cpu"),
])
def test_analyze_request_errors_stop_before_any_work(extra, message, models, pack, tmp_path,
                                                     capsys, monkeypatch):
    import torch
    from napari_radiogen.core import pipeline
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def never(*a, **k):
        raise AssertionError("the analysis started")

    monkeypatch.setattr(pipeline.Analyzer, "analyze", never)
    out = tmp_path / "out"
    assert main("analyze", pack, "--out", out, "--no-render", "--no-report", *extra) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    assert err.startswith("radiogen: error: ") and message in err
    assert not out.exists()


def test_analyze_help_states_the_exit_rule(capsys):
    with pytest.raises(SystemExit):
        main("analyze", "--help")
    text = capsys.readouterr().out
    assert "exit status" in text and "nothing could be analysed" in text


# -- 8. --device: the same choices, and the same answer to cuda without a GPU, everywhere ----------
def _device_args(command, pack, tmp_path):
    out = tmp_path / "out"
    return {"analyze": ["analyze", pack, "--out", out],
            "segment": ["segment", pack, "--out", out],
            "predict": ["predict", pack, "--out", out],
            "synthesize": ["synthesize", pack, "--target", "t1ce", "--out", out],
            "rank-sequences": ["rank-sequences", pack, "--out", out],
            "explain": ["explain", pack, "--out", out],
            "classify-slices": ["classify-slices", pack, "--out", out],
            "bench": ["bench"],
            "evaluate": ["evaluate", "nosuchmodel", tmp_path, "--out", out],
            "train": ["train", "phantom_demo", "--out", out]}[command]


DEVICE_COMMANDS = ["analyze", "segment", "predict", "synthesize", "rank-sequences", "explain",
                   "classify-slices", "bench", "evaluate", "train"]


@pytest.mark.parametrize("command", DEVICE_COMMANDS)
def test_device_choices_are_the_same_for_every_command(command, pack, tmp_path, capsys,
                                                       monkeypatch):
    import torch
    from napari_radiogen.cli import build_parser
    args = [str(a) for a in _device_args(command, pack, tmp_path)]
    for bad in ("gpu", "foo", "cuda:x"):
        with pytest.raises(SystemExit) as e:
            main(*args, "--device", bad)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert f"argument --device: invalid choice: '{bad}'" in err and "Traceback" not in err
    parser = build_parser()
    for ok in ("auto", "cpu", "cuda", "cuda:1"):
        assert parser.parse_args(args + ["--device", ok]).device == ok
    # cuda where there is no GPU: one line, exit 2, before any work
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(*args, "--device", "cuda") == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == ("radiogen: error: CUDA was requested but no GPU is "
                                            "available; use --device cpu")
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_resolve_device_refuses_unknown_devices_in_one_line(monkeypatch):
    import torch
    from napari_radiogen.core.errors import ModelFileError
    from napari_radiogen.core.models import resolve_device
    assert resolve_device("cpu") == "cpu" and resolve_device(" CPU ") == "cpu"
    for bad in ("gpu", "foo", "cuda:x", "cuda0"):
        with pytest.raises(ModelFileError, match="unknown device"):
            resolve_device(bad)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu" and resolve_device(None) == "cpu"
    with pytest.raises(ModelFileError, match="no GPU is available"):
        resolve_device("cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda") == "cuda" and resolve_device("cuda:0") == "cuda:0"
    with pytest.raises(ModelFileError, match="no GPU number 3"):
        resolve_device("cuda:3")


# -- 9. predict: --age and --sex ------------------------------------------------------------------
@pytest.mark.parametrize("age", ["-5", "121", "nan", "inf", "abc"])
def test_predict_refuses_an_implausible_age(age, pack, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main("predict", pack, "--out", tmp_path / "out", "--age", age)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "argument --age:" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_predict_age_and_sex_values(pack, tmp_path, capsys):
    from napari_radiogen.cli import build_parser
    a = build_parser().parse_args(["predict", str(pack), "--out", "o", "--age", "0",
                                   "--sex", "f"])
    assert a.age == 0.0 and a.sex == "f"
    assert build_parser().parse_args(["predict", str(pack), "--out", "o", "--age",
                                      "120"]).age == 120.0
    with pytest.raises(SystemExit):
        main("predict", pack, "--out", tmp_path / "out", "--sex", "X")
    assert "argument --sex: invalid choice: 'X'" in capsys.readouterr().err


# -- 10. --sequence FILE=SEQ for every command that reads a case ---------------------------------
def _unnamed_volume(tmp_path) -> Path:
    from napari_radiogen.core.io import write_volume
    from napari_radiogen.core.phantom import make_phantom
    c = make_phantom(0, shape=(16, 32, 32), spacing=(3.0, 3.0, 3.0), sequences=("flair",),
                     skull_stripped=True)
    return write_volume(c.sequences["flair"].array, c.sequences["flair"].geometry,
                        tmp_path / "scan.nii.gz")


SEQUENCE_COMMANDS = ["analyze", "segment", "predict", "synthesize", "rank-sequences", "explain",
                     "classify-slices", "info"]


@pytest.mark.parametrize("command", SEQUENCE_COMMANDS)
def test_every_case_command_takes_the_sequence_option_its_error_names(
        command, tiny_pred, tmp_path, capsys, monkeypatch):
    from napari_radiogen.core import io as IO
    from napari_radiogen.core.errors import RadiogenError
    scan = _unnamed_volume(tmp_path)
    out = tmp_path / "out"
    args = {"analyze": ["analyze", scan, "--out", out, "--device", "cpu"],
            "segment": ["segment", scan, "--out", out, "--device", "cpu"],
            "predict": ["predict", scan, "--out", out, "--device", "cpu", "--model", tiny_pred],
            "synthesize": ["synthesize", scan, "--target", "t1", "--out", out],
            "rank-sequences": ["rank-sequences", scan, "--out", out],
            "explain": ["explain", scan, "--out", out],
            "classify-slices": ["classify-slices", scan, "--out", out],
            "info": ["info", scan]}[command]
    # the file's name does not tell its sequence: the error says which option names it
    assert main(*args) == 2
    err = capsys.readouterr().err
    assert "cannot tell which sequence this file is from its name" in err
    assert "--sequence scan.nii.gz=SEQ" in err
    # ... and that option is there: the overrides reach load_case
    seen = []
    real = IO.load_case

    def recording(path, *a, overrides=None, **k):
        seen.append(overrides)
        if command == "info":
            return real(path, *a, overrides=overrides, **k)
        raise RadiogenError("stop here")

    monkeypatch.setattr(IO, "load_case", recording)
    rc = main(*args, "--sequence", "scan.nii.gz=flair")
    err = capsys.readouterr().err
    assert "unrecognized arguments" not in err
    assert seen and seen[-1] == {"scan.nii.gz": "flair"}
    assert rc == (0 if command == "info" else 2)


def test_synthesize_with_a_sequence_override_runs(tiny_synth, tmp_path):
    scan = _unnamed_volume(tmp_path)
    out = tmp_path / "out"
    assert main("synthesize", scan, "--target", "t1", "--sequence", "scan.nii.gz=flair",
                "--model", tiny_synth, "--device", "cpu", "--out", out) == 0
    info = json.loads(next(out.glob("*_t1_synth.json")).read_text())
    assert info["sources"] == ["flair"]


def test_an_unreadable_file_of_a_case_is_refused_with_the_way_on_that_works(tiny_synth, tmp_path,
                                                                          capsys):
    """The command line does not leave a broken file out on its own (the viewer does); its
    error names the option that reads the case without it, and that option works."""
    case = _phantom_case_folder(tmp_path / "P1", truncate="flair")
    out = tmp_path / "out"
    assert main("synthesize", case, "--target", "flair", "--model", tiny_synth, "--device",
                "cpu", "--out", out) == 2
    err = capsys.readouterr().err
    assert "P1_flair.nii.gz: truncated gzip" in err
    assert "--sequence 'P1_flair.nii.gz=ignore'" in err and not out.exists()
    assert main("synthesize", case, "--target", "flair", "--model", tiny_synth, "--device",
                "cpu", "--out", out, "--sequence", "P1_flair.nii.gz=ignore") == 0
    info = json.loads((out / "P1_flair_synth.json").read_text())
    assert "flair" not in info["sources"] and info["sources"]
    # the only readable file of a case has no way on: no hint
    lone = tmp_path / "lone"
    lone.mkdir()
    (case / "P1_flair.nii.gz").rename(lone / "P1_flair.nii.gz")
    assert main("synthesize", lone, "--target", "t1", "--model", tiny_synth, "--device", "cpu",
                "--out", tmp_path / "o2") == 2
    assert "=ignore" not in capsys.readouterr().err


def test_classify_slices_sequence_still_names_the_sequence_to_classify(tmp_path, monkeypatch):
    from napari_radiogen.core import triage
    from napari_radiogen.core.errors import RadiogenError
    seen = {}

    def stop(case, model, sequence=None, **k):
        seen["sequence"], seen["present"] = sequence, sorted(case.sequences)
        raise RadiogenError("stop here")
        yield

    monkeypatch.setattr(triage, "classify_volume", stop)
    scan = _unnamed_volume(tmp_path)
    assert main("classify-slices", scan, "--out", tmp_path / "o", "--sequence", "flair",
                "--sequence", "scan.nii.gz=flair") == 2
    assert seen == {"sequence": "flair", "present": ["flair"]}


# -- 11. cosmetics ----------------------------------------------------------------------------------
def test_top_level_help_has_no_developer_notes(capsys):
    with pytest.raises(SystemExit):
        main("--help")
    text = capsys.readouterr().out
    assert "cli_cmds" not in text and "Subcommands live" not in text and "``" not in text
    assert "COMMAND --help" in text


def test_progress_without_a_count_shows_no_count():
    from napari_radiogen.cli_cmds._common import ProgressLine
    s = io.StringIO()
    with ProgressLine(s) as show:
        show(Progress("synthesize", 0, 0, "loading model"))
        show(Progress("slices", 2, 4, "t1ce"))
        show(Progress("done"))
    assert s.getvalue().splitlines() == ["[synthesize] loading model",
                                         "[slices]  50.0% (2/4) t1ce", "[done]"]


def test_train_list_columns_line_up(capsys):
    assert main("train", "--list") == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    assert len(lines) > 3
    assert len({ln.index(" task=") for ln in lines}) == 1
    assert all(" task=" in ln for ln in lines)
    names = [ln.split()[0] for ln in lines]
    assert max(map(len, names)) > 28                    # a long name, as the shipped ones


# -- 11. usage errors are one line; a closed pipe is no traceback ---------------------------------
def test_a_bad_option_value_is_one_error_line(capsys):
    for argv, want in ((["train", "x", "--out", "o", "--epochs", "abc"],
                        "radiogen: error: train: argument --epochs: invalid int value: 'abc'"),
                       (["nosuchcommand"], "radiogen: error: argument COMMAND: invalid choice")):
        with pytest.raises(SystemExit) as e:
            main(*argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith(want) and err.count("\n") == 1 and "usage:" not in err
        assert "--help` lists the options" in err


def test_output_into_a_closed_pipe_ends_quietly():
    """`radiogen models --json | head -c 10`: the reader closes the pipe early; no traceback,
    exit status 141 (as a program killed by SIGPIPE)."""
    import subprocess
    import sys
    code = ("import sys\nfrom napari_radiogen.cli import main\n"
            "sys.exit(main(['models', '--json']))")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    p.stdout.read(10)
    p.stdout.close()                       # the reader goes away
    err = p.stderr.read().decode()
    assert p.wait(timeout=300) == 141, err
    assert "Traceback" not in err and "BrokenPipeError" not in err


# -- batch outputs: de-identified messages, sub-folders with no case said, relative JSON paths ---
def _phantom_case_folder(folder: Path, seed: int = 0, truncate: str = "") -> Path:
    """A small 3D case folder ``<name>/<name>_<seq>.nii.gz``; ``truncate``: that sequence's
    file cut in half (an incomplete download)."""
    from napari_radiogen.core.io import write_volume
    from napari_radiogen.core.phantom import make_phantom
    case = make_phantom(seed, shape=(32, 40, 40), spacing=(4.0, 4.0, 4.0), case_id=folder.name)
    folder.mkdir(parents=True)
    for s, v in case.sequences.items():
        f = write_volume(v.array, v.geometry, folder / f"{folder.name}_{s}.nii.gz")
        if s == truncate:
            data = f.read_bytes()
            f.write_bytes(data[: len(data) // 2])
    return folder


def _no_case_folders(coh: Path) -> None:
    """``empty/`` and ``junk/`` (extension-less files that are not DICOM, as a DICOM export's
    DICOMDIR and IM0000 ... would look when corrupt)."""
    (coh / "empty").mkdir()
    junk = coh / "junk"
    junk.mkdir()
    for n in ("DICOMDIR", "IM0000", "IM0001"):
        (junk / n).write_bytes(b"\x01\x02junk" * 50)
    (junk / "notes.txt").write_text("hello")


def test_segment_cohort_messages_relative_and_empty_folders_said(models, tmp_path, capsys):
    """segment on a folder: a failed case's message names its file relative to the cohort
    folder (as analyze's summary does), not by its absolute path; sub-folders holding no case
    are said on a 'skipped:' line and get a 'skipped' row, without counting as failed; the
    _seg.json names its labels file relative to --out."""
    coh = tmp_path / "cohort"
    _phantom_case_folder(coh / "good")
    _phantom_case_folder(coh / "trunc", seed=1, truncate="flair")
    _no_case_folders(coh)
    out = tmp_path / "out"
    assert main("segment", coh, "--out", out, "--model", models["seg"], "--device", "cpu") == 1
    err = capsys.readouterr().err
    assert "skipped: empty/: " in err and "skipped: junk/: " in err
    assert "1 of 2 case(s) failed: trunc" in err            # the skipped folders are no cases
    rows = list(csv.DictReader(open(out / "volumes.csv")))
    by_id = {r["case_id"]: r for r in rows}
    assert [r["case_id"] for r in rows] == ["good", "trunc", "empty/", "junk/"]
    assert by_id["good"]["status"] == "ok" and by_id["trunc"]["status"] == "failed"
    assert by_id["trunc"]["message"].startswith("trunc/trunc_flair.nii.gz: ")
    assert by_id["empty/"]["status"] == by_id["junk/"]["status"] == "skipped"
    assert "empty" in by_id["empty/"]["message"] and by_id["junk/"]["message"]
    assert not any(str(tmp_path) in r["message"] for r in rows)
    seg = json.loads((out / "good_seg.json").read_text())
    assert seg["files"] == {"labels": "good_seg.nii.gz"}
    assert (out / seg["files"]["labels"]).exists()


def test_predict_cohort_messages_relative_identified_keeps_them(tiny_pred, tmp_path, capsys):
    coh = tmp_path / "cohort"
    coh.mkdir()
    _pack(coh / "PACK0.h5")
    _corrupt(coh / "PACK9.h5")
    (coh / "empty").mkdir()
    out = tmp_path / "out"
    assert main("predict", coh, "--out", out, "--model", tiny_pred, "--device", "cpu") == 1
    err = capsys.readouterr().err
    assert "skipped: empty/: " in err and "1 of 2 case(s) failed: PACK9" in err
    rows = {r["case_id"]: r for r in csv.DictReader(open(out / "summary.csv"))}
    assert rows["PACK9"]["message"].startswith("PACK9.h5: ")
    assert rows["empty/"]["status"] == "skipped" and rows["empty/"]["model"] == ""
    # --identified: the message is the reader's, with the path
    out2 = tmp_path / "out2"
    assert main("predict", coh, "--out", out2, "--model", tiny_pred, "--device", "cpu",
                "--identified") == 1
    rows = {r["case_id"]: r for r in csv.DictReader(open(out2 / "summary.csv"))}
    assert rows["PACK9"]["message"].startswith(str(coh / "PACK9.h5"))


def test_predict_cohort_with_only_good_cases_and_an_empty_folder_exits_0(tiny_pred, tmp_path,
                                                                         capsys):
    coh = tmp_path / "cohort"
    coh.mkdir()
    _pack(coh / "PACK0.h5")
    (coh / "empty").mkdir()
    assert main("predict", coh, "--out", tmp_path / "out", "--model", tiny_pred,
                "--device", "cpu") == 0
    assert "skipped: empty/: " in capsys.readouterr().err


def test_analyze_and_info_cohort_say_the_folders_with_no_case(models, tmp_path, capsys):
    coh = tmp_path / "cohort"
    coh.mkdir()
    _pack(coh / "PACK0.h5")
    _no_case_folders(coh)
    out = tmp_path / "out"
    main("analyze", coh, "--out", out, "--seg-model", models["seg"], "--pred-model",
         models["mil"], "--device", "cpu", "--explain", "none", "--no-render", "--no-report")
    captured = capsys.readouterr()
    assert "skipped: empty/: " in captured.err and "skipped: junk/: " in captured.err
    assert "(1 cases, 0 failed" in captured.out and "2 folder(s) skipped" in captured.out
    rows = {r["case_id"]: r for r in csv.DictReader(open(out / "summary.csv"))}
    assert set(rows) == {"PACK0", "empty/", "junk/"}
    assert rows["empty/"]["status"] == rows["junk/"]["status"] == "skipped"
    assert rows["empty/"]["path"] == "" and str(tmp_path) not in rows["junk/"]["message"]
    # radiogen info lists them too (table and JSON)
    assert main("info", coh) == 0
    text = capsys.readouterr().out
    assert "(1 case(s))" in text and "skipped: empty/: " in text and "skipped: junk/: " in text
    assert main("info", coh, "--json") == 0
    js = json.loads(capsys.readouterr().out)
    assert [s["folder"] for s in js["skipped"]] == ["empty/", "junk/"]


def test_skipped_folders_leaves_nested_cohorts_and_cases_alone(tmp_path):
    from napari_radiogen.cli_cmds._batch import skipped_folders
    from napari_radiogen.core.io import list_cases
    coh = tmp_path / "cohort"
    coh.mkdir()
    (coh / "site1").mkdir()
    _pack(coh / "site1" / "PACK0.h5")
    _pack(coh / "PACK1.h5")
    (coh / "empty").mkdir()
    (coh / ".hidden").mkdir()
    cases = list_cases(coh)
    assert sorted(Path(c).name for c in cases) == ["PACK0.h5", "PACK1.h5"]
    skipped = skipped_folders(coh, cases)
    assert [n for n, _ in skipped] == ["empty"]
    assert str(tmp_path) not in skipped[0][1]


def test_relative_to_folder():
    from napari_radiogen.core.outputs import relative_to_folder
    base = Path("/data/out")
    got = relative_to_folder({"a": base / "x.nii.gz", "b": [str(base / "sub" / "y.png"), None],
                              "c": "/elsewhere/z.png", "d": 3}, base)
    assert got == {"a": "x.nii.gz", "b": ["sub/y.png", None], "c": "/elsewhere/z.png", "d": 3}


def test_device_and_analyze_option_help(capsys):
    for command in ("segment", "analyze", "classify-slices"):
        with pytest.raises(SystemExit):
            main(command, "--help")
        text = capsys.readouterr().out
        assert "--device auto|cpu|cuda[:N]" in text and "{auto,cpu,cuda}" not in text
    with pytest.raises(SystemExit):
        main("analyze", "--help")
    text = " ".join(capsys.readouterr().out.split())
    assert "--no-report no HTML/JSON report" in text
    assert "--no-cache a folder of cases: recompute every case" in text


# -- in-sample cases: a batch says it once; analyze prints the Dice its note speaks of ----------
def _all_in_sample(monkeypatch, ids):
    """Every model's card lists ``ids`` as its training patients."""
    from napari_radiogen.core import insample
    monkeypatch.setattr(insample, "training_patients",
                        lambda card: frozenset(insample._norm(i) for i in ids))


def test_predict_batch_says_the_in_sample_cases_once(tiny_pred, tmp_path, capsys, monkeypatch):
    """88 TCGA-LGG packs printed 88 in-sample warnings: one line for the batch now, with the
    count and a few names; each case's JSON keeps its own note, and one case still says it."""
    coh = tmp_path / "cohort"
    coh.mkdir()
    for i in range(5):
        _pack(coh / f"PACK{i}.h5", seed=i, n=4)
    _all_in_sample(monkeypatch, ["PACK0", "PACK1", "PACK2", "PACK4"])
    out = tmp_path / "out"
    assert main("predict", coh, "--out", out, "--model", tiny_pred, "--device", "cpu") == 0
    text = capsys.readouterr().out
    assert text.count("training data") == 1, text
    line = next(ln for ln in text.splitlines() if "training data" in ln)
    assert line == (f"warning: in-sample: 4 of 5 cases were in {TINY}'s training data (PACK0, "
                    "PACK1, PACK2 and 1 more): its predictions here are in-sample, not a "
                    "validation (expect them to be right more often than on a new case); each "
                    "case's JSON says so"), line
    assert text.index(line) > text.index("[5/5] PACK4")          # after the cases
    for i, said in ((0, True), (3, False), (4, True)):
        js = json.loads((out / f"PACK{i}_predictions.json").read_text())
        assert any(w.startswith(f"PACK{i} was in {TINY}'s training data: ")
                   for w in js["warnings"]) == said, js["warnings"]
    assert main("predict", coh / "PACK0.h5", "--out", tmp_path / "one", "--model", tiny_pred,
                "--device", "cpu") == 0
    assert f"    warning: PACK0 was in {TINY}'s training data: " in capsys.readouterr().out


def test_in_sample_note_is_recognised_from_its_text():
    from napari_radiogen.core import insample
    card = {"training_data": {"patients": ["P1"]}}
    note = insample.in_sample_note("P1", "m_x", card, insample.DICE)
    assert insample.in_sample_parts(note) == ("m_x", insample.DICE)
    assert insample.in_sample_parts(str(note)) == ("m_x", insample.DICE)      # read back
    other = insample.in_sample_note("C", "m_x", card, insample.PREDICTION, ["P1"])
    assert insample.in_sample_parts(str(other)) == ("m_x", insample.PREDICTION)
    assert insample.in_sample_parts("t2 ignored by the predictor") is None


def test_analyze_cohort_says_the_in_sample_cases_once(models, tmp_path, capsys, monkeypatch):
    coh = tmp_path / "cohort"
    coh.mkdir()
    for i in range(2):
        _pack(coh / f"PACK{i}.h5", seed=i, n=4)
    _all_in_sample(monkeypatch, ["PACK0", "PACK1"])
    out = tmp_path / "out"
    assert main("analyze", coh, "--out", out, "--pred-model", models["mil"], "--device", "cpu",
                "--explain", "none", "--no-render", "--no-report") == 0
    text = capsys.readouterr().out
    said = [ln for ln in text.splitlines() if "training data" in ln]
    # the segmentation model's (its Dice against the packs' masks) and the predictor's
    assert len(said) == 2 and all(ln.startswith("warning: in-sample: 2 of 2 cases were in ")
                                  and "(PACK0, PACK1)" in ln for ln in said), text
    assert any("its Dice here is in-sample" in ln for ln in said), said
    analysis = json.loads((out / "PACK0" / "analysis.json").read_text())
    assert sum("training data" in w for w in analysis["warnings"]) == 2


def test_analyze_prints_the_dice_its_in_sample_note_speaks_of(models, tmp_path, capsys,
                                                              monkeypatch):
    """A case with its own labels (a pack's mask, a BraTS *_seg) gets Dice per region in the
    summary (its in-sample note says 'its Dice here is in-sample'; no Dice was printed), and in
    the segmentation JSON; a case without labels prints none, and its note does not say Dice."""
    _all_in_sample(monkeypatch, ["PACK0", "BARE0"])
    labelled = _pack(tmp_path / "PACK0.h5", n=4)
    case = make_pack_phantom(0, n_slices=4)
    case.labels = None
    bare = write_pack(tmp_path / "BARE0.h5", case)
    out = tmp_path / "out"
    assert _analyze(labelled, out, "--pred-model", models["mil"]) == 0
    text = capsys.readouterr().out
    dice = next((ln for ln in text.splitlines() if "Dice" in ln and "warning" not in ln), "")
    assert dice.startswith("  Dice vs its mask: WT 0."), text
    seg = json.loads((out / "PACK0" / "PACK0_seg.json").read_text())
    assert f"{seg['metrics_vs_labels']['WT']['dice']:.3f}" in dice
    assert "PACK0_seg.json" in dice
    assert "its Dice here is in-sample" in text
    assert _analyze(bare, out, "--pred-model", models["mil"]) == 0
    text = capsys.readouterr().out
    assert "Dice" not in text and "this segmentation is in-sample" in text, text
    # a BraTS-like 3D case folder with its *_seg.nii.gz: Dice per region, against that file
    from napari_radiogen.core.io import write_volume
    from napari_radiogen.core.phantom import make_phantom
    ph = make_phantom(0, case_id="PH3D")
    folder = tmp_path / "PH3D"
    folder.mkdir()
    for s, v in ph.sequences.items():
        write_volume(v.array, v.geometry, folder / f"PH3D_{s}.nii.gz")
    write_volume(ph.labels.array, ph.labels.geometry, folder / "PH3D_seg.nii.gz", labels=True)
    _analyze(folder, out, "--seg-model", models["seg"], "--pred-model", models["mil"])
    text = capsys.readouterr().out
    dice = next((ln for ln in text.splitlines() if "Dice" in ln and "warning" not in ln), "")
    assert dice.startswith("  Dice vs its labels (PH3D_seg.nii.gz): WT "), text
    assert ", TC " in dice and ", ET " in dice and "PH3D_seg.json" in dice


def test_explain_task_default_is_said_and_is_the_widgets(models, pack, tmp_path, capsys):
    """`radiogen explain` explains idh unless told (as the Explain widget's first task and
    `analyze --explain`); its help says so (it said nothing), and the output names the task."""
    from napari_radiogen.core.explain import TASKS
    with pytest.raises(SystemExit):
        main("explain", "--help")
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: idh, as in the Explain widget and radiogen analyze --explain;" in text
    assert "--model MODEL prediction model name or file (default: the default prediction" in text
    assert TASKS[0] == "idh"               # the widget's task list starts with it
    out = tmp_path / "out"
    assert main("explain", pack, "--model", models["mil"], "--out", out, "--no-render") == 0
    assert capsys.readouterr().out.startswith("PACK0: idh ")
    assert (out / "PACK0_idh_gradcam.nii.gz").exists()


def test_a_warning_repeated_word_for_word_in_a_batch_is_printed_once(tiny_pred, tmp_path,
                                                                      capsys):
    """A warning every pack of a folder gets (e.g. the nominal spacing of slice packs) was
    printed under each case (88 times on TCGA-LGG): it is printed in full under the first case
    that has it, and a line at the end counts and names the cases; the other warnings stay under
    their case, and each case's JSON keeps all of its own."""
    coh = tmp_path / "cohort"
    coh.mkdir()
    for i in range(4):
        _pack(coh / f"PACK{i}.h5", seed=i, n=4)
    out = tmp_path / "out"
    assert main("predict", coh, "--out", out, "--model", tiny_pred, "--device", "cpu") == 0
    text = capsys.readouterr().out
    per_case = {i: json.loads((out / f"PACK{i}_predictions.json").read_text())["warnings"]
                for i in range(4)}
    common = set(per_case[0]).intersection(*map(set, per_case.values()))
    common = [w for w in common if "training data" not in w]
    assert common, per_case                    # the fixture gives every pack the same warning
    for w in common:
        assert text.count(f"    warning: {w}") == 1, text          # under the first case only
        assert text.index(f"    warning: {w}") < text.index("[2/4] PACK1")
        short = w if len(w) <= 100 else w[:97] + "..."
        assert (f"warning: 4 of 4 cases (PACK0, PACK1, PACK2, PACK3) had the warning printed "
                f"under PACK0: {short}") in text, text
    # a single case prints its warnings as before
    assert main("predict", coh / "PACK1.h5", "--out", tmp_path / "one", "--model", tiny_pred,
                "--device", "cpu") == 0
    one = capsys.readouterr().out
    assert all(f"    warning: {w}" in one for w in common)
