"""Calibration (fedenv.calibrate): trace format and resume, fit recovery, report figures, CLI."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import yaml

from fedenv.calibrate.__main__ import build_parser, main
from fedenv.calibrate.collect import ExplorePolicy, collect, make_policy, parse_policy_spec
from fedenv.calibrate.fit import (
    at_bounds,
    constant_sources,
    fit_surrogate,
    identifiable_parameters,
    one_step_accuracy,
    prediction_errors,
    rollout_accuracy,
)
from fedenv.calibrate.report import (
    fidelity_report,
    kendall_tau,
    noise_ceiling,
    render_markdown,
    replay_on_surrogate,
    seed_noise,
    update_markdown,
)
from fedenv.calibrate.traces import TraceDamageWarning, TraceWriter, load_traces, pack_trace
from fedenv.config import EnvConfig, SurrogateConfig
from fedenv.learning.surrogate import next_gap

TRUE = SurrogateConfig(
    step_size=0.35,
    rank_scale=3.0,
    participation_exponent=0.3,
    sparsity_exponent=0.7,
    heterogeneity_penalty=0.2,
    rank_mix_penalty=0.1,
    warmup=0.6,
    initial_accuracy=0.5,
    max_accuracy=0.9,
    initial_loss=0.7,
    min_loss=0.3,
)


def synthetic(
    tmp_path, preset="unified", seeds=(0, 1, 2), policies=("explore",), rounds=12, surrogate=TRUE
):
    """Traces of the surrogate backend with known constants (the ground truth of the fit)."""
    cfg = EnvConfig.from_preset(preset).replace(
        num_rounds=rounds, learning={"surrogate": surrogate.to_dict()}
    )
    path = tmp_path / "traces.jsonl"
    collect(cfg, list(policies), list(seeds), path, progress=False)
    return path, load_traces(path)


def test_warmup_slows_the_start_and_zero_is_the_plain_model():
    plain = SurrogateConfig()
    slow = SurrogateConfig(warmup=0.8)
    assert next_gap(1.0, 0.5, 0.0, slow) == pytest.approx(1.0 - plain.step_size * 0.5 * 0.2)
    assert next_gap(0.0, 0.5, 0.1, slow) == pytest.approx(
        next_gap(0.0, 0.5, 0.1, plain)
    )  # no slowdown at G = 0
    g = np.array([1.0, 0.5, 0.2])
    np.testing.assert_allclose(next_gap(g, 0.5, 0.0, plain), g - plain.step_size * 0.5 * g)


# ------------------------------------------------------------------ traces
def test_trace_round_trip_matches_the_env(tmp_path):
    _, eps = synthetic(tmp_path, seeds=(0,), rounds=6)
    (ep,) = eps
    assert ep.key == "explore/seed0" and ep.backend == "surrogate" and ep.num_rounds == 6
    assert ep.rank.shape == ep.success.shape == ep.ratio.shape == (6, 10)
    assert ep.accuracy.shape == ep.loss.shape == (7,)
    assert ep.accuracy[0] == pytest.approx(TRUE.initial_accuracy)
    assert not (ep.success & (ep.rank == 0)).any()  # idle devices never succeed
    assert not (ep.success & (ep.straggler | ep.packet_lost)).any()
    share = (ep.data_share * ep.success).sum(axis=1)
    assert (
        share.std() > 0.05 and len(np.unique(ep.rank[ep.success])) > 2
    )  # exploration varies what arrives
    assert EnvConfig.from_dict(ep.config).learning.surrogate == TRUE


def test_writer_resumes_dropping_unfinished_episodes(tmp_path):
    path, eps = synthetic(tmp_path, seeds=(0, 1), rounds=4)
    lines = path.read_text().splitlines()
    # kill seed 1 mid-episode: its end record and last round are gone, the last line is torn
    cut = [i for i, line in enumerate(lines) if '"key": "explore/seed1"' in line]
    path.write_text("\n".join(lines[: cut[-2]]) + "\n" + lines[cut[-2]][:25])
    writer = TraceWriter(path)
    assert writer.completed == {"explore/seed0"} and writer.dropped == ["explore/seed1"]
    assert [e.key for e in load_traces(path)] == ["explore/seed0"]
    cfg = EnvConfig.from_dict(eps[0].config)
    assert collect(cfg, ["explore"], [0, 1], path, progress=False) == ["explore/seed1"]
    again = load_traces(path)
    assert [e.key for e in again] == ["explore/seed0", "explore/seed1"]
    np.testing.assert_array_equal(again[1].accuracy, eps[1].accuracy)  # same seed, same episode
    assert collect(cfg, ["explore"], [0, 1], path, progress=False) == []  # nothing left to do


def test_damaged_trace_line_skips_its_episode_and_missing_path_raises(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"type": "episode", "key": "a"}\nnot json\n{"type": "end", "key": "a", "rounds": 0}\n'
    )
    with pytest.warns(
        TraceDamageWarning,
        match=r"damaged line\(s\) 2 .*skipped the episode\(s\) they belong to: a;",
    ):
        assert load_traces(bad) == []
    with pytest.raises(FileNotFoundError, match="calibrate collect"):
        load_traces(tmp_path / "nope.jsonl")


def test_pack_writes_complete_episodes_compressed_and_reproducibly(tmp_path):
    import shutil

    path, eps = synthetic(tmp_path, seeds=(0, 1), rounds=4)
    (tmp_path / "traces.config.yaml").write_text("# python -m fedenv.calibrate collect ...\n")
    with path.open("a") as fh:  # an interrupted third episode: header and one round, no end
        lines = path.read_text().splitlines()
        head, first_round = (line.replace("seed0", "seed2") for line in lines[:2])
        fh.write(head.replace('"seed": 0', '"seed": 2') + "\n" + first_round + "\n")
    packed, n = pack_trace(path, tmp_path / "packed")
    assert packed.name == "traces.jsonl.gz" and n == 2
    assert (
        (tmp_path / "packed" / "traces.config.yaml")
        .read_text()
        .startswith("# python -m fedenv.calibrate collect")
    )
    for source in (packed, packed.parent):  # the file itself, and a directory holding it
        again = load_traces(source)
        assert [e.key for e in again] == ["explore/seed0", "explore/seed1"]
        np.testing.assert_array_equal(again[1].accuracy, eps[1].accuracy)
        np.testing.assert_array_equal(again[1].rank, eps[1].rank)
    first = packed.read_bytes()
    assert (
        pack_trace(path, tmp_path / "packed")[0].read_bytes() == first
    )  # no timestamp: same bytes
    with pytest.raises(ValueError, match="compress it when the collection is finished"):
        TraceWriter(packed)  # a compressed file is not appended to
    shutil.copy(path, packed.parent / "traces.jsonl")  # the same trace, plain and compressed
    with pytest.raises(ValueError, match="same trace twice"):
        load_traces(packed.parent)
    with pytest.raises(ValueError, match="no complete episode"):
        pack_trace(tmp_path / "packed" / "traces.config.yaml", tmp_path / "other")


def test_policy_specs():
    assert parse_policy_spec("lyapunov:V=100,warm=on") == ("lyapunov", {"V": 100, "warm": "on"})
    assert parse_policy_spec("explore:min_participation=0.5") == (
        "explore",
        {"min_participation": 0.5},
    )
    with pytest.raises(ValueError, match="key=value"):
        parse_policy_spec("lyapunov:V")
    assert isinstance(make_policy("explore", EnvConfig()), ExplorePolicy)


def test_collection_policies_come_through_the_entry_points():
    """fedenv imports no baselines: the collector builds them through the fedenv.policies entry
    points."""
    lyapunov = make_policy("lyapunov:V=100", EnvConfig())
    assert type(lyapunov).__module__ == "baselines.lyapunov" and lyapunov.tradeoff_v == 100
    assert make_policy("fixed_rank:rank=4", EnvConfig()).name.startswith("fixed_rank")
    with pytest.raises(ValueError, match="unknown policy 'lyapunof'. Did you mean 'lyapunov'"):
        make_policy("lyapunof", EnvConfig())


def test_collect_takes_a_policy_factory(tmp_path):
    made: list[str] = []

    def factory(spec, config):
        made.append(spec)
        return ExplorePolicy(config)

    cfg = EnvConfig.from_dict({"num_rounds": 2, "devices": {"num_devices": 3}})
    assert collect(
        cfg, ["mine"], [0], tmp_path / "t.jsonl", progress=False, policy_factory=factory
    ) == ["mine/seed0"]
    assert made == ["mine"]


def test_collect_refuses_to_resume_a_file_of_another_config(tmp_path):
    out = tmp_path / "t.jsonl"
    cfg = EnvConfig.from_dict({"num_rounds": 2, "devices": {"num_devices": 3}})
    assert collect(cfg, ["explore"], [0], out, progress=False) == ["explore/seed0"]
    before = out.read_bytes()
    other = cfg.replace(channel={"shadowing_std_db": 4.0})
    with pytest.raises(ValueError, match="channel.shadowing_std_db: 0.0 in the file, 4.0 now"):
        collect(other, ["explore"], [0, 1], out, progress=False)
    assert out.read_bytes() == before  # nothing appended
    # the threads that ran it are no difference; nor is a field the file predates
    threads = cfg.replace(learning={"lora": {"num_threads": 2}})
    assert collect(threads, ["explore"], [0, 1], out, progress=False) == ["explore/seed1"]
    lines = out.read_text().splitlines()
    header = json.loads(lines[0])
    del header["config"]["learning"]["lora"]["pair_encoding"]
    out.write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")
    assert collect(cfg, ["explore"], [0, 1, 2], out, progress=False) == ["explore/seed2"]


# --------------------------------------------------------------------- fit
def test_fit_recovers_known_constants(tmp_path):
    _, eps = synthetic(tmp_path)
    res = fit_surrogate(eps[:2], SurrogateConfig(), heldout=eps[2:], starts=2)
    assert res.fixed == {}
    for name in res.fitted:
        assert getattr(res.config, name) == pytest.approx(getattr(TRUE, name), rel=1e-4), name
    assert res.config.initial_loss == pytest.approx(TRUE.initial_loss, rel=1e-6)
    assert res.config.min_loss == pytest.approx(TRUE.min_loss, rel=1e-6)
    assert res.heldout_errors["one_step_rmse"] < 1e-6 and res.heldout_errors["rollout_rmse"] < 1e-6


def test_constant_sources_name_the_traces_a_constant_depends_on(tmp_path):
    # max trains every device at the top rank (no rank mix); explore mixes ranks
    _, eps = synthetic(tmp_path, preset="switching", seeds=(0, 1), policies=("max", "explore"))
    names = ["step_size", "rank_mix_penalty"]
    src = constant_sources(eps, TRUE, names, "rollout")
    for name in names:
        assert sum(src[name].values()) == pytest.approx(1.0)
    # the rank-mix penalty cannot move a max episode's residuals: every share is explore's
    assert src["rank_mix_penalty"]["max"] == 0.0
    assert src["rank_mix_penalty"]["explore"] == pytest.approx(1.0)
    assert 0.0 < src["step_size"]["max"] < 1.0
    # against a hand finite difference of the summed squared sensitivities
    explore = [ep for ep in eps if ep.policy == "explore"]
    mx = [ep for ep in eps if ep.policy == "max"]

    def sens(group, h=1e-5):
        up = SurrogateConfig.from_dict({**TRUE.to_dict(), "step_size": TRUE.step_size + h})
        dn = SurrogateConfig.from_dict({**TRUE.to_dict(), "step_size": TRUE.step_size - h})
        return sum(
            float(np.sum(((rollout_accuracy(e, up) - rollout_accuracy(e, dn))[1:] / (2 * h)) ** 2))
            for e in group
        )

    assert src["step_size"]["max"] == pytest.approx(sens(mx) / (sens(mx) + sens(explore)), rel=1e-3)


def test_at_bounds_flags_a_constant_the_fit_pinned():
    cfg = SurrogateConfig(step_size=1.0, rank_mix_penalty=0.3, warmup=0.0)
    assert at_bounds(cfg, ["step_size", "rank_mix_penalty", "warmup"]) == ["step_size", "warmup"]
    assert at_bounds(cfg, ["rank_mix_penalty"]) == []
    # a_max's lower bound in the fit is a_0 + 1e-3, not FIT_PARAMETERS' 0
    pinned = SurrogateConfig(initial_accuracy=0.5, max_accuracy=0.501)
    assert at_bounds(pinned, ["max_accuracy"]) == ["max_accuracy"]


def test_fit_under_noise_is_close_and_validates_on_heldout(tmp_path):
    _, eps = synthetic(tmp_path, seeds=(0, 1, 2, 3, 4), rounds=20)
    rng = np.random.default_rng(0)
    noisy = [
        type(ep)(
            **{
                **ep.__dict__,
                "accuracy": ep.accuracy + np.r_[0.0, rng.normal(0, 0.005, ep.num_rounds)],
            }
        )
        for ep in eps
    ]
    res = fit_surrogate(
        noisy[:4], SurrogateConfig(), heldout=noisy[4:], objective="rollout", starts=2
    )
    assert res.config.step_size == pytest.approx(TRUE.step_size, rel=0.15)
    assert res.config.max_accuracy == pytest.approx(TRUE.max_accuracy, abs=0.04)
    assert 0.2 < res.heldout_errors["one_step_rmse"] < 1.0  # the 0.5-point noise, in points


def test_robust_loss_ignores_one_round_collapses(tmp_path):
    # the real backend's accuracy sometimes collapses to chance for one round (a biased aggregate);
    # plain least squares bends the fitted curve towards them, a robust loss keeps the true one
    _, eps = synthetic(tmp_path, seeds=(0, 1, 2, 3), rounds=16)
    collapsed = []
    for i, ep in enumerate(eps):
        acc = ep.accuracy.copy()
        acc[[9 + i % 3, 13]] = TRUE.initial_accuracy  # two collapsed rounds late in each episode
        collapsed.append(type(ep)(**{**ep.__dict__, "accuracy": acc}))
    names = ["step_size", "max_accuracy"]
    plain = fit_surrogate(collapsed, TRUE, objective="rollout", parameters=names, starts=1)
    robust = fit_surrogate(
        collapsed,
        TRUE,
        objective="rollout",
        parameters=names,
        starts=1,
        loss="soft_l1",
        f_scale=0.01,
    )
    assert robust.details["loss"] == "soft_l1" and plain.details["loss"] == "linear"
    assert robust.config.max_accuracy == pytest.approx(TRUE.max_accuracy, abs=0.01)
    assert robust.config.step_size == pytest.approx(TRUE.step_size, rel=0.05)
    # measured on the clean episodes: the robust fit reproduces them, the plain one does not
    assert prediction_errors(eps, robust.config)["rollout_rmse"] < 0.3
    assert prediction_errors(eps, plain.config)["rollout_rmse"] > 1.0
    with pytest.raises(ValueError, match="loss must be one of"):
        fit_surrogate(eps, loss="l2")
    with pytest.raises(ValueError, match="f_scale"):
        fit_surrogate(eps, loss="huber", f_scale=0.0)


def test_unidentifiable_constants_keep_their_base_values(tmp_path):
    # switching never sparsifies: the sparsity exponent cannot be seen in the traces
    _, eps = synthetic(tmp_path, preset="switching", seeds=(0, 1))
    names, fixed = identifiable_parameters(eps)
    assert "sparsity_exponent" in fixed and "sparsity_exponent" not in names
    base = SurrogateConfig(sparsity_exponent=1.3)
    res = fit_surrogate(eps, base, starts=0)
    assert res.config.sparsity_exponent == 1.3
    with pytest.raises(ValueError, match="objective"):
        fit_surrogate(eps, objective="two_step")
    with pytest.raises(ValueError, match="no training episodes"):
        fit_surrogate([])


def test_one_step_and_rollout_agree_with_the_env_under_true_constants(tmp_path):
    _, (ep, *_) = synthetic(tmp_path, seeds=(3,))
    np.testing.assert_allclose(one_step_accuracy(ep, TRUE), ep.accuracy[1:], atol=1e-12)
    np.testing.assert_allclose(rollout_accuracy(ep, TRUE), ep.accuracy, atol=1e-12)


# ------------------------------------------------------------------ report
@pytest.mark.parametrize("seed", range(5))
def test_kendall_tau_matches_scipy_with_ties(seed):
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 4, size=9).astype(float)  # many ties
    y = x + rng.integers(-2, 3, size=9)
    assert kendall_tau(x, y) == pytest.approx(stats.kendalltau(x, y).statistic)
    z = rng.normal(size=7)
    assert kendall_tau(z, z) == pytest.approx(1.0) and kendall_tau(z, -z) == pytest.approx(-1.0)


def test_kendall_tau_hand_value_and_errors():
    # pairs: (1,2) c, (1,3) c, (2,3) d -> (2 - 1) / 3
    assert kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)
    assert np.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError, match="equal length"):
        kendall_tau([1, 2], [1, 2, 3])


def test_a_bare_lyapunov_trace_is_replayed_at_the_v_it_was_collected_with(tmp_path):
    """The committed traces' ``lyapunov`` ran at V = 0.1, the default then (AS_COLLECTED)."""
    import dataclasses

    _, (ep,) = synthetic(
        tmp_path, preset="switching", seeds=(5,), policies=("lyapunov:V=0.1",), rounds=8
    )
    bare = dataclasses.replace(ep, policy="lyapunov")
    np.testing.assert_allclose(replay_on_surrogate(bare, TRUE).accuracy, ep.accuracy)
    assert not np.allclose(
        replay_on_surrogate(dataclasses.replace(ep, policy="lyapunov:V=10"), TRUE).accuracy,
        ep.accuracy,
    )  # V matters on this episode, so the first check can fail


