"""The health study's arithmetic (fedenv.learning.lora.health): seed lists and the spread
summary."""

from __future__ import annotations

import argparse

import pytest

from fedenv.learning.lora.health import parse_seeds, summarize


def test_seed_lists_take_ranges_and_lists():
    assert parse_seeds("0-5") == [0, 1, 2, 3, 4, 5]
    assert parse_seeds("0-2,9") == [0, 1, 2, 9]
    assert parse_seeds("7") == [7]
    for bad in ("a", "1-", "-3", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError, match="seeds must look like"):
            parse_seeds(bad)


def test_summary_of_the_spread():
    curves = {
        0: [0.50, 0.60, 0.70, 0.66, 0.80, 0.70, 0.82],
        1: [0.50, 0.52, 0.68, 0.72, 0.64, 0.79, 0.78],
    }
    s = summarize(curves)
    assert s["final_mean"] == pytest.approx(0.80)
    assert s["final_std"] == pytest.approx(0.02 * 2**0.5)  # sample std of 0.82 and 0.78
    assert s["min_after_round_3"] == pytest.approx(0.64)  # rounds 4 and later only
    assert s["rounds_below_0.65_after_round_3"] == 1
    assert s["first_round_at_0.65"] == [2, 2]
    assert s["largest_drop"] == pytest.approx(0.10)  # seed 0, round 4 -> 5
    assert s["mean_last5"] == pytest.approx((0.736 + 0.722) / 2)
