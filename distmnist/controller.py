"""The schedule around the trainer: evaluation at step 0, every eval_every steps and at the end; a checkpoint at
every multiple of checkpoint_every, at the end, and where a stop request ends the run; the timing of the calls.
The trainer knows nothing of it (as orbit's Controller around a StandardTrainer)."""

import math
import time
from typing import Callable, Optional

import numpy as np

from distmnist.loop import Trainer
from distmnist.profiling import StepProfiler


class Reporter:
    """What the controller tells the outside world as the run goes; summaries.RunReporter writes it, tests may
    record it."""

    def losses(self, first_step: int, values: np.ndarray, examples_per_sec: float) -> None:
        pass

    def accuracy(self, step: int, value: float) -> None:
        pass

    def predictions(self, step: int, classes: np.ndarray) -> None:
        """The predicted class of every test image at an evaluation (-1 for images another worker holds)."""


class Controller:
    """Drives a Trainer from its current step to its total, telling a Reporter what happens."""

    def __init__(self, trainer: Trainer, reporter: Reporter, save_checkpoint: Optional[Callable[[int], None]] = None,
                 should_stop: Callable[[], bool] = lambda: False, profiler: Optional[StepProfiler] = None):
        """save_checkpoint(step) writes a checkpoint; should_stop() is asked before each compiled call; profiler
        (--profile_steps) profiles its range of steps."""
        self.trainer = trainer
        self.reporter = reporter
        self.save_checkpoint = save_checkpoint
        self.should_stop = should_stop
        self.profiler = profiler or StepProfiler(None, None)
        self.first_call_s = None  # the first call includes tracing and compilation: kept out of the throughput
        self.timed_s = 0.0
        self.timed_examples = 0
        self.train_time_s = 0.0
        self.evaluations_s = 0.0

    def _on_call(self, first_step: int, losses, seconds: float) -> None:
        examples = len(losses) * self.trainer.global_batch_size
        self.train_time_s += seconds
        if self.first_call_s is None:
            self.first_call_s = seconds
        else:
            self.timed_s += seconds
            self.timed_examples += examples
        self.reporter.losses(first_step, losses, examples / seconds)

    def _evaluate(self) -> None:
        start = time.perf_counter()
        accuracy, classes = self.trainer.evaluate()
        self.reporter.accuracy(self.trainer.step, accuracy)
        self.reporter.predictions(self.trainer.step, classes)
        self.evaluations_s += time.perf_counter() - start

    def run(self) -> dict:
        """Trains to the trainer's total_steps (or a stop request: then trainer.stopped is True). Returns the
        timings: examples_per_sec (calls after the first), first_call_s (tracing and compilation included),
        train_time_s (all calls), evaluations_s (checkpoints are timed by their saver)."""
        trainer, config = self.trainer, self.trainer.config
        if trainer.step == 0:
            self._evaluate()
        every, save_every = config.eval_every, config.checkpoint_every or trainer.total_steps
        saved_at = trainer.step
        profiler = self.profiler
        while trainer.step < trainer.total_steps:
            next_eval = (trainer.step // every + 1) * every
            next_save = (trainer.step // save_every + 1) * save_every
            profile_edge = profiler.boundaries(trainer.step)
            until = min(next_eval, next_save, trainer.total_steps, math.inf if profile_edge is None else profile_edge)
            profiler.before_call(trainer.step)
            try:
                trainer.run_steps(until - trainer.step, self._on_call, self.should_stop, profiler.marker)
            except BaseException:
                profiler.stop()  # what was profiled before the error is written
                raise
            profiler.after_call(trainer.step)
            if trainer.stopped or trainer.step >= trainer.total_steps:
                profiler.stop()  # a range cut short by a stop, or reaching beyond the end
            if trainer.stopped:
                if self.save_checkpoint and saved_at != trainer.step:
                    self.save_checkpoint(trainer.step)
                break
            if trainer.step % every == 0 or trainer.step == trainer.total_steps:
                self._evaluate()
            if self.save_checkpoint and (trainer.step % save_every == 0 or trainer.step == trainer.total_steps):
                self.save_checkpoint(trainer.step)
                saved_at = trainer.step
        return {
            "profile_s": profiler.seconds,
            "examples_per_sec": self.timed_examples / self.timed_s if self.timed_s else None,
            "first_call_s": self.first_call_s,
            "train_time_s": self.train_time_s,
            "evaluations_s": self.evaluations_s,
        }
