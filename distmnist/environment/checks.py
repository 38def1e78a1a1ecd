"""The doctor's checks, one finding each with what to do: Python, TensorFlow, the NVIDIA driver, the CUDA libraries,
the GPUs TensorFlow registered, XLA, an all-reduce, and a short training run (`diagnose`). `gpu_finding` is the
one line `distmnist.train --require_gpus` stops with."""

import dataclasses
import importlib.metadata
import os
import platform
import re
import sys
import time
import types

import distmnist
from distmnist.common import logfilters
from distmnist.environment import tfquiet
from distmnist.training import devices
from distmnist.training.devices import configure_gpus, driver_gpus, nvidia_driver_present

SUPPORTED_PYTHONS = ((3, 10), (3, 13))  # TensorFlow 2.21's wheels
# CUDA 12 runs on any driver >= 525.60.13 through minor-version compatibility (NVIDIA's CUDA compatibility
# guide); TensorFlow 2.21 is built with CUDA 12.5.1, whose own toolkit driver is 555.42.06.
MIN_DRIVER = (525, 60, 13)
BUILD_DRIVER = (555, 42, 6)
CUDA_WHEELS = (
    "nvidia-cuda-runtime-cu12",
    "nvidia-cublas-cu12",
    "nvidia-cudnn-cu12",
    "nvidia-cufft-cu12",
    "nvidia-cusolver-cu12",
    "nvidia-cusparse-cu12",
    "nvidia-nccl-cu12",
    "nvidia-cuda-nvcc-cu12",
)
GPU_REASONS = (
    "cuInit",
    "Cannot dlopen",
    "cuda drivers",
    "Could not load dynamic library",
    "libcuda",
    "CUDA driver version is insufficient",
    "Skipping registering GPU devices",
)


@dataclasses.dataclass
class Check:
    name: str
    status: str  # "ok", "info" (nothing wrong, worth knowing) or "FAIL"
    found: str
    fix: str = ""


def _version(text: str) -> tuple:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def check_python() -> Check:
    v = sys.version_info[:2]
    lo, hi = SUPPORTED_PYTHONS
    where = os.path.relpath(sys.executable) if sys.executable.startswith(os.getcwd() + os.sep) else sys.executable
    found = f"Python {platform.python_version()} ({where})"
    if lo <= v <= hi:
        return Check("python", "ok", found)
    return Check(
        "python",
        "FAIL",
        found,
        f"TensorFlow 2.21 supports Python {lo[0]}.{lo[1]}-{hi[0]}.{hi[1]}: make a venv with one of those",
    )


def check_tensorflow(tf: types.ModuleType) -> Check:
    info = tf.sysconfig.get_build_info()
    if not info.get("is_cuda_build"):
        return Check(
            "tensorflow",
            "info",
            f"TensorFlow {tf.__version__}, built without CUDA: CPU only",
            "for GPUs on Linux: pip install 'distmnist[gpu]' (tensorflow[and-cuda])",
        )
    return Check(
        "tensorflow",
        "ok",
        f"TensorFlow {tf.__version__}, built for CUDA {info.get('cuda_version')}, cuDNN {info.get('cudnn_version')}",
    )


def check_driver(gpus: list) -> Check:
    if not gpus:
        if nvidia_driver_present():
            return Check(
                "driver",
                "FAIL",
                "an NVIDIA driver is installed but nvidia-smi lists no GPU",
                "run nvidia-smi; reboot after a driver install, or reinstall the driver",
            )
        return Check("driver", "info", "no NVIDIA driver (no nvidia-smi): this machine trains on its CPU")
    version = gpus[0][3]
    found = f"NVIDIA driver {version}, {len(gpus)} GPU(s)"
    if _version(version) < MIN_DRIVER:
        return Check(
            "driver",
            "FAIL",
            found,
            "CUDA 12 needs driver >= 525.60.13 (555.42.06 or newer "
            "recommended for TensorFlow 2.21's CUDA 12.5): update the NVIDIA driver",
        )
    if _version(version) < BUILD_DRIVER:
        return Check("driver", "ok", found + " (CUDA 12 minor-version compatibility; 555.42.06+ is TensorFlow's own)")
    return Check("driver", "ok", found)


