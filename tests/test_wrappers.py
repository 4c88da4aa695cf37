"""The action and observation forms of fedenv.wrappers and the registered ids: checkers, rebuild
from spec, mappings."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env

import fedenv
from fedenv.config import PRESETS, resolve_config
from fedenv.env import FedLoRAWirelessEnv
from fedenv.learning.surrogate import next_gap, round_progress
from fedenv.round import episode_tables, play_round
from fedenv.wrappers import (
    ArrivalPruner,
    ArrivalPrunerAction,
    BudgetShield,
    BudgetShieldAction,
    DictAction,
    DictObservation,
    DiscreteAction,
    FactoredAction,
    FactoredCodec,
    FlatAction,
    HorizonIsTermination,
    LabelSkewObservation,
    ObservationFeatures,
)

sb3_checker = pytest.importorskip("stable_baselines3.common.env_checker")

T = 6  # short episodes keep the checkers fast

#: every form, and two stacks (the agents' training stack, a CleanRL-style one)
WRAPPERS: dict[str, Callable[[gym.Env[Any, Any]], gym.Env[Any, Any]]] = {
    "factored": FactoredAction,
    "flat": FlatAction,
    "discrete": DiscreteAction,
    "dict_action": DictAction,
    "label_skew": LabelSkewObservation,
    "label_skew_time": lambda env: LabelSkewObservation(env, "label_mix_time"),
    "label_skew_budget": lambda env: LabelSkewObservation(env, "label_mix_budget"),
    "dict_observation": DictObservation,
    "horizon": HorizonIsTermination,
    "budget_shield": BudgetShieldAction,
    "arrival_pruner": ArrivalPrunerAction,
    "agents_stack": lambda env: HorizonIsTermination(FactoredAction(LabelSkewObservation(env))),
    "cleanrl_stack": lambda env: FlatAction(FactoredAction(env)),
}
#: forms SB3 does not train on as they are (its checker warns: Dict spaces)
SB3_WARNS = {"dict_action", "dict_observation"}


def _quiet_gym_check(env: gym.Env[Any, Any]) -> None:
    """Gymnasium's check_env, with every warning an error except its note that the env is
    wrapped."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", message=".*is different from the unwrapped version.*")
        gym_check_env(env, skip_render_check=True)


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("name", list(WRAPPERS))
def test_every_wrapper_passes_both_checkers_and_rebuilds_from_its_spec(
    preset: str, name: str
) -> None:
    make = WRAPPERS[name]
    env = make(gym.make(fedenv.ENV_IDS[preset], num_rounds=T))
    _quiet_gym_check(env)
    if name in SB3_WARNS:
        with pytest.warns(
            UserWarning, match="not supported by Stable Baselines 3|unconventional shape"
        ):
            sb3_checker.check_env(make(FedLoRAWirelessEnv(preset=preset, num_rounds=T)), warn=True)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            sb3_checker.check_env(make(FedLoRAWirelessEnv(preset=preset, num_rounds=T)), warn=True)
    again = gym.make(env.spec)
    assert type(again) is type(env)
    assert (
        again.action_space == env.action_space and again.observation_space == env.observation_space
    )
    assert again.unwrapped.config == env.unwrapped.config
    # the same stack plays the same episode
    a_obs, _ = env.reset(seed=4)
    b_obs, _ = again.reset(seed=4)
    env.action_space.seed(0)
    for _ in range(3):
        action = env.action_space.sample()
        a, b = env.step(action), again.step(action)
        assert a[1] == b[1]
    for x, y in zip(_leaves(a_obs), _leaves(b_obs)):
        np.testing.assert_array_equal(x, y)


def _leaves(obs: Any) -> list[Any]:
    return [obs[key] for key in sorted(obs)] if isinstance(obs, dict) else [obs]


