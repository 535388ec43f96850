"""The one vocabulary of views and query kinds (no torch import: configs and CLIs use it).

CrossText2Loc galleries are map tiles of one *gallery view*: ``sat`` (satellite) or ``osm``
(OpenStreetMap), stored in a record's ``images`` under the *image kind* ``satellite`` / ``osm``.
GeoBridge has three *image views* of a location, ``drone``, ``street`` (the panorama) and
``satellite``, plus its ``text``; a retrieval *direction* such as ``P2S`` names the query and
gallery kinds by their letters (D, P, S, T).
"""

from __future__ import annotations

DRONE, STREET, SATELLITE, OSM, TEXT = "drone", "street", "satellite", "osm", "text"
FUSION = "fusion"
QUERIES = (TEXT, STREET, FUSION)  # CrossText2Loc's query kinds: a text, a street view, or both
FUSIONS = ("sum", "mlp")  # early-fusion heads (geotextloc.models.query.Fusion)
GEOBRIDGE_VIEWS = (DRONE, STREET, SATELLITE)
GALLERY_VIEWS = ("sat", "osm")  # CrossText2Loc config/CLI spelling
IMAGE_KINDS = {"sat": SATELLITE, "osm": OSM}  # gallery view -> record image kind
LETTER = {DRONE: "D", STREET: "P", SATELLITE: "S", TEXT: "T"}
IMAGE_DIRECTIONS = ("D2S", "S2D", "P2S", "S2P", "D2P", "P2D")  # the GeoBridge paper's table order
TEXT_DIRECTIONS = ("T2D", "T2P", "T2S")
DIRECTIONS = {f"{LETTER[u]}2{LETTER[v]}": (u, v) for u in (*GEOBRIDGE_VIEWS, TEXT) for v in GEOBRIDGE_VIEWS
              if u != v}


def query_kind(config: dict | None) -> str:
    """The query kind a checkpoint's training config was trained for (text for released weights)."""
    return (config or {}).get("query", TEXT)


def image_kind(view: str) -> str:
    """``sat`` -> ``satellite``, ``osm`` -> ``osm``; other image kinds pass through."""
    return IMAGE_KINDS.get(view, view)


