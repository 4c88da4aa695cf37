"""Baselines: heuristics, the policy registry, the evaluation loop and the comparison CLI."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from baselines import Policy
from baselines.compare import main as compare_main
from baselines.evaluation import evaluate, evaluate_policies, format_table, mean_ci
from baselines.heuristics import IncompatiblePolicyError
from baselines.registry import (
    BUILTIN_POLICIES,
    make_policy,
    parse_spec,
    policy_names,
    register_policy,
    split_specs,
)
from fedenv import FedLoRAWirelessEnv
from fedenv.config import PRESETS, EnvConfig, resolve_config

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "scenarios" / "tiny.yaml"
BASELINES = ["lyapunov", "random", "max", "min_rank", "fixed_rank", "greedy", "round_robin"]
NEEDS_MODULE = {"min_rank", "fixed_rank"}
NEEDS_SCHEDULING = {"round_robin"}


def _compatible(name: str, preset: str) -> bool:
    comps = EnvConfig.from_preset(preset).action_components
    if name in NEEDS_MODULE:
        return "module" in comps
    if name in NEEDS_SCHEDULING:
        return "module" in comps or "schedule" in comps
    return True


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("name", BASELINES)
def test_every_policy_gives_valid_actions_on_every_preset(name, preset):
    cfg = EnvConfig.from_preset(preset).replace(num_rounds=4, devices={"num_devices": 4})
    if not _compatible(name, preset):
        with pytest.raises(
            IncompatiblePolicyError, match=f"incompatible with paradigm '{cfg.paradigm}'"
        ):
            make_policy(name, cfg)
        return
    policy = make_policy(name, cfg)
    assert isinstance(policy, Policy)
    env = FedLoRAWirelessEnv(cfg)
    policy.reset(0)
    obs, info = env.reset(seed=0)
    for _ in range(cfg.num_rounds):
        a = policy.act(obs, info)
        assert a.dtype == np.float32 and env.action_space.contains(a) and np.isfinite(a).all()
        obs, _, term, trunc, info = env.step(a)
        if term or trunc:
            break


def test_heuristics_do_what_they_say():
    cfg = EnvConfig().replace(devices={"num_devices": 6})
    env = FedLoRAWirelessEnv(cfg)
    obs, info = env.reset(seed=2)
    decode = lambda a: env.codec.decode(env.codec.validate(a))  # noqa: E731
    d = decode(make_policy("max", cfg).act(obs, info))
    assert (d.module == cfg.model.num_modules).all() and np.allclose(
        d.power_w, cfg.channel.max_tx_power_w
    )
    np.testing.assert_allclose(d.share, 1 / 6)
    assert (decode(make_policy("min_rank", cfg).act(obs, info)).module == 1).all()
    assert (
        decode(make_policy("fixed_rank:rank=4", cfg).act(obs, info)).module
        == cfg.model.ranks.index(4) + 1
    ).all()
    d = decode(make_policy("greedy:fraction=0.5", cfg).act(obs, info))
    top = set(np.argsort(-info["channel_gain"])[:3])
    assert set(np.flatnonzero(d.module > 0)) == top
    rr = make_policy("round_robin:fraction=0.5", cfg)
    seen = np.zeros(6)
    for t in range(4):
        m = decode(rr.act(obs, {**info, "round": t})).module
        assert (m > 0).sum() == 3
        seen += m > 0
    np.testing.assert_array_equal(seen, 2)  # every device gets its turn


def test_greedy_respects_the_deadline_where_it_can():
    cfg = EnvConfig().replace(devices={"num_devices": 8}, costs={"round_deadline_s": 2.5})
    env = FedLoRAWirelessEnv(cfg)
    policy = make_policy("greedy:fraction=1", cfg)
    obs, info = env.reset(seed=3)
    _, _, _, _, info = env.step(policy.act(obs, info))
    late = info["straggler"]
    # a device is late only if even the smallest rank cannot make it
    assert not late.any() or (info["module"][late] == 1).all()


def test_unknown_policy_lists_valid_ones():
    with pytest.raises(
        ValueError, match="unknown policy 'lyapunof'. Did you mean 'lyapunov'"
    ) as err:
        make_policy("lyapunof", EnvConfig())
    for name in policy_names():
        assert name in str(err.value)
    assert {"ppo", "sac", "recurrentppo", "ippo", "explore"} <= set(
        policy_names()
    )  # the entry points


def test_registered_kinds_get_the_whole_spec():
    seen = []

    def factory(spec, config):
        seen.append(spec)
        return make_policy("max", config)

    register_policy("test_kind", factory)
    register_policy("test_kind", factory)  # the same factory again: a no-op
    with pytest.raises(ValueError, match="already registered"):
        register_policy("test_kind", lambda spec, config: None)
    with pytest.raises(ValueError, match="built into"):
        register_policy("max", factory)
    assert parse_spec("test_kind:a=1,b") == ("test_kind", {"path": "a=1,b"})
    assert make_policy("Test_Kind:a=1,b", EnvConfig()).name == "max" and seen == ["Test_Kind:a=1,b"]
    assert make_policy("test_kind:x>>min_rank@1", EnvConfig()).name == "max>>min_rank@1"


def test_entry_points_name_every_builtin_kind():
    """pyproject.toml's fedenv.policies group: how python -m fedenv.calibrate collect finds the
    baselines."""
    tomllib = pytest.importorskip("tomllib")
    group = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"][
        "fedenv.policies"
    ]
    assert {
        name for name, target in group.items() if target == "baselines.registry:make_policy"
    } == set(BUILTIN_POLICIES)
    assert group["ppo"] == group["sac"] == group["recurrentppo"] == "agents.evaluate:load_policy"


def test_learned_kinds_load_through_the_entry_points(tmp_path):
    pytest.importorskip("stable_baselines3")
    with pytest.raises(FileNotFoundError, match="run directory"):
        make_policy(f"ppo:{tmp_path / 'missing'}", EnvConfig())
    with pytest.raises(FileNotFoundError, match="holds no model.zip"):
        make_policy(f"ippo:{tmp_path}", EnvConfig())
    with pytest.raises(ValueError, match="expected ippo:<run dir>"):
        make_policy("ippo", EnvConfig())


def test_bad_policy_parameters_are_rejected():
    with pytest.raises(ValueError, match="V must be a finite number > 0"):
        make_policy("lyapunov:V=0", EnvConfig())
    with pytest.raises(ValueError, match="V must be a finite number > 0"):
        make_policy("lyapunov:V=-5", EnvConfig())
    with pytest.raises(ValueError, match="has no parameter 'W'; valid parameters: V"):
        make_policy("lyapunov:W=5", EnvConfig())
    with pytest.raises(ValueError, match="rank must be one of model.ranks"):
        make_policy("fixed_rank:rank=3", EnvConfig())
    with pytest.raises(ValueError, match="fraction must be in"):
        make_policy("greedy:fraction=0", EnvConfig())
    pytest.importorskip("stable_baselines3")
    with pytest.raises(ValueError, match="bad agent spec 'ppo'"):
        make_policy("ppo", EnvConfig())


def test_spec_parsing():
    assert parse_spec("lyapunov:v=30") == ("lyapunov", {"V": 30})
    assert parse_spec("Greedy:fraction=0.25") == ("greedy", {"fraction": 0.25})
    assert parse_spec("ppo:runs/a@best") == ("ppo", {"path": "runs/a@best"})
    assert split_specs("lyapunov:V=30,tolerance=1e-4,max, greedy") == [
        "lyapunov:V=30,tolerance=1e-4",
        "max",
        "greedy",
    ]
    assert make_policy("lyapunov:V=30,tolerance=1e-4", EnvConfig()).tradeoff_v == 30


def test_same_seeds_same_traces_for_every_policy_and_reproducible():
    cfg = EnvConfig().replace(num_rounds=5, devices={"num_devices": 3})
    comp = evaluate_policies(["max", "random", "lyapunov"], cfg, episodes=2, seed=10)
    again = evaluate_policies(["random"], cfg, episodes=2, seed=10)
    assert comp.seeds == [10, 11]
    np.testing.assert_array_equal(
        comp.evaluations[1].traces["energy_j"], again.evaluations[0].traces["energy_j"]
    )
    # the exogenous trace is common: the initial state (round 0) is identical across policies
    for ev in comp.evaluations[1:]:
        np.testing.assert_array_equal(
            ev.traces["accuracy"][:, 0], comp.evaluations[0].traces["accuracy"][:, 0]
        )


def test_evaluation_records_match_the_env():
    cfg = EnvConfig().replace(num_rounds=6, devices={"num_devices": 3})
    ev = evaluate(make_policy("max", cfg), cfg, [7])
    env = FedLoRAWirelessEnv(cfg)
    obs, info = env.reset(seed=7)
    policy = make_policy("max", cfg)
    total, energy = 0.0, []
    while True:
        obs, r, term, trunc, info = env.step(policy.act(obs, info))
        total += r
        energy.append(info["energy_j"])
        if term or trunc:
            break
    rec = ev.episodes[0]
    assert rec["episode_return"] == pytest.approx(total)
    assert rec["final_accuracy"] == pytest.approx(info["accuracy"])
    per_device = np.mean(energy, axis=0)
    assert rec["energy_j"] == pytest.approx(per_device.mean())
    assert rec["devices_within_budget"] == pytest.approx(
        np.mean(per_device <= 1.05 * cfg.budgets.energy_budget_j)
    )
    assert rec["rounds"] == 6 and ev.traces["accuracy"].shape == (1, 7)
    assert rec["worst_budget_use"] == pytest.approx(per_device.max() / cfg.budgets.energy_budget_j)
    assert rec["in_budget"] == float(rec["worst_budget_use"] <= 1.05)


def test_label_skew_of_arrivals_is_the_surrogates_floor_over_h():
    """The arrivals' label skew is the distance the surrogate's bias floor scales (F = h TV
    with one rank); 0 when every device's update arrives, NaN when none does."""
    from baselines.evaluation import arrivals_label_skew
    from fedenv.learning.surrogate import round_progress

    info = {
        "success": np.array([True, True, False]),
        "data_size": np.array([100, 300, 600]),
        "label_distribution": np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]),
        "global_label_distribution": np.array([0.4, 0.6]),
    }
    # arrived mix (100 [1, 0] + 300 [0, 1]) / 400 = [0.25, 0.75]: TV 0.15
    assert arrivals_label_skew(info) == pytest.approx(0.15)
    assert np.isnan(arrivals_label_skew(info | {"success": np.zeros(3, dtype=bool)}))
    cfg = EnvConfig().replace(num_rounds=4)
    surrogate = cfg.learning.surrogate
    for name in ("min_rank", "round_robin"):  # every device / a few each round
        ev = evaluate(make_policy(name, cfg), cfg, [3])
        env = FedLoRAWirelessEnv(cfg)
        obs, info = env.reset(seed=3)
        policy = make_policy(name, cfg)
        for t in range(4):
            obs, _, _, _, info = env.step(policy.act(obs, info))
            share = info["data_size"] / info["data_size"].sum()
            _, floor = round_progress(
                share,
                info["success"].astype(float),
                info["rank"],
                None,
                info["label_distribution"],
                info["global_label_distribution"],
                surrogate,
            )
            skew = ev.traces["label_skew"][0, t]
            assert floor == pytest.approx(surrogate.heterogeneity_penalty * skew, abs=1e-12)
            assert (skew == pytest.approx(0.0, abs=1e-12)) == bool(info["success"].all())
        assert ev.episodes[0]["label_skew"] == pytest.approx(ev.traces["label_skew"][0].mean())


