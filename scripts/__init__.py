"""The command-line scripts, installed as `rlvr_jax.scripts` (setup.py): each has a `main()` that the
console command of its name calls (`rlvr-train` -> train.py), and runs as a file too
(`python scripts/train.py ...`)."""
