"""``radiogen bench [--json]``: time each stage on the bundled sample case."""
from __future__ import annotations

import json
import sys


def add_arguments(p) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto (default cpu)")
    p.add_argument("--stages", help="comma-separated subset of: load, prepare, segment, "
                   "predict, predict_radiomics, synthesize, explain, triage, train_step")


def run(args) -> int:
    from ..core.bench import BenchResult, bench
    stages = [s.strip() for s in args.stages.split(",")] if args.stages else None
    res = None
    for item in bench(device=args.device, stages=stages):
        if isinstance(item, BenchResult):
            res = item
        elif not args.json:
            print(f"\r{item}   ", end="", file=sys.stderr, flush=True)
    if not args.json:
        print("", file=sys.stderr)
        print(res.table())
    else:
        print(json.dumps(res.as_dict(), indent=1))
    return 0
