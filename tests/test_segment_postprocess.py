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
