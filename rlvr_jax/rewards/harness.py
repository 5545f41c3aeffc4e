"""The code that runs inside the sandbox's interpreters: its source is sent to `python -c` by `sandbox.py`.

Standard library only and nothing of rlvr_jax (the sandbox mounts neither). Importing this module on the
host runs nothing; the tests import it to exercise the value codec directly.

Every interpreter reads this code and one configuration dict from stdin (marshal; a pipe the scorer
closes, so it cannot be re-read), drops to its uid, sets its rlimits and then plays one of three roles:

- `program`: runs one program as `__main__` and writes a random token after its last statement returned
  (`CodeExecutor.run`: whether a program ran to its end; a hostile program can fake that, see below).
- `serve`, the UNTRUSTED side of a checked run (`CodeExecutor.run_tests`): runs the model's program (and
  the data set's setup code, which may use the program's classes), then answers calls: a request names a
  function of the program and carries its arguments (marshal), the answer is one line of literal text
  holding the return value as plain data, the exception it raised, or the type of a value that is not
  plain data.
  Everything in this process is the model's to rewrite, including this code: nothing here is trusted.
- `check`, the TRUSTED side: runs the data set's code (HumanEval's prompt, with helpers such as `poly`)
  and its tests, where every name the tests take from the program is a `Remote` proxy. A call sends the
  arguments to `serve` and decodes the answer into fresh builtin objects (`decode_value`), so a check
  compares values of the checker's own builtin types and no object of the model's runs code here. The
  verdict (passed, how many checks ran, or which one failed and why) goes to a file descriptor that only
  this process holds. The model's process can only answer calls: at worst with wrong values, a lie about
  an exception, or nothing at all.
"""

import marshal
import os
import sys

SETUP_STATUS = 121  # exit status when dropping privileges / setting limits fails (mirrored in sandbox.py)
MAX_RESPONSE_BYTES = 4 << 20  # one answer of the program to the checker
MAX_NESTING = 100  # containers nested deeper than this do not cross
MAX_TEXT = 200  # characters of program-supplied text (type names, messages) kept in a reason

# Exceptions a program's function may raise that the tests see as themselves (so `except ValueError` in a
# test works). StopIteration and the BaseException-only classes are missing on purpose: raised inside the
# checker's `map()`/`all()` a StopIteration would end an iteration early, i.e. skip checks.
RAISABLE = [
    "ArithmeticError",
    "AssertionError",
    "AttributeError",
    "IndexError",
    "KeyError",
    "LookupError",
    "NameError",
    "NotImplementedError",
    "OverflowError",
    "RecursionError",
    "RuntimeError",
    "TypeError",
    "ValueError",
    "ZeroDivisionError",
]


def setup(config):
    """Drop to the slot uid, set the limits, detach stdin, enter the working directory."""
    import resource

    try:
        uid = config["uid"]
        if uid is not None:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
        for name, soft, hard in config["limits"]:
            resource.setrlimit(getattr(resource, name), (soft, hard))
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.chdir(config["cwd"])
        if config.get("undumpable"):  # unsandboxed, same uid as the program: no ptrace, no /proc/<pid>/fd
            import ctypes

            if ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0) != 0:  # PR_SET_DUMPABLE = 4
                raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")
    except OSError as exc:
        sys.stderr.write(f"sandbox setup failed: {exc!r}\n")
        os._exit(SETUP_STATUS)


def fork_guard():
    """Unsandboxed and not dropping uid: run the rest in a child, so that the scorer is not getppid()."""
    pid = os.fork()
    if pid:
        status = os.waitpid(pid, 0)[1]
        os._exit(os.waitstatus_to_exitcode(status) % 256)


def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# ------------------------------------------------------------------------------------------ program


def run_program(config):
    token = config.pop("token").encode()
    code = compile(config.pop("source"), "<program>", "exec")
    exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
    sys.stdout.flush()
    sys.stderr.flush()
    os.write(1, b"\n" + token + b"\n")
    os._exit(0)


# ------------------------------------------------------------------------------------------ values
#
# Values cross from the program to the checker as Python literal text: constants, `-` before a number,
# list / tuple / set / dict displays, `frozenset([...])`, `set()`, `complex(re, im)` and the names `nan`
# and `inf`. The checker parses that text with the interpreter's own parser into a syntax tree (no code
# runs, and `_ast` is built in, so it costs no import) and rebuilds the value from the tree with its own
# constructors; any other node is rejected. This is `ast.literal_eval`, minus the `ast` import (7 ms a
# run) and plus nan / inf.


