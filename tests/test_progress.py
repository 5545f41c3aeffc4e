"""The progress display: a bar for a terminal or a notebook kernel, plain lines for a log, or nothing."""

from __future__ import annotations

import io
import sys
import types

import pytest

from rlvr_jax import progress as progress_module
from rlvr_jax.progress import Progress, clock, display_mode


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_a_plain_line_for_every_step_with_its_numbers() -> None:
    log = io.StringIO()
    with Progress(4, initial=1, stream=log) as shown:
        for step in (2, 3, 4):
            shown.update(step, {"reward/mean": 0.4567, "accuracy": 0.25, "time/step_s": 1.5, "other": 1.0})
    lines = log.getvalue().splitlines()
    assert shown.mode == "off" and len(lines) == 3  # closed: nothing more
    assert lines[0].startswith("train: 2/4 steps (50%), 0:00 elapsed, ~0:00 left | reward 0.457  acc 0.25")
    assert "s/step 1.5" in lines[0] and "other" not in lines[0]
    assert lines[2].startswith("train: 4/4 steps (100%)") and "left" not in lines[2]
    assert "\r" not in log.getvalue() and "\x1b" not in log.getvalue()  # no control codes in a log


def test_lines_are_rate_limited_but_the_first_and_last_always_print() -> None:
    log = io.StringIO()
    with Progress(
        100, description="eval after", unit="item", fields={}, stream=log, min_interval_s=3600
    ) as shown:
        for done in range(10, 101, 10):
            shown.update(done, accuracy=0.5, kl=float("nan"))
    lines = log.getvalue().splitlines()
    assert [line.split(" (")[0] for line in lines] == [
        "eval after: 10/100 items",
        "eval after: 100/100 items",
    ]
    assert lines[0].endswith("| accuracy 0.5")  # NaN values are left out


def test_a_terminal_gets_a_bar_and_quiet_gets_nothing() -> None:
    tty = Terminal()
    assert display_mode(tty) == "bar" and display_mode(io.StringIO()) == "lines"
    with Progress(10, initial=2, stream=tty) as bar:
        assert tty.getvalue() == ""  # drawing starts with the first update
        bar.update(4, {"reward/mean": 0.4567, "accuracy": 0.25})
    text = tty.getvalue()
    assert "4/10" in text and "reward 0.457" in text and "acc 0.25" in text and "\r" in text

    quiet = Terminal()
    with Progress(10, quiet=True, stream=quiet) as bar:
        bar.update(3, {"reward/mean": 1.0})
    assert not bar.enabled and quiet.getvalue() == ""
    with pytest.raises(ValueError, match="progress mode"):
        Progress(3, mode="fancy")


def test_a_notebook_kernel_gets_a_bar_though_its_stdout_is_no_terminal(monkeypatch) -> None:
    """Jupyter and Colab run code in an IPython kernel whose stdout is not a terminal: a bar all the same
    (a plain console IPython, without a kernel app, is a terminal case like any other)."""

    def ipython(config: dict) -> types.ModuleType:
        module = types.ModuleType("IPython")
        module.get_ipython = lambda: types.SimpleNamespace(config=config)
        return module

    monkeypatch.setitem(sys.modules, "IPython", ipython({"IPKernelApp": {"connection_file": "k.json"}}))
    assert progress_module.in_notebook() and display_mode(io.StringIO()) == "bar"
    monkeypatch.setitem(sys.modules, "IPython", ipython({}))
    assert not progress_module.in_notebook() and display_mode(io.StringIO()) == "lines"


def test_clock() -> None:
    assert [clock(s) for s in (0, 59.6, 61, 3600, 7325, -3)] == [
        "0:00",
        "1:00",
        "1:01",
        "1:00:00",
        "2:02:05",
        "0:00",
    ]
