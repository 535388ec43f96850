"""Records -> tensors: (image of one view, text tokens) pairs for CrossText2Loc, (tile, street
view [+ text tokens]) pairs for its street and fusion queries, and (drone, street, satellite,
text + masks) quadruples for GeoBridge.

A record is anything with ``name``, ``text`` and ``images`` (kind -> path), e.g.
:class:`geotextloc.data.release.Record` or :class:`geotextloc.data.geoloc_manifest.GeoLocRecord`.
The tokenizer is open_clip's at the model's context length (300 after EPE), so long
descriptions are cut only beyond that.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from geotextloc.data.images import image_paths, load_image
from geotextloc.errors import DataError
from geotextloc.views import GEOBRIDGE_VIEWS, STREET, TEXT


class Pairs(Dataset):
    """Item i = (transform(image of record i's view), tokenizer(record i's text)) as tensors.

    ``cache=True`` decodes and transforms every image once, up front (the transform must then be
    deterministic: no augmentation), and tokenises every text once; items are then views into
    memory. Several records may share one image file (two texts of one tile): it is read once.
    """

    def __init__(self, records: Sequence, view: str, transform, tokenizer, cache: bool = False,
                 progress: bool = True):
        self.paths = image_paths(records, view)
        self.texts = [record.text for record in records]
        self.transform = transform
        self.tokenizer = tokenizer
        self.images = self.tokens = None
        if cache:
            self.images, self.index = _transformed(self.paths, transform, "cache tiles", progress)
            self.tokens = tokenizer(self.texts)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.images is not None:
            return self.images[self.index[i]], self.tokens[i]
        return self.transform(load_image(self.paths[i])), self.tokenizer([self.texts[i]])[0]


class QueryPairs(Dataset):
    """Item i = (tile of record i's view, query) for street and fusion queries
    (:mod:`geotextloc.models.query`): the query is record i's street view (2:1, through
    ``street_transform``), or with a ``tokenizer`` (street view, text tokens).

    ``cache=True`` decodes and transforms every image once, as :class:`Pairs` does."""

    def __init__(self, records: Sequence, view: str, transform, street_transform, tokenizer=None,
                 cache: bool = False, progress: bool = True):
        self.paths = image_paths(records, view)
        self.street_paths = image_paths(records, STREET)
        self.texts = [record.text for record in records] if tokenizer is not None else None
        self.transform, self.street_transform, self.tokenizer = transform, street_transform, tokenizer
        self.cached = None
        if cache:
            tiles, streets = (_transformed(paths, t, desc, progress) for paths, t, desc in (
                (self.paths, transform, "cache tiles"), (self.street_paths, street_transform, "cache street views")))
            self.cached = (tiles, streets, tokenizer(self.texts) if tokenizer is not None else None)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        if self.cached is not None:
            (tiles, tile_at), (streets, street_at), tokens = self.cached
            tile, street = tiles[tile_at[i]], streets[street_at[i]]
            return tile, street if tokens is None else (street, tokens[i])
        tile = self.transform(load_image(self.paths[i]))
        street = self.street_transform(load_image(self.street_paths[i]))
        return tile, street if self.tokenizer is None else (street, self.tokenizer([self.texts[i]])[0])


def _transformed(paths: Sequence[Path], transform, desc: str, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(stacked transformed images, index of each path's image): every distinct file once."""
    unique = list(dict.fromkeys(paths))
    slot = {path: k for k, path in enumerate(unique)}
    loaded = [transform(load_image(path)) for path in tqdm(unique, desc=desc, disable=not progress, leave=False)]
    return torch.stack(loaded), torch.tensor([slot[path] for path in paths])


