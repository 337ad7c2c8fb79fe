"""Escape attempts against the Python tool sandbox; each must fail.

Every attempt is bounded: fork loops make at most a few dozen children, output and file bombs write at most
100 MB, and network attempts target only a loopback server this test starts. Isolation that this machine
cannot provide (see `environments.sandbox.probe_isolation`) skips the tests that need it, naming the reason.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import gymnasium as gym
import pytest

import environments  # noqa: F401
from environments import sandbox as sandbox_module
from environments.python_tool import run_python
from environments.sandbox import (
    IsolationProbe,
    Sandbox,
    SandboxLimits,
    SandboxSetupError,
    available_layers,
    probe_isolation,
)
from environments.sandbox_child import landlock_abi

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox's limits are tested on Linux")

REPO_ROOT = Path(__file__).resolve().parents[2]
THINK = "<think>Compute it.</think>"
ISOLATION_MODES = ["none", "auto"]
MiB = 1024 * 1024


def require(*layers: str) -> None:
    """Skip unless at least one of `layers` works here, printing why each does not."""
    probe = probe_isolation()
    if not any(layer in probe.available for layer in layers):
        reasons = "; ".join(f"{layer}: {probe.reason(layer)}" for layer in layers)
        pytest.skip(f"needs isolation layer {' or '.join(layers)}, unavailable here ({reasons})")


def forking(sandbox: Sandbox) -> Sandbox:
    """`sandbox`, skipping the test where it refuses every fork (its only process cap as root here)."""
    if sandbox.limit_mechanisms["processes"] == "no-fork":
        probe = probe_isolation()
        why = f"rlimit-nproc: {probe.reason('rlimit-nproc')}; cgroup: {probe.reason('cgroup')}"
        pytest.skip(f"every fork is refused here, the only process cap available ({why})")
    return sandbox


def processes_with(token: str) -> list[int]:
    """PIDs whose command line contains `token` (each sandboxed program embeds a unique one)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if token.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def survivors_after(token: str, grace: float = 2.0) -> list[int]:
    """Processes still alive `grace` seconds after the run (killed afterwards so no test leaks them)."""
    end = time.monotonic() + grace
    while (alive := processes_with(token)) and time.monotonic() < end:
        time.sleep(0.05)
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return alive


@pytest.fixture
def token() -> str:
    return f"agentrl-escape-{uuid.uuid4().hex}"


def python_env(**kwargs: object) -> gym.Env[str, str]:
    env = gym.make("agentrl/PythonTool-v0", **kwargs)
    env.reset(seed=0)
    return env


def call(env: gym.Env[str, str], arguments: dict[str, object]) -> tuple[str, dict[str, object]]:
    body = json.dumps({"name": "python", "arguments": arguments})
    obs, _reward, _terminated, _truncated, info = env.step(f"{THINK}<tool>{body}</tool>")
    return obs, info


@pytest.mark.parametrize(
    ("override", "code"),
    [
        ({"timeout": 60}, "import time; time.sleep(3); print('slept')"),
        ({"memory_bytes": 1 << 40}, "x = bytearray(600 * 1024 * 1024); print('allocated')"),
        ({"max_output_bytes": 1 << 40}, "print('x' * 1000)"),
    ],
)
def test_agent_cannot_change_limits_through_arguments(override: dict[str, object], code: str) -> None:
    env = python_env(timeout=1.0, memory_bytes=256 * MiB)
    obs, info = call(env, {"code": code, **override})
    name = next(iter(override))
    assert "ToolArgumentError" in obs and repr(name) in obs and "configuration" in obs
    assert "slept" not in obs and "allocated" not in obs and "xxx" not in obs
    assert str(info["error"]).startswith("ToolArgumentError")


def test_limits_from_config_apply_to_calls() -> None:
    env = python_env(timeout=1.0, memory_bytes=256 * MiB)
    obs, _ = call(env, {"code": "import time; time.sleep(3); print('slept')"})
    assert "TimeoutError: the program ran longer than 1 s" in obs
    obs, _ = call(env, {"code": "x = bytearray(600 * 1024 * 1024); print('allocated')"})
    assert "MemoryError" in obs and "allocated" not in obs
    obs, _ = call(env, {"code": 42})
    assert "'code' must be a string" in obs


def test_isolation_is_recorded_in_step_info() -> None:
    env = python_env()
    obs, info = call(env, {"code": "print(6 * 7)"})
    assert obs == "<result>42</result>"
    assert info["sandbox"] == "+".join(env.unwrapped.sandbox.isolation)
    assert str(info["sandbox"]).startswith("rlimits")
    assert set(env.unwrapped.sandbox.layers) == set(available_layers(warn=False))


