"""A natively batched vector version of FedLoRAWireless-v0 (surrogate backend).

N environments advance with one set of array operations: the env's core
(:class:`fedenv.episodes.Episodes`) with N episodes, the same core the single env holds with
N = 1. With the same seeds it produces exactly the trajectories of N single envs
(``tests/test_vector.py`` checks it for every preset)::

    import gymnasium as gym
    import fedenv

    envs = gym.make_vec("FedLoRAWireless-v0", num_envs=1024,
    vectorization_mode="vector_entry_point")
    obs, info = envs.reset(seed=0)  # sub-env i is seeded with 0 + i, like SyncVectorEnv
    obs, reward, terminated, truncated, info = envs.step(envs.action_space.sample())

Only environment resets loop over environments (each draws its episode keys from its own
generator and its data partition from ``np.random.default_rng(learning key)``, as a single env
does); steps never do. Autoreset follows Gymnasium's ``NEXT_STEP`` mode (the default of
:class:`gymnasium.vector.SyncVectorEnv`): the step after an episode ends resets that
sub-env, ignores its action and returns its first observation with reward 0 and both flags
False. ``info`` holds every key of the single env's ``info`` batched along the first axis,
each with its ``_key`` mask, the layout SyncVectorEnv produces. For stable-baselines3 see
:class:`fedenv.sb3.FedLoRAWirelessVecEnv`.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space
from numpy.typing import NDArray

from fedenv import streams
from fedenv.config import EnvConfig
from fedenv.env import check_seed, resolve_env_config
from fedenv.episodes import STATE_KEYS, Episodes
from fedenv.learning.surrogate import SurrogateLearner
from fedenv.observation import observation_bounds
from fedenv.trace import generate_trace

__all__ = ["FedLoRAWirelessVectorEnv"]


class FedLoRAWirelessVectorEnv(
    gym.vector.VectorEnv[NDArray[np.float32], NDArray[np.float32], NDArray[Any]]
):
    """N copies of :class:`fedenv.env.FedLoRAWirelessEnv` stepped as one batch (surrogate backend).

    Args:
        num_envs: number of sub-environments N.
        config, preset, **overrides: as for the single env (one config for all sub-envs),
            resolved by the same :func:`fedenv.env.resolve_env_config`: a registered variant id
            passes its preset, and takes a full ``EnvConfig`` of its paradigm.
        render_mode: only ``None`` (render single envs instead).

    Spaces are the single env's, batched: actions (N, K, C) in [-1, 1], observations
    (N, 7 K + 4) float32; rewards, terminations and truncations have shape (N,).
    """

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": []}

    def __init__(
        self,
        num_envs: int = 1,
        config: EnvConfig | Mapping[str, Any] | str | os.PathLike[str] | None = None,
        preset: str | None = None,
        render_mode: str | None = None,
        **overrides: Any,
    ) -> None:
        if (
            not isinstance(num_envs, (int, np.integer))
            or isinstance(num_envs, bool)
            or num_envs < 1
        ):
            raise ValueError(f"num_envs must be an integer >= 1, got {num_envs!r}")
        if render_mode is not None:
            raise ValueError(
                "FedLoRAWirelessVectorEnv does not render (render_mode must be None, got "
                f"{render_mode!r}); "
                "render a single env, or use gym.make_vec(..., vectorization_mode='sync', "
                "render_mode=...)"
            )
        cfg = resolve_env_config(config, preset, **overrides)
        if cfg.learning.backend != "surrogate":
            raise ValueError(
                "the batched vector env runs the surrogate backend only (got "
                f"backend={cfg.learning.backend!r}); "
                "for real LoRA fine-tuning use gym.make_vec('FedLoRAWireless-v0', num_envs=N, "
                "vectorization_mode='sync', backend='lora') or a single env"
            )
        self.config = cfg
        self.num_envs = n = int(num_envs)
        self.render_mode = None
        self.num_devices = k = cfg.devices.num_devices
        self.episodes = Episodes(cfg, n, SurrogateLearner(cfg, n))
        self.codec = self.episodes.codec
        low, high = observation_bounds(k)
        self.single_observation_space = spaces.Box(low, high, dtype=np.float32)
        self.single_action_space = spaces.Box(-1.0, 1.0, shape=self.codec.shape, dtype=np.float32)
        self.observation_space = batch_space(self.single_observation_space, n)
        self.action_space = batch_space(self.single_action_space, n)
        self._rngs: list[np.random.Generator | None] = [None] * n
        self._all = np.ones(n, dtype=bool)  # the info mask of keys every sub-env reports
        self._all.flags.writeable = False
        self._started = False
        self._autoreset = np.zeros(n, dtype=bool)

    # ------------------------------------------------------------------ reset
    def reset(
        self,
        *,
        seed: int | Sequence[int | None] | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[NDArray[np.float32], dict[str, Any]]:
        """Reset every sub-env (or those of ``options["reset_mask"]``).

        ``seed``: None (continue each sub-env's generator; random on first use), an int s
        (sub-env i is seeded with s + i) or a list of one seed (or None) per sub-env, as
        Gymnasium's vector envs take it; each seed follows the single env's rule
        (:func:`fedenv.env.check_seed`: an int >= 0, NumPy integers included, no bools or
        floats). A rejected seed changes nothing.
        """
        n = self.num_envs
        if seed is None:
            seeds: list[int | None] = [None] * n
        elif isinstance(seed, (int, np.integer)) and not isinstance(seed, (bool, np.bool_)):
            first = check_seed(seed)
            assert first is not None
            seeds = [first + i for i in range(n)]
        elif (
            isinstance(seed, Sequence)
            and not isinstance(seed, (str, bytes))
            or isinstance(seed, np.ndarray)
            and seed.ndim == 1
        ):
            seeds = [check_seed(s, f"seed[{i}]") for i, s in enumerate(seed)]
            if len(seeds) != n:
                raise ValueError(f"pass one seed per sub-env: expected {n} seeds, got {len(seeds)}")
        else:
            if isinstance(seed, (numbers.Number, np.generic, str, bytes)):
                check_seed(seed)  # raises the single env's error (a bool, a float, a string)
            raise TypeError(
                "seed must be None, an integer >= 0 (sub-env i gets seed + i) or a list of "
                f"{n} seeds "
                f"(each None or an integer >= 0), got {seed!r} of type {type(seed).__name__}"
            )
        mask = np.ones(n, dtype=bool)
        if options is not None and "reset_mask" in options and self._started:
            mask = np.asarray(options["reset_mask"])
            if mask.shape != (n,) or mask.dtype != np.bool_ or not mask.any():
                raise ValueError(
                    f"options['reset_mask'] must be a bool array of shape ({n},) with at "
                    f"least one True, got {options['reset_mask']!r}"
                )
        idx = np.flatnonzero(mask)
        notes = self._reset_rows(idx, [seeds[i] for i in idx])
        self._started = True
        self._autoreset[idx] = False
        info: dict[str, Any] = {}
        self._state_info(info, idx)
        self._notes_info(info, idx, notes)
        return self.episodes.observation(), info

    def _reset_rows(self, idx: NDArray[np.intp], seeds: Sequence[int | None]) -> dict[str, Any]:
        """Start new episodes in the sub-envs ``idx`` (the only loop over environments); returns
        the learner's notes."""
        keys = np.empty((idx.size, 2), dtype=np.uint64)
        rngs = self._rngs
        for j, (i, s) in enumerate(zip(idx.tolist(), seeds)):
            rng = rngs[i]
            if s is not None or rng is None:
                rng = rngs[i] = seeding.np_random(s)[0]
            # the single env's reset: two keys from its generator (trace, learning)
            keys[j] = streams.draw_keys(rng, 2)
        return self.episodes.start(idx, generate_trace(keys[:, 0], self.config), keys[:, 1])

    # ------------------------------------------------------------------- step
    def step(
        self, actions: NDArray[np.float32]
    ) -> tuple[
        NDArray[np.float32],
        NDArray[np.float64],
        NDArray[np.bool_],
        NDArray[np.bool_],
        dict[str, Any],
    ]:
        if not self._started:
            raise gym.error.ResetNeeded("call reset() before step()")
        a = np.asarray(actions)
        if a.shape != self.action_space.shape:
            raise ValueError(
                f"actions must have shape {self.action_space.shape} (num_envs x devices x "
                "components "
                f"{list(self.codec.components)}), got {a.shape}"
            )
        resetting = self._autoreset
        any_reset = bool(resetting.any())
        played = self.episodes.step(self.codec.check(a, (self.num_envs,)))
        reward, terminated, truncated = played.reward, played.terminated, played.truncated
        if any_reset:
            # finished sub-envs ignored their action: start their next episode
            idx = np.flatnonzero(resetting)
            notes = self._reset_rows(idx, [None] * idx.size)
            reward[idx] = 0.0
            terminated[idx] = False
            truncated[idx] = False
        obs = self.episodes.observation()
        info: dict[str, Any] = {}
        self._state_info(info, np.arange(self.num_envs))
        stepped = None
        if any_reset:
            stepped = ~resetting
            stepped.flags.writeable = False
        if stepped is None or stepped.any():
            for key, value in played.info.items():
                _put(info, key, value, stepped, self._all)
            terms_info: dict[str, Any] = {}
            for key, value in played.terms.items():
                _put(terms_info, key, value, stepped, self._all)
            info["reward_terms"] = terms_info
            info["_reward_terms"] = self._all if stepped is None else stepped
        if any_reset:
            self._notes_info(info, idx, notes)
        self._autoreset = terminated | truncated
        return obs, reward, terminated, truncated, info

    # ------------------------------------------------------------ components
    def _state_info(self, info: dict[str, Any], idx: NDArray[np.intp]) -> None:
        """The state keys for the sub-envs ``idx`` (others masked out)."""
        n = self.num_envs
        values = self.episodes.state_info()
        if idx.size == n:
            for key in STATE_KEYS:
                info[key], info["_" + key] = values[key], self._all
            return
        mask = np.zeros(n, dtype=bool)
        mask[idx] = True
        mask.flags.writeable = False
        for key in STATE_KEYS:
            value = values[key]
            out = np.zeros_like(value)
            out[idx] = value[idx]
            info[key], info["_" + key] = out, mask

    def _notes_info(
        self, info: dict[str, Any], idx: NDArray[np.intp], notes: Mapping[str, Any]
    ) -> None:
        n = self.num_envs
        mask = np.zeros(n, dtype=bool)
        mask[idx] = True
        mask.flags.writeable = False
        out: dict[str, Any] = {}
        for key, value in notes.items():
            arr = (
                np.full(n, None, dtype=object)
                if isinstance(value, str)
                else np.zeros(n, dtype=type(value))
            )
            arr[idx] = value
            out[key], out["_" + key] = arr, mask
        info["data_notes"], info["_data_notes"] = out, mask

    def restart(self, mask: NDArray[np.bool_]) -> NDArray[np.float32]:
        """Reset the sub-envs of ``mask`` now, continuing their generators, and return every
        sub-env's observation.

        For adapters with same-step autoreset (stable-baselines3's VecEnv API): call it right
        after a ``step`` with the mask of finished sub-envs; it cancels their next-step
        autoreset. No info is built; :meth:`state_info` gives the new episodes' state.
        """
        idx = np.flatnonzero(mask)
        self._reset_rows(idx, [None] * idx.size)
        self._autoreset = self._autoreset & ~mask
        return self.episodes.observation()

    def state_info(self) -> dict[str, Any]:
        """The state keys of ``info`` (round, channel, label mixes, backlogs, accuracy, ...) for
        every sub-env now."""
        info: dict[str, Any] = {}
        self._state_info(info, np.arange(self.num_envs))
        return info

    def close_extras(self, **kwargs: Any) -> None:
        pass


def _put(
    info: dict[str, Any],
    key: str,
    value: Any,
    stepped: NDArray[np.bool_] | None,
    everyone: NDArray[np.bool_],
) -> None:
    """Store a batched info entry and its mask; sub-envs that reset this step get zeros."""
    value = np.asarray(value)
    if stepped is None:
        info[key], info["_" + key] = value, everyone
        return
    value = value.copy()
    value[~stepped] = 0
    info[key], info["_" + key] = value, stepped
