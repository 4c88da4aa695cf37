"""Smoke tests of the benchmark command (``python -m fedenv.bench``, i.e. ``benchmarks.cli``): it
runs and writes JSON.

The figures themselves are checked by reading the benchmark output (docs/benchmarks.md), not by
timed tests.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from benchmarks import cli as bench


def _run(name: str, tmp_path) -> dict:
    bench.main([name, "--quick", "--out", str(tmp_path)])
    return json.loads((tmp_path / f"{name}.json").read_text())


def test_env_benchmark_quick(tmp_path, capsys):
    result = _run("env", tmp_path)
    out = capsys.readouterr().out
    assert "CartPole-v1" in out and "ratio" in out
    assert result["benchmark"] == "env" and result["machine"]["cpus"] >= 1
    assert result["env_steps_per_s"] > 0 and result["cartpole_steps_per_s"] > 0
    assert result["ratio_to_cartpole"] == pytest.approx(
        result["env_steps_per_s"] / result["cartpole_steps_per_s"]
    )
    assert set(result["k_scaling"]) == {"10", "100", "1000"}


def test_vector_benchmark_quick(tmp_path, capsys):
    result = _run("vector", tmp_path)
    assert set(result["vector"]) == {"1", "16", "64"}
    assert all(row["env_steps_per_s"] > 0 for row in result["vector"].values())
    assert result["sync_vector_env"]["env_steps_per_s"] > 0
    # the ratios to CartPole-v1 timed in the same run (issue 19's target is one of them)
    assert result["cartpole_steps_per_s"] > 0
    assert set(result["ratio_to_cartpole"]) == {"1", "16", "64"}
    for n, ratio in result["ratio_to_cartpole"].items():
        sps = result["vector"][n]["env_steps_per_s"]
        assert ratio == pytest.approx(sps / result["cartpole_steps_per_s"])
    assert "CartPole-v1" in capsys.readouterr().out


def test_unknown_benchmark_is_rejected_with_the_choices(capsys):
    with pytest.raises(SystemExit):
        bench.main(["nonsense"])
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("module", ["fedenv.bench", "benchmarks"])
def test_module_entry_point_lists_sub_commands(module):
    """``python -m fedenv.bench`` (the documented command, through its entry point) is
    ``python -m benchmarks``."""
    out = subprocess.run(
        [sys.executable, "-m", module, "--help"], capture_output=True, text=True, check=True
    ).stdout
    for name in ("env", "vector", "ppo", "lyapunov", "lora", "rllib", "all"):
        assert name in out


def test_fedenv_bench_runs_the_benchmarks_command(monkeypatch):
    from fedenv import bench as alias

    called = []
    monkeypatch.setattr(bench, "main", called.append)
    alias.main(["env", "--quick"])
    assert called == [["env", "--quick"]]


def test_every_registered_benchmark_resolves():
    for name, target in bench.BENCHES.items():
        module, func = target.split(":")
        if name in ("lora", "rllib", "ppo"):  # optional extras; import them only where installed
            continue
        assert callable(bench._resolve(target)), name


@pytest.mark.slow
def test_ppo_benchmark_quick(tmp_path):
    pytest.importorskip("stable_baselines3")
    result = _run("ppo", tmp_path)
    assert (
        set(result["frames_per_s"])
        == set(result["env_us_per_frame"])
        == {
            f"{kind}_{env}"
            for kind in ("dummy", "batched", "training")
            for env in ("trivial", "fedlora")
        }
    )
    assert (
        0 < result["dummy_ratio"]
        and 0 < result["batched_ratio"]
        and 0 < result["training_ratio"]
        and result["training_env_cost"] < 1
    )
