"""The local stand-ins of geotextloc.testing: what notebook 07 and offline runs rely on.

A release made of texts and names only, completed by `geotextloc data materialize` from the
imagery stand-in: street views cut from the source panoramas by panorama id and heading, photos
found by location, satellite and map images drawn from the source tiles at the right place and
orientation; faults answered as asked; the key checked and never recorded.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from geotextloc.cli import main
from geotextloc.data.fetch import image_problem
from geotextloc.data.materialize import MANIFEST, panorama_id
from geotextloc.data.release import read_release
from geotextloc.errors import DataError
from geotextloc.testing.imagery import NO_DATA, FakeImagery, Faults
from geotextloc.testing.release import public_release

KEY = "stand-in/K+y=1"
FAST = ["--no-progress", "--rate", "500", "--concurrency", "4", "--timeout", "5", "--backoff", "0.01",
        "--max-backoff", "0.05", "--key-env", "STANDIN_KEY"]
QUADRANTS = {(0, 0): (230, 30, 30), (0, 1): (30, 200, 30), (1, 0): (30, 30, 230), (1, 1): (240, 220, 20)}


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.setenv("STANDIN_KEY", KEY)
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def source(make_release, tmp_path) -> Path:
    """A release with images whose content shows where it was cut: every panorama's red channel
    is its column (so the bearing), every OSM tile has four coloured quadrants (NW red, NE green,
    SW blue, SE yellow)."""
    root = make_release(tmp_path / "source", n=(3, 2), kinds=("satellite", "osm", "street"))
    for record in read_release(root).records:
        if record.view == "panorama":
            w, h = Image.open(record.images["street"]).size
            pano = np.zeros((h, w, 3), np.uint8)
            pano[..., 0] = (np.arange(w) * 255 // (w - 1))[None, :]
            Image.fromarray(pano).save(record.images["street"], "JPEG", quality=100)
        tile = np.zeros((64, 64, 3), np.uint8)
        for (row, col), colour in QUADRANTS.items():
            tile[row * 32:(row + 1) * 32, col * 32:(col + 1) * 32] = colour
        Image.fromarray(tile).save(record.images["osm"], "PNG")
    return root


def get(url: str) -> tuple[int, dict, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def test_public_release_holds_texts_and_names_only(release_root, tmp_path):
    dest = public_release(release_root, tmp_path / "public", ["NewYork"])
    files = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert files == ["CVG-text/NewYork/test.json", "CVG-text/NewYork/train.json"]
    assert (dest / files[1]).read_bytes() == (release_root / files[1]).read_bytes()
    records = read_release(dest, check_images=False, require_images=False).records
    assert len(records) == 9 and not any(r.images for r in records)
    with pytest.raises(DataError, match="not empty"):
        public_release(release_root, dest, ["NewYork"])
    with pytest.raises(DataError, match="no annotation files for Boston"):
        public_release(release_root, tmp_path / "other", ["Boston"])


def test_materialize_completes_a_public_release_from_the_stand_in(source, tmp_path, capfd):
    release = public_release(source, tmp_path / "public", ["NewYork", "NewYork-photos"])
    with FakeImagery(source, KEY) as imagery:
        for view, args in (
            ("street", ["--provider", "google-streetview", "--endpoint", imagery.url, "--size", "32x32"]),
            ("satellite", ["--provider", "google-satellite", "--endpoint", imagery.url, "--zoom", "18",
                           "--size", "160"]),
            ("osm", ["--provider", "xyz", "--template", imagery.template("osm"), "--zoom", "18", "--size", "96"]),
        ):
            assert main(["data", "materialize", str(release), "--view", view, *args, *FAST]) == 0
            assert "failed 0" in capfd.readouterr().out
        served = imagery.served()
        answers = list(imagery.answers)
    assert set(served.values()) == {1} and all(a.status == 200 for a in answers)
    assert not any(KEY in a.request or urllib.parse.quote(KEY, safe="") in a.request for a in answers)

    sources = {(r.version, r.name): r for r in read_release(source).records}
    for record in read_release(release).records:
        assert all(image_problem(p.read_bytes()) is None for p in record.images.values())
        original = sources[record.version, record.name]
        street = np.asarray(Image.open(record.images["street"]).convert("RGB")).astype(int)
        if record.view == "panorama":
            # four 90-degree views, the first centred on the name's heading = the panorama's centre column
            assert street.shape == (32, 128, 3)
            assert abs(street[16, 16, 0] - 128) < 12 and abs(street[16, 48, 0] - 191) < 12
        else:  # a photo found by its location: the source photo's colour
            colour = np.asarray(Image.open(original.images["street"]).convert("RGB")).astype(int).mean((0, 1))
            assert np.abs(street.mean((0, 1)) - colour).max() < 6
        # satellite: 160 px at zoom 18 cover 72 m, the source tile 60 m: its colour inside, no data at the corners
        satellite = np.asarray(Image.open(record.images["satellite"]).convert("RGB")).astype(int)
        colour = np.asarray(Image.open(original.images["satellite"]).convert("RGB")).astype(int).mean((0, 1))
        assert np.abs(satellite[80, 80] - colour).max() < 8
        assert np.abs(satellite[2, 2] - NO_DATA).max() < 20 and np.abs(satellite[-3, -3] - NO_DATA).max() < 20  # JPEG
        # osm: 96 px cover 43 m of the 60 m tile, north up, east right: the quadrants where they belong
        osm = np.asarray(Image.open(record.images["osm"]).convert("RGB"))
        for (row, col), colour in QUADRANTS.items():
            assert osm[20 + 56 * row, 20 + 56 * col].tolist() == list(colour), (record.name, row, col)

    entries = [json.loads(line) for line in (release / MANIFEST).read_text().splitlines()]
    assert len(entries) == 3 * 10 and all("key=***" in e["requests"][0] for e in entries if "requests" in e)


def test_faults_keys_and_missing_imagery_are_answered_like_the_services(source):
    pano = next(panorama_id(r.name) for r in read_release(source).records if r.view == "panorama")
    query = {"size": "16x16", "pano": pano[0], "fov": "90", "pitch": "0", "return_error_code": "true"}
    path = f"/maps/api/streetview?{urllib.parse.urlencode(query)}"
    key = f"&key={urllib.parse.quote(KEY, safe='')}"
    # faults: of the distinct requests in arrival order, the 2nd gets 429, the 3rd 500; retries are served
    with FakeImagery(source, KEY, faults=Faults(rate_limit_every=2, error_every=3, retry_after_s=7)) as imagery:
        assert get(imagery.url + path + key)[0] == 200
        status, headers, _ = get(imagery.url + path.replace("fov=90", "fov=60") + key)
        assert status == 429 and headers["Retry-After"] == "7"
        assert get(imagery.url + path.replace("fov=90", "fov=60") + key)[0] == 200
        assert [get(imagery.url + path.replace("fov=90", "fov=45") + key)[0] for _ in range(2)] == [500, 200]
        assert imagery.summary() == {"streetview": {"requests": 5, "images": 3, "429": 1, "500": 1}}
    with FakeImagery(source, KEY) as imagery:
        assert get(imagery.url + path + "&key=wrong")[0] == 403 and get(imagery.url + path)[0] == 403
        assert get(imagery.url + path.replace(pano[0], "no-such-pano") + key)[0] == 404
        far = path.replace(f"pano={pano[0]}", "location=0.0%2C0.0")
        assert get(imagery.url + far + key)[0] == 404  # no imagery within 50 m
        status, _, body = get(f"{imagery.url}/tiles/osm/18/77198/98524.png")
        assert status == 200 and image_problem(body) is None  # a tile no source tile covers: grey, still a tile
        assert get(f"{imagery.url}/tiles/moon/1/0/0.png")[0] == 404
        assert get(f"{imagery.url}/maps/api/elevation?locations=0,0{key}")[0] == 404
        summary = imagery.summary()
    assert summary == {"streetview": {"requests": 4, "images": 0, "403": 2, "404": 2},
                       "tiles/osm": {"requests": 1, "images": 1}, "tiles/moon": {"requests": 1, "images": 0, "404": 1},
                       "unknown": {"requests": 1, "images": 0, "404": 1}}
