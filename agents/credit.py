"""Per-device credit: PPO whose devices are each credited with what their own update added.

The per-device policy is K agents sharing one reward: a device whose update pulls the model
towards a skewed floor shares the round's accuracy term with its round-mates. With
``--advantage counterfactual`` (:class:`CounterfactualPPO`) device k's policy-gradient term uses

    Psi_k(t) = A(t) - (b_k(t) - m(t))

instead of the round's advantage A(t) (GAE, as PPO's), where

* b_k(t) = r_acc(t) - D_k(t) is the accuracy term the round would have given had device k's
  update not arrived, everything else as played: D_k is the accuracy-term points that device
  k's arrival added (:func:`arrival_credit`, 0 for a device that did not arrive), from the
  surrogate's what-ifs (:func:`fedenv.learning.surrogate.arrival_what_ifs`; docs/model.md
  §5.2) evaluated on the round's ``info``;
* m(t) is the mean of b over the rollout's steps at the same round index t.

b_k does not depend on device k's action (the other devices' actions and the round's channels
fix it), so subtracting it leaves the policy gradient unbiased: the counterfactual baseline of
COMA (Foerster et al., "Counterfactual Multi-Agent Policy Gradients", AAAI 2018) and the
difference rewards of Wolpert & Tumer (2002), evaluated with the env's own model of the round
instead of a learned critic. Each device has its own probability ratio and PPO clipping; the
value function, its loss and everything else are PPO's. A device's arrival is the part of the
round that the what-if removes, so the credit needs the surrogate backend (the lora backend has
no model to ask) and a factored per-device policy (an autoregressive one draws a device's
action after the others', so b_k would depend on it).

Measured on the suite's scenarios in docs/agent-experiments.md#counterfactual-credit: it helps
on some and not on others; it is an option, not the default.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch as th
from numpy.typing import NDArray
from stable_baselines3 import PPO
from stable_baselines3.common.distributions import DiagGaussianDistribution
from stable_baselines3.common.utils import explained_variance
from stable_baselines3.common.vec_env import VecEnv, VecNormalize
from torch.nn import functional as F

from fedenv.config import EnvConfig
from fedenv.learning.surrogate import accuracy_from_gap, arrival_what_ifs, next_gap

__all__ = ["ADVANTAGES", "CounterfactualPPO", "arrival_credit", "check_counterfactual"]

#: The ``--advantage`` choices: PPO's own (``gae``) or per-device counterfactual credit.
ADVANTAGES = ("gae", "counterfactual")

#: Policies whose devices draw their actions independently given the observation.
_FACTORED_POLICIES = ("per_device", "per_device_attention")


def check_counterfactual(
    policy: str, vec_env: str, action_form: str, config: EnvConfig | None = None
) -> None:
    """Raise a ValueError saying how to fix a setting the counterfactual credit cannot use (the
    backend is checked when ``config`` is given)."""
    if policy not in _FACTORED_POLICIES:
        raise ValueError(
            f"--advantage counterfactual needs a factored per-device policy "
            f"({', '.join(_FACTORED_POLICIES)}), got --policy {policy}"
        )
    if action_form != "factored":
        raise ValueError(
            "--advantage counterfactual credits each device with its own action: it needs "
            f"--action-form factored, got {action_form}"
        )
    if vec_env not in ("auto", "batched"):
        raise ValueError(
            "--advantage counterfactual reads the round from the batched training env: pass "
            f"--vec-env batched (or auto), got {vec_env}"
        )
    if config is not None and config.learning.backend != "surrogate":
        raise ValueError(
            "--advantage counterfactual asks the surrogate what each device's update added; "
            f"the {config.learning.backend!r} backend has no such model (use the surrogate "
            "backend, or --advantage gae)"
        )


def arrival_credit(
    config: EnvConfig, info: Mapping[str, Any], gap_before: NDArray[np.float64]
) -> NDArray[np.float64]:
    """D_k: the accuracy-term points each device's arrival added to its round, shape (N, K).

    Args:
        config: the env's config (surrogate backend).
        info: the batched env's ``info`` of the round
            (:class:`fedenv.vector.FedLoRAWirelessVectorEnv`): ``data_size``,
            ``label_distribution``, ``global_label_distribution``, ``rank``, ``sparsity_ratio``,
            ``success`` and ``loss_gap`` (the gap after the round).
        gap_before: the loss gap G before the round, shape (N,).

    Returns:
        w_acc 100 (acc(G') - acc(G'_-k)), with G' the round's gap and G'_-k the gap had device
        k's update been lost (docs/model.md §5.2); 0 for a device that did not arrive.
    """
    cfg = config.learning.surrogate
    sizes = np.asarray(info["data_size"], dtype=np.float64)
    share = sizes / sizes.sum(axis=-1, keepdims=True)
    labels = np.asarray(info["label_distribution"], dtype=np.float64)
    mix = np.asarray(info["global_label_distribution"], dtype=np.float64)
    rank = np.asarray(info["rank"], dtype=np.float64)
    ratio = np.asarray(info["sparsity_ratio"], dtype=np.float64) if config.sparsifies else None
    weight = np.asarray(info["success"], dtype=np.float64)
    gap = np.asarray(gap_before, dtype=np.float64)
    # the round as played is the env's own (its loss gap after the round)
    played = np.asarray(info["loss_gap"], dtype=np.float64)
    # the what-ifs' global mix lines up with their (what-if, device) axes
    progress, floor = arrival_what_ifs(
        share, weight, rank, ratio, labels, mix[:, None, None, :], cfg
    )
    without = next_gap(gap[:, None], progress[:, 1, :], floor[:, 1, :], cfg)
    added = accuracy_from_gap(played[:, None], cfg) - accuracy_from_gap(without, cfg)
    # a device that did not arrive added nothing (its what-if is the round itself)
    arrived = (rank > 0.0) & (weight > 0.0)
    return np.where(arrived, config.reward.accuracy_weight * 100.0 * added, 0.0)


class CounterfactualPPO(PPO):
    """PPO with per-device advantages from a counterfactual baseline (module docstring).

    The training env must put ``device_credit`` (D_k, shape (K,)) and ``round`` (the round
    index) in every step's ``info``, as :class:`agents.envs.BatchedAgentVecEnv` does with
    ``credit=True``; the policy must be a factored per-device one (a Box action of shape
    (K, components) drawn from a diagonal Gaussian).
    """

    def _setup_model(self) -> None:
        super()._setup_model()
        self._credit: list[NDArray[np.float64]] = []
        self._rounds: list[NDArray[np.int64]] = []

    def collect_rollouts(self, env: VecEnv, *args: Any, **kwargs: Any) -> bool:
        self._credit, self._rounds = [], []
        return super().collect_rollouts(env, *args, **kwargs)

    def _update_info_buffer(
        self, infos: list[dict[str, Any]], dones: NDArray[np.bool_] | None = None
    ) -> None:
        # called once per env step of a rollout, with that step's infos
        super()._update_info_buffer(infos, dones)
        try:
            credit = [info["device_credit"] for info in infos]
            rounds = [info["round"] for info in infos]
        except KeyError:
            raise ValueError(
                "CounterfactualPPO needs 'device_credit' and 'round' in every step's info: "
                "train on agents.envs.BatchedAgentVecEnv(..., credit=True)"
            ) from None
        accuracy = np.array([info["reward_terms"]["accuracy"] for info in infos])
        # b_k: the accuracy term without device k's update
        self._credit.append(accuracy[:, None] - np.stack(credit))
        self._rounds.append(np.asarray(rounds, dtype=np.int64))

    def _baseline(self) -> NDArray[np.float64]:
        """b_k - m(t) for the rollout, flattened as the rollout buffer flattens, shape (n, K),
        in the units of the normalised reward that the advantages are computed from."""
        b = np.stack(self._credit[-self.n_steps :])  # (n_steps, n_envs, K)
        rounds = np.stack(self._rounds[-self.n_steps :])  # (n_steps, n_envs)
        norm = self.get_vec_normalize_env()
        if isinstance(norm, VecNormalize) and norm.norm_reward:
            b = b / np.sqrt(norm.ret_rms.var + norm.epsilon)
        mean = np.zeros(int(rounds.max()) + 1)
        for t in np.unique(rounds):
            mean[t] = b[rounds == t].mean()
        b = b - mean[rounds][..., None]
        return b.swapaxes(0, 1).reshape(-1, b.shape[-1])

    def _device_log_prob(
        self, obs: th.Tensor, actions: th.Tensor
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        """(per-device log-probabilities (n, K), values (n,), entropy (n,)) of ``actions``."""
        policy = self.policy
        features = policy.extract_features(obs)
        latent_pi, latent_vf = policy.mlp_extractor(features)
        dist = policy._get_action_dist_from_latent(latent_pi)
        if not isinstance(dist, DiagGaussianDistribution):
            raise ValueError(
                "CounterfactualPPO needs a diagonal Gaussian per-device policy, got "
                f"{type(dist).__name__}"
            )
        k = self.policy.num_devices
        log_prob = dist.distribution.log_prob(actions).reshape(len(actions), k, -1).sum(-1)
        entropy = dist.entropy()
        assert entropy is not None  # (a Gaussian's is analytic)
        return log_prob, policy.value_net(latent_vf).flatten(), entropy

    def train(self) -> None:
        """PPO's update (SB3's ``PPO.train``) with per-device advantages Psi_k and ratios."""
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        clip_range = self.clip_range(self._current_progress_remaining)  # type: ignore[operator]
        buffer = self.rollout_buffer
        flat = buffer.swap_and_flatten
        device = self.device
        obs = th.as_tensor(flat(buffer.observations), device=device).float()
        actions = th.as_tensor(flat(buffer.actions), device=device).float()
        n = len(obs)
        advantages = th.as_tensor(flat(buffer.advantages), device=device).float().reshape(n)
        returns = th.as_tensor(flat(buffer.returns), device=device).float().reshape(n)
        baseline = th.as_tensor(self._baseline(), device=device).float()
        psi_all = advantages[:, None] - baseline  # (n, K)
        with th.no_grad():
            old = th.cat(
                [
                    self._device_log_prob(obs[i : i + 4096], actions[i : i + 4096])[0]
                    for i in range(0, n, 4096)
                ]
            )
        pg_losses, value_losses, entropy_losses, clip_fractions = [], [], [], []
        approx_kl_divs: list[float] = []
        continue_training = True
        for epoch in range(self.n_epochs):
            approx_kl_divs = []
            # the minibatches of SB3's RolloutBuffer.get (the same draws from numpy's generator)
            order = np.random.permutation(n)  # noqa: NPY002 (SB3's own global generator)
            for start in range(0, n, self.batch_size):
                idx = th.as_tensor(order[start : start + self.batch_size], device=device)
                log_prob, values, entropy = self._device_log_prob(obs[idx], actions[idx])
                psi = psi_all[idx]
                if self.normalize_advantage and len(idx) > 1:
                    psi = (psi - psi.mean()) / (psi.std() + 1e-8)
                log_ratio = log_prob - old[idx]
                ratio = th.exp(log_ratio)
                policy_loss = -th.min(
                    psi * ratio, psi * th.clamp(ratio, 1 - clip_range, 1 + clip_range)
                ).mean()
                value_loss = F.mse_loss(returns[idx], values)
                entropy_loss = -th.mean(entropy)
                loss = policy_loss + self.ent_coef * entropy_loss + self.vf_coef * value_loss
                pg_losses.append(policy_loss.item())
                value_losses.append(value_loss.item())
                entropy_losses.append(entropy_loss.item())
                clip_fractions.append(th.mean((th.abs(ratio - 1) > clip_range).float()).item())
                with th.no_grad():
                    # the KL of the joint policy: the devices' log-ratios summed
                    joint = log_ratio.sum(-1)
                    approx_kl = th.mean(th.exp(joint) - 1 - joint).item()
                    approx_kl_divs.append(approx_kl)
                if self.target_kl is not None and approx_kl > 1.5 * self.target_kl:
                    continue_training = False
                    if self.verbose >= 1:
                        print(f"Early stopping at step {epoch}: approx. KL {approx_kl:.2f}")
                    break
                self.policy.optimizer.zero_grad()
                loss.backward()
                th.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
                self.policy.optimizer.step()
            self._n_updates += 1
            if not continue_training:
                break
        self.logger.record("train/entropy_loss", np.mean(entropy_losses))
        self.logger.record("train/policy_gradient_loss", np.mean(pg_losses))
        self.logger.record("train/value_loss", np.mean(value_losses))
        self.logger.record("train/approx_kl", np.mean(approx_kl_divs))
        self.logger.record("train/clip_fraction", np.mean(clip_fractions))
        self.logger.record("train/loss", loss.item())
        self.logger.record(
            "train/explained_variance",
            explained_variance(buffer.values.flatten(), buffer.returns.flatten()),
        )
        self.logger.record("train/credit_baseline_std", float(baseline.std()))
        if hasattr(self.policy, "log_std"):
            self.logger.record("train/std", th.exp(self.policy.log_std).mean().item())
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/clip_range", clip_range)
