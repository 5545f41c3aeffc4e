"""Run untrusted Python programs (model-written code plus its tests), each in its own sandboxed process.

Why this shape: a code reward executes whatever the policy wrote, thousands of times per training step, on
the same host as the trainer. A program must not be able to reach the network, write anything of the host,
exhaust its memory / processes / CPU, outlive its time, kill the scorer, or fake a pass by exiting 0 before
its tests ran. Each program therefore gets a fresh process under bubblewrap:

- namespaces: new pid, net, ipc, uts (and cgroup where possible) namespaces: no network at all (only an
  unconfigured loopback), no view of or signals to host processes; the program is pid 2 under bwrap's
  reaper, so `os.kill(os.getppid(), 9)` hits nothing of ours.
- file system: an empty root with read-only binds of /usr, /bin, /lib* and the Python install, a fresh
  /proc and minimal /dev, a size-capped private tmpfs on /tmp (the working directory), and the root
  remounted read-only: nothing of the host is visible except those read-only trees.
- identity: as root (CI, Colab, containers) bwrap runs privileged (no user namespace) and the program drops
  to an unprivileged uid of its own (`uid_base + slot`, one uid per pool slot) before any of its code runs.
  That matters because the kernel does not enforce RLIMIT_NPROC for uid 0 -- including "uid 65534 inside a
  user namespace" that maps to host root, which we verified lets a fork bomb run unchecked -- and because
  a per-slot uid keeps one program's process budget from starving the others. As a normal user bwrap
  makes a user namespace instead (`--unshare-user`, plus `--disable-userns` where bwrap has it), where
  the limit is counted per namespace.
- limits, set in the child before the program's code runs: RLIMIT_CPU, RLIMIT_AS, RLIMIT_NPROC,
  RLIMIT_FSIZE, RLIMIT_NOFILE, RLIMIT_CORE=0; plus a wall-clock timeout after which the whole process
  group is SIGKILLed (bwrap `--die-with-parent` and the pid namespace take every descendant with it).
- completion proof: the program's source reaches the sandbox on a pipe together with a random per-run
  token; a small harness runs the program and writes the token only after the last statement (the tests)
  returned. Pass = exit status 0 AND the token on stdout, so `sys.exit(0)` / `os._exit(0)` before the tests
  finish fails. The token never appears in the program text, argv or environment; code that introspects
  the harness's frames could still find it, so this stops accidental and lazy early exits, not an
  adversary with full knowledge of the harness.

Where bwrap is missing or cannot create namespaces (a Colab VM, a container without user namespaces) the
executor falls back to a plain child process with the same rlimits and logs a loud warning once: that is
NOT a sandbox (network and world-writable host paths stay reachable). As root the fallback still drops to
the slot uid, and refuses to run at all if that uid cannot use the interpreter (say, a pyenv Python under
/root): root ignores RLIMIT_NPROC and `os.kill(-1, 9)` as root kills every process on the machine.

Programs run on a pool of threads, each driving one sandboxed subprocess (parallelism = CPU count by
default), so `CodeExecutor.submit` returns a Future and the trainer can overlap scoring with device work.
`score_async` does the same for any registered reward.

Cost: a HumanEval program takes ~20 ms of CPU here, nearly all of it Python start-up (~10 ms) and the
program's own imports (`typing` alone ~8 ms); bwrap adds a few ms. A fork-server forking programs from
a warm interpreter would save most of that, but would put several programs into one sandbox, so we don't.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import functools
import itertools
import logging
import math
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# First uid of the per-slot unprivileged identities used when the scorer runs as root. Below 65536 so it is
# mapped in containers whose user namespace only maps 64 Ki ids; outside the 1000-59999 range of login
# users. Override with RLVR_SANDBOX_UID_BASE if it collides with something on your hosts.
DEFAULT_UID_BASE = 60000
MAX_SLOTS = 4096
OUTPUT_HEAD_BYTES = 2048  # of a failing program's output kept for the reason / debugging
OUTPUT_TAIL_BYTES = 4096  # where the completion token must appear
BWRAP_SETUP_STATUS = 1  # bwrap's own exit status when it fails to set the sandbox up
HARNESS_SETUP_STATUS = 121  # the harness's exit status when dropping privileges / setting limits fails

_SLOT_COUNTER = itertools.count()
_SLOT_LOCK = threading.Lock()
_WARNED_UNSANDBOXED = False
_MODE_CACHE: dict[tuple[str, Any], str] = {}
_MODE_LOCK = threading.Lock()


@dataclasses.dataclass(frozen=True)
class Limits:
    """Per-program resource limits.

    timeout_s: wall clock from process start to kill. cpu_s: RLIMIT_CPU (default: the timeout rounded up, so
    a busy loop dies even if the scorer itself is gone). memory_bytes: RLIMIT_AS. nproc: processes+threads
    of the program's uid. fsize_bytes: largest file it may write (also caps its stdout+stderr, which go to
    a file). nofile: open descriptors. tmp_bytes: size of its private /tmp.
    """

    timeout_s: float = 10.0
    cpu_s: int | None = None
    memory_bytes: int = 1 << 30
    nproc: int = 32
    fsize_bytes: int = 16 << 20
    nofile: int = 128
    tmp_bytes: int = 64 << 20

    def rlimits(self) -> dict[str, tuple[int, int]]:
        """(soft, hard) per resource name; the hard CPU limit is one second later (SIGXCPU, then SIGKILL)."""
        cpu = self.cpu_s if self.cpu_s is not None else max(1, math.ceil(self.timeout_s))
        return {
            "RLIMIT_CPU": (cpu, cpu + 1),
            "RLIMIT_AS": (self.memory_bytes, self.memory_bytes),
            "RLIMIT_NPROC": (self.nproc, self.nproc),
            "RLIMIT_FSIZE": (self.fsize_bytes, self.fsize_bytes),
            "RLIMIT_NOFILE": (self.nofile, self.nofile),
            "RLIMIT_CORE": (0, 0),
        }


@dataclasses.dataclass(frozen=True)
class ExecResult:
    """Outcome of one program: `passed` only if it exited 0 after printing the completion token."""

    passed: bool
    reason: str
    returncode: int | None = None
    elapsed_s: float = 0.0
    output: str = ""


# The harness that runs inside the sandbox. It reads two header lines (token, uid, fork guard, cwd; limits)
# and the program from stdin (a pipe: not seekable, so the program cannot re-read the token), drops
# privileges, sets the limits, and runs the program as __main__. The token is written only if the program
# returned.
_HARNESS = r"""
import os, resource, sys
def _harness():
    data = sys.stdin.buffer.read()
    header, limits, source = data.split(b"\n", 2)
    token, uid, guard, cwd = header.decode().split(" ", 3)
    try:
        if uid != "-":
            os.setgroups([])
            os.setresgid(int(uid), int(uid), int(uid))
            os.setresuid(int(uid), int(uid), int(uid))
        for item in limits.decode().split():
            name, soft, hard = item.split(":")
            resource.setrlimit(getattr(resource, "RLIMIT_" + name), (int(soft), int(hard)))
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.chdir(cwd)
    except OSError as exc:
        sys.stderr.write("sandbox setup failed: %r\n" % (exc,))
        os._exit(SETUP_STATUS)
    if guard == "1":
        pid = os.fork()
        if pid:
            status = os.waitpid(pid, 0)[1]
            os._exit(os.waitstatus_to_exitcode(status) % 256)
    token = token.encode()
    del header, limits, data
    code = compile(source, "<program>", "exec")
    del source
    exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
    sys.stdout.flush()
    sys.stderr.flush()
    os.write(1, b"\n" + token + b"\n")
    os._exit(0)
