"""Policy networks for FedLoRAWireless-v0: the plain SB3 MLP and a per-device shared actor-critic.

Devices are interchangeable: relabelling them permutes the rows of the observation's device block
and should permute the rows of the action the same way. The plain ``MlpPolicy`` must learn this
from data, for one K only. :class:`PerDeviceActorCriticPolicy` builds it in (a Deep Sets /
permutation-equivariant network, Zaheer et al., NeurIPS 2017):

    h_k^0 = [x_k, g]                                   x_k: 7 device features, g: 4 globals
    h_k^l = act(W_l [h_k^(l-1), mean_j h_j^(l-1)])     one weight matrix shared by all devices
    mean action of device k = W_a h_k^L                (K, C) per-device means
    value = w_v . act(W_v [mean_k h_k^L, max_k h_k^L, g])

with separate trunks for the actor and the critic (SB3's default for PPO). The pooled context
(``mean_j``) lets a device's decision depend on the others (the bandwidth shares are normalised
across devices; the non-IID bias depends on who participates). Every weight is independent of
K, so one trained network serves any number of devices: :func:`resize_policy` rebuilds it for
another K with the same weights. The Gaussian's log standard deviation is one value per action
component (C of them), shared by the devices.

:class:`PerDeviceAttentionPolicy` replaces the mean by self-attention over the devices (a Set
Transformer's attention block without its feed-forward part, Lee et al., ICML 2019): the context
of device k is ``sum_j softmax_j(q_k . k_j / sqrt(d)) v_j`` (4 heads), so a device can weigh the
others one by one, e.g. those whose label mix balances its own, where the mean gives every device
the same summary. It is as permutation-equivariant and as independent of K as the mean form.

:class:`PerDeviceAutoregressivePolicy` lets the devices decide in turn instead of all at once:
device k's Gaussian mean also reads a message summed over the actions already drawn for devices
0..k-1 (``c_k = (1/K) sum_{j<k} tanh(M [h_j, a_j])``), so the policy is a product of K conditional
Gaussians, not of K independent ones. Which devices train *together* (whose label mixes balance
each other, docs/suite.md) is a joint choice; with independent draws a device cannot condition on
whether the devices that balance it were drawn. Sampling takes K small passes; scoring a stored
action (PPO's update) takes one, with every device's message read from the stored actions. The
order is the devices' index order, so this form is equivariant only to the relabellings that keep
it; its weights are still independent of K.

Use it with SB3 as ``PPO(PerDeviceActorCriticPolicy, env, policy_kwargs=dict(net_arch=...))``,
or by name through :func:`policy_class` (``"mlp"``, ``"per_device"``, ``"per_device_attention"``
or ``"per_device_autoregressive"``).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import torch as th
from stable_baselines3.common.distributions import (
    DiagGaussianDistribution,
    Distribution,
    sum_independent_dims,
)
from stable_baselines3.common.policies import ActorCriticPolicy
from torch import nn
from torch.distributions import Normal

from fedenv.env import DEVICE_FEATURES, GLOBAL_FEATURES

__all__ = [
    "POLICIES",
    "PerDeviceTrunk",
    "PerDeviceExtractor",
    "PerDeviceActorCriticPolicy",
    "PerDeviceAttentionPolicy",
    "PerDeviceAutoregressivePolicy",
    "num_devices_of",
    "policy_class",
    "resize_policy",
]

NUM_DEVICE_FEATURES = len(DEVICE_FEATURES)
NUM_GLOBAL_FEATURES = len(GLOBAL_FEATURES)


def num_devices_of(
    observation_space: gym.Space[Any], device_features: int = NUM_DEVICE_FEATURES
) -> int:
    """K from the flat observation's length F K + 4 (F features per device); ``ValueError``
    otherwise."""
    shape = getattr(observation_space, "shape", None)
    if (
        shape is None
        or len(shape) != 1
        or (shape[0] - NUM_GLOBAL_FEATURES) % device_features
        or shape[0] <= NUM_GLOBAL_FEATURES
    ):
        raise ValueError(
            f"the per-device policy needs a flat observation of length {device_features} K + "
            f"{NUM_GLOBAL_FEATURES} (device-major, then the globals), got an observation "
            f"space of shape {shape}"
        )
    return (shape[0] - NUM_GLOBAL_FEATURES) // device_features


def _split(obs: th.Tensor, device_features: int) -> tuple[th.Tensor, th.Tensor]:
    """(B, F K + 4) -> device block (B, K, F) and globals (B, 4), for any K."""
    k = (obs.shape[-1] - NUM_GLOBAL_FEATURES) // device_features
    dev = obs[..., : device_features * k].reshape(*obs.shape[:-1], k, device_features)
    return dev, obs[..., device_features * k :]


#: How a per-device layer sees the other devices: their mean, or self-attention over them.
POOLINGS = ("mean", "attention")
#: Attention heads per layer (one where the layer's width is not a multiple of it).
ATTENTION_HEADS = 4


class PerDeviceTrunk(nn.Module):
    """Shared per-device layers with a pooled context: (B, F K + 4) -> (B, K, H_last).

    ``pooling="mean"``: the context of every device is the mean over devices of the previous
    layer; ``"attention"``: each device's own self-attention read of the others (module
    docstring)."""

    def __init__(
        self,
        layers: list[int],
        activation_fn: type[nn.Module],
        device_features: int = NUM_DEVICE_FEATURES,
        pooling: str = "mean",
    ) -> None:
        super().__init__()
        if not layers:
            raise ValueError(
                "the per-device network needs at least one hidden layer, e.g. net_arch=[64, 64]"
            )
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        self.device_features = device_features
        self.pooling = pooling
        self.layers = nn.ModuleList()
        self.attention = nn.ModuleList()
        width = device_features + NUM_GLOBAL_FEATURES
        for i, out in enumerate(layers):
            # The first layer sees the device's features and the globals; the later ones also the
            # context pooled over devices from the previous layer.
            self.layers.append(nn.Linear(width if i == 0 else 2 * width, out))
            if i > 0 and pooling == "attention":
                heads = ATTENTION_HEADS if width % ATTENTION_HEADS == 0 else 1
                self.attention.append(nn.MultiheadAttention(width, heads, batch_first=True))
            width = out
        self.act = activation_fn()
        self.out_dim = width

    def _context(self, h: th.Tensor, i: int) -> th.Tensor:
        """The pooled context of every device for layer i >= 1, shaped like h (..., K, H)."""
        if self.pooling == "mean":
            return h.mean(dim=-2, keepdim=True).expand_as(h)
        flat = h.reshape(-1, *h.shape[-2:])  # attention takes one batch axis
        context, _ = self.attention[i - 1](flat, flat, flat, need_weights=False)
        return context.reshape(h.shape)

    def forward(self, obs: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        """Per-device latents (B, K, H) and the globals (B, 4)."""
        dev, glob = _split(obs, self.device_features)
        h = th.cat([dev, glob.unsqueeze(-2).expand(*dev.shape[:-1], glob.shape[-1])], dim=-1)
        for i, layer in enumerate(self.layers):
            if i > 0:
                h = th.cat([h, self._context(h, i)], dim=-1)
            h = self.act(layer(h))
        return h, glob


class PerDeviceExtractor(nn.Module):
    """Drop-in for SB3's ``MlpExtractor``: actor latents (B, K H) and a pooled critic latent (B,
    H)."""

    def __init__(
        self,
        net_arch: dict[str, list[int]],
        activation_fn: type[nn.Module],
        num_devices: int,
        device_features: int = NUM_DEVICE_FEATURES,
        pooling: str = "mean",
    ) -> None:
        super().__init__()
        self.policy_net = PerDeviceTrunk(
            list(net_arch["pi"]), activation_fn, device_features, pooling
        )
        self.value_trunk = PerDeviceTrunk(
            list(net_arch["vf"]), activation_fn, device_features, pooling
        )
        h = self.value_trunk.out_dim
        self.value_head = nn.Sequential(nn.Linear(2 * h + NUM_GLOBAL_FEATURES, h), activation_fn())
        self.latent_dim_pi_per_device = self.policy_net.out_dim
        # SB3 reads these two; the actor's latent is flat (K x H) for the policy's K.
        self.latent_dim_pi = num_devices * self.policy_net.out_dim
        self.latent_dim_vf = h

    def forward(self, features: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        return self.forward_actor(features), self.forward_critic(features)

    def forward_actor(self, features: th.Tensor) -> th.Tensor:
        h, _ = self.policy_net(features)
        return h.flatten(start_dim=-2)

    def forward_critic(self, features: th.Tensor) -> th.Tensor:
        h, glob = self.value_trunk(features)
        pooled = th.cat([h.mean(dim=-2), h.amax(dim=-2), glob], dim=-1)
        return self.value_head(pooled)


class PerDeviceActionHead(nn.Module):
    """One linear map per device, shared: (B, K H) -> (B, K C)."""

    def __init__(self, latent_per_device: int, num_components: int) -> None:
        super().__init__()
        self.latent_per_device = latent_per_device
        self.linear = nn.Linear(latent_per_device, num_components)

    def forward(self, latent: th.Tensor) -> th.Tensor:
        h = latent.reshape(*latent.shape[:-1], -1, self.latent_per_device)
        return self.linear(h).flatten(start_dim=-2)


class PerDeviceActorCriticPolicy(ActorCriticPolicy):
    """Permutation-equivariant actor-critic for ``Box(-1, 1, (K, C))`` actions (module docstring).

    Accepts ActorCriticPolicy's arguments; ``net_arch`` is a list of per-device layer widths (the
    same for actor and critic) or ``dict(pi=[...], vf=[...])``; ``device_features`` is the number
    F of features per device in the observation (7 for the env's own; more with
    :mod:`agents.features`). gSDE is not supported.
    """

    # SB3 annotates the attribute as MlpExtractor; here it holds the per-device drop-in, which
    # has MlpExtractor's interface (latent_dim_pi/vf, forward_actor/critic) without its layers.
    mlp_extractor: PerDeviceExtractor  # type: ignore[assignment]
    net_arch: dict[str, list[int]]  # always the dict form: __init__ turns a list into one
    #: How each layer pools the other devices (:data:`POOLINGS`).
    pooling = "mean"

    def __init__(
        self,
        observation_space: gym.spaces.Space[Any],
        action_space: gym.spaces.Space[Any],
        lr_schedule: Any,
        device_features: int = NUM_DEVICE_FEATURES,
        **kwargs: Any,
    ) -> None:
        self.device_features = int(device_features)
        self.num_devices = num_devices_of(observation_space, self.device_features)
        shape = getattr(action_space, "shape", None)
        if (
            not isinstance(action_space, gym.spaces.Box)
            or shape is None
            or len(shape) != 2
            or shape[0] != self.num_devices
        ):
            raise ValueError(
                f"the per-device policy needs a Box action of shape (K={self.num_devices}, "
                f"components), got {action_space}"
            )
        if kwargs.get("use_sde"):
            raise ValueError(
                "the per-device policy does not support gSDE (use_sde=True); use use_sde=False"
            )
        self.num_components = int(shape[1])
        net_arch = kwargs.pop("net_arch", None)
        if net_arch is None:
            net_arch = [64, 64]
        if isinstance(net_arch, (list, tuple)):
            net_arch = {"pi": list(net_arch), "vf": list(net_arch)}
        super().__init__(observation_space, action_space, lr_schedule, net_arch=net_arch, **kwargs)

    def _build_mlp_extractor(self) -> None:
        self.mlp_extractor = PerDeviceExtractor(
            self.net_arch, self.activation_fn, self.num_devices, self.device_features, self.pooling
        )

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data["device_features"] = self.device_features
        return data

    def _build(self, lr_schedule: Any) -> None:
        super()._build(lr_schedule)
        assert isinstance(self.action_dist, DiagGaussianDistribution)
        # Replace SB3's (K H -> K C) linear map and K C log-stds by K-independent ones.
        self.action_net = self._action_head(self.mlp_extractor.latent_dim_pi_per_device)
        self.log_std = nn.Parameter(
            th.full((self.num_components,), float(self.log_std_init)), requires_grad=True
        )
        if self.ortho_init:
            self.action_net.apply(lambda m: self.init_weights(m, gain=0.01))
        self.optimizer = self.optimizer_class(
            self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs
        )  # type: ignore[call-arg]

    def _action_head(self, latent_per_device: int) -> nn.Module:
        """The map from the actor's per-device latents to the Gaussian's means."""
        return PerDeviceActionHead(latent_per_device, self.num_components)

    def _get_action_dist_from_latent(self, latent_pi: th.Tensor) -> Distribution:
        mean_actions = self.action_net(latent_pi)
        k = mean_actions.shape[-1] // self.num_components
        return self.action_dist.proba_distribution(mean_actions, self.log_std.repeat(k))


class PerDeviceAttentionPolicy(PerDeviceActorCriticPolicy):
    """The per-device actor-critic with self-attention over the devices in place of their mean
    (module docstring); the same arguments."""

    pooling = "attention"


class AutoregressiveActionHead(nn.Module):
    """Device k's mean action from its latent and a message summing devices 0..k-1's actions.

    ``mean_k = W [h_k, c_k]`` with ``c_k = (1/K) sum_{j<k} tanh(M [h_j, clip(a_j)])``: a device
    decides knowing what the devices before it chose (module docstring). Every weight is
    independent of K.
    """

    def __init__(self, latent_per_device: int, num_components: int) -> None:
        super().__init__()
        self.latent_per_device = latent_per_device
        self.num_components = num_components
        self.message = nn.Sequential(
            nn.Linear(latent_per_device + num_components, latent_per_device), nn.Tanh()
        )
        self.linear = nn.Linear(2 * latent_per_device, num_components)

    def _messages(self, h: th.Tensor, actions: th.Tensor) -> th.Tensor:
        return self.message(th.cat([h, actions.clamp(-1.0, 1.0)], dim=-1))

    def conditional_mean(self, latent: th.Tensor, actions: th.Tensor) -> th.Tensor:
        """The means (B, K C) of every device given the others' ``actions`` (B, K C): all
        devices at once (teacher forcing)."""
        h = latent.reshape(*latent.shape[:-1], -1, self.latent_per_device)
        a = actions.reshape(*h.shape[:-1], self.num_components)
        m = self._messages(h, a)
        before = (m.cumsum(dim=-2) - m) / h.shape[-2]  # the sum over j < k
        return self.linear(th.cat([h, before], dim=-1)).flatten(start_dim=-2)

    def roll_out(
        self, latent: th.Tensor, std: th.Tensor, deterministic: bool
    ) -> tuple[th.Tensor, th.Tensor]:
        """(actions, their means), each (B, K C), drawn device by device; ``std`` (C,)."""
        h = latent.reshape(*latent.shape[:-1], -1, self.latent_per_device)
        k = h.shape[-2]
        context = h.new_zeros(*h.shape[:-2], self.latent_per_device)
        means, actions = [], []
        for i in range(k):
            mean = self.linear(th.cat([h[..., i, :], context], dim=-1))
            action = mean if deterministic else mean + std * th.randn_like(mean)
            context = context + self._messages(h[..., i, :], action) / k
            means.append(mean)
            actions.append(action)
        return th.cat(actions, dim=-1), th.cat(means, dim=-1)


class AutoregressiveGaussian(DiagGaussianDistribution):
    """A Gaussian per device whose mean depends on the devices before it (the product of K
    conditional Gaussians): sampled device by device, scored all at once."""

    def __init__(self, head: AutoregressiveActionHead, action_dim: int) -> None:
        super().__init__(action_dim)
        self.head = head

    def proba_distribution(  # type: ignore[override]
        self, latent: th.Tensor, log_std: th.Tensor
    ) -> AutoregressiveGaussian:
        """Set the actor's latents (B, K H) and the per-component log std (C,)."""
        self.latent, self.std = latent, log_std.exp()
        return self

    def conditional_mean(self, actions: th.Tensor) -> th.Tensor:
        """Each device's mean given the others' ``actions`` (what behaviour cloning fits)."""
        return self.head.conditional_mean(self.latent, actions)

    def _normal(self, mean: th.Tensor) -> Normal:
        k = mean.shape[-1] // self.std.shape[0]
        return Normal(mean, th.ones_like(mean) * self.std.repeat(k))

    def log_prob(self, actions: th.Tensor) -> th.Tensor:
        self.distribution = self._normal(self.conditional_mean(actions))
        return super().log_prob(actions)

    def entropy(self) -> th.Tensor:
        # a Gaussian's entropy does not depend on its mean
        mean = self.latent.new_zeros(*self.latent.shape[:-1], self.action_dim)
        return sum_independent_dims(self._normal(mean).entropy())

    def _draw(self, deterministic: bool) -> th.Tensor:
        actions, means = self.head.roll_out(self.latent, self.std, deterministic)
        self.distribution = self._normal(means)
        return actions

    def sample(self) -> th.Tensor:
        return self._draw(deterministic=False)

    def mode(self) -> th.Tensor:
        return self._draw(deterministic=True)


