"""PPO-Lagrangian: maximise the accuracy gain with every device's energy kept within its budget.

The papers' own problem is a constrained MDP: maximise the final accuracy subject to each
device's long-term energy budget, mean_t E_k(t) <= E_bar (and, where the preset budgets it, the
mean round latency mean_t T(t) <= T_bar; docs/model.md §4). PPO-Lagrangian (Ray, Achiam &
Amodei, "Benchmarking Safe Exploration in Deep RL", 2019; OmniSafe's ``PPOLag``) relaxes the
constraints with Lagrange multipliers lambda_i >= 0 learned by dual ascent. The *training* reward
seen by PPO is

    r_t = r_acc(t) - sum_i lambda_i (c_i(t) - d_i) / d_i

with r_acc = w_acc 100 (acc_t - acc_(t-1)) the env's accuracy term (``info["reward_terms"]
["accuracy"]``; its episode sum is the accuracy gain), c_i the step's costs (``info
["cost_per_device"]``, the devices' energies E_k, and ``info["cost_latency"]``, the round latency
T) and d_i their limits (E_bar per device, T_bar): each cost is measured in units of its own
budget. After every rollout

    lambda_i <- max(0, lambda_i + lr (mean_rollout c_i - d_i) / d_i)

so a multiplier rises while its constraint is violated on average and decays to 0 once it is
slack. ``multipliers``:

* ``per_device`` (default): one multiplier per device (and one for the latency);
* ``shared``: one energy multiplier for all devices, ascended on the worst device's violation
  max_k (mean c_k - d_k) / d_k (and one for the latency).

Why the penalty form and not a separate cost value head: with the penalty folded into the
reward, SB3's PPO trains unchanged (one value head learns the Lagrangian's value), and the
multipliers change slowly against a rollout, which is the approximation the two-head form
makes too when it combines the advantages A_r - lambda A_c. Devices are indexed by their slot
in the env; slots are exchangeable across episodes (placements are redrawn), so the per-device
multipliers price each slot's average, and the observation's energy backlog Z_k tells the
policy which device of *this* episode overspends.

The env, its reward and every evaluation are unchanged: evaluations report the env's reward and
its metrics (final accuracy, energy per device-round, devices within budget;
:mod:`baselines.evaluation`). The best model is the most accurate held-out evaluation in budget
(:class:`agents.callbacks.SelectionRule` ``constrained``), not the best return. The multipliers
are logged (``lagrangian/*``), recorded with every held-out evaluation (``lambda_<name>`` in
``evaluations.csv``) and saved after every rollout in ``<run>/lagrangian.json`` (atomically) so
that ``--resume`` continues them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvStepReturn

from fedenv.config import EnvConfig

__all__ = ["MULTIPLIER_MODES", "STATE_FILE", "CostConstraints"]

#: How the energy constraints share multipliers (module docstring).
MULTIPLIER_MODES = ("per_device", "shared")
#: The run file holding the multipliers.
STATE_FILE = "lagrangian.json"

F = NDArray[np.float64]


class CostConstraints(VecEnvWrapper):
    """The PPO-Lagrangian training reward and its dual ascent (module docstring).

    Args:
        venv: the training envs; every step's ``info`` must carry ``reward_terms["accuracy"]``,
            ``cost_per_device`` and (with a latency budget) ``cost_latency``.
        config: the env config: its budgets are the limits (the ones ``info["cost_limit_*"]``
            reports).
        lr: dual ascent step per unit of relative violation, >= 0.
        multipliers: ``per_device`` or ``shared``.
        init: initial value of every multiplier, >= 0.

    Raises:
        ValueError: no budget to constrain, a reward mode without an accuracy term (``dpp``),
            or a bad ``lr``, ``multipliers`` or ``init``.
    """

    def __init__(
        self,
        venv: VecEnv,
        config: EnvConfig,
        lr: float,
        multipliers: str = "per_device",
        init: float = 0.0,
    ) -> None:
        super().__init__(venv)
        if multipliers not in MULTIPLIER_MODES:
            raise ValueError(
                f"multipliers must be one of {', '.join(MULTIPLIER_MODES)}, got {multipliers!r}"
            )
        if not (np.isfinite(lr) and lr >= 0):
            raise ValueError(f"multiplier_lr must be a finite number >= 0, got {lr!r}")
        if not (np.isfinite(init) and init >= 0):
            raise ValueError(f"multiplier_init must be a finite number >= 0, got {init!r}")
        if config.reward.mode == "dpp":
            raise ValueError(
                "PPO-Lagrangian maximises the env's accuracy term; reward.mode 'dpp' has "
                "none (use 'accuracy' or 'accuracy_energy')"
            )
        k = config.devices.num_devices
        energy, latency = config.budgets.energy_budget_j, config.budgets.latency_budget_s
        if energy is None and latency is None:
            raise ValueError(
                "PPO-Lagrangian needs a budget to keep: the config has neither an energy nor "
                "a latency budget"
            )
        self.num_devices = k
        self.mode = multipliers
        self.lr = float(lr)
        self.energy = energy is not None
        self.latency = latency is not None
        #: the constrained costs, in order: the devices' energies, then the round latency
        self.cost_names = [f"energy_{i}" for i in range(k)] * self.energy + [
            "latency"
        ] * self.latency
        self.limits: F = np.array(
            [energy] * k * self.energy + [latency] * self.latency, dtype=np.float64
        )
        energy_multipliers = (k if multipliers == "per_device" else 1) if self.energy else 0
        self.multiplier_names = (
            ([f"energy_{i}" for i in range(k)] if multipliers == "per_device" else ["energy"])
            if self.energy
            else []
        ) + ["latency"] * self.latency
        self.lam: F = np.full(energy_multipliers + self.latency, float(init))
        self._sum = np.zeros(len(self.cost_names))
        self._steps = 0

    # ------------------------------------------------------------------ reward
    def weights(self) -> F:
        """The multiplier of each cost (the shared energy multiplier repeated over the devices)."""
        if self.mode == "per_device" or not self.energy:
            return self.lam.copy()
        return np.concatenate([np.repeat(self.lam[:1], self.num_devices), self.lam[1:]])

    def costs(self, infos: Sequence[Mapping[str, Any]]) -> F:
        """The constrained costs of a step, shape (num_envs, number of costs)."""
        rows = []
        for info in infos:
            parts = [np.asarray(info["cost_per_device"], dtype=np.float64)] if self.energy else []
            if self.latency:
                parts.append(np.array([info["cost_latency"]], dtype=np.float64))
            rows.append(np.concatenate(parts))
        return np.stack(rows)

    def shaped_reward(self, accuracy_reward: F, costs: F) -> F:
        """r_acc - sum_i lambda_i (c_i - d_i) / d_i, per env."""
        return (
            np.asarray(accuracy_reward, dtype=np.float64)
            - ((costs - self.limits) / self.limits) @ self.weights()
        )

    def reset(self) -> Any:
        return self.venv.reset()

    def step_wait(self) -> VecEnvStepReturn:
        obs, reward, dones, infos = self.venv.step_wait()
        accuracy = np.array([info["reward_terms"]["accuracy"] for info in infos], dtype=np.float64)
        costs = self.costs(infos)
        self._sum += costs.sum(axis=0)
        self._steps += len(infos)
        return obs, self.shaped_reward(accuracy, costs).astype(reward.dtype), dones, infos

    # ------------------------------------------------------------- dual ascent
    def update(self) -> dict[str, float]:
        """One dual-ascent step from the steps since the last one (none: nothing changes)."""
        if self._steps == 0:
            return {}
        mean = self._sum / self._steps
        self._sum = np.zeros_like(self._sum)
        self._steps = 0
        violation = (mean - self.limits) / self.limits
        if self.mode == "per_device":
            step = violation
        else:
            step = (
                np.concatenate(
                    [
                        violation[: self.num_devices].max(keepdims=True),
                        violation[self.num_devices :],
                    ]
                )
                if self.energy
                else violation
            )
        self.lam = np.maximum(self.lam + self.lr * step, 0.0)
        stats: dict[str, float] = {}
        if self.energy:
            k = self.num_devices
            e_lam = self.lam[:k] if self.mode == "per_device" else self.lam[:1]
            stats |= {
                "lambda_energy_mean": float(e_lam.mean()),
                "lambda_energy_max": float(e_lam.max()),
                "energy_j_per_device_round": float(mean[:k].mean()),
                "energy_violation_max": float(violation[:k].max()),
                "devices_over_budget": float(np.mean(violation[:k] > 0)),
            }
        if self.latency:
            stats |= {
                "lambda_latency": float(self.lam[-1]),
                "latency_s": float(mean[-1]),
                "latency_violation": float(violation[-1]),
            }
        return stats

    def record(self) -> dict[str, float]:
        """The multipliers by name (``lambda_<name>``), as the held-out evaluations record them."""
        return {f"lambda_{n}": float(x) for n, x in zip(self.multiplier_names, self.lam)}

    # ----------------------------------------------------------- checkpointing
    def state(self) -> dict[str, Any]:
        """What ``lagrangian.json`` holds (with the step the callback adds)."""
        return {
            "multipliers": self.mode,
            "names": list(self.multiplier_names),
            "lambda": [float(x) for x in self.lam],
            "limits": {name: float(d) for name, d in zip(self.cost_names, self.limits)},
            "lr": self.lr,
        }

    def load_state(self, state: Mapping[str, Any], source: str = "the saved state") -> None:
        """Continue from saved multipliers (``--resume``).

        Raises:
            ValueError: they were saved for other multipliers (another mode or number).
        """
        names, lam = list(state.get("names", [])), state.get("lambda")
        if (
            state.get("multipliers") != self.mode
            or names != self.multiplier_names
            or not isinstance(lam, list)
            or len(lam) != len(self.lam)
        ):
            raise ValueError(
                f"{source}: holds multipliers {state.get('multipliers')!r} {names} but the "
                f"run trains {self.mode!r} "
                f"{self.multiplier_names}; resume with the run's own --multipliers, or "
                "delete the file to restart them from 0"
            )
        values = np.asarray(lam, dtype=np.float64)
        if not np.isfinite(values).all() or (values < 0).any():
            raise ValueError(f"{source}: multipliers must be finite and >= 0, got {lam}")
        self.lam = values
