"""Run untrusted Python programs (model-written code), each in its own sandboxed process, and check them
against trusted tests in another process.

Why this shape: a code reward executes whatever the policy wrote, thousands of times per training step, on
the same host as the trainer. A program must not be able to reach the network, write anything of the host,
exhaust its memory / processes / CPU, outlive its time, kill the scorer, or decide its own verdict. Each
program therefore gets a fresh process under bubblewrap:

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

The verdict (`CodeExecutor.run_tests`, what the code rewards use): the tests do NOT run in the program's
interpreter. Anything that runs there -- a completion token, an exit status, the test function, the
builtins, `==` on the values it returns -- belongs to the program: it can walk the stack to read a
harness's secrets, return an object whose `__eq__` is always True, patch `AssertionError`, or exit 0 from
a destructor. So every checked program runs as two processes, each in its own sandbox as above:

- the program's process (untrusted, `harness.serve`) loads the program (plus the data set's setup code,
  which may build objects of the program's classes) and then only answers calls: "call f with these
  arguments" arrives on a pipe, and the answer goes back as one line of Python literal text holding the
  return value as plain data (None, bool, int, float, complex, str, bytes and lists, tuples, dicts, sets
  of them), the exception it raised, or the name of a type that is not plain data;
- the checker's process (trusted, `harness.check`, a separate uid as root) runs the data set's code (the
  HumanEval prompt's helpers such as `poly` or `encode_cyclic` come from the data set, not from the
  completion) and its tests, in which the program's functions are proxies. Each answer is parsed by the
  checker (the interpreter's parser, no evaluation; only literals of those types are accepted) into fresh
  objects of its own builtin types, so every comparison of the tests is between real values and no object
  of the model's ever runs code in the checker. The verdict goes to a descriptor only the checker holds:
  pass = the tests ran to their end, at least one check (assert) ran, the program was called at least
  once, and it never ended early, answered garbage or returned a non-plain value.

The program's process never sees the expected values either: they stay in the checker. Why a second
process rather than the scorer itself: the data set's tests are trusted, but they still run the loops
and the `random` calls of HumanEval and could be slow; in a subprocess they get the same limits and the
same timeout, and the trainer's interpreter (its GIL, its `random` state) is left alone. The price is a
second interpreter per program (Python start-up and bwrap; the checker runs a HumanEval prompt only for
the 4 tests that call its helpers, so it rarely pays for `typing`): the 164 HumanEval canonical solutions
took 1.3-1.6x as long as with one process per program on the same (busy, 2-core) machine. Calls cost a
pipe round trip each (tens of microseconds). See docs/threat-model.md for what this does and does not stop.

`CodeExecutor.run` still runs a single program and reports whether it ran to its end (a random token the
harness writes after the last statement). That is the program's own say-so -- a hostile program can read
the token from the harness's frames -- so it is for trusted programs and sandbox checks, never a reward.

Where bwrap is missing or cannot create namespaces (a Colab VM, a container without user namespaces) the
executor falls back to plain child processes with the same rlimits and logs a loud warning once: that is
NOT a sandbox (network and world-writable host paths stay reachable). As root the fallback still drops to
the slot uids, and refuses to run at all if they cannot use the interpreter (say, a pyenv Python under
/root): root ignores RLIMIT_NPROC and `os.kill(-1, 9)` as root kills every process on the machine. As a
normal user the fallback's checker makes itself undumpable (no ptrace or /proc access from the program,
which has the same uid).

Programs run on a pool of threads, each driving one sandboxed run (parallelism = CPU count by default), so
`submit_tests` returns a Future and the trainer can overlap scoring with device work. `score_async` does the
same for any registered reward.

Cost: a HumanEval program takes ~20 ms of CPU in its process, nearly all of it Python start-up (~10 ms)
and the program's own imports (`typing` alone ~8 ms); its checker about as much less the imports; bwrap
adds a few ms to each. The harness arrives as bytecode when the sandbox's interpreter is the scorer's
(compiling it would cost ~3 ms per process). A fork-server forking programs from a warm interpreter
would save most of that, but would put several programs into one sandbox, so we don't.
"""

from __future__ import annotations

import ast
import concurrent.futures as cf
import contextlib
import dataclasses
import functools
import itertools
import logging
import marshal
import math
import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rlvr_jax.rewards import harness

