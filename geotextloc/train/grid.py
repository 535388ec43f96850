"""Experiment grids for both papers, resumable: CrossText2Loc over (view, query, EPE variant,
text source, seed) and GeoBridge over (alignment mode, share of missing satellite tiles, seed).

The paper fine-tunes a *pre-trained* CLIP (77 text positions) after extending its
positional table to N = 300 (EPE). A profile without a pretrain file trains each run in one
stage from its config's pretrained weights: ``tiny`` and ``smoke`` start from the pretrained
towers (MiniLM text cut to 77 positions, MobileNetV2 image), ``paper`` from CLIP ViT-L/14@336
with the OpenAI weights. The ``scratch`` profile (a random-init model) has two stages instead:

- **stage 1, pretrain** (``configs/<profile>/crosstext2loc_pretrain.yaml``): train the
  random-init tiny model at L0 = 77 positions (``epe: truncate``);
- **stage 2, finetune** (``configs/<profile>/crosstext2loc.yaml``): start from the stage-1
  weights (``pretrained=<stage-1 run>/last.pt``) and apply the EPE variant: ``truncate`` keeps
  77 positions, ``interpolate`` / ``kps`` / ``random`` extend the table to N.

``pretrain_seed`` shares one stage-1 run among all seeds (as every run of the paper starts
from the same CLIP); without it each seed has its own. ``scratch`` *runs* (stage ``scratch``)
train the variant in one stage from random init, for comparison. The text source ``direct``
replaces every description (train and test) by the builder's "direct generation" text
(``<root>/direct/<version>/<split>.json``, same keys).

The query ``street`` (a street view: the paper's "street image only" row) and ``fusion`` (a
street view and its description, early fusion) take the profile's ``crosstext2loc_street.yaml`` /
``crosstext2loc_fusion.yaml`` in place of ``crosstext2loc.yaml`` (one stage; those profiles have no
stage 1). Their runs are ``<view>/street/seed<s>`` and ``<view>/fusion-<epe>-<source>/seed<s>``.
A ``baseline`` (clip | siglip | blip | vilt: the papers' comparison rows) takes the profile's
``crosstext2loc_<baseline>.yaml`` for text queries; its runs are ``<view>/<baseline>-<epe>-<source>/seed<s>``.

GeoBridge runs (:class:`BridgeSpec`) take ``configs/<profile>/geobridge.yaml`` with the run's
``mode`` (image-only | text-only | fused), ``missing_share`` and seed.

Runs live in ``<runs_dir>/<view>/pretrain/seed<s>``, ``<runs_dir>/<view>/<epe>-<source>/seed<s>``
(``<city>-<view>/...`` for per-city runs) and ``<runs_dir>/geoloc/<mode>[-missing<share>]/seed<s>``.
A run is skipped when its ``done.json`` exists (trained, or stopped early by ``patience``, and
evaluated), resumed from ``last.pt`` when interrupted, started otherwise. Then its best
checkpoint is evaluated on the test split (CrossText2Loc: per city and query group with
:func:`geotextloc.eval.cities.evaluate_run`; GeoBridge: every retrieval direction), and
:func:`collect` gathers every finished run of a task into one DataFrame.

    geotextloc experiments --profile tiny --views osm --variants truncate,interpolate --seeds 0,1,2
    geotextloc experiments --profile scratch --pretrain-seed 0 --views osm --variants truncate,interpolate --seeds 0,1,2
    geotextloc experiments --profile tiny --views osm,sat --queries text,street,fusion --seeds 0,1,2
    geotextloc experiments --task geobridge --profile tiny --modes image-only,text-only,fused --seeds 0,1,2
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from geotextloc import config as profiles
from geotextloc.errors import ConfigError, DataError
from geotextloc.files import atomic_write_text
from geotextloc.eval.metrics import METRIC_KEYS
from geotextloc.views import QUERIES, query_kind

PRETRAIN, FINETUNE, SCRATCH = "pretrain", "finetune", "scratch"
TEXT_SOURCES = ("full", "direct")
BASELINES = ("clip", "siglip", "blip", "vilt")  # configs/<profile>/crosstext2loc_<baseline>.yaml
GEOBRIDGE_MODES = ("image-only", "text-only", "fused")
BRIDGE_KEYS = ("R@1", "R@5", "R@10", "AP", "Count")  # = geotextloc.eval.multiview.WHOLE_KEYS


@dataclass(frozen=True)
class RunSpec:
    """One training run of a grid.

    ``stage``: ``pretrain`` (stage 1), ``finetune`` (stage 2, from the stage-1 run of the same
    view, city and seed) or ``scratch`` (one stage from random init with the variant, as many
    epochs as both stages together: what the two-stage protocol replaces).
    ``city``: train and test on that city only (``<city>-mixed``); None: the config's versions.
    ``pretrain_seed``: start stage 2 from the stage-1 run of that seed (one stage-1 run shared by
    every seed, as the paper fine-tunes every run from the same CLIP); None: from its own seed.
    """

    view: str  # gallery view: sat | osm
    seed: int
    epe: str = "interpolate"  # truncate | interpolate | kps | random
    text_source: str = "full"  # full | direct
    stage: str = FINETUNE
    city: str | None = None
    pretrain_seed: int | None = None  # the stage-1 run to start from; None: this run's seed
    query: str = "text"  # text | street | fusion
    baseline: str | None = None  # clip | siglip | blip | vilt: crosstext2loc_<baseline>.yaml

    @property
    def key(self) -> str:
        """Path of the run below the runs folder, e.g. ``osm/interpolate-full/seed0``."""
        kind = {PRETRAIN: PRETRAIN, FINETUNE: f"{self.epe}-{self.text_source}",
                SCRATCH: f"{self.epe}-{self.text_source}-scratch"}[self.stage]
        if self.query != "text":
            kind = "street" if self.query == "street" else f"fusion-{kind}"
        elif self.baseline:
            kind = f"{self.baseline}-{kind}"
        where = f"{self.city}-{self.view}" if self.city else self.view
        return f"{where}/{kind}/seed{self.seed}"


@dataclass(frozen=True)
class BridgeSpec:
    """One GeoBridge run of a grid: the alignment ``mode`` (image-only: L_img; text-only: L_text;
    fused: both), the share of training locations without their satellite tile, and the seed."""

    seed: int
    mode: str = "fused"
    missing_share: float = 0.0
    task = "geobridge"

    @property
    def key(self) -> str:
        """Path of the run below the runs folder, e.g. ``geoloc/fused/seed0``."""
        missing = f"-missing{self.missing_share:g}" if self.missing_share else ""
        return f"geoloc/{self.mode}{missing}/seed{self.seed}"


def has_pretrain_stage(profile: str) -> bool:
    """Does ``profile`` pre-train at 77 positions first (``crosstext2loc_pretrain.yaml``)?"""
    return profiles.config_path("crosstext2loc_pretrain", profile).is_file()


def pretrain_of(spec: RunSpec) -> RunSpec:
    """The stage-1 run a stage-2 run starts from (same view and city; seed ``pretrain_seed``)."""
    seed = spec.seed if spec.pretrain_seed is None else spec.pretrain_seed
    return RunSpec(spec.view, seed, epe="truncate", stage=PRETRAIN, city=spec.city)


def plan(
    profile: str,
    views: Iterable[str] = ("osm",),
    variants: Iterable[str] = ("interpolate",),
    seeds: Iterable[int] = (0,),
    text_sources: Iterable[str] = ("full",),
    cities: Iterable[str | None] = (None,),
    stage: str = FINETUNE,
    pretrain_seed: int | None = None,
    queries: Iterable[str] = ("text",),
    baselines: Iterable[str] = (),
) -> list[RunSpec]:
    """Every run of the grid cities x views x queries x seeds x text sources x variants, stage-1
    runs first. A street run has no text: one per (city, view, seed), whatever the variants and
    sources. ``baselines`` add text-query runs of those comparison models after the grid's own.

    ``pretrain_seed``: see :class:`RunSpec` (None: one stage-1 run per seed).
    """
    queries = list(queries)
    bad = next((q for q in queries if q not in QUERIES), None)
    if bad is not None:
        raise ConfigError(f"query {bad!r}; choose one of {', '.join(QUERIES)}")
    if queries != ["text"] and (stage != FINETUNE or has_pretrain_stage(profile)):
        raise ConfigError(f"street and fusion queries train in one stage from the profile's pretrained weights; "
                          f"profile {profile!r} (stage {stage}) has no such runs: use --profile smoke|tiny|paper")
    runs = list(dict.fromkeys(
        RunSpec(v, s, "interpolate" if q == "street" else e, "full" if q == "street" else t, stage, c,
                pretrain_seed if stage == FINETUNE else None, q)
        for c in cities for v in views for q in queries for s in seeds for t in text_sources for e in variants))
    runs += [RunSpec(v, s, e, t, stage, c, None, "text", b)
             for b in baselines for c in cities for v in views for s in seeds for t in text_sources for e in variants]
    bad = next((b for b in baselines if b not in BASELINES), None)
    if bad is not None:
        raise ConfigError(f"baseline {bad!r}; choose one of {', '.join(BASELINES)}")
    for spec in runs:
        if spec.text_source not in TEXT_SOURCES:
            raise ConfigError(f"text source {spec.text_source!r}; choose one of {', '.join(TEXT_SOURCES)}")
        if spec.stage not in (FINETUNE, SCRATCH):
            raise ConfigError(f"stage {spec.stage!r}; plan {FINETUNE} or {SCRATCH} runs")
    two_stage = stage == FINETUNE and has_pretrain_stage(profile)
    pretrain = list(dict.fromkeys(pretrain_of(s) for s in runs)) if two_stage else []
    return pretrain + runs


def plan_geobridge(modes: Iterable[str] = ("fused",), seeds: Iterable[int] = (0,),
                   missing_shares: Iterable[float] = (0.0,)) -> list[BridgeSpec]:
    """Every GeoBridge run of the grid missing shares x modes x seeds."""
    runs = [BridgeSpec(s, m, float(share)) for share in missing_shares for m in modes for s in seeds]
    for spec in runs:
        if spec.mode not in GEOBRIDGE_MODES:
            raise ConfigError(f"GeoBridge mode {spec.mode!r}; choose one of {', '.join(GEOBRIDGE_MODES)}")
        if not 0.0 <= spec.missing_share < 1.0:
            raise ConfigError(f"missing share {spec.missing_share:g}; give a share in [0, 1)")
    return runs


def run_config(spec: RunSpec, profile: str, runs_dir: str | Path, data_root: str | Path | None = None,
               overrides: dict | None = None):
    """The checked TrainConfig of ``spec``: the profile's stage file plus the run's settings.

    ``overrides`` (config key -> value) apply to every stage; keys prefixed with a stage
    (``{"finetune.epochs": 2}``) to that stage only.
    """
    from geotextloc.train.config import from_dict, load_config

    two_stage = has_pretrain_stage(profile)
    name = "crosstext2loc_pretrain" if spec.stage == PRETRAIN else "crosstext2loc"
    variant = spec.baseline or (spec.query if spec.query != "text" else None)
    path = profiles.config_path(f"{name}_{variant}" if variant else name, profile)
    if not path.is_file():
        raise ConfigError(f"{path}: profile {profile!r} has no {variant} runs; write that file "
                          "(see configs/tiny/) or use --profile tiny")
    values = load_config(path).to_dict()  # the profile file over its task's defaults, checked
    if spec.stage == SCRATCH and two_stage:  # stage-1 optimisation for the epochs of both stages
        first = load_config(profiles.config_path("crosstext2loc_pretrain", profile)).to_dict()
        values |= {k: first[k] for k in ("lr", "warmup_steps", "adam_eps", "weight_decay")}
        values["text_pos_init"] = first["text_pos_init"]  # a random-init run, like stage 1
        values["epochs"] = first["epochs"] + values["epochs"]
    values |= {"view": spec.view, "seed": spec.seed, "out_dir": str(Path(runs_dir) / spec.key), "resume": False}
    if spec.city:  # that city's share of the configured versions (-mixed, and -dense in stage 1)
        dense = [f"{spec.city}-dense"] if any(v.endswith("-dense") for v in values["versions"]) else []
        values["versions"] = [f"{spec.city}-mixed", *dense]
    if data_root is not None:
        values["data_root"] = str(data_root)
    if spec.stage != PRETRAIN and spec.query != "street":  # a street run has no text to extend
        values["epe"] = spec.epe
    if spec.stage == FINETUNE and two_stage:
        values["pretrained"] = str(Path(runs_dir) / pretrain_of(spec).key / "last.pt")
    if spec.stage == SCRATCH:
        values["pretrained"] = None
    for key, value in (overrides or {}).items():
        stage, dot, name = key.rpartition(".")
        if stage and stage not in (PRETRAIN, FINETUNE, SCRATCH):
            raise ConfigError(f"override {key!r}: prefix a stage-only key with {PRETRAIN}., {FINETUNE}. or {SCRATCH}.")
        if not dot or stage == spec.stage:
            values[name] = value
    return from_dict(values, f"{path} ({spec.key})")


def bridge_config(spec: BridgeSpec, profile: str, runs_dir: str | Path, data_root: str | Path | None = None,
                  overrides: dict | None = None):
    """The checked TrainConfig of a GeoBridge run: the profile's ``geobridge.yaml`` plus the run's
    settings and ``overrides`` (config key -> value)."""
    from geotextloc.train.config import from_dict, load_config

    path = profiles.config_path("geobridge", profile)
    values = load_config(path).to_dict()
    values |= {"mode": spec.mode, "missing_share": spec.missing_share, "seed": spec.seed,
               "out_dir": str(Path(runs_dir) / spec.key), "resume": False}
    if data_root is not None:
        values["data_root"] = str(data_root)
    for key, value in (overrides or {}).items():
        if "." in key:
            raise ConfigError(f"override {key!r}: GeoBridge runs have one stage; give the key without a prefix")
        values[key] = value
    return from_dict(values, f"{path} ({spec.key})")


def direct_texts(root: str | Path) -> dict[str, str]:
    """name -> "direct generation" text from every ``<root>/direct/<version>/<split>.json``."""
    files = sorted(Path(root).glob("direct/*/*.json"))
    if not files:
        raise DataError(f"{root}/direct: no direct-generation texts; rebuild the embedded dataset "
                        "(geotextloc data build-embedded writes them) or use text_source=full")
    texts: dict[str, str] = {}
    for file in files:
        texts.update(json.loads(file.read_text()))
    return texts


def with_text_source(records: Sequence, root: str | Path, source: str) -> list:
    """``records`` with their descriptions replaced by the ``source`` texts (``full``: unchanged)."""
    if source == "full":
        return list(records)
    texts = direct_texts(root)
    missing = [r for r in records if r.name not in texts]
    if missing:
        first = missing[0]
        fix = (f"run geotextloc data densify --out {root} again (it writes the dense places' direct texts "
               "without rendering anything)" if first.version.endswith("-dense")
               else "rebuild the dataset so that direct/ matches CVG-text/")
        raise DataError(f"{root}/direct: no direct text for record {first.name!r} of {first.version} "
                        f"({len(missing)} in all); {fix}")
    return [dataclasses.replace(r, text=texts[r.name]) for r in records]


def split_records(cfg, text_source: str = "full") -> tuple[list, list]:
    """(train, test) records of ``cfg`` in the chosen text source."""
    from geotextloc.train.loop import load_records

    train, test = load_records(cfg)
    return with_text_source(train, cfg.data_root, text_source), with_text_source(test, cfg.data_root, text_source)


class RunBusy(Exception):
    """Another live process holds the run's lock."""


