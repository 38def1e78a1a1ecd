"""One writer per run directory: a claim on <logdir>/<run_name> that a run takes before it writes anything and
holds for its whole life (training, resumption, export), so that a second process given the same run (a second
terminal, a sweep and a hand run sharing a name, a job engine's replacement chief while the old one is still
going down) stops in one line instead of writing beside it. No TensorFlow here.

The claim is the file <logdir>/.<run_name>.claim, outside the run directory (which --overwrite deletes), and
it names its holder: host, pid, since when.

  - lock (local and network filesystems): an exclusive POSIX record lock (fcntl), which NFS carries to its
    server too. The kernel releases it when the process ends, however it ends (SIGKILL, a crash, a power cut on
    NFS once the server notices), so no claim is ever left stale.
  - lease (FUSE mounts such as Cloud Storage FUSE, where such locks are only local to one machine): the file
    holds the holder's heartbeat, rewritten every LEASE_BEAT_S; a newcomer takes it over only when the
    heartbeat is LEASE_STALE_S old, and then reads it back after a pause to see that no one else took it.
    Hosts' clocks are taken to agree within a few seconds (NTP, as on cloud VMs).

DISTMNIST_RUN_CLAIM=lock|lease chooses the kind where the filesystem is not what it seems (an NFS without
lock daemons: lease).
"""

import dataclasses
import datetime
import errno
import fcntl
import json
import os
import socket
import threading
import time
import uuid
from typing import Optional

from absl import logging

from distmnist.common import files
from distmnist.common.errors import UserError

LEASE_BEAT_S = 10.0
LEASE_STALE_S = 60.0


class Claimed(UserError):
    """Another process holds the run's claim."""


def claim_path(logdir: str, run_name: str) -> str:
    return os.path.join(logdir, f".{run_name}.claim")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _holder_line(run_dir: str, holder: dict) -> str:
    who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, since {holder.get('since', '?')}"
    return (f"run directory {run_dir} is in use by another distmnist process ({who}); wait for it to end, or "
            "choose another --run_name")


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
                if (path == mount_point or path.startswith(mount_point.rstrip("/") + "/")) and \
                        len(mount_point) >= len(best):
                    best, kind = mount_point, fstype
    except (OSError, ValueError, IndexError):
        return ""
    return kind


def kind_for(logdir: str) -> str:
    """"lease" on FUSE mounts (Cloud Storage FUSE and the like), "lock" elsewhere; DISTMNIST_RUN_CLAIM wins."""
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
    fd: Optional[int] = None
    _stop: Optional[threading.Event] = None

    def release(self) -> None:
        if self._stop is not None:
            self._stop.set()
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
    try:
        with open(path) as f:
            value = json.loads(f.read(4096) or "{}")
        return value if isinstance(value, dict) else {}
    except (OSError, ValueError):
        return {}


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def _make_logdir(logdir: str, run_dir: str) -> list:
    """Creates logdir (and its missing parents); returns what it made, outermost first. A place that cannot hold
    it is the UserError rundir.plan gives too."""
    files.check_creatable(logdir, run_dir)
    missing, path = [], logdir
    while path and not os.path.exists(path):
        missing.insert(0, path)
        path = os.path.dirname(path)
    os.makedirs(logdir, exist_ok=True)
    return missing


def _lease_beat_s() -> float:
    return float(os.environ.get("DISTMNIST_LEASE_BEAT_S", LEASE_BEAT_S))


def _lease_stale_s() -> float:
    return float(os.environ.get("DISTMNIST_LEASE_STALE_S", LEASE_STALE_S))


def take(logdir: str, run_name: str) -> Claim:
    """Claims <logdir>/<run_name> for this process (creating logdir if needed), or raises Claimed naming the
    holder. Hold the returned Claim for the life of the run."""
    run_dir = os.path.join(logdir, run_name)
    kind = kind_for(logdir)
    created = _make_logdir(logdir, run_dir)
    path = claim_path(logdir, run_name)
    token = uuid.uuid4().hex
    me = {"host": socket.gethostname(), "pid": os.getpid(), "since": _now(), "token": token}
    if not os.path.exists(path):
        created.append(path)
    if kind == "lock":
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EACCES, errno.EAGAIN):
                raise Claimed(_holder_line(run_dir, _read(path))) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        return Claim(path, token, created, fd=fd)
    return _take_lease(path, run_dir, me, created)


def _write_lease(path: str, value: dict) -> None:
    temporary = f"{path}.{value['token']}"
    with open(temporary, "w") as f:
        f.write(json.dumps(value))
    os.replace(temporary, path)


def _take_lease(path: str, run_dir: str, me: dict, created: list) -> Claim:
    beat_s, stale_s = _lease_beat_s(), _lease_stale_s()
    holder = _read(path)
    if holder and time.time() - holder.get("beat", 0) < stale_s:
        raise Claimed(_holder_line(run_dir, holder))
    if holder:
        logging.warning("run directory %s: taking over the claim of pid %s on %s, whose last heartbeat is %.0f s old",
                        run_dir, holder.get("pid"), holder.get("host"), time.time() - holder.get("beat", 0))
    _write_lease(path, {**me, "beat": time.time()})
    time.sleep(min(beat_s, 2.0))  # another newcomer's write, if any, lands meanwhile: the file has one winner
    now = _read(path)
    if now.get("token") != me["token"]:
        raise Claimed(_holder_line(run_dir, now))
    stop = threading.Event()

    def beat():
        while not stop.wait(beat_s):
            if _read(path).get("token") != me["token"]:
                logging.error("run directory %s: another process has taken over this run's claim", run_dir)
                return
            _write_lease(path, {**me, "beat": time.time()})

    threading.Thread(target=beat, name="run-claim-heartbeat", daemon=True).start()
    return Claim(path, me["token"], created, _stop=stop)
