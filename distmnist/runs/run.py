"""One training run from a config, in three steps: set up (run directory, data, strategy, trainer, resume),
train (the controller, signals, a cluster's failures), and write the artifacts (SavedModel, pictures, run.json)
in <logdir>/<run_name>/."""

import dataclasses
import os
import sys
import time
from collections.abc import Callable
from typing import cast

import tensorflow as tf

import distmnist
from distmnist.common import files
from distmnist.common.config import INT64_MAX, TrainConfig, with_run_name
from distmnist.common.errors import ClusterFailed, OutOfRoom, RunFailed, Stopped, TrainingDiverged, UserError
from distmnist.data import dataset
from distmnist.data.dataset import Mnist
from distmnist.runs import calibration as calibration_lib
from distmnist.runs import events, experiment, export, outputs, rundir, summaries
from distmnist.runs.checkpoints import Checkpointer
from distmnist.runs.painter import Painter
from distmnist.runs.runclaim import Claim
from distmnist.runs.signals import StopOnSignal
from distmnist.runs.summaries import RunReporter
from distmnist.training import devices, hostthreads
from distmnist.training.agreement import Agreement
from distmnist.training.cluster import Cluster
from distmnist.training.controller import Controller
from distmnist.training.evaluator import Evaluator
from distmnist.training.strategy import StrategyChoice, device_plan, make_strategy
from distmnist.training.trainer import LOSS_SCALE_GROWTH_STEPS, Trainer, TrainerSettings, steps_per_epoch

CALIBRATION_STRIDE = 6


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


def host_threads(config: TrainConfig, on_cpu: bool, local_replicas: int) -> hostthreads.HostThreads:
    """hostthreads.plan for this run, applied (what is in effect comes back): on_cpu, whether it trains on the CPU,
    and local_replicas, the replicas this process trains. Its batch may be split where its step runs a low precision
    on the CPU without XLA (devices.resolve_xla)."""
    split = (
        on_cpu
        and config.precision != "float32"
        and not devices.resolve_xla(config.jit_compile, config.input, config.precision, devices.support_of([]))
    )
    planned = hostthreads.plan(
        cores=hostthreads.cores(),
        on_cpu=on_cpu,
        local_replicas=local_replicas,
        batch_size=config.batch_size,
        split_batch=split,
        intra_op=config.intra_op_threads,
        inter_op=config.inter_op_threads,
    )
    return hostthreads.apply(planned, asked=bool(config.intra_op_threads or config.inter_op_threads))


def on_cpu(choice: StrategyChoice) -> bool:
    """Whether the strategy trains on the CPU (no GPU among its devices)."""
    return not any("GPU" in d.upper() for d in choice.devices)


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


def schedule(config: TrainConfig, total_steps: int, run_dir: str | None) -> dict:
    """The controller's schedule from the config, as its keyword arguments (the profile only where there is a run
    directory)."""
    return dict(
        total_steps=total_steps,
        eval_every=config.eval_every,
        log_every=config.log_every,
        checkpoint_every=config.checkpoint_every,
        steps_per_call=config.steps_per_loop,
        profile_steps=config.profile_range() if run_dir else None,
        profile_dir=run_dir,
    )


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
    support = devices.support_of([] if on_cpu(choice) else tf.config.get_visible_devices("GPU"))
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


