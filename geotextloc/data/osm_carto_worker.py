"""Render map images with mapnik and openstreetmap-carto; run by the *system* Python.

Debian's mapnik binding (``python3-mapnik``) belongs to ``/usr/bin/python3``, not to the
project's virtual environment, so :mod:`geotextloc.data.osm_render` runs this file as a script
in a subprocess. It imports nothing from ``geotextloc`` (the system Python has none of its
dependencies) and only the standard library besides ``mapnik``.

Input (JSON on stdin)::

    {"style": "/usr/share/openstreetmap-carto-common/style.xml",
     "patterns": "/path/to/patterns" | null,    # where ``file="patterns/..."`` points
     "db": {"host": SOCKET_DIR, "dbname": NAME, "user": "postgres"},
     "fonts": ["/usr/share/fonts"],
     "buffer": 128,                               # pixels rendered around each image (labels)
     "jobs": [{"box": [minx, miny, maxx, maxy],   # EPSG:3857 metres
               "width": W, "height": H, "scale": 1.0, "format": "png256",
               "crops": [{"x": 0, "y": 0, "w": W, "h": H, "path": "/abs/out.png"}]}]}

Each job is one mapnik render (a metatile or one view); each crop is written to a temporary
file next to its path and renamed (never half-written). One line ``done <i>`` per finished
job goes to stdout (the caller's progress bar); an error is one line on stderr and exit 1.
"""

import json
import os
import re
import sys


def prepare_style(text, db, patterns):
    """The style XML with every PostGIS datasource pointed at ``db`` and, where given, the
    pattern images at ``patterns`` (Debian's openstreetmap-carto 5.7.0 omits that folder)."""
    params = "".join(f'<Parameter name="{k}"><![CDATA[{v}]]></Parameter>'
                     for k, v in sorted(db.items()) if k != "dbname")
    text, n = re.subn(r'<Parameter name="dbname"><!\[CDATA\[[^\]]*\]\]></Parameter>',
                      lambda _: f'<Parameter name="dbname"><![CDATA[{db["dbname"]}]]></Parameter>{params}', text)
    if n == 0:
        raise ValueError("the style has no PostGIS datasource (no dbname parameter)")
    if patterns:
        text = text.replace('file="patterns/', f'file="{patterns.rstrip("/")}/')
    return text


def main():
    import mapnik

    spec = json.load(sys.stdin)
    mapnik.logger.set_severity(getattr(mapnik.severity_type, "Error"))
    for folder in spec.get("fonts", []):
        if os.path.isdir(folder):
            mapnik.register_fonts(folder)
    with open(spec["style"], encoding="utf-8") as f:
        xml = prepare_style(f.read(), spec["db"], spec.get("patterns"))
    m = mapnik.Map(256, 256)
    mapnik.load_map_from_string(m, xml, False, os.path.dirname(os.path.abspath(spec["style"])) + "/")
    m.buffer_size = int(spec.get("buffer", 128))
    for i, job in enumerate(spec["jobs"]):
        m.resize(job["width"], job["height"])
        m.zoom_to_box(mapnik.Box2d(*job["box"]))
        image = mapnik.Image(job["width"], job["height"])
        mapnik.render(m, image, float(job.get("scale", 1.0)))
        for crop in job["crops"]:
            path = crop["path"]
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}.tmp")
            try:
                image.view(crop["x"], crop["y"], crop["w"], crop["h"]).save(tmp, job.get("format", "png256"))
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        print(f"done {i}", flush=True)


if __name__ == "__main__":
    try:
        main()
    except Exception as err:  # one line for the caller, which names the stack and the fix
        print(f"{type(err).__name__}: {' '.join(str(err).split())}", file=sys.stderr)
        sys.exit(1)
