"""Embed a gallery and its text queries with a model, then run the CVG-Text protocol.

similarity[i, j] = cos(text_i, tile_j) = g_i . f_j with L2-normalised features; the
protocol (geo-scoped ranking, R@k, L@m, deviation) is :func:`geotextloc.eval.evaluate`.
The gallery is the test records' tiles of one view, one per name (the first kept).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from geotextloc.eval import ProtocolReport, evaluate
from geotextloc.train import cached
from geotextloc.train.data import Images, image_paths


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


@torch.no_grad()
def embed_images(model, paths, transform, batch_size=64, num_workers=0, progress=True) -> torch.Tensor:
    """(N, D) float32 L2-normalised image features, on the CPU."""
    device = next(model.parameters()).device
    if device.type == "cpu" and cached.towers_model(model):  # locked parts memoised across runs
        return cached.embed_images(model, list(paths), transform, batch_size, progress)
    loader = DataLoader(Images(paths, transform), batch_size=batch_size, num_workers=num_workers)
    out = []
    for images in tqdm(loader, desc="embed gallery", disable=not progress, leave=False):
        with _autocast(device):
            out.append(model.encode_image(images.to(device), normalize=True).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def embed_texts(model, texts: Sequence[str], tokenizer, batch_size=64, progress=True) -> torch.Tensor:
    """(N, D) float32 L2-normalised text features, on the CPU."""
    device = next(model.parameters()).device
    if device.type == "cpu" and cached.towers_model(model):
        return cached.embed_texts(model, list(texts), tokenizer, batch_size, progress)
    out = []
    starts = range(0, len(texts), batch_size)
    for start in tqdm(starts, desc="embed queries", disable=not progress, leave=False):
        tokens = tokenizer(list(texts[start : start + batch_size])).to(device)
        with _autocast(device):
            out.append(model.encode_text(tokens, normalize=True).float().cpu())
    return torch.cat(out)


def evaluate_model(
    model, records: Sequence, view: str, transform, tokenizer,
    scope: int | None = 100, batch_size: int = 64, num_workers: int = 0, progress: bool = True,
) -> ProtocolReport:
    """The protocol's report for ``records`` (queries: their texts; gallery: their ``view`` tiles)."""
    first: dict = {}
    for record in records:
        first.setdefault(record.name, record)  # one gallery tile per name, the first kept
    gallery = list(first.values())
    was_training = model.training
    model.eval()
    try:
        tiles = embed_images(model, image_paths(gallery, view), transform, batch_size, num_workers, progress)
        texts = [r.text for r in records]
        queries = embed_texts(model, texts, tokenizer, batch_size, progress)
    finally:
        model.train(was_training)
    similarity = queries @ tiles.T
    return evaluate(similarity, [r.name for r in records], [r.name for r in gallery], scope=scope, texts=texts)
