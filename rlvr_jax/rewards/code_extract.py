"""The solution in a completion: the program to test, without the model's own tests, demo calls and prose.

Why: an instruct model answers with a function and then, often, code of its own that exercises it: asserts
it made up, `print(f(...))` calls, an `if __name__ == "__main__":` block. Run as one program (the strict
reading, what `code.extract_code` gives), a wrong self-written assert fails a right function, a demo call
on input the function rejects raises, and a completion the token budget cut in the middle of its demo
code does not even parse. Careful harnesses (evalplus' "sanitize", bigcode's instruct post-processing)
test the function and what it needs instead. This module does that, with the standard library's `ast`:

Kept, as the model wrote them, in their order:
- every top-level import (even one nothing seems to use: a function may reach it through `globals()`);
- every top-level `def`, `async def` and `class`;
- every other top-level statement that writes a name the solution needs. Needed are the names the tests
  take from the program (`needed`: HumanEval's entry point, MBPP's asserts' and setup code's names),
  what the definitions read as they are made (decorators, default values, base classes, class bodies),
  and, transitively, whatever the statements that write needed names read: the entry point's body reads
  its helpers and constants, a constant computed from another needs both (a function's local variables
  are its own, so a self-test loop `for x in ...` at module level is not needed by `def f(x)`). Writes
  are assignments (also `x[i] = ...`, `x.a = ...`, augmented and annotated ones), `for` / `while` / `if`
  / `try` / `with` blocks that bind a name, `x.append(...)`-style calls on a module variable, `del`, and
  calls of the program's functions that assign module variables through `global` (`init()` filling a
  table). So kept are constants, tables, memo dicts, `f = lambda x: ...`, `helper = cache(helper)`, a
  `try: import numpy except ImportError: ...` fallback, a loop that precomputes primes, and a builtin
  rebound at module level (`sorted = ...`, which the function then calls).
- the body of `if __name__ == "__main__":` is read as if it were at the top level (the sandbox runs the
  program as `__main__`, so in the strict reading it runs): a function defined there is kept, the demo
  calls around it are not.

Dropped: top-level asserts, prints and other expression statements (calls of the model's own tests,
`unittest.main()`, `doctest.testmod()`, `sys.setrecursionlimit(...)`, bare strings), assignments the
solution does not need (`result = f(3)`, `n = int(input())`), `else` branches of a main guard, and
everything outside the chosen code block. A program that does not parse loses its tail: the top-level
statement where the syntax error is and everything after it (a budget cut leaves half a demo call at the
end). An unclosed code fence is closed at the end of the completion (the budget cut the block itself).

Falls back to the strict program (`Extraction.code is None`) when nothing parses, when the parsable part
ends inside text that must be kept verbatim (`keep_lines`: HumanEval's prompt, which an unfenced
completion continues), when the kept statements do not visibly bind every `needed` name (a function
made by `exec(...)` or `globals()[...] = ...`), or when the needed code looks names up as it runs
(`globals()`, `vars()`, `eval`, `exec`, `dir()`, `__import__`, `sys.modules[__name__]`): what such code
needs cannot be read off the syntax, so only the whole program can say.

Why this cannot be gamed: the extracted program is a subset of the model's own top-level statements, run
in the same sandbox against the same trusted checker (see `sandbox.py`, docs/threat-model.md): only the
plain values its functions return are compared, by the checker's builtins. Extraction only removes code:
it cannot add a value, a definition or a builtin. Removing something the solution needs would make it
fail (a NameError) or compute something else; so every module-level write the syntax shows to reach the
solution is kept, a rebound builtin included (dropping `sorted = my_sorted` would change what the
function computes), and where the syntax cannot show it (the lookups above) the strict program is tested.
What the extracted score credits that the strict one does not is a right function next to wrong or
unfinished code of the model's own that the tests never call; every `assert` inside a function stays.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from collections.abc import Iterable

from rlvr_jax.rewards.sandbox import parse_quietly

# How many times a syntax error may cut the program's tail before giving up (each cut drops at least one
# top-level statement; a budget-cut completion needs one).
MAX_CUTS = 16
_FENCE = re.compile(r"^[ \t]*```[ \t]*([\w+#.-]*)[ \t]*$", re.MULTILINE)
_PYTHON_TAGS = {"", "python", "python3", "py", "py3"}
# Lines as the tokenizer counts them (str.splitlines would also split at \f or \u2028 inside a literal).
_LINES = re.compile(r".*?(?:\r\n|\r|\n)|.+", re.DOTALL)
_DEFINITIONS = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)
# A line that can start a top-level statement: not indented, not a comment, not a closing bracket.
_STATEMENT_START = re.compile(r"[^\s#)\]}]")
# Names through which code reaches module-level values without naming them (`globals()["table"]`,
# `sys.modules[__name__]`, `eval("x")`): which statements such code needs cannot be read off the syntax.
DYNAMIC_LOOKUPS = frozenset({"globals", "vars", "eval", "exec", "__name__", "__import__", "dir"})


@dataclasses.dataclass(frozen=True)
class Extraction:
    """code: the program to test, or None to test the strict program instead (`why` says why).
    dropped: what was left out, one short note each ("line 12: assert", "lines 30-31: did not parse
    (...)", "line 9: print(...)")."""

    code: str | None
    dropped: tuple[str, ...] = ()
    why: str = ""


def lenient_block(completion: str, entry_point: str | None = None) -> tuple[str, bool, bool]:
    """(code, fenced, closed): the code block `code.extract_code` would choose, with an unclosed last fence
    closed at the end of the text (`closed`); without a python code block, the whole completion (`fenced`
    is False).

    The block is the first python (or untagged) one that defines `entry_point`, else the first one.
    """
    fences = list(_FENCE.finditer(completion))
    blocks = []
    for i in range(0, len(fences), 2):
        opening = fences[i]
        end = fences[i + 1].start() if i + 1 < len(fences) else len(completion)
        if opening.group(1).lower() in _PYTHON_TAGS:
            blocks.append((completion[opening.end() + 1 : end], i + 1 == len(fences)))
    if not blocks:
        return completion, False, False
    if entry_point:
        defines = re.compile(rf"^\s*(?:async\s+)?def\s+{re.escape(entry_point)}\s*\(", re.MULTILINE)
        for block, closed in blocks:
            if defines.search(block):
                return block, True, closed
    return blocks[0][0], True, blocks[0][1]


def source_lines(source: str) -> list[str]:
    """The lines of source code as Python's tokenizer counts them, with their line ends."""
    return _LINES.findall(source)


def extract_program(code: str, needed: Iterable[str] = (), *, keep_lines: int = 0) -> Extraction:
    """The solution in `code` (see the module docstring for what is kept and why).

    needed: the names the tests take from the program; they count as read by the kept code, and each must
      be bound by a kept statement (else the strict program is used).
    keep_lines: the first lines are trusted text the code continues (HumanEval's prompt before an unfenced
      completion): statements starting there are kept as they are, and a syntax error may not cut there.
    """
    needed = tuple(needed)
    lines = source_lines(code)
    tree, end, error = _parse_prefix(lines, keep_lines)
    if tree is None:
        return Extraction(None, why=f"does not parse ({error})")
    notes = []
    if end < len(lines):
        where = f"line {end + 1}" if end + 1 == len(lines) else f"lines {end + 1}-{len(lines)}"
        notes.append(f"{where}: did not parse ({error})")
    statements = _candidates(tree.body)
    scopes = [_scan([node]) for node, _ in statements]
    definitions = [isinstance(node, _DEFINITIONS) for node, _ in statements]
    variables = set().union(*(s.stores for s, d in zip(scopes, definitions, strict=True) if not d))
    declared = {  # what calling a function of the program can write: the names it declares `global`
        node.name: {name for n in ast.walk(node) if isinstance(n, ast.Global) for name in n.names}
        for node, _ in statements
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }
    writes = [_writes(s, variables, declared) for s in scopes]
    kept = [d or node.lineno <= keep_lines for d, (node, _) in zip(definitions, statements, strict=True)]
    # What must exist: the names the tests take, what the definitions read as they are made (decorators,
    # defaults, bases, class bodies), what the trusted prefix reads, and then everything the statements
    # that write those names read, transitively.
    read = set(needed)
    for (node, _), scope, k in zip(statements, scopes, kept, strict=True):
        if isinstance(node, ast.ClassDef) or (k and node.lineno <= keep_lines):
            read |= _reads(scope)
        elif k:
            read |= scope.loads
    reached = [False] * len(statements)
    changed = True
    while changed:
        changed = False
        for i, scope in enumerate(scopes):
            if not reached[i] and writes[i] & read:
                reached[i] = kept[i] = changed = True
                read |= _reads(scope)
    dynamic = sorted(read & DYNAMIC_LOOKUPS)
    if dynamic:
        return Extraction(None, why=f"the needed code looks names up as it runs ({', '.join(dynamic)})")
    bound = set().union(*(w for w, k in zip(writes, kept, strict=True) if k))
    missing = [name for name in needed if name not in bound]
    if missing:
        return Extraction(None, why=f"the kept code does not define {', '.join(missing)}")
    shared = _shared_lines(tree.body)
    parts = []
    for (node, hoisted), k in zip(statements, kept, strict=True):
        first = _first_line(node)
        if not k:
            notes.append(f"line {first}: {_kind(node)}")
        elif hoisted or any(line in shared for line in range(first, node.end_lineno + 1)):
            parts.append(ast.unparse(node) + "\n")
        else:
            text = "".join(lines[first - 1 : node.end_lineno])
            parts.append(text if text.endswith(("\n", "\r")) else text + "\n")
    notes.extend(f"line {node.lineno}: {_kind(node)}" for node in _dropped_guards(tree.body))
    return Extraction("".join(parts), tuple(notes))


def _parse_prefix(lines: list[str], keep_lines: int) -> tuple[ast.Module | None, int, str]:
    """(tree, number of lines parsed, first error): the whole code, else the longest prefix that ends
    before the top-level statement holding a syntax error (repeated while the shorter prefix fails)."""
    end, error = len(lines), ""
    for _ in range(MAX_CUTS + 1):
        try:
            return parse_quietly("".join(lines[:end])), end, error
        except (SyntaxError, ValueError, MemoryError, RecursionError) as exc:  # ValueError: null bytes
            line = getattr(exc, "lineno", None) or end
            error = error or f"{type(exc).__name__}: {getattr(exc, 'msg', exc)}, line {line}"
            starts = [i for i in range(min(line, end)) if _STATEMENT_START.match(lines[i])]
            cut = max((i for i in starts if i < end), default=0)
            if cut <= keep_lines or cut == 0:
                return None, 0, error
            end = cut
    return None, 0, error


def _is_main_guard(node: ast.stmt) -> bool:
    """`if __name__ == "__main__":` (either way round)."""
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare):
        return False
    test = node.test
    if len(test.ops) != 1 or not isinstance(test.ops[0], ast.Eq):
        return False
    sides = [test.left, test.comparators[0]]
    names = [s for s in sides if isinstance(s, ast.Name) and s.id == "__name__"]
    main = [s for s in sides if isinstance(s, ast.Constant) and s.value == "__main__"]
    return len(names) == 1 and len(main) == 1


