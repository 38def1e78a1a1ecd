"""A run's TensorBoard event files, in its run directory or --events_dir: opening an --events_dir, and what a
resumed run keeps of what the interrupted one logged (the rule, rundir.kept, is the run directory's)."""

import os

import tensorflow as tf
from tensorflow.core.util import event_pb2

from distmnist.common import files
from distmnist.common.errors import UserError
from distmnist.runs import outputs
from distmnist.runs.rundir import kept

# Logged at evaluations, which happen at a checkpoint's own step too; every other tag is a training step's,
# except what a fresh run logs once about itself, which a resumed run keeps.
EVALUATION_TAGS = ("accuracy", "mistakes")
RUN_TAGS = ("config", "_hparams_/experiment", "_hparams_/session_start_info")


def _event_files(events_dir: str) -> list:
    return sorted(tf.io.gfile.glob(f"{events_dir.rstrip('/')}/events.out.tfevents.*"))


def open_events_dir(events_dir: str, run_dir: str, plan: str) -> None:
    """An --events_dir holds one run's events, as a run directory does: created when missing; a folder is marked
    as run_dir's and emptied of the events it held when the run starts afresh (new, restarted or overwritten:
    outputs.check found them run_dir's); a tf.io.gfile URL such as gs:// is emptied with --overwrite only."""
    local = not files.is_url(events_dir)
    try:
        tf.io.gfile.makedirs(events_dir)
        if plan == "overwrite" or (local and plan != "resume"):
            for path in _event_files(events_dir):
                tf.io.gfile.remove(path)
        if local:
            files.write_json(os.path.join(events_dir, outputs.EVENTS_MARKER), outputs.events_marker(run_dir))
    except OSError as exc:
        if files.no_room(exc):
            raise
        raise UserError(
            f"cannot write TensorBoard events to {events_dir} ({exc.strerror}); choose a writable --events_dir"
        ) from None
    except tf.errors.OpError as exc:
        if files.no_room_in(exc.message):
            raise
        raise UserError(
            f"cannot write TensorBoard events to {events_dir} ({exc.message}); choose a writable --events_dir"
        ) from None


def drop_events_after(run_dir: str, step: int) -> int:
    """Rewrites a run's event files (in its run directory or --events_dir, a folder or a tf.io.gfile URL)
    without what an interrupted run logged after its checkpoint at `step` (training steps from `step` on,
    evaluations after it), and without a record cut short by the kill, so a resumed run's TensorBoard curves
    have each step once. Returns the number of events dropped."""
    dropped = 0
    for path in _event_files(run_dir):
        records, changed = [], False
        try:
            for record in tf.data.TFRecordDataset(path):
                event = event_pb2.Event.FromString(record.numpy())
                tags = [v.tag for v in event.summary.value]
                evaluation = any(tag in EVALUATION_TAGS for tag in tags)
                if tags and not kept(event.step, step, evaluation) and not any(tag in RUN_TAGS for tag in tags):
                    dropped += 1
                    changed = True
                else:
                    records.append(record.numpy())
        except tf.errors.DataLossError:
            changed = True  # a record cut short by the kill: drop it
        if changed:
            tmp = f"{run_dir.rstrip('/')}/.tmp-resume-{os.path.basename(path)}"
            try:
                with tf.io.TFRecordWriter(tmp) as writer:
                    for record in records:
                        writer.write(record)
                tf.io.gfile.rename(tmp, path, overwrite=True)
            except tf.errors.OpError as exc:
                try:
                    tf.io.gfile.remove(tmp)
                except tf.errors.OpError:
                    pass  # never made, or the filesystem will not let it go
                error = files.no_room_in(exc.message)
                if error is None:
                    raise
                raise OSError(error.errno, error.strerror, path) from None  # the file rewritten, not its temporary
    return dropped
