"""Policy specs -> :class:`baselines.Policy` objects.

A spec is ``name`` or ``name:key=value,key=value``::

    lyapunov                  Lyapunov drift-plus-penalty, V = DEFAULT_V
    lyapunov:V=100            ... with V = 100 (also max_iterations=, tolerance=, warm_start=)
    max | min_rank | random   heuristics (baselines.heuristics)
    fixed_rank:rank=4
    greedy:fraction=0.3
    round_robin:fraction=0.5
    ppo:<run dir>             learned agents, loaded by agents.evaluate.load_policy
    sac:<run dir> | recurrentppo:<run dir>
    <spec>>><spec>@N          handover: the first policy for rounds 0..N-1, the second from
                              round N (baselines.policy.Handover), e.g. ppo:runs/x>>lyapunov@44

Unknown names list the valid ones; a policy that cannot act on the config's paradigm raises
:class:`~baselines.heuristics.IncompatiblePolicyError` saying why.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from typing import Any

from baselines.heuristics import HEURISTICS, IncompatiblePolicyError
from baselines.lyapunov import LyapunovPolicy
from baselines.policy import Handover, Policy
from fedenv.config import EnvConfig

__all__ = ["POLICY_NAMES", "LEARNED", "IncompatiblePolicyError", "make_policy", "parse_spec", "split_specs"]

#: Learned-agent spec prefixes, loaded lazily through ``agents.evaluate.load_policy``.
LEARNED = ("ppo", "sac", "recurrentppo")


def _lyapunov(config: EnvConfig, V: float | None = None, **kwargs: Any) -> LyapunovPolicy:  # noqa: N803
    if V is not None:
        kwargs["tradeoff_v"] = V
    return LyapunovPolicy(config, **kwargs)


_FACTORIES: dict[str, Callable[..., Any]] = {"lyapunov": _lyapunov, **HEURISTICS}
_PARAMS: dict[str, tuple[str, ...]] = {
    "lyapunov": ("V", "max_iterations", "tolerance", "warm_start"),
    "random": (),
    "max": (),
    "min_rank": (),
    "fixed_rank": ("rank",),
    "greedy": ("fraction",),
    "round_robin": ("fraction",),
}
#: Every valid policy name (learned agents take a run directory after the colon).
POLICY_NAMES = (*_FACTORIES, *LEARNED)


def _value(raw: str) -> Any:
    low = raw.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            continue
    return raw


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"name:key=value,key=value"`` -> (name, params). Learned specs keep their argument as ``{"path": ...}``."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"policy spec must be a non-empty string like 'lyapunov:V=10', got {spec!r}")
    name, _, rest = spec.strip().partition(":")
    name = name.strip().lower()
    if name not in POLICY_NAMES:
        close = difflib.get_close_matches(name, POLICY_NAMES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown policy {name!r}.{hint} Valid policies: {', '.join(POLICY_NAMES)} (learned ones as ppo:<run dir>).")
    if name in LEARNED:
        if not rest:
            raise ValueError(f"policy {name!r} needs a run directory: {name}:<run dir>")
        return name, {"path": rest}
    params: dict[str, Any] = {}
    for item in filter(None, (x.strip() for x in rest.split(","))):
        key, eq, raw = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ValueError(f"policy spec {spec!r}: expected name:key=value,key=value")
        if name == "lyapunov" and key.lower() in ("v", "tradeoff_v"):
            key = "V"
        if key not in _PARAMS[name]:
            valid = ", ".join(_PARAMS[name]) or "none"
            raise ValueError(f"policy {name!r} has no parameter {key!r}; valid parameters: {valid}")
        params[key] = _value(raw)
    return name, params


def make_policy(spec: str, config: EnvConfig) -> Policy:
    """Build the policy named by ``spec`` for an env with ``config`` (module docstring)."""
    if isinstance(spec, str) and ">>" in spec:
        first, _, rest = spec.partition(">>")
        then, at, when = rest.rpartition("@")
        if not at or not then.strip() or not first.strip():
            raise ValueError(f"handover spec {spec!r}: expected '<first spec>>><second spec>@<round>', e.g. 'ppo:runs/x>>lyapunov@44'")
        try:
            from_round = int(when)
        except ValueError:
            raise ValueError(f"handover spec {spec!r}: the round after '@' must be an integer, got {when!r}") from None
        return Handover(make_policy(first.strip(), config), make_policy(then.strip(), config), from_round)
    name, params = parse_spec(spec)
    if name in LEARNED:
        try:
            from agents.evaluate import load_policy
        except ImportError as exc:
            raise ImportError(
                f"policy {spec!r} needs the learned-agent package: agents.evaluate.load_policy could not be imported "
                f"({exc}); install the train extra: pip install 'fedenv[train]'"
            ) from exc
        policy: Policy = load_policy(spec, config)
        return policy
    factory = _FACTORIES[name]
    try:
        inspect.signature(factory).bind(config, **params)
    except TypeError as exc:
        raise ValueError(f"policy {spec!r}: {exc}") from None
    policy = factory(config, **params)
    return policy


def split_specs(text: str) -> list[str]:
    """Split a comma-separated list of specs, keeping ``key=value`` items with their policy.

    ``"lyapunov:V=30,tolerance=1e-4,max,greedy"`` -> ``["lyapunov:V=30,tolerance=1e-4", "max", "greedy"]``.
    """
    out: list[str] = []
    for token in (t.strip() for t in text.split(",")):
        if not token:
            continue
        if out and "=" in token and ":" not in token.split("=", 1)[0] and ":" in out[-1]:
            out[-1] += "," + token
        else:
            out.append(token)
    return out
