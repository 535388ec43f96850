"""Experiment grids: CrossText2Loc runs over (view, EPE variant, text source, seed), resumable.

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

Runs live in ``<runs_dir>/<view>/pretrain/seed<s>`` and ``<runs_dir>/<view>/<epe>-<source>/seed<s>``
(``<city>-<view>/...`` for per-city runs). A run is skipped when its ``done.json`` exists
(trained, or stopped early by ``patience``, and evaluated), resumed from ``last.pt`` when
interrupted, started otherwise. Then its best checkpoint is evaluated per city and query group
(:func:`evaluate_run`), and :func:`collect` gathers every finished run into one DataFrame.

    geotextloc experiments --profile tiny --views osm --variants truncate,interpolate --seeds 0,1,2
    geotextloc experiments --profile scratch --pretrain-seed 0 --views osm --variants truncate,interpolate --seeds 0,1,2
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

PRETRAIN, FINETUNE, SCRATCH = "pretrain", "finetune", "scratch"
TEXT_SOURCES = ("full", "direct")


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

    @property
    def key(self) -> str:
        """Path of the run below the runs folder, e.g. ``osm/interpolate-full/seed0``."""
        kind = {PRETRAIN: PRETRAIN, FINETUNE: f"{self.epe}-{self.text_source}",
                SCRATCH: f"{self.epe}-{self.text_source}-scratch"}[self.stage]
        where = f"{self.city}-{self.view}" if self.city else self.view
        return f"{where}/{kind}/seed{self.seed}"


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
) -> list[RunSpec]:
    """Every run of the grid cities x views x seeds x text sources x variants, stage-1 runs first.

    ``pretrain_seed``: see :class:`RunSpec` (None: one stage-1 run per seed).
    """
    runs = [RunSpec(v, s, e, t, stage, c, pretrain_seed if stage == FINETUNE else None)
            for c in cities for v in views for s in seeds for t in text_sources for e in variants]
    for spec in runs:
        if spec.text_source not in TEXT_SOURCES:
            raise ConfigError(f"text source {spec.text_source!r}; choose one of {', '.join(TEXT_SOURCES)}")
        if spec.stage not in (FINETUNE, SCRATCH):
            raise ConfigError(f"stage {spec.stage!r}; plan {FINETUNE} or {SCRATCH} runs")
    two_stage = stage == FINETUNE and has_pretrain_stage(profile)
    pretrain = list(dict.fromkeys(pretrain_of(s) for s in runs)) if two_stage else []
    return pretrain + runs


def run_config(spec: RunSpec, profile: str, runs_dir: str | Path, data_root: str | Path | None = None,
               overrides: dict | None = None):
    """The checked TrainConfig of ``spec``: the profile's stage file plus the run's settings.

    ``overrides`` (config key -> value) apply to every stage; keys prefixed with a stage
    (``{"finetune.epochs": 2}``) to that stage only.
    """
    from geotextloc.train.config import from_dict, load_config

    two_stage = has_pretrain_stage(profile)
    path = profiles.config_path("crosstext2loc_pretrain" if spec.stage == PRETRAIN else "crosstext2loc", profile)
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
    if spec.stage != PRETRAIN:
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


def galleries(test: Sequence) -> list[tuple[str, str | None, list]]:
    """(city, query group or None, records): the test galleries the protocol is run on.

    One gallery per city (the paper: panorama and single-view queries share it, the groups
    are read off the per-query table), except where a location's tile appears under two
    names (the embedded ``<City>`` and ``<City>-photos`` read together: a location's panorama
    and single-view names share one image and its coordinates). There the protocol's
    tie-breaking would always rank the panorama name first, so each query group gets its own
    gallery. (The embedded ``<City>-mixed`` takes one name per location and needs no split.)
    """
    by_city: dict[str, list] = {}
    for record in test:
        by_city.setdefault(record.city, []).append(record)
    out = []
    for city, records in sorted(by_city.items()):
        names_at: dict[tuple[float, float], set] = {}
        for record in records:
            names_at.setdefault((record.lat, record.lon), set()).add(record.name)
        if any(len(names) > 1 for names in names_at.values()):
            for group, view in (("panorama", "panorama"), ("single_view", "single")):
                part = [r for r in records if r.view == view]
                if part:
                    out.append((city, group, part))
        else:
            out.append((city, None, records))
    return out


def per_city(test: Sequence, report_for, scope: int | None = 100,
             csv_dir: str | Path | None = None, view: str = "") -> dict[str, dict]:
    """Protocol summaries per ``"<city>/<group>"`` (group: overall, panorama, single_view).

    ``report_for(records)`` returns the :class:`~geotextloc.eval.ProtocolReport` of one gallery
    (:func:`galleries`); a city's per-query tables are pooled before summarising, and written to
    ``csv_dir/<city>-<view>-queries.csv`` when ``csv_dir`` is given.
    """
    from geotextloc.eval import ProtocolReport

    tables: dict[str, list] = {}
    for city, _, records in galleries(test):
        tables.setdefault(city, []).append(report_for(records).table)
    results = {}
    for city, parts in tables.items():
        report = ProtocolReport(table=pd.concat(parts, ignore_index=True), scope=scope)
        if csv_dir is not None:
            report.to_csv(Path(csv_dir) / f"{city}-{view}-queries.csv")
        results |= {f"{city}/{group}": metrics for group, metrics in report.to_dict().items()}
    return results


def evaluate_records(model, preprocess, tokenizer, test: Sequence, view: str, scope: int = 100,
                     batch_size: int = 64, csv_dir: str | Path | None = None) -> dict[str, dict]:
    """:func:`per_city` with ``model``'s similarities (text queries -> ``view`` tiles)."""
    from geotextloc.eval.embed import evaluate_model

    def report_for(records):
        return evaluate_model(model, records, view, preprocess, tokenizer, scope=scope,
                              batch_size=batch_size, progress=False)

    return per_city(test, report_for, scope, csv_dir, view)


