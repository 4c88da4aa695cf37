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

Use it with SB3 as ``PPO(PerDeviceActorCriticPolicy, env, policy_kwargs=dict(net_arch=...))``,
or by name through :func:`policy_class` (``"mlp"``, ``"per_device"`` or
``"per_device_attention"``).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import torch as th
from stable_baselines3.common.distributions import DiagGaussianDistribution, Distribution
from stable_baselines3.common.policies import ActorCriticPolicy
from torch import nn

from fedenv.env import DEVICE_FEATURES, GLOBAL_FEATURES

__all__ = [
    "POLICIES",
    "PerDeviceTrunk",
    "PerDeviceExtractor",
    "PerDeviceActorCriticPolicy",
    "PerDeviceAttentionPolicy",
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
        self.action_net = PerDeviceActionHead(
            self.mlp_extractor.latent_dim_pi_per_device, self.num_components
        )
        self.log_std = nn.Parameter(
            th.full((self.num_components,), float(self.log_std_init)), requires_grad=True
        )
        if self.ortho_init:
            self.action_net.apply(lambda m: self.init_weights(m, gain=0.01))
        self.optimizer = self.optimizer_class(
            self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs
        )  # type: ignore[call-arg]

    def _get_action_dist_from_latent(self, latent_pi: th.Tensor) -> Distribution:
        mean_actions = self.action_net(latent_pi)
        k = mean_actions.shape[-1] // self.num_components
        return self.action_dist.proba_distribution(mean_actions, self.log_std.repeat(k))


class PerDeviceAttentionPolicy(PerDeviceActorCriticPolicy):
    """The per-device actor-critic with self-attention over the devices in place of their mean
    (module docstring); the same arguments."""

    pooling = "attention"


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
}


def policy_class(name: str) -> Any:
    """SB3 policy (class or name) for ``--policy``: ``mlp``, ``per_device`` or
    ``per_device_attention``."""
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; expected one of {', '.join(POLICIES)}")
    return POLICIES[name]
