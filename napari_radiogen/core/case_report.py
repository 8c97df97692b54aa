"""Per-case report: HTML with key slices, a 3D rendering, tables and warnings, plus JSON.

De-identified by default: the report shows the case id only (no clinical fields, no source
paths, no acquisition metadata; the age and sex a prediction read are left out of its JSON and
listed as removed, ``core.outputs``); ``deidentify=False`` adds the clinical fields the case
carries. The JSON is strict (an undefined number is null, never NaN).
Figures are matplotlib (Agg) PNGs written beside the HTML, which links them relatively so the
folder can be moved or zipped as a whole.
"""
from __future__ import annotations

import html
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from .outputs import deidentification_fields, prediction_for_output, write_json
from .predict import attention_title

LABEL_RGBA = {1: (0.95, 0.25, 0.25, 0.6), 2: (0.3, 0.85, 0.3, 0.45), 4: (1.0, 0.85, 0.1, 0.7)}


def _key_slice(labels, heat, nz: int) -> int:
    if labels is not None and (labels > 0).any():
        return int(np.argmax((labels > 0).reshape(labels.shape[0], -1).sum(1)))
    if heat is not None:
        return int(np.argmax(heat.reshape(heat.shape[0], -1).sum(1)))
    return nz // 2


def _letter(v) -> str:
    """The patient direction (L/R, P/A, S/I) a world LPS vector points to most."""
    v = np.asarray(v, dtype=float)
    i = int(np.argmax(np.abs(v)))
    return "LPS"[i] if v[i] > 0 else "RAI"[i]


def view_orientation(geometry) -> Optional[Dict[str, str]]:
    """The patient directions at the edges of an axial panel of ``geometry`` as the report
    draws it (``array[z]`` with ``imshow``: the x axis from the image's left to its right,
    the y axis from its top to its bottom), ``{"left", "right", "top", "bottom"}``, and
    ``"convention"``: ``radiological`` (the patient's right on the image's left, how
    radiology viewers show axial slices), ``neurological`` (the other way round) or ``""``.
    On the canonical LPS grid every case is read onto, that is R left, L right, A top, P
    bottom (radiological). None for a nominal geometry (a slice pack), which records no
    orientation."""
    if geometry is None or getattr(geometry, "nominal", False):
        return None
    d = geometry.direction_matrix            # columns: the x, y, z axes in LPS world
    x, y = d[:, 0], d[:, 1]
    out = {"left": _letter(-x), "right": _letter(x), "top": _letter(-y), "bottom": _letter(y)}
    out["convention"] = {("R", "L"): "radiological", ("L", "R"): "neurological"}.get(
        (out["left"], out["right"]), "")
    return out


def _slice_position_mm(geometry, z: int) -> Optional[float]:
    """The world z (LPS/RAS superior, mm) of the centre of axial slice ``z``; None for a
    nominal geometry."""
    if geometry is None or getattr(geometry, "nominal", False):
        return None
    nx, ny = geometry.shape[2], geometry.shape[1]
    return float((geometry.affine_lps() @ np.array([(nx - 1) / 2, (ny - 1) / 2, z, 1.0]))[2])


def _mark_edges(ax, orient: Optional[Dict[str, str]]) -> None:
    """Write the patient directions at the edges of a panel."""
    if not orient:
        return
    kw = dict(transform=ax.transAxes, color="yellow", fontsize=8, fontweight="bold")
    ax.text(0.02, 0.5, orient["left"], ha="left", va="center", **kw)
    ax.text(0.98, 0.5, orient["right"], ha="right", va="center", **kw)
    ax.text(0.5, 0.98, orient["top"], ha="center", va="top", **kw)
    ax.text(0.5, 0.02, orient["bottom"], ha="center", va="bottom", **kw)


def orientation_note(geometry) -> str:
    """What the report says about how its axial slices are shown."""
    o = view_orientation(geometry)
    if o is None:
        return ("Slices as stored in the slice pack: the pack records no orientation, so "
                "left and right on the image are not known.")
    how = {"radiological": "radiological convention (the patient's right on the image's "
                           "left, as radiology viewers show axial slices)",
           "neurological": "neurological convention (the patient's right on the image's "
                           "right)"}.get(o["convention"], "")
    return (f"Axial slices in the {how}; " if how else "Axial slices; ") + (
        f"letters at the edges give the patient's side (image left {o['left']}, right "
        f"{o['right']}, top {o['top']}, bottom {o['bottom']}). Slice numbers count from the "
        "most inferior slice (0) of the reference grid, which may differ from the source "
        "file's own numbering; the position is the slice centre's height in the file's world "
        "coordinates (mm).")


