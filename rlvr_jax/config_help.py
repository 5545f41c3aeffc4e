"""What each config key means, from the source: `--print_config` and the docs' configuration reference.

A key's meaning is the comment on its line in `base_config()` (or the comment block just above it), and
`rlvr_jax.config.KEY_HELP` for the keys whose line has none. Reading the comments from the source keeps
one place to write them: the function a reader scans top to bottom. Nothing here imports JAX.
"""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path
from typing import Any

import ml_collections

from rlvr_jax import config as config_module


def _comments(source: str) -> tuple[dict[int, str], dict[int, str]]:
    """(inline comments by line, whole-line comments by line) of a Python source."""
    inline: dict[int, str] = {}
    whole: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            text = tok.string.lstrip("#").strip()
            (whole if tok.line.strip().startswith("#") else inline)[tok.start[0]] = text
    return inline, whole


def _dotted(node: ast.expr, root: str) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name) and node.id == root and parts:
        return ".".join(reversed(parts))
    return None


def base_config_fields(source: str | None = None) -> list[tuple[str, str, bool]]:
    """[(dotted key, comment, is a section)] in source order, from the `c.key = ...` lines of
    `base_config()` in `source` (default: rlvr_jax/config.py)."""
    source = source if source is not None else Path(config_module.__file__).read_text(encoding="utf-8")
    tree = ast.parse(source)
    inline, whole = _comments(source)
    fn = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "base_config"), None)
    if fn is None:
        raise ValueError("no base_config() function in the config source")
    root = None
    fields: list[tuple[str, str, bool]] = []
    for stmt in fn.body:
        if not isinstance(stmt, ast.Assign) or len(stmt.targets) != 1:
            continue
        target = stmt.targets[0]
        if isinstance(target, ast.Name) and root is None:
            root = target.id
            continue
        key = _dotted(target, root or "")
        if key is None:
            continue
        comment = " ".join(
            inline[i] for i in range(stmt.lineno, (stmt.end_lineno or stmt.lineno) + 1) if i in inline
        )
        if not comment:
            block, line = [], stmt.lineno - 1
            while line in whole:
                block.insert(0, whole[line])
                line -= 1
            comment = " ".join(block)
        value = stmt.value
        is_dict = (
            isinstance(value, ast.Call)
            and getattr(value.func, "attr", getattr(value.func, "id", "")) == "ConfigDict"
        )
        fields.append((key, comment, is_dict))
    # A ConfigDict() is a section when keys below it follow (`c.model.lora` and `c.model.lora.rank`);
    # one without (an empty options dict such as `c.reward.options`) is a leaf whose value is {}.
    keys = [key for key, _, _ in fields]
    return [
        (key, comment, is_dict and ("." not in key or any(k.startswith(key + ".") for k in keys)))
        for key, comment, is_dict in fields
    ]


def meanings() -> dict[str, str]:
    """Dotted key (sections included) -> its meaning: the source comment, else KEY_HELP's entry."""
    found = {key: comment or config_module.KEY_HELP.get(key, "") for key, comment, _ in base_config_fields()}
    return found | {k: v for k, v in config_module.KEY_HELP.items() if k not in found}


def leaves(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value of every leaf; an empty section (a free-form one such as data.options) is a
    leaf whose value is {}."""
    out: dict[str, Any] = {}
    for name, value in config.items():
        key = f"{prefix}{name}"
        if isinstance(value, ml_collections.ConfigDict) and len(value):
            out |= leaves(value, f"{key}.")
        else:
            out[key] = value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value
    return out


def describe_config(config: ml_collections.ConfigDict, source: str | None = None) -> str:
    """Every key of `config` as `key = value  # meaning`, one a line, in base_config's order and grouped
    by section under the section's own comment; a value that differs from base_config's default shows
    that default too. `source`: where the config came from, for the first line."""
    fields = base_config_fields()
    explain = meanings()
    order = {key: i for i, (key, _, _) in enumerate(fields)}
    defaults = leaves(config_module.base_config())
    values = leaves(config)

    def position(key: str) -> tuple[int, str]:  # a key the file added (data.options.x): after its section
        parts = key.split(".")
        known = next(
            (".".join(parts[:n]) for n in range(len(parts), 0, -1) if ".".join(parts[:n]) in order), ""
        )
        return order.get(known, len(order)), key

    lines = [
        f"# {source or 'base_config()'}",
        "# key = value  # meaning [base: the base default, where it differs]",
    ]
    width = max(len(f"{k} = {v!r}") for k, v in values.items())
    section = None
    for key in sorted(values, key=position):
        value, top = values[key], key.split(".")[0] if "." in key else ""
        if top != section:
            section = top
            lines += ["", f"# {top}: {explain.get(top, '')}".rstrip() if top else "# top level"]
        meaning = explain.get(key) or explain.get(key.rsplit(".", 1)[0], "")  # data.options.x: its section's
        if key not in defaults:
            meaning += " [not in base_config: the config file adds it]"
        elif defaults[key] != value:
            meaning += f" [base: {defaults[key]!r}]"
        lines.append(f"{f'{key} = {value!r}':<{width}}  # {meaning}".rstrip())
    return "\n".join(lines) + "\n"