def check_cuda_libraries(tf: types.ModuleType, gpus: list) -> Check:
    installed = []
    for name in CUDA_WHEELS:
        try:
            installed.append(f"{name.replace('nvidia-', '').replace('-cu12', '')} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    reasons = [line.split("] ", 1)[-1] for line in logfilters.captured if any(r in line for r in GPU_REASONS)]
    if not tf.sysconfig.get_build_info().get("is_cuda_build"):
        return Check("cuda libraries", "info", "not needed by this TensorFlow build")
    if gpus and reasons and not tf.config.list_physical_devices("GPU"):
        return Check(
            "cuda libraries",
            "FAIL",
            "TensorFlow said: " + " | ".join(dict.fromkeys(reasons))[:400],
            "pip install 'distmnist[gpu]' in this venv (the CUDA wheels), and unset LD_LIBRARY_PATH "
            "entries pointing at another CUDA",
        )
    if not gpus:
        found = ", ".join(installed) or "no CUDA wheels"
        return Check("cuda libraries", "info", found + ": none needed without a GPU")
    if installed:
        return Check("cuda libraries", "ok", ", ".join(installed))
    return Check(
        "cuda libraries",
        "info",
        "no CUDA wheels (system CUDA libraries, if any)",
        "pip install 'distmnist[gpu]' brings CUDA and cuDNN as wheels",
    )


def check_gpus(tf: types.ModuleType, gpus: list) -> Check:
    registered = tf.config.list_physical_devices("GPU")
    visible = tf.config.get_visible_devices("GPU")
    described = []
    for i, device in enumerate(visible):
        details = tf.config.experimental.get_device_details(device)
        cc = details.get("compute_capability")
        memory = next((g[2] for g in gpus if g[0] == str(i)), "?")
        described.append(
            f"{device.name.replace('/physical_device:', '')} {details.get('device_name', '?')} "
            f"(compute {'.'.join(map(str, cc)) if cc else '?'}, {memory} MiB)"
        )
    if visible:
        hidden = (
            f" ({len(registered) - len(visible)} more hidden from this process)"
            if len(registered) > len(visible)
            else ""
        )
        return Check("gpus", "ok", "TensorFlow registered " + "; ".join(described) + hidden)
    if registered:
        return Check(
            "gpus",
            "FAIL",
            f"TensorFlow registered {len(registered)} GPU(s) but this process hides them all",
            "leave tf.config.set_visible_devices alone",
        )
    if gpus:
        return Check(
            "gpus",
            "FAIL",
            f"the driver lists {len(gpus)} GPU(s), TensorFlow registered none",
            "see the driver and cuda libraries lines above; CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')}",
        )
    return Check("gpus", "info", "none: TensorFlow trains on the CPU")


def gpu_finding(tf: types.ModuleType) -> str:
    """Why this process has no GPU to train on, in one line: the first of the doctor's checks that says why (a
    TensorFlow built without CUDA, no NVIDIA driver, CUDA libraries TensorFlow could not load, GPUs the driver
    lists that TensorFlow did not register)."""
    gpus = driver_gpus()
    checks = [check_tensorflow(tf), check_driver(gpus), check_cuda_libraries(tf, gpus), check_gpus(tf, gpus)]
    for check in checks:
        if check.status == "FAIL" or (check.status == "info" and check.name in ("tensorflow", "driver")):
            return check.found + (f" ({check.fix})" if check.fix else "")
    return "TensorFlow registered no GPU"


def check_precision(tf: types.ModuleType) -> Check:
    """What this machine's training devices do with bfloat16 and float16, and the --precision it recommends."""
    support = devices.support_of(tf.config.get_visible_devices("GPU"))
    kinds = ", ".join(f"{p.replace('mixed_', '')} {'native' if n else 'emulated'}" for p, n in support.native.items())
    return Check("precision", "ok", f"{kinds}; recommended --precision={support.recommended} ({support.why})")


