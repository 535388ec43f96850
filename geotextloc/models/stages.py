"""Where the pretrained-towers model (``geotextloc-minilm-mnv2``) splits into a locked part
and a trainable part, for training on cached features (:mod:`geotextloc.train.cached`) and
for memoised embedding (:mod:`geotextloc.eval.embed`).

Image tower (timm MobileNetV2 under open_clip's ``TimmModel``): *stem* = stem conv + stages
[0, start); *tail* = stages [start, end) + head conv + pooling + projection, so
``tail(stem(x)) == visual(x)``. Text tower (open_clip's HF tower): the transformer and mean
pooler (*pooled*), then the projection.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from geotextloc.errors import ConfigError

TOWERS_ONLY = "cache_features needs the pretrained-towers model (geotextloc-minilm-mnv2)"


def trunk(model: nn.Module) -> nn.Module:
    """The image trunk of a towers model; ConfigError for any other model."""
    found = getattr(getattr(model, "visual", None), "trunk", None)
    if found is None or not hasattr(found, "blocks") or not hasattr(getattr(model, "text", None), "pooler"):
        raise ConfigError(TOWERS_ONLY)
    return found


def towers_model(model: nn.Module) -> bool:
    """Whether ``model`` is a towers model (its parts can be cached and memoised)."""
    try:
        trunk(model)
        return True
    except ConfigError:
        return False


def towers_visual(visual: nn.Module) -> bool:
    """Whether an image tower alone (e.g. a GeoBridge view encoder) has the towers' trunk."""
    body = getattr(visual, "trunk", None)
    return all(hasattr(body, part) for part in ("conv_stem", "bn1", "blocks", "conv_head", "bn2"))


def split_stage(model: nn.Module, k: int) -> int:
    """Index of the first trainable stage of the image trunk (its last ``k`` stages train)."""
    stages = len(trunk(model).blocks)
    if not 0 <= k <= stages:
        raise ConfigError(f"train_last_k={k}: the image tower has {stages} stages")
    return stages - k


def image_stem(visual: nn.Module, images: torch.Tensor, start: int) -> torch.Tensor:
    """The locked part of an image tower (``model.visual``): stem conv and stages [0, start)."""
    body = visual.trunk
    x = body.bn1(body.conv_stem(images))
    return body.blocks[:start](x)


def image_tail(visual: nn.Module, maps: torch.Tensor, start: int) -> torch.Tensor:
    """The trainable part: stages [start, end), head conv, pooling, projection."""
    body = visual.trunk
    x = body.bn2(body.conv_head(body.blocks[start:](maps)))
    return visual.head(body.forward_head(x))


def stem_modules(visual: nn.Module, start: int) -> list[nn.Module]:
    """The modules of :func:`image_stem` (their weights decide its output)."""
    body = visual.trunk
    return [body.conv_stem, body.bn1, *body.blocks[:start]]


def tail_modules(visual: nn.Module, start: int) -> list[nn.Module]:
    """The trainable part of an image tower: stages [start, end), head conv and norm, projection."""
    body = visual.trunk
    return [*body.blocks[start:], body.conv_head, body.bn2, visual.head]


def text_pooled(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """The locked text tower's mean-pooled output (before the projection)."""
    text = model.text
    used = (tokens != text.config.pad_token_id).any(dim=0).nonzero()
    tokens = tokens[:, : int(used.max()) + 1 if len(used) else 1]
    mask = (tokens != text.config.pad_token_id).long()
    return text.pooler(text.transformer(input_ids=tokens, attention_mask=mask), mask)


def run_batches(fn: Callable, batches: Iterable, desc: str, dtype=None, progress: bool = True,
                total: int | None = None) -> torch.Tensor:
    """``cat([fn(b) for b in batches])`` in float32, without gradients, under CPU autocast to
    ``dtype`` (None: none), with a progress bar."""
    out = []
    autocast = torch.autocast("cpu", dtype=dtype) if dtype else torch.autocast("cpu", enabled=False)
    with torch.no_grad(), autocast:
        for batch in tqdm(batches, desc=desc, disable=not progress, leave=False, total=total):
            out.append(fn(batch).float())
    return torch.cat(out)


def pooled_by_length(model: nn.Module, tokens: torch.Tensor, batch_size: int, dtype=None,
                     progress: bool = True, desc: str = "text features") -> torch.Tensor:
    """:func:`text_pooled` of every row of ``tokens``, batched by length (each batch is cut to
    its longest text), in the rows' order."""
    order = (tokens != model.text.config.pad_token_id).sum(dim=1).argsort()
    pooled = run_batches(lambda b: text_pooled(model, b), tokens[order].split(batch_size), desc, dtype, progress)
    out = torch.empty_like(pooled)
    out[order] = pooled
    return out
