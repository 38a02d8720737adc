"""Batching for PU training: a fixed number of U rows and of S rows in every batch."""

from __future__ import annotations

import numpy as np

from .image_data import PUDataError


class PUBatchSampler:
    """Yields batches of ``unlabeled_batch_size`` U rows followed by ``sensitive_batch_size`` S rows.

    An epoch is one pass over a fresh permutation of U (the last incomplete batch is dropped). S is
    drawn from its own stream, a new permutation for every pass over S, independent of U's epochs.
    Everything is a pure function of (seed, epoch, batch index), so ``batch(epoch, i)`` can be
    recomputed after a resume and skipping batches costs nothing. Items are (row, aug_seed) pairs.
    """

    def __init__(
        self, unlabeled_rows, sensitive_rows, unlabeled_batch_size: int, sensitive_batch_size: int, seed: int = 0
    ):
        self.unlabeled_rows = np.asarray(unlabeled_rows, dtype=np.int64)
        self.sensitive_rows = np.asarray(sensitive_rows, dtype=np.int64)
        if unlabeled_batch_size < 1:
            raise PUDataError("--train_batch_size must be at least 1.")
        if len(self.unlabeled_rows) < unlabeled_batch_size:
            raise PUDataError(
                f"U has {len(self.unlabeled_rows)} rows, fewer than --train_batch_size "
                f"{unlabeled_batch_size}: lower --train_batch_size or add unlabeled images."
            )
        if sensitive_batch_size > 0 and len(self.sensitive_rows) == 0:
            raise PUDataError("--sensitive_batch_size > 0 but S is empty: add sensitive images.")
        self.unlabeled_batch_size = unlabeled_batch_size
        self.sensitive_batch_size = sensitive_batch_size
        self.batch_size = unlabeled_batch_size + sensitive_batch_size
        self.drop_last = True
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.unlabeled_rows) // self.unlabeled_batch_size

    def _sensitive_stream(self, start: int, count: int) -> list[int]:
        size = len(self.sensitive_rows)
        orders = {}  # one permutation per pass over S touched by this batch
        picked = []
        for position in range(start, start + count):
            cycle, offset = divmod(position, size)
            if cycle not in orders:
                orders[cycle] = np.random.default_rng([self.seed, 1, cycle]).permutation(size)
            picked.append(int(self.sensitive_rows[orders[cycle][offset]]))
        return picked

    def batch(self, epoch: int, index: int) -> list[tuple[int, int]]:
        order = np.random.default_rng([self.seed, 0, epoch]).permutation(len(self.unlabeled_rows))
        start = index * self.unlabeled_batch_size
        rows = [int(row) for row in self.unlabeled_rows[order[start : start + self.unlabeled_batch_size]]]
        if self.sensitive_batch_size:
            global_batch = epoch * len(self) + index
            rows += self._sensitive_stream(global_batch * self.sensitive_batch_size, self.sensitive_batch_size)
        aug_seeds = np.random.default_rng([self.seed, 2, epoch, index]).integers(0, 2**31 - 1, size=len(rows))
        return list(zip(rows, (int(seed) for seed in aug_seeds)))

    def __iter__(self):
        for index in range(len(self)):
            yield self.batch(self.epoch, index)
