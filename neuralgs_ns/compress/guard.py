"""Stage D's step-size guard: restart fine-tuning at a smaller learning rate when its first
steps make the scene worse than the stage C fit it started from.

Why: no single learning rate suits every scene. Where stage C is far from the targets
(lego-200, 19.9 dB) the steps must be large (1e-3); where stage C is already close (the 50k
.ply, 27.6 dB) the same steps undo the fit (one Adam step at 1e-3 cost 3-7 dB there, and the
run ended anywhere between 27.8 and 30.4 dB by seed) while 1e-4 reached 30.7-31.1 dB. The
guard tells the two apart from the training loss itself.

Each step's loss is divided by the loss the stage C fit had on the same view: views differ
in difficulty by tens of percent, so raw losses of different views cannot be compared. The
guard watches the median of the last `span` such ratios for `window` steps after each
(re)start. It restarts fine-tuning (the caller puts the stage C weights back, clears the
optimiser's moments and scales the learning rate by `backoff`) when

- the median passes `blowup_limit` at any step: the steps are far too large; or
- at the window's last step the median is still above `settle_limit`: the run has not got
  below the fit it started from. Adam's first steps raise the loss for a while on every scene
  (lego-200, whose fit is far from the images and needs the large steps, by 11% over its
  first 15 steps); what separates the scenes is whether it comes back down. A short stage D
  skips this test (`fit_to`).

A median, not a mean: one view far above its reference (a view whose stage C loss is tiny,
or one that sees a flaw no other view sees) is no sign the steps are too large, while a moving
average of the ratios let a single view at 55-110x restart a run that was improving and leave
it fine-tuning at a tenth or a hundredth of its rate. A non-finite loss restarts at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import median
from typing import List

import torch
from torch import Tensor


@dataclass
class FineTuneGuard:
    view_losses: Tensor
    """[n_views] the stage C fit's loss on each training view."""
    blowup_limit: float = 2.0
    """Restart at once when the median loss ratio to stage C exceeds this."""
    settle_limit: float = 1.0
    """Restart when the median loss ratio is above this at the end of the window."""
    window: int = 100
    """Steps after each (re)start during which the guard watches."""
    max_restarts: int = 2
    """Restarts at most (learning rate divided by at most 1/backoff^max_restarts)."""
    backoff: float = 0.1
    """Learning-rate factor of each restart."""
    settle_min_steps: int = 2000
    """A stage D shorter than this keeps only the blow-up test (`fit_to`)."""
    span: int = 10
    """Steps whose ratios the median takes; fewer than span/2 outlying views among them
    change nothing."""
    restarts: int = field(default=0, init=False)
    steps: int = field(default=0, init=False)  # since the last (re)start
    recent: List[float] = field(default_factory=list, init=False)  # the last `span` ratios
    last_trigger_ratio: float = field(default=float("nan"), init=False)
    last_trigger_reason: str = field(default="", init=False)

    def __post_init__(self) -> None:
        self.view_losses = self.view_losses.detach().float().cpu()
        if self.view_losses.dim() != 1 or not bool(torch.all(self.view_losses > 0)):
            raise ValueError("the guard needs a positive stage C loss for every training view")

    def fit_to(self, total_steps: int) -> None:
        """Adapts the guard to a stage D of `total_steps`: one shorter than `settle_min_steps`
        (the cpu preset's large scenes, `rate.steps_for_scene`) keeps only the blow-up test. Its
        schedule lowers the rate within the run, and a loss that needs that to come under the
        stage C fit is no sign of a rate too large (the measurements are in
        docs/results/scale.md)."""
        if total_steps < self.settle_min_steps:
            self.settle_limit = math.inf

    @property
    def watching(self) -> bool:
        return self.restarts < self.max_restarts and self.steps < self.window

    def update(self, view: int, loss: float) -> bool:
        """Records one step's loss on training view `view`; True when fine-tuning should
        restart from the stage C fit (the guard then starts a new window)."""
        return self.update_ratio(loss / float(self.view_losses[view]))

    def update_ratio(self, ratio: float) -> bool:
        """`update` with the step's loss already divided by its view's stage C loss (or the
        mean of such ratios over data-parallel ranks)."""
        if not self.watching:
            return False
        self.steps += 1
        self.recent = (self.recent + [ratio])[-self.span :]
        if not math.isfinite(ratio):
            return self._restart(ratio, "the training loss is not finite")
        if len(self.recent) < self.span:
            return False
        level = median(self.recent)
        if level > self.blowup_limit:
            return self._restart(level, f"the training loss rose to {level:.2f}x the stage C fit's")
        if self.steps == self.window and level > self.settle_limit:
            return self._restart(level, f"after {self.window} steps the training loss is still {level:.2f}x the "
                                        "stage C fit's")
        return False

    def _restart(self, level: float, reason: str) -> bool:
        self.restarts += 1
        self.last_trigger_ratio, self.last_trigger_reason, self.steps, self.recent = level, reason, 0, []
        return True
