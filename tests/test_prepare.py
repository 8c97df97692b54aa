"""Preparation (one grid, mask, crop, normalisation) and the way back to the native grid."""
import numpy as np
import pytest
import SimpleITK as sitk

from napari_radiogen.core.case import Case, Geometry, Volume, canonicalize
from napari_radiogen.core.errors import (Cancelled, GeometryError, MissingSequenceError,
                                         RadiogenError)
from napari_radiogen.core.phantom import make_phantom
from napari_radiogen.core.prepare import (PreparedCase, brain_mask, crop_box, denormalise,
                                          is_skull_stripped, normalise, prepare,
                                          resample_spacing, resample_to_reference,
                                          resample_volume, to_native, uncrop,
                                          working_geometry)
from napari_radiogen.core.progress import CancelToken

from conftest import shared_path

SEQ = ("t1", "t1ce", "t2", "flair")


# -- loading real data (core.io when it is there, plain SimpleITK otherwise) ---------------------
def _read(path, dtype=None):
    img, code = canonicalize(sitk.ReadImage(str(path)))
    return Volume.from_image(img, path=str(path), source_orientation=code, dtype=dtype)


def _load_case(folder):
    try:
        from napari_radiogen.core.io import load_case
        return load_case(folder)
    except Exception:   # io not written yet, or API still moving: read the files directly
        pass
    files = sorted(p for p in folder.iterdir() if p.name.endswith(".nii.gz"))
    seqs, labels = {}, None
    for p in files:
        stem = p.name[:-7].lower()
        if stem.endswith("_seg"):
            labels = _read(p, np.uint8)
            continue
        for key, name in (("_t1ce", "t1ce"), ("_t1c", "t1ce"), ("_flair", "flair"),
                          ("_fla", "flair"), ("_t2", "t2"), ("_t1", "t1")):
            if stem.endswith(key):
                seqs[name] = _read(p)
                break
    return Case(case_id=folder.name, sequences=seqs, labels=labels, source=str(folder))


@pytest.fixture(scope="module")
def brats():
    return _load_case(shared_path("brats2021", "BraTS2021_00006"))


@pytest.fixture(scope="module")
def native():
    return _load_case(shared_path("tcga-native", "TCGA-FG-6692", "native"))


def _dice(a, b):
    return 2.0 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))


# -- phantoms (no data needed) ---------------------------------------------------------------------
def test_prepare_phantom_stacks_channels_in_requested_order():
    c = make_phantom(0)
    p = prepare(c, ("flair", "t1"))
    assert isinstance(p, PreparedCase)
    assert p.array.dtype == np.float32 and p.array.ndim == 4 and p.array.shape[0] == 2
    assert p.sequences == ("flair", "t1")
    assert p.array.flags["C_CONTIGUOUS"]
    only_t1 = prepare(c, ("t1",))
    np.testing.assert_array_equal(p.channel("t1"), only_t1.array[0])
    assert p.mask.shape == p.shape and p.mask.dtype == bool
    assert p.geometry.shape == p.shape
    assert p.mask_method == "otsu"            # the phantom has scalp + skull + noisy background
    assert not p.resampled and p.reference == "flair"
    for i in range(2):                          # z-score inside the mask
        v = p.array[i][p.mask]
        assert abs(v.mean()) < 0.05 and 0.9 < v.std() < 1.1
        assert (p.array[i][~p.mask] == 0).all()


def test_brain_mask_nonzero_for_skull_stripped_and_head_mask_otherwise():
    from napari_radiogen.core.phantom import TISSUE, phantom_tissue
    ss = make_phantom(2, skull_stripped=True)
    m = brain_mask(ss)
    np.testing.assert_array_equal(m, ss.sequences["flair"].array != 0)
    np.testing.assert_array_equal(brain_mask(ss.sequences["t1"]), ss.sequences["t1"].array != 0)
    nat = make_phantom(2)
    t = phantom_tissue(2)
    head = brain_mask(nat)
    assert not is_skull_stripped(nat.sequences["flair"].array)
    inside = np.isin(t, [TISSUE[k] for k in ("csf", "gm", "wm", "necrosis", "enhancing",
                                             "oedema")])
    assert head[inside].mean() > 0.99                     # the whole brain and tumour
    assert head[t == TISSUE["background"]].mean() < 0.01  # not the noisy background
    assert (brain_mask(nat, method="nonzero")).mean() > 0.99   # non-zero is useless here


