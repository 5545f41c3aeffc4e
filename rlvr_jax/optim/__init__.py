"""The machinery under the GRPO update, blind to the algorithm: what `rlvr_jax.rl` runs its update with.

  optimizer.py   AdamW, clipping, the warmup + cosine / constant schedule (`OptimConfig`)
  state.py       `TrainState` (parameters, optimizer moments, counters), its shardings on a mesh, float32
                 master weights, `sampler_params` (the sampler's copy), `export_params`
  accumulate.py  strided micro-batches, gradient accumulation under `lax.scan`, the update that skips
                 non-finite steps, jitting a step with the state donated
  memory.py      the memory probe: the fewest micro-batches whose compiled update fits the device
                 (imported on demand: `from rlvr_jax.optim import memory`)
"""

from rlvr_jax.optim.accumulate import accumulate_gradients, apply_gradients, jit_update
from rlvr_jax.optim.optimizer import OptimConfig, make_optimizer, make_schedule
from rlvr_jax.optim.state import (
    TrainState,
    export_params,
    init_train_state,
    sampler_params,
    train_state_shardings,
)

__all__ = [
    "OptimConfig",
    "TrainState",
    "accumulate_gradients",
    "apply_gradients",
    "export_params",
    "init_train_state",
    "jit_update",
    "make_optimizer",
    "make_schedule",
    "sampler_params",
    "train_state_shardings",
]
