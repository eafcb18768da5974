"""The accuracy benchmark's statistics and its parallel jobs' bookkeeping (no training here)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def accuracy() -> Any:
    spec = importlib.util.spec_from_file_location("accuracy", ROOT / "benchmarks/accuracy.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["accuracy"] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def _run(accuracy: Any, folder: Path, results: dict[str, Any] | None = None) -> Any:
    """An Experiment stand-in: what the job bookkeeping reads and writes."""
    run = SimpleNamespace(
        name="context-seed0", base=SimpleNamespace(patch=32), results=results or {},
        plan={"bytes": {}}, store=folder / "scores.json",
    )  # fmt: skip
    run.save = lambda: run.store.write_text(json.dumps(run.results))
    for method in ("unet_is_p", "same_unet"):  # the real rule of when unet-P is the U-net
        setattr(run, method, getattr(accuracy.Experiment, method).__get__(run))
    return run


def test_the_verdict_needs_an_interval_that_excludes_zero(accuracy: Any) -> None:
    above = [("s0", 0.10), ("s0", 0.12), ("s1", 0.08), ("s1", 0.11), ("s2", 0.09), ("s2", 0.13)]
    lo, hi = accuracy.bootstrap_ci(above)
    assert 0.08 <= lo < hi <= 0.13
    assert accuracy.verdict(lo, hi, 3) == "holds"
    mixed = [("s0", 0.2), ("s0", -0.1), ("s1", -0.2), ("s1", 0.1), ("s2", 0.05), ("s2", -0.04)]
    assert accuracy.verdict(*accuracy.bootstrap_ci(mixed), 3) == "inconclusive"
    below = [(run, -d) for run, d in above]
    assert accuracy.verdict(*accuracy.bootstrap_ci(below), 3) == "fails"


def test_one_training_earns_no_verdict(accuracy: Any) -> None:
    one = [("s0", 0.002), ("s0", 0.001)]  # two test cases of one seed, both above 0
    lo, hi = accuracy.bootstrap_ci(one)
    assert lo > 0
    assert accuracy.verdict(lo, hi, 1).startswith("none: 1 training")


def test_a_cascade_job_adopts_its_runs_meunets_and_no_lock(accuracy: Any, tmp_path: Path) -> None:
    for branch in ("meunet-k150", "meunet-k175"):
        post = tmp_path / "jobs" / f"context-seed0-{branch}" / "context-seed0" / "post"
        (post / "stage1" / branch).mkdir(parents=True)
        (post / ".meunet.json").write_text("{}")
        (post / "stage1" / branch / "best.pt").write_text(branch)
        (post / "stage1" / f".{branch}.lock").write_text("")
    folder = tmp_path / "jobs" / "context-seed0-cascade-post"
    run = _run(accuracy, tmp_path)
    job = accuracy.Job("context-seed0-cascade-post", [], folder, [run], "cascade-post")
    accuracy._adopt_stage1(job, tmp_path)
    post = folder / "context-seed0" / "post"
    assert (post / ".meunet.json").is_file()  # the cascade folder is meunet's
    for branch in ("meunet-k150", "meunet-k175"):
        assert (post / "stage1" / branch / "best.pt").read_text() == branch
    assert not list(post.rglob("*.lock"))


@pytest.mark.parametrize(
    ("unet_patch", "measured", "skipped"), [(32, True, True), (48, True, False), (32, False, False)]
)
def test_a_unet_p_job_is_skipped_only_when_the_same_memory_patch_is_p(
    accuracy: Any, tmp_path: Path, unet_patch: int, measured: bool, skipped: bool
) -> None:
    unet_job = tmp_path / "jobs" / "context-seed0-unet"
    unet_job.mkdir(parents=True)
    plan = {"unet_patch": unet_patch, "bytes": {"unet": 1 << 20} if measured else {}}
    (unet_job / "memory-1ch-3cl.json").write_text(json.dumps(plan))
    run = _run(accuracy, tmp_path, {"unet": {"windows": {}, "patch": unet_patch}})
    job = accuracy.Job(
        "context-seed0-unet-P", [], tmp_path / "p", [run], "unet-P", ("context-seed0-unet",)
    )
    assert accuracy._same_as_unet(job, tmp_path) is skipped
    if skipped:
        assert run.results["unet-P"]["same_as"] == "unet"
        assert json.loads(run.store.read_text())["unet-P"]["same_as"] == "unet"
    else:
        assert "unet-P" not in run.results


def _scored(hind_gut: list[float]) -> dict[str, Any]:
    """A network's entry as the benchmark stores it: hind-gut Dice per test case at every window."""
    cases = {f"case_{i:03d}": {"dice": [1.0, 0.9, d], "hd95": [float("nan"), 1.0, 2.0]}
             for i, d in enumerate(hind_gut)}  # fmt: skip
    entry = {"steps": 10, "step_cap": 20, "epochs": 5, "best_epoch": 3, "early_stop": True,
             "seconds": 1.0, "patch": 32, "window": 32, "time_capped": False, "memory": 1 << 20}  # fmt: skip
    entry["windows"] = {w: {"window": 32, "cases": cases} for w in ("P", "E150", "E175", "own")}
    return entry


