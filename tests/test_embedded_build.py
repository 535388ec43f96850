"""Building the embedded dataset: layout, byte-identical rebuilds, resume, reader round trip, CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import datasets
import pytest
import torch

from geotextloc.cli import main
from geotextloc.data import hub, release
from geotextloc.data.embedded import builder, dense
from geotextloc.data.embedded.builder import BuildSettings, build
from geotextloc.data.embedded.contact_sheet import copy_contact_sheets, pick_locations
from geotextloc.errors import ConfigError, DataError
from geotextloc.train import grid
from geotextloc import files as atomic

SETTINGS = BuildSettings(size=64, pano_width=128)
N = 8  # locations in total (4 per region)


def files(root: Path, skip: tuple[str, ...] = (".cache",)) -> dict[str, bytes]:
    """Every file under ``root`` (but the region cache), by relative path."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not set(skip) & set(p.relative_to(root).parts)}


REGIONS = ("helsinki", "kouvola")  # monaco is fetched with pip: tests/test_embedded_regions.py
CITIES = ("Helsinki", "Helsinki-25m", "Kouvola", "Kouvola-25m")  # paper density, street level


def build_small(out: Path, **kwargs) -> builder.BuildReport:
    return build(out, regions=REGIONS, **{"max_locations": N, "settings": SETTINGS, "workers": 1,
                                          "progress": False, **kwargs})


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, builder.BuildReport]:
    out = tmp_path_factory.mktemp("embedded") / "data"
    return out, build_small(out)


def test_layout_and_reader_round_trip(built):
    out, report = built
    assert set(report.locations) == set(CITIES)
    contents = release.read_release(out)
    assert contents.skipped == []
    assert contents.versions == sorted(f"{c}{kind}" for c in CITIES for kind in ("", "-mixed", "-photos"))
    assert not (out / ".cache").exists()  # no parsed-region pickles in a data folder
    by_version = {}
    for r in contents.records:
        by_version.setdefault(r.version, []).append(r)
        assert set(r.images) == {"satellite", "osm", "street", "drone"}
        if not r.version.endswith("-mixed"):
            assert r.view == (release.SINGLE if r.version.endswith("-photos") else release.PANORAMA)
        assert r.city in CITIES
    released = sum(c["train"] + c["test"] for c in report.locations.values())
    assert sum(len(v) for v in by_version.values()) == 3 * released
    for city, counts in report.locations.items():
        street_level = city.endswith("-25m")  # test only
        assert counts["test"] >= 1 and (counts["train"] == 0 if street_level else counts["train"] >= 1)
        assert {r.split for r in by_version[city]} == ({"test"} if street_level else {"train", "test"})
    # A place in both benchmarks is rendered once: the street-level files are hard links to it.
    shared = set(json.loads((out / "CVG-text" / "Kouvola" / "test.json").read_text())) & set(
        json.loads((out / "CVG-text" / "Kouvola-25m" / "test.json").read_text()))
    for name in shared:
        a, b = out / "Kouvola-satellite" / name, out / "Kouvola-25m-satellite" / name
        assert a.stat().st_ino == b.stat().st_ino
    # Texts come from the facts files; the panorama text mentions the street of its facts.
    rec = by_version["Helsinki"][0]
    loc_id = rec.name.split("_")[2]
    facts = json.loads((out / "facts" / "Helsinki" / f"{loc_id}.json").read_text(encoding="utf-8"))
    assert facts["texts"]["panorama"]["text"] == rec.text
    assert facts["names"]["panorama"] == rec.name
    assert abs(facts["location"]["lat"] - rec.lat) < 1e-7
    # -mixed holds one text kind per location, so no two of its tiles share coordinates
    # (merging city + photos would put two identical tiles at each place); its DatasetDict
    # is built from the release folder, not saved under hf/.
    mixed = release.read_release(out, versions=["Kouvola-mixed"]).records
    assert {r.view for r in mixed} == {release.PANORAMA, release.SINGLE}
    assert len({(r.lat, r.lon) for r in mixed}) == len(mixed)
    assert len(mixed) == len(by_version["Kouvola"])
    assert sorted(p.name for p in (out / "hf").iterdir()) == sorted(f"{c}{k}" for c in CITIES for k in ("", "-photos"))
    dd = hub.load_cvgtext(out, version="Kouvola-mixed")
    assert sum(len(ds) for ds in dd.values()) == len(mixed)
    assert dd["train"][0]["satellite"].size == (64, 64)
    assert {v for ds in dd.values() for v in ds["view"]} == {release.PANORAMA, release.SINGLE}
    saved = datasets.load_from_disk(str(out / "hf" / "Kouvola-photos"))
    assert sum(len(ds) for ds in saved.values()) == len(mixed)
    # GeoLoc quadruples point at existing files; direct texts carry the same keys.
    for city in ("Helsinki", "Kouvola"):
        rows = [json.loads(line) for line in (out / "geoloc" / city / "train.jsonl").read_text().splitlines()]
        assert rows and all((out / row[k]).is_file() for row in rows for k in ("drone", "street", "satellite"))
        for split in ("train", "test"):
            ann = json.loads((out / "CVG-text" / city / f"{split}.json").read_text())
            direct = json.loads((out / "direct" / city / f"{split}.json").read_text())
            assert set(ann) == set(direct)
    stats = json.loads((out / "stats.json").read_text())
    paper = sum(c["train"] + c["test"] for city, c in report.locations.items() if city in ("Helsinki", "Kouvola"))
    assert stats["text"]["panorama"]["count"] == paper
    assert stats["versions"]["Kouvola-25m"]["test"] == report.locations["Kouvola-25m"]["test"]
    assert stats["text"]["single"]["mean_tokens"] < stats["text"]["panorama"]["mean_tokens"]


