"""The paper's PU protocol: a deterministic split function (the named presets live in :mod:`pu_diffusion.presets`).

A PU split of a labelled dataset (classes → normal / sensitive) is four disjoint index sets:

    unlabeled_normal     normal rows put into U
    unlabeled_sensitive  sensitive rows put into U (U = normal + sensitive, e.g. 10:1)
    sensitive            the labelled set S, disjoint from U
    test                 held-out normal rows that training never sees (for evaluation)
"""

from __future__ import annotations

import numpy as np

from .cli import UsageError


def make_pu_split(
    classes,
    normal_classes,
    n_unlabeled_normal: int,
    n_unlabeled_sensitive: int,
    n_sensitive: int,
    n_test: int,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Split row indices of a labelled dataset into U-normal, U-sensitive, S and a normal-only test set.

    Deterministic given ``seed``; the four sets are disjoint. Raises ValueError naming the count that
    does not fit when the dataset has too few normal or sensitive rows.
    """
    classes = np.asarray(list(classes))
    normal_mask = np.isin(classes, np.asarray(list(normal_classes), dtype=classes.dtype))
    rng = np.random.default_rng(seed)
    normal_rows = rng.permutation(np.flatnonzero(normal_mask))
    sensitive_rows = rng.permutation(np.flatnonzero(~normal_mask))
    need_normal = n_unlabeled_normal + n_test
    need_sensitive = n_unlabeled_sensitive + n_sensitive
    if need_normal > len(normal_rows):
        raise UsageError(
            f"The split needs {need_normal} normal rows (unlabeled normal {n_unlabeled_normal} + test "
            f"{n_test}) but the dataset has {len(normal_rows)}: lower the counts."
        )
    if need_sensitive > len(sensitive_rows):
        raise UsageError(
            f"The split needs {need_sensitive} sensitive rows (unlabeled sensitive "
            f"{n_unlabeled_sensitive} + S {n_sensitive}) but the dataset has {len(sensitive_rows)}: "
            "lower the counts."
        )
    return {
        "unlabeled_normal": np.sort(normal_rows[:n_unlabeled_normal]),
        "test": np.sort(normal_rows[n_unlabeled_normal:need_normal]),
        "unlabeled_sensitive": np.sort(sensitive_rows[:n_unlabeled_sensitive]),
        "sensitive": np.sort(sensitive_rows[n_unlabeled_sensitive:need_sensitive]),
    }
