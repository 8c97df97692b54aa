"""Metrics, reports, `radiogen evaluate`, `radiogen models`, `radiogen bench`."""
import json
from pathlib import Path

import numpy as np
import pytest

from napari_radiogen.core.evaluate import metrics as M
from napari_radiogen.core.evaluate.report import write_report


def test_auc_matches_sklearn_and_bootstrap_ci():
    from sklearn.metrics import roc_auc_score
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 80)
    s = np.round(y * 0.6 + rng.random(80), 1)          # ties on purpose
    assert abs(M.roc_auc(y, s) - roc_auc_score(y, s)) < 1e-12
    assert M.roc_auc([1, 1], [0.2, 0.3]) is None
    a = M.auc_with_ci(y, s, n_boot=300)
    assert a["ci95"][0] < a["auc"] < a["ci95"][1]


def test_classification_metrics_and_cv_summary():
    m = M.classification_metrics([0, 0, 1, 1, 1], [0.1, 0.6, 0.7, 0.8, 0.4],
                                 classes=["wt", "mut"])
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["confusion"] == [[1, 1], [1, 2]]
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    mc = M.classification_metrics([0, 1, 2], np.eye(3))
    assert mc["accuracy"] == 1 and mc["auc"] == 1
    s = M.cv_summary([{"auc": 0.7}, {"auc": 0.8}, {"auc": 0.9}])["auc"]
    assert s["mean"] == pytest.approx(0.8) and s["sd"] == pytest.approx(0.1)
    from scipy import stats
    h = stats.t.ppf(0.975, 2) * 0.1 / np.sqrt(3)
    # the t-interval over folds, clipped to the AUC's range (0.8 + h > 1)
    assert 0.8 + h > 1 and s["ci95"] == pytest.approx([0.8 - h, 1.0])
    s = M.cv_summary([{"auc": 0.6}, {"auc": 0.7}, {"auc": 0.8}])["auc"]
    assert s["ci95"] == pytest.approx([0.7 - h, 0.7 + h])          # within the range: as it was


def test_intervals_of_bounded_metrics_stay_in_their_range():
    """A t-interval over a few folds leaves [0, 1] (seen: auc_grade 0.667 [-0.768, 2.101],
    c_index 0.917 [0.651, 1.182], a Dice score 0.323 [-0.066, 0.712]); bounded metrics keep
    theirs within it, unbounded ones (PSNR, HD95, differences) keep the plain t-interval, with
    the same keys."""
    folds = [{"auc_grade": 0.2, "c_index": 0.85, "dice_WT": 0.80, "dice_ET": 0.0,
              "hd95_WT": 2.0, "n": 10},
             {"auc_grade": 1.0, "c_index": 0.92, "dice_WT": 0.71, "dice_ET": 0.5,
              "hd95_WT": 9.0, "n": 10},
             {"auc_grade": 0.8, "c_index": 0.98, "dice_WT": 0.38, "dice_ET": 0.0,
              "hd95_WT": 4.0, "n": 10}]
    for f in folds:
        f["score"] = (f["dice_WT"] + f["dice_ET"]) / 2          # a segmentation run's score
    s = M.cv_summary(folds)
    for k in ("auc_grade", "c_index", "dice_WT", "dice_ET", "score"):
        lo, hi = s[k]["ci95"]
        assert 0.0 <= lo <= s[k]["mean"] <= hi <= 1.0, (k, s[k])
        assert set(s[k]) == {"mean", "sd", "ci95", "n", "per_fold"}
    assert s["auc_grade"]["ci95"][1] == 1.0 and s["dice_ET"]["ci95"][0] == 0.0
    assert s["score"]["ci95"][0] == 0.0                            # unclipped: below 0
    plain = M.mean_ci([f["hd95_WT"] for f in folds])               # unbounded: plain t
    assert s["hd95_WT"]["ci95"] == pytest.approx(plain["ci95"]) and plain["ci95"][0] < 0
    syn = M.cv_summary([{"ssim_brain": v, "psnr_db": p} for v, p in
                        ((0.2, 20.0), (0.9, 30.0), (0.95, 25.0))])
    lo, hi = syn["ssim_brain"]["ci95"]
    assert -1.0 <= lo and hi == 1.0                                 # SSIM lies in [-1, 1]
    assert syn["psnr_db"]["ci95"] == pytest.approx(M.mean_ci([20.0, 30.0, 25.0])["ci95"])
    assert M.mean_ci([0.2, 1.0, 0.8])["ci95"][0] < 0               # no bounds given: as before
    # a synthesis run's score is its PSNR: unbounded
    syn = M.cv_summary([{"psnr_db": 20.0, "ssim_brain": 0.5, "score": 20.0},
                        {"psnr_db": 30.0, "ssim_brain": 0.6, "score": 30.0}])
    assert syn["score"]["ci95"] == pytest.approx(M.mean_ci([20.0, 30.0])["ci95"])
    # a difference between two models' F1 may be negative
    assert M.metric_bounds("new_minus_previous_macro_f1") is None
    assert M.metric_bounds("macro_f1") == (0.0, 1.0) and M.metric_bounds("psnr_t1") is None
    # a non-finite fold value is None in per_fold (strict JSON) and left out of the mean
    s = M.cv_summary([{"auc": 0.7}, {"auc": float("nan")}, {"auc": 0.9}])["auc"]
    assert s["per_fold"] == [0.7, None, 0.9] and s["n"] == 2