def test_report_of_the_true_constants_is_exact(tmp_path):
    policies = ("explore", "explore:min_participation=0.0", "explore:min_participation=0.6")
    _, eps = synthetic(tmp_path, preset="switching", seeds=(5, 6), policies=policies, rounds=8)
    replay = replay_on_surrogate(eps[0], TRUE)
    np.testing.assert_allclose(replay.accuracy, eps[0].accuracy)
    rep = fidelity_report(eps, TRUE, [5, 6])
    assert [r.policy for r in rep.rows] == list(policies)
    assert rep.mean_abs_final_error == pytest.approx(0.0, abs=1e-9)
    assert rep.kendall_tau == pytest.approx(1.0) and rep.kendall_tau_window == pytest.approx(1.0)
    assert rep.mean_abs_window_error == pytest.approx(0.0, abs=1e-9)
    assert rep.one_step["one_step_rmse"] == pytest.approx(0.0, abs=1e-9)
    # a miscalibrated surrogate shows up as final-accuracy error
    off = fidelity_report(eps, SurrogateConfig(), [5, 6])
    assert off.mean_abs_final_error > 1.0
    with pytest.raises(ValueError, match="held-out seeds"):
        fidelity_report(eps, TRUE, [99])
    # held-out seeds not collected yet are left out of the comparison and named
    part = fidelity_report(eps, TRUE, [5, 6, 99])
    assert part.heldout_seeds == [5, 6] and part.missing_seeds == [99]
    assert [r.policy for r in part.rows] == list(policies)
    assert "Held-out seeds: 5, 6 (not collected yet: 99)." in render_markdown(part)
    assert "Held-out seeds: 5, 6." in render_markdown(rep)


