"""Per-city evaluation of CrossText2Loc models: the test galleries the protocol runs on, and each
city's (and query group's) summary, for a model in memory, a run folder or released weights.

A city's queries share one gallery (the paper's), except where a location's tile appears under
two names (:func:`galleries`). Each city's per-query tables are pooled before summarising.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from geotextloc.views import query_kind


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
                     batch_size: int = 64, csv_dir: str | Path | None = None, query: str = "text") -> dict[str, dict]:
    """:func:`per_city` with ``model``'s similarities (``query`` queries: text, street or fusion
    -> ``view`` tiles)."""
    from geotextloc.eval.embed import evaluate_model

    def report_for(records):
        return evaluate_model(model, records, view, preprocess, tokenizer, scope=scope,
                              batch_size=batch_size, progress=False, query=query)

    return per_city(test, report_for, scope, csv_dir, view)


def evaluate_run(run_dir: str | Path, test: Sequence, view: str, batch_size: int = 64,
                 device: str = "cpu", csv_dir: str | Path | None = None) -> dict:
    """:func:`evaluate_records` for ``run_dir``'s best checkpoint (else its last); the per-query
    tables go to ``csv_dir`` (default ``run_dir/eval``, the run's own test split)."""
    from geotextloc.models.factory import from_checkpoint

    run_dir = Path(run_dir)
    checkpoint = run_dir / "best.pt" if (run_dir / "best.pt").exists() else run_dir / "last.pt"
    model, _, preprocess, tokenizer, config = from_checkpoint(str(checkpoint), device=device)
    results = evaluate_records(model, preprocess, tokenizer, test, view, batch_size=batch_size,
                               csv_dir=run_dir / "eval" if csv_dir is None else csv_dir,
                               query=query_kind(config))
    return {"checkpoint": checkpoint.name, "results": results}


def evaluate_zero_shot(name: str, pretrained: str, test: Sequence, view: str, device: str = "cpu",
                       batch_size: int = 64) -> dict[str, dict]:
    """A model with its released weights, not fine-tuned, at its own text positions: an open_clip
    model (``ViT-L-14-336``/``openai``, 77 positions) or a BLIP or ViLT retrieval model from the Hub
    (``Salesforce/blip-itm-base-coco``/``hub``: ITM re-ranks the top 16 of the scope;
    ``dandelin/vilt-b32-finetuned-coco``/``hub``: every pair of the scope scored).

    Raises :class:`~geotextloc.errors.OfflineError` (one line) when the weights cannot be had.
    """
    from geotextloc.models.factory import create

    model, _, preprocess, tokenizer = create(name, pretrained, epe_mode="truncate", device=device)
    return evaluate_records(model.eval(), preprocess, tokenizer, test, view, batch_size=batch_size)
