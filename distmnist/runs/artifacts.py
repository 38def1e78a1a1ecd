"""A finished run's artifacts, the last of its three steps (run.py): the SavedModel calibrated and exported (and
copied to --export_dir), the pictures, the end-of-run events, run.json, and the run's last lines on the console."""

import dataclasses
import os
import time

import tensorflow as tf

import distmnist
from distmnist.common import files
from distmnist.common.errors import OutOfRoom, RunFailed
from distmnist.data.dataset import Mnist
from distmnist.runs import calibration as calibration_lib
from distmnist.runs import experiment, export, summaries
from distmnist.runs.painter import Painter
from distmnist.runs.runsetup import Run

CALIBRATION_STRIDE = 6


def calibrate(classifier: export.Classifier, mnist: Mnist) -> dict:
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
    calibration = calibrate(classifier, mnist)
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
        error = no_room(exc)
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
    error = no_room(exc)
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


def no_room(exc: Exception) -> OSError | None:
    """The OSError of a write that failed for want of room or write access (files.NO_ROOM), from Python's or
    TensorFlow's file system; None for any other error."""
    if isinstance(exc, OSError):
        return exc if files.no_room(exc) else None
    if isinstance(exc, tf.errors.OpError):
        return files.no_room_in(exc.message)
    return None


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
