"""Progress bars and stage timing for long work, on nerfstudio's rich console."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Dict, Iterator

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from nerfstudio.utils.rich_utils import CONSOLE


@contextmanager
def progress_bar(description: str, total: int) -> Iterator[Callable[..., None]]:
    """Yields `advance(n=1, **fields)`; shows "description [bar] i/total elapsed<remaining"
    and an optional `info` field (e.g. the current loss)."""
    columns = (TextColumn("[bold blue]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"))
    with Progress(*columns, console=CONSOLE, transient=False) as progress:
        task = progress.add_task(description, total=total, info="")

        def advance(n: int = 1, info: str = "") -> None:
            progress.update(task, advance=n, info=info)

        yield advance


class StageTimer:
    """Wall time of named stages, in the order they ran."""

    def __init__(self) -> None:
        self.seconds: Dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        CONSOLE.rule(f"[bold]{name}")
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = time.perf_counter() - start
            CONSOLE.log(f"{name}: {self.seconds[name]:.1f} s")


def quiet_trainer_log(config, verbose: bool) -> None:
    """Turns off nerfstudio's step table (its local writer) in `config` unless `verbose`:
    `train_with_progress` shows a progress bar instead. Call before config.setup()."""
    if not verbose:
        config.logging.local_writer.enable = False


def train_with_progress(trainer, description: str, verbose: bool) -> None:
    """trainer.train() with one progress bar (with its ETA) for its steps; `verbose`
    keeps nerfstudio's own step table instead."""
    if verbose:
        trainer.train()
        return
    from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackLocation

    with progress_bar(description, trainer.config.max_num_iterations) as advance:
        def step_done(step: int) -> None:
            advance()

        callback = TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], step_done)
        trainer.callbacks.append(callback)
        try:
            trainer.train()
        finally:
            trainer.callbacks.remove(callback)
