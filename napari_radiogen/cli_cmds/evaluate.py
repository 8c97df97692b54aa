"""``radiogen evaluate MODEL DATA --out DIR``: a trained model on every patient of DATA."""
from __future__ import annotations

import sys


def add_arguments(p) -> None:
    p.add_argument("model", help="installed model name or .safetensors path")
    p.add_argument("data", help="data folder (case folders / HDF5 packs) or a labels CSV")
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--labels", help="labels CSV (patient_id + label columns [+ path])")
    from ._common import add_device_argument
    add_device_argument(p)
    p.add_argument("--limit", type=int, help="only N patients")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")


def run(args) -> int:
    from ..core.train.engine import EvalResult, evaluate_model
    from ..core.outputs import dumps
    from ._common import check_device, check_out_dir
    check_out_dir(args.out)
    check_device(args.device)            # --device cuda without a GPU: stop now (exit 2)
    res = None
    for item in evaluate_model(args.model, args.data, args.out, device=args.device,
                               labels=args.labels, limit=args.limit):
        if isinstance(item, EvalResult):
            res = item
        else:
            print(item, file=sys.stderr)
    if args.json:
        print(dumps(res.metrics, indent=1))
    else:
        for k, v in res.metrics.items():
            print(f"  {k:<18} {v:.4f}" if isinstance(v, float) else f"  {k:<18} {v}")
        print(f"report: {res.report_path}")
    return 0
