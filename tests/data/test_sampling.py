"""Patch sampling: grid arithmetic, roulette, counts and crops against hand-computed values.

The synthetic dataset has two cases with 2 channels, P = 16 (step 8):

- ``big``, shape (40, 24, 24): grid z 0, 8, 16, 24 and y, x 0, 8 -> 16 candidates.
  Label value 5 (class 1) fills [2:6, 2:6, 2:6] (64 voxels, candidate (0, 0, 0) only);
  value 7 (class 2) fills [30:34, 18:22, 18:22] (64 voxels): candidate (24, 8, 8)
  holds all of it (background 1 - 64/4096 = 0.984), candidate (16, 8, 8) the
  slices 30, 31 only (32 voxels: background 0.992, >= 0.99 so "background").
- ``small``, shape (20, 24, 24): grid z 0, 8 (8 + 16 >= 20) and y, x 0, 8 -> 8 candidates.
  Class 1 fills [12:20, 16:24, 16:24] (512 voxels): candidate (8, 8, 8) holds
  all of it, 12 real slices and 4 of padding: background 1 - 512/4096 = 0.875
  (padding counts as background; over real voxels only it would be 0.833);
  candidate (0, 8, 8) holds z 12:16 (256 voxels): background 0.9375.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch.utils.data import DataLoader

from meunet.data import patches, sampling
from meunet.data.io import open_volume, write_volume
from meunet.data.patches import PatchRef, read_padded
from meunet.data.phantom import make_phantom_dataset
from meunet.data.sampling import PatchSampler, SamplerConfig, channel_stats, grid_positions
from meunet.data.spec import DatasetSpec, load_spec
from meunet.errors import SettingError, SpecError, VolumeError

P = 16
SHAPES = {"big": (40, 24, 24), "small": (20, 24, 24)}
VALUES = {0: 0, 5: 1, 7: 2}  # label-file value -> class


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (10, [0]),  # shorter than P: one padded window
        (16, [0]),  # exactly P
        (17, [0, 8]),  # one voxel over: 8 + 16 >= 17
        (32, [0, 8, 16]),  # 16 + 16 >= 32
        (33, [0, 8, 16, 24]),  # 24 + 16 >= 33
    ],
)
def test_grid_positions(n: int, expected: list[int]) -> None:
    assert grid_positions(n, P) == expected


def _labels() -> dict[str, np.ndarray]:
    big = np.zeros(SHAPES["big"], np.uint8)
    big[2:6, 2:6, 2:6] = 5
    big[30:34, 18:22, 18:22] = 7
    small = np.zeros(SHAPES["small"], np.uint8)
    small[12:20, 16:24, 16:24] = 5
    return {"big": big, "small": small}


def _images(seed: int = 0) -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {
        cid: [
            rng.integers(100, 4000, shape).astype(np.uint16),
            (rng.normal(50.0, 7.0, shape)).astype(np.float32),
        ]
        for cid, shape in SHAPES.items()
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[DatasetSpec, Path]:
    root = tmp_path_factory.mktemp("sampling")
    labels, images = _labels(), _images()
    cases = {}
    for cid in SHAPES:
        write_volume(root / cid / "label.zarr", labels[cid])
        for ch, img in enumerate(images[cid]):
            write_volume(root / cid / f"ch{ch}.npy", img)
        rng = np.random.default_rng(len(cid))
        for b in range(2):  # two "stage-1 predictions" per case
            write_volume(
                root / cid / f"pred{b}.npy", rng.integers(0, 3, SHAPES[cid]).astype(np.uint8)
            )
        cases[cid] = {"image": [f"{cid}/ch0.npy", f"{cid}/ch1.npy"], "label": f"{cid}/label.zarr"}
    write_volume(root / "bad_pred.npy", np.zeros((40, 24, 23), np.uint8))
    write_volume(root / "nolabel.npy", np.zeros((8, 8, 8), np.uint16))
    cases["nolabel"] = {"image": ["nolabel.npy", "nolabel.npy"]}
    raw = {
        "name": "tiny",
        "classes": ["background", "a", "b"],
        "channels": ["c0", "c1"],
        "label_map": {k: ["background", "a", "b"][v] for k, v in VALUES.items()},
        "cases": cases,
        "split": {"train": list(SHAPES), "test": ["nolabel"]},
    }
    (root / "dataset.yaml").write_text(yaml.safe_dump(raw))
    return load_spec(root / "dataset.yaml"), root


def _sampler(data: tuple[DatasetSpec, Path], **kwargs: object) -> PatchSampler:
    spec, root = data
    extra = kwargs.pop("extra", None)
    if extra is True:
        extra = {cid: [root / cid / "pred0.npy", root / cid / "pred1.npy"] for cid in SHAPES}
    cfg = SamplerConfig(patch=P, **kwargs)  # type: ignore[arg-type]
    return PatchSampler(spec, list(SHAPES), cfg, extra=extra)  # type: ignore[arg-type]


def _padded_truth(margin: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Normalised images and class labels of each case, zero-padded by ``margin`` all round."""
    out = {}
    for cid, img in _images().items():
        norm = np.stack(
            [
                (c.astype(np.float64) - c.mean(dtype=np.float64)) / c.std(dtype=np.float64)
                for c in img
            ]
        )
        lab = np.vectorize(VALUES.get)(_labels()[cid])
        m = ((margin, margin),) * 3
        out[cid] = (np.pad(norm, ((0, 0), *m)), np.pad(lab, m))
    return out


