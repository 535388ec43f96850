"""Images of records: their paths per view, decoding with a clear error, and a gallery dataset.

A record is anything with ``name`` and ``images`` (image kind -> path), e.g.
:class:`geotextloc.data.release.Record` or :class:`geotextloc.data.geoloc_manifest.GeoLocRecord`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from geotextloc.errors import DataError
from geotextloc.views import image_kind


def image_paths(records: Sequence, view: str) -> list[Path]:
    """Each record's image of ``view``; DataError names the first record without one."""
    kind = image_kind(view)
    paths = []
    for record in records:
        path = record.images.get(kind)
        if path is None:
            raise DataError(
                f"record {record.name!r} has no {kind!r} image (has: {', '.join(record.images) or 'none'}); "
                "choose another view or rebuild the dataset"
            )
        paths.append(Path(path))
    return paths


def load_image(path: Path) -> Image.Image:
    """The image at ``path`` as RGB; DataError naming the file if it cannot be decoded."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except OSError as err:
        raise DataError(f"{path}: cannot read image ({err.__class__.__name__}); re-fetch or remove it") from None


def one_per_name(records: Sequence) -> list:
    """The gallery of ``records``: one item per place name, the first record of each kept."""
    first: dict = {}
    for record in records:
        first.setdefault(record.name, record)
    return list(first.values())


class Images(Dataset):
    """Item i = transform(image at paths[i]): the gallery side of retrieval."""

    def __init__(self, paths: Sequence[Path], transform):
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return self.transform(load_image(self.paths[i]))


def image_batches(paths: Sequence[Path], transform, batch_size: int):
    """Batches (stacked tensors) of ``transform(load_image(path))``, in order."""
    for i in range(0, len(paths), batch_size):
        yield torch.stack([transform(load_image(p)) for p in paths[i : i + batch_size]])
