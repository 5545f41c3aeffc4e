"""Does the code sandbox work on this machine? Scores MBPP's reference solutions (all should pass).

    python benchmarks/sandbox_check.py ../shared/data/mbpp [N]

Run before a code-task training run on a new machine: a sandbox that cannot start scores every program 0
with the reason, which this prints.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rlvr_jax.data import get_task
from rlvr_jax.rewards import get_reward

samples = get_task("mbpp").load("test", sys.argv[1])[: int(sys.argv[2]) if len(sys.argv) > 2 else 32]
result = get_reward("code_mbpp")(["```python\n" + s["code"] + "\n```" for s in samples], samples)
print(f"mbpp reference solutions pass: {sum(result.scores) / len(samples):.3f}", result.reasons[:2])
