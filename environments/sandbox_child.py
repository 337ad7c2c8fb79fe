"""The sandbox's first program: lock this process down, then exec the untrusted Python program.

`environments.sandbox` runs this file's source with `python -I -S -c SOURCE CONFIG CODE` (inside new
namespaces when they are available). When asked, it joins the run's cgroups and, while still root, makes a
private mount namespace with a size-limited tmpfs as the working directory and the Python installation
reachable for uid 65534, then drops to that uid. It sets `no_new_privs`, the resource limits and, when
asked, a Landlock ruleset and a seccomp filter, all of which are inherited and cannot be undone; then it
replaces itself with `python -I -c CODE`. Any failure before the exec ends the process with
`SETUP_FAILED_EXIT` and a line starting with `SETUP_FAILED_PREFIX` on stderr, so the parent never runs a
program with less isolation than it asked for.

Standard library only: it runs before `site`, and the parent also imports `landlock_abi` from it.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import socket
import sys
from typing import Any

SETUP_FAILED_EXIT = 125
SETUP_FAILED_PREFIX = "agentrl-sandbox: setup failed:"

_UNIFIED_SYSCALL_MACHINES = {"x86_64", "i686", "aarch64", "armv7l", "riscv64", "ppc64le", "s390x"}
_SYS_LANDLOCK_CREATE_RULESET = 444  # the same number on every architecture above
_SYS_LANDLOCK_ADD_RULE = 445
_SYS_LANDLOCK_RESTRICT_SELF = 446
_LANDLOCK_CREATE_RULESET_VERSION = 1
_LANDLOCK_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38
_CLONE_NEWNS = 0x20000
_MS_NOSUID = 0x2
_MS_NODEV = 0x4
_MS_BIND = 0x1000
_MS_REC = 0x4000
_MS_PRIVATE = 1 << 18
_CLONE_THREAD = 0x10000

FS_EXECUTE = 1 << 0
FS_WRITE_FILE = 1 << 1
FS_READ_FILE = 1 << 2
FS_READ_DIR = 1 << 3
FS_TRUNCATE = 1 << 14
FS_IOCTL_DEV = 1 << 15
_FS_FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV
_FS_READ_RIGHTS = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR
_FS_DEVICE_RIGHTS = FS_READ_FILE | FS_WRITE_FILE | FS_TRUNCATE | FS_IOCTL_DEV
_NET_TCP = 0b11  # bind and connect
_SCOPE_ALL = 0b11  # abstract unix sockets and signals outside the domain


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 when Landlock is missing or disabled, or not Linux."""
    if not sys.platform.startswith("linux") or os.uname().machine not in _UNIFIED_SYSCALL_MACHINES:
        return 0
    try:
        version = _libc().syscall(
            _SYS_LANDLOCK_CREATE_RULESET,
            None,
            ctypes.c_size_t(0),
            ctypes.c_uint32(_LANDLOCK_CREATE_RULESET_VERSION),
        )
    except (OSError, AttributeError):
        return 0
    return max(0, int(version))


def _handled_fs(abi: int) -> int:
    rights = (1 << 13) - 1  # ABI 1: execute ... make_sym
    if abi >= 2:
        rights |= 1 << 13  # refer
    if abi >= 3:
        rights |= FS_TRUNCATE
    if abi >= 5:
        rights |= FS_IOCTL_DEV
    return rights


def _check(result: int, what: str) -> int:
    if result < 0:
        raise OSError(ctypes.get_errno(), f"{what}: {os.strerror(ctypes.get_errno())}")
    return result


def apply_landlock(read: list[str], write: list[str], devices: list[str]) -> int:
    """Allow reading (and executing) beneath `read`, everything beneath `write`, read/write of `devices`.

    Every other filesystem access, TCP bind/connect (ABI >= 4), and abstract unix sockets and signals
    leaving the sandbox (ABI >= 6) are denied for this process and all it starts. Returns the ABI used.
    """
    abi = landlock_abi()
    if abi < 1:
        raise OSError("Landlock is not available in this kernel")
    libc = _libc()
    fs = _handled_fs(abi)
    attr = _RulesetAttr(fs, _NET_TCP if abi >= 4 else 0, _SCOPE_ALL if abi >= 6 else 0)
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    ruleset = _check(
        libc.syscall(
            _SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0)
        ),
        "landlock_create_ruleset",
    )
    try:
        for paths, rights in ((read, _FS_READ_RIGHTS), (write, fs), (devices, _FS_DEVICE_RIGHTS)):
            for path in paths:
                _add_path_rule(libc, ruleset, path, rights & fs)
        _check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
        _check(
            libc.syscall(_SYS_LANDLOCK_RESTRICT_SELF, ruleset, ctypes.c_uint32(0)), "landlock_restrict_self"
        )
    finally:
        os.close(ruleset)
    return abi


