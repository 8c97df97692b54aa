"""The models on a GPU give what they give on the CPU: segmentation, the three prediction models
(the late-fusion ensemble included), the explanations and synthesis of one slice pack, run on
both.

CI has no GPU: these tests skip there. They run on a machine with CUDA (``pytest
tests/test_cuda.py``); the ensemble's fusion failed there once ('tensors on two devices') while
every CPU test passed."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

from napari_radiogen.core.progress import run as drive  # noqa: E402


@pytest.fixture(scope="module")
def case():
    from napari_radiogen.core.phantom import make_pack_phantom
    return make_pack_phantom(seed=3, n_slices=18)


def _both(fn):
    return fn("cpu"), fn("cuda")


def test_segmentation_is_the_same_on_the_gpu(case):
    from napari_radiogen.core.models import load_model
    from napari_radiogen.core.segment import segment
    cpu, gpu = _both(lambda d: drive(segment(case, load_model("seg_lgg_segresnet2d",
                                                                task="segmentation"), device=d)))
    fg = max(1, int((cpu.labels > 0).sum()))
    assert (cpu.labels > 0).any()
    assert (cpu.labels != gpu.labels).sum() <= max(3, fg // 200)


@pytest.mark.parametrize("name", ["predict_mil", "predict_cnn3d", "predict_cnn3d_roi",
                                  "predict_ensemble"])
def test_predictions_are_the_same_on_the_gpu(case, name):
    from napari_radiogen.core.models import load_model
    from napari_radiogen.core.predict import predict
    cpu, gpu = _both(lambda d: drive(predict(case, load_model(name, task="prediction"),
                                             device=d)))
    assert set(cpu.tasks) == set(gpu.tasks) and cpu.tasks
    for t in cpu.tasks:
        for c, p in cpu.tasks[t].items():
            assert gpu.tasks[t][c] == pytest.approx(p, abs=0.02)
    if cpu.risk is not None:
        assert gpu.risk == pytest.approx(cpu.risk, abs=0.05)


@pytest.mark.parametrize("name", ["predict_mil", "predict_cnn3d", "predict_cnn3d_roi",
                                  "predict_radiomics"])
def test_explanations_run_on_the_gpu_and_match_the_cpu(case, name):
    """Grad-CAM of the slice and 3D networks, occlusion of the radiomics forest: computed where
    the caller asks (``explain`` ran on the CPU whatever the device, once)."""
    if name != "predict_radiomics":
        pytest.importorskip("torchcam")
    from napari_radiogen.core.explain import explain
    from napari_radiogen.core.models import load_model
    from napari_radiogen.core.predict import module_device
    lm = load_model(name, task="prediction")
    cpu = drive(explain(case, lm, task="idh", device="cpu"))
    gpu = drive(explain(case, lm, task="idh", device="cuda"))
    assert module_device(lm.module).type == "cuda"
    assert cpu.heatmap.shape == gpu.heatmap.shape and cpu.heatmap.max() > 0
    r = np.corrcoef(cpu.heatmap.ravel(), gpu.heatmap.ravel())[0, 1]
    assert r > 0.99


def test_synthesis_is_the_same_on_the_gpu(case):
    from napari_radiogen.core.synthesize import synthesize
    cpu, gpu = _both(lambda d: drive(synthesize(case, None, "t1ce", device=d)))
    a, b = cpu.volume.array.astype(np.float32), gpu.volume.array.astype(np.float32)
    assert np.abs(a - b).max() <= 1e-3 * max(1.0, float(a.max() - a.min()))


# -- a real out-of-memory on the GPU ------------------------------------------------------------
# tests/test_oom_fallback.py raises torch's OutOfMemoryError from a stand-in device; here the
# CUDA caching allocator raises it: once the model is on the GPU, this process may hold only
# 1 MiB more than it holds then.
@pytest.fixture
def nearly_full():
    def limit():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()            # a cached free block would serve any request
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction((torch.cuda.memory_reserved() + 2 ** 20)
                                                   / total)
        with pytest.raises(torch.OutOfMemoryError):      # the limit is real
            torch.empty(2 ** 22, device="cuda")
    try:
        yield limit
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()


def _fell_back(res):
    from napari_radiogen.core.models import OOM_NOTE_START
    return res.device == "cpu" and any(str(w).startswith(OOM_NOTE_START) for w in res.warnings)


def test_segmentation_finishes_on_the_cpu_after_a_real_out_of_memory(case, nearly_full):
    from napari_radiogen.core.models import load_model
    from napari_radiogen.core.segment import segment
    lm = load_model("seg_lgg_segresnet2d", task="segmentation", device="cuda")
    nearly_full()
    res = drive(segment(case, lm, device="cuda"))
    assert _fell_back(res) and lm.device == "cpu", (res.device, res.warnings)
    plain = drive(segment(case, load_model("seg_lgg_segresnet2d", task="segmentation"),
                          device="cpu"))
    np.testing.assert_array_equal(res.labels, plain.labels)


@pytest.mark.parametrize("name", ["predict_mil", "predict_cnn3d"])
def test_prediction_finishes_on_the_cpu_after_a_real_out_of_memory(case, nearly_full, name):
    from napari_radiogen.core.models import load_model
    from napari_radiogen.core.predict import predict
    lm = load_model(name, task="prediction", device="cuda")
    nearly_full()
    res = drive(predict(case, lm, device="cuda"))
    assert _fell_back(res), (res.device, res.warnings)
    plain = drive(predict(case, load_model(name, task="prediction"), device="cpu"))
    for t in plain.tasks:
        for c, p in plain.tasks[t].items():
            assert res.tasks[t][c] == pytest.approx(p, abs=1e-5)


def test_synthesis_finishes_on_the_cpu_after_a_real_out_of_memory(case, nearly_full):
    from napari_radiogen.core.models import load_model
    from napari_radiogen.core.synthesize import synthesize
    lm = load_model("synth_seq2seq2d", task="synthesis", device="cuda")
    nearly_full()
    res = drive(synthesize(case, lm, "t1ce", device="cuda"))
    assert _fell_back(res), (res.device, res.warnings)
    plain = drive(synthesize(case, None, "t1ce", device="cpu"))
    np.testing.assert_allclose(res.volume.array, plain.volume.array, atol=1e-5)
