"""The checks and shapes of one decode setting, before anything compiles.

`prepare` validates every argument of `generate` that can be checked without
compiling (one ValueError naming the field and its allowed values), pads the
prompts and sizes the buffers; decoding/api.py runs the loop.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from specsample.decoding import calibrate, common, coupling
from specsample.decoding.lookup import PromptLookup
from specsample.decoding.sampling import Sampling
from specsample.models import feature_draft as fd
from specsample.models.lm import LM
from specsample.utils import is_int, is_positive_int, round_up

METHODS = ("autoregressive", "speculative")

def _is_seed(x) -> bool:
  return isinstance(x, (int, np.integer)) and not isinstance(x, bool) and 0 <= x < coupling.SEED_LIMIT


def check_seed(seed, sampling: Sampling, num_rows: int) -> None:
  """An int, or under coupling='gumbel' one int per row; ValueError naming `seed` otherwise."""
  if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
    if sampling.coupling == "gumbel" and not _is_seed(seed):
      raise ValueError(f"seed must be in [0, 2**32) with sampling.coupling='gumbel', got {seed}")
    return
  if not isinstance(seed, (list, tuple, np.ndarray)):
    raise ValueError(f"seed must be an int or (with sampling.coupling='gumbel') a sequence of one "
                     f"int per prompt, got {type(seed).__name__}")
  if sampling.coupling != "gumbel":
    raise ValueError(f"seed: one seed per row needs sampling.coupling='gumbel' (got "
                     f"coupling={sampling.coupling!r}, which draws a whole batch from one key)")
  if len(seed) != num_rows:
    raise ValueError(f"seed: {len(seed)} per-row seeds for {num_rows} prompts; give one per prompt")
  for i, s in enumerate(seed):
    if not _is_seed(s):
      raise ValueError(f"seed[{i}] must be an int in [0, 2**32), got {s!r}")


Draft = LM | fd.FeatureDraft | PromptLookup


def as_draft(draft):
  """'prompt_lookup' is PromptLookup(); anything else is returned as it is."""
  return PromptLookup() if isinstance(draft, str) and draft == "prompt_lookup" else draft


def check_draft(target: LM, draft, num_draft) -> None:
  """ValueError naming the setting for a draft that cannot run with these settings."""
  if isinstance(draft, str):
    raise ValueError(f"draft must be an LM, a FeatureDraft, a PromptLookup or 'prompt_lookup', "
                     f"got {draft!r}")
  if not isinstance(draft, (LM, fd.FeatureDraft, PromptLookup)):
    raise ValueError(f"draft must be an LM, a FeatureDraft (models/feature_draft.py) or a "
                     f"PromptLookup, got {type(draft).__name__}")
  if isinstance(draft, PromptLookup):
    draft.validate()
  if isinstance(draft, PromptLookup) and is_int(num_draft) and not is_positive_int(num_draft):
    raise ValueError(f"num_draft must be an int >= 1, 'auto' or a set with draft='prompt_lookup' "
                     f"(K = 0 alone drafts nothing), got {num_draft!r}")
  if isinstance(draft, fd.FeatureDraft):
    draft.config.validate(target.config)
  vocab = draft.config.vocab_size if isinstance(draft, LM) else (
      draft.config.block.vocab_size if isinstance(draft, fd.FeatureDraft) else target.config.vocab_size)
  if vocab != target.config.vocab_size:
    raise ValueError(f"draft and target vocabularies differ: draft vocab_size={vocab}, target "
                     f"vocab_size={target.config.vocab_size}")
  draft_tok = getattr(draft, "tokenizer_id", None)
  if draft_tok and target.tokenizer_id and draft_tok != target.tokenizer_id:
    raise ValueError(f"draft and target tokenizers differ: {draft_tok!r} vs {target.tokenizer_id!r}")


def check_settings(target: LM, draft: Draft | None, method: str, num_draft,
                   sampling: Sampling, max_new_tokens: int, eos_id: int | None,
                   seed: int | Sequence[int] = 0, num_rows: int = 1) -> None:
  """Raises ValueError naming the offending setting. Cheap; no compilation."""
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")
  sampling.validate()
  check_seed(seed, sampling, num_rows)
  if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
  if eos_id is not None and not 0 <= eos_id < target.config.vocab_size:
    raise ValueError(f"eos_id must be in [0, {target.config.vocab_size}), got {eos_id}")
  if method == "speculative":
    if draft is None:
      raise ValueError("method='speculative' needs a draft: a draft model (draft=LM(...)), a "
                       "feature draft or draft='prompt_lookup'")
    check_draft(target, draft, num_draft)
    calibrate.draft_choices(num_draft)


def pad_prompts(prompts: Sequence[Sequence[int]], vocab_size: int, pad_to: int
                ) -> tuple[np.ndarray, np.ndarray]:
  """Right-pads prompts to a multiple of `pad_to`. Returns ([B, P] ids, [B] lengths)."""
  if len(prompts) == 0:
    raise ValueError("prompts is empty: pass at least one prompt")
  lengths = np.array([len(p) for p in prompts], np.int32)
  if (lengths == 0).any():
    raise ValueError(f"prompt {int(np.argmin(lengths))} is empty: every prompt needs >= 1 token "
                     "(e.g. the tokenizer's bos id)")
  width = round_up(int(lengths.max()), pad_to)
  out = np.zeros((len(prompts), width), np.int32)
  for i, p in enumerate(prompts):
    p = np.asarray(p)
    if p.min() < 0 or p.max() >= vocab_size:
      raise ValueError(f"prompt {i} has token ids outside [0, {vocab_size})")
    out[i, :len(p)] = p
  return out, lengths


def buffer_len(prompt_width: int, max_new_tokens: int, num_draft: int, method: str,
               pad_to: int) -> int:
  """Token-buffer / KV-cache length of a decode loop: the padded prompt, the
  new tokens and one block of overshoot, rounded up to `pad_to`."""
  slack = (num_draft + 1) if method == "speculative" else 1
  return round_up(prompt_width + max_new_tokens + slack, pad_to)


def prepare(target: LM, draft: LM | None, prompts: Sequence[Sequence[int]], method: str,
            num_draft, sampling: Sampling, max_new_tokens: int, eos_id: int | None,
            pad_to: int, seed: int | Sequence[int] = 0
            ) -> tuple[np.ndarray, np.ndarray, common.DecodeSpec]:
  """Checks every setting and pads the prompts, before anything compiles.

  Returns:
    ([B, P] padded prompts, [B] prompt lengths, the loop's DecodeSpec).
  """
  check_settings(target, draft, method, num_draft, sampling, max_new_tokens, eos_id, seed,
                 len(prompts))
  prompts_BP, prompt_len = pad_prompts(prompts, target.config.vocab_size, pad_to)
  speculative_ = method == "speculative"
  largest_k = calibrate.max_draft(num_draft) if speculative_ else 0
  length = buffer_len(prompts_BP.shape[1], max_new_tokens, largest_k, method, pad_to)
  models = [target.config] + ([draft.config] if isinstance(draft, LM) and speculative_ else [])
  if isinstance(draft, fd.FeatureDraft) and speculative_:
    models.append(draft.config.block)
    if prompt_len.min() < 2:
      raise ValueError(f"prompt {int(np.argmin(prompt_len))} has 1 token: a feature draft reads "
                       "the target's feature before the last prompt token, so prompts need >= 2")
  for name, m in zip(("target", "draft"), models):
    if length > m.max_seq_len:
      raise ValueError(
          f"prompt length {int(prompt_len.max())} + max_new_tokens {max_new_tokens} needs a "
          f"{name} cache of {length} positions, above its max_seq_len={m.max_seq_len}; "
          "lower max_new_tokens or shorten the prompts")
  spec = common.DecodeSpec(sampling=sampling, max_new_tokens=max_new_tokens,
                           eos_id=None if eos_id is None else int(eos_id),
                           num_draft=largest_k, buffer_len=length,
                           draft_choices=calibrate.draft_choices(num_draft) if speculative_ else ())
  return prompts_BP, prompt_len, spec
