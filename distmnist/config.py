"""Everything one training run needs, as a frozen dataclass. No TensorFlow here."""

import dataclasses
import math
from typing import Optional

from distmnist.errors import UserError

INPUTS = ("device", "tfdata")
STRATEGIES = ("auto", "multi_worker", "mirrored", "one_device")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One run's settings; the entry point builds it from flags, tests build it directly."""

    data_dir: Optional[str] = None  # None: Keras cache, then download, then the PyPI mirror
    logdir: str = "logs"
    run_name: Optional[str] = None  # None: a timestamp
    strategy: str = "auto"  # auto: multi_worker when TF_CONFIG names a cluster, else the single-host rules
    num_gpus: Optional[int] = None  # None: every visible GPU
    cpu_replicas: int = 0  # >= 2: that many logical CPU devices under MirroredStrategy
    gpu_memory_growth: bool = True  # take GPU memory as needed, not all of it at start-up
    batch_size: int = 128  # per replica
    learning_rate: float = 1.5
    epochs: int = 10
    max_steps: int = 0  # > 0: stop after this many steps (smoke tests, benchmarks)
    seed: int = 42
    shuffle_buffer: int = 10000
    log_every: int = 100
    eval_every: int = 500
    input: str = "device"  # "device": data resident on each replica; "tfdata": the tutorial's pipeline
    steps_per_loop: int = 50  # training steps per tf.function call
    checkpoint_every: int = 200  # steps between checkpoints (0: only at the end); a run resumes from the last
    keep_checkpoints: int = 3
    overwrite: bool = False  # True: delete an existing run directory of the same name and start afresh
    jit_compile: Optional[bool] = None  # None: XLA on for --input=device (faster, docs/performance.md), off for tfdata
    collective_timeout_s: int = 60  # a lost worker makes the others fail within this, not hang
    cluster_start_timeout_s: int = 600  # how long workers wait for each other at start-up
    deterministic: bool = False  # True: TensorFlow's op determinism (bit-identical reruns and resumes)
    intra_op_threads: int = 0  # 0: TensorFlow's default (one per core)
    inter_op_threads: int = 0  # 0: TensorFlow's default

    def resolved_jit_compile(self) -> bool:
        """XLA cannot hold a tf.data iterator, so the default is on for the device input only."""
        return self.input == "device" if self.jit_compile is None else self.jit_compile

    def validate(self) -> "TrainConfig":
        """Raises UserError naming the first bad value; returns self so calls chain."""
        positive = ("batch_size", "epochs", "shuffle_buffer", "log_every", "eval_every", "steps_per_loop",
                    "collective_timeout_s", "cluster_start_timeout_s")
        for name in positive:
            value = getattr(self, name)
            if value <= 0:
                raise UserError(f"--{name} must be a positive integer, got {value}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise UserError(f"--learning_rate must be a positive finite number, got {self.learning_rate}")
        if self.checkpoint_every < 0:
            raise UserError(f"--checkpoint_every must be >= 0 (0: only at the end), got {self.checkpoint_every}")
        if self.keep_checkpoints < 1:
            raise UserError(f"--keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        if self.max_steps < 0:
            raise UserError(f"--max_steps must be >= 0 (0 means: train --epochs), got {self.max_steps}")
        if self.num_gpus is not None and self.num_gpus < 0:
            raise UserError(f"--num_gpus must be >= 0 (leave it unset to use every visible GPU), got {self.num_gpus}")
        for name in ("intra_op_threads", "inter_op_threads"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name} must be >= 0 (0 means TensorFlow's default), got {getattr(self, name)}")
        if self.cpu_replicas < 0:
            raise UserError(f"--cpu_replicas must be >= 0, got {self.cpu_replicas}")
        if self.strategy not in STRATEGIES:
            raise UserError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.input not in INPUTS:
            raise UserError(f"--input must be one of {', '.join(INPUTS)}, got {self.input!r}")
        if self.run_name is not None and (not self.run_name or "/" in self.run_name or self.run_name in (".", "..")):
            raise UserError(f"--run_name must be a plain directory name, got {self.run_name!r}")
        return self
