"""The outer loop around a trainer and an evaluator, as orbit's Controller: the schedule comes in as keyword
arguments (the run's length, evaluation, checkpoint and log intervals, steps per call, the profiled range), and
the controller cuts the compiled calls where the schedule needs them, times them, asks whether to stop, and tells
a Reporter what happens. It knows the trainer and the evaluator only by the small protocols below; they know
nothing of schedules."""

import time
from collections.abc import Callable
from typing import Protocol

import numpy as np

from distmnist.training.profiling import StepProfiler


class Trainer(Protocol):
    """Anything that trains: train(num_steps) runs that many more steps and returns their losses."""

    def train(self, num_steps: int) -> np.ndarray: ...


class Evaluator(Protocol):
    """Anything that evaluates: (accuracy, the predicted class of every test image, -1 for another worker's)."""

    def evaluate(self) -> tuple: ...


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


class Controller:
    """Drives a trainer from start_step to total_steps, evaluating, saving, profiling and stopping as the schedule
    says, and telling a Reporter what happens."""

    def __init__(
        self,
        trainer: Trainer,
        evaluator: Evaluator,
        reporter: Reporter,
        *,
        total_steps: int,
        steps_per_call: int,
        global_batch_size: int,
        eval_every: int,
        log_every: int,
        start_step: int = 0,
        checkpoint_every: int = 0,
        save_checkpoint: Callable[[int], None] | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        profile_steps: tuple | None = None,
        profile_dir: str | None = None,
        loss_scale_state: Callable[[], dict] | None = None,
    ):
        """steps_per_call: the most steps one trainer.train call runs; global_batch_size: examples a step (for the
        throughput); checkpoint_every: 0 saves at the end (and at a stop) only; save_checkpoint(step) writes a
        checkpoint; should_stop() is asked before each call; profile_steps: (start, end) that the profiler writes
        to profile_dir (None: no profile); loss_scale_state(): mixed_float16's, reported with the losses."""
        self.trainer = trainer
        self.evaluator = evaluator
        self.reporter = reporter
        self.step = start_step
        self.total_steps = total_steps
        self.steps_per_call = steps_per_call
        self.global_batch_size = global_batch_size
        self.eval_every = eval_every
        self.log_every = log_every
        self.save_every = checkpoint_every or total_steps
        self.save_checkpoint = save_checkpoint
        self.should_stop = should_stop
        self.loss_scale_state = loss_scale_state
        self.profiler = StepProfiler(profile_dir, profile_steps)
        self.stopped = False  # a stop request ended the run early
        self._saved_at = start_step
        # The first call includes tracing and compilation: kept out of the throughput.
        self.first_call_s: float | None = None
        self.timed_s = 0.0
        self.timed_examples = 0
        self.train_time_s = 0.0
        self.evaluations_s = 0.0

    def run(self) -> dict:
        """Trains to total_steps, or to a stop request (then self.stopped is True, and the step reached has a
        checkpoint). Returns the timings (timings())."""
        if self.step == 0:
            self.evaluate()
        while self.step < self.total_steps:
            self.profile(self._train_until, self._next_boundary())
            if self.stopped:
                self.save()
                break
            if self._due(self.eval_every):
                self.evaluate()
            if self._due(self.save_every):
                self.save()
        return self.timings()

    # --- the actions ---------------------------------------------------------------------------------------

    def evaluate(self) -> None:
        start = time.perf_counter()
        accuracy, classes = self.evaluator.evaluate()
        self.reporter.accuracy(self.step, accuracy)
        self.reporter.predictions(self.step, classes)
        self.evaluations_s += time.perf_counter() - start

    def save(self) -> None:
        """A checkpoint of the step reached, unless it has one."""
        if self.save_checkpoint and self._saved_at != self.step:
            self.save_checkpoint(self.step)
            self._saved_at = self.step

    def profile(self, train: Callable[[int], None], end: int) -> None:
        """train(end), with the profiler started and stopped where its range begins and ends (and stopped when the
        run ends or stops first, or fails: what was profiled before the error is written)."""
        profiler = self.profiler
        profiler.before_call(self.step)
        try:
            train(end)
        except BaseException:
            profiler.stop()
            raise
        profiler.after_call(self.step)
        if self.stopped or self.step >= self.total_steps:
            profiler.stop()  # a range cut short by a stop, or reaching beyond the end

    def stop_requested(self) -> bool:
        """Asks should_stop(); a yes ends the run at this step (self.stopped)."""
        self.stopped = self.stopped or self.should_stop()
        return self.stopped

    # --- the schedule --------------------------------------------------------------------------------------

    def _due(self, every: int) -> bool:
        return self.step % every == 0 or self.step == self.total_steps

    def _next_boundary(self) -> int:
        """The next step at which the schedule does something: an evaluation, a checkpoint, the end, or an edge
        of the profiled range."""
        next_eval = (self.step // self.eval_every + 1) * self.eval_every
        next_save = (self.step // self.save_every + 1) * self.save_every
        profile_edge = self.profiler.boundaries(self.step)
        edges = [next_eval, next_save, self.total_steps] + ([] if profile_edge is None else [profile_edge])
        return min(edges)

    def _train_until(self, end: int) -> None:
        """Calls of at most steps_per_call steps up to `end`, or to a stop request."""
        while self.step < end:
            if self.stop_requested():
                return
            self._call(min(self.steps_per_call, end - self.step))

    def _call(self, num_steps: int) -> None:
        """One timed trainer call, marked for the profiler, and its losses reported."""
        first_step = self.step
        start = time.perf_counter()
        with self.profiler.marker(first_step):
            losses = self.trainer.train(num_steps)
        seconds = time.perf_counter() - start
        self.step += num_steps
        examples = num_steps * self.global_batch_size
        self.train_time_s += seconds
        if self.first_call_s is None:
            self.first_call_s = seconds
        else:
            self.timed_s += seconds
            self.timed_examples += examples
        every = self.log_every
        logged = [
            (s, float(losses[s - first_step]))
            for s in range(-(-first_step // every) * every, first_step + num_steps, every)
        ]
        self.reporter.losses(logged, self.step, examples / seconds)
        if logged and self.loss_scale_state is not None:
            self.reporter.loss_scale(logged[-1][0], self.loss_scale_state())

    def timings(self) -> dict:
        """examples_per_sec (calls after the first), first_call_s (tracing and compilation included), train_time_s
        (all calls), evaluations_s (checkpoints are timed by their saver), profile_s."""
        return {
            "profile_s": self.profiler.seconds,
            "examples_per_sec": self.timed_examples / self.timed_s if self.timed_s else None,
            "first_call_s": self.first_call_s,
            "train_time_s": self.train_time_s,
            "evaluations_s": self.evaluations_s,
        }
