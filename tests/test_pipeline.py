"""The one orchestration: analyze a case and a cohort (with a corrupt case), outputs, cache,
cancel at every stage. Random-weight test models exercise the mechanics; the shipped models are
checked in test_pipeline_shipped below when installed."""
import csv
import json
from pathlib import Path
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from napari_radiogen.core.errors import Cancelled
from napari_radiogen.core.pipeline import (AnalysisOptions, AnalysisResult, Analyzer,
                                           StageResult, analyze_cohort, write_outputs)
from napari_radiogen.core.progress import CancelToken, Progress, run

from _json_helpers import all_keys, strict_load


@pytest.fixture(scope="module")
def sample_path():
    from napari_radiogen.core.sample import sample_case_path
    return sample_case_path()


def _opts(models, **kw):
    return AnalysisOptions(seg_model=str(models["seg"]), pred_model=str(models["mil"]),
                           device="cpu", **kw)


def test_analyze_case_all_stages_and_outputs(models, sample_path, tmp_path):
    an = Analyzer(_opts(models))
    stages, progress = [], []
    res = None
    for item in an.analyze(sample_path):
        if isinstance(item, StageResult):
            stages.append(item.stage)
        elif isinstance(item, Progress):
            progress.append(item.stage)
        elif isinstance(item, AnalysisResult):
            res = item
    assert stages == ["load", "segment", "predict", "explain"]
    assert {"load", "segment", "predict", "explain"} <= set(progress)
    assert res.segmentation is not None and res.prediction is not None
    assert len(res.explanations) == 1 and res.errors == {}
    assert res.explanations[0].synthetic_inputs == []             # nothing synthetic here
    paths = write_outputs(res, tmp_path, render=False)
    seg = nib.load(paths["segmentation"])
    flair = nib.load(str(next(sample_path.glob("*_flair.nii.gz"))))
    assert seg.shape == flair.shape
    np.testing.assert_allclose(seg.affine, flair.affine, atol=1e-5)
    assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2, 4}
    pred = json.loads(open(paths["predictions"]).read())
    assert set(pred["tasks"]) == {"idh", "codel_1p19q", "grade"}
    assert abs(sum(pred["tasks"]["idh"].values()) - 1) < 1e-5
    heat = nib.load(paths["heatmap_idh"])
    np.testing.assert_allclose(heat.affine, flair.affine, atol=1e-5)
    html = open(paths["report_html"]).read()
    for needle in ("Segmentation", "Prediction", "Explanations", "validated AUC",
                   "De-identified", "key_slice.png"):
        assert needle in html
    assert str(sample_path) not in html          # de-identified: no source paths
    assert "HD95 (mm)" in html and "nan" not in html.lower().replace("nanmean", "")
    for key in ("segmentation", "predictions", "heatmap_idh"):     # the outputs are linked
        assert f"href='{Path(paths[key]).name}'" in html
    # written again into the same folder without the heatmap (a rerun that explains nothing):
    # the earlier run's heatmap goes, so the folder is what analysis.json lists; a file of
    # the user's in the folder stays
    (tmp_path / res.case_id / "notes.txt").write_text("mine")
    res.explanations = []
    again = write_outputs(res, tmp_path, render=False)
    assert "heatmap_idh" not in again and not Path(paths["heatmap_idh"]).exists()
    listed = json.loads(Path(again["analysis"]).read_text())["files"]
    on_disk = {f.name for f in (tmp_path / res.case_id).iterdir()}
    assert on_disk == {Path(f).name for f in listed.values()} | {"analysis.json", "notes.txt"}
    # the models are loaded once and reused for the next case
    ids = {k: id(v) for k, v in an._models.items()}
    run(an.analyze(sample_path))
    assert {k: id(v) for k, v in an._models.items()} == ids


def test_missing_sequence_is_synthesised_or_reported(models, sample_path):
    from napari_radiogen.core.io import load_case
    case = load_case(sample_path)
    del case.sequences["t1ce"]
    res = run(Analyzer(_opts(models)).analyze(case))
    from napari_radiogen.core.models import list_models
    if list_models("synthesis"):
        assert res.synthesized == ["t1ce"]
        assert res.case.sequences["t1ce"].synthetic
        said = [w for w in res.warnings if w.startswith("synthetic input")]
        assert len(said) == 1, res.warnings                                   # said once
        # and what a synthetic T1ce means for the enhancing tumour, once
        assert sum(w.startswith("T1ce is synthetic") for w in res.warnings) == 1
        assert res.segmentation is not None
    else:
        assert "segment" in res.errors and "t1ce" in res.errors["segment"]