class NonPlain(Exception):
    """A return value that is not plain data; args[0] names its type."""


def encode_value(value, depth=0):
    """Literal text for a plain value (the program's side; an honest helper, not a defence).

    Exact builtin types only: None, bool, int, float, complex, str, bytes, list, tuple, dict, set,
    frozenset. The dict subclasses of `collections` (Counter, OrderedDict, defaultdict) are sent as
    dicts, since tests compare them with dict literals. The text is one line: reprs escape line breaks.
    """
    kind = type(value)
    if depth > MAX_NESTING:
        raise NonPlain(f"containers nested deeper than {MAX_NESTING}")
    if value is None or kind is bool:
        return "True" if value is True else "False" if value is False else "None"
    if kind is int:
        return int.__repr__(value)
    if kind is float:
        return float.__repr__(value)
    if kind is str:
        return str.__repr__(value)
    if kind is bytes:
        return bytes.__repr__(value)
    if kind is complex:
        return f"complex({float.__repr__(value.real)},{float.__repr__(value.imag)})"
    if kind is list or kind is tuple or kind is set or kind is frozenset:
        items = [encode_value(v, depth + 1) for v in kind.__iter__(value)]
        if kind is list:
            return "[" + ",".join(items) + "]"
        if kind is tuple:
            return "(" + ",".join(items) + ("," if len(items) == 1 else "") + ")"
        if kind is set:
            return "{" + ",".join(items) + "}" if items else "set()"
        return "frozenset([" + ",".join(items) + "])"
    if kind is dict or (issubclass(kind, dict) and kind.__module__ == "collections"):
        pairs = [f"{encode_value(k, depth + 1)}:{encode_value(v, depth + 1)}" for k, v in dict.items(value)]
        return "{" + ",".join(pairs) + "}"
    raise NonPlain(getattr(kind, "__qualname__", "?"))


class Malformed(Exception):
    """Text from the program that is not a plain value in the agreed form."""


def decode_value(text):
    """A fresh value of builtin types from literal text (the checker's side: this IS the defence)."""
    import _ast

    try:
        tree = compile(text, "<answer>", "eval", _ast.PyCF_ONLY_AST)
    except (SyntaxError, ValueError, MemoryError, RecursionError, OverflowError) as exc:
        raise Malformed(f"{type(exc).__name__}: {exc}") from None
    try:
        return _literal(tree.body, _ast, 0)
    except (TypeError, ValueError, RecursionError) as exc:  # unhashable keys / members
        raise Malformed(f"{type(exc).__name__}: {exc}") from None


_NUMBERS = (int, float, complex)


def _literal(node, _ast, depth):
    if depth > MAX_NESTING:
        raise Malformed(f"containers nested deeper than {MAX_NESTING}")
    kind = type(node)
    if kind is _ast.Constant:
        value = node.value
        if value is None or type(value) in (bool, int, float, complex, str, bytes):
            return value
    elif kind is _ast.UnaryOp and type(node.op) is _ast.USub:
        value = _literal(node.operand, _ast, depth + 1)
        if type(value) in _NUMBERS:
            return -value
    elif kind is _ast.Name and node.id in ("nan", "inf"):
        return float(node.id)
    elif kind is _ast.List:
        return [_literal(v, _ast, depth + 1) for v in node.elts]
    elif kind is _ast.Tuple:
        return tuple([_literal(v, _ast, depth + 1) for v in node.elts])
    elif kind is _ast.Set:
        return {_literal(v, _ast, depth + 1) for v in node.elts}
    elif kind is _ast.Dict and None not in node.keys:
        return {
            _literal(k, _ast, depth + 1): _literal(v, _ast, depth + 1)
            for k, v in zip(node.keys, node.values, strict=True)
        }
    elif kind is _ast.Call and type(node.func) is _ast.Name and not node.keywords:
        name, args = node.func.id, [_literal(v, _ast, depth + 1) for v in node.args]
        if name == "set" and not args:
            return set()
        if name == "frozenset" and len(args) <= 1 and all(type(a) is list for a in args):
            return frozenset(*args)
        if name == "complex" and len(args) == 2 and all(type(a) in (int, float) for a in args):
            return complex(args[0], args[1])
    raise Malformed(f"{kind.__name__} is not a plain value")


