"""Records <-> Hugging Face ``datasets`` (one ``Image()`` column per view), on disk and on the Hub.

One table per split (``train``, ``test``) with the columns ``name, city, version, view, lat,
lon, text`` and one image column per image kind present (``satellite``, ``osm``, ``street``,
``drone``; ``None`` where a record has no such image). Three on-disk forms:

* a release folder (:mod:`geotextloc.data.release`; the embedded build is one), read into records;
* a ``save_to_disk`` folder (:func:`save_dataset`; image bytes embedded);
* a Hub repository folder (:func:`save_hub_folder`: ``data/<version>/<split>-*.parquet`` with the
  image bytes embedded, plus a ``README.md`` card with one config per version, a default config
  ``all``, a table of what each config holds, the licences and, for an embedded build, the
  extracts it was rendered from). ``datasets.load_dataset`` reads it locally or from the Hub.

Publishing (``geotextloc data publish``, :func:`publish`; :func:`push_to_hub` for a
``DatasetDict``) writes that folder and :func:`upload_hub_folder` makes the repo match it in
one commit: it creates the repo if needed, compares every file with the repo's (sha256 of LFS
files, git blob id of the others), adds what is new or changed, deletes the repo's ``data/``
files the folder no longer has (the ``all`` config globs ``data/*/``), and makes **no commit
when nothing changed**. The token comes from ``$HF_TOKEN`` only and is never printed; the
endpoint from ``$HF_ENDPOINT`` read at call time (default huggingface.co), so a mirror or a
local stand-in set after import is honoured. Google imagery (satellite, street views of the
public release) may not be redistributed: :func:`publish` leaves those views of a release out
unless asked for them; an embedded build's views are all rendered from OpenStreetMap (ODbL).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
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
EMBEDDED_CARD_TEMPLATE = resources.files("geotextloc.data") / "cards" / "embedded.md"
DEFAULT_ENDPOINT = "https://huggingface.co"
GOOGLE_VIEWS = ("satellite", "street")  # the public release's Google imagery: not redistributable
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


def _card(dd: datasets.DatasetDict, versions: list[str], build: dict | None = None) -> str:
    """The data card: the CVG-Text template, or the embedded one when ``build`` (the builder's
    ``build.json``) is given, with ``configs`` / ``dataset_info`` set to what is in ``dd``, the
    ``<!-- configs -->`` marker replaced by a table of each config's rows and images, and
    ``<!-- provenance -->`` by the build's extracts and settings."""
    template = EMBEDDED_CARD_TEMPLATE if build is not None else CARD_TEMPLATE
    _, front, body = template.read_text(encoding="utf-8").split("---\n", 2)
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
    body = body.replace("<!-- configs -->", _config_table(dd, versions))
    body = body.replace("<!-- provenance -->", _provenance(build, versions) if build is not None else "")
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n" + body


def _config_table(dd: datasets.DatasetDict, versions: list[str]) -> str:
    """Markdown: rows per split and images per view of each config (and of ``all``)."""
    kinds = [k for k in IMAGE_KINDS if k in next(iter(dd.values())).column_names]
    rows, images = Counter(), Counter()
    for split, ds in dd.items():
        for batch in ds.select_columns(["version", *kinds]).with_format("arrow").iter(batch_size=10_000):
            present = {k: batch.column(k).is_valid().to_pylist() for k in kinds}
            for i, version in enumerate(batch.column("version").to_pylist()):
                for key in (version, "all"):
                    rows[key, split] += 1
                    images.update((key, k) for k in kinds if present[k][i])
    lines = ["| config | " + " | ".join(dd) + " | images |", "|---" * (len(dd) + 2) + "|"]
    for version in [*versions, "all"]:
        views = ", ".join(f"{k} {images[version, k]:,}" for k in kinds if images[version, k]) or "none"
        lines.append(f"| `{version}` | " + " | ".join(f"{rows[version, s]:,}" for s in dd) + f" | {views} |")
    return "\n".join(lines)