def test_photo_views_are_jpeg_and_osm_tiles_png(built):
    """Annotation keys end in .jpg like the public release; satellite, drone and street views
    are JPEG files of exactly that name, OSM tiles PNG files of the same stem."""
    out, _ = built
    for version in ("Helsinki", "Helsinki-photos"):
        keys = json.loads((out / "CVG-text" / version / "test.json").read_text(encoding="utf-8"))
        assert keys and all(k.endswith(".jpg") for k in keys)
        for key in keys:
            for folder in ("satellite", "street", "drone"):
                data = (out / f"{version}-{folder}" / key).read_bytes()
                assert data[:3] == b"\xff\xd8\xff" and b"Exif" not in data[:64]
            osm = out / f"{version}-OSM" / key.replace(".jpg", ".png")
            assert osm.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob("*-street/*.png")) and not list(out.glob("*-OSM/*.jpg"))


def test_files_and_folders_get_the_umask_mode(built):
    """Nothing is private to its owner: files are 0o666 & ~umask (0o644 under umask 022),
    folders 0o777 & ~umask, like files written with open(); hf/ folders included."""
    out, _ = built
    assert atomic.FILE_MODE == 0o666 & ~atomic.UMASK
    wrong = [(p.relative_to(out).as_posix(), oct(p.stat().st_mode & 0o777)) for p in out.rglob("*")
             if p.stat().st_mode & 0o777 != (atomic.DIR_MODE if p.is_dir() else atomic.FILE_MODE)]
    assert wrong == []


def test_contact_sheets(built, tmp_path):
    out, _ = built
    for city in ("Helsinki", "Kouvola"):
        sheet = out / f"contact_sheet_{city}.png"
        assert sheet.is_file() and sheet.read_bytes()[:4] == b"\x89PNG"
        chosen = pick_locations(out, city, rows=3)
        splits = [c["split"] for c in chosen]
        assert splits == sorted(splits, key=("test", "train").index)  # test locations first
        assert [c["location"]["id"] for c in chosen] == [c["location"]["id"] for c in pick_locations(out, city, 3)]
    copied = copy_contact_sheets(out, tmp_path / "reports")
    assert [p.name for p in copied] == ["embedded_Helsinki_contact_sheet.png", "embedded_Kouvola_contact_sheet.png"]
    assert copied[0].read_bytes() == (out / "contact_sheet_Helsinki.png").read_bytes()


def test_rebuild_is_byte_identical_with_workers(built, tmp_path):
    out, _ = built
    again = tmp_path / "data"
    build_small(again, workers=2)
    a, b = files(out), files(again)
    assert sorted(a) == sorted(b)
    differ = [k for k in a if a[k] != b[k]]
    assert differ == []


