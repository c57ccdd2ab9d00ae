"""Linux isolation layers the sandbox kernel applies to itself before it runs any model code.

`apply_isolation` is called by the kernel launcher once, in a fresh single-threaded process,
before ipykernel starts. Every layer is independent, so a machine lacking one (no Landlock, no
seccomp library, not root) still gets the others; the returned `Isolation` says which layers hold
and why the others don't. `strict=True` turns a missing required layer into `IsolationUnavailable`.

Layers, in the order they are applied (the order matters: namespaces and the Landlock ruleset need
privileges or paths that the later layers take away):
  environment   scrubbed to an allowlist; HOME/TMPDIR inside the workdir
  network       a fresh, empty network namespace (or Landlock TCP rules + a seccomp socket filter)
  rlimits       address space, CPU, file size, open files, no core dumps
  capabilities  bounding/ambient/effective/permitted/inheritable all emptied, no_new_privs set
  user          an unprivileged uid when started as root and the Python install stays reachable
  landlock      filesystem: Python + system libraries read-only, workdir/runtime_dir read-write,
                nothing else; signals and abstract unix sockets scoped to the sandbox
  seccomp       no exec, no new processes, no ptrace, no namespaces/mounts/modules/bpf, no
                io_uring, no INET/PACKET/NETLINK sockets (network=False); EPERM, never kill
  unix_sockets  (`seal_unix_sockets`, once ipykernel has bound its ipc sockets) a second seccomp
                filter: no new AF_UNIX socket and no datagram socketpair. Landlock does not govern
                connect() to a pathname socket (checked up to ABI 7) and scopes only abstract ones,
                so without this, code could connect to any socket the host listens on by path
                (ssh-agent, D-Bus, docker.sock, other kernels' ipc sockets). The kernel's own
                sockets are bound before it; zmq signals with eventfds, asyncio's self-pipe is a
                stream socketpair (kept: a connected pair cannot reach a path, a datagram one can
                sendto() any path).

Landlock is driven through raw syscalls with ctypes: the `landlock` PyPI package is a dev release,
and the three syscalls plus two structs are a smaller, auditable surface than a new dependency.
Seccomp uses `pyseccomp` (ctypes over libseccomp), which handles arch quirks (x32, int 0x80).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import resource
import stat
import sys
import sysconfig
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from agent_kernel.errors import AgentKernelError
from agent_kernel.sandbox._records import Isolation

GiB = 1024**3

# Required layers: strict mode refuses to run without them. "user" is a bonus (see _switch_user).
_REQUIRED = (
    "environment",
    "rlimits",
    "capabilities",
    "no_new_privs",
    "network",
    "landlock",
    "seccomp",
)

_ENV_ALLOW = frozenset(
    {
        "PATH", "LANG", "LANGUAGE", "TZ", "TERM", "PYTHONIOENCODING", "PYTHONHASHSEED",
        "MPLBACKEND", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
        "NUMEXPR_MAX_THREADS", "VECLIB_MAXIMUM_THREADS", "JPY_PARENT_PID",
    }
)  # fmt: skip
_ENV_ALLOW_PREFIXES = ("LC_", "OPENBLAS_")


class IsolationUnavailable(AgentKernelError, RuntimeError):
    """A required isolation layer could not be applied and the sandbox was asked to be strict."""


@dataclass
class IsolationConfig:
    """What the kernel may touch. Paths are made absolute; workdir and runtime_dir must exist."""

    workdir: str  # read-write; the process's cwd and HOME
    runtime_dir: (
        str  # read-write, private (0700): connection file and ipykernel's ipc sockets
    )
    read_paths: list[str] = field(default_factory=list)  # extra read-only folders
    # Extra read-write folders. Sandbox code can write inside them but cannot replace the folder
    # itself (that needs rights on its parent): the place for a transfer folder the host reads.
    write_paths: list[str] = field(default_factory=list)
    network: bool = False
    memory_bytes: int | None = 2 * GiB  # RLIMIT_AS
    cpu_seconds: int | None = (
        None  # RLIMIT_CPU backstop (the host's timeout is the real limit)
    )
    max_file_bytes: int | None = 1 * GiB  # RLIMIT_FSIZE
    max_open_files: int = 256  # RLIMIT_NOFILE; zmq needs a few dozen
    strict: bool = (
        False  # raise IsolationUnavailable if a required layer can't be applied
    )
    user: int | None = 65534  # uid/gid to become when started as root; None stays uid 0


class _Unavailable(Exception):
    """A layer cannot be applied on this machine; the message is the plain reason."""


def apply_isolation(config: IsolationConfig) -> Isolation:
    """Confine the current process for good. Call once, before any thread starts."""
    seccomp = _import_seccomp()  # first: finding the library runs ldconfig, which is denied later
    for path in (config.workdir, config.runtime_dir, *config.write_paths):
        if not os.path.isdir(path):
            raise ValueError(
                f"isolation needs an existing directory, got {path!r}: create it first"
            )
    workdir, runtime_dir = (
        os.path.realpath(config.workdir),
        os.path.realpath(config.runtime_dir),
    )
    writable = [
        workdir,
        runtime_dir,
        *(os.path.realpath(p) for p in config.write_paths),
    ]
    read_paths = [os.path.realpath(p) for p in config.read_paths]
    for path in read_paths:
        if not os.path.exists(path):
            raise ValueError(
                f"read path {path!r} does not exist: pass only existing folders or files"
            )

    threads = _thread_count()
    if threads > 1:
        raise RuntimeError(
            f"apply_isolation must run before any thread starts ({threads} threads are running): "
            "Landlock, capabilities and no_new_privs only bind the calling thread. "
            "Call it first thing in the kernel launcher, before importing ipykernel."
        )

    iso = Isolation()
    os.umask(0o077)
    os.chdir(workdir)

    def layer(name: str, apply: Callable[[], str]) -> None:
        try:
            iso.active[name] = apply()
        except (_Unavailable, OSError) as exc:
            iso.active.pop(name, None)
            reason = (
                str(exc)
                if isinstance(exc, _Unavailable)
                else f"{exc.strerror or exc} (errno {exc.errno})"
            )
            iso.missing[name] = reason

    layer("environment", lambda: _scrub_environment(workdir))
    if config.network:
        iso.missing["network"] = "allowed by the caller (network=True)"
    else:
        layer("network", _new_network_namespace)
    layer("rlimits", lambda: _set_rlimits(config))
    # The Landlock ruleset is built while every path is still openable (before the uid switch)
    # and enforced after no_new_privs. Capabilities go in two steps around the uid switch:
    # dropping the bounding set needs CAP_SETPCAP, the switch needs CAP_SETUID.
    ruleset: _Ruleset | None = None
    try:
        ruleset = _Ruleset.build(writable, read_paths, config.network)
    except (_Unavailable, OSError) as exc:
        iso.missing["landlock"] = str(exc)
    layer("capabilities", _drop_bounding_set)
    if config.user is not None and os.geteuid() == 0:
        layer(
            "user", functools.partial(_switch_user, config.user, writable, read_paths)
        )
    if "capabilities" in iso.active:
        layer("capabilities", _clear_capabilities)
    layer("no_new_privs", _set_no_new_privs)
    if ruleset is not None:
        layer("landlock", ruleset.enforce)
        if "landlock" in iso.active:
            iso.active.update(ruleset.extras_active)
            iso.missing.update(ruleset.extras_missing)
    layer("seccomp", lambda: _load_seccomp(seccomp, config.network, iso))

    missing_required = [
        name
        for name in _REQUIRED
        if name in iso.missing and not (name == "network" and config.network)
    ]
    if config.strict and missing_required:
        raise IsolationUnavailable(
            "required sandbox isolation is unavailable:\n"
            + "\n".join(f"  {name}: {iso.missing[name]}" for name in missing_required)
            + "\nRun on Linux >= 5.13 with Landlock enabled and libseccomp installed, or pass strict=False."
        )
    return iso


def _thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        import threading

        return threading.active_count()


# --- environment -------------------------------------------------------------------------------


def env_allowed(name: str) -> bool:
    """Whether a variable of the host's environment may reach a sandbox kernel (and the zygote)."""
    return name in _ENV_ALLOW or name.startswith(_ENV_ALLOW_PREFIXES)


