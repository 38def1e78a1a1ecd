"""What the tests share: running the entry points as a user would (a subprocess with the test's Python), tiny
MNIST-shaped data, and reading back what runs wrote."""

import contextlib
import os
import socket
import subprocess
import sys

import numpy as np

from distmnist.data.dataset import Mnist

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


_GPU_VISIBILITY = os.environ.get("CUDA_VISIBLE_DEVICES")  # as the machine had it, before the tests hid GPUs


def hide_gpus_from_subprocesses() -> None:
    """Every process the tests start trains on the CPU, whatever the machine has (conftest calls this)."""
    os.environ["CUDA_VISIBLE_DEVICES"] = ""


def _environment(env=None, gpu: bool = False, unset=()) -> dict:
    full_env = {**os.environ, **(env or {})}
    if gpu:
        full_env.pop("CUDA_VISIBLE_DEVICES", None)
        if _GPU_VISIBILITY is not None:
            full_env["CUDA_VISIBLE_DEVICES"] = _GPU_VISIBILITY
    for name in unset:
        full_env.pop(name, None)
    return full_env


def run_module(
    module: str, *args: str, timeout_s: int = 300, env=None, gpu: bool = False, unset=(), cwd=REPO
) -> subprocess.CompletedProcess:
    """The entry point in a fresh process, on the CPU (gpu=True: with the GPUs the machine shows); `unset` names
    environment variables to remove, as a user's shell would not have them; `cwd`: the folder it runs in."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=str(cwd),
        env=_environment(env, gpu, unset),
    )


def without_tensorflow(folder) -> dict:
    """An environment in which importing TensorFlow fails (a stand-in package first on the path): a process run
    with it shows that it stopped before it would import TensorFlow."""
    stand_in = os.path.join(str(folder), "no_tensorflow", "tensorflow")
    os.makedirs(stand_in, exist_ok=True)
    with open(os.path.join(stand_in, "__init__.py"), "w") as f:
        f.write("raise ImportError('this process imported TensorFlow')\n")
    return {"PYTHONPATH": os.path.dirname(stand_in)}


def run_python(code: str, timeout_s: int = 120, gpu: bool = False, env=None, unset=()) -> subprocess.CompletedProcess:
    """Runs code in a fresh interpreter outside the repository, so distmnist cannot be imported by accident;
    `unset` as for run_module."""
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd="/",
        env=_environment({"TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}, gpu, unset),
    )


def free_ports(count: int) -> list:
    """Ports the kernel says are free on loopback (bound together, so distinct), released for the caller."""
    socks = [socket.socket() for _ in range(count)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@contextlib.contextmanager
def tensorboard_server(logdir):
    """A real TensorBoard (what `make tensorboard` runs) on a free loopback port over logdir: yields (the server
    process, its data API's base URL); always stopped at the end."""
    (port,) = free_ports(1)
    tensorboard = os.path.join(os.path.dirname(sys.executable), "tensorboard")
    server = subprocess.Popen(
        [tensorboard, "--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield server, f"http://127.0.0.1:{port}/data"
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def saved_weights(run_dir) -> dict:
    """The exported model's weights, by variable name, read from the SavedModel's variables."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(os.path.join(run_dir, "saved_model", "variables", "variables"))
    return {
        name: reader.get_tensor(name) for name in sorted(reader.get_variable_to_shape_map()) if name.startswith("mlp/")
    }


def assert_same_weights(a: dict, b: dict) -> None:
    """Bit for bit."""
    assert len(a) == 6 and a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def make_tiny_mnist(num_train: int = 512, num_test: int = 100, seed: int = 0) -> Mnist:
    """Learnable MNIST-shaped data: each class is a fixed random template plus noise, uint8 [N, 28, 28]."""
    rng = np.random.default_rng(seed)
    templates = rng.integers(0, 256, size=(10, 28, 28))

    def split(n):
        labels = np.arange(n) % 10
        rng.shuffle(labels)
        noise = rng.integers(-60, 61, size=(n, 28, 28))
        images = np.clip(templates[labels] + noise, 0, 255).astype(np.uint8)
        return images, labels.astype(np.uint8)

    (x_train, y_train), (x_test, y_test) = split(num_train), split(num_test)
    return Mnist(x_train, y_train, x_test, y_test, source="tiny synthetic")


def read_scalars(run_dir: str) -> dict:
    """Every scalar a run's TensorBoard events hold, by tag: [(step, value)], read by TensorBoard's own reader."""
    from tensorboard.backend.event_processing import event_accumulator
    from tensorflow.python.framework import tensor_util

    acc = event_accumulator.EventAccumulator(run_dir, size_guidance={event_accumulator.TENSORS: 0})
    acc.Reload()
    return {
        tag: [(e.step, float(tensor_util.MakeNdarray(e.tensor_proto))) for e in acc.Tensors(tag)]
        for tag in acc.Tags()["tensors"]
        if acc.SummaryMetadata(tag).plugin_data.plugin_name == "scalars"
    }


def model_weights(model) -> list:
    """A model's weights as numpy arrays, kernel_0, bias_0, ..."""
    return [v.numpy() for v in model.weights]


def parameter_count(model) -> int:
    return sum(int(np.prod(v.shape)) for v in model.weights)


def export_saved_model(weights, path: str, temperature: float = 1.0):
    """A Classifier of these weights and temperature, saved to `path` as a run exports it; returns it."""
    from distmnist.runs.export import Classifier, save

    classifier = Classifier(weights, temperature)
    save(classifier, path)
    return classifier


def trainer_settings(
    total_steps: int | None = None, loss_scale_growth_steps: int | None = None, streams: int = 1, **config_values
):
    """A trainer's settings as a run makes them (runsetup.trainer_settings) from TrainConfig(**config_values), XLA
    resolved without a machine's precision support; total_steps None: the run's length not known; streams: the
    parts of each replica's batch (hostthreads.py)."""
    import dataclasses

    from distmnist.common.config import TrainConfig
    from distmnist.runs.runsetup import trainer_settings as from_config

    settings = from_config(TrainConfig(**config_values), total_steps, streams=streams)
    if loss_scale_growth_steps is not None:
        settings = dataclasses.replace(settings, loss_scale_growth_steps=loss_scale_growth_steps)
    return settings


def evaluator(trainer, mnist: Mnist):
    """The evaluator of the trainer's model on mnist's test set, as a run's controller has it."""
    from distmnist.training.evaluator import Evaluator

    return Evaluator(trainer.strategy, trainer.model, mnist, trainer.settings.streams)


def run_schedule(
    trainer, mnist: Mnist, total_steps: int, reporter=None, log_every: int = 1, eval_every: int = 500, **schedule
) -> dict:
    """The controller over `trainer` (evaluating on mnist's test set) to total_steps, evaluating at 0, every
    eval_every and at the end, every step's loss reported (log_every=1); returns its timings."""
    from distmnist.training.controller import Controller, Reporter

    schedule.setdefault("steps_per_call", trainer.steps_per_loop)
    return Controller(
        trainer,
        evaluator(trainer, mnist),
        reporter or Reporter(),
        start_step=trainer.step,
        total_steps=total_steps,
        eval_every=eval_every,
        log_every=log_every,
        global_batch_size=trainer.global_batch_size,
        loss_scale_state=trainer.loss_scale_state if trainer.loss_scale else None,
        **schedule,
    ).run()


def graphs(trainer, mnist: Mnist | None = None) -> dict:
    """The GraphDefs of every function a run runs with this trainer, by name, traced for its strategy and input
    path: what TensorFlow will place on the devices (the tests check them against the GPU kernel registry). The
    training call (and, where a call can run again, the checked one), the agreement's collectives and, given the
    data, the evaluation."""
    import tensorflow as tf

    from distmnist.training.agreement import Agreement

    call = trainer._checked_call if trainer.checks_each_step else trainer._call
    agreement = Agreement(trainer.strategy, trainer.state)
    functions = {
        "train": call.get_concrete_function(tf.constant(1), *trainer.input.traced_args()),
        "any_replica": agreement._any_replica.get_concrete_function(tf.constant(0.0)),
        "from_replica_0": agreement._from_replica_0.get_concrete_function(tf.constant(0.0, tf.float64)),
    }
    if mnist is not None:
        evaluation = evaluator(trainer, mnist)
        functions["evaluate"] = evaluation._evaluate.get_concrete_function(*evaluation._test)
    if not trainer.checks_each_step:  # run again after a non-finite call
        functions["train_checked"] = trainer._checked_call.get_concrete_function(
            tf.constant(1), *trainer.input.traced_args()
        )
    return {name: fn.graph.as_graph_def() for name, fn in functions.items()}
