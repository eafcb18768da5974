"""``device_name``: the hardware a device setting runs on, as reports name it."""

from __future__ import annotations

import platform

import pytest
import torch

from meunet.device import device_name


def test_a_cpu_is_named_by_its_architecture() -> None:
    assert device_name("cpu") == f"{platform.machine()} CPU"


def test_a_gpu_is_named_by_torch_and_a_missing_one_falls_back_to_the_cpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device_name("cuda") == f"{platform.machine()} CPU"
    asked: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d: asked.append(d) or "NVIDIA H200")
    assert device_name("cuda:1") == "NVIDIA H200"
    assert asked == [torch.device("cuda:1")]