@pytest.mark.parametrize("tolerance", [0.0, 10.0])
def test_in_budget_counts_every_budget_with_the_tolerance(tolerance):
    """unified budgets energy and latency: the worst use is the larger of the two kinds."""
    cfg = resolve_config("unified", num_rounds=4, devices={"num_devices": 3})
    ev = evaluate(make_policy("max", cfg), cfg, [1, 2], budget_tolerance=tolerance)
    for i, rec in enumerate(ev.episodes):
        energy = ev.traces["energy_j"][i].mean(axis=0) / cfg.budgets.energy_budget_j
        latency = ev.traces["round_latency_s"][i].mean() / cfg.budgets.latency_budget_s
        assert rec["worst_budget_use"] == pytest.approx(max(energy.max(), latency))
        assert rec["in_budget"] == float(max(energy.max(), latency) <= 1.0 + tolerance)
    assert [e["in_budget"] for e in ev.episodes] == ([0.0, 0.0] if tolerance == 0 else [1.0, 1.0])
    soft = resolve_config(
        "soft", num_rounds=3, devices={"num_devices": 2}, budgets={"latency_budget_s": None}
    )
    rec = evaluate(make_policy("max", soft), soft, [1]).episodes[0]
    assert np.isnan(rec["worst_budget_use"]) and np.isnan(rec["in_budget"])  # no budget at all


