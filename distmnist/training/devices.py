"""Which devices a process trains on, decided from the devices it can use, and how it takes the GPUs' memory.

Every choice (the strategy, `--num_gpus`, the warnings, the doctor's verdict) is made from the GPUs TensorFlow
lets this process use: its *visible* GPUs, not the physical list. A process that hid its GPUs
(`tf.config.set_visible_devices([], "GPU")`, as the tests do) or was given fewer by CUDA_VISIBLE_DEVICES trains
on what is left; the physical list still names the hidden ones. `plan` is that decision, a pure function of
the lists; `make_strategy` (strategy.py) builds what it says.

TensorFlow maps nearly all memory of every visible GPU when it first uses one, so several processes on one host
(a local cluster, a notebook beside a run) would fight over it: this process sees only the GPUs it trains on
(`--num_gpus=k`: the first k) and grows its memory as it needs it. TF_FORCE_GPU_ALLOW_GROWTH, when a user sets
it, overrides the flag, as it does in TensorFlow itself.
"""

import dataclasses
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence

from distmnist.common.errors import UserError

DOCTOR_HINT = "python -m distmnist.doctor says why"
# Where the NVIDIA kernel driver says it is loaded; DISTMNIST_NVIDIA_PROC points elsewhere (the tests, to be a
# machine without a driver on one that has it).
NVIDIA_PROC = "/proc/driver/nvidia/version"


def nvidia_driver_present() -> bool:
    """Whether this machine has an NVIDIA driver (so TensorFlow ought to see GPUs), without asking TensorFlow."""
    return (
        os.path.exists(os.environ.get("DISTMNIST_NVIDIA_PROC", NVIDIA_PROC)) or shutil.which("nvidia-smi") is not None
    )


