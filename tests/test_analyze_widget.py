"""The Analyze dock's results panel: the Dice against the labels that came with the case, a prediction table
that the dock's default width holds without breaking words, the class each heatmap explains; an
edited segmentation layer is kept, not written over, by a rerun."""
from types import SimpleNamespace

import numpy as np


def _result():
    """An analysis result as the pipeline gives one for the sample (a case with labels): the
    codel heatmap explains "codel" while the prediction is non-codel."""
    from napari_radiogen.core.explain import ExplainResult
    from napari_radiogen.core.pipeline import AnalysisResult
    tasks = {"idh": {"wildtype": 0.15, "mutant": 0.85},
             "codel_1p19q": {"non-codel": 0.75, "codel": 0.25},
             "grade": {"2": 0.15, "3": 0.85}}
    pred = SimpleNamespace(tasks=tasks, model="predict_mil_roi", risk=None,
                           uncertainty={t: {"sd": 0.25} for t in tasks},
                           card={"validated": {"idh": {"auc_mean": 0.88},
                                               "codel_1p19q": {"auc_mean": 0.77},
                                               "grade": {"auc_mean": 0.57}}})
    seg = SimpleNamespace(model="seg_brats_attunet2mm", labels=None,
                          volumes_ml={"WT": 136.2, "TC": 86.0, "ET": 18.4, "label_1": 67.6,
                                      "label_2": 50.2, "label_4": 18.4},
                          metrics={"WT": {"dice": 0.912, "hd95_mm": 3.0},
                                   "TC": {"dice": 0.853, "hd95_mm": 4.1},
                                   "ET": {"dice": 0.801, "hd95_mm": 2.2}})
    heat = np.zeros((2, 2, 2), np.float32)
    expl = [ExplainResult("BraTS2021_00006", "codel_1p19q", "gradcam", "predict_mil_roi",
                          "codel", heat, None, localisation=0.47,
                          details={"probability": 0.25}),
            ExplainResult("BraTS2021_00006", "grade", "gradcam", "predict_mil_roi", "3", heat,
                          None, localisation=0.43)]
    return AnalysisResult("BraTS2021_00006", segmentation=seg, prediction=pred,
                          explanations=expl,
                          warnings=["BraTS2021_00006 was in seg_brats_attunet2mm's training "
                                    "data: its Dice here is in-sample, not a validation"],
                          timings={"segment": 1.0})


def test_results_panel_shows_the_dice_and_the_explained_class():
    from napari_radiogen.napari.analyze_widget import results_html
    from qtpy.QtGui import QTextDocument
    doc = QTextDocument()
    doc.setHtml(results_html(_result()))
    text = doc.toPlainText()
    # the Dice the in-sample warning speaks of is shown
    assert "Dice" in text and "0.912" in text and "0.853" in text and "0.801" in text
    assert "its Dice here is in-sample" in text
    # the heatmap's class is said (it is not the predicted class here), with its probability
    assert "heatmap for codel (P = 0.25" in text and "which predicts non-codel" in text
    # without a probability in the result, the class is still said
    assert "heatmap for grade 3" in text
    # no labels: no Dice line
    res = _result()
    res.segmentation.metrics = {}
    doc.setHtml(results_html(res))
    assert "Dice against" not in doc.toPlainText() and "CAUTION" not in doc.toPlainText()
    # a result made unreliable by its input: the caution comes first, before the table
    from napari_radiogen.core.notes import NOT_SKULL_STRIPPED, Note
    res.warnings.append(Note("the input is not skull-stripped ...", NOT_SKULL_STRIPPED))
    doc.setHtml(results_html(res))
    text = doc.toPlainText()
    assert "CAUTION: not skull-stripped" in text
    assert text.index("CAUTION") < text.index("mutant")


def _wrapped_table_cells(browser):
    """The texts of the table cells that take more than one line in ``browser`` as laid out."""
    from qtpy.QtGui import QTextCursor
    doc = browser.document()
    doc.documentLayout().documentSize()          # lays the document out
    out = []
    block = doc.begin()
    while block.isValid():
        if QTextCursor(block).currentTable() is not None and block.layout() is not None \
                and block.layout().lineCount() > 1:
            out.append(block.text())
        block = block.next()
    return out


def test_prediction_table_fits_the_default_dock_width(make_napari_viewer, qtbot):
    """At the dock's default width (as docked in a 1400 x 900 window) no header or cell of the
    prediction table is broken over lines ("probabili/ty", "codel_1p1/9q")."""
    from napari_radiogen.napari.analyze_widget import AnalyzeWidget, results_html
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1400, 900)
    w = AnalyzeWidget(viewer)
    viewer.window.add_dock_widget(w, name="Analyze")
    qtbot.wait(300)
    w.results.setHtml(results_html(_result()))
    qtbot.wait(100)
    assert w.results.viewport().width() < 450          # a narrow dock, as by default
    assert "codel_1p19q" in w.results.toPlainText()
    assert _wrapped_table_cells(w.results) == []


