"""The solution extracted from a completion (rlvr_jax/rewards/code_extract.py): what is kept, what is dropped,
and when the strict program is tested instead. Pure parsing, no sandbox (the verdicts are in
test_code_rewards.py and test_code_hacking.py)."""

from __future__ import annotations

import ast

from rlvr_jax.rewards.code_extract import extract_program, lenient_block


def kept(code: str, needed: tuple[str, ...] = ("f",), **options: int) -> str:
    extraction = extract_program(code, needed, **options)
    assert extraction.code is not None, extraction.why
    ast.parse(extraction.code)  # always a program
    return extraction.code


SELF_TESTS = '''import math

def f(x):
    """Doubles x."""
    assert x >= 0  # the function's own check stays
    return 2 * x

# Test cases
assert f(2) == 5, "wrong expectation"
print(f(3))
for case in [1, 2]:
    assert f(case) == case
result = f(4)
'''


def test_self_tests_and_prints_after_the_function_are_dropped() -> None:
    extraction = extract_program(SELF_TESTS, ("f",))
    assert extraction.code == (
        "import math\n"
        "def f(x):\n"
        '    """Doubles x."""\n'
        "    assert x >= 0  # the function's own check stays\n"
        "    return 2 * x\n"
    )
    assert extraction.dropped == (
        "line 9: assert",
        "line 10: print(...)",
        "line 11: for",
        "line 13: assignment",
    )


def test_prose_around_the_fence_and_an_unclosed_fence() -> None:
    text = "Here is the function:\n```python\ndef f(x):\n    return x\n```\nIt returns x. Example:\n"
    text += "```python\nf(1)\n```"
    assert lenient_block(text, "f") == ("def f(x):\n    return x\n", True, False)
    cut = "Sure!\n```python\ndef f(x):\n    return x\n\nprint(f(1"  # the budget ended the block
    block, fenced, closed = lenient_block(cut, "f")
    assert (fenced, closed) == (True, True)
    extraction = extract_program(block, ("f",))
    assert extraction.code == "def f(x):\n    return x\n"
    assert extraction.dropped[0].startswith("line 4: did not parse (SyntaxError: '(' was never closed")
    assert lenient_block("no fences at all", "f") == ("no fences at all", False, False)
    assert lenient_block("```bash\nls\n```", "f") == ("```bash\nls\n```", False, False)


def test_a_truncated_last_statement_is_dropped_and_a_truncated_function_falls_back() -> None:
    code = "def f(x):\n    return x + 1\n\nassert f(1) == 2\nassert f([1, 2,\n"
    assert kept(code) == "def f(x):\n    return x + 1\n"
    cut_in_function = "def f(x):\n    total = (x +\n"
    extraction = extract_program(cut_in_function, ("f",))
    assert extraction.code is None and "does not parse" in extraction.why
    cut_in_the_body = "def f(x):\n    y = x + 1\n"  # parses: what the model wrote is what is tested
    assert kept(cut_in_the_body) == cut_in_the_body


HELPERS = """from functools import lru_cache
import sys
sys.setrecursionlimit(10000)
LIMIT = 10
SCALE = LIMIT * 2
UNUSED = 5
TABLE = {}
TABLE[0] = 1
primes = []
for n in range(2, 20):
    if all(n % p for p in primes):
        primes.append(n)
counter = 0

@lru_cache(maxsize=None)
def helper(y):
    return y + SCALE

def f(x):
    global counter
    counter += 1
    squares = [i * i for i in range(x)]
    return helper(x) + TABLE[0] + primes[x] + len(squares)

print(f(2))
"""


def test_helpers_constants_and_module_state_the_function_needs_are_kept() -> None:
    code = kept(HELPERS)
    for line in ("LIMIT = 10", "SCALE = LIMIT * 2", "TABLE[0] = 1", "primes.append(n)", "counter = 0"):
        assert line in code, line
    assert "@lru_cache(maxsize=None)" in code and "def helper" in code
    assert "UNUSED" not in code and "print(" not in code
    assert "setrecursionlimit" not in code  # a call on a module changes none of the program's values


