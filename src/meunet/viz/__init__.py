"""Pictures a person can look at: label overlays on orthogonal slices."""

from __future__ import annotations

from meunet.viz.overlay import overlay_png

__all__ = ["overlay_png"]