def sequence_panels(case, z: int) -> Dict[str, np.ndarray]:
    """Axial slice ``z`` of the reference grid for every sequence, in canonical order.

    Every panel shows the same physical slice: a sequence on its own grid (native scans, each
    series with its own field of view and slice positions) is resampled onto the reference
    grid first, never shown at the same array index. A sequence that does not overlap the
    reference grid gives an empty panel."""
    from .errors import GeometryError
    from .prepare import resample_volume
    g = case.sequences[case.reference].geometry
    out: Dict[str, np.ndarray] = {}
    for s in ("t1", "t1ce", "t2", "flair"):
        if s not in case.sequences:
            continue
        try:
            out[s] = np.asarray(resample_volume(case.sequences[s], g, name=s).array[z])
        except GeometryError:
            out[s] = np.zeros(g.shape[1:], np.float32)
    return out


def pack_slices_figure(case, out_png: Path, *, heat=None, segmentation=None,
                       title: str = "", n_slices: int = 6) -> str:
    """Key slices of a 2D slice pack (which has no 3D rendering): the ``n_slices`` slices with
    the most heatmap mass (else the most segmented area, else the middle ones), the reference
    sequence in grey, the heatmap in colour, the pack's expert mask outlined in green and the
    model's segmentation in red. Returns the file name."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    img = np.asarray(case.sequences[case.reference].array, np.float32)
    n = img.shape[0]
    if heat is not None and np.asarray(heat).any():
        weight = np.asarray(heat, np.float32).reshape(n, -1).sum(1)
    elif segmentation is not None and np.asarray(segmentation).any():
        weight = (np.asarray(segmentation) > 0).reshape(n, -1).sum(1).astype(float)
    else:
        weight = -np.abs(np.arange(n) - n / 2.0)
    idx = sorted(np.argsort(-weight, kind="stable")[: max(1, min(n_slices, n))].tolist())
    truth = (np.asarray(case.labels.array) > 0 if case.labels is not None
             and case.labels.array.shape == img.shape else None)
    seg = (np.asarray(segmentation) > 0 if segmentation is not None
           and np.shape(segmentation) == img.shape else None)
    fig = Figure(figsize=(2.2 * len(idx), 2.7))
    axes = fig.subplots(1, len(idx), squeeze=False)[0]
    for ax, z in zip(axes, idx):
        sl = img[z]
        lo, hi = np.percentile(sl, [1, 99]) if sl.any() else (0.0, 1.0)
        ax.imshow(sl, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1)
        if heat is not None:
            ax.imshow(np.ma.masked_less(np.asarray(heat)[z], 0.05), cmap="inferno", vmin=0,
                      vmax=1, alpha=0.5)
        for m, colour in ((truth, "lime"), (seg, "red")):
            if m is not None and m[z].any():
                ax.contour(m[z], levels=[0.5], colors=colour, linewidths=0.8)
        ax.set_title(f"slice {z}", fontsize=8)
        ax.axis("off")
    # a pack records no orientation: its left and right are not known, and not claimed
    fig.suptitle((title or case.case_id) + "\n(orientation not recorded in the pack)",
                 fontsize=9)
    fig.savefig(str(out_png), dpi=90, bbox_inches="tight")
    return Path(out_png).name


def _slices_figure(res, out_png: Path) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    case = res.case
    ref = case.sequences[case.reference]
    labels = res.segmentation.labels if res.segmentation is not None else None
    heat = res.explanations[0].heatmap if res.explanations else None
    z = _key_slice(labels, heat, ref.array.shape[0])
    seqs = [s for s in ("t1", "t1ce", "t2", "flair") if s in case.sequences]
    ncol = len(seqs) + (1 if labels is not None else 0) + (1 if heat is not None else 0)
    g = ref.geometry
    aspect = g.spacing[1] / g.spacing[0]
    orient = view_orientation(g)
    fig, axes = plt.subplots(1, ncol, figsize=(3 * ncol, 3.3), squeeze=False)
    axes = axes[0]

    def show(ax, img, title):
        lo, hi = np.percentile(img, [1, 99.5]) if img.any() else (0, 1)
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, aspect=aspect)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
        _mark_edges(ax, orient)

    for ax, (s, img) in zip(axes, sequence_panels(case, z).items()):
        show(ax, img, s + (" (synthetic)" if case.sequences[s].synthetic else ""))
    i = len(seqs)
    base = ref.array[z]
    if labels is not None:
        show(axes[i], base, "segmentation")
        rgba = np.zeros(base.shape + (4,))
        for val, c in LABEL_RGBA.items():
            rgba[labels[z] == val] = c
        axes[i].imshow(rgba, aspect=aspect)
        i += 1
    if heat is not None:
        e = res.explanations[0]
        show(axes[i], base, f"{e.method}: {e.task}")
        axes[i].imshow(np.ma.masked_less(heat[z], 0.05), cmap="inferno", alpha=0.55, vmin=0,
                       vmax=1, aspect=aspect)
    pos = _slice_position_mm(g, z)
    fig.suptitle(f"{res.case_id}: axial slice {z} of {ref.array.shape[0]}"
                 + (f" (z = {pos:.1f} mm)" if pos is not None else "")
                 + (f", {orient['convention']} convention" if orient and orient["convention"]
                    else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
    return out_png.name


def _attention_figure(res, out_png: Path) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 2.4))
    # only the slices the model scored (a volume is subsampled, a tumour-centred model sees
    # the tumour's slices): elsewhere there is no attention, not an attention of zero
    idx = np.asarray(res.prediction.slice_index or [], dtype=int)
    for s, w in res.prediction.attention.items():
        w = np.asarray(w, dtype=float)
        x = idx if idx.size and idx.max() < len(w) else np.arange(len(w))
        ax.plot(x, w[x], label=s, marker="." if len(x) < 60 else None)
    ax.set_xlabel("axial slice")
    ax.set_ylabel("attention")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
    return out_png.name


def _num(v, digits: int, undefined: Optional[str] = None) -> str:
    """A number for a table cell; missing or non-finite values are said, not printed as nan
    (HD95 is undefined, nan or infinite, when one of the two masks is empty: ``undefined``
    says so)."""
    if not isinstance(v, (int, float)):
        return "n/a"
    if not np.isfinite(v):
        return undefined or ("n/a (empty mask)" if np.isinf(v) else "n/a")
    return f"{v:.{digits}f}"


def _interval(ci) -> str:
    try:
        lo, hi = (float(x) for x in ci)
    except (TypeError, ValueError):
        return ""
    return f"[{lo:.2f}, {hi:.2f}]"


def _table(rows, header) -> str:
    h = "".join(f"<th>{html.escape(str(c))}</th>" for c in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table><tr>{h}</tr>{body}</table>"


def _volume_name(key: str) -> str:
    """``label_1`` -> "label 1 (necrotic/non-enhancing core)"; regions (WT, TC, ET) as they are."""
    from .case import LABEL_NAMES
    if key.startswith("label_") and key[6:].isdigit() and int(key[6:]) in LABEL_NAMES:
        return f"label {key[6:]} ({LABEL_NAMES[int(key[6:])]})"
    return key


def _known(v) -> bool:
    """A value that was given: not None, not NaN."""
    return v is not None and not (isinstance(v, float) and not np.isfinite(v))


def may_show_face(case) -> bool:
    """Whether a 3D rendering of the case could show the patient's face: its reference
    sequence is not skull-stripped (no constant background, ``core.prepare.is_skull_stripped``),
    so the translucent 'brain' surface the rendering draws is the head's, face included (a
    face rendered from an MRI can be recognised). A de-identified report leaves it out."""
    from .prepare import is_skull_stripped
    try:
        return not is_skull_stripped(np.asarray(case.sequences[case.reference].array))
    except (KeyError, AttributeError):
        return False


def labels_origin(case) -> str:
    """What a segmentation's Dice is against, in words: the labels file that came with the
    case (``the labels that came with the case (<file>)``), a slice pack's mask."""
    if getattr(case, "kind", None) == "slices":
        return "the mask that came with the pack"
    path = getattr(getattr(case, "labels", None), "path", None)
    return ("the labels that came with the case" + (f" ({Path(path).name})" if path else ""))


