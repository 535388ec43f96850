"""Time one training step: samples/s, peak memory, model FLOP utilisation (MFU).

CrossText2Loc paper profile (``--task crosstext2loc``, the default; needs a CUDA GPU):
ViT-L-14-336 randomly initialised, EPE to 300 text tokens, batch 128, bf16 autocast, Adam,
the contrastive loss. GeoBridge paper profile (``--task geobridge``): three ViT-L/14 image
towers (drone, street, satellite) + the shared text tower at 77 tokens, 224 px, batch 32,
bf16, Adam, the fused loss L_img + L_text. Both run the real
``geotextloc.train.loop.train_step`` on a model from ``loop.build_model``. FLOPs per step are
counted once with ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions and
attention, forward and backward) on a step of ``--count-batch`` samples without gradient
checkpointing, scaled to the batch (every term is linear in the batch but the B x B similarity
matrix, about 0.15 GFLOP at B = 128): model FLOPs, not the forward passes that checkpointing
repeats. MFU = model FLOPs per step / seconds per step / peak bf16 FLOP/s.

The CrossText2Loc step at batch 128 does not fit in 80 GB without ``--grad-checkpointing``
(an H100 80GB ran out of memory), so that profile turns it on, as ``configs/paper/crosstext2loc.yaml``
does; ``--no-grad-checkpointing --batch-size 64`` times the step a 2-GPU run makes per GPU.

    python benchmarks/bench_train_step.py                              # GPU, CrossText2Loc paper profile
    python benchmarks/bench_train_step.py --task geobridge             # GPU, GeoBridge paper profile
    python benchmarks/bench_train_step.py --no-grad-checkpointing --batch-size 64  # 64 per GPU, no recompute
    python benchmarks/bench_train_step.py --peak-tflops 989            # say the GPU's peak
    python benchmarks/bench_train_step.py --model geotextloc-tiny --batch-size 8 --steps 3  # CPU smoke
    python benchmarks/bench_train_step.py --task geobridge --model geotextloc-tiny --batch-size 8 --steps 3
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from geotextloc.models import factory
from geotextloc.train import loop
from geotextloc.train.config import from_dict
from geotextloc.train.losses import contrastive_loss
from geotextloc.train.tasks import bridge_loss, pair_loss

# Dense bf16 peak TFLOP/s of common GPUs (no sparsity); pass --peak-tflops for others.
PEAK_BF16_TFLOPS = {"H100 SXM": 989.0, "H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.0,
                    "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0}
EOT = 49407
# Paper profiles: task -> (model, text positions, EPE mode, global batch, gradient checkpointing)
PROFILES = {"crosstext2loc": ("ViT-L-14-336", 300, "interpolate", 128, True),
            "geobridge": ("ViT-L-14", 77, "truncate", 32, False)}


def sig(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}")


def peak_tflops_of(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=tuple(PROFILES), default="crosstext2loc")
    p.add_argument("--model", help="default: the task's paper model (ViT-L-14-336 | ViT-L-14)")
    p.add_argument("--context-length", type=int, help="default: 300 (crosstext2loc) | 77 (geobridge)")
    p.add_argument("--epe", help="default: interpolate (crosstext2loc) | truncate (geobridge)")
    p.add_argument("--batch-size", type=int, help="default: 128 (crosstext2loc) | 32 (geobridge)")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    p.add_argument("--peak-tflops", type=float, help="the device's peak bf16 TFLOP/s (default: known GPUs)")
    p.add_argument("--grad-checkpointing", action=argparse.BooleanOptionalAction,
                   help="recompute activations in the backward pass (default: the paper config's, on for "
                        "crosstext2loc, whose batch 128 needs it on an 80 GB GPU; off for geobridge)")
    p.add_argument("--count-batch", type=int, default=16, help="batch of the FLOP-counting step (scaled up)")
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args(argv)
    model_name, context, epe, batch, checkpointing = PROFILES[args.task]
    args.model, args.context_length = args.model or model_name, args.context_length or context
    args.epe, args.batch_size = args.epe or epe, args.batch_size or batch
    if args.grad_checkpointing is None:
        args.grad_checkpointing = checkpointing

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    if device.type != "cuda" and args.model not in factory.TINY_MODELS:
        print(f"bench_train_step: no CUDA GPU here; the {args.task} {args.model} step (batch {args.batch_size}, "
              f"{args.context_length} tokens, bf16) needs one. CPU smoke run: "
              f"--task {args.task} --model geotextloc-tiny --batch-size 8 --steps 3", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    if args.count_batch < 1:
        p.error(f"--count-batch {args.count_batch}: must be at least 1")
    cfg = from_dict({"task": args.task, "model": args.model, "pretrained": None, "context_length": args.context_length,
                     "epe": args.epe, "batch_size": args.batch_size, "device": str(device),
                     "grad_checkpointing": args.grad_checkpointing})
    model, *_ = loop.build_model(cfg, str(device))
    dtype = loop.autocast_dtype(args.precision, device)
    optimizer = torch.optim.Adam([q for q in model.parameters() if q.requires_grad], lr=1e-5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    tower = model.encoders["drone"] if args.task == "geobridge" else model.visual
    h, w = tower.image_size if isinstance(tower.image_size, tuple) else (tower.image_size,) * 2
    n = args.context_length
    texts = torch.randint(1, 49000, (args.batch_size, n), device=device)
    texts[:, -1] = EOT  # full-length texts: every one of the n positions is used
    if args.task == "geobridge":
        from geotextloc.models.geobridge import VIEWS, GeoBridgeLoss

        loss_fn = bridge_loss(GeoBridgeLoss("fused"))
        images = {v: torch.randn(args.batch_size, 3, h, w, device=device) for v in VIEWS}
        masks = {k: torch.ones(args.batch_size, dtype=torch.bool, device=device) for k in (*VIEWS, "text")}
    else:
        loss_fn = pair_loss(contrastive_loss())
        images, masks = torch.randn(args.batch_size, 3, h, w, device=device), None

    def step(b: int | None = None) -> None:
        cut = slice(None, b)
        batch_images = {v: x[cut] for v, x in images.items()} if isinstance(images, dict) else images[cut]
        batch_masks = {k: m[cut] for k, m in masks.items()} if masks else None
        loop.train_step(model, loss_fn, batch_images, texts[cut], optimizer, scheduler, scaler, dtype, batch_masks)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    count_batch = min(args.count_batch, args.batch_size)
    model.set_grad_checkpointing(False)
    with FlopCounterMode(display=False) as counter:
        step(count_batch)
    flops = counter.get_total_flops() * args.batch_size / count_batch
    model.set_grad_checkpointing(args.grad_checkpointing)
    for _ in range(args.warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)

    seconds = statistics.median(times)
    peak = args.peak_tflops or peak_tflops_of(device)
    cpu = f"cpu ({torch.get_num_threads()} threads)"
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
        "task": args.task, "model": args.model, "image_size": h, "context_length": n, "batch_size": args.batch_size,
        "parameters_m": round(sum(q.numel() for q in model.parameters()) / 1e6, 1),
        "precision": str(dtype).replace("torch.", "") if dtype else "float32",
        "grad_checkpointing": args.grad_checkpointing,
        "step_s_median": round(seconds, 4), "step_s_mean": round(statistics.mean(times), 4),
        "samples_per_s": round(args.batch_size / seconds, 2),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda"
        else round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),  # CPU: max RSS
        "tflops_per_step": sig(flops / 1e12),
        "achieved_tflops": sig(flops / seconds / 1e12),
        "peak_tflops": peak,
        "mfu": sig(flops / seconds / (peak * 1e12)) if peak else None,
        "torch": torch.__version__,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