def test_mean_ci_is_the_student_t_interval():
    mean, half = mean_ci([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5
    assert half == pytest.approx(3.182446305 * np.std([1, 2, 3, 4], ddof=1) / 2.0, rel=1e-8)
    assert mean_ci([5.0]) == (5.0, 0.0)
    assert all(math.isnan(x) for x in mean_ci([]))


def test_format_table_lists_policies_with_ci():
    cfg = EnvConfig().replace(num_rounds=3, devices={"num_devices": 2})
    table = format_table(evaluate_policies(["max", "min_rank"], cfg, episodes=2))
    assert "| max |" in table and "| min_rank |" in table and "±" in table
    assert "latency / budget" not in table  # no latency budget in this preset


def test_compare_cli_end_to_end_on_tiny_config(tmp_path, capsys):
    out = tmp_path / "tiny"
    compare_main(
        [
            "--config",
            str(TINY),
            "--policies",
            "lyapunov:V=10,max",
            "--policies",
            "greedy,random",
            "--episodes",
            "2",
            "--seed",
            "3",
            "--out",
            str(out),
            "--sweep-V",
            "1,30",
            "--no-progress",
        ]
    )
    printed = capsys.readouterr().out
    for f in (
        "config.yaml",
        "episodes.csv",
        "rounds.csv",
        "summary.md",
        "summary.json",
        "accuracy.png",
        "energy.png",
        "backlog.png",
        "sweep_V.csv",
        "sweep_V.md",
        "tradeoff.png",
    ):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    rows = list(csv.DictReader((out / "episodes.csv").open()))
    assert len(rows) == 8 and {r["seed"] for r in rows} == {"3", "4"}
    rounds = list(csv.DictReader((out / "rounds.csv").open()))
    cfg = EnvConfig.from_yaml(out / "config.yaml")
    assert len(rounds) == 4 * cfg.num_rounds
    last = [r for r in rounds if r["policy"] == "max" and r["round"] == str(cfg.num_rounds)][0]
    final = [float(r["final_accuracy"]) for r in rows if r["policy"] == "max"]
    assert float(last["accuracy"]) == pytest.approx(np.mean(final))
    assert float(last["scheduled"]) == cfg.devices.num_devices
    assert cfg.devices.num_devices == 3
    assert "lyapunov(V=10)" in printed and "V sweep" in printed
    summary = (out / "summary.md").read_text()
    assert "python -m baselines.compare" in summary
    # the objective first: each policy's final accuracy paired with the first policy listed
    assert summary.index("Δ accuracy vs lyapunov(V=10) (paired)") < summary.index("mean accuracy")
    objective = json.loads((out / "summary.json").read_text())["objective"]
    assert [r["policy"] for r in objective] == ["lyapunov(V=10)", "max", "greedy(f=0.5)", "random"]
    assert math.isnan(objective[0]["diff"])
    accuracy = {
        p: np.array([float(r["final_accuracy"]) for r in rows if r["policy"] == p])
        for p in ("lyapunov(V=10)", "random")
    }
    difference = accuracy["random"] - accuracy["lyapunov(V=10)"]
    assert objective[3]["diff"] == pytest.approx(difference.mean())
    assert objective[3]["diff_ci95"] == pytest.approx(mean_ci(difference)[1])
    assert objective[1]["compliance"] == 0.0  # max overspends


def test_compare_pairs_with_the_first_lyapunov_policy_listed(tmp_path):
    argv = ["--config", str(TINY), "--episodes", "2", "--no-plots", "--no-progress"]
    out = tmp_path / "cmp"
    compare_main([*argv, "--policies", "random,lyapunov:V=3,max", "--out", str(out)])
    objective = json.loads((out / "summary.json").read_text())["objective"]
    assert [r["policy"] for r in objective] == ["random", "lyapunov(V=3)", "max"]
    assert math.isnan(objective[1]["diff"]) and objective[0]["diff"] < 0
    assert "Δ accuracy vs lyapunov(V=3) (paired)" in (out / "summary.md").read_text()
    compare_main([*argv, "--policies", "random,max", "--out", str(out)])
    objective = json.loads((out / "summary.json").read_text())["objective"]
    assert math.isnan(objective[0]["diff"]) and objective[1]["diff"] > 0


def test_compare_cli_bad_input(tmp_path, capsys):
    with pytest.raises(SystemExit):
        compare_main(["--config", str(TINY), "--policies", "maxx", "--out", str(tmp_path)])
    assert "unknown policy 'maxx'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        compare_main(["--config", "split", "--policies", "min_rank", "--out", str(tmp_path)])
    assert "incompatible with paradigm 'split'" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="V must be a finite number > 0"):
        compare_main(["--config", str(TINY), "--sweep-V", "10,0", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        compare_main(["--config", "no_such_preset", "--out", str(tmp_path)])
    assert "unknown preset" in capsys.readouterr().err


@pytest.mark.slow
def test_compare_cli_runs_on_the_lora_backend(tmp_path, glue_dir, monkeypatch):
    """The same command works with real LoRA fine-tuning (tiny: 2 devices, 1 round)."""
    monkeypatch.setenv("FEDENV_DATA_DIR", str(glue_dir))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "lora"
    comp = compare_main(
        [
            "--config",
            str(ROOT / "configs" / "scenarios" / "tiny_lora.yaml"),
            "--rounds",
            "1",
            "--policies",
            "lyapunov,max",
            "--episodes",
            "1",
            "--out",
            str(out),
            "--no-progress",
            "--no-plots",
        ]
    )
    assert comp.config.learning.backend == "lora"
    for ev in comp.evaluations:
        assert ev.episodes[0]["rounds"] == 1 and 0.0 <= ev.episodes[0]["final_accuracy"] <= 1.0
    assert (out / "episodes.csv").is_file()


def test_lyapunov_benchmark_quick(tmp_path, capsys):
    import json

    from benchmarks import cli

    cli.main(["lyapunov", "--quick", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "lyapunov.json").read_text())
    assert "median/target" in capsys.readouterr().out
    assert set(result["results"]) == {"10", "100"}
    for k, row in result["results"].items():
        assert row["median_ms"] > 0 and row["target_ms"] == {"10": 5.0, "100": 50.0}[k]
        assert row["median_over_target"] == pytest.approx(row["median_ms"] / row["target_ms"])


def test_handover_plays_the_first_policy_then_the_second():
    config = EnvConfig.from_dict({"num_rounds": 4})
    policy = make_policy("max>>min_rank@2", config)
    assert policy.name == "max>>min_rank@2"
    env = FedLoRAWirelessEnv(config)
    obs, info = env.reset(seed=3)
    policy.reset(3)
    ranks = []
    for _ in range(4):
        obs, _, _, _, info = env.step(policy.act(obs, info))
        ranks.append(set(info["rank"].tolist()))
    top, low = max(config.model.ranks), min(config.model.ranks)
    assert ranks == [{top}, {top}, {low}, {low}]
    for bad in ("max>>min_rank", "max>>min_rank@x", ">>max@1"):
        with pytest.raises(ValueError, match="handover spec"):
            make_policy(bad, config)


def test_prune_spec_plays_the_policy_through_the_arrival_pruner():
    """``prune:<spec>`` idles what the arrival pruner idles in the inner policy's decision: the
    full-effort policy's late rounds, once the gap is low, lose their skewed devices."""
    from fedenv.wrappers import ArrivalPruner

    config = resolve_config("configs/scenarios/tight_energy.yaml")
    policy = make_policy("prune:max", config)
    inner, pruner = make_policy("max", config), ArrivalPruner(config)
    assert policy.name == "prune:max"
    env = FedLoRAWirelessEnv(config)
    obs, info = env.reset(seed=1000)
    policy.reset(1000)
    idled = 0
    for _ in range(config.num_rounds):
        action = policy.act(obs, info)
        bare = inner.act(obs, info)
        np.testing.assert_array_equal(action, pruner(bare, info))
        idled += int(np.any(action != bare))
        obs, _, _, _, info = env.step(action)
    assert idled > 0
    assert make_policy("prune:max>>min_rank@2", config).name == "prune:max>>min_rank@2"
    with pytest.raises(ValueError, match="unknown policy 'maks'"):
        make_policy("prune:maks", config)