def _provenance(build: dict, versions: list[str]) -> str:
    """Markdown: the extracts (name, SHA-256, built-in or the builder's own) of the regions
    ``versions`` come from, the build's settings and what drew its OSM tiles (``osm_renderer``).
    Local paths are left out: the card is public."""
    lines = ["| region | extract | SHA-256 | source |", "|---|---|---|---|"]
    for name, region in sorted(build.get("regions", {}).items()):
        if not any(v == name or v.startswith(f"{name}-") for v in versions):
            continue
        source = f"built-in `{region['builtin']}`" if region.get("builtin") else "the builder's own .osm.pbf"
        lines.append(f"| {name} | `{region.get('path', '')}` | `{region.get('sha256', '')}` | {source} |")
    settings = ", ".join(f"{k} = {v}" for k, v in build.get("settings", {}).items())
    if settings:
        lines += ["", f"Build settings (`build.json`): {settings}."]
    renderer = build.get("osm_renderer")  # written by carto builds only
    if isinstance(renderer, dict):
        tools = ", ".join(f"{k} {v}" for k, v in (renderer.get("versions") or {}).items())
        lines += ["", f"OSM tiles: rendered with {renderer.get('renderer', 'mapnik + openstreetmap-carto')}"
                  + (f" ({tools})" if tools else "") + "."]
        if renderer.get("attribution"):
            lines.append(f"Attribution: {renderer['attribution']}.")
    else:
        lines += ["", "OSM tiles: drawn by geotextloc's built-in renderer (PIL, OpenStreetMap Carto colours)."]
    return "\n".join(lines)


def save_hub_folder(dd: datasets.DatasetDict, path: str | Path, build: dict | None = None) -> Path:
    """Write ``dd`` as a Hub dataset repository (parquet with embedded images + card), atomically.

    ``build``: the embedded builder's ``build.json`` when ``dd`` comes from an embedded build (the
    card is then the embedded one, with the build's provenance). The same ``dd`` gives the same
    bytes, so a republished folder shows no change."""
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
        (tmp / "README.md").write_text(_card(dd, versions, build), encoding="utf-8")
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


@dataclass(frozen=True)
class RepoFileChange:
    path: str  # in the repo
    size: int  # bytes (of the local file; of the repo's for a deletion)
    status: str  # "added", "changed", "unchanged", "deleted" or, in a dry run, "to upload"


@dataclass(frozen=True)
class Published:
    """What :func:`upload_hub_folder` (or a dry run of :func:`publish`) did."""

    repo_id: str
    url: str  # the repo's page
    revision: str
    private: bool  # the repo's visibility (in a dry run: as asked for)
    files: list[RepoFileChange]
    commit_url: str | None  # None: a dry run, or nothing changed (no commit made)
    commit_oid: str | None  # the new commit, or the revision's head when nothing changed
    folder: Path | None = None  # the Hub folder, where it was kept
    dry_run: bool = False
    left_out: tuple[str, ...] = ()  # image kinds on disk that were not published (Google imagery)

    def summary(self) -> str:
        """Plain text: one line per file and what happened to it, then the commit."""
        dry = self.dry_run
        kept = [f for f in self.files if f.status != "deleted"]
        lines = [f"{'dry run: would publish' if dry else 'published'} {len(kept)} file(s) "
                 f"({_size(sum(f.size for f in kept))}) "
                 f"to the {'private' if self.private else 'public'} dataset {self.repo_id} at {self.revision}"]
        width = max((len(f.path) for f in self.files), default=0)
        lines += [f"  {f.status:<10} {f.path:<{width}}  {_size(f.size):>9}" for f in self.files]
        if dry:
            lines.append("nothing was sent; run again without --dry-run to upload (token from HF_TOKEN)")
        elif self.commit_url:
            counts = Counter(f.status for f in self.files)
            lines.append(f"commit {self.commit_url} ({counts['added']} added, {counts['changed']} changed, "
                         f"{counts['deleted']} deleted, {counts['unchanged']} unchanged)")
        else:
            lines.append(f"nothing changed: {self.revision} (commit {self.commit_oid}) already holds "
                         "these files; no commit made")
        if self.left_out:
            lines.append(f"left out: {', '.join(self.left_out)} (Google imagery in the public release, "
                         "not redistributable; name them in --views if your copies may be shared)")
        if self.folder is not None:
            lines.append(f"Hub folder: {self.folder}")
        if not dry:
            at = "" if self.revision == "main" else f", revision={self.revision!r}"
            lines.append(f"load it with datasets.load_dataset({self.repo_id!r}{at}); page: {self.url}")
        return "\n".join(lines)


def _size(n: float) -> str:
    if n < 1000:
        return f"{n:.0f} B"
    for unit in ("kB", "MB", "GB"):
        n /= 1000
        if n < 1000 or unit == "GB":
            return f"{n:.1f} {unit}"


