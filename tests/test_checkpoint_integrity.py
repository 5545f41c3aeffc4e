"""Checkpoints under faults: every file checked against a manifest written after the commit, fallback to
the newest intact step (or one clear error), kill -9 while writing, and a full disk.

The kill and the full disk are real: a subprocess SIGKILLs itself at the moment between orbax's commit
and the manifest, and the disk is a 448 KB tmpfs mounted in a private mount namespace (`unshare`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from rlvr_jax.checkpointing import DAMAGED, MANIFEST, Checkpointer, CheckpointError, abstract_like
from tests.test_checkpointing import assert_trees_equal, small_state

REPO = Path(__file__).resolve().parent.parent


def save_steps(directory: Path, steps=(1, 2), keep: int | None = 3) -> dict[int, dict]:
    states = {step: small_state(seed=step, step=step) for step in steps}
    with Checkpointer(directory, keep=keep) as ckpt:
        for step, state in states.items():
            assert ckpt.save(step, state, {"step": step})
    return states


def largest_array_file(step_dir: Path) -> Path:
    files = (step_dir / "state").rglob("*")
    return max((p for p in files if p.is_file() and "/d/" in str(p)), key=lambda p: p.stat().st_size)


def scramble(path: Path) -> None:
    """Random bytes over most of the file, its size unchanged: what orbax alone restores without a word."""
    data = bytearray(path.read_bytes())
    n = min(len(data) - 64, 12 * 1024)
    data[64 : 64 + n] = np.random.default_rng(0).bytes(n)
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def empty(path: Path) -> None:
    path.write_bytes(b"")


DAMAGE = {
    # name: (what to do to step 2's directory, the file the message must name, words it must contain)
    "random_bytes_in_an_array": (lambda d: scramble(largest_array_file(d)), "state/", "SHA-256"),
    "truncated_array": (lambda d: truncate(largest_array_file(d)), "state/", "truncated"),
    "deleted_array": (lambda d: largest_array_file(d).unlink(), "state/", "missing"),
    "empty_orbax_metadata": (lambda d: empty(d / "state" / "_METADATA"), "state/_METADATA", "truncated"),
    "no_manifest": (lambda d: (d / MANIFEST).unlink(), MANIFEST, "did not finish"),
    "garbled_manifest": (lambda d: (d / MANIFEST).write_text('{"files": '), MANIFEST, "unreadable"),
}  # fmt: skip


def test_manifest_covers_every_file_and_intact_steps_pass(tmp_path: Path) -> None:
    save_steps(tmp_path)
    for step in (1, 2):
        step_dir = tmp_path / str(step)
        listed = set(json.loads((step_dir / MANIFEST).read_text())["files"])
        on_disk = {str(p.relative_to(step_dir)) for p in step_dir.rglob("*") if p.is_file()}
        assert listed == on_disk - {MANIFEST}
        assert any(name.startswith("state/") and "/d/" in name for name in listed)  # the array data
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.all_steps() == [1, 2] and ckpt.verify_step(1) is None and ckpt.verify_step(2) is None


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_newest_step_falls_back_with_a_warning_naming_step_and_file(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    states = save_steps(tmp_path)
    harm, file_hint, words = DAMAGE[damage]
    harm(tmp_path / "2")
    target = abstract_like(states[1])
    with Checkpointer(tmp_path, keep=3) as ckpt:
        with pytest.raises(CheckpointError, match=rf"checkpoint 2 in \S+ is damaged: .*{words}") as info:
            ckpt.restore(2, abstract_state=target)  # asked for that step: no silent substitute
        assert file_hint in str(info.value) and "\n" not in str(info.value)

        with caplog.at_level(logging.WARNING, logger="rlvr_jax.checkpointing"):
            restored, meta = ckpt.restore(abstract_state=target)
        assert meta == {"step": 1}
        assert_trees_equal(restored, states[1])
        warning = next(r.getMessage() for r in caplog.records if "checkpoint 2" in r.getMessage())
        assert "damaged" in warning and file_hint in warning and words in warning
        assert ckpt.latest_step() == 1 and ckpt.all_steps() == [1]

        # The resumed run saves step 2 again: the damaged one is moved aside first, not overwritten.
        assert ckpt.save(2, states[2], {"step": 2, "again": True})
        ckpt.wait()
        assert ckpt.all_steps() == [1, 2]
    assert (tmp_path / DAMAGED / "2").is_dir()
    with Checkpointer(tmp_path) as again:
        restored, meta = again.restore(abstract_state=target)
    assert meta == {"step": 2, "again": True}
    assert_trees_equal(restored, states[2])


def test_no_intact_step_is_one_error_naming_every_step_and_file(tmp_path: Path) -> None:
    states = save_steps(tmp_path)
    scramble(largest_array_file(tmp_path / "2"))
    truncate(largest_array_file(tmp_path / "1"))
    with Checkpointer(tmp_path) as ckpt, pytest.raises(CheckpointError) as info:
        ckpt.restore(abstract_state=abstract_like(states[1]))
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"no intact checkpoint in {tmp_path}")
    assert "step 2: state/" in message and "SHA-256" in message
    assert "step 1: state/" in message and "truncated" in message


def test_unverified_restore_reads_steps_without_a_manifest(tmp_path: Path) -> None:
    """verify=False: checkpoints written before manifests existed can still be restored, on request."""
    states = save_steps(tmp_path, steps=(1,))
    (tmp_path / "1" / MANIFEST).unlink()
    with Checkpointer(tmp_path) as ckpt, pytest.raises(CheckpointError, match="no intact checkpoint"):
        ckpt.restore(abstract_state=abstract_like(states[1]))
    with Checkpointer(tmp_path, verify=False) as ckpt:
        assert ckpt.all_steps() == [1]
        restored, _ = ckpt.restore(abstract_state=abstract_like(states[1]))
    assert_trees_equal(restored, states[1])


KILLED_WHILE_WRITING = """
import os, signal, sys
import jax.numpy as jnp
from rlvr_jax import checkpointing

