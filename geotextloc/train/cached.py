"""Locked towers run once (LiT): train only the heads and the image tower's last stages.

On two CPU cores a pretrained text tower costs seconds per batch at 300 tokens, and every
epoch would recompute the same frozen layers. With ``cache_features: true`` (pretrained-towers
model, no augmentation) the frozen parts run once over the training set:

- text: the whole tower is locked; its mean-pooled output (384-d, before the projection) is
  cached, so the EPE variant decides what the cached features saw (77 tokens or 300);
- image: MobileNetV2's stem and first stages are locked; the feature maps entering the last
  ``train_last_k`` stages are cached (float16), and those stages, the head conv and the
  projection train;
- street views (``query: street | fusion``): the street tower (a copy of the image tower, 2:1
  inputs) likewise, its maps cached apart (``image-street-*``); fusion runs also cache the
  pooled texts and train the text projection and the fusion head.

The trainable parameters are the model's own (:class:`CachedTowers` only routes cached inputs
through them), so checkpoints, evaluation and search use the whole model unchanged. Caches
are stored as safetensors under ``feature_cache`` keyed by a hash of everything they depend on,
each with the sha256 of its bytes; a cache file that fails its checks (shape, finite values,
checksum, readability) is recomputed and replaced, with a warning, never used.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from geotextloc.data.images import image_batches
from geotextloc.errors import ConfigError, DataError
from geotextloc.models.stages import (
    TOWERS_ONLY, image_stem, image_tail, pooled_by_length, run_batches, split_stage, tail_modules, towers_visual,
)
from geotextloc.files import atomic_path
from geotextloc.models.checkpoints import payload_digest

log = logging.getLogger(__name__)


def lock(model: nn.Module, k: int) -> None:
    """Freeze all but the image trunk's last ``k`` stages + head conv, both projections and
    the temperature. Locked modules stay in eval mode (BatchNorm statistics, dropout)."""
    start = split_stage(model, k)
    model.requires_grad_(False)
    for module in [*tail_modules(model.visual, start), model.text.proj]:
        module.requires_grad_(True)
    model.logit_scale.requires_grad_(True)


class CachedTowers(nn.Module):
    """The model's training forward on cached inputs: (image maps, pooled text) -> features."""

    def __init__(self, model: nn.Module, k: int):
        super().__init__()
        self.model = model
        self.start = split_stage(model, k)

    @property
    def logit_scale(self) -> nn.Parameter:
        return self.model.logit_scale

    def train(self, mode: bool = True):
        """Only the trainable stages switch to training mode; locked parts stay in eval."""
        super().train(False)
        for module in tail_modules(self.model.visual, self.start):
            module.train(mode)
        return self

    def forward(self, maps: torch.Tensor, pooled: torch.Tensor):
        image = image_tail(self.model.visual, maps.float(), self.start)
        text = self.model.text.proj(pooled.float())
        return F.normalize(image, dim=-1), F.normalize(text, dim=-1), self.model.logit_scale.exp()


def cache_key(cfg, part: str, items) -> str:
    """A hash of what the cache of ``part`` (image[-view] | text) depends on: image files
    (path, size) or texts."""
    common = {"model": cfg.model, "pretrained": cfg.pretrained, "precision": cfg.precision, "v": 2, "part": part}
    if part.startswith("image"):
        what = {**common, "image_size": cfg.image_size, "k": cfg.train_last_k,
                "images": [(str(p), p.stat().st_size) for p in items]}
    else:
        what = {**common, "epe": cfg.epe, "context_length": cfg.context_length, "texts": list(items)}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:20]


def _load_or_make(path: Path | None, make, shape: tuple[int, ...]) -> torch.Tensor:
    """The tensor cached in ``path`` if the file is sound, else ``make()``, saved there (temp file
    and rename) with the sha256 of its bytes in the file's metadata.

    Sound: a safetensors file holding one tensor ``x`` of ``shape``, all finite, matching its
    sha256 (files from before the checksum: the other checks). A cache is derived data, so an
    unsound file (unreadable, truncated, stale, mis-shaped, damaged) is a miss: it is recomputed
    and replaced, with one warning line naming it; it is never used.
    """
    from safetensors.torch import save_file

    if path is not None and path.is_file():
        x, problem = _read_cache(path, shape)
        if problem is None:
            return x
        log.warning("%s: feature cache unusable (%s); recomputing it", path, problem)
    x = make()
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                save_file({"x": x.contiguous()}, str(tmp), metadata={"sha256": payload_digest({"x": x})})
        except OSError as err:
            raise DataError(f"{path}: cannot write the feature cache ({err.strerror or err}); "
                            "point feature_cache at a writable folder or set it to null") from None
    return x


