"""The per-case report's key-slice figure shows one physical slice in every panel."""
import numpy as np

from _json_helpers import all_keys, strict_load


def _corr(a, b):
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def test_panels_of_sequences_on_their_own_grids_show_the_reference_slice():
    from napari_radiogen.core.case import Geometry
    from napari_radiogen.core.case_report import sequence_panels
    from napari_radiogen.core.phantom import make_phantom
    from napari_radiogen.core.prepare import resample_volume
    case = make_phantom(seed=3, shape=(48, 64, 56), spacing=(1.5, 1.5, 1.5))
    t1 = case.sequences["t1"]                      # on the reference grid, as made
    g = t1.geometry
    # the same T1 as a native series: 3 mm slices, starting 15 mm higher, 1.5 mm in-plane
    own = Geometry(size=(g.size[0], g.size[1], 20), spacing=(1.5, 1.5, 3.0),
                   origin=(g.origin[0], g.origin[1], g.origin[2] + 15.0))
    case.sequences["t1"] = resample_volume(t1, own, name="t1")
    assert case.reference == "flair" and not case.sequences["t1"].geometry.same_grid(g)

    z = 16                          # 24 mm up: the T1 series' 4th slice (15 + 3 x 3 mm)
    panels = sequence_panels(case, z)
    assert list(panels) == ["t1", "t1ce", "t2", "flair"]
    assert all(p.shape == g.shape[1:] for p in panels.values())
    np.testing.assert_array_equal(panels["flair"], case.sequences["flair"].array[z])
    # the T1 panel is the T1 at the reference slice's height, not the series' slice number z
    assert _corr(panels["t1"], t1.array[z]) > 0.9
    naive = case.sequences["t1"].array[z]         # the series' own slice 16: 63 mm up
    assert naive.any() and _corr(naive, t1.array[z]) < 0.8


def test_report_cells_format_numbers_and_say_what_is_missing():
    from napari_radiogen.core.case_report import _interval, _num
    assert _num(2.449, 1) == "2.4" and _num(0.81234, 3) == "0.812"
    assert _num(float("inf"), 1) == "n/a (empty mask)"
    assert _num(float("nan"), 1) == "n/a" and _num(None, 1) == "n/a"
    assert _interval([0.40192962352405076, 0.7747484520123838]) == "[0.40, 0.77]"
    assert _interval(None) == "" and _interval("x") == ""


# -- what an analysis writes: de-identified by default, strict JSON ------------------------------
#: keys that hold a patient's clinical record (age, sex, survival...) in this package's data
CLINICAL_KEYS = {"age", "sex", "sex_male", "gender", "age_at_initial_pathologic", "os_days",
                 "os_event", "clinical"}


def _result():
    """An analysis result of a phantom with clinical fields: a segmentation whose ET is empty
    in one mask only (HD95 undefined) and a segment-then-classify prediction that read age and
    sex (as predict_radiomics does)."""
    import numpy as np
    from napari_radiogen.core.phantom import make_phantom
    from napari_radiogen.core.pipeline import AnalysisResult
    from napari_radiogen.core.predict import PredictionResult
    from napari_radiogen.core.segment import SegResult, region_volumes_ml

    case = make_phantom(2, shape=(32, 40, 36))
    case.clinical.update(age=67, gender="MALE", os_days=234)
    labels = (np.asarray(case.labels.array) > 0).astype(np.uint8) * 2
    seg = SegResult(case_id=case.case_id, labels=labels, geometry=case.geometry,
                    volumes_ml=region_volumes_ml(labels, case.geometry), model="seg_test",
                    metrics={"WT": {"dice": 0.9, "hd95_mm": 2.0},
                             "ET": {"dice": 0.0, "hd95_mm": float("nan")}})
    pred = PredictionResult(case_id=case.case_id, model="predict_test", card={},
                            tasks={"idh": {"wildtype": 0.3, "mutant": 0.7}},
                            uncertainty={"idh": {"sd": 0.1}}, attention={}, slice_index=[],
                            features={"volume_ml": 12.5, "age": 67.0, "sex_male": 1.0},
                            features_source="segmented by seg_test")
    return AnalysisResult(case_id=case.case_id, case=case, segmentation=seg, prediction=pred)


def test_deidentified_analysis_writes_no_clinical_field_and_says_so(tmp_path):
    """The default (de-identified) outputs hold no clinical field in any file, say which were
    removed; the prediction itself keeps what it used; an identified analysis keeps them."""
    from napari_radiogen.core.pipeline import write_outputs
    res = _result()
    paths = write_outputs(res, tmp_path / "deid", render=False)
    files = sorted((tmp_path / "deid" / res.case_id).glob("*.json"))
    assert {f.name for f in files} == {f"{res.case_id}_seg.json", f"{res.case_id}_report.json",
                                       f"{res.case_id}_predictions.json", "analysis.json"}
    for f in files:
        data = strict_load(f)
        assert not CLINICAL_KEYS & set(all_keys(data)), f.name
        if f.name != f"{res.case_id}_seg.json":
            assert data["deidentified"] is True, f.name
    pred = strict_load(paths["predictions"])
    assert pred["features"] == {"volume_ml": 12.5}
    assert pred["removed_fields"] == ["features.age", "features.sex_male"]
    report = strict_load(paths["report_json"])
    assert report["removed_fields"] == ["prediction.features.age", "prediction.features.sex_male"]
    assert strict_load(paths["analysis"])["removed_fields"] == report["removed_fields"]
    html = open(paths["report_html"]).read()
    assert "De-identified" in html and "the prediction used age, sex" in html
    assert "Clinical" not in html and "234" not in html
    assert res.prediction.features["age"] == 67.0               # only the outputs are stripped
    assert "age" not in res.summary() and "sex_male" not in res.summary()  # the cohort CSV row

    paths = write_outputs(res, tmp_path / "ident", render=False, deidentify=False)
    pred = strict_load(paths["predictions"])
    assert pred["deidentified"] is False and pred["features"]["age"] == 67.0
    assert pred["features"]["sex_male"] == 1.0 and "removed_fields" not in pred
    report = strict_load(paths["report_json"])
    assert report["clinical"]["age"] == 67 and report["prediction"]["features"]["age"] == 67.0
    assert "Identified report" in open(paths["report_html"]).read()


def test_undefined_metrics_are_null_in_json_and_said_in_the_report(tmp_path):
    """HD95 is undefined (nan) when exactly one of the two masks is empty: strict JSON gets
    null (a strict parser rejects NaN), the report says n/a."""
    import math
    from napari_radiogen.core.pipeline import write_outputs
    res = _result()
    assert math.isnan(res.segmentation.metrics["ET"]["hd95_mm"])
    paths = write_outputs(res, tmp_path, render=False)
    for key in ("segmentation_json", "report_json", "predictions", "analysis"):
        assert "NaN" not in open(paths[key]).read(), key
    assert strict_load(paths["segmentation_json"])["metrics_vs_labels"]["ET"]["hd95_mm"] is None
    rep = strict_load(paths["report_json"])
    assert rep["segmentation"]["metrics_vs_labels"]["ET"] == {"dice": 0.0, "hd95_mm": None}
    html = open(paths["report_html"]).read()
    assert "n/a (one of the two masks is empty)" in html and "nan" not in html.lower()
    # what the Dice is against is worded so it cannot be read as the reference sequence
    assert "Against the labels that came with the case" in html and "reference labels" not in html
    # the label volumes are named, the regions keep their names
    assert "label 4 (enhancing tumour)" in html and "label_4" not in html