@pytest.mark.parametrize("algo", ["PPO", "A2C"])
def test_sb3_trains_on_the_discrete_action(algo: str) -> None:
    sb3 = pytest.importorskip("stable_baselines3")
    env = DiscreteAction(gym.make("FedLoRAWireless-v0", num_rounds=T))
    assert len(env.action_space.shape) == 1
    extra = {"batch_size": 16} if algo == "PPO" else {}
    model = getattr(sb3, algo)("MlpPolicy", env, n_steps=16, seed=0, device="cpu", **extra)
    model.learn(32)


def test_sb3_ppo_trains_on_the_factored_and_flat_actions() -> None:
    sb3 = pytest.importorskip("stable_baselines3")
    for env in (
        FactoredAction(gym.make("FedLoRAWireless-v0", num_rounds=T)),
        FlatAction(FactoredAction(gym.make("FedLoRAWireless-v0", num_rounds=T))),
    ):
        sb3.PPO("MlpPolicy", env, n_steps=16, batch_size=16, seed=0, device="cpu").learn(32)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_factored_action_schedules_and_ranks_apart(preset: str) -> None:
    env = FactoredAction(gym.make(fedenv.ENV_IDS[preset]))
    base = env.unwrapped
    codec = env.codec
    rng = np.random.default_rng(0)
    a = rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
    canonical = env.action(a)
    assert canonical.shape == base.action_space.shape and base.action_space.contains(canonical)
    if not codec.factored:  # split, soft: the env's action
        np.testing.assert_array_equal(canonical, a)
        return
    assert codec.components[:2] == ("schedule", "rank")
    decision = base.codec.decode(canonical.astype(np.float64))
    m = codec.num_modules
    want = np.where(a[:, 0] > 0, 1 + np.minimum(np.floor((a[:, 1] + 1) / 2 * m), m - 1), 0)
    np.testing.assert_array_equal(decision.module, want)
    # the other components pass through unchanged
    others = [i for i, c in enumerate(base.codec.components) if c != "module"]
    np.testing.assert_array_equal(canonical[:, others], a[:, 2:])
    # from_env is an inverse on decisions; the flat form and out-of-range values are accepted
    again = base.codec.decode(env.action(env.reverse_action(canonical)).astype(np.float64))
    np.testing.assert_array_equal(again.module, decision.module)
    np.testing.assert_array_equal(env.action(a.reshape(-1)), canonical)
    np.testing.assert_array_equal(env.action(3 * a), env.action(np.clip(3 * a, -1, 1)))
    with pytest.raises(ValueError, match="factored action must have shape"):
        env.action(np.zeros(5))


def test_batched_factored_mapping_equals_the_single_one() -> None:
    codec = FactoredCodec(resolve_config("unified"))
    a = np.random.default_rng(1).uniform(-1.5, 1.5, (4, *codec.shape))
    np.testing.assert_array_equal(codec.to_env(a), np.stack([codec.to_env(x) for x in a]))


def test_flat_action_is_the_row_major_flattening() -> None:
    env = FlatAction(gym.make("FedLoRAWireless-v0"))
    k, c = env.unwrapped.action_space.shape
    assert env.action_space.shape == (k * c,)
    a = np.arange(k * c, dtype=np.float32) / (k * c)
    np.testing.assert_array_equal(env.action(a), a.reshape(k, c))
    np.testing.assert_array_equal(env.reverse_action(env.action(a)), a)
    with pytest.raises(ValueError, match="flat action must have shape"):
        env.action(a.reshape(k, c))
    with pytest.raises(TypeError, match="flattens a Box"):
        FlatAction(DictAction(gym.make("FedLoRAWireless-v0")))


def test_label_skew_observation_appends_each_devices_skew() -> None:
    env = LabelSkewObservation(gym.make("FedLoRAWireless-v0"))
    obs, info = env.reset(seed=2)
    k, nl = env.unwrapped.num_devices, env.unwrapped.config.model.num_labels
    rows = obs[:-4].reshape(k, 7 + nl)
    skew = info["label_distribution"] - info["global_label_distribution"][None, :]
    np.testing.assert_allclose(rows[:, 7:], skew, rtol=0, atol=1e-7)
    assert env.observation_space.contains(obs)


