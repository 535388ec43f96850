"""`geotextloc data publish` against a local stand-in for the Hub (geotextloc.testing.hub).

What a user relies on: the repo gets Parquet shards per version and split plus a card with
the configs and licences, in one commit made with the token from HF_TOKEN (sent to the Hub,
never printed); a second publish of the same data makes no commit; `load_dataset(repo_id)`
gives back the same names, texts, coordinates and image bytes; failures are one line.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import huggingface_hub.constants
import pyarrow.parquet as pq
import pytest
import yaml

from geotextloc.cli import main
from geotextloc.testing.hub import FakeHub

sys.path.insert(0, str(Path(__file__).parent))
from synthetic_records import make_release as make_synthetic_release  # noqa: E402

TOKEN = "hf_fakeTOKEN0123456789abcdefghij"
REPO = "me/cvg-synth"


@pytest.fixture
def hub(monkeypatch):
    """A fake Hub on 127.0.0.1, named by HF_ENDPOINT (set after huggingface_hub was imported)."""
    # The fake speaks git-LFS, not Xet (huggingface_hub reads this switch at import).
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
    # The endpoint huggingface_hub bound at import points nowhere: publish must read HF_ENDPOINT now.
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    with FakeHub(TOKEN) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        yield fake


def publish(capsys, *args) -> tuple[int, str, str]:
    code = main(["data", "publish", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def front_matter(card: bytes) -> dict:
    return yaml.safe_load(card.decode().split("---\n")[1])


def parquet_rows(data: bytes) -> list[dict]:
    return pq.read_table(io.BytesIO(data)).to_pylist()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


LOAD_SCRIPT = """
import hashlib, json, sys
import datasets
dd = datasets.load_dataset(sys.argv[1])
out = {}
for split, ds in dd.items():
    kinds = [k for k in ("satellite", "osm", "street", "drone") if k in ds.column_names]
    ds = ds.cast(datasets.Features({**ds.features, **{k: datasets.Image(decode=False) for k in kinds}}))
    out[split] = [{"name": r["name"], "text": r["text"], "lat": r["lat"], "lon": r["lon"], "version": r["version"],
                   **{k: hashlib.sha256(r[k]["bytes"]).hexdigest() for k in kinds if r[k] is not None}}
                  for r in ds]