def _crop(arr: np.ndarray, start: tuple[int, ...], size: int, margin: int) -> np.ndarray:
    z, y, x = (s + margin for s in start)
    return arr[..., z : z + size, y : y + size, x : x + size]


def test_candidates_and_background(data: tuple[DatasetSpec, Path]) -> None:
    s = _sampler(data)
    refs = s.candidates()
    assert s.num_candidates == len(refs) == 16 + 8
    assert refs[0] == PatchRef("big", (0, 0, 0))
    assert refs[15] == PatchRef("big", (24, 8, 8))
    assert refs[16:18] == [PatchRef("small", (0, 0, 0)), PatchRef("small", (0, 0, 8))]
    bg = dict(zip(refs, s.background_fractions(), strict=True))
    assert bg[PatchRef("big", (0, 0, 0))] == pytest.approx(1 - 64 / 4096)
    assert bg[PatchRef("big", (24, 8, 8))] == pytest.approx(1 - 64 / 4096)
    assert bg[PatchRef("big", (16, 8, 8))] == pytest.approx(1 - 32 / 4096)
    assert bg[PatchRef("small", (8, 8, 8))] == pytest.approx(1 - 512 / 4096)
    assert bg[PatchRef("small", (0, 8, 8))] == pytest.approx(1 - 256 / 4096)
    others = set(refs) - {
        PatchRef("big", (0, 0, 0)),
        PatchRef("big", (16, 8, 8)),
        PatchRef("big", (24, 8, 8)),
        PatchRef("small", (8, 8, 8)),
        PatchRef("small", (0, 8, 8)),
    }
    assert all(bg[r] == 1.0 for r in others)
    # brute force: padding is background
    truth = _padded_truth(P)
    for ref, frac in bg.items():
        lab = _crop(truth[ref.case][1], ref.start, P, P)
        assert frac == pytest.approx((lab == 0).mean())


def test_roulette(data: tuple[DatasetSpec, Path]) -> None:
    foreground = {
        PatchRef("big", (0, 0, 0)),
        PatchRef("big", (24, 8, 8)),
        PatchRef("small", (8, 8, 8)),
        PatchRef("small", (0, 8, 8)),
    }
    s0 = _sampler(data, bg_keep=0.0)
    for e in range(3):
        refs = s0.epoch(e)
        assert len(refs) == len(set(refs)) == 4
        assert set(refs) == foreground
    s1 = _sampler(data, bg_keep=1.0)
    assert sorted(s1.epoch(0), key=str) == sorted(s1.candidates(), key=str)
    # a lower threshold makes more candidates background
    s2 = _sampler(data, bg_keep=0.0, bg_threshold=0.9)
    assert set(s2.epoch(0)) == {PatchRef("small", (8, 8, 8))}


def test_epoch_deterministic(data: tuple[DatasetSpec, Path]) -> None:
    s = _sampler(data, bg_keep=0.5)
    a, b = s.epoch(3), s.epoch(3)
    assert a == b
    assert a == _sampler(data, bg_keep=0.5).epoch(3)  # a new sampler, same seed
    epochs = [s.epoch(e) for e in range(6)]
    assert len({tuple(e) for e in epochs}) == 6  # shuffle and roulette change with the epoch
    assert len({len(e) for e in epochs}) > 1  # the roulette does
    capped = _sampler(data, bg_keep=0.5, max_patches=3)
    assert capped.epoch(3) == a[:3]
    with pytest.raises(ValueError, match="epoch"):
        s.epoch(-1)


