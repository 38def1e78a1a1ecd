"""The process that draws a run's pictures, started before TensorFlow is imported.

Drawing needs matplotlib, which takes most of a second to import, and drawing itself is a second of Python. A
run's process is busy with TensorFlow's import (one core, for seconds) at its start and with export at its
end, both Python too, so threads would only take turns at the GIL. Instead the entry point forks this helper at
once, while the process is still small and has a single thread (a safe fork): it imports matplotlib on the
other core while TensorFlow is imported, then waits. At the end of training the run sends it the history and
the test-set predictions, and it draws while the run exports its SavedModel. It never touches TensorFlow.

Forking is done on Linux; elsewhere (macOS's system frameworks are not fork-safe) Painter(inline=True) draws in
the process itself. The helper ignores SIGINT and SIGTERM (the run handles those and tells it to end) and ends
when the run's end of the pipe closes, however the run ended.
"""

import multiprocessing
import signal
import sys
import traceback
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from distmnist.common import files
from distmnist.common.errors import RunFailed


def _serve(connection: Connection, runs_end: Connection) -> None:
    runs_end.close()  # the fork copied the run's end of the pipe too: only the run may hold it open
    import logging

    logging.getLogger("matplotlib").setLevel(logging.ERROR)  # "building the font cache" on a first import
    from distmnist.runs import plots

    while True:
        try:
            request = connection.recv()
        except (EOFError, OSError):
            return  # the run is gone
        if request is None:
            return
        name, args = request
        try:
            reply = ("ok", getattr(plots, name)(*args))
        except Exception as exc:  # noqa: BLE001  everything goes back to the run, in one line
            lines = traceback.format_exception_only(type(exc), exc)
            reply = ("error", lines[-1].strip() if lines else type(exc).__name__)
            if isinstance(exc, OSError) and files.no_room(exc):  # the run says what to do about it
                reply = ("no_room", (exc.errno, exc.strerror, exc.filename))
        connection.send(reply)


class Painter:
    """Calls functions of distmnist.plots in the helper process (or, inline, here): submit() sends one, result()
    waits for its return value. One request at a time."""

    def __init__(self, inline: bool = False):
        # Set together when the helper is forked; close() unsets _process alone (what follows is drawn inline).
        self._connection: Connection | None = None
        self._process: BaseProcess | None = None
        self._pending: tuple[str, tuple] | None = None
        if not inline and sys.platform.startswith("linux"):
            context = multiprocessing.get_context("fork")
            self._connection, child_end = context.Pipe()
            sys.stdout.flush()  # nothing buffered is written twice
            sys.stderr.flush()
            self._process = context.Process(target=_serve, args=(child_end, self._connection), daemon=True)
            # Ignored from the fork on (set here, not in the child, so that no signal comes too early for it).
            previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                self._process.start()
            finally:
                for number, handler in previous.items():
                    signal.signal(number, handler)
            child_end.close()

    def submit(self, name: str, *args: Any) -> None:
        if self._process is None or self._connection is None:
            self._pending = (name, args)
        else:
            self._connection.send((name, args))

    def result(self) -> Any:
        """The submitted function's return value; RunFailed with the helper's one-line error if it failed, the
        OSError itself for a write that failed for want of room (files.no_room)."""
        if self._process is None or self._connection is None:
            from distmnist.runs import plots

            assert self._pending is not None, "result() before submit()"
            (name, args), self._pending = self._pending, None
            return getattr(plots, name)(*args)
        try:
            status, value = self._connection.recv()
        except (EOFError, OSError):
            raise RunFailed(
                f"the process drawing the pictures ended (exit status {self._process.exitcode}) before it finished"
            ) from None
        if status == "no_room":
            raise OSError(*value)
        if status == "error":
            raise RunFailed(f"drawing the pictures failed: {value}")
        return value

    def close(self) -> None:
        """Tells the helper to end (it also ends when this process does)."""
        if self._process is not None and self._connection is not None:
            try:
                self._connection.send(None)
                self._connection.close()
            except OSError:
                pass
            self._process.join(timeout=5)
            self._process = None
