"""The compiled kernel of :func:`atlasmap.neighbours.refine_neighbours` (NN-descent's
local join), in a module of its own: numba caches a module-level function on disk, so
only the first job compiles it (a kernel defined in a closure is compiled afresh in
every process), and importing :mod:`atlasmap.neighbours` does not import numba."""

import numba
import numpy as np


# Rows are read by index, not sliced: a slice in the inner loop takes a reference
# to the whole array, an atomic count every thread contends for (5x the time).
@numba.njit(inline="always")
def distance(query, i, reference, c, manhattan):
    total = 0.0
    for t in range(query.shape[1]):
        diff = np.float64(query[i, t]) - np.float64(reference[c, t])
        total += abs(diff) if manhattan else diff * diff
    return total if manhattan else np.sqrt(total)


@numba.njit(inline="always")
def offer(best_i, best_d, filled, candidate, d):
    """Put ``candidate`` at distance ``d`` in the row's sorted list, if it is nearer
    than the list's last and not in it; returns the list's new length."""
    k = best_i.shape[0]
    if filled == k and d >= best_d[k - 1]:
        return filled
    for m in range(filled):
        if best_i[m] == candidate:
            return filled
    p = filled if filled < k else k - 1
    while p > 0 and best_d[p - 1] > d:  # equal distances keep their first-come order
        best_i[p], best_d[p] = best_i[p - 1], best_d[p - 1]
        p -= 1
    best_i[p], best_d[p] = candidate, d
    return min(filled + 1, k)


@numba.njit(parallel=True, cache=True)
def refine_rows(query, reference, indices, graph, manhattan):
    n_rows, k = indices.shape
    out_i = np.empty_like(indices)
    out_d = np.empty((n_rows, k), dtype=np.float64)
    for i in numba.prange(n_rows):
        best_i = np.empty(k, dtype=indices.dtype)
        best_d = np.empty(k, dtype=np.float64)
        filled = 0
        for a in range(k):
            c = indices[i, a]
            d = distance(query, i, reference, c, manhattan)
            filled = offer(best_i, best_d, filled, c, d)
        for a in range(k):
            j = indices[i, a]
            for b in range(graph.shape[1]):
                c = graph[j, b]
                d = distance(query, i, reference, c, manhattan)
                filled = offer(best_i, best_d, filled, c, d)
        for a in range(k):
            out_i[i, a], out_d[i, a] = best_i[a], best_d[a]
    return out_i, out_d