def _scrub_environment(workdir: str) -> str:
    """Nothing of the notebook's environment (API keys!) may reach model code.

    os.environ writes through to the C environment. /proc/self/environ would still show the
    initial environment, which is why the host launches the kernel with a scrubbed env too and
    Landlock makes /proc unreachable.
    """
    kept = {
        k: v
        for k, v in os.environ.items()
        if env_allowed(k)
    }
    tmp = os.path.join(workdir, ".tmp")
    os.makedirs(tmp, mode=0o700, exist_ok=True)
    kept.update(
        HOME=workdir,
        TMPDIR=tmp,
        MPLCONFIGDIR=os.path.join(tmp, "matplotlib"),
        XDG_CACHE_HOME=os.path.join(tmp, "cache"),
        XDG_CONFIG_HOME=os.path.join(tmp, "config"),
        IPYTHONDIR=os.path.join(tmp, "ipython"),
        PYTHONDONTWRITEBYTECODE="1",
    )
    kept.setdefault("PATH", "/usr/bin:/bin")
    kept.setdefault("MPLBACKEND", "agg")
    os.environ.clear()
    os.environ.update(kept)
    return f"allowlist, {len(kept)} variables, HOME={workdir}"


# --- rlimits -----------------------------------------------------------------------------------


def _set_rlimits(config: IsolationConfig) -> str:
    """Kernel-enforced backstops: a runaway allocation or write fails inside the sandbox only."""
    limits = {
        "as": (resource.RLIMIT_AS, config.memory_bytes),
        "cpu": (resource.RLIMIT_CPU, config.cpu_seconds),
        "fsize": (resource.RLIMIT_FSIZE, config.max_file_bytes),
        "nofile": (resource.RLIMIT_NOFILE, config.max_open_files),
        "core": (resource.RLIMIT_CORE, 0),
    }
    if config.memory_bytes is not None:
        _economise_address_space()
    applied = []
    for name, (which, value) in limits.items():
        if value is None:
            continue
        _, hard = resource.getrlimit(which)
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(which, (value, value))
        applied.append(f"{name}={_human(value) if name in ('as', 'fsize') else value}")
    # RLIMIT_NPROC is not enforced for uid 0 (the kernel exempts root); _switch_user sets it.
    return " ".join(applied)


