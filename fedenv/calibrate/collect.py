"""Collect per-round traces of FedLoRAWireless-v0 under a mix of policies (calibration input).

Each (policy, seed) pair is one episode; episodes run seed-major (every policy on seed s before
seed s + 1), so a partial collection still compares policies on common seeds. Traces go to one
JSON Lines file (:mod:`fedenv.calibrate.traces`); rerunning the same command skips the finished
episodes and reruns an interrupted one from its start.

Policy specs are ``name`` or ``name:key=value,key=value`` (e.g. ``lyapunov:V=100``,
``fixed_rank:rank=4``). :func:`collect` builds them with the factory it is given; the default,
:func:`make_policy`, resolves names first to this module's exploration policies
(:data:`EXPLORATION_POLICIES`), then through the installed entry points of the group
``fedenv.policies`` (:data:`POLICY_ENTRY_POINTS`), where the packages above this one name their
policy kinds: the baselines (``lyapunov``, ``random``, ``max``, ``greedy``, ``fixed_rank``, ...,
built by ``baselines.registry.make_policy``) and the learned agents (``ppo:<run dir>``, ...).
``fedenv`` imports neither package: the layers run ``fedenv`` <- ``baselines`` <- ``agents``.
"""

from __future__ import annotations

import difflib
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fedenv.actions import ActionCodec, Decision
from fedenv.calibrate.traces import (
    EpisodeTrace,
    TraceWriter,
    episode_key,
    header_record,
    load_traces,
    round_record,
)
from fedenv.config import ConfigError, EnvConfig

__all__ = [
    "EXPLORATION_POLICIES",
    "POLICY_ENTRY_POINTS",
    "PolicyFactory",
    "ExplorePolicy",
    "parse_policy_spec",
    "make_policy",
    "run_episode",
    "collect",
]


class ExplorePolicy:
    """Calibration exploration: a different operating point every round.

    Each round draws a participation probability q ~ U[q_min, 1]; each device is scheduled with
    probability q on a uniformly drawn module, at a log-uniform transmit power in
    [p_min, P_max] (low powers lose packets) and a uniform bandwidth weight (small shares make
    stragglers), with a uniform sparsification ratio where the paradigm has one. The traces
    then cover partial participation, every rank, rank mixes, packet losses and stragglers:
    what the fit needs to separate the surrogate's terms.
    """

    def __init__(self, config: EnvConfig, *, min_participation: float = 0.2) -> None:
        if not 0.0 <= min_participation <= 1.0:
            raise ValueError(f"min_participation must be in [0, 1], got {min_participation!r}")
        self.codec = ActionCodec(config)
        self.config = config
        self.min_participation = float(min_participation)
        self.name = (
            "explore" if min_participation == 0.2 else f"explore(q_min={min_participation:g})"
        )
        self._rng = np.random.default_rng()

    def reset(self, seed: int | None = None) -> None:
        self._rng = np.random.default_rng(seed)

    def act(self, obs: NDArray[np.float32], info: dict[str, Any]) -> NDArray[np.float32]:
        rng = self._rng
        k, m = self.codec.num_devices, self.codec.num_modules
        q = rng.uniform(self.min_participation, 1.0)
        scheduled = rng.uniform(size=k) < q
        module = np.where(scheduled, rng.integers(1, m + 1, size=k), 0)
        lo, hi = np.log(self.codec.p_min), np.log(self.codec.p_max)
        power = np.exp(rng.uniform(lo, hi, size=k))
        weight = rng.uniform(0.05, 1.0, size=k) * scheduled
        share = weight / weight.sum() if weight.sum() > 0 else weight
        ratio = (
            rng.uniform(self.codec.rho_min, 1.0, size=k)
            if "ratio" in self.codec.index
            else np.ones(k)
        )
        return self.codec.encode(Decision(module=module, power_w=power, share=share, ratio=ratio))


#: Calibration-only policies: name -> factory(config, **params).
EXPLORATION_POLICIES: dict[str, Callable[..., Any]] = {"explore": ExplorePolicy}

#: The entry-point group where packages name their policy kinds (pyproject.toml), each a
#: factory ``(spec, config) -> policy``; ``baselines.registry`` reads the same group.
POLICY_ENTRY_POINTS = "fedenv.policies"

#: What :func:`collect` builds its policies with: (spec, env config) -> policy.
PolicyFactory = Callable[[str, EnvConfig], Any]


