"""Recorded trajectories: a fixed seed gives the same numbers, bit for bit, as when they were
recorded.

``tests/data/trajectories.npz`` holds, for every preset (and a few configs that take other
branches: the ``dpp`` and ``accuracy`` reward modes, a target accuracy that ends episodes early,
the registered scenarios), the observations, rewards, flags and every numeric ``info`` entry of
a short rollout of the single env and of the batched vector env, under a seeded random policy
and the Lyapunov policy. Episodes are short (6 rounds), so every rollout crosses episode ends
(the single env's traces made ahead, the vector env's autoreset).

A change that moves any of these numbers must say which and why; after such a change, record
anew with ``python tests/test_trajectories.py --record`` on each platform below.

One recording per numerical platform (``tests/data/trajectories/<platform>.npz``): NumPy
evaluates float64 ``log``, ``exp`` and ``cos`` with code chosen for the CPU at run time (AVX-512
on ``X86_V4`` hosts, AVX2 on ``X86_V3``), whose results differ in the last bit. A last-bit
difference in a channel gain can tip a tie in the Lyapunov policy's discrete choices, so the
trajectories are exact per platform, not across platforms. On a platform without a recording
the test is skipped with the command that records it.
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import fedenv
from baselines.lyapunov import LyapunovPolicy
from fedenv.env import FedLoRAWirelessEnv
from fedenv.vector import FedLoRAWirelessVectorEnv


def numerical_platform() -> str:
    """The CPU architecture and the code NumPy runs float64 ``cos`` with here (its ``log`` and
    ``exp`` follow the same dispatch level), e.g. ``x86_64-X86_V4``; ``-unknown`` with a NumPy
    that cannot tell (before 2.1). A NumPy release that changes these kernels moves the numbers
    too: the test then fails, and the trajectories are recorded anew once the change is known
    to be NumPy's."""
    try:
        from numpy.lib.introspect import opt_func_info

        target = opt_func_info(func_name="^cos$", signature="float64")["cos"]["dd"]["current"]
    except (ImportError, KeyError):
        target = "unknown"
    return f"{platform.machine()}-{target.split('(')[-1].rstrip(')')}"


DATA = Path(__file__).resolve().parent / "data" / "trajectories" / f"{numerical_platform()}.npz"
STEPS, NUM_ENVS, SEED = 16, 3, 7
BASE = {"num_rounds": 6}
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    **{preset: (preset, {}) for preset in ("switching", "split", "soft", "unified")},
    "switching_dpp": ("switching", {"reward": {"mode": "dpp"}}),
    "soft_dpp": ("soft", {"reward": {"mode": "dpp"}}),
    "unified_accuracy": ("unified", {"reward": {"mode": "accuracy"}}),
    "switching_target": ("switching", {"target_accuracy": 0.55}),
}


