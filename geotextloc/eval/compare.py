"""Is model A better than model B on the same test queries? A paired sign test on per-query hits.

Two models evaluated on the same queries differ only where one finds the true tile within k
and the other does not. With a few hundred queries per gallery, a difference of a few tenths of
a point of R@1 is one or two queries, which the test set cannot resolve; this module says how
many queries changed sides and how likely such a split is by chance.

For query q and each model, h(q) = the share of its runs (seeds) whose rank of the true tile is
at most k. Query q is a win for A when h_A(q) > h_B(q), a win for B when h_A(q) < h_B(q), and
a tie otherwise. Under H0 (no difference) each non-tied query is a win for A with probability
1/2, so the two-sided p-value of w_A wins out of n = w_A + w_B is the exact sign test

    p = min(1, 2 * sum_{i <= min(w_A, w_B)} C(n, i) / 2^n)

(McNemar's exact test when there is one run per model). Queries, not seeds, are the
independent units: averaging a query's hits over the seeds first keeps a query that recurs in
every seed from counting three times.

The tables over seeds live here too: :func:`mean_std` / :func:`format_mean_std` (mean ± std
per group), :func:`with_all_cities` (cities pooled by query count) and :func:`seed_table`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from geotextloc.data.release import SINGLE
from geotextloc.errors import DataError
from geotextloc.eval.metrics import GROUPS, METRIC_KEYS


@dataclass(frozen=True)
class PairedResult:
    k: int
    queries: int  # queries both models were evaluated on
    wins_a: int  # queries where A hits (within k) in more runs than B
    wins_b: int
    hit_rate_a: float  # mean R@k over runs and queries, in percent
    hit_rate_b: float
    p_value: float  # two-sided exact sign test on wins_a vs wins_b

    @property
    def difference(self) -> float:
        """R@k of A minus R@k of B, in points."""
        return self.hit_rate_a - self.hit_rate_b

    def __str__(self) -> str:
        return (f"R@{self.k}: {self.hit_rate_a:.2f} vs {self.hit_rate_b:.2f} ({self.difference:+.2f} points) on "
                f"{self.queries} queries; A better on {self.wins_a}, B better on {self.wins_b}, "
                f"sign test p = {self.p_value:.2g}")


def sign_test(wins_a: int, wins_b: int) -> float:
    """Two-sided exact sign test of ``wins_a`` against ``wins_b`` (p = 1 when both are 0)."""
    n = wins_a + wins_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(wins_a, wins_b) + 1))
    return min(1.0, 2 * tail / 2**n)  # int / int: exact for any n (a float 2**n overflows past ~1,000)


def wilson_interval(rate: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a hit rate (in percent) measured on ``n`` queries, in percent.

    With p = rate / 100:  centre = (p + z²/2n) / (1 + z²/n),
    half-width = z / (1 + z²/n) * sqrt(p(1 − p)/n + z²/4n²);  z = 1.96 gives 95 %.
    Unlike p ± z·sqrt(p(1 − p)/n) it stays inside [0, 100] and is not empty at p = 0, which
    matters for R@1 of a few percent on a few hundred queries.
    """
    if n < 1:
        raise DataError(f"wilson_interval: {n} queries; a rate needs at least one")
    if not 0.0 <= rate <= 100.0:
        raise DataError(f"wilson_interval: rate {rate} is not a percentage in [0, 100]")
    p, z2 = rate / 100.0, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return 100.0 * max(0.0, centre - half), 100.0 * min(1.0, centre + half)


def _source(table: pd.DataFrame, i: int, label: str) -> str:
    return table.attrs.get("source") or f"table {i} of model {label}"


def _hits(tables: Sequence[pd.DataFrame], k: int, label: str) -> pd.Series:
    """query -> share of ``tables`` (runs) in which the true tile is within rank k."""
    if not tables:
        raise DataError(f"paired comparison: no per-query tables for model {label}")
    columns = []
    for i, table in enumerate(tables):
        source = _source(table, i, label)
        if not {"query", "rank"} <= set(table.columns):
            raise DataError(f"paired comparison: {source} has no query/rank columns "
                            "(pass ProtocolReport.table or a run's eval/*-queries.csv)")
        if table.empty:
            raise DataError(f"paired comparison: {source} has no queries")
        if table["query"].duplicated().any():
            raise DataError(f"paired comparison: {source} lists query "
                            f"{table['query'][table['query'].duplicated()].iloc[0]!r} twice; "
                            "give one table per run with each query once (one gallery view)")
        rank = pd.to_numeric(table["rank"], errors="coerce").astype("Float64")
        hit = (rank <= k).fillna(False)  # an empty rank: the true tile was outside the scope, a miss
        columns.append(pd.Series(hit.to_numpy(dtype=float), index=table["query"].to_numpy()))
    frame = pd.concat(columns, axis=1, join="outer")
    if frame.isna().any().any():
        i = int(np.flatnonzero(frame.isna().any().to_numpy())[0])
        query = frame.index[frame.iloc[:, i].isna()][0]
        raise DataError(f"paired comparison: the runs of model {label} were evaluated on different queries "
                        f"({_source(tables[i], i, label)} lacks {query!r})")
    return frame.mean(axis=1)