@contextmanager
def run_lock(out: Path):
    """Hold ``out/.lock`` (our pid) while training a run, so that several ``geotextloc experiments``
    processes can share one grid; a lock whose process has died is taken over."""
    out.mkdir(parents=True, exist_ok=True)
    lock = out / ".lock"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            try:
                pid = int(lock.read_text() or 0)
                os.kill(pid, 0)  # raises if no such process
            except (ValueError, ProcessLookupError, FileNotFoundError):
                lock.unlink(missing_ok=True)  # stale: its process is gone
                continue
            except PermissionError:  # alive, another user's
                pass
            raise RunBusy(f"{out} is being trained by process {pid}") from None
    else:
        raise RunBusy(f"{out}: could not take the lock")
    try:
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        yield
    finally:
        lock.unlink(missing_ok=True)


def run_one(spec: RunSpec | BridgeSpec, profile: str, runs_dir: str | Path, data_root: str | Path | None = None,
            overrides: dict | None = None, evaluate: bool = True) -> dict:
    """Train (or resume, or skip) one run of either task and evaluate it; returns its ``done.json``
    content (a run stopped early by ``stop_after_epoch`` is not done: no evaluation, no ``done.json``).
    Raises :class:`RunBusy` while another process trains the run.

    CrossText2Loc: the per-epoch validation (best checkpoint, curves) uses the panorama queries
    where the query groups need galleries of their own (:func:`~geotextloc.eval.cities.galleries`),
    else all test queries; the final evaluation (``evaluate``, default True) covers every city and
    query group. GeoBridge: the config's selection split, then every direction on the test split.
    """
    bridge = isinstance(spec, BridgeSpec)
    cfg = (bridge_config if bridge else run_config)(spec, profile, runs_dir, data_root, overrides)
    out = Path(cfg.out_dir)
    done = out / "done.json"
    if done.exists():
        return json.loads(done.read_text())
    if not bridge and spec.stage == FINETUNE and has_pretrain_stage(profile) and not Path(cfg.pretrained).exists():
        raise ConfigError(f"{cfg.pretrained}: stage-1 checkpoint missing; run {pretrain_of(spec).key} first")
    with run_lock(out):
        if done.exists():  # finished by another process meanwhile
            return json.loads(done.read_text())
        return (_train_and_evaluate_bridge if bridge else _train_and_evaluate)(spec, cfg, profile, evaluate)