def test_crop_geometry_maps_voxels_to_the_same_world_points():
    c = make_phantom(1)
    p = prepare(c, SEQ, margin=2)
    assert p.box != tuple(slice(0, n) for n in c.geometry.shape)      # it did crop
    z0, y0, x0 = (b.start for b in p.box)
    world_crop = p.geometry.affine_lps() @ np.array([0, 0, 0, 1.0])
    world_full = c.geometry.affine_lps() @ np.array([x0, y0, z0, 1.0])
    np.testing.assert_allclose(world_crop, world_full, atol=1e-6)
    np.testing.assert_array_equal(p.labels, c.labels.array[p.box])


def test_skull_stripped_phantom_round_trip_is_exact():
    c = make_phantom(4, skull_stripped=True)
    p = prepare(c, SEQ)
    assert p.mask_method == "nonzero"
    back = to_native(p, p.labels, labels=True)
    assert back.dtype == c.labels.array.dtype
    np.testing.assert_array_equal(back, c.labels.array)
    # maps (C, z, y, x) come back too
    maps = to_native(p, p.array)
    assert maps.shape == (4,) + c.geometry.shape


def test_resampling_uses_each_images_own_geometry():
    """A T1 stored on another (rotated, shifted, anisotropic) grid comes back onto the
    reference grid where it belongs."""
    c = make_phantom(5)
    g = c.geometry
    ang = np.deg2rad(8.0)
    rot = np.array([[np.cos(ang), -np.sin(ang), 0], [np.sin(ang), np.cos(ang), 0], [0, 0, 1]])
    other = Geometry(size=(100, 110, 50), spacing=(1.1, 1.1, 2.2),
                     origin=tuple(np.asarray(g.origin) + [-8.0, -6.0, -4.0]),
                     direction=tuple(rot.ravel()))
    moved = resample_volume(c.sequences["t1"], other)
    assert moved.geometry.same_grid(other)
    c2 = c.with_sequence("t1", moved)
    assert not c2.on_one_grid()
    r = resample_to_reference(c2)
    assert r.on_one_grid() and r.sequences["t1"].geometry.same_grid(g)
    orig, back = c.sequences["t1"].array, r.sequences["t1"].array
    inner = c.labels.array >= 0
    inner[:6], inner[-6:], inner[:, :6], inner[:, -6:], inner[:, :, :6], inner[:, :, -6:] = (
        False,) * 6
    corr = np.corrcoef(orig[inner], back[inner])[0, 1]
    assert corr > 0.9
    p = prepare(c2, SEQ)
    assert not p.resampled and p.channel("t1").shape == p.shape


def test_synthetic_reference_does_not_decide_the_mask():
    """A model-made FLAIR (zero outside its mask) must not turn a native-like case into
    'skull-stripped' with an everything-mask."""
    c = make_phantom(2)
    p0 = prepare(c, SEQ)
    fl = np.where(p0.mask, p0.channel("flair") + 10.0, 0.0).astype(np.float32)
    synth = Volume(uncrop(p0, fl), c.geometry, synthetic=True)
    c2 = c.with_sequence("flair", synth)
    p = prepare(c2, SEQ)
    assert p.reference == "flair" and p.synthetic == ("flair",)
    assert p.mask_method == "otsu"
    assert _dice(uncrop(p, p.mask), uncrop(p0, p0.mask)) > 0.9     # a head mask from T1ce
    assert uncrop(p, p.mask).mean() < 0.8
    assert p.summary()["synthetic_inputs"] == ["flair"]