def check_xla(tf: types.ModuleType) -> Check:
    devices = [d.name for d in tf.config.list_logical_devices("GPU")] or [tf.config.list_logical_devices("CPU")[0].name]
    results, failed = [], []
    for device in devices:
        with tf.device(device):
            try:
                x = tf.random.stateless_uniform([256, 256], [0, 1])
                value = tf.function(lambda a: tf.reduce_sum(tf.matmul(a, a)), jit_compile=True)(x)
                float(value)
                results.append(device.split("device:")[-1])
            except Exception as exc:  # noqa: BLE001 - any failure is the finding
                failed.append(f"{device}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    if failed:
        return Check("xla", "FAIL", "; ".join(failed), "train with --nojit_compile, and report the error")
    return Check("xla", "ok", "compiles and runs on " + ", ".join(results))


def check_all_reduce(tf: types.ModuleType) -> Check:
    from distmnist.training.strategy import make_strategy

    gpus = tf.config.list_logical_devices("GPU")
    try:
        if len(gpus) >= 2:
            strategy = tf.distribute.MirroredStrategy(
                [g.name for g in gpus], cross_device_ops=tf.distribute.NcclAllReduce()
            )
            label = f"NCCL across {len(gpus)} GPUs"
        else:
            strategy = make_strategy(cpu_replicas=2).strategy
            label = "2 logical CPUs" + (" (one GPU: nothing to all-reduce across)" if gpus else "")
        values = strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(float(ctx.replica_id_in_sync_group + 1))
        )
        total = float(strategy.reduce(tf.distribute.ReduceOp.SUM, values, axis=None))
        n = strategy.num_replicas_in_sync
        expected = n * (n + 1) / 2
    except Exception as exc:  # noqa: BLE001
        return Check(
            "all-reduce",
            "FAIL",
            f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
            "multi-GPU training will fail: check NCCL (pip install 'distmnist[gpu]')",
        )
    if total != expected:
        return Check("all-reduce", "FAIL", f"{label}: sum {total}, expected {expected}", "report this")
    return Check("all-reduce", "ok", f"{label}: sum of {n} replicas correct")


def check_training(tf: types.ModuleType, steps: int) -> Check:
    import numpy as np

    from distmnist.common.config import TrainConfig
    from distmnist.data.dataset import Mnist
    from distmnist.runs.runsetup import trainer_settings
    from distmnist.training.strategy import make_strategy
    from distmnist.training.trainer import Trainer, run_steps

    rng = np.random.default_rng(0)
    labels = (np.arange(8192) % 10).astype(np.uint8)
    images = rng.integers(0, 256, size=(8192, 28, 28), dtype=np.uint8)
    mnist = Mnist(images, labels, images[:1000], labels[:1000], source="random pixels")
    choice = make_strategy(num_gpus=None if tf.config.get_visible_devices("GPU") else 0)
    try:
        trainer = Trainer(trainer_settings(TrainConfig(learning_rate=0.1), None), choice.strategy, mnist)
        run_steps(trainer, 20)  # tracing and compilation
        start = time.perf_counter()
        losses = run_steps(trainer, steps)
        rate = steps * trainer.global_batch_size / (time.perf_counter() - start)
    except Exception as exc:  # noqa: BLE001
        return Check(
            "training",
            "FAIL",
            f"{choice.name}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
            "report this with the output of this command",
        )
    if not np.all(np.isfinite(losses)):
        return Check("training", "FAIL", f"{choice.name}: non-finite loss", "report this")
    return Check(
        "training",
        "ok",
        f"{choice.name} on {', '.join(choice.devices)}: {steps} steps, "
        f"{rate:,.0f} examples/s (random pixels, batch {trainer.global_batch_size})",
    )


def diagnose(smoke_steps: int) -> list:
    checks = [check_python()]
    gpus = driver_gpus()
    if not distmnist.LOG_LEVEL_SET_BY_USER:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"  # every line TensorFlow gives, kept (not shown) for the reasons
    with logfilters.capturing_stderr(replay=False):
        return checks + _diagnose_with_tensorflow(gpus, smoke_steps)


def _diagnose_with_tensorflow(gpus: list, smoke_steps: int) -> list:
    tf = tfquiet.import_tensorflow(replay=False)
    visible = tf.config.get_visible_devices("GPU")
    if not visible:
        from distmnist.training.strategy import make_strategy

        make_strategy(cpu_replicas=2)  # split the CPU before any op runs, for the all-reduce check
    else:
        configure_gpus(len(visible), memory_growth=True)
    checks = [
        check_tensorflow(tf),
        check_driver(gpus),
        check_cuda_libraries(tf, gpus),
        check_gpus(tf, gpus),
        check_precision(tf),
        check_xla(tf),
        check_all_reduce(tf),
    ]
    if smoke_steps > 0:
        checks.append(check_training(tf, smoke_steps))
    return checks
