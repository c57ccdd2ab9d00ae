"""apply_isolation in a real subprocess: each attack must fail, each thing analysts need must work.

One child process per configuration applies the isolation to itself, then runs named probes and
prints their outcomes as JSON. Side effects (marker files, bytes reaching a listener, a victim
process surviving) are checked from this process, not trusted from the child's report.
"""

from __future__ import annotations

import json
import os
import socket
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.skipif(
    sys.platform != "linux", reason="the isolation layers are Linux features"
)

SECRET = "sk-test-secret-4f9a"

# Runs in the child. argv[1] is a JSON job: isolation kwargs, probe names, context, pre_deny.
_CHILD = textwrap.dedent(
    r"""
    import ctypes, errno, json, os, pathlib, signal, socket, sys, threading, traceback
    job = json.loads(sys.argv[1])
    ctx = job["context"]
    libc = ctypes.CDLL(None, use_errno=True)

    def libc_call(fn, *args):
        r = fn(*args)
        if r == -1:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        return r

    if job.get("pre_deny"):  # simulate a machine without these syscalls (old kernel, container)
        import pyseccomp as sc
        f = sc.SyscallFilter(sc.ALLOW)
        for name, err in job["pre_deny"].items():
            f.add_rule(sc.ERRNO(getattr(errno, err)), name)
        f.load()

    from agent_kernel.sandbox._isolation import IsolationConfig, apply_isolation, IsolationUnavailable
    try:
        iso = apply_isolation(IsolationConfig(**job["config"]))
    except IsolationUnavailable as exc:
        print(json.dumps({"unavailable": str(exc)}))
        sys.exit(0)
    wd = pathlib.Path(job["config"]["workdir"])
    rt = pathlib.Path(job["config"]["runtime_dir"])
    wr = pathlib.Path(job["config"]["write_paths"][0]) if job["config"].get("write_paths") else None

    def spawn_marker(name):
        return f"touch {wd / ('spawned_' + name)}"

    def _tcp():
        s = socket.create_connection(("127.0.0.1", ctx["tcp_port"]), timeout=2)
        s.sendall(b"leak " + os.environ.get("OPENAI_API_KEY", "").encode())
        return "connected"

    def _udp():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        return s.sendto(b"leak", ("127.0.0.1", ctx["udp_port"]))

    def _proc_root():
        return open(f"/proc/{ctx['victim_pid']}/root{ctx['secret_file']}").read()

    def _symlink():
        os.symlink(ctx["secret_file"], wd / "link")
        return (wd / "link").read_text()

    def _hardlink():
        os.link(ctx["secret_file"], wd / "hard")
        return (wd / "hard").read_text()

    def _posix_spawn():
        pid = os.posix_spawn("/bin/sh", ["sh", "-c", spawn_marker("posix_spawn")], {})
        return os.waitpid(pid, 0)

    def _os_system():
        status = os.system(spawn_marker("os_system"))
        if status != 0:
            raise OSError(f"os.system returned {status}")
        return status

    def _libc_system():
        status = libc.system(spawn_marker("libc_system").encode())
        if status != 0:
            raise OSError(f"system() returned {status}")
        return status

    def _libc_fork():
        pid = libc_call(libc.fork)
        if pid == 0:
            os._exit(0)
        return pid

    def _pty_spawn():
        import pty
        return pty.spawn(["/bin/sh", "-c", spawn_marker("pty")])

    def _multiprocessing():
        import multiprocessing
        p = multiprocessing.get_context("fork").Process(target=os.getpid)
        p.start(); p.join()
        return p.exitcode

    def _ptrace():
        return libc_call(libc.ptrace, 16, ctx["victim_pid"], None, None)  # PTRACE_ATTACH

    def _process_vm_readv():
        class iovec(ctypes.Structure):
            _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
        buf = ctypes.create_string_buffer(16)
        local = iovec(ctypes.cast(buf, ctypes.c_void_p), 16)
        remote = iovec(0x400000, 16)
        return libc_call(libc.process_vm_readv, ctx["victim_pid"], ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)

    def _unshare_user():
        return libc_call(libc.unshare, 0x10000000)  # CLONE_NEWUSER: would regain capabilities

    def _mount():
        return libc_call(libc.mount, b"none", str(wd).encode(), b"tmpfs", 0, None)

    def _io_uring():
        params = ctypes.create_string_buffer(120)
        return libc_call(libc.syscall, 425, 8, params)

    def _x32_syscall():
        return libc_call(libc.syscall, 0x40000000 | 39)  # x32 getpid: another ABI, must not run

    def _zmq_ipc():
        import zmq
        c = zmq.Context()
        a, b = c.socket(zmq.PAIR), c.socket(zmq.PAIR)
        a.bind(f"ipc://{rt}/probe"); b.connect(f"ipc://{rt}/probe")
        b.send(b"ping")
        return a.recv() == b"ping"

    def _plot():
        import matplotlib
        matplotlib.use("agg")
        import matplotlib.pyplot as plt
        import numpy as np
        import pandas as pd
        df = pd.DataFrame({"x": np.arange(100), "y": np.random.default_rng(0).normal(size=100)})
        df.plot(x="x", y="y")
        plt.savefig(wd / "plot.png")
        return (wd / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    def _threads():
        out = []
        ts = [threading.Thread(target=out.append, args=(i,)) for i in range(20)]
        for t in ts: t.start()
        for t in ts: t.join()
        return sorted(out) == list(range(20))

    def _workdir_rw():
        (wd / "sub").mkdir()
        (wd / "sub" / "a.txt").write_text("hello")
        os.rename(wd / "sub" / "a.txt", wd / "b.txt")
        import tempfile
        with tempfile.NamedTemporaryFile(dir=None) as tmp:
            tmp.write(b"x")
            in_tmpdir = tmp.name.startswith(str(wd))
        return (wd / "b.txt").read_text() == "hello" and in_tmpdir and os.getcwd() == str(wd)

    PROBES = {
        # attacks: each must raise
        "read_secret_open": lambda: open(ctx["secret_file"]).read(),
        "read_secret_pathlib": lambda: pathlib.Path(ctx["secret_file"]).read_text(),
        "read_secret_os_open": lambda: os.read(os.open(ctx["secret_file"], os.O_RDONLY), 100),
        "read_secret_symlink": _symlink,
        "read_secret_hardlink": _hardlink,
        "read_secret_proc_root": _proc_root,
        "read_secret_pandas": lambda: __import__("pandas").read_csv(ctx["secret_file"]),
        "read_secret_numpy": lambda: __import__("numpy").loadtxt(ctx["secret_file"], dtype=str),
        "read_proc_self_environ": lambda: open("/proc/self/environ", "rb").read(),
        "read_proc_parent_environ": lambda: open(f"/proc/{os.getppid()}/environ", "rb").read(),
        "read_etc_shadow": lambda: open("/etc/shadow").read(),
        "list_root_dir": lambda: os.listdir("/"),
        "list_home": lambda: os.listdir(ctx["home"]),
        "write_outside": lambda: open(ctx["outside_dir"] + "/pwned", "w").write("x"),
        "write_tmp": lambda: open("/tmp/agent_kernel_pwned", "w").write("x"),
        "write_python_install": lambda: open(os.path.dirname(os.__file__) + "/pwned.py", "w").write("x"),
        "tcp_connect": _tcp,
        "udp_send": _udp,
        "netlink_socket": lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0),
        "os_fork": os.fork,
        "subprocess": lambda: __import__("subprocess").run(["sh", "-c", spawn_marker("subprocess")]),
        "os_system": _os_system,
        "posix_spawn": _posix_spawn,
        "libc_system": _libc_system,
        "libc_fork": _libc_fork,
        "pty_spawn": _pty_spawn,
        "multiprocessing": _multiprocessing,
        "kill_parent": lambda: os.kill(os.getppid(), 0),
        "kill_victim": lambda: os.kill(ctx["victim_pid"], signal.SIGTERM),
        "ptrace_victim": _ptrace,
        "process_vm_readv": _process_vm_readv,
        "unshare_user": _unshare_user,
        "mount": _mount,
        "io_uring": _io_uring,
        "x32_syscall": _x32_syscall,
        # allowed: each must return a true value
        "env_has_no_secret": lambda: SECRET_NAME not in os.environ and ctx["secret"] not in str(os.environ),
        "home_is_workdir": lambda: os.environ["HOME"] == str(wd) and os.environ["TMPDIR"].startswith(str(wd)),
        "workdir_rw": _workdir_rw,
        "read_path_readable": lambda: open(ctx["readable_file"]).read() == "shared data",
        "read_path_not_writable": lambda: open(ctx["readable_file"], "a").write("x"),
        "write_path_rw": lambda: (wr / "out.bin").write_bytes(b"x") == 1 and (wr / "out.bin").read_bytes() == b"x",
        "replace_write_path": lambda: (os.rename(wr, wd / "moved"), os.symlink(ctx["outside_dir"], wr)),
        "remove_write_path": lambda: os.rmdir(wr),  # empty at this point: only Landlock can refuse
        "plot_png": _plot,
        "threads": _threads,
        "zmq_ipc": _zmq_ipc,
        "unix_socketpair": lambda: socket.socketpair()[0].fileno() > 0,
        "signal_self": lambda: os.kill(os.getpid(), 0) is None,
    }
    SECRET_NAME = "OPENAI_API_KEY"
    results = {}
    for name in job["probes"]:
        try:
            value = PROBES[name]()
            results[name] = {"ok": True, "value": repr(value)[:200]}
        except BaseException as exc:
            results[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    print(json.dumps({"active": iso.active, "missing": iso.missing, "results": results}))
    """
)