def test_pack_phantom_prepares_as_slices():
    from napari_radiogen.core.phantom import make_pack_phantom
    c = make_pack_phantom(1, n_slices=16)
    p = prepare(c, ("t1", "flair", "t1ce"), crop=False, norm="percentile")
    assert p.kind == "slices" and p.array.shape == (3, 16, 128, 128)
    assert p.array.min() >= 0 and p.array.max() <= 1
    np.testing.assert_array_equal(p.to_native(p.labels, labels=True), c.labels.array)


def test_resample_spacing_and_inverse_on_phantom():
    c = make_phantom(6, skull_stripped=True)
    r = resample_spacing(c, 3.0)
    assert r.on_one_grid()
    assert r.geometry.spacing == (3.0, 3.0, 3.0)
    assert r.geometry.shape == (32, 40, 36)
    assert set(np.unique(r.labels.array)) <= {0, 1, 2, 4}
    # the new grid covers the same field of view (voxel edges kept)
    g0, g1 = c.geometry, r.geometry
    edge0 = np.asarray(g0.origin) - np.asarray(g0.spacing) / 2
    edge1 = np.asarray(g1.origin) - np.asarray(g1.spacing) / 2
    np.testing.assert_allclose(edge0, edge1, atol=1e-6)
    assert working_geometry(g0, 1.5) is g0


def test_partial_field_of_view_is_zero_and_excluded_from_the_statistics():
    c = make_phantom(3)
    g = c.geometry
    t1 = c.sequences["t1"]
    half = Volume(np.ascontiguousarray(t1.array[32:]),          # upper half of the slab only
                  g.with_(size=(g.size[0], g.size[1], 32),
                          origin=(g.origin[0], g.origin[1], g.origin[2] + 32 * g.spacing[2])))
    p = prepare(c.with_sequence("t1", half), SEQ, margin=0)
    assert any("t1 covers" in w for w in p.warnings)
    full = prepare(c, SEQ, margin=0)
    assert p.box == full.box
    z0 = p.box[0].start
    lower = slice(0, 32 - z0 - 1)
    assert (p.channel("t1")[lower] == 0).all()
    upper = np.zeros(p.shape, bool)
    upper[32 - z0 + 1:] = True
    v = p.channel("t1")[p.mask & upper]
    assert abs(v.mean()) < 0.1 and 0.9 < v.std() < 1.1           # statistics of covered voxels
    np.testing.assert_array_equal(p.channel("flair"), full.channel("flair"))


def _x_window(vol, k, n):
    """``vol`` cut to the x voxels k .. k+n-1 (its own, smaller field of view)."""
    g = vol.geometry
    return Volume(np.ascontiguousarray(vol.array[:, :, k:k + n]),
                  g.with_(size=(n, g.size[1], g.size[2]),
                          origin=(g.origin[0] + k * g.spacing[0], g.origin[1], g.origin[2])))


@pytest.mark.parametrize("skull_stripped", [False, True])
@pytest.mark.parametrize("spacing", [None, 3.0])
def test_a_sequence_covering_64_percent_of_the_field_of_view_is_said(skull_stripped, spacing):
    """T2 covering the central 64% of the reference field of view (x), its edges cutting into
    the head: zero-filled there, said (was silent above the 50% threshold)."""
    c = make_phantom(3, skull_stripped=skull_stripped)
    nx = c.geometry.size[0]                                   # 72
    part = c.with_sequence("t2", _x_window(c.sequences["t2"], 13, 46))      # 46 / 72 = 64%
    p = prepare(part, SEQ, spacing=spacing)
    said = [w for w in p.warnings if w.startswith("t2 covers")]
    assert len(said) == 1, p.warnings
    what = "brain" if skull_stripped else "head"
    assert said[0].startswith("t2 covers 64% of the reference (flair) field of view and ")
    assert f"% of the {what} mask; the rest is zero-filled" in said[0]
    assert not any(w.startswith(("t1 ", "t1ce ", "flair ")) for w in p.warnings)
    assert not _offset_warnings(p)         # a field-of-view edge is no offset of the image
    assert 46 / nx < 0.65
    # the hard error stays where it was: a sequence that does not overlap at all
    g = c.geometry
    far = Volume(c.sequences["t2"].array, g.with_(origin=(g.origin[0] + 500.0, g.origin[1],
                                                           g.origin[2])))
    with pytest.raises(GeometryError, match="does not overlap"):
        prepare(c.with_sequence("t2", far), SEQ, spacing=spacing)


