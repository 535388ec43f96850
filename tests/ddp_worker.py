"""torchrun worker for tests/test_ddp.py (gloo, CPU).

    torchrun --standalone --nproc_per_node 2 tests/ddp_worker.py step OUT
        one training step (geotextloc.train.loop.train_step) on this rank's half of a fixed
        batch, with the correct gather and with the gradient-free one; saves loss, gradients
        and parameters to OUT/<variant>-rank<r>.pt
    torchrun --standalone --nproc_per_node 2 tests/ddp_worker.py loop CONFIG.json
        geotextloc.train.loop.train on the config's release data
"""

from __future__ import annotations

import json
import sys

import torch

torch.set_num_threads(1)

BATCH, CONTEXT, IMAGE = 8, 96, 32
EOT = 49407  # open_clip's end-of-text id: the text feature is read at this position


def fixed_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    images = torch.randn(BATCH, 3, IMAGE, IMAGE, generator=g)
    texts = torch.randint(1, 49000, (BATCH, CONTEXT), generator=g)
    texts[torch.arange(BATCH), torch.randint(10, CONTEXT, (BATCH,), generator=g)] = EOT
    return images, texts


def one_step(rank: int, world: int, gather_with_grad: bool = True) -> dict:
    """Loss, gradients and parameters after one Adam step on rank's shard of the fixed batch."""
    from torch.nn.parallel import DistributedDataParallel

    from geotextloc.models import factory
    from geotextloc.train import loop
    from geotextloc.train.losses import contrastive_loss
    from geotextloc.train.tasks import pair_loss

    torch.manual_seed(0)
    model = factory.create("geotextloc-tiny", context_length=CONTEXT, image_size=IMAGE)[0]
    images, texts = fixed_batch()
    shard = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
    wrapped = DistributedDataParallel(model) if world > 1 else model
    # eps=1e-6: Adam divides by |g| + eps, so with torch's 1e-8 the float noise (1e-9) on
    # gradients that are exactly 0 in theory (attention key biases) would become visible steps.
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-6)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, loop.cosine_schedule(0, 10))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    loss = loop.train_step(wrapped, pair_loss(contrastive_loss(rank, world, gather_with_grad)), images[shard],
                           texts[shard], optimizer, scheduler, scaler, None)
    return {
        "loss": loss,
        "grads": {n: p.grad.clone() for n, p in model.named_parameters()},
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
    }


def main(mode: str, arg: str) -> None:
    import torch.distributed as dist

    from geotextloc.train import loop
    from geotextloc.train.config import from_dict

    if mode == "step":
        _, rank, world = loop.setup_distributed("cpu")
        for variant, gather_with_grad in (("gather_with_grad", True), ("gather_no_grad", False)):
            torch.save(one_step(rank, world, gather_with_grad), f"{arg}/{variant}-rank{rank}.pt")
    else:
        loop.train(from_dict(json.loads(open(arg).read())))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
