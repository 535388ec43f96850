"""What every benchmark here records beside its numbers: the machine and versions, and its own
section of RESULTS.md (between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->``)."""

from __future__ import annotations

import datetime as dt
import os
import platform
from importlib import metadata
from pathlib import Path

from geotextloc.files import atomic_write_text

RESULTS = Path(__file__).with_name("RESULTS.md")


def machine(packages: tuple[str, ...]) -> dict[str, str]:
    """Date (UTC), CPU, cores, load average, RAM and the versions of Python and ``packages``."""
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    mem_kib = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    versions = ", ".join(f"{name} {metadata.version(name)}" for name in packages)
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": f"{cpu}, {os.cpu_count()} cores (shared with other jobs)",
        "load": f"{os.getloadavg()[0]:.1f}",
        "ram": f"{mem_kib / 2**20:.1f} GiB",
        "versions": f"Python {platform.python_version()}, {versions}",
    }


def record(name: str, lines: list[str]) -> None:
    """Replace benchmark ``name``'s section of RESULTS.md (other sections are kept)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    old = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else "# Benchmark results\n"
    section = "\n".join([begin, *lines, end])
    if begin in old and end in old:
        new = old[: old.index(begin)] + section + old[old.index(end) + len(end) :]
    else:
        new = old.rstrip("\n") + "\n\n" + section + "\n"
    atomic_write_text(RESULTS, new)
