"""Quality of KV Prediction: the target's log-likelihood of held-out continuations given
the prompt through a PREDICTED cache, against the exact cache and the auxiliary model alone.

For a prompt of P tokens and a continuation of n tokens, every scorer returns
log p(continuation | prompt) token by token:
  exact:  the target on prompt + continuation (its own cache for everything);
  kvp:    the auxiliary on the prompt, the predictor fills the target's
          positions 0..P-2 (the target's own exact tail over the last of them,
          if the KVP has one), the target runs tokens P-1 .. P+n-2 (the decode path);
  aux:    the auxiliary model alone.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from specsample.decoding import common
from specsample.decoding import kv_prediction as kvpd
from specsample.models import kv_predictor as kvp_lib
from specsample.models import transformer as tr
from specsample.models.lm import LM
from specsample.utils import round_up


def _gather_logprobs(logits_BCV: jax.Array, labels_BC: jax.Array) -> jax.Array:
  logp_BCV = jax.nn.log_softmax(logits_BCV.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(logp_BCV, labels_BC[..., None], axis=-1)[..., 0]


@functools.partial(jax.jit, static_argnames=("config", "width"))
def _plain_logprobs(config: tr.TransformerConfig, params, tokens_BW, split_B, width: int):
  """[B, width] log p(tokens[split + c]) for c < width, one model on the whole sequence."""
  logits_BWV, _ = tr.forward(config, params, tokens_BW)
  logits_BCV = jax.vmap(lambda l, s: jax.lax.dynamic_slice_in_dim(l, s - 1, width))(
      logits_BWV, split_B)
  return _gather_logprobs(logits_BCV, common.read_rows(tokens_BW, split_B, width))


@functools.partial(jax.jit, static_argnames=("spec", "width"))
def _kvp_logprobs(spec: kvpd.KVPSpec, target_params, aux_params, predictor_params, tokens_BW,
                  split_B, width: int):
  """[B, width] log p(tokens[split + c]) under the target with a predicted prompt cache."""
  B, W = tokens_BW.shape
  # The auxiliary is causal: its keys at prompt positions do not see the continuation.
  _, aux_cache = tr.forward(spec.config.aux, aux_params, tokens_BW,
                            tr.init_cache(spec.config.aux, B, W))
  cache = kvp_lib.predict_cache(spec.config, predictor_params, aux_cache)
  if spec.exact_tail:
    cache, _, _ = kvpd.run_tail(spec.config.target, target_params, cache, tokens_BW, split_B,
                                spec.exact_tail)
  cache = cache.with_lengths(split_B - 1)
  block_BC = common.read_rows(tokens_BW, split_B - 1, width)
  logits_BCV, _ = tr.forward(spec.config.target, target_params, block_BC, cache)
  return _gather_logprobs(logits_BCV, common.read_rows(tokens_BW, split_B, width))


def continuation_logprobs(scorer: str, target: LM, prompts: Sequence[Sequence[int]],
                          continuations: Sequence[Sequence[int]], *, aux: LM | None = None,
                          kvp: kvpd.KVP | None = None, rows: int = 8, width_multiple: int = 128,
                          ) -> list[tuple[float, int]]:
  """(sum of log-probs, token count) of each continuation given its prompt.

  Args:
    scorer: 'exact' (target), 'aux' (the `aux` model alone) or 'kvp' (target
      with the cache predicted by `kvp`).
    prompts, continuations: token ids; every prompt has >= 2 tokens.
    rows, width_multiple: batch rows and the padded width's multiple (few compiles).
  """
  n_max = max(len(c) for c in continuations)
  width = round_up(max(len(p) + n_max for p in prompts), width_multiple)
  cont = round_up(n_max, 16)
  spec = None if scorer != "kvp" else kvpd.KVPSpec(kvpd.kvp_config(target, kvp), False,
                                                    exact_tail=kvp.exact_tail)
  out = []
  for start in range(0, len(prompts), rows):
    idx = [min(start + b, len(prompts) - 1) for b in range(rows)]  # pad with copies
    tokens_BW = np.zeros((rows, width + cont), np.int32)
    split_B = np.zeros((rows,), np.int32)
    for b, i in enumerate(idx):
      seq = list(prompts[i]) + list(continuations[i])
      tokens_BW[b, :len(seq)] = seq
      split_B[b] = len(prompts[i])
    if scorer == "kvp":
      logp = _kvp_logprobs(spec, target.params, kvp.aux.params, kvp.params, tokens_BW, split_B,
                           cont)
    else:
      model = target if scorer == "exact" else aux
      logp = _plain_logprobs(model.config, model.params, tokens_BW, split_B, cont)
    logp = np.asarray(logp)
    for b in range(min(rows, len(prompts) - start)):
      n = len(continuations[start + b])
      out.append((float(logp[b, :n].sum(dtype=np.float64)), n))
  return out


def mean_loglik(scores: Sequence[tuple[float, int]]) -> float:
  """Token-weighted mean log-likelihood (nats per token)."""
  return sum(s for s, _ in scores) / max(sum(n for _, n in scores), 1)


def gap_closed(exact: float, kvp: float, aux: float) -> float:
  """Fraction of the aux-alone -> exact-cache log-likelihood gap that KVP closes."""
  return (kvp - aux) / (exact - aux) if exact != aux else float("nan")
