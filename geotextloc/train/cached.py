"""Locked towers run once (LiT): train only the heads and the image tower's last stages.

On two CPU cores a pretrained text tower costs seconds per batch at 300 tokens, and every
epoch would recompute the same frozen layers. With ``cache_features: true`` (pretrained-towers
model, no augmentation) the frozen parts run once over the training set:

- text: the whole tower is locked; its mean-pooled output (384-d, before the projection) is
  cached, so the EPE variant decides what the cached features saw (77 tokens or 300);
- image: MobileNetV2's stem and first stages are locked; the feature maps entering the last
  ``train_last_k`` stages are cached (float16), and those stages, the head conv and the
  projection train.

The trainable parameters are the model's own (:class:`CachedTowers` only routes cached inputs
through them), so checkpoints, evaluation and search use the whole model unchanged. Caches
are stored as safetensors under ``feature_cache`` keyed by a hash of everything they depend on.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset
from tqdm.auto import tqdm

from geotextloc.errors import ConfigError
from geotextloc.files import atomic_path


def _trunk(model: nn.Module) -> nn.Module:
    trunk = getattr(getattr(model, "visual", None), "trunk", None)
    if trunk is None or not hasattr(trunk, "blocks") or not hasattr(getattr(model, "text", None), "pooler"):
        raise ConfigError("cache_features needs the pretrained-towers model (geotextloc-minilm-mnv2)")
    return trunk


def split_stage(model: nn.Module, k: int) -> int:
    """Index of the first trainable stage of the image trunk (its last ``k`` stages train)."""
    stages = len(_trunk(model).blocks)
    if not 0 <= k <= stages:
        raise ConfigError(f"train_last_k={k}: the image tower has {stages} stages")
    return stages - k


def image_stem(visual: nn.Module, images: torch.Tensor, start: int) -> torch.Tensor:
    """The locked part of an image tower (``model.visual``): stem conv and stages [0, start)."""
    trunk = visual.trunk
    x = trunk.bn1(trunk.conv_stem(images))
    return trunk.blocks[:start](x)


def image_tail(visual: nn.Module, maps: torch.Tensor, start: int) -> torch.Tensor:
    """The trainable part: stages [start, end), head conv, pooling, projection."""
    trunk = visual.trunk
    x = trunk.bn2(trunk.conv_head(trunk.blocks[start:](maps)))
    return visual.head(trunk.forward_head(x))


def text_pooled(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """The locked text tower's mean-pooled output (before the projection)."""
    text = model.text
    used = (tokens != text.config.pad_token_id).any(dim=0).nonzero()
    tokens = tokens[:, : int(used.max()) + 1 if len(used) else 1]
    mask = (tokens != text.config.pad_token_id).long()
    return text.pooler(text.transformer(input_ids=tokens, attention_mask=mask), mask)


def tail_modules(visual: nn.Module, start: int) -> list[nn.Module]:
    """The trainable part of an image tower: stages [start, end), head conv and norm, projection."""
    trunk = visual.trunk
    return [*trunk.blocks[start:], trunk.conv_head, trunk.bn2, visual.head]


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


def _encode(fn, batches, desc: str, dtype, progress: bool, total: int | None = None) -> torch.Tensor:
    out = []
    autocast = torch.autocast("cpu", dtype=dtype) if dtype else torch.autocast("cpu", enabled=False)
    with torch.no_grad(), autocast:
        for batch in tqdm(batches, desc=desc, disable=not progress, leave=False, total=total):
            out.append(fn(batch).float())
    return torch.cat(out)


def _load_or_make(path: Path | None, make) -> torch.Tensor:
    from safetensors.torch import load_file, save_file

    if path is not None and path.is_file():
        return load_file(str(path))["x"]
    x = make()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file({"x": x.contiguous()}, str(tmp))
    return x


