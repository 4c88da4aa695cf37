"""Rendering of FedLoRAWireless-v0: an ANSI table of the round and a picture of the cell.

matplotlib is imported lazily (only for ``rgb_array``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from fedenv.env import FedLoRAWirelessEnv

__all__ = ["render_ansi", "render_rgb"]


def render_ansi(env: FedLoRAWirelessEnv) -> str:
    """A per-device table of the last round (or of the state after reset)."""
    info = env._last_round
    cfg = env.config
    t = env._t
    head = (
        f"FedLoRAWireless-v0 [{cfg.paradigm}] round {t}/{cfg.num_rounds}  "
        f"acc {env._accuracy:.4f}  loss {env._loss:.4f}"
    )
    if env._latency_budget is not None:
        head += f"  Y {env._latency_backlog:.2f} s"
    lines = [head]
    gain_db = 10.0 * np.log10(env._gain[t])
    if info is None:
        lines.append(f"{'dev':>3} {'dist m':>7} {'gain dB':>8} {'f GHz':>6} {'data':>6}")
        for k in range(env.num_devices):
            lines.append(
                f"{k:>3} {env._trace.distance_m[0, t, k]:>7.1f} {gain_db[k]:>8.1f} "
                f"{env._cpu[k] / 1e9:>6.2f} {int(env.partition.data_sizes[k]):>6}"
            )
        return "\n".join(lines)
    lines.append(
        f"{'dev':>3} {'rank':>4} {'p W':>6} {'beta':>5} {'rho':>4} {'rate Mb/s':>9} {'PER':>7} "
        f"{'lat s':>6} {'E J':>6} {'Z J':>6} {'result':>9}"
    )
    for k in range(env.num_devices):
        if info["module"][k] == 0:
            result = "idle"
        elif info["success"][k]:
            result = "ok"
        elif info["straggler"][k]:
            result = "late"
        else:
            result = "lost"
        lines.append(
            f"{k:>3} {int(info['rank'][k]):>4} {info['tx_power_w'][k]:>6.3f} {info['bandwidth_share'][k]:>5.2f} "
            f"{info['sparsity_ratio'][k]:>4.2f} {info['rate_bps'][k] / 1e6:>9.2f} {info['packet_error_prob'][k]:>7.1e} "
            f"{info['latency_s'][k]:>6.2f} {info['energy_j'][k]:>6.3f} {info['energy_backlog'][k]:>6.3f} {result:>9}"
        )
    terms = ", ".join(f"{k} {v:+.3f}" for k, v in info["reward_terms"].items())
    lines.append(f"round latency {info['round_latency_s']:.2f} s; reward terms: {terms}")
    return "\n".join(lines)


def render_rgb(env: FedLoRAWirelessEnv) -> NDArray[np.uint8]:
    """The cell: BS, devices coloured by module, link quality as line width, backlog bars."""
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cfg = env.config
    t = env._t
    assert t is not None
    pos = env._trace.position_m[0, t]
    modules = env._last_module
    success = env._last_success
    fig = Figure(figsize=(8, 4), dpi=80)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 2, 1)
    r = cfg.channel.cell_radius_m
    ax.add_patch(plt.Circle((0, 0), r, fill=False, color="0.6"))
    ax.add_patch(plt.Circle((0, 0), cfg.channel.min_distance_m, fill=False, color="0.8", ls=":"))
    snr_db = 10.0 * np.log10(env._snr_ref * env._gain[t])
    width = np.clip((snr_db + 10.0) / 10.0, 0.3, 4.0)
    cmap = plt.get_cmap("viridis", env.codec.num_modules + 1)
    for k in range(env.num_devices):
        ax.plot([0, pos[k, 0]], [0, pos[k, 1]], color="tab:green" if success[k] else "0.75", lw=width[k], zorder=1)
    ax.scatter(pos[:, 0], pos[:, 1], c=modules, cmap=cmap, vmin=0, vmax=env.codec.num_modules, s=60, zorder=2, edgecolors="k")
    ax.scatter([0], [0], marker="^", s=160, c="tab:red", zorder=3)
    ax.set_xlim(-1.05 * r, 1.05 * r)
    ax.set_ylim(-1.05 * r, 1.05 * r)
    ax.set_aspect("equal")
    ax.set_title(f"round {t}/{cfg.num_rounds}  acc {env._accuracy:.3f}", fontsize=9)
    ax.tick_params(labelsize=7)
    bx = fig.add_subplot(1, 2, 2)
    budget = cfg.budgets.energy_budget_j
    backlog = env._energy_backlog / budget if budget is not None else np.zeros(env.num_devices)
    bx.bar(np.arange(env.num_devices), backlog, color=cmap(modules))
    bx.set_xlabel("device", fontsize=8)
    bx.set_ylabel("energy backlog Z / E_bar" if budget is not None else "no energy budget", fontsize=8)
    bx.tick_params(labelsize=7)
    fig.tight_layout()
    canvas.draw()
    image = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    return image
