"""What a user downloading CVG-Text has, made from a release on disk: texts and names, no images.

For offline runs and tests. The public CVG-Text release carries the descriptions
(``CVG-text/<version>/{train,test}.json``: image file name -> text; the names carry the
coordinates and panorama ids) but no imagery: Google's street views and satellite images may
not be redistributed. :func:`public_release` copies exactly those annotation files of some
versions of a release or embedded build into a fresh folder; ``geotextloc data materialize``
then completes it, e.g. against :class:`~geotextloc.testing.imagery.FakeImagery` serving the
source's images.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from geotextloc.data.release import SPLITS, ReleaseLayout, discover_versions
from geotextloc.errors import DataError
from geotextloc.files import atomic_write_bytes


def public_release(source: str | Path, dest: str | Path, versions: Sequence[str],
                   layout: ReleaseLayout | None = None) -> Path:
    """Copy the annotation files of ``versions`` (both splits where present) from the release
    ``source`` to the new folder ``dest``, and nothing else; return ``dest``."""
    source, dest, layout = Path(source), Path(dest), layout or ReleaseLayout()
    if dest.exists() and any(dest.iterdir()):
        raise DataError(f"{dest}: not empty; the public release goes into a fresh folder")
    on_disk = discover_versions(source, layout)
    if unknown := [v for v in versions if v not in on_disk]:
        raise DataError(f"{source}: no annotation files for {', '.join(unknown)} "
                        f"(it has {', '.join(on_disk) or 'none'}); pick versions it has")
    for version in versions:
        for split in SPLITS:
            src = layout.annotation_path(source, version, split)
            if src.is_file():
                atomic_write_bytes(layout.annotation_path(dest, version, split), src.read_bytes())
    return dest
