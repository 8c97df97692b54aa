"""The batch loop shared by the per-case commands (``segment``, ``predict``): one case or a
folder of cases; in a folder a bad case (any error, not only a RadiogenError) is reported and
the rest go on; one CSV row per case.

Also what every batch command says alike: the sub-folders of a cohort that hold no case
(:func:`skipped_folders`: an empty folder, a folder of files that are not images), said on a
``skipped: <name>/: <reason>`` line and, where the command writes a summary, in a row with
status ``skipped`` (not a failed case: the exit status does not change); and the messages
written into the output files name the case's files relative to the cohort folder
(``core.outputs.strip_folder``, as ``radiogen analyze`` writes its ``summary.csv``), not by
the absolute path the case was read from."""
from __future__ import annotations

import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..core.insample import batch_in_sample_lines, in_sample_parts
from ..core.notes import cautions
from ..core.outputs import strip_folder


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


def skipped_folders(folder, cases: Sequence[Any]) -> List[Tuple[str, str]]:
    """The immediate sub-folders of the cohort ``folder`` that ``core.io.list_cases`` gave no
    case from (no case is the folder or lies under it), each with the reason it holds no case:
    ``[(name, reason)]``, sorted by name, e.g. ``("empty", "empty folder (no cases)")``. The
    reason is what the case listing says of the folder (``list_cases`` on it, else
    ``load_case``), with the cohort folder's path left out. Hidden folders (``.name``) are
    not listed, as the listing ignores them."""
    import os
    from pathlib import Path

    from ..core.errors import RadiogenError
    from ..core.io import list_cases, load_case

    root = Path(folder)
    if not root.is_dir():
        return []
    taken = set()
    for c in cases:
        q = Path(c)
        taken.add(os.path.abspath(q))
        taken.update(os.path.abspath(a) for a in q.parents)
    try:
        with os.scandir(root) as it:
            subs = sorted(e.name for e in it if not e.name.startswith(".") and e.is_dir())
    except OSError:
        return []
    out: List[Tuple[str, str]] = []
    for name in subs:
        sub = root / name
        if os.path.abspath(sub) in taken:
            continue
        reason = ""
        try:
            found = list_cases(sub)
        except RadiogenError as e:
            reason = str(e)
        except Exception as e:          # stay one line
            reason = f"{type(e).__name__}: {e}"
        else:
            try:                         # listed on its own, not from the cohort: ask why
                load_case(sub if not found else found[0])
                reason = "not read as a case of the cohort (nested too deep)"
            except RadiogenError as e:
                reason = str(e)
            except Exception as e:
                reason = f"{type(e).__name__}: {e}"
        reason = " ".join(reason.split()) or "no case found"
        for prefix in (str(sub), os.path.abspath(sub)):
            if reason.startswith(prefix + ": "):
                reason = reason[len(prefix) + 2:]
        out.append((name, strip_folder(reason, sub)))
    return out


def say_skipped(skipped: Sequence[Tuple[str, str]], stream: Any = None) -> None:
    """One ``skipped: <name>/: <reason>`` line per folder of :func:`skipped_folders`."""
    stream = stream if stream is not None else sys.stderr
    for name, reason in skipped:
        print(f"skipped: {name}/: {reason}", file=stream, flush=True)


