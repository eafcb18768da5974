"""How often does a window show the cue that decides a thin tube's class?

The context phantom labels a thin-tube voxel hind-gut when a bright marker's
centre lies within D of it, background when a dark one's does. The accuracy
benchmark picks D with P/2 < D < E/2, meaning to put the cue out of a window of
P and into one of E. But D bounds the distance; it does not set it: markers sit
within D/2 of the thin tubes' centrelines, so the marker that decides a voxel is
often much nearer. This measures, on the accuracy benchmark's own test cases,
what each of its windows can see:

- **distance**: from each thin-tube voxel to the centre of its deciding marker
  (the nearest of the kind its label names), as a multiple of D;
- **centred**: the share of thin-tube voxels whose deciding marker's centre lies
  inside a window of W centred on the voxel (what sliding-window prediction
  gives the voxels near a window's centre);
- **placed**: the share of (voxel, window) pairs, over every window of W inside
  the volume that contains the voxel, that also contain the marker's centre
  (what a training patch placed at random around a labelled voxel shows;
  meunet's sampler puts patches on a grid of step P/2, which, over voxels at
  every offset from the grid, comes to the same away from the volume's faces).

- **misled**: the share of thin-tube voxels whose centred window also holds a
  marker of the other kind (beyond 1.5 D by the label rule, so telling the
  classes apart there takes judging the distance, not only spotting a marker).

A marker's centre in view is the criterion: with a radius of a few voxels, a
marker can show its rim while its centre is outside, so both shares are lower
bounds on seeing part of it. Nothing is trained; the cases are rendered from
their seeds.

    .venv/bin/python benchmarks/cue_visibility.py

Writes ``benchmarks/results/cue_visibility.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from accuracy import RESULTS, SIZES, thin_tubes, windows_of
from scipy.spatial import cKDTree

from meunet.data.phantom import PhantomConfig, phantom_geometry


def deciding_offsets(
    cfg: PhantomConfig, seed: int, case: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thin-tube voxels (n, 3) of one context-phantom case; the offset (n, 3) from each to
    the centre of the marker that decides its label (the nearest bright one for a hind-gut
    voxel, the nearest dark one for a look-alike's); and the offset (n, 3) to the nearest
    marker of the other kind (inf where the case has none)."""
    thin, label = thin_tubes(cfg, seed, case)
    g = phantom_geometry(cfg, seed, case)
    voxels, offsets, others = [], [], []
    for hind in (True, False):
        idx = np.argwhere(thin & ((label == 2) == hind))
        centres, other = g.markers[g.cues == hind], g.markers[g.cues != hind]
        if not len(idx):
            continue
        if not len(centres):
            raise ValueError(f"seed {seed}, case {case}: thin tubes labelled without a marker")
        voxels.append(idx)
        offsets.append(centres[cKDTree(centres).query(idx)[1]] - idx)
        others.append(
            other[cKDTree(other).query(idx)[1]] - idx if len(other) else np.full(idx.shape, np.inf)
        )
    if not voxels:
        return np.empty((0, 3), int), np.empty((0, 3)), np.empty((0, 3))
    return np.concatenate(voxels), np.concatenate(offsets), np.concatenate(others)


