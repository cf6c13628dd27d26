"""Make the pip package ``tbb`` loadable for Numba's fork-safe tbb threading layer.

``pip install darknet_bn[tbb]`` puts ``libtbb.so.12`` in ``<prefix>/lib``, where
Numba's ``tbbpool`` extension (no RUNPATH) cannot find it, and
``LD_LIBRARY_PATH`` only helps if set before the process starts.  ``preload``
loads that file (``RTLD_GLOBAL``) at import, before ``_jit`` predicts the layer,
when the requested layer allows tbb, Numba has not started a layer, and the
loader cannot find TBB by itself (a system TBB is never loaded twice).  Every
failure is ignored.  docs/reliability.md.
"""
import ctypes
import os
import site
import sys

from numba import config

#: NUMBA_THREADING_LAYER values under which Numba may pick tbb.
TBB_ALLOWING = ("default", "tbb", "safe", "threadsafe", "forksafe")
#: Where pip and conda put the TBB runtime, relative to an installation prefix.
TBB_LIBRARIES = {"linux": os.path.join("lib", "libtbb.so.12"),
                 "darwin": os.path.join("lib", "libtbb.12.dylib")}


def search_prefixes():
    """The installation prefixes a pip ``tbb`` may live in: sys.prefix, exec_prefix, --user."""
    found = [sys.prefix, sys.exec_prefix]
    try:
        found.append(site.getuserbase())           # pip install --user tbb
    except Exception:                              # noqa: BLE001 - never break import
        pass
    return list(dict.fromkeys(p for p in found if p))


def preload(requested=None, prefixes=None):
    """Preload TBB (see the module doc) for the layer ``requested`` (default
    ``NUMBA_THREADING_LAYER``); returns the path loaded, or None; never raises."""
    try:
        if requested is None:
            requested = str(config.THREADING_LAYER).lower()
        relative = TBB_LIBRARIES.get(sys.platform.rstrip("0123456789"))
        if requested not in TBB_ALLOWING or relative is None:
            return None
        import numba
        try:
            numba.threading_layer()                # started: too late to help
            return None
        except ValueError:
            pass
        try:
            ctypes.CDLL(os.path.basename(relative))   # found without help: nothing to do
            return None
        except OSError:
            pass
        for prefix in (search_prefixes() if prefixes is None else prefixes):
            path = os.path.join(prefix, relative)
            if os.path.isfile(path):
                try:
                    ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
                    return path
                except OSError:
                    continue
    except Exception:                              # noqa: BLE001 - never break import
        pass
    return None


#: The TBB runtime preloaded for Numba at import, or None.
PRELOADED = preload()
