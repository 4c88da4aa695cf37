"""Every speed and memory benchmark of the project, in one place above all layers.

``python -m fedenv.bench <name>`` (the documented command, an alias of ``python -m benchmarks``)
runs one; :mod:`benchmarks.cli` holds the command and the registry of sub-commands. A benchmark
may import every layer (``fedenv`` <- ``baselines`` <- ``agents``), which is why none of them
lives inside those packages:

* :mod:`benchmarks.env`       ``env`` (single env vs CartPole-v1, cost vs K), ``vector`` (batched
  env)
* :mod:`benchmarks.ppo`       ``ppo`` (SB3 PPO frames/s on this env vs a trivial env)
* :mod:`benchmarks.lyapunov`  ``lyapunov`` (the Lyapunov policy's decision time)
* :mod:`benchmarks.lora`      ``lora`` (the lora backend's engines: speed, FLOP/s, memory)
* :mod:`benchmarks.rllib`     ``rllib`` (RLlib's sampling throughput vs env runners)

The figures are recorded in docs/benchmarks.md.
"""
