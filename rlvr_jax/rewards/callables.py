"""Rewards as plain Python callables: the functions a notebook cell, a script's `__main__` or a TRL / Tunix
recipe defines, used next to the rewards registered by name.

A reward spec (`RewardSpec`) is one of:

    "numeric"                          a registered reward (`rlvr_jax.rewards.registered_rewards()`)
    fn                                 a function, in either signature below
    [spec, (spec, weight), ...]        their weighted sum (a bare item weighs 1), e.g.
                                       [correct, ("format", 0.1), (shorter, 0.5)]

`set_reward(config, spec)` registers the functions under their own names and points `config.reward` at
the result (a weighted list becomes `weighted_sum` with `reward.options.components`). The trainer
(`rlvr_jax.trainer.train`), the evaluation (`rlvr_jax.evaluation.evaluate`) and `rlvr_jax.GRPOTrainer`
then see a registered name like any other, validation checks it, and the run's config.json records it.

Two signatures, told apart by the parameter names:

    fn(completions, samples, **options) -> RewardResult
        this package's own (`rewards/base.py`): the first two parameters are named `completions` and
        `samples`; each sample is the task's dict (prompt, answer, ...); each score comes with a reason.
    fn(prompts, completions, **columns) -> list[float | None]
        TRL's and Tunix's: any other function. It is wrapped in `TRLReward`, which calls it with keyword
        arguments as TRL does: `prompts` (each sample's prompt: a string or a list of chat messages),
        `completions` (strings), and every other field of the samples as a list, one value per completion
        (`answer=[...]`: the data set's other columns, plus `id`, `completion_length` in tokens and
        `finished`). A function without `**kwargs` gets only the arguments it names. `reward.options` are
        passed as keyword arguments too. `None` (or NaN) means "does not apply to this sample": the
        sample scores 0 from this function, with the reason "not applicable"; in a weighted list it adds
        nothing to the sum, which is TRL's rule (it sums the functions' rewards with nansum).

Where they run. The trainer scores rewards in worker processes (`rewards/pool.py`), which import this
package but never the user's `__main__`. A function they cannot import by name (defined in a notebook or
in a script's `__main__`, a lambda, a closure) is sent to them by value with cloudpickle, together with
the globals it uses; one that cannot be pickled even so (it holds an open file, a lock, a live
connection) fails the first step with a message that names it. By value rather than in-process, so that a
callable keeps what the pool gives every reward: several processes for checkers that hold the GIL, a
timeout that kills a hung checker, and a crash (a segfault in a C extension) that costs a worker, not the
run. Evaluation scores in-process, as it does for every reward.
"""

from __future__ import annotations

import inspect
import itertools
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from rlvr_jax.registry import same_definition
from rlvr_jax.rewards.base import REWARDS, RewardResult

RewardSpec = str | Callable[..., Any] | Sequence[str | Callable[..., Any] | tuple[Any, float]]

NOT_APPLICABLE = "not applicable (the reward returned None)"
_NATIVE_PARAMETERS = ("completions", "samples")
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def callable_name(fn: Callable[..., Any]) -> str:
    """A readable name for a reward function: its `__name__` (of the wrapped function for a
    functools.partial), "lambda" for a lambda, else its type's name."""
    name = getattr(fn, "__name__", None) or getattr(getattr(fn, "func", None), "__name__", None)
    name = name or type(fn).__name__
    return "lambda" if name == "<lambda>" else name


def is_native(fn: Callable[..., Any]) -> bool:
    """Whether `fn` has this package's signature `fn(completions, samples, ...)` (by parameter names)."""
    if isinstance(fn, TRLReward):
        return True  # already adapted
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: treat as TRL-style
        return False
    positional = [p.name for p in parameters if p.kind in _POSITIONAL]
    return tuple(positional[:2]) == _NATIVE_PARAMETERS


