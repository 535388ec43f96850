"""Training configuration: a typed schema, one set of defaults per task, short profile files.

``geotextloc train --config configs/tiny/crosstext2loc.yaml epochs=3 view=osm`` reads the
file, applies the ``key=value`` overrides (values parsed as YAML) and checks every value
against :class:`TrainConfig` before anything runs: its type, range or choices, and the rules
that tie keys together. A mistake is one line naming ``file:line`` (or the override) and what
is allowed.

``task`` picks the model trained by the one loop (:mod:`geotextloc.train.loop`) and the
defaults a profile file starts from (:func:`task_defaults`); a profile holds only what differs.

- ``crosstext2loc`` (text -> satellite/OSM tile, release records of ``versions``): the field
  defaults below, the paper's settings: CLIP ViT-L/14@336 (OpenAI weights), EPE to 300
  positions, Adam with lr 1e-5 and a cosine schedule, global batch 128, 40 epochs, best
  checkpoint by R@1. ``query`` picks the paper's query-modality row: text (the default), the
  street view alone (street) or both in one embedding (fusion, head ``fusion``).
- ``geobridge`` (drone, street, satellite + text, GeoLoc manifest of ``regions``; ``mode`` is
  the alignment ablation image-only | text-only | fused; ``missing_share`` of the training
  locations lose their ``missing_view`` image): :data:`GEOBRIDGE` changes the paper's: CLIP
  ViT-L/14 at 224 px and 77 text positions, batch 32, 200 epochs.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from geotextloc import config as profiles
from geotextloc.errors import ConfigError
from geotextloc.models.hf import family as transformers_family  # names only: no torch import
from geotextloc.views import FUSIONS, GALLERY_VIEWS, GEOBRIDGE_VIEWS, QUERIES

TASKS = ("crosstext2loc", "geobridge")
VIEWS = GALLERY_VIEWS
GEOBRIDGE_MODES = ("image-only", "text-only", "fused")
EPE_MODES = ("truncate", "interpolate", "kps", "random", "native")
POS_INITS = ("normal", "sinusoidal")  # = geotextloc.models.epe.POS_INITS (no torch import here)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
LOSSES = ("clip", "siglip", "itc+itm", "pairs")  # = geotextloc.models.factory.LOSSES (no torch import here)
DEVICES = ("auto", "cpu", "cuda")


def setting(default: Any, *, choices: tuple = (), low: float | None = None, high: float | None = None,
            open_low: bool = False, open_high: bool = False, null: str = "") -> Any:
    """A field with its allowed values: ``choices``, or the range from ``low`` to ``high``
    (``open_*``: the bound itself excluded); ``null`` says what None means."""
    rule = {"choices": choices, "low": low, "high": high, "open_low": open_low, "open_high": open_high,
            "null": null}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=rule)
    return field(default=default, metadata=rule)


@dataclass
class TrainConfig:
    task: str = setting("crosstext2loc", choices=TASKS)
    # model
    model: str = "ViT-L-14-336"
    pretrained: str | None = setting("openai", null="random init")  # open_clip tag, checkpoint file, or None;
    #   BLIP/ViLT Hub names (geotextloc.models.hf): hub
    epe: str = setting("interpolate", choices=EPE_MODES)
    text_pos_init: str = setting("normal", choices=POS_INITS)  # random init only: normal (open_clip's) |
    #   sinusoidal (smooth, like a pre-trained CLIP table; what EPE's interpolation assumes;
    #   geotextloc.models.epe.sinusoidal_table)
    context_length: int = setting(300, low=1)
    image_size: int | None = setting(None, low=1, null="the model's own")
    train_last_k: int | None = setting(None, low=0, null="train everything")  # k: last k blocks of each tower
    grad_checkpointing: bool = False  # recompute each block's activations in the backward pass: the
    #   paper step (ViT-L-14-336, 300 tokens, batch 128) needs more than an 80 GB GPU without it
    # GeoBridge (task: geobridge)
    mode: str = setting("fused", choices=GEOBRIDGE_MODES)  # loss: image-only (L_img) | text-only (L_text) |
    #   fused (L_img + L_text)
    symmetric: bool = False  # per edge 1/2[L(S_uv) + L(S_vu)] instead of the paper's rows-only L(S_uv)
    regions: list[str] | None = setting(None, null="all")  # GeoLoc manifest regions under data_root
    missing_view: str = setting("satellite", choices=GEOBRIDGE_VIEWS)  # dropped from a share of locations
    missing_share: float = setting(0.0, low=0.0, high=1.0)  # that share (chosen by seed; masks in the loss)
    # data
    data_root: str = "data/embedded"
    versions: list[str] = setting(["NewYork"])
    view: str = setting("sat", choices=VIEWS)  # gallery view
    query: str = setting("text", choices=QUERIES)  # CrossText2Loc's query: text (the paper) | street (the
    #   street view alone, Sample4Geo-style) | fusion (street view + text in one embedding); street and
    #   fusion need a street view in every record (geotextloc.models.query)
    fusion: str = setting("mlp", choices=FUSIONS)  # query: fusion: sum (normalised) | mlp (residual MLP)
    train_limit: int | None = setting(None, low=1, null="all")  # first N train / test records (smoke runs)
    test_limit: int | None = setting(None, low=1, null="all")
    augment: bool = True  # open_clip's train transform (random resized crop, scale 0.9-1)
    cache_images: bool = False  # decode and transform every training tile once, keep the tensors in
    #   memory (needs augment: false; ~50 kB per 64 px tile): a tiny CPU run then spends its time training
    text_dropout: float = setting(0.0, low=0.0, high=1.0, open_high=True)  # drop each text token with this
    #   probability per step (word dropout, start/end kept): without a pretrained prior a small text
    #   tower otherwise memorises rare tokens
    cache_features: bool = False  # pretrained-towers model: lock the text tower and all but the last
    #   train_last_k image stages, run the locked parts once over the training set (LiT; geotextloc.train.cached)
    feature_cache: str | None = setting(None, null="memory only")  # folder keeping those features across runs
    val_share: float = setting(0.0, low=0.0, high=1.0, open_high=True)  # > 0: select best.pt on a validation
    #   split carved from the training places (this share of the released training places, the same for
    #   every seed; training records within a tile of them are dropped); 0: select on the test split
    #   (the paper's rule)
    num_workers: int = setting(0, low=0)
    # optimisation
    batch_size: int = setting(128, low=1)  # global: split evenly over the DDP ranks
    epochs: int = setting(40, low=1)
    lr: float = setting(1e-5, low=0.0, open_low=True)
    warmup_steps: int = setting(0, low=0)
    weight_decay: float = setting(0.0, low=0.0)
    adam_eps: float = setting(1e-8, low=0.0, open_low=True)  # torch's default; open_clip trains ViTs with 1e-6
    loss: str | None = setting(None, choices=LOSSES, null="the model's: siglip for SigLIP (a logit bias), itc+itm "
                               "for BLIP, pairs for ViLT, else clip")  # geotextloc.train.losses
    seed: int = setting(0, low=0, high=2**32 - 1)
    device: str = setting("auto", choices=DEVICES)
    precision: str = setting("auto", choices=PRECISIONS)  # auto: bf16 autocast on CUDA, fp32 on CPU
    # evaluation and output
    eval_scope: int = setting(100, low=1)  # candidates per query: the M nearest gallery tiles
    rerank_k: int | None = setting(None, low=0, null="the model's (BLIP: 16)")  # BLIP: its ITM head re-ranks
    #   the first k of each query's scope (0: ITC alone; geotextloc.eval.pairs)
    eval_every: int = setting(1, low=0)  # epochs; 0 = never
    eval_batch_size: int = setting(64, low=1)
    patience: int | None = setting(None, low=1, null="never stop early")  # evaluations without a better
    #   selection score before stopping
    out_dir: str = "runs/crosstext2loc"
    resume: bool = False  # continue the run in out_dir from its last.pt
    stop_after_epoch: int | None = setting(None, low=1, null="every epoch")  # stop early as if interrupted
    #   (tests, time boxes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        """The resolved config as a YAML file that ``geotextloc train --config`` reads back."""
        return ("# The resolved config of this run (task defaults + profile + overrides).\n"
                + yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True))


# GeoBridge's defaults: where the GeoBridge paper differs from CrossText2Loc's (the field defaults).
GEOBRIDGE = {"task": "geobridge", "model": "ViT-L-14", "context_length": 77, "batch_size": 32, "epochs": 200,
             "out_dir": "runs/geobridge"}


def task_defaults(task: str) -> dict[str, Any]:
    """Every key's default for ``task``; a profile file holds only what differs from these."""
    if task not in TASKS:
        raise ConfigError(f"task={task!r}; choose one of {', '.join(TASKS)}")
    return TrainConfig(**(GEOBRIDGE if task == "geobridge" else {})).to_dict()


