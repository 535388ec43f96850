"""Training for CrossText2Loc and GeoBridge: DDP, AMP, Adam + cosine schedule, atomic
checkpoints, exact resume, for either paper (``cfg.task``; see below).

One process (``geotextloc train --config ...``) or N under torchrun
(``torchrun --nproc_per_node N -m geotextloc train --config ...``: NCCL on GPUs, gloo on CPU).
Every epoch: train on the train split; rank 0 evaluates the selection split (a validation split
carved from the training places when ``val_share > 0``, else the test split, the paper's rule),
writes ``last.pt``
(model, optimiser, scheduler, scaler, every rank's RNG states, epoch, step) and ``best.pt``
(by the selection score), and appends to ``metrics.jsonl``. ``resume: true`` continues from
``last.pt`` exactly: the sampler order is a function of (seed, epoch) and the RNG states are
restored, so the losses equal an uninterrupted run's.

The loop knows no task: ``cfg.task`` picks a :mod:`geotextloc.train.tasks` class, which
supplies the records, model, dataset, cached inputs, batches, loss and evaluation score of
CrossText2Loc (text -> tile, score R@1) or GeoBridge (drone, street, satellite, text; score
mean R@1 of the six image directions).
"""

from __future__ import annotations

import json
import math
import os
import random
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from geotextloc.errors import ConfigError, DataError
from geotextloc.files import atomic_write_text
from geotextloc.models import checkpoints
from geotextloc.train.config import TrainConfig
from geotextloc.train.data import validation_split
from geotextloc.train.tasks import task_of

# Config keys that change the trajectory: a resumed run must use the saved values.
TRAJECTORY_KEYS = ("task", "model", "pretrained", "epe", "context_length", "image_size", "train_last_k",
                   "mode", "symmetric", "regions", "missing_view", "missing_share",
                   "versions", "view", "query", "fusion", "train_limit", "augment", "text_dropout", "text_pos_init",
                   "batch_size", "epochs", "lr", "loss",
                   "warmup_steps", "weight_decay", "adam_eps", "seed", "precision")


VAL_SEED = 0  # the validation places are the same for every seed, like the test split


def setup_distributed(device: str = "auto") -> tuple[torch.device, int, int]:
    """(device, rank, world size) from torchrun's environment; joins the process group."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return dev, rank, world


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA by default; none (float32) on CPU."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def cosine_schedule(warmup: int, total: int):
    """LR factor at step t: (t+1)/warmup while t < warmup, then
    1/2 * (1 + cos(pi * (t - warmup) / (total - warmup)))."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
    return factor


def unwrap(model):
    return model.module if isinstance(model, DistributedDataParallel) else model


def train_step(model, loss_fn, images, texts, optimizer, scheduler, scaler, dtype, masks=None) -> torch.Tensor:
    """One optimisation step on this rank's batch; returns this rank's loss (detached).

    ``loss_fn(model, images, texts, masks)`` is the task's loss
    (:func:`geotextloc.train.tasks.pair_loss`, :func:`~geotextloc.train.tasks.bridge_loss`).
    """
    device = next(model.parameters()).device
    autocast = torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()
    with autocast:
        loss = loss_fn(model, images, texts, masks)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    scale = getattr(unwrap(model), "logit_scale", None)  # none in a pair scorer (ViLT)
    if scale is not None:
        with torch.no_grad():  # as CLIP: tau >= 1/100
            scale.clamp_(0, math.log(100))
    return loss.detach()


def rng_state() -> dict:
    """This process's python, numpy, torch (and CUDA) RNG states, weights_only-loadable."""
    np_state = np.random.get_state(legacy=False)
    np_state["state"]["key"] = torch.from_numpy(np_state["state"]["key"].astype(np.int64))
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"python": random.getstate(), "numpy": np_state, "torch": torch.get_rng_state(), "cuda": cuda}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np_state = dict(state["numpy"], state=dict(state["numpy"]["state"]))
    np_state["state"]["key"] = state["numpy"]["state"]["key"].numpy().astype(np.uint32)
    np.random.set_state(np_state)
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def append_jsonl(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def read_metrics(path: Path) -> list[dict]:
    """The rows of ``metrics.jsonl``; a torn last line (a crash mid-write) is dropped, a damaged
    earlier one is one DataError naming the file and line."""
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("epoch"), int):
                raise ValueError("not a metrics row")
        except ValueError:
            if number == len(lines):
                break
            raise DataError(f"{path}:{number}: not a metrics row; delete the run folder or restore the file") from None
        rows.append(row)
    return rows