def _add_path_rule(libc: Any, ruleset: int, path: str, rights: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        if not os.path.isdir(path):
            rights &= _FS_FILE_RIGHTS
        rule = _PathBeneathAttr(rights, fd)
        _check(
            libc.syscall(
                _SYS_LANDLOCK_ADD_RULE,
                ruleset,
                _LANDLOCK_RULE_PATH_BENEATH,
                ctypes.byref(rule),
                ctypes.c_uint32(0),
            ),
            f"landlock_add_rule({path})",
        )
    finally:
        os.close(fd)


_SCMP_ACT_ALLOW = 0x7FFF0000
_SCMP_ACT_ERRNO = 0x00050000
_SCMP_CMP_MASKED_EQ = 7
SECCOMP_MACHINES = {"x86_64", "aarch64"}
_AF_UNIX = 1
_CLONE_NAMESPACE_FLAGS = {
    "CLONE_NEWTIME": 0x80,
    "CLONE_NEWNS": 0x20000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}
DENIED_SYSCALLS = (
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "open_by_handle_at",
    "fsopen", "fsmount", "fsconfig", "move_mount", "open_tree", "mount_setattr",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "reboot", "swapon", "swapoff", "acct", "quotactl", "syslog",
)  # fmt: skip


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


def _libseccomp() -> Any:
    if os.uname().machine not in SECCOMP_MACHINES:
        raise OSError(f"the seccomp filter is only built for {sorted(SECCOMP_MACHINES)}")
    lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    ]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    return lib


def _check_seccomp(result: int, what: str) -> None:
    if result < 0:  # libseccomp returns -errno
        raise OSError(-result, f"{what}: {os.strerror(-result)}")


def apply_seccomp(isolation: bool = True, deny_fork: bool = False) -> None:
    """Install a seccomp filter (through the system's `libseccomp.so.2`).

    With `isolation`: refuse, with EPERM, the syscalls in `DENIED_SYSCALLS`, new namespaces from clone(), and
    creating unix-domain sockets (EACCES): pathname sockets such as a container runtime's are otherwise
    reachable through any filesystem isolation. With `deny_fork`: refuse new processes (fork, vfork and clone
    without CLONE_THREAD) with EAGAIN, while threads still work. Either way clone3 gets ENOSYS (its flags
    cannot be inspected), so the C library falls back to clone. Syscalls of other ABIs (i386, x32) are killed.
    """
    lib = _libseccomp()
    ctx = lib.seccomp_init(_SCMP_ACT_ALLOW)
    if not ctx:
        raise OSError("seccomp_init failed")
    try:
        eperm, eacces, enosys, eagain = (
            _SCMP_ACT_ERRNO | code for code in (errno.EPERM, errno.EACCES, errno.ENOSYS, errno.EAGAIN)
        )

        def rule(action: int, name: str, *masked: tuple[int, int, int]) -> None:
            number = lib.seccomp_syscall_resolve_name(name.encode())
            if number < 0:
                return  # not a syscall on this architecture
            args = (_ArgCmp * max(1, len(masked)))(
                *(_ArgCmp(a, _SCMP_CMP_MASKED_EQ, m, v) for a, m, v in masked)
            )
            _check_seccomp(
                lib.seccomp_rule_add_array(ctx, action, number, len(masked), args), f"seccomp rule {name}"
            )

        rule(enosys, "clone3")
        if isolation:
            for name in DENIED_SYSCALLS:
                rule(eperm, name)
            for flag in _CLONE_NAMESPACE_FLAGS.values():
                rule(eperm, "clone", (0, flag, flag))
            rule(eacces, "socket", (0, 0xFFFFFFFF, _AF_UNIX))
        if deny_fork:
            rule(eagain, "fork")
            rule(eagain, "vfork")
            rule(eagain, "clone", (0, _CLONE_THREAD, 0))
        _check_seccomp(lib.seccomp_load(ctx), "seccomp_load")
    finally:
        lib.seccomp_release(ctx)