def test_seed_noise_measures_the_real_spread_and_self_agreement(tmp_path):
    from scipy import stats

    policies = ["explore", "explore:min_participation=0.0", "explore:min_participation=0.6"]
    _, eps = synthetic(tmp_path, preset="switching", seeds=(5, 6, 7), policies=policies, rounds=8)
    # a policy missing on seed 7 takes that seed out of the noise measurement
    extra = [ep for ep in eps if ep.seed == 5 and ep.policy == "explore"][0]
    noise = seed_noise(
        [*eps, type(extra)(**{**extra.__dict__, "policy": "other"})], [*policies, "other"]
    )
    assert noise["seeds"] == [5]
    assert noise["pairs"] == [] and np.isnan(noise["pooled_std"]) and np.isnan(noise["mean_tau"])
    noise = seed_noise(eps, policies)
    assert noise["seeds"] == [5, 6, 7]
    table = {(ep.policy, ep.seed): 100.0 * ep.final_accuracy for ep in eps}
    for p in policies:
        vals = [table[p, s] for s in (5, 6, 7)]
        assert noise["final"][p] == pytest.approx(vals)
        assert noise["std"][p] == pytest.approx(np.std(vals, ddof=1))
    assert noise["pooled_std"] == pytest.approx(
        np.sqrt(np.mean([np.var([table[p, s] for s in (5, 6, 7)], ddof=1) for p in policies]))
    )
    assert [q["seeds"] for q in noise["pairs"]] == [[5, 6], [5, 7], [6, 7]]
    for q in noise["pairs"]:
        a, b = q["seeds"]
        expected = stats.kendalltau(
            [table[p, a] for p in policies], [table[p, b] for p in policies]
        ).statistic
        assert q["tau"] == pytest.approx(expected)
    assert noise["mean_tau"] == pytest.approx(np.mean([q["tau"] for q in noise["pairs"]]))
    # the report carries it and prints it
    rep = fidelity_report(eps, TRUE, [6, 7])
    assert rep.noise["seeds"] == [5, 6, 7]
    assert rep.noise["ceiling"]["final"] == noise_ceiling(noise["final"], 2)
    text = render_markdown(rep)
    assert (
        "Seed-to-seed noise of the real backend" in text
        and f"{noise['pooled_std']:.2f} points" in text
        and "Noise ceiling" in text
        and f"{rep.noise['ceiling']['final']['tau']:.3f}" in text
    )


