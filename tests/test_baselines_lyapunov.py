"""Lyapunov policy: per-round optimality against brute force, the V trade-off, queue stability."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from baselines.lyapunov import LyapunovPolicy, RoundState, check_tradeoff, tsfa_offline_rank
from fedenv import FedLoRAWirelessEnv
from fedenv.actions import Decision
from fedenv.config import EnvConfig, calibration_surrogate
from fedenv.learning.surrogate import class_counts, draw_episode, partition_arrays
from fedenv.queues import drift_plus_penalty
from fedenv.trace import generate_trace

ROOT = Path(__file__).resolve().parents[1]


def _compositions(total: int, parts: int):
    if parts == 1:
        yield (total,)
        return
    for first in range(1, total - parts + 2):
        for rest in _compositions(total - first, parts - 1):
            yield (first, *rest)


def brute_force(
    policy: LyapunovPolicy, state: RoundState, cpu: np.ndarray, n_power: int, n_share: int
) -> float:
    """Minimum of the exact per-round objective over a grid: every option of every device,
    ``n_power`` log-spaced powers per device and every share vector on the 1/n_share simplex."""
    prob = policy.problem(state, cpu)
    cfg = policy.config
    k = state.gain.size
    ch = cfg.channel
    powers = (
        np.geomspace(ch.min_tx_power_w, ch.max_tx_power_w, n_power)
        if policy.has_power
        else np.array([ch.max_tx_power_w])
    )
    best = np.inf
    for opts in itertools.product(range(policy.opt_module.size), repeat=k):
        module = policy.opt_module[list(opts)]
        ratio = policy.opt_ratio[list(opts)]
        sched = np.flatnonzero(module > 0)
        if sched.size == 0:
            shares = np.zeros((1, k))
        else:
            comp = np.array(list(_compositions(n_share, sched.size)), dtype=float) / n_share
            shares = np.zeros((comp.shape[0], k))
            shares[:, sched] = comp
        pw = (
            np.array(list(itertools.product(powers, repeat=sched.size)))
            if sched.size
            else np.zeros((1, 0))
        )
        si, pi = (
            x.ravel()
            for x in np.meshgrid(np.arange(shares.shape[0]), np.arange(pw.shape[0]), indexing="ij")
        )
        power = np.full((si.size, k), ch.max_tx_power_w)
        power[:, sched] = pw[pi]
        obj, _, _ = prob.evaluate(
            np.broadcast_to(module, power.shape),
            power,
            shares[si],
            np.broadcast_to(ratio, power.shape),
        )
        best = min(best, float(obj.min()))
    return best


def random_state(rng: np.random.Generator, cfg: EnvConfig) -> tuple[RoundState, np.ndarray]:
    """A random round: a trace round, a data partition, random queues and learning progress."""
    k = cfg.devices.num_devices
    trace = generate_trace(np.array([rng.integers(2**62)], dtype=np.uint64), cfg)
    t = int(rng.integers(0, cfg.num_rounds))
    classes = class_counts(cfg)
    _, labels, global_labels, share = partition_arrays(draw_episode(cfg, k, rng)[0], classes)
    budget = cfg.budgets.energy_budget_j or 0.25
    z = rng.choice([0.0, 1.0], k) * rng.uniform(0, 8 * budget, k)
    y = float(rng.uniform(0, 5)) if cfg.uses_latency_queue else 0.0
    state = RoundState(
        gain=trace.gain[0, t],
        energy_backlog=z,
        latency_backlog=y,
        gap=float(rng.uniform(0.05, 1.0)),
        data_share=share,
        label_distribution=labels,
        global_label_distribution=global_labels,
    )
    return state, trace.cpu_freq_hz[0]


def _check_against_brute_force(
    preset: str,
    k: int,
    instances: int,
    seed: int,
    n_power: int,
    n_share: int,
    surrogate: dict | None = None,
    skip: int = 0,
) -> None:
    """The first ``instances`` random rounds of ``seed`` after ``skip`` others."""
    cfg = EnvConfig.from_preset(preset).replace(devices={"num_devices": k})
    if surrogate is not None:
        cfg = cfg.replace(learning={"surrogate": surrogate})
    rng = np.random.default_rng(seed)
    for i in range(skip + instances):
        v = float(rng.choice([1.0, 10.0, 100.0, 1000.0]))
        state, cpu = random_state(rng, cfg)
        if i < skip:
            continue
        policy = LyapunovPolicy(cfg, v)
        decision = policy.solve(state, cpu)
        prob = policy.problem(state, cpu)
        ours = prob.objective(decision)
        best = brute_force(policy, state, cpu, n_power, n_share)
        # the achievable improvement over doing nothing (all idle; soft: the worst grid point is not
        # available, so compare with the objective's magnitude only)
        if policy.can_idle:
            idle = prob.objective(
                Decision(np.zeros(k, dtype=np.int64), decision.power_w, np.zeros(k), decision.ratio)
            )
            span = max(idle - best, 1e-12)
            assert ours - best <= 0.01 * span, (preset, v, ours, best, idle)
        assert ours <= best + 0.01 * abs(best), (preset, v, ours, best)


def test_switching_matches_brute_force_k2():
    _check_against_brute_force("switching", k=2, instances=6, seed=5, n_power=16, n_share=40)


def test_switching_matches_brute_force_k3():
    _check_against_brute_force("switching", k=3, instances=2, seed=1, n_power=8, n_share=12)


def test_switching_matches_brute_force_k3_calibrated():
    """Under the SST-2 calibration the label-skew and rank-mix floors are strong; the descent
    must match brute force there too. With the certainty-equivalent penalty it missed seed 1's
    second round by 7.9 % of the span (an interior success probability); its seventh round
    needs both scheduled devices moved to a smaller option at once (7.6 % without that move)."""
    surrogate = calibration_surrogate(ROOT / "configs/calibration/sst2_minilm.yaml")
    for skip, instances in ((0, 2), (6, 1)):
        _check_against_brute_force(
            "switching", 3, instances, seed=1, n_power=8, n_share=12, surrogate=surrogate, skip=skip
        )


def test_switching_brute_force_needs_power_levels_for_scheduled_devices():
    """Seed 1's 40th round: a device on at a power tuned for another schedule looked worse than
    idle, so the descent dropped it (26 % of the span short) unless the discrete block tries
    scheduled devices at other power levels too."""
    _check_against_brute_force("switching", 3, 1, seed=1, n_power=8, n_share=12, skip=39)


def test_split_matches_brute_force_k3():
    _check_against_brute_force("split", k=3, instances=3, seed=7, n_power=1, n_share=30)


def test_soft_matches_brute_force_k2():
    _check_against_brute_force("soft", k=2, instances=4, seed=7, n_power=1, n_share=40)


@pytest.mark.slow
def test_unified_matches_brute_force_k2():
    _check_against_brute_force("unified", k=2, instances=3, seed=7, n_power=8, n_share=20)


def test_single_move_shortcut_equals_full_evaluation():
    """The discrete block's assembled what-ifs equal full play_round evaluations, scored with
    the screening penalty, which is within 1e-3 of the exact expected penalty on this round (3e-5
    under the assumed constants; 5.4e-4 under the calibrated ones, with the default budget
    0.125 J; the moves it selects are re-scored exactly)."""
    cfg = EnvConfig.from_preset("switching").replace(devices={"num_devices": 6})
    rng = np.random.default_rng(3)
    state, cpu = random_state(rng, cfg)
    policy = LyapunovPolicy(cfg, 30.0)
    prob = policy.problem(state, cpu)
    from baselines.lyapunov import _Point
    from fedenv.actions import bandwidth_shares

    k, n_opt = 6, policy.opt_module.size
    p = _Point(rng.integers(0, n_opt, k), rng.uniform(0.01, 0.2, k), rng.uniform(0.1, 1.0, k))
    p = policy._best(prob, [p])
    levels = np.geomspace(policy.p_min, policy.p_max, 4)
    dev = np.repeat(np.arange(k), n_opt * 5)
    opt = np.tile(np.repeat(np.arange(n_opt), 5), k)
    slot = np.tile(np.arange(5), k * n_opt)
    fast = policy._single_moves(prob, p, dev, opt, slot, levels)
    option = np.repeat(p.option[None], dev.size, axis=0)
    option[np.arange(dev.size), dev] = opt
    power = np.repeat(p.power[None], dev.size, axis=0)
    power[np.arange(dev.size), dev] = np.where(
        slot > 0, np.concatenate([[0.0], levels])[slot], p.power[dev]
    )
    share = bandwidth_shares(p.weight, policy.opt_module[option] > 0)
    ratio = policy.opt_ratio[option]
    phys = prob.physics(policy.opt_module[option], power, share, ratio)
    base = prob.arrival_terms(p.phys.success_prob, p.phys.rank, policy.opt_ratio[p.option][None])
    screened = prob.screening_penalty(phys.success_prob, phys.rank, ratio, dev, base[0])
    full = drift_plus_penalty(prob.v, screened, prob.z, phys.energy_j, prob.y, phys.round_latency_s)
    np.testing.assert_allclose(fast, full, rtol=1e-10, atol=1e-12)
    # the screening penalty differs from the exact one only by the other devices' arrival terms
    exact = prob.penalty(phys.success_prob, phys.rank, ratio)
    np.testing.assert_allclose(screened, exact, rtol=1e-3)


def _episode(v: float, seed: int = 0, k: int = 6):
    env = FedLoRAWirelessEnv({"devices": {"num_devices": k}})
    policy = LyapunovPolicy(env.config, v)
    policy.reset(seed)
    obs, info = env.reset(seed=seed)
    gaps, backlogs = [], []
    while True:
        obs, _, term, trunc, info = env.step(policy.act(obs, info))
        gaps.append(info["loss_gap"])
        backlogs.append(np.mean(info["energy_backlog"]))
        if term or trunc:
            return float(np.mean(gaps)), float(np.mean(backlogs))


def test_larger_v_gives_lower_penalty_and_larger_backlogs():
    # The drift-plus-penalty trade-off holds in expectation; one episode can be a near-tie
    # (seed 0: 0.07417 at V = 300 against 0.07409 at V = 1), so compare means over 5 seeds.
    small = np.mean([_episode(1.0, seed) for seed in range(5)], axis=0)
    large = np.mean([_episode(300.0, seed) for seed in range(5)], axis=0)
    assert large[0] < small[0]  # learning penalty (mean loss gap)
    assert large[1] > small[1]  # energy backlog


def test_long_run_average_energy_within_budget():
    """Queue stability: over 1,000 rounds every device's average energy converges to its budget
    (the papers' algorithm, without the budget guard)."""
    budget, rounds = 0.05, 1000
    env = FedLoRAWirelessEnv(
        {
            "num_rounds": rounds,
            "devices": {"num_devices": 4},
            "budgets": {"energy_budget_j": budget},
        }
    )
    policy = LyapunovPolicy(env.config, 10.0, budget_guard=False)
    policy.reset(0)
    obs, info = env.reset(seed=0)
    energy = []
    for _ in range(rounds):
        obs, _, _, _, info = env.step(policy.act(obs, info))
        energy.append(info["energy_j"])
    energy = np.array(energy)
    assert (energy[:50].mean(axis=0) > budget).any()  # the budget binds: the policy wants more
    assert (energy.mean(axis=0) <= 1.05 * budget).all()
    assert (info["energy_backlog"] / rounds <= 0.05 * budget).all()


def _spent_over_budget(guard: bool, seed: int) -> float:
    """The largest device's episode energy / its total budget T E_bar, in a 20-round large cell
    with half the default budget, where one upload costs up to ~14 rounds of budget."""
    config = {
        "num_rounds": 20,
        "channel": {"cell_radius_m": 1000.0, "shadowing_std_db": 8.0},
        "budgets": {"energy_budget_j": 0.0625},
    }
    env = FedLoRAWirelessEnv(config)
    policy = LyapunovPolicy(env.config, 0.01, budget_guard=guard)
    obs, info = env.reset(seed=seed)
    spent = np.zeros(env.config.devices.num_devices)
    done = False
    while not done:
        obs, _, terminated, truncated, info = env.step(policy.act(obs, info))
        spent += info["energy_j"]
        done = terminated or truncated
    np.testing.assert_allclose(info["energy_spent_j"], spent, rtol=1e-12)
    return float(spent.max() / (20 * 0.0625))


def test_budget_guard_keeps_every_device_within_its_episode_budget():
    """The queues alone let a device that spends many rounds' budget in one upload pay again
    once its queue has drained, too late in a short episode to make up for it; the guard never
    lets a device's episode energy pass T E_bar."""
    guarded = [_spent_over_budget(True, seed) for seed in (1000, 1001, 1002)]
    unguarded = [_spent_over_budget(False, seed) for seed in (1000, 1001, 1002)]
    assert max(guarded) <= 1.0 + 1e-9
    assert max(unguarded) > 1.05


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), "ten", None])
def test_nonpositive_or_invalid_v_is_rejected(bad):
    with pytest.raises(ValueError, match="V must be a finite number > 0"):
        LyapunovPolicy(EnvConfig(), bad)
    with pytest.raises(ValueError, match="V must be"):
        check_tradeoff(bad)