@pytest.mark.parametrize("seeds, expected", [(1, "none: 1 training"), (3, "holds")])
def test_the_claims_table_gives_a_verdict_only_from_several_trainings(
    accuracy: Any, seeds: int, expected: str
) -> None:
    runs = {f"context-seed{s}": {"cascade-post": _scored([0.82, 0.85]), "meunet-k175": _scored([0.80, 0.84])}
            for s in range(seeds)}  # fmt: skip
    meta = {"classes": {"context": ["background", "mid-gut", "hind-gut"]}}
    lines = accuracy.dataset_section("context", runs, meta)
    row = next(
        line for line in lines if line.startswith("| cascade-post @own > meunet-k175 @E175 |")
    )
    assert f"| {2 * seeds} | {expected}" in row


def test_the_summed_training_time_counts_a_shared_stage_1_once(accuracy: Any) -> None:
    results = {
        "meunet-k150": {"seconds": 100.0},
        "meunet-k175": {"seconds": 300.0},
        "cascade-post": {"seconds": 450.0, "networks": {"cascade-post": 50.0, "meunet-k150": 100.0, "meunet-k175": 300.0}},
        "cascade-pre": {"seconds": 460.0, "networks": {"cascade-pre": 60.0, "meunet-k150": 100.0, "meunet-k175": 300.0}},
        "cascade-lowres": {"seconds": 90.0, "networks": {"cascade-lowres": 70.0, "lowres": 20.0}},
    }  # fmt: skip
    assert sum(accuracy.network_seconds(results).values()) == 100 + 300 + 50 + 60 + 90


def test_records_without_networks_split_a_cascade_by_the_runs_meunet_rows(accuracy: Any) -> None:
    old = {"meunet-k150": {"seconds": 100.0}, "meunet-k175": {"seconds": 300.0},
           "cascade-post": {"seconds": 450.0}, "cascade-pre": {"seconds": 460.0}}  # fmt: skip
    assert sum(accuracy.network_seconds(old).values()) == 100 + 300 + 50 + 60
    alone = {"cascade-post": {"seconds": 450.0}}  # its stage 1 is no row: counted whole
    assert accuracy.network_seconds(alone) == {"cascade-post": 450.0}


def test_report_only_trains_nothing_and_names_what_is_not_run(
    accuracy: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = json.loads((ROOT / "benchmarks/results/accuracy_cascade_cpu.json").read_text())
    kept = table["runs"]["context-seed0"]["cascade-post"]
    table["runs"] = {"context-seed0": {"cascade-post": kept}}  # an earlier run without the control
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps(table))
    work, out = tmp_path / "work", tmp_path / "report"
    argv = ["--datasets", "context", "--seeds", "0", "--phantom-shape", "64", "64", "64"]
    argv += ["--configs", "unet-wide", "cascade-post", "--work", str(work), "--out", str(out)]
    assert accuracy.main([*argv, "--resume-from", str(earlier), "--report-only"]) == 0

    written = json.loads(out.with_suffix(".json").read_text())["runs"]["context-seed0"]
    assert written["cascade-post"] == kept and "unet-wide" not in written  # nothing trained
    run = work / "context-seed0"
    assert sorted(p.name for p in run.iterdir()) == ["bench.json", "data"]
    assert not list(work.glob("memory-*.json"))  # not even the memory measured
    assert (
        "context-seed0: not finished (not run or time-limited): unet-wide"
        in capsys.readouterr().err
    )
    assert "Not yet run: unet-wide (1 of 1 runs)" in out.with_suffix(".md").read_text()


