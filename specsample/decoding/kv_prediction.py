"""KV Prediction prefill (Horton et al. 2024): the auxiliary model runs the prompt, a
learned predictor fills the target's cache, the target runs only the last prompt token.

    kvp = load_kvp("workdirs/kvp/draft/model", target)
    out = generate(target, prompts, prefill="kv_prediction", kvp=kvp, method="speculative")

What the output follows: the TARGET CONDITIONED ON THE PREDICTED PROMPT CACHE,
not the target's exact distribution given the prompt. Positions 0..P-2 of the
target's cache are predicted; from the last prompt token on, every key and
value is the target's own. Autoregressive decoding samples that conditioned
model; speculative decoding is lossless with respect to it (same tokens under
greedy, same distribution under sampling), since verification only ever
reads the target's cache.

When the auxiliary model is also the speculative draft (draft=None, or
draft=kvp.aux), its prompt cache IS the draft's cache: no second prefill.

An exact tail (KVP.exact_tail = T > 0, an extension of the paper): the target
itself runs the T prompt positions before the last one, against the predicted
cache of the positions before them, and writes its own keys and values there;
only positions 0..P-2-T stay predicted. It costs one T-token target pass
(`run_tail`) and carries what the last tokens say exactly. The predictor is
trained for its T (training/kvp_train.py, config.exact_tail); kvp.json records it.

A feature draft (models/feature_draft.py) reads the target's features, which a
predicted prompt does not have. With an exact tail, the draft gets that pass's
features; without one, the target computes them for the last FEATURE_TAIL
positions before the last prompt token, against the predicted cache and
without writing to it (one FEATURE_TAIL-token forward). Earlier prompt pairs
get a zero feature, so the draft sees only their tokens. The target's cache,
and so what the output follows, is the same with any draft or none.

A KVP folder (written by training/kvp_train.py):
  aux/        the auxiliary model, an ordinary models.io folder (usable as draft=);
              absent when the auxiliary is the target's own layers, unchanged
              (kvp.json's aux_keep_layers): load_kvp rebuilds it from the target
  predictor/  orbax params of models.kv_predictor.KVPredictor
  kvp.json    layer map, exact tail, the target's and the auxiliary's fingerprints,
              tokenizer
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import uuid
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from specsample import paths, utils
from specsample import sharding as sh
from specsample.decoding import common
from specsample.models import feature_draft as fd
from specsample.models import io as model_io
from specsample.models import kv_predictor as kvp_lib
from specsample.models import transformer as tr
from specsample.models.lm import LM, params_fingerprint

PREFILLS = ("full", "kv_prediction")
# Prompt positions whose target features a feature draft gets after a predicted prompt.
FEATURE_TAIL = 16
# A model's identity (architecture and weights; not max_seq_len or dtypes).
fingerprint = params_fingerprint


@dataclasses.dataclass(frozen=True)
class KVP:
  """An auxiliary model and its predictor, ready for `generate(prefill='kv_prediction')`.

  Attributes:
    aux: the auxiliary model (pass it as draft= to reuse its cache, or omit draft).
    params: the predictor's parameters (models.kv_predictor.KVPredictor).
    layer_map: for each target layer, the auxiliary layer it reads.
    exact_tail: prompt positions before the last that the target runs itself
      (module docstring); 0 is the paper's prefill.
  """
  aux: LM
  params: Any
  layer_map: tuple[int, ...]
  exact_tail: int = 0


@dataclasses.dataclass(frozen=True)
class KVPSpec:
  """Static part of a KVP prefill: a jit static argument of the decode loop."""
  config: kvp_lib.KVPConfig
  aux_is_draft: bool  # the auxiliary's prompt cache becomes the draft cache
  feature_draft: bool = False  # the draft reads target features: `run_tail` makes them
  exact_tail: int = 0  # KVP.exact_tail


def kvp_config(target: LM, kvp: KVP) -> kvp_lib.KVPConfig:
  """The predictor's config for this target, validated (ValueError naming the field)."""
  return kvp_lib.KVPConfig(target=target.config, aux=kvp.aux.config,
                           layer_map=tuple(kvp.layer_map)).validate()


@functools.lru_cache(maxsize=32)
def _param_shapes(config: kvp_lib.KVPConfig):
  """The predictor's parameter shapes (cached: generate checks them on every call)."""
  return jax.tree_util.tree_map(lambda x: x.shape, jax.eval_shape(
      lambda: kvp_lib.init_params(config, jax.random.key(0))))


