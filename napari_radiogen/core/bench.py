"""``radiogen bench``: time each stage on the bundled sample case.

Stages: load, prepare, each installed model family's inference (segment, predict, synthesize,
explain, triage; a family whose core module, function or model is absent is listed as skipped
with the reason), and one optimisation step of the ``phantom-demo`` training task. The peak
resident memory (RSS) of the process after each stage is reported too.
"""
from __future__ import annotations

import platform
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Union

from .errors import ModelFileError, RadiogenError
from .progress import CancelToken, Progress, check
from .progress import run as _run

ALL_STAGES = ("load", "prepare", "segment", "predict", "predict_radiomics", "synthesize",
              "explain", "explain_radiomics", "triage", "train_step")


def peak_rss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024


@dataclass
class BenchRow:
    stage: str
    seconds: Optional[float]
    status: str                       # ok | skipped | failed
    note: str = ""
    peak_rss_mb: float = 0.0


@dataclass
class BenchResult:
    rows: List[BenchRow]
    device: str
    peak_rss_mb: float
    info: Dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> Dict[str, Any]:
        return {"device": self.device, "peak_rss_mb": round(self.peak_rss_mb, 1),
                "info": self.info,
                "stages": [{"stage": r.stage, "seconds": None if r.seconds is None
                            else round(r.seconds, 3), "status": r.status, "note": r.note,
                            "peak_rss_mb": round(r.peak_rss_mb, 1)} for r in self.rows]}

    def table(self) -> str:
        w = max([12] + [len(r.stage) for r in self.rows])
        lines = [f"{'stage':<{w}} {'seconds':>9} {'peak RSS MB':>12}  status / note"]
        for r in self.rows:
            s = "-" if r.seconds is None else f"{r.seconds:.2f}"
            lines.append(f"{r.stage:<{w}} {s:>9} {r.peak_rss_mb:>12.0f}  {r.status}"
                         + (f": {r.note}" if r.note else ""))
        lines.append(f"device {self.device}; peak RSS {self.peak_rss_mb:.0f} MB"
                     + (f"; allocator {self.info['allocator']}" if "allocator" in self.info
                        else ""))
        return "\n".join(lines)


def _drain(gen) -> Any:
    return _run(gen) if hasattr(gen, "__next__") else gen


def _train_step(device: str) -> str:
    import torch
    from .train import tasks as _t  # noqa: F401
    from .train.base import TASKS
    from .train.config import load_config
    cfg = load_config({"task": "phantom-demo", "data": "phantom",
                       "phantom": {"n": 8, "slices": 4, "size": 32},
                       "train": {"batch_size": 16}})
    task = TASKS["phantom-demo"](cfg)
    ids = [r.patient_id for r in task.patients()]
    ds, _ = task.make_datasets(ids, [])
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=16)))
    model = task.build_model().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss, _ = task.training_step(model, batch, device)
    loss.backward()
    opt.step()
    return f"phantom-demo, batch 16 x 1x32x32, loss {loss.item():.3f}"