def test_models_listing_clips_card_intervals_at_display_time():
    """Shipped cards store intervals computed before they respected the range (they are not
    edited): `radiogen models` shows them clipped."""
    from napari_radiogen.cli_cmds.models import _metric
    pf = {"dice_WT": [0.80, 0.71, 0.38, 0.17], "dice_TC": [0.55, 0.57, 0.15, 0.03],
          "dice_ET": [0.01, 0.5, 0.0, 0.0], "score": [0.45, 0.60, 0.18, 0.07]}
    cv = {k: {"mean": float(np.mean(v)), "ci95": [-0.066, 0.712], "per_fold": v}
          for k, v in pf.items()}
    card = {"metrics": {"cv": cv}}
    assert _metric(card).endswith("[0.000, 0.712]")
    card = {"metrics": {"cv": {"psnr": {"mean": 1.0, "ci95": [-0.5, 2.5]}}}}
    assert _metric(card) == "psnr 1.000 [-0.500, 2.500]"           # unbounded: as stored


def test_dice_hd95():
    a = np.zeros((20, 20, 20), np.uint8)
    a[5:15, 5:15, 5:15] = 2
    b = np.zeros_like(a)
    b[5:15, 5:15, 7:17] = 2
    r = M.dice_hd95(a, b)
    assert r["dice"]["WT"] == pytest.approx(0.8)
    assert r["hd95"]["WT"] == pytest.approx(2.0)
    assert r["dice"]["ET"] == 1.0                      # absent in both


def test_report_sections(tmp_path):
    rng = np.random.default_rng(1)
    preds = [{"patient_id": f"p{i}", "target": "idh", "y_true": int(i % 2),
              "y_prob": float(0.3 + 0.4 * (i % 2) + 0.1 * rng.random()),
              "classes": ["wildtype", "mutant"], "time": float(rng.exponential(500)),
              "event": int(rng.random() < 0.6), "risk": float(rng.normal()),
              "dice": {"WT": float(rng.uniform(0.6, 0.9))}, "hd95": {"WT": float(rng.uniform(2, 9))}}
             for i in range(30)]
    hist = [{"fold": 1, "epoch": e, "train_loss": 1 / e, "val_auc": 0.5 + e / 10}
            for e in (1, 2, 3)]
    html, js = write_report(tmp_path / "rep", title="t", history=hist,
                            folds=[{"fold": 1, "predictions": preds}],
                            summary=M.cv_summary([{"auc": 0.8}, {"auc": 0.9}]))
    data = json.loads(js.read_text())
    assert data["classification"]["idh"]["auc"] == 1.0
    assert data["segmentation"]["WT"]["dice"]["n"] == 30
    assert "c_index" in data["survival"] and "logrank_p" in data["survival"]
    figs = {p.name for p in (tmp_path / "rep" / "figures").iterdir()}
    assert {"curves.png", "roc_idh.png", "segmentation.png", "km.png"} <= figs
    text = html.read_text()
    assert "roc_idh.png" in text and "km.png" in text


