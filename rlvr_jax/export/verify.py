"""Checks an export against the framework itself: same prompts, greedy tokens from both, compared.

An artifact that loads is not yet an artifact that answers like the model it came from (a TensorFlow
that mis-executes the module, a prompt length the model was not exported for, a changed stop id), so
`scripts/export.py --verify` runs this once after writing.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from rlvr_jax.export.functions import portable_model
from rlvr_jax.export.spec import ExportSpec
from rlvr_jax.generate.sampler import Sampler, SamplingParams
from rlvr_jax.models.decoder import Decoder

# fn(input_ids, attention_mask) -> outputs of the "generate" signature, as numpy arrays.
GenerateFn = Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]]


@dataclasses.dataclass
class VerifyResult:
    """Greedy tokens of the export and of the JAX sampler on the same prompts."""

    exported: np.ndarray  # [B, N]
    reference: np.ndarray  # [B, N]
    exported_lengths: np.ndarray
    reference_lengths: np.ndarray

    @property
    def equal(self) -> bool:
        return bool(
            np.array_equal(self.exported, self.reference)
            and np.array_equal(self.exported_lengths, self.reference_lengths)
        )

    def summary(self) -> str:
        rows, n = self.reference.shape
        if self.equal:
            return f"greedy tokens equal the JAX sampler's: {rows} prompts x {n} tokens"
        bad = [i for i in range(rows) if not np.array_equal(self.exported[i], self.reference[i])]
        return (
            f"greedy tokens differ from the JAX sampler's in rows {bad}: exported "
            f"{self.exported[bad].tolist()} vs reference {self.reference[bad].tolist()}"
        )


def encode_prompts(tokenizer: Any, prompts: Sequence[str], prompt_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded ids and an int32 mask of exactly `prompt_len` (chat template applied when there is one)."""
    chat = bool(tokenizer.chat_template)
    texts = [tokenizer.format(p, chat=chat) for p in prompts]
    try:
        ids, mask = tokenizer.encode_batch(texts, chat_formatted=chat, length=prompt_len)
    except ValueError as e:
        raise ValueError(
            f"{e} (the export's prompt length): use shorter prompts or a larger prompt_len"
        ) from e
    return ids, mask.astype(np.int32)


def compare_greedy(
    model: Decoder,
    run: GenerateFn,
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    spec: ExportSpec,
    *,
    stop_ids: Sequence[int],
    pad_id: int,
) -> VerifyResult:
    """Runs the export's generate and `Sampler.generate_ids` (temperature 0) on the same batch."""
    # The sampler decodes with the export's attention implementation, so the two differ only if the
    # export does.
    sampler = Sampler(portable_model(model), types.SimpleNamespace(pad_id=pad_id, stop_ids=tuple(stop_ids)))
    greedy = SamplingParams(temperature=0.0, max_new_tokens=spec.max_new_tokens)
    ref = jax.device_get(sampler.generate_ids(input_ids, attention_mask.astype(bool), greedy))
    out = run(input_ids, attention_mask)
    return VerifyResult(
        exported=np.asarray(out["tokens"]),
        reference=np.asarray(ref.tokens),
        exported_lengths=np.asarray(out["lengths"]),
        reference_lengths=np.asarray(ref.lengths),
    )
