"""Local stand-ins for the services geotextloc talks to, for offline runs and tests.

**These are not the services.** Each is a small HTTP server on 127.0.0.1, in a thread of the
calling process, that answers the requests geotextloc sends in the form the real service
expects, so that the code under test runs unchanged against it:

* :mod:`geotextloc.testing.imagery` — :class:`~geotextloc.testing.imagery.FakeImagery`, for
  Google's Street View Static and Maps Static APIs and XYZ/WMTS tile servers
  (``geotextloc data materialize``), serving images drawn from a release on disk, with
  injectable faults (429 with ``Retry-After``, 500);
* :mod:`geotextloc.testing.hub` — :class:`~geotextloc.testing.hub.FakeHub`, for the Hugging
  Face Hub (``geotextloc data publish``, ``datasets.load_dataset`` through ``HF_ENDPOINT``);
* :mod:`geotextloc.testing.release` — :func:`~geotextloc.testing.release.public_release`: what
  a user downloading CVG-Text has (texts and file names, no images), made from a release or
  embedded build on disk.

Notebook 07 and the tests use them; nothing else in the package imports them.
"""
