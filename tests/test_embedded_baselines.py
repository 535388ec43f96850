"""Chance and map-label baselines on both benchmarks of a built embedded dataset."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from geotextloc.cli import main
from geotextloc.data.embedded import builder
from geotextloc.data.embedded.builder import BuildSettings, build
from geotextloc.data.embedded.labels import facts_record, place_labels, tile_labels
from geotextloc.data.embedded.scene import Location
from geotextloc.eval import baselines

VERSIONS = ["Helsinki", "Helsinki-photos", "Helsinki-25m", "Helsinki-25m-photos"]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("baselines") / "data"
    build(out, regions=["helsinki"], max_locations=16, settings=BuildSettings(size=48, pano_width=96),
          hf=False, progress=False)
    return out


def test_both_baselines_on_both_benchmarks(built):
    reports = baselines.run_baselines(built, VERSIONS)
    assert sorted(reports) == sorted((b, v) for b in baselines.BASELINES for v in VERSIONS)
    counts = {v: reports[("chance", v)].to_dict()["overall"]["Count"] for v in VERSIONS}
    assert counts["Helsinki"] == counts["Helsinki-photos"] == 4 and counts["Helsinki-25m"] == 8
    again = baselines.run_baselines(built, VERSIONS)
    assert all(again[k].table.equals(r.table) for k, r in reports.items())  # seeded
    table = baselines.summary(reports)
    assert list(table.index.names) == ["baseline", "version"] and "L@50" in table.columns


def test_a_tiles_labels_are_its_street_and_the_named_places_inside_it(built):
    facts = {"street": {"name": "Bulevardi"},
             "pois": [{"name": "Inside", "distance_m": 20.0, "bearing": 45},  # 14 m east, 14 m north
                      {"name": "Outside", "distance_m": 40.0, "bearing": 0},  # 40 m north: off the tile
                      {"name": None, "distance_m": 5.0, "bearing": 90}],
             "areas": [{"name": "Sinebrychoff Park", "distance_m": 35.0, "bearing": 225}]}  # 25 m SW
    assert tile_labels(facts, 60.0) == ["Bulevardi", "Inside", "Sinebrychoff Park"]
    name = next(iter(json.loads((built / "CVG-text" / "Helsinki-25m" / "test.json").read_text())))
    rec = facts_record(built, "Helsinki-25m", name)  # the street-level places share the region's facts
    assert rec["names"]["panorama"] == name
    assert place_labels(built, "Helsinki-25m", name).startswith(rec["facts"]["street"]["name"])


def test_map_labels_weighs_rare_words(monkeypatch):
    """Each description names its own shop; one tile prints a slogan of common words. Weighted by
    idf over the descriptions, the common words count for nothing and every query finds its tile
    (a plain bag of words hands most queries to the slogan tile)."""
    locs = [Location(f"hel{i:06d}", "Helsinki", 30.0 * i, 0.0, 60.17, 24.94 + 0.0006 * i, 0.0, "w1") for i in range(6)]
    names = [builder.panorama_name(loc) for loc in locs]
    shops = ["Alpha", "Bravo", "Charlie", "Delta", "Echo", "Foxtrot"]
    texts = [f"I am on the street and you can see a shop called {s} when you look at the corner." for s in shops]
    labels = dict(zip(names, [f"Street {s}" for s in shops]))
    labels[names[0]] = "Street Alpha Why join the navy when you can be a pirate at the corner"
    monkeypatch.setattr(baselines, "place_labels", lambda root, city, name: labels[name])
    test = [SimpleNamespace(name=n, text=t, city="Helsinki", version="Helsinki") for n, t in zip(names, texts)]
    report = baselines.map_labels(test, root=".")
    assert report.to_dict()["overall"]["R@1"] == 100.0


def test_cli_prints_the_table_and_names_a_folder_without_facts(built, tmp_path, capsys):
    assert main(["baselines", "--data", str(built), "--versions", "Helsinki,Helsinki-25m"]) == 0
    printed = capsys.readouterr().out
    assert "map labels" in printed and "Helsinki-25m" in printed and "L@100" in printed
    assert main(["baselines", "--out", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert "nothing/facts" in err and "build-embedded" in err
