"""Small helpers shared by the command-line scripts: one flag style, and every mistake on the command line
or in the config is one line on stderr (`error: ...`) and exit status 2, never a traceback.

The flag style of every script: `--name=value` or `--name value`, names spelt with underscores; the dashed
spelling of a flag (`--max-new-tokens`) is accepted as the same flag, and no flag may be abbreviated.
train and evaluate parse with absl (for ml_collections' `--config.a.b=v` overrides), the others with
`FlagParser`, an argparse parser that follows the same rules.

Two layers: `parse_flags` (given to absl's `app.run`) checks the flags before absl applies them, so a
missing config file or a misspelt `--config.` key names itself and the closest valid key, before JAX is
imported; `fail_cleanly` wraps the script's work, so the errors the library raises for the user (a
ConfigError from `validate`, a missing data file) print their message. `--config` takes a file, or the
name of a packaged config (`--config=gsm8k:small`), so the configs work after a plain `pip install`.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import os
import re
import sys
from collections.abc import Callable, Container, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from absl import flags

from rlvr_jax.config import ConfigError, RunStopped, configs_dir, unknown_key

# Errors that carry a message written for the user: print it, not a traceback. MemoryError: the trainer's
# out-of-device-memory error says which knobs make the update fit (rlvr_jax/trainer/step.py).
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError, FileNotFoundError, KeyError, PermissionError, MemoryError, RunStopped,
)  # fmt: skip


def fail_cleanly(main: Callable[[], int]) -> int:
    """Runs `main`; a user error prints `error: <message>` and exits 2 (RLVR_DEBUG=1 shows the traceback)."""
    try:
        return main()
    except USER_ERRORS as e:
        if os.environ.get("RLVR_DEBUG"):
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args else (e if str(e) else type(e).__name__)
        print(f"error: {message}", file=sys.stderr)
        return 2


def usage_error(message: str) -> NoReturn:
    """One line on stderr, exit status 2 (the usual status for a command-line mistake)."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, for `app.run(main, flags_parser=parse_flags)`: dashed flag names become their
    underscore spelling, `--config=NAME` a packaged config's file, and the `--config` file and its
    `--config.a.b=v` overrides are checked first (`check_config_flags`); absl's own errors (a value of
    the wrong type, an unknown or missing flag) and stray arguments become one line and exit 2 as well."""
    _help_and_exit(argv)
    try:
        argv = flags.FLAGS.read_flags_from_files(argv, force_gnu=False)
        argv = resolve_config_names(underscore_flags(argv, flags.FLAGS))
        checked = check_config_flags(argv)
        with _loaded_once(checked):
            rest = flags.FLAGS(argv)
    except (flags.Error, ConfigError) as e:
        usage_error(f"{e} (--helpshort lists the flags)" if isinstance(e, flags.Error) else str(e))
    if len(rest) > 1:
        usage_error(f"unexpected arguments: {' '.join(rest[1:])} (flags are spelt --name=value)")
    return rest


def _help_and_exit(argv: Sequence[str], name: str = "config") -> None:
    """`--help` / `-h`: the script's docstring and its own flags on stdout, exit 0 (absl's exits 1, and
    under a console command it would show the wrapper's empty docstring). --helpfull stays absl's."""
    if not {"--help", "-h", "--helpshort", "-?"} & set(argv[1 : argv.index("--") if "--" in argv else None]):
        return
    module = flags.FLAGS.find_module_defining_flag(name)
    doc = getattr(sys.modules.get(module) or sys.modules["__main__"], "__doc__", None) or ""
    print(f"{doc.strip()}\n\nflags:\n{flags.FLAGS.module_help(module)}\n")
    print("--helpfull lists absl's own flags too.")
    sys.exit(0)


def underscore_flags(argv: Sequence[str], known: Container[str]) -> list[str]:
    """argv with every `--a-b` / `--a-b=v` whose `a_b` is a known flag name spelt `--a_b`: the dashed
    spelling (vLLM's, drift.py's before) is an alias of the underscore one. Nothing after `--` changes."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        if arg == "--":
            return out + list(argv[i:])
        name, equals, value = arg[2:].partition("=")
        if arg.startswith("--") and "-" in name and name.replace("-", "_") in known:
            arg = f"--{name.replace('-', '_')}{equals}{value}"
        out.append(arg)
    return out