def keep_metrics_before(path: Path, epoch: int) -> None:
    """Drop metric rows of epochs >= ``epoch`` (written after the checkpoint we resume from)."""
    if path.exists():
        rows = [row for row in read_metrics(path) if row["epoch"] < epoch]
        atomic_write_text(path, "".join(f"{json.dumps(row)}\n" for row in rows))


def _stale_evaluations(metrics: Path, best: float) -> int:
    """Evaluations since the best score, from ``metrics.jsonl`` (to resume early stopping)."""
    scores = [row.get("score") for row in read_metrics(metrics) if row.get("kind") == "eval"]
    scores = [s for s in scores if s is not None]
    return len(scores) - 1 - max((i for i, s in enumerate(scores) if s >= best), default=len(scores) - 1)


def load_records(cfg: TrainConfig) -> tuple[list, list]:
    """(train, test) records under ``cfg.data_root`` for ``cfg.task`` (:mod:`geotextloc.train.tasks`)."""
    return task_of(cfg).records(cfg)


def build_model(cfg: TrainConfig, device: str = "cpu"):
    """(model, preprocess_train, preprocess_val, tokenizer) for ``cfg.task``, ready to train."""
    return task_of(cfg).build(cfg, device)


def load_checkpoint(path: str | Path, device: str = "cpu"):
    """(model, preprocess_val, tokenizer, config) from our ``last.pt``/``best.pt`` (either task);
    a file that is not one, or whose config or weights do not fit, is one error naming it."""
    from geotextloc.train.config import from_dict

    obj = checkpoints.read_checkpoint(path)
    config = checkpoints.saved_config(obj, path)
    if config is None:
        raise ConfigError(f"{path}: not a geotextloc training checkpoint (no config); "
                          "load released weights with geotextloc.models.factory.from_checkpoint")
    try:
        cfg = from_dict({**config, "pretrained": None, "resume": False}, str(path))
    except (TypeError, ValueError) as err:  # a value of the wrong type
        raise DataError(f"{path}: its config holds a value of the wrong type ({str(err).splitlines()[0]}); "
                        f"{checkpoints.REFETCH}") from None
    model, _, preprocess_val, tokenizer = build_model(cfg, device)
    checkpoints.load_state(model, checkpoints.read_state_dict(path, obj), path)
    return model.eval(), preprocess_val, tokenizer, cfg


RESUME_FIX = "delete it or pick another out_dir to start afresh"
STATE_TYPES = {"model": dict, "optimizer": dict, "scheduler": dict, "scaler": dict, "rng": list,
               "epoch": int, "step": int, "best_r1": (int, float), "config": dict}  # what last.pt holds


def _unfit_state(ckpt, model, optimizer) -> str | None:
    """Why ``ckpt`` (read from a ``last.pt``) cannot resume this run's model and optimiser, or None."""
    if not isinstance(ckpt, dict):
        return f"holds a {type(ckpt).__name__}, not a training state"
    for key, kind in STATE_TYPES.items():
        if key not in ckpt:
            return f"not a training state (no {key!r})"
        if not isinstance(ckpt[key], kind) or isinstance(ckpt[key], bool) or (kind is int and ckpt[key] < 0):
            return f"its {key!r} is a bad {type(ckpt[key]).__name__}"
    if not ckpt["rng"] or not all(isinstance(s, dict) and {"python", "numpy", "torch", "cuda"} <= set(s)
                                  for s in ckpt["rng"]):
        return "its 'rng' is not a list of random-generator states"
    expected, saved = model.state_dict(), ckpt["model"]
    for key in [*sorted(expected.keys() ^ saved.keys(), key=str), *expected]:
        if key not in saved or key not in expected or not isinstance(saved[key], torch.Tensor) \
                or saved[key].shape != expected[key].shape:
            return f"its model weights are not this run's model (at {key!r})"
    if not _optimizer_fits(ckpt["optimizer"], optimizer):
        return "its optimizer state does not match this run's trainable parameters"
    if not isinstance(ckpt["scheduler"].get("last_epoch"), int):
        return "its scheduler state has no step count"
    return None


