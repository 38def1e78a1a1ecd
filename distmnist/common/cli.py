"""What every entry point shares: flag parsing, turning known errors into one line and an exit status, and a
prompt exit."""

import os
import sys
from collections.abc import Callable
from typing import NoReturn

from absl import app, flags, logging

from distmnist.common.errors import RunFailed, Stopped, UserError


def _leave(status: int) -> NoReturn:
    """Exits at once, everything flushed. Every file a run writes is closed (and renamed into place) by then;
    what is skipped is TensorFlow's interpreter teardown, seconds on a small machine: time a preempted VM may
    not have, and a wait for everyone else."""
    logging.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _fail(prog: str, message: str, status: int = 2) -> NoReturn:
    print(f"{prog}: error: {message}", file=sys.stderr)
    _leave(status)


def run(
    main: Callable[..., object],
    prog: str = "distmnist",
    takes_args: bool = False,
    define_flags: Callable[[], None] | None = None,
) -> None:
    """Defines the entry point's flags (define_flags(): every entry point defines its flags there, so that importing one
    defines nothing), parses them, then calls main() (main(args) with the arguments after the flags when takes_args)
    and exits with what it returns if that is an int, else 0. A flag error or a UserError is one line on stderr and
    exit 2, a run that started and failed one line and exit 1 (diverged) or 138 (lost a peer: a retry resumes), a run
    stopped by a signal one line and 128 + the signal number."""

    def parse(argv: list[str]) -> list[str]:
        try:
            return flags.FLAGS(argv)
        except flags.Error as exc:
            _fail(prog, f"{exc} (see --helpshort)")

    def wrapped(argv: list[str]) -> None:
        if len(argv) > 1 and not takes_args:
            _fail(prog, f"unexpected arguments {argv[1:]}; every setting is a --flag (see --helpshort)")
        try:
            status = main(argv[1:]) if takes_args else main()
        except UserError as exc:
            _fail(prog, str(exc))
        except RunFailed as exc:
            _fail(prog, str(exc), status=exc.exit_status)
        except Stopped as exc:
            print(f"{prog}: {exc}", file=sys.stderr)
            _leave(exc.exit_status)
        _leave(status if isinstance(status, int) else 0)

    if define_flags:
        define_flags()
    app.run(wrapped, flags_parser=parse)
