"""The outer loop around a trainer, as orbit's Controller around a StandardTrainer: the schedule comes in as
arguments (the run's length, evaluation, checkpoint and log intervals, steps per call, the profiled range), and
the controller cuts the compiled calls where the schedule needs them, times them, asks whether to stop, and tells
a Reporter what happens. The trainer runs one call at a time (Trainer.train) and knows nothing of schedules."""

import dataclasses
import math
import time
from typing import Callable, Optional

import numpy as np

from distmnist.training.profiling import StepProfiler
from distmnist.training.trainer import Trainer


class Reporter:
    """What the controller tells the outside world as the run goes; summaries.RunReporter writes it, tests may
    record it."""

    def losses(self, logged: list, end_step: int, examples_per_sec: float) -> None:
        """After each call: logged is [(step, loss)] at the call's multiples of log_every; end_step the step the
        call reached."""

    def accuracy(self, step: int, value: float) -> None:
        pass

    def predictions(self, step: int, classes: np.ndarray) -> None:
        """The predicted class of every test image at an evaluation (-1 for images another worker holds)."""

    def loss_scale(self, step: int, state: dict) -> None:
        """mixed_float16, after each call that logged a loss: the loss scale and the steps skipped so far."""


@dataclasses.dataclass(frozen=True)
class Schedule:
    """When the controller ends calls and what it does there."""

    total_steps: int
    eval_every: int
    log_every: int
    checkpoint_every: int = 0  # 0: at the end (and at a stop) only
    steps_per_call: Optional[int] = None  # None: the trainer's steps_per_loop
    profile_steps: Optional[tuple] = None  # (start, end)


def run_steps(trainer: Trainer, num_steps: int, steps_per_call: Optional[int] = None) -> np.ndarray:
    """Trains num_steps more steps in calls of at most steps_per_call (default: the trainer's steps_per_loop), with
    no schedule around them: for harnesses and tests. Returns the losses."""
    per_call = min(steps_per_call or trainer.steps_per_loop, trainer.steps_per_loop)
    end = trainer.step + num_steps
    losses = [trainer.train(min(per_call, end - trainer.step)) for _ in range(-(-num_steps // per_call))]
    return np.concatenate(losses) if losses else np.zeros([0], np.float32)


class Controller:
    """Drives a Trainer from its current step to the schedule's total, telling a Reporter what happens."""

    def __init__(self, trainer: Trainer, schedule: Schedule, reporter: Reporter,
                 save_checkpoint: Optional[Callable[[int], None]] = None,
                 should_stop: Callable[[], bool] = lambda: False, profile_dir: Optional[str] = None):
        """save_checkpoint(step) writes a checkpoint; should_stop() is asked before each compiled call; profile_dir
        is where the profiler writes schedule.profile_steps (None: no profile)."""
        self.trainer = trainer
        self.schedule = schedule
        self.reporter = reporter
        self.save_checkpoint = save_checkpoint
        self.should_stop = should_stop
        self.profiler = StepProfiler(profile_dir, schedule.profile_steps)
        self.steps_per_call = min(schedule.steps_per_call or trainer.steps_per_loop, trainer.steps_per_loop)
        self.stopped = False  # a stop request ended the run early
        self.first_call_s = None  # the first call includes tracing and compilation: kept out of the throughput
        self.timed_s = 0.0
        self.timed_examples = 0
        self.train_time_s = 0.0
        self.evaluations_s = 0.0

    def _call(self, num_steps: int) -> None:
        """One timed compiled call, marked for the profiler, and its losses reported."""
        first_step = self.trainer.step
        start = time.perf_counter()
        with self.profiler.marker(first_step):
            losses = self.trainer.train(num_steps)
        seconds = time.perf_counter() - start
        examples = num_steps * self.trainer.global_batch_size
        self.train_time_s += seconds
        if self.first_call_s is None:
            self.first_call_s = seconds
        else:
            self.timed_s += seconds
            self.timed_examples += examples
        every = self.schedule.log_every
        logged = [(s, float(losses[s - first_step]))
                  for s in range(-(-first_step // every) * every, first_step + num_steps, every)]
        self.reporter.losses(logged, self.trainer.step, examples / seconds)
        if logged and self.trainer.loss_scale is not None:
            self.reporter.loss_scale(logged[-1][0], self.trainer.loss_scale_state())

    def _train_until(self, end: int) -> None:
        """Calls of at most steps_per_call steps up to `end`, or to a stop request (then self.stopped)."""
        while self.trainer.step < end:
            if self.should_stop():
                self.stopped = True
                return
            self._call(min(self.steps_per_call, end - self.trainer.step))

    def _evaluate(self) -> None:
        start = time.perf_counter()
        accuracy, classes = self.trainer.evaluate()
        self.reporter.accuracy(self.trainer.step, accuracy)
        self.reporter.predictions(self.trainer.step, classes)
        self.evaluations_s += time.perf_counter() - start

    def run(self) -> dict:
        """Trains to schedule.total_steps, or to a stop request (then self.stopped is True, and the step reached
        has a checkpoint). Returns the timings: examples_per_sec (calls after the first), first_call_s (tracing
        and compilation included), train_time_s (all calls), evaluations_s (checkpoints are timed by their saver),
        profile_s."""
        trainer, schedule, profiler = self.trainer, self.schedule, self.profiler
        total = schedule.total_steps
        if trainer.step == 0:
            self._evaluate()
        every, save_every = schedule.eval_every, schedule.checkpoint_every or total
        saved_at = trainer.step
        while trainer.step < total:
            next_eval = (trainer.step // every + 1) * every
            next_save = (trainer.step // save_every + 1) * save_every
            profile_edge = profiler.boundaries(trainer.step)
            until = min(next_eval, next_save, total, math.inf if profile_edge is None else profile_edge)
            profiler.before_call(trainer.step)
            try:
                self._train_until(until)
            except BaseException:
                profiler.stop()  # what was profiled before the error is written
                raise
            profiler.after_call(trainer.step)
            if self.stopped or trainer.step >= total:
                profiler.stop()  # a range cut short by a stop, or reaching beyond the end
            if self.stopped:
                if self.save_checkpoint and saved_at != trainer.step:
                    self.save_checkpoint(trainer.step)
                break
            if trainer.step % every == 0 or trainer.step == total:
                self._evaluate()
            if self.save_checkpoint and (trainer.step % save_every == 0 or trainer.step == total):
                self.save_checkpoint(trainer.step)
                saved_at = trainer.step
        return {
            "profile_s": profiler.seconds,
            "examples_per_sec": self.timed_examples / self.timed_s if self.timed_s else None,
            "first_call_s": self.first_call_s,
            "train_time_s": self.train_time_s,
            "evaluations_s": self.evaluations_s,
        }
