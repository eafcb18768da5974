"""The dataset spec and ``check``: a valid dataset passes, every bad input is named."""

from __future__ import annotations

import gzip
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from meunet.data.check import check_dataset
from meunet.data.io import write_volume
from meunet.data.spec import load_spec
from meunet.errors import SpecError

SHAPE = (12, 16, 20)


def _make_dataset(root: Path, n: int = 3) -> dict:
    """Cases with two channels and labels holding values {0, 2, 5} (5 merges into class 2)."""
    rng = np.random.default_rng(1)
    cases = {}
    for i in range(n):
        cid = f"c{i}"
        label = _make_label()
        write_volume(
            root / cid / "t1.nii.gz", rng.normal(size=SHAPE).astype(np.float32), spacing=(2, 1, 1)
        )
        write_volume(
            root / cid / "t2.zarr", rng.normal(size=SHAPE).astype(np.float32), spacing=(2, 1, 1)
        )
        write_volume(root / cid / "seg.nrrd", label, spacing=(2, 1, 1))
        cases[cid] = {"image": [f"{cid}/t1.nii.gz", f"{cid}/t2.zarr"], "label": f"{cid}/seg.nrrd"}
    return {
        "name": "toy",
        "classes": ["background", "large", "small"],
        "channels": ["t1", "t2"],
        "label_map": {0: "background", 2: "large", 5: "small"},
        "cases": cases,
        "split": {"train": ["c0", "c1"], "val": ["c2"]},
    }


def _write_spec(root: Path, spec: dict) -> Path:
    path = root / "dataset.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[Path, dict]:
    return tmp_path, _make_dataset(tmp_path)


def test_valid_dataset_passes_with_class_counts(dataset: tuple[Path, dict]) -> None:
    root, raw = dataset
    spec = load_spec(_write_spec(root, raw))
    report = check_dataset(spec, progress=False)
    assert report.ok, report.problems
    assert [s.split for s in report.cases] == ["train", "train", "val"]
    per_case = [4 * 6 * 6, 2 * 2 * 3]
    assert report.cases[0].class_counts == [int(np.prod(SHAPE)) - sum(per_case), *per_case]
    assert report.cases[0].spacing == (2.0, 1.0, 1.0)
    table = report.table()
    assert "c0" in table and "12x16x20" in table and "small voxels" in table


def test_label_map_merges_values(dataset: tuple[Path, dict]) -> None:
    root, raw = dataset
    raw["label_map"] = {0: "background", 2: "small", 5: "small"}
    spec = load_spec(_write_spec(root, raw))
    assert spec.remap_labels(np.array([0, 2, 5, 5])).tolist() == [0, 2, 2, 2]
    with pytest.raises(ValueError, match=r"label values \[3\] are not declared"):
        spec.remap_labels(np.array([0, 3]))
    report = check_dataset(spec, progress=False)
    # "large" is now absent from every training case
    assert [p.message for p in report.problems] == [
        "class 1 ('large') is absent from every training case"
    ]


def _replace(
    case: str, name: str, data: np.ndarray, spacing: tuple = (2, 1, 1)
) -> Callable[[Path, dict], None]:
    def apply(root: Path, raw: dict) -> None:
        write_volume(root / case / name, data, spacing=spacing)

    return apply


def _edit(fn: Callable[[dict], None]) -> Callable[[Path, dict], None]:
    return lambda root, raw: fn(raw)


def _corrupt(root: Path, raw: dict) -> None:
    (root / "c1" / "t1.nii.gz").write_bytes(b"garbage" * 100)


def _nan(root: Path, raw: dict) -> None:
    data = np.ones(SHAPE, np.float32)
    data[3, 4, 5] = np.nan
    data[0, 0, 0] = np.inf
    write_volume(root / "c1" / "t2.zarr", data, spacing=(2, 1, 1))


