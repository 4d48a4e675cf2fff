"""Distillation losses between the draft p and the target q (Goel et al. 2024).

Pure functions of logits `[B, T, V]` and a mask `[B, T]`; float32 throughout.
Notation as in PAPERS.md: q the target, p the draft (the model being trained).

* fkl    forward KL(q || p) = sum_x q log(q / p): mass-covering, the usual
         teacher-forced distillation.
* rkl    reverse KL(p || q) = sum_x p log(p / q): mode-seeking.
* tvd    total variation sum_x max(0, p - q) = 1 - sum_x min(p, q), i.e. exactly
         1 - (the acceptance rate alpha at temperature 1), differentiated exactly.
* tvdpp  TVD++: the policy-gradient form of the TVD gradient with a
         batch-normalised advantage (see `tvdpp`).

Each loss returns (scalar loss, metrics); the metrics always hold the exact TVD
so that runs with different losses are compared on one scale.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

LOSSES = ("fkl", "rkl", "tvd", "tvdpp")


def _masked_mean(x_BT: jax.Array, mask_BT: jax.Array) -> jax.Array:
  mask_BT = mask_BT.astype(jnp.float32)
  return (x_BT * mask_BT).sum() / jnp.maximum(mask_BT.sum(), 1.0)


def _log_probs(draft_logits_BTV, target_logits_BTV):
  log_p = jax.nn.log_softmax(draft_logits_BTV.astype(jnp.float32), axis=-1)
  log_q = jax.nn.log_softmax(target_logits_BTV.astype(jnp.float32), axis=-1)
  return log_p, jax.lax.stop_gradient(log_q)


def _tvd_BT(log_p_BTV, log_q_BTV) -> jax.Array:
  return jnp.maximum(jnp.exp(log_p_BTV) - jnp.exp(log_q_BTV), 0.0).sum(-1)


def fkl(draft_logits_BTV, target_logits_BTV, mask_BT, key=None):
  """Forward KL(q || p), mean over masked positions."""
  del key
  log_p, log_q = _log_probs(draft_logits_BTV, target_logits_BTV)
  kl_BT = (jnp.exp(log_q) * (log_q - log_p)).sum(-1)
  return _masked_mean(kl_BT, mask_BT), {"tvd": _masked_mean(_tvd_BT(log_p, log_q), mask_BT)}


def rkl(draft_logits_BTV, target_logits_BTV, mask_BT, key=None):
  """Reverse KL(p || q), mean over masked positions."""
  del key
  log_p, log_q = _log_probs(draft_logits_BTV, target_logits_BTV)
  kl_BT = (jnp.exp(log_p) * (log_p - log_q)).sum(-1)
  return _masked_mean(kl_BT, mask_BT), {"tvd": _masked_mean(_tvd_BT(log_p, log_q), mask_BT)}


def tvd(draft_logits_BTV, target_logits_BTV, mask_BT, key=None):
  """Total variation sum_x max(0, p - q), mean over masked positions."""
  del key
  log_p, log_q = _log_probs(draft_logits_BTV, target_logits_BTV)
  tvd_BT = _tvd_BT(log_p, log_q)
  return _masked_mean(tvd_BT, mask_BT), {"tvd": _masked_mean(tvd_BT, mask_BT)}


def tvdpp(draft_logits_BTV, target_logits_BTV, mask_BT, key, num_samples: int = 4):
  """TVD++: REINFORCE on the TVD with a batch-normalised advantage.

  Since sum_x grad p(x) = 0, grad TVD = -E_{x~p}[r(x) grad log p(x)] with the
  reward r(x) = 1{q(x) >= p(x)} (PAPERS.md section 3). We estimate it with
  `num_samples` draws x ~ p per position and replace r by the advantage
  a = (r - mean r) / (std r + 1e-6), mean and std taken over every sampled token
  of the batch (masked positions only). The surrogate is -mean(a * log p(x)) with
  a held constant. With mean and std treated as constants, E[grad surrogate] =
  grad TVD / std: the baseline removes variance, not direction, because
  E_{x~p}[grad log p(x)] = 0. (They are batch statistics, so this holds up to an
  O(1 / samples) bias; tests/test_alignment.py checks the direction.)

  We chose the batch over the per-position vocabulary normalisation of one public
  implementation because the latter's unweighted surrogate mean_v(-r~_v log p_v)
  is not an estimator of grad TVD at all.

  Returns:
    (surrogate loss, metrics with the exact TVD and the mean reward).
  """
  log_p, log_q = _log_probs(draft_logits_BTV, target_logits_BTV)
  B, T, _ = log_p.shape
  x_SBT = jax.random.categorical(key, jax.lax.stop_gradient(log_p), axis=-1,
                                 shape=(num_samples, B, T))
  gather = lambda lp: jnp.take_along_axis(lp[None], x_SBT[..., None], axis=-1)[..., 0]
  log_p_x, log_q_x = gather(log_p), gather(log_q)  # [S, B, T]
  reward = (log_q_x >= jax.lax.stop_gradient(log_p_x)).astype(jnp.float32)
  mask = jnp.broadcast_to(mask_BT.astype(jnp.float32), reward.shape)
  count = jnp.maximum(mask.sum(), 1.0)
  mean = (reward * mask).sum() / count
  std = jnp.sqrt((jnp.square(reward - mean) * mask).sum() / count)
  advantage = jax.lax.stop_gradient((reward - mean) / (std + 1e-6))
  surrogate = -(advantage * log_p_x * mask).sum() / count
  metrics = {"tvd": _masked_mean(_tvd_BT(log_p, log_q), mask_BT), "reward": mean}
  return surrogate, metrics


def get_loss(name: str) -> Callable:
  """The loss function called `name`, one of LOSSES."""
  table = {"fkl": fkl, "rkl": rkl, "tvd": tvd, "tvdpp": tvdpp}
  if name not in table:
    raise ValueError(f"loss must be one of {LOSSES}, got {name!r}")
  return table[name]
