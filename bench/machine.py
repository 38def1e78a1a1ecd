"""This machine as the bench reports it: the CPU (its model name, the features that decide which kernels
TensorFlow, XLA and oneDNN run, its cores), the GPUs, the frameworks' versions, and its kind: the name of its
results file (bench/results/<kind>.md).

A kind is the CPU's vendor and line from its model name (`amd-epyc`, `intel-xeon`), then its widest vector or
matrix instructions: `amx` (amx_bf16: Intel's tiles), `avx512-bf16` (avx512_bf16 without AMX: AMD from Zen 4, Intel
Cooper Lake), `avx512`, `avx2`; on Arm `sve2` or `sve`, `-bf16` where it has bfloat16 dots. Machines with GPUs add
their count and model (`...-1x-nvidia-l4`), as their figures are the GPUs'. The cores are not in the name: the file
says how many the run had."""

import importlib.metadata
import os
import platform
import re

CPUINFO = "/proc/cpuinfo"
# What the kernels' speed depends on: vector width and FMA for float32, the low types' instructions for the mixed
# precisions (docs/precision.md), Arm's scalable vectors.
FEATURES = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_bf16",
    "avx512_fp16",
    "amx_bf16",
    "amx_fp16",
    "asimd",
    "sve",
    "sve2",
    "bf16",
)
X86_TIERS = (("amx_bf16", "amx"), ("avx512_bf16", "avx512-bf16"), ("avx512f", "avx512"), ("avx2", "avx2"))
ARM_TIERS = (("sve2", "sve2"), ("sve", "sve"))


def read_cpuinfo(path: str = CPUINFO) -> tuple:
    """(model name, feature flags) of the first processor in /proc/cpuinfo ("flags" on x86, "Features" on Arm);
    ("", set()) where there is no such file."""
    model, features = "", None
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not model:
                    model = value.strip()
                elif key in ("flags", "Features") and features is None:
                    features = set(value.split())
    except OSError:
        pass
    return model, features or set()


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def cpu_kind(model: str, features: set, arch: str = "") -> str:
    """The kind of CPU: vendor and line from the model name (its words without digits, trademarks, "CPU" or
    "Processor"; the architecture where there is no model name), then its widest instructions (module docstring)."""
    words = [
        w
        for w in re.sub(r"\((R|TM|C)\)", " ", model, flags=re.I).split()
        if w.isalpha() and w.lower() not in ("cpu", "processor")
    ]
    name = _slug(" ".join(words[:2])) or _slug(arch) or "unknown"
    tiers = X86_TIERS if any(feature in features for feature, _ in X86_TIERS) else ARM_TIERS
    tier = next((label for feature, label in tiers if feature in features), "")
    if tiers is ARM_TIERS and "bf16" in features:
        tier = f"{tier}-bf16" if tier else "bf16"
    return f"{name}-{tier}" if tier else name


def kind(cpu: str, features: set, gpus: list) -> str:
    """The results file's name without .md: the CPU's kind, and the GPUs' count and model where there are any."""
    made = cpu_kind(cpu, features, platform.machine())
    return f"{made}-{len(gpus)}x-{_slug(gpus[0])}" if gpus else made


def version(package: str) -> str | None:
    """An installed distribution's version, without importing it (JAX and PyTorch run in processes of their own)."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def describe(tf) -> dict:
    """What bench.json's `machine` holds."""
    model, features = read_cpuinfo()
    cpu = model or platform.processor() or platform.machine()
    gpus = [
        tf.config.experimental.get_device_details(g).get("device_name", g.name)
        for g in tf.config.get_visible_devices("GPU")
    ]
    return {
        "cpu": cpu,
        "cpu_features": [f for f in FEATURES if f in features],
        "cores": os.cpu_count(),
        "gpus": gpus,
        "kind": kind(model, features, gpus),
        "python": platform.python_version(),
        "tf_version": tf.__version__,
        "jax_version": version("jax"),
        "torch_version": version("torch"),
    }