def _optimizer_fits(saved: dict, optimizer) -> bool:
    """Same parameter groups of the same sizes, and every saved state tensor of its parameter's shape."""
    groups, state = saved.get("param_groups"), saved.get("state")
    if not (isinstance(groups, list) and isinstance(state, dict)
            and all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups)):
        return False
    if [len(g["params"]) for g in groups] != [len(g["params"]) for g in optimizer.param_groups]:
        return False
    ids = [i for g in groups for i in g["params"]]
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for i, param in zip(ids, params):
        entry = state.get(i, {}) if isinstance(i, int) else None
        if not isinstance(entry, dict) or any(isinstance(v, torch.Tensor) and v.dim() and v.shape != param.shape
                                              for v in entry.values()):
            return False
    return True


def restore(path: Path, cfg: TrainConfig, model, optimizer, scheduler, scaler, rank: int):
    """Load ``last.pt`` into the training state; returns (epochs done, step, best R@1).

    Read with the checked reader (weights only, checksum, finite values) and checked whole
    before anything is loaded: a file that is not this run's state is one error naming it.
    """
    ckpt = checkpoints.read_checkpoint(path, RESUME_FIX)
    problem = _unfit_state(ckpt, model, optimizer)
    if problem is None:
        defaults = TrainConfig().to_dict()  # checkpoints older than a key hold its default
        changed = [k for k in TRAJECTORY_KEYS if ckpt["config"].get(k, defaults[k]) != getattr(cfg, k)]
        if changed:
            key = changed[0]
            raise ConfigError(f"{path}: cannot resume with a different {key} "
                              f"({ckpt['config'].get(key)!r} -> {getattr(cfg, key)!r}); undo the override")
        try:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            scaler.load_state_dict(ckpt["scaler"])
            set_rng_state(ckpt["rng"][rank % len(ckpt["rng"])])
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as err:
            problem = f"its training state does not load ({type(err).__name__})"
    if problem is not None:
        raise DataError(f"{path}: {problem}; cannot resume from it: {RESUME_FIX}")
    return ckpt["epoch"], ckpt["step"], ckpt["best_r1"]


