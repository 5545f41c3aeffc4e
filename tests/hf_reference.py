"""transformers' own GGUF loader as the tests' reference, without the parts of its cost that change nothing.

transformers reads a GGUF file with gguf's `GGUFReader`, whose np.memmap runs Python hooks on every slice
(~150k slices for SmolLM2's vocabulary, ~300k for Qwen's), and rebuilds gguf's name map once per module of
the model (~400 times for SmolLM2). `faster_transformers_gguf()` swaps in the same reader over a plain
ndarray view of the same mapping and memoises the pure name-map factory: same bytes, same parser, same
results, 3x faster. `from_pretrained(..., gguf_file=...)` of SmolLM2 (model and tokenizer): ~35 s -> ~12 s
on 2 CPU cores.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path

import gguf
import pytest

# The product's own reader: gguf's parser over a plain ndarray view of the memory map (same bytes, no
# np.memmap per-slice hooks).
from rlvr_jax.weights.gguf import _Reader as _PlainArrayReader


@contextlib.contextmanager
def faster_transformers_gguf() -> Iterator[None]:
    """Speed-ups for the reference that leave its results unchanged.

    transformers imports the reader and the (pure) name-map factory from `gguf` at call time; it
    rebuilds the name map once per module of the model, ~400 times for SmolLM2.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gguf, "GGUFReader", _PlainArrayReader)
        patch.setattr(gguf, "get_tensor_name_map", functools.cache(gguf.get_tensor_name_map))
        yield


def transformers_gguf_model(path: Path):
    """transformers' float32 torch model of a GGUF file, in eval mode (its own loader, sped up as above)."""
    import torch
    import transformers

    with faster_transformers_gguf():
        model = transformers.AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32
        )
    return model.eval()


def transformers_gguf_tokenizer(path: Path):
    """The tokenizer transformers' own GGUF path builds from the file (sped up as above)."""
    import transformers

    with faster_transformers_gguf():
        return transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