def test_a_small_field_of_view_that_keeps_the_whole_brain_is_not_said():
    """A sequence missing only empty background (the brain mask all inside its field of view)
    changes nothing the model sees: no warning, even at 80% of the field of view."""
    c = make_phantom(3, skull_stripped=True)
    m = prepare(c, SEQ, crop=False).mask
    xs = np.flatnonzero(m.any(axis=(0, 1)))
    lo, hi = int(xs[0]), int(xs[-1]) + 1
    nx = c.geometry.size[0]
    assert (hi - lo) / nx < 0.85           # the phantom's brain leaves room around it in x
    k = max(0, lo - 2)
    n = min(nx, hi + 2) - k
    p = prepare(c.with_sequence("t2", _x_window(c.sequences["t2"], k, n)), SEQ)
    assert not any("covers" in w for w in p.warnings), p.warnings


@pytest.mark.parametrize("dtype", [np.int64, np.uint8, bool])
def test_to_native_keeps_label_dtype_after_resampling(dtype):
    c = make_phantom(6, skull_stripped=True)
    p = prepare(c, SEQ, spacing=3.0)
    lab = p.labels.astype(dtype) if dtype is not bool else p.labels > 0
    back = to_native(p, lab, labels=True)
    assert back.dtype == np.dtype(dtype) and back.shape == c.geometry.shape
    ref = c.labels.array > 0
    assert _dice(back > 0, ref) > 0.8


def test_non_overlapping_sequence_raises_geometry_error():
    c = make_phantom(0)
    t2 = c.sequences["t2"]
    far = Volume(t2.array, t2.geometry.with_(origin=(1000.0, 1000.0, 1000.0)))
    bad = c.with_sequence("t2", far)
    with pytest.raises(GeometryError, match="t2"):
        prepare(bad, SEQ)
    with pytest.raises(GeometryError, match="t2"):
        resample_to_reference(bad)


def test_missing_sequence_error_names_it():
    c = make_phantom(0, sequences=("t1", "flair"))
    with pytest.raises(MissingSequenceError) as e:
        prepare(c, ("t1", "t1ce", "flair"))
    assert e.value.missing == ["t1ce"]
    assert "t1ce" in str(e.value) and "flair" in str(e.value)
    with pytest.raises(MissingSequenceError, match="t2"):
        prepare(c, ("t1",), reference="t2")


def test_nan_inf_and_2d_input_give_clear_errors():
    c = make_phantom(0)
    arr = c.sequences["t1"].array.copy()
    arr[3, 4, 5] = np.nan
    arr[6, 7, 8] = np.inf
    bad = c.with_sequence("t1", Volume(arr, c.geometry))
    with pytest.raises(RadiogenError, match=r"t1 contains 2 NaN or infinite"):
        prepare(bad, SEQ)
    flat = Volume(c.sequences["t2"].array, c.geometry)
    flat.array = flat.array[10]                 # a 2D array slipped past the constructor
    with pytest.raises(RadiogenError, match="3D"):
        prepare(c.with_sequence("t2", flat), SEQ)
    with pytest.raises(RadiogenError, match="3D"):
        brain_mask(np.zeros((10, 10)))


def test_prepare_cancels():
    tok = CancelToken()
    tok.cancel()
    with pytest.raises(Cancelled):
        prepare(make_phantom(0), SEQ, cancel=tok)