logger = logging.getLogger(__name__)

# First uid of the per-slot unprivileged identities used when the scorer runs as root. Below 65536 so it is
# mapped in containers whose user namespace only maps 64 Ki ids; outside the 1000-59999 range of login
# users. Override with RLVR_SANDBOX_UID_BASE if it collides with something on your hosts.
DEFAULT_UID_BASE = 60000
MAX_SLOTS = 2048  # program uids uid_base + [0, MAX_SLOTS), checker uids the next MAX_SLOTS
OUTPUT_HEAD_BYTES = 2048  # of a failing program's output kept for the reason / debugging
OUTPUT_TAIL_BYTES = 4096  # where the completion token must appear
BWRAP_SETUP_STATUS = 1  # bwrap's own exit status when it fails to set the sandbox up
HARNESS_SETUP_STATUS = harness.SETUP_STATUS  # when dropping privileges / setting limits fails
VERDICT_BYTES = 8192  # of the checker's verdict read back

_SLOT_COUNTER = itertools.count()
_SLOT_LOCK = threading.Lock()
_WARNED_UNSANDBOXED = False
_MODE_CACHE: dict[tuple[str, Any], str] = {}
_MODE_LOCK = threading.Lock()
_PARSE_LOCK = threading.Lock()


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
    """Outcome of one run. `run_tests`: `passed` is the trusted checker's verdict, `reason` says why, and
    `returncode` is the checker's. `run`: `passed` only if the program exited 0 after printing the
    completion token. `output`: the head of what the program printed."""

    passed: bool
    reason: str
    returncode: int | None = None
    elapsed_s: float = 0.0
    output: str = ""


# The code every sandboxed interpreter runs (`python -c`): harness.py itself, whose `main()` reads a
# marshal'ed configuration from stdin and plays the role it names (see harness.py).
# What every sandboxed interpreter runs (`python -c`): read (cache tag, harness bytecode, harness source,
# configuration) from stdin, run the harness from its bytecode when this interpreter's cache tag is ours
# (compiling it would cost ~3 ms a run), else from source, then `main(configuration)`.
_HARNESS = (
    "import marshal, sys\n"
    "tag, code, source, config = marshal.loads(sys.stdin.buffer.read())\n"
    "same = tag == sys.implementation.cache_tag\n"
    "exec(marshal.loads(code) if same else compile(source, 'harness', 'exec'))\n"
    "main(config)\n"
)
_HARNESS_SOURCE = Path(harness.__file__).read_text(encoding="utf-8")
_HARNESS_CODE = marshal.dumps(compile(_HARNESS_SOURCE, "harness", "exec", optimize=2))
# Checker uids are `uid_base + MAX_SLOTS + slot`: never the uid of any program.
_CHECKER_UID_OFFSET = MAX_SLOTS


def harness_payload(
    role: str, uid: int | None, cwd: str, limits: Limits, *, guard: bool = False, **fields: Any
) -> bytes:
    """What the interpreter reads from stdin: the harness (see `_HARNESS`), then its role, identity,
    limits and the role's own fields."""
    rlimits = [(name, soft, hard) for name, (soft, hard) in limits.rlimits().items()]
    config = {"role": role, "uid": uid, "guard": guard, "cwd": cwd, "limits": rlimits, **fields}
    return marshal.dumps((sys.implementation.cache_tag, _HARNESS_CODE, _HARNESS_SOURCE, config))


def parse_quietly(source: str) -> ast.Module:
    """`ast.parse` without the warnings data-set code triggers (invalid escape sequences in MBPP's regexes
    would otherwise fill the log each time a reward reads a sample).

    One parse at a time: rewards are scored on threads (`score_async`), and CPython 3.11 keeps the AST
    constructor's recursion depth in per-interpreter state, so two threads parsing at once can fail with
    "SystemError: AST constructor recursion depth mismatch" (python/cpython#106905); `catch_warnings`
    changes process-wide state too. Parsing a completion takes well under a millisecond.

    The lock covers our parses only: a compile elsewhere in the process (an import, pytest's assertion
    rewriting) can still race one, which the test suite saw once on 3.11.7. Each parse starts the depth
    afresh, so a parse that fails that way is tried again (at most twice more) before the error stands."""
    for _ in range(2):
        try:
            return _parse_locked(source)
        except SystemError as e:
            if "recursion depth mismatch" not in str(e):
                raise
    return _parse_locked(source)


