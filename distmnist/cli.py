"""What every entry point shares: flag parsing and turning known errors into one line and exit status 2."""

import sys

from absl import app, flags

from distmnist.errors import RunFailed, UserError


def _fail(prog: str, message: str, status: int = 2) -> None:
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(status)


def run(main, prog: str = "distmnist") -> None:
    """Parses flags, then calls main(): a flag error or a UserError is one line on stderr and exit 2, a run that
    started and failed (diverged, lost a peer) one line and exit 1."""

    def parse(argv):
        try:
            return flags.FLAGS(argv)
        except flags.Error as exc:
            _fail(prog, f"{exc} (see --helpshort)")

    def wrapped(argv):
        if len(argv) > 1:
            _fail(prog, f"unexpected arguments {argv[1:]}; every setting is a --flag (see --helpshort)")
        try:
            main()
        except UserError as exc:
            _fail(prog, str(exc))
        except RunFailed as exc:
            _fail(prog, str(exc), status=1)

    app.run(wrapped, flags_parser=parse)
