"""The pure JAX functions both export formats serialize, over a flat parameter dict.

Parameters are an argument, not constants folded into the module: a serialized StableHLO module (and the
TF graph proto that wraps it) is limited to 2 GB, and keeping weights apart lets the SavedModel hold them
as TF variables and the StableHLO export as a safetensors file. The dict is flat ("layers.q" -> array) so
that a caller rebuilds it from safetensors, or from TF variables, without knowing the model's structure.

The greedy loop is the sampler's own `generate` at temperature 0, so an export decodes exactly what
`Sampler.generate_ids` decodes: same prefill, same stop handling, same padding after a stop.

Exports use the reference ("xla") attention whatever the model's config says: one module is lowered for
several platforms, but the faster kernels are picked by the backend at trace time. On a GPU host the
decode step would take the Pallas (Triton) kernel, and a cpu+cuda export then fails to lower ("Only
interpret mode is supported on CPU backend", seen on an H100); TensorFlow could not run it either.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from rlvr_jax.generate.sampler import RowParams, SamplingParams, generate
from rlvr_jax.models.decoder import Decoder, apply

Array = jax.Array
SEP = "."


def portable_model(model: Decoder) -> Decoder:
    """The same parameters under a config whose attention lowers to plain StableHLO on every platform."""
    cfg = model.cfg
    if getattr(cfg, "attention", "xla") == "xla":
        return model
    graphdef, state = nnx.split(model)
    out = nnx.merge(graphdef, state)  # shares the parameter arrays
    out.cfg = dataclasses.replace(cfg, attention="xla")
    return out


def flat_params(model: Decoder) -> dict[str, Array]:
    """The model's parameters as {"layers.q": array, ...}, in the model's storage dtype."""
    nested = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    out: dict[str, Array] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}{SEP}{key}" if prefix else str(key), value)
        else:
            out[prefix] = node

    walk("", nested)
    return out


def _nested(flat: dict[str, Array]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for name, value in flat.items():
        node = nested
        *parents, leaf = name.split(SEP)
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def _state(template: nnx.State, flat: dict[str, Array]) -> nnx.State:
    """The model state holding `flat` (traced arrays inside an export), structured like `template`."""
    state = jax.tree.map(lambda x: x, template)  # a fresh State: the template is left untouched
    nnx.replace_by_pure_dict(state, _nested(flat))
    return state


def make_generate_fn(
    model: Decoder, *, max_new_tokens: int, stop_ids: Sequence[int], pad_id: int
) -> Callable[[dict[str, Array], Array, Array], dict[str, Array]]:
    """fn(params, input_ids, attention_mask) -> {tokens, logprobs, lengths, finished}: greedy decoding.

    `generate` draws a sample alongside the argmax every step; at temperature 0 the argmax is kept and
    the sample (from a fixed key, so the function stays pure) is discarded.
    """
    graphdef, template = nnx.split(portable_model(model))
    stops = tuple(int(i) for i in stop_ids)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens)

    def fn(params: dict[str, Array], input_ids: Array, attention_mask: Array) -> dict[str, Array]:
        out = generate(
            graphdef,
            _state(template, params),
            input_ids.astype(jnp.int32),
            attention_mask.astype(bool),
            jax.random.key(0),
            RowParams.broadcast(greedy, input_ids.shape[0]),
            max_new_tokens=max_new_tokens,
            stop_ids=stops,
            pad_id=int(pad_id),
        )
        return {
            "tokens": out.tokens,
            "logprobs": out.logprobs,
            "lengths": out.lengths,
            "finished": out.finished,
        }

    return fn


def make_logits_fn(model: Decoder) -> Callable[[dict[str, Array], Array, Array], dict[str, Array]]:
    """fn(params, input_ids, attention_mask) -> {logits [B, P, V] float32}: one full forward pass."""
    model = portable_model(model)
    graphdef, template = nnx.split(model)
    cfg = model.cfg

    def fn(params: dict[str, Array], input_ids: Array, attention_mask: Array) -> dict[str, Array]:
        arrays = nnx.merge(graphdef, _state(template, params)).arrays()
        logits, _ = apply(cfg, arrays, input_ids.astype(jnp.int32), mask=attention_mask.astype(bool))
        return {"logits": logits.astype(jnp.float32)}

    return fn


def make_functions(
    model: Decoder, signatures: Sequence[str], *, max_new_tokens: int, stop_ids: Sequence[int], pad_id: int
) -> dict[str, Callable[[dict[str, Array], Array, Array], dict[str, Array]]]:
    """The requested signatures by name ("generate", "logits")."""
    makers = {
        "generate": lambda: make_generate_fn(
            model, max_new_tokens=max_new_tokens, stop_ids=stop_ids, pad_id=pad_id
        ),
        "logits": lambda: make_logits_fn(model),
    }
    return {name: makers[name]() for name in signatures}