def test_default_predictor_gives_way_where_the_case_cannot_be_segmented(sample_path):
    """No T2 and no synthesis: the BraTS segmentation cannot run, so the default predictor's
    tumour-centred member has no window. As in ``radiogen predict``, the default gives way to
    the whole-brain predict_mil and says so, and the heatmap is predict_mil's, made on the
    inputs it predicted from; a predictor the user named stops with the reason."""
    from napari_radiogen.core.io import load_case
    from napari_radiogen.core.models import list_models
    from napari_radiogen.core.predict import default_model_name
    names = {m["name"] for m in list_models("prediction")}
    if "predict_mil" not in names or default_model_name() != "predict_ensemble":
        pytest.skip("the shipped prediction models are not installed")
    case = load_case(sample_path)
    del case.sequences["t2"]
    opts = dict(device="cpu", synthesize_missing=False)
    res = run(Analyzer(AnalysisOptions(explain_tasks=("idh",), **opts)).analyze(case))
    assert "segment" in res.errors and "predict" not in res.errors, res.errors
    assert res.prediction.model == "predict_mil"
    assert sum("predicted with predict_mil" in w for w in res.warnings) == 1, res.warnings
    ex, = res.explanations
    assert ex.model == "predict_mil" and ex.heatmap.shape == case.geometry.shape
    named = run(Analyzer(AnalysisOptions(pred_model="predict_ensemble", explain_tasks=(),
                                         **opts)).analyze(case))
    assert named.prediction is None and "choose predict_mil" in named.errors["predict"]


def test_prediction_lists_the_synthetic_input_of_its_segmentation(models, sample_path,
                                                                  monkeypatch, tmp_path):
    """A T2 synthesised for the segmentation model (no prediction model reads T2) goes into a
    segmentation-based prediction through the tumour mask: the ensemble's result and a single
    model's list it (in the predictions JSON too) and say so; so does a prediction that
    segments the case itself."""
    from napari_radiogen.core import predict as P
    from napari_radiogen.core.io import load_case
    from napari_radiogen.core.models import list_models
    if not list_models("synthesis"):
        pytest.skip("no synthesis model installed")
    case = load_case(sample_path)
    del case.sequences["t2"]
    opts = dict(seg_model=str(models["seg"]), device="cpu", explain_tasks=())
    res = run(Analyzer(AnalysisOptions(pred_model="predict_ensemble", **opts)).analyze(case))
    assert res.synthesized == ["t2"] and res.segmentation.synthetic_inputs == ["t2"]
    assert res.prediction.model == "predict_ensemble"
    assert res.prediction.synthetic_inputs == ["t2"]
    said = [w for w in res.prediction.warnings if "t2, through the tumour segmentation" in w]
    assert len(said) == 1 and said[0].startswith("synthetic input(s) used"), said
    pred = json.loads(open(write_outputs(res, tmp_path, report=False)["predictions"]).read())
    assert pred["synthetic_inputs"] == ["t2"]
    # a single segmentation-based model, on the case with its synthetic T2
    res = run(Analyzer(AnalysisOptions(pred_model="predict_radiomics", **opts))
              .analyze(res.case))
    assert res.prediction.model == "predict_radiomics"
    assert res.prediction.synthetic_inputs == ["t2"]
    # no segmentation given: the prediction's own segmentation used the synthetic T2
    monkeypatch.setattr(P, "_window_segmenter", lambda case, card: str(models["seg"]))
    own = run(P.predict(res.case, "predict_mil_roi", device="cpu"))
    assert own.synthetic_inputs == ["t2"]
    assert any(w.startswith("segmentation (") and "synthetic input(s) used: t2" in w
               for w in own.warnings), own.warnings


