"""EPE: the extended tables, the rebuilt masks, and training at 300 tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geotextloc.errors import ConfigError
from geotextloc.models import factory
from geotextloc.models.epe import (
    KPS_KEEP, MODES, apply_epe, causal_mask, extend_positional_embedding, resize_visual_positional_embedding,
)

torch.set_num_threads(1)
EOT = 49407


def linear_interp_reference(table: np.ndarray, n: int) -> np.ndarray:
    """1-D linear interpolation of rows to n, align_corners=False, computed with numpy only:
    output row j samples the input at x = (j + 0.5) * L / n - 0.5, clamped to [0, L - 1]."""
    length = table.shape[0]
    x = np.clip((np.arange(n) + 0.5) * length / n - 0.5, 0, length - 1)
    return np.stack([np.interp(x, np.arange(length), table[:, c]) for c in range(table.shape[1])], axis=1)


@pytest.fixture(scope="module")
def table():
    return torch.randn(77, 16, generator=torch.Generator().manual_seed(0))


def test_interpolate_is_1d_linear_interpolation_with_align_corners_false(table):
    new = extend_positional_embedding(table, 300, "interpolate")
    assert new.shape == (300, 16)
    reference = linear_interp_reference(table.numpy(), 300)
    np.testing.assert_allclose(new.numpy(), reference, atol=5e-5)  # torch: float32 coordinates
    small = extend_positional_embedding(torch.tensor([[0.0], [1.0]]), 4)
    assert small[:, 0].tolist() == pytest.approx([0.0, 0.25, 0.75, 1.0])


def test_kps_keeps_the_first_20_rows_and_stretches_the_rest(table):
    new = extend_positional_embedding(table, 300, "kps")
    assert new.shape == (300, 16)
    assert torch.equal(new[:KPS_KEEP], table[:KPS_KEEP])
    np.testing.assert_allclose(new[KPS_KEEP:].numpy(), linear_interp_reference(table[KPS_KEEP:].numpy(), 280),
                               atol=5e-5)


def test_random_keeps_the_learned_rows_and_draws_new_ones(table):
    new = extend_positional_embedding(table, 300, "random")
    assert torch.equal(new[:77], table)
    assert 0.005 < new[77:].std().item() < 0.02  # open_clip's text init: N(0, 0.01^2)


def test_truncate_leaves_the_table_alone(table):
    assert torch.equal(extend_positional_embedding(table, 300, "truncate"), table)
    with pytest.raises(ValueError, match="unknown EPE mode"):
        extend_positional_embedding(table, 300, "stretch")


def test_apply_epe_on_clip_sets_table_context_and_causal_mask():
    model = factory.create("geotextloc-tiny")[0]
    assert apply_epe(model, 300) is model
    assert model.positional_embedding.shape == (300, 128)
    assert model.context_length == 300
    assert dict(model.named_parameters())["positional_embedding"] is model.positional_embedding
    mask = model.attn_mask
    assert mask.shape == (300, 300)
    i, j = np.indices((300, 300))
    assert torch.equal(mask == 0, torch.from_numpy(j <= i))  # token i attends to j <= i only
    assert torch.isneginf(mask[torch.from_numpy(j > i)]).all()
    assert torch.equal(mask, causal_mask(300))


def test_rebuilt_causal_mask_is_used_beyond_77_tokens():
    """With the causal mask at 300, tokens after the end-of-text cannot change the text feature."""
    model, _, _, tokenizer = factory.create("geotextloc-tiny", context_length=300)
    model.eval()
    tokens = torch.randint(1, 49000, (2, 300), generator=torch.Generator().manual_seed(0))
    tokens[1, :200] = tokens[0, :200]  # same text up to the EOT at 200, different after it
    tokens[:, 200] = EOT
    with torch.no_grad():
        features = model.encode_text(tokens)
    torch.testing.assert_close(features[0], features[1])
    assert tokenizer(["word " * 400]).shape == (1, 300)


def test_apply_epe_on_bidirectional_text_tower_keeps_it_mask_free():
    model = factory.create("geotextloc-tiny-bidir")[0]  # SigLIP-like: CustomTextCLIP, no causal mask
    apply_epe(model, 300, "interpolate")
    assert model.text.positional_embedding.shape == (300, 128)
    assert model.text.attn_mask is None
    assert model.context_length == model.text.context_length == model.text.num_pos == 300


def test_native_is_refused_for_towers_without_longer_pretrained_positions(table):
    with pytest.raises(ValueError, match="pre-trained with >= 300 positions"):
        extend_positional_embedding(table, 300, "native")
    with pytest.raises(ConfigError, match="native"):
        factory.create("geotextloc-tiny", context_length=300, epe_mode="native")


@pytest.mark.parametrize("name", ["geotextloc-tiny", "geotextloc-tiny-bidir"])
@pytest.mark.parametrize("mode", [m for m in MODES if m != "native"])
def test_every_variant_trains_on_300_token_texts(name, mode):
    model, _, _, tokenizer = factory.create(name, context_length=300, epe_mode=mode, image_size=32)
    texts = tokenizer(["the red building on the left of the road " * 40, "a short one"])
    native = {"geotextloc-tiny": 77, "geotextloc-tiny-bidir": 64}[name]
    assert texts.shape == (2, native if mode == "truncate" else 300)  # truncate: cut at L0
    image_features, text_features, scale = model(torch.randn(2, 3, 32, 32), texts)[:3]
    loss = -(scale * image_features @ text_features.T).log_softmax(-1).diag().mean()
    loss.backward()
    table = getattr(model, "text", model).positional_embedding
    assert torch.isfinite(table.grad).all()
    assert table.grad[-1].abs().sum() > 0  # the long text's last position feeds the text feature


def test_visual_table_is_resized_bicubically_for_2_to_1_street_views():
    model = factory.create("geotextloc-tiny")[0]  # 64 px, patch 8: an 8 x 8 grid
    old = model.visual.positional_embedding.detach().clone()
    resize_visual_positional_embedding(model, (8, 8))
    torch.testing.assert_close(model.visual.positional_embedding, old)  # same grid: unchanged
    model.visual.positional_embedding.data[1:] = 0.5  # bicubic keeps a constant grid constant
    resize_visual_positional_embedding(model, (8, 16))
    table = model.visual.positional_embedding
    assert table.shape == (1 + 8 * 16, 128)
    torch.testing.assert_close(table[0], old[0])  # class token row kept
    torch.testing.assert_close(table[1:], torch.full((128, 128), 0.5))
    assert model.visual.image_size == (64, 128)
    assert model.encode_image(torch.randn(1, 3, 64, 128)).shape == (1, 128)
    _, preprocess = factory.transforms(model)
    from PIL import Image

    assert preprocess(Image.new("RGB", (2048, 1024))).shape == (3, 64, 128)


def test_sinusoidal_table_is_smooth_at_open_clips_init_scale_and_survives_interpolation():
    from geotextloc.models.epe import sinusoidal_table, smoothness

    table = sinusoidal_table(77, 64)
    assert table.shape == (77, 64)
    assert table.std().item() == pytest.approx(0.01, rel=1e-3)
    # rows 0 and 1 of the Transformer's encoding: sin(0) = 0, cos(0) = 1 (before scaling)
    assert table[0, 0::2].abs().max().item() == 0.0
    assert torch.allclose(table[0, 1::2], torch.full((32,), table[0, 1].item()))
    noise = torch.randn(77, 64, generator=torch.Generator().manual_seed(0)) * 0.01
    assert smoothness(table) > 0.9 > 0.2 > abs(smoothness(noise))
    # interpolating a smooth table keeps it smooth (what EPE relies on; noise would stay noise)
    assert smoothness(extend_positional_embedding(table, 300, "interpolate")) > smoothness(table)


def test_text_pos_init_reinitialises_only_random_init_stage_one_models():
    from geotextloc.models.epe import init_text_positions, sinusoidal_table, smoothness
    from geotextloc.train.config import load_config
    from geotextloc.train.loop import build_model

    cfg = load_config("configs/scratch/crosstext2loc_pretrain.yaml", ["text_pos_init=sinusoidal"])
    model = build_model(cfg)[0]
    assert torch.equal(model.positional_embedding, sinusoidal_table(*model.positional_embedding.shape))
    plain = build_model(load_config("configs/scratch/crosstext2loc_pretrain.yaml", ["text_pos_init=normal"]))[0]
    assert smoothness(plain.positional_embedding) < 0.2
    with pytest.raises(ValueError, match="sinusoidal"):
        init_text_positions(plain, "zeros")
    from geotextloc.errors import ConfigError

    with pytest.raises(ConfigError, match="pretrained: null"):
        load_config("configs/smoke/crosstext2loc.yaml", ["text_pos_init=sinusoidal", "pretrained=runs/x/last.pt"])