def shown(text):
    """Program-supplied text made safe to put in a reason: printable, one line, bounded."""
    text = text if type(text) is str else repr(text)
    return repr(text[:MAX_TEXT])[1:-1]


# ------------------------------------------------------------------------------------------ serve


def read_exact(fd, size):
    chunks = []
    while size:
        chunk = os.read(fd, size)
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def serve(config):
    """The untrusted side: load the program, then answer calls until the checker closes the pipe."""
    requests, responses = config["requests"], config["responses"]
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    exec(compile(config.pop("source"), "<program>", "exec"), namespace)
    if config.get("setup"):
        exec(compile(config.pop("setup"), "<setup>", "exec"), namespace)
    sys.stdout.flush()
    while True:
        header = read_exact(requests, 4)
        if header is None:
            break
        body = read_exact(requests, int.from_bytes(header, "big"))
        if body is None:
            break
        write_all(responses, (answer(namespace, *marshal.loads(body)) + "\n").encode("utf-8"))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def answer(namespace, name, args, kwargs, references):
    """One line: ('ok', value), ('raised', type name, message) or ('nonplain', type name)."""
    try:
        args = list(args)
        for where, ref in references:  # a value the setup code made (e.g. a tree of the program's class)
            if ref not in namespace:
                raise NameError(f"name {ref!r} is not defined")
            if type(where) is int:
                args[where] = namespace[ref]
            else:
                kwargs[where] = namespace[ref]
        if name not in namespace:
            raise NameError(f"the program defines no {name!r}")
        value = namespace[name](*args, **kwargs)
        return f"('ok',{encode_value(value)})"
    except NonPlain as exc:
        return f"('nonplain',{str(exc.args[0])[:MAX_TEXT]!r})"
    except RecursionError:
        return "('raised','RecursionError','maximum recursion depth exceeded')"
    except Exception as exc:
        try:
            message = str(exc)[:MAX_TEXT]
        except Exception:
            message = "(unprintable)"
        return f"('raised',{type(exc).__name__[:MAX_TEXT]!r},{message!r})"


# ------------------------------------------------------------------------------------------ check


class CheckerError(Exception):
    """The harness or the data set's own code failed (not the program's fault)."""


class ProgramFailure(Exception):
    """The program ended, answered garbage or returned a non-plain value: no call can pass after it."""


class ProgramRaised(Exception):
    """Base of the exceptions the program's functions raised, as the tests see them."""


def _raised_classes():
    import builtins

    out = {}
    for name in RAISABLE:
        base = getattr(builtins, name)
        out[name] = type(name, (base, ProgramRaised), {"__module__": "program"})
    return out


class Channel:
    """The checker's end of the pipes to the program; counts calls and remembers a fatal failure."""

    def __init__(self, requests, responses):
        self.requests = requests
        self.responses = os.fdopen(responses, "rb")
        self.calls = 0
        self.fatal = None
        self.raised = _raised_classes()

    def fail(self, why):
        self.fatal = why
        raise ProgramFailure(why)

    def call(self, name, args, kwargs):
        if self.fatal:
            raise ProgramFailure(self.fatal)
        self.calls += 1
        call = f"call {self.calls} to {name}"
        args, kwargs, references = list(args), dict(kwargs), []
        for where, value in list(enumerate(args)) + list(kwargs.items()):
            if type(value) is Remote:
                references.append((where, value.name))
                if type(where) is int:
                    args[where] = None
                else:
                    kwargs[where] = None
        try:
            body = marshal.dumps((name, tuple(args), kwargs, references))
        except ValueError as exc:
            raise CheckerError(f"{call}: an argument cannot be sent to the program ({exc})") from None
        try:
            write_all(self.requests, len(body).to_bytes(4, "big") + body)
            line = self.responses.readline(MAX_RESPONSE_BYTES + 1)
        except OSError:
            line = b""
        if not line:
            self.fail(f"the program ended before answering {call}")
        if len(line) > MAX_RESPONSE_BYTES:
            self.fail(f"{call}: the answer is over {MAX_RESPONSE_BYTES} bytes")
        try:
            message = decode_value(line.decode("utf-8"))
        except (Malformed, UnicodeDecodeError) as exc:
            self.fail(f"{call}: malformed answer ({shown(str(exc))})")
        shape = tuple(type(part) for part in message) if type(message) is tuple else ()
        if shape[:1] == (str,) and message[0] == "ok" and len(shape) == 2:
            return message[1]
        if shape == (str, str) and message[0] == "nonplain":
            self.fail(f"{call} returned a non-plain value of type {shown(message[1])}")
        if shape == (str, str, str) and message[0] == "raised":
            error, text = shown(message[1]), shown(message[2])
            cls = self.raised.get(error, ProgramRaised)
            raise cls(f"{call} raised {error}: {text}")
        self.fail(f"{call}: malformed answer (not an ok / raised / nonplain tuple)")


