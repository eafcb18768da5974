"""Every registered model passes one shared test; meU-net and cascade wiring are checked with hooks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from meunet.errors import MeunetError
from meunet.models import MODELS, UNetConfig, create_model, load_model, save_model

TINY = {"encoder_channels": (4, 8, 8, 16, 16), "decoder_channels": (8, 8, 4, 4)}
CLASSES = 3


def _build(name: str, **cfg: object) -> torch.nn.Module:
    extra = 2 * CLASSES if name.startswith("cascade") else 0
    return create_model(
        name, in_channels=2, num_classes=CLASSES, extra_channels=extra, **TINY, **cfg
    )


def _inputs(model: torch.nn.Module, size: tuple[int, int, int], batch: int = 2) -> dict:
    g = torch.Generator().manual_seed(0)
    args = {"x": torch.randn(batch, 2, *size, generator=g)}
    if model.cfg.extra_channels:
        labels = torch.randint(0, CLASSES, (batch, 2, *size), generator=g)
        args["extra"] = (
            F.one_hot(labels, CLASSES).permute(0, 1, 5, 2, 3, 4).reshape(batch, -1, *size).float()
        )
    return args


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("checkpointing", [False, True])
def test_every_model_forward_backward_on_odd_sizes(name: str, checkpointing: bool) -> None:
    model = _build(name, checkpointing=checkpointing)
    args = _inputs(model, (19, 24, 33))  # none divisible by 16
    out = model(**args)
    assert out.shape == (2, CLASSES, 19, 24, 33)
    out.square().mean().backward()
    assert all(
        p.grad is not None and torch.isfinite(p.grad).all()
        for n, p in model.named_parameters()
        if "head_level2" not in n
    )


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_save_load_round_trip_and_eval_determinism(name: str, tmp_path: Path) -> None:
    model = _build(name)
    args = _inputs(model, (16, 20, 24), batch=1)
    model.train()
    model(**args)  # move BatchNorm running statistics away from their initial values
    model.eval()
    with torch.no_grad():
        first, second = model(**args), model(**args)
    assert torch.equal(first, second)
    save_model(tmp_path / "m.pt", model, epoch=3)
    loaded = load_model(tmp_path / "m.pt").eval()
    assert loaded.cfg == model.cfg and loaded.name == name
    with torch.no_grad():
        assert torch.equal(loaded(**args), first)


def test_expanded_path_gives_no_gradient_to_level_1() -> None:
    model = _build("meunet")
    level1 = list(model.encoders[0].parameters())
    seen: dict[str, bool] = {"level1": False, "deeper": False}
    for p in level1:
        p.register_hook(lambda g: seen.__setitem__("level1", True) or g)
    for p in model.encoders[1].parameters():
        p.register_hook(lambda g: seen.__setitem__("deeper", True) or g)

    out = model.forward_expanded(torch.randn(1, 2, 48, 48, 48))
    assert out.shape == (1, CLASSES, 24, 24, 24)
    out.mean().backward()
    assert not seen["level1"] and seen["deeper"]
    assert all(p.grad is None for p in level1)
    assert all(p.grad is None for p in model.head.parameters())  # the level-1 head is not used
    assert model.head_level2.weight.grad is not None

    model.zero_grad(set_to_none=True)
    model(torch.randn(1, 2, 32, 32, 32)).mean().backward()  # the standard patch reaches level 1
    assert seen["level1"] and all(p.grad is not None and p.grad.abs().sum() > 0 for p in level1)


def test_expanded_output_size_rounds_up() -> None:
    model = _build("meunet")
    assert model.forward_expanded(torch.randn(1, 2, 33, 40, 47)).shape[2:] == (17, 20, 24)
    with pytest.raises(ValueError, match="deep_head=True"):
        _build("unet").forward_expanded(torch.randn(1, 2, 32, 32, 32))


def _record_inputs(model: torch.nn.Module) -> dict[str, list[int]]:
    """Channels entering each encoder and decoder block."""
    seen: dict[str, list[int]] = {}
    for part in ("encoders", "decoders"):
        for i, block in enumerate(getattr(model, part)):
            block.register_forward_pre_hook(
                lambda m, a, key=f"{part}{i}": seen.setdefault(key, []).append(a[0].shape[1])
            )
    return seen


@pytest.mark.parametrize("mode", ["post", "pre"])
def test_stage1_maps_reach_the_decoder_levels_or_the_input(mode: str) -> None:
    model = _build(f"cascade-{mode}")
    args = _inputs(model, (32, 32, 32), batch=1)
    seen = _record_inputs(model)
    base = _build("unet")
    base_seen = _record_inputs(base)
    model(**args)
    base(args["x"])
    extra = model.cfg.extra_channels
    for key in base_seen:
        added = seen[key][0] - base_seen[key][0]
        if mode == "post":
            assert added == (extra if key.startswith("decoders") else 0), key
        else:
            assert added == (extra if key == "encoders0" else 0), key


def test_post_mode_encoder_never_sees_the_stage1_maps() -> None:
    model = _build("cascade-post").eval()
    args = _inputs(model, (32, 32, 32), batch=1)
    captured: list[list[torch.Tensor]] = []
    for block in model.encoders:
        block.register_forward_hook(lambda m, a, out: captured[-1].append(out.clone()))
    outputs = []
    for flip in (False, True):
        extra = args["extra"].flip(1) if flip else args["extra"]
        captured.append([])
        with torch.no_grad():
            outputs.append(model(args["x"], extra))
    assert all(torch.equal(a, b) for a, b in zip(captured[0], captured[1], strict=True))
    assert not torch.equal(outputs[0], outputs[1])  # while the decoder does use them


def test_cascade_input_errors() -> None:
    model = _build("cascade-post")
    x = torch.randn(1, 2, 16, 16, 16)
    with pytest.raises(ValueError, match="needs 6 stage-1 channels"):
        model(x)
    with pytest.raises(ValueError, match=r"expected \(batch, 6, 16, 16, 16\)"):
        model(x, torch.zeros(1, 6, 16, 16, 8))
    with pytest.raises(ValueError, match="needs extra_channels"):
        create_model("cascade-post")
    with pytest.raises(ValueError, match=r"expected input \(batch, 2, z, y, x\)"):
        model(torch.randn(1, 3, 16, 16, 16))


def test_registry_errors() -> None:
    with pytest.raises(ValueError, match="unknown model 'vnet'"):
        create_model("vnet")
    with pytest.raises(ValueError, match="fixes \\['deep_head'\\]"):
        create_model("meunet", deep_head=False)
    with pytest.raises(ValueError, match="unknown settings \\['depth'\\]"):
        create_model("unet", depth=4)
    with pytest.raises(ValueError, match="decoder_channels needs 4 entries"):
        UNetConfig(decoder_channels=(8, 8))


def test_paper_default_channels() -> None:
    cfg = create_model("unet").cfg
    assert cfg.encoder_channels == (16, 32, 64, 128, 128) and cfg.decoder_channels == (
        64,
        32,
        16,
        16,
    )


def test_checkpoint_with_pickled_object_is_refused(tmp_path: Path) -> None:
    model = _build("unet")
    torch.save(
        {
            "model": "unet",
            "config": model.cfg.to_dict(),
            "state_dict": model.state_dict(),
            "evil": Path("/"),
        },
        tmp_path / "bad.pt",
    )
    with pytest.raises(MeunetError, match="pickled objects that are refused"):
        load_model(tmp_path / "bad.pt")
    with pytest.raises(MeunetError, match="checkpoint not found"):
        load_model(tmp_path / "none.pt")


def test_level1_by_sample_equals_a_batched_forward_and_updates_bn_the_same() -> None:
    import copy

    torch.manual_seed(0)
    block = _build("meunet").encoders[0].train()
    ref = copy.deepcopy(block)
    x = torch.randn(3, 2, 24, 20, 16) * 3 + 1
    with torch.no_grad():
        expected = F.max_pool3d(ref(x), 2)
        got = block.forward_pooled_by_sample(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    for (name, a), (_, b) in zip(block.named_buffers(), ref.named_buffers(), strict=True):
        torch.testing.assert_close(a.float(), b.float(), rtol=1e-5, atol=1e-6, msg=name)
