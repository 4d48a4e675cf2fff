"""Training a feature draft (models/feature_draft.py) on the recorded target (alignment/record.py).

Nothing here runs the target: the recorded shards hold, at every position t,
the target's feature f_t and its top-k next-token log-probs. A training pair
is (norm(f_t), x_{t+1}) -> the target at t + 1:

  * feature regression: smooth L1 between the draft's normalised output and
    norm(f_{t+1}), so that the draft's output can stand in for the feature it
    does not have when it drafts its 2nd..G-th token (EAGLE);
  * classification: cross-entropy of the draft's head distribution p against
    the target's q_{t+1} on the top-k tokens that are head tokens, plus one
    "rest" category (q's remaining mass against p's), a coarsened forward KL.

Inputs see Gaussian noise of `feature_noise` times the feature RMS, so the draft
learns to read imperfect features (its own, at deeper draft steps).

The shards present at a run's first start are its data (<workdir>/shards.json),
from config.data_dir and any config.extra_data_dirs (recorded sets of the same target);
shards whose index is a multiple of `val_every` are held out: the metrics on
them (top-1 agreement with the target, and sum over head tokens of min(p, q),
a lower bound on the acceptance rate at temperature 1) are what the
training log and the closing note report against training tokens.
"""

from __future__ import annotations

import glob
import json
import os
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from specsample import checkpoint as ckpt_lib
from specsample import paths
from specsample import utils
from specsample.alignment import data as data_lib
from specsample.models import feature_draft as fd
from specsample.models import io as model_io
from specsample.training import loop
from specsample.training import train as train_lib


def shard_files(data_dir: str, val_every: int) -> tuple[list[str], list[str]]:
  """(training shards, held-out shards) of a recorded set, in index order."""
  files = sorted(glob.glob(os.path.join(data_dir, "shard-*.npz")))
  index = lambda f: int(re.search(r"shard-(\d+)", f).group(1))
  return ([f for f in files if index(f) % val_every], [f for f in files if index(f) % val_every == 0])


def data_dirs(config) -> tuple[str, ...]:
  """The recorded sets a run reads: config.data_dir, then config.extra_data_dirs."""
  return (config.data_dir, *config.extra_data_dirs)


def run_shards(config, target_fingerprint: str) -> tuple[dict, list[str], list[str]]:
  """(data_dir's manifest, training shards, held-out shards) over every recorded set.

  Each set holds out its own shards by `val_every`; a set recorded from another
  target is refused, naming it.
  """
  manifest, train_files, val_files = None, [], []
  for directory in data_dirs(config):
    made = json.loads(paths.read_text(os.path.join(directory, "manifest.json")))
    if made["target"] != target_fingerprint:
      raise ValueError(f"{directory} was recorded from another target than {config.target_dir}")
    manifest = manifest or made
    train, val = shard_files(directory, config.val_every)
    train_files, val_files = train_files + train, val_files + val
  return manifest, train_files, val_files


def load_rows(files: list[str]) -> list[dict[str, np.ndarray]]:
  """Each recorded row cut to its length: tokens, hidden, topk_ids, topk_logp."""
  rows = []
  for f in files:
    with np.load(f) as d:
      # Each d[k] decompresses the whole array: read it once, and copy the rows out,
      # so that no row is a view keeping its shard's array alive (33 shards of
      # views held 22 GB).
      arrays = {k: d[k] for k in ("tokens", "hidden", "topk_ids", "topk_logp")}
      for b, n in enumerate(d["length"]):
        rows.append({k: a[b, :int(n)].copy() for k, a in arrays.items()})
  return rows