def check(target: LM, draft: LM | None, method: str, prefill: str, kvp: KVP | None
          ) -> KVPSpec | None:
  """Checks the prefill settings before anything compiles; returns the loop's KVPSpec.

  Raises:
    ValueError: unknown prefill, missing kvp, mismatched vocabularies or
      tokenizers, a bad layer map, or predictor params of other shapes.
  """
  if prefill not in PREFILLS:
    raise ValueError(f"prefill must be one of {PREFILLS}, got {prefill!r}")
  if prefill == "full":
    if kvp is not None:
      raise ValueError("kvp is set but prefill='full'; pass prefill='kv_prediction' to use it")
    return None
  if not isinstance(kvp, KVP):
    raise ValueError(f"prefill='kv_prediction' needs kvp=KVP(...) (see load_kvp), got {kvp!r}")
  config = kvp_config(target, kvp)
  aux = kvp.aux
  if aux.tokenizer_id and target.tokenizer_id and aux.tokenizer_id != target.tokenizer_id:
    raise ValueError(f"kvp auxiliary and target tokenizers differ: {aux.tokenizer_id!r} vs "
                     f"{target.tokenizer_id!r}")
  if not utils.is_int(kvp.exact_tail) or kvp.exact_tail < 0:
    raise ValueError(f"kvp.exact_tail must be an int >= 0, got {kvp.exact_tail!r}")
  want = _param_shapes(config)
  got = jax.tree_util.tree_map(lambda x: tuple(x.shape), kvp.params)
  if want != got:
    raise ValueError("kvp.params do not fit this target / auxiliary pair (another layer map "
                     "or other kv shapes): load the predictor made for them")
  speculative = method == "speculative"
  feature = speculative and isinstance(draft, fd.FeatureDraft)
  aux_is_draft = speculative and (draft is None or draft is aux or (
      isinstance(draft, LM) and draft.config == aux.config and draft.params is aux.params))
  return KVPSpec(config=config, aux_is_draft=aux_is_draft, feature_draft=feature,
                 exact_tail=int(kvp.exact_tail))


def prefill(spec: KVPSpec, target_params, aux_params, predictor_params, prompts_BP: jax.Array,
            prompt_len_B: jax.Array, buffer_len: int
            ) -> tuple[tr.KVCache, tr.KVCache, jax.Array | None]:
  """Auxiliary prefill, predicted target cache, exact tail: all at `prompt_len - 1` positions.

  Returns:
    (target cache, auxiliary cache, features): the caches [B, buffer_len] long,
    in the loops' convention (decoding/common.py): the last prompt token is in
    neither, so the target's first step runs it against positions 0..P-2.
    features: [B, P, D] target features for a feature draft (zero where the
    target did not run; module docstring), else None.
  """
  tokens_BL = common.init_buffer(prompts_BP, buffer_len)
  aux_cache = common.prefill(spec.config.aux, aux_params, tokens_BL, prompt_len_B,
                             prompts_BP.shape[1])
  target_cache = kvp_lib.predict_cache(spec.config, predictor_params, aux_cache)
  if not (spec.exact_tail or spec.feature_draft):
    return target_cache, aux_cache, None
  tail = spec.exact_tail or FEATURE_TAIL
  written, hidden_BTD, start_B = run_tail(spec.config.target, target_params, target_cache,
                                          prompts_BP, prompt_len_B, tail)
  if spec.exact_tail:
    target_cache = written
  features = (_place_features(hidden_BTD, start_B, prompt_len_B, prompts_BP.shape[1])
              if spec.feature_draft else None)
  return target_cache, aux_cache, features


def run_tail(config: tr.TransformerConfig, target_params, target_cache: tr.KVCache,
             tokens_BX: jax.Array, prompt_len_B: jax.Array, tail: int
             ) -> tuple[tr.KVCache, jax.Array, jax.Array]:
  """The target on prompt positions start_b .. P_b-2 against the cache before them.

  start_b = max(0, P_b-1-T) with T = min(tail, X): row b's last T positions before
  its last prompt token (all of them when the prompt is shorter). tokens_BX holds
  each row's prompt from position 0 (a prompt buffer or a longer window).

  Returns:
    (cache, hidden [B, T, D], start [B]): the cache with the target's own keys
    and values at start_b .. P_b-2 and lengths P_b - 1 (a short row's block
    also wrote positions past P_b-2; they are stale), and the block's features.
  """
  T = min(tail, tokens_BX.shape[1])
  start_B = jnp.maximum(prompt_len_B - 1 - T, 0)  # start + T <= X: the block is in the buffer
  block_BT = common.read_rows(tokens_BX.astype(jnp.int32), start_B, T)
  _, cache, hidden_BTD = tr.forward_with_hidden(config, target_params, block_BT,
                                                target_cache.with_lengths(start_B))
  return cache.with_lengths(prompt_len_B - 1), hidden_BTD, start_B


