"""The speed bound of PAPERS.md section 2 (Leviathan et al. 2023) and alpha, measured by definition.

alpha = E[sum_x min(p(x), q(x))] (draft p, target q, both after the sampling
transform). The generate statistic accepted / drafted is NOT alpha for K > 1:
every iteration counts K drafted tokens but stops testing at the first
rejection, so under i.i.d. acceptance it is alpha (1 - alpha^K) / ((1 - alpha) K)
(`acceptance_rate_iid`).
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from specsample import sharding as sh
from specsample.decoding import adaptive
from specsample.decoding.sampling import Sampling
from specsample.models import transformer as tr
from specsample.models.lm import LM
from specsample.utils import round_up


def expected_tokens(alpha: float, num_draft: int) -> float:
  """E[tokens per target call] = 1 + alpha + ... + alpha^K (adaptive.expected_tokens, the
  sum auto K maximises), for one alpha in [0, 1], checked."""
  if not 0 <= alpha <= 1:
    raise ValueError(f"alpha must be in [0, 1], got {alpha}")
  if num_draft < 0:
    raise ValueError(f"num_draft (K) must be >= 0, got {num_draft}")
  return float(adaptive.expected_tokens(alpha, num_draft))


def speedup_bound(tokens_per_call: float, num_draft: int, c: float, v_k: float = 1.0) -> float:
  """Walltime improvement tokens / (K c + v_K) (Leviathan et al. 2023, with v_K).

  Args:
    tokens_per_call: E[tokens] from alpha (`expected_tokens`) or a measured tau.
    num_draft: K.
    c: draft step time / target step time.
    v_k: target time over K + 1 tokens / over 1 token (1 on accelerators).
  """
  return tokens_per_call / (num_draft * c + v_k)


def alpha_from_tokens(tokens_per_call: float, num_draft: int) -> float:
  """Inverts `expected_tokens`: the i.i.d. alpha that would give this tau (bisection)."""
  if tokens_per_call <= 1:
    return 0.0
  if tokens_per_call >= num_draft + 1:
    return 1.0
  lo, hi = 0.0, 1.0
  for _ in range(60):  # expected_tokens is increasing in alpha
    mid = (lo + hi) / 2
    lo, hi = (mid, hi) if expected_tokens(mid, num_draft) < tokens_per_call else (lo, mid)
  return (lo + hi) / 2


def acceptance_rate_iid(alpha: float, num_draft: int) -> float:
  """accepted / drafted that i.i.d. acceptance alpha would give: E[accepted] / K."""
  return (expected_tokens(alpha, num_draft) - 1) / num_draft


def best_k(speedups: dict[int, float]) -> int:
  """The K with the highest measured speedup (the smallest such K on ties)."""
  return max(sorted(speedups), key=lambda k: speedups[k])


@functools.partial(jax.jit, static_argnames=("target_cfg", "draft_cfg", "sampling"))
def _overlap(target_cfg, draft_cfg, sampling: Sampling, target_params, draft_params,
             tokens_BL: jax.Array) -> jax.Array:
  """[B, L] sum_x min(p, q) of the next-token distributions at every position."""
  q_BLV = sampling.probs(tr.forward(target_cfg, target_params, tokens_BL)[0])
  p_BLV = sampling.probs(tr.forward(draft_cfg, draft_params, tokens_BL)[0])
  return jnp.minimum(p_BLV, q_BLV).sum(axis=-1)


def measure_alpha(target: LM, draft: LM, prompts: Sequence[Sequence[int]],
                  completions: Sequence[Sequence[int]], sampling: Sampling,
                  pad_to: int = 64, mesh=None) -> tuple[float, np.ndarray]:
  """alpha = mean over generated positions of sum_x min(p(x), q(x)).

  The distributions are those the generated tokens were drawn from: at the
  positions from the last prompt token to the second-to-last token of the
  continuation. Use continuations sampled from the target (autoregressive or
  speculative: both follow q).

  Args:
    target, draft: the pair.
    prompts: N token-id prompts.
    completions: N generated continuations (prompt excluded).
    sampling: the transform applied to both models before comparing.
    pad_to: rows are padded to a multiple of this (fewer compiles).
    mesh: the mesh the (sharded) params live on, if any: the tokens go there
      replicated and the overlaps come back replicated, readable by every process.

  Returns:
    (alpha pooled over all generated positions, per-row alpha [N]).
  """
  if len(prompts) != len(completions):
    raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
  seqs = [list(p) + list(c) for p, c in zip(prompts, completions)]
  width = round_up(max(len(s) for s in seqs), pad_to)
  tokens_BL = np.zeros((len(seqs), width), np.int32)
  mask_BL = np.zeros((len(seqs), width), bool)
  for b, (seq, p, c) in enumerate(zip(seqs, prompts, completions)):
    tokens_BL[b, :len(seq)] = seq
    mask_BL[b, len(p) - 1:len(p) - 1 + len(c)] = True  # positions that predicted a new token
  if mesh is not None:
    tokens_BL = sh.put_global(tokens_BL, sh.replicated(mesh))
  overlap_BL = _overlap(target.config, draft.config, sampling, target.params, draft.params,
                        tokens_BL)
  if mesh is not None:
    overlap_BL = sh.put_global(overlap_BL, sh.replicated(mesh))
  overlap_BL = np.asarray(overlap_BL)
  per_row = (overlap_BL * mask_BL).sum(1) / np.maximum(mask_BL.sum(1), 1)
  return float((overlap_BL * mask_BL).sum() / max(mask_BL.sum(), 1)), per_row
