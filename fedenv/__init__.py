"""fedenv: wireless federated LoRA fine-tuning of foundation models as a Gymnasium environment.

``import fedenv`` registers ``FedLoRAWireless-v0``::

    import gymnasium as gym
    import fedenv

    env = gym.make("FedLoRAWireless-v0", preset="switching")
    obs, info = env.reset(seed=0)
"""

from __future__ import annotations

from gymnasium.envs.registration import register, registry

from fedenv.config import PRESETS, EnvConfig, resolve_config
from fedenv.env import FedLoRAWirelessEnv

__all__ = ["ENV_ID", "EnvConfig", "FedLoRAWirelessEnv", "PRESETS", "resolve_config"]
__version__ = "0.1.0"

ENV_ID = "FedLoRAWireless-v0"

if ENV_ID not in registry:
    register(
        id=ENV_ID,
        entry_point="fedenv.env:FedLoRAWirelessEnv",
        vector_entry_point="fedenv.vector:FedLoRAWirelessVectorEnv",
    )
