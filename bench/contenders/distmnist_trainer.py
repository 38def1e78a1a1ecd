"""distmnist's own trainer (its default path, or --input=tfdata), at its defaults otherwise: in the bench's process
(the lineup, the race) or in a process of its own (solo.py: beside JAX and PyTorch, on the same terms).

TensorFlow is imported inside the functions: in a process of its own, quietly (tfquiet) and only when this
contender is the one that runs."""

from bench import mnist_npz
from bench import timing as timing_lib


def examples_per_sec(
    mnist, strategy, timing: timing_lib.Timing, input_path: str, precision: str = "float32", jit_compile=None
) -> float:
    """distmnist's own loop with the given input path and precision, its defaults otherwise (XLA as the run
    resolves it for this precision on these devices: jit_compile)."""
    import functools

    from distmnist.common.config import TrainConfig
    from distmnist.runs.runsetup import trainer_settings
    from distmnist.training.trainer import Trainer, run_steps

    settings = trainer_settings(
        TrainConfig(
            batch_size=timing.per_replica_batch_size,
            learning_rate=timing.learning_rate,
            seed=timing.seed,
            input=input_path,
            precision=precision,
            jit_compile=jit_compile,
        ),
        total_steps=timing.warmup_steps + timing.timed_steps,
    )
    trainer = Trainer(settings, strategy, mnist)
    return timing_lib.examples_per_sec(functools.partial(run_steps, trainer), timing, trainer.global_batch_size)


def trainer_race(trainer, mnist, target: float, max_epochs: int) -> dict:
    """timing.until_accuracy for a distmnist Trainer: its epochs (the partial batch dropped) in calls of its
    steps_per_loop, mnist's whole test set evaluated after each."""
    from distmnist.training.evaluator import Evaluator
    from distmnist.training.trainer import run_steps

    evaluator = Evaluator(trainer.strategy, trainer.model, mnist)

    def epoch():
        run_steps(trainer, trainer.steps_per_epoch)
        return evaluator.evaluate()[0]

    return timing_lib.until_accuracy(epoch, target, max_epochs)


def time_to_accuracy(mnist, strategy, target: float, max_epochs: int, settings) -> tuple:
    """(seconds from the first step until the test accuracy, checked every epoch, reaches the target, or None;
    epochs; accuracy), in this process."""
    from distmnist.training.trainer import Trainer

    reached = trainer_race(Trainer(settings, strategy, mnist), mnist, target, max_epochs)
    return reached["seconds"], reached["epochs"], reached["accuracy"]


def _from_npz(npz: str, replicas: int, platform: str, total_steps, **settings):
    """TensorFlow imported quietly, then (distmnist's Trainer on 1 device or N: logical CPUs, or GPUs, with MNIST
    from npz and the trainer's settings from a TrainConfig of these values; the devices; the data).
    total_steps(steps per epoch): the steps it will train."""
    from distmnist.environment import tfquiet

    arrays = mnist_npz.read(npz)
    tfquiet.import_tensorflow()
    from distmnist.common.config import TrainConfig
    from distmnist.data.dataset import Mnist
    from distmnist.runs.runsetup import precision_support, start_devices, trainer_settings
    from distmnist.training.trainer import Trainer

    gpus, cpu_replicas = (0, replicas if replicas > 1 else 0) if platform == "cpu" else (replicas, 0)
    config = TrainConfig(num_gpus=gpus, cpu_replicas=cpu_replicas, **settings)
    choice, threads = start_devices(config)  # as a run's, before TensorFlow starts
    mnist = Mnist(*arrays, source=npz)
    steps_per_epoch = len(mnist.x_train) // (settings["batch_size"] * replicas)
    settings_made = trainer_settings(config, total_steps(steps_per_epoch), precision_support(choice), threads.streams)
    trainer = Trainer(settings_made, choice.strategy, mnist)
    return trainer, list(choice.devices), mnist


def runner(
    npz: str,
    replicas: int,
    per_replica_batch_size: int,
    steps: int,
    learning_rate: float,
    seed: int,
    platform: str = "cpu",
    precision: str = "float32",
    turns: int = 1,
    jit_compile: bool | None = None,
):
    """(run, global batch, facts): run() trains `steps` more steps with distmnist's default trainer and returns
    (its seconds, the last loss); it runs turns + 1 times (the first untimed)."""
    import time

    trainer, devices, _ = _from_npz(
        npz,
        replicas,
        platform,
        lambda steps_per_epoch: (turns + 1) * steps,
        batch_size=per_replica_batch_size,
        learning_rate=learning_rate,
        seed=seed,
        precision=precision,
        jit_compile=jit_compile,
    )
    from distmnist.training.trainer import run_steps

    def run():
        start = time.perf_counter()
        losses = run_steps(trainer, steps)
        return time.perf_counter() - start, float(losses[-1])

    return run, trainer.global_batch_size, {"devices": devices}


def race(
    npz: str,
    replicas: int,
    per_replica_batch_size: int,
    learning_rate: float,
    seed: int,
    platform: str,
    precision: str,
    target: float,
    max_epochs: int,
    jit_compile: bool | None = None,
) -> dict:
    """Time to the target test accuracy with distmnist's trainer, as jax_scan.race (trainer_race)."""
    trainer, devices, mnist = _from_npz(
        npz,
        replicas,
        platform,
        lambda steps_per_epoch: max_epochs * steps_per_epoch,
        batch_size=per_replica_batch_size,
        learning_rate=learning_rate,
        seed=seed,
        precision=precision,
        jit_compile=jit_compile,
    )
    return {**trainer_race(trainer, mnist, target, max_epochs), "devices": devices}
