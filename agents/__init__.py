"""Learned agents for FedLoRAWireless-v0 (stable-baselines3), CleanRL-flat.

* ``python -m agents.train_ppo``  PPO (plain MLP or the per-device shared actor-critic)
* ``python -m agents.train_sac``  SAC, the same conventions
* ``python -m agents.evaluate``   a trained run on held-out seeds
* ``python -m agents.transfer``   a per-device network at other K, on the constrained objective
* ``python -m agents.curves``     learning curves: accuracy, budget use per device, multipliers
* ``python -m agents.demo``       the project's main job: train, compare with the baselines, report

Trained agents enter ``python -m baselines.compare`` as ``ppo:<run dir>`` (``sac:``,
``recurrentppo:``, ``ippo:``) through the entry points of the group ``fedenv.policies``
(pyproject.toml: :func:`agents.evaluate.load_policy`, :func:`agents.train_ippo.ippo_policy`),
which :mod:`baselines.registry` reads: the baselines never import this package. Importing this
package does not import torch.
"""
