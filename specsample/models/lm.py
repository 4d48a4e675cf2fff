"""`LM`: a model ready for decoding (config, parameters, tokenizer fingerprint)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import jax
import numpy as np

from specsample.models import transformer as tr


@dataclasses.dataclass(frozen=True)
class LM:
  """A model ready for decoding.

  Attributes:
    config: its TransformerConfig.
    params: parameter pytree (arrays, possibly sharded).
    tokenizer_id: identifies the tokenizer (e.g. a hash of the sentencepiece
      model); draft and target must agree when both are set.
  """
  config: tr.TransformerConfig
  params: Any
  tokenizer_id: str | None = None


# Config fields that do not change what a model computes on a valid prompt.
RUNTIME_FIELDS = ("max_seq_len", "dtype", "param_dtype")


def params_fingerprint(model: LM) -> str:
  """sha256 of a model's architecture and float32 parameter bytes: the identity of a
  target (a recorded set, a feature draft and a KV predictor name the models they were
  made from by it).

  max_seq_len and the dtypes are left out: they size the caches and set the
  arithmetic, not the function, so a target loaded with another context length (or
  bfloat16 compute) keeps its identity and its drafts.
  """
  fields = {k: v for k, v in dataclasses.asdict(model.config).items()
            if k not in RUNTIME_FIELDS}
  h = hashlib.sha256(json.dumps(fields, sort_keys=True).encode())
  for leaf in jax.tree_util.tree_leaves(jax.device_get(model.params)):
    h.update(np.ascontiguousarray(np.asarray(leaf, np.float32)).tobytes())
  return h.hexdigest()[:16]
