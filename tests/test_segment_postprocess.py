"""Card-driven postprocessing of BraTS label maps (core.segment.postprocess_labels) and the
2 mm attention U-Net config that uses it."""
import numpy as np

from napari_radiogen.core import segment as seg
from napari_radiogen.core.case import Geometry
from napari_radiogen.core.phantom import make_phantom
from napari_radiogen.core.progress import run

G1 = Geometry(size=(40, 40, 40), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
              direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))


def _labels():
    lab = np.zeros((40, 40, 40), np.uint8)
    lab[5:25, 5:25, 5:25] = 2           # big WT component (8000 voxels = 8 mL)
    lab[10:20, 10:20, 10:20] = 1        # core
    lab[12:18, 12:18, 12:18] = 4        # ET 216 voxels = 0.216 mL
    lab[30:33, 30:33, 30:33] = 2        # small WT component (27 voxels)
    lab[22:24, 6:8, 6:8] = 4            # tiny ET blob inside the big component (8 voxels)
    return lab


def test_no_spec_is_identity():
    lab = _labels()
    assert seg.postprocess_labels(lab, G1, None) is lab
    assert np.array_equal(seg.postprocess_labels(lab, G1, {}), lab)


def test_wt_small_components_removed_core_kept():
    lab = _labels()
    out = seg.postprocess_labels(lab, G1, {"wt_min_component_fraction": 0.1})
    assert out[31, 31, 31] == 0                      # 27 < 0.1 * 8000: removed
    assert np.array_equal(out[:26, :26, :26], lab[:26, :26, :26])
    big = seg.postprocess_labels(lab, G1, {"wt_min_component_fraction": 0.001})
    assert big[31, 31, 31] == 2                      # 27 >= 8: kept


def test_et_small_components_and_small_total_become_core():
    lab = _labels()
    out = seg.postprocess_labels(lab, G1, {"et_min_component_ml": 0.05})
    assert out[23, 7, 7] == 1                        # 8 voxels = 0.008 mL -> core
    assert (out == 4).sum() == 216
    # TC (1 or 4) and WT are unchanged by the ET rules
    assert np.array_equal(np.isin(out, [1, 4]), np.isin(lab, [1, 4]))
    out2 = seg.postprocess_labels(lab, G1, {"et_min_component_ml": 0.05, "et_min_total_ml": 0.3})
    assert not (out2 == 4).any()                     # 0.216 mL < 0.3 mL: no ET left
    assert np.array_equal(out2 > 0, lab > 0)
    out3 = seg.postprocess_labels(lab, G1, {"et_min_total_ml": 0.2})
    assert (out3 == 4).sum() == 224                  # 0.224 mL >= 0.2: all ET kept