def test_agents_names_are_the_fedenv_forms() -> None:
    """agents/ keeps its public names as thin imports of the one copy in fedenv.wrappers."""
    from agents import features
    from agents.actions import ActionAdapter

    assert (
        features.AgentObservation is LabelSkewObservation
        and features.ObservationFeatures is ObservationFeatures
    )
    cfg = resolve_config("switching")
    adapter, codec = ActionAdapter(cfg, "factored"), FactoredCodec(cfg)
    a = np.random.default_rng(3).uniform(-1, 1, codec.shape).astype(np.float32)
    np.testing.assert_array_equal(adapter(a), codec.to_env(a))
    assert adapter.shape == codec.shape
    features_obj = ObservationFeatures(cfg, "label_mix_time")
    assert features.AgentObservation(FedLoRAWirelessEnv(cfg), features_obj).features is features_obj


def test_budget_features_are_what_is_left_of_each_devices_budget() -> None:
    """label_mix_budget: per device, after the label skew, the share of the episode's budget left
    and the rate it affords per round to go, from info["energy_spent_j"] and info["round"]."""
    budget = 0.125
    env = LabelSkewObservation(
        gym.make("FedLoRAWireless-v0", num_rounds=T, budgets={"energy_budget_j": budget}),
        "label_mix_budget",
    )
    obs, info = env.reset(seed=4)
    k = env.unwrapped.config.devices.num_devices
    rows = obs[: 11 * k].reshape(k, 11)
    np.testing.assert_array_equal(rows[:, 9], 1.0)  # nothing spent yet
    np.testing.assert_allclose(rows[:, 10], 1 / 4)  # T E_bar left over T rounds: E_bar a round
    action = np.ones(env.action_space.shape, np.float32)  # top rank, full power: overspends
    spent = np.zeros(k)
    for t in range(1, T + 1):
        obs, _, _, _, info = env.step(action)
        spent += info["energy_j"]
        np.testing.assert_allclose(info["energy_spent_j"], spent)
        left = T * budget - spent
        rows = obs[: 11 * k].reshape(k, 11)
        np.testing.assert_allclose(rows[:, 9], np.clip(left / (T * budget), -1, 1), rtol=1e-6)
        rate = np.clip(left / (max(T - t, 1) * budget), -1, 4) / 4
        np.testing.assert_allclose(rows[:, 10], rate, rtol=1e-6, atol=1e-7)
        assert env.observation_space.contains(obs)
    assert rows[:, 9].min() < 0.0  # the top rank every round spends more than the budget
    # without an energy budget there is nothing to track
    env = LabelSkewObservation(
        gym.make("FedLoRAWireless-v0", num_rounds=T, budgets={"energy_budget_j": None}),
        "label_mix_budget",
    )
    obs, _ = env.reset(seed=4)
    obs, *_ = env.step(action)
    np.testing.assert_array_equal(obs[: 11 * k].reshape(k, 11)[:, 9:], 0.0)


