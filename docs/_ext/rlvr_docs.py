"""Sphinx extension for the rlvr-jax documentation: pages generated from the code at build time.

- `builder-inited`: writes `docs/_generated/configuration.md` (every field of `rlvr_jax.config.base_config()`
  with its default, type, allowed values and the `# comment` on its line; then each `configs/*.py`, its
  docstring, what it changes relative to the base and what each preset changes) and one API page per
  package of `rlvr_jax` (and `serving`), walked with pkgutil so that a new module is documented without
  editing the docs. Every build regenerates all of them (only changed files are rewritten, files of
  modules that are gone are deleted); a config that cannot be loaded stops the build with a Sphinx error
  and empties the folder, so a stale page cannot hide a failure.
- `autodoc-process-docstring`: the docstrings are plain text (indented tables, `key: text` lists), not
  reStructuredText; they are converted so that they render as written and never raise warnings.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import pkgutil
import re
import shutil
from pathlib import Path
from typing import Any

from sphinx.application import Sphinx
from sphinx.errors import ExtensionError
from sphinx.util import logging

# Meanings for fields whose line in config.py has no comment (the source comment wins where there is one):
# one table, which `--print_config` reads too. The build fails if one names a field that no longer exists.
from rlvr_jax.config import KEY_HELP as NOTES

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
GENERATED = "_generated"


# ------------------------------------------------------------------------------------ base config parsing


def parse_base_config(path: Path) -> tuple[list[tuple[str, str, bool]], str]:
    """[(dotted key, comment, is a section)] in source order, from `base_config()` (the parser that
    `--print_config` uses too); and the module's docstring."""
    from rlvr_jax.config_help import base_config_fields

    source = path.read_text()
    try:
        fields = base_config_fields(source)
    except ValueError as e:
        raise ExtensionError(f"{path}: {e}") from None
    return fields, ast.get_docstring(ast.parse(source)) or ""


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value for every leaf; an empty ConfigDict is a leaf ({})."""
    import ml_collections

    out: dict[str, Any] = {}
    for key in config:
        value = config[key]
        name = f"{prefix}{key}"
        if isinstance(value, ml_collections.ConfigDict) and len(value):
            out.update(flatten(value, name + "."))
        elif isinstance(value, ml_collections.ConfigDict):
            out[name] = {}
        else:
            out[name] = value
    return out


def _type_of(config: Any, key: str) -> str:
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
        node = node[p]
    try:
        kind = node.get_type(leaf)
    except Exception:  # a plain dict leaf
        kind = type(node[leaf])
    name = "dict" if kind.__name__ == "ConfigDict" else kind.__name__
    return f"{name} or None" if node[leaf] is None else name


def _shared_prefix() -> str:
    from rlvr_jax.config import shared_dir

    return str(shared_dir())


def show(value: Any) -> str:
    """A value as a Markdown code span (pipes escaped for tables)."""
    if isinstance(value, str):
        shared = _shared_prefix()
        if value.startswith(shared):
            value = "$RLVR_SHARED" + value[len(shared) :]
        text = f'"{value}"'
    elif isinstance(value, dict) and not value:
        text = "{}"
    else:
        text = repr(value)
    return "`" + text.replace("|", "\\|") + "`"


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def base_config_page() -> list[str]:
    import rlvr_jax.config as config_module

    config = config_module.base_config()
    fields, _ = parse_base_config(Path(config_module.__file__))
    leaves = flatten(config)
    parsed = {k for k, _, section in fields if not section}
    missing, extra = sorted(set(leaves) - parsed), sorted(parsed - set(leaves))
    if missing or extra:
        raise ExtensionError(
            f"config reference: base_config() fields {missing} not found as `c.key = ...` lines in "
            f"config.py, or parsed keys {extra} not in base_config(); update docs/_ext/rlvr_docs.py"
        )
    stale = sorted(set(NOTES) - set(leaves))
    if stale:
        raise ExtensionError(f"rlvr_jax.config.KEY_HELP names fields that no longer exist: {stale}")
    choices = config_module.allowed_values()

    lines = [
        "(config-base)=",
        "## The base configuration",
        "",
        "`rlvr_jax.config.base_config()`; every experiment file starts from it. *Meaning* is the comment "
        "on the field's line in `rlvr_jax/config.py` (or the comment block just above it); where the "
        "line has none, a note from the docs (*in italics*). *Allowed* lists the values `validate` "
        "accepts.",
        "",
    ]
    sections: list[tuple[str, str, list[str]]] = [("top level", "", [])]
    for key, comment, is_section in fields:
        if is_section:
            sections.append((key, comment, []))
        else:
            owner = next((s for s in sections if key.startswith(s[0] + ".")), sections[0])
            owner[2].append(key)
            if not comment and key not in NOTES:
                logger.info("config reference: %s has no comment and no note", key)
    comments = {k: c for k, c, _ in fields}
    for name, comment, keys in sections:
        if not keys:
            continue
        label = "top" if name == "top level" else name
        lines += [f"(config-{label})=", f"### `{name}`" if name != "top level" else "### Top level", ""]
        if comment:
            lines += [comment, ""]
        lines += ["| key | default | type | meaning | allowed |", "|---|---|---|---|---|"]
        for key in keys:
            meaning = comments[key] or (f"*{NOTES[key]}*" if key in NOTES else "")
            if comments[key] and key in NOTES:
                meaning += f" *({NOTES[key]})*"
            allowed = ", ".join(f"`{c}`" for c in choices.get(key, ()))
            lines.append(
                f"| `{key}` | {show(leaves[key])} | {_type_of(config, key)} | {cell(meaning)} | {allowed} |"
            )
        lines.append("")
    return lines


# ------------------------------------------------------------------------------------ experiment configs


def load_config_module(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(f"rlvr_docs_config_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ExtensionError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "get_config", None)):
        raise ExtensionError(f"{path} has no get_config()")
    return module


def presets_of(module: Any, path: Path) -> list[str]:
    """Preset names: the keys of a PRESETS dict, and the strings get_config compares its argument with."""
    names: list[str] = list(getattr(module, "PRESETS", {}) or {})
    params = list(inspect.signature(module.get_config).parameters)
    if not params:
        return names
    arg = params[0]
    fn = next(
        n
        for n in ast.parse(path.read_text()).body
        if isinstance(n, ast.FunctionDef) and n.name == "get_config"
    )
    for node in ast.walk(fn):
        if isinstance(node, ast.Compare) and isinstance(node.left, ast.Name) and node.left.id == arg:
            for op, comp in zip(node.ops, node.comparators, strict=True):
                is_name = (
                    isinstance(op, ast.Eq) and isinstance(comp, ast.Constant) and isinstance(comp.value, str)
                )
                if is_name and comp.value and comp.value not in names:
                    names.append(comp.value)
    return names


def diff(before: dict[str, Any], after: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    missing = object()
    out = []
    for key in list(before) + [k for k in after if k not in before]:
        a, b = before.get(key, missing), after.get(key, missing)
        # An empty section ({}) that gained fields (data.options.digits) is listed by those fields.
        if (a == {} and b is missing and any(k.startswith(key + ".") for k in after)) or (
            b == {} and a is missing and any(k.startswith(key + ".") for k in before)
        ):
            continue
        if a is missing or b is missing or type(a) is not type(b) or a != b:
            out.append((key, a, b))
    return [(k, None if a is missing else a, None if b is missing else b) for k, a, b in out]


def configs_page() -> list[str]:
    from rlvr_jax.config import base_config

    base = flatten(base_config())
    files = sorted((REPO / "configs").glob("*.py"))
    if not files:
        raise ExtensionError(f"no config files in {REPO / 'configs'}")
    lines = [
        "(config-files)=",
        "## Experiment files",
        "",
        "Each file in `configs/` defines `get_config(arg=None)`; `--config=configs/FILE.py:PRESET` passes "
        "the preset as `arg`. The tables list what each file changes relative to the base configuration "
        "(*added* marks a key the base does not have, e.g. task options), then what each preset changes "
        "relative to the file's default.",
        "",
    ]
    for path in files:
        try:
            module = load_config_module(path)
            config = module.get_config()
            presets = presets_of(module, path)
            preset_configs = {p: flatten(module.get_config(p)) for p in presets}
        except Exception as e:
            raise ExtensionError(f"configuration reference: cannot load configs/{path.name}: {e!r}") from e
        flat = flatten(config)
        lines += [f"(config-file-{path.stem})=", f"### `configs/{path.name}`", ""]
        doc = inspect.cleandoc(module.__doc__ or "")
        if doc:
            lines += ["```text", *doc.splitlines(), "```", ""]
        changes = diff(base, flat)
        lines += [f"Changes relative to the base ({len(changes)}):", ""]
        lines += ["| key | base | this file |", "|---|---|---|"]
        for key, a, b in changes:
            lines.append(f"| `{key}` | {'*added*' if key not in base else show(a)} | {show(b)} |")
        lines.append("")
        for preset, pflat in preset_configs.items():
            pchanges = diff(flat, pflat)
            lines += [f"Preset `{preset}` (`--config=configs/{path.name}:{preset}`):", ""]
            if not pchanges:
                lines += ["the same as the file's default.", ""]
                continue
            lines += ["| key | default | this preset |", "|---|---|---|"]
            for key, a, b in pchanges:
                lines.append(f"| `{key}` | {'*added*' if key not in flat else show(a)} | {show(b)} |")
            lines.append("")
    return lines


def configuration_page() -> str:
    lines = [
        "# Configuration reference",
        "",
        "```{note}",
        "This page is generated at build time from `rlvr_jax/config.py` and `configs/*.py` "
        "(`docs/_ext/rlvr_docs.py`), so it always matches the code it was built from.",
        "```",
        "",
        "A run is one `ml_collections.ConfigDict`. `scripts/train.py --config=configs/FILE.py[:PRESET]` "
        "builds it, `--config.SECTION.KEY=VALUE` overrides any field (an unknown key is an error), and "
        "`rlvr_jax.config.validate` checks it before anything is compiled. What the knobs mean for the "
        "algorithm: [Concepts](../concepts.md).",
        "",
        *base_config_page(),
        *configs_page(),
    ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ API pages

API_PACKAGES = ("rlvr_jax", "serving")


def _modules(package: str) -> list[str]:
    pkg = importlib.import_module(package)
    return sorted(m.name for m in pkgutil.walk_packages(pkg.__path__, package + "."))


def _first_line(module: str) -> str:
    doc = inspect.getdoc(importlib.import_module(module)) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def api_pages() -> dict[str, str]:
    """api/<page>.md for each package (and one for the top-level modules of each root package)."""
    groups: dict[str, list[str]] = {}
    for root in API_PACKAGES:
        groups.setdefault(root, [])
        for name in _modules(root):
            try:
                module = importlib.import_module(name)
            except Exception as e:
                raise ExtensionError(f"API reference: cannot import {name}: {e!r}") from e
            parts = name.split(".")
            if hasattr(module, "__path__"):
                groups.setdefault(name, [])
            elif len(parts) == 2:
                groups[root].append(name)
            else:
                groups.setdefault(".".join(parts[:-1]), []).append(name)
    pages: dict[str, str] = {}
    for package, modules in groups.items():
        title = f"`{package}`" if package not in API_PACKAGES else f"`{package}` (top-level modules)"
        lines = [f"# {title}", ""]
        lines += ["```{eval-rst}", f".. automodule:: {package}", "```", ""]
        if modules:
            lines += ["```{eval-rst}", ".. autosummary::", ""]
            # Relative names: the automodule above made `package` the current module.
            lines += [f"   {m[len(package) + 1 :]}" for m in modules]
            lines += ["```", ""]
        for module in modules:
            lines += [
                f"## `{module}`",
                "",
                "```{eval-rst}",
                f".. automodule:: {module}",
                "   :members:",
                "   :show-inheritance:",
                "```",
                "",
            ]
        pages[f"api/{package}.md"] = "\n".join(lines)
    index = ["# Modules", "", "```{toctree}", ":maxdepth: 1", ""]
    index += [package for package in groups]
    index += ["```", ""]
    pages["api/index.md"] = "\n".join(index)
    return pages


# ------------------------------------------------------------------------------------------- the hook


def generate(app: Sphinx) -> None:
    out = Path(app.srcdir) / GENERATED
    try:
        pages = {"configuration.md": configuration_page(), **api_pages()}
    except Exception as e:
        # No page from an earlier build may survive to hide the failure.
        shutil.rmtree(out, ignore_errors=True)
        if isinstance(e, ExtensionError):
            raise
        raise ExtensionError(f"generating the docs pages failed: {e!r}") from e
    if out.exists():
        for path in out.rglob("*"):
            if path.is_file() and path.relative_to(out).as_posix() not in pages:
                path.unlink()  # a page whose package is gone
    changed = 0
    for rel, text in pages.items():
        path = out / rel
        if path.is_file() and path.read_text() == text:
            continue  # unchanged: Sphinx need not read it again
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        changed += 1
    logger.info("rlvr_docs: %d generated pages (%d changed)", len(pages), changed)


# --------------------------------------------------------------------------------- plain-text docstrings

_CODE = re.compile(r"`([^`]+)`")
_LABEL = re.compile(r"^([A-Za-z_][\w.]*(?: / [A-Za-z_][\w.]*)*(?: \([^)]*\))?): (.*)$")
_ALIGNED = re.compile(r"\S {2,}\S")
_BULLET = re.compile(r"^[-*] ")
_RULE = re.compile(r"^([=\-~^\"'#*+`:.])\1{3,}\s*$")
_ENUM = re.compile(r"^(\(?[0-9a-zA-Z#]{1,2}[.)]\s|[-+*] |\.\. |\|)")


def _escape_text(text: str) -> str:
    return (
        text.replace("\\", "\\\\")
        .replace("*", "\\*")
        .replace("|", "\\|")
        .replace("_", "\\_")
        .replace("[", "\\[")
    )


def inline(text: str) -> str:
    """One line of plain text as reST: `code` spans become literals, everything else is escaped."""
    out, pos = [], 0
    for m in _CODE.finditer(text):
        out.append(_escape_text(text[pos : m.start()]))
        before = text[m.start() - 1] if m.start() else " "
        after = text[m.end()] if m.end() < len(text) else " "
        code = m.group(1)
        if code.strip() != code or code.endswith("\\"):
            out.append(_escape_text(m.group(0)))
        else:
            out.append(
                ("\\ " if before.isalnum() else "") + f"``{code}``" + ("\\ " if after.isalnum() else "")
            )
        pos = m.end()
    out.append(_escape_text(text[pos:]))
    return "".join(out)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _literal(block: list[str]) -> list[str]:
    return ["", ".. code-block:: text", ""] + ["   " + line for line in block] + [""]


def _paragraph(block: list[str]) -> list[str]:
    lines = [inline(line.strip()) for line in block]
    if _ENUM.match(lines[0]) or _RULE.match(block[0].strip()):
        lines[0] = "\\" + lines[0]
    lines = ["\\" + line if _RULE.match(line) else line for line in lines]
    return [*lines, ""]


def _items(block: list[str], start: re.Pattern[str]) -> list[list[str]] | None:
    """Splits a block into items that begin with `start` at column 0 and continue indented; else None."""
    items: list[list[str]] = []
    for line in block:
        if _indent(line) == 0 and start.match(line):
            items.append([line])
        elif items and _indent(line) >= 2:
            items[-1].append(line.strip())
        else:
            return None
    return items


def convert_block(block: list[str]) -> list[str]:
    if block[0].lstrip().startswith(">>>"):
        return [*block, ""]
    # An intro line, then a bullet list ("Design choices:" / "- a" / "  continued").
    for cut in range(len(block)):
        if _indent(block[cut]) == 0 and _BULLET.match(block[cut]):
            intro, rest = block[:cut], block[cut:]
            if all(_indent(x) == 0 and not _ALIGNED.search(x) for x in intro):
                items = _items(rest, _BULLET)
                if items is not None:
                    out = _paragraph(intro) if intro else []
                    for item in items:
                        out.append("- " + inline(" ".join([item[0][2:].strip(), *item[1:]])))
                    return [*out, ""]
            break
    # "key: text" lines with indented continuations, as argument descriptions are written here.
    items = _items(block, _LABEL)
    if (
        items is not None
        and (len(items) > 1 or len(block) > 1)
        and not any(_ALIGNED.search(line.strip()) for item in items for line in item)
    ):
        out = []
        for item in items:
            label, text = _LABEL.match(item[0]).groups()  # type: ignore[union-attr]
            out.append(f"- ``{label}``: " + inline(" ".join([text, *item[1:]])))
        return [*out, ""]
    if any(_indent(line) for line in block) or any(_ALIGNED.search(line.strip()) for line in block):
        if _indent(block[0]) == 0 and not _ALIGNED.search(block[0]) and all(_indent(x) for x in block[1:]):
            return _paragraph(block[:1]) + _literal(block[1:])
        return _literal(block)
    return _paragraph(block)


def plain_docstring(app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]) -> None:
    """autodoc-process-docstring: plain-text docstrings to reST, in place."""
    if not lines:
        return
    blocks: list[list[str]] = []
    current: list[str] = []
    for line in [*lines, ""]:
        if line.strip():
            current.append(line.rstrip())
        elif current:
            # An indented block may contain blank lines: keep following indented lines in the same block.
            blocks.append(current)
            current = []
    merged: list[list[str]] = []
    for block in blocks:
        if merged and all(_indent(x) for x in block) and all(_indent(x) for x in merged[-1]):
            merged[-1] = [*merged[-1], "", *block]
        else:
            merged.append(block)
    out: list[str] = []
    for block in merged:
        out += convert_block(block)
    lines[:] = out


def skip_member(app: Sphinx, what: str, name: str, obj: Any, skip: bool, options: Any) -> bool | None:
    """NamedTuple fields ("Alias for field number N") carry no documentation of their own."""
    doc = getattr(obj, "__doc__", None)
    if isinstance(doc, str) and doc.startswith("Alias for field number"):
        return True
    return None


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("builder-inited", generate)
    app.connect("autodoc-process-docstring", plain_docstring)
    app.connect("autodoc-skip-member", skip_member)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
