"""Training an auxiliary model and KV predictor for KV Prediction (Horton et al. 2024).

`run(config, workdir)` trains the auxiliary model and the predictor against a
FROZEN target on corpus training windows. Each row of a batch is a window of
max_prompt + continuation tokens split at its own prompt length P, drawn
uniformly in [min_prompt, max_prompt] from (seed, step). The loss is

  w_target * CE of the target on the continuation, run from the last prompt
             token against the PREDICTED cache of positions 0..P-2 (with
             config.exact_tail = T, the target's own at P-1-T .. P-2, computed
             against the predicted positions before them, as in decoding)
  + w_aux  * CE of the auxiliary model on the whole window
  + w_l1   * sum over target layers of mean |K_pred - K| + mean |V_pred - V|,

with every weight 1 by default (the paper's setting, without its 1e-4
z-loss). The L1 term compares post-rotary caches at every position of the
window: the predictor is per position, so continuation positions are extra
examples of the same map. A term of weight 0 is not computed (l1 = 0 saves
the target's pass over the whole window).

config.train_aux = False freezes the auxiliary (only the predictor learns).
config.init = "lstsq" starts the predictor from the least-squares fit of
training/kvp_fit.py instead of random weights, and takes the fit's layer map;
config.init = "kvp" starts from the KVP folder config.init_dir (its predictor
and layer map: a new schedule, longer prompts or an exact tail on a trained one).
Everything needed to resume lives in `workdir`:

  workdir/fit.npz              init="lstsq": the fitted predictor and its layer map
  workdir/fit_model/           init="lstsq": the fit alone as a KVP folder (for comparison)
  workdir/checkpoints/<step>/  orbax: aux + predictor params, optimizer state, step
  workdir/metrics.jsonl        one JSON object per logged step
  workdir/config.json          the resolved config
  workdir/model/               the KVP folder (decoding/kv_prediction.py), at the end

The batch order and the splits are pure functions of (seed, step), so a
killed run resumed from its last checkpoint ends with identical parameters.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from specsample import corpus as corpus_lib
from specsample import paths, utils
from specsample.decoding import common
from specsample.decoding import kv_prediction as kvp_decode
from specsample.models import io as model_io
from specsample.models import kv_predictor as kvp_lib
from specsample.models import transformer as tr
from specsample.models.lm import LM
from specsample.tokenizer import Tokenizer
from specsample.training import data as corpus_data
from specsample.training import kvp_fit
from specsample.training import losses
from specsample.training import loop as loop_lib
from specsample.training import train as train_lib

AUX_KINDS = ("draft", "pruned")
INITS = ("random", "lstsq", "kvp")


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first bad field. Cheap: nothing is loaded."""
  if config.aux not in AUX_KINDS:
    raise ValueError(f"config.aux must be one of {AUX_KINDS}, got {config.aux!r}")
  if config.init not in INITS:
    raise ValueError(f"config.init must be one of {INITS}, got {config.init!r}")
  if not isinstance(config.train_aux, bool):
    raise ValueError(f"config.train_aux must be True or False, got {config.train_aux!r}")
  if config.init == "kvp" and not config.get("init_dir"):
    raise ValueError("config.init='kvp' needs config.init_dir, a KVP folder (another run's "
                     "<workdir>/model) for this target and auxiliary")
  if config.init == "lstsq":
    for name in ("num_windows", "window"):
      if not utils.is_positive_int(config.fit[name]):
        raise ValueError(f"config.fit.{name} must be an int >= 1, got {config.fit[name]!r}")
    ridge = config.fit.ridge
    if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or not ridge > 0:
      raise ValueError(f"config.fit.ridge must be a number > 0, got {ridge!r}")
  if not utils.is_int(config.exact_tail) or config.exact_tail < 0:
    raise ValueError(f"config.exact_tail must be an int >= 0, got {config.exact_tail!r}")
  for name in ("num_steps", "batch_size", "log_every", "checkpoint_every"):
    if not utils.is_positive_int(config[name]):
      raise ValueError(f"config.{name} must be an int >= 1, got {config[name]!r}")
  for name in ("min_prompt", "max_prompt", "continuation"):
    if not utils.is_positive_int(config.data[name]):
      raise ValueError(f"config.data.{name} must be an int >= 1, got {config.data[name]!r}")
  if not 2 <= config.data.min_prompt <= config.data.max_prompt:
    raise ValueError(f"config.data.min_prompt must be in [2, max_prompt={config.data.max_prompt}],"
                     f" got {config.data.min_prompt}")
  if not utils.is_int(config.optim.warmup_steps) or not 0 <= config.optim.warmup_steps < config.num_steps:
    raise ValueError(f"config.optim.warmup_steps must be an int in [0, num_steps={config.num_steps}), "
                     f"got {config.optim.warmup_steps!r}")
  for name in ("target_ce", "aux_ce", "l1"):
    value = config.weights[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
      raise ValueError(f"config.weights.{name} must be a number >= 0, got {value!r}")


def load_models(config) -> tuple[LM, LM, kvp_lib.KVPConfig, Tokenizer]:
  """(target, initial auxiliary, predictor config, tokenizer), all checked before compiling."""
  tokenizer_path = config.tokenizer or config.target_dir  # '' = the target folder's
  tokenizer = Tokenizer.load(tokenizer_path)
  target = model_io.load_lm(config.target_dir)
  if config.aux == "draft":
    aux = model_io.load_lm(config.aux_dir)
  else:
    aux_cfg, aux_params = kvp_lib.prune_layers(target.config, target.params,
                                               tuple(config.keep_layers))
    aux = LM(aux_cfg, aux_params, target.tokenizer_id)
  for name, m in (("target", target), ("aux", aux)):
    tokenizer.check_model(name, m, tokenizer_path, " model")
  kvp_cfg = kvp_lib.KVPConfig(target=target.config, aux=aux.config,
                              layer_map=tuple(config.layer_map)).validate()
  windows = [("config.data.max_prompt + continuation",
              config.data.max_prompt + config.data.continuation)]
  if config.init == "lstsq":
    windows.append(("config.fit.window", config.fit.window))
  for field, window in windows:
    for name, m in (("target", target), ("aux", aux)):
      if window > m.config.max_seq_len:
        raise ValueError(f"{field} = {window} exceeds the {name}'s "
                         f"max_seq_len={m.config.max_seq_len}")
  return target, aux, kvp_cfg, tokenizer


class SplitBatches:
  """Corpus windows of max_prompt + continuation tokens, each with its own prompt length."""

  def __init__(self, tokens: np.ndarray, config):
    d = config.data
    self.windows = corpus_data.PackedDataset(tokens, d.max_prompt + d.continuation,
                                             config.batch_size, seed=config.seed)
    self.min_prompt, self.max_prompt, self.seed = d.min_prompt, d.max_prompt, config.seed

  def batch_at(self, step: int) -> dict:
    """inputs, targets [B, W] and split [B] (prompt lengths), a pure function of (seed, step)."""
    batch = self.windows.batch_at(step)
    rng = np.random.default_rng([self.seed, step, 1])
    split = rng.integers(self.min_prompt, self.max_prompt + 1, size=batch["inputs"].shape[0])
    return {"inputs": batch["inputs"], "targets": batch["targets"], "split": split.astype(np.int32)}


def kvp_loss(kvp_cfg: kvp_lib.KVPConfig, weights: dict, continuation: int, exact_tail: int,
             trainable, frozen, batch) -> tuple[jax.Array, dict]:
  """The weighted three-term loss (module docstring) and its parts; a weight-0 term is 0.

  Args:
    exact_tail: prompt positions before the last that the target runs itself
      before the continuation (decoding/kv_prediction.py); 0 = the paper's.
    trainable: {'predictor': params}, and 'aux': params unless the auxiliary is frozen.
    frozen: {'target': params}, and 'aux': params when the auxiliary is frozen.
    batch: inputs, targets [B, W] int32 and split [B] (prompt lengths P).
  """
  aux_cfg, target_cfg = kvp_cfg.aux, kvp_cfg.target
  target_params, aux_params = frozen["target"], trainable.get("aux", frozen.get("aux"))
  inputs_BW, targets_BW, split_B = batch["inputs"], batch["targets"], batch["split"]
  B, W = inputs_BW.shape
  zero = jnp.zeros((), jnp.float32)
  aux_logits_BWV, aux_cache = tr.forward(aux_cfg, aux_params, inputs_BW,
                                         tr.init_cache(aux_cfg, B, W))
  aux_ce = losses.cross_entropy(aux_logits_BWV, targets_BW)[0] if weights["aux_ce"] else zero
  pred = kvp_lib.predict_cache(kvp_cfg, trainable["predictor"], aux_cache)
  l1 = zero
  if weights["l1"]:
    _, real = tr.forward(target_cfg, target_params, inputs_BW, tr.init_cache(target_cfg, B, W))
    real = jax.lax.stop_gradient(real)
    l1 = sum(jnp.abs(p - r).mean() for p, r in zip(pred.k + pred.v, real.k + real.v))
  if exact_tail:  # the target's own keys and values at P-1-T .. P-2, as in decoding
    pred, _, _ = kvp_decode.run_tail(target_cfg, target_params, pred, inputs_BW, split_B,
                                     exact_tail)
  # The target runs tokens P-1 .. P+C-2 of each row against the prompt's cache 0..P-2.
  start_B = split_B - 1
  block_BC = common.read_rows(inputs_BW, start_B, continuation)
  labels_BC = common.read_rows(targets_BW, start_B, continuation)
  logits_BCV, _ = tr.forward(target_cfg, target_params, block_BC, pred.with_lengths(start_B))
  target_ce, _ = losses.cross_entropy(logits_BCV, labels_BC)
  total = weights["target_ce"] * target_ce + weights["aux_ce"] * aux_ce + weights["l1"] * l1
  return total, {"target_ce": target_ce, "aux_ce": aux_ce, "l1": l1}


@functools.lru_cache(maxsize=8)
def make_step(kvp_cfg: kvp_lib.KVPConfig, weights_json: str, continuation: int, exact_tail: int,
              optim_json: str, num_steps: int):
  """(optimizer, jitted (state, frozen params, batch) -> (state, metrics)); cached, so a
  resumed run in the same process reuses the compiled step."""
  optimizer = train_lib.make_optimizer(ml_collections.ConfigDict(
      {"optim": json.loads(optim_json), "num_steps": num_steps}))
  loss_fn = functools.partial(kvp_loss, kvp_cfg, json.loads(weights_json), continuation,
                              exact_tail)
  return optimizer, loop_lib.make_update_step(loss_fn, optimizer)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (or resumes) the auxiliary model and predictor; returns the last metrics."""
  check_config(config)
  target, aux, kvp_cfg, tokenizer = load_models(config)
  paths.makedirs(workdir)
  utils.write_atomic({os.path.join(workdir, "config.json"): config.to_json(indent=2)})
  corpus = corpus_lib.build_corpus(root=config.data.corpus_root or None)
  streams = corpus_data.tokenize_corpus(corpus, tokenizer, config.data.cache_dir)
  batches = SplitBatches(streams["train"], config)
  # A pruned auxiliary that stays the target's own layers is rebuilt from the target on load.
  keep = tuple(config.keep_layers) if config.aux == "pruned" and not config.train_aux else None
  if config.init == "lstsq":
    exact = ({t: j for j, t in enumerate(config.keep_layers)} if config.aux == "pruned" else {})
    layer_map, predictor = kvp_fit.fit_once(os.path.join(workdir, "fit.npz"), kvp_cfg, target,
                                            aux, streams["train"], config.fit, exact)
    kvp_cfg = dataclasses.replace(kvp_cfg, layer_map=layer_map)
    if not paths.isfile(os.path.join(workdir, "fit_model", "kvp.json")):  # the fit alone, to compare
      kvp_decode.save_kvp(os.path.join(workdir, "fit_model"), target, aux, predictor, layer_map,
                          extra={"aux_kind": config.aux, "steps": 0, "init": "lstsq",
                                 "target_dir": config.target_dir}, aux_keep_layers=keep)
  elif config.init == "kvp":  # another run's predictor and layer map (a new schedule or tail)
    start = kvp_decode.load_kvp(config.init_dir, target, max_seq_len=aux.config.max_seq_len)
    kvp_decode.check_aux_fingerprint(config.init_dir, aux)
    kvp_cfg = dataclasses.replace(kvp_cfg, layer_map=start.layer_map)
    predictor = start.params
  else:
    predictor = kvp_lib.init_params(kvp_cfg, jax.random.key(config.seed))

  optimizer, step_fn = make_step(kvp_cfg, config.weights.to_json(sort_keys=True),
                                 config.data.continuation, config.exact_tail,
                                 config.optim.to_json(sort_keys=True), config.num_steps)
  params = {"predictor": predictor}
  frozen = {"target": target.params}
  if config.train_aux:
    params["aux"] = aux.params
  else:
    frozen["aux"] = aux.params
  # Committed to one device like the step's outputs, so step 2 reuses step 1's compile.
  state = jax.device_put(train_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                              opt_state=optimizer.init(params)),
                         jax.local_devices()[0])
  state, last = loop_lib.run_steps(
      state, lambda state, step: step_fn(state, frozen, batches.batch_at(step)), config,
      workdir, desc=f"kvp {config.aux}", postfix={"loss": "loss", "tce": "target_ce", "l1": "l1"})
  if int(state.step) == config.num_steps:
    trained_aux = LM(aux.config, state.params.get("aux", aux.params), tokenizer.fingerprint)
    out = kvp_decode.save_kvp(
        os.path.join(workdir, "model"), target, trained_aux, state.params["predictor"],
        kvp_cfg.layer_map, extra={"aux_kind": config.aux, "steps": config.num_steps,
                                  "init": config.init, "train_aux": config.train_aux,
                                  "exact_tail": config.exact_tail,
                                  "target_dir": config.target_dir,
                                  **({"init_dir": config.init_dir} if config.init == "kvp" else {})}, aux_keep_layers=keep)
    paths.copy(os.path.join(workdir, "metrics.jsonl"), os.path.join(out, "metrics.jsonl"))
  return last
