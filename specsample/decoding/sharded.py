"""Autoregressive and speculative sampling on a device mesh (one or many hosts).

    mesh = sharding.make_mesh({"data": 2, "fsdp": 1, "tensor": 4})
    target = LM(cfg, sharding.init_params(cfg, mesh, sharding.TENSOR_PARALLEL, key))
    out = sharded_generate(target, prompts, draft=draft, mesh=mesh,
                           draft_rules=sharding.REPLICATED, num_draft=4, ...)

The same pure loops as `api.generate` (autoregressive_loop, speculative_loop)
run under one `jax.jit` whose in_shardings put each model's parameters on the
mesh by its own rules and split prompts over the 'batch' rule's axes; the loop
state follows by XLA's sharding propagation. The final KV caches are outputs
too, with out_shardings from the rules: that pins the while-loop carry of each
cache to [B over batch axes, S, K over tensor, H] (checked in
tests/test_sharding.py) instead of leaving it to propagation. The small
results (tokens, lengths, counters) come back replicated, so every process of a
multi-host run can read them. Every setting and every divisibility is checked
before compiling.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from specsample import sharding as sh
from specsample.decoding import api, autoregressive, common, speculative
from specsample.decoding.sampling import Sampling
from specsample.models import transformer as tr

# Traces (= compilations) per method in this process; tests check reuse.
TRACE_COUNT = {"autoregressive": 0, "speculative": 0}


def loop_shardings(target_cfg: tr.TransformerConfig, draft_cfg: tr.TransformerConfig | None,
                   mesh, target_rules: sh.Rules, draft_rules: sh.Rules | None, batch: int,
                   prompt_width: int, buffer_len: int) -> dict[str, Any]:
  """Every sharding of one compiled loop, validated (ValueError before compiling).

  Returns:
    dict with target_params, draft_params (None for autoregressive), prompts,
    prompt_len, target_cache, draft_cache (KVCache of NamedShardings or None)
    and replicated.
  """
  out = {
      "target_params": sh.param_shardings(target_cfg, mesh, target_rules),
      "prompts": sh.batch_sharding(mesh, target_rules, (batch, prompt_width), what="prompts [B, P]"),
      "prompt_len": sh.batch_sharding(mesh, target_rules, (batch,), what="prompt lengths [B]"),
      "target_cache": sh.cache_shardings(target_cfg, mesh, target_rules, batch, buffer_len),
      "draft_params": None, "draft_cache": None, "replicated": sh.replicated(mesh),
  }
  if draft_cfg is not None:
    out["draft_params"] = sh.param_shardings(draft_cfg, mesh, draft_rules)
    out["draft_cache"] = sh.cache_shardings(draft_cfg, mesh, draft_rules, batch, buffer_len)
  return out


@functools.lru_cache(maxsize=32)
def make_sharded_loop(method: str, target_cfg: tr.TransformerConfig,
                      draft_cfg: tr.TransformerConfig | None, spec: common.DecodeSpec, mesh,
                      target_rules: sh.Rules, draft_rules: sh.Rules | None, batch: int,
                      prompt_width: int):
  """The jitted loop for one (method, configs, spec, mesh, rules, shape).

  Returns:
    fn(target_params, draft_params, prompts [B, P], prompt_len [B], seed []) ->
    (tokens [B, L], length [B], target_calls [B], drafted [B], accepted [B],
    caches), results replicated, caches sharded by the rules. draft_params is
    ignored (pass None) for method='autoregressive'.
  """
  s = loop_shardings(target_cfg, draft_cfg if method == "speculative" else None, mesh,
                     target_rules, draft_rules, batch, prompt_width, spec.buffer_len)
  rep = s["replicated"]
  results = (rep,) * 5

  if method == "speculative":
    def run(target_params, draft_params, prompts_BP, prompt_len_B, seed):
      TRACE_COUNT["speculative"] += 1
      state = speculative.speculative_loop(target_cfg, draft_cfg, spec, target_params,
                                           draft_params, prompts_BP, prompt_len_B,
                                           jax.random.key(seed))
      return (state.tokens, state.length, state.target_calls, state.drafted, state.accepted,
              (state.target_cache, state.draft_cache))
    caches = (s["target_cache"], s["draft_cache"])
    draft_in = s["draft_params"]
  else:
    def run(target_params, draft_params, prompts_BP, prompt_len_B, seed):
      del draft_params
      TRACE_COUNT["autoregressive"] += 1
      state = autoregressive.autoregressive_loop(target_cfg, spec, target_params, prompts_BP,
                                                 prompt_len_B, jax.random.key(seed))
      zeros = jnp.zeros_like(state.target_calls)
      return (state.tokens, state.length, state.target_calls, zeros, zeros, (state.cache,))
    caches = (s["target_cache"],)
    draft_in = None
  return jax.jit(run,
                 in_shardings=(s["target_params"], draft_in, s["prompts"], s["prompt_len"], rep),
                 out_shardings=results + (caches,))


def sharded_generate(target: api.LM, prompts: Sequence[Sequence[int]], *, mesh,
                     target_rules: sh.Rules = sh.TENSOR_PARALLEL, draft: api.LM | None = None,
                     draft_rules: sh.Rules | None = None, method: str = "speculative",
                     num_draft: int = 4, sampling: Sampling = Sampling(),
                     max_new_tokens: int = 64, eos_id: int | None = None, seed: int = 0,
                     pad_to: int = 16) -> api.GenerateOutput:
  """`api.generate` on a mesh; same arguments and output, plus:

  Args:
    mesh: a jax.sharding.Mesh (sharding.make_mesh), possibly spanning hosts.
    target_rules: logical-axis rules of the target's parameters, the batch
      and its KV cache (sharding.TENSOR_PARALLEL by default).
    draft_rules: the draft's rules; default: target_rules.

  Multi-host, every process calls this with the same prompts and LMs whose
  params are global arrays (sharding.init_params / shard_params /
  load_sharded_lm); every process gets the full output. Parameters not yet
  laid out by the rules are placed first (sharding.shard_params).

  Raises:
    ValueError: any api.generate error, or a mesh/rules/shape mismatch
      (naming the parameter or array and dimension), before compiling.
  """
  prompts_BP, prompt_len, spec = api.prepare(target, draft, prompts, method, num_draft, sampling,
                                             max_new_tokens, eos_id, pad_to)
  target_rules = sh.canonical_rules(target_rules)
  draft_rules = target_rules if draft_rules is None else sh.canonical_rules(draft_rules)
  speculative_ = method == "speculative"
  draft_cfg = draft.config if speculative_ else None
  B, P = prompts_BP.shape
  # Validates every sharding (raises before any compilation).
  s = loop_shardings(target.config, draft_cfg, mesh, target_rules, draft_rules, B, P,
                     spec.buffer_len)
  loop = make_sharded_loop(method, target.config, draft_cfg, spec, mesh, target_rules,
                           draft_rules if speculative_ else None, B, P)
  target_params = sh.shard_params(target.params, target.config, mesh, target_rules)
  draft_params = (sh.shard_params(draft.params, draft.config, mesh, draft_rules)
                  if speculative_ else None)
  out = loop(target_params, draft_params, sh.put_global(prompts_BP, s["prompts"]),
             sh.put_global(prompt_len, s["prompt_len"]),
             sh.put_global(np.uint32(seed), s["replicated"]))
  # Results are replicated: every process can read them; caches are dropped.
  return api.make_output(prompt_len, *out[:5])


def load_sharded_lm(directory: str, mesh, rules: sh.Rules = sh.TENSOR_PARALLEL,
                    **config_overrides) -> api.LM:
  """models.io.load_lm laid out by `rules` on `mesh`: each process reads only
  its shards, for models too big for one host. Every divisibility is checked
  (sharding.param_shardings) before anything is read."""
  from specsample.models import io  # io imports this package's api
  config, meta = io.load_config(directory)
  config = config.replace(**config_overrides).validate()
  params = io.restore_params(directory, config, meta["store_dtype"],
                             sh.param_shardings(config, mesh, rules))
  return api.LM(config=config, params=params, tokenizer_id=meta.get("tokenizer_id"))


# ----------------------------------------------------------------------------- from a config

RULES_FIELDS = {"target_dir": "target_rules", "draft_dir": "draft_rules"}


def mesh_from_config(config, batch_sizes: Sequence[int]):
  """The mesh of a sampling config (configs/sample.py, configs/benchmark.py), or None.

  Every `config.mesh` axis 1 means one device and api.generate, as without
  meshes. Call after distributed.maybe_initialize(): the mesh spans every
  process's devices.

  Args:
    config: a ConfigDict with mesh.{data,fsdp,tensor}, target_rules and
      draft_rules (sharding.RULES names).
    batch_sizes: the global batch sizes the loops will run with.

  Raises:
    ValueError: an unknown rules name, a bad axis size, a mesh whose size is
      not the device count, or a batch size that the 'batch' rule's mesh axes
      (data x fsdp) do not divide; the message names the config field.
      Nothing is loaded or compiled.
  """
  for field in RULES_FIELDS.values():
    if config[field] not in sh.RULES:
      raise ValueError(f"{field} must be one of {sorted(sh.RULES)} (sharding.RULES), got "
                       f"{config[field]!r}")
  sizes = config.mesh.to_dict()
  if all(size == 1 for size in sizes.values()):
    return None
  try:
    mesh = sh.make_mesh(sizes)  # checks the sizes and the device count
  except ValueError as e:
    raise ValueError(f"mesh: {e}; set --config.mesh.data / fsdp / tensor (ints >= 1, one of "
                     "them may be -1 = the devices left)") from e
  for field in RULES_FIELDS.values():
    for batch in batch_sizes:
      # sharding's own divisibility check, on the global batch (prompts [B, P]).
      sh.batch_sharding(mesh, sh.get_rules(config[field]), (batch,),
                        what=f"batch size {batch} with {field}={config[field]!r}")
  return mesh


def load_lm_from_config(config, field: str, mesh) -> api.LM:
  """Loads the model folder config[field] ('target_dir' or 'draft_dir').

  Whole on one device (models.io.load_lm) when `mesh` is None, else shard by
  shard on the mesh by config[RULES_FIELDS[field]] (load_sharded_lm: every
  divisibility is checked before anything is read). config.param_dtype, when
  not "", replaces the saved param_dtype.
  """
  from specsample.models import io
  overrides = {"param_dtype": config.param_dtype} if config.param_dtype else {}
  if mesh is None:
    return io.load_lm(config[field], **overrides)
  rules_field = RULES_FIELDS[field]
  try:
    return load_sharded_lm(config[field], mesh, sh.get_rules(config[rules_field]), **overrides)
  except ValueError as e:
    raise ValueError(f"{field}={config[field]!r} with {rules_field}={config[rules_field]!r} on "
                     f"mesh {dict(mesh.shape)}: {e}") from e
