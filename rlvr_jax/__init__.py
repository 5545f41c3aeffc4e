"""rlvr-jax: reinforcement learning from verifiable rewards on sharded JAX/Flax models.

`from rlvr_jax import GRPOTrainer` is the Python entry point (`rlvr_jax.trainer.grpo_trainer`); it is
imported on first use, so `import rlvr_jax` stays light.
"""

import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from typing import Any

__version__ = "0.1.0"

# Top-level folders of the repository that are subpackages once installed (setup.py's package_dir).
_CHECKOUT_SUBPACKAGES = {"rlvr_jax.serving": "serving", "rlvr_jax.scripts": "scripts"}


class _CheckoutSubpackages:
    """Finds rlvr_jax.serving and rlvr_jax.scripts in a checkout (PYTHONPATH=., `python scripts/x.py`, an
    editable install), where they are the top-level serving/ and scripts/ folders beside this rlvr_jax:
    the names a wheel installs them under, so code and tests import them one way everywhere. First on
    sys.meta_path, so they always come from the same tree as rlvr_jax itself (an editable install of
    another checkout would otherwise hand over its own). A meta path finder needs only `find_spec`; not
    deriving from importlib.abc keeps `import rlvr_jax` 20 ms cheaper."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def find_spec(self, fullname, path=None, target=None) -> importlib.machinery.ModuleSpec | None:
        folder = _CHECKOUT_SUBPACKAGES.get(fullname)
        init = self.root / folder / "__init__.py" if folder else None
        if init is None or not init.is_file():
            return None
        return importlib.util.spec_from_file_location(
            fullname, init, submodule_search_locations=[str(init.parent)]
        )


if not (Path(__file__).parent / "serving").is_dir():  # not a wheel's copy, which holds them itself
    sys.meta_path.insert(0, _CheckoutSubpackages(Path(__file__).resolve().parent.parent))


__all__ = ["GRPOTrainer", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "GRPOTrainer":
        from rlvr_jax.trainer.grpo_trainer import GRPOTrainer

        return GRPOTrainer
    raise AttributeError(f"module 'rlvr_jax' has no attribute {name!r}")