ATTACKS = [
    "read_secret_open", "read_secret_pathlib", "read_secret_os_open", "read_secret_symlink",
    "read_secret_hardlink", "read_secret_proc_root", "read_secret_pandas", "read_secret_numpy",
    "read_proc_self_environ", "read_proc_parent_environ", "read_etc_shadow", "list_root_dir",
    "list_home", "write_outside", "write_tmp", "write_python_install", "tcp_connect", "udp_send",
    "netlink_socket", "os_fork", "subprocess", "os_system", "posix_spawn", "libc_system",
    "libc_fork", "pty_spawn", "multiprocessing", "kill_parent", "kill_victim", "ptrace_victim",
    "process_vm_readv", "unshare_user", "mount", "io_uring", "x32_syscall", "read_path_not_writable",
    "replace_write_path", "remove_write_path",
]  # fmt: skip
ALLOWED = [
    "env_has_no_secret", "home_is_workdir", "workdir_rw", "read_path_readable", "plot_png",
    "threads", "zmq_ipc", "unix_socketpair", "signal_self", "write_path_rw",
]  # fmt: skip


class Listeners:
    """A TCP and a UDP listener on loopback that record every byte they receive."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.tcp = socket.create_server(("127.0.0.1", 0))
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.tcp.settimeout(0.2)
        self.udp.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.tcp.accept()
                with conn:
                    conn.settimeout(1)
                    self.received.append(b"tcp:" + conn.recv(1024))
            except OSError:
                pass
            try:
                self.received.append(b"udp:" + self.udp.recv(1024))
            except OSError:
                pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.tcp.close()
        self.udp.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Secrets, listeners and a victim process outside the sandbox."""
    base = tmp_path_factory.mktemp("isolation")
    outside = base / "outside"
    outside.mkdir()
    secret_file = outside / "secret.csv"
    secret_file.write_text(f"key\n{SECRET}\n")
    shared = base / "shared"
    shared.mkdir()
    (shared / "data.txt").write_text("shared data")
    listeners = Listeners()
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        yield {
            "base": base,
            "listeners": listeners,
            "victim": victim,
            "context": {
                "secret": SECRET,
                "secret_file": str(secret_file),
                "outside_dir": str(outside),
                "readable_file": str(shared / "data.txt"),
                "tcp_port": listeners.tcp.getsockname()[1],
                "udp_port": listeners.udp.getsockname()[1],
                "victim_pid": victim.pid,
                "home": os.path.expanduser("~"),
            },
            "read_paths": [str(shared)],
        }
    finally:
        victim.kill()
        victim.wait()
        listeners.close()


