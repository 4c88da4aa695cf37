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
    assert "round 0/20" in before and len(before.splitlines()) == 12
    a = np.ones(env.action_space.shape, dtype=np.float32)
    a[0, 0] = -1.0  # device 0 idle
    env.step(a)
    text = env.render()
    lines = text.splitlines()
    assert "round 1/20" in lines[0]
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


def test_renderers_read_only_the_public_state():
    """Both renderers work from config, codec, num_devices, last_info, device_positions_m and
    reference_snr alone."""
    from types import SimpleNamespace

    from fedenv import rendering

    env = fedenv.FedLoRAWirelessEnv()
    env.reset(seed=3)
    env.step(env.action_space.sample())
    public = SimpleNamespace(
        config=env.config,
        codec=env.codec,
        num_devices=env.num_devices,
        last_info=env.last_info,
        device_positions_m=env.device_positions_m,
        reference_snr=env.reference_snr,
    )
    text = rendering.render_ansi(public)
    assert text.startswith("FedLoRAWireless-v0 [switching] round 1/20")
    img = rendering.render_rgb(public)
    assert img.dtype == np.uint8 and img.shape[2] == 3


def test_rgb_frame_has_a_legend():
    """The legend sits right of the cell: the frame is wider than the cell and bars alone, and
    the legend's column holds dark (text) pixels."""
    env = gym.make("FedLoRAWireless-v0", render_mode="rgb_array")
    env.reset(seed=0)
    env.step(env.action_space.sample())
    img = env.render()
    assert img.shape[1] >= 9 * 80
    third = img[:, img.shape[1] * 3 // 10 : img.shape[1] * 5 // 10]
    assert (third.min(axis=-1) < 80).sum() > 200  # legend labels


def test_render_after_configure_needs_a_reset():
    env = fedenv.FedLoRAWirelessEnv(render_mode="ansi")
    env.reset(seed=0)
    env.configure(num_rounds=5)
    with pytest.raises(gym.error.ResetNeeded):
        env.render()
    env.reset(seed=0)
    assert "round 0/5" in env.render()


def test_record_video_writes_an_episode(tmp_path):
    """Gymnasium's RecordVideo on the rgb_array frames (moviepy: the render extra)."""
    pytest.importorskip("moviepy")
    from gymnasium.wrappers import RecordVideo

    env = RecordVideo(
        gym.make("FedLoRAWireless-v0", render_mode="rgb_array", num_rounds=3),
        str(tmp_path / "videos"),
        episode_trigger=lambda _: True,
        disable_logger=True,
    )
    env.reset(seed=0)
    done = False
    while not done:
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        done = terminated or truncated
    env.close()
    videos = list((tmp_path / "videos").glob("*.mp4"))
    assert len(videos) == 1 and videos[0].stat().st_size > 1000