def test_class_counts(data: tuple[DatasetSpec, Path]) -> None:
    s = _sampler(data, bg_keep=1.0)
    refs = s.epoch(0)
    want = np.zeros(3, np.int64)
    for ref in refs:
        z, y, x = ref.start
        lab = np.vectorize(VALUES.get)(_labels()[ref.case][z : z + P, y : y + P, x : x + P])
        want += np.bincount(lab.ravel(), minlength=3)
    got = s.class_counts(refs)
    assert got.dtype == np.int64 and got.tolist() == want.tolist()
    # only real voxels count: a padded candidate holds fewer than P^3
    ref = PatchRef("small", (8, 8, 8))
    assert s.class_counts([ref]).tolist() == [12 * 16 * 16 - 512, 512, 0]
    with pytest.raises(ValueError, match="not a candidate"):
        s.class_counts([PatchRef("small", (3, 0, 0))])


def test_normalisation(data: tuple[DatasetSpec, Path]) -> None:
    s = _sampler(data)
    for cid, img in _images().items():
        for (mean, std), c in zip(s.normalisation[cid], img, strict=True):
            assert mean == pytest.approx(c.astype(np.float64).mean(), rel=1e-12)
            assert std == pytest.approx(c.astype(np.float64).std(), rel=1e-10)


def test_channel_stats_edge_cases(tmp_path: Path) -> None:
    write_volume(tmp_path / "flat.npy", np.full((4, 5, 6), 7, np.uint16))
    assert channel_stats(open_volume(tmp_path / "flat.npy")) == (7.0, 1.0)  # std 0 -> 1
    big = np.random.default_rng(1).normal(1e4, 0.5, (50, 300, 300)).astype(np.float32)
    write_volume(tmp_path / "big.npy", big)  # two slabs of <= 32 MiB (float64), merged
    mean, std = channel_stats(open_volume(tmp_path / "big.npy"))
    assert mean == pytest.approx(big.mean(dtype=np.float64), rel=1e-13)
    assert std == pytest.approx(big.std(dtype=np.float64), rel=1e-9)
    bad = np.zeros((4, 5, 6), np.float32)
    bad[1, 2, 3] = np.nan
    write_volume(tmp_path / "nan.npy", bad)
    with pytest.raises(VolumeError, match=r"nan\.npy.*NaN"):
        channel_stats(open_volume(tmp_path / "nan.npy"))


def test_crops_equal_padded_slices(data: tuple[DatasetSpec, Path]) -> None:
    s = _sampler(data, bg_keep=1.0)
    refs = s.candidates()
    ds = s.dataset(refs)
    assert len(ds) == len(refs)
    truth = _padded_truth(P)
    for i, ref in enumerate(refs):
        item = ds[i]
        assert set(item) == {"image", "label"}
        assert item["image"].dtype == torch.float32 and item["image"].shape == (2, P, P, P)
        assert item["label"].dtype == torch.int64 and item["label"].shape == (P, P, P)
        img, lab = truth[ref.case]
        np.testing.assert_allclose(item["image"].numpy(), _crop(img, ref.start, P, P), atol=1e-5)
        np.testing.assert_array_equal(item["label"].numpy(), _crop(lab, ref.start, P, P))
    # "small" (8, 8, 8) runs past the end along z: slices 20..24 are padding
    item = ds[refs.index(PatchRef("small", (8, 8, 8)))]
    assert (item["image"][:, 12:] == 0).all() and (item["label"][12:] == 0).all()
    assert (item["image"][:, :12] != 0).all()


