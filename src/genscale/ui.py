"""The one console everything long-running reports to: stderr, so stdout stays clean for results.

How much it says is one setting, the verbosity (`genscale -q/-v`), kept in the environment variable
GENSCALE_VERBOSITY so that the processes a command starts (data-parallel ranks, study and tuning workers) follow it.
"""

from __future__ import annotations

import logging
import os
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress

VERBOSITY_ENV = "GENSCALE_VERBOSITY"  # quiet | verbose; unset (or anything else): normal
QUIET, NORMAL, VERBOSE = -1, 0, 1
_LEVELS = {"quiet": QUIET, "verbose": VERBOSE}
LINE_SECONDS = 30.0  # without a terminal, a long task's progress line at most this often


def verbosity() -> int:
    """QUIET, NORMAL or VERBOSE, as GENSCALE_VERBOSITY says."""
    return _LEVELS.get(os.environ.get(VERBOSITY_ENV, ""), NORMAL)


console = Console(stderr=True, soft_wrap=True, quiet=verbosity() == QUIET)
# warnings are said even when quiet: they are about something the user must know (an open server, a bad checkpoint)
warnings_console = Console(stderr=True, soft_wrap=True)


def library_log_level() -> int:
    """The level of the libraries' own loggers (MLflow, Optuna, Ray): INFO when verbose, else WARNING."""
    return logging.INFO if verbosity() == VERBOSE else logging.WARNING


def set_verbosity(level: int) -> None:
    """Quiet: no progress and no notes, only errors, warnings and results (stdout). Verbose: also every metric
    point and the libraries' INFO logs. Set in the environment too, for the processes started from here on."""
    if level == NORMAL:
        os.environ.pop(VERBOSITY_ENV, None)
    else:
        os.environ[VERBOSITY_ENV] = next(name for name, value in _LEVELS.items() if value == level)
    console.quiet = level == QUIET
    if level == VERBOSE:
        logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s: %(message)s")


def warning(message: str) -> None:
    warnings_console.print(f"[yellow]warning:[/] {message}", highlight=False)


def info(message: str) -> None:
    """A line only -v shows."""
    if verbosity() == VERBOSE:
        console.print(message, highlight=False, markup=False)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class Progress(RichProgress):
    """rich's live bar on a terminal. Without one (CI, nohup, Slurm, a study trial's log file) a live bar shows
    nothing until it ends, so there the same calls write plain lines instead,
    `train dcgan  step 120/2000  d_loss=1.234 g_loss=0.98  3.21 steps/s  ETA 9m45s`: one whenever `write_line` is
    called (training: every train.log_every steps) and, with `every` seconds, one at most that often as the task
    advances; a task that printed lines (or a bar that is not transient) prints a last one when the bar stops.
    Quiet: nothing.
    """

    def __init__(self, *columns: TextColumn, transient: bool, unit: str, every: float | None):
        self.lines = verbosity() != QUIET and not (console.is_interactive or console.is_jupyter)
        super().__init__(*columns, console=console, transient=transient, disable=self.lines or verbosity() == QUIET)
        self.unit, self.every = unit, every
        self.logged: dict[TaskID, tuple[float, float]] = {}  # task -> (time, completed) of its last line

    def update(self, task_id: TaskID, **kwargs) -> None:  # noqa: ANN003  rich's own keywords
        super().update(task_id, **kwargs)
        if self.lines and self.every is not None:
            last = self.logged.get(task_id, (self.tasks[task_id].start_time or time.monotonic(), 0.0))[0]
            if time.monotonic() - last >= self.every:
                self.write_line(task_id)

    def write_line(self, task_id: TaskID) -> None:
        """One plain line of the task now (nothing on a terminal, where the bar shows it)."""
        if not self.lines:
            return
        task = self._tasks[task_id]
        unit = f"{self.unit} " if self.unit else ""
        parts = [task.description, f"{unit}{task.completed:.0f}/{task.total:.0f}" if task.total else
                 f"{unit}{task.completed:.0f}"]
        if task.fields.get("info"):
            parts.append(task.fields["info"])
        if task.speed is not None:
            parts.append(f"{task.speed:.3g} {self.unit}s/s" if self.unit else f"{task.speed:.3g}/s")
        if not task.finished:
            parts.append(f"ETA {_duration(task.time_remaining)}")
        console.print("  ".join(parts), highlight=False, markup=False)
        self.logged[task_id] = (time.monotonic(), task.completed)

    def stop(self) -> None:
        super().stop()
        for task in self.tasks:
            last = self.logged.get(task.id)
            if (last is not None or not self.live.transient) and (last is None or last[1] != task.completed):
                self.write_line(task.id)


def progress(*extra_columns: TextColumn, transient: bool = False, unit: str = "",
             every: float | None = LINE_SECONDS) -> Progress:
    """A progress display with a bar, n/total, elapsed time and ETA (plain lines without a terminal: `Progress`)."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("eta"), TimeRemainingColumn(), *extra_columns, transient=transient, unit=unit,
                    every=every)
