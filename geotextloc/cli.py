"""The ``geotextloc`` command.

Thin on purpose: each command group lives next to the code it drives, in a module that
defines ``register(subparsers)``; this file only collects them, parses, and turns a
:class:`~geotextloc.errors.GeotextlocError` into one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from geotextloc import __version__
from geotextloc.errors import GeotextlocError

# Modules that add sub-commands; each defines ``register(subparsers)``.
COMMAND_MODULES = [
    "geotextloc.data.commands",
    "geotextloc.eval.commands",
    "geotextloc.reports",
    "geotextloc.train.commands",
    "geotextloc.explain.commands",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="geotextloc", description="Geo-localization from natural language."
    )
    parser.add_argument("--version", action="version", version=f"geotextloc {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except GeotextlocError as err:
        print(f"geotextloc: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("geotextloc: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
