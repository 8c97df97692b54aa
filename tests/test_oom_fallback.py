"""Out-of-memory on the GPU: every model stage (segmentation, prediction, explanation,
synthesis, ranking, the analysis) finishes on the CPU, says so, and reports where it ran.

There is no GPU in CI. The tests ask for the device ``cpu:0``: torch runs it on the CPU, and
the fallback treats it as any device other than ``cpu`` (a GPU). The stage's network call is
wrapped to raise torch's ``OutOfMemoryError`` on that device, as CUDA does. The fallback's
result must equal a plain CPU run's. ``tests/test_cuda.py`` runs the stages on a real GPU
where there is one."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from napari_radiogen.core import models as M
from napari_radiogen.core.models import (is_device_oom, load_model, oom_fallback,
                                         oom_fallback_iter, oom_note)
from napari_radiogen.core.progress import Progress, run


GPU = "cpu:0"          # stands for the GPU (see the module docstring)


def _oom():
    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


@pytest.fixture
def on_gpu(monkeypatch):
    """``device="cuda"`` (and ``auto``) resolve to the stand-in device."""
    real = M.resolve_device
    monkeypatch.setattr(M, "resolve_device",
                        lambda d="auto": GPU if str(d) in ("cuda", "auto", GPU) else real(d))


def _failing_on_gpu(fn, calls):
    """``fn`` that runs out of memory when its device argument is the stand-in GPU."""
    def wrapped(*a, **kw):
        dev = kw.get("device", kw.get("dev", a[-1] if a else None))
        calls.append(str(dev))
        if str(dev) == GPU:
            raise _oom()
        return fn(*a, **kw)
    return wrapped


# -- the helpers --------------------------------------------------------------------------------
def test_oom_is_recognised_on_a_gpu_only():
    assert is_device_oom(_oom(), "cuda")
    assert is_device_oom(RuntimeError("CUDA error: out of memory"), "cuda:1")
    assert not is_device_oom(_oom(), "cpu")                 # nowhere to fall back to
    assert not is_device_oom(RuntimeError("size mismatch"), "cuda")
    assert not is_device_oom(ValueError("out of memory"), "cuda")


def test_oom_fallback_reruns_on_the_cpu_and_moves_the_model():
    class Loaded:                         # a LoadedModel's two attributes the helper uses
        def __init__(self):
            self.module, self.device = torch.nn.Linear(2, 1), GPU

    lm, warn, seen = Loaded(), [], []

    def work(dev):
        seen.append(dev)
        if dev == GPU:
            raise _oom()
        return 42

    assert oom_fallback(work, GPU, models=[lm], warn=warn, what="it ran") == (42, "cpu")
    assert seen == [GPU, "cpu"] and lm.device == "cpu"
    assert warn == [oom_note("it ran")] == ["the GPU ran out of memory; it ran on the CPU"]
    # no fallback without an out-of-memory, or from the CPU itself
    warn.clear()
    assert oom_fallback(lambda d: d, GPU, warn=warn, what="x") == (GPU, GPU) and warn == []
    def cpu_oom(dev):
        raise _oom()
    with pytest.raises(torch.OutOfMemoryError):
        oom_fallback(cpu_oom, "cpu", warn=warn, what="x")
    with pytest.raises(ValueError):
        oom_fallback(lambda d: int("x"), GPU, warn=warn, what="x")
    assert warn == []


def test_oom_fallback_iter_starts_the_generator_again_on_the_cpu():
    def gen(dev):
        yield f"{dev}:1"
        if dev == GPU:
            raise _oom()
        yield f"{dev}:2"
        return "value"

    warn = []
    it = oom_fallback_iter(gen, GPU, warn=warn, what="it ran")
    items = []
    while True:
        try:
            items.append(next(it))
        except StopIteration as stop:
            ret = stop.value
            break
    assert items == [f"{GPU}:1", "cpu:1", "cpu:2"] and ret == ("value", "cpu")
    assert warn == [oom_note("it ran")]


# -- the stages ----------------------------------------------------------------------------------
def test_segmentation_falls_back_to_the_cpu(models, sample, on_gpu, monkeypatch):
    from napari_radiogen.core import segment as S
    plain = run(S.segment(sample, load_model(str(models["seg"]), task="segmentation"),
                          device="cpu", compare=False))
    calls = []
    monkeypatch.setattr(S, "volume_probs", _failing_on_gpu(S.volume_probs, calls))
    lm = load_model(str(models["seg"]), task="segmentation")
    res = run(S.segment(sample, lm, device="cuda", compare=False))
    assert calls == [GPU, "cpu"]
    assert res.device == "cpu" and lm.device == "cpu"
    assert oom_note("this case was segmented") in res.warnings
    np.testing.assert_array_equal(res.labels, plain.labels)


def test_prediction_falls_back_to_the_cpu(models, sample, on_gpu, monkeypatch):
    from napari_radiogen.core import predict as P
    plain = run(P.predict(sample, load_model(str(models["mil"]), task="prediction"),
                          device="cpu"))
    assert plain.device == "cpu" and not any("ran out of memory" in str(w)
                                             for w in plain.warnings)
    calls = []
    monkeypatch.setattr(P, "run_network", _failing_on_gpu(P.run_network, calls))
    lm = load_model(str(models["mil"]), task="prediction")
    res = run(P.predict(sample, lm, device="cuda"))
    assert calls == [GPU, "cpu"]
    assert res.device == "cpu" and res.to_json()["device"] == "cpu"
    assert oom_note(f"{lm.name} ran") in res.warnings
    for t in plain.tasks:
        assert res.tasks[t] == pytest.approx(plain.tasks[t], abs=1e-6)


def test_explanation_falls_back_to_the_cpu(models, sample, on_gpu, monkeypatch):
    from napari_radiogen.core import predict as P
    from napari_radiogen.core.explain import explain
    kw = dict(task="idh", method="gradcam", localise=False)
    plain = run(explain(sample, load_model(str(models["cnn3d"]), task="prediction"),
                        device="cpu", **kw))
    calls = []
    # the network's prediction pass, the last step of the map: the whole map is made again
    monkeypatch.setattr(P, "run_network", _failing_on_gpu(P.run_network, calls))
    lm = load_model(str(models["cnn3d"]), task="prediction")
    res = run(explain(sample, lm, device="cuda", **kw))
    assert calls == [GPU, "cpu"]
    assert res.device == "cpu" and res.metadata["device"] == "cpu"
    assert oom_note(f"the gradcam map of {lm.name} was made") in res.warnings
    np.testing.assert_allclose(res.heatmap, plain.heatmap, atol=1e-5)
    assert res.details["probability"] == pytest.approx(plain.details["probability"], abs=1e-6)


@pytest.fixture(scope="module")
def synth_model(tmp_path_factory):
    from _synth_helpers import tiny_model
    return tiny_model(tmp_path_factory.mktemp("synth") / "tiny-synth.safetensors")


def _gpu_oom_generate(monkeypatch, calls):
    """core.synthesize.generate, out of memory on the stand-in GPU after its first batch."""
    from napari_radiogen.core import synthesize as S
    real = S.generate

    def generate(*a, device="cpu", **kw):
        calls.append(str(device))
        for i, item in enumerate(real(*a, device=device, **kw)):
            if str(device) == GPU and i == 1:
                raise _oom()
            yield item
    monkeypatch.setattr(S, "generate", generate)


def test_synthesis_and_fill_missing_fall_back_to_the_cpu(synth_model, sample, on_gpu,
                                                         monkeypatch):
    from napari_radiogen.core import synthesize as S
    from _synth_helpers import slab, without
    case = slab(sample, 8)
    plain = run(S.synthesize(case, load_model(str(synth_model), task="synthesis"), "t2"))
    calls = []
    _gpu_oom_generate(monkeypatch, calls)
    lm = load_model(str(synth_model), task="synthesis", device="cuda")
    assert lm.device == GPU
    seen = []
    res = None
    for item in S.synthesize(case, lm, "t2"):
        if isinstance(item, Progress):
            seen.append(item.done)
        else:
            res = item
    assert calls == [GPU, "cpu"] and seen.count(0) >= 2       # its progress started again
    assert res.device == "cpu" and res.to_json()["device"] == "cpu"
    assert oom_note("t2 was synthesised") in res.warnings
    np.testing.assert_allclose(res.volume.array, plain.volume.array, atol=1e-6)
    # filling a missing sequence records it, for the analysis to say
    lm = load_model(str(synth_model), task="synthesis", device="cuda")
    filled = run(S.fill_missing(without(case, "t2"), lm, needed=["t2"]))
    info = filled.meta["synthesized"]["t2"]
    assert info["device"] == "cpu" and info["warnings"] == [oom_note("t2 was synthesised")]


def test_ranking_falls_back_to_the_cpu_and_says_so(synth_model, sample, on_gpu, monkeypatch):
    from napari_radiogen.core import synthesize as S
    from _synth_helpers import slab, without
    case = without(slab(sample, 6), "t1ce")
    plain = run(S.rank_sequences(case, load_model(str(synth_model), task="synthesis"),
                                 maps=False))
    calls = []
    _gpu_oom_generate(monkeypatch, calls)
    lm = load_model(str(synth_model), task="synthesis", device="cuda")
    res = run(S.rank_sequences(case, lm, maps=False))
    # the first pair fell back; the model then stayed on the CPU for the rest
    assert calls == [GPU] + ["cpu"] * 6 and lm.device == "cpu"    # 6 pairs, the first again
    assert res.warnings == [oom_note("the ranking went on (from this pair)")]
    assert res.to_json()["warnings"] == res.warnings
    for got, want in zip(res.cases[0].pairs, plain.cases[0].pairs):
        assert (got["source"], got["target"]) == (want["source"], want["target"])
        assert got["mae"] == pytest.approx(want["mae"], rel=1e-6)


def test_the_analysis_says_a_synthesis_fell_back(models, synth_model, sample_path, tmp_path,
                                                 on_gpu, monkeypatch):
    import shutil
    from napari_radiogen.core.pipeline import AnalysisOptions, Analyzer
    case = tmp_path / "case"
    shutil.copytree(sample_path, case)
    (next(case.glob("*_t2.nii.gz"))).unlink()
    calls = []
    _gpu_oom_generate(monkeypatch, calls)
    opts = AnalysisOptions(seg_model=str(models["seg"]), pred_model=str(models["mil"]),
                           synth_model=str(synth_model), device="cuda",
                           stages=("load", "synthesize"))
    res = run(Analyzer(opts).analyze(case))
    assert res.synthesized == ["t2"], (res.errors, res.warnings)
    assert calls[:2] == [GPU, "cpu"]
    assert oom_note("t2 was synthesised") in res.warnings


def test_docks_name_the_device_the_result_ran_on():
    """The Predict and Explain docks say where a result ran (the CPU after a fallback), not
    the device the Device list stood for."""
    pytest.importorskip("qtpy")
    from napari_radiogen.napari._common import on_device
    from napari_radiogen.core.predict import PredictionResult
    res = PredictionResult(case_id="c", model="m", card={}, tasks={}, uncertainty={},
                           attention={}, slice_index=[], device="cpu")
    assert on_device("cuda", res) == " on cpu"
    assert on_device("cpu", replace(res, device="cuda:1")) == " on cuda:1"
    assert on_device("cpu") == " on cpu"                     # a result that does not say