FORK_CHILDREN = """# {token}
import os, time
children = 0
for i in range(10):
    if os.fork() == 0:
        {escape}
        time.sleep(30)
        os._exit(0)
    children += 1
print('forked', children, flush=True)
time.sleep(30)
"""


@pytest.mark.parametrize("isolation", ISOLATION_MODES)
def test_forked_children_die_at_timeout(isolation: str, token: str) -> None:
    code = FORK_CHILDREN.format(token=token, escape="pass")
    result = forking(Sandbox(SandboxLimits(timeout=1.0), isolation=isolation)).run(code)
    assert result.timed_out and "forked 10" in result.stdout
    assert survivors_after(token) == []


def test_children_that_leave_the_process_group_die_at_timeout(token: str) -> None:
    require("namespaces")
    code = FORK_CHILDREN.format(token=token, escape="os.setsid()\n        if os.fork(): os._exit(0)")
    result = forking(Sandbox(SandboxLimits(timeout=1.0), isolation=["namespaces"])).run(code)
    assert result.timed_out and "forked 10" in result.stdout
    assert survivors_after(token) == []


@pytest.mark.parametrize("isolation", ISOLATION_MODES)
def test_children_die_when_the_program_exits(isolation: str, token: str) -> None:
    code = FORK_CHILDREN.format(token=token, escape="pass")
    code = code[: code.rindex("time.sleep(30)")]  # the children sleep, the program exits at once
    result = forking(Sandbox(SandboxLimits(timeout=5.0), isolation=isolation)).run(code)
    assert not result.timed_out and result.exit_code == 0 and "forked 10" in result.stdout
    assert survivors_after(token) == []


FORK_LOOP = """# {token}
import os, time
children = 0
for i in range({forks}):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    children += 1
print('forked', children, flush=True)
"""


def test_process_count_is_capped(token: str) -> None:
    sandbox = Sandbox(SandboxLimits(timeout=2.0, max_processes=8))
    if "rlimit-nproc" not in sandbox.isolation:
        pytest.skip(
            "RLIMIT_NPROC is not applied by the kernel to root and the 'nobody' layer is unavailable here "
            f"({probe_isolation().reason('nobody')}); fork bombs are bounded by the timeout kill instead"
        )
    result = Sandbox(SandboxLimits(timeout=2.0, max_processes=8)).run(FORK_LOOP.format(token=token, forks=40))
    forked = int(result.stdout.split()[-1])
    assert forked < 8
    assert survivors_after(token) == []


@pytest.mark.parametrize("isolation", ISOLATION_MODES)
def test_file_size_is_capped(isolation: str) -> None:
    code = """import os
try:
    with open('big', 'wb') as f:
        for _ in range(3):
            f.write(b'x' * 1024 * 1024)
            f.flush()
except OSError as exc:
    print('refused', exc.errno)
print(os.path.getsize('big'))
"""
    result = Sandbox(SandboxLimits(max_file_bytes=MiB), isolation=isolation).run(code)
    refused, size = result.stdout.split("\n")[:2]
    assert refused == "refused 27" and int(size) <= MiB  # 27: EFBIG


OUTPUT_BOMB = "import sys\nfor _ in range(100):\n    sys.{stream}.write('x' * 1_000_000)\n"


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_output_is_capped_while_reading(stream: str) -> None:
    limits = SandboxLimits(max_output_bytes=64 * 1024, timeout=20.0)
    tracemalloc.start()
    start = time.monotonic()
    try:
        result = Sandbox(limits).run(OUTPUT_BOMB.format(stream=stream))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.monotonic() - start < 10.0
    assert result.output_truncated and not result.timed_out and result.exit_code == -signal.SIGKILL
    assert len(result.stdout) + len(result.stderr) == 64 * 1024
    assert peak < 4 * MiB, f"the parent buffered {peak / MiB:.1f} MiB of output"
    assert "output cut" in result.text