def test_voxel_volume_respected():
    lab = _labels()
    g2 = Geometry(size=(40, 40, 40), spacing=(2.0, 2.0, 2.0), origin=(0.0, 0.0, 0.0),
                  direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    # 216 voxels of 8 mm^3 = 1.7 mL: kept with a 0.3 mL threshold on a 2 mm grid
    out = seg.postprocess_labels(lab, g2, {"et_min_total_ml": 0.3})
    assert (out == 4).sum() == 224


def test_segment_applies_card_postprocess(tmp_path):
    """core.segment runs the card's rule: the same net with and without it."""
    from napari_radiogen.core.models import load_model, new_card, save_model
    from _models import constant_brats_net

    # bias the output so the net predicts every region everywhere
    net, arch, fields = constant_brats_net("pp_a", 5.0)
    pa = save_model(tmp_path / "pp_a.safetensors", net.state_dict(),
                    new_card("pp_a", "segmentation", arch, **fields))
    pb = save_model(tmp_path / "pp_b.safetensors", net.state_dict(),
                    new_card("pp_b", "segmentation", arch, **fields,
                             postprocess={"et_min_total_ml": 1e9}))
    case = make_phantom(3)
    ra = run(seg.segment(case, load_model(str(pa), task="segmentation"), device="cpu"))
    rb = run(seg.segment(case, load_model(str(pb), task="segmentation"), device="cpu"))
    assert (ra.labels == 4).any()
    assert not (rb.labels == 4).any()
    assert np.array_equal(ra.labels > 0, rb.labels > 0)
    assert ra.labels.shape == case.geometry.size[::-1]


def test_2mm_config_card_fields():
    from napari_radiogen.core.train.base import TASKS
    from napari_radiogen.core.train.config import load_config
    import napari_radiogen.core.train.tasks  # noqa: F401  (registers the tasks)

    cfg = load_config("segmentation_brats_attunet2mm")
    task = TASKS[cfg["task"]](cfg)
    f = task.card_fields()
    assert f["spacing_mm"] == 2.0
    assert set(f["postprocess"]) == {"wt_min_component_fraction", "et_min_total_ml",
                                     "et_min_component_ml"}
    arch = task.architecture()
    assert arch["kwargs"]["channels"] == [8, 16, 32, 64, 128]
    assert all(r % 16 == 0 for r in f["roi_size"])   # 4 stride-2 levels


# -- 2D slice models: slices_labels (inference and the engine's held-out scoring) -------------

class _RampNet:
    """A stand-in network: logits = FLAIR channel + a left-to-right ramp (not mirror-symmetric)."""

    def __init__(self, slope=0.0):
        import torch
        self.torch, self.slope = torch, slope

    def __call__(self, x):
        w = x.shape[-1]
        ramp = self.slope * (self.torch.arange(w, dtype=x.dtype) - (w - 1) / 2)
        return x[:, :1] + ramp

    training = False

    def eval(self):
        return self

    def train(self, mode=True):
        return self


def _stack():
    x = np.full((4, 6, 16, 16), -5.0, np.float32)   # (n, 6 channels, H, W): FLAIR is channel 0
    x[1:3, 0, 2:8, 2:8] = 5.0                        # a big blob over two slices (72 px)
    x[0, 0, 12:14, 12:14] = 5.0                      # a small one elsewhere (4 px)
    return x


def test_slices_labels_without_spec_is_the_thresholded_network():
    x = _stack()
    lab, probs = seg.slices_labels(_RampNet(), x, "cpu")
    assert lab.dtype == np.uint8 and lab.shape == (4, 16, 16)
    assert np.array_equal(lab, (probs >= 0.5).astype(np.uint8))
    assert lab.sum() == 72 + 4


def test_slices_labels_largest_component_over_the_stack():
    lab, _ = seg.slices_labels(_RampNet(), _stack(), "cpu", {"wt_min_component_fraction": 1.0})
    assert lab.sum() == 72 and lab[0].sum() == 0          # the 4-pixel blob is gone
    kept, _ = seg.slices_labels(_RampNet(), _stack(), "cpu", {"wt_min_component_fraction": 0.01})
    assert kept.sum() == 76                               # 4 >= 0.01 x 72: kept


def test_slices_labels_mirror_mean():
    x = np.zeros((1, 6, 4, 8), np.float32)
    net = _RampNet(slope=2.0)
    raw = seg.slices_labels(net, x, "cpu")[1]
    tta = seg.slices_labels(net, x, "cpu", {"flip_tta": True})[1]
    assert not np.allclose(raw, raw[..., ::-1])           # the net alone is lopsided
    expect = 0.5 * (raw + raw[..., ::-1])
    assert np.allclose(tta, expect, atol=1e-6)
    assert np.allclose(tta, tta[..., ::-1], atol=1e-6)


def test_slices_labels_refuses_unknown_keys():
    import pytest

    from napari_radiogen.core.errors import RadiogenError
    with pytest.raises(RadiogenError, match="unknown postprocess key"):
        seg.slices_labels(_RampNet(), _stack(), "cpu", {"et_min_total_ml": 1})


def test_lgg_engine_scores_with_the_rule_and_refuses_bad_keys_before_data(monkeypatch, tmp_path):
    import pytest

    import napari_radiogen.core.train.tasks.segmentation as ts
    from napari_radiogen.core.errors import ConfigError
    from napari_radiogen.core.train.base import TASKS
    from napari_radiogen.core.train.config import load_config

    cfg = load_config("segmentation_lgg_pp")
    assert cfg["model"]["postprocess"] == {"flip_tta": True, "wt_min_component_fraction": 1.0}
    task = TASKS[cfg["task"]](cfg)
    assert task.card_fields()["postprocess"] == cfg["model"]["postprocess"]
    # a bad rule is refused when the task is made (before the engine reads any data)
    for bad_rule in ({"threshold": 0.4}, {"wt_min_component_fraction": 2}):
        bad = load_config({**cfg, "data": str(tmp_path),              # an empty folder
                           "model": {**cfg["model"], "postprocess": bad_rule}})
        with pytest.raises(ConfigError, match="postprocess"):
            TASKS[bad["task"]](bad)

    # the engine's held-out scoring: Dice of what inference returns (the rule) and the raw net
    x = _stack()
    monkeypatch.setattr(ts, "pack_input", lambda it, sl, av: x)
    item = {"id": "P1", "avail": np.ones(3, bool), "mask": (x[:, 0] > 0).astype(np.uint8)}
    out = task.evaluate(_RampNet(), [item], "cpu")
    row = out["predictions"][0]
    assert row["dice_WT_raw"] == pytest.approx(1.0)            # the net's mask is the truth
    assert row["dice_WT"] == pytest.approx(2 * 72 / (72 + 76))  # the rule drops the 4-px blob
    assert out["dice_WT"] == row["dice_WT"] and out["dice_WT_raw"] == row["dice_WT_raw"]
    assert out["score"] == out["dice_WT"] and "dice_WT_flair_only" in out