def centred_share(offsets: np.ndarray, window: int) -> np.ndarray:
    """Per voxel: 1.0 where a window of ``window`` centred on it holds the marker's centre
    (offsets from -window // 2 to window - 1 - window // 2 along every axis), else 0.0."""
    lo, hi = -(window // 2), window - 1 - window // 2
    return np.all((offsets >= lo) & (offsets <= hi), axis=1).astype(float)


def placed_share(
    voxels: np.ndarray, offsets: np.ndarray, window: int, shape: tuple[int, ...]
) -> np.ndarray:
    """Per voxel: the share of windows of ``window`` inside a volume of ``shape`` that
    contain the voxel and also the marker's centre. Windows are counted by their start,
    independently per axis; along an axis no longer than the window, every window holds it.
    """
    share = np.ones(len(voxels))
    marker = np.rint(voxels + offsets).astype(int)
    for axis, n in enumerate(shape):
        if n <= window:
            continue
        x, m = voxels[:, axis], marker[:, axis]
        lo, hi = np.maximum(0, x - window + 1), np.minimum(x, n - window)  # starts holding x
        seen = np.minimum(hi, m) - np.maximum(lo, m - window + 1) + 1  # ... and holding m too
        share *= np.clip(seen, 0, None) / (hi - lo + 1)
    return share


def measure(sizes: str, seeds: list[int]) -> dict[str, Any]:
    """Distances and both shares for the windows of ``sizes`` on its test cases."""
    size = SIZES[sizes]
    base, d = size["train"], float(size["context"])
    shape = tuple(size["phantom_shape"])
    cfg = PhantomConfig(shape=shape, context_distance=d)
    labels = {"P": "P", "E150": "E(1.5)", "E175": "E(1.75)"}
    named = {f"{labels[key]} = {w}": w for key, w in windows_of(base).items()}
    named[f"control = {size['wide_patch']}"] = size["wide_patch"]
    cases = size.get("cases", 8)
    found: dict[str, list[float]] = {"distance": []}
    for what in ("centred", "placed", "misled"):
        found |= {f"{what} {n}": [] for n in named}
    voxels_n = 0
    for seed in seeds:
        for case in (cases - 2, cases - 1):  # the benchmark's test cases
            voxels, offsets, others = deciding_offsets(cfg, seed, case)
            voxels_n += len(voxels)
            found["distance"] += list(np.linalg.norm(offsets, axis=1) / d)
            for name, w in named.items():
                found[f"centred {name}"] += list(centred_share(offsets, w))
                found[f"misled {name}"] += list(centred_share(others, w))
                found[f"placed {name}"] += list(placed_share(voxels, offsets, w, shape))
    dist = np.asarray(found.pop("distance"))
    return {
        "sizes": sizes, "D": d, "shape": list(shape), "seeds": seeds,
        "cases": [cases - 2, cases - 1], "voxels": voxels_n,
        "distance_over_D": {q: float(np.percentile(dist, p)) for q, p in
                            (("p10", 10), ("median", 50), ("p90", 90), ("max", 100))},
        "windows": {n: {"window": w, **{m: float(np.mean(found[f"{m} {n}"]))
                                         for m in ("centred", "placed", "misled")}}
                    for n, w in named.items()},
    }  # fmt: skip


def report(results: list[dict[str, Any]], command: str) -> str:
    lines = [
        "# Can a window see the cue? The context phantom's deciding markers",
        "",
        f"Made by `{command}`; nothing trained. See the script's docstring for the measures.",
        "",
        "| sizes | D | thin-tube voxels | distance to the deciding marker / D: "
        "10th pct, median, 90th pct, max |",
        "|---|---|---|---|",
    ]
    for r in results:
        q = r["distance_over_D"]
        lines.append(
            f"| {r['sizes']} ({'x'.join(map(str, r['shape']))}, seeds "
            f"{', '.join(map(str, r['seeds']))}, test cases {r['cases'][0]} and {r['cases'][1]}) "
            f"| {r['D']:g} | {r['voxels']} | {q['p10']:.2f}, {q['median']:.2f}, {q['p90']:.2f}, "
            f"{q['max']:.2f} |"
        )
    lines += [
        "",
        "| sizes | window | centred: its marker in view | placed at random: its marker in view "
        "| centred: a marker of the other kind in view |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        for name, w in r["windows"].items():
            lines.append(
                f"| {r['sizes']} | {name} | {w['centred']:.2f} | {w['placed']:.2f} "
                f"| {w['misled']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", choices=tuple(SIZES), default=list(SIZES))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=RESULTS / "cue_visibility")
    args = p.parse_args(argv)
    given = list(argv if argv is not None else sys.argv[1:])
    command = " ".join(["python benchmarks/cue_visibility.py", *given])
    results = [measure(s, args.seeds) for s in args.sizes]
    text = report(results, command)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"command": command, "runs": results}))
    args.out.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
