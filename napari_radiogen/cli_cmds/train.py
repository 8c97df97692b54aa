"""``radiogen train CONFIG --out RUN_DIR`` (also under ``torchrun ... -m napari_radiogen train``)."""
from __future__ import annotations

import sys


EPILOG = """\
configs: `radiogen train --list` shows the shipped ones (napari_radiogen/configs/*.yaml); the keys
are documented in napari_radiogen/core/train/config.py.

your own cohort: point `data:` at a folder of case folders or HDF5 packs and `labels:` at a CSV
with one row per patient: a `patient_id` column, one column per label the task needs (e.g.
`idh` = mutant/wildtype, `codel_1p19q`, `grade`, `os_days` + `os_event`), and optionally a `path`
column with each patient's case folder (relative to the CSV). Rows of patients without images
in the folder are left out (a note says how many, and names a few; none with images is
refused). Missing labels (unless `missing_labels: drop`), a label with one class only, an empty
split and sequences the data lack are refused before training starts.

resume: `--resume` continues the run in --out from its last checkpoint, with the same config
and options; a run that has already finished is left as it is (it says so and names its
model and card); with `--install` its model is installed then, under the run's name (the
name is in the model file: a finished run's model is not renamed).

splits are patient-level (stratified, grouped, seeded); `--folds K` reports the metrics of each
held-out fold (mean and 95% CI); the shipped model is the best fold model by inner validation
(`final: best_fold`) or a retrain on all patients (`final: retrain`).

model name: the run's model is `<name>.safetensors` in --out and, unless --limit or
--no-install is given, is installed under that name (a name is letters, digits, '.', '_' and
'-'). A shipped config is named after the shipped model it reproduces; to keep that model
visible, a run of it without --name installs as `<name>-user` (a note says so). Use
`--name NAME` to choose, or `--no-install` to keep the model in the run folder only.
Installing over an earlier model of yours with the same name replaces it (and says so).

time budget: `--max-minutes M` shares M minutes among the folds; a fold that runs out stops
after its current epoch (the progress line, the card's per-fold `epochs_trained` and the
report's protocol say so).

caches: some tasks cache preprocessed data outside --out, under
$RADIOGEN_CACHE_DIR (else $XDG_CACHE_HOME, else ~/.cache)/napari-radiogen/<task>/ (triage:
the images of the patients used; synthesis: one .npz per case, named by a hash); delete the
folder to free the space, or set RADIOGEN_CACHE_DIR to move it.

fine-tuning: `--init MODEL` (or `init:` in the config) starts from a trained model's
architecture and weights; the engine refuses a model whose input (sequences, grid,
normalisation, input kind) differs from what the config's task builds. `train.freeze` keeps
layers fixed (`members.*.encoders`: every ensemble member's slice encoders). The card records
the starting model and which test patients it had trained on. Under
`torchrun --nproc_per_node=G -m napari_radiogen train CONFIG --out DIR` it trains with DDP.
"""


def _positive(kind):
    def conv(text):
        import argparse
        v = kind(text)                 # ValueError: argparse says "invalid int value: 'abc'"
        if not v > 0 or v != v or v == float("inf"):
            raise argparse.ArgumentTypeError(f"must be positive (got {text})")
        return v
    conv.__name__ = kind.__name__
    return conv


def add_arguments(p) -> None:
    import argparse
    p.epilog = EPILOG
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("config", nargs="?", help="a YAML config file or the name of a shipped one "
                   "(see --list)")
    p.add_argument("--out", help="run folder (checkpoint, log, model, card, report)")
    p.add_argument("--data", help="override the config's data folder (your cohort)")
    p.add_argument("--labels", help="override the config's labels CSV (see below)")
    p.add_argument("--epochs", type=_positive(int), help="override train.epochs")
    p.add_argument("--name", help="name of the produced model (overrides the config's name; "
                   "the installed model appears under it; letters, digits, '.', '_', '-'). "
                   "Without it a shipped config installs as <name>-user (see below)")
    p.add_argument("--init", metavar="MODEL",
                   help="fine-tune: start from this model (a name from `radiogen models` or a "
                        ".safetensors file); overrides the config's init")
    from ._common import add_device_argument, non_negative_int
    add_device_argument(p)
    p.add_argument("--limit", type=_positive(int),
                   help="use only N patients (quick smoke run; not installed unless --install)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--folds", type=non_negative_int,
                   help="K-fold patient-level CV (0/1 = one held-out split)")
    p.add_argument("--max-minutes", type=_positive(float),
                   help="wall-clock budget for the training, shared among the folds")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--install", dest="install", action="store_true", default=None,
                   help="copy the final model into the user models folder (default unless "
                        "--limit is given)")
    g.add_argument("--no-install", dest="install", action="store_false")
    p.add_argument("--list", action="store_true", help="list the shipped example configs")
    p.add_argument("--quiet", action="store_true", help="print epoch lines only")