class Windows:
  """Fixed-shape batches of `seq_len` consecutive pairs from random rows; batch `step`
  is a pure function of (seed, step). A row shorter than a window is right-padded
  (weights 0 there)."""

  def __init__(self, rows, seq_len: int, batch_size: int, seed: int):
    self.rows = [r for r in rows if len(r["tokens"]) >= 3]
    if not self.rows:
      raise ValueError("no recorded rows of at least 3 tokens")
    self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed

  def batch_at(self, step: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([self.seed, step])
    W, k = self.seq_len, self.rows[0]["topk_ids"].shape[-1]
    D = self.rows[0]["hidden"].shape[-1]
    out = {"tokens": np.zeros((self.batch_size, W), np.int32),            # x_{t+1}
           "feats": np.zeros((self.batch_size, W, D), np.float32),         # f_t
           "next_feats": np.zeros((self.batch_size, W, D), np.float32),    # f_{t+1}
           "topk_ids": np.zeros((self.batch_size, W, k), np.int32),        # q_{t+1}
           "topk_logp": np.full((self.batch_size, W, k), -1e4, np.float32),
           "weights": np.zeros((self.batch_size, W), np.float32)}
    for b in range(self.batch_size):
      row = self.rows[int(rng.integers(len(self.rows)))]
      pairs = len(row["tokens"]) - 2             # t = 0 .. n - 3 (q_{t+1} known for t + 1 <= n - 2)
      start = int(rng.integers(max(pairs - W, 0) + 1))
      m = min(W, pairs - start)
      t = slice(start, start + m)
      t1 = slice(start + 1, start + 1 + m)
      out["tokens"][b, :m] = row["tokens"][t1]
      out["feats"][b, :m] = row["hidden"][t]
      out["next_feats"][b, :m] = row["hidden"][t1]
      out["topk_ids"][b, :m] = row["topk_ids"][t1]
      out["topk_logp"][b, :m] = row["topk_logp"][t1]
      out["weights"][b, :m] = 1.0
    return out


def head_mask(head_ids: np.ndarray, vocab: int) -> np.ndarray:
  """[V] int32: the position of each id in head_ids, or -1 for ids outside the head."""
  where = np.full(vocab, -1, np.int32)
  where[head_ids] = np.arange(len(head_ids), dtype=np.int32)
  return where


def _position_terms(shared: dict, logits_BTN, out_BTD, target_BTD, batch):
  """Per position: (smooth L1 to the next feature, coarse cross-entropy, top-1 hit, sum min(p, q))."""
  regress_BT = optax_huber(out_BTD - target_BTD).mean(-1)
  log_p_BTN = jax.nn.log_softmax(logits_BTN.astype(jnp.float32), axis=-1)
  where_BTk = shared["where"][batch["topk_ids"]]                   # -1 outside the head
  in_head = where_BTk >= 0
  log_p_BTk = jnp.where(in_head, jnp.take_along_axis(log_p_BTN, jnp.maximum(where_BTk, 0), -1), -1e4)
  q_BTk = jnp.exp(batch["topk_logp"])
  p_top = jnp.where(in_head, jnp.exp(log_p_BTk), 0.0).sum(-1)
  q_rest = jnp.clip(1.0 - q_BTk.sum(-1), 0.0, 1.0)
  log_p_rest = jnp.log(jnp.clip(1.0 - p_top, 1e-6, 1.0))
  cross_BT = -(jnp.where(in_head, q_BTk * log_p_BTk, 0.0).sum(-1) + q_rest * log_p_rest)
  hit_BT = (shared["head_ids"][jnp.argmax(logits_BTN, -1)] == batch["topk_ids"][..., 0])
  overlap_BT = (jnp.minimum(jnp.exp(log_p_BTk), q_BTk) * in_head).sum(-1)
  return regress_BT, cross_BT, hit_BT.astype(jnp.float32), overlap_BT


def loss_and_metrics(config: fd.FeatureDraftConfig, params, shared: dict, batch, key,
                     feature_noise: float, feature_weight: float, class_weight: float,
                     unroll: int = 1, step_decay: float = 1.0):
  """(loss, metrics) of one batch (module docstring).

  With unroll > 1 the draft also trains on its own outputs (training-time
  test, fd.unrolled_forward): step k's terms are weighted step_decay ** k.
  Metrics: step 0's regress / classify / top1 / overlap; top1_{k+1} of step k;
  `accepted`, the mean number of tokens greedy drafting of `unroll` tokens
  from a position gets accepted (the target's argmax continuation); one more
  than it is the greedy tokens per target call at K = unroll.
  """
  eps = config.block.norm_eps
  feats = fd.normalize(shared, batch["feats"], eps)
  rms = jnp.sqrt(jnp.mean(feats * feats, axis=-1, keepdims=True))
  feats = feats + feature_noise * rms * jax.random.normal(key, feats.shape)
  outs = fd.unrolled_forward(config, params, shared, batch["tokens"], feats, unroll)
  target_BTD = fd.normalize(shared, batch["next_feats"], eps)
  w_BT = batch["weights"]
  T = w_BT.shape[1]
  loss, metrics, run_BT, accepted_BT = 0.0, {}, jnp.ones_like(w_BT), jnp.zeros_like(w_BT)
  for k, (logits_BTN, out_BTD) in enumerate(outs):
    valid_BT = w_BT * (jnp.arange(T) >= k)
    mean = lambda x_BT: (x_BT * valid_BT).sum() / jnp.maximum(valid_BT.sum(), 1.0)
    regress_BT, cross_BT, hit_BT, overlap_BT = _position_terms(shared, logits_BTN, out_BTD,
                                                               target_BTD, batch)
    loss = loss + step_decay ** k * (feature_weight * mean(regress_BT) + class_weight * mean(cross_BT))
    if k == 0:
      metrics.update(regress=mean(regress_BT), classify=mean(cross_BT), top1=mean(hit_BT),
                     overlap=mean(overlap_BT))
    else:
      metrics[f"top1_{k + 1}"] = mean(hit_BT)
    # The chain from committed position t reaches step k at t + k.
    run_BT = run_BT * jnp.pad(hit_BT[:, k:], ((0, 0), (0, k)))
    accepted_BT = accepted_BT + run_BT
  chains_BT = jnp.pad(w_BT[:, unroll - 1:], ((0, 0), (0, unroll - 1)))  # whole chain in the window
  metrics["accepted"] = (accepted_BT * chains_BT).sum() / jnp.maximum(chains_BT.sum(), 1.0)
  return loss, metrics


def optax_huber(x: jax.Array, delta: float = 1.0) -> jax.Array:
  """Smooth L1 (Huber with delta) elementwise."""
  a = jnp.abs(x)
  return jnp.where(a < delta, 0.5 * x * x / delta, a - 0.5 * delta)


def check_config(config) -> None:
  """ValueError naming the first bad field; nothing is loaded."""
  for name in ("num_steps", "batch_size", "seq_len", "head_size", "val_every", "log_every",
               "checkpoint_every", "eval_batches"):
    if not utils.is_positive_int(config[name]):
      raise ValueError(f"config.{name} must be an int >= 1, got {config[name]!r}")
  for name in ("feature_noise", "feature_weight", "class_weight"):
    if not isinstance(config[name], (int, float)) or config[name] < 0:
      raise ValueError(f"config.{name} must be a number >= 0, got {config[name]!r}")
  if not utils.is_positive_int(config.unroll) or config.unroll > config.seq_len:
    raise ValueError(f"config.unroll must be an int in [1, seq_len={config.seq_len}], "
                     f"got {config.unroll!r}")
  extra = config.extra_data_dirs
  if not isinstance(extra, (tuple, list)) or not all(isinstance(d, str) and d for d in extra):
    raise ValueError(f"config.extra_data_dirs must be a tuple of recorded-set folders (() for "
                     f"none), got {extra!r}")
  if not isinstance(config.step_decay, (int, float)) or not 0 < config.step_decay <= 1:
    raise ValueError(f"config.step_decay must be a number in (0, 1], got {config.step_decay!r}")


def _setup(config, workdir: str, load_train: bool = True):
  """(target, manifest, train rows, val rows, head_ids, draft config, shared arrays).

  The shard list and head_ids are fixed at a run's first start (<workdir>/shards.json,
  head_ids.npy), so a resumed run, or an export, sees the same data and head.
  """
  target = model_io.load_lm(config.target_dir)
  manifest, train_files, val_files = run_shards(config, data_lib.params_fingerprint(target))
  # The recording job may still be adding shards: the list is the first start's.
  listing = os.path.join(workdir, "shards.json")
  if paths.exists(listing):
    train_files, val_files = json.loads(paths.read_text(listing))
  if not train_files or not val_files:
    raise ValueError(f"{', '.join(data_dirs(config))}: need training and held-out shards (every "
                     f"{config.val_every}th is held out), found {len(train_files)} / {len(val_files)}")
  paths.write_atomic({listing: json.dumps([train_files, val_files])})
  head_path = os.path.join(workdir, "head_ids.npy")
  train_rows = load_rows(train_files) if load_train or not paths.exists(head_path) else []
  if paths.exists(head_path):
    with paths.open_file(head_path, "rb") as f:
      head_ids = np.load(f)
  else:
    counts = np.bincount(np.concatenate([r["topk_ids"][:-1, 0] for r in train_rows]).astype(np.int64),
                         minlength=target.config.vocab_size)
    head_ids = fd.frequent_tokens(counts, config.head_size)
    with paths.local_file(head_path) as tmp:
      np.save(tmp, head_ids)
  draft_cfg = fd.config_for(target.config, config.head_size)
  shared = {**fd.shared_from(target.config, target.params, head_ids),
            "where": jnp.asarray(head_mask(head_ids, target.config.vocab_size))}
  val_rows = load_rows(val_files) if load_train else []
  return target, manifest, train_rows, val_rows, head_ids, draft_cfg, shared


def _save(config, workdir, target, manifest, draft_cfg, params, head_ids, train_rows, last) -> str:
  return fd.save(os.path.join(workdir, "model"), draft_cfg, params, head_ids,
                 tokenizer_id=target.tokenizer_id,
                 extra={"target": manifest["target"], "data": ", ".join(data_dirs(config)),
                        "recorded_positions": int(sum(len(r["tokens"]) for r in train_rows)),
                        "last_metrics": last})


def _initial_params(config, draft_cfg: fd.FeatureDraftConfig, target):
  """A fresh draft (the target's last block), or config.init_from's parameters (a
  warm start; the head is the run's own, so only the block and fc carry over)."""
  if not config.init_from:
    return fd.init_params(draft_cfg, jax.random.key(config.seed), target.params)
  start = fd.load(config.init_from)
  if start.config.block != draft_cfg.block:
    raise ValueError(f"config.init_from: {config.init_from} has another block shape than this "
                     f"target's draft")
  if start.tokenizer_id != target.tokenizer_id:
    raise ValueError(f"config.init_from: {config.init_from} was trained for another tokenizer")
  return start.params


def export(config: ml_collections.ConfigDict, workdir: str) -> str:
  """<workdir>/model from the run's latest checkpoint (while it trains, or after a kill)."""
  target, manifest, _, _, head_ids, draft_cfg, _ = _setup(config, workdir, load_train=False)
  optimizer = train_lib.make_optimizer(config)
  params = fd.init_params(draft_cfg, jax.random.key(config.seed), target.params)
  template = train_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                  opt_state=optimizer.init(params))
  checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"))
  if checkpointer.latest_step() is None:
    raise ValueError(f"{workdir} has no checkpoint to export")
  step, state, _ = checkpointer.restore(template)
  checkpointer.close()
  return _save(config, workdir, target, manifest, draft_cfg, state.params, head_ids, [], {"step": step})