_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
_THREAD_STACK_BYTES = 4 * 1024**2


def _economise_address_space() -> None:
    """Make RLIMIT_AS measure memory used rather than memory reserved or once used.

    An idle ipykernel has ~12 threads; glibc gives each its own malloc arena (64 MiB of address
    space) and an 8 MiB stack, so it idles at ~730 MiB virtual for ~45 MiB resident. And glibc's
    dynamic mmap threshold moves big blocks onto the heap after the first is freed; a fragmented
    heap never shrinks, so a caught MemoryError would leave the sandbox full for good. A fixed
    threshold keeps blocks >= 128 KiB in their own mappings, returned to the system when freed.
    """
    _libc.mallopt(_M_ARENA_MAX, 2)
    _libc.mallopt(_M_MMAP_THRESHOLD, 128 * 1024)
    attr = ctypes.create_string_buffer(
        128
    )  # pthread_attr_t is 56 bytes on 64-bit glibc
    if _libc.pthread_attr_init(attr) == 0:
        _libc.pthread_attr_setstacksize(attr, ctypes.c_size_t(_THREAD_STACK_BYTES))
        _libc.pthread_setattr_default_np(attr)
        _libc.pthread_attr_destroy(attr)


def _human(n: int) -> str:
    return f"{n / GiB:.1f}GiB" if n >= GiB else f"{n / 1024**2:.0f}MiB"


# --- namespaces --------------------------------------------------------------------------------

