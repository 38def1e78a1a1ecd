"""One writer per run directory: a claim on <logdir>/<run_name> that a run takes before it writes anything and
holds for its whole life (training, resumption, export), so that a second process given the same run (a second
terminal, a sweep and a hand run sharing a name, a job engine's replacement chief while the old one is still
going down) stops in one line instead of writing beside it. No TensorFlow here.

The claim is the file <logdir>/.<run_name>.claim, outside the run directory (which --overwrite deletes), and
it names its holder: host, boot, pid and the pid's start time, since when. A claim file that is not one (not a
regular file, not a claim's JSON) is refused in one line, never overwritten.

  - lock (local and network filesystems): an exclusive POSIX record lock (fcntl), which NFS carries to its
    server too. The kernel releases it when the process ends, however it ends (SIGKILL, a crash, a power cut on
    NFS once the server notices), so no claim is ever left stale.
  - lease (FUSE mounts such as Cloud Storage FUSE, where such locks are only local to one machine): the file
    holds the holder's heartbeat, rewritten every LEASE_BEAT_S; a newcomer takes it over when the heartbeat is
    LEASE_STALE_S old, or at once when the holder was on this host, in this boot (the kernel's boot id: a pid
    of an earlier boot means nothing now), and its pid is no longer the process that claimed (gone, a zombie,
    or another process that started at another time): a Kubernetes container restarted after an OOM kill
    finds its dead self's lease. It then reads the file back after a pause to see that no one else took it.
    Hosts' clocks are taken to agree within a few seconds (NTP, as on cloud VMs). The holder's heartbeat
    thread watches its lease: another process's claim in it (taken over: the holder was frozen past
    LEASE_STALE_S, or a process under the same host name in another pid namespace judged it dead) or no
    heartbeat written for LEASE_STALE_S / 2 sets Claim.lost, which the training loop checks at every call.

DISTMNIST_RUN_CLAIM=lock|lease chooses the kind where the filesystem is not what it seems (an NFS without
lock daemons: lease).
"""

import dataclasses
import datetime
import errno
import fcntl
import json
import math
import os
import socket
import stat
import threading
import time
import uuid

from absl import logging

from distmnist.common import files
from distmnist.common.errors import UserError

LEASE_BEAT_S = 10.0
LEASE_STALE_S = 60.0


class Claimed(UserError):
    """Another process holds the run's claim."""


class NotAClaim(UserError):
    """The claim file is not a distmnist claim: refused, never overwritten."""


# A claim's fields and their types; boot_id and started are absent from claims of earlier versions.
FIELDS = {"host": str, "pid": int, "since": str, "token": str}
LEASE_FIELDS = {**FIELDS, "beat": (int, float)}
MAX_CLAIM_BYTES = 4096


def claim_path(logdir: str, run_name: str) -> str:
    return os.path.join(logdir, f".{run_name}.claim")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _holder_line(run_dir: str, holder: dict) -> str:
    who = f"pid {holder.get('pid', '?')} on {_shown(holder.get('host', '?'))}, since {_shown(holder.get('since', '?'))}"
    return (
        f"run directory {run_dir} is in use by another distmnist process ({who}); wait for it to end, or "
        "choose another --run_name"
    )


def _shown(text: str) -> str:
    """A claim's text as it goes into a line: quoted and escaped when it holds a line break or another control."""
    return text if text.isprintable() else repr(text)


def _mount_type(path: str) -> str:
    """The filesystem type of the mount that holds path (from /proc/self/mountinfo), '' where unknown."""
    path = os.path.realpath(path)
    best, kind = "", ""
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                mount_point = fields[4].replace("\\040", " ")
                fstype = fields[fields.index("-") + 1]
                if (path == mount_point or path.startswith(mount_point.rstrip("/") + "/")) and len(mount_point) >= len(
                    best
                ):
                    best, kind = mount_point, fstype
    except (OSError, ValueError, IndexError):
        return ""
    return kind


def kind_for(logdir: str) -> str:
    """ "lease" on FUSE mounts (Cloud Storage FUSE and the like), "lock" elsewhere; DISTMNIST_RUN_CLAIM wins."""
    chosen = os.environ.get("DISTMNIST_RUN_CLAIM", "")
    if chosen in ("lock", "lease"):
        return chosen
    if chosen:
        raise UserError(f"DISTMNIST_RUN_CLAIM must be lock or lease, got {chosen!r}")
    return "lease" if _mount_type(files.nearest_existing(logdir) or ".").startswith("fuse") else "lock"