print(json.dumps(out))
"""


def load_from_hub(hub: FakeHub, repo_id: str, tmp_path) -> dict:
    """``datasets.load_dataset(repo_id)`` in a fresh process, as a user would run it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env |= {"HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HF_HOME": str(tmp_path / "hf-home"),
            "HF_DATASETS_OFFLINE": "0", "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, repo_id], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_publish_commits_shards_and_card_once_and_load_dataset_round_trips(hub, tmp_path, capsys):
    train, test = make_synthetic_release(tmp_path / "release", n_train=6, n_test=4)
    code, out, err = publish(capsys, tmp_path / "release", "--repo-id", REPO, "--private",
                             "--views", "satellite", "osm")
    assert code == 0, err

    # the repo was created private, with the token from HF_TOKEN on every request that needs one
    create = next(r for r in hub.requests if r["path"] == "/api/repos/create")
    assert create["json"] == {"name": "cvg-synth", "organization": "me", "visibility": "private",
                              "type": "dataset"}
    repo = hub.repo(REPO)
    assert repo.private
    writes = [r for r in hub.requests if r["method"] in ("POST", "PUT") and not r["path"].startswith("/lfs-storage/")]
    assert writes and all(r["authorization"] == f"Bearer {TOKEN}" for r in writes)
    assert {r["authorization"] for r in hub.requests} <= {f"Bearer {TOKEN}", None}
    assert TOKEN not in out + err

    # one commit after the Hub's initial one: two Parquet shards (through LFS) and the card (inline)
    initial, commit = repo.history()
    files = commit.files
    assert sorted(files) == [".gitattributes", "README.md", "data/Synth/test-00000-of-00001.parquet",
                             "data/Synth/train-00000-of-00001.parquet"]
    assert files["data/Synth/train-00000-of-00001.parquet"].lfs and not files["README.md"].lfs
    assert sorted(op["key"] for op in commit.operations) == ["file", "lfsFile", "lfsFile"]
    assert len(hub.lfs_uploads) == 2

    # the shards hold the records and the image files' bytes
    for split, records in (("train", train), ("test", test)):
        rows = parquet_rows(files[f"data/Synth/{split}-00000-of-00001.parquet"].data)
        assert [(r["name"], r["text"], r["lat"], r["lon"]) for r in rows] == \
            [(r.name, r.text, r.lat, r.lon) for r in records]
        assert [r["osm"]["bytes"] for r in rows] == [r.images["osm"].read_bytes() for r in records]

    # the card: one config per version + "all", the licences, and what each config holds
    card = files["README.md"].data
    meta = front_matter(card)
    assert [c["config_name"] for c in meta["configs"]] == ["all", "Synth"]
    assert meta["configs"][1]["data_files"] == [{"split": "train", "path": "data/Synth/train-*.parquet"},
                                                {"split": "test", "path": "data/Synth/test-*.parquet"}]
    text = card.decode()
    assert "© OpenStreetMap contributors" in text and "ODbL" in text and "not redistributable" in text
    assert "| `Synth` | 6 | 4 | satellite 10, osm 10 |" in text
    assert "<!--" not in text

    # what was committed is printed: files, sizes, commit URL
    assert f"commit {hub.url}/datasets/{REPO}/commit/{commit.oid}" in out
    assert "  added      data/Synth/train-00000-of-00001.parquet" in out and " kB" in out
    assert "to the private dataset me/cvg-synth at main" in out

    # the same data again: nothing is uploaded, no commit is made (the decision: no empty commits)
    requests_before = len(hub.requests)
    code, out, err = publish(capsys, tmp_path / "release", "--repo-id", REPO, "--private",
                             "--views", "satellite", "osm")
    assert code == 0, err
    assert len(repo.history()) == 2 and len(hub.lfs_uploads) == 2
    assert not any(r["path"].endswith("/commit/main") for r in hub.requests[requests_before:])
    assert f"nothing changed: main (commit {commit.oid})" in out and "unchanged  README.md" in out

    # datasets.load_dataset(repo_id) reads the same records and image bytes back from the "Hub"
    loaded = load_from_hub(hub, REPO, tmp_path)
    for split, records in (("train", train), ("test", test)):
        assert loaded[split] == [
            {"name": r.name, "text": r.text, "lat": r.lat, "lon": r.lon, "version": "Synth",
             "satellite": sha256(r.images["satellite"].read_bytes()), "osm": sha256(r.images["osm"].read_bytes())}
            for r in records]


def test_publish_mirrors_the_folder_deleting_stale_shards(hub, tmp_path, capsys, make_release):
    root = make_release(tmp_path / "release", versions=("NewYork", "NewYork-photos"), n=(3, 2))
    code, out, err = publish(capsys, root, "--repo-id", REPO)
    assert code == 0, err
    repo = hub.repo(REPO)
    assert not repo.private
    assert next(r for r in hub.requests if r["path"] == "/api/repos/create")["json"]["visibility"] == "public"
    assert sum(p.startswith("data/NewYork-photos/") for p in repo.history()[-1].files) == 2

    # publishing one version leaves the repo with that version only (the "all" config globs data/*/)
    code, out, err = publish(capsys, root, "--repo-id", REPO, "--versions", "NewYork")
    assert code == 0, err
    head = repo.history()[-1]
    assert len(repo.history()) == 3
    assert sorted(p for p in head.files if p.startswith("data/")) == [
        "data/NewYork/test-00000-of-00001.parquet", "data/NewYork/train-00000-of-00001.parquet"]
    assert sorted(op["key"] for op in head.operations) == ["deletedFile", "deletedFile", "file"]
    assert [c["config_name"] for c in front_matter(head.files["README.md"].data)["configs"]] == ["all", "NewYork"]
    assert "  deleted    data/NewYork-photos/train-00000-of-00001.parquet" in out
    assert "(0 added, 1 changed, 2 deleted, 2 unchanged)" in out

    # --private does not silently leave an existing public repo public
    code, out, err = publish(capsys, root, "--repo-id", REPO, "--private")
    assert code == 2 and len(repo.history()) == 3
    assert err.strip().splitlines()[-1].startswith(f"geotextloc: error: {REPO} exists and is public")

    # --revision commits to that branch (created from main), and main stays as it was
    main_head = repo.branches["main"]
    code, out, err = publish(capsys, root, "--repo-id", REPO, "--revision", "draft")
    assert code == 0, err
    assert repo.branches["main"] == main_head and repo.commit("draft").parent == main_head
    assert sum(p.startswith("data/NewYork-photos/") for p in repo.commit("draft").files) == 2
    assert f"datasets.load_dataset('{REPO}', revision='draft')" in out


def test_dry_run_lists_the_folder_sends_nothing_and_leaves_google_imagery_out(hub, tmp_path, capsys, monkeypatch):
    make_synthetic_release(tmp_path / "release", n_train=4, n_test=2)
    monkeypatch.delenv("HF_TOKEN")
    code, out, err = publish(capsys, tmp_path / "release", "--repo-id", REPO, "--dry-run",
                             "--hub-folder", tmp_path / "hub-folder")
    assert code == 0, err
    assert hub.requests == []
    assert "dry run: would publish 3 file(s)" in out and "to upload  data/Synth/train-00000-of-00001.parquet" in out
    # a release's satellite tiles and street views (Google imagery in the public release) are left out by default
    assert "left out: satellite, street (Google imagery" in out
    table = pq.read_table(tmp_path / "hub-folder/data/Synth/train-00000-of-00001.parquet")
    assert "osm" in table.column_names and "satellite" not in table.column_names and "street" not in table.column_names
    names = [f["name"] for f in front_matter((tmp_path / "hub-folder/README.md").read_bytes())["dataset_info"]["features"]]
    assert "satellite" not in names and "osm" in names


def test_embedded_build_card_has_odbl_and_provenance(tmp_path, capsys):
    for region in ("Helsinki", "Mine"):
        make_synthetic_release(tmp_path / "build", n_train=2, n_test=2, version=region)
    build = {"regions": {"Helsinki": {"builtin": "helsinki", "path": "Helsinki.osm.pbf", "sha256": "ab" * 32},
                         "Kouvola": {"builtin": "kouvola", "path": "test.osm.pbf", "sha256": "ef" * 32},
                         "Mine": {"path": "mine.osm.pbf", "sha256": "cd" * 32, "source": "/home/me/mine.osm.pbf"}},
             "settings": {"seed": 0, "size": 256}}
    (tmp_path / "build/build.json").write_text(json.dumps(build))
    code, out, err = publish(capsys, tmp_path / "build", "--repo-id", REPO, "--dry-run",
                             "--hub-folder", tmp_path / "hub-folder")
    assert code == 0, err
    card = (tmp_path / "hub-folder/README.md").read_text()
    assert front_matter(card.encode())["license"] == "odbl"
    assert "© OpenStreetMap contributors" in card and "Open Database License" in card
    assert f"| Helsinki | `Helsinki.osm.pbf` | `{'ab' * 32}` | built-in `helsinki` |" in card
    assert "| Mine | `mine.osm.pbf` |" in card and "/home/me" not in card  # no local paths in a public card
    assert "Kouvola" not in card  # a region with no published version is not listed
    assert "seed = 0, size = 256" in card and "OSM tiles: drawn by geotextloc's built-in renderer" in card
    # an embedded build's views are all rendered from OpenStreetMap: all are published by default
    assert "satellite" in pq.read_table(tmp_path / "hub-folder/data/Mine/test-00000-of-00001.parquet").column_names

    # a build whose OSM tiles mapnik + openstreetmap-carto drew says so, with the style's attribution
    build["osm_renderer"] = {"renderer": "mapnik + openstreetmap-carto", "versions": {"mapnik": "3.1.0"},
                             "attribution": "© OpenStreetMap contributors (ODbL); style: openstreetmap-carto (CC0)"}
    (tmp_path / "build/build.json").write_text(json.dumps(build))
    code, out, err = publish(capsys, tmp_path / "build", "--repo-id", REPO, "--dry-run",
                             "--hub-folder", tmp_path / "hub-folder")
    card = (tmp_path / "hub-folder/README.md").read_text()
    assert code == 0 and "OSM tiles: rendered with mapnik + openstreetmap-carto (mapnik 3.1.0)." in card
    assert "style: openstreetmap-carto (CC0)" in card


def test_missing_token_is_one_line_and_sends_nothing(hub, tmp_path, capsys, monkeypatch):
    make_synthetic_release(tmp_path / "release", n_train=2, n_test=1)
    monkeypatch.delenv("HF_TOKEN")
    code, out, err = publish(capsys, tmp_path / "release", "--repo-id", REPO)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("geotextloc: error: HF_TOKEN is not set")
    assert hub.requests == []


def test_hub_gone_is_one_offline_line(hub, tmp_path, capsys):
    make_synthetic_release(tmp_path / "release", n_train=2, n_test=1)
    hub.stop()
    code, out, err = publish(capsys, tmp_path / "release", "--repo-id", REPO)
    assert code == 2 and "Traceback" not in err and TOKEN not in out + err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"geotextloc: error: cannot reach the Hugging Face Hub at {hub.url} to push '{REPO}'")


def test_wrong_token_is_refused_in_one_line(hub, tmp_path, capsys, monkeypatch):
    make_synthetic_release(tmp_path / "release", n_train=2, n_test=1)
    monkeypatch.setenv("HF_TOKEN", "hf_not_the_right_one")
    code, out, err = publish(capsys, tmp_path / "release", "--repo-id", REPO)
    assert code == 2 and "hf_not_the_right_one" not in out + err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"geotextloc: error: the Hub refused to push '{REPO}' (") and "401" in last
    assert hub.repos == {}
