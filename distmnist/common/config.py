"""Everything one training run needs, as a frozen dataclass, and the one description of every setting: each
field's help (and, where it is not plain, how its default reads) lives in its metadata; the entry point's flags
and the README's flags table are made from it. No TensorFlow here."""

import dataclasses
import datetime
import math
from collections.abc import Iterator
from typing import Any, TypeVar

from distmnist.common.errors import UserError

INPUTS = ("device", "tfdata")
STRATEGIES = ("auto", "multi_worker", "mirrored", "one_device")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")  # Keras's policy names
PATH_SETTINGS = ("data_dir", "logdir", "events_dir", "export_dir")  # compared as places (rundir.plan)

NAME_MAX = 255  # bytes in one file name on Linux's filesystems (ext4, XFS, Btrfs, tmpfs, NFS)
# The run's claim beside it adds up to 40 bytes to its name: ".NAME.claim" and the lease's ".NAME.claim.TOKEN"
# (runclaim.py); the sweep's ".log" fewer.
MAX_RUN_NAME_BYTES = 200
INT64_MAX = 2**63 - 1  # every integer setting reaches TensorFlow, at most as an int64 (steps, seeds, counts)
# Where TensorFlow does something with a number at once, a tighter bound, and why:
INT_LIMITS = {  # (lowest, highest, why); the lowest where the checks above do not already say it
    "seed": (-(2**63), INT64_MAX, "tf.random and tf.data take int64 seeds"),
    "shuffle_buffer": (
        None,
        1_000_000,
        "tf.data reserves the whole buffer at once, and one larger than the training set shuffles no better",
    ),
    "steps_per_loop": (None, 10_000, "a call holds every one of its steps' inputs and losses at once"),
    "cpu_replicas": (None, 64, "each logical CPU compiles its own copy of the step"),
    "intra_op_threads": (None, 1024, "TensorFlow starts every thread of its pools at once"),
    "inter_op_threads": (None, 1024, "TensorFlow starts every thread of its pools at once"),
    "collective_timeout_s": (None, 2**31 - 1, "TensorFlow's collectives count it in milliseconds"),
    "cluster_start_timeout_s": (None, 2**31 - 1, "TensorFlow's collectives count it in milliseconds"),
}


_T = TypeVar("_T")


