"""`radiogen evaluate`: exit statuses, failed cases and their reasons, input checks (--limit,
DATA, labels CSV), fold models, and what the report says (in-sample headings, notes, CIs)."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest

from napari_radiogen.cli import main
from napari_radiogen.core.evaluate import metrics as M
from napari_radiogen.core.evaluate.report import write_report


# -- helpers ----------------------------------------------------------------------------------
def _cohort(tmp_path: Path, n: int = 4, corrupt: bool = False, rows=None) -> Path:
    from napari_radiogen.core.phantom import make_pack_phantom
    from predict_helpers import write_pack
    d = tmp_path / "cohort"
    d.mkdir()
    out = []
    for i in range(n):
        write_pack(d / f"PH_{i:02d}.h5", make_pack_phantom(seed=i, n_slices=8))
        out.append({"patient_id": f"PH_{i:02d}", "idh": ["mutant", "wildtype"][i % 2],
                    "codel_1p19q": "non-codel", "grade": [2, 3][i % 2],
                    "os_days": 300 + 100 * i, "os_event": 1})
    if corrupt:
        (d / "PH_99.h5").write_bytes(b"not hdf5")
        out.append({"patient_id": "PH_99", "idh": "mutant", "codel_1p19q": "codel",
                    "grade": 3, "os_days": 100, "os_event": 1})
    rows = out if rows is None else rows(out)
    with open(d / "clinical.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return d


def _phantom_model(path: Path, **card_extra) -> Path:
    """A phantom-demo model with random weights (its card names the task and config unless
    ``card_extra`` says otherwise)."""
    import torch
    from napari_radiogen.core.models import new_card, save_model
    from src_models.tiny import build_tiny_cnn2d
    torch.manual_seed(0)
    kw = {"in_channels": 1, "n_classes": 2, "width": 4, "depth": 2}
    fields = {"train_task": "phantom-demo",
              "config": {"task": "phantom-demo", "phantom": {"n": 6, "slices": 2, "size": 16},
                         "model": {"width": 4, "depth": 2}},
              "sequences": ["flair"], "input_size": [1, 16, 16], "classes": ["no blob", "blob"],
              "training_data": {"patients": ["phantom-000", "phantom-001"]}}
    fields.update(card_extra)
    fields = {k: v for k, v in fields.items() if v is not None}
    card = new_card(path.stem, "demo-classification",
                    {"builder": "src_models.tiny:build_tiny_cnn2d", "kwargs": kw}, **fields)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(path, build_tiny_cnn2d(**kw).state_dict(), card)
    return path


def _run(argv, capsys):
    try:
        rc = main(argv)
    except SystemExit as e:          # argparse errors
        rc = e.code
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


# -- metrics and report (no model) ---------------------------------------------------------
def test_auc_ci_needs_two_cases_of_each_class():
    a = M.auc_with_ci([0, 0, 0, 1], [0.1, 0.2, 0.3, 0.9])
    assert a["auc"] == 1.0 and a["ci95"] == [None, None]
    assert "at least 2" in a["ci_note"]
    b = M.auc_with_ci([0, 0, 1, 1, 0, 1], [0.1, 0.6, 0.7, 0.9, 0.2, 0.4], n_boot=200)
    assert b["ci95"][0] is not None and "ci_note" not in b


def test_recall_of_a_class_absent_from_the_truth_is_undefined():
    m = M.classification_metrics([0, 0, 0], [0.2, 0.7, 0.1])
    assert m["recall"] is None and m["f1"] is None
    assert m["recall_per_class"] == {"0": pytest.approx(2 / 3), "1": None}
    mc = M.classification_metrics([0, 1, 1], np.array([[.9, .05, .05], [.1, .8, .1],
                                                       [.1, .2, .7]]), classes=["a", "b", "c"])
    assert mc["recall_per_class"]["c"] is None
    assert mc["recall"] == pytest.approx((1.0 + 0.5) / 2)     # over the classes in the truth


def test_evaluation_report_lists_failures_notes_and_says_in_sample(tmp_path):
    preds = [{"patient_id": f"p{i}", "dice_WT": 0.8, "hd95_WT": [2.0, 400.0, 1.0][i],
              "dice_ET": 1.0, "hd95_ET": 0.0} for i in range(3)]
    preds.append({"patient_id": "p3", "dice_WT": 0.7, "hd95_WT": 3.0, "dice_ET": 0.5,
                  "hd95_ET": 4.0})
    preds.append({"patient_id": "p4", "idh": 0.69})        # a probability without a label
    preds.append({"patient_id": "p5", "idh": 0.3, "y_idh": 0})
    html_p, js = write_report(
        tmp_path / "rep", title="m on d",
        summary={"dice_WT": {"mean": 0.78, "sd": None, "ci95": [None, None], "n": 4}},
        predictions=preds, card={"task": "segmentation", "final_model": None},
        evaluation={"n_patients": 4, "in_training_data": 2, "failed": 1,
                    "failed_cases": [{"case": "bad.h5", "reason": "not a readable HDF5 file"}],
                    "no_labels": 0, "no_labels_cases": [], "notes": ["a note"]})
    data = json.loads(js.read_text())
    text = html_p.read_text()
    assert data["failed"] == 1 and data["no_labels"] == 0          # counts, lists beside
    assert data["failed_cases"] == [{"case": "bad.h5", "reason": "not a readable HDF5 file"}]
    assert "bad.h5: not a readable HDF5 file" in text
    assert "Held-out" not in text and "held-out" not in text
    assert "In-sample metrics (not held out: 2 of the 4" in text
    assert "shipped model" not in text and "null" not in text
    assert "a note" in data["notes"] and "a note" in text
    seg = data["segmentation"]
    assert seg["WT"]["hd95"]["ci95"][0] == 0.0                   # clipped: a distance
    assert seg["ET"]["absent_in_truth_and_prediction"] == 3
    assert seg["ET"]["dice_without_absent"]["mean"] == pytest.approx(0.5)
    assert "absent from the truth (and the prediction) in 3 of 4" in text
    assert "other" not in data                                    # no "Per-patient: idh" junk
    assert "Per-patient metrics" not in text


def test_report_counts_failed_cases_given_as_a_list(tmp_path):
    """A caller passing the cases as ``failed`` / ``no_labels`` lists still gets counts in
    report.json, the cases beside them."""
    html_p, js = write_report(tmp_path / "rep", title="t", predictions=[],
                              evaluation={"n_patients": 2, "in_training_data": 0,
                                          "failed": [{"case": "x.h5", "reason": "bad"}],
                                          "no_labels": ["P9", "P8"]})
    data = json.loads(js.read_text())
    assert data["failed"] == 1 and data["failed_cases"] == [{"case": "x.h5", "reason": "bad"}]
    assert data["no_labels"] == 2 and data["no_labels_cases"] == ["P9", "P8"]
    assert "Failed cases (1)" in html_p.read_text() and "x.h5: bad" in html_p.read_text()
    _, js = write_report(tmp_path / "rep2", title="t", predictions=[],
                         evaluation={"n_patients": 2, "in_training_data": 0})
    data = json.loads(js.read_text())
    assert data["failed"] == 0 and data["failed_cases"] == []


def test_report_removes_its_own_old_figures_only(tmp_path):
    out = tmp_path / "rep"
    preds = [{"patient_id": f"p{i}", "target": "old", "y_true": i % 2, "y_prob": 0.2 + 0.5 * (i % 2)}
             for i in range(6)]
    write_report(out, title="first", predictions=preds)
    assert (out / "figures" / "roc_old.png").exists()
    (out / "figures" / "mine.png").write_bytes(b"x")
    (out / "figures" / "notes.txt").write_text("keep")
    preds2 = [dict(p, target="new") for p in preds]
    _, js = write_report(out, title="second", predictions=preds2)
    names = sorted(p.name for p in (out / "figures").iterdir())
    assert names == ["mine.png", "notes.txt", "roc_new.png"]
    assert json.loads(js.read_text())["figures"] == ["roc_new.png"]


# -- the command ------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_limit_must_be_a_positive_integer(tmp_path, capsys, value):
    rc, _, err = _run(["evaluate", "x", str(tmp_path), "--out", str(tmp_path / "o"),
                       "--limit", value], capsys)
    assert rc == 2 and "--limit" in err
    assert not (tmp_path / "o").exists()


def test_missing_data_is_an_input_error(tmp_path, capsys):
    from predict_helpers import TINY, make_tiny_model
    make_tiny_model()
    rc, _, err = _run(["evaluate", TINY, str(tmp_path / "nope"), "--out",
                       str(tmp_path / "o")], capsys)
    assert rc == 2 and "DATA: no such folder" in err and "clinical.csv" not in err
    m = _phantom_model(tmp_path / "m" / "ph.safetensors")
    rc, _, err = _run(["evaluate", str(m), str(tmp_path / "nope"), "--out",
                       str(tmp_path / "o")], capsys)
    assert rc == 2 and "DATA: no such folder" in err


def test_failed_cases_exit_1_with_their_reasons(tmp_path, capsys):
    from predict_helpers import TINY, make_tiny_model
    make_tiny_model()
    cohort = _cohort(tmp_path, n=4, corrupt=True)
    out = tmp_path / "rep"
    rc, stdout, err = _run(["evaluate", TINY, str(cohort), "--out", str(out), "--device",
                            "cpu"], capsys)
    assert rc == 1
    assert "PH_99.h5: failed:" in err and "HDF5" in err
    assert "[evaluate] (0/0)" not in err and "(0/0)" not in err
    assert "n_patients         4" in stdout                      # an int, not 4.0000
    assert "failed             1 (left out" in stdout
    rep = json.loads((out / "report.json").read_text())
    assert rep["failed"] == 1                                     # a count, as before
    assert rep["failed_cases"][0]["case"] == "PH_99.h5"
    assert "HDF5" in rep["failed_cases"][0]["reason"]
    assert rep["data"] == "cohort"                                # its name, not its path
    assert str(tmp_path) not in (out / "report.json").read_text()
    assert str(tmp_path) not in (out / "report.html").read_text()
    assert "PH_99.h5" in (out / "report.html").read_text()
    assert {r["patient_id"] for r in rep["predictions"]} == {f"PH_{i:02d}" for i in range(4)}
    # codel: one class only -> named, with the reason, in the output and the report
    assert "auc_codel_1p19q not computed: one class only" in stdout
    assert any("auc_codel_1p19q not computed" in n for n in rep["notes"])
    assert rep["summary"]["auc_idh"]["n"] == 4
    # --json: failed is a count (as the prediction path printed it), the cases beside it
    rc, stdout, err = _run(["evaluate", TINY, str(cohort), "--out", str(tmp_path / "rep2"),
                            "--device", "cpu", "--json"], capsys)
    assert rc == 1 and "PH_99.h5: failed:" in err
    res = json.loads(stdout)
    assert res["failed"] == 1 and isinstance(res["failed"], int)
    assert [f["case"] for f in res["failed_cases"]] == ["PH_99.h5"]
    assert res["no_labels"] == 0 and res["no_labels_cases"] == []


def test_labels_csv_checks(tmp_path, capsys):
    from predict_helpers import TINY, make_tiny_model
    make_tiny_model()
    cohort = _cohort(tmp_path, n=4)
    bad = tmp_path / "lab.csv"
    bad.write_text("patient_id,foo\nPH_00,1\n")
    rc, _, err = _run(["evaluate", TINY, str(cohort), "--labels", str(bad), "--out",
                       str(tmp_path / "o"), "--device", "cpu"], capsys)
    assert rc == 2 and "lab.csv" in err and "idh" in err and "os_days" in err
    part = tmp_path / "part.csv"
    part.write_text("patient_id,idh\nPH_00,mutant\nPH_01,wildtype\nPH_02,mutant\n")
    out = tmp_path / "rep"
    rc, stdout, err = _run(["evaluate", TINY, str(cohort), "--labels", str(part), "--out",
                            str(out), "--device", "cpu", "--json"], capsys)
    assert rc == 0
    res = json.loads(stdout)
    assert res["n_patients"] == 3 and res["no_labels"] == 1 and res["no_labels_cases"] == ["PH_03"]
    assert res["failed"] == 0 and res["failed_cases"] == []
    assert any("1 case(s) of cohort have no row in part.csv" in n for n in res["notes"])
    rep = json.loads((out / "report.json").read_text())
    assert "PH_03" not in {r["patient_id"] for r in rep["predictions"]}
    assert rep["no_labels"] == 1 and rep["no_labels_cases"] == ["PH_03"]   # same types


def test_limit_counts_patients(tmp_path, capsys):
    from predict_helpers import TINY, make_tiny_model
    make_tiny_model()
    cohort = _cohort(tmp_path, n=4)
    rc, stdout, _ = _run(["evaluate", TINY, str(cohort), "--out", str(tmp_path / "o"),
                          "--device", "cpu", "--limit", "2", "--json"], capsys)
    assert rc == 0 and json.loads(stdout)["n_patients"] == 2


def test_engine_task_model_title_and_counts(tmp_path, capsys):
    m = _phantom_model(tmp_path / "m" / "ph.safetensors")
    data = tmp_path / "anything"
    data.mkdir()
    out = tmp_path / "rep"
    rc, stdout, err = _run(["evaluate", str(m), str(data), "--out", str(out), "--device",
                            "cpu"], capsys)
    assert rc == 0, err
    rep = json.loads((out / "report.json").read_text())
    assert rep["title"] == "ph on synthetic phantoms"          # not "on anything"
    assert all(v["n"] == 6 for v in rep["summary"].values())    # patients, not 1
    assert rep["in_training_data"] == 2
    assert "In-sample metrics (not held out: 2 of the 6" in (out / "report.html").read_text()
    assert "is not read" in stdout


def test_fold_model_of_a_run(tmp_path, capsys):
    run = tmp_path / "run"
    fold = _phantom_model(run / "folds" / "fold1_best.safetensors", train_task=None,
                          config=None, fold=1)
    _phantom_model(run / "final.safetensors")
    data = tmp_path / "d"
    data.mkdir()
    rc, _, err = _run(["evaluate", str(fold), str(data), "--out", str(tmp_path / "o"),
                       "--device", "cpu"], capsys)
    assert rc == 2 and "fold model" in err and "final.safetensors" in err
    (run / "config.json").write_text(json.dumps(
        {"task": "phantom-demo", "phantom": {"n": 6, "slices": 2, "size": 16},
         "model": {"width": 4, "depth": 2}}))
    rc, stdout, err = _run(["evaluate", str(fold), str(data), "--out", str(tmp_path / "o"),
                            "--device", "cpu"], capsys)
    assert rc == 0, err
    assert "config.json" in stdout and "of the run run;" in stdout
    rep_text = (tmp_path / "o" / "report.json").read_text()
    assert "read from the run's config.json" in rep_text
    assert str(tmp_path) not in rep_text                          # no local path in notes
    assert str(tmp_path) not in (tmp_path / "o" / "report.html").read_text()


def test_library_warnings_become_report_notes(tmp_path, monkeypatch, recwarn):
    """A warning raised while a section is computed (lifelines' ConvergenceWarning, sklearn's
    UndefinedMetricWarning) is a note of the report, not a line on stderr."""
    import warnings
    from napari_radiogen.core.evaluate import survival as sv
    real = sv.risk_summary

    def noisy(*a, **k):
        warnings.warn("Newton-Raphson failed to converge", RuntimeWarning)
        return real(*a, **k)
    monkeypatch.setattr(sv, "risk_summary", noisy)
    preds = [{"patient_id": f"p{i}", "risk": float(i % 3), "os_days": 100.0 + 50 * i,
              "os_event": float(i % 2)} for i in range(8)]
    _, js = write_report(tmp_path / "rep", title="t", predictions=preds,
                         evaluation={"n_patients": 8, "in_training_data": 0})
    data = json.loads(js.read_text())
    assert any("RuntimeWarning: Newton-Raphson failed to converge" in n for n in data["notes"])
    assert not [w for w in recwarn if "Newton-Raphson" in str(w.message)]
    assert "Held-out metrics (8 patients, none in the model's training data)" in \
        (tmp_path / "rep" / "report.html").read_text()


def test_absent_region_note():
    from napari_radiogen.core.evaluate.run import _absent_region_notes
    rows = [{"patient_id": "a", "dice_ET": 1.0, "hd95_ET": 0.0, "dice_WT": 0.8, "hd95_WT": 3.0},
            {"patient_id": "b", "dice_ET": 0.4, "hd95_ET": 5.0, "dice_WT": 0.7, "hd95_WT": 4.0}]
    notes = _absent_region_notes(rows)
    assert len(notes) == 1 and notes[0].startswith("dice_ET:") and "1 of 2" in notes[0]


def test_cli_evaluate_one_case_folder_and_a_folder_without_labels(tmp_path, capsys):
    """`radiogen evaluate MODEL CASE_FOLDER`: one labelled case folder is a cohort of one
    (exit 0, n_patients 1); a folder without a labels file says what DATA must hold (exit 2)."""
    import torch
    from test_evaluate import _brats_model_with_card_postprocess, _write_brats_case
    torch.set_num_threads(1)
    model = _brats_model_with_card_postprocess(tmp_path / "ev_pp.safetensors")
    case_dir = _write_brats_case(tmp_path / "PH_0002")
    assert main(["evaluate", str(model), str(case_dir), "--out", str(tmp_path / "ev"),
                 "--device", "cpu", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_patients"] == 1 and out["failed"] == 0
    assert out["dice_ET"] is not None and "dice_ET_raw" in out
    (case_dir / "PH_0002_seg.nii.gz").unlink()
    assert main(["evaluate", str(model), str(case_dir), "--out", str(tmp_path / "ev2"),
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "no labelled cases" in err and "*seg*.nii.gz" in err and "case folder" in err


def test_evaluation_summary_has_the_sections_intervals_and_names_the_model_truly(tmp_path):
    """The summary's "value [95% CI]" of an evaluation (run.py passes no interval) is the
    interval the segmentation/classification sections computed for the same value (it was
    empty while the Dice table below gave one); a value without a section interval stays
    without; the header does not call a user's model "shipped"."""
    rng = np.random.default_rng(0)
    dice = [float(x) for x in rng.uniform(0.05, 0.4, 12)]
    preds = [{"patient_id": f"p{i}", "dice": {"WT": d}, "hd95": {"WT": 5.0 + i}}
             for i, d in enumerate(dice)]
    mean = float(np.mean(dice))
    summary = {k: {"mean": v, "sd": None, "ci95": [None, None], "n": 12}
               for k, v in (("dice_WT", mean), ("score", mean), ("accuracy", 0.5),
                            ("hd95_WT", float(np.mean([5.0 + i for i in range(12)]))))}
    card = {"task": "segmentation", "final_model": {"mode": "best_fold", "fold": 1},
            "metrics": {"protocol": "evaluation"}}
    html_p, js = write_report(tmp_path / "r", title="m on d", summary=summary,
                              predictions=preds, card=card,
                              evaluation={"data": "d", "n_patients": 12, "in_training_data": 0,
                                          "failed": 0, "failed_cases": [], "notes": []})
    rep = json.loads(js.read_text())
    seg = rep["segmentation"]["WT"]
    assert rep["summary"]["dice_WT"]["ci95"] == seg["dice"]["ci95"]
    assert seg["dice"]["ci95"][0] is not None
    assert rep["summary"]["score"]["ci95"] == seg["dice"]["ci95"]     # the same value
    assert rep["summary"]["hd95_WT"]["ci95"] == seg["hd95"]["ci95"]
    assert rep["summary"]["accuracy"]["ci95"] == [None, None]
    text = html_p.read_text()
    lo, hi = seg["dice"]["ci95"]
    assert f"<td>dice_WT</td><td>{mean:.3f} [{lo:.3f}, {hi:.3f}]</td>" in text
    assert "shipped model" not in text
    assert "final model of the training run: mode: best_fold; fold: 1" in text


