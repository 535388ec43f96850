"""`geotextloc data materialize` against real HTTP servers on 127.0.0.1 with faults injected.

One :class:`FakeProvider` stands in for Google's Street View / Maps Static APIs and for a tile
server (``/xyz/{z}/{x}/{y}.png``, ``/qk/{quadkey}.png``, ``/wmts?TileMatrix=..``). It counts every
request and every complete image it served per identity (the request without its key), and
can answer 429 with Retry-After, 500/503, hang, cut the body short, send HTML or nothing, die,
or hold requests at a gate. "Nothing fetched twice" is: each identity served exactly once,
over all runs against all servers.
"""

from __future__ import annotations

import email.utils
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from geotextloc.cli import main
from geotextloc.data.fetch import RateLimiter, Redactor, image_problem, retry_after_seconds
from geotextloc.data.materialize import MANIFEST, quadkey, world_pixel
from geotextloc.data.release import read_release

KEY = "s3cr3t/K+y=Zq9"  # needs URL-encoding: checks that neither form leaks
KEY_FORMS = [KEY, urllib.parse.quote(KEY, safe=""), urllib.parse.quote_plus(KEY)]
FAST = ["--no-progress", "--rate", "200", "--concurrency", "4", "--timeout", "0.5", "--backoff", "0.01",
        "--max-backoff", "0.05"]


def tile_pixels(z: int, x: int, y: int, size: int = 256) -> np.ndarray:
    """A tile whose pixels encode their world pixel: (gx mod 251, gy mod 251, z)."""
    gx = (x * size + np.arange(size)) % 251
    gy = (y * size + np.arange(size)) % 251
    out = np.zeros((size, size, 3), np.uint8)
    out[..., 0], out[..., 1], out[..., 2] = gx[None, :], gy[:, None], z
    return out


def encode(array: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt)
    return buf.getvalue()


def from_quadkey(qk: str) -> tuple[int, int, int]:
    x = y = 0
    for digit in qk:
        x, y = 2 * x + (int(digit) & 1), 2 * y + (int(digit) >> 1)
    return len(qk), x, y