def _setting(default: _T, help: str, shown: str | None = None, choices: tuple[str, ...] = ()) -> _T:
    """A TrainConfig field with its help text; `shown` is how the default reads in the flags table."""
    return dataclasses.field(default=default, metadata={"help": help, "shown": shown, "choices": choices})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One run's settings; the entry point builds it from flags, tests build it directly. Built means valid:
    a bad value raises UserError naming it."""

    data_dir: str | None = _setting(
        None,
        "folder or `gs://` URL with `mnist.npz` or the four IDX files "
        "(unset: the Keras cache, Keras's download, the PyPI mirror)",
        "unset",
    )
    logdir: str = _setting("logs", "where run directories go")
    events_dir: str | None = _setting(
        None,
        "this run's TensorBoard events here instead of in its run directory "
        "(a folder or a `gs://` URL; Vertex AI: `AIP_TENSORBOARD_LOG_DIR`)",
    )
    export_dir: str | None = _setting(
        None,
        "a copy of the SavedModel here too: a new or empty folder, an earlier "
        "export, or a `gs://` URL (Vertex AI: `AIP_MODEL_DIR`)",
    )
    run_name: str | None = _setting(
        None,
        "the run's directory under `--logdir`; the same command with the same `--run_name` resumes it",
        "timestamp",
    )
    strategy: str = _setting(
        "auto",
        "`auto`: multi-worker with TF_CONFIG, mirrored over 2+ GPUs, else one "
        "device; or `multi_worker`, `mirrored`, `one_device`",
        choices=STRATEGIES,
    )
    num_gpus: int | None = _setting(None, "the first N GPUs, the only ones the process sees; 0: the CPU", "all visible")
    gpu_memory_growth: bool = _setting(
        True, "take GPU memory as needed, not all of it at start-up (`TF_FORCE_GPU_ALLOW_GROWTH`, if set, wins)"
    )
    require_gpus: bool = _setting(
        False,
        "stop before training, exit 2, when TensorFlow registers no GPU (what "
        "the launch scripts set where they ask for GPUs)",
    )
    cpu_replicas: int = _setting(0, "N >= 2: an N-replica MirroredStrategy on N logical CPUs")
    batch_size: int = _setting(128, "examples **per replica** per step (global batch: this x replicas)")
    learning_rate: float = _setting(1.5, "plain SGD learning rate")
    epochs: int = _setting(10, "passes over the 60,000 training images")
    max_steps: int = _setting(0, "if > 0, this many steps instead of `--epochs`")
    seed: int = _setting(42, "seeds the initialisation and the shuffling")
    shuffle_buffer: int = _setting(10000, "the tutorial's `shuffle(10000)` buffer")
    log_every: int = _setting(100, "log the training loss every this many steps")
    eval_every: int = _setting(500, "evaluate on the whole test set every this many steps and at the end")
    input: str = _setting(
        "device", "`device`: data resident on each replica's device; `tfdata`: the tutorial's pipeline", choices=INPUTS
    )
    precision: str = _setting(
        "float32",
        "`mixed_bfloat16`, `mixed_float16`: matmuls and activations in that "
        "type, float32 weights, loss and update (float16 with loss scaling; docs/precision.md)",
        choices=PRECISIONS,
    )
    steps_per_loop: int = _setting(50, "training steps per `tf.function` call (one host sync per call)")
    checkpoint_every: int = _setting(200, "steps between checkpoints (0: only at the end)")
    keep_checkpoints: int = _setting(3, "how many recent checkpoints to keep")
    overwrite: bool = _setting(False, "delete an existing distmnist run of that name and start afresh")
    jit_compile: bool | None = _setting(
        None, "XLA: the whole call with one replica, each replica's step with several", "on for `device`"
    )
    collective_timeout_s: int = _setting(60, "multi-worker: a lost peer fails the run within about this")
    cluster_start_timeout_s: int = _setting(600, "multi-worker: how long workers wait for each other")
    deterministic: bool = _setting(False, "op determinism: bit-identical reruns on GPUs too")
    intra_op_threads: int = _setting(0, "threads inside one op (0: distmnist's choice, docs/performance.md)")
    inter_op_threads: int = _setting(0, "ops run at once (0: distmnist's choice, docs/performance.md)")
    profile_steps: str = _setting(
        "", "`START,END`: a TensorBoard profile of steps START to END (Profile tab; docs/performance.md)", shown="none"
    )

    def __post_init__(self) -> None:
        self._validate()

    def _validate(self) -> None:
        """Raises UserError naming the first bad value."""
        positive = (
            "batch_size",
            "epochs",
            "shuffle_buffer",
            "log_every",
            "eval_every",
            "steps_per_loop",
            "collective_timeout_s",
            "cluster_start_timeout_s",
        )
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
                raise UserError(f"--{name} must be >= 0 (0 means distmnist's choice), got {getattr(self, name)}")
        if self.cpu_replicas < 0:
            raise UserError(f"--cpu_replicas must be >= 0, got {self.cpu_replicas}")
        if self.require_gpus and (self.num_gpus == 0 or self.cpu_replicas >= 2):
            raise UserError("--require_gpus asks for GPUs, but --num_gpus=0 or --cpu_replicas trains on the CPU")
        if self.strategy not in STRATEGIES:
            raise UserError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.precision not in PRECISIONS:
            raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.input not in INPUTS:
            raise UserError(f"--input must be one of {', '.join(INPUTS)}, got {self.input!r}")
        self._check_ranges()
        self.profile_range()
        for name in PATH_SETTINGS:
            _check_path(name, getattr(self, name), optional=name != "logdir")
        if self.run_name is not None:
            _check_name("run_name", self.run_name)
            if "/" in self.run_name or self.run_name in (".", ".."):
                raise UserError(f"--run_name must be a plain directory name, got {self.run_name!r}")
            if len(self.run_name.encode()) > MAX_RUN_NAME_BYTES:
                raise UserError(
                    f"--run_name is {len(self.run_name.encode())} bytes long; it must be at most "
                    f"{MAX_RUN_NAME_BYTES} (file names end at {NAME_MAX} bytes, and the run's claim "
                    "file adds to its name)"
                )

    def _check_ranges(self) -> None:
        """Every integer setting within what TensorFlow takes (INT_LIMITS, else an int64)."""
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, int) or isinstance(value, bool):
                continue
            low, high, why = INT_LIMITS.get(field.name, (None, INT64_MAX, "TensorFlow takes it as an int64"))
            if high is not None and value > high:
                raise UserError(f"--{field.name} must be at most {high:,} ({why}), got {value}")
            if low is not None and value < low:
                raise UserError(f"--{field.name} must be at least {low:,} ({why}), got {value}")

    def profile_range(self) -> tuple[int, int] | None:
        """--profile_steps as (start, end), None when not set; UserError when it does not read START,END."""
        if not self.profile_steps:
            return None
        parts = self.profile_steps.split(",")
        try:
            start, end = (int(p) for p in parts) if len(parts) == 2 else (None, None)
        except ValueError:
            start = end = None
        if start is None or end is None or not 0 <= start < end <= INT64_MAX:
            raise UserError(
                f"--profile_steps must read START,END with 0 <= START < END (for example 200,300), got "
                f"{self.profile_steps!r}"
            )
        return start, end


def _check_name(name: str, value: str) -> None:
    """UserError unless value can name a file: not empty, no NUL byte, UTF-8 text (TensorBoard's records and the
    run's JSON hold it as such; a byte that is not, taken from the command line, would fail there)."""
    if not value:
        raise UserError(f"--{name} must not be empty")
    if "\0" in value:
        raise UserError(f"--{name} must not contain a NUL byte, got {value!r}")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise UserError(f"--{name} must be UTF-8 text, got {value!r}") from None


def _check_path(name: str, value: str | None, optional: bool) -> None:
    """UserError unless value can be a path: _check_name's rules, and no name in it longer than a filesystem takes
    (a URL's object names are the store's to judge)."""
    if value is None:
        return
    if not value and optional:
        raise UserError(f"--{name} must not be empty; leave it unset instead")
    _check_name(name, value)
    if "://" not in value:
        longest = max(value.split("/"), key=lambda part: len(part.encode()))
        if len(longest.encode()) > NAME_MAX:
            raise UserError(
                f"--{name} holds a name of {len(longest.encode())} bytes ({longest[:20]}...); file names "
                f"end at {NAME_MAX} bytes"
            )


def with_run_name(config: TrainConfig) -> TrainConfig:
    """The config with its run's name, decided here for every caller: --run_name, else the time the run started
    (the entry point names the run before it claims it; train_and_evaluate names a config that comes without)."""
    if config.run_name is not None:
        return config
    return dataclasses.replace(config, run_name=datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))


def field_descriptions() -> Iterator[tuple[str, Any, Any, str, str | None, tuple[str, ...]]]:
    """(name, default, type annotation, help, how the default reads, choices) for every TrainConfig field, in
    order: what the flags, the README's table and a sweep's help are made from."""
    for field in dataclasses.fields(TrainConfig):
        meta = field.metadata
        yield field.name, field.default, field.type, meta["help"], meta["shown"], meta["choices"]


def flags_table() -> str:
    """The README's flags table, made from the config's fields."""
    rows = ["| flag | default | meaning |", "|---|---|---|"]
    for name, default, _, help_text, shown, _ in field_descriptions():
        if shown is None:
            shown = (
                ("on" if default else "off")
                if isinstance(default, bool)
                else f"`{default}`"
                if isinstance(default, str)
                else str(default)
            )
        rows.append(f"| `--{name}` | {shown} | {help_text} |")
    return "\n".join(rows)
