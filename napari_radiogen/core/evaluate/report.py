"""Training / evaluation reports: ``report.html`` with PNG figures and ``report.json``.

Figures (matplotlib, Agg): loss and metric curves per fold, ROC per target with AUC and a
bootstrap 95% CI over the pooled held-out predictions, confusion matrix; Dice/HD95 box plots for
segmentation; Kaplan-Meier by predicted risk group with log-rank p, Cox HR and C-index for
survival predictions. The prediction dicts are described in ``TrainTask.evaluate``.
"""
from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..models import atomic_write_text
from ..outputs import dumps


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=False) if matplotlib.get_backend().lower() != "agg" else None
    from matplotlib.figure import Figure
    return Figure


def _fmt(v: Any, nd: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "n/a"            # undefined (an AUC with one class, HD95 of an empty mask)
        return f"{v:.{nd}f}"
    return html.escape(str(v))


def _fmt_na(v: Any) -> str:
    """A metric value; an undefined one (None) is "n/a"."""
    return "n/a" if v is None else _fmt(v)


def _ci(c) -> str:
    if not c or c[0] is None:
        return ""
    return f" [{_fmt(c[0])}, {_fmt(c[1])}]"


def _save(fig, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path.name


def curves_figure(history: List[Dict[str, Any]], path: Path) -> Optional[str]:
    """Training loss and up to three validation metrics per epoch, one line per fold: whole
    epochs on the x axes, a constrained layout (no y label runs into its neighbour)."""
    if not history:
        return None
    from matplotlib.ticker import MaxNLocator
    Figure = _plt()
    keys = sorted({k for h in history for k in h
                   if k.startswith("val_") and isinstance(h.get(k), (int, float))})
    ncol = 1 + min(len(keys), 3)
    fig = Figure(figsize=(4.2 * ncol, 3.2), layout="constrained")
    folds = sorted({h.get("fold", 1) for h in history})
    ax = fig.add_subplot(1, ncol, 1)
    for f in folds:
        hs = [h for h in history if h.get("fold", 1) == f]
        ax.plot([h["epoch"] for h in hs], [h["train_loss"] for h in hs], marker=".",
                label=f"fold {f}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=7)
    for i, k in enumerate(keys[:3], 2):
        ax = fig.add_subplot(1, ncol, i)
        for f in folds:
            hs = [h for h in history if h.get("fold", 1) == f and k in h]
            ax.plot([h["epoch"] for h in hs], [h[k] for h in hs], marker=".", label=f"fold {f}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(k)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in fig.axes:      # the values themselves, not "+1.234" over the axis
        ax.ticklabel_format(axis="y", useOffset=False)
    return _save(fig, path)


def _group_predictions(preds: List[Dict[str, Any]]) -> Dict[str, List[Dict[str, Any]]]:
    out: Dict[str, List[Dict[str, Any]]] = {}
    for p in preds:
        out.setdefault(str(p.get("target", "label")), []).append(p)
    return out


def classification_section(preds: List[Dict[str, Any]], fig_dir: Path, pooled: str = "pooled held-out"
                           ) -> Tuple[Dict[str, Any], List[str]]:
    from .metrics import classification_metrics
    Figure = _plt()
    res: Dict[str, Any] = {}
    parts: List[str] = []
    for target, ps in _group_predictions(preds).items():
        # a missing label (None, or -1 in the flat rows of the multi-task models) is no class
        ps = [p for p in ps if p.get("y_true") is not None and p.get("y_prob") is not None
              and int(p["y_true"]) >= 0]
        if not ps:
            continue
        y = np.asarray([int(p["y_true"]) for p in ps])
        prob = np.asarray([p["y_prob"] for p in ps], dtype=float)
        classes = ps[0].get("classes")
        m = classification_metrics(y, prob, classes=classes)
        res[target] = m
        fig = Figure(figsize=(8.4, 3.6))
        ax = fig.add_subplot(1, 2, 1)
        if prob.ndim == 1 and len(np.unique(y)) == 2:
            from sklearn.metrics import roc_curve
            fpr, tpr, _ = roc_curve(y, prob)
            ax.plot(fpr, tpr, label=f"AUC {_fmt(m['auc'])}{_ci(m.get('auc_ci95'))}")
            ax.plot([0, 1], [0, 1], "k--", lw=0.8)
            ax.legend(loc="lower right", fontsize=8)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title(f"ROC: {target} ({pooled}, n={len(y)})", fontsize=9)
        ax2 = fig.add_subplot(1, 2, 2)
        cm = np.asarray(m["confusion"])
        ax2.imshow(cm, cmap="Blues")
        names = m["classes"]
        ax2.set_xticks(range(len(names)), names, rotation=30, fontsize=8)
        ax2.set_yticks(range(len(names)), names, fontsize=8)
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                ax2.text(j, i, str(cm[i, j]), ha="center", va="center")
        ax2.set_xlabel("predicted")
        ax2.set_ylabel("true")
        ax2.set_title("confusion matrix", fontsize=9)
        name = _save(fig, fig_dir / f"roc_{_safe(target)}.png")
        rows = "".join(f"<tr><td>{k}</td><td>{_fmt_na(m.get(k))}"
                       f"{_ci(m.get('auc_ci95')) if k == 'auc' else ''}</td></tr>"
                       for k in ("n", "auc", "accuracy", "balanced_accuracy", "f1", "precision",
                                 "recall"))
        notes = []
        if m.get("auc_ci_note"):
            notes.append(f"AUC: {m['auc_ci_note']}")
        absent = [c for c, v in (m.get("recall_per_class") or {}).items() if v is None]
        if absent:
            notes.append(f"no case of class {', '.join(absent)} in the truth: its recall is "
                         "n/a" + ("" if prob.ndim == 1 else " (macro averages leave it out)"))
        note = "".join(f"<p>{html.escape(n)}</p>" for n in notes)
        parts.append(f"<h3>{html.escape(target)}</h3><table>{rows}</table>{note}"
                     f"<img src='figures/{name}'>")
    return res, parts


def _absent_both(p: Dict[str, Any], r: str) -> bool:
    """Whether region ``r`` of a segmentation row is absent from both the truth and the
    prediction: said by the row (a ``truth_empty`` dict), else read from its scores (Dice 1.0 with HD95 0.0 is what two empty masks score)."""
    d = p["dice"].get(r) if isinstance(p["dice"], dict) else p["dice"]
    te = p.get("truth_empty")
    if isinstance(te, dict) and r in te:
        return bool(te[r]) and d == 1.0         # an empty truth scores 1.0 only when predicted empty
    h = (p.get("hd95") or {}).get(r) if isinstance(p.get("hd95") or {}, dict) else p.get("hd95")
    return d == 1.0 and h is not None and _num(h) and float(h) == 0.0


def segmentation_section(preds: List[Dict[str, Any]], fig_dir: Path
                         ) -> Tuple[Dict[str, Any], List[str]]:
    from .metrics import mean_ci
    Figure = _plt()
    ps = [p for p in preds if isinstance(p.get("dice"), (dict, float, int))]
    if not ps:
        return {}, []
    def as_dict(v):
        return v if isinstance(v, dict) else {"tumour": v}
    regions = list(dict.fromkeys(r for p in ps for r in as_dict(p["dice"])))
    res: Dict[str, Any] = {}
    for r in regions:
        d = [as_dict(p["dice"]).get(r) for p in ps]
        h = [as_dict(p.get("hd95") or {}).get(r) for p in ps]
        # HD95 is a distance: its interval is clipped at 0 (mean_ci's bounds)
        res[r] = {"dice": mean_ci([x for x in d if x is not None], bounds=(0.0, 1.0)),
                  "hd95": mean_ci([x for x in h if x is not None and _num(x)],
                                  bounds=(0.0, math.inf))}
        both = [p for p in ps if as_dict(p["dice"]).get(r) is not None and _absent_both(p, r)]
        if both:
            rest = [as_dict(p["dice"]).get(r) for p in ps
                    if as_dict(p["dice"]).get(r) is not None and not _absent_both(p, r)]
            res[r]["absent_in_truth_and_prediction"] = len(both)
            res[r]["dice_without_absent"] = mean_ci(rest, bounds=(0.0, 1.0))
    fig = Figure(figsize=(8, 3.4))
    ax = fig.add_subplot(1, 2, 1)
    ax.boxplot([[as_dict(p["dice"]).get(r) for p in ps if as_dict(p["dice"]).get(r) is not None]
                for r in regions], tick_labels=regions)
    ax.set_ylabel("Dice")
    ax2 = fig.add_subplot(1, 2, 2)
    ax2.boxplot([[as_dict(p.get("hd95") or {}).get(r) for p in ps
                  if as_dict(p.get("hd95") or {}).get(r) is not None] or [np.nan]
                 for r in regions], tick_labels=regions)
    ax2.set_ylabel("HD95 (mm)")
    name = _save(fig, fig_dir / "segmentation.png")
    rows = "".join(f"<tr><td>{html.escape(r)}</td><td>{_fmt(v['dice']['mean'])}"
                   f"{_ci(v['dice']['ci95'])}</td><td>{_fmt(v['hd95']['mean'])}"
                   f"{_ci(v['hd95']['ci95'])}</td></tr>" for r, v in res.items())
    notes = []
    for r, v in res.items():
        k = v.get("absent_in_truth_and_prediction")
        if k:
            w = v["dice_without_absent"]
            notes.append(
                f"{r}: absent from the truth (and the prediction) in {k} of {v['dice']['n']} "
                f"case(s), each scored Dice 1.0, which raises the mean; without them: "
                + (f"{_fmt(w['mean'])} (n={w['n']})" if w["n"] else "no case left"))
    note = "".join(f"<p>{html.escape(n)}</p>" for n in notes)
    return res, [f"<table><tr><th>region</th><th>Dice (95% CI)</th><th>HD95 mm (95% CI)</th>"
                 f"</tr>{rows}</table>{note}<img src='figures/{name}'>"]


def survival_section(preds: List[Dict[str, Any]], fig_dir: Path
                     ) -> Tuple[Dict[str, Any], List[str]]:
    ps = [p for p in preds if p.get("time") is not None and p.get("event") is not None
          and p.get("risk") is not None]
    if len(ps) < 4:
        return {}, []
    from . import survival as sv
    t = np.asarray([float(p["time"]) for p in ps])
    e = np.asarray([int(p["event"]) for p in ps])
    r = np.asarray([float(p["risk"]) for p in ps])
    res = sv.risk_summary(t, e, r)
    Figure = _plt()
    fig = Figure(figsize=(5, 3.6))
    ax = fig.add_subplot(1, 1, 1)
    groups = np.where(r > np.median(r), "high risk", "low risk")
    sv.plot_km(ax, t, e, groups)
    ax.set_title(f"KM by predicted risk (log-rank p={_fmt(res.get('logrank_p'))})", fontsize=9)
    name = _save(fig, fig_dir / "km.png")
    flat = {k: v for k, v in res.items() if not isinstance(v, dict)}
    if res.get("td_auc"):
        flat["time-dependent AUC (IPCW, mean over " + ", ".join(
            f"{t:g}" for t in res["td_auc"]["times"]) + ")"] = res["td_auc"]["mean_auc"]
    if res.get("brier"):
        flat["integrated Brier score"] = res["brier"].get("integrated")
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>"
                   f"{_fmt(v) if not isinstance(v, list) else _ci(v)}</td></tr>"
                   for k, v in flat.items())
    return res, [f"<table>{rows}</table><img src='figures/{name}'>"]


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def normalise_predictions(preds: List[Dict[str, Any]]) -> Dict[str, List[Dict[str, Any]]]:
    """Split per-patient prediction dicts into classification / segmentation / survival /
    other rows. Besides the documented form (``TrainTask.evaluate``) it understands the flat
    forms the families use: ``{"idh": p, "y_idh": 0/1, ...}`` (one target per ``y_<t>`` key),
    ``{"dice_WT": .., "hd95_WT": ..}``, ``{"risk": r, "os_days": t, "os_event": e}``."""
    cls, seg, surv, other = [], [], [], []
    # the probability of a target (``idh`` beside ``y_idh`` in other rows) or a risk is no
    # per-patient metric, also in a row without its label: left out of "other"
    not_metrics = {k[2:] for p in preds for k in p
                   if k.startswith("y_") and k not in ("y_true", "y_prob")} | {"risk"}
    for p in preds:
        used = {"patient_id", "fold", "target", "classes", "kind"}
        if p.get("y_true") is not None and p.get("y_prob") is not None:
            cls.append(p)
            used |= {"y_true", "y_prob"}
        for k, v in p.items():
            if k.startswith("y_") and k not in ("y_true", "y_prob") and _num(v) \
                    and _num(p.get(k[2:])):
                cls.append({"patient_id": p.get("patient_id"), "target": k[2:],
                            "y_true": int(v), "y_prob": float(p[k[2:]]), "fold": p.get("fold")})
                used |= {k, k[2:]}
        if isinstance(p.get("dice"), (dict, int, float)):
            seg.append(p)
            used |= {"dice", "hd95"}
        else:
            d = {k[5:]: v for k, v in p.items() if k.startswith("dice_") and _num(v)}
            if d:
                h = {k[5:]: v for k, v in p.items() if k.startswith("hd95_") and _num(v)}
                seg.append({"patient_id": p.get("patient_id"), "dice": d, "hd95": h})
                used |= {f"dice_{k}" for k in d} | {f"hd95_{k}" for k in h}
        t = p.get("time", p.get("os_days"))
        e = p.get("event", p.get("os_event"))
        if _num(p.get("risk")) and _num(t) and _num(e):
            surv.append({"patient_id": p.get("patient_id"), "time": float(t), "event": int(e),
                         "risk": float(p["risk"])})
            used |= {"risk", "time", "event", "os_days", "os_event"}
        rest = {k: float(v) for k, v in p.items()
                if k not in used and k not in not_metrics and _num(v)}
        if rest:
            other.append({"group": str(p.get("target", "all")), **rest})
    return {"classification": cls, "segmentation": seg, "survival": surv, "other": other}


def other_section(rows: List[Dict[str, Any]], fig_dir: Path) -> Tuple[Dict[str, Any], List[str]]:
    """Per-patient scalar metrics (e.g. PSNR/SSIM per synthesised target): mean [95% CI]."""
    from .metrics import mean_ci, metric_bounds
    if not rows:
        return {}, []
    res: Dict[str, Any] = {}
    for g in sorted({r["group"] for r in rows}):
        rs = [r for r in rows if r["group"] == g]
        keys = sorted({k for r in rs for k in r if k != "group"})
        res[g] = {k: mean_ci([r[k] for r in rs if k in r], bounds=metric_bounds(k))
                  for k in keys}
    body = []
    for g, d in res.items():
        tr = "".join(f"<tr><td>{html.escape(k)}</td><td>{_fmt(v['mean'])}{_ci(v['ci95'])}</td>"
                     f"<td>{v['n']}</td></tr>" for k, v in d.items())
        body.append(f"<h3>{html.escape(g)}</h3><table><tr><th>metric</th><th>mean [95% CI]"
                    f"</th><th>n</th></tr>{tr}</table>")
    return res, body


def _safe(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in s)


def _cv_table(summary: Dict[str, Any], baseline: Optional[Dict[str, Any]]) -> str:
    if not summary:
        return "<p>No held-out metrics (no test split).</p>"
    rows = []
    for k, v in summary.items():
        b = (baseline or {}).get(k)
        pf = ", ".join(_fmt(x) for x in v.get("per_fold", []))
        rows.append(f"<tr><td>{html.escape(k)}</td><td>{_fmt(v['mean'])}{_ci(v['ci95'])}</td>"
                    f"<td>{_fmt(v.get('sd'))}</td><td>{pf}</td>"
                    f"<td>{_fmt(b['mean']) + _ci(b['ci95']) if b else '-'}</td></tr>")
    return ("<table><tr><th>metric</th><th>mean [95% CI]</th><th>SD</th><th>per fold</th>"
            "<th>baseline (same folds)</th></tr>" + "".join(rows) + "</table>")


CSS = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:"
       "collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}"
       "img{max-width:100%}")


def _readable(v: Any) -> str:
    """A card value for the page: a dict as ``key: value`` pairs, a list joined, not JSON."""
    if isinstance(v, dict):
        return "; ".join(f"{k}: {_readable(x)}" for k, x in v.items() if x is not None)
    if isinstance(v, (list, tuple)):
        return ", ".join(_readable(x) for x in v)
    return str(v)


def _section_intervals(data: Dict[str, Any]) -> Dict[str, List[Tuple[float, Any]]]:
    """``{summary key: [(mean, ci95), ...]}`` as the report's sections computed them
    (segmentation Dice/HD95 per region, a classification target's AUC, per-patient metrics)."""
    out: Dict[str, List[Tuple[float, Any]]] = {}

    def add(keys, v, ci) -> None:
        if _num(v) and ci and ci[0] is not None:
            for k in keys:
                out.setdefault(k, []).append((float(v), list(ci)))
    for r, v in (data.get("segmentation") or {}).items():
        if not isinstance(v, dict):
            continue
        for m in ("dice", "hd95"):
            d = v.get(m) or {}
            add([f"{m}_{r}", m] if r == "tumour" else [f"{m}_{r}"], d.get("mean"), d.get("ci95"))
    cls = data.get("classification") or {}
    for t, m in cls.items():
        if isinstance(m, dict):
            add([f"auc_{t}"] + (["auc"] if len(cls) == 1 else []), m.get("auc"),
                m.get("auc_ci95"))
    other = data.get("other") or {}
    for g, d in other.items():
        if not isinstance(d, dict):
            continue
        for k, v in d.items():
            if isinstance(v, dict):
                add([f"{k}_{g}", f"{g}_{k}"] + ([k] if len(other) == 1 else []), v.get("mean"),
                    v.get("ci95"))
    return out


def _with_section_ci(summary: Dict[str, Any], data: Dict[str, Any]) -> Dict[str, Any]:
    """The evaluation summary with the 95% CI the report's sections computed for the same
    value (a Dice's bootstrap interval in the segmentation table, an AUC's...), where the
    summary has none; a metric whose section value differs is left as it is."""
    cands = _section_intervals(data)
    out = {}
    for k, v in summary.items():
        v = dict(v)
        ci = v.get("ci95")
        if (not ci or ci[0] is None) and _num(v.get("mean")):
            mean = float(v["mean"])
            # the task's selection score is one of the metrics: the one of equal value, when
            # the metrics of that value agree on the interval (two Dice of 1.0 need not)
            same = ([c for cs in cands.values() for c in cs] if k == "score"
                    else cands.get(k, []))
            hits = [list(cci) for cm, cci in same
                    if abs(cm - mean) <= 1e-9 * max(1.0, abs(mean))]
            if hits and (k != "score" or all(h == hits[0] for h in hits)):
                v["ci95"] = hits[0]
        out[k] = v
    return out


def _eval_table(summary: Dict[str, Any]) -> str:
    """The metrics of one evaluation (no folds): value [95% CI] and the patients scored."""
    if not summary:
        return "<p>No metric could be computed (see the notes).</p>"
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{_fmt_na(v.get('mean'))}"
                   f"{_ci(v.get('ci95'))}</td><td>{_fmt(v.get('n'))}</td></tr>"
                   for k, v in summary.items())
    return ("<table><tr><th>metric</th><th>value [95% CI]</th><th>patients</th></tr>"
            + rows + "</table>")


#: figures the report writes (besides ``roc_<target>.png``): removed before a new report is
#: written into the same folder, so that none is left from an earlier one
_FIGURES = ("curves.png", "segmentation.png", "km.png")


def _remove_old_figures(out: Path, fig_dir: Path) -> None:
    names = set(_FIGURES) | {p.name for p in fig_dir.glob("roc_*.png")}
    try:        # the figures an earlier report of this folder listed
        old = json.loads((out / "report.json").read_text()).get("figures") or []
        names |= {str(n) for n in old if isinstance(n, str)}
    except (OSError, ValueError, AttributeError):
        pass
    for n in names:
        f = fig_dir / n
        if n == Path(n).name and n.endswith(".png") and (f.is_file() or f.is_symlink()):
            try:
                f.unlink()
            except OSError:
                pass


def write_report(out_dir, *, title: str, history: Optional[List[Dict[str, Any]]] = None,
                 folds: Optional[List[Dict[str, Any]]] = None,
                 summary: Optional[Dict[str, Any]] = None,
                 baseline: Optional[Dict[str, Any]] = None,
                 card: Optional[Dict[str, Any]] = None,
                 predictions: Optional[List[Dict[str, Any]]] = None,
                 evaluation: Optional[Dict[str, Any]] = None) -> Tuple[Path, Path]:
    """Write ``out_dir/report.html`` + ``report.json`` + ``figures/*.png``; return both paths.

    ``evaluation`` (``radiogen evaluate``, :mod:`.run`): ``{"n_patients", "in_training_data",
    "failed": count, "failed_cases": [{"case", "reason"}], "notes": [...], "data": name}``
    (a ``failed`` list is taken as the cases; ``no_labels`` likewise, with
    ``no_labels_cases``): the summary is one evaluation's (value, CI, patients), headed
    "in-sample" when any patient was in the model's training data, with the failed cases and
    the notes listed; report.json has ``failed`` and ``no_labels`` as counts, the lists beside
    them. Figures of an earlier report in the same folder are removed first; warnings of the
    libraries computing the sections (this thread's only, :mod:`._warn`) become notes of the
    report (``notes`` in the JSON) instead of lines on stderr."""
    from ._warn import collect_warnings, warning_texts
    out = Path(out_dir)
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    _remove_old_figures(out, fig_dir)
    folds = folds or []
    preds = list(predictions or [])
    for f in folds:
        preds.extend(f.get("predictions") or [])
    ev = dict(evaluation) if evaluation is not None else None
    if ev is not None:
        for key in ("failed", "no_labels"):
            # counts (int) in report.json, the cases beside them (``<key>_cases``)
            v = ev.get(key)
            if isinstance(v, (list, tuple)):
                ev.setdefault(f"{key}_cases", list(v))
                ev[key] = len(v)
            elif v is None and ev.get(f"{key}_cases") is not None:
                ev[key] = len(ev[f"{key}_cases"])
        if "failed" not in ev:
            ev["failed"], ev["failed_cases"] = 0, []
    notes: List[str] = list((ev or {}).get("notes") or [])
    body = [f"<h1>{html.escape(title)}</h1>"]
    if card:
        lines = [f"task <b>{html.escape(str(card.get('task')))}</b>, date "
                 f"{html.escape(str(card.get('date')))}, code "
                 f"{html.escape(str(card.get('code_version')))}"]
        proto = (card.get("metrics") or {}).get("protocol")
        if proto:
            lines.append(f"protocol: {html.escape(str(proto))}")
        if card.get("final_model"):
            # the training run's choice (of a shipped model as of a user's own)
            lines.append("final model of the training run: "
                         f"{html.escape(_readable(card['final_model']))}")
        body.append("<p>" + "<br>".join(lines) + "</p>")
    origin = (card or {}).get("fine_tuned_from") or {}
    if origin:
        seen = origin.get("test_patients_seen") or []
        body.append(f"<p>fine-tuned from <b>{html.escape(str(origin.get('name')))}</b> "
                    f"(sha256 {html.escape(str(origin.get('sha256', ''))[:12])}), which had "
                    f"trained on {len(seen)} of the test patients</p>")
    if ev is not None:
        n = int(ev.get("n_patients") or 0)
        k = int(ev.get("in_training_data") or 0)
        in_sample = k > 0
        heading = (f"In-sample metrics (not held out: {k} of the {n} patients were in the "
                   "model's training data)" if in_sample else
                   f"Held-out metrics ({n} patients, none in the model's training data)")
        pooled = (f"pooled predictions, in-sample: {k} of {n} in training" if in_sample
                  else "pooled held-out predictions")
        summary_at = len(body)        # the table once the sections gave their intervals
        body.append(f"<h2>{heading}</h2>")
        failed = list(ev.get("failed_cases") or [])
        if failed:
            items = "".join(f"<li>{html.escape(str(f.get('case')))}: "
                            f"{html.escape(str(f.get('reason')))}</li>" for f in failed)
            body.append(f"<h2>Failed cases ({len(failed)})</h2><p>left out of every metric:</p>"
                        f"<ul>{items}</ul>")
    else:
        heading = ("Cross-validation metrics (NOT held-out: the starting model had trained on "
                   "test patients)" if origin.get("test_patients_seen") else "Held-out metrics")
        pooled = ("pooled test-fold predictions, NOT held-out" if origin.get("test_patients_seen")
                  else "pooled held-out predictions")
        body.append(f"<h2>{heading}</h2>" + _cv_table(summary or {}, baseline))
    data: Dict[str, Any] = {"title": title, "summary": summary, "baseline": baseline,
                            "folds": [{k: v for k, v in f.items() if k != "predictions"}
                                      for f in folds],
                            "history": history or [], "predictions": preds}
    if ev is not None:
        data.update({k: v for k, v in ev.items() if k != "notes"})
    figures: List[str] = []
    cur = curves_figure(history or [], fig_dir / "curves.png")
    if cur:
        figures.append(cur)
        body.append(f"<h2>Training curves</h2><img src='figures/{cur}'>")
    split = normalise_predictions(preds)
    sections = []
    for key, fn, head in (("classification", classification_section, "Classification"),
                          ("segmentation", segmentation_section, "Segmentation"),
                          ("survival", survival_section, "Survival"),
                          ("other", other_section, "Per-patient metrics")):
        with collect_warnings() as caught:       # this thread's warnings only
            try:
                res, parts = (fn(split[key], fig_dir, pooled) if key == "classification"
                              else fn(split[key], fig_dir))
            except Exception as e:  # a figure must never lose the run's report
                res, parts = {"error": f"{type(e).__name__}: {e}"}, [
                    f"<p>{head}: could not be computed ({html.escape(str(e))})</p>"]
        notes.extend(t for t in warning_texts(caught, f"{head}: ") if t not in notes)
        if res:
            data[key] = res
        if parts:
            figures.extend(m for m in re.findall(r"src='figures/([^']+)'",
                                                               "".join(parts)))
            sections.append(f"<h2>{head} ({pooled})</h2>" + "".join(parts))
    if ev is not None:
        summary = _with_section_ci(summary or {}, data)
        data["summary"] = summary
        body[summary_at] += _eval_table(summary)
    if notes:
        body.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes)
                    + "</ul>")
    body.extend(sections)
    data["notes"] = notes
    data["figures"] = figures
    html_path = out / "report.html"
    json_path = out / "report.json"
    atomic_write_text(html_path, f"<!doctype html><html><head><meta charset='utf-8'><title>"
                                 f"{html.escape(title)}</title><style>{CSS}</style></head><body>"
                                 + "\n".join(body) + "</body></html>")
    # strict JSON (core.outputs): a non-finite number (a fold's undefined AUC) is null
    atomic_write_text(json_path, dumps(data, indent=1))
    return html_path, json_path
