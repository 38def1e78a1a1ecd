"""Where a run writes (distmnist/runs/outputs.py, rundir.py): every output checked before any work, nothing that
distmnist did not write ever replaced or deleted, paths compared as places, and a start that failed before its
first checkpoint never locking its run name."""

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from distmnist.common import files
from distmnist.common.config import TrainConfig
from distmnist.common.errors import UserError
from distmnist.runs import outputs, rundir
from distmnist.training.model import MLP

from helpers import REPO, export_saved_model, without_tensorflow


def weights(shift: float = 0.0) -> list:
    return [v.numpy() + shift for v in MLP().weights]


def exported(path) -> float:
    """The sum of an export's weights, read from its variables: which weights it holds."""
    reader = tf.train.load_checkpoint(os.path.join(str(path), "variables", "variables"))
    names = [n for n in reader.get_variable_to_shape_map() if n.startswith("mlp/")]
    assert len(names) == 6
    return sum(float(reader.get_tensor(n).astype(np.float64).sum()) for n in names)


def total(shift: float) -> float:
    return sum(float(w.astype(np.float64).sum()) for w in weights(shift))


def make_run(logdir, name="r", checkpoint=True, **flags) -> str:
    """A distmnist run directory as a start leaves it (run_config.json), with a checkpoint's index if asked."""
    run_dir = os.path.join(logdir, name)
    config = dataclasses.replace(TrainConfig(logdir=str(logdir), run_name=name), **flags)
    rundir.open_dir(str(logdir), name, dataclasses.asdict(config), "new")
    if checkpoint:
        os.makedirs(os.path.join(run_dir, "checkpoints"))
        open(os.path.join(run_dir, "checkpoints", "ckpt-200.index"), "wb").close()
    return run_dir


@pytest.fixture(scope="module")
def an_export(tmp_path_factory) -> str:
    """One export of distmnist's, made once (tf.saved_model.save traces the model): tests copy it."""
    path = str(tmp_path_factory.mktemp("export") / "model")
    export_saved_model(weights(), path)
    return path