def _parse_locked(source: str) -> ast.Module:
    with _PARSE_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return ast.parse(source)


@functools.lru_cache(maxsize=4096)
def instrument_tests(tests: str) -> str:
    """The tests with `__rlvr_check__(first, last)` in front of every assert statement, on the assert's
    own line (so line numbers stay those of the data set): the checker counts the checks that ran and
    names the one that failed. Raises SyntaxError for tests that do not parse."""
    asserts = [node for node in ast.walk(parse_quietly(tests)) if isinstance(node, ast.Assert)]
    # lines as the tokenizer counts them (str.splitlines would also split at \f or \u2028 in a literal)
    lines = re.findall(r".*?(?:\r\n|\r|\n)|.+", tests, re.DOTALL)
    for node in sorted(asserts, key=lambda n: (n.lineno, n.col_offset), reverse=True):
        line = lines[node.lineno - 1]
        col = len(line.encode("utf-8")[: node.col_offset].decode("utf-8"))  # col_offset counts bytes
        call = f"__rlvr_check__({node.lineno}, {node.end_lineno}); "
        lines[node.lineno - 1] = line[:col] + call + line[col:]
    return "".join(lines)


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


def ended_how(returncode: int, output_head: str, output_tail: str, *, sandboxed: bool) -> str:
    """How a process that did not exit 0 ended: a signal, a sandbox set-up error, or its status and the
    last line it printed (a traceback's last line names the exception)."""
    signum = -returncode if returncode < 0 else (returncode - 128 if sandboxed and returncode > 128 else 0)
    if signum > 0:
        return _SIGNAL_REASONS.get(signum, f"killed by {_signal_name(signum)}")
    if sandboxed and returncode == BWRAP_SETUP_STATUS and output_head.startswith("bwrap:"):
        return f"sandbox error: {_last_line(output_head)}"
    if returncode == HARNESS_SETUP_STATUS and "sandbox setup failed" in output_head:
        return f"sandbox error: {_last_line(output_head)}"
    detail = _last_line(output_tail) or "no output"
    return f"exit status {returncode}: {detail}"


def classify(
    returncode: int | None,
    output_head: str,
    output_tail: str,
    token: str,
    *,
    sandboxed: bool,
    timeout_s: float,
) -> tuple[bool, str]:
    """Pass/fail and a short reason for `run`: how the process ended and whether it printed the token."""
    if returncode is None:
        return False, f"timeout: still running after {timeout_s:.1f}s (killed)"
    if returncode == 0:
        if token in output_tail:
            return True, "passed"
        return False, "exited with status 0 before the tests finished (no completion token)"
    return False, ended_how(returncode, output_head, output_tail, sandboxed=sandboxed)


def _output_file() -> Any:
    """Where a process's stdout+stderr go: a memfd (no disk, no pipe to drain), else a temporary file.
    A file rather than a pipe bounds what a chatty program costs us: RLIMIT_FSIZE stops it at the limit."""
    if hasattr(os, "memfd_create"):
        return open(os.memfd_create("sandbox-output", os.MFD_CLOEXEC), "w+b")
    return tempfile.TemporaryFile()


def _read_output(handle: Any) -> tuple[str, str, int]:
    """Head, tail and size of a process's output file (bounded reads, whatever it printed)."""
    size = handle.seek(0, os.SEEK_END)
    handle.seek(0)
    head = handle.read(OUTPUT_HEAD_BYTES)
    handle.seek(max(0, size - OUTPUT_TAIL_BYTES))
    tail = handle.read(OUTPUT_TAIL_BYTES)
    return head.decode("utf-8", "replace"), tail.decode("utf-8", "replace"), size


def feed_and_wait(proc: subprocess.Popen, payload: bytes, deadline: float) -> bool:
    """Write `payload` to the child's stdin and wait for it to exit; False if `deadline` passed first."""
    return feed_all_and_wait([(proc, payload)], deadline)


