"""Rendering: the ANSI round table and the rgb_array picture of the cell."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import fedenv


def test_ansi_shows_every_device_and_the_round_outcome():
    env = gym.make("FedLoRAWireless-v0", render_mode="ansi")
    env.reset(seed=0)
    before = env.render()
    assert "round 0/50" in before and len(before.splitlines()) == 12
    a = np.ones(env.action_space.shape, dtype=np.float32)
    a[0, 0] = -1.0  # device 0 idle
    env.step(a)
    text = env.render()
    lines = text.splitlines()
    assert "round 1/50" in lines[0]
    assert lines[2].split()[-1] == "idle"
    assert all(line.split()[-1] in {"ok", "late", "lost"} for line in lines[3:12])
    assert "reward terms: accuracy" in lines[-1]


@pytest.mark.parametrize("preset", ["switching", "soft"])
def test_rgb_array_is_an_image(preset):
    env = gym.make("FedLoRAWireless-v0", preset=preset, render_mode="rgb_array")
    env.reset(seed=1)
    env.step(env.action_space.sample())
    img = env.render()
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    assert img.shape[0] >= 200 and img.shape[1] >= 400
    assert img.std() > 10  # not a blank canvas


def test_render_without_mode_warns_and_returns_none():
    env = gym.make("FedLoRAWireless-v0", disable_env_checker=True)
    env.reset(seed=0)
    with pytest.warns(UserWarning, match="render_mode"):
        assert env.render() is None
    with pytest.raises(ValueError, match="render_mode must be one of"):
        fedenv.FedLoRAWirelessEnv(render_mode="human")