def test_normalise_methods():
    rng = np.random.default_rng(0)
    a = rng.normal(100, 20, size=(20, 20, 20)).astype(np.float32)
    m = np.zeros(a.shape, bool)
    m[2:-2, 2:-2, 2:-2] = True
    z, prm = normalise(a, m, "zscore", return_params=True)
    assert abs(z[m].mean()) < 1e-3 and abs(z[m].std() - 1) < 1e-3
    assert (z[~m] == 0).all() and np.abs(z).max() <= 5.0
    pc = normalise(a, m, "percentile")
    assert pc.min() == 0.0 and pc.max() == 1.0
    assert abs(np.mean(pc[m] <= 0) - 0.005) < 0.003
    with pytest.raises(RadiogenError):
        normalise(a, m, "bogus")
    with pytest.raises(RadiogenError, match="empty"):
        normalise(a, np.zeros_like(m))
    # denormalise inverts a (non-clipped) z-score
    c = make_phantom(0, skull_stripped=True)
    p = prepare(c, ("flair",), clip=0)
    back = denormalise(p, p.array[0], "flair")
    orig = c.sequences["flair"].array[p.box]
    np.testing.assert_allclose(back[p.mask], orig[p.mask], rtol=1e-3, atol=1e-2)


def test_crop_box():
    m = np.zeros((10, 20, 30), bool)
    m[3:5, 6:9, 10:20] = True
    assert crop_box(m, 0) == (slice(3, 5), slice(6, 9), slice(10, 20))
    assert crop_box(m, 4) == (slice(0, 9), slice(2, 13), slice(6, 24))
    assert crop_box(m, (1, 0, 20)) == (slice(2, 6), slice(6, 9), slice(0, 30))
    assert crop_box(np.zeros((4, 5, 6), bool)) == (slice(0, 4), slice(0, 5), slice(0, 6))


def test_is_skull_stripped_on_volumes_and_slices():
    """Zero background all around (BraTS-like) is skull-stripped for a volume and, with the
    same rule (four edges instead of six faces), for a 2D slice; noise there, or an object
    touching the border, is not; other dimensions are not judged. An all-zero volume is (as
    before: prepare then masks the non-zero voxels, i.e. none)."""
    rng = np.random.default_rng(3)
    vol = np.zeros((10, 40, 40), np.float32)
    yy, xx = np.mgrid[:40, :40]
    vol[2:8, (yy - 20) ** 2 + (xx - 20) ** 2 < 12 ** 2] = 200.0
    assert is_skull_stripped(vol) and is_skull_stripped(vol[5])
    noisy = vol + rng.uniform(1, 10, vol.shape).astype(np.float32)
    assert not is_skull_stripped(noisy) and not is_skull_stripped(noisy[5])
    edge = vol[5].copy()
    edge[:, :8] = 50.0                               # touches a fifth of the border: not
    assert not is_skull_stripped(edge)
    mostly = vol[5].copy()
    mostly[0, :4] = 7.0                              # a few non-zero border pixels: still is
    assert is_skull_stripped(mostly)
    full = np.full((40, 40), 5.0, np.float32)        # no zeros at all
    full[10:30, 10:30] = 100.0
    assert not is_skull_stripped(full)
    assert is_skull_stripped(np.zeros((4, 5, 6)))
    assert not is_skull_stripped(vol[5, 20]) and not is_skull_stripped(vol[None])
    assert not is_skull_stripped(np.zeros((0, 5)))


def test_to_native_rejects_wrong_shape():
    p = prepare(make_phantom(0), SEQ)
    with pytest.raises(GeometryError):
        to_native(p, np.zeros((3, 3, 3), np.uint8), labels=True)
    assert uncrop(p, p.mask).shape == p.working_geometry.shape


# -- real data ----------------------------------------------------------------------------------
def test_brats_prepare_round_trip_is_exact(brats):
    assert brats.on_one_grid()
    assert is_skull_stripped(brats.sequences["flair"].array)
    p = prepare(brats, SEQ)
    assert not p.resampled and p.mask_method == "nonzero"
    assert p.array.shape[0] == 4 and p.array.shape[1:] == p.shape
    assert np.prod(p.shape) < 0.6 * np.prod(brats.geometry.shape)  # the crop pays off
    seg = brats.labels.array
    back = p.to_native(p.labels, labels=True)
    assert back.shape == seg.shape and back.dtype == seg.dtype
    np.testing.assert_array_equal(back, seg)
    same = prepare(brats, ("flair",), spacing=1.0)       # the native spacing: no resampling
    assert not same.resampled
    np.testing.assert_array_equal(same.to_native(same.labels, labels=True), seg)
    # crop box contains the whole brain mask
    full = brain_mask(brats)
    assert np.count_nonzero(full) == np.count_nonzero(p.mask)
    np.testing.assert_array_equal(uncrop(p, p.mask), full)


