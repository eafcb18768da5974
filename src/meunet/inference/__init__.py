"""Inference: sliding-window prediction with the paper's centre-weighted fusion."""

from __future__ import annotations

from meunet.inference.sliding import centre_weights, predict_array

__all__ = ["centre_weights", "predict_array"]
