"""`generate`: the one public entry point for autoregressive and speculative sampling.

    from specsample.decoding import LM, Sampling, generate
    out = generate(target, prompts, draft=draft, method="speculative", num_draft=4,
                   sampling=Sampling(temperature=0.8, top_p=0.95), max_new_tokens=128,
                   eos_id=tokenizer.eos_id, seed=0)
    out.tokens[0], out.stats["tokens_per_call"][0]

Every setting is checked before anything is compiled. Prompts are padded to a
multiple of `pad_to` and the buffer length is rounded the same way, so calls
with new prompts of similar length reuse the compiled loop.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from specsample.decoding import autoregressive, common, speculative
from specsample.decoding.sampling import Sampling
from specsample.models import transformer as tr

METHODS = ("autoregressive", "speculative")

# Number of times a decode loop was traced (= compiled) in this process. Tests
# use it to check that new prompts of the same shape do not recompile.
TRACE_COUNT = {"autoregressive": 0, "speculative": 0}


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


@dataclasses.dataclass
class GenerateOutput:
  """Generated token ids per row (prompt excluded) and per-row statistics.

  stats keys, each an int/float numpy array [B]: target_calls, drafted,
  accepted, new_tokens, tokens_per_call, acceptance_rate (accepted / drafted).
  """
  tokens: list[list[int]]
  stats: dict[str, np.ndarray]


@functools.partial(jax.jit, static_argnames=("target_cfg", "spec"))
def _ar_jit(target_cfg, spec, target_params, prompts, prompt_len, key):
  TRACE_COUNT["autoregressive"] += 1
  s = autoregressive.autoregressive_loop(target_cfg, spec, target_params, prompts, prompt_len, key)
  zeros = jnp.zeros_like(s.target_calls)
  return s.tokens, s.length, s.target_calls, zeros, zeros


@functools.partial(jax.jit, static_argnames=("target_cfg", "draft_cfg", "spec"))
def _spec_jit(target_cfg, draft_cfg, spec, target_params, draft_params, prompts, prompt_len, key):
  TRACE_COUNT["speculative"] += 1
  s = speculative.speculative_loop(target_cfg, draft_cfg, spec, target_params, draft_params,
                                   prompts, prompt_len, key)
  return s.tokens, s.length, s.target_calls, s.drafted, s.accepted


def _round_up(x: int, multiple: int) -> int:
  return -(-x // multiple) * multiple


def check_settings(target: LM, draft: LM | None, method: str, num_draft: int,
                   sampling: Sampling, max_new_tokens: int, eos_id: int | None) -> None:
  """Raises ValueError naming the offending setting. Cheap; no compilation."""
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")
  sampling.validate()
  if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
  if eos_id is not None and not 0 <= eos_id < target.config.vocab_size:
    raise ValueError(f"eos_id must be in [0, {target.config.vocab_size}), got {eos_id}")
  if method == "speculative":
    if draft is None:
      raise ValueError("method='speculative' needs a draft model (draft=LM(...))")
    if not isinstance(num_draft, int) or isinstance(num_draft, bool) or num_draft < 1:
      raise ValueError(f"num_draft (the paper's K) must be an int >= 1, got {num_draft!r}")
    if draft.config.vocab_size != target.config.vocab_size:
      raise ValueError(f"draft and target vocabularies differ: draft vocab_size="
                       f"{draft.config.vocab_size}, target vocab_size={target.config.vocab_size}")
    if draft.tokenizer_id and target.tokenizer_id and draft.tokenizer_id != target.tokenizer_id:
      raise ValueError(f"draft and target tokenizers differ: {draft.tokenizer_id!r} vs "
                       f"{target.tokenizer_id!r}")


def pad_prompts(prompts: Sequence[Sequence[int]], vocab_size: int, pad_to: int
                ) -> tuple[np.ndarray, np.ndarray]:
  """Right-pads prompts to a multiple of `pad_to`. Returns ([B, P] ids, [B] lengths)."""
  if len(prompts) == 0:
    raise ValueError("prompts is empty: pass at least one prompt")
  lengths = np.array([len(p) for p in prompts], np.int32)
  if (lengths == 0).any():
    raise ValueError(f"prompt {int(np.argmin(lengths))} is empty: every prompt needs >= 1 token "
                     "(e.g. the tokenizer's bos id)")
  width = _round_up(int(lengths.max()), pad_to)
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
  return _round_up(prompt_width + max_new_tokens + slack, pad_to)


def prepare(target: LM, draft: LM | None, prompts: Sequence[Sequence[int]], method: str,
            num_draft: int, sampling: Sampling, max_new_tokens: int, eos_id: int | None,
            pad_to: int) -> tuple[np.ndarray, np.ndarray, common.DecodeSpec]:
  """Checks every setting and pads the prompts, before anything compiles.

  Returns:
    ([B, P] padded prompts, [B] prompt lengths, the loop's DecodeSpec).
  """
  check_settings(target, draft, method, num_draft, sampling, max_new_tokens, eos_id)
  prompts_BP, prompt_len = pad_prompts(prompts, target.config.vocab_size, pad_to)
  length = buffer_len(prompts_BP.shape[1], max_new_tokens, num_draft, method, pad_to)
  models = [target] + ([draft] if method == "speculative" else [])
  for name, m in zip(("target", "draft"), models):
    if length > m.config.max_seq_len:
      raise ValueError(
          f"prompt length {int(prompt_len.max())} + max_new_tokens {max_new_tokens} needs a "
          f"{name} cache of {length} positions, above its max_seq_len={m.config.max_seq_len}; "
          "lower max_new_tokens or shorten the prompts")
  spec = common.DecodeSpec(sampling=sampling, max_new_tokens=max_new_tokens,
                           eos_id=-1 if eos_id is None else int(eos_id),
                           num_draft=num_draft if method == "speculative" else 0,
                           buffer_len=length)
  return prompts_BP, prompt_len, spec


def make_output(prompt_len: np.ndarray, tokens, length, target_calls, drafted, accepted
                ) -> GenerateOutput:
  """GenerateOutput from a loop's final [B, L] tokens and [B] counters (device or host)."""
  tokens, length, target_calls, drafted, accepted = (
      np.asarray(x) for x in jax.device_get((tokens, length, target_calls, drafted, accepted)))
  rows = [tokens[b, prompt_len[b]:length[b]].tolist() for b in range(len(prompt_len))]
  new_tokens = length - prompt_len
  stats = {
      "target_calls": target_calls, "drafted": drafted, "accepted": accepted,
      "new_tokens": new_tokens,
      "tokens_per_call": new_tokens / np.maximum(target_calls, 1),
      "acceptance_rate": accepted / np.maximum(drafted, 1),
  }
  return GenerateOutput(tokens=rows, stats=stats)


def generate(target: LM, prompts: Sequence[Sequence[int]], *, draft: LM | None = None,
             method: str = "speculative", num_draft: int = 4, sampling: Sampling = Sampling(),
             max_new_tokens: int = 64, eos_id: int | None = None, seed: int = 0,
             pad_to: int = 16) -> GenerateOutput:
  """Samples continuations of token-id prompts.

  Args:
    target: the model whose distribution the output follows.
    prompts: B lists of token ids (lengths may differ, each >= 1).
    draft: the draft model; required for method='speculative'.
    method: 'autoregressive' or 'speculative'.
    num_draft: draft tokens per iteration (the paper's K), >= 1.
    sampling: temperature / top-k / top-p, applied to both models.
    max_new_tokens: tokens generated per row at most.
    eos_id: a row stops after emitting this id (included in its output).
    seed: PRNG seed.
    pad_to: prompt and buffer lengths are rounded up to this multiple, so
      similar-length batches share one compilation.

  Returns:
    GenerateOutput with the new tokens of each row and per-row statistics.
  """
  prompts_BP, prompt_len, spec = prepare(target, draft, prompts, method, num_draft, sampling,
                                         max_new_tokens, eos_id, pad_to)
  key = jax.random.key(seed)
  if method == "speculative":
    out = _spec_jit(target.config, draft.config, spec, target.params, draft.params,
                    prompts_BP, prompt_len, key)
  else:
    out = _ar_jit(target.config, spec, target.params, prompts_BP, prompt_len, key)
  return make_output(prompt_len, *out)
