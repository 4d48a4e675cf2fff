"""`LM`: a model ready for decoding (config, parameters, tokenizer fingerprint)."""

from __future__ import annotations

import dataclasses
from typing import Any

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