def test_noise_ceiling_is_the_bootstrap_expectation_of_a_perfect_surrogate():
    import itertools

    from scipy import stats

    # no seed noise: a perfect surrogate ranks perfectly and errs by nothing
    flat = noise_ceiling({"a": [70.0, 70.0, 70.0], "b": [60.0] * 3, "c": [80.0] * 3}, 2)
    assert flat["tau"] == 1.0 and flat["tau_lo"] == 1.0 and flat["error"] == 0.0
    # against the exact expectation over every equally likely draw of 2 seeds out of 3
    values = {"a": [70.0, 52.0, 81.0], "b": [75.0, 74.0, 73.0], "c": [50.0, 79.0, 77.0]}
    table = np.array(list(values.values()))
    expected = table.mean(axis=1)
    draws = [table[:, list(ix)].mean(axis=1) for ix in itertools.product(range(3), repeat=2)]
    tau = np.mean([stats.kendalltau(expected, m).statistic for m in draws])
    err = np.mean([np.mean(np.abs(m - expected)) for m in draws])
    got = noise_ceiling(values, 2, draws=20000)
    assert got["tau"] == pytest.approx(tau, abs=0.02)
    assert got["error"] == pytest.approx(err, rel=0.03)
    assert got["tau_lo"] <= got["tau"] <= got["tau_hi"]
    # more seeds per mean, a higher ceiling
    assert noise_ceiling(values, 12)["tau"] > got["tau"]
    assert np.isnan(noise_ceiling({"a": [1.0], "b": [2.0]}, 3)["tau"])


