"""Rendering of FedLoRAWireless-v0: an ANSI table of the round and a picture of the cell.

Both read only what the env exposes publicly: its ``config``, ``codec``, ``num_devices``,
``last_info`` (the ``info`` of the last reset or step), ``device_positions_m`` and
``reference_snr``; neither imports the env module. matplotlib is imported lazily
(only for ``rgb_array``; the ``render`` extra installs it, with moviepy for Gymnasium's
``RecordVideo``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from fedenv.env import FedLoRAWirelessEnv

__all__ = ["render_ansi", "render_rgb"]


def _info(env: FedLoRAWirelessEnv) -> Mapping[str, Any]:
    info = env.last_info
    if info is None:
        raise gym.error.ResetNeeded("call reset() before render()")
    return info


def render_ansi(env: FedLoRAWirelessEnv) -> str:
    """A per-device table of the last round (or of the state after reset)."""
    info = _info(env)
    cfg = env.config
    t = int(info["round"])
    head = (
        f"FedLoRAWireless-v0 [{cfg.paradigm}] round {t}/{cfg.num_rounds}  acc "
        f"{info['accuracy']:.4f}  loss {info['loss']:.4f}"
    )
    if cfg.budgets.latency_budget_s is not None:
        head += f"  Y {info['latency_backlog']:.2f} s"
    lines = [head]
    if "module" not in info:  # after reset: the devices as they start
        gain_db = 10.0 * np.log10(info["channel_gain"])
        lines.append(f"{'dev':>3} {'dist m':>7} {'gain dB':>8} {'f GHz':>6} {'data':>6}")
        for k in range(env.num_devices):
            lines.append(
                f"{k:>3} {info['distance_m'][k]:>7.1f} {gain_db[k]:>8.1f} "
                f"{info['cpu_freq_hz'][k] / 1e9:>6.2f} {int(info['data_size'][k]):>6}"
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
            f"{k:>3} {int(info['rank'][k]):>4} {info['tx_power_w'][k]:>6.3f} "
            f"{info['bandwidth_share'][k]:>5.2f} "
            f"{info['sparsity_ratio'][k]:>4.2f} {info['rate_bps'][k] / 1e6:>9.2f} "
            f"{info['packet_error_prob'][k]:>7.1e} "
            f"{info['latency_s'][k]:>6.2f} {info['energy_j'][k]:>6.3f} "
            f"{info['energy_backlog'][k]:>6.3f} {result:>9}"
        )
    terms = ", ".join(f"{k} {v:+.3f}" for k, v in info["reward_terms"].items())
    lines.append(f"round latency {info['round_latency_s']:.2f} s; reward terms: {terms}")
    return "\n".join(lines)


def render_rgb(env: FedLoRAWirelessEnv) -> NDArray[np.uint8]:
    """The cell: BS, devices coloured by module, link quality as line width, backlog bars, a
    legend."""
    try:
        import matplotlib.pyplot as plt
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
    except ImportError as err:  # pragma: no cover - the train and render extras install it
        raise ImportError(
            "render_mode='rgb_array' needs matplotlib: pip install 'fedenv[render]'"
        ) from err
    info = _info(env)
    cfg = env.config
    t = int(info["round"])
    pos = env.device_positions_m
    modules = np.asarray(info["last_module"])
    success = (
        np.asarray(info["success"]) if "success" in info else np.zeros(env.num_devices, dtype=bool)
    )
    num_modules = env.codec.num_modules
    fig = Figure(figsize=(9, 4), dpi=80)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 2, 1)
    r = cfg.channel.cell_radius_m
    ax.add_patch(plt.Circle((0, 0), r, fill=False, color="0.6"))
    ax.add_patch(plt.Circle((0, 0), cfg.channel.min_distance_m, fill=False, color="0.8", ls=":"))
    # the gain of the coming round (info's channel_gain), as the observation's full-band SNR at
    # P_max
    snr_db = 10.0 * np.log10(env.reference_snr * np.asarray(info["channel_gain"]))
    width = np.clip((snr_db + 10.0) / 10.0, 0.3, 4.0)
    cmap = plt.get_cmap("viridis", num_modules + 1)
    for k in range(env.num_devices):
        ax.plot(
            [0, pos[k, 0]],
            [0, pos[k, 1]],
            color="tab:green" if success[k] else "0.75",
            lw=width[k],
            zorder=1,
        )
    ax.scatter(
        pos[:, 0],
        pos[:, 1],
        c=modules,
        cmap=cmap,
        vmin=0,
        vmax=num_modules,
        s=60,
        zorder=2,
        edgecolors="k",
    )
    ax.scatter([0], [0], marker="^", s=160, c="tab:red", zorder=3)
    ax.set_xlim(-1.05 * r, 1.05 * r)
    ax.set_ylim(-1.05 * r, 1.05 * r)
    ax.set_aspect("equal")
    ax.set_title(f"round {t}/{cfg.num_rounds}  acc {info['accuracy']:.3f}", fontsize=9)
    ax.set_xlabel("x (m)", fontsize=8)
    ax.set_ylabel("y (m)", fontsize=8)
    ax.tick_params(labelsize=7)
    # legend: what the marker colours, line colours and widths and the triangle mean
    ranks = [int(rank) for rank in env.codec.ranks(np.arange(1, num_modules + 1))]
    labels = ["idle", *(f"rank {rank}" for rank in ranks)]
    handles = [
        Line2D([], [], marker="^", ls="", color="tab:red", markersize=8, label="base station")
    ]
    handles += [
        Line2D(
            [], [], marker="o", ls="", markeredgecolor="k", markersize=6, color=cmap(m), label=label
        )
        for m, label in enumerate(labels)
    ]
    handles.append(Line2D([], [], color="tab:green", lw=2, label="update aggregated"))
    handles.append(Line2D([], [], color="0.75", lw=2, label="not aggregated"))
    handles.append(Line2D([], [], color="0.4", lw=0.5, label="width: SNR next round"))
    ax.legend(
        handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, frameon=False
    )
    bx = fig.add_subplot(1, 2, 2)
    budget = cfg.budgets.energy_budget_j
    backlog = (
        np.asarray(info["energy_backlog"]) / budget
        if budget is not None
        else np.zeros(env.num_devices)
    )
    bx.bar(np.arange(env.num_devices), backlog, color=cmap(modules))
    bx.set_xlabel("device (bar colour: module)", fontsize=8)
    bx.set_ylabel(
        "energy backlog Z / E_bar" if budget is not None else "no energy budget", fontsize=8
    )
    bx.tick_params(labelsize=7)
    fig.tight_layout()
    canvas.draw()
    image = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    return image
