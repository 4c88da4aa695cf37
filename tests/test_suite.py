"""The objective (baselines/objective.py) and the suite's results table (baselines/suite.py)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from baselines import suite
from baselines.evaluation import evaluate
from baselines.objective import constrained_score, in_budget, objective_summary, paired_difference
from baselines.registry import make_policy
from fedenv.config import calibration_surrogate, resolve_config

ROOT = Path(__file__).resolve().parents[1]
TINY = resolve_config(str(ROOT / "configs/scenarios/tiny.yaml"))


def test_constrained_score_puts_every_setting_in_budget_first() -> None:
    assert in_budget(0.95) and not in_budget(0.9499) and in_budget(math.nan)
    in_low, in_high = constrained_score(0.70, 1.0, 0.9), constrained_score(0.80, 0.95, 1.04)
    out_acc, out_less = constrained_score(0.90, 0.5, 1.5), constrained_score(0.10, 0.0, 1.2)
    assert in_high > in_low > out_less > out_acc  # in budget by accuracy; out by least overspend
    assert constrained_score(0.8, 0.5, math.nan) == -math.inf


def test_objective_summary_and_the_paired_difference() -> None:
    seeds = [1000, 1001, 1002]
    lyap = evaluate(make_policy("lyapunov", TINY), TINY, seeds)
    top = evaluate(make_policy("max", TINY), TINY, seeds)
    s = objective_summary(top)
    assert s["compliance"] == pytest.approx(np.mean([e["in_budget"] for e in top.episodes]))
    assert s["final_accuracy"] == pytest.approx(top.metric("final_accuracy").mean())
    diff, half = paired_difference(top, lyap)
    d = top.metric("final_accuracy") - lyap.metric("final_accuracy")
    assert diff == pytest.approx(d.mean()) and half == pytest.approx(
        4.302652729 * d.std(ddof=1) / math.sqrt(3), rel=1e-6
    )  # the paired interval (t_0.975 with 2 dof), not the two unpaired ones
    with pytest.raises(ValueError, match="same seeds"):
        paired_difference(top, evaluate(make_policy("max", TINY), TINY, [1, 2, 3]))


def _sweep_rows(spec: list[tuple[float, float, float, float]]) -> list[dict[str, Any]]:
    """run_sweep's rows from (V, accuracy, share of episodes in budget, worst use)."""
    return [
        {
            "V": v,
            "final_accuracy": acc,
            "final_accuracy_ci95": 0.0,
            "in_budget": share,
            "in_budget_ci95": 0.0,
            "worst_budget_use": worst,
            "worst_budget_use_ci95": 0.0,
        }
        for v, acc, share, worst in spec
    ]