def evaluate_run(run_dir: str | Path, test: Sequence, view: str, batch_size: int = 64,
                 device: str = "cpu", csv_dir: str | Path | None = None) -> dict:
    """:func:`evaluate_records` for ``run_dir``'s best checkpoint (else its last); the per-query
    tables go to ``csv_dir`` (default ``run_dir/eval``, the run's own test split)."""
    from geotextloc.models.factory import from_checkpoint

    run_dir = Path(run_dir)
    checkpoint = run_dir / "best.pt" if (run_dir / "best.pt").exists() else run_dir / "last.pt"
    model, _, preprocess, tokenizer, _ = from_checkpoint(str(checkpoint), device=device)
    results = evaluate_records(model, preprocess, tokenizer, test, view, batch_size=batch_size,
                               csv_dir=run_dir / "eval" if csv_dir is None else csv_dir)
    return {"checkpoint": checkpoint.name, "results": results}


def evaluate_zero_shot(name: str, pretrained: str, test: Sequence, view: str, device: str = "cpu",
                       batch_size: int = 64) -> dict[str, dict]:
    """An open_clip model with its released weights, not fine-tuned, at its own 77 positions.

    Raises :class:`~geotextloc.errors.OfflineError` (one line) when the weights cannot be had.
    """
    from geotextloc.models.factory import create

    model, _, preprocess, tokenizer = create(name, pretrained, epe_mode="truncate", device=device)
    return evaluate_records(model.eval(), preprocess, tokenizer, test, view, batch_size=batch_size)


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


def run_one(spec: RunSpec, profile: str, runs_dir: str | Path, data_root: str | Path | None = None,
            overrides: dict | None = None, evaluate: bool = True) -> dict:
    """Train (or resume, or skip) one run and evaluate it; returns its ``done.json`` content
    (a run stopped early by ``stop_after_epoch`` is not done: no evaluation, no ``done.json``).
    Raises :class:`RunBusy` while another process trains the run.

    The per-epoch validation (best checkpoint, curves) uses the panorama queries where the
    query groups need galleries of their own (:func:`galleries`), else all test queries; the
    final evaluation (``evaluate``, default True) covers every city and query group.
    """
    cfg = run_config(spec, profile, runs_dir, data_root, overrides)
    out = Path(cfg.out_dir)
    done = out / "done.json"
    if done.exists():
        return json.loads(done.read_text())
    if spec.stage == FINETUNE and has_pretrain_stage(profile) and not Path(cfg.pretrained).exists():
        raise ConfigError(f"{cfg.pretrained}: stage-1 checkpoint missing; run {pretrain_of(spec).key} first")
    with run_lock(out):
        if done.exists():  # finished by another process meanwhile
            return json.loads(done.read_text())
        return _train_and_evaluate(spec, cfg, profile, evaluate)