@pytest.mark.parametrize("preset", ["switching", "split", "unified"])
def test_budget_shield_keeps_every_device_within_its_episode_budget(preset: str) -> None:
    """The shield idles exactly the devices whose round would pass what is left of T E_bar:
    every device ends within budget under a policy that overspends without it, a device is only
    ever idled (the rest of the action unchanged), and a round that fits passes unchanged."""
    budget = 0.25
    kwargs = {"num_rounds": T, "budgets": {"energy_budget_j": budget}}
    env = BudgetShieldAction(gym.make(fedenv.ENV_IDS[preset], **kwargs))
    bare = gym.make(fedenv.ENV_IDS[preset], **kwargs)
    shield = env.shield
    _, info = env.reset(seed=5)
    bare.reset(seed=5)
    rng = np.random.default_rng(0)
    idled = passed = 0
    for _ in range(T):
        action = rng.uniform(0.0, 1.0, env.action_space.shape).astype(np.float32)  # scheduled
        left = T * budget - info["energy_spent_j"]
        shielded = shield(action, info)
        changed = np.any(shielded != action, axis=-1)
        # only the idle column of a device moves, and only to the idle value
        np.testing.assert_array_equal(
            np.delete(shielded, shield.column, axis=-1), np.delete(action, shield.column, axis=-1)
        )
        np.testing.assert_array_equal(
            shielded[changed, shield.column], np.float32(shield.idle_value)
        )
        _, _, _, _, info = env.step(action)
        assert info["module"][changed].max(initial=0) == 0
        assert np.all(info["energy_j"] <= left)
        _, _, _, _, raw = bare.step(action)
        if changed.any():
            idled += 1
            assert np.any(raw["energy_j"] > left)  # unshielded, some device would overspend
        else:
            passed += 1
            np.testing.assert_array_equal(raw["energy_j"], info["energy_j"])
    assert np.all(info["energy_spent_j"] <= T * budget)
    assert np.any(raw["energy_spent_j"] > T * budget)  # the same actions unshielded overspend
    assert idled and passed, (idled, passed)
    with pytest.raises(ValueError, match="NaN"):
        env.step(np.full(env.action_space.shape, np.nan, np.float32))
    # a batch of states is shielded row by row
    one = shield(action, info)
    both = shield(
        np.stack([action, action]), {k: np.stack([info[k], info[k]]) for k in info if k != "round"}
    )
    np.testing.assert_array_equal(both, np.stack([one, one]))


def test_budget_shield_is_a_no_op_without_a_budget_or_an_idle_component() -> None:
    for env_id, kwargs in (
        ("FedLoRAWireless-v0", {"budgets": {"energy_budget_j": None}}),
        (fedenv.ENV_IDS["soft"], {}),
    ):
        env = BudgetShieldAction(gym.make(env_id, **kwargs))
        _, info = env.reset(seed=0)
        assert not env.shield.active
        a = np.ones(env.action_space.shape, np.float32)
        np.testing.assert_array_equal(env.shield(a, info), a)
    env = BudgetShieldAction(gym.make("FedLoRAWireless-v0"))
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.ones((10, 3), np.float32))
    _, info = env.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        BudgetShield(resolve_config("switching"))(np.ones((10, 4), np.float32), info)


def _predicted_gap(
    pruner: ArrivalPruner, action: np.ndarray, info: dict[str, Any], lost: int | None = None
) -> float:
    """G' of the round ``action`` plays, every scheduled device arriving with its success
    probability (device ``lost``'s set to 0), recomputed from round_progress alone."""
    cfg = pruner.config
    decision = pruner.codec.decode(action)
    tables = episode_tables(
        cfg, info["cpu_freq_hz"], cfg.model.lora_params_per_rank, cfg.model.head_params
    )
    phys = play_round(decision, info["channel_gain"], tables, cfg)
    c = phys.success_prob.copy()
    if lost is not None:
        c[lost] = 0.0
    sizes = np.asarray(info["data_size"], dtype=np.float64)
    progress, floor = round_progress(
        sizes / sizes.sum(),
        c,
        phys.rank.astype(np.float64),
        decision.ratio if cfg.sparsifies else None,
        info["label_distribution"],
        info["global_label_distribution"],
        cfg.learning.surrogate,
    )
    return float(next_gap(info["loss_gap"], progress, floor, cfg.learning.surrogate))