def _train_timed(cfg, *records) -> tuple[dict, float]:
    """(the loop's summary, training seconds of this run so far, resumed parts included)."""
    from geotextloc.train.loop import train

    out = Path(cfg.out_dir)
    cfg.resume = (out / "last.pt").exists()
    started = time.time()
    summary = train(cfg, *records)
    timing = out / "timing.json"
    previous = json.loads(timing.read_text())["train_seconds"] if timing.exists() and cfg.resume else 0.0
    seconds = previous + time.time() - started
    atomic_write_text(timing, json.dumps({"train_seconds": seconds}))
    return summary, seconds


def _finished(cfg, summary: dict) -> bool:
    """Trained every epoch or stopped early (not paused by ``stop_after_epoch``)."""
    return summary["epoch"] >= cfg.epochs or stopped_early(cfg.out_dir)


def _train_and_evaluate(spec: RunSpec, cfg, profile: str, evaluate: bool) -> dict:
    from geotextloc.eval.cities import evaluate_run, galleries

    train_records, test_records = split_records(cfg, spec.text_source)
    validation = [r for _, group, part in galleries(test_records) if group != "single_view" for r in part]
    summary, seconds = _train_timed(cfg, train_records, validation)
    record = {"run": spec.key, "task": "crosstext2loc", **dataclasses.asdict(spec), "profile": profile,
              "config": cfg.to_dict(), "summary": summary, "train_seconds": round(seconds, 1)}
    if not _finished(cfg, summary):  # stop_after_epoch: resumed next time
        return record
    if evaluate:
        started = time.time()
        record["eval"] = evaluate_run(cfg.out_dir, test_records, cfg.view, cfg.eval_batch_size, _device(cfg.device))
        record["eval_seconds"] = round(time.time() - started, 1)
    atomic_write_text(Path(cfg.out_dir) / "done.json", json.dumps(record, indent=2))
    return record