class FakeProvider:
    """A threaded HTTP server on 127.0.0.1; ``faults(identity, n)`` picks the answer to the n-th request."""

    def __init__(self, faults=None, port: int = 0, gate_after: int | None = None, die_after: int | None = None):
        self.faults = faults or (lambda identity, n: "ok")
        self.gate_after, self.die_after = gate_after, die_after
        self.hits, self.served = Counter(), Counter()
        self.admitted = 0  # "ok" answers begun (the gate and death count these, so concurrency cannot overshoot)
        self.events: list[tuple[float, str, str]] = []  # (time, identity, answer)
        self.agents: set[str] = set()
        self.lock, self.release = threading.Lock(), threading.Event()
        provider = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # the default logs the URL (with the key) to stderr
                pass

            def do_GET(self):
                provider.handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.server.handle_error = lambda *a: None
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.alive = True

    def kill(self):
        if self.alive:
            self.alive = False
            self.server.shutdown()
            self.server.server_close()
        self.release.set()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()

    # -------------------------------------------------------------- answers

    def identify(self, path: str, query: dict) -> tuple[str, str, object]:
        """(identity, key given, what to draw)."""
        if path.startswith("/maps/api/"):
            key = query.pop("key", "")
            return f"{path}?{urllib.parse.urlencode(sorted(query.items()))}", key, query
        if path == "/wmts":
            z, x, y = (int(query[k]) for k in ("TileMatrix", "TileCol", "TileRow"))
        elif path.startswith("/qk/"):
            z, x, y = from_quadkey(path[4:].split(".")[0])
        else:
            z, x, y = (int(v.split(".")[0]) for v in path.split("/")[2:5])
        return f"tile {z}/{x}/{y}", query.get("apikey", KEY), (z, x, y)

    def image(self, path: str, what) -> tuple[bytes, str]:
        if path.startswith("/maps/api/"):
            w, h = (int(v) for v in what["size"].split("x"))
            colour = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).digest()[:3]
            array = np.broadcast_to(np.frombuffer(colour, np.uint8), (h, w, 3)).copy()
            fmt = "PNG" if what.get("format") == "png" else "JPEG"
            return encode(array, fmt), f"image/{fmt.lower()}"
        return encode(tile_pixels(*what), "PNG"), "image/png"

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        self.agents.add(h.headers.get("User-Agent", ""))
        parts = urllib.parse.urlsplit(h.path)
        query = dict(urllib.parse.parse_qsl(parts.query))
        identity, key, what = self.identify(parts.path, query)
        with self.lock:
            self.hits[identity] += 1
            n = self.hits[identity]
            answer = self.faults(identity, n)
            if self.gate_after is not None and self.admitted >= self.gate_after:
                answer = "gate"
            if self.die_after is not None and self.admitted >= self.die_after:
                answer = "die"
            if key != KEY:
                answer = "403"
            self.admitted += answer == "ok"
            self.events.append((time.monotonic(), identity, answer))
        if answer in ("gate", "hang"):
            self.release.wait(30)  # then drop the connection: the client gave up or was killed
            h.close_connection = True
            return
        if answer == "die":
            threading.Thread(target=self.kill).start()
            h.close_connection = True
            return
        if answer in ("403", "500", "503", "429", "429-date", "429-long"):
            status = int(answer[:3])
            h.send_response(status)
            if answer == "429":
                h.send_header("Retry-After", "1")
            elif answer == "429-date":
                h.send_header("Retry-After", email.utils.formatdate(time.time() + 1, usegmt=True))
            elif answer == "429-long":
                h.send_header("Retry-After", "3600")
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        body, ctype = self.image(parts.path, what)
        if answer == "html":
            body, ctype = b"<html><body>Server Error: quota</body></html>", "text/html"
        elif answer == "empty":
            body = b""
        elif answer == "short":
            body = body[: len(body) // 2]
        h.send_response(200)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if answer == "cut":  # promise the whole body, send half, hang up
            h.wfile.write(body[: len(body) // 2])
            h.wfile.flush()
            h.close_connection = True
            return
        h.wfile.write(body)
        if answer == "ok":
            with self.lock:
                self.served[identity] += 1


def by_hash(plan: dict[int, list[str]], modulo: int = 8):
    """Faults by identity: identities with sha1 % modulo == k get ``plan[k]`` as their first answers."""
    def faults(identity: str, n: int) -> str:
        answers = plan.get(int(hashlib.sha1(identity.encode()).hexdigest(), 16) % modulo, [])
        return answers[n - 1] if n <= len(answers) else "ok"
    return faults


def run(capfd, *args) -> tuple[int, str, str]:
    code = main(["data", "materialize", *map(str, args)])
    out, err = capfd.readouterr()
    return code, out, err


def assert_no_key(root: Path, *texts: str) -> None:
    for text in texts:
        assert not any(k in text for k in KEY_FORMS)
    for path in root.rglob("*"):
        assert not any(k in path.name for k in KEY_FORMS)
        if path.is_file():
            data = path.read_bytes()
            assert not any(k.encode() in data for k in KEY_FORMS), path


def manifest(root: Path) -> dict[str, dict]:
    lines = (root / MANIFEST).read_text().splitlines()
    entries = [json.loads(line) for line in lines]
    assert len({e["file"] for e in entries}) == len(entries)  # compacted: one line per file
    return {e["file"]: e for e in entries}


def assert_complete(root: Path, view: str, provider: str) -> list:
    """Every record has a sound image of ``view``, each with its manifest entry."""
    records = read_release(root, check_images=False, require_images=False).records
    entries = manifest(root)
    for r in records:
        path = r.images[view]
        assert image_problem(path.read_bytes()) is None, path
        entry = entries[path.relative_to(root).as_posix()]
        assert entry["name"] == r.name and entry["provider"] == provider
        assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert entry["requested"].endswith("+00:00") and entry["attribution"]
    assert len(entries) == len(records)
    return records


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.setenv("GOOGLE_MAPS_API_KEY", KEY)
    monkeypatch.setenv("TILE_KEY", KEY)
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


def test_street_views_arrive_once_through_every_fault(make_release, tmp_path, capfd):
    root = make_release(tmp_path / "r", kinds=())  # 9 panoramas + 9 single views, no images yet
    plan = {0: ["429", "500"], 1: ["503"], 2: ["hang"], 3: ["cut"], 4: ["short"], 5: ["html"], 6: ["empty"],
            7: ["429-date"]}
    with FakeProvider(by_hash(plan)) as server:
        code, out, err = run(capfd, root, "--view", "street", "--provider", "google-streetview", "--endpoint",
                             server.url, "--size", "32x24", "--pano-views", "2", "--user-agent",
                             "geotextloc-test/1 (tests@example.org)", *FAST)
    assert code == 0, err
    assert "fetched 18, failed 0" in out
    records = assert_complete(root, "street", "google-streetview")
    for r in records:  # a panorama is its two views side by side
        with Image.open(r.images["street"]) as image:
            assert image.size == ((64, 24) if r.view == "panorama" else (32, 24))
            assert image.format == "JPEG"
    assert set(server.served.values()) == {1} and len(server.served) == 27  # 9 * 2 + 9, each once
    answers = Counter(a for _, _, a in server.events)
    assert all(answers[a] for a in ("429", "500", "503", "hang", "cut", "short", "html", "empty"))
    for identity in {i for _, i, a in server.events if a == "429"}:  # Retry-After: 1 was waited for
        times = [t for t, i, _ in server.events if i == identity]
        assert times[1] - times[0] >= 0.9
    pano = manifest(root)[next(r for r in records if r.view == "panorama").images["street"]
                          .relative_to(root).as_posix()]
    assert len(pano["requests"]) == 2 and "pano=" in pano["requests"][0] and "key=***" in pano["requests"][0]
    assert server.agents == {"geotextloc-test/1 (tests@example.org)"}
    assert_no_key(root, out, err)


def test_a_rerun_fetches_only_what_is_missing_or_corrupt(make_release, tmp_path, capfd):
    root = make_release(tmp_path / "r", kinds=())
    args = ["--view", "satellite", "--provider", "google-satellite", "--size", "24", "--zoom", "18", *FAST]
    with FakeProvider() as server:
        code, out, _ = run(capfd, root, "--endpoint", server.url, *args, "--limit", "5")
        assert code == 0 and "18 record(s), 0 present, 18 missing (--limit), 5 to fetch" in out and sum(server.hits.values()) == 5
        assert run(capfd, root, "--endpoint", server.url, *args)[1].count("fetched 13, failed 0") == 1
        records = assert_complete(root, "satellite", "google-satellite")
        hits = sum(server.hits.values())
        assert hits == 18
        assert run(capfd, root, "--endpoint", server.url, *args)[1].endswith("nothing to fetch\n")
        assert sum(server.hits.values()) == hits
        broken = [r.images["satellite"] for r in records[:4]]
        broken[0].unlink()
        broken[1].write_bytes(broken[1].read_bytes()[:100])  # truncated
        broken[2].write_bytes(b"")
        broken[3].write_bytes(b"<html>403 Forbidden</html>")
        code, out, err = run(capfd, root, "--endpoint", server.url, *args)
    assert code == 0 and "fetched 4, failed 0" in out
    assert sum(server.hits.values()) == hits + 4
    assert_complete(root, "satellite", "google-satellite")


def test_tiles_are_stitched_to_the_footprint_and_each_fetched_once(make_release, tmp_path, capfd):
    size, zoom = 96, 17
    outputs = {}
    with FakeProvider() as server:
        for name, template in (("xyz", "/xyz/{z}/{x}/{y}.png?apikey={key}"), ("quad", "/qk/{quadkey}.png?apikey={key}"),
                               ("wmts", "/wmts?Service=WMTS&TileMatrix={TileMatrix}&TileRow={TileRow}&"
                                        "TileCol={TileCol}&apikey={key}")):
            root = make_release(tmp_path / name, kinds=())
            args = [root, "--view", "osm", "--provider", "wmts" if name == "wmts" else "xyz", "--template",
                    server.url + template, "--key-env", "TILE_KEY", "--zoom", zoom, "--size", size, *FAST]
            code, out, _ = run(capfd, *args, "--dry-run")
            billed = int(out.split("billed requests: ")[1].split()[0])
            before = sum(server.served.values())
            code, out, err = run(capfd, *args)
            assert code == 0, err
            assert sum(server.served.values()) - before == billed  # the dry run counted what was fetched
            records = assert_complete(root, "osm", name if name == "wmts" else "xyz")
            assert_no_key(root, out, err)
            outputs[name] = {r.name: r.images["osm"].read_bytes() for r in records}
            for r in records:
                assert r.images["osm"].suffix == ".png"
                pixels = np.asarray(Image.open(r.images["osm"]))
                gx, gy = world_pixel(r.lat, r.lon, zoom)
                left, top = round(gx - size / 2), round(gy - size / 2)
                assert pixels[0, 0].tolist() == [left % 251, top % 251, zoom]
                assert pixels[-1, -1].tolist() == [(left + size - 1) % 251, (top + size - 1) % 251, zoom]
        # each template fetched each tile once (the cache served overlapping footprints)
        assert set(server.served.values()) == {3} and set(server.hits.values()) == {3}
    assert outputs["xyz"] == outputs["quad"] == outputs["wmts"]
    assert quadkey(3, 5, 3) == "213" and from_quadkey("213") == (3, 3, 5)


def test_a_server_dying_mid_run_loses_nothing_and_a_rerun_completes(make_release, tmp_path, capfd):
    root = make_release(tmp_path / "r", n=(10, 5), kinds=())
    plan = {0: ["500"], 1: ["cut"], 2: ["short"]}
    first = FakeProvider(by_hash(plan), die_after=12)
    args = [root, "--view", "satellite", "--provider", "xyz", "--template", first.url + "/xyz/{z}/{x}/{y}.png",
            "--zoom", 19, "--size", 64, "--max-attempts", 3, *FAST]
    code, out, err = run(capfd, *args)
    first.kill()
    assert code == 1
    assert "failed" in out and "connection failed" in err and "run the same command again" in err
    assert len([line for line in err.splitlines() if line.startswith("  failed ")]) > 0
    written = manifest(root)
    for file, entry in written.items():  # what was written is whole and in the manifest
        assert hashlib.sha256((root / file).read_bytes()).hexdigest() == entry["sha256"]
    second = FakeProvider(by_hash(plan), port=first.port)  # the server is back
    with second:
        code, out, err = run(capfd, *args)
    assert code == 0, err
    assert_complete(root, "satellite", "xyz")
    served = first.served + second.served
    assert set(served.values()) == {1}
    assert not set(first.served) & set(second.served)
    assert_no_key(root, out, err)


def test_sigkill_then_resume_200_records_each_fetched_once(make_release, tmp_path):
    root = make_release(tmp_path / "r", n=(67, 33), kinds=())  # 2 versions x 100 = 200 records
    plan = {0: ["500"], 1: ["cut"], 2: ["html"], 3: ["short"], 4: ["empty"], 5: ["503", "500"]}
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()} | {"GOOGLE_MAPS_API_KEY": KEY}
    gate_after = 80

    def command(url):
        return [sys.executable, "-m", "geotextloc", "data", "materialize", str(root), "--view", "satellite",
                "--provider", "google-satellite", "--endpoint", url, "--size", "16", *FAST, "--timeout", "5"]

    with FakeProvider(by_hash(plan), gate_after=gate_after) as first:
        proc = subprocess.Popen(command(first.url), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        # Kill once every served image is in place and the other requests wait at the gate (an
        # image received but not yet renamed into place when killed is, unavoidably, fetched again).
        while time.monotonic() < deadline:
            written = [f for f in root.glob("*-satellite/*") if not f.name.startswith(".")]
            if len(written) == gate_after == sum(first.served.values()):
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it was killed"
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=10)
        assert proc.returncode == -signal.SIGKILL
    with FakeProvider(by_hash(plan)) as second:
        done = subprocess.run(command(second.url), env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "fetched 120, failed 0" in done.stdout
    assert_complete(root, "satellite", "google-satellite")
    served = first.served + second.served
    assert len(served) == 200 and set(served.values()) == {1}
    assert_no_key(root, out.decode(), err.decode(), done.stdout, done.stderr)


@pytest.mark.parametrize("args, says", [
    (["--view", "osm", "--provider", "xyz", "--template", "https://tile.openstreetmap.org/{z}/{x}/{y}.png"],
     "operations.osmfoundation.org/policies/tiles"),
    (["--view", "osm", "--provider", "xyz", "--template", "https://{s}.tile.openstreetmap.org/{z}/{x}/{y}.png"],
     "usage policy forbids it"),
    (["--view", "satellite", "--provider", "wmts", "--template", "https://tiles.example.org/{z}/{x}/{y}?k={key}"],
     "--key-env"),
    (["--view", "satellite", "--provider", "xyz", "--template", "https://tiles.example.org/{zoom}/{x}/{y}"],
     "unknown placeholder"),
    (["--view", "satellite", "--provider", "xyz", "--template", "http://tiles.example.org/{z}/{x}/{y}?k={key}",
      "--key-env", "TILE_KEY"], "plain http"),
    (["--view", "street", "--provider", "google-satellite"], "use google-streetview"),
    (["--view", "street", "--provider", "google-streetview", "--key-env", "NO_SUCH_KEY"], "NO_SUCH_KEY"),
    (["--view", "street", "--provider", "google-streetview", "--user-agent", "Mozilla/5.0"], "--user-agent"),
    (["--view", "street", "--provider", "google-streetview", "--size", "1024"], "640x640"),
])
def test_bad_requests_are_refused_in_one_line(release_root, capfd, args, says):
    code, out, err = run(capfd, release_root, *args)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("geotextloc: error: ") and says in err
    assert "Traceback" not in err
    assert_no_key(release_root, out, err)


def test_dry_run_counts_billed_requests_and_fetches_nothing(make_release, tmp_path, capfd, monkeypatch):
    monkeypatch.delenv("GOOGLE_MAPS_API_KEY")  # a dry run needs no key
    root = make_release(tmp_path / "r", kinds=())
    with FakeProvider() as server:
        code, out, _ = run(capfd, root, "--view", "street", "--provider", "google-streetview", "--endpoint",
                           server.url, "--dry-run", "--price-per-1000", "10")
        assert code == 0 and sum(server.hits.values()) == 0
    assert "18 record(s), 0 present, 18 to fetch" in out
    assert "billed requests: 45" in out  # 9 panoramas x 4 views + 9 single views
    assert "USD 0.45 at USD 10 per 1000" in out
    code, out, _ = run(capfd, root, "--view", "street", "--provider", "google-streetview", "--dry-run",
                       "--split", "test", "--version", "NewYork", "--pano-views", "6")
    assert "billed requests: 18" in out and "USD 0.13 at USD 7 per 1000" in out  # 3 panoramas x 6; list price
    code, out, _ = run(capfd, root, "--view", "satellite", "--provider", "google-satellite", "--dry-run",
                       "--version", "NewYork-mixed")  # the merged version: both parts' records, one request each
    assert "18 record(s)" in out and "billed requests: 18" in out and "USD 0.04 at USD 2 per 1000" in out
    assert not (root / MANIFEST).exists() and not (root / "NewYork-street").exists()


def test_a_place_in_two_versions_costs_one_request(make_release, tmp_path, capfd):
    root = make_release(tmp_path / "r", versions=["NewYork"], n=(4, 2), kinds=())
    for split in ("train", "test"):  # a second version at the same places (as the embedded data's <City>-photos)
        copy = root / "CVG-text" / "Boston" / f"{split}.json"
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_text((root / "CVG-text" / "NewYork" / f"{split}.json").read_text())
    args = ["--view", "satellite", "--provider", "google-satellite", "--size", "24", *FAST]
    with FakeProvider() as server:
        code, out, _ = run(capfd, root, "--endpoint", server.url, *args, "--dry-run")
        assert "12 record(s), 0 present, 12 to fetch" in out and "billed requests: 6 " in out
        code, out, err = run(capfd, root, "--endpoint", server.url, *args)
    assert code == 0, err
    assert "fetched 12, failed 0 (6 HTTP request(s)" in out
    assert len(server.served) == 6 and set(server.served.values()) == {1}
    images = {}
    for record in assert_complete(root, "satellite", "google-satellite"):  # both files, each in the manifest
        images.setdefault(record.name, set()).add(record.images["satellite"].read_bytes())
    assert len(images) == 6 and all(len(same) == 1 for same in images.values())


def test_a_refused_key_stops_the_run_and_is_not_printed(make_release, tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("GOOGLE_MAPS_API_KEY", "wrong-" + KEY)
    root = make_release(tmp_path / "r", kinds=())
    with FakeProvider() as server:
        code, out, err = run(capfd, root, "--view", "satellite", "--provider", "google-satellite", "--endpoint",
                             server.url, "--concurrency", "1", *FAST[:1], "--rate", "200")
    assert code == 1
    assert "HTTP 403" in err and "check the key" in err and "not attempted" in err
    assert sum(server.hits.values()) == 1  # one refusal is enough: no retries, no other records
    assert "wrong-" not in out + err and (not (root / MANIFEST).exists() or not manifest(root))
    assert_no_key(root, out, err)


def test_a_long_retry_after_fails_the_request_instead_of_waiting(make_release, tmp_path, capfd):
    root = make_release(tmp_path / "r", versions=["NewYork"], n=(1, 1), kinds=())
    with FakeProvider(lambda identity, n: "429-long") as server:
        start = time.monotonic()
        code, out, err = run(capfd, root, "--view", "satellite", "--provider", "google-satellite", "--endpoint",
                             server.url, *FAST, "--max-retry-after", "60")
    assert code == 1 and time.monotonic() - start < 10
    assert "asks to wait 3600 s" in err and sum(server.hits.values()) == 2


def test_rate_limit_retry_after_and_redaction_units():
    limiter = RateLimiter(rate=40)
    start = time.monotonic()
    threads = [threading.Thread(target=lambda: [limiter.acquire() for _ in range(5)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.monotonic() - start >= 19 / 40 - 0.01  # 20 starts at least 1/40 s apart, whatever the threads
    assert retry_after_seconds("7") == 7
    assert 59 <= retry_after_seconds(email.utils.formatdate(time.time() + 60, usegmt=True)) <= 61
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None
    redact = Redactor([KEY])
    assert redact(f"https://x/a?size=1&key={urllib.parse.quote(KEY, safe='')}&b=2") == "https://x/a?size=1&key=***&b=2"
    assert KEY not in redact(f"the key {KEY} was refused")