@dataclass(frozen=True)
class Rule:
    """The allowed values of one key, from its type and its ``setting(...)``."""

    kind: type  # bool, int, float, str, or list (of names)
    nullable: bool
    choices: tuple = ()
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    null: str = ""

    def allowed(self) -> str:
        """What to write, e.g. ``an integer >= 1`` or ``one of sat, osm``."""
        if self.choices:
            text = f"one of {', '.join(self.choices)}"
        else:
            text = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
                    list: "a list of names, e.g. [a, b]"}[self.kind]
            low, high = _number(self.low), _number(self.high)
            if self.low is not None and self.high is not None:
                text += f" in {'(' if self.open_low else '['}{low}, {high}{')' if self.open_high else ']'}"
            elif self.low is not None:
                text += f" {'>' if self.open_low else '>='} {low}"
        return f"null ({self.null}) or {text}" if self.nullable else text

    def accept(self, value: Any) -> tuple[bool, Any]:
        """(ok, value as used): YAML 1.1's ``1e-5`` string and ints become floats, a name a list."""
        if value is None:
            return self.nullable, None
        if self.kind is float and isinstance(value, (int, str)) and not isinstance(value, bool):
            try:
                value = float(value)
            except ValueError:
                return False, value
        if self.kind is list and isinstance(value, str):
            value = [value]
        if self.kind is list:
            ok = isinstance(value, list) and bool(value) and all(isinstance(v, str) and v for v in value)
            return ok, value
        if type(value) is not self.kind or (self.kind is str and not value):
            return False, value
        if self.kind is float and not math.isfinite(value):
            return False, value
        if self.choices:
            return value in self.choices, value
        if self.low is not None and (value <= self.low if self.open_low else value < self.low):
            return False, value
        if self.high is not None and (value >= self.high if self.open_high else value > self.high):
            return False, value
        return True, value