def train(run: Run, claim: Claim | None = None) -> tuple:
    """Trains to the end, or to a stop request (errors.Stopped); returns (timings, the reporter's history). In a
    cluster a collective that fails or times out means a peer is gone (errors.ClusterFailed). claim: the run's, whose
    loss stops the run (errors.RunFailed), without a checkpoint when another process took it over."""
    trainer, checkpointer, cluster = run.trainer, run.checkpointer, run.cluster
    config = run.config
    description = (
        config.run_name,
        experiment.values(config, trainer.num_replicas, trainer.settings.jit_compile),
        experiment.config_table(config),
    )
    reporter = RunReporter(
        run.events_dir,
        run.total_steps,
        config.learning_rate,
        verbose=run.is_chief,
        history=run.history,
        test_set=(run.mnist.x_test, run.mnist.y_test),
        description=description,
    )
    lost = (lambda: claim.lost) if claim else (lambda: None)

    def save(step: int) -> None:
        if not (claim and claim.taken_over):  # the run is another process's now: nothing more is written into it
            checkpointer.save(step, reporter.history())

    try:
        with StopOnSignal() as stop:
            # In a cluster every worker must stop at the same step: they agree on it, one collective per call.
            requested = lambda: stop.requested or lost() is not None  # noqa: E731
            if cluster:
                agreement = Agreement(trainer.strategy, trainer.state)
                should_stop = lambda: agreement.any_replica(requested())  # noqa: E731
            else:
                should_stop = requested
            controller = Controller(
                trainer,
                Evaluator(trainer.strategy, trainer.model, run.mnist, trainer.settings.streams),
                reporter,
                start_step=trainer.step,
                global_batch_size=trainer.global_batch_size,
                save_checkpoint=save,
                should_stop=should_stop,
                # a dict whenever the trainer has a loss scale (mixed_float16)
                loss_scale_state=cast(Callable[[], dict], trainer.loss_scale_state) if trainer.loss_scale else None,
                **schedule(config, run.total_steps, run.run_dir),
            )
            timing = controller.run()
    except TrainingDiverged as exc:
        kept = checkpointer.latest_step
        saved = f"the checkpoint of step {kept} stays the latest" if kept is not None else "no checkpoint written"
        raise exc.with_saved(saved + ", nothing exported") from None
    except tf.errors.OpError as exc:
        if cluster is None or _no_room(exc):
            raise
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ClusterFailed(
            f"{cluster.name} lost contact with the cluster at step {trainer.step} (peers: "
            f"{', '.join(cluster.peers())}): {type(exc).__name__}: {detail}"
        ) from None
    finally:
        try:
            reporter.close()
        finally:
            checkpointer.close()  # waits for the save in flight, even when the events could not be written
    if lost():
        kept = checkpointer.latest_step
        raise RunFailed(
            f"{lost()}: stopped at step {trainer.step} of {run.total_steps} "
            + (
                "without a checkpoint, so that one process writes the run ("
                + (f"its latest checkpoint: step {kept})" if kept is not None else "it has no checkpoint)")
                if claim and claim.taken_over
                else f"with a checkpoint in {checkpointer.directory}, before another process could "
                f"take the run over; once the claim can be written, run the same command with --run_name="
                f"{config.run_name} to resume"
            )
        )
    if controller.stopped:
        cause = f"by {stop.name}" if stop.requested else "because another worker was stopped"
        where = f"with a checkpoint in {checkpointer.directory}" if run.is_chief else "(the chief holds the checkpoint)"
        raise Stopped(
            f"stopped {cause} at step {trainer.step} of {run.total_steps} {where}; run the same "
            f"command with --run_name={run.config.run_name} to resume",
            stop.exit_status if stop.requested else 143,
        )
    return timing, reporter.history()


def _calibrate(classifier: export.Classifier, mnist: Mnist) -> dict:
    """Temperature scaling fitted on training images (every sixth, 10,000 of MNIST's 60,000), never the test set,
    which stays for scoring; the fitted temperature goes into the SavedModel."""
    images, labels = mnist.x_train[::CALIBRATION_STRIDE], mnist.y_train[::CALIBRATION_STRIDE]
    temperature = classifier.fit_temperature(images, labels)
    return {
        "method": "temperature scaling",
        "temperature": temperature,
        "fitted_on": f"{len(labels)} training images (every {CALIBRATION_STRIDE}th)",
        "ece_bins": calibration_lib.ECE_BINS,
    }


def write_artifacts(run: Run, timing: dict, history: dict, painter: Painter) -> dict:
    """The chief's SavedModel (calibrated), pictures (drawn by `painter` meanwhile), end-of-run events and run.json;
    returns what run.json holds."""
    assert run.run_dir is not None  # the chief's
    calibration, saved_model, written, copy_failed = _export(run, history, painter)
    _record_timings(run, timing)
    summary = _summary(run, timing, history, calibration)
    run_json = os.path.join(run.run_dir, "run.json")
    files.write_json(run_json, summary)
    if copy_failed:  # the run is complete and recorded; only its copy is missing
        raise copy_failed
    _report(
        run, summary, [saved_model, *([run.config.export_dir] if run.config.export_dir else []), *written, run_json]
    )
    return summary


