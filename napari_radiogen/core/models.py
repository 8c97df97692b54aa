"""Model files, model cards, the model registry, and safe loading.

A model file is one ``.safetensors`` file: the weights, and the model card as JSON in the
safetensors metadata (key ``"card"``). A readable copy of the card sits beside it as
``<name>.card.json``. Nothing is ever unpickled: weights load through safetensors, and legacy
``.pt`` checkpoints only with ``torch.load(weights_only=True)``.

The card says how to rebuild the network: ``card["architecture"] = {"builder":
"src_models.<module>:<function>", "kwargs": {...}}``. Only builders inside ``src_models`` are
accepted, so a model file can never name arbitrary code.

Registry: shipped models live in ``napari_radiogen/weights/``; the user's own in
``$RADIOGEN_MODELS_DIR`` or the platform user-data folder (``~/.local/share/napari-radiogen/
models`` on Linux). Names are file stems; the user's folder wins on a clash.
"""
from __future__ import annotations

import datetime as _dt
import importlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

from .errors import ModelFileError
from .outputs import dumps

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "weights"
CARD_KEYS_REQUIRED = ("name", "task", "architecture")


def user_models_dir() -> Path:
    env = os.environ.get("RADIOGEN_MODELS_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return Path(base) / "napari-radiogen" / "models"


def code_version() -> str:
    try:
        from importlib.metadata import version
        return version("napari-radiogen")
    except Exception:  # pragma: no cover - running from a source tree
        return "unknown"


def new_card(name: str, task: str, architecture: Dict[str, Any], **fields: Any) -> Dict[str, Any]:
    """A model card with the required keys filled and the common ones present.

    Common keys: ``sequences`` (input sequences, in channel order), ``spacing_mm``,
    ``input_size``, ``normalisation``, ``classes`` / ``tasks``, ``training_data`` (dataset,
    patients), ``config`` (the training config), ``metrics`` (with CIs and the protocol),
    ``baseline`` (the simple baseline on the same folds), ``date``, ``code_version``.
    """
    card = {"name": name, "task": task, "architecture": architecture,
            "sequences": [], "normalisation": None, "training_data": None, "config": None,
            "metrics": {}, "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "code_version": code_version(), "format": "napari-radiogen/1"}
    card.update(fields)
    return card


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)          # mkstemp makes 0600 files: model files must be readable
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    _atomic_write_bytes(Path(path), text.encode("utf-8"))


def save_model(path: os.PathLike, state_dict: Dict[str, Any], card: Dict[str, Any]) -> Path:
    """Write weights + card atomically to ``path`` (``.safetensors``) and ``<stem>.card.json``."""
    from safetensors.torch import save

    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_suffix(".safetensors")
    for k in CARD_KEYS_REQUIRED:
        if k not in card:
            raise ModelFileError(f"model card lacks the required key {k!r}")
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    blob = save(tensors, metadata={"card": dumps(card, indent=None)})
    _atomic_write_bytes(path, blob)
    atomic_write_text(path.with_suffix(".card.json"), dumps(card))
    return path


def read_card(path: os.PathLike) -> Dict[str, Any]:
    """Read the card embedded in a model file (no weights loaded)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ModelFileError(f"{path.name}: only .safetensors model files are accepted")
    try:
        from safetensors import safe_open
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:
        raise ModelFileError(f"{path.name}: not a readable safetensors file ({e})") from None
    if "card" not in meta:
        raise ModelFileError(f"{path.name}: no model card in the file")
    try:
        return json.loads(meta["card"])
    except json.JSONDecodeError as e:
        raise ModelFileError(f"{path.name}: the model card is not valid JSON ({e})") from None


def load_state_dict_file(path: os.PathLike) -> Dict[str, Any]:
    """Load tensors safely from ``.safetensors`` or (legacy) ``.pt`` with ``weights_only``."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except Exception as e:
            raise ModelFileError(f"{path.name}: cannot read weights ({e})") from None
    import torch
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelFileError(f"{path.name}: refused to load; only plain tensors are accepted, "
                             f"never pickled code ({type(e).__name__})") from None
    return obj


def resolve_builder(spec: str):
    """Import ``src_models.<module>:<function>``; refuse anything outside ``src_models``."""
    if not isinstance(spec, str) or ":" not in spec:
        raise ModelFileError(f"bad architecture builder {spec!r}")
    mod, fn = spec.split(":", 1)
    if not (mod == "src_models" or mod.startswith("src_models.")) or not fn.isidentifier():
        raise ModelFileError(f"architecture builder {spec!r} is outside src_models; refused")
    try:
        return getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise ModelFileError(f"architecture builder {spec!r} not found ({e})") from None


def build_from_card(card: Dict[str, Any]):
    arch = card.get("architecture") or {}
    builder = resolve_builder(arch.get("builder", ""))
    return builder(**(arch.get("kwargs") or {}))


@dataclass
class LoadedModel:
    name: str
    card: Dict[str, Any]
    module: Any                 # torch.nn.Module, in eval mode
    path: Optional[Path] = None
    device: str = "cpu"
    extras: Dict[str, Any] = field(default_factory=dict)

    @property
    def task(self) -> str:
        return self.card["task"]

    @property
    def sequences(self) -> List[str]:
        return list(self.card.get("sequences") or [])


def resolve_device(device: str = "auto") -> str:
    """The torch device string for a user's choice: ``auto`` (CUDA when there is a GPU, else
    the CPU), ``cpu``, ``cuda`` or ``cuda:N``. Anything else (``gpu``, a typo), and CUDA asked
    for where there is no GPU (or no GPU number N), is a :class:`ModelFileError` with one line
    saying what to use instead, never torch's own error."""
    import torch
    if device is None:
        device = "auto"
    dev = str(device).strip().lower()
    if dev in ("", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if dev == "cpu":
        return dev
    index = dev[len("cuda:"):] if dev.startswith("cuda:") else None
    if dev != "cuda" and not (index is not None and index.isdigit()):
        raise ModelFileError(f"unknown device {str(device)!r}: use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ModelFileError("CUDA was requested but no GPU is available; use --device cpu")
    if index is not None and int(index) >= torch.cuda.device_count():
        raise ModelFileError(f"no GPU number {int(index)} ({torch.cuda.device_count()} GPU(s) "
                             f"visible: cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    return dev


def is_device_oom(exc: BaseException, device: str) -> bool:
    """Whether ``exc``, raised by work on ``device`` (not ``cpu``: the GPU, or any device a
    run can give up for the CPU), is that device running out of memory: torch's
    ``OutOfMemoryError``, or a ``RuntimeError`` saying so, as cuDNN and older builds raise."""
    if str(device) == "cpu":
        return False
    import torch
    oom = getattr(torch, "OutOfMemoryError", None)       # torch >= 2.1
    return (oom is not None and isinstance(exc, oom)) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


#: how every out-of-memory fallback's warning begins (:func:`oom_note`)
OOM_NOTE_START = "the GPU ran out of memory; "


def oom_note(what: str) -> str:
    """The warning an out-of-memory fallback adds: ``what`` ran on the CPU instead."""
    return f"{OOM_NOTE_START}{what} on the CPU"


def _give_up_device(exc: BaseException, device: str, models: Iterable[Any], warn: List[Any],
                   what: str) -> None:
    """After ``exc`` on ``device``: re-raise it unless it is that device running out of memory
    (:func:`is_device_oom`); else free the GPU's cache, move ``models`` (``LoadedModel`` s or
    torch modules) to the CPU (a LoadedModel's ``device`` says so) and add :func:`oom_note`
    to ``warn``."""
    if not is_device_oom(exc, device):
        raise exc
    import torch
    torch.cuda.empty_cache()
    for m in models:
        module = getattr(m, "module", m)          # a LoadedModel or a torch module
        module.to("cpu")
        if hasattr(m, "module") and hasattr(m, "device"):
            m.device = "cpu"
    warn.append(oom_note(what))


def oom_fallback(run, device: str, *, models: Iterable[Any] = (), warn: List[Any],
                 what: str):
    """``(run(device), device)``; where ``run`` raises out-of-memory on a device other than
    the CPU (:func:`is_device_oom`: CUDA), the GPU's cache is freed, ``models``
    (``LoadedModel`` s or torch modules) move to the CPU (a LoadedModel's ``device`` says so),
    :func:`oom_note` is added to ``warn`` and ``(run("cpu"), "cpu")`` is returned. Any other
    error, and any error on the CPU, propagates. Every model stage of the core runs its
    networks through this or :func:`oom_fallback_iter`."""
    try:
        return run(device), device
    except Exception as e:
        _give_up_device(e, device, models, warn, what)
    return run("cpu"), "cpu"


def oom_fallback_iter(make, device: str, *, models: Iterable[Any] = (), warn: List[Any],
                      what: str):
    """:func:`oom_fallback` for a generator: yields what ``make(device)`` yields; where it
    raises out-of-memory part-way, it starts again with ``make("cpu")`` (the progress
    it reports starts again too). Returns (``yield from`` gives it) ``(the generator's own
    return value, the device it finished on)``."""
    try:
        value = yield from make(device)
        return value, device
    except Exception as e:
        _give_up_device(e, device, models, warn, what)
    value = yield from make("cpu")
    return value, "cpu"


_DIGESTS: Dict[Tuple[str, int, int], str] = {}


def weights_sha256(path: Union[str, Path, None]) -> Optional[str]:
    """SHA-256 of a model file (None without one), kept per path, size and modification time:
    which weights produced a result, where two files may carry the same model name (a run's
    own model beside the shipped one)."""
    if path is None:
        return None
    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        return None
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = file_sha256(p)
    return _DIGESTS[key]


def file_sha256(path: Union[str, Path]) -> str:
    """SHA-256 of a file's bytes (hex), read in 1 MiB chunks."""
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_model(name_or_path: str, *, task: Optional[str] = None, device: str = "cpu"
               ) -> LoadedModel:
    """Load a model by registry name or file path; check its card matches ``task``."""
    path = find_model(name_or_path, task=task)
    card = read_card(path)
    if task is not None and card.get("task") != task:
        raise ModelFileError(f"{path.name} is a {card.get('task')!r} model, not a {task!r} model")
    module = build_from_card(card)
    state = load_state_dict_file(path)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelFileError(f"{path.name}: weights do not fit the architecture in its card "
                             f"({str(e).splitlines()[0]})") from None
    dev = resolve_device(device)
    module.to(dev).eval()
    return LoadedModel(name=card.get("name", path.stem), card=card, module=module, path=path,
                       device=dev)


def _dirs() -> List[Path]:
    return [user_models_dir(), SHIPPED_DIR]


def find_model(name_or_path: str, task: Optional[str] = None) -> Path:
    """The file of a model name or path; an unknown name lists the known ones (of ``task``
    when given)."""
    p = Path(name_or_path)
    if p.suffix and p.exists():
        return p
    if p.suffix in (".safetensors", ".pt", ".pth") or len(p.parts) > 1:
        raise ModelFileError(f"{name_or_path}: model file not found")
    for d in _dirs():
        cand = d / f"{name_or_path}.safetensors"
        if cand.exists():
            return cand
    known = ", ".join(m["name"] for m in list_models(task)) or "none"
    what = f"{task} models" if task else "known"
    raise ModelFileError(f"no model named {name_or_path!r} ({what}: {known})")


def list_models(task: Optional[str] = None) -> List[Dict[str, Any]]:
    """Cards of the shipped and user models (user's first), optionally for one task."""
    out: List[Dict[str, Any]] = []
    seen = set()
    for origin, d in (("user", user_models_dir()), ("shipped", SHIPPED_DIR)):
        if not d.is_dir():
            continue
        for f in sorted(d.glob("*.safetensors")):
            if f.stem in seen:
                continue
            try:
                card = read_card(f)
            except ModelFileError:
                continue
            if task is not None and card.get("task") != task:
                continue
            seen.add(f.stem)
            out.append({"name": f.stem, "task": card.get("task"), "origin": origin,
                        "path": str(f), "card": card})
    return out


def model_tasks() -> List[str]:
    """The card tasks a model can have (``radiogen models --task``): those of the models the
    training tasks make (``core.train``: ``segmentation``, ``prediction``, ...) and those of
    the models installed or shipped, sorted. Imports the training tasks (and so torch)."""
    tasks = {str(m["task"]) for m in list_models() if m.get("task")}
    try:
        import importlib
        importlib.import_module(".train.tasks", __package__)   # registers the training tasks
        from .train.base import TASKS
        tasks |= {str(t.model_task) for t in TASKS.values() if t.model_task != "abstract"}
    except ImportError:                  # no training engine: the installed models' tasks
        pass
    return sorted(tasks)


def default_model(task: str, prefer: Iterable[str] = ()) -> str:
    """Name of the model to use for ``task``: first of ``prefer`` that exists, else the first
    listed (user models first)."""
    models = list_models(task)
    names = [m["name"] for m in models]
    for p in prefer:
        if p in names:
            return p
    if not names:
        raise ModelFileError(f"no model for task {task!r} is installed")
    return names[0]
