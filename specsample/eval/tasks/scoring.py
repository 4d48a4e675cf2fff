"""Scoring sampled text under a model: log-likelihoods and the terms of parity.check_calibration."""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from specsample.decoding.sampling import Sampling
from specsample.eval.tasks.parity import LAMBDAS
from specsample.models import transformer as tr
from specsample.models.lm import LM
from specsample.utils import round_up


def _span_logits(config: tr.TransformerConfig, params, tokens_BL: jax.Array, starts_B: jax.Array,
                 span: int) -> tuple[jax.Array, jax.Array]:
  """The logits that predict tokens[b, starts[b] + 1 + i] for i < span, and those tokens.

  Returns ([B, span, V] float32 logits at positions starts[b] + i, [B, span] next tokens);
  positions past the sequence are clipped to its last prediction (callers drop them).
  Only these positions go through the LM head and the (costly) sampling transforms: a
  prompt of 448 tokens and 128 sampled ones is 7x fewer positions than the whole sequence.
  """
  _, _, hidden_BLD = tr.forward_with_hidden(config, params, tokens_BL)  # its logits: unused
  L = tokens_BL.shape[1]
  positions_BN = jnp.minimum(starts_B[:, None] + jnp.arange(span)[None, :], L - 2)
  hidden_BND = jnp.take_along_axis(hidden_BLD, positions_BN[..., None], axis=1)
  next_BN = jnp.take_along_axis(tokens_BL, positions_BN + 1, axis=1)
  return tr.head(config, params, hidden_BND), next_BN


@functools.partial(jax.jit, static_argnames=("config", "span"))
def _token_logprobs(config: tr.TransformerConfig, params, tokens_BL: jax.Array,
                    starts_B: jax.Array, span: int) -> jax.Array:
  """[B, span] log q(x | the tokens before x), x = tokens[b, starts[b] + 1 + i]."""
  logits_BNV, next_BN = _span_logits(config, params, tokens_BL, starts_B, span)
  logp_BNV = jax.nn.log_softmax(logits_BNV, axis=-1)
  return jnp.take_along_axis(logp_BNV, next_BN[..., None], axis=-1)[..., 0]


@functools.partial(jax.jit, static_argnames=("config", "sampling", "span"))
def _calibration_terms(config: tr.TransformerConfig, sampling: Sampling, params,
                       tokens_BL: jax.Array, starts_B: jax.Array, span: int
                       ) -> tuple[jax.Array, ...]:
  """Per position t = starts[b] + i (i < span), with s = sampling.probs(logits at t) and
  x = tokens[:, t + 1]:

  u = log s(x) + H(s) (mean 0 when x ~ s), Var_{x ~ s}[log s(x)], whether
  s(x) > 0 (each [B, span], float32), and psi(lambda) = lambda H(s) +
  log sum_x s(x)^(1 + lambda) for each lambda of LAMBDAS ([B, span, len(LAMBDAS)]).
  """
  logits_BNV, next_BN = _span_logits(config, params, tokens_BL, starts_B, span)
  s_BNV = sampling.probs(logits_BNV)
  logs_BNV = jnp.log(jnp.where(s_BNV > 0, s_BNV, 1.0))   # 0 off the support (0 log 0 = 0)
  entropy_BN = -jnp.sum(s_BNV * logs_BNV, axis=-1)
  variance_BN = jnp.maximum(jnp.sum(s_BNV * logs_BNV ** 2, axis=-1) - entropy_BN ** 2, 0.0)
  s_x_BN = jnp.take_along_axis(s_BNV, next_BN[..., None], axis=-1)[..., 0]
  inside_BN = s_x_BN > 0
  u_BN = jnp.where(inside_BN, jnp.log(jnp.where(inside_BN, s_x_BN, 1.0)) + entropy_BN, 0.0)
  # log sum over the support of s^(1 + lambda), by log-sum-exp, one lambda at a time.
  support_BNV = s_BNV > 0
  psi_BNC = jnp.stack([lam * entropy_BN + jax.nn.logsumexp(
      jnp.where(support_BNV, (1 + lam) * logs_BNV, -jnp.inf), axis=-1) for lam in LAMBDAS], -1)
  # A token outside the support counts in neither u nor psi (it is counted apart).
  return u_BN, variance_BN, inside_BN, jnp.where(inside_BN[..., None], psi_BNC, 0.0)


