"""The shell commands that README.md, deploy/README.md, notebooks/README.md and docs/ show to users.

A command is read from a fenced ```bash / ```sh / ```shell / ```console block: continuation lines are
joined, blank lines and whole-line comments skipped, a trailing comment dropped (`tokens` has none; `text`
is what a user would paste, comment and quoting included). tests/test_doc_commands.py says how each one is
exercised.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHELL_LANGS = {"bash", "sh", "shell", "console", "zsh"}
_FENCE = re.compile(r"^\s*(```+|~~~+)\s*\{?([\w+-]*)\}?")


@dataclass(frozen=True)
class Command:
    path: Path
    line: int
    text: str  # as written (continuations joined), for running through bash
    tokens: tuple[str, ...]  # shell words without the trailing comment

    @property
    def normalized(self) -> str:
        return normalize(self.tokens)

    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


_OPERATORS = {"&&", "||", "|", ";", ">", ">>", "<", "2>&1"}


def normalize(words: tuple[str, ...] | list[str]) -> str:
    """One canonical spelling: the words joined by single spaces, quoted as `shlex.quote` does (shell
    operators stay bare), so that two spellings of one command compare equal."""
    return " ".join(w if w in _OPERATORS else shlex.quote(w) for w in words)


def documentation_files() -> list[Path]:
    files = [REPO / "README.md", REPO / "deploy" / "README.md", REPO / "notebooks" / "README.md"]
    files += sorted((REPO / "docs").rglob("*.md"))
    return [f for f in files if f.is_file() and "_build" not in f.parts and "_generated" not in f.parts]


def _words(text: str) -> tuple[str, ...]:
    lexer = shlex.shlex(text, posix=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    return tuple(lexer)


def commands_in(path: Path) -> list[Command]:
    lines = path.read_text().splitlines()
    found: list[Command] = []
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        fence, lang = match.group(1), match.group(2).lower()
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            j += 1
        if lang in SHELL_LANGS:
            found += _block_commands(path, lang, list(enumerate(lines[i + 1 : j], start=i + 2)))
        i = j + 1
    return found


def _block_commands(path: Path, lang: str, body: list[tuple[int, str]]) -> list[Command]:
    found: list[Command] = []
    current, start = "", 0
    for number, raw in body:
        line = raw.strip()
        if lang == "console" and not current:
            if not line.startswith("$ "):
                continue  # output shown under a command
            line = line[2:]
        if not current:
            if not line or line.startswith("#"):
                continue
            start = number
        current = f"{current} {line}" if current else line
        if current.endswith("\\"):
            current = current[:-1].rstrip()
            continue
        found.append(Command(path, start, current, _words(current)))
        current = ""
    return found


def code_blocks(path: Path, lang: str = "python") -> list[tuple[int, str]]:
    """(first line number, text) of every fenced block in `lang`."""
    lines = path.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(match.group(1)):
            j += 1
        if match.group(2).lower() == lang:
            blocks.append((i + 2, "\n".join(lines[i + 1 : j])))
        i = j + 1
    return blocks


def documented_commands() -> list[Command]:
    return [c for f in documentation_files() for c in commands_in(f)]
