"""`LM`: a model ready for decoding (config, parameters, tokenizer fingerprint)."""

from __future__ import annotations

import dataclasses
import hashlib
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


def params_fingerprint(model: LM) -> str:
  """sha256 of a model's config and parameter bytes: the identity of a target (a
  recorded set and a feature draft name the target they were made from by it)."""
  h = hashlib.sha256(repr(model.config).encode())
  for leaf in jax.tree_util.tree_leaves(jax.device_get(model.params)):
    h.update(np.ascontiguousarray(leaf).tobytes())
  return h.hexdigest()[:16]
