"""Policy specs -> :class:`baselines.Policy` objects.

A spec is ``name`` or ``name:key=value,key=value``::

    lyapunov                  Lyapunov drift-plus-penalty, V = DEFAULT_V
    lyapunov:V=100            ... with V = 100 (also max_iterations=, tolerance=, warm_start=)
    max | min_rank | random   heuristics (baselines.heuristics)
    fixed_rank:rank=4
    greedy:fraction=0.3
    round_robin:fraction=0.5
    <kind>:<argument>         a kind another package adds (below), e.g. the learned agents
                              ppo:<run dir>, sac:<run dir>, recurrentppo:<run dir>, ippo:<run dir>
                              and the calibration's explore[:min_participation=..]
    <spec>>><spec>@N          handover: the first policy for rounds 0..N-1, the second from
                              round N (baselines.policy.Handover), e.g. ppo:runs/x>>lyapunov@44
    prune:<spec>              the policy's decisions through the arrival pruner
                              (baselines.policy.Pruned), e.g. prune:lyapunov:V=30

Other kinds come from the packages above this one without this one importing them (the layers
run ``fedenv`` <- ``baselines`` <- ``agents``): a package names its kinds as Python entry points
of the group :data:`ENTRY_POINT_GROUP` (``fedenv.policies``, in pyproject.toml), each a factory
``(spec, config) -> Policy`` that receives the whole spec; :func:`register_policy` adds one in
a running process. A kind that is not built in is looked up there when a spec names it, so
``python -m baselines.compare --policies ppo:runs/x`` loads ``agents.evaluate.load_policy``
only then. The built-in kinds are entry points of the group too (pointing at
:func:`make_policy`), which is how ``python -m fedenv.calibrate collect`` finds them.

Unknown names list the valid ones; a policy that cannot act on the config's paradigm raises
:class:`~baselines.heuristics.IncompatiblePolicyError` saying why.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from baselines.heuristics import HEURISTICS, IncompatiblePolicyError
from baselines.lyapunov import LyapunovPolicy
from baselines.policy import Handover, Policy, Pruned
from fedenv.config import EnvConfig

__all__ = [
    "BUILTIN_POLICIES",
    "ENTRY_POINT_GROUP",
    "IncompatiblePolicyError",
    "PolicyFactory",
    "make_policy",
    "parse_spec",
    "pruned_inner",
    "policy_names",
    "register_policy",
    "split_specs",
]

#: The entry-point group whose entries name policy kinds (pyproject.toml).
ENTRY_POINT_GROUP = "fedenv.policies"

#: A policy kind's factory: (the whole spec, the env config) -> the policy.
PolicyFactory = Callable[[str, EnvConfig], Policy]


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
#: The kinds this package builds itself (``name[:key=value,...]``).
BUILTIN_POLICIES = tuple(_FACTORIES)

#: Kinds added by :func:`register_policy` or loaded from the entry points, by name.
_ADDED: dict[str, PolicyFactory] = {}


def register_policy(kind: str, factory: PolicyFactory) -> None:
    """Add the policy kind ``kind`` (specs ``kind:<argument>``), built by ``factory(spec, config)``.

    Registering the same factory again is a no-op; another factory for a taken name raises
    ``ValueError``. Installed packages do not need this: their entry points are found by name.
    """
    name = kind.strip().lower()
    if not name or ":" in name or ">" in name:
        raise ValueError(f"policy kind must be a non-empty name without ':' or '>', got {kind!r}")
    if name in _FACTORIES:
        raise ValueError(f"policy kind {name!r} is built into baselines.registry")
    if _ADDED.get(name, factory) is not factory:
        raise ValueError(f"policy kind {name!r} is already registered (by {_ADDED[name]!r})")
    _ADDED[name] = factory


def _entry_points() -> dict[str, EntryPoint]:
    """The installed entry points of :data:`ENTRY_POINT_GROUP` that this package does not build."""
    return {
        ep.name.lower(): ep
        for ep in entry_points(group=ENTRY_POINT_GROUP)
        if ep.name.lower() not in _FACTORIES
    }


def policy_names() -> tuple[str, ...]:
    """Every policy kind a spec may name: the built-in ones, then the registered and installed
    ones."""
    return (*BUILTIN_POLICIES, *sorted({*_ADDED, *_entry_points()}))


def _added_factory(name: str) -> PolicyFactory:
    """The factory of a kind added by :func:`register_policy` or an entry point (loaded once)."""
    if name not in _ADDED:
        ep = _entry_points()[name]
        try:
            factory = ep.load()
        except ImportError as exc:
            raise ImportError(
                f"policy {name!r} is built by {ep.value} (entry point of "
                f"{ENTRY_POINT_GROUP}), which could not be "
                f"imported ({exc}); learned agents need the train extra: pip install "
                "'fedenv[train]'"
            ) from exc
        _ADDED.setdefault(name, factory)
    return _ADDED[name]


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
    """``"name:key=value,key=value"`` -> (name, params). Added kinds keep their argument as
    ``{"path": ...}``."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(
            f"policy spec must be a non-empty string like 'lyapunov:V=10', got {spec!r}"
        )
    name, _, rest = spec.strip().partition(":")
    name = name.strip().lower()
    if name not in _FACTORIES:
        names = policy_names()
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"unknown policy {name!r}.{hint} Valid policies: {', '.join(names)} (learned "
                "ones as ppo:<run dir>; "
                f"learned and other added kinds come from the {ENTRY_POINT_GROUP!r} entry "
                "points of an installed fedenv: "
                "pip install -e .)."
            )
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


def pruned_inner(spec: str) -> str | None:
    """The policy spec inside ``prune:<spec>`` (the prefix in any case, spaces around the spec
    ignored), or None for a spec without the prefix."""
    spec = spec.strip()
    return spec[len("prune:") :] if spec.lower().startswith("prune:") else None


def make_policy(spec: str, config: EnvConfig) -> Policy:
    """Build the policy named by ``spec`` for an env with ``config`` (module docstring)."""
    if isinstance(spec, str) and ">>" in spec:
        first, _, rest = spec.partition(">>")
        then, at, when = rest.rpartition("@")
        if not at or not then.strip() or not first.strip():
            raise ValueError(
                f"handover spec {spec!r}: expected '<first spec>>><second spec>@<round>', "
                "e.g. 'ppo:runs/x>>lyapunov@44'"
            )
        try:
            from_round = int(when)
        except ValueError:
            raise ValueError(
                f"handover spec {spec!r}: the round after '@' must be an integer, got {when!r}"
            ) from None
        return Handover(
            make_policy(first.strip(), config), make_policy(then.strip(), config), from_round
        )
    inner = pruned_inner(spec) if isinstance(spec, str) else None
    if inner is not None:
        return Pruned(make_policy(inner, config), config)
    name, params = parse_spec(spec)
    if name not in _FACTORIES:
        return _added_factory(name)(spec.strip(), config)
    factory = _FACTORIES[name]
    try:
        inspect.signature(factory).bind(config, **params)
    except TypeError as exc:
        raise ValueError(f"policy {spec!r}: {exc}") from None
    policy: Policy = factory(config, **params)
    return policy


def split_specs(text: str) -> list[str]:
    """Split a comma-separated list of specs, keeping ``key=value`` items with their policy.

    ``"lyapunov:V=30,tolerance=1e-4,max,greedy"`` ->
    ``["lyapunov:V=30,tolerance=1e-4", "max", "greedy"]``.
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
