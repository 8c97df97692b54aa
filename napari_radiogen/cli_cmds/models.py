"""``radiogen models [--task T] [--json]``: installed (user) and shipped models and their cards."""
from __future__ import annotations

import json


def add_arguments(p) -> None:
    p.add_argument("--task", help="only models of this card task (segmentation, prediction, ...)")
    p.add_argument("--json", action="store_true", help="full cards as JSON")


def _headline(card) -> str:
    seen = (card.get("fine_tuned_from") or {}).get("test_patients_seen")
    h = _metric(card)
    return f"{h} (not held-out: fine-tuned from {card['fine_tuned_from'].get('name')})" \
        if h and seen else h


def _metric(card) -> str:
    cv = ((card.get("metrics") or {}).get("cv")) or {}
    for k in ("auc", "dice", "c_index", "psnr", "accuracy", "score"):
        v = cv.get(k)
        if isinstance(v, dict) and v.get("mean") is not None:
            lo, hi = (v.get("ci95") or [None, None])[:2]
            ci = f" [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else ""
            return f"{k} {v['mean']:.3f}{ci}"
    return ""


def run(args) -> int:
    from ..core.models import list_models
    ms = list_models(args.task)
    if args.json:
        print(json.dumps(ms, indent=1, default=str))
        return 0
    if not ms:
        print("no models installed" + (f" for task {args.task!r}" if args.task else ""))
        return 0
    print(f"{'name':<32} {'task':<20} {'origin':<8} {'date':<20} metrics")
    for m in ms:
        c = m["card"]
        print(f"{m['name']:<32} {str(m['task']):<20} {m['origin']:<8} "
              f"{str(c.get('date', ''))[:19]:<20} {_headline(c)}")
    return 0
