"""Pieces shared by the autoregressive and speculative loops.

Conventions of both loops (B rows, token buffer of length L):
  * `tokens` [B, L] holds prompt + generated tokens, right-padded; row b has
    `length[b]` committed tokens. The last committed token of a row is its
    "current" token: its keys/values are NOT in the caches yet, so every step
    starts by feeding it. Caches therefore hold `length - 1` valid positions
    (stale entries beyond are masked by position).
  * A row is done once it emitted `eos_id` or `max_new_tokens` tokens; done
    rows ride along with fixed shapes but commit nothing and count nothing.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from specsample.decoding.sampling import Sampling
from specsample.models import transformer as tr


@dataclasses.dataclass(frozen=True)
class DecodeSpec:
  """Static settings of one compiled loop (hashable: a jit static argument).

  Attributes:
    sampling: logits -> probabilities transform, shared by both models.
    max_new_tokens: generated tokens per row at most.
    eos_id: stop a row after it emits this id; None: no stop (max_new_tokens only).
    num_draft: the paper's K (draft lookahead G); with draft_choices, the
      largest K; ignored by autoregressive.
    buffer_len: L, token-buffer and cache length (prompt + new + slack).
    draft_choices: the K set of "auto" (adaptive.choose picks one per
      iteration); () for a fixed K.
  """
  sampling: Sampling
  max_new_tokens: int
  eos_id: int | None
  num_draft: int
  buffer_len: int
  draft_choices: tuple[int, ...] = ()

  def compile_key(self) -> "DecodeSpec":
    """The spec a loop compiles for: its sampling's temperature and top-p are inputs
    (Sampling.compile_key; their values: self.sampling.values())."""
    return dataclasses.replace(self, sampling=self.sampling.compile_key())

  def with_sampling_values(self, values_2: jax.Array) -> "DecodeSpec":
    """Inside a loop compiled for a compile_key(): the spec with the call's values."""
    return dataclasses.replace(self, sampling=self.sampling.with_values(values_2))


def read_rows(buffer_BL: jax.Array, start_B: jax.Array, size: int) -> jax.Array:
  """buffer[b, start[b] : start[b] + size] for every row -> [B, size]."""
  return jax.vmap(lambda row, s: jax.lax.dynamic_slice(row, (s,), (size,)))(buffer_BL, start_B)


def write_rows(buffer_BL: jax.Array, values_BX: jax.Array, start_B: jax.Array) -> jax.Array:
  """buffer[b, start[b] : start[b] + X] = values[b] for every row (trailing dims whole)."""
  trailing = (0,) * (buffer_BL.ndim - 2)
  return jax.vmap(lambda row, v, s: jax.lax.dynamic_update_slice(row, v, (s,) + trailing))(
      buffer_BL, values_BX.astype(buffer_BL.dtype), start_B)


def commit(tokens_BL, length_B, done_B, prompt_len_B, emitted_BX, num_emitted_B, spec: DecodeSpec):
  """Appends each row's first `num_emitted` tokens, cut at eos and max_new_tokens.

  Returns:
    (tokens, new length, new done, number committed per row).
  """
  X = emitted_BX.shape[1]
  room_B = spec.max_new_tokens - (length_B - prompt_len_B)
  count_B = jnp.where(done_B, 0, jnp.minimum(num_emitted_B, room_B))
  if spec.eos_id is not None:
    valid_BX = jnp.arange(X)[None] < count_B[:, None]
    is_eos_BX = (emitted_BX == spec.eos_id) & valid_BX
    first_eos_B = jnp.argmax(is_eos_BX, axis=1)
    hit_B = is_eos_BX.any(axis=1)
    count_B = jnp.where(hit_B, first_eos_B + 1, count_B)
  else:
    hit_B = jnp.zeros_like(done_B)
  # Done rows write too (fixed shapes) but at their frozen length, i.e. past
  # everything committed, so nothing valid is touched.
  tokens_BL = write_rows(tokens_BL, emitted_BX, length_B)
  new_length_B = length_B + count_B
  new_done_B = done_B | hit_B | (new_length_B - prompt_len_B >= spec.max_new_tokens)
  return tokens_BL, new_length_B, new_done_B, count_B


def prefill(config: tr.TransformerConfig, params, tokens_BL: jax.Array, prompt_len_B: jax.Array,
            max_prompt: int, return_hidden: bool = False):
  """Runs the padded prompts through a model; returns its cache at `length - 1`, and
  with return_hidden also its features [B, max_prompt, D] (transformer.forward_with_hidden)."""
  # The prompt's cache first, then padded to the buffer: its attention spans the
  # max_prompt keys it can see, not the whole buffer's (SmolLM2-135M, batch 8,
  # 448-token prompts in an 896-token buffer: prefill + 8 steps 13.4 s, was 17.8 s).
  cache = tr.init_cache(config, tokens_BL.shape[0], max_prompt)
  _, cache, hidden_BPD = tr.forward_with_hidden(config, params, tokens_BL[:, :max_prompt], cache)
  cache = cache.padded_to(tokens_BL.shape[1]).with_lengths(prompt_len_B - 1)
  return (cache, hidden_BPD) if return_hidden else cache


def init_buffer(prompts_BP: jax.Array, buffer_len: int) -> jax.Array:
  B, P = prompts_BP.shape
  return jnp.zeros((B, buffer_len), jnp.int32).at[:, :P].set(prompts_BP.astype(jnp.int32))