def test_explanation_lists_the_synthetic_input_of_its_segmentation(models, sample_path,
                                                                   tmp_path):
    """The heatmap of a tumour-centred model is placed on the analysis's segmentation, made
    with a synthesised T2 (which no prediction model reads): the explanation lists T2 like the
    prediction does (result, analysis.json, the report's table and JSON), and the analysis's
    warnings still say "synthetic" once; an analysis of the same case, T2 now given as
    synthetic, says each note once (the segmentation's and the prediction's; the
    explanation's, the prediction's again, is left out by kind)."""
    from napari_radiogen.core.io import load_case
    from napari_radiogen.core.models import list_models
    if not list_models("synthesis"):
        pytest.skip("no synthesis model installed")
    case = load_case(sample_path)
    del case.sequences["t2"]
    opts = AnalysisOptions(seg_model=str(models["seg"]), pred_model="predict_mil_roi",
                           device="cpu", explain_method="attention")
    res = run(Analyzer(opts).analyze(case))
    assert res.errors == {} and res.synthesized == ["t2"]
    assert res.prediction.synthetic_inputs == ["t2"]
    (ex,) = res.explanations
    assert ex.synthetic_inputs == ["t2"] and ex.metadata["synthetic_inputs"] == ["t2"]
    assert sum("synthetic" in w for w in res.warnings) == 1, res.warnings
    paths = write_outputs(res, tmp_path, render=False)
    summary = json.loads(open(paths["analysis"]).read())
    assert summary["explanations"][0]["synthetic_inputs"] == ["t2"]
    report = json.loads(open(paths["report_json"]).read())
    assert report["explanations"][0]["synthetic_inputs"] == ["t2"]
    html = open(paths["report_html"]).read()
    assert "<th>synthetic inputs</th>" in html and "<td>t2</td>" in html
    # the case with its synthetic T2: nothing synthesised now, the results still say so once
    again = run(Analyzer(opts).analyze(res.case))
    assert again.synthesized == [] and again.explanations[0].synthetic_inputs == ["t2"]
    assert any("synthetic" in w for w in again.explanations[0].warnings)   # said, left out
    said = [w for w in again.warnings if "synthetic" in w]
    assert said == ["synthetic input(s) in the case: t2 (generated by a model, not acquired); "
                    "results that use them say so"], again.warnings
    assert again.synthetic_inputs == ["t2"] and again.summary()["synthetic_inputs"] == "t2"


def test_synthetic_inputs_read_from_files_are_listed_beside_those_synthesised(
        models, sample_path, tmp_path):
    """A case folder whose T1ce is the package's own synthetic file (read back as synthetic)
    and whose T2 is missing (synthesised by the analysis): the analysis names both, in its
    warnings (once each), analysis.json, the report and the summary row."""
    from napari_radiogen.core.models import list_models
    if not list_models("synthesis"):
        pytest.skip("no synthesis model installed")
    case = tmp_path / "BraTS2021_00006"
    shutil.copytree(sample_path, case)
    (case / "BraTS2021_00006_t2.nii.gz").unlink()
    (case / "BraTS2021_00006_t1ce.nii.gz").rename(case / "BraTS2021_00006_t1ce_synth.nii.gz")
    res = run(Analyzer(_opts(models, explain_tasks=())).analyze(case))
    assert res.read_synthetic == ["t1ce"] and res.synthesized == ["t2"]
    assert res.synthetic_inputs == ["t1ce", "t2"]
    said = [w for w in res.warnings if w.startswith("synthetic input")]
    assert len(said) == 2 and "t1ce" in said[0] and "t2" in said[1], res.warnings
    assert res.segmentation.synthetic_inputs == ["t1ce", "t2"]
    paths = write_outputs(res, tmp_path / "out", render=False)
    summary = json.loads(open(paths["analysis"]).read())
    assert summary["synthetic_inputs"] == ["t1ce", "t2"] and summary["synthesized"] == ["t2"]
    assert json.loads(open(paths["report_json"]).read())["synthetic_inputs"] == ["t1ce", "t2"]
    html = open(paths["report_html"]).read()
    assert "t1ce came with the case as synthetic; t2 generated by this analysis" in html
    assert res.summary()["synthetic_inputs"] == "t1ce;t2"


@pytest.mark.parametrize("stage", ["load", "segment", "predict", "explain"])
def test_cancel_at_each_stage(models, sample_path, stage):
    tok = CancelToken()
    an = Analyzer(_opts(models))
    seen = []
    with pytest.raises(Cancelled):
        for item in an.analyze(sample_path, cancel=tok):
            if isinstance(item, Progress):
                seen.append(item.stage)
                if item.stage == stage:
                    tok.cancel()
    assert "done" not in seen


