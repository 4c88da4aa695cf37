"""Physics (docs/model.md §2, §3, §4): hand-computed values, vectorised == scalar loop,
monotonicity, properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedenv import channel, costs, queues, streams, units
from fedenv.config import (
    ChannelConfig,
    CostConfig,
    DeviceConfig,
    EnvConfig,
    ModelConfig,
    resolve_config,
)
from fedenv.trace import generate_trace

CH = ChannelConfig()
DEV = DeviceConfig()
MODEL = ModelConfig()
COST = CostConfig()

powers = st.floats(1e-3, 0.2)
gains = st.floats(1e-16, 1e-6)
shares = st.floats(1e-4, 1.0)


# ------------------------------------------------------------------- units
def test_unit_conversions():
    assert units.dbm_to_w(23.0) == pytest.approx(0.19953, rel=1e-4)
    assert units.w_to_dbm(1e-3) == pytest.approx(0.0)
    assert units.db_to_linear(30.0) == pytest.approx(1000.0)
    np.testing.assert_allclose(units.linear_to_db(units.db_to_linear([-7.0, 3.0])), [-7.0, 3.0])
    assert CH.noise_psd_w_per_hz == pytest.approx(10 ** (-20.4), rel=1e-12)


# --------------------------------------------------------------- path loss
def test_path_loss_hand_values():
    assert channel.path_loss_db(1000.0, CH) == pytest.approx(128.1)
    assert channel.path_loss_db(100.0, CH) == pytest.approx(128.1 - 37.6)
    assert channel.path_loss_db(500.0, CH) == pytest.approx(128.1 + 37.6 * math.log10(0.5))


def test_channel_gain_combines_path_loss_shadowing_and_fading():
    h = channel.channel_gain(100.0, 2.0, 3.0, CH)
    assert h == pytest.approx(10 ** (-(128.1 - 37.6 + 3.0) / 10) * 2.0)


def test_placement_stays_in_the_annulus_and_is_uniform_by_area():
    u = streams.uniform(np.array([7], dtype=np.uint64), 1, (2, 20000))[0]
    pos = channel.place_devices(u[0], u[1], CH)
    d = np.linalg.norm(pos, axis=-1)
    assert d.min() >= CH.min_distance_m - 1e-9 and d.max() <= CH.cell_radius_m + 1e-9
    # fraction inside radius 300 m equals the area fraction
    area = (300**2 - 50**2) / (500**2 - 50**2)
    assert (d < 300).mean() == pytest.approx(area, abs=0.015)


# ------------------------------------------------------------------ fading
def test_gauss_markov_fading_is_unit_power_and_correlated():
    keys = np.arange(400, dtype=np.uint64)
    z = streams.normal(keys, 4, (2, 60, 8)) * np.sqrt(0.5)
    w = z[:, 0] + 1j * z[:, 1]
    g = channel.gauss_markov_fading(w[:, 0], w[:, 1:], 0.7)
    power = np.abs(g) ** 2
    assert power.mean() == pytest.approx(1.0, abs=0.03)  # |g|^2 ~ Exp(1) at every round
    corr = np.mean(g[:, 1:] * np.conj(g[:, :-1])).real
    assert corr == pytest.approx(0.7, abs=0.03)
    iid = channel.gauss_markov_fading(w[:, 0], w[:, 1:], 0.0)
    assert abs(np.mean(iid[:, 1:] * np.conj(iid[:, :-1])).real) < 0.03


def test_gauss_markov_recursion_exact():
    g0 = np.array([1 + 1j])
    w = np.array([[2 + 0j], [0 + 1j]])
    g = channel.gauss_markov_fading(g0, w, 0.5)
    s = math.sqrt(0.75)
    np.testing.assert_allclose(
        g[:, 0], [1 + 1j, 0.5 * (1 + 1j) + s * 2, 0.5 * (0.5 * (1 + 1j) + s * 2) + s * 1j]
    )


def test_random_waypoint_moves_at_speed_towards_waypoints():
    start = np.array([[100.0, 0.0]])
    waypoints = np.array([[[100.0, 100.0]], [[0.0, 100.0]], [[0.0, 100.0]], [[0.0, 100.0]]])
    pos = channel.random_waypoint(start, waypoints, speed_m_per_s=5.0, interval_s=10.0)
    np.testing.assert_allclose(pos[0, 0], [100.0, 0.0])
    np.testing.assert_allclose(pos[1, 0], [100.0, 50.0])
    np.testing.assert_allclose(pos[2, 0], [100.0, 100.0])  # arrived, takes the next waypoint
    np.testing.assert_allclose(pos[3, 0], [50.0, 100.0])


# -------------------------------------------------------------------- rate
def test_uplink_rate_hand_value():
    p, h, beta = 0.1, 1e-10, 0.25
    bw = beta * CH.bandwidth_hz
    expected = bw * math.log2(1 + p * h / (bw * CH.noise_psd_w_per_hz))
    assert channel.uplink_rate(p, h, beta, CH) == pytest.approx(expected)
    assert channel.uplink_rate(p, h, 0.0, CH) == 0.0


def test_packet_error_hand_value():
    p, h, beta = 0.05, 1e-13, 0.5
    noise = beta * CH.bandwidth_hz * CH.noise_psd_w_per_hz
    assert channel.packet_error_rate(p, h, beta, CH) == pytest.approx(
        1 - math.exp(-0.023 * noise / (p * h))
    )


def test_vectorised_equals_scalar_loop():
    rng = np.random.default_rng(0)
    p = rng.uniform(1e-3, 0.2, 50)
    h = 10 ** rng.uniform(-14, -8, 50)
    b = rng.uniform(0.01, 1, 50)
    rate = channel.uplink_rate(p, h, b, CH)
    per = channel.packet_error_rate(p, h, b, CH)
    for i in range(50):
        assert rate[i] == pytest.approx(float(channel.uplink_rate(p[i], h[i], b[i], CH)), rel=1e-12)
        assert per[i] == pytest.approx(
            float(channel.packet_error_rate(p[i], h[i], b[i], CH)), rel=1e-12
        )


@settings(max_examples=200, deadline=None)
@given(p=powers, h=gains, b=shares, factor=st.floats(1.01, 10.0))
def test_more_power_gives_higher_rate_and_lower_packet_error(p, h, b, factor):
    p2 = min(p * factor, 1.0)
    assert channel.uplink_rate(p2, h, b, CH) > channel.uplink_rate(p, h, b, CH)
    assert channel.packet_error_rate(p2, h, b, CH) <= channel.packet_error_rate(p, h, b, CH)


@settings(max_examples=200, deadline=None)
@given(p=powers, h=gains, b=shares, factor=st.floats(1.01, 10.0))
def test_more_bandwidth_gives_higher_rate_but_more_noise(p, h, b, factor):
    b2 = min(b * factor, 1.0)
    if b2 <= b:
        return
    # at very low SNR the rate saturates at p h / (N0 ln 2): equal up to rounding
    assert channel.uplink_rate(p, h, b2, CH) >= channel.uplink_rate(p, h, b, CH) * (1 - 1e-14)
    assert channel.packet_error_rate(p, h, b2, CH) >= channel.packet_error_rate(p, h, b, CH)


@settings(max_examples=200, deadline=None)
@given(p=powers, h=st.floats(0.0, 1e-5), b=st.floats(0.0, 1.0))
def test_rate_and_packet_error_are_finite_and_in_range_at_edges(p, h, b):
    rate = channel.uplink_rate(p, h, b, CH)
    assert np.isfinite(rate) and rate >= 0.0
    with np.errstate(divide="ignore"):
        q = channel.packet_error_rate(p, h, b, CH)
    assert 0.0 <= q <= 1.0


# ------------------------------------------------------------------- costs
def test_payload_sizes_from_model_shape():
    # docs/model.md §3.2: MiniLM-L6 (d = 384, 6 layers, query + value) has 9,216 parameters per rank
    assert MODEL.lora_params_per_rank == 9216
    roberta = ModelConfig(num_layers=12, hidden_size=768)
    assert roberta.lora_params_per_rank == 36864
    np.testing.assert_allclose(
        costs.lora_payload_bits([0, 2, 8], MODEL), [0.0, 2 * 9216 * 32, 8 * 9216 * 32]
    )
    with_head = ModelConfig(send_head=True)
    assert costs.lora_payload_bits(4, with_head) == pytest.approx((4 * 9216 + 384 * 2 + 2) * 32)


def test_sparse_payload_counts_kept_components_and_indices():
    # r = 16, rho = 0.25: 4 components, each with 12 modules x 4-bit indices
    bits = costs.sparse_payload_bits(16, 0.25, MODEL)
    assert bits == pytest.approx(4 * (9216 * 32 + 12 * 4))
    np.testing.assert_array_equal(
        costs.kept_components([8, 8, 8, 0], [0.01, 0.5, 1.0, 0.5]), [1, 4, 8, 0]
    )
    assert costs.sparse_payload_bits(8, 1.0, MODEL) > costs.lora_payload_bits(
        8, MODEL
    )  # indices cost


def test_split_payload_is_activations_per_step():
    act = 5 * 16 * 64 * 384 * 16
    assert costs.split_downlink_bits(MODEL, DEV, COST) == act
    assert costs.split_uplink_bits(MODEL, DEV, COST) == act + (384 * 2 + 2) * 32


def test_computation_latency_and_energy_hand_values():
    cycles = costs.local_cycles(8, DEV, COST.cycles_per_sample, COST.cycles_per_sample_per_rank)
    assert cycles == pytest.approx(5 * 16 * (1.25e7 + 8 * 1.25e5))
    assert costs.local_cycles(0, DEV, 1.0, 1.0) == 0.0
    assert costs.computation_latency(cycles, 1e9) == pytest.approx(cycles / 1e9)
    assert costs.computation_energy(cycles, 1e9, DEV) == pytest.approx(1e-28 * cycles * 1e18)


def test_upload_deadline_caps_energy_and_marks_stragglers():
    t, e, ok = costs.upload([1e6, 1e6, 1e6, 0.0], [1e6, 1e5, 0.0, 0.0], 0.1, [5.0, 5.0, 5.0, 5.0])
    np.testing.assert_allclose(t[:2], [1.0, 10.0])
    assert np.isinf(t[2]) and t[3] == 0.0
    np.testing.assert_allclose(e, [0.1, 0.5, 0.0, 0.0])  # the late one transmits until the deadline
    np.testing.assert_array_equal(ok, [True, False, False, True])


# ------------------------------------------------------------------ queues
def test_link_and_upload_at_the_edges_without_warnings_and_as_scalars():
    """Zero shares, zero received power and zero bits give the limit values, with no
    floating-point warning; the kernels give the same numbers one device at a time."""
    import warnings

    p = np.array([0.1, 0.0, 0.1, 0.1, 0.2])
    h = np.array([1e-10, 1e-10, 0.0, 1e-9, 1e-11])
    b = np.array([0.5, 0.5, 0.5, 0.0, 1e-13])
    bits = np.array([1e6, 1e6, 0.0, 1e6, 2e5])
    left = np.array([5.0, 5.0, 5.0, 5.0, -1.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rate, per = channel.link(p, h, b, CH)
        t_up, energy, on_time = costs.upload(bits, rate, p, left)
    assert (
        rate[3] == rate[4] == 0.0
        and per[1] == per[2] == 1.0
        and t_up[2] == 0.0
        and math.isinf(t_up[3])
    )
    assert energy[3] == 0.0 and not on_time[3] and on_time[2]
    for i in range(p.size):
        np.testing.assert_array_equal(rate[i], channel.uplink_rate(p[i], h[i], b[i], CH))
        np.testing.assert_array_equal(per[i], channel.packet_error_rate(p[i], h[i], b[i], CH))
        scalar = costs.upload(bits[i], rate[i], p[i], left[i])
        for got, want in zip(scalar, (t_up[i], energy[i], on_time[i])):
            np.testing.assert_array_equal(got, want)


def test_virtual_queue_update():
    np.testing.assert_allclose(
        queues.update_queue([0.0, 1.0, 0.2], [0.5, 0.1, 0.0], 0.25), [0.25, 0.85, 0.0]
    )


@settings(max_examples=200, deadline=None)
@given(st.floats(0.0, 10.0), st.floats(0.0, 10.0), st.floats(0.0, 10.0))
def test_virtual_queue_of_numbers_equals_the_array_formula(backlog, arrival, budget):
    q = queues.update_queue(backlog, np.float64(arrival), budget)
    assert isinstance(q, np.float64)
    assert q == np.maximum(np.asarray(backlog) + np.asarray(arrival) - np.asarray(budget), 0.0)
    assert np.isnan(queues.update_queue(backlog, np.float64(np.nan), budget))


def test_drift_plus_penalty():
    v = queues.drift_plus_penalty(10.0, 0.5, [1.0, 2.0], [0.1, 0.2], 3.0, 2.0)
    assert v == pytest.approx(10 * 0.5 + 0.1 + 0.4 + 6.0)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0.0, 2.0), min_size=1, max_size=200), st.floats(0.01, 1.0))
def test_queue_bounds_the_budget_excess(arrivals, budget):
    # Q(T) >= sum(x) - T b: a small final backlog certifies the long-term constraint
    q = 0.0
    for x in arrivals:
        q = float(queues.update_queue(q, x, budget))
        assert q >= 0.0
    assert q >= sum(arrivals) - len(arrivals) * budget - 1e-9


# ---------------------------------------------------------- streams, trace
@pytest.mark.parametrize(
    "bit_generator",
    [np.random.PCG64, np.random.PCG64DXSM, np.random.Philox, np.random.SFC64, np.random.MT19937],
)
def test_draw_keys_equals_generator_integers_and_leaves_the_same_state(bit_generator):
    for seed in range(20):
        a, b = np.random.Generator(bit_generator(seed)), np.random.Generator(bit_generator(seed))
        for count in (1, 2, 5):
            expected = a.integers(0, 2**63, size=count, dtype=np.uint64)
            keys = streams.draw_keys(b, count)
            np.testing.assert_array_equal(keys, expected)
            assert keys.dtype == np.uint64
        assert a.random() == b.random()


def test_pcg64_states_are_those_of_default_rng():
    """The batched seeding equals np.random.default_rng(key): state, and the draws that follow."""
    rng = np.random.default_rng(0)
    edges = [0, 1, 2**32 - 1, 2**32, 2**32 + 1, 2**63 - 1, 2**64 - 1]
    keys = np.concatenate(
        [np.array(edges, dtype=np.uint64), rng.integers(0, 2**63, size=300, dtype=np.uint64)]
    )
    states = streams.pcg64_states(keys)
    assert len(states) == keys.size
    reused = np.random.Generator(np.random.PCG64(7))
    reused.random()  # (state left over from earlier draws is replaced)
    for key, state in zip(keys.tolist(), states):
        expected = np.random.default_rng(key)
        assert state == expected.bit_generator.state
        reused.bit_generator.state = state
        np.testing.assert_array_equal(
            reused.dirichlet(np.full(4, 0.5)), expected.dirichlet(np.full(4, 0.5))
        )


def test_streams_are_pure_functions_of_key_and_batched_equals_single():
    keys = np.array([3, 99, 2**62], dtype=np.uint64)
    batch = streams.uniform(keys, 5, (4, 6))
    for i, k in enumerate(keys):
        np.testing.assert_array_equal(streams.uniform(np.array([k]), 5, (4, 6))[0], batch[i])
    assert not np.array_equal(streams.uniform(keys, 6, (4, 6)), batch)
    assert (batch > 0).all() and (batch < 1).all()


def test_trace_batch_equals_single_and_depends_only_on_key():
    cfg = EnvConfig().replace(channel={"mobility_speed_m_per_s": 3.0, "shadowing_std_db": 6.0})
    keys = np.array([11, 12], dtype=np.uint64)
    both = generate_trace(keys, cfg)
    one = generate_trace(keys[1:], cfg)
    np.testing.assert_array_equal(both.gain[1], one.gain[0])
    np.testing.assert_array_equal(both.position_m[1], one.position_m[0])
    np.testing.assert_array_equal(both.cpu_freq_hz[1], one.cpu_freq_hz[0])
    assert both.gain.shape == (2, cfg.num_rounds + 1, cfg.devices.num_devices)
    f = both.cpu_freq_hz
    assert (f >= 0.5e9).all() and (f <= 2e9).all()
    assert (both.distance_m >= 50.0).all() and (both.distance_m <= 500.0 + 1e-9).all()


@pytest.mark.parametrize("preset", ["switching", "split", "soft", "unified"])
@pytest.mark.parametrize(
    "channel_overrides",
    [{}, {"mobility_speed_m_per_s": 3.0, "shadowing_std_db": 6.0}],
    ids=["static", "mobile_shadowed"],
)
def test_trace_rows_do_not_depend_on_the_horizon(preset, channel_overrides):
    """Same seed, same channels, for any horizon: round t depends on (key, t, device) only."""
    base = resolve_config(None, preset, channel=channel_overrides)
    keys = np.array([0, 5, 2**62 + 3], dtype=np.uint64)
    traces = {t: generate_trace(keys, base.replace(num_rounds=t)) for t in (10, 15, 50)}
    short = traces[10]
    for t in (15, 50):
        for name in ("position_m", "distance_m", "gain", "success_uniform"):
            np.testing.assert_array_equal(
                getattr(traces[t], name)[:, :11],
                getattr(short, name),
                err_msg=f"{name}, {t} rounds",
            )
        np.testing.assert_array_equal(traces[t].cpu_freq_hz, short.cpu_freq_hz)


def test_episode_channels_do_not_depend_on_the_horizon():
    """The reviewer's case: seed 0 with 15 rounds met other channels than with 10 (single and
    vector env, and the surrogate's evaluation noise, drawn through streams.normal)."""
    from fedenv import FedLoRAWirelessEnv
    from fedenv.vector import FedLoRAWirelessVectorEnv

    gains, noise = {}, {}
    for rounds in (10, 15):
        over = {"num_rounds": rounds, "learning": {"surrogate": {"eval_noise_std": 0.01}}}
        env = FedLoRAWirelessEnv(over)
        _, info = env.reset(seed=0)
        rows, acc = [info["channel_gain"].copy()], []
        for _ in range(10):
            _, _, _, _, info = env.step(np.zeros(env.action_space.shape, np.float32))
            rows.append(info["channel_gain"].copy())
            acc.append(info["accuracy"])
        gains[rounds], noise[rounds] = np.array(rows), np.array(acc)
        venv = FedLoRAWirelessVectorEnv(2, over)
        _, vinfo = venv.reset(seed=0)
        np.testing.assert_array_equal(vinfo["channel_gain"][0], rows[0])
    np.testing.assert_array_equal(gains[10], gains[15])
    np.testing.assert_array_equal(noise[10], noise[15])
    normals = {
        t: streams.normal(np.array([9], dtype=np.uint64), streams.Stream.EVAL_NOISE, (t,))
        for t in (10, 15)
    }
    np.testing.assert_array_equal(normals[15][:, :10], normals[10])