def _numeric(info: dict[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """Every numeric entry of ``info`` (nested dicts flattened as ``a.b``), as arrays."""
    out: dict[str, np.ndarray] = {}
    for key, value in info.items():
        if isinstance(value, dict):
            out.update(_numeric(value, f"{prefix}{key}."))
            continue
        arr = np.asarray(value)
        if arr.dtype.kind in "biuf":
            out[prefix + key] = arr.copy()
    return out


def _stack(rows: list[dict[str, np.ndarray]], name: str, out: dict[str, np.ndarray]) -> None:
    for key in rows[0]:
        out[f"{name}/{key}"] = np.stack([row[key] for row in rows])


def _single(name: str, preset: str, overrides: dict[str, Any], policy: str) -> dict[str, Any]:
    env = FedLoRAWirelessEnv(preset=preset, **{**BASE, **overrides})
    rng = np.random.default_rng(SEED)
    lyap = LyapunovPolicy(env.config) if policy == "lyapunov" else None
    obs, info = env.reset(seed=SEED)
    resets, steps = [_numeric({"obs": obs, **info})], []
    for _ in range(STEPS):
        if lyap is None:
            action = rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
        else:
            action = lyap.act(obs, info)
        obs, reward, terminated, truncated, info = env.step(action)
        assert type(reward) is float
        steps.append(
            _numeric(
                {
                    "action": action,
                    "obs": obs,
                    "reward": reward,
                    "terminated": terminated,
                    "truncated": truncated,
                    **info,
                }
            )
        )
        if terminated or truncated:
            obs, info = env.reset()
            resets.append(_numeric({"obs": obs, **info}))
    out: dict[str, Any] = {}
    _stack(resets, f"single/{name}/{policy}/reset", out)
    # the keys of a step are the same on every step of a config
    _stack(steps, f"single/{name}/{policy}/step", out)
    return out


def _vector(name: str, preset: str, overrides: dict[str, Any], policy: str) -> dict[str, Any]:
    envs = FedLoRAWirelessVectorEnv(NUM_ENVS, preset=preset, **{**BASE, **overrides})
    rng = np.random.default_rng(SEED)
    cfg = envs.config
    lyaps = [LyapunovPolicy(cfg) for _ in range(NUM_ENVS)] if policy == "lyapunov" else None
    obs, info = envs.reset(seed=SEED)
    rows = [_numeric({"obs": obs, **info})]
    for _ in range(STEPS):
        if lyaps is None:
            actions = rng.uniform(-1, 1, envs.action_space.shape).astype(np.float32)
        else:
            actions = np.stack(
                [
                    p.act(
                        obs[i],
                        {
                            k: np.asarray(v)[i]
                            for k, v in info.items()
                            if not k.startswith("_") and not isinstance(v, dict)
                        },
                    )
                    for i, p in enumerate(lyaps)
                ]
            )
        obs, reward, terminated, truncated, info = envs.step(actions)
        row = {"action": actions, "obs": obs, "reward": reward}
        row |= {"terminated": terminated, "truncated": truncated}
        rows.append(_numeric({**row, **info}))
    out: dict[str, Any] = {}
    # the keys differ between steps (the reset's, a step where every sub-env resets): each key
    # stacked over the steps that have it, with their indices
    for key in sorted(set().union(*rows)):
        have = [t for t, row in enumerate(rows) if key in row]
        out[f"vector/{name}/{policy}/{key}"] = np.stack([rows[t][key] for t in have])
        out[f"vector/{name}/{policy}/{key}@steps"] = np.array(have)
    return out


def _scenario(env_id: str) -> dict[str, Any]:
    import gymnasium as gym

    env = gym.make(env_id, num_rounds=6).unwrapped
    rng = np.random.default_rng(SEED)
    obs, info = env.reset(seed=SEED)
    steps = []
    for _ in range(8):
        action = rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
        obs, reward, terminated, truncated, info = env.step(action)
        steps.append(_numeric({"obs": obs, "reward": reward, **info}))
        if terminated or truncated:
            obs, info = env.reset()
    out: dict[str, Any] = {}
    _stack(steps, f"scenario/{env_id}", out)
    return out


def collect() -> dict[str, np.ndarray]:
    """Every recorded array, by name."""
    out: dict[str, np.ndarray] = {}
    for name, (preset, overrides) in CASES.items():
        for policy in ("random", "lyapunov"):
            out |= _single(name, preset, overrides, policy)
            out |= _vector(name, preset, overrides, policy)
    for env_id in sorted(fedenv.SCENARIO_IDS.values()):
        out |= _scenario(env_id)
    return out


def test_trajectories_are_the_recorded_ones():
    if not DATA.is_file():
        pytest.skip(
            f"no trajectories recorded for the numerical platform {numerical_platform()}: record "
            "them at a commit whose trajectories are known good on another platform with "
            "python tests/test_trajectories.py --record"
        )
    recorded = np.load(DATA)
    got = collect()
    assert sorted(got) == sorted(recorded.files)
    differ = [
        key
        for key in recorded.files
        if got[key].dtype != recorded[key].dtype or not np.array_equal(got[key], recorded[key])
    ]
    assert not differ, f"{len(differ)} arrays differ from the recording, e.g. {differ[:10]}"


if __name__ == "__main__":
    if sys.argv[1:] != ["--record"]:
        sys.exit(f"usage: python {sys.argv[0]} --record   (writes {DATA})")
    DATA.parent.mkdir(exist_ok=True)
    np.savez_compressed(DATA, **collect())
    print(f"wrote {DATA}")
