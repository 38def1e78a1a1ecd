"""What every contender is measured with, and the two measurements they share: examples per second over a fixed
number of steps after a warm-up, and the time to a test accuracy checked after every epoch."""

import dataclasses
import time


@dataclasses.dataclass(frozen=True)
class Timing:
    """What every contender is measured with."""

    per_replica_batch_size: int = 128
    warmup_steps: int = 50
    timed_steps: int = 400
    learning_rate: float = 0.1  # small enough that no contender diverges; speed does not depend on it
    seed: int = 0


def examples_per_sec(run_steps, timing: Timing, global_batch_size: int) -> float:
    """Warms up with run_steps(warmup_steps), then times run_steps(timed_steps).

    run_steps(n) must run n training steps and wait for them to finish.
    """
    run_steps(timing.warmup_steps)
    start = time.perf_counter()
    run_steps(timing.timed_steps)
    return timing.timed_steps * global_batch_size / (time.perf_counter() - start)


def until_accuracy(epoch, target: float, max_epochs: int) -> dict:
    """epoch() trains one epoch and returns the test accuracy: {"seconds" (None: not reached in max_epochs),
    "epochs", "accuracy", "epoch_seconds" (each epoch's, its check included)}, timed from the first step."""
    start = last = time.perf_counter()
    laps = []
    for _ in range(max_epochs):
        accuracy = epoch()
        now = time.perf_counter()
        laps.append(now - last)
        last = now
        if accuracy >= target:
            break
    reached = accuracy >= target
    return {
        "seconds": last - start if reached else None,
        "epochs": len(laps),
        "accuracy": accuracy,
        "epoch_seconds": laps,
    }
