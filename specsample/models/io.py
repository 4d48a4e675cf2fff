"""Saving and loading a model for decoding: config.json + orbax params.

A model folder holds:
  config.json   the TransformerConfig fields, the tokenizer fingerprint and
                the dtype the params were stored in
  params/       orbax StandardCheckpointer tree

The embedded pair is stored in bfloat16 to keep the repository small and is
loaded back as the config's param_dtype (float32 on CPU). On a local disk
saving goes to a temporary sibling folder renamed into place. A bucket (gs://)
cannot rename folders, so there the params go to a fresh `params-<id>/` inside
the folder and config.json, written last as one object, names it
(`params_dir`): config.json is the commit marker. Either way an interrupted
export never leaves a half-written model where a complete one was.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import uuid
from typing import Any

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from specsample import paths
from specsample import sharding as sh
from specsample import utils
from specsample.models import feature_draft as fd
from specsample.models import gguf
from specsample.models import hf
from specsample.models import transformer as tr
from specsample.models.lm import LM, params_fingerprint


class ModelLoadError(RuntimeError):
  """A model folder whose params cannot be read (corrupt, or not matching config.json)."""


def save_lm(directory: str, config: tr.TransformerConfig, params, *,
            tokenizer_id: str | None = None, store_dtype: str = "bfloat16",
            extra: dict | None = None) -> str:
  """Writes a model folder atomically (replacing an existing one only on success).

  Sharded params are written shard by shard. With several processes every one
  must call this with the same directory (orbax saves collectively); process 0
  alone writes config.json and renames the folder into place.
  """
  directory = paths.absolute(directory)
  cast = lambda x: x.astype(store_dtype) if isinstance(x, jax.Array) else jnp.asarray(x, store_dtype)
  params = jax.tree_util.tree_map(cast, params)
  meta = {"config": dataclasses.asdict(config), "tokenizer_id": tokenizer_id,
          "store_dtype": store_dtype, **(extra or {})}
  if not paths.supports_rename(directory):
    _save_committed_by_config(directory, params, meta)
    return directory
  multi = jax.process_count() > 1
  # The temporary name must agree across processes: they write one checkpoint.
  tmp = f"{directory}.tmp-" + ("multihost" if multi else uuid.uuid4().hex[:8])
  main = jax.process_index() == 0
  if multi:
    if main:
      shutil.rmtree(tmp, ignore_errors=True)  # left by an interrupted export
    multihost_utils.sync_global_devices(f"save_lm clean {tmp}")
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.join(tmp, "params"), params)
    ckptr.wait_until_finished()
  if main:
    with open(os.path.join(tmp, "config.json"), "w") as f:
      json.dump(meta, f, indent=2)
    paths.swap_in_folder(tmp, directory)
  if multi:
    multihost_utils.sync_global_devices(f"save_lm done {directory}")
  return directory


def _save_committed_by_config(directory: str, params, meta: dict) -> None:
  """save_lm where folders cannot be renamed: params to a fresh `params-<id>/`,
  then config.json (one object) naming it, then the old params folders go. A
  crash before config.json leaves the previous model readable (or none)."""
  multi = jax.process_count() > 1
  tag = np.array(np.random.default_rng().integers(2**31), np.int64)
  if multi:  # one folder name for the collective save: process 0's
    tag = multihost_utils.broadcast_one_to_all(tag)
  params_dir = f"params-{int(tag):08x}"
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.join(directory, params_dir), params)
    ckptr.wait_until_finished()
  if jax.process_index() == 0:
    utils.write_atomic({os.path.join(directory, "config.json"):
                        json.dumps({**meta, "params_dir": params_dir}, indent=2)})
    for name in paths.listdir(directory):  # replaced or never-committed params
      if name.startswith("params") and name != params_dir:
        paths.rmtree(os.path.join(directory, name))
  if multi:
    multihost_utils.sync_global_devices(f"save_lm done {directory}")


def check_model_dir(directory: str, field: str) -> None:
  """Raises FileNotFoundError naming the config `field` if `directory` holds no model."""
  if gguf.is_gguf(directory):
    if not os.path.isfile(directory):
      raise FileNotFoundError(f"config.{field}: no GGUF file at {directory}")
    return
  path = os.path.join(directory, "config.json")
  if not paths.isfile(path):
    raise FileNotFoundError(
        f"config.{field}: no model at {directory} ({path} is missing); export a pair with "
        f"scripts/export_pair.py or point --config.{field} at an io.save_lm folder")
  if fd.is_feature_draft(directory) and not paths.isfile(os.path.join(directory, "params.npz")):
    raise FileNotFoundError(f"config.{field}: the feature draft at {directory} has no params.npz")


def load_config(directory: str) -> tuple[tr.TransformerConfig, dict]:
  """(config, meta) of a model folder, a Hugging Face folder (models/hf.py) or a
  GGUF file (models/gguf.py). A feature draft is no model: load_draft_config."""
  if gguf.is_gguf(directory):
    return gguf.load_config(directory)
  if hf.is_hf_dir(directory):
    return hf.load_config(directory)
  path = os.path.join(directory, "config.json")
  if not paths.exists(path):
    raise FileNotFoundError(f"no model at {directory}: {path} is missing")
  meta = json.loads(paths.read_text(path))
  if meta.get("kind") == fd.KIND:
    raise ValueError(f"{directory} is a feature draft (models/feature_draft.py), not a model: "
                     "load it with io.load_draft")
  return tr.TransformerConfig(**meta["config"]).validate(), meta


def load_draft_config(directory: str) -> tuple[tr.TransformerConfig, dict]:
  """(config, meta) of a draft without its params: a model's config, or a feature
  draft's block (its vocab_size, d_model and max_seq_len are what checks need;
  meta["kind"] == feature_draft.KIND tells them apart)."""
  if fd.is_feature_draft(directory):
    meta = json.loads(paths.read_text(os.path.join(directory, "config.json")))
    return tr.TransformerConfig(**meta["block"]).validate(), meta
  return load_config(directory)


def restore_params(directory: str, config: tr.TransformerConfig, store_dtype: str,
                   shardings, params_dir: str = "params") -> Any:
  """Reads a model folder's params laid out by `shardings` (one per parameter;
  each process reads only its own shards), cast to config.param_dtype.
  `params_dir`: config.json's `params_dir` (save_lm on a bucket), else 'params'."""
  if gguf.is_gguf(directory):  # dequantized block by block
    return gguf.load_params(directory, config, shardings)
  if hf.is_hf_dir(directory):  # safetensors, read shard by shard
    return hf.load_params(directory, config, shardings)
  abstract = jax.tree_util.tree_map(
      lambda s, sharding: jax.ShapeDtypeStruct(s.shape, jnp.dtype(store_dtype), sharding=sharding),
      tr.param_shapes(config), shardings)
  with ocp.StandardCheckpointer() as ckptr:
    try:
      params = ckptr.restore(os.path.join(paths.absolute(directory), params_dir), abstract)
    except Exception as e:
      # The cause (often a long TensorStore spec) stays chained, not in the message.
      raise ModelLoadError(f"model params in {directory} are unreadable or do not match "
                           f"config.json ({type(e).__name__})") from e
  return jax.tree_util.tree_map(lambda x: x.astype(config.param_dtype), params)