def _truncate_gz(path: Path) -> None:
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[: len(raw) // 2]))  # the header opens, the data ends early


def _lose_chunk(root: Path, raw: dict) -> None:
    (root / "c1" / "t2.zarr" / "c" / "0" / "0" / "0").unlink()  # one 12x16x20 chunk


def _jpeg_folder(root: Path, raw: dict) -> None:
    (root / "c1" / "seg_slices").mkdir()
    (root / "c1" / "seg_slices" / "z0.jpg").write_bytes(b"")
    raw["cases"]["c1"]["label"] = "c1/seg_slices"


LABEL = np.zeros(SHAPE, np.uint8)
BAD_CASES = {
    "missing file": (_edit(lambda raw: raw["cases"]["c1"].update(label="c1/nope.nii.gz")), "c1", "nope.nii.gz", "file not found", "correct its path"),
    "corrupt file": (_corrupt, "c1", "t1.nii.gz", "corrupt or truncated", "re-export"),
    "channel shape": (_replace("c1", "t2.zarr", np.ones((12, 16, 21), np.float32)), "c1", "t2.zarr", r"channel shape \(12, 16, 21\) differs from image shape \(12, 16, 20\)", "resample or crop"),
    "label shape": (_replace("c2", "seg.nrrd", np.zeros((11, 16, 20), np.uint8)), "c2", "seg.nrrd", r"label shape \(11, 16, 20\) differs", "resample or crop"),
    "spacing": (_replace("c0", "seg.nrrd", LABEL, spacing=(1, 1, 1)), "c0", "seg.nrrd", r"label spacing \(1.0, 1.0, 1.0\) differs from image spacing \(2.0, 1.0, 1.0\)", "'spacing:'"),
    "undeclared labels": (_replace("c2", "seg.nrrd", np.full(SHAPE, 7, np.uint8)), "c2", "seg.nrrd", r"label values \{7\} are not declared \(declared: \{0, 2, 5\}\)", "add them to label_map"),
    "non-integer labels": (_replace("c2", "seg.nrrd", np.full(SHAPE, 0.5, np.float32)), "c2", "seg.nrrd", r"label values \{0.5\} are not declared", "label_map"),
    "nan and inf": (_nan, "c1", "t2.zarr", "image holds 2 NaN or Inf voxels", "replace them"),
    "constant image": (_replace("c0", "t1.nii.gz", np.zeros(SHAPE, np.float32)), "c0", "t1.nii.gz", r"image is constant \(every voxel is 0\)", "re-export"),
    "missing chunk": (_lose_chunk, "c1", "t2.zarr", r"chunk .*t2.zarr/c/0/0/0 \(voxels \[0:12, 0:16, 0:20\]\) is missing", "re-export"),
    "truncated gzip": (lambda root, raw: _truncate_gz(root / "c1" / "t1.nii.gz"), "c1", "t1.nii.gz", "cannot read this nifti file", "re-export"),
    "unreadable format": (_jpeg_folder, "c1", "seg_slices", r"holds no .tif/.tiff or .png slices", "convert it to a format meunet reads"),
}  # fmt: skip


@pytest.mark.parametrize("bad", BAD_CASES, ids=list(BAD_CASES))
def test_bad_input_is_named_with_its_fix(dataset: tuple[Path, dict], bad: str) -> None:
    root, raw = dataset
    damage, case, file, message, fix = BAD_CASES[bad]
    damage(root, raw)
    report = check_dataset(load_spec(_write_spec(root, raw)), progress=False)
    assert not report.ok
    text = "\n".join(map(str, report.problems))
    line = next((str(p) for p in report.problems if p.case == case), None)
    assert line is not None, text
    assert line.startswith(f"case {case}: ") and file in line, line
    assert re.search(message, line), line
    assert fix in line.split("; fix: ")[1], line


def test_every_unreadable_file_is_listed_in_one_run(dataset: tuple[Path, dict]) -> None:
    root, raw = dataset
    _truncate_gz(root / "c0" / "t1.nii.gz")
    _lose_chunk(root, raw)
    (root / "c2" / "t2.zarr" / "c" / "0" / "0" / "0").write_bytes(b"not zstd" * 10)
    write_volume(root / "c2" / "seg.nrrd", np.full(SHAPE, 7, np.uint8), spacing=(2, 1, 1))
    report = check_dataset(load_spec(_write_spec(root, raw)), progress=False)
    found = [(p.case, Path(str(p.file)).relative_to(root).as_posix()) for p in report.problems]
    assert found == [
        ("c0", "c0/t1.nii.gz"),
        ("c1", "c1/t2.zarr"),
        ("c2", "c2/t2.zarr"),
        ("c2", "c2/seg.nrrd"),
    ], "\n".join(map(str, report.problems))
    text = [str(p) for p in report.problems]
    assert "cannot read this nifti file" in text[0]
    assert "is missing" in text[1]
    assert "cannot read this zarr file" in text[2] and "corrupt" in text[2]
    assert "label values {7} are not declared" in text[3]
    assert all("; fix: " in t for t in text)
    assert np.isnan(report.cases[0].ranges[0]).all()  # unknown, not made up


def test_class_absent_from_training_cases(dataset: tuple[Path, dict]) -> None:
    root, raw = dataset
    for cid in ("c0", "c1"):
        label = np.zeros(SHAPE, np.uint8)
        label[2:6, 3:9, 4:10] = 2
        write_volume(root / cid / "seg.nrrd", label, spacing=(2, 1, 1))
    report = check_dataset(load_spec(_write_spec(root, raw)), progress=False)
    assert len(report.problems) == 1
    assert "class 2 ('small') is absent from every training case" in str(report.problems[0])
    assert "dataset.yaml" in str(report.problems[0])


def _spec_error(root: Path, raw: dict) -> str:
    with pytest.raises(SpecError) as info:
        load_spec(_write_spec(root, raw))
    return str(info.value)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r.pop("cases"), "missing required key 'cases'"),
        (lambda r: r.update(classes=["only"]), "at least 2 distinct names"),
        (lambda r: r.update(colour="red"), r"unknown keys \['colour'\]"),
        (
            lambda r: r["split"].update(test=["c9"]),
            "split names case 'c9', which is not under cases",
        ),
        (lambda r: r["split"].update(test=["c0"]), r"cases \['c0'\] appear in more than one split"),
        (lambda r: r["split"].update(holdout=["c0"]), "split 'holdout' unknown"),
        (
            lambda r: r["label_map"].update({7: "tumour"}),
            "sends 7 to 'tumour', which is not in classes",
        ),
        (
            lambda r: r["cases"]["c1"].update(image=["c1/t1.nii.gz"]),
            "case c1: has 1 image channels, other cases have 2",
        ),
        (
            lambda r: r["cases"]["c0"].pop("label"),
            "case c0 is used for training or validation but has no label",
        ),
        (lambda r: r.update(spacing=[1, 0, 1]), "spacing must be three positive numbers"),
        (lambda r: r.update(channels=["a"]), "channels lists 1 names but cases have 2 images"),
        (
            lambda r: r.update(split=["c0", "c1"]),
            r"split must map train/val/test to lists of case ids, e\.g\. \{train: \[c0, c1\]",
        ),
        (
            lambda r: r.update(folds=3),
            r"folds must list the case ids of each fold, e\.g\. \[\[c0, c1\], \[c2, c3\]\], got 3",
        ),
        (
            lambda r: r.update(folds=[["c0"], "c1"]),
            r"fold 1 must be a list of case ids, e\.g\. \[c1\]",
        ),
        (
            lambda r: r["split"].update(train="c1"),
            r"split 'train' must be a list of case ids, e\.g\. \[c1\] or \[c0, c1\], got 'c1'",
        ),
        (
            lambda r: r["label_map"].update({2: True}),
            "label_map target True for 2 is neither a class name nor an index",
        ),
        (lambda r: r["label_map"].update({True: "large"}), "label_map key True is not a number"),
    ],
)
def test_spec_structure_errors(tmp_path: Path, edit: Callable[[dict], None], message: str) -> None:
    raw = {
        "classes": ["background", "large", "small"],
        "label_map": {0: 0, 2: "large", 5: "small"},
        "cases": {
            c: {"image": [f"{c}/a.nii", f"{c}/b.nii"], "label": f"{c}/l.nii"}
            for c in ("c0", "c1", "c2")
        },
        "split": {"train": ["c0", "c1"], "val": ["c2"]},
    }
    edit(raw)
    assert re.search(message, _spec_error(tmp_path, raw))


