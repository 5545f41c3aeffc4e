"""Small helpers shared by the command-line scripts: every mistake on the command line or in the config
is one line on stderr (`error: ...`) and exit status 2, never a traceback.

Two layers: `parse_flags` (given to absl's `app.run`) checks the flags before absl applies them, so a
missing config file or a misspelt `--config.` key names itself and the closest valid key; `fail_cleanly`
wraps the script's work, so the errors the library raises for the user (a ConfigError from `validate`, a
missing data file) print their message.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

from absl import flags

from rlvr_jax.config import ConfigError, unknown_key

# Errors that carry a message written for the user: print it, not a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, KeyError, PermissionError)


def fail_cleanly(main: Callable[[], int]) -> int:
    """Runs `main`; a user error prints `error: <message>` and exits 2 (RLVR_DEBUG=1 shows the traceback)."""
    try:
        return main()
    except USER_ERRORS as e:
        if os.environ.get("RLVR_DEBUG"):
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {message}", file=sys.stderr)
        return 2


def usage_error(message: str) -> NoReturn:
    """One line on stderr, exit status 2 (the usual status for a command-line mistake)."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, for `app.run(main, flags_parser=parse_flags)`: the `--config` file and its
    `--config.a.b=v` overrides are checked first (`check_config_flags`), and absl's own errors (a value of
    the wrong type, an unknown or missing flag) and stray arguments become one line and exit 2 as well."""
    try:
        checked = check_config_flags(argv)
        with _loaded_once(checked):
            rest = flags.FLAGS(argv)
    except (flags.Error, ConfigError) as e:
        usage_error(f"{e} (--helpshort lists the flags)" if isinstance(e, flags.Error) else str(e))
    if len(rest) > 1:
        usage_error(f"unexpected arguments: {' '.join(rest[1:])} (flags are spelt --name=value)")
    return rest


@contextlib.contextmanager
def _loaded_once(checked: tuple[str, Any] | None, name: str = "config") -> Iterator[None]:
    """While absl parses the flags, `--name=spec` gives the config `check_config_flags` just loaded instead
    of running the file a second time (a config file may do work, or patch something, when it runs)."""
    if checked is None:
        yield
        return
    spec, config = checked
    parser = flags.FLAGS[name].parser
    parse = parser.parse
    parser.parse = lambda text: config if text == spec else parse(text)
    try:
        yield
    finally:
        parser.parse = parse


def _config_flag_arguments(argv: list[str], name: str) -> tuple[str | None, list[str]]:
    """(the `--name` file spec or None, the dotted keys of its `--name.` overrides), read from argv the
    way ml_collections reads them."""
    spec, keys = None, []
    args = iter(argv[1:])
    for arg in args:
        if arg == "--":
            break
        given = re.match(rf"^--?{name}(?:=(.*))?$", arg)
        if given:
            spec = given.group(1) if given.group(1) is not None else next(args, None)
            continue
        override = re.match(rf"^--?(?:no)?{name}\.([^=]+)", arg)
        if override:
            keys.append(override.group(1))
    return spec, keys


def load_config_file(spec: str, name: str = "config"):
    """The config that `--name=spec` (a file and an optional `:preset`) stands for, loaded by the flag's
    own parser; a missing file or a failing `get_config` (an unknown preset) is a ConfigError."""
    path, _, _ = spec.partition(":")  # ml_collections splits at the first colon too
    if not Path(path).is_file():
        folder = Path(path).parent
        others = sorted(p.name for p in folder.glob("*.py")) if folder.is_dir() else []
        match = difflib.get_close_matches(Path(path).name, others, n=1, cutoff=0.6)
        hint = (
            f" (did you mean {folder / match[0]}?)"
            if match
            else f"; {folder} holds {', '.join(others)}"
            if others
            else ""
        )
        raise ConfigError(f"--{name}={spec}: there is no config file {path}{hint}")
    try:
        return flags.FLAGS[name].parser.parse(spec)
    except (TypeError, ValueError, KeyError) as e:  # ml_collections puts the traceback in the message
        lines = [line for line in str(e).splitlines() if line.strip()]
        raise ConfigError(f"--{name}={spec}: {lines[-1].strip() if lines else type(e).__name__}") from None


def check_config_flags(argv: list[str], name: str = "config") -> tuple[str, Any] | None:
    """Raises ConfigError when the `--name` file is missing or will not load, or a `--name.a.b=v` override
    names no key of it (the message names the key and the closest valid one). ml_collections would raise
    a bare KeyError from inside absl's parsing, after which nothing can say which flag was wrong."""
    spec, keys = _config_flag_arguments(flags.FLAGS.read_flags_from_files(argv, force_gnu=False), name)
    if spec is None:
        if keys:
            raise ConfigError(f"--{name}.{keys[0]} overrides a config: pass the file too, --{name}=FILE")
        return None  # absl reports the missing required flag
    config = load_config_file(spec, name)
    for key in keys:
        reason = unknown_key(config, key)
        if reason is not None:
            raise ConfigError(f"--{name}.{key}: {reason}")
    return spec, config
