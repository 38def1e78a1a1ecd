"""A run's set-up, the first of its three steps (run.py): the outputs checked and the run directory planned before
any expensive work, then the data, the devices and the host's pools, the strategy, the trainer, the run directory
opened and, for a resumed run, the latest checkpoint restored (Run: what the later steps use)."""

import dataclasses
import os
import sys
import time

import tensorflow as tf

from distmnist.common.config import INT64_MAX, TrainConfig
from distmnist.common.errors import UserError
from distmnist.data import dataset
from distmnist.data.dataset import Mnist
from distmnist.runs import events, outputs, rundir
from distmnist.runs.checkpoints import Checkpointer
from distmnist.training import devices, hostthreads
from distmnist.training.agreement import Agreement
from distmnist.training.cluster import Cluster
from distmnist.training.strategy import StrategyChoice, device_plan, make_strategy
from distmnist.training.trainer import LOSS_SCALE_GROWTH_STEPS, Trainer, TrainerSettings, steps_per_epoch


@dataclasses.dataclass
class Run:
    """What set_up makes and the later steps use."""

    config: TrainConfig
    mnist: Mnist
    choice: StrategyChoice
    trainer: Trainer
    checkpointer: Checkpointer
    cluster: Cluster | None
    run_dir: str | None  # None on a cluster's workers other than the chief
    history: dict | None  # what a resumed run logged before its checkpoint
    started: float
    timings: dict  # seconds per part of the run, filled as it goes

    @property
    def total_steps(self) -> int:
        total = self.trainer.settings.total_steps
        assert total is not None  # set_up gives the trainer the run's length
        return total

    @property
    def is_chief(self) -> bool:
        return self.cluster is None or self.cluster.is_chief

    @property
    def events_dir(self) -> str | None:
        return events_dir(self.config, self.run_dir)


def events_dir(config: TrainConfig, run_dir: str | None) -> str | None:
    """Where a run's TensorBoard events go: --events_dir, else the run directory (None: not written here)."""
    return (config.events_dir or run_dir) if run_dir else None


def trainer_settings(
    config: TrainConfig, total_steps: int | None, support: devices.PrecisionSupport | None = None, streams: int = 1
) -> TrainerSettings:
    """What the trainer needs of the config: the one way a TrainerSettings is made from it. total_steps: the run's
    length (None: not known); support: what the training devices do with low precisions (devices.resolve_xla);
    streams: host_threads's (1: the batch whole)."""
    return TrainerSettings(
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        seed=config.seed,
        steps_per_loop=config.steps_per_loop,
        shuffle_buffer=config.shuffle_buffer,
        input=config.input,
        jit_compile=devices.resolve_xla(config.jit_compile, config.input, config.precision, support),
        total_steps=total_steps,
        precision=config.precision,
        loss_scale_growth_steps=LOSS_SCALE_GROWTH_STEPS,
        streams=streams,
    )


def low_precision_graph(config: TrainConfig, on_cpu: bool) -> bool:
    """Whether the run's step runs a low precision on the CPU through TensorFlow's graph executor, without XLA
    (devices.resolve_xla): oneDNN's kernels then take its matmuls."""
    return (
        on_cpu
        and config.precision != "float32"
        and not devices.resolve_xla(config.jit_compile, config.input, config.precision, devices.support_of([]))
    )


def host_threads(config: TrainConfig, on_cpu: bool, local_replicas: int) -> hostthreads.HostThreads:
    """hostthreads.plan for this run, applied (what is in effect comes back): on_cpu, whether it trains on the CPU,
    and local_replicas, the replicas this process trains. Its batch may be split where its step runs a low precision
    on the CPU without XLA (low_precision_graph)."""
    planned = hostthreads.plan(
        cores=hostthreads.cores(),
        on_cpu=on_cpu,
        local_replicas=local_replicas,
        batch_size=config.batch_size,
        split_batch=low_precision_graph(config, on_cpu),
        tiles=devices.in_tiles(config.precision, devices.cpu_flags(), devices.onednn_switched_off()),
        intra_op=config.intra_op_threads,
        inter_op=config.inter_op_threads,
    )
    return hostthreads.apply(planned, asked=bool(config.intra_op_threads or config.inter_op_threads))


def on_cpu(choice: StrategyChoice) -> bool:
    """Whether the strategy trains on the CPU (no GPU among its devices)."""
    return devices.all_cpus(choice.devices)


def precision_support(choice: StrategyChoice) -> devices.PrecisionSupport:
    """What the strategy's training devices do with low precisions (devices.support_of): its CPU's or its GPUs'."""
    return devices.support_of([] if on_cpu(choice) else tf.config.get_visible_devices("GPU"))


