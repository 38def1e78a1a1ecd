"""One training run from a config, in three steps: set up (runsetup.py: run directory, data, strategy, trainer,
resume), train (here: the controller, signals, a cluster's failures), and write the artifacts (artifacts.py:
SavedModel, pictures, run.json) in <logdir>/<run_name>/."""

from collections.abc import Callable
from typing import cast

import tensorflow as tf

from distmnist.common.config import TrainConfig, with_run_name
from distmnist.common.errors import ClusterFailed, OutOfRoom, RunFailed, Stopped, TrainingDiverged
from distmnist.data.dataset import Mnist
from distmnist.runs import experiment
from distmnist.runs.artifacts import no_room, write_artifacts
from distmnist.runs.painter import Painter
from distmnist.runs.runclaim import Claim
from distmnist.runs.runsetup import Run, set_up
from distmnist.runs.signals import StopOnSignal
from distmnist.runs.summaries import RunReporter
from distmnist.training.agreement import Agreement
from distmnist.training.cluster import Cluster
from distmnist.training.controller import Controller
from distmnist.training.evaluator import Evaluator
from distmnist.training.strategy import StrategyChoice


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
        if cluster is None or no_room(exc):
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
        error = no_room(exc)
        if error is None:
            raise
        raise OutOfRoom(error, _afterwards(run, run_name)) from None
    finally:
        painter.close()