def _number(x: float | None) -> str:
    if x is None:
        return ""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _rules() -> dict[str, Rule]:
    hints = typing.get_type_hints(TrainConfig)
    rules = {}
    for f in dataclasses.fields(TrainConfig):
        hint = hints[f.name]
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        kinds = [typing.get_origin(k) or k for k in (typing.get_args(hint) if union else (hint,))]
        kind = next(k for k in kinds if k is not type(None))
        rules[f.name] = Rule(kind, type(None) in kinds, **f.metadata)
    return rules


RULES = _rules()


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """The config in ``path`` with ``key=value`` overrides (YAML scalars) applied, checked."""
    settings = profiles.read_yaml(path) if path is not None else profiles.Settings(source="defaults")
    settings.override(profiles.parse_overrides(overrides or []))
    return from_dict(settings)


def from_dict(values: Mapping[str, Any], where: str | None = None) -> TrainConfig:
    """A checked TrainConfig: ``values`` over the defaults of their task.

    Errors name ``where`` (default: the file and line of a :class:`~geotextloc.config.Settings`,
    else "config") and the key.
    """
    if where is None and isinstance(values, profiles.Settings):
        origin: Callable[[str], str] = values.where
    else:
        origin = lambda key: where or "config"  # noqa: E731
    for key in values:
        if key not in RULES:
            near = difflib.get_close_matches(str(key), RULES, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ConfigError(f"{origin(key)}: unknown key {key!r}{hint}; known keys: {', '.join(RULES)}")
    task = values.get("task", TrainConfig.task)
    if task not in TASKS:
        raise ConfigError(f"{origin('task')}: task={task!r}; choose one of {', '.join(TASKS)}")
    resolved = task_defaults(task) | dict(values)
    for key, rule in RULES.items():
        ok, resolved[key] = rule.accept(resolved[key])
        if not ok:
            verb = "choose" if rule.choices and not rule.nullable else "expected"
            raise ConfigError(f"{origin(key)}: {key}={values.get(key)!r}; {verb} {rule.allowed()}")
    cfg = TrainConfig(**resolved)
    _check_together(cfg, values, origin)
    return cfg


def _check_together(cfg: TrainConfig, given: Mapping[str, Any], origin: Callable[[str], str]) -> None:
    """The rules that tie keys together; the error names the first of the keys that was given."""

    def fail(keys: tuple[str, ...], msg: str) -> None:
        key = next((k for k in keys if k in given), keys[0])
        raise ConfigError(f"{origin(key)}: {msg}")

    if cfg.query != "text" and cfg.task != "crosstext2loc":
        fail(("query", "task"), f"query={cfg.query!r} applies to task=crosstext2loc only (GeoBridge has its views)")
    family = transformers_family(cfg.model)
    if cfg.query != "text" and family:
        fail(("query", "model"), f"query={cfg.query!r} needs an open_clip model (its image tower is copied for the "
             f"street views); {cfg.model} is a transformers model: use query: text")
    if cfg.query != "text" and cfg.loss not in (None, "clip"):
        fail(("query", "loss"), f"query={cfg.query!r} trains with the InfoNCE loss (clip); loss={cfg.loss!r} "
             "applies to text queries")
    if (cfg.loss is not None or cfg.rerank_k is not None) and cfg.task != "crosstext2loc":
        fail(("loss", "rerank_k", "task"), "loss and rerank_k apply to task=crosstext2loc only")
    if cfg.rerank_k is not None and family != "blip":
        fail(("rerank_k", "model"), f"rerank_k applies to BLIP models (an ITM head); {cfg.model} has none")
    if family and cfg.task != "crosstext2loc":
        fail(("model", "task"), f"{cfg.model} (a transformers {family.upper()} model) is a text -> tile baseline: "
             "task=crosstext2loc only")
    if family and (cfg.train_last_k is not None or cfg.cache_features or cfg.text_dropout):
        fail(("train_last_k", "cache_features", "text_dropout", "model"),
             f"train_last_k, cache_features and text_dropout apply to open_clip models; {cfg.model} is a "
             "transformers model (BLIP, ViLT): leave them at null, false and 0")
    if cfg.missing_share and cfg.task != "geobridge":
        fail(("missing_share", "task"), "missing_share applies to task=geobridge only")
    if cfg.text_pos_init != "normal" and cfg.pretrained is not None:
        fail(("text_pos_init", "pretrained"), f"text_pos_init={cfg.text_pos_init!r} re-initialises a random-init "
             "model; set pretrained: null or text_pos_init: normal")
    if cfg.cache_images and cfg.augment:
        fail(("augment", "cache_images"), "cache_images: true needs augment: false (cached tiles are transformed once)")
    if cfg.train_last_k == 0 and not cfg.cache_features:
        fail(("train_last_k", "cache_features"), "train_last_k=0 (nothing trains in the towers) needs "
             "cache_features: true; expected null (all) or an integer >= 1")
    if cfg.cache_features and (cfg.augment or cfg.text_dropout):
        fail(("augment", "text_dropout", "cache_features"),
             "cache_features: true needs augment: false and text_dropout: 0 (the locked parts run once)")