def test_brats_2mm_round_trip_dice(brats):
    p = prepare(brats, SEQ, spacing=2.0)
    assert p.resampled and p.working_geometry.spacing == (2.0, 2.0, 2.0)
    assert p.geometry.spacing == (2.0, 2.0, 2.0)
    back = to_native(p, p.labels, labels=True)
    seg = brats.labels.array
    assert back.shape == seg.shape
    assert _dice(back > 0, seg > 0) > 0.9
    # a probability map comes back on the native grid too
    maps = to_native(p, np.stack([p.mask.astype(np.float32)] * 2))
    assert maps.shape == (2,) + seg.shape and maps.dtype == np.float32


def test_native_scans_onto_one_grid(native):
    assert set(native.sequences) == set(SEQ)
    assert not native.on_one_grid()                 # four grids as acquired
    ref = native.reference
    r = resample_to_reference(native)
    g = native.sequences[ref].geometry
    assert r.on_one_grid()
    for s, v in r.sequences.items():
        assert v.array.shape == g.shape and v.array.dtype == np.float32
        assert v.geometry.same_grid(g)
        assert np.count_nonzero(v.array) > 0.5 * v.array.size, s
    # T2 was acquired on the FLAIR grid (same geometry): resampling it is the identity
    if native.sequences["t2"].geometry.same_grid(g):
        np.testing.assert_allclose(r.sequences["t2"].array, native.sequences["t2"].array)
    # the T1 moved from its own grid correlates with the T1ce moved the same way
    a, b = r.sequences["t1"].array, r.sequences["t1ce"].array
    both = (a > 0) & (b > 0)
    assert np.corrcoef(a[both], b[both])[0, 1] > 0.5


def test_native_prepare_uses_a_head_mask_and_lands_on_the_flair_grid(native):
    assert not is_skull_stripped(native.sequences["flair"].array)
    p = prepare(native, SEQ, spacing=2.0)
    assert p.mask_method == "otsu" and p.resampled
    frac = p.mask.mean()
    assert 0.3 < frac < 0.9                          # a head, not the whole box or a speck
    back = to_native(p, p.mask.astype(np.uint8), labels=True)
    g = native.geometry
    assert back.shape == g.shape
    # the mask is the head: mean FLAIR inside much brighter than outside
    fl = native.sequences["flair"].array.astype(float)
    assert fl[back > 0].mean() > 4 * fl[back == 0].mean()
    p1 = prepare(native, ("t1", "flair"))            # native grid: anisotropic, no resampling
    assert not p1.resampled and p1.geometry.spacing == g.spacing