def _candidates(body: list[ast.stmt], hoisted: bool = False) -> list[tuple[ast.stmt, bool]]:
    """Top-level statements, a main guard's body in its place: (statement, whether it comes from one)."""
    out: list[tuple[ast.stmt, bool]] = []
    for node in body:
        if _is_main_guard(node):
            out.extend(_candidates(node.body, hoisted=True))
        else:
            out.append((node, hoisted))
    return out


def _dropped_guards(body: list[ast.stmt]) -> list[ast.stmt]:
    return [node for node in body if _is_main_guard(node) and node.orelse]


@dataclasses.dataclass
class _Scope:
    """What code at one scope level does with names (nested functions, lambdas, classes and
    comprehensions are their own scopes: only what they read from outside reaches `inner`)."""

    loads: set[str] = dataclasses.field(default_factory=set)
    stores: set[str] = dataclasses.field(default_factory=set)  # assigned, deleted, defined, imported
    changed: set[str] = dataclasses.field(default_factory=set)  # x of `x[i] = ...`, `x.a = ...`, `del x[i]`
    called: set[str] = dataclasses.field(default_factory=set)  # x of a statement `x.method(...)`
    calls: set[str] = dataclasses.field(default_factory=set)  # g of a statement `g(...)`
    globals: set[str] = dataclasses.field(default_factory=set)
    inner: set[str] = dataclasses.field(default_factory=set)  # names the nested scopes read from outside