@pytest.fixture
def phantom_model(tmp_path_factory):
    import torch
    from napari_radiogen.core.progress import run
    from napari_radiogen.core.train.engine import train
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("run")
    res = run(train({"name": "phantom-eval", "task": "phantom-demo", "data": "phantom",
                     "phantom": {"n": 8, "slices": 2, "size": 16},
                     "model": {"width": 4, "depth": 2},
                     "train": {"epochs": 1, "batch_size": 4}, "test_fraction": 0.25},
                    out / "r", device="cpu", install=True))
    return res


def test_cli_evaluate_and_models(phantom_model, tmp_path, capsys):
    from napari_radiogen.cli import main
    assert main(["evaluate", str(phantom_model.model_path), "phantom", "--out",
                 str(tmp_path / "ev"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    card = json.loads(phantom_model.card_path.read_text())
    assert out["n_patients"] == 8
    assert out["in_training_data"] == len(card["training_data"]["patients"]) < 8
    assert (tmp_path / "ev" / "report.html").exists()
    assert main(["models", "--task", "demo-classification", "--json"]) == 0
    ms = json.loads(capsys.readouterr().out)
    assert "phantom-eval" in [m["name"] for m in ms]
    assert main(["models"]) == 0
    assert "phantom-eval" in capsys.readouterr().out
    assert main(["evaluate", "no-such-model", "phantom", "--out", str(tmp_path / "x")]) == 2


def test_bench_subset(capsys):
    from napari_radiogen.cli import main
    assert main(["bench", "--json", "--stages", "load,train_step"]) == 0
    out = json.loads(capsys.readouterr().out)
    st = {s["stage"]: s for s in out["stages"]}
    assert st["train_step"]["status"] == "ok" and st["train_step"]["seconds"] > 0
    assert st["load"]["status"] in ("ok", "failed")     # the sample case may be absent
    assert out["peak_rss_mb"] > 50
    assert main(["bench", "--stages", "nope"]) == 2


def test_report_understands_the_families_flat_prediction_rows():
    from napari_radiogen.core.evaluate.report import normalise_predictions
    rows = [{"patient_id": "a", "idh": 0.8, "y_idh": 1, "grade": 0.3, "y_grade": 0,
             "risk": 0.2, "os_days": 300.0, "os_event": 1.0, "fold": 1},
            {"patient_id": "b", "dice_WT": 0.7, "hd95_WT": 4.0, "dice_TC": 0.5},
            {"patient_id": "c", "target": "t1", "psnr_db": 14.0, "ssim_brain": 0.5}]
    s = normalise_predictions(rows)
    assert {(c["target"], c["y_true"], c["y_prob"]) for c in s["classification"]} == \
        {("idh", 1, 0.8), ("grade", 0, 0.3)}
    assert s["survival"] == [{"patient_id": "a", "time": 300.0, "event": 1, "risk": 0.2}]
    assert s["segmentation"][0]["dice"] == {"WT": 0.7, "TC": 0.5}
    assert s["segmentation"][0]["hd95"] == {"WT": 4.0}
    assert s["other"] == [{"group": "t1", "psnr_db": 14.0, "ssim_brain": 0.5}]


def test_evaluate_a_prediction_model_through_the_inference_path(tmp_path):
    """`radiogen evaluate` on a model with no engine task (the shipped prediction models): every
    case goes through core.predict, labels come from clinical.csv, a corrupt case is counted and
    skipped, and the report holds AUCs and the C-index."""
    import csv
    from napari_radiogen.cli import main
    from napari_radiogen.core.phantom import make_pack_phantom
    from napari_radiogen.core.evaluate.run import evaluate_model
    from napari_radiogen.core.train.engine import EvalResult
    from napari_radiogen.core.progress import run as drive
    from predict_helpers import TINY, make_tiny_model, write_pack
    make_tiny_model()
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    rows = []
    for i in range(6):
        write_pack(cohort / f"PH_{i:02d}.h5", make_pack_phantom(seed=i, n_slices=10))
        rows.append({"patient_id": f"PH_{i:02d}", "idh": ["mutant", "wildtype"][i % 2],
                     "codel_1p19q": "non-codel", "grade": [2, 3][i // 3],
                     "os_days": 300 + 100 * i, "os_event": i % 2})
    (cohort / "PH_99.h5").write_bytes(b"not hdf5")
    with open(cohort / "clinical.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    res = drive(evaluate_model(TINY, cohort, tmp_path / "rep", device="cpu"))
    assert isinstance(res, EvalResult)
    assert res.n_patients == 6
    assert res.metrics["failed"] == 1                      # a count, the cases beside it
    assert [f["case"] for f in res.metrics["failed_cases"]] == ["PH_99.h5"]
    assert res.metrics["no_labels"] == 0 and res.metrics["no_labels_cases"] == []
    assert 0.0 <= res.metrics["auc_idh"] <= 1.0 and 0.0 <= res.metrics["auc_grade"] <= 1.0
    assert "auc_codel_1p19q" not in res.metrics           # one class only: no AUC
    assert 0.0 <= res.metrics["c_index"] <= 1.0
    rep = json.loads(res.report_json.read_text())
    assert {r["patient_id"] for r in rep["predictions"]} == {f"PH_{i:02d}" for i in range(6)}
    assert rep["classification"]["idh"]["n"] == 6
    assert rep["classification"]["codel_1p19q"]["auc"] is None     # all non-codel
    assert rep["failed"] == 1 and rep["failed_cases"][0]["case"] == "PH_99.h5"
    assert rep["data"] == "cohort" and str(tmp_path) not in res.report_json.read_text()
    assert "PH_99.h5" in res.report_path.read_text()     # the failed case is named
    assert main(["evaluate", TINY, str(cohort), "--out", str(tmp_path / "rep2"),
                 "--device", "cpu", "--limit", "3"]) == 0


def test_report_skips_missing_labels_of_multi_task_rows(tmp_path):
    """Flat multi-task rows mark a missing label -1: the ROC of that task uses the others."""
    rng = np.random.default_rng(1)
    preds = []
    for i in range(20):
        y = int(i % 2)
        preds.append({"patient_id": f"p{i}", "idh": float(0.3 + 0.4 * y + 0.1 * rng.random()),
                      "y_idh": y if i != 3 else -1})
    html, js = write_report(tmp_path / "rep", title="t", folds=[{"fold": 1,
                                                                  "predictions": preds}])
    data = json.loads(js.read_text())
    assert data["classification"]["idh"]["auc"] == 1.0
    assert data["classification"]["idh"]["n"] == 19
    assert "could not be computed" not in html.read_text()


# -- warnings of one thread (core/evaluate/_warn.py) -----------------------------------------
def test_collect_warnings_records_this_threads_warnings_only(recwarn):
    """A collection in one thread (a report or survival fit in a napari worker) records that
    thread's warnings only: another thread's warning raised meanwhile goes where it would have
    gone (here pytest's recorder), and the process's filters are left unchanged."""
    import threading
    import warnings
    from napari_radiogen.core.evaluate._warn import collect_warnings, ignore_warnings
    filters = list(warnings.filters)
    handler = warnings.showwarning
    inside, raised = threading.Event(), threading.Event()

    def other():
        assert inside.wait(10)
        warnings.warn("from the other thread", UserWarning)
        raised.set()
    t = threading.Thread(target=other)
    t.start()
    with collect_warnings() as got:
        assert warnings.filters == filters           # no simplefilter, no other filter
        inside.set()
        assert raised.wait(10)
        warnings.warn("from this thread", UserWarning)
        with ignore_warnings(RuntimeWarning):        # nested: dropped, this thread only
            warnings.warn("dropped", RuntimeWarning)
            warnings.warn("to the outer one", UserWarning)
    t.join(10)
    assert [str(w.message) for w in got] == ["from this thread", "to the outer one"]
    seen = [str(w.message) for w in recwarn]
    assert "from the other thread" in seen
    assert "from this thread" not in seen and "dropped" not in seen
    assert warnings.filters == filters and warnings.showwarning is handler


def test_a_worker_collection_leaves_the_main_threads_warnings_alone(recwarn):
    """The napari case: a worker's report collects while the main thread warns."""
    import threading
    import warnings
    from napari_radiogen.core.evaluate._warn import collect_warnings
    started, main_warned, out = threading.Event(), threading.Event(), {}

    def worker():
        with collect_warnings() as got:
            started.set()
            assert main_warned.wait(10)
            warnings.warn("worker warning", RuntimeWarning)
        out["got"] = [str(w.message) for w in got]
    t = threading.Thread(target=worker)
    t.start()
    assert started.wait(10)
    warnings.warn("main-thread warning", UserWarning)
    main_warned.set()
    t.join(10)
    assert out["got"] == ["worker warning"]
    assert [str(w.message) for w in recwarn] == ["main-thread warning"]


# -- a segmentation model is scored on what `radiogen segment` returns ------------------------
#: the card's postprocess (what core.segment applies) differs from its training config's, as
#: in seg_brats_attunet2mm: the ET rule from T1ce enhancement was tuned after training
CARD_PP = {"enhancement": {"sequence": "t1ce", "min_z": 1.5}, "thresholds": {"TC": 0.9},
           "wt_min_component_fraction": 0.1}
CONFIG_PP = {"wt_min_component_fraction": 0.1}


def _write_brats_case(folder, seed: int = 2):
    """A skull-stripped phantom written as a BraTS case folder (<id>_<seq>.nii.gz, <id>_seg)."""
    from napari_radiogen.core.io import write_volume
    from napari_radiogen.core.phantom import make_phantom
    case = make_phantom(seed, skull_stripped=True, case_id=folder.name)
    folder.mkdir(parents=True)
    for s, v in case.sequences.items():
        write_volume(v.array, v.geometry, folder / f"{folder.name}_{s}.nii.gz")
    write_volume(case.labels.array, case.labels.geometry, folder / f"{folder.name}_seg.nii.gz",
                 labels=True)
    return folder


def _brats_model_with_card_postprocess(path):
    """The tiny constant net (WT/TC certain, ET channel 0.27: no ET by its own channel) with a
    training task in its card and the ET rule in the card's postprocess only."""
    from napari_radiogen.core.models import new_card, save_model
    from _models import constant_brats_net
    net, arch, fields = constant_brats_net("ev_pp", [5.0, 5.0, -1.0], zero_weights=True)
    k = arch["kwargs"]
    cfg = {"task": "segmentation-brats", "name": "ev_pp",
           "model": {"arch": "attention_unet", "channels": k["channels"], "strides": k["strides"],
                     "sequences": fields["sequences"], "spacing_mm": fields["spacing_mm"],
                     "roi_size": fields["roi_size"], "eval_hd95": False,
                     "postprocess": dict(CONFIG_PP)}}
    card = new_card("ev_pp", "segmentation", arch, **fields, postprocess=dict(CARD_PP),
                    train_task="segmentation-brats", config=cfg)
    return save_model(path, net.state_dict(), card)


def _segment_labels(model_path, folder):
    from napari_radiogen.core import segment as seg
    from napari_radiogen.core.io import load_case
    from napari_radiogen.core.models import load_model
    from napari_radiogen.core.progress import run as drive
    return drive(seg.segment(load_case(str(folder)), load_model(str(model_path),
                                                                 task="segmentation"),
                             device="cpu", compare=False)).labels


def _scored_labels(monkeypatch):
    """The label maps evaluate scores (compare_to_truth's calls with a geometry: the final
    labels; the raw network's are scored without one)."""
    from napari_radiogen.core import segment as seg
    seen = []
    orig = seg.compare_to_truth

    def spy(labels, truth, geometry=None, **kw):
        if geometry is not None:
            seen.append(np.array(labels, copy=True))
        return orig(labels, truth, geometry, **kw)
    monkeypatch.setattr(seg, "compare_to_truth", spy)
    return seen


def test_evaluate_scores_the_labels_segment_returns(tmp_path, monkeypatch):
    """With a postprocess in the card (here the T1ce-enhancement ET rule, not in the training
    config), evaluate scores exactly the labels core.segment returns for the case."""
    import torch
    from napari_radiogen.core import segment as seg
    from napari_radiogen.core.evaluate.run import evaluate_model
    from napari_radiogen.core.io import load_case
    from napari_radiogen.core.progress import run as drive
    torch.set_num_threads(1)
    model = _brats_model_with_card_postprocess(tmp_path / "ev_pp.safetensors")
    case_dir = _write_brats_case(tmp_path / "cohort" / "PH_0002")
    want = _segment_labels(model, case_dir)
    assert (want == 4).any()                      # the ET rule made an enhancing tumour
    seen = _scored_labels(monkeypatch)
    res = drive(evaluate_model(str(model), tmp_path / "cohort", tmp_path / "ev", device="cpu"))
    assert len(seen) == 1 and np.array_equal(seen[0], want)
    truth = load_case(str(case_dir)).labels.array
    monkeypatch.undo()
    ref = seg.compare_to_truth(want, truth, with_hd95=False)
    for r in seg.REGION_ORDER:
        assert res.metrics[f"dice_{r}"] == pytest.approx(ref[r]["dice"])
    assert res.metrics["dice_ET_raw"] != res.metrics["dice_ET"]     # raw: the ET channel
    assert any("postprocess of the model's card" in n for n in res.metrics["notes"])


def test_evaluate_a_single_case_folder_as_a_cohort_of_one(tmp_path):
    """DATA may be one labelled case folder: it is scored as a cohort of one, with the figures
    of the same case in a folder of case folders."""
    import torch
    from napari_radiogen.core.evaluate.run import evaluate_model
    from napari_radiogen.core.progress import run as drive
    torch.set_num_threads(1)
    model = _brats_model_with_card_postprocess(tmp_path / "ev_pp.safetensors")
    case_dir = _write_brats_case(tmp_path / "cohort" / "PH_0002")
    one = drive(evaluate_model(str(model), case_dir, tmp_path / "ev1", device="cpu"))
    both = drive(evaluate_model(str(model), tmp_path / "cohort", tmp_path / "ev2", device="cpu"))
    assert one.metrics["n_patients"] == 1
    for r in ("WT", "TC", "ET"):
        assert one.metrics[f"dice_{r}"] == pytest.approx(both.metrics[f"dice_{r}"])
    rep = json.loads((tmp_path / "ev1" / "report.json").read_text())
    assert rep["data"] == "PH_0002" and rep["n_patients"] == 1


def test_evaluate_shipped_brats_model_matches_segment_on_a_real_case(shared_data, tmp_path):
    """seg_brats_attunet2mm (ET rule and TC threshold in its card) on one BraTS case folder:
    evaluate's Dice per region are those of radiogen segment's labels."""
    from conftest import shared_path
    from napari_radiogen.core import segment as seg
    from napari_radiogen.core.evaluate.run import evaluate_model
    from napari_radiogen.core.io import load_case
    from napari_radiogen.core.models import find_model
    from napari_radiogen.core.progress import run as drive
    folder = shared_path("brats2021", "BraTS2021_00006")
    try:
        model = find_model("seg_brats_attunet2mm")
    except Exception as e:      # noqa: BLE001 - weights not shipped in this checkout
        pytest.skip(f"seg_brats_attunet2mm not available: {e}")
    res = drive(evaluate_model(str(model), folder, tmp_path / "ev", device="cpu"))
    want = _segment_labels(model, folder)
    ref = seg.compare_to_truth(want, load_case(str(folder)).labels.array, with_hd95=False)
    assert res.metrics["n_patients"] == 1
    for r in seg.REGION_ORDER:
        assert res.metrics[f"dice_{r}"] == pytest.approx(ref[r]["dice"])
    assert res.metrics["dice_ET"] > 0.5           # the card's ET rule (0.0 without it)


def test_synthesis_card_names_and_cites_the_shared_datasets(shared_data, tmp_path):
    """A synthesis run on the shipped configs' BraTS 2021 / TCGA-LGG folders names those
    datasets and cites them on its card (it said "user data: folder 'brats2021', 'tcga-lgg'"
    without citations); a copy of a case in a user's own folder stays "user data"."""
    import shutil
    from napari_radiogen.core.train.base import TASKS
    from napari_radiogen.core.train.config import load_config
    from napari_radiogen.core.train.engine import data_card_fields

    cfg = load_config("synthesis_demo")
    f = data_card_fields(TASKS["synthesis"](cfg), cfg, 12)
    assert "user data" not in f["datasets"]
    assert "BraTS 2021" in f["datasets"] and "TCGA-LGG" in f["datasets"]
    assert f["datasets"].endswith("12 patients used by this run")
    cites = " | ".join(f["citations"])
    for who in ("Seq2Seq", "Baid", "Menze", "Bakas", "Buda"):
        assert who in cites

    only_brats = dict(cfg, data=[cfg["data"][0]])
    f = data_card_fields(TASKS["synthesis"](only_brats), only_brats, 8)
    assert "BraTS 2021" in f["datasets"] and "TCGA-LGG" not in f["datasets"]
    assert "Buda" not in " | ".join(f["citations"])

    from napari_radiogen.core.train.config import resolve_path
    brats = Path(resolve_path(cfg["data"][0], Path(cfg["_source"]).parent))
    case = sorted(p for p in brats.iterdir() if p.is_dir())[0]
    shutil.copytree(case, tmp_path / "mine" / case.name)
    mine = dict(cfg, data=[str(tmp_path / "mine")])
    f = data_card_fields(TASKS["synthesis"](mine), mine, 1)
    assert f["datasets"].startswith("user data: folder 'mine'")
    assert len(f["citations"]) == 1 and "Seq2Seq" in f["citations"][0]   # the method's only


def test_report_curves_have_whole_epochs_and_no_overlapping_panels(tmp_path, monkeypatch):
    """curves.png: epoch ticks are whole numbers (a 2-epoch run showed 1.2, 1.4 ...) and no
    panel's y label or tick labels run into its left neighbour."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from napari_radiogen.core.evaluate import report as R
    figs = []
    monkeypatch.setattr(R, "_save", lambda fig, path: figs.append(fig) or path.name)
    hist = [{"fold": f, "epoch": e, "train_loss": 0.81234 - 1e-4 * e,
             "val_dice_WT": 0.200001 + 1e-5 * e, "val_loss": 1.2345 + 1e-4 * f,
             "val_score": 0.12345 + 1e-5 * e} for f in (1, 2) for e in (1, 2)]
    assert R.curves_figure(hist, tmp_path / "curves.png") == "curves.png"
    fig = figs[0]
    FigureCanvasAgg(fig)
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    assert len(fig.axes) == 4
    for ax in fig.axes:
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    for left, right in zip(fig.axes, fig.axes[1:]):
        assert right.get_tightbbox(r).x0 >= left.get_tightbbox(r).x1, right.get_ylabel()


def test_the_summary_score_takes_an_interval_only_when_the_equal_metrics_agree():
    """The selection score gets the interval of the metric it equals; where two metrics of
    that value have different intervals (two Dice of 1.0 on a small run) it gets none rather
    than the wrong one."""
    from napari_radiogen.core.evaluate.report import _with_section_ci
    data = {"segmentation": {"WT": {"dice": {"mean": 1.0, "ci95": [0.9, 1.0]}},
                             "TC": {"dice": {"mean": 1.0, "ci95": [0.5, 1.0]}},
                             "ET": {"dice": {"mean": 0.7, "ci95": [0.6, 0.8]}}}}
    summ = {"dice_WT": {"mean": 1.0, "ci95": None}, "score": {"mean": 1.0, "ci95": None},
            "dice_ET": {"mean": 0.7, "ci95": None}}
    out = _with_section_ci(summ, data)
    assert out["dice_WT"]["ci95"] == [0.9, 1.0] and out["dice_ET"]["ci95"] == [0.6, 0.8]
    assert out["score"]["ci95"] is None                     # WT or TC: not said which
    out = _with_section_ci({"score": {"mean": 0.7, "ci95": None}}, data)
    assert out["score"]["ci95"] == [0.6, 0.8]