def test_run_python_output_is_capped() -> None:
    tracemalloc.start()
    try:
        text = run_python(OUTPUT_BOMB.format(stream="stdout"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(text) <= SandboxLimits().max_output_bytes + 200
    assert peak < 4 * MiB


def test_environment_is_clean(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTRL_TEST_SECRET", "do-not-leak")
    result = Sandbox().run("import os, json; print(json.dumps(dict(os.environ)))")
    environ = json.loads(result.stdout)
    assert set(environ) == {"PATH", "LANG", "HOME", "TMPDIR"}
    assert "do-not-leak" not in result.stdout


PARENT_ENVIRON_PROBE = r"""
import os
for pid in (os.getppid(), PARENT_PID):
    try:
        with open(f'/proc/{pid}/environ', 'rb') as f:
            print(pid, f.read().decode('latin-1').replace('\0', ' '))
    except OSError as exc:
        print(pid, 'denied', type(exc).__name__)
"""
HELPER = """
import os
from environments.sandbox import Sandbox
code = {probe!r}.replace('PARENT_PID', str(os.getpid()))
for isolation in ('none', 'auto'):
    result = Sandbox(isolation=isolation).run(code)
    print(isolation, repr(result.stdout + result.stderr))
"""


def test_parent_environment_is_not_readable_through_proc() -> None:
    require("namespaces", "landlock", "nobody")
    marker = f"agentrl-secret-{uuid.uuid4().hex}"
    helper = subprocess.run(
        [sys.executable, "-c", HELPER.format(probe=PARENT_ENVIRON_PROBE)],
        env={**os.environ, "AGENTRL_TEST_SECRET": marker},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    unisolated, isolated = helper.stdout.strip().split("\n")
    assert unisolated.startswith("none") and marker in unisolated  # the attempt is real
    assert isolated.startswith("auto") and marker not in isolated
    assert isolated.count("denied") == 2, isolated


def test_working_directory_is_fresh_and_removed() -> None:
    sandbox = Sandbox()
    first = sandbox.run("import os; open('left-behind', 'w').write('x'); print(os.getcwd())")
    second = sandbox.run("import os; print(os.getcwd()); print(sorted(os.listdir('.')))")
    workdir = first.stdout.strip()
    other, listing = second.stdout.split("\n")[:2]
    assert workdir != other and listing == "[]"
    assert not os.path.exists(workdir) and not os.path.exists(other)


def test_writes_and_reads_outside_the_working_directory_fail(tmp_path: Path) -> None:
    require("landlock")
    secret = tmp_path / "secret.txt"
    secret.write_text("top-secret-contents")
    targets = [tmp_path / "escape.txt", Path("/tmp") / f"agentrl-escape-{uuid.uuid4().hex}"]
    code = f"""
for path in {[str(t) for t in targets]!r}:
    try:
        open(path, 'w').write('escaped')
        print('wrote', path)
    except OSError as exc:
        print('denied', type(exc).__name__)
for path in [{str(secret)!r}, '/etc/hostname', {str(REPO_ROOT / "pyproject.toml")!r}]:
    try:
        print(open(path).read())
    except OSError as exc:
        print('denied', type(exc).__name__)
"""
    result = Sandbox(isolation=["landlock"]).run(code)
    assert result.stdout.split().count("denied") == 5, result.text
    assert not any(target.exists() for target in targets)
    assert "top-secret-contents" not in result.stdout


@pytest.fixture
def loopback_server() -> Iterator[socket.socket]:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    try:
        yield server
    finally:
        server.close()


def test_sockets_cannot_reach_a_loopback_server(loopback_server: socket.socket) -> None:
    if landlock_abi() < 4:
        require("namespaces")  # Landlock restricts TCP only from ABI 4 on
    require("namespaces", "landlock")
    port = loopback_server.getsockname()[1]
    code = f"""
import socket
s = socket.socket()
s.settimeout(1.0)
try:
    s.connect(('127.0.0.1', {port}))
    print('connected')
except OSError as exc:
    print('refused', type(exc).__name__)
"""
    result = Sandbox().run(code)
    assert "refused" in result.stdout and "connected" not in result.stdout
    with pytest.raises(TimeoutError):
        loopback_server.accept()


def test_udp_cannot_reach_loopback() -> None:
    require("namespaces")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(0.3)
        port = receiver.getsockname()[1]
        code = f"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    s.sendto(b'escaped', ('127.0.0.1', {port}))
    print('sent')
except OSError as exc:
    print('refused', type(exc).__name__)
"""
        Sandbox(isolation=["namespaces"]).run(code)
        with pytest.raises(TimeoutError):
            receiver.recvfrom(64)


def test_unix_sockets_and_new_namespaces_are_refused(tmp_path: Path) -> None:
    require("seccomp")
    path = tmp_path / "server.sock"
    tmp_path.chmod(0o755)
    code = f"""
import ctypes, socket
s = socket.socket(socket.AF_UNIX) if False else None
try:
    s = socket.socket(socket.AF_UNIX)
    s.connect({str(path)!r})
    print('connected')
except OSError as exc:
    print('refused', type(exc).__name__)
libc = ctypes.CDLL(None, use_errno=True)
print('unshare', libc.unshare(0x10000000), ctypes.get_errno())  # CLONE_NEWUSER
"""
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        server.listen(8)
        server.settimeout(0.2)
        result = Sandbox(isolation=["seccomp"]).run(code)
        with pytest.raises(TimeoutError):
            server.accept()
    assert result.stdout.split("\n")[:2] == ["refused PermissionError", "unshare -1 1"], result.text


def test_setup_failure_never_runs_the_program(tmp_path: Path) -> None:
    evidence = tmp_path / "ran"
    with pytest.raises(SandboxSetupError, match="RLIMIT_NOFILE"):
        Sandbox(SandboxLimits(max_open_files=1 << 40), isolation="none").run(f"open({str(evidence)!r}, 'w')")
    assert not evidence.exists()


def test_missing_layers_warn_once_and_required_layers_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = IsolationProbe(("landlock",), {"namespaces": "test: no unshare"}, {"nobody": "test: not root"})
    monkeypatch.setattr(sandbox_module, "_probes", {sys.executable: fake})
    monkeypatch.setattr(sandbox_module, "_warned", set())
    with pytest.warns(RuntimeWarning, match="namespaces.*test: no unshare"):
        assert Sandbox().layers == ("landlock",)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Sandbox().layers == ("landlock",)
    with pytest.raises(SandboxSetupError, match="namespaces: test: no unshare"):
        Sandbox(isolation=["namespaces"]).run("print(1)")


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"timeout": 0}, "SandboxLimits.timeout"),
        ({"memory_bytes": -1}, "SandboxLimits.memory_bytes"),
        ({"max_output_bytes": True}, "SandboxLimits.max_output_bytes"),
    ],
)
def test_bad_limits_name_the_field(kwargs: dict[str, object], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        SandboxLimits(**kwargs)  # type: ignore[arg-type]


def test_bad_programs_and_isolation_are_rejected() -> None:
    with pytest.raises(ValueError, match="isolation"):
        Sandbox(isolation="everything")
    with pytest.raises(ValueError, match="unknown isolation layer"):
        Sandbox(isolation=["chroot"])
    with pytest.raises(ValueError, match="longer than 10 bytes"):
        Sandbox(SandboxLimits(max_code_bytes=10)).run("print('long program')")
    with pytest.raises(ValueError, match="NUL"):
        Sandbox().run("print(1)\x00")


def test_unprivileged_layer_runs_the_program_as_nobody() -> None:
    if os.geteuid() != 0:
        pytest.skip("the 'nobody' layer applies only when the parent runs as root")
    probe = probe_isolation()
    assert "nobody" in probe.available, probe.reason("nobody")
    code = "import os, json, numpy; print(os.getuid(), os.getgid(), os.getgroups(), numpy.int64(6) * 7)"
    result = Sandbox(isolation=["nobody"]).run(code)
    assert result.stdout.split("\n")[0] == "65534 65534 [] 42", result.text


def test_paths_uid_65534_cannot_search_are_named() -> None:
    with tempfile.TemporaryDirectory(dir="/tmp") as top:
        os.chmod(top, 0o755)
        locked = Path(top, "locked")
        inner = locked / "python"
        inner.mkdir(parents=True)
        locked.chmod(0o700)
        blocked = sandbox_module.blocked_for_others([str(inner), str(inner / "bin")])
        message = sandbox_module.unreadable_message(str(locked), [str(inner)], "mount: not permitted")
    assert blocked == {str(locked): [str(inner)]}
    assert str(locked) in message and "mode 700" in message and "chmod o+x" in message


@pytest.fixture(params=["found", "no-cgroup-no-tmpfs"])
def mechanisms(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test with the cap mechanisms this machine has, and again with only the fallbacks."""
    if request.param != "found":
        probe = probe_isolation()
        dropped = {"cgroup": "test: disabled", "tmpfs": "test: disabled"}
        kept = tuple(name for name in probe.mechanisms if name not in dropped)
        fallback = IsolationProbe(
            probe.available, probe.missing, probe.not_applicable, kept, {**probe.unavailable, **dropped}
        )
        monkeypatch.setattr(sandbox_module, "_probes", {sys.executable: fallback})
    return str(request.param)


@pytest.mark.parametrize("isolation", ISOLATION_MODES)
def test_fork_loop_is_stopped_at_the_process_cap(isolation: str, token: str, mechanisms: str) -> None:
    sandbox = Sandbox(SandboxLimits(timeout=20.0, max_processes=16), isolation=isolation)
    try:
        result = sandbox.run(FORK_LOOP.format(token=token, forks=150))
    except SandboxSetupError as exc:  # fails closed where no process cap is available
        assert "process" in str(exc)
        return
    assert result.stdout.startswith("forked"), result.text
    assert int(result.stdout.split()[1]) < 16, result.text
    assert survivors_after(token) == []


MEMORY_TREE = """# {token}
import os, time
pids = []
for i in range(12):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        try:
            held = b'x' * (100 * 1024 * 1024)
        except MemoryError:
            os._exit(1)
        time.sleep(60)
        os._exit(0)
    pids.append(pid)
    time.sleep(0.2)
time.sleep(2)
alive = sum(os.waitpid(pid, os.WNOHANG) == (0, 0) for pid in pids)
print('alive', alive, flush=True)
"""


@pytest.mark.parametrize("isolation", ISOLATION_MODES)
def test_memory_of_the_process_tree_is_capped(isolation: str, token: str, mechanisms: str) -> None:
    limits = SandboxLimits(timeout=30.0, memory_bytes=192 * MiB, max_processes=4)
    sandbox = Sandbox(limits, isolation=isolation)
    try:
        result = sandbox.run(MEMORY_TREE.format(token=token))
    except SandboxSetupError as exc:
        assert "process" in str(exc)
        return
    assert survivors_after(token) == []
    if not result.stdout.startswith("alive"):  # the whole tree was killed at the cap
        assert "memory" in result.limits_hit, result.text
        return
    held = int(result.stdout.split()[1]) * 100 * MiB
    assert held <= limits.max_processes * limits.memory_bytes, result.text
    if sandbox.limit_mechanisms["memory"] == "cgroup":
        assert held <= limits.memory_bytes, result.text


DISK_FILLER = """
import os, time
written = 0
try:
    for i in range(300):
        with open(f'part-{i}', 'wb') as f:
            f.write(b'x' * 1024 * 1024)
        written += 1
        time.sleep(0.01)
except OSError as exc:
    print('refused', exc.errno, flush=True)
print('files', written, flush=True)
"""


@pytest.mark.parametrize("isolation", ISOLATION_MODES)
def test_disk_use_of_the_working_directory_is_capped(isolation: str, mechanisms: str) -> None:
    sandbox = Sandbox(SandboxLimits(timeout=60.0), isolation=isolation)
    result = sandbox.run(DISK_FILLER)
    lines = result.stdout.split("\n")
    assert "files 300" not in lines, result.text
    cap_mib = sandbox.limits.max_disk_bytes // MiB
    assert "disk" in result.limits_hit and "disk budget" in result.text, result.text
    if sandbox.limit_mechanisms["disk"] == "tmpfs":  # writes past the cap fail, and the program goes on
        assert lines[0] == "refused 28" and int(lines[1].split()[1]) <= cap_mib, result.text


def test_file_count_of_the_working_directory_is_capped() -> None:
    code = "import os\nfor i in range(5000):\n    open(f'f{i}', 'w').close()\nprint('made all')"
    result = Sandbox(SandboxLimits(timeout=60.0)).run(code)
    assert "made all" not in result.stdout, result.text
    assert "disk" in result.limits_hit, result.text


def test_root_without_any_process_cap_fails_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    if os.geteuid() != 0:
        pytest.skip("RLIMIT_NPROC caps a non-root program")
    disabled = dict.fromkeys(sandbox_module.MECHANISMS, "test: disabled")
    fake = IsolationProbe(("landlock",), {"nobody": "test: no uid 65534"}, {}, (), disabled)
    monkeypatch.setattr(sandbox_module, "_probes", {sys.executable: fake})
    with pytest.raises(SandboxSetupError, match=r"processes cannot be capped.*nobody: test: no uid"):
        Sandbox(isolation="none").run("print(1)")


NOBODY_REQUIRED = """
from environments.sandbox import Sandbox, SandboxSetupError
try:
    Sandbox(isolation=["nobody"]).run("print('ran')")
except SandboxSetupError as exc:
    print(exc)
"""


def test_unprivileged_layer_that_cannot_be_set_up_fails_closed_naming_the_path() -> None:
    capsh = shutil.which("capsh")
    if os.geteuid() != 0 or capsh is None:
        pytest.skip("needs root and capsh, to run a parent that may not mount")
    blocked = sandbox_module.blocked_for_others(sandbox_module._exposed_paths())
    if not blocked:
        pytest.skip("uid 65534 can reach the Python installation here without a mount")
    directory = next(iter(blocked))
    command = [sys.executable, "-c", NOBODY_REQUIRED]
    done = subprocess.run(
        [capsh, "--drop=cap_sys_admin", "--", "-c", " ".join(map(shlex.quote, command))],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "ran" not in done.stdout, done.stdout
    assert f"cannot search {directory}" in done.stdout and f"chmod o+x {directory}" in done.stdout, done
