"""The batch loop shared by the per-case commands (``segment``, ``predict``): one case or a
folder of cases; in a folder a bad case (any error, not only a RadiogenError) is reported and
the rest go on; one CSV row per case."""
from __future__ import annotations

import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple


def write_csv(rows: Sequence[dict], path, columns: Sequence[str]) -> None:
    import csv
    from pathlib import Path

    from ..core.errors import RadiogenError
    from ._common import ensure_out_dir

    ensure_out_dir(Path(path).parent)
    try:
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(columns))
            w.writeheader()
            w.writerows(rows)
    except OSError as e:
        raise RadiogenError(f"{path}: cannot write ({e.strerror or e})") from None


def run_batch(case_arg: str, process: Callable[[Any], Tuple[Any, str, str]],
              row: Callable[..., dict], columns: Sequence[str], csv_path,
              csv_always: bool = False, csv_name: str = "summary",
              overrides: Optional[Dict[str, str]] = None) -> int:
    """Run ``process(case) -> (result, summary text, written path)`` on every case of
    ``case_arg``; ``row(result, seconds=...)`` / ``row(case_id=, status=, message=, seconds=)``
    make the CSV rows. A single case's error propagates (the CLI prints it, exit 2); in a
    batch any error of a case (a RadiogenError, or another exception, reported as
    ``<ExceptionType>: <message>``) marks that case failed, the others go on, and the exit code
    is 1. The CSV is written for a batch (always when ``csv_always``). With ``overrides``
    (``--sequence FILE=SEQ``, which name the files of one case) ``case_arg`` is one case."""
    import time
    from pathlib import Path

    from ..core.io import list_cases, load_case
    from ..core.errors import error_text
    from ..core.io import case_id_of

    if overrides:
        paths, batch = [Path(case_arg)], False
    else:
        paths = list_cases(case_arg)
        batch = len(paths) > 1 or Path(case_arg).resolve() != Path(paths[0]).resolve()
    rows: List[dict] = []
    failed: List[str] = []
    for i, p in enumerate(paths, 1):
        t0 = time.perf_counter()
        cid = case_id_of(p)
        try:
            case = load_case(p, overrides=overrides)
            cid = case.case_id
            res, text, written = process(case)
            dt = time.perf_counter() - t0
            print(f"[{i}/{len(paths)}] {cid}: {text} ({dt:.1f} s) -> {written}", flush=True)
            for w in getattr(res, "warnings", None) or []:
                print(f"    warning: {w}", flush=True)
            rows.append(row(res, seconds=dt))
        except Exception as e:        # KeyboardInterrupt is not an Exception: it still stops
            if not batch:
                raise
            msg = error_text(e)
            failed.append(cid)
            print(f"[{i}/{len(paths)}] {cid}: FAILED: {msg}", file=sys.stderr, flush=True)
            rows.append(row(case_id=cid, status="failed", message=msg,
                            seconds=time.perf_counter() - t0))
    if batch or csv_always:
        write_csv(rows, csv_path, columns)
        print(f"{csv_name}: {csv_path}")
    if failed:
        print(f"radiogen: {len(failed)} of {len(paths)} case(s) failed: {', '.join(failed)}",
              file=sys.stderr)
        return 1
    return 0
