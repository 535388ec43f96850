"""Records <-> datasets: save_to_disk round trip, Hub repo format, offline and push failures."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading

import datasets
import numpy as np
import pytest
import yaml
from PIL import Image

from geotextloc.data import hub
from geotextloc.data.release import read_release
from geotextloc.errors import ConfigError, DataError, OfflineError

COLUMNS = ("name", "city", "version", "view", "lat", "lon", "text")


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def snapshot(records):
    """What a record should look like once loaded back: columns + decoded pixels per view."""
    return {(r.split, r.name): ({c: getattr(r, c) for c in COLUMNS},
                                {k: pixels(Image.open(p)) for k, p in r.images.items()})
            for r in records}


def loaded(dd):
    out = {}
    for split, ds in dd.items():
        kinds = [k for k in ("satellite", "osm", "street", "drone") if k in ds.column_names]
        for row in ds:
            out[(split, row["name"])] = ({c: row[c] for c in COLUMNS},
                                         {k: pixels(row[k]) for k in kinds if row[k] is not None})
    return out


def assert_same(got, want):
    assert got.keys() == want.keys()
    for key, (columns, views) in want.items():
        assert got[key][0] == columns
        assert got[key][1].keys() == views.keys()
        for kind in views:
            np.testing.assert_array_equal(got[key][1][kind], views[kind])


def test_save_to_disk_round_trip_embeds_images(make_release, tmp_path):
    root = make_release(tmp_path / "release", kinds=("satellite", "osm", "street"))
    records = read_release(root).records
    want = snapshot(records)
    dd = hub.to_datasetdict(records)
    assert list(dd) == ["train", "test"] and {s: len(d) for s, d in dd.items()} == {"train": 12, "test": 6}
    assert isinstance(dd["train"].features["osm"], datasets.Image)
    hub.save_dataset(dd, tmp_path / "saved")
    shutil.rmtree(root)  # the saved folder must not need the release any more
    assert_same(loaded(hub.load_cvgtext(tmp_path / "saved")), want)
    test = hub.load_cvgtext(tmp_path / "saved", version="NewYork-photos", split="test")
    assert set(test["version"]) == {"NewYork-photos"} and len(test) == 3
    assert not list(tmp_path.glob(".saved*"))  # no temp folders left behind


def test_missing_views_are_none(make_release, tmp_path):
    make_release(tmp_path / "r", versions=["NewYork"], kinds=("satellite", "street"), n=(2, 1))
    make_release(tmp_path / "r", versions=["NewYork-photos"], kinds=("satellite",), n=(2, 1), seed=1)
    dd = hub.to_datasetdict(read_release(tmp_path / "r").records)
    raw = dd["train"].cast_column("street", datasets.Image(decode=False))
    street = dict(zip(raw["version"], raw["street"]))
    assert street["NewYork-photos"] is None and street["NewYork"] is not None


def test_failed_save_keeps_the_previous_copy(make_release, tmp_path):
    root = make_release(tmp_path / "release", versions=["NewYork"], n=(2, 1))
    hub.save_dataset(hub.to_datasetdict(read_release(root).records), tmp_path / "saved")
    broken = hub.to_datasetdict(read_release(root).records)
    next((root / "NewYork-satellite").iterdir()).unlink()  # save_to_disk cannot embed it now
    with pytest.raises(FileNotFoundError):
        hub.save_dataset(broken, tmp_path / "saved")
    assert len(hub.load_cvgtext(tmp_path / "saved", split="train")) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["release", "saved"]


def test_hub_repo_format_round_trip(make_release, tmp_path):
    root = make_release(tmp_path / "release", kinds=("satellite", "osm"))
    records = read_release(root).records
    want = snapshot(records)
    hub.save_hub_folder(hub.to_datasetdict(records), tmp_path / "repo")
    shutil.rmtree(root)
    cache = tmp_path / "cache"

    # the plain datasets API reads it, config by config, as it would from the Hub
    photos = datasets.load_dataset(str(tmp_path / "repo"), "NewYork-photos", cache_dir=str(cache))
    assert_same(loaded(photos), {k: v for k, v in want.items() if v[0]["version"] == "NewYork-photos"})
    assert_same(loaded(hub.load_cvgtext(tmp_path / "repo", cache_dir=cache)), want)  # config "all"

    front = yaml.safe_load((tmp_path / "repo/README.md").read_text().split("---\n")[1])
    assert [c["config_name"] for c in front["configs"]] == ["all", "NewYork", "NewYork-photos"]
    assert front["size_categories"] == ["n<1K"] and front["license"] == "other"
    names = [f["name"] for f in front["dataset_info"]["features"]]
    assert names == [*COLUMNS, "satellite", "osm"]
    card = (tmp_path / "repo/README.md").read_text()
    assert "© OpenStreetMap contributors" in card and "ODbL" in card and "not redistributable" in card


def test_data_card_template_front_matter():
    text = hub.CARD_TEMPLATE.read_text()
    _, front, body = text.split("---\n", 2)
    meta = yaml.safe_load(front)
    versions = [f"{c}{s}" for c in ("NewYork", "Brisbane", "Tokyo") for s in ("", "-photos", "-mixed")]
    assert [c["config_name"] for c in meta["configs"]] == ["all", *versions]
    for config in meta["configs"]:
        assert [f["split"] for f in config["data_files"]] == ["train", "test"]
    columns = {f["name"] for f in meta["dataset_info"]["features"]}
    assert {"satellite", "osm", "street", "text", "lat", "lon"} <= columns
    assert "© OpenStreetMap contributors" in body and "ODbL" in body and "not redistributable" in body


def test_load_cvgtext_reads_a_release_and_rejects_other_folders(make_release, tmp_path):
    root = make_release(tmp_path / "release")
    dd = hub.load_cvgtext(root, version="NewYork-mixed")
    assert set(dd["test"]["version"]) == {"NewYork-mixed"} and len(dd["test"]) == 6
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not a CVG-Text release, saved dataset or Hub dataset folder"):
        hub.load_cvgtext(tmp_path / "empty")
    with pytest.raises(DataError, match="no split 'val'"):
        hub.load_cvgtext(root, split="val")


def test_unreachable_repo_id_is_one_offline_line(tmp_path):
    script = ("from geotextloc.data.hub import load_cvgtext\n"
              "from geotextloc.errors import OfflineError\n"
              "try:\n    load_cvgtext('cvg-owner/cvg-text-copy')\n"
              "except OfflineError as err:\n    print('OfflineError:', err)\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=120)
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("OfflineError: "), out.stdout + out.stderr
    assert "'cvg-owner/cvg-text-copy'" in lines[0] and "local" in lines[0]


class _Refuse(http.server.BaseHTTPRequestHandler):
    """A real local 'Hub' that refuses every request with 401, remembering what it saw."""

    seen: list[dict] = []

    def _refuse(self):
        self.seen.append({"path": self.path, "auth": self.headers.get("authorization")})
        body = json.dumps({"error": "Invalid credentials in Authorization header"}).encode()
        self.send_response(401)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_HEAD = do_PUT = _refuse

    def log_message(self, *args):
        pass


def test_push_to_hub_token_and_failures(make_release, tmp_path, monkeypatch):
    root = make_release(tmp_path / "r", versions=["NewYork"], n=(2, 1))
    dd = hub.to_datasetdict(read_release(root).records)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="HF_TOKEN is not set"):
        hub.push_to_hub(dd, "me/cvg")

    token = "hf_secretsecretsecret"
    monkeypatch.setenv("HF_TOKEN", token)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(ConfigError, match="the Hub refused to push 'me/cvg'") as refused:
            hub.push_to_hub(dd, "me/cvg", endpoint=f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
    assert _Refuse.seen and _Refuse.seen[0]["auth"] == f"Bearer {token}"  # the token from $HF_TOKEN
    assert token not in str(refused.value) and "\n" not in str(refused.value)

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    with pytest.raises(OfflineError, match=f"cannot reach the Hugging Face Hub at http://127.0.0.1:{closed} "
                       "to push 'me/cvg'") as offline:
        hub.push_to_hub(dd, "me/cvg", endpoint=f"http://127.0.0.1:{closed}")
    assert token not in str(offline.value)