def hub_token() -> str:
    """The Hub token from ``$HF_TOKEN`` (never from an option or a saved login, never printed)."""
    token = os.environ.get("HF_TOKEN")
    if not token:
        raise ConfigError("HF_TOKEN is not set; export HF_TOKEN=<a token with write access> and retry")
    return token


def hub_endpoint() -> str:
    """``$HF_ENDPOINT`` as it is now (a mirror or a local stand-in), else huggingface.co.
    ``huggingface_hub`` reads the variable once, at import; this reads it at each call."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def publish(
    source: str | Path,
    repo_id: str,
    versions: Sequence[str] | None = None,
    views: Sequence[str] | None = None,
    private: bool = False,
    revision: str = "main",
    dry_run: bool = False,
    folder: str | Path | None = None,
    commit_message: str | None = None,
) -> Published:
    """Publish a release folder or an embedded build as the Hub dataset ``repo_id``.

    Reads ``source`` (``versions``: default all on disk), keeps the image columns ``views``
    (default: all of an embedded build, whose views are rendered from OpenStreetMap; for any
    other release all but the Google imagery ``satellite`` and ``street``), writes the Hub folder
    (:func:`save_hub_folder`; to ``folder`` and kept there, else a temporary folder) and uploads
    it with :func:`upload_hub_folder`. ``dry_run`` stops after the folder and lists its files;
    it needs neither token nor network. The token is checked before the folder is built.
    """
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id):
        raise ConfigError(f"--repo-id {repo_id!r}: expected OWNER/NAME, e.g. me/cvg-text")
    token = None if dry_run else hub_token()
    root = Path(source)
    if not root.is_dir() or not discover_versions(root):
        raise DataError(f"{source}: not a release folder or embedded build (no CVG-text/<version>/"
                        "{train,test}.json); pass the folder that holds CVG-text/")
    build_json = root / "build.json"
    try:
        build = json.loads(build_json.read_text(encoding="utf-8")) if build_json.is_file() else None
    except json.JSONDecodeError:
        raise DataError(f"{build_json}: not valid JSON; rebuild the embedded dataset") from None
    records = read_release(root, versions).records
    present = [k for k in IMAGE_KINDS if any(k in r.images for r in records)]
    left_out: tuple[str, ...] = ()  # by default, not when asked for
    if views is None:
        views = present if build is not None else [k for k in present if k not in GOOGLE_VIEWS]
        left_out = tuple(k for k in present if k not in views)
    elif unknown := sorted(set(views) - set(present)):
        raise ConfigError(f"--views {','.join(unknown)}: not in {source} "
                          f"(it has {', '.join(present) or 'no images'}); pick from those")
    records = [replace(r, images={k: p for k, p in r.images.items() if k in views}) for r in records]
    versions = sorted({r.version for r in records})
    named = ", ".join(versions) if len(versions) <= 4 else f"{len(versions)} versions"
    message = commit_message or f"Publish {named} with geotextloc"
    with tempfile.TemporaryDirectory() as tmp:
        path = save_hub_folder(to_datasetdict(records), folder or Path(tmp) / "repo", build)
        kept = Path(folder) if folder else None
        if dry_run:
            files = [RepoFileChange(p, (path / p).stat().st_size, "to upload") for p in _local_files(path)]
            return Published(repo_id, f"{hub_endpoint()}/datasets/{repo_id}", revision, private, files,
                             None, None, kept, dry_run=True, left_out=left_out)
        done = upload_hub_folder(path, repo_id, private=private, revision=revision,
                                 commit_message=message, token=token)
    return replace(done, folder=kept, left_out=left_out)


def push_to_hub(dd: datasets.DatasetDict, repo_id: str, private: bool = True,
                commit_message: str = "Upload CVG-Text with geotextloc",
                endpoint: str | None = None) -> Published:
    """Upload ``dd`` as a Hub dataset repo (the :func:`save_hub_folder` layout, CVG-Text card).

    Only push image columns you may redistribute: Google imagery (satellite, street) may not
    be; OSM-derived tiles may, under ODbL ("© OpenStreetMap contributors"). Drop others first
    with ``dd.remove_columns``. Token, endpoint and errors as in :func:`upload_hub_folder`.
    """
    token = hub_token()
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_hub_folder(dd, Path(tmp) / "repo")
        return upload_hub_folder(folder, repo_id, private=private, commit_message=commit_message,
                                 endpoint=endpoint, token=token)


def upload_hub_folder(
    folder: str | Path,
    repo_id: str,
    private: bool = False,
    revision: str = "main",
    commit_message: str = "Upload CVG-Text with geotextloc",
    endpoint: str | None = None,
    token: str | None = None,
) -> Published:
    """Make the dataset repo ``repo_id`` at ``revision`` hold ``folder``, in one commit.

    Creates the repo (``private`` or public) and the branch if needed; refuses to go on when
    ``private`` is asked for but the repo exists and is public. Files whose content the repo
    already has are not sent; the repo's ``data/`` files that ``folder`` lacks are deleted (other
    files, such as ``.gitattributes``, stay); when nothing changes no commit is made. The token
    is ``token`` or ``$HF_TOKEN``, the endpoint ``endpoint`` or ``$HF_ENDPOINT`` (read now).
    The Hub refusing (bad token, no access, bad name) raises :class:`ConfigError`, no answer
    (offline, refused connection, timeout) :class:`OfflineError`; neither message holds the token.
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
    from huggingface_hub.hf_api import RepoFile

    folder = Path(folder)
    token = token or hub_token()
    api = HfApi(endpoint=endpoint or hub_endpoint(), token=token)
    with _hub_errors(repo_id, api.endpoint):
        url = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        if revision != "main":
            api.create_branch(repo_id, repo_type="dataset", branch=revision, exist_ok=True)
        info = api.repo_info(repo_id, repo_type="dataset", revision=revision)
        if private and not info.private:
            raise ConfigError(f"{repo_id} exists and is public; --private does not change an existing "
                              "repo: make it private on the Hub first, or publish without --private")
        remote = {f.path: f for f in api.list_repo_tree(repo_id, repo_type="dataset", revision=revision,
                                                        recursive=True) if isinstance(f, RepoFile)}
        files, operations = [], []
        for path in _local_files(folder):
            local = folder / path
            status = _status(local, remote.get(path))
            files.append(RepoFileChange(path, local.stat().st_size, status))
            if status != "unchanged":
                operations.append(CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(local)))
        for path in sorted(set(remote) - {f.path for f in files}):
            if path.startswith("data/"):
                files.append(RepoFileChange(path, remote[path].size, "deleted"))
                operations.append(CommitOperationDelete(path_in_repo=path))
        commit = None
        if operations:
            commit = api.create_commit(repo_id, operations, commit_message=commit_message,
                                       repo_type="dataset", revision=revision)
    return Published(repo_id, str(url), revision, bool(info.private), files,
                     commit.commit_url if commit else None, commit.oid if commit else info.sha)


