"""fedenv: wireless federated LoRA fine-tuning of foundation models as a Gymnasium environment.

``import fedenv`` registers one id per preset (:data:`ENV_IDS`)::

    import gymnasium as gym
    import fedenv

    env = gym.make("FedLoRAWireless-v0")                  # the switching preset (default)
    env = gym.make("FedLoRAWireless-Split-v0")            # split; also -Soft-v0, -Unified-v0
    env = gym.make("FedLoRAWireless-Split-v0", num_rounds=20, config={"reward":
    {"energy_weight": 2.0}})
    obs, info = env.reset(seed=0)

A variant id is ``FedLoRAWireless-v0`` with ``preset=`` set: keyword overrides and a mapping
``config`` apply on top of its preset, and a full ``EnvConfig`` must have its paradigm.

Each scenario of :mod:`fedenv.scenarios` (a preset with a few keys changed where the decisions
matter) has its id too (:data:`SCENARIO_IDS`: ``FedLoRAWireless-TightEnergy-v0``,
``-LargeCell-v0``, ``-DenseCell-v0``, ``-MobileShadowed-v0``, ``-SoftTightLatency-v0``,
``-SplitTightEnergy-v0``); keyword overrides apply on top of the scenario.
Registration is idempotent (importing or reloading the package again changes nothing).
"""

from __future__ import annotations

from gymnasium.envs.registration import register, registry

from fedenv.config import PRESETS, EnvConfig, resolve_config
from fedenv.env import FedLoRAWirelessEnv
from fedenv.scenarios import SCENARIO_IDS, SCENARIOS

__all__ = [
    "ENV_ID",
    "ENV_IDS",
    "EnvConfig",
    "FedLoRAWirelessEnv",
    "PRESETS",
    "SCENARIO_IDS",
    "resolve_config",
]
__version__ = "0.1.0"

#: The default id: the switching preset.
ENV_ID = "FedLoRAWireless-v0"
#: The registered id of each preset (Gymnasium's ``Name-Variant-vN`` form, as
#: ``BipedalWalkerHardcore-v3``).
ENV_IDS: dict[str, str] = {
    "switching": ENV_ID,
    "split": "FedLoRAWireless-Split-v0",
    "soft": "FedLoRAWireless-Soft-v0",
    "unified": "FedLoRAWireless-Unified-v0",
}

for _preset, _id in ENV_IDS.items():
    if _id not in registry:
        register(
            id=_id,
            entry_point="fedenv.env:FedLoRAWirelessEnv",
            vector_entry_point="fedenv.vector:FedLoRAWirelessVectorEnv",
            kwargs={} if _id == ENV_ID else {"preset": _preset},
        )
for _scenario in SCENARIOS.values():
    if _scenario.env_id not in registry:
        register(
            id=_scenario.env_id,
            entry_point="fedenv.env:FedLoRAWirelessEnv",
            vector_entry_point="fedenv.vector:FedLoRAWirelessVectorEnv",
            kwargs={"config": _scenario.mapping()},
        )
del _preset, _id, _scenario