def _read_cache(path: Path, shape: tuple[int, ...]) -> tuple[torch.Tensor | None, str | None]:
    """(tensor, None) from a sound cache file, else (None, what is wrong with it)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            names, metadata = list(f.keys()), f.metadata() or {}
            if names != ["x"]:
                return None, f"holds {names[:3]} instead of one tensor 'x'"
            x = f.get_tensor("x")
    except Exception:  # safetensors raises its own error types for truncated or foreign files
        return None, "not a readable safetensors file"
    if tuple(x.shape) != tuple(shape):
        return None, f"shape {tuple(x.shape)}, expected {tuple(shape)}"
    if not x.is_floating_point() or not bool(torch.isfinite(x).all()):
        return None, "not finite floating-point values"
    if "sha256" in metadata and metadata["sha256"] != payload_digest({"x": x}):
        return None, "its bytes do not match the checksum saved with it"
    return x, None


def _stem_shape(visual: nn.Module, start: int) -> tuple[int, ...]:
    """Shape of one tile's stem maps: the locked stages run on one blank tile of the input size."""
    size = visual.preprocess_cfg["size"]
    size = (size, size) if isinstance(size, int) else tuple(size)
    blank = torch.zeros(1, 3, *size, device=next(visual.parameters()).device)
    with torch.no_grad():
        return tuple(image_stem(visual, blank, start).shape[1:])


def cached_pairs(cfg, model: nn.Module, pairs, dtype=None, batch_size: int = 64,
                 progress: bool = True) -> TensorDataset:
    """(image maps, pooled text) for every training pair, computed once (or read from the cache).

    ``pairs`` is a :class:`~geotextloc.train.data.Pairs` (its paths, texts, transform and
    tokenizer); a tile shared by several texts is encoded once. With the features in
    ``feature_cache``, no tile is decoded at all.
    """
    start = split_stage(model, cfg.train_last_k or 0)
    model.eval()
    maps, index = _image_maps(cfg, model.visual, pairs.paths, pairs.transform, "image", start, dtype, batch_size,
                              progress)
    return TensorDataset(maps[index], _pooled_texts(cfg, model, pairs.texts, pairs.tokenizer, dtype, batch_size,
                                                    progress))