def test_limited_evaluation_says_its_subsample_is_stratum_balanced(tmp_path, capsys):
    """--limit draws a stratum-balanced subsample (splits.limit_records): the report and the
    CLI say so, and that prevalence-dependent metrics do not reflect the cohort."""
    m = _phantom_model(tmp_path / "m" / "ph.safetensors",
                       config={"task": "phantom-demo",
                               "phantom": {"n": 10, "slices": 2, "size": 16},
                               "model": {"width": 4, "depth": 2}})
    data = tmp_path / "anything"
    data.mkdir()
    out = tmp_path / "rep"
    rc, stdout, err = _run(["evaluate", str(m), str(data), "--out", str(out), "--device",
                            "cpu", "--limit", "4"], capsys)
    assert rc == 0, err
    line = next(x for x in stdout.splitlines() if x.startswith("note: --limit 4"))
    assert "stratum-balanced subsample of the 10" in line
    assert "0: 2, 1: 2" in line and "0: 5, 1: 5" in line
    for word in ("accuracy", "F1", "Brier", "calibration", "prevalence", "AUC"):
        assert word in line
    rep = json.loads((out / "report.json").read_text())
    assert any("stratum-balanced" in n for n in rep["notes"])
    text = (out / "report.html").read_text()
    assert "(--limit 4: a stratum-balanced subsample of its 10 patients" in text
    # every patient: no such note
    rc, stdout, err = _run(["evaluate", str(m), str(data), "--out", str(tmp_path / "all"),
                            "--device", "cpu"], capsys)
    assert rc == 0 and "stratum" not in stdout and "--limit" not in stdout


