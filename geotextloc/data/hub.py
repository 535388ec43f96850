"""Records <-> Hugging Face ``datasets`` (one ``Image()`` column per view), on disk and on the Hub.

One table per split (``train``, ``test``) with the columns ``name, city, version, view, lat,
lon, text`` and one image column per image kind present (``satellite``, ``osm``, ``street``,
``drone``; ``None`` where a record has no such image). Three on-disk forms:

* a release folder (:mod:`geotextloc.data.release`), read into records;
* a ``save_to_disk`` folder (:func:`save_dataset`; image bytes embedded);
* a Hub repository folder (:func:`save_hub_folder`: ``data/<version>/<split>-*.parquet`` plus a
  ``README.md`` card with one config per version and a default config ``all``). That folder is
  what :func:`push_to_hub` uploads, and ``datasets.load_dataset`` reads it locally or from the Hub.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import yaml
from datasets.table import embed_table_storage

from geotextloc.data.release import (IMAGE_KINDS, SPLITS, Record, ReleaseLayout, discover_versions,
                                     read_release)
from geotextloc.errors import ConfigError, DataError, OfflineError
from geotextloc.files import atomic_dir

CARD_TEMPLATE = resources.files("geotextloc.data") / "cards" / "cvg-text.md"  # package data
ROWS_PER_SHARD = 5000
SIZES = [("n<1K", 1e3), ("1K<n<10K", 1e4), ("10K<n<100K", 1e5), ("100K<n<1M", 1e6), ("n>1M", math.inf)]


def features(kinds: Iterable[str]) -> datasets.Features:
    columns = {"name": "string", "city": "string", "version": "string", "view": "string",
               "lat": "float64", "lon": "float64", "text": "string"}
    return datasets.Features(
        {k: datasets.Value(t) for k, t in columns.items()} | {k: datasets.Image() for k in kinds}
    )


def to_datasetdict(records: Sequence[Record]) -> datasets.DatasetDict:
    """Records -> ``DatasetDict`` with splits in release order (train, test, then others)."""
    if not records:
        raise DataError("no records to convert; check the release folder with `geotextloc data info`")
    kinds = [k for k in IMAGE_KINDS if any(k in r.images for r in records)]
    feats = features(kinds)
    splits = sorted({r.split for r in records}, key=lambda s: (SPLITS + (s,)).index(s))
    out = datasets.DatasetDict()
    for split in splits:
        rows = [r for r in records if r.split == split]
        columns = {c: [getattr(r, c) for r in rows] for c in feats if c not in kinds}
        for kind in kinds:
            columns[kind] = [str(r.images[kind]) if kind in r.images else None for r in rows]
        out[split] = datasets.Dataset.from_dict(columns, features=feats, split=split)
    return out


def save_dataset(dd: datasets.DatasetDict, path: str | Path) -> Path:
    """``save_to_disk`` with image bytes embedded, written atomically (temp folder + rename)."""
    with atomic_dir(path) as tmp:
        dd.save_to_disk(str(tmp))
    return Path(path)


def _card(dd: datasets.DatasetDict, versions: list[str]) -> str:
    """The data card template with ``configs`` / ``dataset_info`` set to what is in ``dd``."""
    _, front, body = CARD_TEMPLATE.read_text(encoding="utf-8").split("---\n", 2)
    meta = yaml.safe_load(front)
    splits = list(dd)

    def data_files(folder: str) -> list[dict]:
        return [{"split": s, "path": f"data/{folder}/{s}-*.parquet"} for s in splits]

    meta["configs"] = [{"config_name": "all", "default": True, "data_files": data_files("*")}] + [
        {"config_name": v, "data_files": data_files(v)} for v in versions
    ]
    rows = sum(len(ds) for ds in dd.values())
    meta["size_categories"] = [next(c for c, top in SIZES if rows < top)]
    feats = next(iter(dd.values())).features
    meta["dataset_info"] = {"features": [
        {"name": k, "dtype": "image" if isinstance(f, datasets.Image) else f.dtype}
        for k, f in feats.items()
    ]}
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n" + body


def save_hub_folder(dd: datasets.DatasetDict, path: str | Path) -> Path:
    """Write ``dd`` as a Hub dataset repository (parquet with embedded images + card), atomically."""
    versions = sorted({v for ds in dd.values() for v in ds.unique("version")})
    with atomic_dir(path) as tmp:
        for split, ds in dd.items():
            for version in versions:
                part = ds.filter(lambda v: v == version, input_columns="version", keep_in_memory=True)
                shards = max(1, math.ceil(len(part) / ROWS_PER_SHARD))
                for i in range(shards):
                    shard = part.shard(shards, i, contiguous=True, keep_in_memory=True)
                    file = tmp / "data" / version / f"{split}-{i:05d}-of-{shards:05d}.parquet"
                    file.parent.mkdir(parents=True, exist_ok=True)
                    with pq.ParquetWriter(file, schema=shard.features.arrow_schema) as writer:
                        for batch in shard.with_format("arrow").iter(batch_size=256):
                            writer.write_table(embed_table_storage(batch))
        (tmp / "README.md").write_text(_card(dd, versions), encoding="utf-8")
    return Path(path)


def _is_saved_dataset(folder: Path) -> bool:
    return (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()


def load_cvgtext(
    source: str | Path,
    version: str | None = None,
    split: str | None = None,
    layout: ReleaseLayout | None = None,
    cache_dir: str | Path | None = None,
) -> datasets.DatasetDict | datasets.Dataset:
    """CVG-Text as ``datasets``, from a release folder, a saved dataset folder, a Hub-format
    folder or a Hub repo id (``owner/name``). ``version`` picks one version (a Hub config),
    ``split`` returns that split's ``Dataset`` instead of the ``DatasetDict``; ``cache_dir`` is
    ``load_dataset``'s cache (default ``$HF_DATASETS_CACHE``). Offline, a repo id raises
    :class:`OfflineError` (immediately with ``HF_HUB_OFFLINE=1``, else after the Hub client's retries)."""
    folder = Path(source)
    if folder.is_dir() and _is_saved_dataset(folder):
        dd = datasets.load_from_disk(str(folder))
        if isinstance(dd, datasets.Dataset):
            dd = datasets.DatasetDict({dd.split or "train": dd})
        if version is not None:
            dd = datasets.DatasetDict({
                s: ds.filter(lambda v: v == version, input_columns="version", keep_in_memory=True)
                for s, ds in dd.items()
            })
    elif folder.is_dir() and discover_versions(folder, layout):
        contents = read_release(folder, [version] if version else None, layout=layout)
        dd = to_datasetdict(contents.records)
    elif folder.is_dir() and (folder / "README.md").is_file():
        dd = _load_dataset(str(folder), version, str(folder), cache_dir)
    elif not folder.exists() and re.fullmatch(r"[\w.-]+/[\w.-]+", str(source)):
        dd = _load_dataset(str(source), version, f"Hub dataset {source!r}", cache_dir)
    else:
        raise DataError(
            f"{source}: not a CVG-Text release, saved dataset or Hub dataset folder; "
            "pass a release root (with CVG-text/), a save_to_disk folder or an owner/name repo id"
        )
    if split is None:
        return dd
    if split not in dd:
        raise DataError(f"{source}: no split {split!r} (has {', '.join(dd)}); pick one of those")
    return dd[split]


def _load_dataset(path: str, version: str | None, what: str, cache_dir) -> datasets.DatasetDict:
    try:
        return datasets.load_dataset(path, version or "all", cache_dir=cache_dir and str(cache_dir))
    except ConnectionError:  # also huggingface_hub's OfflineModeIsEnabled
        raise OfflineError(
            f"cannot reach the Hugging Face Hub for {what} (offline?) and there is no local "
            "folder of that name; pass a local release or saved-dataset folder, or connect and retry"
        ) from None
    except datasets.exceptions.DatasetNotFoundError:
        raise DataError(f"{what} not found on the Hub; check the repo id and your access") from None
    except ValueError as err:  # unknown config name
        raise DataError(f"{what}: {str(err).splitlines()[0]}; pick a version listed in its card") from None


def push_to_hub(dd: datasets.DatasetDict, repo_id: str, private: bool = True,
                commit_message: str = "Upload CVG-Text with geotextloc",
                endpoint: str | None = None) -> str:
    """Upload ``dd`` as a Hub dataset repo (the :func:`save_hub_folder` layout); returns its URL.

    The token comes from ``$HF_TOKEN`` only and is never printed. ``endpoint`` defaults to
    ``$HF_ENDPOINT`` (a mirror) or huggingface.co. Only push image columns you
    may redistribute: Google imagery (satellite, street) may not be; OSM-derived tiles may,
    under ODbL ("© OpenStreetMap contributors"). Drop others first with ``dd.remove_columns``.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    token = os.environ.get("HF_TOKEN")
    if not token:
        raise ConfigError("HF_TOKEN is not set; export HF_TOKEN=<a write token> and retry")
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_hub_folder(dd, Path(tmp) / "repo")
        api = HfApi(endpoint=endpoint, token=token)
        try:
            api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
            api.upload_folder(repo_id=repo_id, repo_type="dataset", folder_path=folder,
                              commit_message=commit_message)
        except HfHubHTTPError as err:  # the Hub answered: no access, bad token, bad name, ...
            raise ConfigError(
                f"the Hub refused to push {repo_id!r} ({str(err).splitlines()[0]}); "
                "check the repo id and that HF_TOKEN has write access"
            ) from None
        except Exception as err:  # no answer: the HTTP client's transport errors, offline mode
            raise OfflineError(
                f"cannot reach the Hugging Face Hub to push {repo_id!r} ({type(err).__name__}); "
                "connect and retry (the token is read from HF_TOKEN)"
            ) from None
    return f"{api.endpoint}/datasets/{repo_id}"
