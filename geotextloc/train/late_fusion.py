"""Late fusion of two finished runs: a text-query run and a street-query run of the same gallery
view, s = w · s_text + (1 − w) · s_image (:mod:`geotextloc.eval.fusion`).

The weight is chosen on the runs' validation split, the places that selected their ``best.pt``
(``val_share`` of the released training places, carved as the training loop carves them), and
only then is the test split read and evaluated at that weight, per city and query group, beside
the two runs alone (w = 1: text only; w = 0: street view only)::

    result = late_fusion("runs/tiny/text/best.pt", "runs/tiny/street/best.pt")
    result["weight"], result["validation"], result["test"]["late"]["Helsinki/overall"]["R@1"]

:func:`late_fusion_run` does the same for two run folders and keeps the result in a folder of
its own (``late.json`` and the per-query tables ``eval/<City>-<view>-queries.csv``, as a trained
run has them), read back while both ``best.pt`` files are unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from geotextloc.errors import ConfigError, DataError
from geotextloc.eval.fusion import WEIGHTS, choose_weight, embed_late


def _runs(text_checkpoint, street_checkpoint, device: str):
    """((module, transform, tokenizer) of each run, the street run's config), both checked."""
    from geotextloc.train.loop import load_checkpoint

    text_model, text_pre, text_tok, text_cfg = load_checkpoint(text_checkpoint, device)
    street_model, street_pre, street_tok, street_cfg = load_checkpoint(street_checkpoint, device)
    for path, cfg, want in ((text_checkpoint, text_cfg, "text"), (street_checkpoint, street_cfg, "street")):
        if cfg.task != "crosstext2loc" or cfg.query != want:
            raise ConfigError(f"{path}: a {cfg.task} run with query={cfg.query}; late fusion needs a "
                              f"CrossText2Loc run with query={want} here")
    if text_cfg.view != street_cfg.view:
        raise ConfigError(f"{street_checkpoint}: gallery view {street_cfg.view}, but {text_checkpoint} has "
                          f"{text_cfg.view}; fuse runs of one view")
    if not street_cfg.val_share or text_cfg.val_share != street_cfg.val_share:
        raise ConfigError(f"{street_checkpoint}: late fusion chooses its weight on the runs' validation split; "
                          f"both runs need the same val_share > 0 (text {text_cfg.val_share}, street "
                          f"{street_cfg.val_share})")
    return (text_model, text_pre, text_tok), (street_model, street_pre, street_tok), text_cfg, street_cfg


def _split(cfg, split: str) -> list:
    """The ``split`` records of the run's versions (the other split is not read), limited as in training."""
    from geotextloc.data.release import read_release

    records = [r for r in read_release(cfg.data_root, versions=cfg.versions, splits=(split,)).records
               if r.split == split]
    limit = cfg.train_limit if split == "train" else cfg.test_limit
    return records[: limit or None]


def validation_records(cfg) -> list:
    """The validation places of a run (its config): carved from its training records only."""
    from geotextloc.train.data import validation_split
    from geotextloc.train.loop import VAL_SEED

    _, validation = validation_split(_split(cfg, "train"), cfg.val_share, VAL_SEED)
    if not validation:
        raise DataError(f"{cfg.data_root}: no validation places in {', '.join(cfg.versions)}")
    return validation


def late_fusion(text_checkpoint: str | Path, street_checkpoint: str | Path, device: str = "cpu",
                weights: Sequence[float] = WEIGHTS, batch_size: int = 64, progress: bool = False,
                csv_dir: str | Path | None = None) -> dict:
    """``{"weight": w, "validation": table of w -> R@1/5/10, "test": {"late" | "text" | "street":
    {"<city>/<group>": metrics}}}``: w chosen on the validation split, then the test split.
    ``csv_dir``: write the fused queries' per-query tables there (``<City>-<view>-queries.csv``)."""
    from geotextloc.eval.cities import per_city

    text, street, text_cfg, cfg = _runs(text_checkpoint, street_checkpoint, device)
    places = validation_records(cfg)
    if {r.name for r in places} != {r.name for r in validation_records(text_cfg)}:
        raise ConfigError(f"{text_checkpoint} and {street_checkpoint} were selected on different validation places "
                          "(other versions or train_limit); fuse runs of the same released places")
    validation = embed_late(text, street, places, cfg.view, batch_size, progress)
    weight, table = choose_weight(validation, cfg.eval_scope, weights)

    test = _split(cfg, "test")  # read only now that w is fixed
    if not test:
        raise DataError(f"{cfg.data_root}: no test records in {', '.join(cfg.versions)}")
    embedded: dict[tuple, object] = {}

    def report_at(w: float):
        def report_for(records):
            key = tuple(r.name for r in records)
            if key not in embedded:
                embedded[key] = embed_late(text, street, records, cfg.view, batch_size, progress)
            return embedded[key].report(w, cfg.eval_scope)
        return report_for

    results = {name: per_city(test, report_at(w), cfg.eval_scope, csv_dir if name == "late" else None, cfg.view)
               for name, w in (("late", weight), ("text", 1.0), ("street", 0.0))}
    return {"weight": weight, "validation": table, "test": results}


def late_dir(text_run: str | Path) -> Path:
    """Where a late fusion with the text run ``<view>/<kind>/seed<s>`` is kept: ``<view>/late-<kind>/seed<s>``."""
    text_run = Path(text_run)
    return text_run.parent.parent / f"late-{text_run.parent.name}" / text_run.name


def late_fusion_run(text_run: str | Path, street_run: str | Path, out: str | Path | None = None, device: str = "cpu",
                    weights: Sequence[float] = WEIGHTS, progress: bool = False) -> dict:
    """:func:`late_fusion` of the ``best.pt`` of two run folders, kept in ``out`` (default
    :func:`late_dir`): ``late.json`` (the result, the validation table as rows, and the two
    checkpoints' sha256) and the fused queries' per-query tables in ``out/eval/`` (for
    :func:`geotextloc.eval.compare.run_tables`). Read back when both checkpoints and the weights
    are unchanged, computed again otherwise."""
    from geotextloc.files import atomic_write_text, file_sha256

    checkpoints = {kind: Path(run) / "best.pt" for kind, run in (("text", text_run), ("street", street_run))}
    for kind, path in checkpoints.items():
        if not path.is_file():
            raise DataError(f"{path}: no best.pt in the {kind} run; train it first (geotextloc experiments "
                            f"--queries {kind}) and keep its weights")
    identity = {kind: {"path": str(path), "sha256": file_sha256(path)} for kind, path in checkpoints.items()}
    identity["weights"] = [float(w) for w in weights]
    out = Path(out) if out is not None else late_dir(text_run)
    saved = out / "late.json"
    if saved.is_file():
        kept = json.loads(saved.read_text())
        if kept.get("identity") == identity:
            return kept["result"]
    result = late_fusion(checkpoints["text"], checkpoints["street"], device, weights, progress=progress,
                         csv_dir=out / "eval")
    result = {**result, "validation": result["validation"].to_dict(orient="records")}
    atomic_write_text(saved, json.dumps({"identity": identity, "result": result}, indent=1))
    return result