def run(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Trains (or resumes) a feature draft on config.data_dir's shards; writes <workdir>/model."""
  check_config(config)
  target, manifest, train_rows, val_rows, head_ids, draft_cfg, shared = _setup(config, workdir)
  optimizer = train_lib.make_optimizer(config)
  params = _initial_params(config, draft_cfg, target)
  state = train_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                               opt_state=optimizer.init(params))
  weights = dict(feature_noise=config.feature_noise, feature_weight=config.feature_weight,
                 class_weight=config.class_weight, unroll=config.unroll, step_decay=config.step_decay)
  update = loop.make_update_step(
      lambda p, sh, batch, key: loss_and_metrics(draft_cfg, p, sh, batch, key, **weights), optimizer)
  clean = dict(weights, feature_noise=0.0)
  evaluate = jax.jit(lambda p, sh, batch: loss_and_metrics(draft_cfg, p, sh, batch, jax.random.key(0),
                                                           **clean)[1])
  train_batches = Windows(train_rows, config.seq_len, config.batch_size, config.seed)
  val_batches = Windows(val_rows, config.seq_len, config.batch_size, config.seed + 1)

  def step_fn(state, step):
    key = jax.random.fold_in(jax.random.key(config.seed), step)
    state, metrics = update(state, shared, train_batches.batch_at(step), key)
    if (step + 1) % config.log_every == 0 or step + 1 == config.num_steps:
      held = [evaluate(state.params, shared, val_batches.batch_at(i)) for i in range(config.eval_batches)]
      metrics.update({f"val_{k}": np.mean([float(h[k]) for h in held]) for k in held[0]})
      metrics["train_tokens_seen"] = (step + 1) * config.batch_size * config.seq_len
    return state, metrics

  state, last = loop.run_steps(state, step_fn, config, workdir, desc="feature draft",
                               postfix={"top1": "val_top1", "overlap": "val_overlap"},
                               tokens_per_step=config.batch_size * config.seq_len)
  return _save(config, workdir, target, manifest, draft_cfg, state.params, head_ids, train_rows, last)