_harness()
""".replace("SETUP_STATUS", str(HARNESS_SETUP_STATUS))


def harness_header(token: str, uid: int | None, guard: bool, cwd: str, limits: Limits) -> bytes:
    """The two header lines the harness parses (plain split: importing json would cost ~10 ms a run)."""
    rlimits = " ".join(
        f"{name.removeprefix('RLIMIT_')}:{soft}:{hard}" for name, (soft, hard) in limits.rlimits().items()
    )
    return f"{token} {'-' if uid is None else uid} {int(guard)} {cwd}\n{rlimits}\n".encode()


def default_python() -> str:
    """The real interpreter behind this (possibly virtual-env) Python: programs need only its stdlib."""
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def python_roots(python: str) -> list[str]:
    """Directories the interpreter needs at run time (its install prefix), beyond the system trees."""
    exe = Path(python).resolve()
    prefix = Path(sys.base_prefix).resolve() if exe.is_relative_to(Path(sys.base_prefix).resolve()) else None
    roots = [prefix or exe.parent.parent]
    return [str(r) for r in roots if not any(r.is_relative_to(s) for s in (Path("/usr"), Path("/bin")))]


def _system_tree_args() -> list[str]:
    """Read-only binds of the system trees, reproducing merged-/usr symlinks (/lib -> usr/lib) as symlinks."""
    args: list[str] = []
    for top in ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    return args


@functools.cache
def bwrap_options(bwrap: str) -> frozenset[str]:
    """The options this bwrap knows (--perms, --size and --disable-userns are recent: 0.5 to 0.8)."""
    try:
        text = subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return frozenset()
    return frozenset(word for word in text.split() if word.startswith("--"))


def bwrap_argv(bwrap: str, python: str, limits: Limits, *, as_root: bool) -> list[str]:
    """The bwrap command line around `python -c HARNESS` (see the module docstring for the why)."""
    known = bwrap_options(bwrap)
    perms = lambda mode: ["--perms", mode] if "--perms" in known else []
    argv = [bwrap, "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
    argv += ["--die-with-parent", "--new-session"]
    if as_root:  # privileged bwrap; the harness needs exactly these two capabilities to drop to its slot uid
        argv += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        argv += ["--unshare-user", *(["--disable-userns"] if "--disable-userns" in known else [])]
    argv += _system_tree_args()
    for root in python_roots(python):
        # bwrap would create the bind target's parents with the host's modes (/root is 0700)
        for parent in list(reversed(Path(root).parents))[1:]:
            argv += [*perms("0755"), "--dir", str(parent)]
        argv += ["--ro-bind", root, root]
    argv += ["--proc", "/proc", "--dev", "/dev"]
    size = ["--size", str(limits.tmp_bytes)] if "--size" in known else []
    argv += [*perms("1777"), *size, "--tmpfs", "/tmp"]
    argv += ["--remount-ro", "/", "--chdir", "/tmp"]
    return [*argv, *interpreter_argv(python)]


def interpreter_argv(python: str) -> list[str]:
    """Isolated mode (no env vars, no user site), no site-packages, UTF-8 I/O, no .pyc writes."""
    return [python, "-I", "-S", "-B", "-X", "utf8", "-c", _HARNESS]


SANDBOX_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8", "TMPDIR": "/tmp"}


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


_SIGNAL_REASONS = {
    signal.SIGXCPU: "CPU time limit exceeded",
    signal.SIGXFSZ: "file/output size limit exceeded",
    signal.SIGKILL: "killed (SIGKILL: CPU hard limit or killed from outside)",
    signal.SIGSEGV: "crashed (SIGSEGV)",
}


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def classify(
    returncode: int | None,
    output_head: str,
    output_tail: str,
    token: str,
    *,
    sandboxed: bool,
    timeout_s: float,
) -> tuple[bool, str]:
    """Pass/fail and a short reason from how the process ended and what it printed."""
    if returncode is None:
        return False, f"timeout: still running after {timeout_s:.1f}s (killed)"
    if returncode == 0:
        if token in output_tail:
            return True, "passed"
        return False, "exited with status 0 before the tests finished (no completion token)"
    signum = -returncode if returncode < 0 else (returncode - 128 if sandboxed and returncode > 128 else 0)
    if signum > 0:
        return False, _SIGNAL_REASONS.get(signum, f"killed by {_signal_name(signum)}")
    if sandboxed and returncode == BWRAP_SETUP_STATUS and output_head.startswith("bwrap:"):
        return False, f"sandbox error: {_last_line(output_head)}"
    if returncode == HARNESS_SETUP_STATUS and "sandbox setup failed" in output_head:
        return False, f"sandbox error: {_last_line(output_head)}"
    detail = _last_line(output_tail) or "no output"
    return False, f"exit status {returncode}: {detail}"


def _output_file() -> Any:
    """Where the program's stdout+stderr go: a memfd (no disk, no pipe to drain), else a temporary file.
    A file rather than a pipe bounds what a chatty program costs us: RLIMIT_FSIZE stops it at the limit."""
    if hasattr(os, "memfd_create"):
        return open(os.memfd_create("sandbox-output", os.MFD_CLOEXEC), "w+b")
    return tempfile.TemporaryFile()


def _read_output(handle: Any) -> tuple[str, str, int]:
    """Head, tail and size of the program's output file (bounded reads, whatever it printed)."""
    size = handle.seek(0, os.SEEK_END)
    handle.seek(0)
    head = handle.read(OUTPUT_HEAD_BYTES)
    handle.seek(max(0, size - OUTPUT_TAIL_BYTES))
    tail = handle.read(OUTPUT_TAIL_BYTES)
    return head.decode("utf-8", "replace"), tail.decode("utf-8", "replace"), size


