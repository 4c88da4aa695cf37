"""A natively batched vector version of FedLoRAWireless-v0 (surrogate backend).

N environments advance with one set of array operations: the same physics functions as the
single env (:func:`fedenv.round.play_round`, :func:`fedenv.learning.surrogate.round_progress`,
:func:`fedenv.queues.update_queue`, the :class:`~fedenv.actions.ActionCodec`, the observation
and reward functions of :mod:`fedenv.env`), called on arrays with a leading environment axis.
With the same seeds it produces exactly the trajectories of N single envs
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

import dataclasses
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
from fedenv.actions import ActionCodec
from fedenv.config import EnvConfig
from fedenv.env import (
    EnvConstants,
    check_seed,
    observation_bounds,
    observation_template,
    resolve_env_config,
    reward_terms,
    round_info,
    update_backlogs,
    write_observation,
)
from fedenv.learning import surrogate
from fedenv.round import EpisodeTables, episode_tables, play_round
from fedenv.trace import generate_trace

__all__ = ["FedLoRAWirelessVectorEnv"]

F = NDArray[np.float64]

#: info keys that describe the state (present after reset and step), in the single env's order
_STATE_KEYS = (
    "round",
    "channel_gain",
    "distance_m",
    "cpu_freq_hz",
    "data_size",
    "label_distribution",
    "global_label_distribution",
    "energy_backlog",
    "latency_backlog",
    "last_module",
    "accuracy",
    "loss",
    "loss_gap",
)


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
        self.codec = ActionCodec(cfg)
        self._c = EnvConstants(cfg)
        low, high = observation_bounds(k)
        self.single_observation_space = spaces.Box(low, high, dtype=np.float32)
        self.single_action_space = spaces.Box(-1.0, 1.0, shape=self.codec.shape, dtype=np.float32)
        self.observation_space = batch_space(self.single_observation_space, n)
        self.action_space = batch_space(self.single_action_space, n)
        self._scfg = cfg.learning.surrogate
        self._progress = surrogate.RoundProgress(cfg)
        self._sparse = cfg.sparsifies  # (ratios count only there, as in the single env)
        self._classes = surrogate.class_counts(cfg)
        self._notes = {
            "backend": "surrogate",
            "task": cfg.learning.task,
            "train_samples": cfg.learning.num_train_samples,
        }
        self._params_per_rank = float(cfg.model.lora_params_per_rank)
        self._head_params = int(cfg.model.head_params)
        self._rngs: list[np.random.Generator | None] = [None] * n
        self._learner_rng = np.random.Generator(
            np.random.PCG64(0)
        )  # (its state is set per episode)
        self._rows = np.arange(n)
        self._all = np.ones(n, dtype=bool)  # the info mask of keys every sub-env reports
        self._all.flags.writeable = False
        self._started = False

        # per-sub-env state, allocated once; resets overwrite rows
        rows, c = cfg.num_rounds + 1, cfg.model.num_labels
        m1 = cfg.model.num_modules + 1
        self._gain = np.zeros((n, rows, k))
        self._distance = np.zeros((n, rows, k))
        self._uniform = np.zeros((n, rows, k))
        self._cpu = np.zeros((n, k))
        self._obs_rows = np.zeros((n, rows, 7 * k + 4), dtype=np.float32)
        self._sizes = np.zeros((n, k))
        self._share = np.zeros((n, k))
        self._labels = np.zeros((n, k, c))
        self._progress.set_labels(self._labels)  # (the label rows of the surrogate's sums)
        self._global = np.zeros((n, c))
        self._noise = np.zeros((n, cfg.num_rounds))
        self._first_row = np.arange(n, dtype=np.int64) * rows
        self._flat_views()
        template = episode_tables(
            cfg,
            np.full((n, k), cfg.devices.cpu_freq_max_hz),
            self._params_per_rank,
            self._head_params,
        )
        self._tables = EpisodeTables(
            rank_of_module=template.rank_of_module,
            compute_time_s=np.zeros((n, k, m1)),
            compute_energy_j=np.zeros((n, k, m1)),
            time_left_s=np.zeros((n, k, m1)),
            payload_bits=template.payload_bits,
            sparse=template.sparse,
            params_per_rank=template.params_per_rank,
            head_params=template.head_params,
        )
        self._t = np.zeros(n, dtype=np.int64)
        self._energy_backlog = np.zeros((n, k))
        self._latency_backlog = np.zeros(n)
        self._last_module = np.zeros((n, k), dtype=np.int64)
        self._last_success = np.zeros((n, k), dtype=bool)
        self._accuracy = np.zeros(n)
        self._loss = np.zeros(n)
        self._gap = np.zeros(n)
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
        self._reset_rows(idx, [seeds[i] for i in idx])
        self._started = True
        self._autoreset[idx] = False
        info: dict[str, Any] = {}
        self._state_info(info, idx)
        self._notes_info(info, idx)
        return self._observe(), info

    def _reset_rows(self, idx: NDArray[np.intp], seeds: Sequence[int | None]) -> None:
        """Start new episodes in the sub-envs ``idx`` (the only loop over environments)."""
        cfg, k, m = self.config, self.num_devices, idx.size
        keys = np.empty((m, 2), dtype=np.uint64)
        counts = np.empty((m, k, self._classes.size))
        noise_keys = np.empty(m, dtype=np.uint64)
        rngs, classes = self._rngs, self._classes
        for j, (i, s) in enumerate(zip(idx.tolist(), seeds)):
            rng = rngs[i]
            if s is not None or rng is None:
                rng = rngs[i] = seeding.np_random(s)[0]
            # the single env's reset: two keys from its generator, then the learner's draws from
            # default_rng(learning key), here one generator set to each episode's seeded state
            keys[j] = streams.draw_keys(rng, 2)
        learner_rng = self._learner_rng
        for j, state in enumerate(streams.pcg64_states(keys[:, 1])):
            learner_rng.bit_generator.state = state
            counts[j], noise_keys[j] = surrogate.draw_episode(cfg, k, learner_rng, classes)
        trace = generate_trace(keys[:, 0], cfg)
        sizes, labels, global_labels, share = surrogate.partition_arrays(counts, self._classes)
        tables = episode_tables(cfg, trace.cpu_freq_hz, self._params_per_rank, self._head_params)
        obs_rows = observation_template(cfg, trace.gain, trace.distance_m, trace.cpu_freq_hz, share)
        if m == self.num_envs:
            # every sub-env starts anew: take the new arrays instead of copying them in
            self._gain = np.ascontiguousarray(trace.gain)
            self._distance = np.ascontiguousarray(trace.distance_m)
            self._uniform = np.ascontiguousarray(trace.success_uniform)
            self._obs_rows = np.ascontiguousarray(obs_rows)
            self._tables = dataclasses.replace(
                self._tables,
                compute_time_s=np.ascontiguousarray(tables.compute_time_s),
                compute_energy_j=np.ascontiguousarray(tables.compute_energy_j),
                time_left_s=tables.time_left_s,
            )
            self._flat_views()
        else:
            self._gain[idx] = trace.gain
            self._distance[idx] = trace.distance_m
            self._uniform[idx] = trace.success_uniform
            self._obs_rows[idx] = obs_rows
            self._tables.compute_time_s[idx] = tables.compute_time_s
            self._tables.compute_energy_j[idx] = tables.compute_energy_j
            assert self._tables.time_left_s is not None and tables.time_left_s is not None
            self._tables.time_left_s[idx] = tables.time_left_s
        self._share[idx] = share
        self._progress.set_labels(labels, None if m == self.num_envs else idx)
        self._noise[idx] = surrogate.evaluation_noise(noise_keys, cfg)
        # The state that info exposes is replaced, never written in place (copy on write), and
        # read-only: the arrays of an info returned earlier never change.
        ones = np.ones(m)
        for name, value in (
            ("_t", 0),
            ("_cpu", trace.cpu_freq_hz),
            ("_sizes", sizes),
            ("_labels", labels),
            ("_global", global_labels),
            ("_energy_backlog", 0.0),
            ("_latency_backlog", 0.0),
            ("_last_module", 0),
            ("_last_success", False),
            ("_gap", 1.0),
            ("_accuracy", surrogate.observed_accuracy(ones, np.zeros(m), self._scfg)),
            ("_loss", surrogate.loss_from_gap(ones, self._scfg)),
        ):
            array = getattr(self, name).copy()
            array[idx] = value
            array.flags.writeable = False
            setattr(self, name, array)

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
        c, cfg = self._c, self.config
        n, rows = self.num_envs, self._rows
        t = self._t
        resetting = self._autoreset
        any_reset = bool(resetting.any())
        if any_reset:
            # finished sub-envs ignore their action; keep their indices in range
            t = np.minimum(t, cfg.num_rounds - 1)
        decision = self.codec.decode(self.codec.check(a, (n,)))
        at = self._round_rows(t)
        gain = self._gain_rows.take(at, axis=0)
        phys = play_round(decision, gain, self._tables, cfg, self._uniform_rows.take(at, axis=0))
        progress, floor = self._progress(
            self._share,
            phys.success,
            phys.rank,
            decision.ratio if self._sparse else None,
            self._global,
        )
        gap = surrogate.next_gap(self._gap, progress, floor, self._scfg)
        accuracy = surrogate.observed_accuracy(
            gap, self._noise.take(rows * cfg.num_rounds + t), self._scfg
        )
        loss = surrogate.loss_from_gap(gap, self._scfg)
        z_old, y_old = self._energy_backlog, self._latency_backlog
        z_new, y_new = update_backlogs(c, z_old, y_old, phys.energy_j, phys.round_latency_s)
        terms = reward_terms(
            c,
            z_old,
            z_new,
            y_old,
            y_new,
            phys.energy_j,
            phys.round_latency_s,
            gap,
            accuracy,
            self._accuracy,
        )
        reward = np.asarray(sum(terms.values()), dtype=np.float64)
        t_next = t + 1
        if c.target_accuracy is not None:
            terminated = accuracy >= c.target_accuracy
        else:
            terminated = np.zeros(n, dtype=bool)
        truncated = (t_next >= c.num_rounds) & ~terminated

        # advance the state
        self._t = t_next
        self._energy_backlog, self._latency_backlog = z_new, np.asarray(y_new, dtype=np.float64)
        self._accuracy, self._loss, self._gap = accuracy, loss, gap
        self._last_module, self._last_success = decision.module, phys.success
        for array in (
            self._t,
            self._energy_backlog,
            self._latency_backlog,
            self._accuracy,
            self._loss,
            self._gap,
            decision.module,
            phys.success,
        ):
            array.flags.writeable = False

        step_info = round_info(decision, phys, gain, c)
        if any_reset:
            idx = np.flatnonzero(resetting)
            self._reset_rows(idx, [None] * idx.size)
            reward[idx] = 0.0
            terminated[idx] = False
            truncated[idx] = False
        obs = self._observe()
        info: dict[str, Any] = {}
        self._state_info(info, rows)
        stepped = None
        if any_reset:
            stepped = ~resetting
            stepped.flags.writeable = False
        if stepped is None or stepped.any():
            for key, value in step_info.items():
                _put(info, key, value, stepped, self._all)
            terms_info: dict[str, Any] = {}
            for key, value in terms.items():
                _put(terms_info, key, value, stepped, self._all)
            info["reward_terms"] = terms_info
            info["_reward_terms"] = self._all if stepped is None else stepped
        if any_reset:
            self._notes_info(info, idx)
        self._autoreset = terminated | truncated
        return obs, reward, terminated, truncated, info

    # ------------------------------------------------------------ components
    def _flat_views(self) -> None:
        """Flat (N (T + 1), ...) views of the per-round arrays: one gather per step picks every
        sub-env's round."""
        n, k = self.num_envs, self.num_devices
        rows = self.config.num_rounds + 1
        self._gain_rows = self._gain.reshape(n * rows, k)
        self._distance_rows = self._distance.reshape(n * rows, k)
        self._uniform_rows = self._uniform.reshape(n * rows, k)
        self._obs_flat = self._obs_rows.reshape(n * rows, 7 * k + 4)

    def _round_rows(self, t: NDArray[np.int64]) -> NDArray[np.int64]:
        """Flat row of (sub-env, round t) in the (N (T + 1), ...) views of the per-round arrays."""
        return self._first_row + t

    def _observe(self) -> NDArray[np.float32]:
        """The current observation of every sub-env (a pure function of its state)."""
        return write_observation(
            self._obs_flat.take(self._round_rows(self._t), axis=0),
            self._c,
            self._energy_backlog,
            self._last_module,
            self._last_success,
            self._accuracy,
            self._loss,
            self._latency_backlog,
        )

    def _state_info(self, info: dict[str, Any], idx: NDArray[np.intp]) -> None:
        """The single env's state keys for the sub-envs ``idx`` (others masked out)."""
        n = self.num_envs
        t = self._t
        values = {
            "round": t,
            "channel_gain": self._gain_rows.take(self._round_rows(t), axis=0),
            "distance_m": self._distance_rows.take(self._round_rows(t), axis=0),
            "cpu_freq_hz": self._cpu,
            "data_size": self._sizes,
            "label_distribution": self._labels,
            "global_label_distribution": self._global,
            "energy_backlog": self._energy_backlog,
            "latency_backlog": self._latency_backlog,
            "last_module": self._last_module,
            "accuracy": self._accuracy,
            "loss": self._loss,
            "loss_gap": self._gap,
        }
        if idx.size == n:
            for key in _STATE_KEYS:
                info[key], info["_" + key] = values[key], self._all
            return
        mask = np.zeros(n, dtype=bool)
        mask[idx] = True
        mask.flags.writeable = False
        for key in _STATE_KEYS:
            value = values[key]
            out = np.zeros_like(value)
            out[idx] = value[idx]
            info[key], info["_" + key] = out, mask

    def _notes_info(self, info: dict[str, Any], idx: NDArray[np.intp]) -> None:
        n = self.num_envs
        mask = np.zeros(n, dtype=bool)
        mask[idx] = True
        mask.flags.writeable = False
        notes: dict[str, Any] = {}
        for key, value in self._notes.items():
            arr = (
                np.full(n, None, dtype=object)
                if isinstance(value, str)
                else np.zeros(n, dtype=type(value))
            )
            arr[idx] = value
            notes[key], notes["_" + key] = arr, mask
        info["data_notes"], info["_data_notes"] = notes, mask

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
        return self._observe()

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
