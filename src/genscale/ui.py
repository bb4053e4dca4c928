"""The one console everything long-running reports to: stderr, so stdout stays clean for results."""

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True, soft_wrap=True)


def progress(*extra_columns: TextColumn, transient: bool = False) -> Progress:
    """A progress display with a bar, n/total, elapsed time and ETA."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("eta"), TimeRemainingColumn(), *extra_columns, console=console, transient=transient)
