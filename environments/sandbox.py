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
  effective (the kernel does not apply it to root).

`Sandbox.isolation` names the layers in force, e.g. `("rlimits", "namespaces", "landlock", "seccomp")`, plus
`"rlimit-nproc"` when the process-count limit actually applies.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from environments.sandbox_child import SECCOMP_MACHINES, SETUP_FAILED_EXIT, SETUP_FAILED_PREFIX, landlock_abi

LAYERS = ("namespaces", "landlock", "seccomp", "nobody")
NOBODY = 65534
UNSHARE_FLAGS = ("--user", "--net", "--pid", "--mount-proc", "--kill-child")
SYSTEM_READ_PATHS = ("/usr", "/lib", "/lib32", "/lib64", "/bin", "/etc/ld.so.cache", "/etc/localtime")
DEVICE_PATHS = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
_CHUNK_BYTES = 64 * 1024
_POLL_SECONDS = 0.05
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
        memory_bytes: address space (RLIMIT_AS) and data segment (RLIMIT_DATA) of each process.
        max_output_bytes: stdout plus stderr kept; writing more stops the program.
        max_file_bytes: largest file a process may write (RLIMIT_FSIZE).
        max_processes: processes of the sandbox's user (RLIMIT_NPROC; not applied by the kernel to root).
        max_open_files: file descriptors per process (RLIMIT_NOFILE).
        max_code_bytes: longest program accepted (UTF-8 bytes).
    """

    timeout: float = 5.0
    memory_bytes: int = 512 * 1024 * 1024
    max_output_bytes: int = 64 * 1024
    max_file_bytes: int = 16 * 1024 * 1024
    max_processes: int = 64
    max_open_files: int = 64
    max_code_bytes: int = 100_000

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
            "RLIMIT_FSIZE": int(self.max_file_bytes),
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
    """

    stdout: str
    stderr: str
    exit_code: int | None
    timed_out: bool
    output_truncated: bool
    isolation: tuple[str, ...]

    @property
    def text(self) -> str:
        """stdout, plus stderr when the program failed, as the agent sees it."""
        failed = self.exit_code != 0 or self.output_truncated
        output = (self.stdout + (self.stderr if failed else "")).strip()
        if self.output_truncated:
            output += "\n[output cut: the program wrote more than the output budget and was stopped]"
        return output or f"(no output, exit code {self.exit_code})"


class Sandbox:
    """Runs Python programs under `limits` with the requested isolation layers.

    Args:
        limits: resource limits of each run.
        isolation: `"auto"` (every layer this machine supports, warning once about the others), `"none"`
            (rlimits, process group and clean environment only), or a list of layer names from `LAYERS`, each
            of which must be available (SandboxSetupError otherwise).
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
    def isolation(self) -> tuple[str, ...]:
        """Everything in force: "rlimits", the layers, and "rlimit-nproc" when the kernel applies it."""
        names = ("rlimits", *self.layers)
        return (*names, "rlimit-nproc") if self._child_uid() != 0 else names

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
        return _execute(code, self.limits, self.layers, self.isolation)

    def _child_uid(self) -> int:
        return NOBODY if "nobody" in self.layers else os.geteuid()


def _execute(
    code: str, limits: SandboxLimits, layers: tuple[str, ...], isolation: tuple[str, ...]
) -> SandboxResult:
    with tempfile.TemporaryDirectory(prefix="agentrl-py-") as workdir:
        if "nobody" in layers:
            os.chown(workdir, NOBODY, NOBODY)
        argv = _command(code, limits, layers, workdir)
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=workdir,
            env=_child_env(workdir),
            start_new_session=True,
            close_fds=True,
            **_credentials(layers),
        )
        try:
            stdout, stderr, truncated, timed_out = _collect(proc, limits)
        finally:
            _kill_group(proc.pid)
            try:
                proc.wait(timeout=_REAP_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            assert proc.stdout is not None and proc.stderr is not None
            proc.stdout.close()
            proc.stderr.close()
    err = stderr.decode("utf-8", "replace")
    if proc.returncode == SETUP_FAILED_EXIT and err.startswith(SETUP_FAILED_PREFIX):
        raise SandboxSetupError(err.strip())
    return SandboxResult(
        stdout=stdout.decode("utf-8", "replace"),
        stderr=err,
        exit_code=None if timed_out else proc.returncode,
        timed_out=timed_out,
        output_truncated=truncated,
        isolation=isolation,
    )


def _command(code: str, limits: SandboxLimits, layers: tuple[str, ...], workdir: str) -> list[str]:
    config: dict[str, object] = {
        "python": sys.executable,
        "rlimits": limits.rlimits(),
        "landlock": None,
        "seccomp": "seccomp" in layers,
    }
    if "landlock" in layers:
        config["landlock"] = {
            "read": _python_paths() + list(SYSTEM_READ_PATHS),
            "write": [workdir],
            "devices": list(DEVICE_PATHS),
        }
    argv = [sys.executable, "-I", "-S", "-c", _CHILD_SOURCE, json.dumps(config), code]
    if "namespaces" in layers:
        unshare = shutil.which("unshare") or "unshare"
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


def _credentials(layers: tuple[str, ...]) -> dict[str, object]:
    if "nobody" not in layers:
        return {}
    return {"user": NOBODY, "group": NOBODY, "extra_groups": []}


def _collect(proc: subprocess.Popen[bytes], limits: SandboxLimits) -> tuple[bytes, bytes, bool, bool]:
    """Read stdout/stderr until both close, keeping at most `max_output_bytes` in memory.

    Returns (stdout, stderr, truncated, timed_out). Stops early at the deadline or once the budget is
    exceeded; when the main process exits its process group is killed and the pipes get a short grace
    period to drain (a process that left the group could hold them open).
    """
    assert proc.stdout is not None and proc.stderr is not None
    deadline = time.monotonic() + limits.timeout
    chunks: dict[int, list[bytes]] = {proc.stdout.fileno(): [], proc.stderr.fileno(): []}
    budget = int(limits.max_output_bytes)
    truncated = timed_out = False
    exited_at: float | None = None
    with selectors.DefaultSelector() as selector:
        for fd in chunks:
            os.set_blocking(fd, False)
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map() and not truncated:
            now = time.monotonic()
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
    return out, err, truncated, timed_out


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
    """Which isolation layers work here.

    Attributes:
        available: layers that ran a test program successfully.
        missing: layer -> why it does not work here (reported once by a RuntimeWarning).
        not_applicable: layer -> why it does not apply (e.g. `nobody` under a non-root parent); no warning.
    """

    available: tuple[str, ...]
    missing: dict[str, str]
    not_applicable: dict[str, str]

    def reason(self, layer: str) -> str:
        """Why `layer` is not in use ("" when it is available)."""
        return self.missing.get(layer) or self.not_applicable.get(layer, "")


_probe_lock = threading.Lock()
_probes: dict[str, IsolationProbe] = {}
_warned: set[str] = set()


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
    probe_limits = SandboxLimits(timeout=_PROBE_SECONDS)
    for layer in LAYERS:
        if layer in missing or layer in not_applicable:
            continue
        try:
            result = _execute("print('ok')", probe_limits, (layer,), ())
        except (OSError, SandboxSetupError) as exc:
            missing[layer] = str(exc)
            continue
        if result.stdout.strip() != "ok":
            missing[layer] = (result.stderr.strip() or f"exit code {result.exit_code}")[-300:]
    available = tuple(layer for layer in LAYERS if layer not in missing and layer not in not_applicable)
    return IsolationProbe(available, missing, not_applicable)