def bench(*, device: str = "cpu", stages: Optional[Sequence[str]] = None,
          cancel: Optional[CancelToken] = None) -> Iterator[Union[Progress, BenchResult]]:
    """Generator: time the stages; yields Progress and finally a :class:`BenchResult`."""
    import importlib
    from .models import resolve_device
    dev = resolve_device(device)
    stages = list(stages or ALL_STAGES)
    bad = [s for s in stages if s not in ALL_STAGES]
    if bad:
        raise RadiogenError(f"unknown bench stage(s) {', '.join(bad)} (known: "
                            f"{', '.join(ALL_STAGES)})")
    rows: List[BenchRow] = []
    state: Dict[str, Any] = {}

    def need_case():
        if "case" not in state:
            from .sample import load_sample_case
            state["case"] = load_sample_case()
        return state["case"]

    def fam(module: str, fn: str, call: Callable[[Any], Any]):
        def go():
            try:
                mod = importlib.import_module(f"napari_radiogen.core.{module}")
            except ImportError as e:
                return "skipped", f"core.{module} is not available ({e})"
            f = getattr(mod, fn, None)
            if f is None:
                return "skipped", f"core.{module}.{fn} does not exist"
            try:
                out = call(f)
            except ModelFileError as e:
                return "skipped", f"no model: {e}"
            return "ok", out or ""
        return go

    def st_load():
        state.pop("case", None)
        c = need_case()
        return "ok", f"{c.case_id}: {', '.join(c.present)} {c.geometry.shape} (z,y,x)"

    def st_prepare():
        from .prepare import prepare
        p = prepare(need_case())
        return "ok", f"working grid {tuple(p.array.shape) if hasattr(p, 'array') else ''}"

    def triage_call(f):
        from .triage import load_triage_model
        m = load_triage_model(device=dev)
        t = _drain(f(need_case(), m))
        names = getattr(t, "names", None)
        return f"{len(names)} slices" if names is not None else ""

    fns: Dict[str, Callable[[], Any]] = {
        "load": st_load,
        "prepare": st_prepare,
        "segment": fam("segment", "segment",
                       lambda f: (_drain(f(need_case(), _default("segmentation"), device=dev,
                                           cancel=cancel)), "")[1]),
        "predict": fam("predict", "predict",
                       lambda f: (_drain(f(need_case(), None, device=dev, cancel=cancel)),
                                  _pred_note())[1]),
        "predict_radiomics": fam(
            "predict", "predict",
            lambda f: (_drain(f(need_case(), "predict_radiomics", device=dev, cancel=cancel)),
                       "segment-then-classify, its own 3D segmentation included")[1]),
        "synthesize": fam("synthesize", "synthesize",
                          lambda f: (_drain(f(need_case(), None, "t1ce", device=dev,
                                              cancel=cancel)), "target t1ce")[1]),
        "explain": fam("explain", "explain",
                       lambda f: (_drain(f(need_case(), None, device=dev, cancel=cancel)),
                                  "Grad-CAM, IDH, " + _pred_note())[1]),
        "explain_radiomics": fam(
            "explain", "explain",
            lambda f: (lambda r: f"occlusion, IDH, {r.details.get('blocks')} blocks, its own 3D "
                                 "segmentation included")(
                _drain(f(need_case(), "predict_radiomics", cancel=cancel)))),
        "triage": fam("triage", "classify_volume", triage_call),
        "train_step": lambda: ("ok", _train_step(dev)),
    }
    for i, name in enumerate(stages):
        check(cancel)
        yield Progress(stage="bench", done=i, total=len(stages), message=name)
        t0 = time.perf_counter()
        try:
            status, note = fns[name]()
        except ModelFileError as e:
            status, note = "skipped", f"no model: {e}"
        except RadiogenError as e:
            if type(e).__name__ == "Cancelled":
                raise
            status, note = "failed", str(e)
        except Exception as e:  # a broken family must not stop the benchmark of the others
            status, note = "failed", f"{type(e).__name__}: {e}"
        dt = time.perf_counter() - t0
        rows.append(BenchRow(name, dt if status == "ok" else None, status, str(note)[:200],
                             peak_rss_mb()))
    import torch

    from .allocator import allocator_state
    yield Progress(stage="bench", done=len(stages), total=len(stages), message="done")
    yield BenchResult(rows=rows, device=dev, peak_rss_mb=peak_rss_mb(),
                      info={"python": platform.python_version(), "torch": torch.__version__,
                            "threads": torch.get_num_threads(), "machine": platform.machine(),
                            "allocator": allocator_state()})


def _pred_note() -> str:
    """The default prediction model, and whether its time includes a segmentation."""
    from .models import find_model, read_card
    from .predict import default_model_name, uses_segmentation
    name = default_model_name()
    seg = uses_segmentation(read_card(find_model(name)))
    return name + (" (its own 3D segmentation included)" if seg else "")


def _default(task: str) -> str:
    from .models import default_model
    return default_model(task)