def _train_and_evaluate(spec: RunSpec, cfg, profile: str, evaluate: bool) -> dict:
    from geotextloc.train.loop import train

    out = Path(cfg.out_dir)
    cfg.resume = (out / "last.pt").exists()
    train_records, test_records = split_records(cfg, spec.text_source)
    validation = [r for _, group, part in galleries(test_records) if group != "single_view" for r in part]
    started = time.time()
    summary = train(cfg, train_records, validation)
    seconds = time.time() - started
    timing = out / "timing.json"
    previous = json.loads(timing.read_text())["train_seconds"] if timing.exists() and cfg.resume else 0.0
    atomic_write_text(timing, json.dumps({"train_seconds": previous + seconds}))
    record = {"run": spec.key, **dataclasses.asdict(spec), "profile": profile, "config": cfg.to_dict(),
              "summary": summary, "train_seconds": round(previous + seconds, 1)}
    if summary["epoch"] < cfg.epochs and not stopped_early(out):  # stop_after_epoch: resumed next time
        return record
    if evaluate:
        started = time.time()
        record["eval"] = evaluate_run(out, test_records, cfg.view, cfg.eval_batch_size, _device(cfg.device))
        record["eval_seconds"] = round(time.time() - started, 1)
    atomic_write_text(out / "done.json", json.dumps(record, indent=2))
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


def run_grid(specs: Sequence[RunSpec], profile: str, runs_dir: str | Path, data_root: str | Path | None = None,
             overrides: dict | None = None, log=print) -> pd.DataFrame:
    """Run every spec in order (finished ones are skipped); returns :func:`collect`'s table."""
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
                + (f", best validation R@1 {best:.2f} %" if best is not None else ""))
    return collect(runs_dir, specs)


def collect(runs_dir: str | Path, specs: Sequence[RunSpec] | None = None) -> pd.DataFrame:
    """One row per (finished, evaluated run, test city, query group) with the protocol's metrics.

    ``specs`` restricts the table to those runs (default: every finished run under runs_dir).
    """
    runs_dir = Path(runs_dir)
    keys = None if specs is None else {s.key for s in specs}
    rows = []
    for done in sorted(runs_dir.glob("*/*/seed*/done.json")):
        record = json.loads(done.read_text())
        if "eval" not in record or (keys is not None and record["run"] not in keys):
            continue
        for where, metrics in record["eval"]["results"].items():
            city, group = where.split("/")
            rows.append({"run": record["run"], "stage": record["stage"], "trained_on": record["city"] or "all",
                         "view": record["view"], "epe": record["epe"], "text_source": record["text_source"],
                         "seed": record["seed"], "city": city, "group": group, **metrics,
                         "train_seconds": record["train_seconds"]})
    columns = ["run", "stage", "trained_on", "view", "epe", "text_source", "seed", "city", "group",
               *METRIC_KEYS, "train_seconds"]
    return pd.DataFrame(rows, columns=columns)