class TRLReward:
    """A reward with TRL's / Tunix's signature `fn(prompts, completions, **columns) -> list[float | None]`
    as one of this package's: `reward(completions, samples, **options) -> RewardResult` (the module
    docstring says what the function receives and how None scores).

    conversational: give `completions` as TRL does for chat data, `[{"role": "assistant", "content":
    text}]` per completion, for functions written against that (`completion[0]["content"]`); by default
    they are strings.
    """

    def __init__(self, fn: Callable[..., Any], name: str | None = None, *, conversational: bool = False):
        if not callable(fn):
            raise TypeError(f"a reward must be callable, got {type(fn).__name__}")
        self.fn = fn
        self.conversational = conversational
        # Named like the function, so that the registry sees a re-run notebook cell as the same
        # definition, the pool and its messages name it, and the worker processes get it by value.
        self.__name__ = name or callable_name(fn)
        if hasattr(fn, "__qualname__"):  # none on a partial: the registry then compares the objects
            self.__qualname__ = fn.__qualname__
        self.__module__ = getattr(fn, "__module__", None) or __name__
        self.__doc__ = getattr(fn, "__doc__", None)

    def __repr__(self) -> str:
        return f"TRLReward({self.__name__})"

    @property
    def __signature__(self) -> inspect.Signature:
        """(completions, samples, then the function's own keyword parameters): what `reward.options` may
        set, for `rlvr_jax.config.validate`."""
        parameters = [
            inspect.Parameter("completions", inspect.Parameter.POSITIONAL_OR_KEYWORD),
            inspect.Parameter("samples", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        ]
        try:
            own = list(inspect.signature(self.fn).parameters.values())
        except (TypeError, ValueError):
            own = [inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)]
        for p in own:
            if p.kind in _NAMED and p.name not in ("prompts", "completions", "samples"):
                parameters.append(p.replace(kind=inspect.Parameter.KEYWORD_ONLY))
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in own):
            parameters.append(inspect.Parameter("options", inspect.Parameter.VAR_KEYWORD))
        return inspect.Signature(parameters)

    def __call__(
        self, completions: Sequence[Any], samples: Sequence[Mapping[str, Any]], **options: Any
    ) -> RewardResult:
        if len(completions) != len(samples):
            raise ValueError(f"{len(completions)} completions for {len(samples)} samples")
        texts = [c if isinstance(c, str) else str(c) for c in completions]
        columns: dict[str, list[Any]] = {}
        for sample in samples:
            for key in sample:
                if key != "prompt" and key not in columns:
                    columns[key] = [s.get(key) for s in samples]
        chat = [[{"role": "assistant", "content": t}] for t in texts] if self.conversational else None
        arguments: dict[str, Any] = {
            "prompts": [s.get("prompt") for s in samples],
            "completions": chat or texts,
            **columns,
            **options,
        }
        values = self.fn(**self._accepted(arguments, columns, options))
        return RewardResult(*self._scores(values, len(texts)))

    def _accepted(self, arguments: dict[str, Any], columns: Mapping, options: Mapping) -> dict[str, Any]:
        """The arguments the function takes (all of them when it takes **kwargs); a parameter without a
        default that no column fills is an error naming the columns there are."""
        try:
            parameters = inspect.signature(self.fn).parameters
        except (TypeError, ValueError):
            return arguments
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            return arguments
        unknown = [k for k in options if k not in parameters]
        if unknown:
            raise TypeError(
                f"reward.options.{unknown[0]} is not a parameter of reward {self.__name__!r}; it takes "
                f"{', '.join(parameters) or 'no parameters'}"
            )
        for name, p in parameters.items():
            if p.default is inspect.Parameter.empty and p.kind in _NAMED and name not in arguments:
                have = ", ".join(["prompts", "completions", *columns])
                raise TypeError(
                    f"reward {self.__name__!r} takes {name!r}, but the samples have no such column; "
                    f"it can take: {have}"
                )
        return {k: v for k, v in arguments.items() if k in parameters}

    def _scores(self, values: Any, n: int) -> tuple[np.ndarray, list[str]]:
        """float32 scores and reasons from the function's list; None / NaN score 0, "not applicable"."""
        what = "a TRL-style reward returns a list with one float (or None) per completion"
        if isinstance(values, str | bytes | Mapping) or values is None:
            raise TypeError(f"reward {self.__name__!r} returned a {type(values).__name__}; {what}")
        try:
            values = list(values)
        except TypeError:
            raise TypeError(f"reward {self.__name__!r} returned a {type(values).__name__}; {what}") from None
        if len(values) != n:
            raise ValueError(f"reward {self.__name__!r} returned {len(values)} scores for {n} completions")
        scores = np.zeros(n, np.float32)
        reasons = []
        for i, value in enumerate(values):
            if value is not None and not isinstance(value, numbers.Real):
                raise TypeError(
                    f"reward {self.__name__!r} returned {value!r} (a {type(value).__name__}) for completion "
                    f"{i}; {what}"
                )
            if value is None or math.isnan(value):
                reasons.append(NOT_APPLICABLE)
                continue
            if math.isinf(value):
                raise ValueError(f"reward {self.__name__!r} returned {value} for completion {i}")
            scores[i] = float(value)
            reasons.append(f"returned {float(value):g}")
        return scores, reasons