def _image_maps(cfg, visual: nn.Module, paths, transform, part: str, start: int, dtype, batch_size: int,
                progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(stem maps of every distinct image, float16; index of each path's row), cached in
    ``feature_cache/<part>-<key>.safetensors``."""
    unique = list(dict.fromkeys(paths))
    slot = {path: k for k, path in enumerate(unique)}
    file = Path(cfg.feature_cache) / f"{part}-{cache_key(cfg, part, unique)}.safetensors" if cfg.feature_cache else None
    maps = _load_or_make(file, lambda: run_batches(
        lambda b: image_stem(visual, b, start), image_batches(unique, transform, batch_size),
        f"cache {part} features", dtype, progress,
        total=-(-len(unique) // batch_size)).half(), (len(unique), *_stem_shape(visual, start)))
    return maps, torch.tensor([slot[path] for path in paths])


def _pooled_texts(cfg, model: nn.Module, texts: list[str], tokenizer, dtype, batch_size: int,
                  progress: bool) -> torch.Tensor:
    """The locked text tower's pooled output of every text, cached in ``feature_cache/text-<key>.safetensors``."""
    file = Path(cfg.feature_cache) / f"text-{cache_key(cfg, 'text', texts)}.safetensors" if cfg.feature_cache else None
    tokens = tokenizer(texts)
    return _load_or_make(file, lambda: pooled_by_length(model, tokens, batch_size, dtype, progress,
                                                        "cache text features"),
                         (len(texts), model.text.transformer.config.hidden_size))


# ----------------------------------------------------------------------------- street and fusion queries
def lock_queries(model: nn.Module, k: int) -> None:
    """:func:`lock` for a :class:`~geotextloc.models.query.QueryModel`: the tile and street towers
    train their last ``k`` stages, head conv and projection; for fusion queries the text
    projection and the fusion head train too; the temperature trains."""
    start = split_stage(model, k)
    model.requires_grad_(False)
    for module in [*tail_modules(model.visual, start), *tail_modules(model.street, start)]:
        module.requires_grad_(True)
    if model.fuse is not None:
        model.text.proj.requires_grad_(True)
        model.fuse.requires_grad_(True)
    model.logit_scale.requires_grad_(True)


class CachedQueries(CachedTowers):
    """A QueryModel's training forward on cached inputs: (tile maps, street maps [, pooled
    text]) -> the same outputs as ``QueryModel.forward``."""

    def train(self, mode: bool = True):
        super().train(mode)  # the tile tower's tail; the street tower's and the fusion head follow
        for module in tail_modules(self.model.street, self.start):
            module.train(mode)
        if self.model.fuse is not None:
            self.model.fuse.train(mode)
        return self

    def forward(self, maps: torch.Tensor, query):
        model, start = self.model, self.start
        tiles = F.normalize(image_tail(model.visual, maps.float(), start), dim=-1)
        scale = model.logit_scale.exp()
        if model.fuse is None:
            return tiles, F.normalize(image_tail(model.street, query.float(), start), dim=-1), scale
        street, pooled = query
        parts = {"text": F.normalize(model.text.proj(pooled.float()), dim=-1),
                 "street": F.normalize(image_tail(model.street, street.float(), start), dim=-1)}
        return tiles, model.fuse(parts["text"], parts["street"]), scale, parts


class CachedQueryPairs(torch.utils.data.Dataset):
    """Item i = (tile maps, street maps) or, with pooled texts, (tile maps, (street maps, pooled text)),
    as :class:`~geotextloc.train.data.QueryPairs` gives images and tokens."""

    def __init__(self, tiles: tuple, streets: tuple, pooled: torch.Tensor | None = None):
        (self.tiles, self.tile_at), (self.streets, self.street_at), self.pooled = tiles, streets, pooled

    def __len__(self) -> int:
        return len(self.tile_at)

    def __getitem__(self, i: int):
        tile, street = self.tiles[self.tile_at[i]], self.streets[self.street_at[i]]
        return tile, street if self.pooled is None else (street, self.pooled[i])


def cached_queries(cfg, model: nn.Module, pairs, dtype=None, batch_size: int = 64,
                   progress: bool = True) -> CachedQueryPairs:
    """Stem maps of the tiles and street views (each file once) and, for fusion queries, the
    pooled texts of a :class:`~geotextloc.train.data.QueryPairs`, cached like :func:`cached_pairs`
    (the tiles' and texts' files are the text-query runs' own)."""
    start = split_stage(model, cfg.train_last_k or 0)
    model.eval()
    tiles = _image_maps(cfg, model.visual, pairs.paths, pairs.transform, "image", start, dtype, batch_size, progress)
    streets = _image_maps(cfg, model.street, pairs.street_paths, pairs.street_transform, "image-street", start, dtype,
                          batch_size, progress)
    pooled = None if pairs.texts is None else _pooled_texts(cfg, model, pairs.texts, pairs.tokenizer, dtype,
                                                             batch_size, progress)
    return CachedQueryPairs(tiles, streets, pooled)


# ----------------------------------------------------------------------------- GeoBridge
def bridge_start(bridge: nn.Module, k: int) -> int:
    """Index of the first trainable stage of GeoBridge's view encoders (their last ``k`` train)."""
    encoder = next(iter(bridge.encoders.values()))
    if not towers_visual(encoder):
        raise ConfigError(TOWERS_ONLY)
    blocks = len(encoder.trunk.blocks)
    if not 0 <= k <= blocks:
        raise ConfigError(f"train_last_k={k}: the image towers have {blocks} stages")
    return blocks - k


def _bridge_trainable(bridge: nn.Module, start: int) -> list[nn.Module]:
    return [module for visual in bridge.encoders.values() for module in tail_modules(visual, start)]


def lock_geobridge(bridge: nn.Module, k: int, text: bool = True) -> None:
    """GeoBridge over the towers model: each view encoder trains its last ``k`` stages, head conv
    and projection; the text tower is locked but for its projection (``text=False``: that too)."""
    start = bridge_start(bridge, k)
    bridge.requires_grad_(False)
    for module in _bridge_trainable(bridge, start):
        module.requires_grad_(True)
    bridge.text.text.proj.requires_grad_(text)
    bridge.logit_scale.requires_grad_(True)


class CachedGeoBridge(nn.Module):
    """GeoBridge's training forward on cached inputs: ({view: maps}, pooled text) -> features."""

    def __init__(self, bridge: nn.Module, k: int):
        super().__init__()
        self.bridge = bridge
        self.start = bridge_start(bridge, k)

    @property
    def logit_scale(self) -> nn.Parameter:
        return self.bridge.logit_scale

    def train(self, mode: bool = True):
        super().train(False)
        for module in _bridge_trainable(self.bridge, self.start):
            module.train(mode)
        return self

    def forward(self, maps: dict, pooled: torch.Tensor | None = None) -> dict:
        out = {view: F.normalize(image_tail(self.bridge.encoders[view], x.float(), self.start), dim=-1)
               for view, x in maps.items()}
        if pooled is not None:
            out["text"] = F.normalize(self.bridge.text.text.proj(pooled.float()), dim=-1)
        out["logit_scale"] = self.bridge.temperature_scale()
        return out


class CachedQuadruples(torch.utils.data.Dataset):
    """Item i = ({view: stem maps}, pooled text, masks), as :class:`~geotextloc.train.data.Quadruples`
    gives images and tokens; a missing view is zeros with a False mask."""

    def __init__(self, maps: dict, index: dict, pooled: torch.Tensor, has_text: torch.Tensor):
        self.maps, self.index, self.pooled, self.has_text = maps, index, pooled, has_text

    def __len__(self) -> int:
        return len(self.pooled)

    def __getitem__(self, i: int):
        images, masks = {}, {}
        for view, maps in self.maps.items():
            j = int(self.index[view][i])
            images[view] = maps[j] if j >= 0 else torch.zeros_like(maps[0])
            masks[view] = j >= 0
        masks["text"] = bool(self.has_text[i])
        return images, self.pooled[i], masks


def cached_quadruples(cfg, bridge: nn.Module, quads, dtype=None, batch_size: int = 64,
                      progress: bool = True) -> CachedQuadruples:
    """Stem maps of every view's images (each file once) and pooled texts of GeoBridge's
    training records (a :class:`~geotextloc.train.data.Quadruples`), cached like :func:`cached_pairs`."""
    start = bridge_start(bridge, cfg.train_last_k or 0)
    bridge.eval()
    folder = Path(cfg.feature_cache) if cfg.feature_cache else None
    maps, index = {}, {}
    for view, encoder in bridge.encoders.items():
        paths = [Path(r.images[view]) if r.images.get(view) else None for r in quads.records]
        unique = list(dict.fromkeys(p for p in paths if p is not None))
        if not unique:
            raise ConfigError(f"no training record has a {view} image; GeoBridge needs every view")
        slot = {p: k for k, p in enumerate(unique)}
        index[view] = torch.tensor([slot[p] if p is not None else -1 for p in paths])
        file = folder / f"image-{view}-{cache_key(cfg, f'image-{view}', unique)}.safetensors" if folder else None
        maps[view] = _load_or_make(file, lambda: run_batches(
            lambda b: image_stem(encoder, b, start), image_batches(unique, quads.transforms[view], batch_size),
            f"cache {view} features", dtype, progress, total=-(-len(unique) // batch_size)).half(),
            (len(unique), *_stem_shape(encoder, start)))
    texts = [r.text or "" for r in quads.records]
    text_file = folder / f"text-{cache_key(cfg, 'text', texts)}.safetensors" if folder else None
    tokens = quads.tokenizer(texts)
    pooled = _load_or_make(text_file, lambda: pooled_by_length(bridge.text, tokens, batch_size, dtype, progress,
                                                               "cache text features"),
                           (len(texts), bridge.text.text.transformer.config.hidden_size))
    return CachedQuadruples(maps, index, pooled, torch.tensor([bool(t) for t in texts]))