def test_a_work_folder_refuses_networks_trained_with_other_settings(
    accuracy: Any, tmp_path: Path
) -> None:
    size = dict(accuracy.SIZES["small"])
    base = size["train"]
    accuracy.claim_work(tmp_path, base, size)
    accuracy.claim_work(tmp_path, base, size)  # the same settings: its cache is used
    moved = accuracy.override(base, ["device=cuda", "workers=2"])
    accuracy.claim_work(tmp_path, moved, size)  # where it trains changes no network
    longer = accuracy.override(base, ["epochs=300"])
    with pytest.raises(SystemExit, match=r"epochs=150 there, 300 now.*another --work"):
        accuracy.claim_work(tmp_path, longer, size)
    with pytest.raises(SystemExit, match=r"context=22.0 there, 30.0 now"):
        accuracy.claim_work(tmp_path, base, {**size, "context": 30.0})


def test_the_machine_line_counts_this_invocations_threads_in_good_grammar(accuracy: Any) -> None:
    assert accuracy._threads(1) == "1 torch thread in this invocation"
    assert accuracy._threads(2) == "2 torch threads in this invocation"


@pytest.mark.parametrize("context", [0.0, 14.0])
def test_the_no_context_reference_labels_every_thin_tube_and_only_those(
    accuracy: Any, context: float
) -> None:
    from meunet.data.phantom import PhantomConfig, phantom_geometry, render_case, tube_map

    cfg = PhantomConfig(shape=(64, 64, 64), context_distance=context)
    got = accuracy.no_context_case(*accuracy.thin_tubes(cfg, 2, 0))
    _, label = render_case(cfg, 2, 0)
    ids = tube_map(cfg, 2, 0)
    g = phantom_geometry(cfg, 2, 0)  # a case with thin tubes of both classes
    # thin tubes: the hind-gut (2) and the thin look-alikes; never the mid-gut (1)
    thin = (
        g.context_ids
        if context
        else [t.tube_id for t in g.tubes if t.tube_id != 1 and t.radius < g.tubes[0].radius / 2]
    )
    assert 2 in thin and 1 not in thin
    pred, true = np.isin(ids, thin), label == 2
    assert got["voxels_pred"][2] == pred.sum() > true.sum() == got["voxels_true"][2] > 0
    assert not (true & ~pred).any()  # every hind-gut voxel is a thin-tube voxel: recall 1
    assert got["dice"][2] == pytest.approx(2 * true.sum() / (pred.sum() + true.sum()))


def test_the_control_is_learnt_only_above_the_no_context_reference(accuracy: Any) -> None:
    meta = {"classes": {"context": ["background", "mid-gut", "hind-gut"]}}

    def runs(control: list[float]) -> dict[str, Any]:
        reference = _scored([0.70, 0.74])
        reference["windows"] = {"own": reference["windows"]["own"]}
        return {f"context-seed{s}": {"unet-wide": _scored(control), accuracy.NO_CONTEXT: reference}
                for s in range(3)}  # fmt: skip

    lines = accuracy.dataset_section("context", runs([0.71, 0.73]), meta)  # >= 0.7, not above
    text = "\n".join(lines)
    assert f"| unet-wide @own > {accuracy.NO_CONTEXT} @own |" in text
    assert "NOT shown learnable" in text and "(>= 0.7; against" in text
    lines = accuracy.dataset_section("context", runs([0.80, 0.86]), meta)
    text = "\n".join(lines)
    assert "the task is learnable at these sizes" in text and "NOT" not in text
    row = next(line for line in lines if line.startswith(f"| {accuracy.NO_CONTEXT}: every thin"))
    assert "| 0.720 +- 0.020 |" in row


def test_cue_accuracy_is_half_for_any_labelling_that_ignores_the_context(accuracy: Any) -> None:
    label = np.zeros((1, 1, 8), np.uint8)
    label[0, 0, :3] = 2  # hind-gut: 3 voxels of thin tube
    thin = np.zeros(label.shape, bool)
    thin[0, 0, :7] = True  # and 4 look-alike voxels; the last voxel is no tube
    every_thin = np.where(thin, 2, 0)
    assert accuracy.cue_accuracy(every_thin, thin, label) == 0.5
    assert accuracy.cue_accuracy(np.zeros_like(label), thin, label) == 0.5
    assert accuracy.cue_accuracy(label, thin, label) == 1.0
    assert accuracy.cue_accuracy(np.where(thin & (label != 2), 2, 0), thin, label) == 0.0
    # boundaries do not count: hind-gut spilling beyond the tubes leaves it at 1
    assert accuracy.cue_accuracy(np.where(~thin | (label == 2), 2, 0), thin, label) == 1.0
    assert np.isnan(accuracy.cue_accuracy(label, thin & (label == 2), label))  # no look-alike


