"""XLA's CPU options, set in the environment before TensorFlow starts (XLA reads XLA_FLAGS once, at its first use).

TensorFlow 2.21's XLA hands only reductions to YNNPACK on the CPU and computes matrix products with Eigen;
JAX's newer XLA sends its dots to YNNPACK too. Asking TensorFlow's XLA for YNNPACK dots as well
(`--xla_cpu_experimental_ynn_fusion_type=dot,reduce`) puts five of the training step's eight dots through
YNNPACK, as JAX does: docs/performance.md has what it is worth. A user's own choice in XLA_FLAGS is kept.
GPUs are not affected.
"""

import os

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
YNN_SETTING = f"{YNN_FLAG}=dot,reduce"


def with_ynnpack_dots(xla_flags: str) -> str:
    """XLA_FLAGS with YNNPACK for dots and reductions, unless the flags already choose YNNPACK's fusions."""
    if YNN_FLAG in xla_flags:
        return xla_flags
    return f"{xla_flags} {YNN_SETTING}".strip()


added = False  # whether configure() added the flag to this process's XLA_FLAGS (not the user's choice)


def configure() -> None:
    """Sets XLA_FLAGS for this process (and the processes it starts); before TensorFlow's first XLA use."""
    global added
    before = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = with_ynnpack_dots(before)
    added = added or os.environ["XLA_FLAGS"] != before


def as_the_user_set(xla_flags: str) -> str:
    """XLA_FLAGS without what configure() added: for a process that is not distmnist's (the bench's JAX)."""
    return " ".join(t for t in xla_flags.split() if not (added and t == YNN_SETTING))