def paired_hits(tables_a: Sequence[pd.DataFrame], tables_b: Sequence[pd.DataFrame], k: int = 1) -> PairedResult:
    """Compare two models' per-query results (one table per run, e.g. per seed) at R@k.

    Tables need the ``query`` and ``rank`` columns of :class:`~geotextloc.eval.ProtocolReport`
    (rank: 1-based, empty when the true tile is outside the scope). Both models must have been
    evaluated on the same queries and with the same number of runs (with 3 runs against 1, the
    averaged hits of two equal models are not symmetric and the test would find differences
    that are not there); a mismatch is an error.
    """
    if len(tables_a) != len(tables_b):
        raise DataError(f"paired comparison: model A has {len(tables_a)} runs and model B {len(tables_b)}; "
                        "compare the same number of runs (e.g. the same seeds) of each")
    a, b = _hits(tables_a, k, "A"), _hits(tables_b, k, "B")
    if set(a.index) != set(b.index):
        only = sorted(set(a.index) ^ set(b.index))
        raise DataError(f"paired comparison: models A and B were evaluated on different queries "
                        f"({len(only)} differ, e.g. {only[0]!r})")
    b = b.loc[a.index]
    diff = a.to_numpy() - b.to_numpy()
    wins_a, wins_b = int(np.sum(diff > 0)), int(np.sum(diff < 0))
    return PairedResult(k=k, queries=len(a), wins_a=wins_a, wins_b=wins_b, hit_rate_a=100.0 * float(a.mean()),
                        hit_rate_b=100.0 * float(b.mean()), p_value=sign_test(wins_a, wins_b))


def run_tables(run_dirs: Sequence[str | Path], group: str | None = None, view: str | None = None) -> list[pd.DataFrame]:
    """One per-query table per run: its ``eval/<City>-<view>-queries.csv`` files (every city) concatenated.

    ``group``: ``panorama`` or ``single`` (``single_view``) keeps those queries only (None: all).
    ``view``: the gallery view of the tables (``sat``, ``osm``; None: every table in eval/, which
    must then hold one view only).
    """
    groups = {None: None, "single": SINGLE, **GROUPS}  # GROUPS: overall, panorama, single_view
    if group not in groups:
        raise DataError(f"paired comparison: query group {group!r}; choose panorama, single or None (all)")
    keep = groups[group]
    pattern = f"eval/*-{view}-queries.csv" if view else "eval/*-queries.csv"
    tables = []
    for run_dir in run_dirs:
        files = sorted(Path(run_dir).glob(pattern))
        if not files:
            raise DataError(f"{run_dir}/{pattern}: no per-query tables; evaluate the run first "
                            "(geotextloc experiments evaluates every finished run)")
        table = pd.concat([pd.read_csv(f, usecols=["query", "view", "rank"]) for f in files], ignore_index=True)
        if keep is not None:
            table = table[table["view"] == keep].reset_index(drop=True)
            if table.empty:
                raise DataError(f"{run_dir}/{pattern}: no {keep} queries")
        table.attrs["source"] = f"{run_dir}/{pattern}" + (f" ({keep} queries)" if keep else "")
        tables.append(table)
    return tables


def seed_table(frame: pd.DataFrame, metric: str, rows: Sequence, columns: Sequence[str], by: str = "mode",
               digits: int = 2) -> pd.DataFrame:
    """"mean ± std" over seeds of ``metric``, one row per value of ``by`` (``rows``), one column per
    ``direction`` (``columns``); ``frame`` has one row per (``by``, seed, direction)."""
    stats = frame.groupby([by, "direction"])[metric].agg(["mean", "std"]).fillna(0.0)
    table = pd.DataFrame(index=list(rows), columns=list(columns), dtype=object)
    for r in rows:
        for d in columns:
            m, s = stats.loc[(r, d)]
            table.loc[r, d] = f"{m:.{digits}f} ± {s:.{digits}f}"
    return table


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