_CLONE_NEWNET = 0x40000000
_CLONE_NEWUSER = 0x10000000
_CLONE_THREAD = 0x00010000

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def _new_network_namespace() -> str:
    """An empty network namespace: no interfaces (loopback down), so no TCP/UDP anywhere.

    Pathname unix sockets (ipykernel's ipc transport) are filesystem objects and keep working;
    abstract unix sockets are per-namespace, so the host's become unreachable too.
    """
    if _libc.unshare(_CLONE_NEWNET) == 0:
        return "new network namespace (no interfaces)"
    first = ctypes.get_errno()
    uid, gid = os.geteuid(), os.getegid()
    if _libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET) == 0:
        # Map our ids so files keep their owners; setgroups must be denied before gid_map.
        for name, text in (
            ("setgroups", "deny"),
            ("uid_map", f"{uid} {uid} 1"),
            ("gid_map", f"{gid} {gid} 1"),
        ):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
        return "new user + network namespace (no interfaces)"
    second = ctypes.get_errno()
    raise _Unavailable(
        f"cannot create a network namespace (unshare: {os.strerror(first)}; "
        f"as user namespace: {os.strerror(second)}); Landlock TCP rules and the seccomp socket "
        "filter still apply if available"
    )


# --- capabilities and privileges ---------------------------------------------------------------

_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_PR_SET_DUMPABLE = 4
_CAP_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _drop_bounding_set() -> str:
    """The sandbox often runs as root: without this, uid 0 could still mount, kill, chown, ..."""
    last_cap = 63
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            last_cap = int(f.read())
    except OSError:
        pass
    for cap in range(last_cap + 1):
        if (
            _libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0
            and ctypes.get_errno() != errno.EINVAL
        ):
            _check(-1, f"dropping capability {cap} from the bounding set")
    _libc.prctl(
        _PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0
    )  # EINVAL before Linux 4.3: none to clear
    return "bounding set emptied"


def _clear_capabilities() -> str:
    header = _CapHeader(_CAP_VERSION_3, 0)
    data = (
        _CapData * 2
    )()  # all zero: no effective, permitted or inheritable capability
    _check(_libc.capset(ctypes.byref(header), ctypes.byref(data)), "capset")
    _libc.prctl(
        _PR_SET_DUMPABLE, 0, 0, 0, 0
    )  # other processes of the same uid can't ptrace us
    return "all dropped (bounding, ambient, effective, permitted, inheritable)"