def test_duplicate_case_id_is_refused(tmp_path: Path) -> None:
    # PyYAML would keep the last c0 and silently drop the first case
    (tmp_path / "dataset.yaml").write_text(
        "classes: [background, fg]\n"
        "cases:\n"
        "  c0: {image: a.nii, label: l.nii}\n"
        "  c1: {image: b.nii, label: l.nii}\n"
        "  c0: {image: c.nii, label: l.nii}\n"
        "split: {train: [c0, c1]}\n"
    )
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path / "dataset.yaml")
    message = str(info.value)
    assert message.startswith(
        f"{tmp_path / 'dataset.yaml'}: key 'c0' appears twice (lines 3 and 5)"
    )
    assert "rename or remove one of them" in message


def test_yaml_merge_keys_may_override(tmp_path: Path) -> None:
    (tmp_path / "dataset.yaml").write_text(
        "classes: [background, fg]\n"
        "cases:\n"
        "  c0: &base {image: a.nii, label: l.nii}\n"
        "  c1: {<<: *base, image: b.nii}\n"
    )
    spec = load_spec(tmp_path / "dataset.yaml")
    assert spec.cases["c1"].images == (tmp_path / "b.nii",)
    assert spec.cases["c1"].label == tmp_path / "l.nii"


def test_spec_not_found_and_not_yaml(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="dataset spec not found"):
        load_spec(tmp_path / "none.yaml")
    (tmp_path / "bad.yaml").write_text("classes: [a, b\ncases: {")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(tmp_path / "bad.yaml")


