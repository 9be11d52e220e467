"""The compiled kernels of :mod:`atlasmap.genes`: moving a sparse count matrix's
columns onto a model's genes, and the per-cell quantile bins. One pass over each
cell's stored counts, cells in parallel; module-level functions, so that numba
caches them on disk and only the first job compiles them (as
:mod:`atlasmap.refine_kernel`), and importing :mod:`atlasmap.genes` does not
import numba.

The arrays are a CSR matrix's ``indptr``, ``indices`` and ``data``; rows are read
by index ranges, never sliced inside the parallel loops (a slice takes a
reference to the whole array, an atomic count every thread contends for)."""

import numba
import numpy as np

# The lowest set bit of a 64-bit word, found by a de Bruijn multiply: the product's
# top six bits are distinct for each of the 64 single-bit words.
_DE_BRUIJN = np.uint64(0x03F79D71B4CB0A89)
_LOWEST_BIT = np.zeros(64, dtype=np.int64)
for _bit in range(64):
    _LOWEST_BIT[((1 << _bit) * 0x03F79D71B4CB0A89 % 2**64) >> 58] = _bit
ROWS_PER_TASK = 1024


@numba.njit(inline="always")
def _scatter_row(indptr, indices, data, position, i, words, dense):
    """Row ``i``'s kept entries into ``dense`` (summed per output column) and their
    columns into the bitmap ``words``; returns the first and last words set."""
    first, last = words.shape[0], -1
    for p in range(indptr[i], indptr[i + 1]):
        column = position[indices[p]]
        if column >= 0:
            word = column >> 6
            words[word] |= np.uint64(1) << np.uint64(column & 63)
            dense[column] += data[p]
            first, last = min(first, word), max(last, word)
    return first, last


@numba.njit(inline="always")
def _gather_row(words, dense, first, last, out_indices, out_data, start):
    """The scattered row back, in column order and without zeros, written from
    ``start``; ``words`` and ``dense`` left zero for the next row. Returns its end."""
    end = start
    one = np.uint64(1)
    for word in range(first, last + 1):
        bits = words[word]
        while bits:
            lowest = bits & (~bits + one)
            column = word * 64 + _LOWEST_BIT[(lowest * _DE_BRUIJN) >> np.uint64(58)]
            if dense[column] != 0:
                out_indices[end] = column
                out_data[end] = dense[column]
                end += 1
            dense[column] = 0
            bits ^= lowest
        words[word] = 0
    return end


@numba.njit(parallel=True, cache=True)
def select_columns(indptr, indices, data, position, n_columns):
    """Column ``c`` of the input becomes column ``position[c]`` of the output, or is
    dropped where that is negative. Returns the output's ``indptr``, ``indices`` and
    ``data``: columns sorted in each row, entries of one output column summed,
    zeros dropped (what scipy's product with a 0/1 selection matrix gives).

    Each row's kept entries are scattered into a dense row and a bitmap of its
    columns, then read back in column order, word by word of the bitmap: no sort."""
    n_rows = indptr.shape[0] - 1
    bound = np.zeros(n_rows + 1, dtype=np.int64)
    for i in numba.prange(n_rows):
        kept = 0
        for p in range(indptr[i], indptr[i + 1]):
            kept += position[indices[p]] >= 0
        bound[i + 1] = kept
    bound = np.cumsum(bound)
    out_indices = np.empty(bound[n_rows], dtype=np.int32)
    out_data = np.empty(bound[n_rows], dtype=data.dtype)
    lengths = np.zeros(n_rows + 1, dtype=np.int64)
    n_tasks = (n_rows + ROWS_PER_TASK - 1) // ROWS_PER_TASK
    for task in numba.prange(n_tasks):
        words = np.zeros((n_columns + 63) // 64, dtype=np.uint64)
        dense = np.zeros(n_columns, dtype=data.dtype)
        for i in range(task * ROWS_PER_TASK, min(n_rows, (task + 1) * ROWS_PER_TASK)):
            first, last = _scatter_row(indptr, indices, data, position, i, words, dense)
            end = _gather_row(words, dense, first, last, out_indices, out_data, bound[i])
            lengths[i + 1] = end - bound[i]
    out_indptr = np.cumsum(lengths)
    if out_indptr[n_rows] == bound[n_rows]:
        return out_indptr, out_indices, out_data
    # Zeros or columns stored twice: fewer entries than counted, packed row by row.
    packed_indices = np.empty(out_indptr[n_rows], dtype=np.int32)
    packed_data = np.empty(out_indptr[n_rows], dtype=data.dtype)
    for i in numba.prange(n_rows):
        for k in range(lengths[i + 1]):
            packed_indices[out_indptr[i] + k] = out_indices[bound[i] + k]
            packed_data[out_indptr[i] + k] = out_data[bound[i] + k]
    return out_indptr, packed_indices, packed_data


@numba.njit(inline="always")
def _row_edges(values, quantiles):
    """``np.quantile(values, quantiles)`` of sorted ``values``, to the bit: numpy's
    linear method, index (n - 1) q, and its _lerp, which interpolates from the upper
    neighbour's side from a weight of 0.5 on."""
    n = values.shape[0]
    edges = np.empty(quantiles.shape[0], dtype=np.float64)
    for j in range(quantiles.shape[0]):
        virtual = (n - 1) * quantiles[j]
        below = np.floor(virtual)
        lower = min(int(below), n - 1)
        upper = min(lower + 1, n - 1)
        gamma = virtual - below
        a, b = values[lower], values[upper]
        diff = b - a
        edges[j] = b - diff * (1 - gamma) if gamma >= 0.5 else a + diff * gamma
    return edges


@numba.njit(inline="always")
def _edges_at_or_below(edges, value):
    """``np.searchsorted(edges, value, side="right")``: ``np.digitize``'s bin."""
    low, high = 0, edges.shape[0]
    while low < high:
        middle = (low + high) // 2
        if edges[middle] <= value:
            low = middle + 1
        else:
            high = middle
    return low


@numba.njit(parallel=True, cache=True)
def quantile_bin_rows(indptr, data, quantiles):
    """Each stored non-zero value's bin among its own row's non-zero values: the
    number of the row's ``quantiles`` (``np.quantile``) at or below it, as
    ``np.digitize`` counts. Zeros stay 0."""
    binned = np.zeros(data.shape[0], dtype=np.float32)
    for i in numba.prange(indptr.shape[0] - 1):
        start, end = indptr[i], indptr[i + 1]
        nonzero = 0
        for p in range(start, end):
            nonzero += data[p] != 0
        if nonzero == 0:
            continue
        values = np.empty(nonzero, dtype=np.float64)
        k = 0
        for p in range(start, end):
            if data[p] != 0:
                values[k] = data[p]
                k += 1
        values.sort()
        edges = _row_edges(values, quantiles)
        for p in range(start, end):
            if data[p] != 0:
                binned[p] = _edges_at_or_below(edges, np.float64(data[p]))
    return binned