def _place_features(hidden_BTD: jax.Array, start_B: jax.Array, prompt_len_B: jax.Array,
                    width: int) -> jax.Array:
  """[B, width, D]: row b's block features at positions start_b .. P_b-2, zero elsewhere."""
  T = hidden_BTD.shape[1]
  keep_BT = start_B[:, None] + jnp.arange(T) <= prompt_len_B[:, None] - 2
  hidden_BTD = jnp.where(keep_BT[..., None], hidden_BTD, 0)
  zeros_XD = jnp.zeros((width + T, hidden_BTD.shape[-1]), hidden_BTD.dtype)
  place = lambda h_TD, s: jax.lax.dynamic_update_slice_in_dim(zeros_XD, h_TD, s, 0)[:width]
  return jax.vmap(place)(hidden_BTD, start_B)


def first_token_logits(spec: KVPSpec, target_params, aux_params, predictor_params,
                       prompts_BP: jax.Array) -> jax.Array:
  """Time-to-first-token path for full-length [B, P] prompts: auxiliary on
  positions 0..P-2, predictor, one target pass on the exact tail and token P-1
  (one token without a tail). Returns [B, V].

  The auxiliary never sees the last prompt token here (as in the paper); the
  cache is sized P so nothing else is computed.
  """
  B, P = prompts_BP.shape
  aux_cache = tr.init_cache(spec.config.aux, B, P)
  _, aux_cache = tr.forward(spec.config.aux, aux_params, prompts_BP[:, :P - 1], aux_cache)
  target_cache = kvp_lib.predict_cache(spec.config, predictor_params, aux_cache)
  start = max(P - 1 - spec.exact_tail, 0)  # the exact tail and the last token: one pass
  logits_BTV, _ = tr.forward(spec.config.target, target_params, prompts_BP[:, start:],
                             target_cache.with_lengths(jnp.full((B,), start, jnp.int32)))
  return logits_BTV[:, -1]


def predictor_shardings(config: kvp_lib.KVPConfig, mesh, rules: sh.Rules = sh.TENSOR_PARALLEL):
  """NamedSharding of every predictor parameter under the models' logical-axis rules."""
  shapes = jax.eval_shape(lambda: kvp_lib.init_params(config, jax.random.key(0)))
  is_spec = lambda x: isinstance(x, jax.sharding.PartitionSpec)
  return jax.tree_util.tree_map(
      lambda spec, s: jax.sharding.NamedSharding(mesh, sh.logical_to_spec(
          tuple(spec), s.shape, mesh, sh.canonical_rules(rules), what="kv predictor parameter")),
      kvp_lib.logical_axes(config), shapes, is_leaf=is_spec)


# ----------------------------------------------------------------------------- folders