def _scan(nodes: Iterable[ast.AST]) -> _Scope:
    """The names code at one scope level reads and writes (see `_Scope`)."""
    scope = _Scope()
    stack = list(nodes)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            args = node.args
            stack.extend(d for d in [*args.defaults, *args.kw_defaults] if d is not None)
            if not isinstance(node, ast.Lambda):
                scope.stores.add(node.name)
                stack.extend(
                    [*node.decorator_list, *(a.annotation for a in _parameters(args) if a.annotation)]
                )
                stack.extend([node.returns] if node.returns else [])
            scope.inner |= _free(node)
        elif isinstance(node, ast.ClassDef):
            scope.stores.add(node.name)
            stack.extend([*node.decorator_list, *node.bases, *node.keywords])
            scope.inner |= _free(node)
        elif isinstance(node, _COMPREHENSIONS):
            stack.append(node.generators[0].iter)  # evaluated in the enclosing scope
            scope.inner |= _free(node)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            scope.stores.update((a.asname or a.name).split(".")[0] for a in node.names if a.name != "*")
        elif isinstance(node, ast.Global):
            scope.globals.update(node.names)
        elif isinstance(node, ast.Name):
            (scope.loads if isinstance(node.ctx, ast.Load) else scope.stores).add(node.id)
        else:
            if isinstance(node, ast.Attribute | ast.Subscript) and isinstance(node.ctx, ast.Store | ast.Del):
                scope.changed.add(_base_name(node) or "")
            elif isinstance(node, ast.Expr) and _is_method_call(node.value):
                scope.called.add(_base_name(node.value.func) or "")
            elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
                scope.calls.add(node.value.func.id if isinstance(node.value.func, ast.Name) else "")
            stack.extend(ast.iter_child_nodes(node))
    return scope


