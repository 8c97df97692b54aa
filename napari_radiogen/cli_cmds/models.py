"""``radiogen models [--task T] [--json]``: installed (user) and shipped models and their cards."""
from __future__ import annotations



def add_arguments(p) -> None:
    p.add_argument("--task", help="only models of this card task (segmentation, prediction, "
                   "synthesis, triage, ...; an unknown task is refused with the valid ones)")
    p.add_argument("--json", action="store_true", help="full cards as JSON")


def _headline(card) -> str:
    seen = (card.get("fine_tuned_from") or {}).get("test_patients_seen")
    h = _metric(card)
    return f"{h} (not held-out: fine-tuned from {card['fine_tuned_from'].get('name')})" \
        if h and seen else h


def _metric(card) -> str:
    m = card.get("metrics") or {}
    if isinstance(m.get("idh"), dict) and m["idh"].get("auc_mean") is not None:
        # the prediction cards of scripts/cv_prediction.py: AUC per task, C-index
        aucs = " / ".join(f"{m[t]['auc_mean']:.2f}" for t in ("idh", "codel_1p19q", "grade")
                          if isinstance(m.get(t), dict))
        c = (m.get("survival") or {}).get("c_index_mean")
        return f"AUC IDH/1p19q/grade {aucs}" + (f", C-index {c:.2f}" if c is not None else "")
    cv = m.get("cv") or {}
    for k in ("auc", "dice", "c_index", "psnr", "accuracy", "score"):
        v = cv.get(k)
        if isinstance(v, dict) and v.get("mean") is not None:
            # cards written before intervals respected the metric's range (a t-interval over
            # folds, e.g. a Dice score of [-0.07, 0.71]) are shown clipped to it
            from ..core.evaluate.metrics import clip_interval, summary_bounds
            lo, hi = clip_interval(list(v.get("ci95") or [None, None])[:2],
                                   summary_bounds(cv, k))
            ci = f" [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else ""
            return f"{k} {v['mean']:.3f}{ci}"
    return ""


def run(args) -> int:
    from ..core.errors import RadiogenError
    from ..core.models import list_models, model_tasks
    from ..core.outputs import dumps
    ms = list_models(args.task)
    if args.task is not None and not ms:
        # a misspelt task is an error; a known task with no model installed is said below
        known = model_tasks()
        if args.task not in known:
            raise RadiogenError(f"--task: unknown task {args.task!r}; choose one of "
                                f"{', '.join(known)}")
    if args.json:
        print(dumps(ms, indent=1))
        return 0
    if not ms:
        print("no models installed" + (f" for task {args.task!r}" if args.task else ""))
        return 0
    from ..core.errors import ModelFileError
    from ..core.predict import default_model_name
    try:
        defaults = {default_model_name()}
    except ModelFileError:           # no prediction model installed
        defaults = set()
    print(f"{'name':<32} {'task':<20} {'origin':<8} {'date':<20} metrics")
    for m in ms:
        c = m["card"]
        name = m["name"] + (" *" if m["name"] in defaults else "")
        print(f"{name:<32} {str(m['task']):<20} {m['origin']:<8} "
              f"{str(c.get('date', ''))[:19]:<20} {_headline(c)}")
    if defaults & {m["name"] for m in ms}:
        print("* the default prediction model")
    return 0