@pytest.mark.parametrize("preset", ["switching", "split", "unified"])
def test_arrival_pruner_idles_the_devices_whose_update_would_raise_the_gap(preset: str) -> None:
    """Once every device's round has brought the gap down, a round of one label-skewed device
    would raise it: the pruner idles that device. Whatever it is given, it only ever idles
    devices, it never raises the predicted gap, and no device it keeps would lower the gap by
    being lost (checked against round_progress, not the pruner's what-ifs)."""
    env = ArrivalPrunerAction(gym.make(fedenv.ENV_IDS[preset], num_rounds=12))
    pruner = env.guard
    assert isinstance(pruner, ArrivalPruner) and pruner.active
    _, info = env.reset(seed=3)
    every = np.ones(env.action_space.shape, np.float32)  # every device, largest rank, full power
    for _ in range(8):
        _, _, _, _, info = env.step(every)
    # the most label-skewed device whose lone round would raise the gap (a far one may not
    # arrive at all)
    skew = 0.5 * np.abs(info["label_distribution"] - info["global_label_distribution"]).sum(-1)
    lones = []
    for k in np.argsort(-skew):
        lone = every.copy()
        lone[:, pruner.column] = pruner.idle_value
        lone[k, pruner.column] = 1.0
        lones.append((_predicted_gap(pruner, lone, info) > info["loss_gap"], lone))
    assert any(raises for raises, _ in lones)
    for raises, lone in lones:  # idled exactly when its arrival would pull the model back
        idled = pruner(lone, info)[:, pruner.column] == np.float32(pruner.idle_value)
        assert idled.all() == raises
    lone = next(lone for raises, lone in lones if raises)
    rng = np.random.default_rng(1)
    idled = 0
    for _ in range(20):
        action = rng.uniform(-1.0, 1.0, env.action_space.shape).astype(np.float32)
        pruned = pruner(action, info)
        np.testing.assert_array_equal(
            np.delete(pruned, pruner.column, axis=-1), np.delete(action, pruner.column, axis=-1)
        )
        changed = np.any(pruned != action, axis=-1)
        np.testing.assert_array_equal(pruned[changed, pruner.column], np.float32(pruner.idle_value))
        idled += int(changed.sum())
        gap = _predicted_gap(pruner, pruned, info)
        assert gap <= _predicted_gap(pruner, action, info) + 1e-12
        kept = np.flatnonzero(pruner.codec.decode(pruned).module > 0)
        for k in kept:
            assert _predicted_gap(pruner, pruned, info, lost=int(k)) >= gap - 1e-12
    assert idled > 0
    # a batch is pruned row by row, and the env plays the pruned action
    both = pruner(
        np.stack([action, lone]), {k: np.stack([info[k], info[k]]) for k in info if k != "round"}
    )
    np.testing.assert_array_equal(both, np.stack([pruned, pruner(lone, info)]))
    _, _, _, _, after = env.step(lone)
    assert not np.any(after["module"] > 0)


def test_arrival_pruner_is_a_no_op_without_an_idle_component() -> None:
    env = ArrivalPrunerAction(gym.make(fedenv.ENV_IDS["soft"]))
    _, info = env.reset(seed=0)
    assert not env.guard.active
    a = np.ones(env.action_space.shape, np.float32)
    np.testing.assert_array_equal(env.guard(a, info), a)
    with pytest.raises(ValueError, match="shape"):
        ArrivalPruner(resolve_config("switching"))(np.ones((10, 4), np.float32), info)


def test_wrappers_follow_configure_or_raise() -> None:
    env = HorizonIsTermination(
        FactoredAction(
            LabelSkewObservation(gym.make("FedLoRAWireless-v0", num_rounds=T), "label_mix_time")
        )
    )
    env.reset(seed=0)
    env.unwrapped.configure(num_rounds=3)
    env.reset(seed=0)
    for _ in range(3):
        obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
    assert terminated and not truncated  # the new horizon, reported as termination
    assert (
        obs.reshape(-1)[7 + 2] > 0
    )  # the time-to-go ramps follow the new T (h = 3: at the last round)
    env.unwrapped.configure(devices={"num_devices": 4})
    with pytest.raises(RuntimeError, match="build the wrapper stack again"):
        env.reset(seed=0)
    env = FactoredAction(gym.make("FedLoRAWireless-v0", devices={"num_devices": 4}))
    assert env.reset(seed=0)[0].shape == (7 * 4 + 4,)