def test_the_cohort_cache_key_follows_a_model_files_content(models, tmp_path):
    """A model chosen by its file and retrained in place (same path, same name) makes the
    cached results stale: the cache key holds the file's content, not only its path."""
    import shutil
    p = tmp_path / Path(models["seg"]).name
    shutil.copy(models["seg"], p)
    an = Analyzer(AnalysisOptions(seg_model=str(p), pred_model=str(models["mil"]),
                                  device="cpu"))
    before = an.model_fingerprint()
    assert before == an.model_fingerprint()
    with open(p, "ab") as f:                  # other weights at the same path
        f.write(b" ")
    assert an.model_fingerprint() != before


def test_cohort_keeps_going_past_a_corrupt_case_and_caches(models, sample_path, tmp_path):
    cohort = tmp_path / "cohort"
    shutil.copytree(sample_path, cohort / "BraTS2021_00006")
    bad = cohort / "BraTS2021_99999"
    bad.mkdir()
    for s in ("t1", "t1ce", "t2", "flair"):
        (bad / f"BraTS2021_99999_{s}.nii.gz").write_bytes(b"\x1f\x8b\x08garbage")
    from napari_radiogen.core.io import list_cases
    cases = list_cases(cohort)
    assert len(cases) == 2
    out = tmp_path / "out"
    an = Analyzer(_opts(models, explain_tasks=()))
    items = run(analyze_cohort(cases, out, analyzer=an, render=False))
    st = {i.case_id or i.path: i.status for i in items}
    assert sorted(st.values()) == ["done", "failed"]
    failed = next(i for i in items if i.status == "failed")
    assert "99999" in failed.path and failed.message
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert len(rows) == 2 and {r["status"] for r in rows} == {"done", "failed"}
    done = next(r for r in rows if r["status"] == "done")
    assert float(done["volume_WT_ml"]) >= 0
    # the case has its expert labels: the summary carries the Dice its _seg.json holds
    seg_json = json.loads((out / "BraTS2021_00006" / "BraTS2021_00006_seg.json").read_text())
    for r in ("WT", "TC", "ET"):
        assert float(done[f"dice_{r}"]) == pytest.approx(
            seg_json["metrics_vs_labels"][r]["dice"], abs=1e-4)
    assert not rows[[r["status"] for r in rows].index("failed")]["dice_WT"]
    # second run: unchanged case comes from the cache
    items2 = run(analyze_cohort(cases, out, analyzer=an, render=False))
    assert sorted(i.status for i in items2) == ["cached", "failed"]
    # de-identified (the default): the case's path is not in its outputs, only a key
    text = (out / "BraTS2021_00006" / "analysis.json").read_text()
    assert str(cohort) not in text and "source_sha256" in text
    # its files are named relative to its folder, not by the output path as given
    files = json.loads(text)["files"]
    assert files["segmentation"] == "BraTS2021_00006_seg.nii.gz" and str(out) not in text
    assert all((out / "BraTS2021_00006" / f).exists() for f in files.values())
    assert str(cohort) not in (out / "summary.csv").read_text()
    # outputs asked otherwise (clinical fields kept): not taken from the cache
    items3 = run(analyze_cohort(cases, out, analyzer=an, render=False, deidentify=False))
    assert sorted(i.status for i in items3) == ["done", "failed"]
    assert str(cohort.resolve()) in (out / "BraTS2021_00006" / "analysis.json").read_text()
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert {Path(r["path"]).name for r in rows} == {"BraTS2021_00006", "BraTS2021_99999"}


def test_cohort_case_whose_every_model_stage_fails_is_failed_not_done(models, tmp_path):
    """A volume that loads but is no brain MRI (a small noise cube): segmentation and
    prediction refuse it, so the case is reported failed with their reasons (and not cached
    as done)."""
    from napari_radiogen.core.io import write_volume
    from napari_radiogen.core.phantom import make_phantom
    cube = make_phantom(0, shape=(12, 12, 12), spacing=(1.0, 1.0, 1.0))
    folder = tmp_path / "cohort" / "CUBE"
    folder.mkdir(parents=True)
    for s, v in cube.sequences.items():
        write_volume(v.array, v.geometry, folder / f"CUBE_{s}.nii.gz")
    an = Analyzer(_opts(models, explain_tasks=()))
    for _ in range(2):
        items = run(analyze_cohort([folder], tmp_path / "out", analyzer=an, render=False))
        assert [i.status for i in items] == ["failed"]
        assert "segment:" in items[0].message and "2D or too thin" in items[0].message
        # nothing analysed, nothing written for it (as radiogen analyze on one case); the
        # summary row says why
        assert not (tmp_path / "out" / "CUBE").exists()
        rows = list(csv.DictReader(open(tmp_path / "out" / "summary.csv")))
        assert [r["status"] for r in rows] == ["failed"] and "2D or too thin" in rows[0]["message"]