def test_v_is_tuned_on_the_validation_seeds_by_the_objective(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[list[int]] = []
    table = [(0.01, 0.86, 0.90, 1.2), (0.1, 0.85, 1.0, 0.9), (1.0, 0.84, 1.0, 0.8)]

    def fake_sweep(config: Any, values: Any, seeds: list[int], **kw: Any) -> list[dict[str, Any]]:
        seen.append(list(seeds))
        return _sweep_rows(table)

    monkeypatch.setattr(suite, "run_sweep", fake_sweep)
    v, rows = suite.tune_v(TINY, [0.01, 0.1, 1.0], [7, 8])
    assert v == 0.1 and seen == [[7, 8]]  # the most accurate V in budget, not the most accurate
    assert [r["chosen"] for r in rows] == [False, True, False]
    assert [r["in_budget"] for r in rows] == [False, True, True]
    table = [(0.01, 0.86, 0.5, 1.4), (0.1, 0.85, 0.0, 1.1), (1.0, 0.84, 0.9, 1.3)]
    assert suite.tune_v(TINY, [0.01, 0.1, 1.0], [7])[0] == 0.1  # none in budget: least overspend
    with pytest.raises(ValueError, match="must not overlap the test seeds"):
        suite.objective_rows("x", TINY, [1, 2], [2, 3], v_values=[0.1])


def test_objective_rows_pair_every_policy_with_the_tuned_lyapunov_policy() -> None:
    split = resolve_config("split", num_rounds=5, devices={"num_devices": 3})
    seeds, val = [1000, 1001, 1002], [100000, 100001]
    rows, tuning = suite.objective_rows(
        "tiny_split", split, seeds, val, v_values=[0.1, 1.0], heuristics=["max", "min_rank"]
    )
    chosen = [r["V"] for r in tuning if r["chosen"]]
    assert len(chosen) == 1 and rows[0]["policy"] == f"lyapunov(V={chosen[0]:g})"
    assert [r["kind"] for r in rows] == ["lyapunov", "heuristic"]  # min_rank cannot act on split
    assert math.isnan(rows[0]["diff"]) and {r["setting"] for r in rows + tuning} == {"tiny_split"}
    lyap = evaluate(make_policy(f"lyapunov:V={chosen[0]!r}", split), split, seeds)
    top = evaluate(make_policy("max", split), split, seeds)
    assert rows[1]["diff"] == pytest.approx(paired_difference(top, lyap)[0])
    assert rows[1]["compliance"] == pytest.approx(np.mean(top.metric("in_budget")))
    table = suite.objective_table(rows)
    assert "| tiny_split | max | " in table and "Δ accuracy vs Lyapunov (paired)" in table


def test_the_command_writes_the_tables_and_replaces_only_the_docs_block(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(f"# Suite\n\nprose before\n\n{suite.BEGIN}\nold table\n{suite.END}\n\nafter\n")
    out = tmp_path / "out"
    rows = suite.main(
        [
            "--scenarios", "tight_energy", "--seeds", "1000-1001", "--val-seeds",
            "100000-100001", "--V", "0.1,1", "--policies", "max", "--out", str(out),
            "--docs", str(page),
        ]
    )  # fmt: skip
    assert [r["policy"] for r in rows][1:] == ["max"] and rows[0]["kind"] == "lyapunov"
    text = page.read_text()
    assert text.startswith("# Suite\n\nprose before\n\n" + suite.BEGIN) and text.endswith(
        suite.END + "\n\nafter\n"
    )
    assert "old table" not in text and "python -m baselines.suite --scenarios tight_energy" in text
    assert "| tight_energy | max |" in text and (out / "suite.csv").is_file()
    assert (out / "tuning.csv").read_text().count("\n") == 3  # header + 2 V values
    with pytest.raises(ValueError, match="needs the lines"):
        suite.replace_block(tmp_path / "out" / "suite.md", "x")


def test_calibration_and_set_apply_to_every_scenario(tmp_path: Path, capsys) -> None:
    # QNLI's constants differ from the defaults whether or not the SST-2 ones become them
    calibration = ROOT / "configs/calibration/qnli_minilm.yaml"
    args = ["--seeds", "1000-1001", "--val-seeds", "100000", "--V", "0.1", "--policies", "max"]
    rows = suite.main(
        ["--scenarios", "tight_energy", *args, "--out", str(tmp_path), "--calibration",
         str(calibration), "--set", "num_rounds=4"]
    )  # fmt: skip
    cfg = suite.scenario_config(
        "tight_energy", num_rounds=4, learning={"surrogate": calibration_surrogate(calibration)}
    )
    plain = suite.scenario_config("tight_energy", num_rounds=4)
    top, top_plain = (
        evaluate(make_policy("max", c), c, [1000, 1001]).metric("final_accuracy").mean()
        for c in (cfg, plain)
    )
    assert rows[1]["policy"] == "max"
    assert rows[1]["final_accuracy"] == pytest.approx(top)
    assert top != pytest.approx(top_plain)  # the calibration changes the result
    assert "--calibration" in (tmp_path / "suite.md").read_text()
    for bad, says in [
        (["--set", "num_round=4"], "num_round"),
        (["--calibration", str(tmp_path / "none.yaml")], "none.yaml"),
    ]:
        with pytest.raises(SystemExit) as exc:
            suite.main(["--scenarios", "tight_energy", *args, "--out", str(tmp_path), *bad])
        assert exc.value.code == 2 and says in capsys.readouterr().err


def test_agent_options_name_a_scenario_or_apply_to_all() -> None:
    names = ["tight_energy", "large_cell"]
    got = suite._agents(["tight_energy=ppo:runs/a", "ppo:runs/b=c"], names)
    assert got == {"tight_energy": ["ppo:runs/a", "ppo:runs/b=c"], "large_cell": ["ppo:runs/b=c"]}
    with pytest.raises(ValueError, match="unknown scenario 'tight'"):
        suite._agents(["tight=ppo:runs/a"], names)