def start_devices(
    config: TrainConfig, cluster: Cluster | None = None
) -> tuple[StrategyChoice, hostthreads.HostThreads]:
    """The run's strategy and the host's pools, before TensorFlow starts: the devices planned (device_plan), the
    pools set for them (host_threads), then the strategy built on that plan (make_strategy)."""
    chosen = device_plan(config.num_gpus, config.cpu_replicas, config.strategy, cluster)
    threads = host_threads(config, chosen.gpus == 0, chosen.cpu_replicas or 1)
    choice = make_strategy(
        config.num_gpus,
        config.cpu_replicas,
        config.strategy,
        cluster,
        config.collective_timeout_s,
        config.cluster_start_timeout_s,
        config.gpu_memory_growth,
        chosen,
    )
    return choice, threads


def describe_setup(
    choice: StrategyChoice,
    trainer: Trainer,
    config: TrainConfig,
    total_steps: int,
    threads: hostthreads.HostThreads = hostthreads.TENSORFLOW_DEFAULTS,
) -> str:
    return "\n".join(
        [
            f"strategy:             {choice.name}",
            f"devices:              {', '.join(choice.devices)}",
            f"replicas:             {trainer.num_replicas}",
            f"per-replica batch:    {trainer.per_replica_batch_size}",
            f"global batch:         {trainer.global_batch_size}",
            f"steps per epoch:      {trainer.steps_per_epoch} (total {total_steps})",
            f"input:                {config.input}, {config.steps_per_loop} steps per call, "
            f"XLA {'on' if trainer.settings.jit_compile else 'off'}",
            f"host threads:         {threads.describe()}",
        ]
        + ([f"precision:            {config.precision}"] if config.precision != "float32" else [])
    )


def set_up(
    config: TrainConfig,
    choice: StrategyChoice | None = None,
    mnist: Mnist | None = None,
    cluster: Cluster | None = None,
) -> Run:
    """Checks the outputs and plans the run directory before any expensive work (bad input fails fast), then loads
    the data, picks the strategy, builds the trainer, opens the run directory and, for a resumed run, restores the
    latest checkpoint. config: named (config.with_run_name); cluster: the run's (cluster.from_environment), None
    alone."""
    started = time.perf_counter()
    timings = {}
    flags = dataclasses.asdict(config)
    run_name = config.run_name
    assert run_name is not None, "set_up takes a named config (config.with_run_name)"
    is_chief = cluster is None or cluster.is_chief
    if is_chief:
        outputs.check(config)
    plan = rundir.plan(config.logdir, run_name, flags) if is_chief else None  # None: not the chief
    mnist = mnist or dataset.load(config.data_dir)
    timings["data_s"] = time.perf_counter() - started
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    if choice is None:
        choice, threads = start_devices(config, cluster)
    else:  # built by the caller: TensorFlow has started, its pools are as they are
        threads = host_threads(config, on_cpu(choice), len(choice.devices) if on_cpu(choice) else 1)
    per_epoch = steps_per_epoch(len(mnist.x_train), config.batch_size, choice.strategy.num_replicas_in_sync)
    total_steps = config.max_steps or config.epochs * per_epoch
    if total_steps > INT64_MAX:
        raise UserError(
            f"--epochs={config.epochs} is {total_steps:,} steps of this data, more than TensorFlow's int64 "
            "step counter holds; lower --epochs"
        )
    support = precision_support(choice)
    if config.precision != "float32" and not support.native[config.precision]:
        print(f"warning: {devices.emulated(config.precision, support)}; training anyway", file=sys.stderr, flush=True)
    trainer = Trainer(trainer_settings(config, total_steps, support, threads.streams), choice.strategy, mnist)
    if plan is not None and config.events_dir:
        events.open_events_dir(config.events_dir, os.path.join(config.logdir, run_name), plan)
    run_dir = rundir.open_dir(config.logdir, run_name, flags, plan) if plan is not None else None
    if plan == "restart":
        print(
            f"run directory {run_dir} held no checkpoint (a start that ended before its first): starting it afresh",
            flush=True,
        )
    checkpointer = Checkpointer(trainer, run_dir, config.keep_checkpoints)
    history, step = None, 0
    if plan == "resume":
        step = checkpointer.restore_latest()
        history = checkpointer.history(step)
        resumed_events = events_dir(config, run_dir)
        assert resumed_events is not None  # the chief's: it has the run directory
        events.drop_events_after(resumed_events, step)
    if cluster is not None:
        # only the chief has the run directory: the others take its state
        step = Agreement(choice.strategy, trainer.state).adopt_replica_0(step)
    if step:
        trainer.resume_at(step)
        print(
            f"resuming from step {step}, the latest checkpoint in "
            f"{checkpointer.directory if is_chief else 'the chief'}",
            flush=True,
        )
    print(describe_setup(choice, trainer, config, total_steps, threads), flush=True)
    timings["setup_s"] = time.perf_counter() - started - timings["data_s"]
    return Run(config, mnist, choice, trainer, checkpointer, cluster, run_dir, history, started, timings)
