"""Late fusion of prediction models (``input.kind == "ensemble"``, ``src_models.fusion``): the
mean of the members' probabilities on one shared segmentation, the standardised risk, the
explanation of its image network, and the fallback when the case cannot be segmented."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_radiogen.core.progress import run as drive  # noqa: E402

from predict_helpers import make_ensemble  # noqa: E402

MEMBERS = ["predict_mil_roi", "predict_radiomics"]
MEAN, SD = [0.5, -1.0], [2.0, 0.5]


@pytest.fixture(scope="module")
def ens():
    from napari_radiogen.core.models import load_model
    make_ensemble("predict_ens_test", MEMBERS, MEAN, SD)
    return load_model("predict_ens_test", task="prediction")


def _pack(seed=0):
    from napari_radiogen.core.phantom import make_pack_phantom
    return make_pack_phantom(seed=seed, n_slices=14)


def test_late_fusion_averages_probabilities_and_standardised_risks():
    from src_models.fusion import LateFusion
    m = LateFusion(["a", "b"], [1.0, 10.0], [2.0, 5.0])
    out = m({"idh": torch.tensor([[0.2, 0.8], [0.6, 0.4]])}, torch.tensor([3.0, 0.0]))
    assert torch.allclose(out["probs"]["idh"], torch.tensor([0.4, 0.6]))
    assert float(out["risk"]) == pytest.approx(((3 - 1) / 2 + (0 - 10) / 5) / 2)
    assert "risk" not in m({"idh": torch.tensor([[0.5, 0.5]])})


def test_ensemble_is_the_mean_of_its_members_on_one_segmentation(ens, monkeypatch):
    from napari_radiogen.core import predict as P
    case = _pack()
    calls = []
    seg_for = P._segment_for

    def counting(*a, **k):
        calls.append(1)
        return (yield from seg_for(*a, **k))
    monkeypatch.setattr(P, "_segment_for", counting)
    res = drive(P.predict(case, ens, device="cpu"))
    assert len(calls) == 1                        # one segmentation served both members
    assert res.features_source.startswith("segmented by")
    labels, _ = drive(P.tumour_labels(case, P.member_cards(ens.card)[0], "cpu", None, None,
                                      "", []))
    members = [drive(P.predict(case, m, device="cpu", segmentation=labels)) for m in MEMBERS]
    for t, probs in res.tasks.items():
        for c, p in probs.items():
            assert p == pytest.approx(np.mean([r.tasks[t][c] for r in members]), abs=1e-6)
        assert res.uncertainty[t]["member_models"] == MEMBERS
        # the +/- shown is the mixture's SD: the members' own spreads (folds, trees) count,
        # not only the gap between the two members' probabilities
        pos = np.array([list(r.tasks[t].values())[-1] for r in members])
        own = np.array([r.uncertainty[t]["sd"] for r in members])
        u = res.uncertainty[t]
        assert u["between_members_sd"] == pytest.approx(pos.std(), abs=1e-6)
        assert u["sd"] == pytest.approx(np.sqrt((own ** 2).mean() + pos.var()), abs=1e-6)
        assert u["sd"] >= u["between_members_sd"] and u["sd"] >= own.min() / np.sqrt(2) - 1e-9
    want = np.mean([(r.risk - m) / s for r, m, s in zip(members, MEAN, SD)])
    assert res.risk == pytest.approx(want, abs=1e-5)
    # the image network's attention and input travel with the result (explain reuses them)
    assert res.attention == members[0].attention and res.inputs is not None
    assert res.features is not None                  # the radiomics member's tumour features


def test_ensemble_explanation_explains_its_image_network(ens):
    from napari_radiogen.core.explain import explain, explained_kind
    assert explained_kind(ens.card) == "mil_roi"
    ex = drive(explain(_pack(), ens, task="idh"))
    assert ex.method == "gradcam"
    assert any("late fusion" in w and "image network predict_mil_roi" in w
               for w in ex.warnings)


def test_ensemble_without_the_segmentation_sequences_falls_back_like_its_window_member(ens):
    from napari_radiogen.core.errors import MissingSequenceError
    from napari_radiogen.core.phantom import make_phantom
    from napari_radiogen.core.predict import predict, window_or_fallback
    case = make_phantom(seed=3, sequences=("t1", "t1ce", "flair"), skull_stripped=True)
    lm, why = window_or_fallback(case, ens, explicit=False)
    assert lm.name == "predict_mil" and "lacks t2" in why
    with pytest.raises(MissingSequenceError, match="lacks t2"):
        drive(predict(case, ens, device="cpu"))


def test_shipped_ensemble_is_the_default_by_its_rule_and_predicts_a_real_pack(shared_data):
    """predict_ensemble is the default because its CV mean AUC over the three tasks exceeds
    each member's on the same folds (the card's rule); on a real pack it fuses both members."""
    from napari_radiogen.core.io import load_case
    from napari_radiogen.core.models import load_model
    from napari_radiogen.core.predict import default_model_name, predict
    lm = load_model("predict_ensemble", task="prediction")
    assert default_model_name() == "predict_ensemble"
    card = lm.card
    tasks = ("idh", "codel_1p19q", "grade")
    mean = np.mean([card["metrics"][t]["auc_mean"] for t in tasks])
    for member, m in card["members_same_folds"].items():
        if member in ("mil_roi", "radiomics"):
            assert mean > np.mean([m[t] for t in tasks])
    res = drive(predict(load_case(shared_data / "tcga-lgg" / "TCGA_CS_4941.h5"), lm))
    assert res.uncertainty["idh"]["member_models"] == card["input"]["members"]
    assert abs(sum(res.tasks["idh"].values()) - 1) < 1e-5 and res.risk is not None


def test_a_loaded_ensemble_loads_its_members_once(ens, monkeypatch):
    """Reruns in the viewer reuse the loaded members (loading the forest again in each run
    held the event loop); its explanation reuses them too."""
    from napari_radiogen.core import models
    from napari_radiogen.core.explain import explain
    from napari_radiogen.core.predict import predict
    case = _pack(1)
    drive(predict(case, ens, device="cpu"))
    loads = []
    real = models.load_model
    monkeypatch.setattr(models, "load_model", lambda *a, **k: loads.append(a) or real(*a, **k))
    drive(predict(case, ens, device="cpu"))
    drive(explain(case, ens, task="idh"))
    # (the segmentation model is the segmentation step's business: an analysis passes its own)
    assert [a for a in loads if a[0] in MEMBERS] == []
    assert set(ens.extras["members"]) == set(MEMBERS)


def test_an_analysis_loads_the_members_with_the_ensemble_before_any_stage(ens):
    """The analysis's models stage loads an ensemble's members with it, so they are loaded
    when the segmentation is shown: building them in the middle of the prediction held the
    viewer's event loop while it added the segmentation layer."""
    from napari_radiogen.core.pipeline import AnalysisOptions, Analyzer, StageResult
    an = Analyzer(AnalysisOptions(pred_model="predict_ens_test", device="cpu",
                                  stages=("segment",)))
    members = None
    for item in an.analyze(_pack(2)):
        if isinstance(item, StageResult) and item.stage == "segment":
            members = set(an._models["pred"].extras.get("members", {}))
    assert members == set(MEMBERS)