def test_the_cue_table_gives_a_verdict_against_half(accuracy: Any) -> None:
    def scored(cues: list[float]) -> dict[str, Any]:
        entry = _scored([0.8] * len(cues))
        for case, cue in zip(entry["windows"]["own"]["cases"].values(), cues, strict=True):
            case["cue"] = cue
        return entry

    runs = {f"context-seed{s}": {"meunet-k175": scored([0.9, 0.8]), "unet": scored([0.45, 0.4])}
            for s in range(3)}  # fmt: skip
    lines = accuracy.cue_table(runs, ["unet", "meunet-k175"], "hind-gut")
    assert any(
        line.startswith("| meunet-k175 | 0.850 | +0.350 |") and line.endswith("| 6 | holds |")
        for line in lines
    )
    assert any(
        line.startswith("| unet | 0.425 |") and line.endswith("| 6 | fails |") for line in lines
    )
    paired = next(line for line in lines if line.startswith("| meunet-k175 > unet |"))
    assert paired.startswith("| meunet-k175 > unet | +0.425 |") and paired.endswith("| 6 | holds |")


def test_networks_scored_before_the_cue_get_it_from_their_predictions_on_disk(
    accuracy: Any, tmp_path: Path
) -> None:
    from meunet.data.io import write_volume
    from meunet.data.phantom import PhantomConfig, render_case

    phantom = PhantomConfig(shape=(64, 64, 64), context_distance=14.0)
    _, label = render_case(phantom, 2, 0)  # a case with thin tubes of both kinds
    spec = SimpleNamespace(split={"test": ["case_000"]})
    base = accuracy.SIZES["small"]["train"]
    run = accuracy.Experiment("context-seed2", 2, spec, tmp_path, base, {}, 48, phantom)
    folder = tmp_path / "test" / "unet-w32"
    folder.mkdir(parents=True)
    (folder / "case_000.scored").write_text(json.dumps({"dice": [1, 1, 1]}))
    write_volume(folder / "case_000.zarr", label)  # a network that reads the cue perfectly
    run.results = {"unet": _scored([1.0]), "unet-P": {"same_as": "unet"}}
    run.results["unet"]["windows"]["own"]["cases"] = {"case_000": {"dice": [1, 1, 1]}}
    run.add_cue()
    assert run.results["unet"]["windows"]["own"]["cases"]["case_000"]["cue"] == 1.0
    assert json.loads((folder / "case_000.scored").read_text())["cue"] == 1.0  # cached


def test_report_only_names_unet_p_the_unet_where_the_plan_makes_them_one(
    accuracy: Any, tmp_path: Path
) -> None:
    earlier = json.loads((ROOT / "benchmarks/results/accuracy_cascade_cpu.json").read_text())
    runs = earlier["runs"]
    runs["context-seed0"] = {"unet": runs["context-seed0"]["meunet-k175"]}  # stands in for a U-net
    del runs["context-seed1"], runs["context-seed2"]
    (tmp_path / "earlier.json").write_text(json.dumps(earlier))
    work, out = tmp_path / "work", tmp_path / "report"
    work.mkdir()
    (work / "memory-1ch-3cl.json").write_text(
        json.dumps({"unet_patch": 32, "bytes": {"unet": 1 << 20}})
    )
    argv = ["--datasets", "context", "--seeds", "0", "--phantom-shape", "64", "64", "64"]
    argv += ["--configs", "unet", "unet-P", "--work", str(work), "--out", str(out)]
    argv += ["--resume-from", str(tmp_path / "earlier.json"), "--report-only"]
    assert accuracy.main(argv) == 0
    written = json.loads(out.with_suffix(".json").read_text())["runs"]["context-seed0"]
    assert written["unet-P"]["same_as"] == "unet"
    assert "| unet-P | same as unet (its patch is P) |" in out.with_suffix(".md").read_text()