def test_cli_analyze_sample(models, sample_path, tmp_path):
    r = subprocess.run([sys.executable, "-m", "napari_radiogen", "analyze", str(sample_path),
                        "--out", str(tmp_path), "--seg-model", str(models["seg"]),
                        "--pred-model", str(models["mil"]), "--no-render", "--device", "cpu"],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "idh:" in r.stdout and "report:" in r.stdout
    d = tmp_path / "BraTS2021_00006"
    for f in ("BraTS2021_00006_seg.nii.gz", "BraTS2021_00006_predictions.json",
              "BraTS2021_00006_report.html", "analysis.json"):
        assert (d / f).exists(), f


def test_cli_analyze_missing_path_is_clean(tmp_path):
    r = subprocess.run([sys.executable, "-m", "napari_radiogen", "analyze",
                        str(tmp_path / "nope"), "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_pack_report_has_key_slices_and_nifti_heatmap(models, tmp_path):
    """A slice pack has no 3D rendering: its report shows the key slices (expert mask,
    segmentation, heatmap), and its heatmap is written as NIfTI (plus the .h5)."""
    from napari_radiogen.core.phantom import make_pack_phantom
    from predict_helpers import write_pack
    pack = write_pack(tmp_path / "PK_0001.h5", make_pack_phantom(seed=1, n_slices=12))
    res = run(Analyzer(AnalysisOptions(pred_model=str(models["mil"]), device="cpu"))
              .analyze(pack))
    assert res.segmentation is not None and res.explanations
    paths = write_outputs(res, tmp_path / "out", render=False)
    png = Path(paths["key_slice_png"])
    assert png.name == "PK_0001_key_slices.png" and png.stat().st_size > 5000
    assert "PK_0001_key_slices.png" in open(paths["report_html"]).read()
    heat = nib.load(paths["heatmap_idh"])
    assert paths["heatmap_idh"].endswith(".nii.gz") and Path(paths["heatmap_idh_h5"]).exists()
    assert heat.shape == (128, 128, 12)


@pytest.mark.shared
def test_cohort_outputs_of_a_training_patient_are_deidentified_strict_and_say_in_sample(
        shared_data, tmp_path):
    """The issue's case: `radiogen analyze TCGA_CS_4941.h5` (default models, de-identified).
    No file holds the age or sex the prediction read (they are listed as removed); every JSON
    file is strict; the patient is among the training patients of the segmentation and of the
    prediction models: each says so once, and the explanations' localisation once for all
    tasks."""
    pack = shared_data / "tcga-lgg" / "TCGA_CS_4941.h5"
    an = Analyzer(AnalysisOptions(device="cpu", explain_tasks=("idh", "grade")))
    items = run(analyze_cohort([pack], tmp_path, analyzer=an, render=False))
    assert [i.status for i in items] == ["done"]
    d = tmp_path / "TCGA_CS_4941"
    clinical = {"age", "sex", "sex_male", "gender", "age_at_initial_pathologic", "os_days",
                "os_event", "race", "ethnicity", "clinical"}

    files = sorted(d.glob("*.json"))
    assert len(files) == 4
    for f in files:
        assert not clinical & set(all_keys(strict_load(f))), f.name
    pred = json.loads((d / "TCGA_CS_4941_predictions.json").read_text())
    assert pred["deidentified"] is True
    assert pred["removed_fields"] == ["features.age", "features.sex_male"]
    assert pred["model"] == "predict_ensemble" and "volume_ml" in pred["features"]
    header = open(tmp_path / "summary.csv").readline().lower()
    assert "age" not in header.split(",") and "sex" not in header and "gender" not in header
    warns = json.loads((d / "analysis.json").read_text())["warnings"]
    in_sample = [w for w in warns if "training data" in w]
    assert in_sample == [
        "TCGA_CS_4941 was in seg_lgg_segresnet2d's training data: its Dice here is in-sample, "
        "not a validation",
        "TCGA_CS_4941 was in predict_ensemble's training data: its predictions here are "
        "in-sample, not a validation (expect them to be right more often than on a new case)",
        "TCGA_CS_4941 was in predict_mil_roi's training data: its localisation score here is "
        "in-sample, not a validation"]


def test_a_cancelled_cohort_run_keeps_every_case_in_the_summary(models, sample_path, tmp_path):
    """Cancelling a rerun of a cohort (cache off) does not wipe the summary: the cancelled case
    is named, and the cases not reached keep their row, with the earlier run's results where
    these are still valid, else "not analysed"."""
    from napari_radiogen.core.pipeline import analyze_cohort
    cohort = tmp_path / "cohort"
    for cid in ("A1", "B2", "C3"):
        shutil.copytree(sample_path, cohort / cid)
    cases = sorted(cohort.iterdir())
    out = tmp_path / "out"
    an = Analyzer(_opts(models, explain_tasks=()))
    run(analyze_cohort(cases[:2], out, analyzer=an, render=False, report=False))
    tok = CancelToken()
    with pytest.raises(Cancelled):
        for x in analyze_cohort(cases, out, analyzer=an, render=False, report=False,
                                use_cache=False, cancel=tok):
            if isinstance(x, Progress) and x.stage == "segment":
                tok.cancel()                              # in the first case
    rows = {r["case_id"]: r for r in csv.DictReader(open(out / "summary.csv"))}
    assert set(rows) == {"A1", "B2", "C3"}
    assert rows["A1"]["status"] == "cancelled"
    assert rows["B2"]["status"] == "cached" and float(rows["B2"]["volume_WT_ml"]) > 0
    assert rows["C3"]["status"] == "not analysed" and "cancelled" in rows["C3"]["message"]
    # cancelled between two cases: the same
    tok = CancelToken()
    with pytest.raises(Cancelled):
        for x in analyze_cohort(cases, out, analyzer=an, render=False, report=False,
                                use_cache=False, cancel=tok):
            if getattr(x, "status", None) == "done":      # A1 finished
                tok.cancel()
    rows = {r["case_id"]: r for r in csv.DictReader(open(out / "summary.csv"))}
    assert [rows[c]["status"] for c in ("A1", "B2", "C3")] == ["done", "cached", "not analysed"]


def test_a_cohort_run_closed_after_a_finished_case_keeps_it_in_the_summary(models, sample_path,
                                                                           tmp_path):
    """A job cancelled as a finished case is handed over stops reading the cohort at once (the
    generator is closed, not cancelled from inside): the summary still has a row per case,
    the finished case done."""
    from napari_radiogen.core.pipeline import analyze_cohort
    cohort = tmp_path / "cohort"
    for cid in ("A1", "B2"):
        shutil.copytree(sample_path, cohort / cid)
    out = tmp_path / "out"
    gen = analyze_cohort(sorted(cohort.iterdir()), out, render=False, report=False,
                         analyzer=Analyzer(_opts(models, explain_tasks=())))
    for x in gen:
        if getattr(x, "status", None) == "done":
            gen.close()
            break
    rows = {r["case_id"]: r for r in csv.DictReader(open(out / "summary.csv"))}
    assert [rows[c]["status"] for c in ("A1", "B2")] == ["done", "not analysed"]
    assert float(rows["A1"]["volume_WT_ml"]) > 0


def test_an_unreliable_analysis_says_so_first_and_in_the_summary(models, tmp_path, capsys):
    """A case that is not skull-stripped (the segmentation can label scalp): the analysis
    carries a caution, its summary row a ``caution`` column, and the CLI prints it first."""
    from napari_radiogen.cli import main
    from napari_radiogen.core.io import write_volume
    from napari_radiogen.core.phantom import make_phantom
    ph = make_phantom(1)                                   # scalp, skull, noisy background
    case = tmp_path / "NS1"
    case.mkdir()
    for s, v in ph.sequences.items():
        write_volume(v.array, v.geometry, case / f"NS1_{s}.nii.gz")
    res = run(Analyzer(_opts(models, explain_tasks=())).analyze(case))
    assert res.cautions() and "not skull-stripped" in res.cautions()[0]
    assert res.summary()["caution"] == res.cautions()[0]
    capsys.readouterr()
    assert main(["analyze", str(case), "--out", str(tmp_path / "o"), "--no-render",
                 "--seg-model", str(models["seg"]), "--pred-model", str(models["mil"]),
                 "--explain", ""]) in (0, 1)
    out = capsys.readouterr().out
    assert "CAUTION: not skull-stripped" in out
    assert out.index("CAUTION") < out.index("warning:")
