"""Learned agents for FedLoRAWireless-v0 (stable-baselines3), CleanRL-flat.

* ``python -m agents.train_ppo``  PPO (plain MLP or the per-device shared actor-critic)
* ``python -m agents.train_sac``  SAC, the same conventions
* ``python -m agents.evaluate``   a trained run on held-out seeds
* ``python -m agents.demo``       the project's main job: train, compare with the baselines, report

Trained agents enter ``python -m baselines.compare`` as ``ppo:<run dir>`` through
:func:`agents.evaluate.load_policy`. Importing this package does not import torch.
"""
