"""The lora backend on the real all-MiniLM-L6-v2 and ../shared/data/glue (slow: about 2 minutes on 2
cores)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

import gymnasium as gym  # noqa: E402

import fedenv  # noqa: E402, F401
from fedenv.config import EnvConfig  # noqa: E402
from fedenv.learning.lora import LoraLearner  # noqa: E402

pytestmark = pytest.mark.slow


def _config(glue_dir: Path, **learning: object) -> EnvConfig:
    lora = {"data_dir": str(glue_dir), "eval_samples": 400, "num_threads": 2}
    lora.update(learning.pop("lora", {}))  # type: ignore[arg-type]
    return EnvConfig.from_dict(
        {
            "num_rounds": 6,
            "devices": {"num_devices": 5, "local_steps": 10, "batch_size": 16},
            "learning": {"backend": "lora", "lora": lora, **learning},
        }
    )


def test_minilm_payload_counts_match_the_spec(glue_dir: Path):
    learner = LoraLearner(_config(glue_dir))
    assert (
        learner.params_per_rank == 9216
    )  # 6 layers x (query, value) x (384 + 384), docs/model.md §3.2
    assert learner.head_params == 770  # 384 x 2 + 2
    assert len(learner.data.train) == 67349 and len(learner.data.eval) == 872


def test_a_few_sst2_rounds_raise_dev_accuracy_well_above_chance(glue_dir: Path):
    learner = LoraLearner(_config(glue_dir))
    learner.reset(5, np.random.default_rng(0))
    first = learner.initial_report()
    accs = [first.accuracy]
    for _ in range(6):
        accs.append(learner.train_round(np.full(5, 8), np.ones(5), np.ones(5, dtype=bool)).accuracy)
    assert first.accuracy < 0.6
    assert max(accs[-2:]) > 0.72, accs


def test_batched_and_sequential_agree_on_minilm(glue_dir: Path):
    from fedenv.learning.lora.model import load_model
    from fedenv.learning.lora.training import DeviceJob, SequentialTrainer

    learner = LoraLearner(_config(glue_dir))
    learner.reset(3, np.random.default_rng(1))
    model, _, _ = load_model("all-MiniLM-L6-v2", 2)
    seq = SequentialTrainer(
        model,
        learner.spec,
        learner.trainer.settings,
        learner.data.train,
        learner.trainer.pad_id,
        learner.device,
    )
    ranks = np.array([2, 16, 8])
    jobs = [
        DeviceJob(device=j.device, rank=j.rank, batches=j.batches[:2])
        for j in learner.local_jobs(np.arange(3), ranks)
    ]
    assert learner.adapter is not None
    for x, y in zip(
        learner.trainer.train(learner.adapter, jobs), seq.train(learner.adapter, jobs), strict=True
    ):
        for p in learner.spec.targets:
            torch.testing.assert_close(x.a[p], y.a[p], atol=2e-5, rtol=0)
            torch.testing.assert_close(x.b[p], y.b[p], atol=2e-5, rtol=0)


def test_qnli_runs_on_the_seeded_dev_split(glue_dir: Path):
    cfg = _config(glue_dir, task="qnli", lora={"eval_samples": 200}).replace(
        num_rounds=2, devices={"num_devices": 3, "local_steps": 3}
    )
    env = gym.make("FedLoRAWireless-v0", config=cfg)
    obs, info = env.reset(seed=0)
    assert "qnli has no local train split" in info["data_notes"]["split"]
    assert "4463 train / 1000 eval" in info["data_notes"]["split"]
    # all-MiniLM-L6-v2 is a bi-encoder: the question and the sentence are encoded apart
    assert info["data_notes"]["pair_encoding"] == "separate"
    for _ in range(2):
        obs, reward, term, trunc, info = env.step(env.action_space.sample())
        assert np.isfinite(reward) and 0.0 <= info["accuracy"] <= 1.0 and np.isfinite(info["loss"])
    assert trunc
    env.close()
