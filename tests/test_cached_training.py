"""Training the pretrained-towers model on cached features (LiT), and the validation split."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from geotextloc.errors import ConfigError
from geotextloc.train.config import from_dict
from geotextloc.train.data import validation_split
from geotextloc.train.loop import load_checkpoint, train

sys.path.insert(0, str(Path(__file__).parent))
from synthetic_records import make_release  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("release")
    return make_release(root, n_train=24, n_test=8, size=32)


def towers(out_dir, **overrides):
    values = dict(model="geotextloc-minilm-mnv2", pretrained="wheels", epe="interpolate", context_length=128,
                  image_size=64, train_last_k=2, cache_features=True, cache_images=True, augment=False,
                  batch_size=8, epochs=2, lr=1e-3, device="cpu", eval_scope=8, out_dir=str(out_dir))
    return from_dict(values | overrides)


def test_cached_features_train_only_the_unlocked_parts_and_resume_exactly(release, tmp_path, monkeypatch):
    train_records, test_records = release
    cfg = towers(tmp_path / "a", feature_cache=str(tmp_path / "features"))
    summary = train(cfg, train_records, test_records)
    assert summary["epoch"] == 2 and summary["best_R@1"] is not None
    assert len(list((tmp_path / "features").glob("image-*.safetensors"))) == 1
    assert len(list((tmp_path / "features").glob("text-*.safetensors"))) == 1

    from geotextloc.models import factory

    before = factory.create("geotextloc-minilm-mnv2", "wheels", 128, "interpolate", image_size=64)[0].state_dict()
    after = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["model"]
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert "visual.head.proj.weight" in changed and "text.proj.weight" in changed and "logit_scale" in changed
    assert any(k.startswith("visual.trunk.blocks.6.") for k in changed)
    assert any(k.startswith("visual.trunk.blocks.5.") for k in changed)
    assert not any(k.startswith(("visual.trunk.blocks.4.", "visual.trunk.conv_stem", "text.transformer."))
                   for k in changed)

    # interrupted and resumed (features read back from the cache, no tile decoded) = uninterrupted
    from geotextloc.train import cached

    monkeypatch.setattr(cached, "image_batches", lambda *args: pytest.fail("tiles decoded again"))
    train(towers(tmp_path / "b", feature_cache=str(tmp_path / "features"), stop_after_epoch=1),
          train_records, test_records)
    train(towers(tmp_path / "b", feature_cache=str(tmp_path / "features"), resume=True), train_records, test_records)
    losses = [[json.loads(x)["loss"] for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()
               if json.loads(x)["kind"] == "train"] for run in ("a", "b")]
    assert losses[0] == losses[1]

    # the checkpoint rebuilds the whole model: evaluation and search need no cache
    model, _, tokenizer, loaded = load_checkpoint(tmp_path / "a" / "best.pt")
    assert loaded.cache_features and tokenizer(["x"]).shape == (1, 128)


def test_cached_features_refuse_augmentation_and_other_models(release, tmp_path):
    with pytest.raises(ConfigError, match="cache_features"):
        towers(tmp_path, augment=True, cache_images=False)
    with pytest.raises(ConfigError, match="cache_features"):
        towers(tmp_path, text_dropout=0.3)
    with pytest.raises(ConfigError, match="pretrained-towers model"):
        train(towers(tmp_path, model="geotextloc-tiny", pretrained=None, epe="truncate", context_length=77),
              *release)


def test_validation_places_are_released_training_places_with_no_tile_overlapping_training(release):
    train_records, _ = release
    from dataclasses import replace

    dense = [replace(r, version=r.version + "-dense", lat=r.lat + 0.00005) for r in train_records[:6]]
    train_part, val = validation_split(train_records + dense, 0.25, seed=0)
    assert val and not any(r.version.endswith("-dense") for r in val)
    assert len({(r.lat, r.lon) for r in val}) == round(0.25 * len({(r.lat, r.lon) for r in train_records}))
    import math

    for v in val:
        for t in train_part:
            dy = math.radians(t.lat - v.lat) * 6_371_000
            dx = math.radians(t.lon - v.lon) * 6_371_000 * math.cos(math.radians(v.lat))
            assert math.hypot(dx, dy) >= 60.0
    assert validation_split(train_records, 0.25, seed=0) == validation_split(train_records, 0.25, seed=0)
    assert validation_split(train_records, 0.25, seed=1)[1] != val


def test_selection_on_validation_is_recorded_as_such(release, tmp_path):
    train_records, test_records = release
    train(towers(tmp_path, epochs=1, val_share=0.1, batch_size=4), train_records, test_records)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r["kind"] == "eval"]
    assert evals and all(r["split"] == "val" for r in evals)
    assert evals[0]["overall"]["Count"] < len(test_records) + len(train_records)


def test_early_stopping_ends_a_run_whose_validation_score_stalls_and_survives_resume(release, tmp_path):
    train_records, test_records = release
    cfg = towers(tmp_path, epochs=8, lr=1e-9, patience=2)  # lr ~0: the score cannot improve
    summary = train(cfg, train_records, test_records)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert summary["epoch"] == 3 and rows[-1]["kind"] == "early_stop"
    again = train(towers(tmp_path, epochs=8, lr=1e-9, patience=2, resume=True), train_records, test_records)
    assert again["epoch"] == 3


def test_memoised_evaluation_features_equal_the_models_own_and_follow_its_weights(release):
    from geotextloc.models import factory
    from geotextloc.data.images import image_paths
    from geotextloc.eval import embed
    from geotextloc.models.stages import towers_model

    train_records, test_records = release
    model, _, preprocess, tokenizer = factory.create("geotextloc-minilm-mnv2", "wheels", 128, "interpolate",
                                                     image_size=64)
    model.eval()
    paths, texts = image_paths(test_records, "sat"), [r.text for r in test_records]
    images = embed.embed_images(model, paths, preprocess, batch_size=3, progress=False)
    queries = embed.embed_texts(model, texts, tokenizer, batch_size=3, progress=False)
    with torch.no_grad():
        from geotextloc.data.images import load_image

        direct = model.encode_image(torch.stack([preprocess(load_image(p)) for p in paths]), normalize=True)
        direct_text = model.encode_text(tokenizer(texts), normalize=True)
    torch.testing.assert_close(images, direct, atol=2e-3, rtol=0)  # the stem maps are kept in float16
    torch.testing.assert_close(queries, direct_text, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # a fine-tuned stem must not reuse the memo
        model.visual.trunk.conv_stem.weight.mul_(0.5)
        direct = model.encode_image(torch.stack([preprocess(load_image(p)) for p in paths]), normalize=True)
    torch.testing.assert_close(embed.embed_images(model, paths, preprocess, progress=False), direct,
                               atol=2e-3, rtol=0)
    assert towers_model(model) and not towers_model(factory.create("geotextloc-tiny")[0])
