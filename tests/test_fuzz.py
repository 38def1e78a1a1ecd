"""The fuzz tier: mutated files of every kind distmnist reads (tests/fuzzing.py), each held to the contract for
bad input: served, or refused in one line of the documented error type, never another exception, never a hang,
never a warning; and, as processes, one line per bad file on stderr and the documented exit status, the good files
still answered, and nothing outside the run and its named outputs created, changed or removed (the tree compared,
file by file, before and after).

Sizes: DISTMNIST_FUZZ_CASES mutated files per seed in this process (3 in `make test`, 200 in `make test-fuzz`),
DISTMNIST_FUZZ_PROCESSES processes per kind of file (1 and 4). A failure names its case (`fuzzing.case(kind, name)`
gives its bytes back)."""

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import warnings

import fuzzing
import numpy as np
import pytest
from PIL import Image

from distmnist.common.config import TrainConfig
from distmnist.common.errors import DataError, UserError
from distmnist.data import dataset, digits
from distmnist.runs import checkpoints, runclaim, rundir

from helpers import make_tiny_mnist, run_module

pytestmark = pytest.mark.fuzz

CASES = int(os.environ.get("DISTMNIST_FUZZ_CASES", "3"))
PROCESS_CASES = int(os.environ.get("DISTMNIST_FUZZ_PROCESSES", "1"))
CASE_TIMEOUT_S = 20  # one file: the largest a reader lets through (24 megapixels) decodes in well under a second
SHOWN = 12  # failures listed in full


class Hang(Exception):
    """A case ran past CASE_TIMEOUT_S."""