def _export(run: Run, history: dict, painter: Painter) -> tuple:
    """Calibrates and exports the SavedModel (and to --export_dir) while the painter draws the run's pictures,
    then writes the end-of-run events; returns (calibration, the SavedModel's path, the pictures written, the
    RunFailed of a copy to --export_dir that could not be written, else None)."""
    trainer, mnist, run_dir, events_to = run.trainer, run.mnist, run.run_dir, run.events_dir
    assert run_dir is not None and events_to is not None  # the chief's
    saved_model = os.path.join(run_dir, "saved_model")
    start = time.perf_counter()
    painter.submit("plot_run", run_dir, history["loss"], history["accuracy"])  # drawn while this calibrates
    classifier = export.Classifier(trainer.weights())
    calibration = _calibrate(classifier, mnist)
    test = classifier.serve(tf.constant(mnist.x_test))  # what users will get
    probabilities = test["probabilities"].numpy()
    calibration["test"] = calibration_lib.report(test["outputs"].numpy(), mnist.y_test, calibration["temperature"])
    written = painter.result()
    painter.submit(
        "draw_test_pictures", run_dir, mnist.x_test, mnist.y_test, probabilities, calibration["test"]["ece_before"]
    )  # drawn while this exports
    try:
        export.save(classifier, saved_model, legacy=True)  # the run directory is distmnist's: its own export too
    except (OSError, tf.errors.OpError) as exc:
        error = _no_room(exc)
        if error is not None:
            raise OSError(error.errno, error.strerror, saved_model) from None  # not the temporary folder's file
        if isinstance(exc, FileExistsError):
            raise RunFailed(
                f"{saved_model} {exc.strerror}: move them out, then run the same command with "
                f"--run_name={run.config.run_name} to write the SavedModel"
            ) from None
        raise
    copy_failed = None
    if run.config.export_dir:
        try:
            export.save(classifier, run.config.export_dir)
        except (OSError, tf.errors.OpError) as exc:
            copy_failed = _copy_failed(run, exc)
    run.timings["export_s"] = time.perf_counter() - start
    start = time.perf_counter()
    test_written, png = painter.result()
    written += test_written
    summaries.write_end_of_run(
        events_to,
        trainer.step,
        png,
        "reliability diagram of the exported probabilities on the test set",
        experiment.final_scalars(time.perf_counter() - run.started, calibration["test"]["ece_after"]),
    )
    run.timings["pictures_s"] = time.perf_counter() - start  # what drawing adds: it overlaps the export
    return calibration, saved_model, written, copy_failed


def _copy_failed(run: Run, exc: OSError | tf.errors.OpError) -> RunFailed:
    """The one line for a copy to --export_dir that could not be written (what the same command then does: a
    finished run resumed writes its artifacts again)."""
    where, then = run.config.export_dir, f"run the same command with --run_name={run.config.run_name} to write it"
    error = _no_room(exc)
    if error is not None:
        return OutOfRoom(OSError(error.errno, error.strerror, where), f"{then} (the run is complete in {run.run_dir})")
    if isinstance(exc, FileExistsError):
        return RunFailed(
            f"--export_dir={where} now {exc.strerror}: move those files out, or choose another "
            f"--export_dir, then {then} (the run is complete in {run.run_dir})"
        )
    detail = exc.strerror if isinstance(exc, OSError) else (exc.message.strip().splitlines() or [""])[0][:300]
    return RunFailed(
        f"the SavedModel could not be written to --export_dir={where} ({detail}); the run is complete "
        f"in {run.run_dir}: fix the folder, then {then}"
    )


def _no_room(exc: Exception) -> OSError | None:
    """The OSError of a write that failed for want of room or write access (files.NO_ROOM), from Python's or
    TensorFlow's file system; None for any other error."""
    if isinstance(exc, OSError):
        return exc if files.no_room(exc) else None
    if isinstance(exc, tf.errors.OpError):
        return files.no_room_in(exc.message)
    return None


def _afterwards(run: Run | None, run_name: str) -> str:
    """What the same command does after a failed write: resume from the run's latest checkpoint."""
    step = None
    if run is not None:
        try:
            step = run.checkpointer.latest_step
        except RunFailed:
            pass
    then = f"run the same command with --run_name={run_name}"
    return f"{then}: it resumes from the checkpoint of step {step}" if step else f"{then}: it starts afresh"


def _record_timings(run: Run, timing: dict) -> None:
    """The training loop's parts and the whole, into run.timings."""
    first_call_s = timing["first_call_s"] or 0.0  # none when a finished run is resumed: nothing left to train
    run.timings.update(
        first_call_s=first_call_s,
        steps_s=timing["train_time_s"] - first_call_s,
        evaluations_s=timing["evaluations_s"],
        checkpoints_s=run.checkpointer.seconds,
        profile_s=timing["profile_s"],
    )
    # From the first distmnist import when the entry point timed its imports; from set_up's start otherwise.
    run.timings["total_s"] = time.perf_counter() - (
        run.started if run.timings["imports_s"] is None else distmnist.STARTED
    )