def train(cfg: TrainConfig, train_records=None, test_records=None) -> dict:
    """Train (or resume) the run in ``cfg.out_dir``; returns a summary dict.

    Records default to the release under ``cfg.data_root`` (:func:`load_records`).
    """
    device, rank, world = setup_distributed(cfg.device)
    dtype = autocast_dtype(cfg.precision, device)
    out = Path(cfg.out_dir)
    last, metrics = out / "last.pt", out / "metrics.jsonl"
    if last.exists() and not cfg.resume:
        raise ConfigError(f"{out} already holds a run (last.pt); pass --resume to continue it or pick another out_dir")
    if cfg.batch_size % world:
        raise ConfigError(f"batch_size={cfg.batch_size} is not divisible by the {world} processes")

    task = task_of(cfg)
    if train_records is None:  # read (and check) the data before building a large model
        train_records, test_records = task.records(cfg)
    select_records, select_split = test_records, "test"  # the paper's rule
    if cfg.val_share:
        train_records, select_records = validation_split(train_records, cfg.val_share, VAL_SEED)
        select_split = "val"
    train_records = task.prepare(cfg, train_records)
    seed_everything(cfg.seed)  # same initial model on every rank
    model, preprocess_train, preprocess_val, tokenizer = task.build(cfg, str(device))
    seed_everything(cfg.seed + rank)
    transform = preprocess_train if cfg.augment else preprocess_val
    pairs = task.dataset(cfg, model, train_records, transform, tokenizer, progress=rank == 0)
    if len(pairs) < cfg.batch_size:
        raise ConfigError(f"batch_size={cfg.batch_size} exceeds the {len(pairs)} training records")
    trainer = model
    if cfg.cache_features:  # locked towers run once; the trainable parts see cached inputs
        pairs, trainer = task.cache(cfg, model, pairs, dtype, progress=rank == 0)
    sampler = DistributedSampler(pairs, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed, drop_last=True)
    loader = DataLoader(pairs, batch_size=cfg.batch_size // world, sampler=sampler, drop_last=True,
                        num_workers=cfg.num_workers, pin_memory=device.type == "cuda")

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.lr, eps=cfg.adam_eps, weight_decay=cfg.weight_decay)
    total = cfg.epochs * len(loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_schedule(cfg.warmup_steps, total))
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    ddp = DistributedDataParallel(trainer, device_ids=[device.index] if device.type == "cuda" else None) \
        if world > 1 else trainer
    loss_fn = task.loss(cfg, rank, world)

    start_epoch, step, best_r1 = 0, 0, -1.0
    if cfg.resume and last.exists():
        start_epoch, step, best_r1 = restore(last, cfg, model, optimizer, scheduler, scaler, rank)
    if rank == 0:  # nothing goes into out_dir before the data, the model and last.pt passed their checks
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.yaml", cfg.to_yaml())  # the resolved config, readable back with --config
        keep_metrics_before(metrics, start_epoch)

    done, stale = start_epoch, _stale_evaluations(metrics, best_r1) if start_epoch else 0
    for epoch in range(start_epoch, cfg.epochs):
        if cfg.patience and stale >= cfg.patience:  # a resumed run that had stopped early
            break
        sampler.set_epoch(epoch)
        ddp.train()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=rank != 0, leave=False)
        for batch in bar:
            images, texts, masks = task.batch(cfg, batch, device)
            loss = train_step(ddp, loss_fn, images, texts, optimizer, scheduler, scaler, dtype, masks)
            if world > 1:  # log the global loss: mean of the ranks' equal-sized parts
                dist.all_reduce(loss)
                loss /= world
            step += 1
            if rank == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}")
                scale = getattr(unwrap(ddp), "logit_scale", None)
                append_jsonl(metrics, {"kind": "train", "epoch": epoch, "step": step, "loss": loss.item(),
                                       "lr": scheduler.get_last_lr()[0],
                                       **({} if scale is None else {"logit_scale": scale.exp().item()})})
        due = cfg.eval_every and select_records and (epoch + 1) % cfg.eval_every == 0
        if rank == 0 and due:
            report, score = task.evaluate(cfg, model, select_records, preprocess_val, tokenizer)
            summary = report.to_dict()
            append_jsonl(metrics, {"kind": "eval", "split": select_split, "epoch": epoch, "step": step,
                                   "score": score, **summary})
            stale += 1
            if score > best_r1:
                best_r1, stale = score, 0
                checkpoints.save_checkpoint({"model": model.state_dict(), "config": cfg.to_dict(),
                                             "epoch": epoch + 1, "report": summary}, out / "best.pt")
                report.to_csv(out / "best_queries.csv")
        states = [None] * world
        if world > 1:
            dist.all_gather_object(states, rng_state())
        else:
            states = [rng_state()]
        if rank == 0:
            checkpoints.save_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                         "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                                         "rng": states, "epoch": epoch + 1, "step": step, "best_r1": best_r1,
                                         "config": cfg.to_dict()}, last)
        if world > 1:
            dist.barrier()
        done = epoch + 1
        if cfg.stop_after_epoch and done >= cfg.stop_after_epoch:
            break
        if cfg.patience and stale >= cfg.patience:  # early stopping on the selection split
            if rank == 0:
                append_jsonl(metrics, {"kind": "early_stop", "epoch": epoch, "step": step, "best_R@1": best_r1})
            break
    return {"out_dir": str(out), "epoch": done, "step": step, "best_R@1": best_r1 if best_r1 >= 0 else None}
