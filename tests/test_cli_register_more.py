"""`radiogen explain|synthesize|rank-sequences --register`, as segment/predict (test_register.py):
on a copy of the bundled sample with its T2 header shifted 8 mm, without the flag the offset is
warned; with it the T2 is moved back first, the shift is said and the offset warning is gone.
synthesize and rank-sequences make the co-registration check themselves (their synthesis does
not), rank-sequences per case of a folder."""
import json
import shutil

import pytest

from _sample_helpers import sample_copy as _copy
from _synth_helpers import tiny_model

CASE = "BraTS2021_00006"
MOVED = "t2 registered onto flair"
OFFSET = "t2 looks offset from flair"


@pytest.fixture(scope="module")
def shifted(tmp_path_factory):
    """The sample with its T2 shifted 8 mm (as test_register's segment/predict test)."""
    return _copy(tmp_path_factory.mktemp("shifted") / CASE, (0.0, 8.0, 0.0))


@pytest.fixture(scope="module")
def tiny_synth(tmp_path_factory):
    return str(tiny_model(tmp_path_factory.mktemp("synth") / "tiny_synth.safetensors"))


def _said(warnings, text):
    return [w for w in warnings if text in w]


def test_explain_register(shifted, tmp_path, capsys):
    from napari_radiogen.cli import main
    for flag in ([], ["--register"]):
        out = tmp_path / ("reg" if flag else "plain")
        assert main(["explain", str(shifted), "--out", str(out), "--device", "cpu",
                     "--no-render", *flag]) == 0
        js = json.loads((out / f"{CASE}_idh_gradcam.json").read_text())
        w = js["warnings"]
        # the offset is said by the segmentation the heatmap's window is placed on
        assert (len(_said(w, MOVED)), len(_said(w, OFFSET))) == ((1, 0) if flag else (0, 1)), w
        printed = capsys.readouterr().out
        assert (f"warning: {MOVED}" in printed) is bool(flag), printed
        if flag:                                   # the shifts lead the warnings
            assert w[0].startswith("t1 left as it is") and w[2].startswith(MOVED), w


def test_synthesize_register(shifted, tmp_path, capsys):
    """The real T2 the synthetic one is scored against is moved back too: the scores rise."""
    from napari_radiogen.cli import main
    js = {}
    for flag in ([], ["--register"]):
        out = tmp_path / ("reg" if flag else "plain")
        assert main(["synthesize", str(shifted), "--target", "t2", "--out", str(out),
                     "--device", "cpu", *flag]) == 0
        js[bool(flag)] = j = json.loads((out / f"{CASE}_t2_synth.json").read_text())
        w = j["warnings"]
        assert (len(_said(w, MOVED)), len(_said(w, OFFSET))) == ((1, 0) if flag else (0, 1)), w
        assert w[0].startswith("t1 left as it is" if flag else OFFSET), w
        printed = capsys.readouterr().out
        assert (f"warning: {MOVED}" in printed) is bool(flag), printed
    before, after = js[False]["metrics"], js[True]["metrics"]
    assert after["ssim_brain"] > before["ssim_brain"] + 0.1, (before, after)
    assert after["psnr_db"] > before["psnr_db"] + 1.0, (before, after)


def test_synthesize_says_only_the_offsets_of_the_sequences_it_used(shifted, tmp_path):
    from napari_radiogen.cli import main
    out = tmp_path / "o"
    assert main(["synthesize", str(shifted), "--target", "t1ce", "--sources", "t1", "flair",
                 "--out", str(out), "--device", "cpu"]) == 0
    w = json.loads((out / f"{CASE}_t1ce_synth.json").read_text())["warnings"]
    assert not _said(w, OFFSET), w                   # the shifted T2 took no part


def test_rank_sequences_register(tmp_path, tiny_synth, capsys):
    """One case (FLAIR and the shifted T2 only: two pairs to rank, fast), then a folder of it
    and an aligned copy: each case is registered and said on its own."""
    from napari_radiogen.cli import main
    one = _copy(tmp_path / "one" / CASE, (0.0, 8.0, 0.0), keep=("t2", "flair"))
    common = ["--model", tiny_synth, "--device", "cpu", "--no-maps"]
    for flag in ([], ["--register"]):
        out = tmp_path / ("reg" if flag else "plain")
        assert main(["rank-sequences", str(one), "--out", str(out), *common, *flag]) == 0
        (c,) = json.loads((out / "ranking.json").read_text())["cases"]
        w = c["warnings"]
        assert (len(_said(w, MOVED)), len(_said(w, OFFSET))) == ((1, 0) if flag else (0, 1)), w
        printed = capsys.readouterr().out
        assert (f"warning: {MOVED}" in printed) is bool(flag), printed
    cohort = tmp_path / "cohort"
    shutil.copytree(one, cohort / CASE)
    _copy(cohort / "BraTS2021_00007", keep=("t2", "flair"))      # an aligned copy
    for flag in ([], ["--register"]):
        out = tmp_path / ("cohort-reg" if flag else "cohort-plain")
        assert main(["rank-sequences", str(cohort), "--out", str(out), *common, *flag]) == 0
        cases = {c["case_id"]: c["warnings"]
                 for c in json.loads((out / "ranking.json").read_text())["cases"]}
        assert sorted(cases) == [CASE, "BraTS2021_00007"]
        w = cases[CASE]
        assert (len(_said(w, MOVED)), len(_said(w, OFFSET))) == ((1, 0) if flag else (0, 1)), w
        # the aligned copy: nothing to say without the flag, left as it is with it
        assert [x.split(":")[0] for x in cases["BraTS2021_00007"]] == (
            ["t2 left as it is"] if flag else []), cases["BraTS2021_00007"]
        printed = capsys.readouterr().out
        assert (f"warning: {CASE}: {MOVED}" in printed) is bool(flag), printed