def feed_and_wait(proc: subprocess.Popen, payload: bytes, deadline: float) -> bool:
    """Write `payload` to the child's stdin and wait for it to exit; False if `deadline` passed first.

    Why not `communicate(timeout=...)`: with a timeout, Popen.wait polls with sleeps of up to 50 ms, which
    alone would cap us near 20 programs/s per worker. A pidfd wakes us the moment the child exits.
    """
    if not hasattr(os, "pidfd_open"):
        try:
            proc.communicate(payload, timeout=max(0.0, deadline - time.monotonic()))
            return True
        except subprocess.TimeoutExpired:
            return False
    assert proc.stdin is not None
    pidfd = os.pidfd_open(proc.pid)
    stdin = proc.stdin.fileno()
    os.set_blocking(stdin, False)
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    poller.register(stdin, select.POLLOUT)
    pending = memoryview(payload)
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            for fd, event in poller.poll(remaining * 1000):
                if fd == pidfd:  # exited; left unreaped for _kill_group
                    return True
                if event & select.POLLOUT:
                    try:
                        pending = pending[os.write(stdin, pending[:65536]) :]
                    except BlockingIOError:
                        continue
                    except BrokenPipeError:
                        pending = pending[:0]
                if not pending or event & (select.POLLERR | select.POLLHUP):
                    poller.unregister(stdin)
                    proc.stdin.close()
    finally:
        os.close(pidfd)
        if not proc.stdin.closed:
            proc.stdin.close()


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the program's whole process group, then reap it (killing first: its pid cannot have been reused
    while it is an unreaped zombie); the pid namespace takes any descendants that left the group."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _warn_unsandboxed(why: str, drop_uid: bool) -> None:
    global _WARNED_UNSANDBOXED
    if _WARNED_UNSANDBOXED:
        return
    _WARNED_UNSANDBOXED = True
    who = "as an unprivileged uid" if drop_uid else "as your user (they can signal all of your processes)"
    logger.warning(
        "CODE IS NOT SANDBOXED: %s. Programs run %s as plain child processes with rlimits only: they can "
        "reach the network and any world-writable host path. Install bubblewrap (apt-get install "
        "bubblewrap) on a host that allows namespaces before running untrusted code.",
        why,
        who,
    )