def feed_all_and_wait(feeds: Sequence[tuple[subprocess.Popen, bytes]], deadline: float) -> bool:
    """Write each payload to its child's stdin and wait for the FIRST child to exit; False if `deadline`
    passed first. The others are left running (the caller kills them).

    Why not `communicate(timeout=...)`: with a timeout, Popen.wait polls with sleeps of up to 50 ms, which
    alone would cap us near 20 programs/s per worker. A pidfd wakes us the moment the child exits.
    """
    if not hasattr(os, "pidfd_open"):
        for proc, payload in feeds:
            assert proc.stdin is not None
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.write(payload)
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.close()
        try:
            feeds[0][0].wait(timeout=max(0.0, deadline - time.monotonic()))
            return True
        except subprocess.TimeoutExpired:
            return False
    pidfd = os.pidfd_open(feeds[0][0].pid)
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    pending: dict[int, tuple[Any, memoryview]] = {}
    for proc, payload in feeds:
        assert proc.stdin is not None
        stdin = proc.stdin.fileno()
        os.set_blocking(stdin, False)
        poller.register(stdin, select.POLLOUT)
        pending[stdin] = (proc.stdin, memoryview(payload))
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            for fd, event in poller.poll(remaining * 1000):
                if fd == pidfd:  # exited; left unreaped for _kill_group
                    return True
                handle, data = pending[fd]
                if event & select.POLLOUT:
                    try:
                        data = data[os.write(fd, data[:65536]) :]
                    except BlockingIOError:
                        continue
                    except BrokenPipeError:
                        data = data[:0]
                    pending[fd] = (handle, data)
                if not data or event & (select.POLLERR | select.POLLHUP):
                    poller.unregister(fd)
                    handle.close()
    finally:
        os.close(pidfd)
        for handle, _ in pending.values():
            if not handle.closed:
                handle.close()


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the program's whole process group, then reap it (killing first: its pid cannot have been reused
    while it is an unreaped zombie); the pid namespace takes any descendants that left the group."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _wait_briefly(proc: subprocess.Popen, seconds: float) -> int | None:
    """The child's exit status if it exits within `seconds` (unreaped, for _kill_group), else None."""
    if not hasattr(os, "waitid"):
        return proc.poll()
    pidfd = os.pidfd_open(proc.pid) if hasattr(os, "pidfd_open") else None
    try:
        if pidfd is not None:
            select.select([pidfd], [], [], seconds)
        info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return proc.returncode
    finally:
        if pidfd is not None:
            os.close(pidfd)
    if info is None:
        return None
    return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status


def _warn_unsandboxed(why: str, drop_uid: bool) -> None:
    global _WARNED_UNSANDBOXED
    if _WARNED_UNSANDBOXED:
        return
    _WARNED_UNSANDBOXED = True
    who = "as unprivileged uids" if drop_uid else "as your user (they can signal all of your processes)"
    logger.warning(
        "CODE IS NOT SANDBOXED: %s. Programs run %s as plain child processes with rlimits only: they can "
        "reach the network and any world-writable host path. Install bubblewrap (apt-get install "
        "bubblewrap) on a host that allows namespaces before running untrusted code.",
        why,
        who,
    )


@dataclasses.dataclass(frozen=True)
class ProgramTests:
    """A model's program and the data set's tests for it, run in two processes (see the module docstring).

    program: the untrusted source (HumanEval: prompt + completion; MBPP: the completion).
    tests: trusted test code, run in the checker; an `assert` statement is one check.
    remote: the names the tests take from the program (its functions, or objects `setup` made); in the
      checker they are proxies that call the program's process.
    setup: data set code run in the program's process after the program (MBPP's test_setup_code, which
      builds objects of the program's classes); the tests reach what it defines through `remote` names.
    trusted: data set code run in the checker before the tests (HumanEval's prompt: imports and helpers
      such as `poly` that the tests call). Its definitions of `remote` names are replaced by the proxies.
    """

    program: str
    tests: str
    remote: tuple[str, ...]
    setup: str = ""
    trusted: str = ""


# What the probe must pass: both roles start, the pipes work and the stdlib is readable after the uid drop.
_PROBE = ProgramTests(
    program="import math, typing\n\ndef f(x):\n    return math.gcd(x, 6)\n",
    tests="assert f(4) == 2\n",
    remote=("f",),
)


@dataclasses.dataclass(frozen=True)
class Launch:
    """How programs start: inside bwrap (its path) or not (None), and whether to drop to the slot uid."""

    bwrap: str | None
    drop_uid: bool


