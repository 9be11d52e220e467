"""Held-out folds of the atlas: groups of whole batches, each held out in turn, for the
calls' calibration (calls) and the label-blind models trained beside the reference
(reference), which must agree on them."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)


def calibration_folds(groups: np.ndarray, n_folds: int, seed: int) -> list[np.ndarray]:
    """Cell indices of each held-out fold: whole batches when there are several."""
    unique = pd.unique(groups)
    rng = np.random.default_rng(seed)
    if len(unique) >= 2:
        order = rng.permutation(unique)
        n = min(n_folds, len(unique))
        return [np.flatnonzero(np.isin(groups, order[i::n])) for i in range(n)]
    log.warning("the reference has one batch: calibration folds are random cells, not batches")
    cells = rng.permutation(len(groups))
    return [np.sort(cells[i::n_folds]) for i in range(n_folds)]


def fold_of_cells(folds: list[np.ndarray], n_cells: int) -> np.ndarray:
    """Per cell, the index of the fold holding it (-1: none)."""
    fold_of = np.full(n_cells, -1)
    for i, held in enumerate(folds):
        fold_of[held] = i
    return fold_of
