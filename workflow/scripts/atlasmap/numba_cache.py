"""numba's on-disk cache for umap-learn and pynndescent: their functions compiled by
the first job and loaded by the next ones, instead of compiled afresh in every process."""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
from collections.abc import Iterator

log = logging.getLogger(__name__)

# The umap-learn numba kernels our path calls, which it compiles afresh in every
# process (no cache=True): about 10 s of each job's time, whatever its size.
UMAP_KERNELS = {
    "umap.layouts": ("_nb_optimize_layout_euclidean_single_epoch",),
    "umap.umap_": ("smooth_knn_dist", "compute_membership_strengths"),
}
# Packages whose numba functions are compiled with numba's on-disk cache: pynndescent
# (which umap-learn imports) compiles some 80 distance functions with explicit
# signatures, so at import time, without a cache: about 6 s of every UMAP job.
NUMBA_CACHED_PACKAGES = ("umap", "pynndescent")


@contextlib.contextmanager
def numba_cache_for(packages: tuple[str, ...]) -> Iterator[None]:
    """While importing ``packages``, have their ``numba.njit``/``numba.jit`` functions
    cached on disk (``cache=True`` where they do not say otherwise)."""
    import numba

    originals = {name: getattr(numba, name) for name in ("njit", "jit")}

    def with_cache(decorator):
        @functools.wraps(decorator)
        def decorate(*args, **kwargs):
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller.split(".")[0] in packages:
                kwargs.setdefault("cache", True)
            return decorator(*args, **kwargs)

        return decorate

    for name, decorator in originals.items():
        setattr(numba, name, with_cache(decorator))
    try:
        yield
    finally:
        for name, decorator in originals.items():
            setattr(numba, name, decorator)


@functools.cache
def cache_umap_kernels() -> list[str]:
    """Have numba keep umap-learn's and pynndescent's compiled functions on disk (beside
    them, or in numba's user-wide cache where that is read-only), so that only the
    first job compiles them. Returns the kernels of our path now cached; a kernel
    umap-learn no longer has, or a disk numba cannot write to, leaves that kernel
    compiled per process as before."""
    import importlib

    if "umap" not in sys.modules:
        with numba_cache_for(NUMBA_CACHED_PACKAGES):
            import umap  # noqa: F401
    cached = []
    for module_name, names in UMAP_KERNELS.items():
        module = importlib.import_module(module_name)
        for name in names:
            kernel = getattr(module, name, None)
            try:
                kernel.enable_caching()
            except (AttributeError, RuntimeError) as err:  # not a dispatcher; no cache locator
                log.warning("umap-learn's %s.%s compiled per process: %s", module_name, name, err)
                continue
            cached.append(f"{module_name}.{name}")
    return cached