def _checked_result(
    exited: bool,
    checker_status: int | None,
    program_status: int | None,
    verdict: bytes,
    out_program: Any,
    out_checker: Any,
    elapsed: float,
    limits: Limits,
    sandboxed: bool,
) -> ExecResult:
    """The result of a checked run, from the trusted checker's verdict alone, with the reason a user reads:
    a timeout, a checker that gave no verdict, or the verdict and how the program ended."""
    head_p, tail_p, size_p = _read_output(out_program)
    if not exited:
        reason = f"timeout: still running after {elapsed:.1f}s (killed)"
        if size_p >= limits.fsize_bytes:
            reason = f"output size limit exceeded ({limits.fsize_bytes} bytes); {reason}"
        return ExecResult(False, reason, None, elapsed, head_p)
    found = _parse_verdict(verdict)
    if checker_status != 0 or found is None:
        head_c, tail_c, _ = _read_output(out_checker)
        how = ended_how(checker_status or 0, head_c, tail_c, sandboxed=sandboxed)
        if checker_status == 0:
            how = "exit status 0 without a verdict"
        return ExecResult(False, f"checker error: {how}", checker_status, elapsed, head_p)
    passed, reason = found["passed"] is True, str(found["reason"])
    if found.get("ended"):
        if program_status is None:
            how = "still running"
        elif program_status == 0:
            how = "exit status 0"
        else:
            how = ended_how(program_status, head_p, tail_p, sandboxed=sandboxed)
        reason = f"{reason} ({how})"
    if not passed and size_p >= limits.fsize_bytes:
        reason = f"output size limit exceeded ({limits.fsize_bytes} bytes); {reason}"
    return ExecResult(passed, reason, checker_status, elapsed, head_p)


