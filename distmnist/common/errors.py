"""Errors that the entry points turn into one line on stderr and an exit status (common/cli.py): a UserError
(bad input, nothing done) exits 2; a RunFailed (a run that started and could not finish: out of room, diverged,
float16 overflowing) exits 1, but ClusterFailed 138 (a retry resumes); Stopped 128 + the signal's number."""

import errno


class UserError(Exception):
    """Bad input from the user: a flag, a file, the environment. The message says what is wrong and what to do."""


class DataError(UserError):
    """MNIST could not be found, read or verified."""


class RunFailed(Exception):
    """A run that started could not finish; the entry point reports it in one line and exits with
    `exit_status`: 1 when running it again would fail the same way."""

    exit_status = 1


class OutOfRoom(RunFailed):
    """A write that failed for want of room (a full disk, a quota) or of write access (a read-only filesystem):
    the line names the path and what to do; `then` says what the same command does afterwards."""

    ADVICE: dict[int | None, str] = {
        errno.ENOSPC: "free space on its filesystem",
        errno.EDQUOT: "free space or raise the quota",
        errno.EROFS: "make its filesystem writable again",
    }

    def __init__(self, error: OSError, then: str):
        advice = self.ADVICE.get(error.errno, "free space")
        super().__init__(f"cannot write {error.filename or 'a file'}: {error.strerror}; {advice}, then {then}")


class TrainingDiverged(RunFailed):
    """The loss or a gradient became NaN or infinite at `step` on `replica`; `saved` says what was kept."""

    replica: int | None  # None, with the loss, for GradientsOverflowed: no one replica's loss went non-finite
    loss: float | None

    def __init__(self, step: int, replica: int, loss: float, saved: str = ""):
        super().__init__(
            f"the loss or a gradient became non-finite at step {step} on replica {replica} (loss "
            f"{loss:.4g}){'; ' + saved if saved else ''}; lower --learning_rate"
        )
        self.step, self.replica, self.loss = step, replica, loss

    def with_saved(self, saved: str) -> "TrainingDiverged":
        """The same failure, saying what was kept."""
        assert self.replica is not None and self.loss is not None  # GradientsOverflowed has a with_saved of its own
        return type(self)(self.step, self.replica, self.loss, saved)


class GradientsOverflowed(TrainingDiverged):
    """mixed_float16: the scaled gradients overflowed in `skipped` steps in a row at loss scale 1, from `step` on;
    every one was skipped, as every later one would be. `saved` says what was kept."""

    def __init__(self, step: int, skipped: int, saved: str = ""):
        RunFailed.__init__(
            self,
            f"the float16 gradients overflowed at loss scale 1 in {skipped} steps in a row from "
            f"step {step} on, each one skipped: nothing was learned{'; ' + saved if saved else ''}"
            "; lower --learning_rate, or train with --precision=mixed_bfloat16 or float32",
        )
        self.step, self.skipped, self.replica, self.loss = step, skipped, None, None

    def with_saved(self, saved: str) -> "GradientsOverflowed":
        return GradientsOverflowed(self.step, self.skipped, saved)


class ClusterFailed(RunFailed):
    """A peer in a multi-worker cluster was lost or a collective timed out. Exit status 138: running the same
    command again resumes from the chief's latest checkpoint, and job engines retry statuses of 128 and above
    (Kubeflow's ExitCode restart policy) while treating 1-127 as permanent."""

    exit_status = 138


class Stopped(Exception):
    """A signal stopped the run after a checkpoint; the entry point says so in one line and exits with
    `exit_status` (128 + the signal number)."""

    def __init__(self, message: str, exit_status: int):
        super().__init__(message)
        self.exit_status = exit_status