def test_shipped_calibrations_load_and_name_their_command():
    files = sorted(
        (Path(__file__).resolve().parent.parent / "configs" / "calibration").glob("*.yaml")
    )
    assert files, "configs/calibration/ should ship at least the SST-2 calibration"
    for path in files:
        cfg = EnvConfig.from_yaml(path)
        assert (
            cfg.learning.backend == "surrogate"
        )  # a calibration changes constants, not the backend
        assert path.name.startswith(cfg.learning.task + "_")
        assert cfg.learning.surrogate != SurrogateConfig()
        header = path.read_text().splitlines()[1]
        assert header.startswith("# Written by: python -m fedenv.calibrate fit "), header


def test_update_markdown_replaces_only_its_block(tmp_path):
    doc = tmp_path / "fidelity.md"
    doc.write_text("# Fidelity\n\nhand-written prose\n")
    update_markdown(doc, "sst2", "first")
    update_markdown(doc, "qnli", "other")
    update_markdown(doc, "sst2", "second")
    text = doc.read_text()
    assert text.startswith("# Fidelity\n\nhand-written prose\n")
    assert "second" in text and "first" not in text and "other" in text


def test_cli_collect_fit_report(tmp_path, capsys):
    traces = tmp_path / "t.jsonl"
    calib = tmp_path / "calib.yaml"
    doc = tmp_path / "fidelity.md"
    truth = tmp_path / "truth.yaml"
    truth.write_text(yaml.safe_dump({"learning": {"surrogate": TRUE.to_dict()}}))
    common = ["--backend", "surrogate"]
    main(
        [
            "collect",
            *common,
            "--rounds",
            "6",
            "--calibration",
            str(truth),
            "--policies",
            "explore",
            "explore:min_participation=0.6",
            "--seeds",
            "0",
            "1",
            "2",
            "--out",
            str(traces),
            "--no-progress",
        ]
    )
    assert (tmp_path / "t.config.yaml").is_file()
    main(
        [
            "fit",
            "--traces",
            str(traces),
            *common,
            "--heldout-seeds",
            "2",
            "--starts",
            "1",
            "--loss",
            "soft_l1",
            "--out",
            str(calib),
        ]
    )
    cfg = EnvConfig.from_yaml(calib)
    assert cfg.learning.task == "sst2"
    assert cfg.learning.surrogate.step_size == pytest.approx(TRUE.step_size, rel=1e-3)
    assert "# Written by: python -m fedenv.calibrate fit" in calib.read_text()
    report = ["report", "--traces", str(traces), *common, "--calibration", str(calib)]
    main(
        [
            *report,
            "--heldout-seeds",
            "2",
            "--out",
            str(doc),
            "--json",
            str(tmp_path / "r.json"),
        ]
    )
    figures = json.loads((tmp_path / "r.json").read_text())
    assert figures["heldout_seeds"] == [2] and len(figures["rows"]) == 2
    assert figures["noise"]["seeds"] == [0, 1, 2] and len(figures["noise"]["pairs"]) == 3
    assert "<!-- BEGIN generated: sst2 -->" in doc.read_text()
    assert "Kendall tau-b" in capsys.readouterr().out
    # traces of held-out seeds only (a check run such as the 50-round one) report too
    main(
        [
            *report,
            "--heldout-seeds",
            "0",
            "1",
            "2",
            "--block",
            "all_heldout",
            "--out",
            str(doc),
        ]
    )
    assert "Held-out seeds: 0, 1, 2." in capsys.readouterr().out
    with pytest.raises(SystemExit, match="nothing left to fit"):
        main(["fit", "--traces", str(traces), *common, "--heldout-seeds", "0", "1", "2"])
    main(["inventory", "--traces", str(tmp_path), "--out", str(doc)])
    out = capsys.readouterr().out
    assert (
        "| `t.jsonl` | `explore` | 0, 1, 2 | 6 |" in out
        and "| `t.jsonl` | `explore:min_participation=0.6` | 0, 1, 2 | 6 |" in out
    )
    assert "In all: 6 complete episodes, 36 rounds" in out
    text = doc.read_text()
    assert (
        "<!-- BEGIN generated: inventory -->" in text and "<!-- BEGIN generated: sst2 -->" in text
    )