def _set_no_new_privs() -> str:
    """Required for unprivileged Landlock and seccomp; also makes setuid binaries inert."""
    _check(_libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    return "set"


def _switch_user(uid: int, writable: list[str], read_paths: list[str]) -> str:
    """Become an unprivileged uid, so even a Landlock/seccomp gap meets ordinary file permissions.

    Only done when everything the kernel must read (the Python installation, read_paths) is
    reachable by that uid; a pyenv under /root (0700) is not, and then the kernel stays uid 0
    with no capabilities.
    """
    unreachable = [p for p in [*_python_paths(), *read_paths] if not _world_reachable(p)]
    unreachable += [
        p for p in writable if not _world_reachable(os.path.dirname(p), read=False)
    ]
    if unreachable:
        raise _Unavailable(
            f"staying uid 0 (without capabilities): {unreachable[0]} is not reachable by uid {uid}; "
            "put Python and the sandbox folders somewhere world-readable to get an unprivileged user"
        )
    for top in writable:
        for root, dirs, files in os.walk(top):
            for name in dirs + files:
                os.chown(os.path.join(root, name), uid, uid, follow_symlinks=False)
        os.chown(top, uid, uid)
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    resource.setrlimit(
        resource.RLIMIT_NPROC, (512, 512)
    )  # threads count too; fork is seccomp-denied
    return f"uid/gid {uid}, nproc=512"


def _world_reachable(path: str, read: bool = True) -> bool:
    """Whether a uid that is neither owner nor group member can walk to (and read) `path`."""
    path = os.path.realpath(path)
    ancestor = path
    while ancestor != os.sep:
        ancestor = os.path.dirname(ancestor)
        if not os.stat(ancestor).st_mode & stat.S_IXOTH:
            return False
    mode = os.stat(path).st_mode
    return not read or bool(
        mode & stat.S_IROTH and (mode & stat.S_IXOTH or not stat.S_ISDIR(mode))
    )


# --- Landlock ----------------------------------------------------------------------------------

_SYS_LANDLOCK_CREATE_RULESET = (
    444  # same number on every architecture (unified syscall table)
)
_SYS_LANDLOCK_ADD_RULE = 445
_SYS_LANDLOCK_RESTRICT_SELF = 446
_LANDLOCK_CREATE_RULESET_VERSION = 1
_LANDLOCK_RULE_PATH_BENEATH = 1

_FS_EXECUTE, _FS_WRITE_FILE, _FS_READ_FILE, _FS_READ_DIR = (
    1 << 0,
    1 << 1,
    1 << 2,
    1 << 3,
)
_FS_REFER, _FS_TRUNCATE, _FS_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
_FS_ABI1_ALL = (1 << 13) - 1  # EXECUTE .. MAKE_SYM
_FS_FILE_RIGHTS = (
    _FS_EXECUTE | _FS_WRITE_FILE | _FS_READ_FILE | _FS_TRUNCATE | _FS_IOCTL_DEV
)
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1 << 0, 1 << 1

_READ = _FS_EXECUTE | _FS_READ_FILE | _FS_READ_DIR
# System files that Python, numpy, pandas and matplotlib read; nothing with secrets (no passwd).
_SYSTEM_READ = (
    "/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin",
    "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime", "/etc/timezone",
    "/etc/ssl", "/etc/ca-certificates", "/etc/pki", "/etc/fonts", "/etc/mime.types",
    "/etc/nsswitch.conf", "/etc/host.conf", "/etc/gai.conf", "/sys/devices/system/cpu",
    "/dev/urandom", "/dev/random", "/dev/zero",
)  # fmt: skip
_NETWORK_READ = ("/etc/resolv.conf", "/etc/hosts", "/etc/services", "/etc/protocols")
_DEV_READ_WRITE = ("/dev/null",)


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _landlock_abi() -> int:
    abi = _libc.syscall(
        _SYS_LANDLOCK_CREATE_RULESET,
        None,
        ctypes.c_size_t(0),
        ctypes.c_uint32(_LANDLOCK_CREATE_RULESET_VERSION),
    )
    if abi < 0:
        err = ctypes.get_errno()
        reason = {
            errno.ENOSYS: "the kernel has no Landlock (needs Linux >= 5.13 built with CONFIG_SECURITY_LANDLOCK)",
            errno.EOPNOTSUPP: "Landlock is disabled at boot (add landlock to the lsm= kernel parameter)",
        }.get(err, os.strerror(err))
        raise _Unavailable(reason)
    return abi


@functools.cache
def _python_paths() -> tuple[str, ...]:
    """Where this interpreter loads code from: prefixes, stdlib, site-packages, editable sources.

    sys.path is deliberately not copied wholesale: with `python -m` it starts with the launch
    directory, which may be the analyst's notebook folder. Cached: the same in every kernel a
    zygote forks, which computes it once (`prepare_isolation`).
    """
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    paths.update(
        v
        for k, v in sysconfig.get_paths().items()
        if k in ("stdlib", "platstdlib", "purelib", "platlib")
    )
    paths.update(
        p
        for p in sys.path
        if "site-packages" in p or "dist-packages" in p or p.endswith(".zip")
    )
    paths.add(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the agent_kernel package
    paths.add(os.path.dirname(os.path.realpath(sys.executable)))
    return tuple(sorted(os.path.realpath(p) for p in paths if p and os.path.exists(p)))


def prepare_isolation() -> None:
    """What a zygote works out once for all the kernels it forks."""
    _python_paths()


class _Ruleset:
    """A Landlock ruleset built while paths are still openable, enforced later."""

    def __init__(self, fd: int, abi: int, network: bool) -> None:
        self.fd, self.abi = fd, abi
        # ABI-dependent protections, reported under their own names so a gap is visible.
        self.extras_active: dict[str, str] = {}
        self.extras_missing: dict[str, str] = {}
        if abi >= 6:
            self.extras_active["signals"] = (
                "Landlock scope: cannot signal processes outside the sandbox"
            )
            self.extras_active["abstract_unix_sockets"] = (
                "Landlock scope: cannot reach the host's abstract sockets"
            )
        else:
            self.extras_missing["signals"] = (
                f"Landlock ABI {abi} < 6 cannot scope signals"
            )
        if not network:
            if abi >= 4:
                self.extras_active["landlock_tcp"] = "TCP bind/connect denied"
            else:
                self.extras_missing["landlock_tcp"] = (
                    f"Landlock ABI {abi} < 4 has no network rules"
                )

    @classmethod
    def build(
        cls, writable: list[str], read_paths: list[str], network: bool
    ) -> _Ruleset:
        abi = _landlock_abi()
        handled_fs = _FS_ABI1_ALL
        if abi >= 2:
            handled_fs |= _FS_REFER
        if abi >= 3:
            handled_fs |= _FS_TRUNCATE
        if abi >= 5:
            handled_fs |= _FS_IOCTL_DEV
        attr = _RulesetAttr(handled_access_fs=handled_fs)
        size = 8
        if abi >= 4 and not network:
            attr.handled_access_net = (
                _NET_BIND_TCP | _NET_CONNECT_TCP
            )  # no rule added: all TCP denied
            size = 16
        if abi >= 6:
            attr.scoped = _SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL
            size = 24
        fd = _check(
            _libc.syscall(
                _SYS_LANDLOCK_CREATE_RULESET,
                ctypes.byref(attr),
                ctypes.c_size_t(size),
                ctypes.c_uint32(0),
            ),
            "landlock_create_ruleset",
        )
        system = [*_SYSTEM_READ, *(_NETWORK_READ if network else ())]
        grants: list[tuple[Iterable[str], int]] = [
            (_python_paths(), _READ),
            (system, _READ),
            (read_paths, _FS_READ_FILE | _FS_READ_DIR),
            (_DEV_READ_WRITE, _FS_READ_FILE | _FS_WRITE_FILE),
            (writable, handled_fs & ~(_FS_EXECUTE | _FS_IOCTL_DEV)),
        ]
        try:
            for paths, access in grants:
                for path in paths:
                    _add_path_rule(fd, path, access & handled_fs)
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, abi, network)

    def enforce(self) -> str:
        try:
            _check(
                _libc.syscall(_SYS_LANDLOCK_RESTRICT_SELF, self.fd, ctypes.c_uint32(0)),
                "landlock_restrict_self",
            )
        finally:
            os.close(self.fd)
        return f"ABI {self.abi}: read-only Python + system libraries, read-write workdir, runtime dir and write_paths"


def _add_path_rule(ruleset_fd: int, path: str, access: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        return  # optional system paths differ between distributions
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            access &= _FS_FILE_RIGHTS  # directory rights on a file are EINVAL
        rule = _PathBeneathAttr(allowed_access=access, parent_fd=fd)
        _check(
            _libc.syscall(
                _SYS_LANDLOCK_ADD_RULE,
                ruleset_fd,
                _LANDLOCK_RULE_PATH_BENEATH,
                ctypes.byref(rule),
                ctypes.c_uint32(0),
            ),
            f"landlock_add_rule({path})",
        )
    finally:
        os.close(fd)


# --- seccomp -----------------------------------------------------------------------------------

_DENIED_SYSCALLS = (
    "execve", "execveat", "fork", "vfork",
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "kcmp",
    "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen", "fsmount",
    "fspick", "mount_setattr", "unshare", "setns",
    "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd", "personality",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "open_by_handle_at", "name_to_handle_at", "fanotify_init", "acct", "swapon", "swapoff", "reboot",
    "io_uring_setup", "io_uring_enter", "io_uring_register",  # io_uring ops bypass seccomp
)  # fmt: skip
_AF_UNIX, _AF_INET, _AF_INET6, _AF_NETLINK, _AF_PACKET = 1, 2, 10, 16, 17
_SOCK_DGRAM, _SOCK_TYPE_MASK = 2, 0xF  # the type argument's low bits; the rest are NONBLOCK/CLOEXEC


def _import_seccomp() -> Any:
    """pyseccomp, imported while the process may still run ldconfig to find libseccomp.so.2."""
    try:
        import pyseccomp
    except (ImportError, RuntimeError) as exc:  # RuntimeError: libseccomp.so.2 not found
        return _Unavailable(f"pyseccomp/libseccomp unavailable ({exc}); install libseccomp2 and pyseccomp")
    return pyseccomp


def _new_filter(sc: Any) -> Any:
    """A seccomp filter that allows what it is not told to deny, for every thread and ABI."""
    if isinstance(sc, _Unavailable):
        raise sc
    filt = sc.SyscallFilter(sc.ALLOW)
    filt.set_attr(sc.Attr.CTL_TSYNC, 1)  # every thread, including any a C library started
    # Syscalls of another ABI (i386 via int 0x80, x32) would slip past the rules: none may run.
    filt.set_attr(sc.Attr.ACT_BADARCH, sc.ERRNO(errno.ENOSYS))
    return filt


def _load_seccomp(sc: Any, network: bool, iso: Isolation) -> str:
    """Syscalls model code never needs. EPERM, not kill: Python raises and the kernel lives on."""
    filt = _new_filter(sc)
    eperm = sc.ERRNO(errno.EPERM)
    denied = []
    for name in _DENIED_SYSCALLS:
        try:
            filt.add_rule(eperm, name)
            denied.append(name)
        except (OSError, ValueError):
            pass  # not a syscall on this architecture (e.g. fork/vfork on aarch64)
    # New processes: only threads may be cloned. clone3 passes flags in memory, which seccomp
    # cannot inspect, so it reports ENOSYS and glibc falls back to clone.
    filt.add_rule(eperm, "clone", sc.Arg(0, sc.MASKED_EQ, _CLONE_THREAD, 0))
    filt.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    families = ""
    if not network:
        for family in (_AF_INET, _AF_INET6, _AF_PACKET):
            filt.add_rule(eperm, "socket", sc.Arg(0, sc.EQ, family))
        # getifaddrs() opens a netlink socket; libzmq aborts the process on any failure other
        # than EINVAL/EOPNOTSUPP (ipykernel's IOPub pipe binds tcp://127.0.0.1 at start-up).
        filt.add_rule(
            sc.ERRNO(errno.EOPNOTSUPP), "socket", sc.Arg(0, sc.EQ, _AF_NETLINK)
        )
        families = ", INET/INET6/NETLINK/PACKET sockets"
        if "network" in iso.missing:
            iso.active["network"] = (
                "Landlock TCP rules + seccomp socket filter (no network namespace)"
            )
            iso.missing.pop("network")
    filt.load()
    return f"{len(denied) + 2} syscalls denied (exec, fork/non-thread clone, ptrace, mounts, namespaces{families}, ...)"


def seal_unix_sockets(iso: Isolation, strict: bool) -> None:
    """No new unix socket from here on (see the module docstring); call once the kernel's own are bound.

    Recorded in `iso` as the "unix_sockets" layer; `strict` makes its absence IsolationUnavailable.
    """
    try:
        import pyseccomp as sc

        filt = _new_filter(sc)
        eperm = sc.ERRNO(errno.EPERM)
        filt.add_rule(eperm, "socket", sc.Arg(0, sc.EQ, _AF_UNIX))
        filt.add_rule(eperm, "socketpair", sc.Arg(1, sc.MASKED_EQ, _SOCK_TYPE_MASK, _SOCK_DGRAM))
        filt.load()
    except (ImportError, RuntimeError, OSError, _Unavailable) as exc:
        iso.missing["unix_sockets"] = f"no seccomp filter for unix sockets ({exc}): pathname sockets stay reachable"
        if strict:
            raise IsolationUnavailable(f"required sandbox isolation is unavailable:\n  unix_sockets: {exc}") from None
        return
    iso.active["unix_sockets"] = "no new unix socket (none of the host's can be connected), stream socketpairs only"