@pytest.mark.parametrize("pad", [-1024, -32768])
def test_a_sequence_padded_with_a_constant_background_prepares_as_a_zero_background(pad):
    """int16 scans often pad the background with -1024 or -32768. One such sequence made every
    voxel of the field of view 'brain' (the mask was the union of the non-zero voxels) and
    the z-scores ran over the background: the segmentation of a BraTS case grew from 194 to
    860 mL. The padding value is the background now, as 0 is: the same mask, crop and
    channels as the zero-background case."""
    from napari_radiogen.core.prepare import background_value
    c = make_phantom(4, skull_stripped=True)
    t1ce = c.sequences["t1ce"]
    raw = np.round(t1ce.array).astype(np.int16)                  # stored as integers
    zero = Case("z", dict(c.sequences, t1ce=Volume(raw, t1ce.geometry)))
    padded = np.where(raw == 0, np.int16(pad), raw)
    padc = Case("p", dict(c.sequences, t1ce=Volume(padded, t1ce.geometry)))
    assert background_value(raw) == 0.0 and background_value(padded) == float(pad)
    assert is_skull_stripped(padded)
    a, b = prepare(zero), prepare(padc)
    assert a.mask_method == b.mask_method == "nonzero"
    np.testing.assert_array_equal(a.mask, b.mask)
    assert a.box == b.box
    np.testing.assert_allclose(a.array, b.array, atol=1e-6)
    np.testing.assert_array_equal(brain_mask(padc), brain_mask(zero))
    # a native (head) scan whose corners outside a round field of view are padded: the Otsu
    # head mask and the normalisation are those of the unpadded scan
    nat = make_phantom(4)
    zz, yy, xx = np.indices(nat.geometry.shape)
    cy, cx = (np.array(nat.geometry.shape[1:]) - 1) / 2
    corners = (yy - cy) ** 2 + (xx - cx) ** 2 > (0.55 * max(nat.geometry.shape[1:])) ** 2
    assert 0.05 < corners.mean() < 0.25                  # under the skull-stripped quarter
    seqs = {k: Volume(np.where(corners, 0.0, v.array).astype(np.float32), v.geometry)
            for k, v in nat.sequences.items()}
    plain = Case("n", seqs)
    fl = seqs["flair"]                                   # the reference: the Otsu mask's
    padn = Case("np", dict(seqs, flair=Volume(np.where(corners, np.float32(pad), fl.array)
                                              .astype(np.float32), fl.geometry)))
    a, b = prepare(plain), prepare(padn)
    assert a.mask_method == b.mask_method == "otsu"
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_allclose(a.array, b.array, atol=1e-6)
    # a noisy native scan has no constant background; a dark but real minimum is no padding
    nat = make_phantom(4).sequences["flair"].array
    assert background_value(nat) == 0.0
    ramp = np.linspace(-1, 1, 1000).reshape(10, 10, 10)
    assert background_value(ramp) == 0.0
    positive = np.full((10, 10, 10), 5.0)
    positive[3:7, 3:7, 3:7] = 100.0
    assert background_value(positive) == 0.0              # no negative padding value


# -- co-registration check -----------------------------------------------------------------------
def _shifted(case, name, shift_xyz):
    v = case.sequences[name]
    g = v.geometry
    moved = Volume(v.array, g.with_(origin=tuple(o + d for o, d in zip(g.origin, shift_xyz))),
                   meta=dict(v.meta))
    return case.with_sequence(name, moved)


def _offset_warnings(p):
    return [w for w in p.warnings if "looks offset" in w]


def _said_mm(warning, name, ref="flair"):
    import re
    m = re.match(rf"{name} looks offset from {ref} by about (\d+) mm \(", warning)
    assert m, warning
    return int(m.group(1))


def test_image_offset_recovers_a_known_shift_below_a_voxel():
    from scipy import ndimage

    from napari_radiogen.core.prepare import image_offset
    rng = np.random.default_rng(0)
    a = ndimage.gaussian_filter(rng.standard_normal((40, 48, 44)), 2.0)
    b = ndimage.shift(a, (0, 3, -2), order=1)      # moving[i + l] = fixed[i]: l = (0, +3, -2)
    x, y, z = image_offset(a, b, (2.0, 2.0, 2.0))
    assert x == pytest.approx(-4.0, abs=0.5) and y == pytest.approx(6.0, abs=0.5)
    assert z == pytest.approx(0.0, abs=0.5)
    assert image_offset(a, None, (1, 1, 1)) is None


@pytest.mark.parametrize("skull_stripped", [True, False])
def test_a_sequence_shifted_in_its_header_is_said_and_aligned_ones_are_not(skull_stripped):
    case = make_phantom(3, shape=(48, 64, 60), spacing=(1.5, 1.5, 1.5),
                        skull_stripped=skull_stripped)
    assert not _offset_warnings(prepare(case))
    moved = _shifted(case, "t2", (0.0, 8.0, 0.0))
    w = _offset_warnings(prepare(moved))
    assert len(w) == 1 and 7 <= _said_mm(w[0], "t2") <= 9, w
    # a shift under the limit, or in a sequence the model does not use, is not said
    assert not _offset_warnings(prepare(_shifted(case, "t2", (0.0, 3.0, 0.0))))
    assert not _offset_warnings(prepare(moved, ("t1", "flair")))