def _train_and_evaluate_bridge(spec: BridgeSpec, cfg, profile: str, evaluate: bool) -> dict:
    """Train a GeoBridge run, then evaluate its best checkpoint in every direction on the test
    split (``eval/directions-queries.csv`` holds the per-query ranks)."""
    from geotextloc.data.geoloc_manifest import read_geoloc
    from geotextloc.eval.multiview import evaluate_multiview
    from geotextloc.train.loop import load_checkpoint

    summary, seconds = _train_timed(cfg)
    record = {"run": spec.key, **dataclasses.asdict(spec), "task": "geobridge", "profile": profile,
              "config": cfg.to_dict(), "summary": summary, "train_seconds": round(seconds, 1)}
    if not _finished(cfg, summary):
        return record
    if evaluate:
        out, started = Path(cfg.out_dir), time.time()
        test = [r for r in read_geoloc(cfg.data_root, cfg.regions) if r.split == "test"]
        model, preprocess, tokenizer, _ = load_checkpoint(out / "best.pt", _device(cfg.device))
        report = evaluate_multiview(model, test, preprocess, tokenizer, scope=cfg.eval_scope,
                                    batch_size=cfg.eval_batch_size)
        report.to_csv(out / "eval" / "directions-queries.csv")
        record["eval"] = {"checkpoint": "best.pt", **report.to_dict()}
        record["eval_seconds"] = round(time.time() - started, 1)
    atomic_write_text(Path(cfg.out_dir) / "done.json", json.dumps(record, indent=2))
    return record