def _fmt_eta(s) -> str:
    if s is None:
        return "?"
    import math
    s = int(math.ceil(s))             # work left never reads 0:00
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def run(args) -> int:
    from ..core.errors import Cancelled, ConfigError

    if args.list:
        from ..core.train.config import list_configs
        from ..core.train import tasks
        configs = list_configs()
        wn = max([len(str(c["name"])) for c in configs] + [4])
        wt = max([len(f"task={c['task']!s}") for c in configs] + [4])
        for c in configs:
            print(f"{c['name']!s:<{wn}}  {'task=' + str(c['task']):<{wt}}  "
                  f"{c['description']}".rstrip())
        for m, e in tasks.IMPORT_ERRORS.items():
            print(f"warning: training family tasks/{m}.py failed to import: {e}",
                  file=sys.stderr)
        return 0
    if not args.config or not args.out:
        raise ConfigError("radiogen train needs CONFIG and --out RUN_DIR (or --list)")
    from ._common import check_device, check_out_dir
    check_out_dir(args.out)
    check_device(args.device)            # --device cuda without a GPU: stop now (exit 2)
    import torch
    torch.set_num_threads(max(1, torch.get_num_threads()))
    from ..core.train.engine import TrainProgress, TrainResult, train
    from ..core.train.ddp import env_world

    rank = env_world().rank
    install = args.install if args.install is not None else args.limit is None
    from ..core.train.config import check_name, load_config
    if args.name is not None:
        check_name(args.name)
    cfg = load_config(args.config, data=args.data, labels=args.labels, init=args.init, name=args.name)
    if args.name is None and (install or args.resume):
        # every rank takes the same name (the engine checks it on each); rank 0 says why; a
        # resumed run keeps its own name, installed or not (the engine refuses another one)
        from ..core.train.engine import default_install_name
        cfg["name"], why = default_install_name(cfg, args.out, resume=args.resume)
        if why and rank == 0:
            print(f"note: {why} (choose with --name, or --no-install)", file=sys.stderr)
    gen = train(cfg, args.out, device=args.device, epochs=args.epochs, limit=args.limit,
                resume=args.resume, folds=args.folds, install=install,
                max_minutes=args.max_minutes,
                # an explicit --install also installs a finished run's model (not the default
                # install: a plain --resume of a finished run changes nothing)
                install_finished=args.install is True)
    result = None
    tty = sys.stderr.isatty()
    open_line = False                  # an in-place (\r) step line is on the terminal

    def end_line() -> None:
        nonlocal open_line
        if open_line:
            print(file=sys.stderr, flush=True)
            open_line = False

    try:
        for item in gen:
            if isinstance(item, TrainResult):
                result = item
            elif isinstance(item, TrainProgress) and rank == 0:
                if item.epoch_end or item.phase in ("prepare", "test", "report"):
                    eta = f" (left {_fmt_eta(item.eta_s)})" if item.eta_s is not None else ""
                    end_line()
                    print(f"{item.message}{eta}", file=sys.stderr, flush=True)
                elif tty and not args.quiet:
                    print(f"\r{item}   ", end="", file=sys.stderr, flush=True)
                    open_line = True
    except KeyboardInterrupt:
        end_line()
        gen.close()
        from pathlib import Path
        from ..core.train.checkpoint import CHECKPOINT
        if rank != 0:                  # torchrun passes Ctrl-C to every rank: rank 0 says it
            return 130
        if (Path(args.out) / CHECKPOINT).exists():
            print(f"radiogen: interrupted; the last good checkpoint is in {args.out} "
                  "(continue with --resume)", file=sys.stderr)
        else:
            print(f"radiogen: interrupted before the first epoch ended: there is nothing to "
                  f"resume yet ({args.out} holds only the run's config and splits); run the "
                  "same command again to start over", file=sys.stderr)
        return 130
    except Cancelled:
        end_line()
        if rank != 0:
            return 130
        from pathlib import Path
        from ..core.train.checkpoint import CHECKPOINT
        print("radiogen: cancelled; " + ("resume with --resume" if (Path(args.out) / CHECKPOINT)
                                         .exists() else "nothing to resume yet"),
              file=sys.stderr)
        return 130
    finally:
        end_line()                     # an error message printed by the caller starts afresh
    if result is None or rank != 0:
        return 0
    if result.already_finished:      # the engine said so (stderr); nothing was written to it
        print(f"already finished: the run in {args.out} was not changed")
    print(f"model:  {result.model_path}")
    if result.card_path is not None:
        print(f"card:   {result.card_path}")
    if result.report_path is not None:
        print(f"report: {result.report_path}")
    if result.installed_path:
        print(f"installed: {result.installed_path}")
    if result.replaced:
        print(f"note: replaced the installed model {result.replaced}")
    origin = (result.card or {}).get("fine_tuned_from") or {}
    if origin.get("test_patients_seen"):
        print(f"note: fine-tuned from {origin['name']}, which had trained on "
              f"{len(origin['test_patients_seen'])} of the test patients: the metrics below "
              "are not held-out estimates")
    for k, v in result.cv_summary.items():
        if v.get("mean") is not None:
            lo, hi = v["ci95"]
            ci = f" [{lo:.3f}, {hi:.3f}]" if lo is not None else ""
            print(f"  {k:<18} {v['mean']:.3f}{ci} (n={v['n']} fold(s))")
    return 0