def test_offsets_across_thick_slices_are_not_said():
    case = make_phantom(4, shape=(24, 64, 60), spacing=(1.5, 1.5, 5.0), skull_stripped=True)
    w = _offset_warnings(prepare(_shifted(case, "t1", (6.0, 0.0, 0.0))))
    assert len(w) == 1 and 5 <= _said_mm(w[0], "t1") <= 7, w
    assert "(x +" in w[0] and " z " not in w[0], w
    assert not _offset_warnings(prepare(_shifted(case, "t1", (0.0, 0.0, 10.0))))


def test_a_synthetic_sequence_is_not_checked():
    case = make_phantom(5, shape=(48, 64, 60), skull_stripped=True)
    moved = _shifted(case, "t1", (9.0, 0.0, 0.0))
    v = moved.sequences["t1"]
    synth = moved.with_sequence("t1", Volume(v.array, v.geometry, meta=dict(v.meta),
                                             synthetic=True))
    assert _offset_warnings(prepare(moved))
    assert not _offset_warnings(prepare(synth))
    from napari_radiogen.core.prepare import case_registration_warnings
    assert [w.split(" ", 1)[0] for w in case_registration_warnings(moved)] == ["t1"]
    assert case_registration_warnings(synth) == []


def test_brats_sequences_are_co_registered(brats):
    assert not _offset_warnings(prepare(brats))
    w = _offset_warnings(prepare(_shifted(brats, "t1ce", (-7.0, 0.0, 0.0))))
    assert len(w) == 1 and 6 <= _said_mm(w[0], "t1ce") <= 8, w


def test_native_t1ce_is_said_to_be_offset_from_the_flair(native):
    """The raw TCGA scans were acquired in separate series (5.5 mm slices, tilts of 5.5 and 17
    degrees): a translation-only SimpleITK mutual-information registration puts the T1ce about
    6 mm (x) from the FLAIR, the T1 about 5.5 mm and the T2 under 3 mm."""
    from napari_radiogen.core.prepare import case_registration_warnings
    w = _offset_warnings(prepare(native))
    assert any(s.startswith("t1ce looks offset from flair") for s in w), w
    assert not any(s.startswith("t2 ") for s in w), w
    assert all(" z " not in s for s in w)            # 5.5 mm slices: z is not said
    # judged on the reference's own grid, whatever the working spacing (2 mm: z stays unsaid)
    assert _offset_warnings(prepare(native, spacing=2.0)) == w
    # what the viewer and `radiogen info` say on opening the case: every acquired sequence
    assert case_registration_warnings(native) == [s for s in w]


def test_largest_component_is_labelled_within_the_bounding_box_alike():
    """The largest component, labelled inside the mask's bounding box (a short hold of the
    interpreter), is the one labelling the whole volume gives, for either connectivity."""
    from scipy import ndimage

    from napari_radiogen.core.prepare import _largest_component, crop_box
    rng = np.random.default_rng(0)
    for t in range(60):
        m = np.zeros((12, 14, 16), bool)
        z, y, x = rng.integers(0, 6, 3)
        m[z:z + 6, y:y + 7, x:x + 8] = rng.random((6, 7, 8)) > 0.55
        st = None if t % 2 else np.ones((3, 3, 3), bool)
        lab, n = ndimage.label(m, structure=st)
        if n <= 1:
            want = m
        else:
            counts = np.bincount(lab.ravel())
            counts[0] = 0
            want = lab == np.argmax(counts)
        got = _largest_component(m, st)
        assert got.shape == m.shape and np.array_equal(got, want), t
    empty = np.zeros((3, 4, 5), bool)
    assert _largest_component(empty) is empty
    m = np.zeros((5, 6, 7), bool)
    m[1, 2, 3] = m[3, 4, 3] = True
    assert crop_box(m, 0) == (slice(1, 4), slice(2, 5), slice(3, 4))    # the box labelled