def stopped_early(run_dir: str | Path) -> bool:
    """Did the run end by early stopping (a ``{"kind": "early_stop"}`` row in its ``metrics.jsonl``)?

    Such a run is finished although it trained fewer than ``epochs`` epochs."""
    metrics = Path(run_dir) / "metrics.jsonl"
    return metrics.exists() and any(json.loads(line)["kind"] == "early_stop"
                                    for line in metrics.read_text().splitlines())


def _device(device: str) -> str:
    import torch

    return "cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu"


def run_grid(specs: Sequence[RunSpec | BridgeSpec], profile: str, runs_dir: str | Path, data_root: str | Path | None = None,
             overrides: dict | None = None, log=print) -> pd.DataFrame:
    """Run every spec in order (finished ones are skipped); returns :func:`collect`'s table of
    the specs' task (one task per grid)."""
    for i, spec in enumerate(specs, 1):
        state = "done" if (Path(runs_dir) / spec.key / "done.json").exists() else "running"
        log(f"[{i}/{len(specs)}] {spec.key}: {state}")
        try:
            record = run_one(spec, profile, runs_dir, data_root, overrides)
        except RunBusy as busy:
            log(f"[{i}/{len(specs)}] {spec.key}: skipped, {busy}")
            continue
        if state == "running" and "eval" in record:
            best = record["summary"]["best_R@1"]
            log(f"[{i}/{len(specs)}] {spec.key}: trained in {record['train_seconds']:.0f} s"
                + (f", best selection score {best:.2f} %" if best is not None else ""))
    return collect(runs_dir, specs, task=_task_of(specs))


