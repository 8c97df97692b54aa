"""Fill-then-segment: a case lacking T1ce cannot be segmented by a 4-sequence model; after
``fill_missing`` it can, and the result says it used a synthetic input."""
from __future__ import annotations

import pytest

from _synth_helpers import without
from napari_radiogen.core import progress


def _models():
    from napari_radiogen.core.models import list_models
    seg = [m for m in list_models("segmentation")
           if int(m["card"].get("dims", 3)) == 3 and "t1ce" in (m["card"].get("sequences") or [])]
    syn = [m for m in list_models("synthesis") if m["origin"] == "shipped"]
    missing = []
    if not seg:
        missing.append("a shipped 3D segmentation model that needs t1ce (core.segment)")
    if not syn:
        missing.append("the shipped synthesis model (synth_seq2seq2d)")
    if missing:
        pytest.skip("fill-then-segment needs " + " and ".join(missing))
    return seg[0]["name"], syn[0]["name"]


@pytest.mark.slow
def test_fill_missing_t1ce_then_segment():
    import torch
    from napari_radiogen.core.errors import MissingSequenceError
    from napari_radiogen.core.sample import load_sample_case
    from napari_radiogen.core.segment import segment
    from napari_radiogen.core.synthesize import fill_missing, synthetic_provenance
    seg_name, syn_name = _models()
    torch.set_num_threads(2)
    from napari_radiogen.core.models import load_model
    seg = load_model(seg_name, task="segmentation")
    case = without(load_sample_case(), "t1ce")
    with pytest.raises(MissingSequenceError):
        progress.run(segment(case, seg, device="cpu"))
    filled = progress.run(fill_missing(case, syn_name, seg.card["sequences"], device="cpu"))
    assert filled.synthetic_inputs() == ("t1ce",)
    assert synthetic_provenance(filled)["uses_synthetic_input"]
    res = progress.run(segment(filled, seg, device="cpu"))
    assert res.labels.shape == case.geometry.shape
    assert any("synthetic" in w and "t1ce" in w for w in res.warnings)
    assert "synthetic" in " ".join(res.summary()["warnings"])
    assert res.synthetic_inputs == ["t1ce"] and res.summary()["synthetic_inputs"] == ["t1ce"]
