"""A progress bar at the foot of a terminal, drawn by rich, with lines printed above it; where the output is not
a terminal (a pipe, a log file, CI), the lines alone, with no bar and no control codes."""

import sys
from typing import Any, TextIO


class Bar:
    """Counts `total` units of work labelled `label`; rate_unit (e.g. "ex/s") adds a rate column."""

    def __init__(self, total: int, label: str, stream: TextIO | None = None, rate_unit: str | None = None):
        self.stream = stream or sys.stdout
        self._progress = None
        if self.stream.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            columns = [TextColumn(label), BarColumn(), MofNCompleteColumn()]
            if rate_unit:
                columns.append(TextColumn("{task.fields[rate]}"))
            self._progress = Progress(
                *columns, TimeRemainingColumn(), console=Console(file=self.stream), transient=True
            )
            self._task = self._progress.add_task(label, total=total, rate="")
            self._rate_unit = rate_unit
            self._progress.start()

    def say(self, line: str) -> None:
        """A line above the bar (or just the line)."""
        if self._progress:
            self._progress.console.print(line, highlight=False, markup=False)
        else:
            print(line, file=self.stream, flush=True)

    def update(self, completed: int, rate: float | None = None) -> None:
        if self._progress:
            fields: dict[str, Any] = {}
            if rate is not None and self._rate_unit:
                fields["rate"] = f"{rate:,.0f} {self._rate_unit}"
            self._progress.update(self._task, completed=completed, **fields)

    def close(self) -> None:
        if self._progress:
            self._progress.stop()
            self._progress = None