class PerDeviceAutoregressivePolicy(PerDeviceActorCriticPolicy):
    """The per-device actor-critic whose devices decide in turn, each seeing a summary of the
    actions of the devices before it (module docstring); the same arguments."""

    def _action_head(self, latent_per_device: int) -> nn.Module:
        head = AutoregressiveActionHead(latent_per_device, self.num_components)
        self.action_dist = AutoregressiveGaussian(head, self.num_devices * self.num_components)
        return head

    def _build(self, lr_schedule: Any) -> None:
        super()._build(lr_schedule)
        if self.ortho_init:  # messages at full scale; the means start small, as SB3's
            assert isinstance(self.action_net, AutoregressiveActionHead)
            self.action_net.message.apply(lambda m: self.init_weights(m, gain=1.0))

    def _get_action_dist_from_latent(self, latent_pi: th.Tensor) -> Distribution:
        return self.action_dist.proba_distribution(latent_pi, self.log_std)


def resize_policy(
    policy: PerDeviceActorCriticPolicy,
    observation_space: gym.spaces.Space[Any],
    action_space: gym.spaces.Space[Any],
) -> PerDeviceActorCriticPolicy:
    """The same trained weights as a policy for another number of devices K (spaces of that K)."""
    if not isinstance(policy, PerDeviceActorCriticPolicy):
        raise TypeError(f"only the per-device policy serves another K; got {type(policy).__name__}")
    params = policy._get_constructor_parameters()
    params.update(observation_space=observation_space, action_space=action_space)
    new = type(policy)(**params)
    new.load_state_dict(policy.state_dict())
    new.to(policy.device)
    new.set_training_mode(False)
    return new


#: Names accepted by ``--policy``.
POLICIES: dict[str, Any] = {
    "mlp": "MlpPolicy",
    "per_device": PerDeviceActorCriticPolicy,
    "per_device_attention": PerDeviceAttentionPolicy,
    "per_device_autoregressive": PerDeviceAutoregressivePolicy,
}


def policy_class(name: str) -> Any:
    """SB3 policy (class or name) for ``--policy``: one of :data:`POLICIES`."""
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; expected one of {', '.join(POLICIES)}")
    return POLICIES[name]