def _free(node: ast.AST) -> set[str]:
    """The names a function, lambda, class body or comprehension reads from enclosing scopes (the module's
    names among them), plus those it declares `global`."""
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
        args = node.args
        params = {a.arg for a in _parameters(args)}
        scope = _scan(node.body if isinstance(node.body, list) else [node.body])
        local = (params | scope.stores) - scope.globals
    elif isinstance(node, ast.ClassDef):
        scope = _scan(node.body)
        local = scope.stores - scope.globals  # class attributes; its methods cannot see them
        return (scope.loads - local) | scope.inner | scope.globals
    else:  # a comprehension: its targets are its own
        first, *rest = node.generators
        parts = [first.target, *first.ifs, *(p for g in rest for p in (g.target, g.iter, *g.ifs))]
        parts += [node.key, node.value] if isinstance(node, ast.DictComp) else [node.elt]
        scope = _scan(parts)
        local = scope.stores
    return ((scope.loads | scope.inner) - local) | scope.globals


def _parameters(args: ast.arguments) -> list[ast.arg]:
    return [a for a in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg] if a]


def _is_method_call(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)


def _base_name(node: ast.AST) -> str | None:
    """`x` of `x`, `x.a.b`, `x[i][j]`, `x.a[i]`."""
    while isinstance(node, ast.Attribute | ast.Subscript):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _writes(scope: _Scope, variables: set[str], declared: dict[str, set[str]]) -> set[str]:
    """Module-level names a top-level statement (its `_scan`) binds, deletes or changes: assignment targets
    (the base name of `x[i] = ...` and `x.a = ...`), loop and `with` targets, names of the functions,
    classes and imports it holds, `x.method(...)` calls written as statements where `x` is one of
    `variables` (the module's variables: a call on an imported module such as `unittest.main()` changes
    none of the program's values), and `g(...)` calls of the program's functions that `declared` says
    assign module variables (`global`)."""
    called = set().union(*(declared.get(name, set()) for name in scope.calls))
    return (scope.stores | scope.changed | (scope.called & variables) | called) - {""}


def _reads(scope: _Scope) -> set[str]:
    """The module-level names a top-level statement (its `_scan`) reads, in its own code and in the
    functions, lambdas, classes and comprehensions it holds (their local variables are not the module's),
    plus the names its functions declare `global` (they write the module's variable, which must exist)."""
    return scope.loads | scope.inner


def _first_line(node: ast.stmt) -> int:
    decorators = getattr(node, "decorator_list", None) or []
    return min([node.lineno, *(d.lineno for d in decorators)])


def _shared_lines(body: list[ast.stmt]) -> set[int]:
    """Lines that hold parts of more than one top-level statement (`x = 1; assert f(x)`)."""
    seen: dict[int, int] = {}
    for node in body:
        for line in range(_first_line(node), node.end_lineno + 1):
            seen[line] = seen.get(line, 0) + 1
    return {line for line, count in seen.items() if count > 1}


def _kind(node: ast.stmt) -> str:
    """A short name for a dropped statement: "assert", "print(...)", "call", "assignment", "if", ..."""
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
        func = node.value.func
        return f"{func.id}(...)" if isinstance(func, ast.Name) else "call"
    if isinstance(node, ast.Expr):
        return "expression"
    if isinstance(node, ast.If) and _is_main_guard(node):
        return "else branch of the main guard"
    return {
        ast.Assign: "assignment",
        ast.AugAssign: "assignment",
        ast.AnnAssign: "assignment",
    }.get(type(node), type(node).__name__.lower())