def drop_tokens(tokens: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Word dropout on a (batch, context) tensor of token ids, 0-padded as open_clip pads.

    Each token between the first (start of text) and the end-of-text token (the row's largest
    id, as open_clip's pooling finds it) is removed with probability ``p``; the kept tokens
    close ranks (the sequence gets shorter, positions stay contiguous) and the row is re-padded
    with 0. Start and end tokens always stay, so every row still has its pooled token.
    """
    if p <= 0:
        return tokens
    length = tokens.shape[1]
    positions = torch.arange(length, device=tokens.device)
    end = tokens.argmax(dim=1, keepdim=True)
    body = (positions > 0) & (positions < end)
    drop = body & (torch.rand(tokens.shape, generator=generator, device=tokens.device) < p)
    keep = (tokens != 0) & ~drop
    # stable partition: kept tokens first, in order; then zeros
    order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices
    return torch.where(torch.gather(keep, 1, order), torch.gather(tokens, 1, order), torch.zeros_like(tokens))


class Quadruples(Dataset):
    """Item i = (images, tokens, masks) for GeoBridge, from record i:

    ``images``: {view: [3, H, W]} for drone, street, satellite (zeros where the record lacks the
    view), ``tokens``: [context] (all zeros without text), ``masks``: {view | "text": bool}.
    Every item has every key, so every batch (and every DDP rank) passes the same keys; a
    missing view is a False mask, as :class:`geotextloc.models.geobridge.GeoBridgeLoss` wants.
    """

    def __init__(self, records: Sequence, transforms: Mapping, tokenizer, image_size: int | tuple[int, int]):
        self.records = list(records)
        self.transforms = dict(transforms)
        self.tokenizer = tokenizer
        self.size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.context = int(tokenizer(["x"]).shape[-1])
        for record in self.records:
            if not any(v in record.images for v in GEOBRIDGE_VIEWS):
                raise DataError(f"record {record.name!r} has none of the views {', '.join(GEOBRIDGE_VIEWS)}; "
                                "remove it or add its images")

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        record = self.records[i]
        images, masks = {}, {}
        for view in GEOBRIDGE_VIEWS:
            path = record.images.get(view)
            masks[view] = path is not None
            images[view] = self.transforms[view](load_image(Path(path))) if path is not None \
                else torch.zeros(3, *self.size)
        masks[TEXT] = bool(record.text)
        tokens = self.tokenizer([record.text])[0] if record.text else torch.zeros(self.context, dtype=torch.long)
        return images, tokens, masks


VAL_BUFFER_M = 60.0  # a tile's width: no training tile overlaps a validation tile
DENSE_SUFFIX = "-dense"  # training-only versions (geotextloc data densify): never validation places


def validation_split(records: Sequence, share: float, seed: int, buffer_m: float = VAL_BUFFER_M):
    """(train, validation) carved from training records, spatially clean.

    ``share`` of the released training places (distinct coordinates, dense training-only
    places excluded) are drawn with ``seed`` as validation places; their records form the
    validation split, and every remaining training record closer than ``buffer_m`` to one of
    them is dropped (neighbouring tiles would otherwise show the validation tile's content).
    """
    import numpy as np

    places = sorted({(r.lat, r.lon) for r in records if not getattr(r, "version", "").endswith(DENSE_SUFFIX)})
    if not places or share <= 0:
        return list(records), []
    rng = np.random.default_rng(seed)
    count = max(1, round(share * len(places)))
    chosen = {places[i] for i in rng.choice(len(places), size=count, replace=False)}
    val = [r for r in records if (r.lat, r.lon) in chosen and not getattr(r, "version", "").endswith(DENSE_SUFFIX)]
    centre = np.radians(np.array(sorted(chosen)))  # (m, 2) lat, lon
    rest = [r for r in records if (r.lat, r.lon) not in chosen]
    if not rest:
        return [], val
    here = np.radians(np.array([(r.lat, r.lon) for r in rest]))
    # equirectangular distance, exact enough below a few km
    dy = here[:, None, 0] - centre[None, :, 0]
    dx = (here[:, None, 1] - centre[None, :, 1]) * np.cos(centre[None, :, 0])
    near = (np.hypot(dx, dy) * 6_371_000.0 < buffer_m).any(axis=1)
    return [r for r, n in zip(rest, near) if not n], val