directory, keep = sys.argv[1], int(sys.argv[2])
state = lambda v: {"w": jnp.full((256,), float(v)), "step": jnp.asarray(v)}
ckpt = checkpointing.Checkpointer(directory, keep=keep)
for step in (1, 2):
    ckpt.save(step, state(step), {"step": step})
ckpt.wait()

def die(step_dir):  # orbax has committed step 3 and pruned old steps; its manifest is next
    print("killing myself while checkpoint", os.path.basename(step_dir), "is written", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

checkpointing.write_manifest = die
ckpt.save(3, state(3), {"step": 3})
ckpt.wait()
print("not killed", flush=True)
"""


@pytest.mark.parametrize("keep", [1, 3])
def test_kill_9_while_writing_resumes_from_the_last_complete_step(tmp_path: Path, keep: int) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_WHILE_WRITING, str(tmp_path), str(keep)],
        capture_output=True, text=True, timeout=120, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert "killing myself while checkpoint 3 is written" in proc.stdout
    assert (tmp_path / "3" / "state").is_dir() and not (tmp_path / "3" / MANIFEST).exists()
    # keep=1: orbax prunes when step 3 commits, but never the newest complete step (2).
    assert (tmp_path / "2" / MANIFEST).is_file()
    target = {"w": jnp.zeros(256), "step": jnp.asarray(0)}
    with Checkpointer(tmp_path, keep=keep) as ckpt:
        assert ckpt.latest_step() == 2
        restored, meta = ckpt.restore(abstract_state=target)
        assert meta == {"step": 2} and float(restored["w"][0]) == 2.0
        assert ckpt.save(3, {"w": jnp.full((256,), 3.0), "step": jnp.asarray(3)}, {"step": 3})
        ckpt.wait()
        assert ckpt.latest_step() == 3
    assert (tmp_path / DAMAGED / "3").is_dir()


DISK_FULL = """
import json, os, shutil, sys
import jax.numpy as jnp, numpy as np
from rlvr_jax.checkpointing import Checkpointer, CheckpointError

directory = sys.argv[1]
noise = lambda seed: {"w": jnp.asarray(np.random.default_rng(seed).standard_normal(60_000), jnp.float32)}
out = {}
ckpt = Checkpointer(directory, keep=3)
ckpt.save(1, noise(1), {"step": 1})
ckpt.wait()
out["free_after_1"] = shutil.disk_usage(directory).free
try:
    ckpt.save(2, noise(2), {"step": 2})  # 240 KB of incompressible floats: the disk has no room for it
    ckpt.wait()
except CheckpointError as e:
    out["error"] = str(e)
out["free_after_2"] = shutil.disk_usage(directory).free
out["entries"] = sorted(os.listdir(directory))
restored, meta = ckpt.restore(abstract_state={"w": jnp.zeros(60_000, jnp.float32)})
out["restored_meta"] = meta
out["restored_equal"] = bool(np.array_equal(np.asarray(restored["w"]), np.asarray(noise(1)["w"])))
ckpt.close()
print(json.dumps(out))
"""


def test_disk_full_while_saving_is_a_clear_error_and_the_previous_step_stays_intact(tmp_path: Path) -> None:
    mount = tmp_path / "disk"
    mount.mkdir()
    assert shutil.which("unshare"), "unshare (util-linux) is needed to mount a small tmpfs"
    # Root mounts in a private mount namespace; anyone else in a user namespace of their own.
    unshare = ["unshare", "--mount"] if os.geteuid() == 0 else ["unshare", "--user", "--map-root-user", "-m"]
    script = f'mount -t tmpfs -o size=448k tmpfs "$1" && exec "{sys.executable}" -c "$2" "$1/ckpt"'
    proc = subprocess.run(
        [*unshare, "sh", "-c", script, "sh", str(mount), textwrap.dedent(DISK_FULL)],
        capture_output=True, text=True, timeout=120, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    error = out["error"]
    assert error.startswith("checkpoint 2 could not be written to ") and "\n" not in error
    assert "no space left on device" in error and "checkpoint 1 is intact" in error
    assert out["entries"] == ["1"]  # the half-written temporary directory is gone...
    assert out["free_after_2"] >= out["free_after_1"] - 4096  # ...and with it the space it held
    assert out["restored_meta"] == {"step": 1} and out["restored_equal"]
    assert not mount.exists() or not any(mount.iterdir())  # the tmpfs lived only in that namespace
