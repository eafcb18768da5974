"""``meunet info``: print a volume's shape, dtype, spacing and format."""

from __future__ import annotations

import argparse

HELP = "print a volume's shape, dtype, spacing and format"
DESCRIPTION = None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("volume")


def run(args: argparse.Namespace) -> int:
    from meunet.data.io import open_volume

    with open_volume(args.volume) as vol:
        print(f"path:    {vol.path}")
        print(
            f"format:  {vol.format}{'' if vol.lazy else ' (not lazily readable: meunet convert it to .zarr)'}"
        )
        print(f"shape:   {vol.shape} (z, y, x)")
        print(f"dtype:   {vol.dtype}")
        if vol.spacing_known:
            print(f"spacing: {vol.spacing} (z, y, x)")
        else:
            shown = ", ".join(f"{v:g}" for v in vol.spacing)
            print(f"spacing: unknown ({shown} assumed; the file stores no voxel size) (z, y, x)")
        print(f"origin:  {vol.origin} (z, y, x)")
        frame = vol.space or "none named"
        print(f"direction: {vol.direction} (columns: axes z, y, x; world frame: {frame})")
        print(f"size:    {vol.nbytes / 2**20:.1f} MiB uncompressed")
        segments = vol.meta.get("segments") or []
        if segments:
            from meunet.data.io.sidecar import segment_table

            print(f"segments ({len(segments)}, label value: name):")
            for line in segment_table(segments):
                print(f"  {line}")
    return 0