def test_spacing_override_resolves_mismatch(dataset: tuple[Path, dict]) -> None:
    root, raw = dataset
    write_volume(root / "c0" / "seg.nrrd", _make_label(), spacing=(1, 1, 1))
    raw["spacing"] = [2.95, 2.95, 2.95]
    report = check_dataset(load_spec(_write_spec(root, raw)), progress=False)
    assert report.ok, report.problems
    assert report.cases[0].spacing == (2.95, 2.95, 2.95)


def _png_slices(folder: Path, data: np.ndarray) -> None:
    folder.mkdir()
    for z, page in enumerate(data):
        Image.fromarray(page).save(folder / f"z{z}.png")


def test_png_label_folder_is_checked_and_its_unknown_spacing_warned(
    dataset: tuple[Path, dict],
) -> None:
    root, raw = dataset
    _png_slices(root / "c0" / "seg_png", _make_label())
    raw["cases"]["c0"]["label"] = "c0/seg_png"
    report = check_dataset(load_spec(_write_spec(root, raw)), progress=False)
    assert report.ok, report.problems  # an assumed 1, 1, 1 is no spacing mismatch
    assert report.cases[0].class_counts == report.cases[1].class_counts
    (warning,) = report.warnings
    assert "case c0:" in str(warning) and "seg_png store no voxel size" in str(warning)
    assert "fix: set 'spacing: [z, y, x]' in dataset.yaml" in str(warning)


def test_unknown_spacing_is_shown_and_warned_once_until_the_spec_sets_it(tmp_path: Path) -> None:
    raw = _make_dataset(tmp_path)
    for cid, case in raw["cases"].items():
        np.save(tmp_path / cid / "t.npy", np.random.default_rng(0).normal(size=SHAPE))
        _png_slices(tmp_path / cid / "seg", _make_label())
        case.update(image=[f"{cid}/t.npy", f"{cid}/t.npy"], label=f"{cid}/seg")
    report = check_dataset(load_spec(_write_spec(tmp_path, raw)), progress=False)
    assert report.ok, report.problems
    (warning,) = report.warnings
    assert "c0/t.npy and 8 other file(s) store no voxel size" in str(warning)
    assert "unknown (1, 1, 1)" in report.table()
    raw["spacing"] = [50, 4.6, 4.6]
    report = check_dataset(load_spec(_write_spec(tmp_path, raw)), progress=False)
    assert report.ok and not report.warnings
    assert "50, 4.6, 4.6" in report.table() and "unknown" not in report.table()


def _make_label() -> np.ndarray:
    label = np.zeros(SHAPE, np.uint8)
    label[2:6, 3:9, 4:10] = 2
    label[7:9, 10:12, 12:15] = 5
    return label


BRATS_COUNTS = {  # voxels per class (background, edema, tumour core), counted with nibabel directly
    "pat0003": [8754072, 148264, 25664],
    "pat0004": [8807326, 45203, 75471],
    "pat0005": [8847318, 35416, 45266],
    "pat0006": [8710620, 109935, 107445],
}


def test_brats4_example_spec_passes(brats4_dir: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    spec = load_spec(repo / "examples" / "brats4.yaml")
    assert spec.root == brats4_dir.resolve()
    report = check_dataset(spec, progress=False)
    assert report.ok, report.problems
    assert {s.id: s.class_counts for s in report.cases} == BRATS_COUNTS
    assert all(s.shape == (155, 240, 240) and s.spacing == (1.0, 1.0, 1.0) for s in report.cases)


def test_relative_paths_in_a_spec_follow_the_spec_not_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = _make_dataset(tmp_path / "data")
    raw["root"] = "../data"  # relative to specs/, where the file is
    (tmp_path / "specs").mkdir()
    spec_path = _write_spec(tmp_path / "specs", raw)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    spec = load_spec(Path("..") / "specs" / "dataset.yaml")
    assert spec.root == (tmp_path / "data").resolve()
    assert spec.cases["c0"].label == (tmp_path / "data" / "c0" / "seg.nrrd").resolve()
    assert check_dataset(spec, progress=False).ok
    # a root given as an argument (meunet check --root) is taken from the working directory
    monkeypatch.chdir(tmp_path)
    assert load_spec(spec_path, root="data").root == (tmp_path / "data").resolve()


def test_brats4_example_spec_works_from_any_directory(
    brats4_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(tmp_path)
    spec = load_spec(os.path.relpath(repo / "examples" / "brats4.yaml"))
    assert spec.root == brats4_dir.resolve()
    assert all(p.is_file() for c in spec.cases.values() for p in (*c.images, c.label))
