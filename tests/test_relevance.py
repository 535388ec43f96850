"""Relevance maps for both towers of a tiny open_clip model (CLIP text tower, EPE, bidirectional)."""

from __future__ import annotations

import pytest
import torch

from geotextloc.explain.relevance import (explain_mode, image_blocks, relevance_maps, text_blocks,
                                          word_relevance)
from geotextloc.models.factory import create

TEXTS = ["a cafe named Kahvila Sävy is on the left, a tram stop ahead",
         "a wide park with tall trees and a pond behind you"]


@pytest.fixture(scope="module", params=[("geotextloc-tiny", None), ("geotextloc-tiny", 120),
                                        ("geotextloc-tiny-bidir", None)],
                ids=["clip-77", "clip-epe-120", "bidir"])
def tiny(request):
    torch.set_num_threads(1)  # the CI machine has 2 shared cores
    torch.manual_seed(0)
    name, context_length = request.param
    model, _, _, tokenizer = create(name, context_length=context_length)
    images = torch.randn(2, 3, *model.visual.image_size)
    return model, tokenizer, images


def test_shapes_and_non_negative(tiny):
    model, tokenizer, images = tiny
    tokens = tokenizer(TEXTS)
    maps = relevance_maps(model, images, tokens)
    grid = model.visual.grid_size
    assert maps.image.shape == (2, *images.shape[-2:])
    assert maps.image_grid.shape == (2, *grid)
    assert maps.text.shape == tokens.shape  # any context length, with or without EPE
    assert maps.score.shape == (2,)
    for m in (maps.image, maps.image_grid, maps.text):
        assert torch.isfinite(m).all() and (m >= 0).all()
    assert maps.image_grid.sum() > 0 and maps.text.sum() > 0


def test_maps_change_with_the_text(tiny):
    model, tokenizer, images = tiny
    pair_a = relevance_maps(model, images[:1], tokenizer(TEXTS[:1]))
    pair_b = relevance_maps(model, images[:1], tokenizer(TEXTS[1:]))
    assert not torch.allclose(pair_a.image_grid, pair_b.image_grid)
    assert not torch.allclose(pair_a.text, pair_b.text)


def test_start_layer_zero_accumulates_more_blocks(tiny):
    model, tokenizer, images = tiny
    tokens = tokenizer(TEXTS)
    last = relevance_maps(model, images, tokens)  # default: the last block only
    every = relevance_maps(model, images, tokens, start_layer=0)
    assert not torch.allclose(last.image_grid, every.image_grid)


def test_explain_mode_keeps_outputs_and_normal_inference_has_no_probabilities(tiny):
    model, tokenizer, images = tiny
    tokens = tokenizer(TEXTS)
    blocks = image_blocks(model) + text_blocks(model)
    calls = []
    hooks = [b.attn.register_forward_hook(lambda m, i, out: calls.append(out[1])) for b in blocks]
    try:
        with torch.no_grad():
            normal = model.encode_image(images), model.encode_text(tokens)
            assert len(calls) == len(blocks) and all(w is None for w in calls)  # need_weights=False
            with explain_mode(model) as store:
                explained = model.encode_image(images), model.encode_text(tokens)
                assert set(store) == set(blocks) and len(calls) == len(blocks)  # fast path unused
                heads = blocks[0].attn.num_heads
                n_patches = model.visual.grid_size[0] * model.visual.grid_size[1]
                assert store[blocks[0]].shape == (2, heads, n_patches + 1, n_patches + 1)
            after = model.encode_image(images), model.encode_text(tokens)
    finally:
        for h in hooks:
            h.remove()
    for a, b, c in zip(normal, explained, after):
        assert torch.allclose(a, b, atol=1e-5) and torch.equal(a, c)
    assert not any("attention" in b.__dict__ for b in blocks)  # class methods again
    assert len(calls) == 2 * len(blocks)


def test_explain_mode_is_undone_after_an_error(tiny):
    model, _, _ = tiny
    with pytest.raises(RuntimeError), explain_mode(model):
        raise RuntimeError("boom")
    assert not any("attention" in b.__dict__ for b in image_blocks(model) + text_blocks(model))


def test_word_relevance_follows_the_text_and_marks_truncated_words():
    from open_clip import get_tokenizer  # geotextloc.models.factory registered the tiny configs

    tokenizer = get_tokenizer("geotextloc-tiny", context_length=8)
    text = "On your LEFT: Kahvila Sävy, then a long street far away"
    tokens = tokenizer([text])[0]
    relevance = torch.arange(len(tokens), dtype=torch.float32)
    words = word_relevance(text, tokens, relevance, tokenizer)
    assert [w for w, _ in words] == text.split()
    assert words[0][1] == 1.0  # 'on' is token 1 (after start-of-text)
    assert all(r is not None for _, r in words[:4]) and words[-1][1] is None  # cut at 8 tokens


def test_figures_show_words_candidates_and_a_truth_outside_the_top5(tmp_path):
    import numpy as np
    from PIL import Image

    from geotextloc import viz

    words = [("On", 0.1), ("the", 0.0), ("left", 0.9), ("Kahvila", 0.5), ("cut", None)]
    assert viz.words_image(words).size[0] == 900
    tile = tmp_path / "tile.png"
    Image.new("RGB", (64, 64), (242, 239, 233)).save(tile)
    heat = np.random.default_rng(0).random((8, 8))
    overlay = np.asarray(viz.overlay_heatmap(tile, heat), dtype=float)
    assert overlay.shape == (64, 64, 3) and overlay.std() > 0  # upsampled and coloured
    cands = [{"name": f"c{i}", "image": tile, "heatmap": heat, "score": 0.3 - i / 100,
              "confidence": 0.2, "new_rank": i + 1} for i in range(5)]
    fig = viz.top5_figure(words, cands, truth={"name": "t", "image": tile, "rank": 9})
    titles = [ax.get_title() for ax in fig.axes]
    assert len(fig.axes) == 1 + 2 * 6 and "ground truth (rank 9)" in titles
    inside = viz.top5_figure(words, cands, truth={"name": "c2", "image": tile})
    assert len(inside.axes) == 1 + 2 * 5 and any("✓ ground truth" in t for t in
                                                 (ax.get_title() for ax in inside.axes))
    fig.savefig(tmp_path / "top5.png")


def test_towers_model_gets_grad_cam_image_maps_and_token_maps_over_the_words():
    from geotextloc.models import factory

    torch.manual_seed(0)
    model, _, _, tokenizer = factory.create("geotextloc-minilm-mnv2", "wheels", 128, "interpolate", image_size=128)
    text = "a café called Ekberg on my left, a tram stop ahead"
    tokens = tokenizer([text, "a park behind me"])
    images = torch.rand(2, 3, 128, 128)
    maps = relevance_maps(model, images, tokens)
    assert maps.image.shape == (2, 128, 128) and maps.image_grid.shape == (2, 8, 8)
    assert (maps.image >= 0).all() and maps.image.sum() > 0
    used = (tokens != 0).sum(dim=1)
    assert (maps.text[1, used[1]:] == 0).all() and maps.text[0, : used[0]].sum() > 0  # no relevance on padding
    only_images = relevance_maps(model, images, tokens, text_map=False)
    torch.testing.assert_close(only_images.image, maps.image)
    words = word_relevance(text, tokens[0], maps.text[0], tokenizer)
    assert [w for w, _ in words] == text.split() and all(r is not None for _, r in words)