@contextlib.contextmanager
def time_limit(seconds: float):
    """Hang raised in this (the main) thread once `seconds` pass: Pillow's and numpy's loops return to Python
    between their pieces, where the signal handler runs."""

    def on_alarm(signum, frame):
        raise Hang(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def one_line(message: str) -> bool:
    return len(message.splitlines()) == 1 and message.strip() == message


def outcome(call, refusal, case):
    """('served', what call returned) or ('refused', its one-line message); a string saying what broke the
    contract otherwise: another exception, a hang, a warning, a message of several lines or none."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # what a process shows: all but deprecations (Pillow's IM format, ...)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=PendingDeprecationWarning)
        try:
            with time_limit(CASE_TIMEOUT_S):
                result = ("served", call())
        except refusal as exc:
            result = ("refused", str(exc))
        except Exception as exc:  # noqa: BLE001  what the contract rules out: the failure to report
            return f"{case}: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    if caught:
        return f"{case}: warned {caught[0].category.__name__}: {' '.join(str(caught[0].message).split())[:200]}"
    if result[0] == "refused" and not one_line(result[1]):
        return f"{case}: a refusal of {len(result[1].splitlines())} lines: {result[1][:300]!r}"
    return result


def check_all(results: list) -> dict:
    """Fails listing every case that broke the contract; otherwise how many were served and refused."""
    broken = [r for r in results if isinstance(r, str)]
    listed = "\n".join(broken[:SHOWN]).encode("utf-8", "backslashreplace").decode()  # lone surrogates too
    if broken:  # the message alone: a report holding the results' own text may not cross to pytest-xdist's parent
        pytest.fail(f"{len(broken)} of {len(results)} cases broke the contract:\n{listed}", pytrace=False)
    return {kind: sum(r[0] == kind for r in results) for kind in ("served", "refused")}


def tree(root) -> dict:
    """Every entry under root: a file's sha256, a link's target, 'folder' for a folder."""
    found = {}
    for folder, dirs, names in os.walk(root):
        for name in dirs + names:
            path = os.path.join(folder, name)
            relative = os.path.relpath(path, root)
            if os.path.islink(path):
                found[relative] = "-> " + os.readlink(path)
            elif os.path.isdir(path):
                found[relative] = "folder"
            else:
                with open(path, "rb") as f:
                    found[relative] = hashlib.sha256(f.read()).hexdigest()
    return found


def changes(before: dict, after: dict) -> set:
    return {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}


# --- in this process: each reader over every kind of mutated file -------------------------------------------------


def test_every_format_pillow_reads_has_a_seed_pillow_identifies():
    """The picture cases start from a file of each format Pillow reads here: a format added to Pillow fails this
    until it has one."""
    Image.init()
    seeds = fuzzing.picture_seeds()
    assert set(Image.OPEN) <= set(seeds), sorted(set(Image.OPEN) - set(seeds))
    for name, (_, data) in seeds.items():
        with Image.open(io.BytesIO(data)) as image:
            assert image.format.upper() == ("JPEG" if name == "MPO" else name)  # Pillow opens a one-frame MPO as JPEG


def prepared(path: str):
    """What predict makes of a file: for each picture in it, (name, the MNIST-style picture), or (name, the one
    line that says why it cannot be prepared: a blank one, ...), as predict answers the others of its file."""
    pictures = []
    for name, gray in digits.load(path):
        try:
            picture = digits.to_mnist(gray, name)
            assert picture.dtype == np.uint8 and picture.shape == (28, 28)
        except digits.ImageError as exc:
            picture = str(exc)
        pictures.append((name, picture))
    return pictures


def predict_outcome(path: str, case) -> object:
    """As predict reads a file: its pictures (each prepared or refused in one line), or one ImageError naming the
    file."""
    result = outcome(lambda: prepared(path), digits.ImageError, case)
    if isinstance(result, tuple) and result[0] == "refused" and not result[1].startswith(path):
        return f"{case}: a refusal that does not name the file: {result[1][:200]!r}"
    if isinstance(result, tuple) and result[0] == "served":
        for name, picture in result[1]:
            if isinstance(picture, str) and not (one_line(picture) and picture.startswith(name)):
                return f"{case}: a picture's refusal not one line naming it: {picture[:200]!r}"
    return result


@pytest.mark.parametrize("kind", ["picture", "array"])
def test_predict_reads_mutated_files_within_the_contract(tmp_path, kind):
    results = []
    for number, case in enumerate(fuzzing.cases(kind, CASES)):
        path = str(tmp_path / f"{number}{case.suffix}")
        with open(path, "wb") as f:
            f.write(case.data)
        results.append(predict_outcome(path, case))
        os.remove(path)
    counts = check_all(results)
    assert counts["served"] and counts["refused"], counts  # the mutations reach both ends


def test_the_data_readers_take_mutated_idx_and_npz_files_within_the_contract(tmp_path):
    tiny = fuzzing.seeds("idx")
    good = {
        f"{split}-{what}": data
        for split in ("train", "t10k")
        for what, (_, data) in (("images-idx3-ubyte", tiny["images"]), ("labels-idx1-ubyte", tiny["labels"]))
    }
    results = []
    for case in fuzzing.cases("idx", CASES) + fuzzing.cases("mnist_npz", CASES):
        folder = tmp_path / case.name.replace("#", "-")
        folder.mkdir()
        if case.kind == "mnist_npz":
            (folder / "mnist.npz").write_bytes(case.data)
        else:
            for name, data in good.items():
                (folder / name).write_bytes(data)
            stem = "train-images-idx3-ubyte" if case.name.startswith("images") else "train-labels-idx1-ubyte"
            os.remove(folder / stem)
            (folder / (stem + (".gz" if case.suffix.endswith(".gz") else ""))).write_bytes(case.data)
        results.append(outcome(lambda folder=folder: dataset.load(str(folder)), DataError, case))
    check_all(results)


def test_the_checkpoint_index_reader_takes_mutated_indexes_within_the_contract(tmp_path):
    directory = tmp_path / "checkpoints"
    directory.mkdir()
    for step in (12, 18, 24):
        (directory / f"ckpt-{step}.index").write_bytes(b"")
    present = {"ckpt-12", "ckpt-18", "ckpt-24"}
    results = []
    for case in fuzzing.cases("index", CASES * 10):
        (directory / "checkpoint").write_bytes(case.data)
        result = outcome(lambda: checkpoints.read_index(str(directory)), (), case)
        if isinstance(result, tuple):
            listed, damage = result[1]
            if damage is not None and not one_line(damage):
                result = f"{case}: damage of several lines: {damage!r}"
            elif damage is None and (not listed or not set(listed) <= present):
                result = f"{case}: trusted, listing {listed}"
            elif damage is not None and listed:
                result = f"{case}: damaged ({damage}) yet listing {listed}"
        results.append(result)
    check_all(results)


def test_resuming_reads_mutated_run_configs_and_histories_within_the_contract(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the settings name logs/r relative to here
    logdir = tmp_path / "logs"
    run_dir = logdir / "r"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "ckpt-24.index").write_bytes(b"")  # a run: resuming it reads its settings
    flags = fuzzing.run_config()
    results = []
    for case in fuzzing.cases("run_config", CASES * 10):
        (run_dir / rundir.RUN_CONFIG).write_bytes(case.data)
        before = tree(tmp_path)
        result = outcome(lambda: rundir.plan("logs", "r", flags), UserError, case)
        if isinstance(result, tuple) and result[0] == "served" and result[1] != "resume":
            result = f"{case}: planned {result[1]!r} for a run with a checkpoint"
        if tree(tmp_path) != before:
            result = f"{case}: changed {sorted(changes(before, tree(tmp_path)))}"
        results.append(result)
    check_all(results)
    checkpointer = object.__new__(checkpoints.Checkpointer)  # its history reader alone: no trainer needed
    checkpointer.directory, checkpointer._scratch = str(run_dir / "checkpoints"), None
    results = []
    for case in fuzzing.cases("history", CASES * 10):
        (run_dir / "checkpoints" / checkpoints.HISTORY).write_bytes(case.data)
        results.append(outcome(lambda: checkpointer.history(6), UserError, case))
    check_all(results)


@pytest.mark.parametrize("kind", ["lock", "lease", "lease-here"])
def test_claiming_a_run_reads_mutated_claims_within_the_contract(tmp_path, monkeypatch, kind):
    monkeypatch.setenv("DISTMNIST_RUN_CLAIM", kind.partition("-")[0])
    monkeypatch.setenv("DISTMNIST_LEASE_BEAT_S", "0.01")  # a lease's wait for rival newcomers: 0.01 s
    monkeypatch.setenv("DISTMNIST_LEASE_STALE_S", "0.05")
    logdir = tmp_path / "logs"
    logdir.mkdir()
    path = logdir / ".r.claim"
    results = []
    warned = Recorder()
    absl_logger = logging.getLogger("absl")  # a takeover's warning line, kept from pytest's capture, which would
    monkeypatch.setattr(absl_logger, "propagate", False)  # carry a lone surrogate in a claim to xdist's parent
    absl_logger.addHandler(warned)
    try:
        claim_cases(fuzzing.cases("claim", CASES * 10, {kind}), logdir, path, tmp_path, warned, results)
    finally:
        absl_logger.removeHandler(warned)
    check_all(results)


class Recorder(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def claim_cases(cases, logdir, path, tmp_path, warned, results):
    for case in cases:
        warned.lines.clear()
        path.write_bytes(case.data)
        before = tree(tmp_path)

        def take():
            runclaim.take(str(logdir), "r").release()
            return "taken"

        result = outcome(take, UserError, case)
        after = tree(tmp_path)
        if changes(before, after) - {".r.claim", "logs/.r.claim"} or (
            isinstance(result, tuple) and result[0] == "refused" and after != before
        ):
            result = f"{case}: changed {sorted(changes(before, after))} ({result})"
        if not all(one_line(line) for line in warned.lines):
            result = f"{case}: a warning of several lines: {warned.lines!r}"
        results.append(result)
        if path.exists() or path.is_symlink():
            path.unlink()


# --- what the fuzzer found, kept: each case that broke the contract before distmnist was fixed -------------------

FOUND = [
    ("array", "npy-2d#12"),  # a .npy header with a bracket left open: numpy's tokenizer raised TokenError
    ("array", "npy-uint8#8"),  # the same, through a header whose length field was changed
    ("mnist_npz", "mnist#11"),  # the same in a member of --data_dir's mnist.npz
    ("array", "npy-2d#18"),  # float32 paper and ink near its limits: numpy's overflow warning on stderr
    ("mnist_npz", "mnist#737"),  # a zip member's name with line breaks: a refusal of five lines
    ("array", "npy-float32#295"),  # a float picture in 0-1 but for one value near -float32's limit: warned
    ("picture", "TIFF#3"),
    ("picture", "TIFF#6"),  # Pillow's UserWarning for a TIFF tag past the file's end,
    ("picture", "TIFF#19"),
]  # and for corrupt EXIF: two more lines on stderr


@pytest.mark.parametrize("kind,name", FOUND)
def test_the_cases_the_fuzzer_found_stay_within_the_contract(tmp_path, kind, name):
    case = fuzzing.case(kind, name)
    if kind == "mnist_npz":
        (tmp_path / "mnist.npz").write_bytes(case.data)
        result = outcome(lambda: dataset.load(str(tmp_path)), DataError, case)
    else:
        path = str(tmp_path / f"case{case.suffix}")
        with open(path, "wb") as f:
            f.write(case.data)
        result = predict_outcome(path, case)
    assert isinstance(result, tuple), result


def test_settings_nested_deep_or_holding_line_breaks_are_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "logs" / "r" / "checkpoints").mkdir(parents=True)
    (tmp_path / "logs" / "r" / "checkpoints" / "ckpt-24.index").write_bytes(b"")
    flags = fuzzing.run_config()
    config = tmp_path / "logs" / "r" / rundir.RUN_CONFIG
    for text, said in (
        ('{"logdir": ' + "[" * 10_000 + "]" * 10_000 + "}", "maximum recursion depth"),
        (json.dumps({**flags, "logdir": "a\nb"}), r"--logdir='a\nb'"),
        (json.dumps({**flags, "seed": "1\u000b2"}), r"--seed='1\x0b2'"),
        (json.dumps({**flags, "logdir": "lo\u0000gs"}), r"--logdir='lo\x00gs'"),
        (json.dumps({**flags, "events_dir": "\ud800"}), r"--events_dir='\ud800'"),
    ):
        config.write_text(text)
        result = outcome(lambda: rundir.plan("logs", "r", flags), UserError, text[:40])
        assert isinstance(result, tuple) and result[0] == "refused" and said in result[1], result


def test_claims_with_beats_past_float_or_holders_that_break_lines_are_one_line(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("DISTMNIST_RUN_CLAIM", "lease")
    monkeypatch.setenv("DISTMNIST_LEASE_BEAT_S", "0.01")
    (tmp_path / "logs").mkdir()
    claim = tmp_path / "logs" / ".r.claim"
    holder = json.loads(fuzzing.seeds("claim")["lease"][1])
    claim.write_text(json.dumps(holder)[:-1] + ', "beat": 1' + "0" * 400 + "}")  # json reads it as an int
    result = outcome(lambda: runclaim.take(str(tmp_path / "logs"), "r"), runclaim.NotAClaim, "a beat of 10^400")
    assert isinstance(result, tuple) and result[0] == "refused" and "no valid 'beat'" in result[1], result
    claim.write_text(json.dumps({**holder, "host": "a\nb", "since": "c\u2028d", "beat": 1e12}))  # fresh: held
    result = outcome(lambda: runclaim.take(str(tmp_path / "logs"), "r"), runclaim.Claimed, "a host of two lines")
    assert isinstance(result, tuple) and result[0] == "refused" and r"on 'a\nb', since 'c\u2028d'" in result[1], result
    claim.write_text(json.dumps({**holder, "host": "a\nb", "beat": 1.0}))  # stale: taken over, with a warning
    with caplog.at_level(logging.WARNING):
        runclaim.take(str(tmp_path / "logs"), "r").release()
    warned = [r.getMessage() for r in caplog.records if "taking over" in r.getMessage()]
    assert len(warned) == 1 and one_line(warned[0]) and r"on 'a\nb'" in warned[0], warned


# --- as processes: predict over good and mutated files; train resuming a run whose files were mutated -----------


def run(module: str, *args: str, cwd, env=None) -> subprocess.CompletedProcess:
    """The entry point as a user runs it: a fresh process, in `cwd`, TensorFlow's log level as a shell has it."""
    return run_module(module, *args, cwd=cwd, env=env, unset=("TF_CPP_MIN_LOG_LEVEL",))


def no_traceback(result) -> None:
    assert "Traceback" not in result.stderr, result.stderr[-3000:]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from distmnist.training.model import MLP

    from helpers import export_saved_model, model_weights

    path = tmp_path_factory.mktemp("model") / "saved_model"
    export_saved_model(model_weights(MLP()), str(path))
    return str(path)


@pytest.mark.slow
@pytest.mark.parametrize("part", range(PROCESS_CASES))
def test_predict_answers_the_good_files_beside_mutated_ones(tmp_path, model, part):
    root = tmp_path / "root"
    pictures = root / "pictures"
    pictures.mkdir(parents=True)
    (root / "cwd").mkdir()
    (root / "cwd" / "notes.txt").write_text("the user's")
    good = [("good.png", fuzzing.picture_seeds()["PNG"][1]), ("good.npy", fuzzing.array_seeds()["npy-uint8"][1])]
    mutated = fuzzing.cases("picture", 1, start=1000 + part) + fuzzing.cases("array", 2, start=1000 + 2 * part)
    paths, expected_errors, expected_names = [], [], []
    for number, (name, data) in enumerate(
        good[:1] + [(f"{i}{c.suffix}", c.data) for i, c in enumerate(mutated)] + good[1:]
    ):
        path = str(pictures / name)
        with open(path, "wb") as f:
            f.write(data)
        paths.append(path)
        result = predict_outcome(path, mutated[number - 1] if 0 < number <= len(mutated) else name)
        assert isinstance(result, tuple), result  # the in-process tier's contract, first
        if result[0] == "refused":
            expected_errors.append(result[1])
        else:
            expected_errors += [p for _, p in result[1] if isinstance(p, str)]
            expected_names += [n for n, p in result[1] if not isinstance(p, str)]
    before = tree(root)
    answered = run("distmnist.predict", f"--model={model}", "--json", *paths, cwd=root / "cwd")
    no_traceback(answered)
    assert answered.returncode == (2 if expected_errors else 0), answered.stderr[-3000:]
    addresses = re.compile(r" at 0x[0-9a-f]+")  # an object's address in a message numpy quotes from ast
    assert [addresses.sub("", line) for line in answered.stderr.splitlines()] == [
        addresses.sub("", f"distmnist.predict: error: {m}") for m in expected_errors
    ]
    names = [json.loads(line)["path"] for line in answered.stdout.splitlines()]
    assert names == expected_names and names[0] == paths[0] and names[-1].startswith(paths[-1])  # the good ones too
    assert tree(root) == before  # predict writes nothing


SMALL = dict(
    max_steps=24,
    batch_size=16,
    log_every=6,
    eval_every=12,
    steps_per_loop=6,
    checkpoint_every=6,
    keep_checkpoints=3,
    jit_compile=False,
)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished tiny run (checkpoints at 12, 18, 24) and the MNIST-shaped data it trained on."""
    from distmnist.runs.run import train_and_evaluate
    from distmnist.training.strategy import make_strategy

    root = tmp_path_factory.mktemp("finished")
    mnist = make_tiny_mnist(num_train=256, num_test=50)
    (root / "data").mkdir()
    np.savez_compressed(root / "data" / "mnist.npz", **mnist.arrays())
    config = TrainConfig(logdir="logs", run_name="r", data_dir="data", **SMALL)  # relative: a copy resumes too
    here = os.getcwd()
    os.chdir(root)
    try:
        train_and_evaluate(config, choice=make_strategy(), mnist=mnist)
    finally:
        os.chdir(here)
    return root


def resume(root, env=None):
    return run(
        "distmnist.train",
        "--data_dir=data",
        "--logdir=logs",
        "--run_name=r",
        *(f"--{name}={str(value).lower()}" for name, value in SMALL.items()),
        cwd=root,
        env=env,
    )


MUTATED = {"index": "logs/r/checkpoints/checkpoint", "run_config": "logs/r/run_config.json", "claim": "logs/.r.claim"}


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind,part", [("none", 0)] + [(kind, part) for kind in MUTATED for part in range(PROCESS_CASES)]
)
def test_a_run_whose_files_were_mutated_resumes_or_is_refused_in_one_line(tmp_path, finished_run, kind, part):
    """kind none: the run as it was, which the same command must resume (else every case would pass refused)."""
    root = tmp_path / "root"
    shutil.copytree(finished_run, root)
    for folder, name in ((".", "notes.txt"), ("mine", "thesis.tex"), ("logs", "my-notes.txt")):
        (root / folder).mkdir(exist_ok=True)
        (root / folder / name).write_text("the user's")
    case = "the run as it was"
    seed = ("lock", "lease", "lease-here")[part % 3] if kind == "claim" else None
    if kind != "none":
        override = {"run_config": (".json", (root / MUTATED[kind]).read_bytes())} if kind == "run_config" else None
        (case,) = fuzzing.cases(kind, 1, {seed} if seed else None, start=1000 + part, override=override)
        (root / MUTATED[kind]).write_bytes(case.data)
    before = tree(root)
    resumed = resume(root, env={"DISTMNIST_RUN_CLAIM": seed.partition("-")[0]} if seed else None)
    after = tree(root)
    no_traceback(resumed)
    said = [line for line in resumed.stderr.splitlines() if not re.match(r"I\d{4} ", line)]  # absl's INFO lines
    assert resumed.returncode in ((0,) if kind == "none" else (0, 2)), f"{case}: {resumed.stderr[-3000:]}"
    if resumed.returncode == 2:
        assert len(said) == 1 and said[0].startswith("distmnist.train: error: "), f"{case}: {resumed.stderr}"
        assert after == before, f"{case}: changed {sorted(changes(before, after))}"
        return
    assert len(said) <= 1 and all(line.startswith("W") for line in said), f"{case}: {resumed.stderr}"
    step = int(re.search(r"resuming from step (\d+)", resumed.stdout).group(1))
    assert step in (12, 18, 24), f"{case}: {resumed.stdout}"  # never from step 0
    outside = {p for p in changes(before, after) if not (p.startswith("logs/r/") or p == "logs/.r.claim")}
    assert not outside, f"{case}: changed outside the run {sorted(outside)}"
    history = json.loads((root / "logs" / "r" / "run.json").read_text())["history"]
    assert [s for s, _ in history["loss"]] == list(range(0, 24, 6)), f"{case}: {history}"