@dataclasses.dataclass
class Claim:
    """A claim held by this process; `release` lets it go (the kernel does, too, when the process ends)."""

    path: str
    token: str
    created: list  # folders and the claim file this process made, for `abandon`
    fd: int | None = None
    _stop: threading.Event | None = None
    _heartbeat: threading.Thread | None = None
    lost: str | None = None  # set by a lease's heartbeat: why the run must stop now
    taken_over: bool = False  # lost to another process: write nothing more into the run

    def release(self) -> None:
        if self._stop is not None:
            self._stop.set()
            if self._heartbeat is not None:
                self._heartbeat.join(timeout=10)  # a beat in flight would write the lease again once it is removed
            if _read(self.path).get("token") == self.token:
                _remove(self.path)
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def abandon(self) -> None:
        """For a run that failed before it wrote anything: remove what claiming made (the claim file while it is
        still held, so no newcomer can lock a file that is going away), release, remove the folders it made if
        they are empty."""
        if self.path in self.created:
            _remove(self.path)
        self.release()
        for path in reversed(self.created):
            if path != self.path:
                try:
                    os.rmdir(path)
                except OSError:
                    pass


def _read(path: str) -> dict:
    """The claim's contents, {} when there is none or it cannot be read (for messages and the heartbeat)."""
    try:
        return _parse(path, _read_bytes(path), FIELDS)
    except (OSError, NotAClaim):
        return {}


def _read_bytes(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotAClaim(_not_a_claim(path, "not a regular file"))
        return os.read(fd, MAX_CLAIM_BYTES + 1)
    finally:
        os.close(fd)


def _not_a_claim(path: str, why: str) -> str:
    return (
        f"{path} is not a distmnist run claim ({why}); if no distmnist process is using this run, remove it "
        "and run the same command again"
    )


def _parse(path: str, data: bytes, fields: dict) -> dict:
    """A claim's JSON, checked field by field (NotAClaim otherwise); {} for an empty file, as a holder leaves it
    between creating and writing it."""
    if not data.strip():
        return {}
    if len(data) > MAX_CLAIM_BYTES:
        raise NotAClaim(_not_a_claim(path, f"over {MAX_CLAIM_BYTES} bytes"))
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        raise NotAClaim(_not_a_claim(path, "not JSON")) from None
    if not isinstance(value, dict):
        raise NotAClaim(_not_a_claim(path, "not a JSON object"))
    for name, kind in fields.items():
        if not isinstance(value.get(name), kind) or isinstance(value.get(name), bool):
            raise NotAClaim(_not_a_claim(path, f"no valid {name!r}"))
    if "beat" in fields and not (abs(value["beat"]) < 1e300 and math.isfinite(value["beat"])):  # 10**400: no float
        raise NotAClaim(_not_a_claim(path, "no valid 'beat'"))
    return value


def _existing_claim(path: str, fields: dict) -> dict:
    """What a newcomer finds: {} when there is no claim file yet; NotAClaim when it is not one."""
    try:
        return _parse(path, _read_bytes(path), fields)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO):  # a link; a socket
            raise NotAClaim(
                _not_a_claim(path, "a symbolic link" if exc.errno == errno.ELOOP else "not a regular file")
            ) from None
        raise UserError(f"cannot read the run claim {path} ({exc.strerror}); fix its permissions") from None


def boot_id() -> str:
    """This boot of this machine's kernel ('' where unknown): pids are only comparable within one boot."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def process_started(pid: int) -> int | None:
    """When the live process `pid` started (clock ticks since boot), None when there is no such process or it is
    a zombie (it has ended; its parent has not collected it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    except (OSError, IndexError):
        return None
    if fields[0] == "Z":
        return None
    return int(fields[19])  # field 22 of proc(5), counted from the state (field 3)


def holder_is_gone(holder: dict) -> bool:
    """Whether the holder was on this host, in this boot, and its pid is no longer the process that claimed."""
    if holder.get("host") != socket.gethostname() or not holder.get("boot_id") or holder["boot_id"] != boot_id():
        return False
    started = process_started(holder["pid"])
    return started is None or (isinstance(holder.get("started"), int) and started != holder["started"])


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def _make_logdir(logdir: str, run_dir: str) -> list:
    """Creates logdir (and its missing parents); returns what it made, outermost first. A place that cannot hold
    it is the UserError rundir.plan gives too."""
    files.check_creatable(logdir, run_dir)
    missing: list[str] = []
    path = logdir
    while path and not os.path.exists(path):
        missing.insert(0, path)
        path = os.path.dirname(path)
    os.makedirs(logdir, exist_ok=True)
    return missing


def _seconds(name: str, default: float) -> float:
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise UserError(f"{name} must be a positive number of seconds, got {text!r}")
    return value


def lease_timing() -> tuple:
    """(heartbeat interval, staleness) in seconds, from DISTMNIST_LEASE_BEAT_S and DISTMNIST_LEASE_STALE_S;
    UserError when either is not a positive number, or a holder that beats could look stale."""
    beat_s, stale_s = (
        _seconds("DISTMNIST_LEASE_BEAT_S", LEASE_BEAT_S),
        _seconds("DISTMNIST_LEASE_STALE_S", LEASE_STALE_S),
    )
    if stale_s <= 2 * beat_s:
        raise UserError(
            f"DISTMNIST_LEASE_STALE_S ({stale_s:g} s) must be more than twice DISTMNIST_LEASE_BEAT_S "
            f"({beat_s:g} s): a holder that beats must never look stale"
        )
    return beat_s, stale_s


def take(logdir: str, run_name: str) -> Claim:
    """Claims <logdir>/<run_name> for this process (creating logdir if needed), or raises Claimed naming the
    holder (NotAClaim for a claim file that is not one). Hold the returned Claim for the life of the run."""
    run_dir = os.path.join(logdir, run_name)
    kind = kind_for(logdir)
    timing = lease_timing()  # checked whatever the kind: a bad setting is bad input wherever it is read
    path = claim_path(logdir, run_name)
    if kind == "lease":
        _existing_claim(path, LEASE_FIELDS)  # before anything is made
    created = _make_logdir(logdir, run_dir)
    token = uuid.uuid4().hex
    me = {
        "host": socket.gethostname(),
        "boot_id": boot_id(),
        "pid": os.getpid(),
        "started": process_started(os.getpid()),
        "since": _now(),
        "token": token,
    }
    if not os.path.exists(path):
        created.append(path)
    if kind == "lock":
        return _take_lock(path, run_dir, me, created)
    return _take_lease(path, run_dir, me, created, *timing)


def _take_lock(path: str, run_dir: str, me: dict, created: list) -> Claim:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):  # a link; a folder; a socket
            raise NotAClaim(
                _not_a_claim(path, "a symbolic link" if exc.errno == errno.ELOOP else "not a regular file")
            ) from None
        raise UserError(f"cannot open the run claim {path} ({exc.strerror}); fix its permissions") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotAClaim(_not_a_claim(path, "not a regular file"))
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EAGAIN):
                raise Claimed(_holder_line(run_dir, _read(path))) from None
            raise
        _parse(path, os.pread(fd, MAX_CLAIM_BYTES + 1, 0), FIELDS)  # held now: a claim, or refused
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(me).encode(), 0)
    return Claim(path, me["token"], created, fd=fd)


