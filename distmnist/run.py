"""One training run from a config: data, strategy, training, then the artifacts in <logdir>/<run_name>/."""

import dataclasses
import os
import time
from typing import Optional

import tensorflow as tf

from distmnist import calibration as calibration_lib
from distmnist import data, export, files, plots, summaries
from distmnist.checkpoints import Checkpointer
from distmnist.cluster import parse_tf_config
from distmnist.config import TrainConfig
from distmnist.data import Mnist
from distmnist.errors import ClusterFailed, Stopped, TrainingDiverged
from distmnist.loop import Trainer
from distmnist.signals import StopOnSignal
from distmnist.strategy import StrategyChoice, make_strategy, set_host_threads
from distmnist.summaries import RunReporter, drop_events_after

CALIBRATION_STRIDE = 6


def describe_setup(choice: StrategyChoice, trainer: Trainer) -> str:
    return "\n".join([
        f"strategy:             {choice.name}",
        f"devices:              {', '.join(choice.devices)}",
        f"replicas:             {trainer.num_replicas}",
        f"per-replica batch:    {trainer.per_replica_batch_size}",
        f"global batch:         {trainer.global_batch_size}",
        f"steps per epoch:      {trainer.steps_per_epoch} (total {trainer.total_steps})",
        f"input:                {trainer.config.input}, {trainer.config.steps_per_loop} steps per call, "
        f"XLA {'on' if trainer.config.resolved_jit_compile() else 'off'}",
    ])


def _train(trainer: Trainer, reporter, choice: StrategyChoice, checkpointer: Checkpointer,
           stop: StopOnSignal) -> dict:
    """Runs the loop; in a cluster, a collective that fails or times out means a peer is gone."""
    # In a cluster every worker must stop at the same step: they agree on it, one collective per call.
    should_stop = (lambda: trainer.any_replica(stop.requested)) if choice.cluster else (lambda: stop.requested)
    try:
        return trainer.train(reporter, lambda step: checkpointer.save(step, reporter.history()), should_stop)
    except TrainingDiverged as exc:
        kept = checkpointer.latest_step
        saved = f"the checkpoint of step {kept} stays the latest" if kept is not None else "no checkpoint written"
        raise TrainingDiverged(exc.step, exc.replica, exc.loss, saved + ", nothing exported") from None
    except tf.errors.OpError as exc:
        if choice.cluster is None:
            raise
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ClusterFailed(f"{choice.cluster.name} lost contact with the cluster at step {trainer.step} (peers: "
                            f"{', '.join(choice.cluster.peers())}): {type(exc).__name__}: {detail}") from None
    finally:
        reporter.close()


def _calibrate(classifier: export.Classifier, mnist: Mnist) -> dict:
    """Temperature scaling fitted on training images (every sixth, 10,000 of MNIST's 60,000), never the test set,
    which stays for scoring; the fitted temperature goes into the SavedModel."""
    images, labels = mnist.x_train[::CALIBRATION_STRIDE], mnist.y_train[::CALIBRATION_STRIDE]
    temperature = classifier.fit_temperature(images, labels)
    return {"method": "temperature scaling", "temperature": temperature,
            "fitted_on": f"{len(labels)} training images (every {CALIBRATION_STRIDE}th)",
            "ece_bins": calibration_lib.ECE_BINS}