ROOT = Path(__file__).resolve().parent.parent
GENERATED = re.compile(
    r"<!-- BEGIN generated: (\S+) -->\n(.*?)<!-- END generated: \1 -->", re.DOTALL
)


def _uncommitted(argv: list[str]) -> list[str]:
    """The trace paths of a calibrate command line that are not in the repository (git-ignored
    results/)."""
    return [t for t in build_parser().parse_args(argv).traces if Path(t).parts[:1] == ("results",)]


def _without_command(block: str) -> str:
    return re.sub(r"^Generated by `[^`]*`\.$", "", block, flags=re.MULTILINE)


def test_fidelity_page_reruns_from_the_committed_traces(tmp_path, monkeypatch, capsys):
    """Every generated block of docs/fidelity.md comes back from the command it names, on the traces
    in the repository."""
    doc = (ROOT / "docs" / "fidelity.md").read_text()
    blocks = GENERATED.findall(doc)
    assert {"inventory", "sst2"} <= {name for name, _ in blocks}
    monkeypatch.chdir(ROOT)
    for name, body in blocks:
        argv = shlex.split(
            re.search(r"Generated by `python -m fedenv.calibrate (.+?)`", body).group(1)
        )
        assert not _uncommitted(argv), f"block {name} reads uncommitted traces: {argv}"
        for flag in ("--out", "--json"):  # write into a copy of the page, and no JSON
            if flag in argv:
                i = argv.index(flag)
                del argv[i : i + 2]
        copy = tmp_path / "fidelity.md"
        copy.write_text(doc)
        main([*argv, "--out", str(copy)])
        capsys.readouterr()
        again = dict(GENERATED.findall(copy.read_text()))[name]
        assert _without_command(again) == _without_command(body), (
            f"docs/fidelity.md block {name!r} is not what its command gives"
        )