@pytest.fixture
def cwd(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("the user's")
    monkeypatch.chdir(work)
    return work


@pytest.mark.parametrize("export_dir, message", [
    (".", "--export_dir=. is the working directory or holds it; an export replaces its folder"),
    ("..", "--export_dir=.. is the working directory or holds it"),
    ("logs", "--export_dir=logs overlaps --logdir=logs, where runs live"),
    ("logs/r/model", "--export_dir=logs/r/model overlaps --logdir=logs"),
    ("logs/model", "--export_dir=logs/model overlaps --logdir=logs"),
    ("notes.txt", "--export_dir=notes.txt is a file; an export is a folder"),
    ("mine", "--export_dir=mine holds files distmnist did not write (a.txt); an export replaces its folder, and "
             "distmnist replaces only its own exports: choose a new or empty folder"),
    ("theirs", "--export_dir=theirs holds a SavedModel distmnist did not mark as its own"),
    ("missing/model", "--export_dir=missing/model: its folder {cwd}/missing does not exist; create it"),
    ("tb", "--export_dir=tb overlaps --events_dir=tb"),
    ("elsewhere/r/model", "--export_dir=elsewhere/r/model is inside the distmnist run directory {cwd}/elsewhere/r"),
    ("link", "--export_dir=link is a link; give the folder it leads to"),
])
def test_an_export_dir_that_would_replace_what_is_not_distmnists_is_refused(cwd, an_export, export_dir, message):
    (cwd / "mine").mkdir()
    (cwd / "mine" / "a.txt").write_text("the user's")
    shutil.copytree(an_export, cwd / "theirs")
    os.remove(cwd / "theirs" / outputs.EXPORT_MARKER)  # a SavedModel of someone else's
    make_run(cwd / "elsewhere")
    (cwd / "empty").mkdir()
    os.symlink(cwd / "empty", cwd / "link")
    config = TrainConfig(run_name="r", export_dir=export_dir, events_dir="tb")
    before = sorted(p for p in cwd.rglob("*"))
    with pytest.raises(UserError, match=re.escape(message.format(cwd=cwd))):
        outputs.check(config)
    assert sorted(p for p in cwd.rglob("*")) == before


@pytest.mark.parametrize("export_dir", ["new", "empty", "earlier", "../outside/model"])
def test_an_export_dir_that_is_new_empty_or_an_earlier_export_is_taken(cwd, an_export, export_dir):
    (cwd / "empty").mkdir()
    (cwd.parent / "outside").mkdir()
    shutil.copytree(an_export, cwd / "earlier")
    outputs.check(TrainConfig(run_name="r", export_dir=export_dir))


@pytest.mark.parametrize("events_dir, message", [
    ("logs", "--events_dir=logs is --logdir=logs or holds it"),
    (".", "--events_dir=. is --logdir=logs or holds it"),
    ("logs/r/tb", "--events_dir=logs/r/tb is inside the run directory logs/r; leave --events_dir unset"),
    ("elsewhere/r/tb", "--events_dir=elsewhere/r/tb is inside the distmnist run directory {cwd}/elsewhere/r"),
    ("notes.txt", "--events_dir=notes.txt is a file"),
    ("mixed", "--events_dir=mixed holds files that are not TensorBoard events (a.txt)"),
    ("others", "--events_dir=others holds the events of another run"),
])
def test_an_events_dir_that_holds_what_is_not_this_runs_events_is_refused(cwd, events_dir, message):
    make_run(cwd / "elsewhere")
    for name in ("mixed", "others"):
        (cwd / name).mkdir()
        (cwd / name / "events.out.tfevents.1.host.1.v2").write_bytes(b"")
    (cwd / "mixed" / "a.txt").write_text("the user's")
    with pytest.raises(UserError, match=re.escape(message.format(cwd=cwd))):
        outputs.check(TrainConfig(run_name="r", events_dir=events_dir))


def test_an_events_dir_of_this_runs_own_is_taken_marked_or_named_by_its_settings(cwd):
    (cwd / "marked").mkdir()
    (cwd / "marked" / "events.out.tfevents.1.host.1.v2").write_bytes(b"")
    (cwd / "marked" / outputs.EVENTS_MARKER).write_text(json.dumps(outputs.events_marker("logs/r")))
    outputs.check(TrainConfig(run_name="r", events_dir="marked/"))
    with pytest.raises(UserError, match="holds the events of another run"):
        outputs.check(TrainConfig(run_name="other", events_dir="marked"))
    (cwd / "named").mkdir()
    (cwd / "named" / "events.out.tfevents.1.host.1.v2").write_bytes(b"")
    make_run(cwd / "logs", events_dir="./named")  # a run from before the marker: its settings name the folder
    outputs.check(TrainConfig(run_name="r", events_dir="named"))
    outputs.check(TrainConfig(run_name="r", events_dir="logs/r"))  # the run directory itself: the default place


def test_an_export_replaces_only_an_earlier_export_and_keeps_it_whole_until_the_new_one_is(tmp_path, monkeypatch):
    path = tmp_path / "model"
    export_saved_model(weights(), str(path))
    assert outputs.is_replaceable_export(str(path)) and (path / outputs.EXPORT_MARKER).exists()
    export_saved_model(weights(1.0), str(path))  # replaces its own earlier export
    assert exported(path) == pytest.approx(total(1.0))

    # A file of the user's appears in the export while a run trains: nothing is replaced, nothing deleted.
    (path / "notes.txt").write_text("the user's")
    with pytest.raises(FileExistsError, match="holds files distmnist did not write; nothing was replaced"):
        export_saved_model(weights(2.0), str(path))
    assert (path / "notes.txt").read_text() == "the user's" and (path / "saved_model.pb").exists()
    assert sorted(os.listdir(tmp_path)) == ["model"]

    # The new folder cannot be renamed into place after the old one was moved aside: the old one is put back.
    os.remove(path / "notes.txt")
    real_rename, calls = os.rename, []

    def second_rename_fails(source, target):
        calls.append(target)
        if len(calls) == 2:
            raise OSError(5, "Input/output error")
        real_rename(source, target)

    monkeypatch.setattr(os, "rename", second_rename_fails)
    monkeypatch.setattr(files, "_copy_into_place", lambda tmp, path: (_ for _ in ()).throw(OSError(5, "copy fails")))
    with pytest.raises(OSError, match="copy fails"):
        export_saved_model(weights(3.0), str(path))
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["model"]
    assert exported(path) == pytest.approx(total(1.0))  # the old export, whole


def test_an_export_onto_a_folder_that_cannot_be_renamed_never_deletes_the_users_files(tmp_path):
    """A mount point cannot be renamed (EBUSY): the old code then deleted the folder's contents to copy the model
    in. A user's folder is left whole; an earlier export there is replaced file by file."""
    target = tmp_path / "mounted"
    target.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(target)], capture_output=True,
                             text=True)
    if mounted.returncode:
        pytest.skip(f"this process may not mount a tmpfs ({mounted.stderr.strip()})")
    try:
        (target / "thesis.tex").write_text("the user's")
        with pytest.raises(OSError):
            export_saved_model(weights(), str(target))
        assert os.listdir(target) == ["thesis.tex"] and (target / "thesis.tex").read_text() == "the user's"
        os.remove(target / "thesis.tex")
        export_saved_model(weights(), str(target))  # an empty folder: filled in place
        export_saved_model(weights(1.0), str(target))  # its own export: replaced file by file
        assert exported(target) == pytest.approx(total(1.0)) and outputs.is_replaceable_export(str(target))
        assert tf.saved_model.load(str(target)).signatures["serving_default"] is not None
        assert sorted(os.listdir(tmp_path)) == ["mounted"]
    finally:
        subprocess.run(["umount", str(target)], capture_output=True)