def write_case_report(res, out_dir: Path, *, render: bool = True, deidentify: bool = True,
                      files: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """``files``: the case's other outputs (name -> path), linked from the report when they
    sit in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    case = res.case
    paths: Dict[str, str] = {}
    parts = [f"<h1>napari-radiogen report: {html.escape(res.case_id)}</h1>",
             "<p class=note>Research software, not a medical device. Model outputs are "
             "probabilities from models validated by cross-validation on public cohorts "
             "(see each model card); they do not replace histopathology or molecular "
             "testing.</p>"]
    if res.warnings:
        parts.append("<h2>Warnings</h2><ul>" + "".join(
            f"<li>{html.escape(w)}</li>" for w in res.warnings) + "</ul>")
    if case.kind != "slices":
        png = _slices_figure(res, out_dir / f"{res.case_id}_key_slice.png")
        paths["key_slice_png"] = str(out_dir / png)
        parts.append(f"<h2>Key slice</h2><img src='{png}' alt='key slice'>"
                     f"<p class=note>{html.escape(orientation_note(case.geometry))}</p>")
    else:
        png = pack_slices_figure(
            case, out_dir / f"{res.case_id}_key_slices.png",
            heat=res.explanations[0].heatmap if res.explanations else None,
            segmentation=res.segmentation.labels if res.segmentation is not None else None,
            title=f"{res.case_id}: expert mask green, segmentation red"
                  + (f", {res.explanations[0].method} ({res.explanations[0].task})"
                     if res.explanations else ""))
        paths["key_slice_png"] = str(out_dir / png)
        parts.append(f"<h2>Key slices</h2><img src='{png}' alt='key slices'>"
                     f"<p class=note>{html.escape(orientation_note(None))}</p>")
    if res.segmentation is not None:
        seg = res.segmentation
        rows = [(_volume_name(k), f"{v:.2f}") for k, v in seg.volumes_ml.items()]
        parts.append(f"<h2>Segmentation ({html.escape(seg.model)})</h2>"
                     + _table(rows, ("region / label", "volume (mL)")))
        if seg.metrics:
            rows = [(r, _num(m.get("dice"), 3),
                     _num(m.get("hd95_mm"), 1, "n/a (one of the two masks is empty)"))
                    for r, m in seg.metrics.items()]
            parts.append(f"<p>Against {html.escape(labels_origin(res.case))}:</p>"
                         + _table(rows, ("region", "Dice", "HD95 (mm)")))
    if res.prediction is not None:
        pr = res.prediction
        val = (pr.card or {}).get("validated") or {}
        rows = []
        # a late fusion (predict_ensemble): the SD is that of the mixture of its members' own
        # spreads (predict.ensemble_sd), whose probabilities are shown; the attention is its
        # image member's
        fused = any((u or {}).get("member_models") for u in pr.uncertainty.values())
        for t, probs in pr.tasks.items():
            best = max(probs, key=probs.get)
            auc = (val.get(t) or {}).get("auc_mean")
            ci = (val.get(t) or {}).get("auc_ci95")
            u = pr.uncertainty.get(t) or {}
            sd = u.get("sd")
            spread = f"{sd:.2f}" if sd is not None else ""
            if fused and u.get("member_models"):
                spread += " (" + ", ".join(f"{m} {p:.2f}" for m, p in zip(
                    u["member_models"], u.get("members", []))) + ")"
            # the classes the model chooses between (grade: 2 or 3 only, never 4)
            rows.append((f"{t} ({' / '.join(str(c) for c in probs)})", best,
                         f"{probs[best]:.2f}", spread,
                         f"{auc:.2f}" if isinstance(auc, (int, float)) else "n/a",
                         _interval(ci)))
        parts.append(f"<h2>Prediction ({html.escape(pr.model)})</h2>"
                     + _table(rows, ("task", "predicted", "probability",
                                     "SD (the members' folds and trees, and between the "
                                     "members; their P(positive class))"
                                     if fused else "SD (its fold models or trees)",
                                     "validated AUC (CV)", "95% CI")))
        grades = [str(c) for c in pr.tasks.get("grade", {})]
        if grades and "4" not in grades:
            parts.append("<p class=note>" + html.escape(
                f"grade: the model chooses between WHO grades {' and '.join(grades)} only "
                "(its training cohort's); it cannot say grade 4.") + "</p>")
        if pr.risk is not None:
            parts.append("<p>Overall-survival risk score ("
                         + ("mean of the members' standardised risks, 0 being their "
                            "training patients' average" if fused else "Cox head")
                         + "; relative: a higher score means a higher hazard, a shorter "
                           f"expected survival): {pr.risk:.2f}</p>")
        if pr.attention:
            png = _attention_figure(res, out_dir / f"{res.case_id}_attention.png")
            paths["attention_png"] = str(out_dir / png)
            title = attention_title(pr) or "slice attention"
            parts.append(f"<h3>{html.escape(title[0].upper() + title[1:])}</h3>"
                         f"<img src='{png}' alt='attention'>")
    if res.explanations:
        # the synthetic inputs each heatmap rests on: its model's and those of the tumour
        # segmentation it was placed on (the window, the occlusion mask)
        rows = [(e.task, e.method, e.target_class, e.localisation_text,
                 e.mask_source or "", ", ".join(e.synthetic_inputs) or "none")
                for e in res.explanations]
        parts.append("<h2>Explanations</h2>" + _table(
            rows, ("task", "method", "class", "mass within tumour + 5 mm", "mask",
                   "synthetic inputs")))
        face = render and case.kind != "slices" and deidentify and may_show_face(case)
        if face:
            parts.append("<p class=note>3D rendering left out: the scan is not "
                         "skull-stripped, and a rendering of its head surface can show the "
                         "patient's face (an identified report includes it).</p>")
        elif render and case.kind != "slices":
            try:
                from .explain import render_explanation
                labels = res.segmentation.labels if res.segmentation is not None else None
                r = render_explanation(case, res.explanations[0],
                                       out_dir / f"{res.case_id}_3d.png", None, labels=labels)
                paths["render_png"] = r["png"]
                parts.append(f"<img src='{Path(r['png']).name}' alt='3D rendering'>")
            except Exception as e:  # rendering is optional (no OpenGL on some machines)
                parts.append(f"<p>3D rendering unavailable: {html.escape(str(e))}</p>")
    if res.synthetic_inputs:
        read = list(res.read_synthetic)
        made = [s for s in res.synthesized if s not in read]
        how = ([f"{', '.join(read)} came with the case as synthetic"] if read else []) + (
            [f"{', '.join(made)} generated by this analysis"] if made else [])
        parts.append("<p><b>Synthetic inputs:</b> " + html.escape("; ".join(how))
                     + ": generated by a model, not acquired.</p>")
    if not deidentify and case.clinical:
        rows = [(k, v) for k, v in case.clinical.items() if isinstance(v, (str, int, float))]
        parts.append("<h2>Clinical</h2>" + _table(rows, ("field", "value")))
    parts.append("<h2>Timings</h2>" + _table([(k, f"{v:.2f} s") for k, v in res.timings.items()],
                                             ("stage", "time")))
    links = [(k, Path(v).name) for k, v in (files or {}).items()
             if Path(v).parent.resolve() == out_dir.resolve()]
    links.append(("report data", f"{res.case_id}_report.json"))
    parts.append("<h2>Files</h2><ul>" + "".join(
        f"<li>{html.escape(k.replace('_', ' '))}: <a href='{html.escape(n)}'>{html.escape(n)}</a>"
        "</li>" for k, n in links) + "</ul>")
    # the prediction read age and sex; a de-identified report's files leave them out
    pred_json, removed = (prediction_for_output(res.prediction.to_json(), deidentify)
                          if res.prediction is not None else (None, []))
    # the fields the prediction read a value of (an unknown age or sex, None, is the training
    # cohort's value: said in the warnings, not 'used' here)
    feats = (res.prediction.to_json().get("features") or {}) if res.prediction is not None else {}
    used = sorted({r.split(".")[-1].replace("sex_male", "sex") for r in removed
                   if not r.startswith("features.") or _known(feats.get(r.split(".", 1)[1]))})
    parts.append("<p class=note>" + html.escape(
        "De-identified: no clinical fields, source paths or acquisition metadata"
        + (f" (the prediction used {', '.join(used)}; left out of this report and its files)"
           if used else "") + "." if deidentify
        else "Identified report (clinical fields included).") + "</p>")
    style = ("<style>body{font-family:sans-serif;max-width:1100px;margin:auto}"
             "table{border-collapse:collapse}td,th{border:1px solid #999;padding:3px 8px}"
             ".note{color:#555;font-size:90%}img{max-width:100%}</style>")
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(res.case_id)}" \
           f"</title>{style}</head><body>{''.join(parts)}</body></html>"
    p = out_dir / f"{res.case_id}_report.html"
    p.write_text(page)
    paths["report_html"] = str(p)
    data = {"case_id": res.case_id,
            **deidentification_fields(deidentify, [f"prediction.{r}" for r in removed]),
            "summary": res.summary(),
            "segmentation": res.segmentation.summary() if res.segmentation is not None else None,
            "prediction": pred_json,
            "explanations": [e.metadata for e in res.explanations],
            "warnings": res.warnings, "synthetic_inputs": res.synthetic_inputs,
            "synthesized": res.synthesized}
    if not deidentify:
        data["clinical"] = {k: v for k, v in case.clinical.items()
                            if isinstance(v, (str, int, float))}
    # strict JSON: an undefined number (HD95 with one empty mask) is null, never NaN
    p = write_json(out_dir / f"{res.case_id}_report.json", data)
    paths["report_json"] = str(p)
    return paths
