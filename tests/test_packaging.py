"""Packaging: a console command per script, the server importable as rlvr_jax.serving, and a wheel that
holds serving/, scripts/ and configs/ as subpackages (the folders stay at the top of the repository).

The console commands are those of the environment running the tests (`make install` puts them in
.venv/bin through `pip install -e`); a venv installed before they existed needs that install again.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.conftest import REPO


def setup_constant(name: str):
    """A constant of setup.py (COMMANDS, SUBPACKAGES), read without running setup()."""
    tree = ast.parse((REPO / "setup.py").read_text())
    (value,) = [n.value for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == name]
    return ast.literal_eval(value)


COMMANDS = setup_constant("COMMANDS")


def test_every_script_has_a_console_command_named_for_it():
    scripts = {p.stem for p in (REPO / "scripts").glob("*.py") if p.stem != "__init__"}
    assert set(COMMANDS) == scripts


def test_the_console_commands_answer_help():
    """`rlvr-<script> --help` runs the script's main() from the installed package: exit 0, its own
    description first. All at once: each is a second or two of imports."""
    binaries = {name: Path(sys.executable).parent / f"rlvr-{name.replace('_', '-')}" for name in COMMANDS}
    missing = [str(path) for path in binaries.values() if not path.is_file()]
    assert not missing, f"no console commands {missing}: install the package again (pip install -e .)"
    procs = {
        name: subprocess.Popen(
            [str(path), "--help"], cwd="/", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for name, path in binaries.items()
    }
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, (name, err[-2000:])
        module = ast.parse((REPO / "scripts" / f"{name}.py").read_text())
        first_line = ast.get_docstring(module).splitlines()[0]
        assert first_line.split(":")[0] in out, (name, out[:500])


def test_the_server_imports_as_rlvr_jax_serving_from_the_top_level_folder():
    import rlvr_jax.scripts
    import rlvr_jax.serving
    import rlvr_jax.serving.config

    assert Path(rlvr_jax.serving.__file__) == REPO / "serving" / "__init__.py"
    assert rlvr_jax.serving.config.ServerConfig.__module__ == "rlvr_jax.serving.config"
    assert Path(rlvr_jax.scripts.__file__) == REPO / "scripts" / "__init__.py"


def test_a_script_runs_as_a_module_of_the_package_and_as_a_file():
    by_module = subprocess.run(
        [sys.executable, "-m", "rlvr_jax.scripts.compare", "--help"], cwd=REPO, capture_output=True, text=True
    )
    by_file = subprocess.run(
        [sys.executable, "scripts/compare.py", "--help"], cwd=REPO, capture_output=True, text=True
    )
    assert by_module.returncode == by_file.returncode == 0, (by_module.stderr, by_file.stderr)
    assert by_module.stdout.split("\n", 1)[1] == by_file.stdout.split("\n", 1)[1]  # the usage line differs


def test_the_wheel_holds_the_top_level_folders_as_subpackages(tmp_path):
    """Built from a copy of the tree (the build writes build/ and *.egg-info where it runs)."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("setup.py", "README.md"):
        shutil.copy(REPO / name, source / name)
    for folder in ("rlvr_jax", *setup_constant("SUBPACKAGES").values()):
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    build = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        str(tmp_path),
    ]
    proc = subprocess.run([*build, "."], cwd=source, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = tmp_path.glob("rlvr_jax-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"rlvr_jax/serving/app.py", "rlvr_jax/scripts/train.py", "rlvr_jax/configs/gsm8k.py"} <= names
    assert {n.split("/")[0] for n in names} == {"rlvr_jax", wheel.name.split("-py3")[0] + ".dist-info"}
    entry_points = zipfile.ZipFile(wheel).read(wheel.name.split("-py3")[0] + ".dist-info/entry_points.txt")
    assert "rlvr-serve = rlvr_jax.scripts.serve:main" in entry_points.decode()
