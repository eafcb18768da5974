"""Segmentation metrics, accumulated block by block and reduced at the end."""

from __future__ import annotations

from meunet.metrics.dice import DiceCounter, dice_scores

__all__ = ["DiceCounter", "dice_scores"]
