"""geotextloc: geo-localization from natural language (CVG-Text / CrossText2Loc, GeoBridge).

The public API (:mod:`geotextloc.api`): ``load``, ``embed``, ``evaluate``, ``search``; imported
on first use, so ``import geotextloc`` stays light.
"""

__version__ = "0.1.0"
__all__ = ["load", "embed", "evaluate", "search", "Model"]


def __getattr__(name: str):
    if name in __all__:
        from geotextloc import api

        return getattr(api, name)
    raise AttributeError(f"module 'geotextloc' has no attribute {name!r}")