class CodeExecutor:
    """A pool that runs Python programs in sandboxed subprocesses, in parallel.

    isolation: "auto" (bwrap if it works here, else the rlimits-only fallback with a warning), "bwrap"
    (required: raise if it does not work) or "none" (the fallback, e.g. for tests of the fallback itself).
    workers: concurrent runs (default: the CPU count; a sandboxed run is CPU-bound, ~40 ms of CPU for a
    checked HumanEval program, so more workers than cores only helps while other jobs compete for them).
    uid_base: first slot uid (as root): programs get `uid_base + slot`, checkers `uid_base + MAX_SLOTS +
    slot`.
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
        self.uid_base = uid_base
        with _SLOT_LOCK:  # slots are unique within the process, so two executors never share a uid
            self._free_slots = [next(_SLOT_COUNTER) % MAX_SLOTS for _ in range(self.workers)]
        self._slot_lock = threading.Lock()
        self._pool = cf.ThreadPoolExecutor(self.workers, thread_name_prefix="sandbox")
        self.launch = self._choose_launch(isolation)

    @property
    def mode(self) -> str:
        """ "bwrap" when programs are sandboxed, "none" for the rlimits-only fallback."""
        return "bwrap" if self.launch.bwrap else "none"

    # -- set-up -----------------------------------------------------------------------------------------

    def _probe(self, launch: Launch) -> str | None:
        """None if the probe passes with `launch` (cached per interpreter), else why it failed."""
        key = (self.python, launch)
        with _MODE_LOCK:
            if key not in _MODE_CACHE:
                result = self._in_slot(self._check_one, _PROBE, None, launch, self.limits)
                _MODE_CACHE[key] = "" if result.passed else result.reason
            return _MODE_CACHE[key] or None

    def _choose_launch(self, isolation: str) -> Launch:
        """bwrap if a probe passes inside it; else the fallback, which as root must drop to the slot uids.

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

    def _in_slot(
        self, fn: Callable[..., ExecResult], job: Any, deadline: float | None, launch: Launch, limits: Limits
    ) -> ExecResult:
        """Run `fn(job, slot, budget, launch, limits, start)` holding a pool slot (its uids); never raises
        for anything the program does."""
        start = time.monotonic()
        budget = limits.timeout_s if deadline is None else min(limits.timeout_s, deadline - start)
        if budget <= 0:
            return ExecResult(False, "batch timeout: not started before the batch deadline")
        with self._slot_lock:
            slot = self._free_slots.pop()
        try:
            return fn(job, slot, budget, launch, limits, start)
        finally:
            with self._slot_lock:
                self._free_slots.append(slot)

    def _process(
        self, launch: Launch, limits: Limits, uid: int, stack: contextlib.ExitStack
    ) -> tuple[list[str], str, str | None, int | None]:
        """(argv, cwd inside, host cwd, uid to drop to) for one sandboxed interpreter; a fallback process
        gets a private working directory (removed when `stack` closes)."""
        drop = uid if launch.drop_uid else None
        if launch.bwrap:
            return bwrap_argv(launch.bwrap, self.python, limits, as_root=self.as_root), "/tmp", None, drop
        workdir = tempfile.mkdtemp(prefix="rlvr-sandbox-")
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        if launch.drop_uid:
            os.chown(workdir, uid, uid)
        return interpreter_argv(self.python), workdir, workdir, drop

    @staticmethod
    def _popen(
        argv: list[str], out: Any, host_cwd: str | None, pass_fds: Sequence[int] = ()
    ) -> subprocess.Popen:
        return subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=SANDBOX_ENV,
            cwd=host_cwd or "/",
            start_new_session=True,
            pass_fds=tuple(pass_fds),
        )

    def _run_program(
        self, source: str, slot: int, budget: float, launch: Launch, limits: Limits, start: float
    ) -> ExecResult:
        """One program as __main__, passing if it exited 0 after writing the completion token."""
        token = secrets.token_hex(16)
        with contextlib.ExitStack() as stack:
            argv, cwd, host_cwd, uid = self._process(launch, limits, self.uid_base + slot, stack)
            # Unsandboxed and not dropping to another uid: fork once more so the scorer is not getppid().
            guard = not launch.bwrap and not launch.drop_uid
            payload = harness_payload("program", uid, cwd, limits, guard=guard, token=token, source=source)
            out = stack.enter_context(_output_file())
            try:
                proc = self._popen(argv, out, host_cwd)
            except OSError as exc:
                return ExecResult(False, f"sandbox error: cannot start {argv[0]}: {exc}")
            try:
                exited = feed_and_wait(proc, payload, start + budget)
            finally:
                _kill_group(proc)
            returncode = proc.returncode if exited else None
            head, tail, size = _read_output(out)
        elapsed = time.monotonic() - start
        sandboxed = launch.bwrap is not None
        passed, reason = classify(returncode, head, tail, token, sandboxed=sandboxed, timeout_s=elapsed)
        if not passed and size >= limits.fsize_bytes:
            reason = f"output size limit exceeded ({limits.fsize_bytes} bytes); {reason}"
        return ExecResult(passed, reason, returncode, elapsed, head.replace(token, "<token>"))

    def _check_one(
        self, job: ProgramTests, slot: int, budget: float, launch: Launch, limits: Limits, start: float
    ) -> ExecResult:
        """The program in one sandboxed process, the tests in another; the checker's verdict decides."""
        try:
            tests = instrument_tests(job.tests)
        except SyntaxError as exc:
            return ExecResult(False, f"checker error: the tests do not parse ({exc.msg}, line {exc.lineno})")
        sandboxed = launch.bwrap is not None
        with contextlib.ExitStack() as stack:
            argv_p, cwd_p, host_p, uid_p = self._process(launch, limits, self.uid_base + slot, stack)
            checker_uid = self.uid_base + _CHECKER_UID_OFFSET + slot
            argv_c, cwd_c, host_c, uid_c = self._process(launch, limits, checker_uid, stack)
            out_p = stack.enter_context(_output_file())
            out_c = stack.enter_context(_output_file())
            verdict = stack.enter_context(_output_file())
            requests_r, requests_w = os.pipe()
            responses_r, responses_w = os.pipe()
            same_uid = not launch.bwrap and not launch.drop_uid
            program_payload = harness_payload(
                "serve",
                uid_p,
                cwd_p,
                limits,
                guard=same_uid,
                requests=requests_r,
                responses=responses_w,
                source=job.program,
                setup=job.setup,
            )
            checker_payload = harness_payload(
                "check",
                uid_c,
                cwd_c,
                limits,
                undumpable=same_uid,
                requests=requests_w,
                responses=responses_r,
                verdict=verdict.fileno(),
                trusted=job.trusted,
                tests=tests,
                remote=list(job.remote),
            )
            started: list[subprocess.Popen] = []
            try:
                started.append(
                    self._popen(argv_c, out_c, host_c, (requests_w, responses_r, verdict.fileno()))
                )
                started.append(self._popen(argv_p, out_p, host_p, (requests_r, responses_w)))
            except OSError as exc:
                for proc in started:
                    _kill_group(proc)
                return ExecResult(False, f"sandbox error: cannot start {argv_p[0]}: {exc}")
            finally:  # only the two children hold the pipes now: a dead program means EOF for the checker
                for fd in (requests_r, requests_w, responses_r, responses_w):
                    os.close(fd)
            checker, program = started
            try:
                exited = feed_all_and_wait(
                    [(checker, checker_payload), (program, program_payload)], start + budget
                )
                program_status = _wait_briefly(program, 0.2) if exited else None
            finally:
                _kill_group(checker)
                _kill_group(program)
            verdict.seek(0)
            return _checked_result(
                exited, checker.returncode, program_status, verdict.read(VERDICT_BYTES), out_p, out_c,
                time.monotonic() - start, limits, sandboxed,
            )  # fmt: skip

    def submit(
        self, programs: Sequence[str], *, limits: Limits | None = None, batch_timeout_s: float | None = None
    ) -> cf.Future[list[ExecResult]]:
        """Queue a batch of whole programs; the Future resolves to one ExecResult per program, in order.

        A program "passes" when it ran to its end (exit 0 after its last statement): the program's own
        say-so, which a hostile program can fake. For verdicts on untrusted code use `submit_tests`.
        batch_timeout_s bounds the whole batch from now: programs still queued at the deadline fail without
        running, running ones are killed at it. Per-program limits default to the executor's.
        """
        return self._submit(self._run_program, programs, limits, batch_timeout_s)

    def run(
        self, programs: Sequence[str], *, limits: Limits | None = None, batch_timeout_s: float | None = None
    ) -> list[ExecResult]:
        """Blocking `submit`."""
        return self.submit(programs, limits=limits, batch_timeout_s=batch_timeout_s).result()

    def submit_tests(
        self,
        jobs: Sequence[ProgramTests],
        *,
        limits: Limits | None = None,
        batch_timeout_s: float | None = None,
    ) -> cf.Future[list[ExecResult]]:
        """Queue programs with their tests; the Future resolves to one ExecResult per job, in order.

        `passed` is the trusted checker's verdict and `reason` says why ("passed: 7/7 checks", "failed:
        check 3 (line 12): AssertionError", "failed: check 1 (line 5): call 1 to f returned a non-plain
        value of type Foo", "timeout: ..."). Deadlines and limits work as in `submit`; both processes of a
        job share its wall-clock budget and each gets the per-process limits.
        """
        return self._submit(self._check_one, jobs, limits, batch_timeout_s)

    def _submit(
        self,
        fn: Callable[..., ExecResult],
        items: Sequence[Any],
        limits: Limits | None,
        batch_timeout_s: float | None,
    ) -> cf.Future[list[ExecResult]]:
        """`fn(item, slot, budget, launch, limits, start)` for each item in a slot of the pool, gathered."""
        limits = limits or self.limits
        deadline = None if batch_timeout_s is None else time.monotonic() + batch_timeout_s
        return gather([self._pool.submit(self._in_slot, fn, i, deadline, self.launch, limits) for i in items])

    def run_tests(
        self,
        jobs: Sequence[ProgramTests],
        *,
        limits: Limits | None = None,
        batch_timeout_s: float | None = None,
    ) -> list[ExecResult]:
        """Blocking `submit_tests`."""
        return self.submit_tests(jobs, limits=limits, batch_timeout_s=batch_timeout_s).result()

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> CodeExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def _parse_verdict(data: bytes) -> dict[str, Any] | None:
    """The checker's verdict (a dict with a bool `passed` and a str `reason`), or None if there is none."""
    try:
        found = harness.decode_value(data.decode("utf-8").strip().splitlines()[-1])
    except (UnicodeDecodeError, IndexError, harness.Malformed):
        return None
    if (
        type(found) is not dict
        or type(found.get("passed")) is not bool
        or type(found.get("reason")) is not str
    ):
        return None
    return found


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
