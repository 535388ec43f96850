"""OpenStreetMap tiles in the standard style, rendered locally: osm2pgsql -> PostGIS -> mapnik + openstreetmap-carto.

The stack is Debian's (``make osm-stack`` installs it: ``scripts/install-osm-stack.sh``):
``osm2pgsql``, PostgreSQL with PostGIS, the ``openstreetmap-carto`` style (its compiled
``style.xml``, osm2pgsql ``.style`` + ``.lua`` and ``indexes.sql``), ``python3-mapnik`` and
the Noto/DejaVu/Unifont fonts the style names. One render goes:

1. a private PostgreSQL cluster in a folder of ours (:class:`Cluster`: ``initdb``, then
   ``pg_ctl start`` on a unix socket in that folder, no TCP port; as the ``postgres`` user
   when we are root, since PostgreSQL refuses to run as root), locked against a second
   process and stopped at the end;
2. one database per extract (``osm_<sha256[:16]>``, with ``postgis`` and ``hstore``), loaded
   once with the style's settings (``osm2pgsql -G --hstore --style openstreetmap-carto.style
   --tag-transform-script openstreetmap-carto.lua``) and its ``indexes.sql``; a later render
   of the same extract reuses it (:func:`load_extract`);
3. the style's *external data* tables. openstreetmap-carto draws the sea from
   ``water_polygons`` (osmdata.openstreetmap.de's coastline product, downloaded by the style's
   ``get-external-data.py``), which this machine cannot reach and Debian does not ship. The
   sea is therefore rebuilt from the extract's own ``natural=coastline`` ways, the way that
   product is made from the planet (water on the right of a coastline way;
   :func:`~geotextloc.data.embedded.osm.sea_polygons`, the embedded loader's rule); ice
   sheets and Natural Earth's low-zoom borders stay empty (they matter only in Antarctica
   and below zoom 5). Each render's metadata says which;
4. mapnik renders through :mod:`geotextloc.data.osm_carto_worker`, a script run by the system
   Python (Debian's mapnik binding is not importable from the project's virtual environment).

Two products: XYZ tiles (:func:`render_tiles`, ``geotextloc data render-osm``: ``Z/X/Y.png``,
256 px or 512 px at twice the scale, metatiles of 8 x 8 like ``renderd`` so labels agree
across tile edges) and north-up views of a given ground footprint around a point
(:func:`render_views`: the embedded builder's OSM view with ``--osm-renderer carto``).
Both skip files already there (resume), write every file atomically and show progress.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import shutil
import subprocess
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

from geotextloc.errors import ConfigError, DataError, GeotextlocError
from geotextloc.files import atomic_write_text, file_sha256

WEB_MERCATOR_HALF = 20037508.342789244  # half the side of the EPSG:3857 square, metres
MAX_LAT = 85.0511287798066  # the Web Mercator square's edge latitude
EARTH_RADIUS_WGS84 = 6378137.0
STYLE_DIRS = ("/usr/share/openstreetmap-carto-common", "/usr/share/openstreetmap-carto")
FONT_DIRS = ("/usr/share/fonts",)
#: The 13 pattern images that Debian's openstreetmap-carto-common 5.7.0 leaves out (CC0, from
#: the style's v5.7.0 release; ``osm_carto/README.md``); used when the style folder has none.
PATTERNS_DIR = Path(__file__).with_name("osm_carto") / "patterns"
WORKER = Path(__file__).with_name("osm_carto_worker.py")
DB_USER = "postgres"  # the cluster's superuser (initdb -U)
STACK_PACKAGES = ("osm2pgsql", "postgresql", "postgresql-15-postgis-3", "openstreetmap-carto",
                  "python3-mapnik", "fonts-noto-cjk", "fonts-noto-hinted", "fonts-noto-unhinted",
                  "fonts-unifont", "fonts-dejavu-core", "fonts-hanazono")
INSTALL_HINT = "install it with `make osm-stack` (Debian/Ubuntu, as root: scripts/install-osm-stack.sh)"
ATTRIBUTION = "© OpenStreetMap contributors (ODbL); style: openstreetmap-carto (CC0)"
#: The style's external tables and their columns (besides ``way``); only the sea is filled.
EXTERNAL_TABLES = {"water_polygons": "", "simplified_water_polygons": "", "icesheet_polygons": "",
                   "icesheet_outlines": ", ice_edge text", "ne_110m_admin_0_boundary_lines_land": ""}
METATILE = 8
TILE_SIZES = (256, 512)
MAX_TILES = 100_000


class OSMStackMissing(GeotextlocError):
    """The rendering stack (osm2pgsql, PostgreSQL + PostGIS, mapnik, openstreetmap-carto) is not installed."""


# ----------------------------------------------------------------------------- tile maths


class BBox(NamedTuple):
    """West, south, east, north in degrees (WGS84)."""

    west: float
    south: float
    east: float
    north: float


class Tile(NamedTuple):
    z: int
    x: int
    y: int


def parse_bbox(text: str) -> BBox:
    """``"W,S,E,N"`` in degrees -> :class:`BBox`, checked (W < E, S < N, inside Web Mercator)."""
    try:
        values = [float(v) for v in str(text).split(",")]
    except ValueError:
        values = []
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise ConfigError(f"--bbox {text!r}: give four numbers W,S,E,N in degrees, e.g. 7.40,43.72,7.44,43.75")
    box = BBox(*values)
    if not (-180 <= box.west < box.east <= 180 and -MAX_LAT <= box.south < box.north <= MAX_LAT):
        raise ConfigError(f"--bbox {text!r}: need -180 <= W < E <= 180 and -{MAX_LAT:.4f} <= S < N <= "
                          f"{MAX_LAT:.4f} (west, south, east, north)")
    return box


def parse_zooms(text: str) -> list[int]:
    """``"16"``, ``"14-17"`` or ``"15,17"`` -> sorted zoom levels in 0..22."""
    zooms: set[int] = set()
    try:
        for part in str(text).split(","):
            low, _, high = part.strip().partition("-")
            zooms.update(range(int(low), int(high or low) + 1))
    except ValueError:
        zooms = set()
    if not zooms or min(zooms) < 0 or max(zooms) > 22:
        raise ConfigError(f"--zoom {text!r}: give a zoom level 0..22, a range like 14-17 or a list like 15,17")
    return sorted(zooms)


def mercator(lon: float, lat: float) -> tuple[float, float]:
    """EPSG:3857 metres of a WGS84 point: x = R lon, y = R ln tan(pi/4 + lat/2)."""
    lat = max(-MAX_LAT, min(MAX_LAT, lat))
    return (EARTH_RADIUS_WGS84 * math.radians(lon),
            EARTH_RADIUS_WGS84 * math.log(math.tan(math.pi / 4 + math.radians(lat) / 2)))


def tile_xy(lon: float, lat: float, zoom: int) -> tuple[float, float]:
    """Fractional XYZ tile coordinates: x = (lon + 180) / 360 * 2^z, y = (1 - asinh(tan lat) / pi) / 2 * 2^z."""
    n = 2 ** zoom
    lat = max(-MAX_LAT, min(MAX_LAT, lat))
    return (lon + 180.0) / 360.0 * n, (1.0 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2.0 * n


def tile_bounds(tile: Tile) -> tuple[float, float, float, float]:
    """EPSG:3857 (minx, miny, maxx, maxy) of an XYZ tile (y counted from the north)."""
    side = 2 * WEB_MERCATOR_HALF / 2 ** tile.z
    minx = -WEB_MERCATOR_HALF + tile.x * side
    maxy = WEB_MERCATOR_HALF - tile.y * side
    return minx, maxy - side, minx + side, maxy


def tiles_for_bbox(bbox: BBox, zooms: Sequence[int]) -> list[Tile]:
    """Every XYZ tile that overlaps ``bbox`` (not only touches it) at each zoom, in (z, x, y) order."""
    tiles = []
    for z in zooms:
        n = 2 ** z
        x0, y0 = tile_xy(bbox.west, bbox.north, z)
        x1, y1 = tile_xy(bbox.east, bbox.south, z)
        xs = range(max(0, math.floor(x0)), min(n - 1, max(math.floor(x0), math.ceil(x1) - 1)) + 1)
        ys = range(max(0, math.floor(y0)), min(n - 1, max(math.floor(y0), math.ceil(y1) - 1)) + 1)
        tiles += [Tile(z, x, y) for x in xs for y in ys]
    return tiles


def metatiles(tiles: Sequence[Tile], size: int = METATILE) -> dict[tuple[int, int, int], list[Tile]]:
    """``tiles`` grouped by their ``size`` x ``size`` metatile (z, x // size, y // size), as renderd does."""
    groups: dict[tuple[int, int, int], list[Tile]] = {}
    for t in tiles:
        groups.setdefault((t.z, t.x // size, t.y // size), []).append(t)
    return groups


def view_box(lat: float, lon: float, footprint_m: float) -> tuple[float, float, float, float]:
    """EPSG:3857 box of the north-up square of ``footprint_m`` ground metres centred on (lat, lon).
    Web Mercator stretches ground distances by 1 / cos(lat)."""
    x, y = mercator(lon, lat)
    half = footprint_m / 2 / math.cos(math.radians(lat))
    return x - half, y - half, x + half, y + half


def tile_path(out: Path, tile: Tile) -> Path:
    return out / str(tile.z) / str(tile.x) / f"{tile.y}.png"


# ----------------------------------------------------------------------------- the stack


@dataclass(frozen=True)
class Stack:
    """Where the installed stack's programs and files are (:func:`find_stack`)."""

    osm2pgsql: str
    pg_bin: Path  # initdb, pg_ctl, psql
    python: str  # a Python that imports mapnik
    style_dir: Path  # style.xml, openstreetmap-carto.lua/.style, indexes.sql
    patterns: Path | None  # where the style's patterns/ are, when its own folder has none
    versions: dict = field(default_factory=dict)

    @property
    def style(self) -> Path:
        return self.style_dir / "style.xml"

    def digest(self) -> str:
        """What a loaded database depends on: the osm2pgsql version and the style's import files."""
        h = hashlib.sha256(self.versions.get("osm2pgsql", "").encode())
        for name in ("openstreetmap-carto.style", "openstreetmap-carto.lua", "indexes.sql"):
            h.update(file_sha256(self.style_dir / name).encode())
        return h.hexdigest()[:16]


def _pg_bin() -> Path | None:
    if os.environ.get("GEOTEXTLOC_PG_BIN"):
        return Path(os.environ["GEOTEXTLOC_PG_BIN"])
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


_STACK: dict[str, Stack] = {}


def find_stack() -> Stack:
    """The installed stack, checked once per process; :class:`OSMStackMissing` (one line naming
    what is missing and ``make osm-stack``) otherwise. ``GEOTEXTLOC_CARTO_DIR``,
    ``GEOTEXTLOC_PG_BIN`` and ``GEOTEXTLOC_MAPNIK_PYTHON`` point at a stack elsewhere."""
    key = "|".join(os.environ.get(k, "") for k in ("GEOTEXTLOC_CARTO_DIR", "GEOTEXTLOC_PG_BIN",
                                                    "GEOTEXTLOC_MAPNIK_PYTHON", "PATH"))
    if key in _STACK:
        return _STACK[key]
    missing = []
    osm2pgsql = shutil.which("osm2pgsql")
    if not osm2pgsql:
        missing.append("osm2pgsql")
    pg_bin = _pg_bin()
    if pg_bin is None or not all((pg_bin / p).is_file() for p in ("initdb", "pg_ctl", "psql", "pg_config")):
        missing.append("PostgreSQL (initdb, pg_ctl, psql)")
    elif not _has_extensions(pg_bin, ("postgis", "hstore")):
        missing.append("PostGIS (postgresql-NN-postgis-3)")
    dirs = [os.environ["GEOTEXTLOC_CARTO_DIR"]] if os.environ.get("GEOTEXTLOC_CARTO_DIR") else STYLE_DIRS
    style_dir = next((Path(d) for d in dirs if all((Path(d) / f).is_file() for f in
                      ("style.xml", "openstreetmap-carto.lua", "openstreetmap-carto.style", "indexes.sql"))), None)
    if style_dir is None:
        missing.append("the openstreetmap-carto style (style.xml, openstreetmap-carto.lua)")
    python = os.environ.get("GEOTEXTLOC_MAPNIK_PYTHON") or shutil.which("python3", path="/usr/bin") or "python3"
    mapnik_version = _mapnik_version(python)
    if mapnik_version is None:
        missing.append(f"mapnik for {python} (python3-mapnik)")
    if os.geteuid() == 0 and not shutil.which("runuser"):
        missing.append("runuser (util-linux), to run PostgreSQL as the postgres user")
    if missing:
        raise OSMStackMissing(f"the OpenStreetMap rendering stack is not installed (missing: {'; '.join(missing)}); "
                              f"{INSTALL_HINT}")
    patterns = None if (style_dir / "patterns").is_dir() else PATTERNS_DIR
    versions = {"mapnik": mapnik_version, "osm2pgsql": _first_line([osm2pgsql, "--version"]).split()[-1],
                "postgresql": _first_line([str(pg_bin / "pg_config"), "--version"]).split()[1],
                "openstreetmap-carto": _carto_version(style_dir)}
    _STACK[key] = Stack(osm2pgsql, pg_bin, python, style_dir, patterns, versions)
    return _STACK[key]


def _first_line(cmd: list[str]) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    # osm2pgsql prints "<date> <time>  osm2pgsql version 1.8.0"
    return next((ln for ln in lines if "version" in ln or "PostgreSQL" in ln), lines[0] if lines else "unknown")


def _has_extensions(pg_bin: Path, names: Sequence[str]) -> bool:
    try:
        share = subprocess.run([str(pg_bin / "pg_config"), "--sharedir"], capture_output=True, text=True,
                               timeout=60).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return False
    return bool(share) and all((Path(share) / "extension" / f"{n}.control").is_file() for n in names)


def _mapnik_version(python: str) -> str | None:
    try:
        proc = subprocess.run([python, "-c", "import mapnik; print(mapnik.mapnik_version())"],
                              capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0 or not proc.stdout.strip().isdigit():
        return None
    v = int(proc.stdout.strip())  # 300100 -> 3.1.0
    return f"{v // 100000}.{v // 100 % 1000}.{v % 100}"


def _carto_version(style_dir: Path) -> str:
    try:
        proc = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "openstreetmap-carto-common"],
                              capture_output=True, text=True, timeout=60)
        if proc.returncode == 0 and proc.stdout.strip():
            return f"{proc.stdout.strip()} (Debian)"
    except (OSError, subprocess.TimeoutExpired):
        pass
    return f"unknown ({style_dir})"


# ----------------------------------------------------------------------------- the database


def default_pg_dir() -> Path:
    """Where the private cluster lives: ``$GEOTEXTLOC_CACHE/osm-carto`` (default
    ``~/.cache/geotextloc/osm-carto``); as root without ``GEOTEXTLOC_CACHE``,
    ``/var/tmp/geotextloc-osm-carto``, which the postgres user can reach (root's home it cannot)."""
    if os.environ.get("GEOTEXTLOC_CACHE"):
        return Path(os.environ["GEOTEXTLOC_CACHE"]) / "osm-carto"
    if os.geteuid() == 0:
        return Path("/var/tmp/geotextloc-osm-carto")
    return Path.home() / ".cache" / "geotextloc" / "osm-carto"


class Cluster:
    """A private PostgreSQL cluster in ``root`` (data in ``root/data``, socket in ``root``, no TCP),
    started on entering and stopped on leaving; an exclusive lock on ``root/lock`` keeps a second
    process (another render, a test) waiting instead of sharing it."""

    def __init__(self, root: str | Path, stack: Stack):
        self.root = Path(root).absolute()
        self.stack = stack
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.as_postgres = os.geteuid() == 0  # PostgreSQL refuses to run as root
        self._lock = None

    @property
    def socket_dir(self) -> Path:
        return self.root

    def _cmd(self, *args: str) -> list[str]:
        return ["runuser", "-u", DB_USER, "--", *args] if self.as_postgres else list(args)

    def _run(self, cmd: list[str], what: str, timeout: float = 600, stdin: str | None = None) -> str:
        try:
            proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise DataError(f"{what} failed ({err}); see {self.log}") from None
        if proc.returncode != 0:
            lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
            why = next((ln for ln in reversed(lines) if "ERROR" in ln or "FATAL" in ln),
                       lines[-1] if lines else f"exit status {proc.returncode}")
            raise DataError(f"{what} failed: {why} (cluster {self.root}; log {self.log})")
        return proc.stdout

    def __enter__(self) -> "Cluster":
        if len(str(self.socket_dir / ".s.PGSQL.5432")) > 100:
            raise ConfigError(f"{self.root}: path too long for a PostgreSQL socket; pass a shorter --pg-dir")
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.root / "lock", "a")
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        try:
            if self.as_postgres:
                shutil.chown(self.root, DB_USER, DB_USER)
                if subprocess.run(self._cmd("test", "-w", str(self.root), "-a", "-x", str(self.root))).returncode:
                    raise ConfigError(f"{self.root}: the postgres user cannot write there (a parent folder is "
                                      "private); pass --pg-dir under a folder others can enter, e.g. /var/tmp/...")
            if not (self.data / "PG_VERSION").is_file():
                shutil.rmtree(self.data, ignore_errors=True)  # a half-made cluster
                self._run(self._cmd(str(self.stack.pg_bin / "initdb"), "-D", str(self.data), "-U", DB_USER,
                                    "--auth=trust", "-E", "UTF8", "--locale=C", "--no-instructions"),
                          "initdb")
            status = subprocess.run(self._cmd(str(self.stack.pg_bin / "pg_ctl"), "-D", str(self.data), "status"),
                                    capture_output=True, text=True)
            if status.returncode != 0:  # 3: not running (a running one is ours, left by a killed run)
                options = (f"-c listen_addresses='' -c unix_socket_directories='{self.socket_dir}' "
                           "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
                self._run(self._cmd(str(self.stack.pg_bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                                    "-w", "-t", "120", "-o", options, "start"), "starting PostgreSQL")
        except BaseException:
            self._unlock()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            subprocess.run(self._cmd(str(self.stack.pg_bin / "pg_ctl"), "-D", str(self.data), "-m", "fast",
                                     "-w", "stop"), capture_output=True, text=True, timeout=120)
        finally:
            self._unlock()

    def _unlock(self) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def conninfo(self) -> dict:
        return {"host": str(self.socket_dir), "user": DB_USER}

    def psql(self, sql: str, db: str = "postgres", what: str = "psql") -> str:
        """Run ``sql`` in ``db``; the rows, ``|``-separated, one per line."""
        cmd = [str(self.stack.pg_bin / "psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1",
               "-h", str(self.socket_dir), "-U", DB_USER, "-d", db, "-f", "-"]
        return self._run(cmd, what, stdin=sql)


def database_name(sha256: str) -> str:
    return f"osm_{sha256[:16]}"


def load_extract(cluster: Cluster, pbf: Path, sha256: str, progress: bool = True) -> tuple[str, dict]:
    """The database holding ``pbf`` in the style's schema, loaded now unless an earlier load of
    the same extract with the same stack finished (its ``geotextloc_import`` row says so).
    Returns the database name and what was loaded (coastline, sea polygons, frame)."""
    stack = cluster.stack
    db = database_name(sha256)
    key = {"sha256": sha256, "stack": stack.digest()}
    if cluster.psql(f"SELECT 1 FROM pg_database WHERE datname = '{db}'").strip():
        done = cluster.psql("SELECT to_regclass('geotextloc_import') IS NOT NULL", db).strip() == "t"
        info = json.loads(cluster.psql("SELECT info FROM geotextloc_import", db) or "{}") if done else {}
        if info and all(info.get(k) == v for k, v in key.items()):
            return db, info
        cluster.psql(f'DROP DATABASE "{db}"')  # a half-done or stale load
    if progress:
        print(f"loading {pbf.name} into PostGIS (osm2pgsql, openstreetmap-carto schema) ...", flush=True)
    cluster.psql(f'CREATE DATABASE "{db}"')
    cluster.psql("CREATE EXTENSION postgis; CREATE EXTENSION hstore;", db)
    slim = ["--slim", "--drop"] if pbf.stat().st_size > 200 << 20 else []  # in memory for small extracts
    cmd = [stack.osm2pgsql, "--create", "-G", "--hstore", "--style", str(stack.style_dir / "openstreetmap-carto.style"),
           "--tag-transform-script", str(stack.style_dir / "openstreetmap-carto.lua"), "--number-processes", "1",
           "--cache", "1000", *slim, "-H", str(cluster.socket_dir), "-U", DB_USER, "-d", db, str(pbf)]
    cluster._run(cmd, f"osm2pgsql {pbf.name}", timeout=24 * 3600)
    cluster.psql((stack.style_dir / "indexes.sql").read_text(encoding="utf-8"), db, "the style's indexes.sql")
    cluster.psql(" ".join(f"CREATE TABLE {t} (way geometry(Geometry, 3857){cols});"
                          for t, cols in EXTERNAL_TABLES.items()), db)
    info = key | _load_sea(cluster, db)
    sql = f"CREATE TABLE geotextloc_import (info text); INSERT INTO geotextloc_import VALUES ({_quote(json.dumps(info))})"
    cluster.psql(sql, db)
    return db, info


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _load_sea(cluster: Cluster, db: str) -> dict:
    """Fill ``water_polygons`` / ``simplified_water_polygons`` with the sea rebuilt from the
    extract's ``natural=coastline`` ways (open ways as lines; closed ones, which osm2pgsql
    stores as polygons, as counter-clockwise rings: land on the left, like a coastline way)."""
    import shapely
    from shapely.geometry import box

    from geotextloc.data.embedded.osm import sea_polygons

    rows = cluster.psql(
        "SELECT ST_AsText(way) FROM planet_osm_line WHERE \"natural\" = 'coastline' UNION ALL "
        "SELECT ST_AsText(ST_ExteriorRing((ST_Dump(ST_ForcePolygonCCW(way))).geom)) FROM planet_osm_polygon "
        "WHERE \"natural\" = 'coastline' ORDER BY 1", db).splitlines()
    coast = [g for row in rows if row for g in _parts(shapely.from_wkt(row))]
    extent = cluster.psql(
        "SELECT ST_XMin(e), ST_YMin(e), ST_XMax(e), ST_YMax(e) FROM (SELECT ST_Extent(way) AS e FROM ("
        "SELECT way FROM planet_osm_point UNION ALL SELECT way FROM planet_osm_line UNION ALL "
        "SELECT way FROM planet_osm_polygon) t) s", db).strip()
    if not coast or not extent or "||" in extent:
        return {"coastline_ways": 0, "sea_polygons": 0, "coastline": coastline_note(0, 0)}
    frame = box(*shapely.total_bounds([box(*map(float, extent.split("|"))), *coast]))
    sea = sea_polygons(coast, frame)
    if sea:
        values = ", ".join(f"(ST_GeomFromText({_quote(shapely.to_wkt(p, rounding_precision=2))}, 3857))" for p in sea)
        cluster.psql(f"INSERT INTO water_polygons (way) VALUES {values}; "
                     "INSERT INTO simplified_water_polygons (way) SELECT way FROM water_polygons;", db)
    return {"coastline_ways": len(rows), "sea_polygons": len(sea), "coastline": coastline_note(len(rows), len(sea)),
            "frame_3857": [round(v, 1) for v in frame.bounds]}


def _parts(geom) -> list:
    from shapely.geometry import LineString

    if isinstance(geom, LineString):
        return [geom] if geom.length > 0 else []
    return [g for g in getattr(geom, "geoms", []) if isinstance(g, LineString) and g.length > 0]


def coastline_note(ways: int, polygons: int) -> str:
    """What the tiles' sea is made of, for metadata and command output."""
    base = ("osmdata.openstreetmap.de's water polygons are not used (not reachable; Debian does not ship them); "
            "ice sheets and Natural Earth low-zoom borders are empty")
    if ways == 0:
        return f"no natural=coastline in the extract: no sea drawn (lakes and rivers are); {base}"
    return (f"sea rebuilt from the extract's {ways} natural=coastline way(s) ({polygons} polygon(s), water to the "
            f"right of each way, within the extract's data extent); {base}")


# ----------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class MapView:
    """A north-up square map image of ``footprint_m`` ground metres centred on (lat, lon)."""

    lat: float
    lon: float
    footprint_m: float
    size: int
    path: Path


@dataclass
class RenderReport:
    out: Path | None
    rendered: int = 0
    skipped: int = 0
    metadata: dict = field(default_factory=dict)


@contextmanager
def carto_database(pbf: str | Path, pg_dir: str | Path | None = None,
                   progress: bool = True) -> Iterator[tuple[Stack, Cluster, str, dict]]:
    """The stack, a started cluster, and the database of ``pbf`` (loaded if needed); stopped on exit."""
    stack = find_stack()
    pbf = Path(pbf)
    if not pbf.is_file():
        raise DataError(f"{pbf}: OSM extract not found; give the path of an existing .osm.pbf file")
    sha = file_sha256(pbf)
    with Cluster(pg_dir or default_pg_dir(), stack) as cluster:
        db, info = load_extract(cluster, pbf.resolve(), sha, progress)
        yield stack, cluster, db, info | {"extract": pbf.name, "sha256": sha}


def run_worker(stack: Stack, cluster: Cluster, db: str, jobs: list[dict], processes: int = 1,
               progress: bool = True, desc: str = "render-osm") -> None:
    """Render ``jobs`` (:mod:`~geotextloc.data.osm_carto_worker`'s format) in ``processes``
    system-Python processes, with a progress bar counting the files written."""
    from tqdm.auto import tqdm

    if not jobs:
        return
    spec = {"style": str(stack.style), "patterns": str(stack.patterns) if stack.patterns else None,
            "db": cluster.conninfo() | {"dbname": db}, "fonts": list(FONT_DIRS), "buffer": 128}
    chunks = [jobs[i::max(1, processes)] for i in range(max(1, min(processes, len(jobs))))]
    bar = tqdm(total=sum(len(j["crops"]) for j in jobs), desc=desc, unit="tile", disable=not progress)
    lock = threading.Lock()
    errors: list[str] = []

    def one(chunk: list[dict]) -> None:
        proc = subprocess.Popen([stack.python, str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        err_lines: list[str] = []
        reader = threading.Thread(target=lambda: err_lines.extend(proc.stderr), daemon=True)
        reader.start()
        try:
            proc.stdin.write(json.dumps(spec | {"jobs": chunk}))
            proc.stdin.close()
        except BrokenPipeError:
            pass
        for line in proc.stdout:
            if line.startswith("done "):
                with lock:
                    bar.update(len(chunk[int(line.split()[1])]["crops"]))
        proc.wait()
        reader.join()
        if proc.returncode != 0:
            lines = [ln.strip() for ln in err_lines if ln.strip() and "Mapnik LOG" not in ln]
            errors.append(lines[-1] if lines else f"exit status {proc.returncode}")

    threads = [threading.Thread(target=one, args=(c,)) for c in chunks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    bar.close()
    if errors:
        raise DataError(f"mapnik could not render with {stack.style}: {errors[0]}")


def render_tiles(pbf: str | Path, bbox: BBox, zooms: Sequence[int], out: str | Path, tile_size: int = 256,
                 metatile: int = METATILE, processes: int = 1, pg_dir: str | Path | None = None,
                 progress: bool = True) -> RenderReport:
    """XYZ tiles ``out/Z/X/Y.png`` (png256, like the OSM tile servers) of ``bbox`` at ``zooms``
    from the extract ``pbf``, and ``out/metadata.json``. Tiles already there are kept; the
    others are rendered in metatiles of ``metatile`` x ``metatile``. ``tile_size`` 512 draws
    the same area per tile at twice the scale (``@2x`` tiles)."""
    if tile_size not in TILE_SIZES:
        raise ConfigError(f"--tile-size {tile_size}: use one of {', '.join(map(str, TILE_SIZES))}")
    if metatile < 1 or processes < 1:
        raise ConfigError(f"--metatile {metatile} / --processes {processes}: must be at least 1")
    out = Path(out)
    tiles = tiles_for_bbox(bbox, zooms)
    if len(tiles) > MAX_TILES:
        raise ConfigError(f"{len(tiles)} tiles for --bbox {','.join(map(str, bbox))} at zoom {zooms}: more than "
                          f"{MAX_TILES}; render a smaller area or fewer zoom levels")
    todo = [t for t in tiles if not tile_path(out, t).is_file()]
    report = RenderReport(out, rendered=len(todo), skipped=len(tiles) - len(todo))
    with carto_database(pbf, pg_dir, progress) as (stack, cluster, db, info):
        _check_out(out, info["sha256"], tile_size)
        jobs = []
        for group in metatiles(todo, metatile).values():
            x0, x1 = min(t.x for t in group), max(t.x for t in group)
            y0, y1 = min(t.y for t in group), max(t.y for t in group)
            z = group[0].z
            minx, _, _, maxy = tile_bounds(Tile(z, x0, y0))
            _, miny, maxx, _ = tile_bounds(Tile(z, x1, y1))
            jobs.append({"box": [minx, miny, maxx, maxy], "width": (x1 - x0 + 1) * tile_size,
                         "height": (y1 - y0 + 1) * tile_size, "scale": tile_size / 256, "format": "png256",
                         "crops": [{"x": (t.x - x0) * tile_size, "y": (t.y - y0) * tile_size, "w": tile_size,
                                    "h": tile_size, "path": str(tile_path(out, t).absolute())} for t in group]})
        run_worker(stack, cluster, db, jobs, processes, progress, "render-osm tiles")
    report.metadata = _metadata(out, stack, info, {
        "scheme": "xyz", "tile_size": tile_size, "scale_factor": tile_size / 256, "format": "png256",
        "bbox": list(bbox), "zooms": sorted(set(zooms)), "metatile": metatile, "tiles": len(tiles)})
    return report


def render_views(pbf: str | Path, views: Sequence[MapView], processes: int = 1, pg_dir: str | Path | None = None,
                 progress: bool = True, desc: str = "carto views") -> RenderReport:
    """North-up map images (RGBA PNG) of ``views`` from the extract ``pbf``; views whose file
    exists are kept. Returns the report with the metadata of the render (no file written)."""
    todo = [v for v in views if not Path(v.path).is_file()]
    report = RenderReport(None, rendered=len(todo), skipped=len(views) - len(todo))
    with carto_database(pbf, pg_dir, progress) as (stack, cluster, db, info):
        jobs = [{"box": list(view_box(v.lat, v.lon, v.footprint_m)), "width": v.size, "height": v.size,
                 "scale": 1.0, "format": "png32",
                 "crops": [{"x": 0, "y": 0, "w": v.size, "h": v.size, "path": str(Path(v.path).absolute())}]}
                for v in todo]
        run_worker(stack, cluster, db, jobs, processes, progress, desc)
    report.metadata = renderer_metadata(stack, info)
    return report


def renderer_metadata(stack: Stack, info: dict) -> dict:
    """What made a render: the stack's versions, the extract and the sea's source."""
    return {"renderer": "mapnik + openstreetmap-carto", "versions": dict(stack.versions),
            "extract": info.get("extract"), "extract_sha256": info.get("sha256"),
            "coastline": info.get("coastline"), "sea_polygons": info.get("sea_polygons", 0),
            "patterns": "openstreetmap-carto v5.7.0 patterns shipped with geotextloc (missing from Debian's package)"
            if stack.patterns else "the style's own", "attribution": ATTRIBUTION}


def _old_metadata(out: Path) -> dict:
    path = out / "metadata.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise DataError(f"{path}: not valid JSON; delete it (the tiles stay) or render into a new --out") from None


def _check_out(out: Path, sha256: str, tile_size: int) -> None:
    """Refuse to add tiles to a folder holding another extract's tiles or another tile size."""
    old = _old_metadata(out)
    if old.get("extract_sha256") not in (None, sha256) or old.get("tile_size") not in (None, tile_size):
        raise DataError(f"{out}/metadata.json: {out} holds {old.get('tile_size')} px tiles of {old.get('extract')}; "
                        "render another extract or tile size into a new --out folder")


def _metadata(out: Path, stack: Stack, info: dict, tiles: dict) -> dict:
    """``out/metadata.json``: the renderer, and the zooms of this and earlier runs into ``out``."""
    meta = renderer_metadata(stack, info) | tiles
    meta["zooms"] = sorted(set(meta["zooms"]) | set(_old_metadata(out).get("zooms", [])))
    atomic_write_text(out / "metadata.json", json.dumps(meta, indent=1, ensure_ascii=False, sort_keys=True) + "\n")
    return meta