def load_lm(directory: str, **config_overrides) -> LM:
  """Loads a model folder into an LM on this process's first device (params
  cast to the config's param_dtype). load_sharded_lm loads onto a mesh.

  Args:
    directory: folder written by `save_lm`, a Hugging Face Llama / Mistral /
      Qwen2 folder (config.json + safetensors), or a llama / mistral / qwen2
      GGUF file (dequantized into the param dtype, float32 by default).
    **config_overrides: e.g. dtype='bfloat16' or a larger max_seq_len.
  """
  config, meta = load_config(directory)
  config = config.replace(**config_overrides).validate()
  # An explicit one-device target: a folder saved from a mesh (other devices,
  # other processes) restores here as well.
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  shardings = jax.tree_util.tree_map(lambda _: device, tr.param_shapes(config))
  params = restore_params(directory, config, meta["store_dtype"], shardings,
                          meta.get("params_dir", "params"))
  return LM(config=config, params=params, tokenizer_id=meta.get("tokenizer_id"))


def load_sharded_lm(directory: str, mesh, rules: sh.Rules = sh.TENSOR_PARALLEL,
                    **config_overrides) -> LM:
  """`load_lm` laid out by `rules` on `mesh`: each process reads only its shards,
  for models too big for one host. Every divisibility is checked
  (sharding.param_shardings) before anything is read."""
  config, meta = load_config(directory)
  config = config.replace(**config_overrides).validate()
  params = restore_params(directory, config, meta["store_dtype"],
                          sh.param_shardings(config, mesh, rules), meta.get("params_dir", "params"))
  return LM(config=config, params=params, tokenizer_id=meta.get("tokenizer_id"))


def check_draft(draft: LM | fd.FeatureDraft, target: LM, field: str = "draft_dir",
                identity: bool = True) -> None:
  """ValueError, one line naming config.<field>, for a draft made for another tokenizer,
  target shape or (a feature draft that names it, when `identity`) another target:
  its meta's "target" is the params_fingerprint of the target it was trained on.
  (max_seq_len and dtypes are not part of it). Pass identity=False for a target whose
  loading changed its weights (a param_dtype override rounds them: another fingerprint)."""
  where = f"config.{field}"
  if draft.tokenizer_id and target.tokenizer_id and draft.tokenizer_id != target.tokenizer_id:
    raise ValueError(f"{where}: the draft was trained for another tokenizer (tokenizer_id "
                     f"{draft.tokenizer_id[:16]}) than the target's ({target.tokenizer_id[:16]})")
  if isinstance(draft, fd.FeatureDraft):
    try:
      draft.config.validate(target.config)
    except ValueError as e:
      raise ValueError(f"{where}: {e}") from e
    made_for = draft.meta.get("target")
    if identity and made_for and made_for != params_fingerprint(target):
      raise ValueError(f"{where}: the feature draft was trained on another target (fingerprint "
                       f"{made_for}) than this one ({params_fingerprint(target)})")
  elif draft.config.vocab_size != target.config.vocab_size:
    raise ValueError(f"{where}: draft vocab_size={draft.config.vocab_size} != the target's "
                     f"{target.config.vocab_size}")


def load_draft(directory: str, target: LM | None = None, field: str = "draft_dir",
               identity: bool = True, **config_overrides) -> LM | fd.FeatureDraft:
  """The draft in `directory`: a FeatureDraft for a feature-draft folder, else load_lm's
  LM (config_overrides apply to it). With `target`, check_draft refuses a draft made
  for another tokenizer or target, naming config.<field>."""
  if fd.is_feature_draft(directory):
    draft = fd.load(directory)
  else:
    draft = load_lm(directory, **config_overrides)
  if target is not None:
    check_draft(draft, target, field, identity)
  return draft