def parse_policy_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"name:key=value,key=value"`` -> (name, params); values parse as int, float or str."""
    name, _, rest = spec.partition(":")
    params: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, eq, raw = item.partition("=")
        if not eq or not key:
            raise ValueError(f"policy spec {spec!r}: expected name:key=value,key=value")
        value: Any = raw
        for cast in (int, float):
            try:
                value = cast(raw)
                break
            except ValueError:
                continue
        params[key.strip()] = value
    if not name:
        raise ValueError(f"policy spec {spec!r} has no name")
    return name.strip(), params


def make_policy(spec: str, config: EnvConfig) -> Any:
    """Build the policy named by ``spec`` for an env with ``config`` (module docstring).

    Also the ``explore`` entry point of ``fedenv.policies``, so ``baselines.registry`` (and
    ``python -m baselines.compare``) can build the exploration policy too.
    """
    name = spec.partition(":")[0].strip().lower()
    if name in EXPLORATION_POLICIES:
        _, params = parse_policy_spec(spec)
        return EXPLORATION_POLICIES[name](config, **params)
    found = {ep.name.lower(): ep for ep in entry_points(group=POLICY_ENTRY_POINTS)}
    if name not in found:
        known = sorted({*EXPLORATION_POLICIES, *found})
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"unknown policy {name!r}.{hint} Known policies: {', '.join(known)} (the "
            "baselines' and the learned "
            f"agents' come from the {POLICY_ENTRY_POINTS!r} entry points of an installed "
            "fedenv: pip install -e .)."
        )
    try:
        factory: PolicyFactory = found[name].load()
    except ImportError as exc:
        raise ImportError(
            f"policy {spec!r} is built by {found[name].value}, which could not be imported: {exc}"
        ) from exc
    return factory(spec.strip(), config)


def _machine() -> dict[str, Any]:
    meta: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        meta["torch"] = torch.__version__
        meta["torch_threads"] = torch.get_num_threads()
        meta["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return meta


def run_episode(
    env: Any,
    policy: Any,
    seed: int,
    *,
    spec: str,
    writer: TraceWriter | None = None,
    on_round: Callable[[dict[str, Any]], None] | None = None,
) -> EpisodeTrace:
    """Play one episode of ``policy`` on ``env`` from ``reset(seed=seed)``; record every round."""
    cfg: EnvConfig = env.unwrapped.config
    obs, info = env.reset(seed=seed)
    policy.reset(seed=seed)
    key = episode_key(spec, seed)
    header = header_record(
        policy=spec,
        seed=seed,
        config=cfg.to_dict(),
        reset_info=info,
        meta={**_machine(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
    )
    if writer is not None:
        writer.begin(header)
    rounds: list[dict[str, Any]] = []
    total = 0.0
    start = time.perf_counter()
    done = False
    while not done:
        t0 = time.perf_counter()
        action = policy.act(obs, info)
        obs, reward, terminated, truncated, info = env.step(action)
        rec = round_record(key, info, float(reward), time.perf_counter() - t0)
        rounds.append(rec)
        total += float(reward)
        if writer is not None:
            writer.round(rec)
        if on_round is not None:
            on_round(rec)
        done = terminated or truncated
    if writer is not None:
        writer.end(
            key, rounds=len(rounds), wall_s=time.perf_counter() - start, episode_return=total
        )
    return EpisodeTrace.from_records(header, rounds)


def _progress(total: int, initial: int) -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm ships with transformers and the train extra
        return None
    return tqdm(total=total, initial=initial, unit="round", dynamic_ncols=True, mininterval=1.0)


def _check_same_config(config: EnvConfig, out: str | os.PathLike[str]) -> None:
    """Refuse to resume a trace file whose episodes were collected under another config.

    Configs are compared as :class:`EnvConfig` objects, so a field added to the package since
    (absent from the file, at its default) is no difference; nor are the torch threads and
    device that ran them.
    """

    def model_of(cfg: EnvConfig) -> EnvConfig:
        return cfg.replace(learning={"lora": {"num_threads": None, "device": "auto"}})

    mine = model_of(config)
    for episode in load_traces(out):
        try:
            theirs = model_of(EnvConfig.from_dict(episode.config))
        except ConfigError as exc:
            raise ValueError(
                f"{out}: the config of episode {episode.key!r} does not load ({exc}): the file "
                "is damaged or from another version of fedenv; delete that episode's lines or "
                "collect into a new file"
            ) from exc
        if theirs == mine:
            continue
        diff = [
            f"{path}: {a!r} in the file, {b!r} now"
            for path, a, b in _differences(theirs.to_dict(), mine.to_dict())
        ]
        raise ValueError(
            f"{out} holds episodes collected under another config (episode {episode.key!r}: "
            f"{'; '.join(diff[:5])}); resume with the same config, or collect into a new file "
            "(or, if that one episode is damaged, delete its lines)"
        )


def _differences(a: Any, b: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            out += _differences(a.get(key), b.get(key), f"{path}.{key}" if path else str(key))
        return out
    return [] if a == b else [(path, a, b)]


def collect(
    config: EnvConfig,
    policies: Sequence[str],
    seeds: Iterable[int],
    out: str | os.PathLike[str],
    *,
    progress: bool = True,
    policy_factory: PolicyFactory = make_policy,
) -> list[str]:
    """Run every policy on every seed (seed-major) and append the traces to ``out``; resumable.

    ``policy_factory(spec, config)`` builds each policy (default :func:`make_policy`). Returns
    the keys of the episodes run by this call (finished ones already in ``out`` are skipped).
    """
    import gymnasium as gym

    import fedenv  # noqa: F401  (registers the env)

    seeds = list(seeds)
    if Path(out).exists():
        # before the writer keeps only the complete episodes (it may rewrite the file): a
        # refused resume leaves the file as it was
        _check_same_config(config, out)
    writer = TraceWriter(out)
    plan = [(s, p) for s in seeds for p in policies]
    todo = [(s, p) for s, p in plan if episode_key(p, s) not in writer.completed]
    rounds = config.num_rounds
    bar = _progress(len(plan) * rounds, (len(plan) - len(todo)) * rounds) if progress else None
    if not todo:
        if bar is not None:
            bar.close()
        return []
    env = gym.make("FedLoRAWireless-v0", config=config)
    ran: list[str] = []
    try:
        built: dict[str, Any] = {}
        for seed, spec in todo:
            if spec not in built:
                built[spec] = policy_factory(spec, config)
            policy = built[spec]

            def tick(rec: dict[str, Any], spec: str = spec, seed: int = seed) -> None:
                if bar is not None:
                    bar.set_postfix_str(
                        f"{spec} seed {seed} round {rec['round']} acc {rec['accuracy']:.3f}",
                        refresh=False,
                    )
                    bar.update(1)

            ep = run_episode(env, policy, seed, spec=spec, writer=writer, on_round=tick)
            if bar is not None and ep.num_rounds < rounds:  # terminated early (target accuracy)
                bar.update(rounds - ep.num_rounds)
            ran.append(ep.key)
    finally:
        if bar is not None:
            bar.close()
        env.close()
    return ran