def test_what_only_unneeded_code_reads_is_dropped_and_global_initialisers_are_kept() -> None:
    """A self-test function with a counter of its own: neither its call nor the counter is needed (the def
    stays, it never runs). An `init()` that fills a table through `global` is needed by f: its call stays,
    and so does what an unneeded function's decorator reads (it runs when the def is made)."""
    code = "failures = 0\ndef check():\n    global failures\n    failures += f(1) != 2\ncheck()\n"
    code += "def init():\n    global TABLE\n    TABLE = [1, 2]\ninit()\n"
    code += "REGISTRY = []\n@REGISTRY.append\ndef unused():\n    pass\n"
    code += "def f(x):\n    return TABLE[x]\n"
    extraction = extract_program(code, ("f",))
    assert extraction.dropped == ("line 1: assignment", "line 5: check(...)")
    assert "init()" in extraction.code and "REGISTRY = []" in extraction.code


def test_local_names_of_a_function_do_not_keep_module_level_code() -> None:
    """`x`, `i` and `result` are the function's own: the self-test loop and assignment that bind the same
    names at module level are dropped."""
    code = "def f(x):\n    result = [i for i in range(x)]\n    return result\n\nfor i in range(3):\n"
    code += "    assert f(i) == []\nresult = f(2)\nx = 5\n"
    assert kept(code) == "def f(x):\n    result = [i for i in range(x)]\n    return result\n"


def test_the_main_guard_is_read_as_top_level_code() -> None:
    code = 'def g(x):\n    return x\n\nif __name__ == "__main__":\n    import math\n    def f(x):\n'
    code += "        return g(x) + math.floor(0.5)\n    print(f(2))\n    assert f(1) == 3\nelse:\n    x = 1\n"
    extraction = extract_program(code, ("f",))
    assert (
        extraction.code
        == "def g(x):\n    return x\nimport math\ndef f(x):\n    return g(x) + math.floor(0.5)\n"
    )
    assert "line 8: print(...)" in extraction.dropped and "line 9: assert" in extraction.dropped
    assert "line 4: else branch of the main guard" in extraction.dropped


def test_module_level_names_the_tests_need_and_rebound_builtins_are_kept() -> None:
    """`f = lambda ...` is what the tests call; `sorted = ...` is what f calls: dropping it would change
    what f computes, so it stays (a builtin rebound at module level is a module variable like any other)."""
    assert kept("f = lambda x: sorted(x)\nsorted = lambda x: x\nprint(f([2, 1]))\n") == (
        "f = lambda x: sorted(x)\nsorted = lambda x: x\n"
    )
    assert kept("def g(x):\n    return x\n\nf = g\nassert f(1) == 1\n") == "def g(x):\n    return x\nf = g\n"


def test_statements_sharing_a_line_are_separated() -> None:
    assert kept("import math; assert math.pi == 3\ndef f():\n    return 1\n") == (
        "import math\ndef f():\n    return 1\n"
    )


def test_code_the_syntax_cannot_follow_falls_back_to_the_strict_program() -> None:
    """A function made by exec, or one that reaches module names through globals(): only the whole
    program can say what it needs."""
    made = extract_program('exec("def f(x): return x")\nprint(f(1))\n', ("f",))
    assert made.code is None and "does not define f" in made.why
    dynamic = extract_program('TABLE = 1\ndef f():\n    return globals()["TABLE"]\nprint(f())\n', ("f",))
    assert dynamic.code is None and "globals" in dynamic.why
    assert extract_program("this is prose, not code\n", ("f",)).code is None
    assert extract_program("", ("f",)).code is None


def test_the_prompt_a_body_continues_is_kept_and_never_cut() -> None:
    """HumanEval without a fence: the completion continues the prompt's function; the prompt's lines are
    trusted and stay, self-tests after the body go, and a cut may not reach into the prompt."""
    prompt = 'from typing import List\n\nFIX = """a note"""\n\ndef f(x: List[int]) -> int:\n    """Sum."""\n'
    body = "    return sum(x)\n\nprint(f([1]))\nassert f([1]) == 2\n"
    lines = len(prompt.splitlines())
    extraction = extract_program(prompt + body, ("f",), keep_lines=lines)
    assert extraction.code == 'from typing import List\nFIX = """a note"""\n' + prompt[
        prompt.index("def") :
    ] + ("    return sum(x)\n")
    assert extraction.dropped == ("line 9: print(...)", "line 10: assert")
    truncated = extract_program(prompt + "    return sum(x[\n", ("f",), keep_lines=lines)
    assert truncated.code is None


def test_extraction_never_adds_code() -> None:
    """Every kept line is a line of the input (or, for code hoisted out of a main guard or sharing a line,
    a statement of it): the extracted program is a subset of what the model wrote."""
    for code in (SELF_TESTS, HELPERS):
        extracted = kept(code)
        source_lines = set(code.splitlines())
        assert all(line in source_lines for line in extracted.splitlines()), extracted