def nvidia_smi(*query: str) -> list:
    """Rows of `nvidia-smi --query-gpu=... --format=csv,noheader,nounits`, or [] without nvidia-smi."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={','.join(query)}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    if out.returncode != 0:
        return []
    return [[field.strip() for field in line.split(",")] for line in out.stdout.splitlines() if line.strip()]


def driver_gpus() -> list:
    """(index, name, total memory MiB, driver version) of each GPU the NVIDIA driver lists."""
    return [tuple(row) for row in nvidia_smi("index", "name", "memory.total", "driver_version") if len(row) == 4]


@dataclasses.dataclass(frozen=True)
class DevicePlan:
    """What a process trains on: `kind` is multi_worker, logical_cpus, mirrored or one_device; `gpus` how many of
    its visible GPUs it uses (the first ones); `warnings` lines for the log."""

    kind: str
    gpus: int
    cpu_replicas: int = 0
    warnings: tuple = ()


def plan(
    visible_gpus: Sequence,
    physical_gpus: Sequence,
    num_gpus: int | None = None,
    cpu_replicas: int = 0,
    kind: str = "auto",
    in_cluster: bool = False,
    driver_present: bool = False,
) -> DevicePlan:
    """The devices of a run, from plain lists: `visible_gpus` those TensorFlow lets this process use,
    `physical_gpus` those it registered (hidden ones included). kind "auto": a cluster means multi_worker;
    otherwise two or more GPUs give a mirrored strategy over exactly that many, one GPU or none one device.
    num_gpus None means every visible GPU; more than are visible uses what there is, with a warning.
    cpu_replicas >= 2 gives that many logical CPUs and leaves every GPU alone."""
    if num_gpus is not None and num_gpus < 0:
        raise UserError(f"--num_gpus must be >= 0, got {num_gpus}")
    if cpu_replicas < 0:
        raise UserError(f"--cpu_replicas must be >= 0, got {cpu_replicas}")
    if kind == "auto":
        kind = "multi_worker" if in_cluster else "single_host"
    if kind == "multi_worker":
        if not in_cluster:
            raise UserError("--strategy=multi_worker needs TF_CONFIG naming the cluster (see launch/local_cluster.sh)")
        if cpu_replicas:
            raise UserError(
                "--cpu_replicas cannot be combined with a multi-worker cluster: each worker trains on "
                "its GPUs or its CPU"
            )
    elif cpu_replicas >= 2:
        return DevicePlan("logical_cpus", 0, cpu_replicas)
    visible, hidden = len(visible_gpus), len(physical_gpus) - len(visible_gpus)
    use = visible if num_gpus is None else min(num_gpus, visible)
    warnings = []
    if num_gpus is not None and num_gpus > visible:
        unseen = f", {hidden} more hidden from this process" if hidden > 0 else ""
        warnings.append(
            f"--num_gpus={num_gpus} requested but {visible} GPU(s) visible{unseen}: using {visible} ({DOCTOR_HINT})"
        )
    elif not physical_gpus and num_gpus != 0 and driver_present:
        warnings.append(
            f"this machine has an NVIDIA driver but TensorFlow registered no GPU: training on the CPU ({DOCTOR_HINT})"
        )
    if kind != "multi_worker":
        kind = "mirrored" if kind == "mirrored" or (kind != "one_device" and use >= 2) else "one_device"
    return DevicePlan(kind, use, 0, tuple(warnings))


def configure_gpus(count: int, memory_growth: bool = True) -> list:
    """Makes only the first `count` of this process's visible GPUs visible, with memory growth as asked; returns
    their names ("/gpu:0", ...). Once TensorFlow has initialised its GPUs nothing can change: that is said, not
    raised."""
    import tensorflow as tf
    from absl import logging

    visible = tf.config.get_visible_devices("GPU")
    wanted = visible[:count]
    try:
        if len(wanted) < len(visible):
            tf.config.set_visible_devices(wanted, "GPU")
        if "TF_FORCE_GPU_ALLOW_GROWTH" not in os.environ:
            for gpu in wanted:
                tf.config.experimental.set_memory_growth(gpu, memory_growth)
    except RuntimeError:
        logging.warning(
            "TensorFlow has initialised its GPUs already: --num_gpus visibility and memory growth are as they were"
        )
    return [f"/gpu:{i}" for i in range(len(wanted))]


CPUINFO = "/proc/cpuinfo"
# CPU features whose oneDNN kernels run each low precision's matmuls in hardware (TensorFlow's CPU build uses
# oneDNN for them outside XLA; without these, the types are converted to and from float32: emulated). None for
# float16: on a Xeon with avx512_fp16, TensorFlow 2.21's float16 matmul ran no faster than float32's (144 GFLOP/s
# against 157 at 128x784 by 784x512) and its XLA step slower (docs/precision.md).
NATIVE_CPU_FEATURES = {"mixed_bfloat16": ("amx_bf16", "avx512_bf16"), "mixed_float16": ()}
TILE_CPU_FEATURES = {"mixed_bfloat16": "amx_bf16"}  # AMX: Intel's matrix tiles
MIN_GPU_CAPABILITY = {"mixed_bfloat16": (8, 0), "mixed_float16": (7, 0)}  # bfloat16 from Ampere, float16 tensor cores
ONEDNN_SWITCH = "TF_ENABLE_ONEDNN_OPTS"  # TensorFlow turns oneDNN on by default on CPUs with these features


def onednn_switched_off(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the user turned TensorFlow's oneDNN kernels off (TF_ENABLE_ONEDNN_OPTS=0 or false, as
    TensorFlow's own banner suggests to silence it): then no kernel uses the CPU's bfloat16 or float16 features."""
    return environ.get(ONEDNN_SWITCH, "").strip().lower() in ("0", "false")


def cpu_flags(path: str = CPUINFO) -> set:
    """The first processor's feature flags (empty where /proc/cpuinfo is not there)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def all_cpus(device_names: Sequence[str]) -> bool:
    """Pure: whether these devices ("/cpu:0", "/job:worker/replica:0/task:1/device:GPU:0", ...) include no GPU."""
    return not any("GPU" in name.upper() for name in device_names)


def in_tiles(precision: str, flags: set, onednn_off: bool = False) -> bool:
    """Pure: whether oneDNN runs `precision`'s matmuls in the CPU's AMX tiles (flags: cpu_flags())."""
    return TILE_CPU_FEATURES.get(precision, "") in flags and not onednn_off


@dataclasses.dataclass(frozen=True)
class PrecisionSupport:
    """What this machine's devices do with each mixed precision, and the --precision to use."""

    native: dict  # precision -> bool: the training devices run its matmuls in hardware
    recommended: str
    why: str
    on_cpu: bool = True  # the CPU trains (no GPU)
    # precision -> this CPU's features for it, which nothing uses because the user switched oneDNN off
    switched_off: dict = dataclasses.field(default_factory=dict)


