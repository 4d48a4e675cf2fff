"""The model pair, prompts and meshes shared by the sharding tests and the multi-host worker.

tests/test_sharding.py, tests/test_multihost.py and tests/multihost_worker.py
import this module, so the single-process reference and the 2-process run
decode exactly the same thing, and the compiled loops are shared within one
pytest session (api.make_loop is cached by mesh, configs, rules
and shapes).

The target has 8 query heads and 4 kv heads so that every mesh below splits
its heads; with tensor=8 its kv heads fall back to replication
(sharding.REPLICATE_IF_INDIVISIBLE), with tensor=4 they are split. The draft
is narrower, with 4 heads that tensor=8 could not split: DRAFT_RULES split it
over fsdp only, a different layout from the target's on the same mesh.
"""

from __future__ import annotations

import jax
import numpy as np

from specsample import sharding as sh
from specsample.decoding import LM, Sampling
from specsample.models import transformer as tr
from specsample.models.presets import get_preset

# One layer each: XLA compile time, the cost of these tests, grows with depth,
# and every layer is laid out alike.
TARGET_CFG = get_preset("tiny", vocab_size=32, num_layers=1, num_heads=8, num_kv_heads=4,
                        head_dim=4, tie_embeddings=False)
DRAFT_CFG = get_preset("tiny", vocab_size=32, d_model=16, num_layers=1, num_heads=4,
                       num_kv_heads=4, head_dim=4, mlp_dim=32)

TARGET_RULES = sh.TENSOR_PARALLEL
# Batch over (data, fsdp), `embed` over fsdp, nothing over tensor.
DRAFT_RULES = sh.get_rules("tensor_parallel",
                           {"vocab": None, "heads": None, "kv_heads": None, "mlp": None})

# The meshes (8, 1), (2, 4), (1, 8) as (batch-parallel, tensor); the
# middle one splits the batch over fsdp so that FSDP's weight gathers run too.
MESH_SHAPES = {
    "data8": {"data": 8, "fsdp": 1, "tensor": 1},
    "fsdp2_tensor4": {"data": 1, "fsdp": 2, "tensor": 4},
    "tensor8": {"data": 1, "fsdp": 1, "tensor": 8},
}
# The 2-process run: fsdp crosses the process boundary (devices 0-3 live in
# process 0, 4-7 in process 1), so weights are all-gathered between processes.
MULTIHOST_MESH = "fsdp2_tensor4"

# 8 rows (divisible by data=8), lengths 1..11 (one-token prompts are an edge case).
PROMPTS = [[5], [1, 2, 3], [7, 7, 1, 30], [9, 4, 1, 5, 9, 2], [3, 3],
           [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21], [31, 0, 8], [2, 7, 1, 8, 2, 8, 1, 8]]
DECODE = dict(num_draft=3, max_new_tokens=12, sampling=Sampling(temperature=0.0))


def random_params(cfg: tr.TransformerConfig, seed: int) -> dict:
  """Host (numpy) parameters of `cfg`: no compilation, identical in every process.

  Jitted random initialisation costs seconds of XLA compile per model on 2
  cores; these tests need some fixed, non-degenerate weights, not the init.
  Matrices are N(0, 1 / fan_in), fan_in = product of all but the last dim;
  norm scales are 1 + N(0, 0.1).
  """
  rng = np.random.default_rng(seed)

  def one(shape):
    if len(shape.shape) == 1:
      return (1 + 0.1 * rng.standard_normal(shape.shape)).astype(np.float32)
    fan_in = int(np.prod(shape.shape[:-1]))
    return (rng.standard_normal(shape.shape) / np.sqrt(fan_in)).astype(np.float32)

  return jax.tree_util.tree_map(one, sh.param_shapes(cfg))


def target_lm() -> LM:
  return LM(TARGET_CFG, random_params(TARGET_CFG, 0))


def draft_lm() -> LM:
  return LM(DRAFT_CFG, random_params(DRAFT_CFG, 1))
