"""A synthetic CVG-Text release for training tests: tiny PNG tiles whose colours the text names.

Written in the real release layout (``CVG-text/<version>/{train,test}.json``,
``<version>-satellite/``, ``<version>-OSM/``, ``<version>-street/``), so the release reader can read it back.
Not a fixture module on purpose: ``tests/ddp_worker.py`` (run by torchrun) imports it too.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from geotextloc.data.release import Record, parse_name

COLOURS = {
    "red": (200, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 200), "yellow": (220, 200, 40),
    "white": (235, 235, 235), "black": (20, 20, 20), "grey": (128, 128, 128), "orange": (230, 130, 30),
}
FOLDERS = {"satellite": "{version}-satellite", "osm": "{version}-OSM", "street": "{version}-street"}


def make_release(root: str | Path, n_train: int, n_test: int, version: str = "Synth",
                 size: int = 32, spacing: float = 0.0004) -> tuple[list[Record], list[Record]]:
    """Write a release with ``n_train`` + ``n_test`` places under ``root``; return their records.

    Each place has a satellite and an OSM tile (left/right colour halves; OSM inverted), a street
    view with the same colours (a 2:1 panorama, or a square single view: every other name is a
    panorama's) and a description naming those colours. Places lie on a grid of ``spacing``
    degrees (0.0004: about 44 m north-south, 22 m east-west; 0.0015 keeps every place farther
    than a tile from the others, so a validation split drops no training place).
    """
    root = Path(root)
    rng = np.random.default_rng(0)
    colours = list(COLOURS)
    split_records = {}
    for split, n in (("train", n_train), ("test", n_test)):
        records = []
        for i in range(n):
            k = len(split_records.get("train", [])) + i
            lat, lon = 60.17 + spacing * (k % 20), 24.94 + spacing * (k // 20)
            extra = "_2022-08_pano" if i % 2 else ""
            name = f"{lat:.6f},{lon:.6f}{extra}_{split}{i:05d}.png"
            left, right = rng.choice(len(colours), 2, replace=False)
            image = np.zeros((size, size, 3), dtype=np.uint8)
            image[:, : size // 2] = COLOURS[colours[left]]
            image[:, size // 2 :] = COLOURS[colours[right]]
            paths = {}
            street = np.repeat(image, 2, axis=1) if extra else image  # panorama: 2:1
            for kind, folder in FOLDERS.items():
                paths[kind] = root / folder.format(version=version) / name
                paths[kind].parent.mkdir(parents=True, exist_ok=True)
                pixels = {"satellite": image, "osm": 255 - image, "street": street}[kind]
                Image.fromarray(pixels).save(paths[kind])
            text = (f"On the left side of the road there is a {colours[left]} building, and on the "
                    f"right a {colours[right]} one. ") * 4
            info = parse_name(name)
            records.append(Record(name=name, city=version, version=version, split=split, view=info.view,
                                  lat=info.lat, lon=info.lon, text=text, images=paths))
        annotations = root / "CVG-text" / version / f"{split}.json"
        annotations.parent.mkdir(parents=True, exist_ok=True)
        annotations.write_text(json.dumps({r.name: r.text for r in records}))
        split_records[split] = records
    return split_records["train"], split_records["test"]