def test_paths_compare_as_places_when_a_run_resumes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.symlink(tmp_path, tmp_path / "here")
    make_run("runs", export_dir="exports/m")
    flags = dataclasses.asdict(TrainConfig(logdir="runs", run_name="r", export_dir="exports/m"))
    for logdir, export_dir in (("runs/", "exports/m/"), ("./runs", "./exports//m"), (str(tmp_path / "runs"),
                                                                                      "here/exports/m")):
        changed = {**flags, "logdir": logdir, "export_dir": export_dir}
        assert rundir.plan(logdir, "r", changed) == "resume"
    with pytest.raises(UserError, match=r"was started with --export_dir=exports/m, not exports/n; rerun with "
                                        r"--export_dir=exports/m to resume it, or pass --overwrite to delete it \(its "
                                        r"checkpoints, events and results\) and start afresh"):
        rundir.plan("runs", "r", {**flags, "export_dir": "exports/n"})
    with pytest.raises(UserError, match=r"was started with --export_dir=exports/m, not without it; rerun with "
                                        r"--export_dir=exports/m to resume it"):
        rundir.plan("runs", "r", {**flags, "export_dir": None})


def test_a_start_that_failed_before_its_first_checkpoint_never_locks_its_name(tmp_path):
    logdir = str(tmp_path)
    flags = dataclasses.asdict(TrainConfig(logdir=logdir, run_name="r", events_dir="bad"))
    (tmp_path / "r").mkdir()  # a start cut short before its settings were written
    assert rundir.plan(logdir, "r", flags) == "new"
    rundir.open_dir(logdir, "r", flags, "new")
    (tmp_path / "r" / "events.out.tfevents.1.host.1.v2").write_bytes(b"")
    os.makedirs(tmp_path / "r" / "checkpoints")
    (tmp_path / "r" / "checkpoints" / "history.json").write_text("{}")  # its first checkpoint could not be written
    fixed = {**flags, "events_dir": "good"}
    assert rundir.plan(logdir, "r", fixed) == "restart"  # other flags, and no --overwrite needed: nothing is lost
    rundir.open_dir(logdir, "r", fixed, "restart")
    assert os.listdir(tmp_path / "r") == ["run_config.json"]
    assert json.loads((tmp_path / "r" / "run_config.json").read_text())["events_dir"] == "good"

    (tmp_path / "r" / "notes.txt").write_text("the user's")  # but what is not distmnist's is never deleted
    with pytest.raises(UserError, match=r"holds no checkpoint, and files distmnist did not write \(notes.txt\); move "
                                        "them out to start it afresh, or choose another --run_name"):
        rundir.plan(logdir, "r", fixed)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "a.txt").write_text("the user's")
    with pytest.raises(UserError, match="already exists and is not a distmnist run; choose another --run_name$"):
        rundir.plan(logdir, "mine", {**fixed, "run_name": "mine"})


def test_overwrite_is_advised_only_where_a_run_would_be_deleted_and_deletes_only_distmnists_files(tmp_path):
    logdir = str(tmp_path)
    flags = dataclasses.asdict(TrainConfig(logdir=logdir, run_name="r"))
    make_run(tmp_path)
    with pytest.raises(UserError, match=r"not 0.5; rerun with --learning_rate=1.5 to resume it, or pass --overwrite "
                                        r"to delete it \(its checkpoints, events and results\) and start afresh"):
        rundir.plan(logdir, "r", {**flags, "learning_rate": 0.5})
    (tmp_path / "r" / "notes.txt").write_text("the user's")
    assert rundir.plan(logdir, "r", flags) == "resume"  # resuming deletes nothing
    with pytest.raises(UserError, match=r"--overwrite would delete run directory .*/r, which holds files distmnist "
                                        r"did not write \(notes.txt\); move them out first"):
        rundir.plan(logdir, "r", {**flags, "overwrite": True})
    os.remove(tmp_path / "r" / "notes.txt")
    assert rundir.plan(logdir, "r", {**flags, "overwrite": True}) == "overwrite"
    rundir.open_dir(logdir, "r", {**flags, "overwrite": True}, "overwrite")
    assert os.listdir(tmp_path / "r") == ["run_config.json"]


@pytest.mark.slow  # starts processes (which stop before importing TensorFlow)
@pytest.mark.parametrize("export_dir", [".", "logs"])
def test_the_entry_point_refuses_an_export_over_the_working_directory_or_the_logs(tmp_path, export_dir):
    work = tmp_path / "work"
    (work / "logs" / "earlier").mkdir(parents=True)
    (work / "notes.txt").write_text("the user's")
    before = sorted(work.rglob("*"))
    env = {**os.environ, **without_tensorflow(tmp_path)}
    env["PYTHONPATH"] += os.pathsep + REPO
    result = subprocess.run([sys.executable, "-m", "distmnist.train", f"--export_dir={export_dir}"], cwd=work,
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(f"distmnist.train: error: --export_dir={export_dir} ")
    assert len(result.stderr.splitlines()) == 1
    assert sorted(work.rglob("*")) == before and (work / "notes.txt").read_text() == "the user's"
