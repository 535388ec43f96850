"""``geotextloc search --index DIR [--image street.jpg] ["text"]``: a text, a street view, or both
(fused) against a gallery index built from a street or fusion run; bad input is one line, exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from geotextloc.cli import main
from geotextloc.eval.index import GalleryIndex, encode_queries
from geotextloc.train.config import from_dict

sys.path.insert(0, str(Path(__file__).parent))
from synthetic_records import make_release  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def indexes(tmp_path_factory):
    """{query kind: index folder} of a fusion run and a text run (geotextloc-tiny, one epoch), and the release."""
    from geotextloc.train.loop import train

    root = tmp_path_factory.mktemp("search")
    make_release(root / "release", n_train=16, n_test=8)
    out = {}
    for query in ("fusion", "text"):
        train(from_dict(dict(model="geotextloc-tiny", pretrained=None, context_length=96, image_size=32,
                             data_root=str(root / "release"), versions=["Synth"], view="osm", query=query,
                             batch_size=8, epochs=1, lr=1e-3, device="cpu", eval_scope=8,
                             out_dir=str(root / query))))
        assert main(["index", "--checkpoint", str(root / query / "best.pt"), "--data", str(root / "release"),
                     "--version", "Synth", "--view", "osm", "--out", str(root / f"{query}-index")]) == 0
        out[query] = root / f"{query}-index"
    return out, root / "release"


def rows(stdout: str) -> list[list[str]]:
    lines = stdout.splitlines()
    assert lines[0].split() == ["rank", "score", "lat", "lon", "name"]
    return [line.split() for line in lines[1:]]


def test_search_by_text_image_or_both_returns_ranked_tiles_with_coordinates(indexes):
    index_dirs, root = indexes
    street = sorted((root / "Synth-street").iterdir())[3]
    done = subprocess.run([sys.executable, "-m", "geotextloc", "search", "--index", str(index_dirs["fusion"]),
                           "--image", str(street), "a red building on the left", "--k", "4"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    found = rows(done.stdout)
    names = {r["name"]: r for r in map(json.loads, (index_dirs["fusion"] / "records.jsonl").read_text().splitlines())}
    assert [row[0] for row in found] == ["1", "2", "3", "4"]
    scores = [float(row[1]) for row in found]
    assert scores == sorted(scores, reverse=True)
    for row in found:  # every tile with its coordinates
        assert row[-1] in names and (float(row[2]), float(row[3])) == pytest.approx(
            (names[row[-1]]["lat"], names[row[-1]]["lon"]), abs=1e-6)

    # the fused query is the checkpoint's fusion of its text and street embeddings
    index = GalleryIndex.load(index_dirs["fusion"])
    from geotextloc.models.factory import from_checkpoint
    from geotextloc.models.query import street_transform
    from geotextloc.data.images import load_image

    model, _, _, tokenizer, _ = from_checkpoint(index.encoder["checkpoint"])
    with torch.no_grad():
        t = model.eval().encode_text(tokenizer(["a red building on the left"]), normalize=True)
        p = model.encode_street(street_transform(model.street)(load_image(street))[None], normalize=True)
        want = model.fuse(t, p).numpy()
    np.testing.assert_allclose(encode_queries(index.encoder, ["a red building on the left"], [street]), want, atol=1e-5)
    sims = dict(zip(index.names, index.embeddings @ want[0]))  # the printed scores are those (ties: any order)
    assert [sims[row[-1]] for row in found] == pytest.approx(scores, abs=1e-4)
    assert scores == pytest.approx(sorted(sims.values(), reverse=True)[:4], abs=1e-4)

    for args in (["--image", str(street)], ["a red building"], ["--image", str(street), "x", "--near", "60.17,24.94"]):
        assert main(["search", "--index", str(index_dirs["fusion"]), *args, "--k", "2"]) == 0


def test_bad_search_input_is_one_line_and_exit_2(indexes, tmp_path, capsys):
    index_dirs, root = indexes
    street = sorted((root / "Synth-street").iterdir())[0]
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    GalleryIndex.from_texts(["60.17,24.94_a.png", "60.171,24.94_b.png"], ["red", "blue"]).save(tmp_path / "bow")
    cases = [
        (["--index", str(index_dirs["fusion"]), "--image", str(tmp_path / "missing.jpg"), "x"], "no such file"),
        (["--index", str(index_dirs["fusion"]), "--image", str(tmp_path / "broken.jpg")], "cannot read image"),
        (["--index", str(index_dirs["fusion"])], "give a description, --image PATH, or both"),
        (["--index", str(index_dirs["text"]), "--image", str(street)], "trained for text queries"),
        (["--index", str(index_dirs["text"]), "--image", str(street), "x"], "needs an index built from a fusion run"),
        (["--index", str(tmp_path / "bow"), "--image", str(street), "red"], "embeds texts only"),
    ]
    for args, message in cases:
        capsys.readouterr()
        assert main(["search", *args]) == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("geotextloc: error:") and message in err, err
    assert main(["search", "--index", str(tmp_path / "bow"), "red"]) == 0  # text indexes search as before
