"""Weight averaging at the end of stage D: a running mean of tensors over a run's last steps."""

from __future__ import annotations

from typing import List, Optional, Sequence

from torch import Tensor


class TrailingMean:
    """The mean of some tensors over the last `fraction` of a run of `total` steps, updated
    once per step (the model's `average_fraction`; benchmarks/bench_averaging.py keeps several)."""

    def __init__(self, fraction: float, total: int):
        self.fraction = fraction
        self.total = total
        self.count = 0
        self.mean: Optional[List[Tensor]] = None

    def update(self, step: int, last_step: int, tensors: Sequence[Tensor]) -> None:
        """Takes in `tensors` as they are after `step` if it lies in the window that ends at
        `last_step` (the trainer's last step, which a resumed run shifts)."""
        if step < last_step + 1 - round(self.fraction * self.total):
            return
        self.count += 1
        if self.mean is None:
            self.mean = [t.detach().clone() for t in tensors]
        else:
            for mean, t in zip(self.mean, tensors):
                mean.add_(t.detach() - mean, alpha=1.0 / self.count)