@pytest.mark.slow
def test_shipped_calibrations_refit_from_the_committed_traces(tmp_path, monkeypatch, capsys):
    """The command in a shipped calibration's header, rerun on the committed traces, writes the same
    constants."""
    monkeypatch.chdir(ROOT)
    checked = 0
    for path in sorted((ROOT / "configs" / "calibration").glob("*.yaml")):
        argv = shlex.split(
            path.read_text()
            .splitlines()[1]
            .removeprefix("# Written by: python -m fedenv.calibrate ")
        )
        if _uncommitted(argv):
            continue  # fitted to traces that are not in the repository (say so in docs/fidelity.md)
        i = argv.index("--out")
        argv[i + 1] = str(tmp_path / path.name)
        main(argv)
        capsys.readouterr()
        fitted = EnvConfig.from_yaml(tmp_path / path.name).learning.surrogate.to_dict()
        shipped = EnvConfig.from_yaml(path).learning.surrogate.to_dict()
        # the constants are written to 6 significant digits (fit.py), and the fit's optimum moves
        # in the last of them between CPUs (NumPy's float64 math differs in the last bit between
        # its AVX-512 and AVX2 code): equal to one unit of the 6th digit
        assert fitted == pytest.approx(shipped, rel=1e-5), path.name
        checked += 1
    assert checked, "no shipped calibration names committed traces in its fit command"