def test_expanded(data: tuple[DatasetSpec, Path]) -> None:
    e = 32
    s = _sampler(data, bg_keep=1.0, expanded=e)
    truth = _padded_truth(e)
    corner, far = PatchRef("big", (0, 0, 0)), PatchRef("big", (24, 8, 8))
    ds = s.dataset([corner, far])
    item = ds[0]
    assert item["expanded_image"].shape == (2, e, e, e)
    assert item["expanded_label"].shape == (e // 2,) * 3
    assert item["expanded_label"].dtype == torch.int64
    img, lab = truth["big"]
    # corner: expanded corner (-8, -8, -8); 8 voxels of padding before the data on each axis
    x = item["expanded_image"].numpy()
    assert (x[:, :8] == 0).all() and (x[:, :, :8] == 0).all() and (x[:, :, :, :8] == 0).all()
    np.testing.assert_allclose(
        x[:, 8:, 8:, 8:], img[:, e : e + 24, e : e + 24, e : e + 24], atol=1e-5
    )
    # the standard patch is the centre of the expanded one
    np.testing.assert_array_equal(x[:, 8:24, 8:24, 8:24], item["image"].numpy())
    full = _crop(lab, (-8, -8, -8), e, e)
    np.testing.assert_array_equal(item["expanded_label"].numpy(), full[::2, ::2, ::2])
    # item j of expanded_label is voxel 2j - 8: the class-1 cube [2:6]^3 shows as [5:7]^3
    assert (item["expanded_label"][5:7, 5:7, 5:7] == 1).all()
    assert (item["expanded_label"] == 1).sum() == 8
    # far end: corner (16, 0, 0), z 40..48 and y, x 24..32 are padding
    item = ds[1]
    x = item["expanded_image"].numpy()
    np.testing.assert_allclose(x, _crop(img, (16, 0, 0), e, e), atol=1e-5)
    assert (x[:, 24:] == 0).all() and (x[:, :, 24:] == 0).all() and (x[:, :24, :24, :24] != 0).all()
    np.testing.assert_array_equal(
        item["expanded_label"].numpy(), _crop(lab, (16, 0, 0), e, e)[::2, ::2, ::2]
    )


def test_extra_onehot(data: tuple[DatasetSpec, Path]) -> None:
    root = data[1]
    s = _sampler(data, bg_keep=1.0, expanded=24, extra=True)
    ref = PatchRef("small", (8, 8, 8))
    item = s.dataset([ref])[0]
    assert item["extra"].shape == (2 * 3, P, P, P) and item["extra"].dtype == torch.float32
    assert item["expanded_extra"].shape == (2 * 3, 24, 24, 24)
    for b in range(2):
        pred = np.load(root / "small" / f"pred{b}.npy")
        crop = np.full((P, P, P), -1)
        crop[:12] = pred[8:20, 8:24, 8:24]  # z 20..24 is padding
        for c in range(3):
            np.testing.assert_array_equal(item["extra"][b * 3 + c].numpy(), crop == c)
        big = np.full((24, 24, 24), -1)  # expanded corner (4, 4, 4): z 20..28, y, x 24..28 pad
        big[:16, :20, :20] = pred[4:20, 4:24, 4:24]
        for c in range(3):
            np.testing.assert_array_equal(item["expanded_extra"][b * 3 + c].numpy(), big == c)
    assert (item["extra"][:, 12:] == 0).all()  # padding: all-zero one-hot
    assert (item["extra"][:, :12].sum(0) == 2).all()  # one per branch inside


def test_dataloader_workers(data: tuple[DatasetSpec, Path]) -> None:
    s = _sampler(data, bg_keep=0.5, expanded=24, extra=True)
    ds = s.dataset(s.epoch(1)[:6])
    ds[0]  # opens volumes in this process; workers must not reuse them
    clone = pickle.loads(pickle.dumps(ds))
    torch.testing.assert_close(clone[1], ds[1])
    serial = list(DataLoader(ds, batch_size=2, num_workers=0))
    parallel = list(DataLoader(ds, batch_size=2, num_workers=2))
    assert len(serial) == len(parallel) == 3
    for a, b in zip(serial, parallel, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key


def test_reads_only_crops(data: tuple[DatasetSpec, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Labels are streamed in slabs of depth P/2 and patches read the in-bounds part only."""
    reads: list[tuple[str, tuple[int, ...]]] = []
    real_open = sampling.open_volume

    def recording_open(path: str) -> object:
        vol = real_open(path)
        inner = vol.read_crop

        def read_crop(slices: tuple[slice, slice, slice]) -> np.ndarray:
            reads.append((str(path), tuple(s.stop - s.start for s in slices)))
            return inner(slices)

        vol.read_crop = read_crop
        return vol

    monkeypatch.setattr(sampling, "open_volume", recording_open)
    monkeypatch.setattr(patches, "open_volume", recording_open)
    s = _sampler(data, bg_keep=1.0)
    label_reads = [shape for path, shape in reads if path.endswith("label.zarr")]
    assert label_reads and all(shape[0] <= P // 2 for shape in label_reads)
    assert len(label_reads) == 40 // 8 + 20 // 8 + 1  # one pass over each label
    reads.clear()
    s.dataset([PatchRef("small", (8, 8, 8))])[0]
    assert {shape for _, shape in reads} == {(12, 16, 16)}
    assert read_padded(real_open(data[1] / "small" / "ch0.npy"), (40, 0, 0), P) is None


def test_phantom_foreground(tmp_path: Path) -> None:
    path = make_phantom_dataset(tmp_path, cases=2, shape=(64, 48, 48), seed=0, progress=False)
    spec = load_spec(path)
    cfg = SamplerConfig(patch=16, bg_keep=0.0)
    s = PatchSampler(spec, list(spec.cases), cfg, seed=1)
    refs = s.epoch(0)
    assert 0 < len(refs) < s.num_candidates
    assert {r.case for r in refs} == set(spec.cases)
    ds = s.dataset(refs)
    counts = np.zeros(spec.num_classes, np.int64)
    for i in range(len(ds)):
        lab = ds[i]["label"]
        assert (lab > 0).float().mean() > 1 - cfg.bg_threshold
        counts += np.bincount(lab.numpy().ravel(), minlength=spec.num_classes)
    # patches are inside the volume (64 and 48 are multiples of 8 and fit the grid)
    assert s.class_counts(refs).tolist() == counts.tolist()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"patch": 17}, "odd.*use 18"),
        ({"patch": 8}, "at least 16"),
        ({"patch": 1024}, "at most 512"),
        ({"patch": 16, "expanded": 15}, "expanded side 15"),
        ({"patch": 32, "expanded": 16}, "at least the patch side"),
        ({"bg_keep": 1.5}, "bg_keep"),
        ({"bg_threshold": 0.0}, "bg_threshold"),
        ({"max_patches": -1}, "max_patches"),
    ],
)
def test_bad_config(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SamplerConfig(**kwargs)  # type: ignore[arg-type]


def test_a_patch_larger_than_every_volume_names_the_setting(
    data: tuple[DatasetSpec, Path],
) -> None:
    # each case gives one candidate, nearly all padding, and the roulette keeps none
    spec, _ = data
    s = PatchSampler(spec, list(SHAPES), SamplerConfig(patch=64, bg_keep=0.0))
    with pytest.raises(SettingError) as info:
        s.first_epoch_class_counts()
    assert str(info.value) == (
        "no training patch: each of the 2 candidate patches is at least 0.99 background "
        "(padding counts) and the roulette, keeping such a patch with probability bg_keep = 0, "
        "kept none: the patch 64^3 is larger than every training volume along an axis "
        "(big (40, 24, 24), small (20, 24, 24)); lower the patch to at most 40x24x24 "
        "(--set sampler.patch=[40,24,24]), or use patch: auto"
    )
    s = _sampler(data, bg_keep=0.0, bg_threshold=0.5)  # patches fit, but all count as background
    with pytest.raises(SettingError, match="kept none; raise bg_keep, or lower the patch side"):
        s.first_epoch_class_counts()
    assert _sampler(data).first_epoch_class_counts().sum() > 0


def test_bad_input(data: tuple[DatasetSpec, Path]) -> None:
    spec, root = data
    cfg = SamplerConfig(patch=P)
    with pytest.raises(ValueError, match="no cases"):
        PatchSampler(spec, [], cfg)
    with pytest.raises(ValueError, match=r"'nope'.*not in dataset\.yaml"):
        PatchSampler(spec, ["big", "nope"], cfg)
    with pytest.raises(SpecError, match="case nolabel has no label"):
        PatchSampler(spec, ["big", "nolabel"], cfg)
    with pytest.raises(VolumeError, match=r"bad_pred.npy.*\(40, 24, 23\).*case big"):
        PatchSampler(spec, ["big"], cfg, extra={"big": [root / "bad_pred.npy"]})
    with pytest.raises(ValueError, match="none for case small"):
        PatchSampler(spec, ["big", "small"], cfg, extra={"big": [root / "big" / "pred0.npy"]})
    s = PatchSampler(spec, ["big"], cfg)
    with pytest.raises(ValueError, match="small"):
        s.dataset([PatchRef("small", (0, 0, 0))])