def test_a_default_loaded_by_a_front_end_gives_way_like_no_model_at_all():
    """The CLI and the Predict widget load the default themselves: marked ``as_default``, it
    falls back to predict_mil on a 3D case without T2 (before, only explain did)."""
    from napari_radiogen.core.models import load_model
    from napari_radiogen.core.phantom import make_phantom
    from napari_radiogen.core.predict import named, predict
    lm = load_model("predict_ensemble", task="prediction")
    assert named(lm) and not named(None)
    lm.extras["as_default"] = True
    assert not named(lm)
    case = make_phantom(seed=3, sequences=("t1", "t1ce", "flair"), skull_stripped=True)
    res = drive(predict(case, lm, device="cpu"))
    assert res.model == "predict_mil"
    assert any("its member predict_mil_roi" in w and "predicted with predict_mil" in w
               for w in res.warnings)


def test_cli_explain_prints_its_warnings_and_analysis_keeps_them(tmp_path, capsys):
    from napari_radiogen.cli import main
    from napari_radiogen.core.phantom import make_pack_phantom
    from predict_helpers import write_pack
    pack = write_pack(tmp_path / "P1.h5", make_pack_phantom(seed=0, n_slices=14))
    assert main(["explain", str(pack), "--out", str(tmp_path / "ex")]) == 0
    assert "warning: predict_ensemble is a late fusion" in capsys.readouterr().out
    from napari_radiogen.core.io import load_case
    from napari_radiogen.core.pipeline import AnalysisOptions, Analyzer
    res = drive(Analyzer(AnalysisOptions(device="cpu")).analyze(load_case(pack)))
    assert any(w.startswith("explanation (gradcam, idh): predict_ensemble is a late fusion")
               for w in res.warnings)
    # the same note from every task's heatmap is said once, naming the tasks
    two = drive(Analyzer(AnalysisOptions(device="cpu", explain_tasks=("idh", "grade")))
                .analyze(load_case(pack)))
    fusion = [w for w in two.warnings if "late fusion" in w]
    assert len(fusion) == 1 and fusion[0].startswith(
        "explanation (gradcam, idh, grade): predict_ensemble is a late fusion"), two.warnings
    # the case report speaks of a fusion: the members' probabilities, their risk, attention
    from napari_radiogen.core.case_report import write_case_report
    paths = write_case_report(res, tmp_path / "rep", render=False)
    html = open(paths["report_html"]).read()
    assert "SD (the members" in html and "between the members" in html
    assert "predict_radiomics 0." in html
    assert "mean of the members' standardised risks" in html and "Cox head" not in html
    assert "Slice attention (predict_mil_roi, the image member of predict_ensemble)" in html
    assert res.prediction.uncertainty["risk"]["member_models"] == MEMBERS


