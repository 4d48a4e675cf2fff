"""Scoring sampled text under a model: log-likelihoods and the terms of parity.check_calibration."""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from specsample.decoding import common
from specsample.decoding.sampling import Sampling
from specsample.eval.tasks.parity import LAMBDAS
from specsample.models import transformer as tr
from specsample.models.lm import LM
from specsample.utils import round_up


@functools.partial(jax.jit, static_argnames=("config",))
def _prompt_cache(config: tr.TransformerConfig, params, prompts_BP: jax.Array,
                  prompt_len_B: jax.Array) -> tr.KVCache:
  """The prompts' cache at `length - 1` (as decoding's prefill leaves it): the last prompt
  token runs again first in the extension, where its logits predict the continuation."""
  return common.prefill(config, params, prompts_BP, prompt_len_B, prompts_BP.shape[1])


def _extension_logits(config: tr.TransformerConfig, params, cache: tr.KVCache,
                      tokens_BN: jax.Array) -> jax.Array:
  """[B, N] float32 logits of tokens_BN run after the cache: logits i predicts token i + 1.
  Only these positions go through the LM head and the (costly) sampling transforms."""
  logits_BNV, _ = tr.forward(config, params, tokens_BN,
                             cache.padded_to(cache.max_len + tokens_BN.shape[1]))
  return logits_BNV.astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("config",))
def _token_logprobs(config: tr.TransformerConfig, params, cache: tr.KVCache, tokens_BN: jax.Array,
                    next_BN: jax.Array) -> jax.Array:
  """[B, N] log q(next | the prompt and the tokens before it)."""
  logp_BNV = jax.nn.log_softmax(_extension_logits(config, params, cache, tokens_BN), axis=-1)
  return jnp.take_along_axis(logp_BNV, next_BN[..., None], axis=-1)[..., 0]


@functools.partial(jax.jit, static_argnames=("config", "sampling"))
def _calibration_terms(config: tr.TransformerConfig, sampling: Sampling, params,
                       cache: tr.KVCache, tokens_BN: jax.Array, next_BN: jax.Array
                       ) -> tuple[jax.Array, ...]:
  """Per position i < N, with s = sampling.probs(the logits that predict next[:, i]) and
  x = next[:, i]:

  u = log s(x) + H(s) (mean 0 when x ~ s), Var_{x ~ s}[log s(x)], whether
  s(x) > 0 (each [B, N], float32), and psi(lambda) = lambda H(s) +
  log sum_x s(x)^(1 + lambda) for each lambda of LAMBDAS ([B, N, len(LAMBDAS)]).
  """
  s_BNV = sampling.probs(_extension_logits(config, params, cache, tokens_BN))
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


def _score_continuations(score, model: LM, prompts: Sequence[Sequence[int]],
                         continuations: Sequence[Sequence[int]], rows: int, width_multiple: int,
                         prompt_caches: dict | None) -> list[tuple[np.ndarray, ...]]:
  """Runs `score` (prompt cache, [rows, N] tokens, [rows, N] next tokens -> per-position
  [rows, N] arrays) over continuations of their prompts; returns each continuation's scores.

  Rows go `rows` at a time: the prompts, padded to a width rounded up to
  `width_multiple`, run once into a cache (kept in `prompt_caches` when given,
  keyed by the chunk's prompts: calls that score other continuations of the same
  prompts in the same order, as Table 1's cells of one task do, reuse it), then
  each continuation after its prompt's last token, N = its length rounded up to
  32. A last short chunk is padded with copies, so a task needs one or two compiles.
  """
  cfg = model.config
  longest_prompt = max(len(p) for p in prompts)
  span = round_up(max(max(len(c) for c in continuations), 1), 32)
  # (The cache may run past max_seq_len: each row's positions stop at its own length.)
  width = min(round_up(longest_prompt, width_multiple), cfg.max_seq_len)
  prompt_caches = {} if prompt_caches is None else prompt_caches
  out = []
  for start in range(0, len(prompts), rows):
    rows_ = [start + min(b, len(prompts) - start - 1) for b in range(rows)]
    key = (width, tuple(tuple(prompts[i]) for i in rows_))
    if key not in prompt_caches:
      prompts_BP = np.zeros((rows, width), np.int32)
      for b, i in enumerate(rows_):
        prompts_BP[b, :len(prompts[i])] = prompts[i]
      prompt_len_B = np.array([len(prompts[i]) for i in rows_], np.int32)
      prompt_caches[key] = _prompt_cache(cfg, model.params, prompts_BP, prompt_len_B)
    # Token t + 1 is predicted after token t: the prompt's last token, then the
    # continuation's, predict the continuation's tokens one by one.
    tokens_BN, next_BN = np.zeros((rows, span), np.int32), np.zeros((rows, span), np.int32)
    for b, i in enumerate(rows_):
      c = list(continuations[i])
      tokens_BN[b, :len(c)] = [prompts[i][-1]] + c[:-1] if c else []
      next_BN[b, :len(c)] = c
    arrays = [np.asarray(a) for a in
              jax.device_get(score(prompt_caches[key], tokens_BN, next_BN))]
    for b in range(min(rows, len(prompts) - start)):
      n = len(continuations[start + b])
      out.append(tuple(a[b, :n] for a in arrays))
  return out


def continuation_logprobs(model: LM, prompts: Sequence[Sequence[int]],
                          continuations: Sequence[Sequence[int]], *, rows: int = 8,
                          width_multiple: int = 128, prompt_caches: dict | None = None
                          ) -> list[tuple[float, int]]:
  """(sum of log-probs, token count) of each continuation given its prompt."""
  scored = _score_continuations(
      lambda cache, tokens, next_: (_token_logprobs(model.config, model.params, cache, tokens,
                                                    next_),),
      model, prompts, continuations, rows, width_multiple, prompt_caches)
  return [(float(logp.sum()), len(logp)) for (logp,) in scored]


def sample_calibration(model: LM, sampling: Sampling, prompts: Sequence[Sequence[int]],
                       continuations: Sequence[Sequence[int]], *, rows: int = 8,
                       width_multiple: int = 128, prompt_caches: dict | None = None
                       ) -> list[dict]:
  """Per continuation, the terms of the per-token calibration test (parity.check_calibration).

  Returns one dict per continuation: u (sum over its tokens of log s(x) + H(s)),
  variance (sum of Var_s[log s(x)]), tokens, outside (tokens with s(x) = 0,
  which exact sampling never produces; s recomputed here can differ from the
  decode loop's by float rounding at the nucleus edge), and log_mgf (for each
  lambda of LAMBDAS, the sum over its tokens of psi(lambda)). `prompt_caches`:
  see _score_continuations (a dict the caller keeps for one model).
  """
  scored = _score_continuations(
      lambda cache, tokens, next_: _calibration_terms(model.config, sampling, model.params,
                                                      cache, tokens, next_),
      model, prompts, continuations, rows, width_multiple, prompt_caches)
  return [{"u": float(u.sum(dtype=np.float64)), "variance": float(v.sum(dtype=np.float64)),
           "tokens": int(len(u)), "outside": int((~inside).sum()),
           "log_mgf": psi.sum(axis=0, dtype=np.float64).tolist()}
          for u, v, inside, psi in scored]