def test_policy_reads_only_documented_info_keys():
    """The policy decides from obs + the documented state keys of info, nothing else."""
    env = FedLoRAWirelessEnv({"devices": {"num_devices": 4}})
    policy = LyapunovPolicy(env.config, 10.0)
    obs, info = env.reset(seed=1)
    keys = (
        "round",
        "channel_gain",
        "cpu_freq_hz",
        "data_size",
        "label_distribution",
        "global_label_distribution",
        "energy_backlog",
        "energy_spent_j",
        "latency_backlog",
        "loss_gap",
    )
    for _ in range(3):
        a = policy.act(obs, {key: info[key] for key in keys})
        assert env.action_space.contains(a)
        obs, _, _, _, info = env.step(a)


def test_deterministic_and_restarts_each_episode():
    a = _episode(10.0, seed=4, k=4)
    b = _episode(10.0, seed=4, k=4)
    assert a == b


def test_tsfa_offline_rank_picks_a_rank_of_the_set():
    cfg = EnvConfig.from_preset("soft").replace(num_rounds=8, devices={"num_devices": 3})
    rank, table = tsfa_offline_rank(cfg, 10.0, episodes=1)
    assert rank in cfg.model.ranks and set(table) == set(cfg.model.ranks)
    assert all(np.isfinite(v["final_gap"]) for v in table.values())


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(
    "surrogate",
    [{}, {"heterogeneity_penalty": 1.77, "participation_exponent": 0.47}],
    ids=["default", "strong-label-skew"],
)
def test_power_block_penalty_interpolation_is_accurate(seed, surrogate):
    """The power block's Phi(c_k) interpolant matches exact surrogate evaluations to 2.5e-3
    (relative; the expected penalty's what-ifs put label-TV kinks in c_k: with 4 nodes the
    cubic misses by up to 4.4e-3 under the calibrated constants, a linear interpolant by up to
    8e-3 under the assumed ones)."""
    cfg = EnvConfig().replace(devices={"num_devices": 6}, learning={"surrogate": surrogate})
    rng = np.random.default_rng(seed)
    state, cpu = random_state(rng, cfg)
    policy = LyapunovPolicy(cfg, 10.0)
    prob = policy.problem(state, cpu)
    c_now, rank, ratio = rng.uniform(0.5, 1.0, 6), np.array([2, 4, 8, 16, 0, 4]), np.ones(6)
    lo = rng.uniform(0.3, 0.8, 6)
    hi = np.minimum(lo + 0.3, 1.0)
    interp = policy._penalty_in_ck(prob, c_now, rank, ratio, lo, hi)
    q = np.vstack([lo + (hi - lo) * rng.uniform(size=(5, 6)), np.zeros((1, 6))])
    exact = np.empty_like(q)
    for g, k in itertools.product(range(q.shape[0]), range(6)):
        c = c_now.copy()
        c[k] = q[g, k]
        exact[g, k] = prob.penalty(c[None], rank[None], ratio[None])[0]
    np.testing.assert_allclose(interp(q), exact, rtol=2.5e-3)


def test_penalty_is_the_expected_gap_over_one_device_arrival():
    """With one device the penalty is exactly E over its arrival: c Phi(1) + (1 - c) Phi(0),
    linear in c (the certainty-equivalent Phi(c) is not, and rewards an interior c for a
    label-skewed device)."""
    cfg = EnvConfig().replace(devices={"num_devices": 1})
    rng = np.random.default_rng(4)
    state, cpu = random_state(rng, cfg)
    prob = LyapunovPolicy(cfg, 10.0).problem(state, cpu)
    rank, ratio = np.array([[8]]), np.ones((1, 1))
    c = np.linspace(0.0, 1.0, 11)[:, None]
    ends = prob.penalty(np.array([[1.0], [0.0]]), rank, ratio)
    np.testing.assert_allclose(
        prob.penalty(c, np.broadcast_to(rank, c.shape), np.broadcast_to(ratio, c.shape)),
        c[:, 0] * ends[0] + (1.0 - c[:, 0]) * ends[1],
        rtol=1e-12,
    )
