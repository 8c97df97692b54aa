"""``radiogen bench [--json]``: time each stage on the bundled sample case."""
from __future__ import annotations



def add_arguments(p) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    from ._common import add_device_argument
    add_device_argument(p, default="cpu")
    p.add_argument("--stages", help="comma-separated subset of: load, prepare, segment, "
                   "predict, predict_radiomics, synthesize, explain, explain_radiomics, triage, "
                   "train_step")


def run(args) -> int:
    from ..core.bench import BenchResult, bench
    from ..core.outputs import dumps
    from ._common import ProgressLine, check_device
    check_device(args.device)            # --device cuda without a GPU: stop now (exit 2)
    stages = [s.strip() for s in args.stages.split(",")] if args.stages else None
    res = None
    with ProgressLine(enabled=not args.json, key=lambda p: p.message) as show:
        for item in bench(device=args.device, stages=stages):
            if isinstance(item, BenchResult):
                res = item
            else:
                show(item)
    if not args.json:
        print(res.table())
    else:
        print(dumps(res.as_dict(), indent=1))
    return 0