@pytest.mark.parametrize("preset", ["switching", "split", "soft", "unified"])
def test_tabulated_time_left_gives_the_same_round_as_computing_it(preset):
    """episode_tables tabulates max(T_max - t_cmp, 0) per module; play_round without the table
    (time_left_s=None, as hand-made tables) computes it, with the same numbers."""
    import dataclasses

    from fedenv.actions import ActionCodec
    from fedenv.round import episode_tables, play_round, time_left

    cfg = resolve_config(None, preset)
    rng = np.random.default_rng(0)
    cpu = rng.uniform(
        cfg.devices.cpu_freq_min_hz, cfg.devices.cpu_freq_max_hz, size=(3, cfg.devices.num_devices)
    )
    args = (float(cfg.model.lora_params_per_rank), int(cfg.model.head_params))
    # a deadline that some modules' computation misses
    deadline = float(np.median(episode_tables(cfg, cpu, *args).compute_time_s[..., 1:]))
    cfg = resolve_config(None, preset, costs={"round_deadline_s": deadline})
    tables = episode_tables(cfg, cpu, *args)
    np.testing.assert_array_equal(
        tables.time_left_s, np.maximum(deadline - tables.compute_time_s, 0.0)
    )
    np.testing.assert_array_equal(time_left(tables.compute_time_s, cfg), tables.time_left_s)
    assert (tables.time_left_s == 0.0).any() and (tables.time_left_s > 0.0).any()  # both cases met
    plain = dataclasses.replace(tables, time_left_s=None)
    codec = ActionCodec(cfg)
    gain = rng.uniform(1e-13, 1e-10, size=cpu.shape)
    u = rng.uniform(size=cpu.shape)
    for _ in range(5):
        decision = codec.decode(rng.uniform(-1, 1, (3, *codec.shape)))
        a, b = play_round(decision, gain, tables, cfg, u), play_round(decision, gain, plain, cfg, u)
        for field in (
            "latency_s",
            "energy_j",
            "on_time",
            "success",
            "upload_time_s",
            "round_latency_s",
        ):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
