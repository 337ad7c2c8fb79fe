"""Running an untrusted Python program with limits that only the caller's configuration sets.

Every run gets a fresh temporary working directory (removed afterwards), an environment of only PATH, LANG,
HOME and TMPDIR, stdin from /dev/null, its own session and process group, `no_new_privs`, and resource limits
(CPU time, address space and data segment, file size, process count, open files, no core dumps). The parent
reads stdout and stderr as they arrive, keeps at most `max_output_bytes` and stops the program once it has
written more; at the wall-clock timeout, or when the program's main process exits, the whole process group is
killed with SIGKILL.

On top of that, each of these isolation layers is used when this machine supports it (probed once per process;
a missing layer is reported by one RuntimeWarning and the run goes on without it):

- `namespaces`: new user, PID, network and mount namespaces (util-linux `unshare`) with a private /proc. The
  program sees no other process, has no network but a down loopback, and every process it starts dies with
  it even if it left the process group.
- `landlock`: reads only beneath the Python installation and system library directories, writes only in its
  working directory, no TCP bind/connect (kernel ABI >= 4), no signals or abstract unix sockets reaching
  outside (ABI >= 6).
- `seccomp`: a syscall filter (through the system's libseccomp) refusing unix-domain sockets (a pathname
  socket such as a container runtime's is reachable through every other layer), new namespaces, ptrace and
  other process inspection, BPF, io_uring, keyrings, mounts and module loading.
- `nobody`: when the parent runs as root, the program runs as uid/gid 65534, which also makes RLIMIT_NPROC
  effective (the kernel does not apply it to root). The sandbox's first process starts as root, makes a
  private mount namespace in which the Python installation is reachable for uid 65534 (each directory on
  its path that others may not search, such as a 0700 /root, is covered by an empty tmpfs with the
  installation bound back in place), then drops to uid 65534.

Limits that span processes are enforced whatever the layers (see `Sandbox.limit_mechanisms`):

- processes: RLIMIT_NPROC where the kernel applies it to the program's user (uid 65534 under `nobody`;
  probed for the parent's user, never root), and a per-run cgroup's `pids.max` where a cgroup can be
  made; with neither, a seccomp filter refuses every fork (threads still work), and without libseccomp
  the run fails closed with SandboxSetupError.
- memory of the whole process tree: the per-run cgroup's memory limit, `memory_bytes` in all; without a
  cgroup, RLIMIT_AS per process times the process cap.
- disk use of the working directory (`max_disk_bytes`, `max_files`): a tmpfs of that size where the sandbox
  starts as root and may mount (a hard limit: writes beyond it fail with ENOSPC); elsewhere the parent
  measures the directory every 0.1 s and stops the program once it is over (it may overshoot by what it
  writes in between, each file capped by RLIMIT_FSIZE). Either way the result lists "disk" in
  `limits_hit`.

`Sandbox.isolation` names the layers and mechanisms in force, e.g.
`("rlimits", "namespaces", "landlock", "seccomp", "nobody", "rlimit-nproc", "cgroup", "tmpfs")`.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from environments.sandbox_cgroup import RunCgroup, find_parents
from environments.sandbox_child import SECCOMP_MACHINES, SETUP_FAILED_EXIT, SETUP_FAILED_PREFIX, landlock_abi

LAYERS = ("namespaces", "landlock", "seccomp", "nobody")
NOBODY = 65534
MECHANISMS = ("rlimit-nproc", "cgroup", "tmpfs", "no-fork")
UNSHARE_FLAGS = ("--user", "--net", "--pid", "--mount-proc", "--kill-child")
ROOT_UNSHARE_FLAGS = ("--net", "--pid", "--mount-proc", "--kill-child")
SYSTEM_READ_PATHS = ("/usr", "/lib", "/lib32", "/lib64", "/bin", "/etc/ld.so.cache", "/etc/localtime")
DEVICE_PATHS = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
_CHUNK_BYTES = 64 * 1024
_POLL_SECONDS = 0.05
_WATCH_SECONDS = 0.1
_DRAIN_SECONDS = 0.2
_REAP_SECONDS = 5.0
_PROBE_SECONDS = 20.0
_CHILD_SOURCE = (Path(__file__).with_name("sandbox_child.py")).read_text(encoding="utf-8")


class SandboxSetupError(RuntimeError):
    """The sandbox could not be set up, so the program was not run."""


@dataclass(frozen=True)
class SandboxLimits:
    """What one program may use. Set by the environment's configuration, never by the agent.

    Attributes:
        timeout: wall-clock seconds for the program and everything it starts.
        memory_bytes: address space (RLIMIT_AS) and data segment (RLIMIT_DATA) of each process, and the
            memory of all of them together where a cgroup is available.
        max_output_bytes: stdout plus stderr kept; writing more stops the program.
        max_file_bytes: largest file a process may write (RLIMIT_FSIZE).
        max_processes: processes (and threads) the program may have at once.
        max_open_files: file descriptors per process (RLIMIT_NOFILE).
        max_code_bytes: longest program accepted (UTF-8 bytes).
        max_disk_bytes: bytes the working directory may hold; going over stops the program.
        max_files: files and directories the working directory may hold; going over stops the program.
    """

    timeout: float = 5.0
    memory_bytes: int = 512 * 1024 * 1024
    max_output_bytes: int = 64 * 1024
    max_file_bytes: int = 16 * 1024 * 1024
    max_processes: int = 64
    max_open_files: int = 64
    max_code_bytes: int = 100_000
    max_disk_bytes: int = 64 * 1024 * 1024
    max_files: int = 1024

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"SandboxLimits.{name} must be a positive number, got {value!r}")

    def rlimits(self) -> dict[str, int]:
        """The resource limits the child sets on itself, by `resource` constant name."""
        cpu = max(1, int(self.timeout) + 1)
        return {
            "RLIMIT_CORE": 0,
            "RLIMIT_CPU": cpu,
            "RLIMIT_AS": int(self.memory_bytes),
            "RLIMIT_DATA": int(self.memory_bytes),
            "RLIMIT_FSIZE": int(min(self.max_file_bytes, self.max_disk_bytes)),
            "RLIMIT_NPROC": int(self.max_processes),
            "RLIMIT_NOFILE": int(self.max_open_files),
        }


@dataclass(frozen=True)
class SandboxResult:
    """What a run produced.

    Attributes:
        stdout / stderr: decoded output, together at most `max_output_bytes` bytes.
        exit_code: the program's exit status (negative: killed by that signal); None if it never ended.
        timed_out: the program was killed at the timeout.
        output_truncated: the program wrote more than `max_output_bytes` and was stopped.
        isolation: the layers that were in force.
        limits_hit: the caps the program ran into, as far as the parent can tell: "disk" (its working
            directory filled its tmpfs, or went over the budget and the program was stopped),
            "memory" (a process was killed at the cgroup's memory limit), "processes" (a fork was refused at
            the cgroup's process cap).
    """

    stdout: str
    stderr: str
    exit_code: int | None
    timed_out: bool
    output_truncated: bool
    isolation: tuple[str, ...]
    limits_hit: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        """stdout, plus stderr when the program failed, as the agent sees it."""
        failed = self.exit_code != 0 or self.output_truncated or bool(self.limits_hit)
        output = (self.stdout + (self.stderr if failed else "")).strip()
        if self.output_truncated:
            output += "\n[output cut: the program wrote more than the output budget and was stopped]"
        if "disk" in self.limits_hit:
            output += "\n[the program's files reached the disk budget of its working directory]"
        if "memory" in self.limits_hit:
            output += "\n[killed: the program's processes together went over the memory budget]"
        return output or f"(no output, exit code {self.exit_code})"


@dataclass(frozen=True)
class _Plan:
    """How one sandbox runs its programs: the layers, and the mechanisms that enforce its caps."""

    layers: tuple[str, ...]
    nproc: bool = False
    cgroup: bool = False
    tmpfs: bool = False
    deny_fork: bool = False

    @property
    def isolation(self) -> tuple[str, ...]:
        names = ["rlimits", *self.layers]
        for name, used in (("rlimit-nproc", self.nproc), ("cgroup", self.cgroup), ("tmpfs", self.tmpfs)):
            if used:
                names.append(name)
        if self.deny_fork:
            names.append("no-fork")
        return tuple(names)


class Sandbox:
    """Runs Python programs under `limits` with the requested isolation layers.

    Args:
        limits: resource limits of each run.
        isolation: `"auto"` (every layer this machine supports, warning once about the others), `"none"`
            (rlimits, process group and clean environment only), or a list of layer names from `LAYERS`, each
            of which must be available (SandboxSetupError otherwise). The caps on processes, memory and disk
            apply in every mode.
    """

    def __init__(self, limits: SandboxLimits | None = None, isolation: str | Sequence[str] = "auto") -> None:
        self.limits = limits if limits is not None else SandboxLimits()
        if isinstance(isolation, str) and isolation not in ("auto", "none"):
            raise ValueError(f"isolation must be 'auto', 'none' or a list of {LAYERS}, got {isolation!r}")
        if not isinstance(isolation, str):
            unknown = sorted(set(isolation) - set(LAYERS))
            if unknown:
                raise ValueError(f"unknown isolation layer(s) {unknown}; known: {', '.join(LAYERS)}")
        self._requested = isolation
        self._layers: tuple[str, ...] | None = None
        self._plan: _Plan | None = None

    @property
    def layers(self) -> tuple[str, ...]:
        """The optional layers this sandbox uses (resolved, and probed if needed, on first use)."""
        if self._layers is None:
            if self._requested == "none":
                self._layers = ()
            elif self._requested == "auto":
                self._layers = available_layers()
            else:
                probe = probe_isolation()
                missing = [layer for layer in self._requested if layer not in probe.available]
                if missing:
                    detail = "; ".join(f"{layer}: {probe.reason(layer)}" for layer in missing)
                    raise SandboxSetupError(f"isolation layer(s) not available here ({detail})")
                self._layers = tuple(layer for layer in LAYERS if layer in self._requested)
        return self._layers

    @property
    def plan(self) -> _Plan:
        """The layers and cap mechanisms of every run. SandboxSetupError when processes cannot be capped."""
        if self._plan is None:
            self._plan = _plan_for(self.layers, probe_isolation())
        return self._plan

    @property
    def isolation(self) -> tuple[str, ...]:
        """Everything in force: "rlimits", the layers, and the mechanisms that enforce the caps."""
        return self.plan.isolation

    @property
    def limit_mechanisms(self) -> dict[str, str]:
        """What enforces each cap that spans processes, e.g. {"processes": "rlimit-nproc+cgroup", "memory":
        "cgroup", "disk": "tmpfs"}; "memory" is "rlimit-as*processes" (RLIMIT_AS per process, times the
        process cap) without a cgroup, and "disk" is "watch" (measured by the parent) without a tmpfs."""
        plan = self.plan
        enforcers = (("rlimit-nproc", plan.nproc), ("cgroup", plan.cgroup))
        processes = "+".join(name for name, used in enforcers if used)
        memory = "cgroup" if plan.cgroup else "rlimit-as" if plan.deny_fork else "rlimit-as*processes"
        return {
            "processes": processes or "no-fork",
            "memory": memory,
            "disk": "tmpfs" if plan.tmpfs else "watch",
        }

    def run(self, code: str) -> SandboxResult:
        """Run `code`; returns its (capped) output. SandboxSetupError if the sandbox could not be set up."""
        if os.name != "posix":
            raise SandboxSetupError("the Python sandbox needs a POSIX system")
        if not isinstance(code, str):
            raise TypeError(f"code must be a string, got {type(code).__name__}")
        if len(code.encode("utf-8", "surrogatepass")) > self.limits.max_code_bytes:
            raise ValueError(f"program longer than {self.limits.max_code_bytes} bytes")
        if "\x00" in code:
            raise ValueError("program contains a NUL character")
        return _execute(code, self.limits, self.plan)


def _plan_for(layers: tuple[str, ...], probe: IsolationProbe) -> _Plan:
    """The cap mechanisms for `layers` on this machine (see the module docstring)."""
    root = os.geteuid() == 0
    child_is_root = root and "nobody" not in layers and "namespaces" not in layers
    plan = _Plan(
        layers,
        nproc="nobody" in layers or (not root and "rlimit-nproc" in probe.mechanisms),
        cgroup="cgroup" in probe.mechanisms,
        tmpfs="tmpfs" in probe.mechanisms and ("nobody" in layers or child_is_root),
    )
    if plan.nproc or plan.cgroup:
        return plan
    if "no-fork" not in probe.mechanisms:
        raise SandboxSetupError(_no_process_cap(probe))
    return _Plan(layers, tmpfs=plan.tmpfs, deny_fork=True)


def _no_process_cap(probe: IsolationProbe) -> str:
    names = ("rlimit-nproc", "nobody", "cgroup", "no-fork")
    why = {name: probe.reason(name) or "not in use" for name in names}
    return (
        "the number of processes cannot be capped here: the kernel does not apply RLIMIT_NPROC to the "
        f"program's user ({why['rlimit-nproc']}; nobody: {why['nobody']}), no cgroup can be made "
        f"({why['cgroup']}), and the seccomp filter that refuses forks does not work ({why['no-fork']}); run "
        "the parent as a non-root user, or give it a writable cgroup hierarchy (/sys/fs/cgroup), or make uid "
        "65534 able to run the Python installation"
    )


def blocked_for_others(paths: Sequence[str]) -> dict[str, list[str]]:
    """For each of `paths` (resolved), the first directory on its way from / that others may not search
    (no o+x, e.g. a 0700 /root), mapped to the paths beneath it; a path that is itself unsearchable maps to
    itself. Paths inside another of `paths` are left out."""
    resolved = sorted({os.path.realpath(path) for path in paths})
    roots = [path for path in resolved if not any(path.startswith(other + os.sep) for other in resolved)]
    blocked: dict[str, list[str]] = {}
    for root in roots:
        parts = Path(root).parts
        for depth in range(1, len(parts) + 1):
            directory = str(Path(*parts[:depth]))
            try:
                mode = os.stat(directory).st_mode
            except OSError:
                break
            if not mode & stat.S_IXOTH:
                blocked.setdefault(directory, []).append(root)
                break
    return blocked


def unreadable_message(directory: str, roots: Sequence[str], error: str) -> str:
    """Why uid 65534 cannot run the interpreter, naming `directory` and how to fix it."""
    try:
        mode = f"mode {stat.S_IMODE(os.stat(directory).st_mode):o}"
    except OSError as exc:
        mode = str(exc)
    return (
        f"uid {NOBODY} cannot search {directory} ({mode}), on the way to {', '.join(roots)}, and the sandbox "
        f"could not make it reachable in a private mount namespace ({error}); make it searchable by others "
        f"(chmod o+x {directory}), or use a Python installation (and virtual environment) that uid {NOBODY} "
        "can read, or allow the sandbox to mount (CAP_SYS_ADMIN)"
    )


def _exposed_paths() -> list[str]:
    """What uid 65534 must reach: the interpreter, its installation, and the temporary directory."""
    return [*_python_paths(), tempfile.gettempdir()]


class _DiskWatch:
    """Measures the working directory: through a descriptor of its tmpfs, sent by the child over `channel`,
    or by walking `workdir`. `hit` records whether it was ever over (a tmpfs: full)."""

    def __init__(self, workdir: str, limits: SandboxLimits, channel: socket.socket | None) -> None:
        self.workdir = workdir
        self.limits = limits
        self.channel = channel
        self.tmpfs_fd: int | None = None
        self.hit = False
        if channel is not None:
            channel.setblocking(False)

    def check(self) -> bool:
        """Measure once; True when the program must be stopped (over the budget of a directory that the
        kernel does not limit). A full tmpfs is recorded but not stopped: its writes already fail."""
        if self.channel is not None:
            self.hit = self._tmpfs_full() or self.hit
            return False
        over = self._over()
        self.hit = over or self.hit
        return over

    def _over(self) -> bool:
        """Whether the directory holds too many bytes or files; a subdirectory the parent may not read (the
        program took its permissions away) counts as over."""
        total = files = 0
        stack = [self.workdir]
        while stack:
            try:
                entries = os.scandir(stack.pop())
            except (FileNotFoundError, NotADirectoryError):  # removed or replaced while measured
                continue
            except OSError:
                return True
            with entries:
                for entry in entries:
                    files += 1
                    with contextlib.suppress(OSError):
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        elif entry.is_file(follow_symlinks=False):
                            total += entry.stat(follow_symlinks=False).st_size
            if total > self.limits.max_disk_bytes or files > self.limits.max_files:
                return True
        return False

    def _tmpfs_full(self) -> bool:
        assert self.channel is not None
        if self.tmpfs_fd is None:
            with contextlib.suppress(BlockingIOError, InterruptedError):
                _, fds, _, _ = socket.recv_fds(self.channel, 1, 1)
                self.tmpfs_fd = fds[0] if fds else None
        if self.tmpfs_fd is None:
            return False
        usage = os.fstatvfs(self.tmpfs_fd)
        return usage.f_bavail == 0 or usage.f_favail == 0

    def close(self) -> None:
        if self.tmpfs_fd is not None:
            os.close(self.tmpfs_fd)
        if self.channel is not None:
            self.channel.close()


def _execute(code: str, limits: SandboxLimits, plan: _Plan) -> SandboxResult:
    with tempfile.TemporaryDirectory(prefix="agentrl-py-") as workdir:
        if "nobody" in plan.layers and not plan.tmpfs:
            os.chown(workdir, NOBODY, NOBODY)
        cgroup = _make_cgroup(limits) if plan.cgroup else None
        try:
            returncode, output, hit = _run(code, limits, plan, workdir, cgroup)
        finally:
            if cgroup is not None:
                cgroup.remove()
    err = output.stderr.decode("utf-8", "replace")
    if returncode == SETUP_FAILED_EXIT and err.startswith(SETUP_FAILED_PREFIX):
        raise SandboxSetupError(err.strip())
    return SandboxResult(
        stdout=output.stdout.decode("utf-8", "replace"),
        stderr=err,
        exit_code=None if output.timed_out else returncode,
        timed_out=output.timed_out,
        output_truncated=output.truncated,
        isolation=plan.isolation,
        limits_hit=hit,
    )


def _run(
    code: str, limits: SandboxLimits, plan: _Plan, workdir: str, cgroup: RunCgroup | None
) -> tuple[int, _Output, tuple[str, ...]]:
    """Start the program, collect its output, kill what is left; returns (exit status, output, limits hit)."""
    parent_end, child_end = socket.socketpair() if plan.tmpfs else (None, None)
    watch = _DiskWatch(workdir, limits, parent_end)
    try:
        proc = subprocess.Popen(
            _command(code, limits, plan, workdir, cgroup, child_end),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=workdir,
            env=_child_env(workdir),
            start_new_session=True,
            close_fds=True,
            pass_fds=(child_end.fileno(),) if child_end is not None else (),
        )
        if child_end is not None:
            child_end.close()
        try:
            output = _collect(proc, limits, watch.check)
        finally:
            _kill_group(proc.pid)
            if cgroup is not None:
                cgroup.kill()
            _reap(proc)
        watch.check()
        hit = ("disk",) if watch.hit else ()
        return proc.returncode, output, hit + (cgroup.limits_hit() if cgroup is not None else ())
    finally:
        watch.close()
        if child_end is not None:
            child_end.close()


def _make_cgroup(limits: SandboxLimits) -> RunCgroup:
    try:
        return RunCgroup(find_parents(), int(limits.max_processes), int(limits.memory_bytes))
    except OSError as exc:
        raise SandboxSetupError(f"cannot make the run's cgroup: {exc}") from None


def _reap(proc: subprocess.Popen[bytes]) -> None:
    try:
        proc.wait(timeout=_REAP_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    proc.stderr.close()


def _command(
    code: str,
    limits: SandboxLimits,
    plan: _Plan,
    workdir: str,
    cgroup: RunCgroup | None,
    channel: socket.socket | None,
) -> list[str]:
    layers = plan.layers
    nobody = "nobody" in layers
    config: dict[str, object] = {
        "python": sys.executable,
        "rlimits": limits.rlimits(),
        "landlock": None,
        "seccomp": "seccomp" in layers,
        "deny_fork": plan.deny_fork,
        "cgroup_procs": cgroup.procs_files if cgroup is not None else [],
        "mounts": None,
        "user": NOBODY if nobody else None,
    }
    blocked = blocked_for_others(_exposed_paths()) if nobody else {}
    covers = {directory: roots for directory, roots in blocked.items() if directory not in roots}
    if covers or plan.tmpfs:
        workdir_mount = None
        if plan.tmpfs and channel is not None:
            uid = NOBODY if nobody else os.geteuid()
            workdir_mount = {
                "path": workdir,
                "size": int(limits.max_disk_bytes),
                "inodes": int(limits.max_files) + 1,
                "uid": uid,
                "fd": channel.fileno(),
            }
        config["mounts"] = {"unshare": "namespaces" not in layers, "expose": covers, "workdir": workdir_mount}
    if "landlock" in layers:
        config["landlock"] = {
            "read": _python_paths() + list(SYSTEM_READ_PATHS),
            "write": [workdir],
            "devices": list(DEVICE_PATHS),
        }
    argv = [sys.executable, "-I", "-S", "-c", _CHILD_SOURCE, json.dumps(config), code]
    if "namespaces" in layers:
        unshare = shutil.which("unshare") or "unshare"
        if nobody:  # root makes the namespaces; the child drops to uid 65534 itself
            return [unshare, *ROOT_UNSHARE_FLAGS, *argv]
        ids = ("--map-user", str(NOBODY), "--map-group", str(NOBODY))
        argv = [unshare, *UNSHARE_FLAGS, *ids, *argv]
    return argv


def _python_paths() -> list[str]:
    """Directories the interpreter and its packages are read from."""
    roots = {
        sys.prefix,
        sys.base_prefix,
        sys.exec_prefix,
        sys.base_exec_prefix,
        os.path.dirname(os.path.realpath(sys.executable)),
    }
    return sorted(os.path.realpath(root) for root in roots)


def _child_env(workdir: str) -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir, "TMPDIR": workdir}


@dataclass
class _Output:
    stdout: bytes
    stderr: bytes
    truncated: bool
    timed_out: bool


def _collect(
    proc: subprocess.Popen[bytes], limits: SandboxLimits, over_budget: Callable[[], bool]
) -> _Output:
    """Read stdout/stderr until both close, keeping at most `max_output_bytes` in memory.

    Stops early at the deadline, once the output budget is exceeded, or once `over_budget()` (asked every
    0.1 s) says so; when the main process exits its process group is killed and the pipes get a
    short grace period to drain (a process that left the group could hold them open).
    """
    assert proc.stdout is not None and proc.stderr is not None
    deadline = time.monotonic() + limits.timeout
    chunks: dict[int, list[bytes]] = {proc.stdout.fileno(): [], proc.stderr.fileno(): []}
    budget = int(limits.max_output_bytes)
    truncated = timed_out = False
    exited_at: float | None = None
    watched_at = time.monotonic()
    with selectors.DefaultSelector() as selector:
        for fd in chunks:
            os.set_blocking(fd, False)
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map() and not truncated:
            now = time.monotonic()
            if exited_at is None and now - watched_at >= _WATCH_SECONDS:
                watched_at = now
                if over_budget():
                    break
            if exited_at is None and _has_exited(proc.pid):
                exited_at = now
                _kill_group(proc.pid)
            if exited_at is not None and now - exited_at > _DRAIN_SECONDS:
                break
            if now >= deadline:
                timed_out = exited_at is None
                break
            for key, _ in selector.select(timeout=min(deadline - now, _POLL_SECONDS)):
                try:
                    chunk = os.read(key.fd, min(_CHUNK_BYTES, budget + 1))
                except BlockingIOError:
                    continue
                if not chunk:
                    selector.unregister(key.fd)
                    continue
                kept = chunk[:budget]
                chunks[key.fd].append(kept)
                budget -= len(kept)
                if len(kept) < len(chunk):
                    truncated = True
                    break
    out, err = (b"".join(chunks[fd]) for fd in (proc.stdout.fileno(), proc.stderr.fileno()))
    return _Output(out, err, truncated, timed_out)


def _has_exited(pid: int) -> bool:
    """Whether `pid` has exited, without reaping it (so its process group id stays reserved for killpg).

    Without `os.waitid` (macOS) this says False and the end of the program is seen as its pipes closing.
    """
    if not hasattr(os, "waitid"):
        return False
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


@dataclass(frozen=True)
class IsolationProbe:
    """Which isolation layers and cap mechanisms work here.

    Attributes:
        available: layers that ran a test program successfully.
        missing: layer -> why it does not work here (reported once by a RuntimeWarning).
        not_applicable: layer -> why it does not apply (e.g. `nobody` under a non-root parent); no warning.
        mechanisms: the cap mechanisms from `MECHANISMS` that ran a test program successfully.
        unavailable: mechanism -> why it does not work or apply here.
    """

    available: tuple[str, ...]
    missing: dict[str, str]
    not_applicable: dict[str, str]
    mechanisms: tuple[str, ...] = ()
    unavailable: dict[str, str] = field(default_factory=dict)

    def reason(self, name: str) -> str:
        """Why the layer or mechanism `name` is not in use ("" when it is available)."""
        return self.missing.get(name) or self.not_applicable.get(name) or self.unavailable.get(name, "")


_probe_lock = threading.Lock()
_probes: dict[str, IsolationProbe] = {}
_warned: set[str] = set()
_FORK_PROBE = """import os
try:
    pid = os.fork()
except OSError:
    print('ok')
else:
    if pid == 0:
        os._exit(0)
    print('forked')
"""


def probe_isolation() -> IsolationProbe:
    """Probe the isolation layers for this interpreter: once per process, by running `print('ok')` in each."""
    with _probe_lock:
        if sys.executable not in _probes:
            _probes[sys.executable] = _probe()
        return _probes[sys.executable]


def available_layers(warn: bool = True) -> tuple[str, ...]:
    """The isolation layers that work on this machine for this interpreter.

    The first call with `warn` that finds a layer missing emits one RuntimeWarning naming it and why.
    """
    probe = probe_isolation()
    with _probe_lock:
        if warn and probe.missing and sys.executable not in _warned:
            _warned.add(sys.executable)
            detail = "; ".join(f"{layer}: {why}" for layer, why in probe.missing.items())
            warnings.warn(
                f"the Python sandbox runs without isolation layer(s) {', '.join(probe.missing)}, which do "
                f"not work here ({detail}); see 'Python tool sandbox' in docs/environments.md",
                RuntimeWarning,
                stacklevel=3,
            )
    return probe.available


def _try(plan: _Plan, code: str = "print('ok')", max_processes: int = 64) -> str:
    """Why `code` did not print ok under `plan`; "" when it did."""
    try:
        result = _execute(code, SandboxLimits(timeout=_PROBE_SECONDS, max_processes=max_processes), plan)
    except (OSError, SandboxSetupError) as exc:
        return str(exc)
    if result.stdout.strip() != "ok":
        return (result.stderr.strip() or result.stdout.strip() or f"exit code {result.exit_code}")[-300:]
    return ""


def _probe() -> IsolationProbe:
    missing: dict[str, str] = {}
    not_applicable: dict[str, str] = {}
    if not sys.platform.startswith("linux"):
        missing["namespaces"] = missing["landlock"] = "Linux only"
    elif shutil.which("unshare") is None:
        missing["namespaces"] = "util-linux 'unshare' not found"
    if "landlock" not in missing and landlock_abi() < 1:
        missing["landlock"] = "the kernel has no Landlock, or it is disabled"
    if "seccomp" not in missing and os.uname().machine not in SECCOMP_MACHINES:
        missing["seccomp"] = f"the filter is written for {', '.join(sorted(SECCOMP_MACHINES))} only"
    if os.geteuid() != 0:
        not_applicable["nobody"] = "the parent does not run as root, so the program runs as the parent's user"
    for layer in LAYERS:
        if layer not in missing and layer not in not_applicable:
            why = _try(_Plan((layer,)))
            if why:
                missing[layer] = _explain_nobody(why) if layer == "nobody" else why
    available = tuple(layer for layer in LAYERS if layer not in missing and layer not in not_applicable)
    unavailable = _probe_mechanisms("seccomp" in available)
    mechanisms = tuple(name for name in MECHANISMS if name not in unavailable)
    return IsolationProbe(available, missing, not_applicable, mechanisms, unavailable)


def _explain_nobody(error: str) -> str:
    blocked = blocked_for_others(_exposed_paths())
    if not blocked:
        return error
    directory, roots = next(iter(blocked.items()))
    return unreadable_message(directory, roots, error)


def _probe_mechanisms(seccomp: bool) -> dict[str, str]:
    unavailable: dict[str, str] = {}
    if _try(_Plan(()), _FORK_PROBE, max_processes=1):
        unavailable["rlimit-nproc"] = f"the kernel does not apply RLIMIT_NPROC to uid {os.geteuid()}"
    if not sys.platform.startswith("linux"):
        return {**dict.fromkeys(MECHANISMS[1:], "Linux only"), **unavailable}
    try:
        find_parents()
    except OSError as exc:
        unavailable["cgroup"] = str(exc)
    if "cgroup" not in unavailable:
        unavailable["cgroup"] = _try(_Plan((), cgroup=True))
    if os.geteuid() != 0:
        unavailable["tmpfs"] = "the parent does not run as root, so the sandbox cannot mount a tmpfs"
    else:
        unavailable["tmpfs"] = _try(_Plan((), tmpfs=True))
    unavailable["no-fork"] = _try(_Plan((), deny_fork=True), _FORK_PROBE) if seccomp else "needs seccomp"
    return {name: why for name, why in unavailable.items() if why}