def test_a_warning_both_members_give_is_said_once_naming_them(ens):
    """Age/sex unknown (each member imputes with its own statistic) and the 3D out-of-domain
    warning (each member's own words) are said once, after both members' names, with each
    member's differing words kept; a warning of one member keeps its prefix."""
    from napari_radiogen.core.phantom import make_pack_phantom, make_phantom
    from napari_radiogen.core.predict import predict
    pack = make_pack_phantom(seed=0, n_slices=14)
    pack.clinical = {}
    res = drive(predict(pack, ens, device="cpu"))
    both = "predict_mil_roi, predict_radiomics: "
    age = [w for w in res.warnings if "age unknown" in w]
    sex = [w for w in res.warnings if "sex unknown" in w]
    assert age == [both + "age unknown: the training mean (predict_mil_roi) / median "
                   "(predict_radiomics) was used"], res.warnings
    assert sex == [both + "sex unknown: the training proportion (predict_mil_roi) / median "
                   "(predict_radiomics) was used"], res.warnings

    case = make_phantom(seed=3, skull_stripped=True)
    labels = np.zeros(case.labels.array.shape, np.uint8)
    z, y, x = np.argwhere(case.labels.array > 0)[0]
    labels[z, y:y + 2, x:x + 2] = 2                 # a tiny tumour: the window member warns
    res = drive(predict(case, ens, device="cpu", segmentation=labels))
    dom = [w for w in res.warnings if "validated domain" in w]
    assert len(dom) == 1 and dom[0].startswith(both + "3D volume: the tumour-centred "
                                               "(predict_mil_roi) / radiomics "
                                               "(predict_radiomics) model was trained"), dom
    assert [w for w in res.warnings if "mL" in w][0].startswith(
        "predict_mil_roi: the segmented tumour the window is centred on is only")
    assert sum("t2 ignored" in w for w in res.warnings) == 1      # the ensemble's own, once
    assert not any("age unknown" in w for w in res.warnings)      # the phantom has an age


def test_merge_member_warnings_groups_by_kind_and_keeps_every_word():
    from napari_radiogen.core.notes import Note
    from napari_radiogen.core.predict import merge_member_warnings
    out = merge_member_warnings(
        [("a", ["t1ce missing: masked", Note("x: one two", "k"), "only a"]),
         ("b", ["t1ce missing: masked", Note("x: one", "k"), Note("t2 ignored: b", "t2 ign")])],
        said=[Note("t2 ignored: ensemble", "t2 ign")])
    assert out == ["a, b: t1ce missing: masked",                  # the same words: once
                   "a, b: x: one two (a); x: one (b)",            # no shared middle: in full
                   "a: only a"]                                   # one member: its prefix


def test_merged_warnings_keep_lists_whole_and_their_kind():
    """Two members listing inputs in different words: never cut inside the list; the merged
    warning keeps its kind, so an analysis that synthesised the inputs can leave it out."""
    from napari_radiogen.core.pipeline import AnalysisResult, _add_warnings
    from napari_radiogen.core.notes import SYNTHETIC_USED, Note, warning_key
    from napari_radiogen.core.predict import merge_member_warnings

    def note(t):
        return Note("synthetic input(s) used: " + t, SYNTHETIC_USED)
    out = merge_member_warnings([("a", [note("flair, t1ce")]), ("b", [note("t1, t1ce")])])
    assert out == ["a, b: synthetic input(s) used: flair, t1ce (a); "
                   "synthetic input(s) used: t1, t1ce (b)"]
    assert warning_key(out[0]) == SYNTHETIC_USED
    res = AnalysisResult(case_id="c")
    res.synthesized = ["t1"]
    _add_warnings(res, out + ["something else"])
    assert res.warnings == ["something else"]


def test_the_fusion_gets_its_inputs_on_the_device_of_its_module(ens):
    """On a GPU the ensemble's module lies on the GPU and the members' outputs came back to the
    CPU: the fusion must move them (it failed on CUDA with 'tensors on two devices'). Stand-in
    for a second device on a CPU machine: a module whose buffer lies on the meta device."""
    from napari_radiogen.core import predict as P

    class OnMeta(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.register_buffer("where", torch.zeros(1, device="meta"))
            self.seen = []

        def to(self, *a, **k):        # predict() places the module: it stays "elsewhere"
            return self

        def forward(self, probs, risks=None):
            self.seen += [v.device.type for v in probs.values()]
            if risks is not None:
                self.seen.append(risks.device.type)
            # meta tensors hold no values: fuse stand-in CPU values of the same shapes
            return self.inner({t: torch.full(v.shape, 0.5) for t, v in probs.items()},
                              None if risks is None else torch.zeros(risks.shape))

    assert P.module_device(OnMeta(ens.module)).type == "meta"
    real = ens.module
    ens.module = OnMeta(real)
    try:
        res = drive(P.predict(_pack(), ens, device="cpu"))
    finally:
        seen, ens.module = ens.module.seen, real
    assert seen and set(seen) == {"meta"}
    assert set(res.tasks) and res.risk is not None
