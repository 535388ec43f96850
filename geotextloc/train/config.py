"""Training configuration: a handful of plain values, one YAML file per profile.

``geotextloc train --config configs/tiny/crosstext2loc.yaml epochs=3 view=osm`` reads the
file, applies the ``key=value`` overrides (values parsed as YAML) and checks the result.
Defaults are CrossText2Loc's: CLIP ViT-L/14@336 (OpenAI weights), EPE to 300 positions, Adam
with lr 1e-5 and a cosine schedule, global batch 128, 40 epochs, best checkpoint by R@1.

``task`` picks the model trained by the one loop (:mod:`geotextloc.train.loop`):
``crosstext2loc`` (text -> satellite/OSM tile, release records of ``versions``) or
``geobridge`` (drone, street, satellite + text, GeoLoc manifest of ``regions``; ``mode`` is the
alignment ablation image-only | text-only | fused; ``missing_share`` of the training
locations lose their ``missing_view`` image; configs/*/geobridge.yaml hold the paper's values:
CLIP-L/14 at 224 px, Adam 1e-5, cosine, batch 32).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from geotextloc import config as profiles
from geotextloc.errors import ConfigError

TASKS = ("crosstext2loc", "geobridge")
VIEWS = ("sat", "osm")
GEOBRIDGE_MODES = ("image-only", "text-only", "fused")
GEOBRIDGE_VIEWS = ("drone", "street", "satellite")
EPE_MODES = ("truncate", "interpolate", "kps", "random", "native")
POS_INITS = ("normal", "sinusoidal")  # = geotextloc.models.epe.POS_INITS (no torch import here)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class TrainConfig:
    task: str = "crosstext2loc"  # crosstext2loc | geobridge
    # model
    model: str = "ViT-L-14-336"
    pretrained: str | None = "openai"  # open_clip tag, checkpoint file, or None (random init)
    epe: str = "interpolate"  # truncate | interpolate | kps | random
    text_pos_init: str = "normal"  # random init only: normal (open_clip's) | sinusoidal (smooth, like a
    #   pre-trained CLIP table; what EPE's interpolation assumes; geotextloc.models.epe.sinusoidal_table)
    context_length: int = 300
    image_size: int | None = None  # None: the model's own
    train_last_k: int | None = None  # None: train everything; k: last k blocks of each tower
    grad_checkpointing: bool = False  # recompute each block's activations in the backward pass: the
    #   paper step (ViT-L-14-336, 300 tokens, batch 128) needs more than an 80 GB GPU without it
    # GeoBridge (task: geobridge)
    mode: str = "fused"  # loss: image-only (L_img) | text-only (L_text) | fused (L_img + L_text)
    symmetric: bool = False  # per edge 1/2[L(S_uv) + L(S_vu)] instead of the paper's rows-only L(S_uv)
    regions: list[str] | None = None  # GeoLoc manifest regions under data_root (None: all)
    missing_view: str = "satellite"  # the view dropped from a share of training locations
    missing_share: float = 0.0  # that share, in [0, 1] (chosen by seed; masks in the loss)
    # data
    data_root: str = "data/embedded"
    versions: list[str] = field(default_factory=lambda: ["NewYork"])
    view: str = "sat"  # gallery view: sat | osm
    train_limit: int | None = None  # use only the first N train / test records (smoke runs)
    test_limit: int | None = None
    augment: bool = True  # open_clip's train transform (random resized crop, scale 0.9-1)
    cache_images: bool = False  # decode and transform every training tile once, keep the tensors in
    #   memory (needs augment: false; ~50 kB per 64 px tile): a tiny CPU run then spends its time training
    text_dropout: float = 0.0  # drop each text token with this probability per step (word dropout,
    #   start/end kept): without a pretrained prior a small text tower otherwise memorises rare tokens
    cache_features: bool = False  # pretrained-towers model: lock the text tower and all but the last
    #   train_last_k image stages, run the locked parts once over the training set (LiT; geotextloc.train.cached)
    feature_cache: str | None = None  # folder where those features are kept across runs (None: memory only)
    val_share: float = 0.0  # > 0: select best.pt on a validation split carved from the training places
    #   (this share of the released training places, the same for every seed; training records within a
    #   tile of them are dropped);
    #   0: select on the test split (the paper's rule)
    num_workers: int = 0
    # optimisation
    batch_size: int = 128  # global: split evenly over the DDP ranks
    epochs: int = 40
    lr: float = 1e-5
    warmup_steps: int = 0
    weight_decay: float = 0.0
    adam_eps: float = 1e-8  # torch's default; open_clip trains ViTs with 1e-6
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16 | fp16
    # evaluation and output
    eval_scope: int = 100  # candidates per query: the M nearest gallery tiles
    eval_every: int = 1  # epochs; 0 = never
    eval_batch_size: int = 64
    patience: int | None = None  # stop after this many evaluations without a better selection score
    out_dir: str = "runs/crosstext2loc"
    resume: bool = False  # continue the run in out_dir from its last.pt
    stop_after_epoch: int | None = None  # stop early as if interrupted (tests, time boxes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """The config in ``path`` with ``key=value`` overrides (YAML scalars) applied, checked."""
    values = profiles.load_config(path) if path is not None else {}
    values.update(profiles.parse_overrides(overrides or []))
    return from_dict(values, f"{path or 'defaults'}{' + overrides' if overrides else ''}")


def from_dict(values: dict, where: str = "config") -> TrainConfig:
    """A checked TrainConfig from plain values; ``where`` names the source in errors."""
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; known keys: {', '.join(FIELDS)}")
    values = dict(values)
    for key in ("versions", "regions"):
        if isinstance(values.get(key), str):
            values[key] = [values[key]]
    for key in ("lr", "weight_decay", "adam_eps", "missing_share", "text_dropout", "val_share"):  # YAML 1.1 reads 1e-5 as a string, 3 as an int
        if isinstance(values.get(key), (int, str)) and not isinstance(values.get(key), bool):
            try:
                values[key] = float(values[key])
            except ValueError:
                raise ConfigError(f"{where}: {key}={values[key]!r}; expected a number") from None
    cfg = TrainConfig(**values)
    _check(cfg, where)
    return cfg


def _check(cfg: TrainConfig, where: str) -> None:
    def fail(msg: str):
        raise ConfigError(f"{where}: {msg}")

    choices = {"task": TASKS, "mode": GEOBRIDGE_MODES, "missing_view": GEOBRIDGE_VIEWS, "view": VIEWS,
               "epe": EPE_MODES, "precision": PRECISIONS, "text_pos_init": POS_INITS}
    for key, allowed in choices.items():
        if getattr(cfg, key) not in allowed:
            fail(f"{key}={getattr(cfg, key)!r}; choose one of {', '.join(allowed)}")
    if not isinstance(cfg.missing_share, float) or not 0.0 <= cfg.missing_share <= 1.0:
        fail(f"missing_share={cfg.missing_share!r}; expected a number in [0, 1]")
    if cfg.missing_share and cfg.task != "geobridge":
        fail("missing_share applies to task=geobridge only")
    if cfg.regions is not None and (not isinstance(cfg.regions, list) or not cfg.regions
                                    or not all(isinstance(r, str) for r in cfg.regions)):
        fail(f"regions={cfg.regions!r}; expected null (all) or a list of GeoLoc regions, e.g. [Helsinki]")
    for key in ("context_length", "batch_size", "epochs", "eval_scope", "eval_batch_size"):
        value = getattr(cfg, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            fail(f"{key}={value!r}; expected a positive integer")
    if not isinstance(cfg.lr, float) or cfg.lr <= 0:
        fail(f"lr={cfg.lr!r}; expected a positive number")
    if not isinstance(cfg.versions, list) or not cfg.versions:
        fail("versions: expected a list of release versions, e.g. [NewYork]")
    if not isinstance(cfg.text_dropout, float) or not 0.0 <= cfg.text_dropout < 1.0:
        fail(f"text_dropout={cfg.text_dropout!r}; expected a number in [0, 1)")
    if cfg.text_pos_init != "normal" and cfg.pretrained is not None:
        fail(f"text_pos_init={cfg.text_pos_init!r} re-initialises a random-init model; set pretrained: null or text_pos_init: normal")
    if cfg.cache_images and cfg.augment:
        fail("cache_images: true needs augment: false (cached tiles are transformed once)")
    if cfg.train_last_k is not None and cfg.train_last_k < (0 if cfg.cache_features else 1):
        fail(f"train_last_k={cfg.train_last_k!r}; expected null (all) or a positive integer")
    if cfg.patience is not None and (not isinstance(cfg.patience, int) or isinstance(cfg.patience, bool)
                                     or cfg.patience < 1):
        fail(f"patience={cfg.patience!r}; expected null (never stop early) or a positive integer")
    if not isinstance(cfg.val_share, float) or not 0.0 <= cfg.val_share < 1.0:
        fail(f"val_share={cfg.val_share!r}; expected a number in [0, 1)")
    if cfg.cache_features and (cfg.augment or cfg.text_dropout):
        fail("cache_features: true needs augment: false and text_dropout: 0 (the locked parts run once)")