def _task_of(specs: Sequence[RunSpec | BridgeSpec]) -> str:
    tasks = {"geobridge" if isinstance(s, BridgeSpec) else "crosstext2loc" for s in specs}
    if len(tasks) > 1:
        raise ConfigError("a grid holds the runs of one task; plan CrossText2Loc and GeoBridge grids apart")
    return tasks.pop() if tasks else "crosstext2loc"


def collect(runs_dir: str | Path, specs: Sequence[RunSpec | BridgeSpec] | None = None,
            task: str = "crosstext2loc") -> pd.DataFrame:
    """The finished, evaluated runs of ``task`` under ``runs_dir`` as one table.

    CrossText2Loc: one row per (run, test city, query group) with the protocol's metrics;
    GeoBridge: one row per (run, direction) with R@1/5/10, AP and Count over the whole test
    gallery. ``specs`` restricts the table to those runs (default: every finished run).
    """
    runs_dir = Path(runs_dir)
    keys = None if specs is None else {s.key for s in specs}
    rows = []
    for done in sorted(runs_dir.glob("*/*/seed*/done.json")):
        record = json.loads(done.read_text())
        if "eval" not in record or record.get("task", "crosstext2loc") != task \
                or (keys is not None and record["run"] not in keys):
            continue
        if task == "geobridge":
            for direction, metrics in record["eval"]["whole"].items():
                rows.append({"run": record["run"], "mode": record["mode"], "missing_share": record["missing_share"],
                             "seed": record["seed"], "direction": direction, **metrics,
                             "train_seconds": record["train_seconds"]})
            continue
        for where, metrics in record["eval"]["results"].items():
            city, group = where.split("/")
            rows.append({"run": record["run"], "stage": record["stage"], "trained_on": record["city"] or "all",
                         "view": record["view"], "query": query_kind(record),
                         "baseline": record.get("baseline") or "", "epe": record["epe"], "text_source": record["text_source"],
                         "seed": record["seed"], "city": city, "group": group, **metrics,
                         "train_seconds": record["train_seconds"]})
    columns = (["run", "mode", "missing_share", "seed", "direction", *BRIDGE_KEYS, "train_seconds"]
               if task == "geobridge" else
               ["run", "stage", "trained_on", "view", "query", "baseline", "epe", "text_source", "seed", "city", "group",
                *METRIC_KEYS, "train_seconds"])
    return pd.DataFrame(rows, columns=columns)
