"""Card-driven label assembly of the 3D segmentation models (core.segment.assemble_labels):
decision thresholds per region and the T1ce-enhancement rule for the enhancing tumour."""
import numpy as np
import pytest

from napari_radiogen.core import segment as seg
from napari_radiogen.core.errors import RadiogenError
from napari_radiogen.core.phantom import make_phantom
from napari_radiogen.core.progress import run


def _probs():
    """(3, 4, 4, 4) WT/TC/ET probabilities: WT everywhere, TC 0.6 in the front half, ET 0.3
    (an under-confident ET channel) in the first quarter."""
    p = np.zeros((3, 4, 4, 4), np.float32)
    p[0] = 0.9
    p[1, :2] = 0.6
    p[2, :1] = 0.3
    return p


def test_default_is_threshold_half():
    p = _probs()
    for spec in (None, {}, {"et_min_total_ml": 0.2}):
        out = seg.assemble_labels(p, spec)
        assert np.array_equal(out, seg.regions_to_labels(p >= 0.5))
    assert not (out == 4).any()                     # ET 0.3 < 0.5: no enhancing tumour
    assert (out[:2] == 1).all() and (out[2:] == 2).all()


def test_thresholds_per_region():
    p = _probs()
    et = seg.assemble_labels(p, {"thresholds": {"ET": 0.25}})
    assert (et[:1] == 4).all() and (et[1:2] == 1).all() and (et[2:] == 2).all()
    tc = seg.assemble_labels(p, {"thresholds": {"TC": 0.7, "ET": 0.25}})
    assert (tc == 2).all()                          # TC 0.6 < 0.7: no core, so no ET (nesting)
    wt = seg.assemble_labels(p, {"thresholds": {"WT": 0.95}})
    assert not wt.any()
    with pytest.raises(RadiogenError):
        seg.assemble_labels(p, {"thresholds": {"NCR": 0.5}})
    with pytest.raises(RadiogenError):
        seg.assemble_labels(p, {"thresholds": {"ET": 1.5}})


def test_enhancement_rule_replaces_et_channel_inside_core_only():
    p = _probs()
    p[2] = 0.99                                     # the ET channel says ET everywhere
    z = np.zeros((4, 4, 4), np.float32)
    z[1] = 3.0                                      # enhancing slab inside the core
    z[3] = 3.0                                      # enhancing slab outside the core
    spec = {"enhancement": {"sequence": "t1ce", "min_z": 2.0}}
    out = seg.assemble_labels(p, spec, z)
    assert (out[1] == 4).all()
    assert (out[0] == 1).all()                      # core, not enhancing: ET channel ignored
    assert (out[3] == 2).all()                      # enhancing but outside TC: oedema
    # TC and WT are not changed by the rule
    ref = seg.assemble_labels(p, None)
    assert np.array_equal(np.isin(out, [1, 4]), np.isin(ref, [1, 4]))
    assert np.array_equal(out > 0, ref > 0)
    assert not (seg.assemble_labels(p, {"enhancement": {"min_z": 3.5}}, z) == 4).any()
    with pytest.raises(RadiogenError):
        seg.assemble_labels(p, spec, None)          # the rule needs the T1ce map


def test_enhancement_z_uses_case_normalisation():
    case = make_phantom(1, skull_stripped=True)
    prep = seg.prepare_volume(case, {"sequences": ["t1", "t1ce", "t2", "flair"],
                                     "spacing_mm": 2.0, "normalisation": "zscore"})
    z = seg.enhancement_z(case, prep)
    assert z.shape == case.sequences["t1ce"].array.shape
    p = prep.norm_params["t1ce"]
    a = case.sequences["t1ce"].array
    i = np.unravel_index(int(np.argmax(a)), a.shape)
    assert z[i] == pytest.approx((a[i] - p["mean"]) / p["std"], rel=1e-4)


def test_segment_applies_card_thresholds_and_enhancement(tmp_path):
    """core.segment reads the options from the card: a net whose ET channel is a constant 0.27
    gives no ET by default, ET in the whole core with an ET threshold of 0.25, and ET only where
    T1ce enhances with the enhancement rule."""
    from napari_radiogen.core.models import load_model, new_card, save_model
    from _models import constant_brats_net

    # constant logits: WT/TC certain everywhere, ET sigmoid(-1) = 0.27
    net, arch, fields = constant_brats_net("as_a", [5.0, 5.0, -1.0], zero_weights=True)
    sd = net.state_dict()
    specs = {"default": None, "et025": {"thresholds": {"ET": 0.25}},
             "enh": {"enhancement": {"sequence": "t1ce", "min_z": 1.5}}}
    case = make_phantom(2, skull_stripped=True)
    out = {}
    for k, spec in specs.items():
        extra = {"postprocess": spec} if spec else {}
        p = save_model(tmp_path / f"as_{k}.safetensors", sd,
                       new_card(f"as_{k}", "segmentation", arch, **fields, **extra))
        out[k] = run(seg.segment(case, load_model(str(p), task="segmentation"), device="cpu",
                                 compare=False)).labels
    core = np.isin(out["default"], [1, 4])
    assert core.any() and not (out["default"] == 4).any()
    assert np.array_equal(out["et025"] == 4, core)
    enh = out["enh"] == 4
    assert enh.any() and enh.sum() < core.sum() and not (enh & ~core).any()
    prep = seg.prepare_volume(case, fields)
    z = seg.enhancement_z(case, prep)
    assert np.array_equal(enh, core & (z >= 1.5))