def _local_files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _status(local: Path, remote) -> str:
    """"added", "unchanged" or "changed": the repo's file is compared by the sha256 of its LFS
    object, or else by its git blob id (sha1 of ``blob <size>\\0`` + bytes)."""
    if remote is None:
        return "added"
    if remote.size != local.stat().st_size:
        return "changed"
    sha256, blob = hashlib.sha256(), hashlib.sha1(b"blob %d\0" % local.stat().st_size)
    with open(local, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha256.update(block)
            blob.update(block)
    same = remote.lfs.sha256 == sha256.hexdigest() if remote.lfs else remote.blob_id == blob.hexdigest()
    return "unchanged" if same else "changed"


@contextmanager
def _hub_errors(repo_id: str, endpoint: str):
    """The Hub client's errors as one line: the Hub refused (an HTTP error, also behind a wrapper
    such as a failed LFS upload) -> ConfigError; no answer -> OfflineError; others propagate."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        yield
    except Exception as err:
        causes = []
        while err is not None and err not in causes:
            causes.append(err)
            err = err.__cause__ or err.__context__
        if refused := next((e for e in causes if isinstance(e, HfHubHTTPError)), None):
            raise ConfigError(  # the Hub answered: no access, bad token, bad name, bad card, ...
                f"the Hub refused to push {repo_id!r} ({str(refused).splitlines()[0]}); "
                "check the repo id and that HF_TOKEN has write access"
            ) from None
        if unreachable := next((e for e in causes if _no_answer(e)), None):
            raise OfflineError(
                f"cannot reach the Hugging Face Hub at {endpoint} to push {repo_id!r} "
                f"({type(unreachable).__name__}); connect and retry (the token is read from HF_TOKEN)"
            ) from None
        raise


def _no_answer(err: BaseException) -> bool:
    """Whether ``err`` is the HTTP client getting no answer: connection refused or reset, timeout
    (httpx's / httpx2's ``TransportError``), offline mode (a ``ConnectionError``)."""
    return isinstance(err, (ConnectionError, TimeoutError)) or any(
        c.__name__ == "TransportError" for c in type(err).__mro__)