def save_kvp(directory: str, target: LM, aux: LM, predictor_params, layer_map, *,
             extra: dict | None = None, aux_keep_layers: tuple[int, ...] | None = None) -> str:
  """Writes a KVP folder (local or gs://), each write through specsample.paths.

  Local: a temporary sibling renamed into place. A bucket cannot rename
  folders, so there aux/ is committed by its own config.json (models/io.py),
  the predictor goes to a fresh predictor-<id>/, and kvp.json, written last,
  names it: an interrupted save leaves the previous KVP loadable. The
  auxiliary is stored in float32 so that its fingerprint survives the round trip.
  With aux_keep_layers, `aux` is the target's layers aux_keep_layers, unchanged
  (kv_predictor.prune_layers): it is not stored, and load_kvp rebuilds it.
  """
  directory = paths.absolute(directory)
  meta = {"layer_map": list(layer_map), "target_fingerprint": fingerprint(target),
          "aux_fingerprint": fingerprint(aux), "tokenizer_id": target.tokenizer_id,
          **(extra or {})}
  if aux_keep_layers is not None:
    rebuilt = kvp_lib.prune_layers(target.config, target.params, tuple(aux_keep_layers))
    if fingerprint(LM(*rebuilt)) != meta["aux_fingerprint"]:
      raise ValueError(f"aux_keep_layers={list(aux_keep_layers)}: the auxiliary is not these "
                       "layers of the target, unchanged; save it whole instead")
    meta["aux_keep_layers"] = list(aux_keep_layers)

  def write(root: str, predictor_dir: str) -> None:
    if aux_keep_layers is None:
      model_io.save_lm(os.path.join(root, "aux"), aux.config, aux.params,
                       tokenizer_id=aux.tokenizer_id, store_dtype="float32")
    with ocp.StandardCheckpointer() as ckptr:
      ckptr.save(os.path.join(root, predictor_dir), jax.device_get(predictor_params))
      ckptr.wait_until_finished()
    paths.write_atomic({os.path.join(root, "kvp.json"):
                        json.dumps({**meta, "predictor_dir": predictor_dir}, indent=2)})

  if paths.supports_rename(directory):
    tmp = f"{directory}.tmp-{uuid.uuid4().hex[:8]}"
    write(tmp, "predictor")
    paths.swap_in_folder(tmp, directory)
    return directory
  predictor_dir = f"predictor-{uuid.uuid4().hex[:8]}"
  write(directory, predictor_dir)
  for name in paths.listdir(directory):  # replaced or never-committed predictors
    if name.startswith("predictor") and name != predictor_dir:
      paths.rmtree(os.path.join(directory, name))
  return directory


def read_meta(directory: str) -> dict:
  path = os.path.join(directory, "kvp.json")
  if not paths.isfile(path):
    raise FileNotFoundError(f"no KV predictor at {directory} ({path} is missing); train one "
                            "with scripts/train_kvp.py")
  return json.loads(paths.read_text(path))


def load_kvp(directory: str, target: LM, **aux_overrides) -> KVP:
  """Loads a KVP folder for `target`, checking both fingerprints before anything compiles.

  Args:
    directory: a folder written by save_kvp (training's <workdir>/model).
    target: the target model it must have been trained for.
    **aux_overrides: auxiliary config overrides, e.g. max_seq_len=2048.

  Raises:
    ValueError: the predictor was made for another target or auxiliary model,
      or their tokenizers / vocabularies differ.
  """
  meta = read_meta(directory)
  got = fingerprint(target)
  if meta["target_fingerprint"] != got:
    raise ValueError(f"KV predictor at {directory} was trained for target "
                     f"{meta['target_fingerprint']}, not this target ({got})")
  if "aux_keep_layers" in meta:  # the target's own layers
    aux_cfg, aux_params = kvp_lib.prune_layers(target.config, target.params,
                                               tuple(meta["aux_keep_layers"]))
    aux = LM(aux_cfg.replace(**aux_overrides).validate(), aux_params, target.tokenizer_id)
  else:
    aux = model_io.load_lm(os.path.join(directory, "aux"), **aux_overrides)
  aux_got = fingerprint(aux)
  if meta["aux_fingerprint"] != aux_got:
    raise ValueError(f"KV predictor at {directory} was trained with auxiliary model "
                     f"{meta['aux_fingerprint']}, but its aux/ folder holds {aux_got}")
  config = kvp_lib.KVPConfig(target=target.config, aux=aux.config,
                             layer_map=tuple(meta["layer_map"])).validate()
  abstract = jax.eval_shape(lambda: kvp_lib.init_params(config, jax.random.key(0)))
  with ocp.StandardCheckpointer() as ckptr:
    params = ckptr.restore(os.path.join(paths.absolute(directory),
                                        meta.get("predictor_dir", "predictor")), abstract)
  kvp = KVP(aux=aux, params=jax.tree_util.tree_map(jnp.asarray, params),
            layer_map=config.layer_map, exact_tail=int(meta.get("exact_tail", 0)))
  check(target, None, "autoregressive", "kv_prediction", kvp)
  return kvp


def check_aux_fingerprint(directory: str, aux: LM) -> None:
  """Raises ValueError if `aux` is not the auxiliary model the folder's predictor was made for."""
  meta, got = read_meta(directory), fingerprint(aux)
  if meta["aux_fingerprint"] != got:
    raise ValueError(f"KV predictor at {directory} was trained with auxiliary model "
                     f"{meta['aux_fingerprint']}, not {got}")
