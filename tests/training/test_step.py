"""One training step of a U-net and a meU-net."""

from __future__ import annotations

import torch

from meunet.models import create_model
from meunet.training.loss import SegLoss
from meunet.training.step import Batch, train_step

TINY = {"encoder_channels": (4, 8, 8, 16, 16), "decoder_channels": (8, 8, 4, 4)}


def _batch(p: int, e: int | None) -> Batch:
    """Patches whose labels follow from the intensity (dark 0, mid 1, bright 2): learnable."""
    g = torch.Generator().manual_seed(0)
    cuts = torch.tensor([-0.5, 0.5])
    image = torch.randn(2, 1, p, p, p, generator=g)
    b = Batch(image, torch.bucketize(image[:, 0], cuts))
    if e:
        b.expanded_image = torch.randn(2, 1, e, e, e, generator=g)
        b.expanded_label = torch.bucketize(b.expanded_image[:, 0, ::2, ::2, ::2].contiguous(), cuts)
    return b


def test_meunet_step_sums_both_losses_and_updates_every_parameter() -> None:
    torch.manual_seed(0)
    model = create_model("meunet", **TINY)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = train_step(model, opt, _batch(32, 48), SegLoss())
    assert set(losses) == {"expanded", "standard", "total"}
    assert losses["total"] == losses["expanded"] + losses["standard"]
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == set(before)


def test_two_backward_passes_equal_one_on_the_summed_loss() -> None:
    torch.manual_seed(0)
    model = create_model("meunet", **TINY)
    batch, loss_fn = _batch(32, 48), SegLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    train_step(model, opt, batch, loss_fn)
    split = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    total = loss_fn(model.forward_expanded(batch.expanded_image), batch.expanded_label) + loss_fn(
        model(batch.image), batch.label
    )
    total.backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, split[n], rtol=1e-4, atol=1e-6)


def test_unet_step_loss_falls() -> None:
    torch.manual_seed(0)
    model = create_model("unet", **TINY)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    batch = _batch(16, None)
    first = train_step(model, opt, batch, SegLoss())["total"]
    for _ in range(25):
        last = train_step(model, opt, batch, SegLoss())["total"]
    assert last < 0.75 * first