def with_all_cities(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` plus rows with city ``all``: each run's groups pooled over its cities.

    Every metric is a mean over queries, so the pooled value is the Count-weighted mean.
    """
    metrics = [k for k in METRIC_KEYS if k != "Count"]
    keys = [c for c in table.columns if c not in (*METRIC_KEYS, "city")]
    rows = []
    for key, part in table.groupby(keys, dropna=False, sort=False):
        weights = part["Count"].to_numpy(dtype=float)
        pooled = {m: float((part[m].fillna(0.0) * weights).sum() / weights.sum()) if weights.sum() else float("nan")
                  for m in metrics}
        rows.append({**dict(zip(keys, key)), "city": "all", **pooled, "Count": int(weights.sum())})
    return pd.concat([table, pd.DataFrame(rows, columns=table.columns)], ignore_index=True)


def mean_std(table: pd.DataFrame, by: Sequence[str], metrics: Sequence[str] = ("R@1", "R@5", "R@10", "L@50"),
             ) -> pd.DataFrame:
    """Mean and std over seeds of ``metrics`` per ``by`` group, plus the number of seeds."""
    grouped = table.groupby(list(by))
    out = grouped[list(metrics)].agg(["mean", "std"])
    out[("seeds", "n")] = grouped["seed"].nunique()
    return out


def format_mean_std(stats: pd.DataFrame, digits: int = 1) -> pd.DataFrame:
    """``mean_std``'s table as "mean ± std" strings, one column per metric (just the mean
    where there is one seed)."""
    metrics = [m for m in stats.columns.get_level_values(0).unique() if m != "seeds"]

    def cell(mean: float, std: float) -> str:
        return f"{mean:.{digits}f}" if pd.isna(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"

    return pd.DataFrame({m: [cell(a, b) for a, b in zip(stats[(m, "mean")], stats[(m, "std")])] for m in metrics},
                        index=stats.index)


def loss_and_recall_curves(run_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train rows, eval rows) of a run's ``metrics.jsonl``.

    Eval rows (``epoch`` counted from 1) hold the selection split's R@1/5/10 and L@50, the split
    (``val``: carved from the training places; ``test``: runs without ``val_share``) and its score.
    """
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    train = pd.DataFrame([r for r in rows if r["kind"] == "train"])
    evals = pd.DataFrame([{"epoch": r["epoch"] + 1, "step": r["step"], "split": r.get("split", "test"),
                           "score": r.get("score", r["overall"]["R@1"]),
                           **{k: r["overall"][k] for k in ("R@1", "R@5", "R@10", "L@50")}}
                          for r in rows if r["kind"] == "eval"],
                         columns=["epoch", "step", "split", "score", "R@1", "R@5", "R@10", "L@50"])
    return train, evals


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "experiments", help="run a CrossText2Loc grid (views x EPE variants x text sources x seeds), resumable",
        description="Stage-1 runs first where the profile has a stage 1 (scratch), then the variants; "
                    "finished runs are skipped, interrupted ones resumed. "
                    "Writes <runs-dir>/results.csv (one row per run, city and query group).")
    p.add_argument("--profile", default="tiny", choices=profiles.PROFILES)
    p.add_argument("--data-dir", help="release root (default: the profile's data_root)")
    p.add_argument("--runs-dir", help="where runs go (default runs/<profile>)")
    p.add_argument("--views", default="osm", help="comma-separated: sat,osm")
    p.add_argument("--variants", default="interpolate", help="comma-separated EPE variants")
    p.add_argument("--seeds", default="0", help="comma-separated seeds")
    p.add_argument("--text-sources", default="full", help="comma-separated: full,direct")
    p.add_argument("--pretrain-seed", type=int, default=None,
                   help="start every stage-2 run from the stage-1 run of this seed (default: its own seed)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides for both stages; pretrain.key=value / finetune.key=value for one")
    p.set_defaults(func=_run_experiments)


def _run_experiments(args) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    def split(text: str) -> list[str]:
        return [item.strip() for item in text.split(",") if item.strip()]

    specs = plan(args.profile, split(args.views), split(args.variants), [int(s) for s in split(args.seeds)],
                 split(args.text_sources), pretrain_seed=args.pretrain_seed)
    runs_dir = Path(args.runs_dir or f"runs/{args.profile}")
    table = run_grid(specs, args.profile, runs_dir, args.data_dir, profiles.parse_overrides(args.overrides))
    atomic_write_text(runs_dir / "results.csv", table.to_csv(index=False))
    if len(table):
        print(format_mean_std(mean_std(table, ["view", "epe", "text_source", "city", "group"])).to_string())
    print(f"wrote {runs_dir / 'results.csv'}")
    return 0