def join_cgroups(procs_files: list[str]) -> None:
    """Move this process into each cgroup whose `cgroup.procs` file is given."""
    for path in procs_files:
        with open(path, "w") as handle:
            handle.write("0")


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    result = _libc().mount(
        source.encode(),
        target.encode(),
        fstype.encode() if fstype else None,
        ctypes.c_ulong(flags),
        data.encode() if data else None,
    )
    _check(result, f"mount {source} on {target}")


def private_mounts(unshare: bool) -> None:
    """Enter a new mount namespace (when `unshare`) and stop mounts propagating out of it."""
    if unshare:
        _check(_libc().unshare(_CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _mount("none", "/", None, _MS_REC | _MS_PRIVATE)


def expose(covers: dict[str, list[str]]) -> None:
    """Cover each directory in `covers` with an empty world-searchable tmpfs and bind the directories listed
    for it back in place, so they are reachable by every user while the rest of it is hidden."""
    fds = {root: os.open(root, os.O_PATH | os.O_DIRECTORY) for roots in covers.values() for root in roots}
    try:
        for directory, roots in covers.items():
            _mount("tmpfs", directory, "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=755,size=64k")
            for root in roots:
                os.makedirs(root, mode=0o755, exist_ok=True)
                _mount(f"/proc/self/fd/{fds[root]}", root, None, _MS_BIND | _MS_REC)
    finally:
        for fd in fds.values():
            os.close(fd)


def mount_workdir(path: str, size: int, inodes: int, uid: int, report_fd: int) -> None:
    """Make `path` a tmpfs of `size` bytes and `inodes` files owned by `uid` and enter it; an open descriptor
    of it goes to the parent over the unix socket `report_fd`, to measure it during and after the run."""
    options = f"size={size},nr_inodes={inodes},mode=0700,uid={uid},gid={uid}"
    _mount("tmpfs", path, "tmpfs", _MS_NOSUID | _MS_NODEV, options)
    os.chdir(path)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with socket.socket(fileno=report_fd) as channel:
            socket.send_fds(channel, [b"w"], [fd])
    finally:
        os.close(fd)


def drop_privileges(uid: int) -> None:
    """Become `uid` (and group `uid`) with no supplementary groups, irrevocably."""
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (uid, uid, uid) or os.getgroups():
        raise OSError(f"could not drop to uid/gid {uid}")


def apply_rlimits(limits: dict[str, int]) -> None:
    """Set each `{"RLIMIT_...": value}` as both soft and hard limit (names the platform lacks are skipped)."""
    import resource

    for name, value in limits.items():
        which = getattr(resource, name, None)
        if which is None:
            continue
        try:
            resource.setrlimit(which, (value, value))
        except (OSError, ValueError) as exc:
            raise OSError(f"setrlimit({name}, {value}): {exc}") from None


def _isolate(config: dict[str, Any]) -> None:
    join_cgroups(config.get("cgroup_procs") or [])
    mounts = config.get("mounts")
    if mounts is not None:
        private_mounts(mounts["unshare"])
        expose(mounts["expose"])
        workdir = mounts.get("workdir")
        if workdir is not None:
            mount_workdir(workdir["path"], workdir["size"], workdir["inodes"], workdir["uid"], workdir["fd"])
    if config.get("user") is not None:
        drop_privileges(config["user"])
    if sys.platform.startswith("linux"):
        _check(_libc().prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    landlock = config.get("landlock")
    if landlock is not None:
        apply_landlock(landlock["read"], landlock["write"], landlock["devices"])
    apply_rlimits(config["rlimits"])
    if config.get("seccomp") or config.get("deny_fork"):
        apply_seccomp(isolation=bool(config.get("seccomp")), deny_fork=bool(config.get("deny_fork")))


def main(argv: list[str]) -> None:
    """`argv` is [config JSON, program source]; never returns (exec or exit)."""
    try:  # any failure, even KeyboardInterrupt, must stop here: the program never runs unconfined
        config = json.loads(argv[0])
        code = argv[1]
        _isolate(config)
        python = config["python"]
        os.execv(python, [python, "-I", "-c", code])
    except BaseException as exc:
        sys.stderr.write(f"{SETUP_FAILED_PREFIX} {type(exc).__name__}: {exc}\n")
        sys.stderr.flush()
        os._exit(SETUP_FAILED_EXIT)


if __name__ == "__main__":
    main(sys.argv[1:])
