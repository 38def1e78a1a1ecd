"""SIGTERM and SIGINT become a request to stop cleanly: the loop finishes the call in flight (at most
steps_per_loop steps), writes a checkpoint and exits with 128 + the signal number (143, 130).

After the first signal, SIGINT gets its default behaviour back (Ctrl-C twice quits without a checkpoint), while
a repeated SIGTERM changes nothing, until the process exits: on a preempted cloud VM a preemption watcher and the
shutdown script each send one, and the second, which may come after training has stopped, must not cut the
checkpoint or the run's last writes short (SIGKILL quits at once).
"""

import signal
import sys
from types import FrameType
from typing import Any, TextIO

HANDLED = (signal.SIGTERM, signal.SIGINT)


class StopOnSignal:
    """Context manager: while active, SIGTERM/SIGINT set `signum` instead of killing the process."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.signum: int | None = None
        self._stream = stream or sys.stderr
        self._previous: dict[int, Any] = {}  # signal number -> the handler it had

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    @property
    def exit_status(self) -> int:
        assert self.signum is not None, "asked once a signal came"
        return 128 + self.signum

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:  # a repeated SIGTERM: already stopping
            return
        self.signum = signum
        if signal.SIGINT in self._previous:
            signal.signal(signal.SIGINT, self._previous.pop(signal.SIGINT))
        quits = "Ctrl-C again" if signum == signal.SIGINT else "Ctrl-C or SIGKILL"
        print(
            f"{signal.Signals(signum).name} received: stopping after the current steps and writing a checkpoint "
            f"({quits} quits at once)",
            file=self._stream,
            flush=True,
        )

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            if signum == signal.SIGTERM and self.requested:
                continue  # stopping: a SIGTERM that comes late must not cut the checkpoint's run short either
            signal.signal(signum, handler)
        self._previous = {}

    def __enter__(self) -> "StopOnSignal":
        for signum in HANDLED:
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread (a library caller's worker thread): signals stay theirs
                break
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore()
