"""The release reader: official layout, other layouts, -mixed versions, skip semantics."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from geotextloc.data.release import (PANORAMA, SINGLE, BadItemError, ReleaseLayout, Skipped,
                                     discover_versions, parse_name, read_release)
from geotextloc.errors import DataError


def annotations(root, version, split):
    return json.loads((root / "CVG-text" / version / f"{split}.json").read_text())


def test_reads_official_layout(make_release, tmp_path):
    root = make_release(tmp_path / "r", kinds=("satellite", "osm", "street", "drone"))
    contents = read_release(root)
    assert contents.versions == ["NewYork", "NewYork-photos"] == discover_versions(root)
    assert contents.skipped == []
    for version, view in (("NewYork", PANORAMA), ("NewYork-photos", SINGLE)):
        for split in ("train", "test"):
            expected = annotations(root, version, split)
            got = [r for r in contents.records if r.version == version and r.split == split]
            assert [r.name for r in got] == list(expected)  # file order kept
            for r in got:
                assert r.text == expected[r.name] and r.city == "NewYork" and r.view == view
                assert (r.lat, r.lon) == (parse_name(r.name).lat, parse_name(r.name).lon)
                assert 40.7 < r.lat < 40.8 and -74.01 < r.lon < -73.96
                assert set(r.images) == {"satellite", "osm", "street", "drone"}
                assert r.images["satellite"].name == r.name
                assert r.images["osm"].suffix == ".png" and r.images["osm"].stem == r.name[:-4]
                assert all(p.is_file() for p in r.images.values())


def test_mixed_is_panorama_plus_photos_unless_on_disk(make_release, tmp_path):
    root = make_release(tmp_path / "r")
    mixed = read_release(root, versions=["NewYork-mixed"]).records
    parts = read_release(root, versions=["NewYork", "NewYork-photos"]).records
    assert [(r.name, r.split, r.text, r.images) for r in mixed] == \
        [(r.name, r.split, r.text, r.images) for r in parts]
    assert {r.version for r in mixed} == {"NewYork-mixed"} and {r.city for r in mixed} == {"NewYork"}
    assert {r.view for r in mixed} == {PANORAMA, SINGLE}

    make_release(root, versions=["NewYork-mixed"], n=(2, 1), seed=7)  # its own folder wins
    own = read_release(root, versions=["NewYork-mixed"]).records
    assert [r.name for r in own] == [*annotations(root, "NewYork-mixed", "train"),
                                     *annotations(root, "NewYork-mixed", "test")]
    with pytest.raises(DataError, match="'Tokyo-mixed' not found"):
        read_release(root, versions=["Tokyo-mixed"])
    with pytest.raises(DataError, match="geotextloc data densify"):  # the embedded dataset's training-only version
        read_release(root, versions=["NewYork-dense"])


def test_configurable_layout(make_release, tmp_path):
    official = make_release(tmp_path / "official", versions=["Brisbane"])
    other = tmp_path / "other"
    for split in ("train", "test"):
        (other / "texts").mkdir(parents=True, exist_ok=True)
        shutil.copy(official / "CVG-text/Brisbane" / f"{split}.json",
                    other / "texts" / f"Brisbane.{split}.json")
    shutil.copytree(official / "Brisbane-OSM", other / "tiles" / "osm" / "Brisbane")
    layout = ReleaseLayout(annotations="texts/{version}.{split}.json", images={"osm": "tiles/osm/{version}"})
    got = read_release(other, layout=layout)
    want = read_release(official)
    assert got.versions == ["Brisbane"]
    assert [(r.name, r.split, r.text) for r in got.records] == \
        [(r.name, r.split, r.text) for r in want.records]
    assert all(set(r.images) == {"osm"} for r in got.records)


def test_duplicates_are_reported_and_the_test_copy_kept(make_release, tmp_path):
    root = make_release(tmp_path / "r", versions=["NewYork"], n=(4, 2))
    train, test = annotations(root, "NewYork", "train"), annotations(root, "NewYork", "test")
    leaked = next(iter(train))
    test[leaked] = "The test copy."
    path = root / "CVG-text/NewYork/test.json"
    path.write_text(json.dumps(test))
    with pytest.raises(BadItemError, match=f"record '{leaked}'.*also in .*test.json"):
        read_release(root)
    contents = read_release(root, skip_bad=True)
    assert contents.skipped == [Skipped(f"{root}/CVG-text/NewYork/train.json: record {leaked!r}",
                                        f"also in {path} (a place belongs to one split)")]
    kept = [r for r in contents.records if r.name == leaked]
    assert [(r.split, r.text) for r in kept] == [("test", "The test copy.")]
    assert len(contents.records) == 4 + 2  # 4 train - 1 leaked + 3 test


def test_duplicate_key_in_one_file_keeps_first_and_reports(make_release, tmp_path):
    root = make_release(tmp_path / "r", versions=["NewYork"], n=(2, 1))
    path = root / "CVG-text/NewYork/train.json"
    name, text = next(iter(annotations(root, "NewYork", "train").items()))
    raw = path.read_text().rstrip()[:-1] + f', {json.dumps(name)}: "second text"}}'
    path.write_text(raw)
    contents = read_release(root, skip_bad=True)
    assert contents.skipped == [Skipped(f"{path}: record {name!r}", "appears twice in the file")]
    assert [r.text for r in contents.records if r.name == name] == [text]


def test_skip_bad_accounts_for_every_record(make_release, tmp_path):
    """records kept + records skipped == records in the annotation files (nothing silent)."""
    root = make_release(tmp_path / "r", n=(5, 3))
    (root / "NewYork-satellite").joinpath(next(iter(annotations(root, "NewYork", "test")))).unlink()
    photos = root / "NewYork-photos-OSM"
    Image.new("RGB", (4, 4)).save(next(photos.iterdir()), "PNG")  # still valid: kept
    (sorted(photos.iterdir())[1]).write_bytes(b"\x89PNG\r\n\x1a\n broken")
    contents = read_release(root, skip_bad=True)
    assert len(contents.skipped) == 2
    assert len(contents.records) + len(contents.skipped) == 2 * (5 + 3)


def test_check_images_false_skips_decoding_but_not_existence(make_release, tmp_path):
    root = make_release(tmp_path / "r", versions=["NewYork"], n=(2, 1))
    sat = sorted((root / "NewYork-satellite").iterdir())
    sat[0].write_bytes(b"not an image")
    assert len(read_release(root, check_images=False).records) == 3
    with pytest.raises(BadItemError, match="corrupt satellite image"):
        read_release(root)
    sat[1].unlink()
    with pytest.raises(BadItemError, match="no satellite image"):
        read_release(root, check_images=False)


@pytest.mark.parametrize("kind,damage", [
    ("satellite", lambda b: b[: len(b) * 4 // 5]),  # truncated JPEG: PIL's verify() alone misses it
    ("satellite", lambda b: b"\0" * len(b)),
    ("osm", lambda b: b[:-20]),  # truncated PNG
    ("osm", lambda b: b[:40] + bytes(reversed(b[40:]))),  # PNG with bad chunks
])
def test_corrupt_images_are_caught_without_decoding(kind, damage, make_release, tmp_path):
    root = make_release(tmp_path / "r", versions=["NewYork"], n=(2, 1), size=64)
    folder = root / ("NewYork-satellite" if kind == "satellite" else "NewYork-OSM")
    image = sorted(folder.iterdir())[0]
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(image, "JPEG" if kind == "satellite" else "PNG")  # mostly pixel data
    image.write_bytes(damage(image.read_bytes()))
    with pytest.raises(BadItemError, match=f"{image}: corrupt {kind} image of record"):
        read_release(root)


def test_merged_mixed_reports_a_name_in_both_parts(make_release, tmp_path):
    root = make_release(tmp_path / "r", n=(2, 1))
    name = next(iter(annotations(root, "NewYork", "test")))
    photos = annotations(root, "NewYork-photos", "test") | {name: "Also described as a photo."}
    (root / "CVG-text/NewYork-photos/test.json").write_text(json.dumps(photos))
    for folder in ("satellite", "OSM"):
        src = next((root / f"NewYork-{folder}").glob(name[:-4] + ".*"))
        shutil.copy(src, root / f"NewYork-photos-{folder}" / src.name)
    contents = read_release(root, versions=["NewYork-mixed"], skip_bad=True)
    assert contents.skipped == [Skipped(f"{root}/CVG-text/NewYork-photos/test.json: record {name!r}",
                                        f"also in {root}/CVG-text/NewYork/test.json (a place appears once)")]
    kept = [r.text for r in contents.records if r.name == name]
    assert kept == [annotations(root, "NewYork", "test")[name]]
