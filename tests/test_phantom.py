"""Synthetic cases: deterministic, plausible labels and contrasts, fast."""

import numpy as np
import pytest

from napari_radiogen.core.case import Case
from napari_radiogen.core.phantom import (TISSUE, make_pack_phantom, make_phantom,
                                          phantom_tissue)
from napari_radiogen.core.prepare import is_skull_stripped


def _median(case, seq, tissue, cls):
    return float(np.median(case.sequences[seq].array[tissue == TISSUE[cls]]))


def test_phantom_is_deterministic_by_seed():
    a, b, c = make_phantom(7), make_phantom(7), make_phantom(8)
    for s in a.sequences:
        assert np.array_equal(a.sequences[s].array, b.sequences[s].array)
    assert np.array_equal(a.labels.array, b.labels.array)
    assert a.clinical == b.clinical
    assert not np.array_equal(a.labels.array, c.labels.array)
    assert a.meta["tumour_centre_mm"] != c.meta["tumour_centre_mm"]


def test_phantom_layout_and_geometry():
    c = make_phantom(0)
    assert isinstance(c, Case) and c.kind == "volume"
    assert c.present == ("t1", "t1ce", "t2", "flair")
    assert c.on_one_grid()
    g = c.geometry
    assert g.shape == (64, 80, 72) and g.spacing == (1.5, 1.5, 1.5)
    assert not np.allclose(g.origin, 0)
    for v in c.sequences.values():
        assert v.array.dtype == np.float32 and v.array.shape == (64, 80, 72)
        assert np.isfinite(v.array).all() and v.array.min() >= 0
    sub = make_phantom(0, shape=(20, 30, 40), spacing=(2.0, 1.0, 3.0), sequences=("flair",))
    assert sub.present == ("flair",)
    assert sub.geometry.shape == (20, 30, 40) and sub.geometry.size == (40, 30, 20)


def test_phantom_labels_are_nested_brats_regions():
    for seed in range(4):
        c = make_phantom(seed)
        lab = c.labels.array
        assert lab.dtype == np.uint8
        assert set(np.unique(lab).tolist()) == {0, 1, 2, 4}
        n = {k: int((lab == k).sum()) for k in (1, 2, 4)}
        assert n[2] > n[4] > n[1] > 10
        # the necrotic core lies inside the enhancing rim: its bounding box is inside the rim's
        core = np.argwhere(lab == 1)
        rim = np.argwhere(lab == 4)
        assert (core.min(0) >= rim.min(0)).all() and (core.max(0) <= rim.max(0)).all()
        # the tumour is inside the head, away from the border
        wt = np.argwhere(lab > 0)
        assert (wt.min(0) > 0).all() and (wt.max(0) < np.array(lab.shape) - 1).all()
    none = make_phantom(1, tumour=False)
    assert none.labels.array.max() == 0


def test_phantom_contrasts_are_plausible():
    c = make_phantom(2)
    t = phantom_tissue(2)
    assert np.array_equal(t >= TISSUE["necrosis"], c.labels.array > 0)
    m = lambda seq, cls: _median(c, seq, t, cls)  # noqa: E731
    # T1: WM > GM > CSF, tumour hypo-intense
    assert m("t1", "wm") > m("t1", "gm") > m("t1", "csf")
    assert m("t1", "necrosis") < m("t1", "gm") and m("t1", "oedema") < m("t1", "wm")
    # T1ce: bright enhancing rim
    assert m("t1ce", "enhancing") > 1.3 * m("t1", "enhancing")
    assert m("t1ce", "enhancing") > m("t1ce", "wm")
    # T2: CSF bright, oedema bright
    assert m("t2", "csf") > m("t2", "gm") > m("t2", "wm")
    assert m("t2", "oedema") > m("t2", "gm")
    # FLAIR: CSF dark, oedema bright
    assert m("flair", "csf") < 0.5 * m("flair", "wm")
    assert m("flair", "oedema") > m("flair", "gm") > m("flair", "csf")
    # noise: background is not exactly zero (a native-like scan), bias makes WM non-uniform
    assert np.count_nonzero(c.sequences["t1"].array == 0) < 0.01 * t.size
    assert not is_skull_stripped(c.sequences["flair"].array)


def test_skull_stripped_phantom_has_zero_background():
    c = make_phantom(3, skull_stripped=True)
    t = phantom_tissue(3, skull_stripped=True)
    for v in c.sequences.values():
        assert (v.array[t == TISSUE["background"]] == 0).all()
        assert is_skull_stripped(v.array)
    assert (c.labels.array[t == TISSUE["background"]] == 0).all()


def test_pack_phantom_mimics_tcga_lgg_pack():
    p = make_pack_phantom(4, n_slices=20)
    q = make_pack_phantom(4, n_slices=20)
    assert p.kind == "slices"
    assert list(p.sequences) == ["t1", "flair", "t1ce"]
    for s, v in p.sequences.items():
        assert v.array.dtype == np.float32 and v.array.shape == (20, 128, 128)
        assert v.array.min() >= 0 and v.array.max() <= 255
        assert np.array_equal(v.array, np.rint(v.array))
        assert v.geometry.nominal
        assert np.array_equal(v.array, q.sequences[s].array)
    lab = p.labels.array
    assert set(np.unique(lab).tolist()) == {0, 1}
    assert 0 < int((lab.sum(axis=(1, 2)) > 0).sum()) < 20
    # FLAIR abnormality is bright on FLAIR
    fl = p.sequences["flair"].array.astype(float)
    assert fl[lab == 1].mean() > fl[(lab == 0) & (fl > 20)].mean()
    assert p.clinical["idh"] in ("mutant", "wildtype")
    assert make_pack_phantom(5).clinical != p.clinical or \
        not np.array_equal(make_pack_phantom(5).labels.array, lab)


@pytest.mark.parametrize("seed", [0, 1])
def test_pack_phantom_enhancement_follows_idh(seed):
    """IDH-wildtype phantoms enhance on T1ce, mutant ones do not (a learnable toy signal)."""
    found = {}
    for s in range(seed * 20, seed * 20 + 20):
        p = make_pack_phantom(s, n_slices=12)
        lab = p.labels.array == 1
        ratio = (p.sequences["t1ce"].array[lab].astype(float).max()
                 / max(1.0, float(p.sequences["t1"].array[lab].astype(float).max())))
        found.setdefault(p.clinical["idh"], []).append(ratio)
        if len(found) == 2:
            break
    assert set(found) == {"mutant", "wildtype"}
    assert min(found["wildtype"]) > max(found["mutant"])