def _score_continuations(score, config: tr.TransformerConfig, prompts: Sequence[Sequence[int]],
                         continuations: Sequence[Sequence[int]], rows: int, width_multiple: int
                         ) -> list[tuple[np.ndarray, ...]]:
  """Runs `score` ([rows, width] ids, [rows] starts, span -> per-position [rows, span]
  arrays from each start) over prompt + continuation sequences; returns each
  continuation's scores.

  Rows go `rows` at a time at a width rounded up to `width_multiple` and a span
  rounded up to 32 (the last chunk is padded with copies), so a task needs one
  or two compiles.
  """
  seqs = [list(p) + list(c) for p, c in zip(prompts, continuations)]
  width = min(round_up(max(len(s) for s in seqs), width_multiple), config.max_seq_len)
  span = min(round_up(max(max(len(c) for c in continuations), 1), 32), width - 1)
  out = []
  for start in range(0, len(seqs), rows):
    chunk = seqs[start:start + rows]
    tokens_BL = np.zeros((rows, width), np.int32)
    starts_B = np.zeros((rows,), np.int32)
    for b in range(rows):
      i = start + min(b, len(chunk) - 1)
      tokens_BL[b, :len(seqs[i])] = seqs[i]
      # Token t + 1 is predicted at position t: the continuation's tokens sit at
      # positions p .. p + n - 1, so their scores start at p - 1.
      starts_B[b] = len(prompts[i]) - 1
    arrays = [np.asarray(a) for a in jax.device_get(score(tokens_BL, starts_B, span))]
    for b in range(len(chunk)):
      n = len(continuations[start + b])
      out.append(tuple(a[b, :n] for a in arrays))
  return out


def continuation_logprobs(model: LM, prompts: Sequence[Sequence[int]],
                          continuations: Sequence[Sequence[int]], *, rows: int = 8,
                          width_multiple: int = 128) -> list[tuple[float, int]]:
  """(sum of log-probs, token count) of each continuation given its prompt."""
  scored = _score_continuations(
      lambda t, starts, span: (_token_logprobs(model.config, model.params, t, starts, span),), model.config, prompts,
      continuations, rows, width_multiple)
  return [(float(logp.sum()), len(logp)) for (logp,) in scored]


def sample_calibration(model: LM, sampling: Sampling, prompts: Sequence[Sequence[int]],
                       continuations: Sequence[Sequence[int]], *, rows: int = 8,
                       width_multiple: int = 128) -> list[dict]:
  """Per continuation, the terms of the per-token calibration test (parity.check_calibration).

  Returns one dict per continuation: u (sum over its tokens of log s(x) + H(s)),
  variance (sum of Var_s[log s(x)]), tokens, outside (tokens with s(x) = 0,
  which exact sampling never produces; s recomputed here without a cache can
  differ from the decode loop's by float rounding at the nucleus edge), and
  log_mgf (for each lambda of LAMBDAS, the sum over its tokens of psi(lambda)).
  """
  scored = _score_continuations(
      lambda t, starts, span: _calibration_terms(model.config, sampling, model.params, t, starts,
                                                  span), model.config,
      prompts, continuations, rows, width_multiple)
  return [{"u": float(u.sum(dtype=np.float64)), "variance": float(v.sum(dtype=np.float64)),
           "tokens": int(len(u)), "outside": int((~inside).sum()),
           "log_mgf": psi.sum(axis=0, dtype=np.float64).tolist()}
          for u, v, inside, psi in scored]