def run_child(
    world: dict[str, Any],
    name: str,
    probes: list[str],
    python: str = sys.executable,
    pre_deny: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
    **config: Any,
) -> dict[str, Any]:
    workdir = world["base"] / name / "work"
    runtime = world["base"] / name / "run"
    transfer = world["base"] / name / "transfer"
    workdir.mkdir(parents=True)
    runtime.mkdir(mode=0o700)
    transfer.mkdir()
    job = {
        "config": {
            "workdir": str(workdir),
            "runtime_dir": str(runtime),
            "write_paths": [str(transfer)],
            "read_paths": world["read_paths"],
            **config,
        },
        "probes": probes,
        "context": world["context"],
        "pre_deny": pre_deny or {},
    }
    child_env = {
        **os.environ,
        "OPENAI_API_KEY": SECRET,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        **(env or {}),
    }
    proc = subprocess.run(
        [python, "-c", _CHILD, json.dumps(job)],
        capture_output=True, text=True, timeout=120, env=child_env, cwd=str(world["base"]), check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    report["workdir"] = workdir
    return report


@pytest.fixture(scope="module")
def default(world: dict[str, Any]) -> dict[str, Any]:
    return run_child(world, "default", ATTACKS + ALLOWED)


def test_every_layer_is_active_on_this_machine(default: dict[str, Any]) -> None:
    # This machine (Linux 6.x, root, Landlock ABI >= 6, libseccomp) supports every required layer.
    for layer in (
        "environment",
        "network",
        "rlimits",
        "capabilities",
        "no_new_privs",
        "landlock",
        "seccomp",
        "signals",
    ):
        assert layer in default["active"], (layer, default["missing"])


@pytest.mark.parametrize("probe", ATTACKS)
def test_attack_fails(default: dict[str, Any], probe: str) -> None:
    result = default["results"][probe]
    assert not result["ok"], f"{probe} succeeded inside the sandbox: {result}"


@pytest.mark.parametrize("probe", ALLOWED)
def test_allowed_work_succeeds(default: dict[str, Any], probe: str) -> None:
    result = default["results"][probe]
    assert result["ok"] and result["value"] == "True", f"{probe}: {result}"


def test_attacks_left_no_trace(world: dict[str, Any], default: dict[str, Any]) -> None:
    assert not list(default["workdir"].glob("spawned_*")), "a process was spawned"
    assert not (Path(world["context"]["outside_dir"]) / "pwned").exists()
    assert not Path("/tmp/agent_kernel_pwned").exists()
    assert world["victim"].poll() is None, "the victim process was killed"
    assert not any(
        SECRET.encode() in data or b"leak" in data
        for data in world["listeners"].received
    )
    assert (Path(world["read_paths"][0]) / "data.txt").read_text() == "shared data"


def test_network_opt_in_reaches_loopback(world: dict[str, Any]) -> None:
    report = run_child(
        world, "network", ["tcp_connect", "read_secret_open", "os_fork"], network=True
    )
    assert report["results"]["tcp_connect"]["ok"], report["results"]["tcp_connect"]
    assert "network" in report["missing"] and "network" not in report["active"]
    assert not report["results"]["read_secret_open"]["ok"]
    assert not report["results"]["os_fork"]["ok"]
    deadline = (
        time.monotonic() + 5
    )  # the listener thread records the bytes asynchronously
    while not any(data.startswith(b"tcp:leak") for data in world["listeners"].received):
        assert time.monotonic() < deadline, (
            "the opted-in connection never delivered its bytes"
        )
        time.sleep(0.05)
    received = list(world["listeners"].received)
    # The environment is scrubbed before the connection: the key never travels.
    assert not any(SECRET.encode() in data for data in received)


def test_without_network_namespace_tcp_and_udp_stay_blocked(
    world: dict[str, Any],
) -> None:
    # unshare failing (an unprivileged container) falls back to Landlock TCP rules + seccomp.
    report = run_child(
        world,
        "no_netns",
        ["tcp_connect", "udp_send", "zmq_ipc"],
        pre_deny={"unshare": "EPERM"},
    )
    assert "Landlock TCP" in report["active"]["network"], report
    assert not report["results"]["tcp_connect"]["ok"]
    assert not report["results"]["udp_send"]["ok"]
    assert report["results"]["zmq_ipc"]["value"] == "True"


def test_without_landlock_other_layers_hold_and_strict_refuses(
    world: dict[str, Any],
) -> None:
    no_landlock = {"landlock_create_ruleset": "ENOSYS"}
    report = run_child(
        world,
        "no_landlock",
        ["os_fork", "tcp_connect", "plot_png"],
        pre_deny=no_landlock,
    )
    assert "no Landlock" in report["missing"]["landlock"]
    assert "seccomp" in report["active"] and "network" in report["active"]
    assert (
        not report["results"]["os_fork"]["ok"]
        and not report["results"]["tcp_connect"]["ok"]
    )
    assert report["results"]["plot_png"]["value"] == "True"
    strict = run_child(world, "strict", [], pre_deny=no_landlock, strict=True)
    assert (
        "landlock" in strict["unavailable"] and "strict=False" in strict["unavailable"]
    )


def test_file_size_and_memory_limits(world: dict[str, Any], tmp_path: Path) -> None:
    code = textwrap.dedent(
        f"""
        import json, os, sys
        from agent_kernel.sandbox._isolation import IsolationConfig, apply_isolation
        apply_isolation(IsolationConfig(workdir={str(tmp_path)!r}, runtime_dir={str(tmp_path)!r},
                                        memory_bytes=512 * 2**20, max_file_bytes=2**20, max_open_files=64))
        out = {{}}
        try:
            with open("big", "wb") as f:
                f.write(b"x" * (2 * 2**20))
        except OSError as e:
            out["fsize"] = e.errno
        try:
            b = bytearray(1024 * 2**20)
        except MemoryError:
            out["memory"] = "MemoryError"
        fds = []
        try:
            while True:
                fds.append(os.open("/dev/null", os.O_RDONLY))
        except OSError as e:
            out["nofile"] = (e.errno, len(fds))
        print(json.dumps(out))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["fsize"] == 27  # EFBIG (SIGXFSZ is ignored by Python)
    assert out["memory"] == "MemoryError"
    assert out["nofile"][0] == 24 and out["nofile"][1] < 64  # EMFILE
    assert os.path.getsize(tmp_path / "big") <= 2**20


def test_refuses_to_run_with_threads_already_started(tmp_path: Path) -> None:
    code = textwrap.dedent(
        f"""
        import threading, time
        threading.Thread(target=time.sleep, args=(5,), daemon=True).start()
        from agent_kernel.sandbox._isolation import IsolationConfig, apply_isolation
        apply_isolation(IsolationConfig(workdir={str(tmp_path)!r}, runtime_dir={str(tmp_path)!r}))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0
    assert "before any thread starts" in proc.stderr


def test_missing_workdir_is_a_clear_error(tmp_path: Path) -> None:
    from agent_kernel.sandbox._isolation import IsolationConfig, apply_isolation

    with pytest.raises(ValueError, match="create it first"):
        apply_isolation(
            IsolationConfig(workdir=str(tmp_path / "nope"), runtime_dir=str(tmp_path))
        )


@pytest.mark.skipif(
    os.geteuid() != 0, reason="the uid switch happens only when started as root"
)
def test_root_switches_to_unprivileged_user_when_python_is_world_readable(
    world: dict[str, Any], tmp_path: Path
) -> None:
    """The venv's base Python may sit under /root (0700); a system Python is world-readable."""
    system_python = "/usr/bin/python3"
    version = subprocess.run(
        [system_python, "-c", "import sys; print(sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=False,
    )
    if version.stdout.strip() != str(sys.version_info[:2]):
        pytest.skip(
            f"no system Python {sys.version_info[:2]} to borrow the venv's packages"
        )
    # Make the sandbox folders reachable for the unprivileged uid (pytest's tmp root is 0700).
    public = (
        Path(os.environ.get("AGENT_KERNEL_TEST_PUBLIC_DIR", "/var/tmp"))
        / f"ak-iso-{os.getpid()}"
    )
    public.mkdir(mode=0o755)
    try:
        os.chmod(public, 0o755)
        shared = {**world, "base": public, "read_paths": []}
        import pyseccomp

        import agent_kernel

        # The checkout and the venv may sit in a 0700 folder: give the uid its own copies.
        lib = public / "lib"
        lib.mkdir()
        shutil.copy(pyseccomp.__file__, lib)  # a single module
        shutil.copytree(os.path.dirname(agent_kernel.__file__), lib / "agent_kernel",
                        ignore=shutil.ignore_patterns("__pycache__"))
        for path in [public, *lib.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        report = run_child(
            shared, "user", ["workdir_rw", "read_secret_open", "os_fork", "kill_victim"],
            python=system_python, env={"PYTHONPATH": str(lib)},
        )  # fmt: skip
        assert report["active"].get("user", "").startswith("uid/gid 65534"), report[
            "missing"
        ]
        assert report["results"]["workdir_rw"]["value"] == "True"
        for attack in ("read_secret_open", "os_fork", "kill_victim"):
            assert not report["results"][attack]["ok"], (attack, report)
    finally:
        shutil.rmtree(public, ignore_errors=True)
    assert world["victim"].poll() is None