def run_batch(case_arg: str, process: Callable[[Any], Tuple[Any, str, str]],
              row: Callable[..., dict], columns: Sequence[str], csv_path,
              csv_always: bool = False, csv_name: str = "summary",
              overrides: Optional[Dict[str, str]] = None, deidentify: bool = True) -> int:
    """Run ``process(case) -> (result, summary text, written path)`` on every case of
    ``case_arg``; ``row(result, seconds=...)`` / ``row(case_id=, status=, message=, seconds=)``
    make the CSV rows. A single case's error propagates (the CLI prints it, exit 2); in a
    batch any error of a case (a RadiogenError, or another exception, reported as
    ``<ExceptionType>: <message>``) marks that case failed, the others go on, and the exit code
    is 1. The CSV is written for a batch (always when ``csv_always``). With ``overrides``
    (``--sequence FILE=SEQ``, which name the files of one case) ``case_arg`` is one case.

    With ``deidentify`` (the default) a failed case's message in the CSV names its files
    relative to the cohort folder (``core.outputs.strip_folder``). The cohort's sub-folders that hold
    no case (:func:`skipped_folders`) are said (``skipped: <name>/: <reason>``) and get a row
    with status ``skipped``; they do not count as failed cases.

    In a batch, a case's in-sample note (it was in the model's training data,
    ``core.insample``) is not printed under each case: one line per model at the end says how
    many cases were in-sample and names a few (``warning: in-sample: 88 of 88 cases were in
    <model>'s training data (A, B, C and 85 more): ...``); each case's JSON keeps its note.
    Another warning given word for word for several cases is printed under the first of them
    and counted at the end, naming them (``warning: 3 of 88 cases (A, B, C) had the warning
    printed under A: ...``); each case's output files keep their warnings."""
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
    skipped = skipped_folders(case_arg, paths) if batch else []
    say_skipped(skipped)
    rows: List[dict] = []
    failed: List[str] = []
    # {(model, meaning): [case ids]}: the cases the model was trained on, said once at the end
    in_sample: Dict[Tuple[str, str], List[str]] = {}
    # {warning: [case ids]}: a warning given for several cases word for word is printed under
    # the first and counted at the end
    repeated: Dict[str, List[str]] = {}
    for i, p in enumerate(paths, 1):
        t0 = time.perf_counter()
        cid = case_id_of(p)
        try:
            case = load_case(p, overrides=overrides)
            cid = case.case_id
            res, text, written = process(case)
            dt = time.perf_counter() - t0
            print(f"[{i}/{len(paths)}] {cid}: {text} ({dt:.1f} s) -> {written}", flush=True)
            for c in cautions(getattr(res, "warnings", None) or []):   # unreliable: first
                print(f"    CAUTION: {c}", flush=True)
            for w in getattr(res, "warnings", None) or []:
                parts = in_sample_parts(w) if batch else None
                if parts is not None:        # said once for the batch, at its end
                    in_sample.setdefault(parts, []).append(cid)
                    continue
                if batch and str(w) in repeated:     # said in full under its first case
                    repeated[str(w)].append(cid)
                    continue
                if batch:
                    repeated[str(w)] = [cid]
                print(f"    warning: {w}", flush=True)
            rows.append(row(res, seconds=dt))
        except Exception as e:        # KeyboardInterrupt is not an Exception: it still stops
            if not batch:
                raise
            msg = error_text(e)
            failed.append(cid)
            print(f"[{i}/{len(paths)}] {cid}: FAILED: {msg}", file=sys.stderr, flush=True)
            rows.append(row(case_id=cid, status="failed",
                            message=strip_folder(msg, p) if deidentify else msg,
                            seconds=time.perf_counter() - t0))
    for w, ids in repeated.items():
        if len(ids) > 1:
            named = ", ".join(ids) if len(ids) <= 5 else (
                f"{', '.join(ids[:3])} and {len(ids) - 3} more")
            short = w if len(w) <= 100 else w[:97] + "..."
            print(f"warning: {len(ids)} of {len(paths)} cases ({named}) had the warning "
                  f"printed under {ids[0]}: {short}", flush=True)
    for line in batch_in_sample_lines(in_sample, len(paths)):
        print(f"warning: {line}", flush=True)
    for name, reason in skipped:
        rows.append(row(case_id=f"{name}/", status="skipped", message=reason, seconds=0.0))
    if batch or csv_always:
        write_csv(rows, csv_path, columns)
        print(f"{csv_name}: {csv_path}")
    if skipped:
        print(f"radiogen: {len(skipped)} folder(s) skipped, no case in them: "
              f"{', '.join(n + '/' for n, _ in skipped)}", file=sys.stderr)
    if failed:
        print(f"radiogen: {len(failed)} of {len(paths)} case(s) failed: {', '.join(failed)}",
              file=sys.stderr)
        return 1
    return 0
