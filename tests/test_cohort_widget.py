"""The cohort browser moving from case to case: the previous case's layers from the docks go
with it (an edited segmentation is set aside, not lost), the docks' case pickers follow the
case shown, Next/Previous count from the case shown and coalesce clicks made while a case
opens, a new layer takes its first-open place among the case's layers, and the case shown
picks up its results when Analyze all has made them. Synthetic cases, a real viewer."""
import threading

import numpy as np
import pytest

GRID = dict(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
SHAPE = (6, 8, 10)


def _geometry(shape=SHAPE, **kw):
    from napari_radiogen.core.case import Geometry
    return Geometry(size=shape[::-1], **(kw or GRID))


def _case_layer_data(case_id, *, seg=True, results=False, shape=SHAPE, geo=None,
                     label_names=None):
    """A cohort case's layer data as the browser prepares it: a flair, the case's expert
    labels (``seg``, with ``label_names``) and, with ``results``, the results a cohort job
    wrote for it."""
    from napari_radiogen.core.case import Volume
    from napari_radiogen.napari.layers import image_layer_data, labels_layer_data
    g = _geometry(shape, **(geo or {}))
    rng = np.random.default_rng(len(case_id))
    lds = [image_layer_data(Volume(rng.random(shape).astype(np.float32), g), case_id=case_id,
                            sequence="flair", contrast=(0.0, 1.0))]
    lab = np.zeros(shape, np.uint8)
    lab[1:3, 2:5, 2:5] = 2
    if seg:
        lds.append(labels_layer_data(Volume(lab, g), case_id=case_id,
                                     label_names=label_names or {0: "background",
                                                                 2: "oedema"}))
    if results:
        lds += [_seg_result(case_id, g), _heatmap(case_id, g)]
    return lds


def _seg_result(case_id, g, model="m"):
    from napari_radiogen.napari._common import labels_result_data
    lab = np.zeros(tuple(g.shape), np.uint8)
    lab[2:4, 2:5, 2:5] = 1
    return labels_result_data(lab, g, case_id, f"{case_id} segmentation ({model})", model=model,
                              kind="volume", synthetic_inputs=[])


def _heatmap(case_id, g):
    from napari_radiogen.napari._common import image_result_data
    return image_result_data(np.full(tuple(g.shape), 0.5, np.float32), g, case_id,
                             f"{case_id} idh gradcam", task="idh", method="gradcam")


def _prep(case_id, **kw):
    from napari_radiogen.napari._common import build_layer
    from napari_radiogen.napari.cohort_widget import PreparedCase
    lds = _case_layer_data(case_id, **kw)
    prep = PreparedCase(case_id, n_results=sum(bool(k["metadata"]["radiogen"].get("result"))
                                               for _, k, _ in lds))
    for data, k, kind in lds:
        k["metadata"]["radiogen"]["cohort"] = True
        prep.layer_data.append((data, k, kind))
        prep.built.append(build_layer((data, k, kind)))
    return prep


def _add(viewer, ld):
    from napari_radiogen.napari._common import add_layer_data
    return add_layer_data(viewer, ld)


def _names(viewer):
    return [ly.name for ly in viewer.layers]


def test_next_case_takes_the_previous_cases_dock_results_with_it(make_napari_viewer):
    """Analyze/Segment results of the previous cohort case (no cohort flag) go with it: updated
    in place where the next case has the slot (its own analysed result), else removed, and
    said; an edited segmentation is hidden and kept; another case the user opened stays."""
    from napari_radiogen.core.case import Volume
    from napari_radiogen.napari.cohort_widget import closed_note, swap_cohort_layers
    from napari_radiogen.napari.layers import image_layer_data
    from napari_radiogen.napari.segment_widget import EDITED
    viewer = make_napari_viewer()
    other = _add(viewer, image_layer_data(Volume(np.ones(SHAPE, np.float32), _geometry()),
                                          case_id="OTHER", sequence="t1"))
    swap_cohort_layers(viewer, _prep("A"))
    g = _geometry()
    seg = _add(viewer, _seg_result("A", g))                   # the Analyze dock's results
    heat = _add(viewer, _heatmap("A", g))
    edited = _add(viewer, _seg_result("A", g, model="m2"))    # painted on by the user
    edited.metadata["radiogen"][EDITED] = True
    edited.metadata["radiogen"]["cohort"] = True              # e.g. a result the case came with
    report = {}
    swap_cohort_layers(viewer, _prep_b(), report=report)
    names = _names(viewer)
    assert "A idh gradcam" not in names and heat not in viewer.layers
    assert viewer.layers["B segmentation (m)"] is seg            # in place: B's own result
    assert seg.metadata["radiogen"]["case_id"] == "B"
    assert other in viewer.layers and other.name == "OTHER t1" and other.visible
    assert edited in viewer.layers and not edited.visible        # kept, out of the way
    assert sorted(report["closed"]) == ["A idh gradcam", "A segmentation (m)"]
    note = closed_note(report)
    assert "closed 2 result layers of A with it" in note and "export" in note
    assert "A segmentation (m2)" in note and "edited" in note
    # next again: the edited layer is not the cohort case's any more, nothing else to close
    report = {}
    swap_cohort_layers(viewer, _prep("C"), report=report)
    assert edited in viewer.layers and closed_note(report) == ""
    assert not edited.metadata["radiogen"].get("cohort")
    report = {}
    swap_cohort_layers(viewer, _prep("C"), report=report)       # C again: the same case
    assert edited in viewer.layers and report["case"] == "C"
    assert "B segmentation (m)" not in _names(viewer)           # C has no results: removed


def _prep_b():
    """Case B with its own segmentation result (from a cohort job) but no heatmap."""
    from napari_radiogen.napari._common import build_layer
    prep = _prep("B")
    data, kw, kind = _seg_result("B", _geometry())
    kw["metadata"]["radiogen"]["cohort"] = True
    prep.layer_data.append((data, kw, kind))
    prep.built.append(build_layer((data, kw, kind)))
    prep.n_results = 1
    return prep


def test_reopening_the_shown_case_keeps_its_dock_results(make_napari_viewer):
    from napari_radiogen.napari.cohort_widget import swap_cohort_layers
    viewer = make_napari_viewer()
    swap_cohort_layers(viewer, _prep("A"))
    heat = _add(viewer, _heatmap("A", _geometry()))
    report = {}
    swap_cohort_layers(viewer, _prep("A"), report=report)
    assert heat in viewer.layers and not report["closed"]


def test_a_new_case_layer_goes_where_a_first_open_puts_it(make_napari_viewer):
    """After a case without expert labels, the next case's labels go below the results (as a
    first open has them), not on top of the model's segmentation and heatmap."""
    from napari_radiogen.napari.cohort_widget import swap_cohort_layers
    viewer = make_napari_viewer()
    swap_cohort_layers(viewer, _prep("A", results=True))
    first = [n.replace("A ", "", 1) for n in _names(viewer)]
    assert first == ["flair", "segmentation", "segmentation (m)", "idh gradcam"]
    swap_cohort_layers(viewer, _prep("D", seg=False, results=True))
    assert _names(viewer) == ["D flair", "D segmentation (m)", "D idh gradcam"]
    swap_cohort_layers(viewer, _prep("E", results=True))
    assert [n.replace("E ", "", 1) for n in _names(viewer)] == first
    # a case without results, then one with: the results go on top again
    swap_cohort_layers(viewer, _prep("F", seg=False))
    swap_cohort_layers(viewer, _prep("G", results=True))
    assert [n.replace("G ", "", 1) for n in _names(viewer)] == first


def test_case_pickers_follow_the_case_shown(make_napari_viewer):
    """The docks' case pickers follow a swap made in place (renamed layers, no insertion): the
    previous case leaves the list, the case shown is picked; a case the user picked that is
    still open stays picked."""
    from napari_radiogen.core.case import Volume
    from napari_radiogen.napari._common import CaseCombo
    from napari_radiogen.napari.cohort_widget import swap_cohort_layers
    from napari_radiogen.napari.layers import image_layer_data
    viewer = make_napari_viewer()
    combo = CaseCombo(viewer)
    changed = []
    combo.currentTextChanged.connect(changed.append)
    swap_cohort_layers(viewer, _prep("A"))
    other = _add(viewer, image_layer_data(Volume(np.ones(SHAPE, np.float32), _geometry()),
                                          case_id="OTHER", sequence="t1"))
    viewer.layers.selection.active = other          # the user's selection: another case
    combo.setCurrentText("A")
    swap_cohort_layers(viewer, _prep("B"))          # same grid: in place, no insertion
    assert sorted(combo.itemText(i) for i in range(combo.count())) == ["B", "OTHER"]
    assert combo.currentText() == "B" and changed[-1] == "B"
    assert combo.case().case_id == "B"
    combo.setCurrentText("OTHER")
    swap_cohort_layers(viewer, _prep("C", shape=(5, 7, 9)))    # another grid: moved
    assert combo.currentText() == "OTHER"
    assert sorted(combo.itemText(i) for i in range(combo.count())) == ["C", "OTHER"]


def test_the_selection_follows_a_layer_the_next_case_replaces(make_napari_viewer):
    """The next case's layer that replaces a selected one (its labels name other classes, so a
    new layer is made instead of an update in place) is selected in its place, as napari
    selects a layer it adds; a selection on a layer updated in place, or on a layer of another
    case, stays; a layer the next case has no slot for goes without taking the selection
    elsewhere. The new labels layer shows the next case's classes."""
    from napari_radiogen.core.case import Volume
    from napari_radiogen.napari.cohort_widget import swap_cohort_layers
    from napari_radiogen.napari.layers import image_layer_data
    viewer = make_napari_viewer()
    sel = viewer.layers.selection
    swap_cohort_layers(viewer, _prep("A"))
    labels = viewer.layers["A segmentation"]
    sel.active = labels
    swap_cohort_layers(viewer, _prep("B", label_names={0: "background", 2: "tumour core"}))
    new = viewer.layers["B segmentation"]
    assert new is not labels and labels not in viewer.layers
    assert sel.active is new and set(sel) == {new}
    assert list(new.features["name"]) == ["background", "tumour core"]
    assert _names(viewer) == ["B flair", "B segmentation"]
    # the flair, updated in place, keeps the selection; so does another case's layer
    flair = viewer.layers["B flair"]
    sel.active = flair
    swap_cohort_layers(viewer, _prep("C"))
    assert sel.active is flair and flair.name == "C flair"
    other = _add(viewer, image_layer_data(Volume(np.ones(SHAPE, np.float32), _geometry()),
                                          case_id="OTHER", sequence="t1"))
    sel.active = other
    swap_cohort_layers(viewer, _prep("D", label_names={0: "background", 2: "oedema", 1: "x"}))
    assert sel.active is other
    # the user's selection on a layer the next case lacks: nothing is selected instead
    sel.active = viewer.layers["D segmentation"]
    swap_cohort_layers(viewer, _prep("E", seg=False))
    assert not sel


# -- the widget ------------------------------------------------------------------------------
@pytest.fixture
def browser(make_napari_viewer, monkeypatch, tmp_path):
    """A cohort widget over four synthetic cases P0..P3 (P2 cannot be opened); ``opened``
    lists the cases read, ``gate`` (set by default) holds a read back while cleared,
    ``written`` the cases whose results a cohort job has written."""
    from napari_radiogen.core.errors import RadiogenError
    from napari_radiogen.napari import cohort_widget as cw
    for i in range(4):
        (tmp_path / "cohort" / f"P{i}").mkdir(parents=True)
    opened, gate, written = [], threading.Event(), set()
    gate.set()

    def fake_prepare(path, out_dir=None, cancel=None, tell=True):
        opened.append(path.name)
        assert gate.wait(30)
        if path.name == "P2":
            raise RadiogenError("P2: not a NIfTI file")
        return _prep(path.name, results=path.name in written)
    monkeypatch.setattr(cw, "prepare_case_layers", fake_prepare)
    viewer = make_napari_viewer()
    w = cw.CohortWidget(viewer)
    w.out.setText(str(tmp_path / "out"))
    w.folder.setText(str(tmp_path / "cohort"))
    w.cases = sorted((tmp_path / "cohort").iterdir())        # (list_cases wants MRI files)
    w.status = {str(c): "pending" for c in w.cases}
    w.opened, w.gate, w.written = opened, gate, written
    return w


def _settle(qtbot, w):
    qtbot.waitUntil(lambda: not w.busy, timeout=30_000)


def test_next_counts_from_the_case_shown_after_a_failed_open(browser, qtbot):
    w = browser
    w.open_case(3)
    _settle(qtbot, w)
    w.step(-1)                                  # P2: cannot be opened, P3 stays shown
    _settle(qtbot, w)
    assert w.current == 3 and "could not be opened" in w.info.text()
    w.step(+1)                                  # from P3 (shown), not from P2 (tried)
    _settle(qtbot, w)
    assert w.current == 0 and w.opened[-1] == "P0"
    assert "P0 flair" in w.viewer.layers
    w.step(-1)                                  # back to P3 (wraps)
    _settle(qtbot, w)
    assert w.current == 3
    w.open_case(1)
    _settle(qtbot, w)
    w.step(+1)                                  # P2, known not to open, is passed over
    _settle(qtbot, w)
    assert w.current == 3 and w.opened[-1] == "P3"
    w.step(-1)
    _settle(qtbot, w)
    assert w.current == 1 and w.opened[-1] == "P1"


def test_clicks_while_a_case_opens_are_coalesced(browser, qtbot):
    """Three Next clicks while the first case opens: the browser goes on to the case they
    ask for when the first open ends; the cases in between are never read."""
    w = browser
    w.gate.clear()                              # the first read is held back
    w.next_btn.click()
    qtbot.waitUntil(lambda: w.opened == ["P0"], timeout=10_000)
    w.next_btn.click()
    w.next_btn.click()
    assert w.busy and "then P3" not in w.info.text() and "then P2" in w.info.text()
    w.next_btn.click()
    assert "then P3" in w.info.text()
    w.gate.set()
    _settle(qtbot, w)
    assert w.opened == ["P0", "P3"] and w.current == 3
    assert "P3 flair" in w.viewer.layers and "P0 flair" not in w.viewer.layers
    # Next then Previous during an open: back where the open goes, nothing more read
    w.gate.clear()
    w.next_btn.click()
    qtbot.waitUntil(lambda: w.opened[-1] == "P0", timeout=10_000)
    w.next_btn.click()
    w.prev_btn.click()
    w.gate.set()
    _settle(qtbot, w)
    assert w.opened == ["P0", "P3", "P0"] and w.current == 0


def test_the_panel_says_what_went_with_the_previous_case(browser, qtbot):
    w = browser
    w.open_case(0)
    _settle(qtbot, w)
    _add(w.viewer, _seg_result("P0", _geometry()))            # Segment dock's Run
    w.step(+1)
    _settle(qtbot, w)
    assert "P0 segmentation (m)" not in w.viewer.layers
    assert "closed 1 result layer of P0 with it" in w.info.text()


def test_the_shown_case_takes_its_results_when_the_batch_made_them(browser, qtbot,
                                                                  monkeypatch):
    from napari_radiogen.core import pipeline
    from napari_radiogen.napari import cohort_widget as cw
    w = browser
    w.open_case(1)
    _settle(qtbot, w)
    flair = w.viewer.layers["P1 flair"]

    def fake_cohort(cases, out, **_):
        for c in cases:
            if c.name == "P2":
                yield pipeline.CohortItem(path=str(c), case_id=c.name, status="failed",
                                          message="bad")
                continue
            w.written.add(c.name)               # its results are on disk now
            yield pipeline.CohortItem(path=str(c), case_id=c.name, status="done")
    monkeypatch.setattr(cw, "analyze_cohort", fake_cohort)
    w.analyzer = object()
    job = w.analyze_all()
    qtbot.waitUntil(lambda: job.done, timeout=30_000)
    _settle(qtbot, w)
    assert "P1 segmentation (m)" in w.viewer.layers and "P1 idh gradcam" in w.viewer.layers
    assert w.viewer.layers["P1 flair"] is flair                # reopened in place
    assert w.opened.count("P1") == 2 and w.current == 1
    assert "1 failed" in w.info.text()                          # the summary stays


def test_an_unreliable_analysis_is_not_a_plain_tick(browser, qtbot, monkeypatch):
    """A case whose analysis carries a caution (not skull-stripped) is marked with a warning
    sign, not a tick, and its tooltip says why."""
    from napari_radiogen.core import pipeline
    from napari_radiogen.napari import cohort_widget as cw
    w = browser
    caution = "not skull-stripped: the tumour segmentation ... unreliable"

    def fake_cohort(cases, out, **_):
        for c in cases:
            yield pipeline.CohortItem(path=str(c), case_id=c.name, status="done",
                                      summary={"caution": caution if c.name == "P0" else ""})
    monkeypatch.setattr(cw, "analyze_cohort", fake_cohort)
    w.analyzer = object()
    job = w.analyze_all()
    qtbot.waitUntil(lambda: job.done, timeout=30_000)
    _settle(qtbot, w)
    p0, p1 = w.list.item(0), w.list.item(1)
    assert p0.text().startswith("⚠") and p0.toolTip().startswith("CAUTION: not skull-stripped")
    assert p1.text().startswith("✓") and "CAUTION" not in p1.toolTip()


def test_a_reopened_cases_heatmap_is_shown_as_the_docks_show_theirs(tmp_path):
    """The heatmap an Analyze-all run wrote reopens from its floor (HEATMAP_FLOOR), with the
    contrast slider's range still 0..1, as the Explain and Analyze docks show theirs."""
    import json
    from napari_radiogen.core.case import Case, Volume
    from napari_radiogen.core.io import write_volume
    from napari_radiogen.napari._common import HEATMAP_FLOOR, build_layer
    from napari_radiogen.napari.cohort_widget import result_layer_data_from
    g = _geometry()
    shape = g.shape
    case = Case(case_id="P7", sequences={"flair": Volume(np.ones(shape, np.float32), g)})
    d = tmp_path / "out" / "P7"
    d.mkdir(parents=True)
    heat = np.linspace(0, 1, int(np.prod(shape)), dtype=np.float32).reshape(shape)
    write_volume(heat, g, d / "P7_idh_gradcam.nii.gz",
                 radiogen_map={"kind": "heatmap", "task": "idh", "method": "gradcam",
                               "model": "m"})
    (d / "analysis.json").write_text(json.dumps(
        {"files": {"heatmap_idh": "P7_idh_gradcam.nii.gz"}, "models": {}}))
    [ld] = result_layer_data_from(str(tmp_path / "out"), case)
    layer = build_layer(ld)
    assert layer.name == "P7 idh gradcam"
    assert tuple(layer.contrast_limits) == (HEATMAP_FLOOR, 1.0)
    assert tuple(layer.contrast_limits_range) == (0.0, 1.0)


def test_opening_a_case_says_its_sequences_that_are_not_co_registered(monkeypatch):
    """The browser says what the reader says when a case opens: here that the native T1ce
    looks about 6 mm off the FLAIR (the layers would show it misaligned)."""
    from conftest import shared_path

    from napari_radiogen.napari import cohort_widget as cw
    from napari_radiogen.napari import layers as L
    said = []
    monkeypatch.setattr(L, "notify", said.append)
    cw.prepare_case_layers(shared_path("tcga-native", "TCGA-FG-6692", "native"))
    offset = [m for m in said if "looks offset" in m]
    assert len(offset) == 1 and offset[0].startswith("native: t1ce looks offset from flair"), said
    said.clear()
    cw.prepare_case_layers(shared_path("tcga-native", "TCGA-FG-6692", "native"), tell=False)
    assert not said