def test_a_limited_prediction_evaluation_is_balanced_over_the_label_strata(tmp_path, capsys):
    """`radiogen evaluate` of a prediction model with --limit N takes N cases balanced over the
    combinations of their labels, the same ones every time (it took the first N listed: here
    all IDH-mutant), and says so."""
    from predict_helpers import TINY, make_tiny_model
    make_tiny_model()

    def rows(out):
        for i, r in enumerate(out):        # listing order: three mutant grade 2 first
            r.update(idh="mutant" if i < 3 else "wildtype", grade=2 if i < 3 else 3)
        return out[:5]                     # PH_05 has no row
    cohort = _cohort(tmp_path, n=6, rows=rows)
    picked = []
    for k in range(2):
        out = tmp_path / f"o{k}"
        rc, stdout, err = _run(["evaluate", TINY, str(cohort), "--out", str(out), "--device",
                                "cpu", "--limit", "2"], capsys)
        assert rc == 0, err
        line = next(x for x in stdout.splitlines() if x.startswith("note: --limit 2"))
        assert "the 2 cases are a stratum-balanced subsample of the 5" in line
        assert "IDH-mut non-codel grade 2: 1, IDH-wt non-codel grade 3: 1" in line
        assert "IDH-mut non-codel grade 2: 3, IDH-wt non-codel grade 3: 2" in line
        assert "1 case(s) of cohort have no row in clinical.csv" in stdout
        rep = json.loads((out / "report.json").read_text())
        ids = sorted(r["patient_id"] for r in rep["predictions"])
        assert len(ids) == 2 and ids[0] in {"PH_00", "PH_01", "PH_02"} \
            and ids[1] in {"PH_03", "PH_04"}, ids
        assert rep["no_labels_cases"] == ["PH_05"]
        assert ("(--limit 2: a stratum-balanced subsample of its 5 labelled cases"
                in (out / "report.html").read_text())
        picked.append(ids)
    assert picked[0] == picked[1]