def cached_pairs(cfg, model: nn.Module, pairs, dtype=None, batch_size: int = 64,
                 progress: bool = True) -> TensorDataset:
    """(image maps, pooled text) for every training pair, computed once (or read from the cache).

    ``pairs`` is a :class:`~geotextloc.train.data.Pairs` (its paths, texts, transform and
    tokenizer); a tile shared by several texts is encoded once. With the features in
    ``feature_cache``, no tile is decoded at all.
    """
    start = split_stage(model, cfg.train_last_k or 0)
    model.eval()
    unique = list(dict.fromkeys(pairs.paths))
    slot = {path: k for k, path in enumerate(unique)}
    index = torch.tensor([slot[path] for path in pairs.paths])
    folder = Path(cfg.feature_cache) if cfg.feature_cache else None
    image_file = folder / f"image-{cache_key(cfg, 'image', unique)}.safetensors" if folder else None
    text_file = folder / f"text-{cache_key(cfg, 'text', pairs.texts)}.safetensors" if folder else None

    maps = _load_or_make(image_file, lambda: _encode(
        lambda b: image_stem(model.visual, b, start), tiles(unique, pairs.transform, batch_size),
        "cache image features", dtype, progress,
        total=-(-len(unique) // batch_size)).half())
    tokens = pairs.tokenizer(pairs.texts)
    pooled = _load_or_make(text_file, lambda: _by_length(model, tokens, batch_size, dtype, progress))
    return TensorDataset(maps[index], pooled)


def tiles(paths: list[Path], transform, batch_size: int):
    """Batches of decoded, transformed tiles."""
    from geotextloc.train.data import load_image

    for i in range(0, len(paths), batch_size):
        yield torch.stack([transform(load_image(p)) for p in paths[i : i + batch_size]])


def _by_length(model: nn.Module, tokens: torch.Tensor, batch_size: int, dtype, progress: bool) -> torch.Tensor:
    """Pooled text features, batched by length (each batch is cut to its longest text)."""
    order = (tokens != model.text.config.pad_token_id).sum(dim=1).argsort()
    pooled = _encode(lambda b: text_pooled(model, b), tokens[order].split(batch_size),
                     "cache text features", dtype, progress)
    out = torch.empty_like(pooled)
    out[order] = pooled
    return out


# ----------------------------------------------------------------------------- GeoBridge
def bridge_start(bridge: nn.Module, k: int) -> int:
    """Index of the first trainable stage of GeoBridge's view encoders (their last ``k`` train)."""
    encoder = next(iter(bridge.encoders.values()))
    trunk = getattr(encoder, "trunk", None)
    if trunk is None or not hasattr(trunk, "blocks"):
        raise ConfigError("cache_features needs the pretrained-towers model (geotextloc-minilm-mnv2)")
    if not 0 <= k <= len(trunk.blocks):
        raise ConfigError(f"train_last_k={k}: the image towers have {len(trunk.blocks)} stages")
    return len(trunk.blocks) - k


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
        maps[view] = _load_or_make(file, lambda: _encode(
            lambda b: image_stem(encoder, b, start), tiles(unique, quads.transforms[view], batch_size),
            f"cache {view} features", dtype, progress, total=-(-len(unique) // batch_size)).half())
    texts = [r.text or "" for r in quads.records]
    text_file = folder / f"text-{cache_key(cfg, 'text', texts)}.safetensors" if folder else None
    tokens = quads.tokenizer(texts)
    pooled = _load_or_make(text_file, lambda: _by_length(bridge.text, tokens, batch_size, dtype, progress))
    return CachedQuadruples(maps, index, pooled, torch.tensor([bool(t) for t in texts]))


# ----------------------------------------------------------------------------- evaluation
# Every run of a grid shares the locked parts, so evaluation memoises them per process: the
# image stem's feature maps per tile and the text tower's pooled output per text, keyed by a
# fingerprint of the weights that made them (a fine-tuned stem or tower gets its own entries).
EVAL_STEM_STAGES = 5  # the stages the tiny profile locks (train_last_k: 2 of 7)
_MEMO: dict = {}
MEMO_LIMIT = 200_000  # entries; the memo is cleared beyond this


def towers_model(model: nn.Module) -> bool:
    try:
        _trunk(model)
        return True
    except ConfigError:
        return False


def _fingerprint(modules) -> str:
    values = [t.detach().double().sum().item() for m in modules for t in [*m.parameters(), *m.buffers()]]
    return hashlib.sha256(json.dumps(values).encode()).hexdigest()[:16]


def _memoised(keys: list, compute) -> list:
    missing = [i for i, key in enumerate(keys) if key not in _MEMO]
    if missing:
        if len(_MEMO) + len(missing) > MEMO_LIMIT:
            _MEMO.clear()
            missing = list(range(len(keys)))
        for i, value in zip(missing, compute(missing)):
            _MEMO[keys[i]] = value
    return [_MEMO[key] for key in keys]


@torch.no_grad()
def embed_images(model: nn.Module, paths: list[Path], transform, batch_size: int = 64,
                 progress: bool = True) -> torch.Tensor:
    """L2-normalised image features = tail(memoised stem(tile)), equal to ``encode_image``."""
    _trunk(model)
    return embed_visual(model.visual, paths, transform, batch_size, progress)


@torch.no_grad()
def embed_visual(visual: nn.Module, paths: list[Path], transform, batch_size: int = 64,
                 progress: bool = True) -> torch.Tensor:
    """:func:`embed_images` for one image tower (``model.visual`` or a GeoBridge view encoder)."""
    trunk = visual.trunk
    stem = [trunk.conv_stem, trunk.bn1, *trunk.blocks[:EVAL_STEM_STAGES]]
    tag = ("image", _fingerprint(stem), repr(transform))
    keys = [(*tag, str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in map(Path, paths)]

    def compute(missing):
        todo = [Path(paths[i]) for i in missing]
        maps = _encode(lambda b: image_stem(visual, b, EVAL_STEM_STAGES), tiles(todo, transform, batch_size),
                       "embed gallery", None, progress, total=-(-len(todo) // batch_size))
        return list(maps.half())

    maps = torch.stack(_memoised(keys, compute))
    out = [image_tail(visual, chunk.float(), EVAL_STEM_STAGES) for chunk in maps.split(batch_size)]
    return F.normalize(torch.cat(out), dim=-1)


@torch.no_grad()
def embed_texts(model: nn.Module, texts, tokenizer, batch_size: int = 64, progress: bool = True) -> torch.Tensor:
    """L2-normalised text features = proj(memoised pooled text), equal to ``encode_text``."""
    tag = ("text", _fingerprint([model.text.transformer]), model.text.context_length)
    keys = [(*tag, text) for text in texts]

    def compute(missing):
        tokens = tokenizer([texts[i] for i in missing])
        return list(_by_length(model, tokens, batch_size, None, progress))

    pooled = torch.stack(_memoised(keys, compute))
    return F.normalize(model.text.proj(pooled), dim=-1)


def bridge_embedder(bridge: nn.Module, transforms, tokenizer, batch_size: int = 64, progress: bool = True):
    """An ``embed(records, kinds)`` for :func:`geotextloc.eval.multiview.evaluate_multiview`
    that reuses the locked stems and text tower across the runs of a grid, or None when
    ``bridge`` is not over the towers model (then every image runs through its whole tower)."""
    if not all(hasattr(getattr(v, "trunk", None), "blocks") for v in bridge.encoders.values()) \
            or not hasattr(getattr(bridge.text, "text", None), "pooler"):
        return None
    from geotextloc.eval.multiview import TEXT, Embedded

    def embed(records, kinds):
        was_training = bridge.training
        bridge.eval()
        out = {}
        try:
            for kind in kinds:
                if kind == TEXT:
                    chosen = [r for r in records if getattr(r, "text", None)]
                    features = embed_texts(bridge.text, [r.text for r in chosen], tokenizer, batch_size, progress)
                else:
                    chosen = [r for r in records if kind in r.images]
                    features = embed_visual(bridge.encoders[kind], [Path(r.images[kind]) for r in chosen],
                                            transforms[kind], batch_size, progress)
                if chosen:
                    out[kind] = Embedded([r.name for r in chosen], features.float().numpy())
        finally:
            bridge.train(was_training)
        return out

    return embed