# A program the probe must pass: it proves the sandbox starts and the stdlib is readable after the uid drop.
_PROBE = "import math, typing\nassert math.gcd(4, 6) == 2\n"


@dataclasses.dataclass(frozen=True)
class Launch:
    """How programs start: inside bwrap (its path) or not (None), and whether to drop to the slot uid."""

    bwrap: str | None
    drop_uid: bool


class CodeExecutor:
    """A pool that runs Python programs in sandboxed subprocesses, in parallel.

    isolation: "auto" (bwrap if it works here, else the rlimits-only fallback with a warning), "bwrap"
    (required: raise if it does not work) or "none" (the fallback, e.g. for tests of the fallback itself).
    workers: concurrent programs (default: the CPU count; a sandboxed run is CPU-bound, ~20 ms of CPU for a
    HumanEval program, so more workers than cores only helps while other jobs compete for the cores).
    uid_base: first slot uid (as root).
    """

    def __init__(
        self,
        *,
        workers: int | None = None,
        limits: Limits | None = None,
        isolation: str = "auto",
        python: str | None = None,
        uid_base: int | None = None,
    ) -> None:
        if isolation not in ("auto", "bwrap", "none"):
            raise ValueError(f"isolation must be auto, bwrap or none, not {isolation!r}")
        self.workers = workers or os.cpu_count() or 1
        self.limits = limits or Limits()
        self.python = python or default_python()
        self.as_root = os.geteuid() == 0
        if uid_base is None:
            uid_base = int(os.environ.get("RLVR_SANDBOX_UID_BASE", DEFAULT_UID_BASE))
        with _SLOT_LOCK:  # slots are unique within the process, so two executors never share a uid
            slots = [next(_SLOT_COUNTER) % MAX_SLOTS for _ in range(self.workers)]
        self._free_uids = [uid_base + s for s in slots]
        self._uid_lock = threading.Lock()
        self._pool = cf.ThreadPoolExecutor(self.workers, thread_name_prefix="sandbox")
        self.launch = self._choose_launch(isolation)

    @property
    def mode(self) -> str:
        """ "bwrap" when programs are sandboxed, "none" for the rlimits-only fallback."""
        return "bwrap" if self.launch.bwrap else "none"

    # -- set-up -----------------------------------------------------------------------------------------

    def _probe(self, launch: Launch) -> str | None:
        """None if the probe program passes with `launch` (cached per interpreter), else why it failed."""
        key = (self.python, launch)
        with _MODE_LOCK:
            if key not in _MODE_CACHE:
                result = self._run_one(_PROBE, None, launch, self.limits)
                _MODE_CACHE[key] = "" if result.passed else result.reason
            return _MODE_CACHE[key] or None

    def _choose_launch(self, isolation: str) -> Launch:
        """bwrap if a probe passes inside it; else the fallback, which as root must drop to the slot uid.

        Untrusted code never runs as root outside bwrap: root ignores RLIMIT_NPROC (a fork bomb takes the
        machine down) and `os.kill(-1, 9)` as root kills every process on the host. If the unprivileged uid
        cannot run this interpreter (e.g. it lives under /root, mode 0700) we refuse instead.
        """
        why = "isolation='none' was requested"
        if isolation != "none":
            bwrap = shutil.which("bwrap")
            why = "bubblewrap (bwrap) is not installed"
            if bwrap:
                launch = Launch(bwrap, drop_uid=self.as_root)
                failure = self._probe(launch)
                if failure is None:
                    return launch
                why = f"bwrap cannot create a sandbox here (probe: {failure})"
            if isolation == "bwrap":
                raise RuntimeError(why)
        launch = Launch(None, drop_uid=self.as_root)
        if launch.drop_uid:
            failure = self._probe(launch)
            if failure is not None:
                raise RuntimeError(
                    f"cannot run untrusted code: {why}, and as root without a sandbox programs must run as "
                    f"an unprivileged uid, which cannot use {self.python} here ({failure}). Install "
                    "bubblewrap, or use a Python installed where other users can read it (e.g. /usr, /opt)."
                )
        _warn_unsandboxed(why, launch.drop_uid)
        return launch

    # -- running ----------------------------------------------------------------------------------------

    def _run_one(self, source: str, deadline: float | None, launch: Launch, limits: Limits) -> ExecResult:
        """Run one program to completion or timeout; never raises for anything the program does."""
        start = time.monotonic()
        budget = limits.timeout_s if deadline is None else min(limits.timeout_s, deadline - start)
        if budget <= 0:
            return ExecResult(False, "batch timeout: not started before the batch deadline")
        with self._uid_lock:
            uid = self._free_uids.pop()
        try:
            return self._spawn(source, budget, launch, limits, uid, start)
        finally:
            with self._uid_lock:
                self._free_uids.append(uid)

    def _spawn(
        self, source: str, budget: float, launch: Launch, limits: Limits, uid: int, start: float
    ) -> ExecResult:
        token = secrets.token_hex(16)
        workdir = None
        if launch.bwrap:
            argv, cwd = bwrap_argv(launch.bwrap, self.python, limits, as_root=self.as_root), "/tmp"
        else:
            workdir = tempfile.mkdtemp(prefix="rlvr-sandbox-")
            if launch.drop_uid:
                os.chown(workdir, uid, uid)
            argv, cwd = interpreter_argv(self.python), workdir
        # Unsandboxed and not dropping to another uid: fork once more so the scorer is not getppid().
        guard = not launch.bwrap and not launch.drop_uid
        header = harness_header(token, uid if launch.drop_uid else None, guard, cwd, limits)
        payload = header + source.encode("utf-8", "surrogatepass")
        try:
            with _output_file() as out:
                try:
                    proc = subprocess.Popen(
                        argv,
                        stdin=subprocess.PIPE,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        env=SANDBOX_ENV,
                        cwd=workdir or "/",
                        start_new_session=True,
                    )
                except OSError as exc:
                    return ExecResult(False, f"sandbox error: cannot start {argv[0]}: {exc}")
                try:
                    exited = feed_and_wait(proc, payload, start + budget)
                finally:
                    _kill_group(proc)
                returncode = proc.returncode if exited else None
                head, tail, size = _read_output(out)
        finally:
            if workdir:
                shutil.rmtree(workdir, ignore_errors=True)
        elapsed = time.monotonic() - start
        sandboxed = launch.bwrap is not None
        passed, reason = classify(returncode, head, tail, token, sandboxed=sandboxed, timeout_s=elapsed)
        if not passed and size >= limits.fsize_bytes:
            reason = f"output size limit exceeded ({limits.fsize_bytes} bytes); {reason}"
        return ExecResult(passed, reason, returncode, elapsed, head.replace(token, "<token>"))

    def submit(
        self, programs: Sequence[str], *, limits: Limits | None = None, batch_timeout_s: float | None = None
    ) -> cf.Future[list[ExecResult]]:
        """Queue a batch; the Future resolves to one ExecResult per program, in order.

        batch_timeout_s bounds the whole batch from now: programs still queued at the deadline fail without
        running, running ones are killed at it. Per-program limits default to the executor's.
        """
        limits = limits or self.limits
        deadline = None if batch_timeout_s is None else time.monotonic() + batch_timeout_s
        futures = [self._pool.submit(self._run_one, p, deadline, self.launch, limits) for p in programs]
        return gather(futures)

    def run(
        self, programs: Sequence[str], *, limits: Limits | None = None, batch_timeout_s: float | None = None
    ) -> list[ExecResult]:
        """Blocking `submit`."""
        return self.submit(programs, limits=limits, batch_timeout_s=batch_timeout_s).result()

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> CodeExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def gather(futures: Sequence[cf.Future]) -> cf.Future[list[Any]]:
    """One Future for many: resolves to their results in order, or to the first exception raised."""
    batch: cf.Future[list[Any]] = cf.Future()
    if not futures:
        batch.set_result([])
        return batch
    remaining = [len(futures)]
    lock = threading.Lock()

    def done(_: cf.Future) -> None:
        with lock:
            remaining[0] -= 1
            last = remaining[0] == 0
        if last:
            errors = [f.exception() for f in futures if f.exception() is not None]
            if errors:
                batch.set_exception(errors[0])
            else:
                batch.set_result([f.result() for f in futures])

    for future in futures:
        future.add_done_callback(done)
    return batch


