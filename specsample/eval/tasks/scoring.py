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


@functools.partial(jax.jit, static_argnames=("config",))
def _token_logprobs(config: tr.TransformerConfig, params, tokens_BL: jax.Array) -> jax.Array:
  """[B, L - 1] log q(tokens[:, t + 1] | tokens[:, :t + 1]) under the model."""
  logits_BLV, _ = tr.forward(config, params, tokens_BL)
  logp_BLV = jax.nn.log_softmax(logits_BLV[:, :-1].astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(logp_BLV, tokens_BL[:, 1:, None], axis=-1)[..., 0]


@functools.partial(jax.jit, static_argnames=("config", "sampling"))
def _calibration_terms(config: tr.TransformerConfig, sampling: Sampling, params,
                       tokens_BL: jax.Array) -> tuple[jax.Array, ...]:
  """Per position t, with s = sampling.probs(logits at t) and x = tokens[:, t + 1]:

  u = log s(x) + H(s) (mean 0 when x ~ s), Var_{x ~ s}[log s(x)], whether
  s(x) > 0 (each [B, L - 1], float32), and psi(lambda) = lambda H(s) +
  log sum_x s(x)^(1 + lambda) for each lambda of LAMBDAS ([B, L - 1, len(LAMBDAS)]).
  """
  logits_BLV, _ = tr.forward(config, params, tokens_BL)
  s_BLV = sampling.probs(logits_BLV[:, :-1])
  logs_BLV = jnp.log(jnp.where(s_BLV > 0, s_BLV, 1.0))   # 0 off the support (0 log 0 = 0)
  entropy_BL = -jnp.sum(s_BLV * logs_BLV, axis=-1)
  variance_BL = jnp.maximum(jnp.sum(s_BLV * logs_BLV ** 2, axis=-1) - entropy_BL ** 2, 0.0)
  s_x_BL = jnp.take_along_axis(s_BLV, tokens_BL[:, 1:, None], axis=-1)[..., 0]
  inside_BL = s_x_BL > 0
  u_BL = jnp.where(inside_BL, jnp.log(jnp.where(inside_BL, s_x_BL, 1.0)) + entropy_BL, 0.0)
  # log sum over the support of s^(1 + lambda), by log-sum-exp, one lambda at a time.
  support_BLV = s_BLV > 0
  psi_BLC = jnp.stack([lam * entropy_BL + jax.nn.logsumexp(
      jnp.where(support_BLV, (1 + lam) * logs_BLV, -jnp.inf), axis=-1) for lam in LAMBDAS], -1)
  # A token outside the support counts in neither u nor psi (it is counted apart).
  return u_BL, variance_BL, inside_BL, jnp.where(inside_BL[..., None], psi_BLC, 0.0)


def _score_continuations(score, config: tr.TransformerConfig, prompts: Sequence[Sequence[int]],
                         continuations: Sequence[Sequence[int]], rows: int, width_multiple: int
                         ) -> list[tuple[np.ndarray, ...]]:
  """Runs `score` ([rows, width] ids -> per-position [rows, width - 1] arrays) over
  prompt + continuation sequences; returns each continuation's slice of every array.

  Rows go `rows` at a time at a width rounded up to `width_multiple` (the last
  chunk is padded with copies), so a task needs one or two compiles.
  """
  seqs = [list(p) + list(c) for p, c in zip(prompts, continuations)]
  width = min(round_up(max(len(s) for s in seqs), width_multiple), config.max_seq_len)
  out = []
  for start in range(0, len(seqs), rows):
    chunk = seqs[start:start + rows]
    tokens_BL = np.zeros((rows, width), np.int32)
    for b in range(rows):
      seq = chunk[min(b, len(chunk) - 1)]
      tokens_BL[b, :len(seq)] = seq
    arrays = [np.asarray(a) for a in jax.device_get(score(tokens_BL))]
    for b in range(len(chunk)):
      p, n = len(prompts[start + b]), len(continuations[start + b])
      # Token t + 1 is predicted at position t: the continuation's tokens sit
      # at positions p .. p + n - 1, so their scores at p - 1 .. p + n - 2.
      out.append(tuple(a[b, p - 1:p - 1 + n] for a in arrays))
  return out


def continuation_logprobs(model: LM, prompts: Sequence[Sequence[int]],
                          continuations: Sequence[Sequence[int]], *, rows: int = 8,
                          width_multiple: int = 128) -> list[tuple[float, int]]:
  """(sum of log-probs, token count) of each continuation given its prompt."""
  scored = _score_continuations(
      lambda t: (_token_logprobs(model.config, model.params, t),), model.config, prompts,
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
      lambda t: _calibration_terms(model.config, sampling, model.params, t), model.config,
      prompts, continuations, rows, width_multiple)
  return [{"u": float(u.sum(dtype=np.float64)), "variance": float(v.sum(dtype=np.float64)),
           "tokens": int(len(u)), "outside": int((~inside).sum()),
           "log_mgf": psi.sum(axis=0, dtype=np.float64).tolist()}
          for u, v, inside, psi in scored]