def _summary(run: Run, timing: dict, history: dict, calibration: dict) -> dict:
    """What run.json holds."""
    trainer = run.trainer
    return {
        "final_test_accuracy": history["accuracy"][-1][1],
        "global_step": trainer.step,
        "epochs": trainer.epochs,
        "steps_per_epoch": trainer.steps_per_epoch,
        "strategy": run.choice.name,
        "num_replicas": trainer.num_replicas,
        "devices": list(run.choice.devices),
        "per_replica_batch_size": trainer.per_replica_batch_size,
        "precision": dict(policy=run.config.precision, **(trainer.loss_scale_state() or {})),
        "global_batch_size": trainer.global_batch_size,
        "examples_per_sec": timing["examples_per_sec"],
        "train_time_s": timing["train_time_s"],
        "calibration": calibration,
        "timings": run.timings,
        "wall_time_s": time.perf_counter() - run.started,
        "tf_version": tf.__version__,
        "seed": run.config.seed,
        "data_source": run.mnist.source,
        "run_dir": run.run_dir,
        "source": _source(),
        "flags": dataclasses.asdict(run.config),
        "history": history,
    }


def _source() -> dict | None:
    """The code that ran, as the launch scripts' start-up names it (DISTMNIST_SOURCE_*: the commit and the sha256 of
    the archive installed); None elsewhere."""
    source = {
        "commit": os.environ.get("DISTMNIST_SOURCE_COMMIT"),
        "archive_sha256": os.environ.get("DISTMNIST_SOURCE_SHA256"),
    }
    return source if any(source.values()) else None


def _report(run: Run, summary: dict, written: list) -> None:
    """The run's last lines on the console: the accuracy, everything written, where the time went."""
    eps = summary["examples_per_sec"]
    print(
        f"final test accuracy {summary['final_test_accuracy']:.4f} after {summary['global_step']} steps "
        f"({summary['epochs']:.2f} epochs) in {summary['wall_time_s']:.1f} s"
        + (f", {eps:,.0f} examples/s" if eps else "")
    )
    print("wrote:\n  " + "\n  ".join([f"{run.events_dir} (TensorBoard events)", run.checkpointer.directory, *written]))
    print(time_line(run.timings))


TIMING_NAMES = {
    "imports_s": "imports",
    "data_s": "data",
    "setup_s": "set-up",
    "first_call_s": "first call",
    "steps_s": "training steps",
    "evaluations_s": "evaluations",
    "checkpoints_s": "checkpoints",
    "profile_s": "profiler",
    "export_s": "export",
    "pictures_s": "pictures",
}


def time_line(timings: dict) -> str:
    """The run's last console line: the total and its three largest parts."""
    parts = sorted(((v, k) for k, v in timings.items() if k in TIMING_NAMES and v is not None), reverse=True)[:3]
    return f"time: {timings['total_s']:.1f} s in all; " + ", ".join(f"{TIMING_NAMES[k]} {v:.1f} s" for v, k in parts)


def train_and_evaluate(
    config: TrainConfig,
    choice: StrategyChoice | None = None,
    mnist: Mnist | None = None,
    imports_s: float | None = None,
    painter: Painter | None = None,
    claim: Claim | None = None,
    cluster: Cluster | None = None,
) -> dict:
    """Trains, evaluates and exports; returns what run.json holds. `choice` and `mnist` override for tests;
    imports_s is how long the entry point took to import TensorFlow (for run.json's timings); painter draws the
    pictures (the entry point's helper process; by default they are drawn here, at the end); claim: the run's
    (runclaim.take), whose loss stops the run; cluster: the run's, as the entry point read it from the environment
    (cluster.from_environment; None: this process trains alone). A config without a run name is named here
    (config.with_run_name).

    The same command with the same --run_name resumes from the run's latest checkpoint. In a multi-worker
    cluster every worker trains, and only the chief writes the run directory (and holds the checkpoints).
    SIGTERM or SIGINT stops the run at the next call boundary with a checkpoint (errors.Stopped). A write that
    fails for want of room or write access is errors.OutOfRoom, naming the path; a copy to --export_dir that
    cannot be written is a RunFailed once run.json is written.
    """
    painter = painter or Painter(inline=True)
    config = with_run_name(config)
    run_name = config.run_name
    assert run_name is not None  # with_run_name named it
    run = None
    try:
        run = set_up(config, choice, mnist, cluster)
        run.timings["imports_s"] = imports_s
        timing, history = train(run, claim)
        if run.cluster is not None and not run.cluster.is_chief:
            print(
                f"{run.cluster.name}: done after {run.trainer.step} steps; the chief writes the run directory",
                flush=True,
            )
            return {"global_step": run.trainer.step, "num_replicas": run.trainer.num_replicas}
        return write_artifacts(run, timing, history, painter)
    except (OSError, tf.errors.OpError) as exc:
        error = _no_room(exc)
        if error is None:
            raise
        raise OutOfRoom(error, _afterwards(run, run_name)) from None
    finally:
        painter.close()
