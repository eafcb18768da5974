"""Per-axis patch sizes: parsing, the spacing-aware default (``patch: auto``), thin volumes in ``check``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from meunet.data.check import check_dataset, training_sizes
from meunet.data.patch_size import (
    auto_patch,
    compact,
    dataset_patch,
    fitting_patch,
    format_patch,
    parse_patch,
    patch_shape,
    thin_axes,
    thin_message,
)
from meunet.data.spec import load_spec
from meunet.errors import SettingError
from meunet.training.config import TrainConfig

FLY_SHAPE = (20, 512, 512)  # a serial-section EM stack: 20 sections of 512 x 512
FLY_SPACING = (50.0, 4.6, 4.6)  # nm: about 11:1 anisotropy


def fly_dataset(root: Path, shape: tuple[int, int, int] = FLY_SHAPE, cases: int = 3) -> Path:
    """``cases`` thin anisotropic volumes (NumPy, 3 classes) and a dataset.yaml giving their spacing."""
    rng = np.random.default_rng(0)
    entries = {}
    for i in range(cases):
        image = rng.normal(size=shape).astype(np.float32)
        label = np.zeros(shape, np.uint8)
        label[:, shape[1] // 4 : shape[1] // 2, shape[2] // 4 : shape[2] // 2] = 1
        label[shape[0] // 2 :, shape[1] // 2 :, shape[2] // 2 :] = 2
        image += 2.0 * label
        np.save(root / f"em{i}.npy", image)
        np.save(root / f"em{i}_seg.npy", label)
        entries[f"em{i}"] = {"image": f"em{i}.npy", "label": f"em{i}_seg.npy"}
    ids = list(entries)
    spec = {
        "name": "fly",
        "classes": ["background", "membrane", "mito"],
        "channels": ["em"],
        "spacing": list(FLY_SPACING),
        "cases": entries,
        "split": {"train": ids[:-2] or ids[:1], "val": ids[-2:-1], "test": ids[-1:]},
    }
    path = root / "dataset.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        (64, 64),
        ([16, 64, 64], (16, 64, 64)),
        ((32, 32, 32), 32),  # a cube is written as its side
        ("48", 48),
        ("16,64,64", (16, 64, 64)),
        ("[16, 64, 64]", (16, 64, 64)),
        ("16x64x64", (16, 64, 64)),
        (["16", "64", "64"], (16, 64, 64)),  # command-line words
        ([96], 96),
        (64.0, 64),
    ],
)
def test_sizes_parse_to_a_side_or_three(value: object, parsed: object) -> None:
    assert parse_patch(value) == parsed


@pytest.mark.parametrize("value", ["abc", [16, 64], "16,64", [1.5, 2, 3], True, None, "auto"])
def test_bad_sizes_are_refused_naming_the_setting(value: object) -> None:
    with pytest.raises(SettingError, match=r"^infer_patch: "):
        parse_patch(value, "infer_patch")


def test_auto_is_a_word_only_where_allowed() -> None:
    assert parse_patch("auto", allow_auto=True) == "auto:64"
    assert parse_patch("AUTO:96", allow_auto=True) == "auto:96"
    with pytest.raises(SettingError, match="auto:N with N >= 16"):
        parse_patch("auto:8", allow_auto=True)


def test_shape_helpers() -> None:
    assert patch_shape(64) == (64, 64, 64) and patch_shape((16, 64, 64)) == (16, 64, 64)
    assert compact([16, 16, 16]) == 16 and compact((16, 32, 32)) == (16, 32, 32)
    assert format_patch(64) == "64^3" and format_patch((16, 64, 64)) == "16x64x64"
    assert thin_axes(FLY_SHAPE, 64) == [("z", 20, 64)]
    assert thin_axes((20, 40, 512), (32, 64, 64)) == [("z", 20, 32), ("y", 40, 64)]
    assert thin_axes(FLY_SHAPE, (16, 64, 64)) == []
    assert fitting_patch([FLY_SHAPE], 64) == (16, 64, 64)
    assert fitting_patch([(8, 512, 512)], 64) == (16, 64, 64)  # never below one divisor
    assert fitting_patch([(100, 40, 512)], 64, divisor=8) == (64, 40, 64)


def test_the_default_keeps_the_extent_isotropic_within_the_budget() -> None:
    # isotropic voxels: the configured cube itself
    assert auto_patch((1, 1, 1), [(200, 200, 200)]).patch == 64
    assert auto_patch((1, 1, 1), [(300, 300, 300)], cube=96).patch == 96
    # the fly stack: a thin z patch, wide in y and x, the same voxels as 64^3
    fly = auto_patch(FLY_SPACING, [FLY_SHAPE])
    assert fly.patch == (16, 128, 128) and not fly.notes
    assert np.prod(patch_shape(fly.patch)) <= 64**3
    z, y, x = fly.extent
    assert z == 800 and y == x == pytest.approx(588.8)  # within 1.4:1, not 11:1
    # every side a multiple of the divisor, within the budget, whatever the spacing
    for spacing in [(3.0, 1.0, 1.0), (1.0, 0.5, 0.5), (0.7, 0.7, 2.0), (5, 1, 1)]:
        for divisor in (8, 16):
            sides = patch_shape(auto_patch(spacing, [(400, 400, 400)], 80, divisor).patch)
            assert all(s % divisor == 0 and s >= 16 for s in sides)
            assert np.prod(sides) <= 80**3


def test_the_default_stays_within_the_volumes_and_says_when_it_cannot() -> None:
    # no axis larger than the thinnest volume, rounded down to the divisor
    assert patch_shape(auto_patch((1, 1, 1), [(40, 300, 300)]).patch)[0] == 32
    # a volume thinner than the smallest patch side: that side anyway, and a note naming the axis
    thin = auto_patch((1, 1, 1), [(10, 300, 300), (30, 300, 300)])
    assert patch_shape(thin.patch)[0] == 16
    (note,) = thin.notes
    assert note.startswith("axis z: the thinnest volume has 10 voxels, fewer than")


def test_the_default_reads_the_datasets_spacing_and_shapes(tmp_path: Path) -> None:
    spec = load_spec(fly_dataset(tmp_path, cases=3))
    choice = dataset_patch(spec)
    assert choice.patch == (16, 128, 128) and choice.spacing == FLY_SPACING
    assert "16x128x128" in choice.describe()


def test_check_warns_of_a_case_thinner_than_the_patch(tmp_path: Path) -> None:
    spec = load_spec(fly_dataset(tmp_path, cases=3))
    report = check_dataset(spec, progress=False, sizes=training_sizes(TrainConfig()))
    assert report.ok  # a warning, not a problem
    thin = [w for w in report.warnings if "thinner" in w.message]
    assert [w.case for w in thin] == ["em0", "em1", "em2"]
    text = str(thin[0])
    assert text.startswith("case em0: 20x512x512 is thinner than the patch 64^3 along z (20 < 64)")
    assert "the expanded patch 96^3 along z (20 < 96)" in text
    assert "sampler.patch: [16, 64, 64]" in text
    # a per-axis patch that fits: no warning about it; its expanded patch (32 deep) is named
    sizes = training_sizes(TrainConfig(patch=[16, 64, 64]))
    assert sizes == {"patch": (16, 64, 64), "expanded patch": (32, 96, 96)}
    (only,) = [w for w in check_dataset(spec, False, sizes).warnings if w.case == "em0"]
    assert "the expanded patch 32x96x96 along z (20 < 32)" in only.message
    assert "than the patch " not in only.message
    fitted = training_sizes(TrainConfig(model="unet", patch=[16, 64, 64]))
    assert not [w for w in check_dataset(spec, False, fitted).warnings if "thinner" in w.message]


def test_thin_message_names_cases_axes_and_a_fitting_patch() -> None:
    message = thin_message({"em0": FLY_SHAPE, "ok": (64, 64, 64)}, 32, "patch")
    assert message is not None
    assert message.startswith(
        "patch 32^3 is larger than 1 volume(s) along an axis (em0 20x512x512: z 20 < 32)"
    )
    assert "a per-axis patch that fits is 16x32x32 (--set sampler.patch=[16,32,32])" in message
    assert thin_message({"ok": (64, 64, 64)}, 32) is None


def test_check_command_compares_the_configs_patch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from meunet.cli.main import main

    spec = str(fly_dataset(tmp_path, (20, 64, 64), cases=3))
    assert main(["check", spec, "--quiet"]) == 0  # warnings do not fail the check
    err = capsys.readouterr().err
    assert "warning: case em0: 20x64x64 is thinner than the patch 64^3 along z (20 < 64)" in err
    fitted = ["--set", "sampler.patch=[16,64,64]", "--set", "model.name=unet"]
    assert main(["check", spec, "--quiet", *fitted]) == 0
    assert "thinner" not in capsys.readouterr().err
    assert main(["check", spec, "--quiet", "--set", "sampler.patch=auto"]) == 0
    err = capsys.readouterr().err
    assert "patch: auto -> patch 16x64x64" in err
    assert "thinner than the expanded patch 32x96x96 along z (20 < 32), y (64 < 96)" in err


def test_check_says_when_it_compared_with_the_default_sizes(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from meunet.cli.main import main

    spec = fly_dataset(tmp_path, (20, 64, 64), cases=3)
    assert main(["check", str(spec), "--quiet"]) == 0
    assert "note: those sizes are the defaults'" in capsys.readouterr().err
    fitting = ["--set", "model.name=unet", "--set", "sampler.patch=[16,64,64]"]
    assert main(["check", str(spec), "--quiet", *fitting]) == 0
    err = capsys.readouterr().err
    assert "thinner than" not in err and "note:" not in err