_DEFAULT_EXECUTOR: CodeExecutor | None = None
_DEFAULT_LOCK = threading.Lock()


def default_executor() -> CodeExecutor:
    """The process-wide executor code rewards use unless given one (created on first use)."""
    global _DEFAULT_EXECUTOR
    with _DEFAULT_LOCK:
        if _DEFAULT_EXECUTOR is None:
            _DEFAULT_EXECUTOR = CodeExecutor()
        return _DEFAULT_EXECUTOR


_SCORING_POOL = cf.ThreadPoolExecutor(4, thread_name_prefix="reward")


def score_async(
    reward: str | Callable[..., Any],
    completions: Sequence[str],
    samples: Sequence[Mapping[str, Any]],
    **options: Any,
) -> cf.Future:
    """Score a batch in the background: `reward` is a registered name or a reward function.

    Returns a Future of its RewardResult, so a trainer can launch scoring for step t and keep the device
    busy. Code rewards spend their time in sandbox subprocesses (the GIL is free); pure-Python rewards share
    the GIL with the caller but still overlap with device compute, which releases it.
    """
    if isinstance(reward, str):
        from rlvr_jax.rewards.base import get_reward

        reward = get_reward(reward)
    return _SCORING_POOL.submit(reward, list(completions), list(samples), **options)
