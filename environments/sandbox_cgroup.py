"""Per-run control groups for the Python sandbox: a process cap (`pids`) and a memory cap for the whole tree.

Each run gets its own cgroup beneath the parent's (cgroup v2, or the v1 `pids` and `memory` hierarchies on a
hybrid system), with `pids.max` set to the process cap and the memory limit (v2 `memory.max` with no swap and
group OOM kills; v1 `memory.limit_in_bytes` and `memory.memsw.limit_in_bytes`) set to the memory cap. The
sandboxed process joins it before it runs anything; at the end every process left in it is killed and the
cgroup is removed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

CONTROLLERS = ("pids", "memory")
_REMOVE_SECONDS = 5.0
_KILL_ROUNDS = 50


@dataclass(frozen=True)
class CgroupParent:
    """Where one controller's per-run cgroups are made.

    Attributes:
        directory: the parent process's own cgroup directory for that controller.
        version: 1 or 2.
    """

    directory: str
    version: int


def _mountinfo() -> list[tuple[str, str, str]]:
    """(mount point, file system type, super options) of every mount of this process."""
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        dash = fields.index("-")
        mounts.append((fields[4], fields[dash + 1], fields[dash + 3] if len(fields) > dash + 3 else ""))
    return mounts


def _own_cgroups() -> dict[str, str]:
    """This process's cgroup path by v1 controller name, and under "" its v2 path."""
    paths: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, names, path = line.split(":", 2)
        for name in names.split(",") if names else [""]:
            paths[name] = path
    return paths


def find_parents() -> dict[str, CgroupParent]:
    """The cgroup each controller's run cgroups go under; OSError naming the reason when one is missing."""
    if not Path("/proc/self/cgroup").exists():
        raise OSError("no /proc/self/cgroup (not Linux, or no cgroups)")
    own = _own_cgroups()
    mounts = _mountinfo()
    parents: dict[str, CgroupParent] = {}
    for controller in CONTROLLERS:
        v1 = [path for path, kind, options in mounts if kind == "cgroup" and controller in options.split(",")]
        if v1 and controller in own:
            parents[controller] = CgroupParent(os.path.join(v1[0], own[controller].lstrip("/")), 1)
    missing = [controller for controller in CONTROLLERS if controller not in parents]
    if missing:
        v2 = [point for point, kind, _ in mounts if kind == "cgroup2"]
        if not v2 or "" not in own:
            raise OSError(f"no cgroup hierarchy with the {', '.join(missing)} controller(s) is mounted")
        directory = os.path.join(v2[0], own[""].lstrip("/"))
        _enable_v2(directory, missing)
        for controller in missing:
            parents[controller] = CgroupParent(directory, 2)
    return parents


def _enable_v2(directory: str, controllers: list[str]) -> None:
    enabled = Path(directory, "cgroup.subtree_control").read_text().split()
    wanted = [name for name in controllers if name not in enabled]
    if not wanted:
        return
    available = Path(directory, "cgroup.controllers").read_text().split()
    absent = [name for name in wanted if name not in available]
    if absent:
        raise OSError(f"the cgroup v2 controller(s) {', '.join(absent)} are not available in {directory}")
    try:
        Path(directory, "cgroup.subtree_control").write_text(" ".join(f"+{name}" for name in wanted))
    except OSError as exc:
        names = ", ".join(wanted)
        raise OSError(f"cannot enable {names} for the cgroups beneath {directory}: {exc}") from None


def _write(path: str, value: str) -> None:
    with open(path, "w") as handle:
        handle.write(value)


def _read_counter(path: str, key: str) -> int:
    """The value of `key` in a flat-keyed cgroup file such as pids.events; 0 when absent."""
    with contextlib.suppress(OSError):
        for line in Path(path).read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    return 0


class RunCgroup:
    """The cgroup(s) of one sandboxed run, with `max_processes` tasks and `memory_bytes` of memory in all.

    Raises OSError (after removing whatever it made) when the cgroup cannot be made or limited.
    """

    def __init__(self, parents: dict[str, CgroupParent], max_processes: int, memory_bytes: int) -> None:
        name = f"agentrl-sandbox-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.directories: dict[str, CgroupParent] = {}
        for controller, parent in parents.items():
            self.directories[controller] = CgroupParent(os.path.join(parent.directory, name), parent.version)
        try:
            for directory in self._unique():
                os.mkdir(directory.directory, 0o755)
            self._limit(max_processes, memory_bytes)
        except OSError:
            self.remove()
            raise

    def _unique(self) -> list[CgroupParent]:
        return list(dict.fromkeys(self.directories.values()))

    def _limit(self, max_processes: int, memory_bytes: int) -> None:
        _write(os.path.join(self.directories["pids"].directory, "pids.max"), str(max_processes))
        memory = self.directories["memory"]
        if memory.version == 2:
            _write(os.path.join(memory.directory, "memory.max"), str(memory_bytes))
            for name, value in (("memory.swap.max", "0"), ("memory.oom.group", "1")):
                if os.path.exists(os.path.join(memory.directory, name)):
                    _write(os.path.join(memory.directory, name), value)
            return
        _write(os.path.join(memory.directory, "memory.limit_in_bytes"), str(memory_bytes))
        swap = os.path.join(memory.directory, "memory.memsw.limit_in_bytes")
        if os.path.exists(swap):
            _write(swap, str(memory_bytes))

    @property
    def procs_files(self) -> list[str]:
        """The `cgroup.procs` files the sandboxed process writes "0" to, to join."""
        return [os.path.join(directory.directory, "cgroup.procs") for directory in self._unique()]

    def limits_hit(self) -> tuple[str, ...]:
        """Which caps were hit: "processes" (a fork was refused) and "memory" (a process was killed)."""
        hit = []
        if _read_counter(os.path.join(self.directories["pids"].directory, "pids.events"), "max") > 0:
            hit.append("processes")
        memory = self.directories["memory"]
        events = "memory.events" if memory.version == 2 else "memory.oom_control"
        if _read_counter(os.path.join(memory.directory, events), "oom_kill") > 0:
            hit.append("memory")
        return tuple(hit)

    def kill(self) -> None:
        """SIGKILL every process in the cgroup(s), until none is left or the rounds run out."""
        for directory in self._unique():
            kill_file = os.path.join(directory.directory, "cgroup.kill")
            if directory.version == 2 and os.path.exists(kill_file):
                with contextlib.suppress(OSError):
                    _write(kill_file, "1")
        for _ in range(_KILL_ROUNDS):
            pids = self._pids()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)

    def _pids(self) -> set[int]:
        pids: set[int] = set()
        for procs in self.procs_files:
            with contextlib.suppress(OSError):
                pids.update(int(pid) for pid in Path(procs).read_text().split())
        return pids

    def remove(self) -> None:
        """Remove the cgroup(s); a cgroup whose last processes are still exiting is retried for a while."""
        for directory in self._unique():
            deadline = time.monotonic() + _REMOVE_SECONDS
            while True:
                try:
                    os.rmdir(directory.directory)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.02)