def trl_reward(fn: Callable[..., Any], name: str | None = None, *, conversational: bool = False) -> TRLReward:
    """`fn(prompts, completions, **columns) -> list[float | None]` as a reward of this package. Functions
    with that signature are wrapped for you wherever a reward spec is taken; call this to choose the name,
    to wrap a function whose first two parameters happen to be named `completions, samples`, or to get
    TRL's chat-format completions (`conversational=True`)."""
    return TRLReward(fn, name, conversational=conversational)


# ------------------------------------------------------------------------------------------- registering


def _registered_as(fn: Callable[..., Any]) -> str | None:
    """The name `fn` is registered under, itself (a built-in passed as a function, a function registered
    before) or wrapped (a TRL-style function registered before), or None."""
    for name in REWARDS.in_order():
        registered = REWARDS.get(name)
        if registered is fn or (isinstance(registered, TRLReward) and registered.fn is fn):
            return name
    return None


def register_callable(fn: Callable[..., Any], taken: set[str] | None = None) -> str:
    """Registers a reward function (wrapped in `TRLReward` unless it has this package's signature) and
    returns its registered name: the function's own name, or `name_2`, `name_3`, ... when that name is
    taken by a different definition or, within one spec, by another function (`taken`).

    A function defined again under the same name in the same module (a re-run notebook cell) replaces
    the old one. Lambdas and partials have no name to tell them apart, so each gets a name of its own.
    """
    taken = set() if taken is None else taken
    if not callable(fn):
        raise TypeError(f"a reward must be a registered name or a callable, got {fn!r}")
    existing = _registered_as(fn)
    if existing is not None:
        taken.add(existing)
        return existing
    reward = fn if is_native(fn) else TRLReward(fn)
    base = reward.__name__ if isinstance(reward, TRLReward) else callable_name(fn)
    anonymous = callable_name(fn) == "lambda" or not hasattr(fn, "__qualname__")
    for count in itertools.count(1):
        name = base if count == 1 else f"{base}_{count}"
        if name in taken:
            continue
        if name not in REWARDS or (not anonymous and same_definition(REWARDS.get(name), reward)):
            REWARDS.register(name, reward)  # replaces the same definition (see `rlvr_jax.registry`)
            taken.add(name)
            return name
    raise AssertionError("unreachable")


def reward_config(reward_fns: RewardSpec) -> tuple[str, dict[str, float] | None]:
    """(the registered reward's name, the `weighted_sum` components or None) for a reward spec; registers
    the functions it holds."""
    if isinstance(reward_fns, str):
        if reward_fns not in REWARDS:
            raise KeyError(REWARDS.unknown(reward_fns))
        return reward_fns, None
    if callable(reward_fns):
        return register_callable(reward_fns), None
    if not isinstance(reward_fns, Sequence) or not reward_fns:
        raise TypeError(
            f"reward_fns must be a registered reward's name, a function, or a non-empty list of them "
            f"(items may be (reward, weight) pairs); got {reward_fns!r}"
        )
    taken: set[str] = set()
    components: dict[str, float] = {}
    for item in reward_fns:
        reward, weight = item if isinstance(item, tuple) else (item, 1.0)
        if isinstance(item, tuple) and len(item) != 2:
            raise TypeError(f"a weighted reward is a (reward, weight) pair, got {item!r}")
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not math.isfinite(weight):
            raise TypeError(f"the weight of reward {reward!r} must be a finite number, got {weight!r}")
        if isinstance(reward, str):
            if reward not in REWARDS:
                raise KeyError(REWARDS.unknown(reward))
            name = reward
        elif callable(reward):
            name = register_callable(reward, taken)
        else:
            raise TypeError(f"a reward must be a registered name or a callable, got {reward!r}")
        components[name] = components.get(name, 0.0) + float(weight)  # the same reward twice: one weight
    if len(components) == 1 and next(iter(components.values())) == 1.0:
        return next(iter(components)), None
    return "weighted_sum", components


def set_reward(config: Any, reward_fns: RewardSpec) -> str:
    """Points `config.reward` at `reward_fns` (a registered name, a function, or a weighted list; see the
    module docstring), registering the functions; returns the reward's registered name.

    A list sets reward.name="weighted_sum" and reward.options.components={name: weight}; a single reward
    sets reward.name and drops components left by an earlier list. Other reward.options stay (they go
    to every component of a weighted sum). Works on a locked config too.
    """
    try:
        name, components = reward_config(reward_fns)
    except KeyError as e:  # an unknown name: the registry's message, as a config error
        from rlvr_jax.config import ConfigError

        raise ConfigError(f"reward_fns: {e.args[0]}") from None
    with config.unlocked():
        config.reward.name = name
        if components is not None:
            config.reward.options["components"] = dict(components)
        elif "components" in config.reward.options:
            del config.reward.options["components"]
    return name