class Remote:
    """A name the tests take from the program: calling it calls the program's function; as an argument
    it stands for the program's own object of that name. It has no value the tests could compare."""

    __slots__ = ("channel", "name")

    def __init__(self, channel, name):
        self.channel = channel
        self.name = name

    def __call__(self, *args, **kwargs):
        return self.channel.call(self.name, args, kwargs)

    def __bool__(self):
        raise CheckerError(
            f"the tests use the program's {self.name!r} as a value; only call results are checked"
        )

    def __repr__(self):
        return f"<program's {self.name}>"


def tests_line(exc):
    """The line of the tests where `exc` surfaced (the innermost frame of the tests' code), or 0."""
    line, tb = 0, exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<tests>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def describe(exc):
    if isinstance(exc, (ProgramFailure, ProgramRaised, CheckerError)):
        return str(exc)
    text = shown(str(exc))
    return type(exc).__name__ + (": " + text if text else "")


def check(config):
    """The trusted side: run the data set's code and tests against the program; write the verdict."""
    channel = Channel(config["requests"], config["responses"])
    progress = {"checks": 0, "lines": (0, 0)}

    def started(first, last):  # called before every assert of the tests (see sandbox.instrument_tests)
        progress["checks"] += 1
        progress["lines"] = (first, last)

    namespace = {"__name__": "__check__", "__builtins__": __builtins__, "__rlvr_check__": started}
    verdict = {"passed": False, "checks": 0, "calls": 0, "ended": False}
    stage = "the data set's code"
    try:
        if config.get("trusted"):
            exec(compile(config["trusted"], "<trusted>", "exec"), namespace)
        for name in config["remote"]:
            namespace[name] = Remote(channel, name)
        stage = "the tests"
        exec(compile(config["tests"], "<tests>", "exec"), namespace)
        checks, calls = progress["checks"], channel.calls
        if channel.fatal:
            reason = f"failed: {channel.fatal} (the tests caught it)"
        elif not checks:
            reason = "failed: the tests ran no check"
        elif not calls:
            reason = "failed: the tests never called the program"
        else:
            verdict["passed"] = True
            reason = f"passed: {checks}/{checks} checks"
    except BaseException as exc:
        line, checks = tests_line(exc), progress["checks"]
        if stage != "the tests" or not line:
            where = f"in {stage}"
        elif checks and progress["lines"][0] <= line <= progress["lines"][1]:
            where = f"check {checks} (line {progress['lines'][0]})"
        else:
            where = f"line {line} of the tests, after {checks} checks"
        if isinstance(exc, CheckerError) or stage != "the tests":
            reason = f"checker error: {where}: {describe(exc)}"
        else:
            reason = f"failed: {where}: {describe(exc)}"
    verdict.update(reason=reason, checks=progress["checks"], calls=channel.calls)
    verdict["ended"] = bool(channel.fatal) and channel.fatal.startswith("the program ended")
    write_all(config["verdict"], (repr(verdict) + "\n").encode("utf-8"))
    os._exit(0)


def main(config):
    """Entry point (see sandbox._HARNESS): `config` is the marshal'ed dict the scorer sent on stdin."""
    setup(config)
    role = config["role"]
    if config.get("guard"):
        fork_guard()
    if role == "program":
        run_program(config)
    elif role == "serve":
        serve(config)
    elif role == "check":
        check(config)
    else:
        sys.stderr.write(f"unknown harness role {role!r}\n")
        os._exit(SETUP_STATUS)