def test_resume_after_interruption(built, tmp_path, monkeypatch):
    out, _ = built
    part = tmp_path / "data"
    real = builder.build_location
    calls = []

    def crash_on_third(loc, region, settings, out_dir, cities):
        calls.append(loc.id)
        if len(calls) == 3:
            real(loc, region, settings, out_dir, cities)  # the third location is half written ...
            builder.facts_path(out_dir, loc).unlink()  # ... its facts (written last) are missing
            raise KeyboardInterrupt
        real(loc, region, settings, out_dir, cities)

    monkeypatch.setattr(builder, "build_location", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        build_small(part, hf=False)
    monkeypatch.setattr(builder, "build_location", real)
    assert not [p for p in part.rglob("*.tmp")]  # atomic writes: no temp file left
    assert len(list((part / "facts").rglob("*.json"))) == 2
    report = build_small(part, hf=False)
    assert report.skipped_done == 2 and report.rendered == len(list((out / "facts").rglob("*.json"))) - 2
    assert files(part, skip=("hf",)) == files(out, skip=("hf",))

    # A lost image makes its location unfinished again.
    victim = next((part / "Kouvola-25m-drone").iterdir())
    victim.unlink()
    report = build_small(part, hf=False)
    assert report.rendered == 1 and victim.is_file()

    with pytest.raises(ConfigError, match="other settings"):
        build_small(part, settings=BuildSettings(size=96, pano_width=128))


def test_builds_of_another_builder_version_are_refused(built, tmp_path):
    """A folder built by an older builder (other files for the same arguments) is not resumed,
    and densify refuses it too: each error names the folder and the fix."""
    out, _ = built
    old = tmp_path / "old"
    old.mkdir()
    manifest = json.loads((out / "build.json").read_text(encoding="utf-8"))
    manifest["settings"]["builder_version"] = builder.BUILDER_VERSION - 1
    (old / "build.json").write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(ConfigError, match=f"builder_version {builder.BUILDER_VERSION - 1} -> "):
        build_small(old)
    with pytest.raises(DataError, match="another version of the builder"):
        dense.densify(old, progress=False)


def test_cli_build_then_info(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["data", "build-embedded", "--out", str(out), "--regions", "kouvola",
                 "--max-locations", "3", "--size", "48", "--pano-width", "96", "--no-hf"]) == 0
    assert "Kouvola:" in capsys.readouterr().out
    assert main(["data", "info", str(out)]) == 0
    assert "Kouvola" in capsys.readouterr().out
    assert main(["data", "contact-sheets", "--out", str(out), "--to", str(tmp_path / "reports"), "--rows", "2"]) == 0
    assert (tmp_path / "reports" / "embedded_Kouvola_contact_sheet.png").is_file()
    capsys.readouterr()
    assert main(["data", "contact-sheets", "--out", str(tmp_path / "nothing")]) == 2
    assert "build-embedded" in capsys.readouterr().err
    assert main(["data", "build-embedded", "--out", str(tmp_path / "x"), "--regions", "atlantis"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("geotextloc: error:") and "atlantis" in err and "\n" not in err
    assert main(["data", "build-embedded", "--out", str(tmp_path / "y"), "--regions", "",
                 "--pbf", str(tmp_path / "missing.osm.pbf")]) == 2
    assert "missing.osm.pbf" in capsys.readouterr().err


def test_densify_adds_training_places_away_from_the_test_split(built, tmp_path, capsys):
    src, _ = built
    out = tmp_path / "data"
    shutil.copytree(src, out)
    released = files(out)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the worker runner keeps workers on one thread, never the caller
    try:
        report = dense.densify(out, spacing=12.0, max_places=6, progress=False)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    after = files(out)
    assert {k: after[k] for k in released} == released  # the release is untouched
    assert any(k.startswith("Helsinki-dense-OSM/") for k in after)
    assert report.rendered == 12 and set(report.counts) == {"Helsinki", "Kouvola"}
    contents = release.read_release(out, versions=["Helsinki-dense", "Kouvola-dense"])
    assert contents.skipped == []
    assert len(contents.records) == 12 and {r.split for r in contents.records} == {"train"}
    assert {r.city for r in contents.records} == {"Helsinki", "Kouvola"}
    assert all(set(r.images) == {"satellite", "osm"} and r.text.strip() for r in contents.records)
    # every dense place has a direct text too (the text-source ablation fine-tunes on them)
    direct = grid.with_text_source(contents.records, out, "direct")
    assert [r.name for r in direct] == [r.name for r in contents.records]
    assert all(d.text.strip() and d.text != r.text for d, r in zip(direct, contents.records))
    buffer = SETTINGS.buffer_m
    for city in ("Helsinki", "Kouvola"):
        test_xy = dense.test_places(out, city)  # both benchmarks' test places
        names = [json.loads((out / "CVG-text" / v / "test.json").read_text()) for v in (city, f"{city}-25m")]
        assert len(test_xy) == len({builder.location_id(n) for ann in names for n in ann})
        for path in (out / "facts" / f"{city}-dense").glob("*.json"):
            loc = json.loads(path.read_text(encoding="utf-8"))["location"]
            assert min(((x - loc["x"]) ** 2 + (y - loc["y"]) ** 2) ** 0.5 for x, y in test_xy) >= buffer
    # a second run renders nothing and changes nothing
    before = files(out)
    again = dense.densify(out, spacing=12.0, max_places=6, progress=False)
    assert again.rendered == 0 and again.skipped_done == 12 and files(out) == before
    with pytest.raises(ConfigError, match="spacing 12.0 m"):
        dense.densify(out, spacing=8.0, progress=False)
    assert main(["data", "densify", "--out", str(out), "--spacing", "12", "--max-places", "6"]) == 0
    assert "Helsinki-dense: 6 training places" in capsys.readouterr().out
    assert main(["data", "densify", "--out", str(tmp_path / "nothing")]) == 2
    assert "build-embedded" in capsys.readouterr().err
