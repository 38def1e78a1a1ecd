"""Errors that the entry points turn into one line on stderr and exit status 2."""


class UserError(Exception):
    """Bad input from the user: a flag, a file, the environment. The message says what is wrong and what to do."""


class DataError(UserError):
    """MNIST could not be found, read or verified."""


class RunFailed(Exception):
    """A run that started could not finish; the entry point reports it in one line and exits 1."""


class TrainingDiverged(RunFailed):
    """The loss became NaN or infinite."""


class ClusterFailed(RunFailed):
    """A peer in a multi-worker cluster was lost or a collective timed out."""