def precision_support(flags: set, gpu_capabilities: Sequence, onednn_off: bool = False) -> PrecisionSupport:
    """Pure: from the CPU's feature flags, the compute capabilities of the GPUs that will train (empty: the CPU
    trains) and whether the user switched oneDNN off (onednn_switched_off)."""
    if gpu_capabilities:
        lowest = min(tuple(c) for c in gpu_capabilities)
        native = {p: lowest >= cc for p, cc in MIN_GPU_CAPABILITY.items()}
        shown = ".".join(map(str, lowest))
        if native["mixed_bfloat16"]:
            return PrecisionSupport(
                native,
                "mixed_bfloat16",
                f"GPUs of compute capability {shown} run bfloat16 natively, without loss scaling",
                on_cpu=False,
            )
        if native["mixed_float16"]:
            return PrecisionSupport(
                native,
                "mixed_float16",
                f"GPUs of compute capability {shown} have float16 tensor cores (bfloat16 needs 8.0)",
                on_cpu=False,
            )
        return PrecisionSupport(
            native, "float32", f"GPUs of compute capability {shown} have no tensor cores", on_cpu=False
        )
    hardware = {p: ", ".join(f for f in features if f in flags) for p, features in NATIVE_CPU_FEATURES.items()}
    native = {p: bool(found) and not onednn_off for p, found in hardware.items()}
    if native["mixed_bfloat16"]:
        return PrecisionSupport(
            native,
            "mixed_bfloat16",
            f"the CPU has {hardware['mixed_bfloat16']}: oneDNN runs bfloat16 matmuls in hardware",
        )
    if hardware["mixed_bfloat16"]:
        return PrecisionSupport(
            native,
            "float32",
            f"the CPU has {hardware['mixed_bfloat16']}, but {ONEDNN_SWITCH}=0 "
            "switches off the oneDNN kernels that use it: unset it for --precision=mixed_bfloat16",
            switched_off={p: found for p, found in hardware.items() if found},
        )
    return PrecisionSupport(
        native,
        "float32",
        "the CPU has neither amx_bf16 nor avx512_bf16: bfloat16 and float16 "
        "are emulated here, no faster than float32 and less precise",
    )


def support_of(gpus: Sequence) -> PrecisionSupport:
    """precision_support for this CPU and the given TensorFlow GPU devices (empty: the CPU trains)."""
    import tensorflow as tf

    return precision_support(
        cpu_flags(),
        [tf.config.experimental.get_device_details(g).get("compute_capability") or (0, 0) for g in gpus],
        onednn_switched_off(),
    )


def resolve_xla(jit_compile: bool | None, input: str, precision: str, support: PrecisionSupport | None) -> bool:
    """Whether a run's training call uses XLA, decided here for every caller: the user's --jit_compile when given;
    otherwise on for the device input (XLA cannot hold a tf.data iterator), except that a mixed precision on a CPU
    that runs it natively leaves the step's matmuls to oneDNN (XLA's CPU dots do not use AMX; docs/precision.md).
    support: what the training devices do with low precisions (None: not known; the input alone decides)."""
    if jit_compile is not None:
        return jit_compile
    if precision != "float32" and support and support.native[precision] and support.on_cpu:
        return False
    return input == "device"


def emulated(precision: str, support: PrecisionSupport) -> str:
    """Why `precision` is emulated on the training devices, in one line (for the run's warning)."""
    if precision in support.switched_off:
        return (
            f"--precision={precision} cannot use this CPU's {support.switched_off[precision]} with "
            f"{ONEDNN_SWITCH}=0 (oneDNN's kernels off): no faster than float32; unset it to train faster"
        )
    if support.on_cpu and NATIVE_CPU_FEATURES[precision]:
        return (
            f"--precision={precision} is emulated on this CPU (it has none of "
            f"{', '.join(NATIVE_CPU_FEATURES[precision])}): no faster than float32, and less precise"
        )
    if support.on_cpu:
        return (
            f"--precision={precision} is emulated on CPUs (TensorFlow's CPU kernels gain nothing from it): "
            "no faster than float32, and less precise; --precision=mixed_bfloat16 where the CPU has "
            + " or ".join(NATIVE_CPU_FEATURES["mixed_bfloat16"])
        )
    needed = ".".join(map(str, MIN_GPU_CAPABILITY[precision]))
    return f"--precision={precision} is emulated on GPUs below compute capability {needed}: no faster than float32"