@pytest.mark.parametrize(
    "wrapper", [FactoredAction, FlatAction, DiscreteAction, DictAction, DictObservation]
)
def test_each_wrapper_follows_configure_at_reset(wrapper: Any) -> None:
    env = wrapper(gym.make("FedLoRAWireless-v0"))
    env.reset(seed=0)
    env.unwrapped.configure(devices={"num_devices": 4})
    with pytest.raises(RuntimeError, match="build the wrapper stack again"):
        env.reset(seed=0)


# ------------------------------------------------------------------ registered ids
def test_one_id_per_preset() -> None:
    assert fedenv.ENV_IDS == {
        "switching": "FedLoRAWireless-v0",
        "split": "FedLoRAWireless-Split-v0",
        "soft": "FedLoRAWireless-Soft-v0",
        "unified": "FedLoRAWireless-Unified-v0",
    }
    for preset, env_id in fedenv.ENV_IDS.items():
        assert env_id in gym.registry
        assert gym.make(env_id).unwrapped.config == resolve_config(preset)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_registered_id_passes_both_checkers(preset: str) -> None:
    env_id = fedenv.ENV_IDS[preset]
    env = gym.make(env_id, num_rounds=T, render_mode="ansi").unwrapped
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gym_check_env(env, skip_render_check=False)
        sb3_checker.check_env(gym.make(env_id, num_rounds=T).unwrapped, warn=True)


@pytest.mark.parametrize("preset", ["split", "unified"])
def test_variant_ids_take_configs_and_overrides(preset: str) -> None:
    env_id = fedenv.ENV_IDS[preset]
    want = resolve_config(preset, num_rounds=9, reward={"energy_weight": 2.0})
    assert gym.make(env_id, num_rounds=9, reward={"energy_weight": 2.0}).unwrapped.config == want
    assert (
        gym.make(
            env_id, config={"num_rounds": 9, "reward": {"energy_weight": 2.0}}
        ).unwrapped.config
        == want
    )
    assert (
        gym.make(env_id, config=want).unwrapped.config == want
    )  # a full config of the id's paradigm
    with pytest.raises(ValueError, match="paradigm"):
        gym.make(env_id, config=resolve_config("soft"))
    with pytest.raises(ValueError, match="names preset 'soft'"):
        gym.make(env_id, config={"preset": "soft"})
    assert (
        gym.make(env_id, preset="soft").unwrapped.config.paradigm == "soft"
    )  # an explicit preset= wins, as any kwarg
    venv = gym.make_vec(env_id, num_envs=2, num_rounds=9)
    assert venv.unwrapped.config == resolve_config(preset, num_rounds=9)
    venv.close()


def test_registration_is_idempotent() -> None:
    specs = {env_id: gym.spec(env_id) for env_id in fedenv.ENV_IDS.values()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        importlib.reload(fedenv)
    for env_id, spec in specs.items():
        assert gym.spec(env_id) == spec


def test_vanilla_sb3_example_writes_its_run_directory(tmp_path) -> None:
    """agents/vanilla_sb3.py end to end on a tiny budget: curve CSV, PNG and the comparison."""
    pytest.importorskip("stable_baselines3")
    pytest.importorskip("matplotlib")
    from agents import vanilla_sb3

    run = tmp_path / "run"
    result = vanilla_sb3.main(
        [
            "--total-timesteps",
            "512",
            "--eval-every",
            "256",
            "--n-envs",
            "2",
            "--curve-episodes",
            "1",
            "--test-episodes",
            "2",
            "--run-dir",
            str(run),
        ]
    )
    for name in (
        "model.zip",
        "vecnormalize.pkl",
        "learning_curve.csv",
        "learning_curve.png",
        "result.json",
        "env_config.yaml",
        "args.json",
    ):
        assert (run / name).is_file(), name
    rows = (run / "learning_curve.csv").read_text().splitlines()
    assert (
        rows[0] == "steps,train_return,validation_return" and len(rows) >= 3
    )  # (PPO collects whole rollouts: 2 x 2048 steps)
    assert result["return_ratio"] == pytest.approx(result["ppo_return"] / result["lyapunov_return"])