def train_and_evaluate(config: TrainConfig, choice: Optional[StrategyChoice] = None,
                       mnist: Optional[Mnist] = None) -> dict:
    """Trains, evaluates and exports; returns what run.json holds. `choice` and `mnist` override for tests.

    The same command with the same --run_name resumes from the run's latest checkpoint. In a multi-worker
    cluster every worker trains, and only the chief writes the run directory (and holds the checkpoints).
    SIGTERM or SIGINT stops the run at the next call boundary with a checkpoint (errors.Stopped).
    """
    started = time.perf_counter()
    run_name = config.run_name or files.default_run_name()
    config = dataclasses.replace(config, run_name=run_name)
    flags = dataclasses.asdict(config)
    cluster = parse_tf_config(os.environ.get("TF_CONFIG")) if config.strategy in ("auto", "multi_worker") else None
    is_chief = cluster is None or cluster.is_chief
    plan = files.plan_run_dir(config.logdir, run_name, flags) if is_chief else None
    mnist = mnist or data.load(config.data_dir)
    set_host_threads(config.intra_op_threads, config.inter_op_threads)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    choice = choice or make_strategy(config.num_gpus, config.cpu_replicas, config.strategy, cluster,
                                     config.collective_timeout_s, config.cluster_start_timeout_s,
                                     config.gpu_memory_growth)
    trainer = Trainer(config, choice.strategy, mnist)
    run_dir = files.open_run_dir(config.logdir, run_name, flags, plan) if is_chief else None
    checkpointer = Checkpointer(trainer, run_dir, config.keep_checkpoints)
    history, step = None, 0
    if plan == "resume":
        step = checkpointer.restore_latest()
        history = checkpointer.history(step)
        drop_events_after(run_dir, step)
    if cluster is not None:
        step = trainer.adopt_replica_0(step)  # only the chief has the run directory: the others take its state
    if step:
        trainer.resume_at(step)
        print(f"resuming from step {step}, the latest checkpoint in "
              f"{checkpointer.directory if is_chief else 'the chief'}", flush=True)
    print(describe_setup(choice, trainer), flush=True)

    reporter = RunReporter(run_dir, config, trainer.total_steps, verbose=is_chief, history=history,
                           test_set=(mnist.x_test, mnist.y_test))
    try:
        with StopOnSignal() as stop:
            timing = _train(trainer, reporter, choice, checkpointer, stop)
    finally:
        checkpointer.close()
    if trainer.stopped:
        cause = f"by {stop.name}" if stop.requested else "because another worker was stopped"
        where = f"with a checkpoint in {checkpointer.directory}" if is_chief else "(the chief holds the checkpoint)"
        raise Stopped(f"stopped {cause} at step {trainer.step} of {trainer.total_steps} {where}; run the same "
                      "command to resume", stop.exit_status if stop.requested else 143)
    if not is_chief:
        print(f"{cluster.name}: done after {trainer.step} steps; the chief writes the run directory", flush=True)
        return {"global_step": trainer.step, "num_replicas": trainer.num_replicas}
    saved_model = os.path.join(run_dir, "saved_model")
    classifier = export.Classifier(trainer.weights())
    calibration = _calibrate(classifier, mnist)
    export.save(classifier, saved_model)
    written = plots.plot_run(run_dir, reporter.loss_history, reporter.accuracy_history)
    test = classifier.serve(tf.constant(mnist.x_test))  # what users will get
    probabilities = test["probabilities"].numpy()
    calibration["test"] = calibration_lib.report(test["outputs"].numpy(), mnist.y_test, calibration["temperature"])
    written += plots.plot_test_set(run_dir, mnist.x_test, mnist.y_test, probabilities)
    written.append(os.path.join(run_dir, "calibration.svg"))
    png = plots.plot_calibration(written[-1], probabilities, mnist.y_test, calibration["test"]["ece_before"])
    summaries.write_image(run_dir, "calibration", png, trainer.step,
                          "reliability diagram of the exported probabilities on the test set")

    summary = {
        "final_test_accuracy": reporter.accuracy_history[-1][1],
        "global_step": trainer.step,
        "epochs": trainer.epochs,
        "steps_per_epoch": trainer.steps_per_epoch,
        "strategy": choice.name,
        "num_replicas": trainer.num_replicas,
        "devices": list(choice.devices),
        "per_replica_batch_size": trainer.per_replica_batch_size,
        "global_batch_size": trainer.global_batch_size,
        "examples_per_sec": timing["examples_per_sec"],
        "train_time_s": timing["train_time_s"],
        "calibration": calibration,
        "wall_time_s": time.perf_counter() - started,
        "tf_version": tf.__version__,
        "seed": config.seed,
        "data_source": mnist.source,
        "run_dir": run_dir,
        "flags": flags,
        "history": {"loss": reporter.loss_history, "accuracy": reporter.accuracy_history},
    }
    run_json = os.path.join(run_dir, "run.json")
    files.write_json(run_json, summary)
    eps = summary["examples_per_sec"]
    print(f"final test accuracy {summary['final_test_accuracy']:.4f} after {trainer.step} steps "
          f"({summary['epochs']:.2f} epochs) in {summary['wall_time_s']:.1f} s"
          + (f", {eps:,.0f} examples/s" if eps else ""))
    print("wrote:\n  " + "\n  ".join([run_dir + " (TensorBoard events)", checkpointer.directory, saved_model,
                                        *written, run_json]))
    return summary