class FlagParser(argparse.ArgumentParser):
    """argparse in the scripts' one flag style: `--name=value` or `--name value` with underscores, the
    dashed spelling accepted as an alias, no abbreviations (as absl), and a mistake is one line on stderr
    with exit status 2 (as `parse_flags`), not a usage block."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        names = {option[2:] for option in self._option_string_actions if option.startswith("--")}
        return super().parse_known_args(underscore_flags(args, names), namespace)

    def error(self, message: str) -> NoReturn:
        usage_error(f"{message} (--help lists the flags)")


def resolve_config_names(argv: list[str], name: str = "config") -> list[str]:
    """argv with `--name=SPEC` given as a packaged config (`gsm8k`, `gsm8k.py:small`, or `configs/x.py`
    where no such file is here) replaced by that config file's path; everything else as it was."""
    out, args = [], iter(argv)
    for arg in args:
        given = re.match(rf"^--?{name}(=(.*))?$", arg)
        if not given:
            out.append(arg)
            continue
        spec = given.group(2) if given.group(1) is not None else next(args, None)
        out.append(f"--{name}={packaged_config(spec)}" if spec is not None else arg)
    return out


def packaged_config(spec: str) -> str:
    """`spec` (a config file and an optional `:preset`) with its file replaced by the packaged config of
    that name when `spec` names no file here but a bare name or `configs/NAME.py` that the package has."""
    path, colon, preset = spec.partition(":")
    given = Path(path)
    if given.is_file() or given.parent not in (Path("."), Path("configs")):
        return spec
    packaged = configs_dir() / (given.name if given.suffix == ".py" else f"{given.name}.py")
    return f"{packaged}{colon}{preset}" if packaged.is_file() else spec


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
        raise ConfigError(f"--{name}={spec}: there is no config file {path}{_closest_config(path)}")
    try:
        return flags.FLAGS[name].parser.parse(spec)
    except (TypeError, ValueError, KeyError) as e:  # ml_collections puts the traceback in the message
        lines = [line for line in str(e).splitlines() if line.strip()]
        raise ConfigError(f"--{name}={spec}: {lines[-1].strip() if lines else type(e).__name__}") from None


def _closest_config(path: str) -> str:
    """The hint for a config file that does not exist: the closest file in its folder, or for a bare
    name the closest packaged config; else what there is."""
    given = Path(path)
    packaged = sorted(p.stem for p in configs_dir().glob("*.py"))
    if given.parent == Path("."):  # a bare name: the packaged configs are the candidates
        match = difflib.get_close_matches(given.stem, packaged, n=1, cutoff=0.6)
        return f" (did you mean {match[0]}?)" if match else f"; the packaged configs: {', '.join(packaged)}"
    folder = given.parent
    others = sorted(p.name for p in folder.glob("*.py")) if folder.is_dir() else []
    match = difflib.get_close_matches(given.name, others, n=1, cutoff=0.6)
    if match:
        return f" (did you mean {folder / match[0]}?)"
    return (
        f"; {folder} holds {', '.join(others)}"
        if others
        else f"; the packaged configs: {', '.join(packaged)}"
    )


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


def with_run_config(argv: list[str], checkpoint: str = "checkpoint", name: str = "config") -> list[str]:
    """argv, plus `--config=<rlvr_jax/run_config.py>:WORKDIR` when it has `--checkpoint=WORKDIR` and no
    `--config`: the config that training run saved (WORKDIR/config.json), so that evaluating a run needs
    only its folder. `--config.a.b=v` overrides apply to it as to a config file."""
    argv = flags.FLAGS.read_flags_from_files(argv, force_gnu=False)
    spec, _ = _config_flag_arguments(argv, name)
    workdir, _ = _config_flag_arguments(argv, checkpoint)
    if spec is not None or workdir is None or not Path(workdir).expanduser().is_dir():
        return argv  # a --checkpoint folder that does not exist: its flag's own check says so
    from rlvr_jax.config import saved_config_path

    if saved_config_path(workdir) is None:
        raise ConfigError(
            f"--{checkpoint}={workdir} holds no config.json (scripts/train.py saves one in its workdir); "
            f"pass --{name}=FILE, the config the run was trained with"
        )
    run_config = f"--{name}={Path(__file__).with_name('run_config.py')}:{workdir}"
    return [argv[0], run_config, *argv[1:]]  # before its overrides, which absl parses in order


def print_config(name: str = "config") -> None:
    """`--print_config`: every key of the `--name` config (with its overrides) with its value, the base
    default where it differs, and its meaning, on stdout. Nothing here imports JAX."""
    from ml_collections import config_flags

    from rlvr_jax.config_help import describe_config

    spec = config_flags.get_config_filename(flags.FLAGS[name])
    overrides = config_flags.get_override_values(flags.FLAGS[name])
    source = " ".join([spec, *(f"--{name}.{key}={value}" for key, value in sorted(overrides.items()))])
    print(describe_config(flags.FLAGS[name].value, source), end="")
