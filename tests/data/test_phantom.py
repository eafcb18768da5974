"""Tests of the synthetic microCT phantom (src/meunet/data/phantom.py)."""

from __future__ import annotations

import hashlib
import resource
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import ndimage
from scipy.spatial import cKDTree

from meunet.data.io import open_volume
from meunet.data.phantom import (
    PhantomConfig,
    dataset,
    make_phantom_dataset,
    phantom_geometry,
    render,
    render_case,
    tube_map,
    write_case,
)

CFG = PhantomConfig()
SMALL = PhantomConfig(shape=(64, 48, 48))
SEEDS = [0, 1, 2, 3]
# "Same local look" tolerance: 2 % of the image's dynamic range (tube level above air).
LOOK_TOL = 0.02 * (CFG.tube_level - CFG.air_level)


def _case(seed: int, case: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    image, label = render_case(CFG, seed, case)
    return image, label, tube_map(CFG, seed, case)


# ----------------------------------------------------------------- determinism


def test_same_seed_and_case_render_identically() -> None:
    image, label = render_case(CFG, 0, 0)
    render._scene.cache_clear()  # rebuild the geometry from the seed, not from the cache
    image2, label2 = render_case(PhantomConfig(), 0, 0)
    assert image.dtype == np.uint16 and label.dtype == np.uint8
    assert image.shape == label.shape == CFG.shape
    np.testing.assert_array_equal(image, image2)
    np.testing.assert_array_equal(label, label2)


def test_cases_and_seeds_differ() -> None:
    image, label = render_case(CFG, 0, 0)
    for seed, case in [(0, 1), (1, 0)]:
        other_image, other_label = render_case(CFG, seed, case)
        assert not np.array_equal(label, other_label)
        assert np.mean(image != other_image) > 0.5


def test_render_does_not_depend_on_slab_depth() -> None:
    image, label = render_case(CFG, 2, 1)
    bounds = [(z, min(z + 7, CFG.shape[0])) for z in range(0, CFG.shape[0], 7)]
    parts = [render_case(CFG, 2, 1, z0, z1) for z0, z1 in bounds]
    np.testing.assert_array_equal(image, np.concatenate([p[0] for p in parts]))
    np.testing.assert_array_equal(label, np.concatenate([p[1] for p in parts]))


# ------------------------------------------------------------------ geometry


@pytest.mark.parametrize("seed", SEEDS)
def test_class_fractions(seed: int) -> None:
    _, label, _ = _case(seed)
    n_mid, n_hind = int((label == 1).sum()), int((label == 2).sum())
    assert n_mid > 0 and n_hind > 0
    assert 0.02 < n_hind / (n_mid + n_hind) <= 0.10
    assert 0.005 < (n_mid + n_hind) / label.size < 0.2


def test_tube_radii_and_junction() -> None:
    g = phantom_geometry(CFG, 0, 0)
    midgut, hindgut = g.tubes[0], g.tubes[1]
    assert (midgut.tube_id, hindgut.tube_id) == (1, 2)
    assert midgut.radius == pytest.approx(6.0)
    assert hindgut.radius == pytest.approx(midgut.radius / 3)
    ends = [midgut.points[0], midgut.points[-1]]
    assert any(np.allclose(hindgut.points[0], end) for end in ends)
    # Radii scale with min(y, x) / 96.
    big = PhantomConfig(shape=(128, 192, 200))
    assert big.radii == pytest.approx((12.0, 4.0))


@pytest.mark.parametrize("seed", SEEDS)
def test_hindgut_joins_midgut(seed: int) -> None:
    _, label, _ = _case(seed)
    assert (ndimage.binary_dilation(label == 2) & (label == 1)).any()
    _, n_parts = ndimage.label(label > 0)  # face connectivity
    assert n_parts == 1


@pytest.mark.parametrize("seed", SEEDS)
def test_distractors_never_touch_the_gut(seed: int) -> None:
    _, label, ids = _case(seed)
    distractors = ids >= 3
    assert distractors.sum() > 0
    assert not label[distractors].any()
    # Distractor and gut voxels are at least 3 face steps apart: a one-voxel partial-volume
    # rim on each side may meet, but no distractor voxel touches the gut or its rim.
    assert not (ndimage.binary_dilation(distractors, iterations=2) & (label > 0)).any()
    # And in geometry: centrelines keep the radii plus a clear gap apart.
    g = phantom_geometry(CFG, seed, 0)
    for d in g.tubes[2:]:
        for gut in g.tubes[:2]:
            dist = np.linalg.norm(d.points[:, None] - gut.points[None], axis=-1).min()
            assert dist > d.radius + gut.radius + 2.0


# ------------------------------------------------------------------ appearance


@pytest.mark.parametrize("seed", SEEDS)
def test_midgut_and_hindgut_look_the_same(seed: int) -> None:
    image, label, ids = _case(seed)
    mid, hind = image[label == 1].astype(float), image[label == 2].astype(float)
    assert abs(mid.mean() - hind.mean()) < LOOK_TOL
    assert abs(mid.std() - hind.std()) < LOOK_TOL
    # ... and like the distractors, and unlike the body around them.
    distractor = image[ids >= 3].astype(float)
    assert abs(distractor.mean() - mid.mean()) < LOOK_TOL
    near_tube = ndimage.binary_dilation(ids > 0, iterations=2)
    body = image[~near_tube & (image > (CFG.air_level + CFG.body_level) / 2)].astype(float)
    assert abs(mid.mean() - body.mean()) > 10 * LOOK_TOL


@pytest.mark.parametrize("seed", SEEDS)
def test_distractors_look_like_gut(seed: int) -> None:
    image, label, _ = _case(seed)
    gut = image[label > 0].astype(float)
    tube_like = (label == 0) & (image > gut.mean() - 2 * gut.std())
    assert tube_like.sum() > 0.5 * (label == 2).sum()


def test_air_around_body() -> None:
    image, _, _ = _case(0)
    corners = image[:4, :4, :4].astype(float)
    assert abs(corners.mean() - CFG.air_level) < 3 * CFG.noise_sd


# -------------------------------------------------------------------- writing


def test_write_case_zarr_matches_render(tmp_path: Path) -> None:
    image, label = render_case(SMALL, 5, 2)
    counts = write_case(SMALL, 5, 2, tmp_path / "image.zarr", tmp_path / "label.zarr", slab=5)
    with open_volume(tmp_path / "image.zarr") as vol:
        np.testing.assert_array_equal(vol.read(), image)
        assert vol.spacing == SMALL.spacing
    np.testing.assert_array_equal(open_volume(tmp_path / "label.zarr").read(), label)
    assert counts == {
        "background": int((label == 0).sum()),
        "mid-gut": int((label == 1).sum()),
        "hind-gut": int((label == 2).sum()),
    }


def test_write_case_other_format(tmp_path: Path) -> None:
    pytest.importorskip("meunet.data.io.numpy_io")
    image, label = render_case(SMALL, 1, 0)
    write_case(SMALL, 1, 0, tmp_path / "image.npy", tmp_path / "label.npy")
    np.testing.assert_array_equal(open_volume(tmp_path / "image.npy").read(), image)
    np.testing.assert_array_equal(open_volume(tmp_path / "label.npy").read(), label)


def test_make_phantom_dataset(tmp_path: Path) -> None:
    out = tmp_path / "ph"
    path = make_phantom_dataset(out, cases=3, shape=(64, 48, 48), seed=4, progress=False)
    assert path == out / "dataset.yaml"
    spec = yaml.safe_load(path.read_text())
    assert spec["name"] == "phantom"
    assert spec["classes"] == ["background", "mid-gut", "hind-gut"]
    assert spec["channels"] == ["ct"]
    assert list(spec["cases"]) == ["case_000", "case_001", "case_002"]
    assert spec["split"] == {"train": ["case_000"], "val": ["case_001"], "test": ["case_002"]}
    assert "seed 4" in spec["description"] and "64x48x48" in spec["description"]
    for i, (name, entry) in enumerate(spec["cases"].items()):
        assert entry == {"image": [f"{name}/image.zarr"], "label": f"{name}/label.zarr"}
        label = open_volume(path.parent / entry["label"]).read()
        np.testing.assert_array_equal(label, render_case(SMALL, 4, i)[1])
        assert open_volume(path.parent / entry["image"][0]).shape == (64, 48, 48)


@pytest.mark.parametrize(
    ("n", "sizes"),
    [
        (1, (1, 0, 0)),
        (2, (1, 1, 0)),
        (3, (1, 1, 1)),
        (6, (4, 1, 1)),
        (12, (8, 2, 2)),
        (30, (20, 5, 5)),
    ],
)
def test_split_sizes(n: int, sizes: tuple[int, int, int]) -> None:
    names = [f"case_{i:03d}" for i in range(n)]
    split = dataset._split(names)
    assert tuple(len(split[k]) for k in ("train", "val", "test")) == sizes
    assert [name for part in split.values() for name in part] == names


# ------------------------------------------------------------ context phantom

CONTEXT = PhantomConfig(context_distance=22.0)
# sha256 of the label volume of SMALL, seed 0, case 0, before the context phantom existed.
CLASSIC_LABEL_SHA256 = "eeca4d80b30940f9"


def _marker_mask(centres: np.ndarray, shape: tuple[int, ...], radius: float) -> np.ndarray:
    """Voxels within ``radius`` of a marker centre, from the marker list alone."""
    seeds = np.zeros(shape, bool)
    seeds[tuple(centres.astype(int).T)] = True
    return ndimage.distance_transform_edt(~seeds) <= radius


def test_classic_phantom_unchanged() -> None:
    assert PhantomConfig(context_distance=0.0) == PhantomConfig()
    label = render_case(SMALL, 0, 0)[1]
    assert hashlib.sha256(label.tobytes()).hexdigest()[:16] == CLASSIC_LABEL_SHA256
    assert len(phantom_geometry(SMALL, 0, 0).markers) == 0


def _kind_distances(g: object, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Distance transforms from the bright and from the dark marker centres (inf if none)."""
    out = []
    for kind in (True, False):
        centres = g.markers[g.cues == kind]  # type: ignore[attr-defined]
        if not len(centres):
            out.append(np.full(shape, np.inf))
            continue
        out.append(ndimage.distance_transform_edt(~_marker_mask(centres, shape, 0)))
    return out[0], out[1]


def test_context_rule_holds_in_written_labels(tmp_path: Path) -> None:
    d = CONTEXT.context_distance
    path = make_phantom_dataset(
        tmp_path / "ctx", cases=2, shape=CONTEXT.shape, seed=3, progress=False, context_distance=d
    )
    spec = yaml.safe_load(path.read_text())
    assert "context_distance 22" in spec["description"]
    for i, entry in enumerate(spec["cases"].values()):
        label = open_volume(path.parent / entry["label"]).read()
        g, ids = phantom_geometry(CONTEXT, 3, i), tube_map(CONTEXT, 3, i)
        # The rule, recomputed with distance transforms from the marker centres.
        bright, _ = _kind_distances(g, label.shape)
        thin = np.isin(ids, g.context_ids)
        expected = np.where(ids == 1, 1, np.where(thin & (bright <= d), 2, 0))
        np.testing.assert_array_equal(label, expected)
        assert (label == 2).any() and (thin & (label == 0)).any()


@pytest.mark.parametrize("seed", SEEDS)
def test_context_classes_balanced(seed: int) -> None:
    _, label = render_case(CONTEXT, seed, 0)
    g, ids = phantom_geometry(CONTEXT, seed, 0), tube_map(CONTEXT, seed, 0)
    thin = np.isin(ids, g.context_ids)
    n_cued, n_uncued = int((label == 2).sum()), int((thin & (label == 0)).sum())
    assert 0.25 < n_cued / (n_cued + n_uncued) < 0.75
    assert n_cued > 0.001 * label.size
    assert (label == 1).sum() > 0
    # Every thin tube, hind-gut included, has one radius: only the markers tell them apart.
    radii = {t.radius for t in g.tubes if t.tube_id in g.context_ids}
    assert radii == {CONTEXT.radii[1]} and len(g.context_ids) >= 3


@pytest.mark.parametrize("seed", SEEDS)
def test_markers_are_clear_cues_of_both_kinds(seed: int) -> None:
    image, label = render_case(CONTEXT, seed, 0)
    g, ids = phantom_geometry(CONTEXT, seed, 0), tube_map(CONTEXT, seed, 0)
    d, rm = CONTEXT.context_distance, CONTEXT.marker_r
    assert g.cues.any() and not g.cues.all()
    assert np.array_equal(g.markers, np.rint(g.markers))  # whole voxels
    markers = _marker_mask(g.markers, label.shape, rm)
    # Not touching any tube, rims included; background in the labels.
    assert not (ndimage.binary_dilation(markers, iterations=2) & (ids > 0)).any()
    assert not label[markers].any()
    # Bright ones are brighter than anything else, dark ones as dark as the air outside.
    for kind, level in ((True, CONTEXT.marker_level), (False, CONTEXT.dark_marker_level)):
        inside = image[_marker_mask(g.markers[g.cues == kind], label.shape, rm)].astype(float)
        assert abs(inside.mean() - level) < 4 * CONTEXT.noise_sd / np.sqrt(inside.size)
        assert abs(inside.mean() - image[ids > 0].mean()) > 5 * CONTEXT.noise_sd
    # Each marker lies within D/2 of a thin tube's centreline, so its stretch of tube is long.
    thin_dist = ndimage.distance_transform_edt(~np.isin(ids, g.context_ids))
    for c in g.markers.astype(int):
        assert thin_dist[tuple(c)] <= d / 2


@pytest.mark.parametrize("seed", SEEDS)
def test_every_thin_voxel_sees_one_kind_of_marker(seed: int) -> None:
    """A thin voxel has a marker within D and none of the other kind within 1.5 D; the rest
    of the thin tubes is cut away, in the image as well as the labels."""
    image, label = render_case(CONTEXT, seed, 0)
    g, ids = phantom_geometry(CONTEXT, seed, 0), tube_map(CONTEXT, seed, 0)
    d = CONTEXT.context_distance
    bright, dark = _kind_distances(g, label.shape)
    thin = np.isin(ids, g.context_ids)
    clear = ((bright <= d) & (dark > 1.5 * d)) | ((dark <= d) & (bright > 1.5 * d))
    assert thin.any() and not (thin & ~clear).any()
    # Where a thin tube would have run without a clear cue, the image shows the body.
    thin_tubes = [t for t in g.tubes if t.tube_id in g.context_ids]
    centreline = cKDTree(np.concatenate([t.points for t in thin_tubes]))
    unclear = np.argwhere(~clear)
    inner = centreline.query(unclear)[0] <= thin_tubes[0].radius - 1
    inner &= ids[tuple(unclear.T)] == 0  # not inside another tube (the mid-gut's end)
    gone = tuple(unclear[inner].T)
    assert inner.any()
    assert np.median(image[gone]) < np.median(image[thin]) - 3 * CONTEXT.noise_sd


def test_context_render_does_not_depend_on_slab_depth(tmp_path: Path) -> None:
    cfg = PhantomConfig(shape=(64, 48, 48), context_distance=12.0)
    image, label = render_case(cfg, 1, 2)
    assert (label == 2).any()
    bounds = [(z, min(z + 7, cfg.shape[0])) for z in range(0, cfg.shape[0], 7)]
    parts = [render_case(cfg, 1, 2, z0, z1) for z0, z1 in bounds]
    np.testing.assert_array_equal(image, np.concatenate([p[0] for p in parts]))
    np.testing.assert_array_equal(label, np.concatenate([p[1] for p in parts]))
    write_case(cfg, 1, 2, tmp_path / "image.zarr", tmp_path / "label.zarr", slab=5)
    np.testing.assert_array_equal(open_volume(tmp_path / "image.zarr").read(), image)
    np.testing.assert_array_equal(open_volume(tmp_path / "label.zarr").read(), label)


def test_phantom_command_context(tmp_path: Path) -> None:
    from meunet.cli.main import main

    out = tmp_path / "ctx"
    argv = ["phantom", "--out", str(out), "--cases", "1", "--shape", "64", "48", "48"]
    assert main([*argv, "--context", "12", "--quiet"]) == 0
    spec = yaml.safe_load((out / "dataset.yaml").read_text())
    assert "context_distance 12" in spec["description"]
    cfg = PhantomConfig(shape=(64, 48, 48), context_distance=12.0)
    label = open_volume(out / "case_000" / "label.zarr").read()
    np.testing.assert_array_equal(label, render_case(cfg, 0, 0)[1])
    with pytest.raises(SystemExit):
        main([*argv, "--context", "-1"])


# ----------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("shape", [(16, 96, 96), (128, 31, 96), (128, 96, 8), (128, 96)])
def test_shape_too_small(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="at least 32"):
        PhantomConfig(shape=shape)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least 32"):
        make_phantom_dataset("unused", shape=shape, progress=False)  # type: ignore[arg-type]


@pytest.mark.parametrize(("shape", "least"), [((40, 256, 256), 75), ((36, 128, 128), 39)])
def test_axis_too_thin_for_the_tubes(shape: tuple[int, int, int], least: int) -> None:
    with pytest.raises(ValueError, match=f"too thin .* at least {least} voxels"):
        PhantomConfig(shape=shape)
    # The suggested size renders, over several seeds.
    for seed in range(3):
        phantom_geometry(PhantomConfig(shape=(least, *shape[1:])), seed, 0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"cases": 0}, "at least 1"), ({"seed": -1}, "non-negative"), ({"fmt": "jpeg"}, "jpeg")],
)
def test_bad_dataset_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_phantom_dataset(tmp_path, progress=False, **kwargs)
    assert not (tmp_path / "dataset.yaml").exists()


@pytest.mark.parametrize(("distance", "message"), [(-1.0, ">= 0"), (4.0, "at least 17.0")])
def test_bad_context_distance(distance: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PhantomConfig(context_distance=distance)


def test_bad_slab_range() -> None:
    with pytest.raises(ValueError, match="inside depth 128"):
        render_case(CFG, 0, 0, 100, 200)
    with pytest.raises(ValueError, match="non-negative"):
        render_case(CFG, 0, -1)


def test_big_case_refused_outside_zarr(tmp_path: Path) -> None:
    big = PhantomConfig(shape=(1072, 470, 470))
    with pytest.raises(ValueError, match=r"\.zarr"):
        write_case(big, 0, 0, tmp_path / "image.nii.gz", tmp_path / "label.nii.gz")


# ----------------------------------------------------------------------- slow


@pytest.mark.slow
def test_paper_scale_case_streams_in_bounded_memory(tmp_path: Path) -> None:
    image, label = str(tmp_path / "image.zarr"), str(tmp_path / "label.zarr")
    code = textwrap.dedent(
        f"""
        from meunet.data.phantom import PhantomConfig, write_case
        cfg = PhantomConfig(shape=(1072, 470, 470))
        print(write_case(cfg, 0, 0, {image!r}, {label!r}))
        """
    )
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    assert done.returncode == 0, done.stderr
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB on Linux
    print(f"paper-scale case: {seconds:.1f} s, peak RSS {peak_gib:.2f} GiB, {done.stdout.strip()}")
    assert peak_gib < 2.0
    label = open_volume(tmp_path / "label.zarr")
    assert label.shape == (1072, 470, 470)
    counts = np.bincount(label[500:540].ravel(), minlength=3)
    assert counts[1] > 0
