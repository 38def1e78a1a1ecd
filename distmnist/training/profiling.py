"""--profile_steps=START,END: a TensorBoard profile (TensorFlow's profiler: host threads, TensorFlow ops, XLA
executables and, on GPUs, the device's kernels and copies) of the training steps START to END, written into the
run directory (plugins/profile/<timestamp>/<host>.xplane.pb), where TensorBoard's Profile tab finds it.

Each compiled call is marked as one step of the profile (a TraceMe named "train" with its first step number:
what the profiler's overview page and step-time graph count), so a profile "step" is --steps_per_loop training
steps. The controller starts calls at START and END, so the profile holds exactly those steps. How to read it:
docs/performance.md.
"""

import contextlib
import time

import tensorflow as tf

from distmnist.common import logfilters


class StepProfiler:
    """Starts TensorFlow's profiler when training reaches `start`, stops it (writing the profile) at `end`."""

    def __init__(self, run_dir: str | None, steps: tuple | None):
        """steps: (start, end) or None (no profile). Only a process with a run directory profiles."""
        self.run_dir = run_dir
        self.start, self.end = steps if steps and run_dir else (None, None)
        self.active = False
        self.done = self.start is None
        self.seconds = 0.0  # starting and stopping the profiler (writing the profile), not training

    def boundaries(self, step: int) -> int | None:
        """The next step after `step` where a call must end so that the profile covers exactly its steps; None
        when there is none (no profile, or a run resumed past its range)."""
        if self.done or step >= self.end:
            return None
        return self.start if step < self.start else self.end

    def before_call(self, step: int) -> None:
        if not self.done and not self.active and self.start <= step < self.end:
            began = time.perf_counter()
            options = tf.profiler.experimental.ProfilerOptions(
                host_tracer_level=2, python_tracer_level=0, device_tracer_level=1
            )
            with logfilters.capturing_stderr():  # the profiler's C++ start-up lines
                tf.profiler.experimental.start(self.run_dir, options=options)
            self.active = True
            self.seconds += time.perf_counter() - began

    def after_call(self, step: int) -> None:
        if self.active and step >= self.end:
            self.stop()

    def stop(self) -> None:
        """Writes the profile (also when training stops early inside the range)."""
        if self.active:
            began = time.perf_counter()
            with logfilters.capturing_stderr():
                tf.profiler.experimental.stop()
            self.active, self.done = False, True
            self.seconds += time.perf_counter() - began

    def marker(self, step: int) -> contextlib.AbstractContextManager[object]:
        """A context around one compiled call starting at `step`: the profiler's step marker while profiling."""
        if self.active:
            return tf.profiler.experimental.Trace("train", step_num=step, _r=1)
        return contextlib.nullcontext()