def test_analyze_run_shows_dice_and_heatmap_class(make_napari_viewer, qtbot, test_models,
                                                  sample_path):
    """A run on the sample (which has expert labels) with the tiny models: the panel gives the
    Dice and the class of each heatmap."""
    from napari_radiogen.napari.analyze_widget import AnalyzeWidget
    viewer = make_napari_viewer()
    viewer.open(str(sample_path), plugin="napari-radiogen")
    w = AnalyzeWidget(viewer)
    w.seg_model.setCurrentText("test_seg3d")
    w.pred_model.setCurrentText("test_mil")
    w.device.setCurrentText("cpu")
    w.run()
    qtbot.waitUntil(lambda: w.job.done, timeout=600_000)
    assert w.job.error is None and w.result is not None
    assert w.result.segmentation.metrics                     # the case has labels
    text = w.results.toPlainText()
    # what the Dice is against: the labels file of the case (not the reference sequence)
    assert ("Dice against the labels that came with the case (BraTS2021_00006_seg.nii.gz): WT"
            in text), text
    e = w.result.explanations[0]
    assert f"heatmap for {e.target_class}" in text


def test_analyze_rerun_keeps_an_edited_segmentation_layer(make_napari_viewer, qtbot,
                                                          test_models, sample_path):
    """The user paints on the Analyze run's segmentation layer, then analyses again: the edited
    layer is kept (renamed, hidden) and the new segmentation comes as a layer of its own; a
    rerun without edits updates the layer in place."""
    from napari_radiogen.napari.analyze_widget import AnalyzeWidget
    viewer = make_napari_viewer()
    viewer.open(str(sample_path), plugin="napari-radiogen")
    w = AnalyzeWidget(viewer)
    w.seg_model.setCurrentText("test_seg3d")
    w.pred_model.setCurrentText("test_mil")
    w.device.setCurrentText("cpu")
    for b in w.task_boxes.values():
        b.setChecked(False)                               # no explanation: faster
    w.run()
    qtbot.waitUntil(lambda: w.job.done, timeout=600_000)
    name = next(l.name for l in viewer.layers if "segmentation (test_seg3d)" in l.name)
    first = viewer.layers[name]
    w.run()                                                # no edits: in place
    qtbot.waitUntil(lambda: w.job.done, timeout=600_000)
    assert viewer.layers[name] is first
    pts = [(60, 20, 20), (60, 20, 21), (61, 30, 100)]
    for p in pts:
        first.paint(p, 4, refresh=True)
    w.run()
    qtbot.waitUntil(lambda: w.job.done, timeout=600_000)
    assert w.job.error is None
    kept = viewer.layers[f"{name} (edited)"]
    assert kept is first and not kept.visible
    assert [int(kept.data[p]) for p in pts] == [4, 4, 4]
    assert viewer.layers[name] is not first
    assert "edits are kept" in w.stage.text()


def test_the_register_box_reaches_the_analysis_options(make_napari_viewer):
    """Off by default, as in `radiogen analyze`; ticked, the analysis co-registers the
    sequences first (AnalysisOptions.register), and a rerun with it unticked does not."""
    from napari_radiogen.napari.analyze_widget import AnalyzeWidget
    w = AnalyzeWidget(make_napari_viewer())
    assert not w.register.isChecked() and not w.inputs().register
    w.register.setChecked(True)
    assert w._analyzer(w.inputs()).options.register is True
    w.register.setChecked(False)
    assert w._analyzer(w.inputs()).options.register is False


def test_a_registered_sequence_is_shown_in_place_of_the_layer_as_read(make_napari_viewer, qtbot,
                                                                      test_models, sample_path,
                                                                      tmp_path):
    """With the register box ticked, the sequence the registration moved (a T2 whose header
    is 8 mm off) is shown as '<case> t2 (registered)', just above the T2 as read, visible as
    that was, and placed where the FLAIR is; the T2 as read is hidden, and the next analysis
    reads the registered layer. A run cancelled after the move puts everything back."""
    from _sample_helpers import sample_copy

    from napari_radiogen.napari.analyze_widget import AnalyzeWidget
    from napari_radiogen.napari.layers import case_layers
    case = sample_copy(tmp_path / "BraTS2021_00006", (0.0, 8.0, 0.0))
    viewer = make_napari_viewer(show=True)
    viewer.open(str(case), plugin="napari-radiogen")
    w = AnalyzeWidget(viewer)
    w.seg_model.setCurrentText("test_seg3d")
    w.pred_model.setCurrentText("test_mil")
    w.device.setCurrentText("cpu")
    w.register.setChecked(True)
    read = viewer.layers["BraTS2021_00006 t2"]
    read.visible = True
    name = "BraTS2021_00006 t2 (registered)"

    before = [(ly.name, ly.visible) for ly in viewer.layers]
    w.run()
    qtbot.waitUntil(lambda: name in viewer.layers or w.job.done, timeout=600_000)
    w.cancel()
    qtbot.waitUntil(lambda: w.job.done, timeout=60_000)
    assert w.job.cancelled
    assert [(ly.name, ly.visible) for ly in viewer.layers] == before

    w.run()
    qtbot.waitUntil(lambda: w.job.done, timeout=600_000)
    assert w.job.error is None and not w.job.cancelled
    reg = viewer.layers[name]
    names = [ly.name for ly in viewer.layers]
    assert names.index(name) == names.index(read.name) + 1
    assert reg.visible and not read.visible
    flair = viewer.layers["BraTS2021_00006 flair"]
    np.testing.assert_allclose(reg.translate, flair.translate, atol=1.0)
    assert np.abs(np.asarray(read.translate) - flair.translate).max() > 7.0
    assert np.array_equal(reg.data, read.data)       # the voxels as read, the header moved
    assert reg.metadata["radiogen"]["registered_onto"] == "flair"
    assert w.result.registered == ["t2"]
    assert case_layers(viewer.layers, "BraTS2021_00006")["t2"] is reg
    assert not any(w.startswith("t2 looks offset") for w in w.result.warnings)