def _write_lease(path: str, value: dict) -> None:
    temporary = f"{path}.{value['token']}"
    try:
        with open(temporary, "w") as f:
            f.write(json.dumps(value))
        os.replace(temporary, path)
    except OSError:
        _remove(temporary)
        raise


def _take_lease(path: str, run_dir: str, me: dict, created: list, beat_s: float, stale_s: float) -> Claim:
    holder = _existing_claim(path, LEASE_FIELDS)
    age_s = time.time() - holder["beat"] if holder else 0.0
    gone = bool(holder) and holder_is_gone(holder)
    if holder and age_s < stale_s and not gone:
        raise Claimed(_holder_line(run_dir, holder))
    if holder:
        why = "which is no longer running" if gone else f"whose last heartbeat is {age_s:.0f} s old"
        logging.warning(
            "run directory %s: taking over the claim of pid %s on %s, %s",
            run_dir,
            holder["pid"],
            _shown(holder["host"]),
            why,
        )
    _write_lease(path, {**me, "beat": time.time()})
    time.sleep(min(beat_s, 2.0))  # another newcomer's write, if any, lands meanwhile: the file has one winner
    now = _read(path)
    if now.get("token") != me["token"]:
        raise Claimed(_holder_line(run_dir, now))
    claim = Claim(path, me["token"], created, _stop=threading.Event())
    claim._heartbeat = threading.Thread(
        target=_heartbeat, args=(claim, me, beat_s, stale_s), name="run-claim-heartbeat", daemon=True
    )
    claim._heartbeat.start()
    return claim


def _heartbeat(claim: Claim, me: dict, beat_s: float, stale_s: float) -> None:
    """Rewrites the lease every beat_s while the claim is held. Sets claim.lost when another process's claim is
    in the file (taken over) or no heartbeat could be written for stale_s / 2: the run must stop before a
    newcomer may take it over. A file gone or unreadable for a moment is written again at the next beat."""
    written = time.monotonic()
    assert claim._stop is not None  # claim() made it with the claim
    while not claim._stop.wait(beat_s):
        try:
            holder = _parse(claim.path, _read_bytes(claim.path), LEASE_FIELDS)
        except FileNotFoundError:
            holder = {}
        except (OSError, NotAClaim):
            holder = None  # unreadable now: not evidence of a takeover
        if holder and holder["token"] != me["token"]:
            claim.taken_over = True
            claim.lost = (
                f"another distmnist process (pid {holder['pid']} on {_shown(holder['host'])}, since "
                f"{_shown(holder['since'])}) took over this run's claim {claim.path}"
            )
            return
        try:
            _write_lease(claim.path, {**me, "beat": time.time()})
            written = time.monotonic()
        except OSError as exc:
            silent_s = time.monotonic() - written
            if silent_s >= stale_s / 2:
                claim.lost = (
                    f"no heartbeat could be written to this run's claim {claim.path} for {silent_s:.1f} s "
                    f"({exc.strerror or exc})"
                )
                return
