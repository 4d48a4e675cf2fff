"""Language-model training: AdamW + warmup/cosine, clipped grads, orbax resume.

`train(config, workdir)` is the whole loop; scripts/train.py only parses flags.
Everything a run needs to be resumed lives in `workdir`:

  workdir/checkpoints/<step>/   orbax: params, optimizer state, step
  workdir/metrics.jsonl         one JSON object per logged step (process 0)
  workdir/config.json           the resolved config

The data order is a pure function of (seed, step) (see training/data.py), so a
run killed at any point and restarted from its last checkpoint sees exactly the
batches it would have seen, and ends with identical parameters.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh, NamedSharding
from tqdm import tqdm

from specsample import checkpoint as ckpt_lib
from specsample import corpus as corpus_lib
from specsample import paths
from specsample import sharding as sh
from specsample import tokenizer as tokenizer_lib
from specsample import utils
from specsample.models import io as model_io
from specsample.models import transformer as tr
from specsample.training import data as data_lib
from specsample.training import losses


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def model_config_from(config: ml_collections.ConfigDict) -> tr.TransformerConfig:
  """TransformerConfig from `config.model`, validated (errors name `model.<field>`)."""
  fields = {f.name for f in tr.dataclasses.fields(tr.TransformerConfig)}
  unknown = sorted(set(config.model.keys()) - fields)
  if unknown:
    raise ValueError(f"unknown model fields {unknown}; allowed: {sorted(fields)}")
  return tr.TransformerConfig(**config.model.to_dict()).validate()


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks the training fields before anything is compiled or written."""
  for name in ("num_steps", "eval_every", "eval_batches", "checkpoint_every",
               "keep_checkpoints", "log_every"):
    value = config[name]
    if not isinstance(value, int) or value <= 0:
      raise ValueError(f"config.{name} must be a positive int, got {value!r}")
  for name in ("seq_len", "batch_size"):
    value = config.data[name]
    if not isinstance(value, int) or value <= 0:
      raise ValueError(f"config.data.{name} must be a positive int, got {value!r}")
  opt = config.optim
  if not opt.peak_lr > 0:
    raise ValueError(f"config.optim.peak_lr must be > 0, got {opt.peak_lr}")
  if not 0 <= opt.warmup_steps < config.num_steps:
    raise ValueError(f"config.optim.warmup_steps must be in [0, num_steps), got {opt.warmup_steps}")
  if not 0 <= opt.min_lr_ratio <= 1:
    raise ValueError(f"config.optim.min_lr_ratio must be in [0, 1], got {opt.min_lr_ratio}")
  if not opt.grad_clip > 0:
    raise ValueError(f"config.optim.grad_clip must be > 0, got {opt.grad_clip}")
  model = model_config_from(config)
  if config.data.seq_len > model.max_seq_len:
    raise ValueError(f"config.data.seq_len={config.data.seq_len} exceeds "
                     f"model.max_seq_len={model.max_seq_len}")


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  opt = config.optim
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=opt.peak_lr, warmup_steps=opt.warmup_steps,
      decay_steps=config.num_steps, end_value=opt.peak_lr * opt.min_lr_ratio)
  # No weight decay on norm scales (1-D parameters).
  decay_mask = lambda params: jax.tree_util.tree_map(lambda p: p.ndim > 1, params)
  return optax.chain(
      optax.clip_by_global_norm(opt.grad_clip),
      optax.adamw(schedule, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay, mask=decay_mask))


def make_train_step(model_cfg: tr.TransformerConfig, optimizer) -> Callable:
  """Jitted (state, batch) -> (state, metrics); the state is donated.

  A batch is a dict of `inputs`, `targets` [B, L] int32 and `weights` [B, L].
  """

  def loss_fn(params, batch):
    logits_BTV, _ = tr.forward(model_cfg, params, batch["inputs"])
    loss, _ = losses.cross_entropy(logits_BTV, batch["targets"], batch["weights"])
    return loss

  def step(state: TrainState, batch):
    loss, grads = jax.value_and_grad(loss_fn)(state.params, batch)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return jax.jit(step, donate_argnums=0)


def make_eval_step(model_cfg: tr.TransformerConfig) -> Callable:
  def eval_step(params, batch):
    logits_BTV, _ = tr.forward(model_cfg, params, batch["inputs"])
    loss, count = losses.cross_entropy(logits_BTV, batch["targets"], batch["weights"])
    return loss * count, count
  return jax.jit(eval_step)


def init_state(model_cfg: tr.TransformerConfig, optimizer, seed: int) -> TrainState:
  params = tr.init_params(model_cfg, jax.random.key(seed))
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))


# ----------------------------------------------------------------------------- on a mesh

def train_state_shardings(model_cfg: tr.TransformerConfig, optimizer, mesh: sh.AnyMesh,
                          rules: sh.Rules = sh.TENSOR_PARALLEL):
  """A training.train.TrainState of NamedShardings: optimizer moments follow
  their parameters (optax.tree_map_params); counters are replicated."""
  params = sh.param_shardings(model_cfg, mesh, rules)
  opt_shapes = jax.eval_shape(optimizer.init, sh.param_shapes(model_cfg))
  rep = sh.replicated(mesh)
  opt_state = optax.tree_map_params(
      optimizer, lambda _, sharding: sharding, opt_shapes, params,
      transform_non_params=lambda _: rep, is_leaf=lambda x: isinstance(x, NamedSharding))
  return TrainState(step=rep, params=params, opt_state=opt_state)


def init_train_state(model_cfg: tr.TransformerConfig, optimizer, seed: int, mesh: Mesh,
                     rules: sh.Rules = sh.TENSOR_PARALLEL):
  """training.train.init_state, with every array created in its sharding."""
  shardings = train_state_shardings(model_cfg, optimizer, mesh, rules)
  return jax.jit(lambda: init_state(model_cfg, optimizer, seed),
                 out_shardings=shardings)()


def make_sharded_train_step(model_cfg: tr.TransformerConfig, optimizer, mesh: Mesh,
                            rules: sh.Rules = sh.TENSOR_PARALLEL, *, batch_size: int | None = None,
                            seq_len: int | None = None):
  """training.train's step under jit with in/out shardings; the state is donated.

  Args:
    model_cfg, optimizer: as for train.make_train_step.
    mesh, rules: where the state and batch live.
    batch_size, seq_len: when given, checked against the mesh before compiling.

  Returns:
    (state, batch) -> (state, metrics). The batch dict's [B, L] arrays are
    split over the 'batch' rule's axes (host arrays are placed by jit
    single-process; multi-host pass global arrays, e.g. via put_global).
  """
  state_shardings = train_state_shardings(model_cfg, optimizer, mesh, rules)
  if batch_size is not None:
    sh.batch_sharding(mesh, rules, (batch_size, seq_len or 1), what="training batch [B, L]")
  # Shape (0, 0): only the axes are wanted here; sizes were checked above if known.
  batch = sh.batch_sharding(mesh, rules, (0, 0), what="training batch [B, L]")
  step = make_train_step(model_cfg, optimizer)  # jitted; inlined into ours
  return jax.jit(lambda state, b: step(state, b),
                 in_shardings=(state_shardings, batch),
                 out_shardings=(state_shardings, sh.replicated(mesh)),
                 donate_argnums=0)


def evaluate(eval_step, params, val_batches) -> float:
  """Token-weighted mean validation loss (nats/token) over fixed batches."""
  total, count = 0.0, 0.0
  for batch in val_batches:
    loss_sum, n = eval_step(params, batch)
    total, count = total + float(loss_sum), count + float(n)
  return total / max(count, 1.0)


class CorpusData:
  """Training and validation data of the offline Python corpus."""

  def __init__(self, config: ml_collections.ConfigDict, vocab_size: int):
    tok = tokenizer_lib.Tokenizer.load(config.tokenizer)
    if tok.vocab_size != vocab_size:
      raise ValueError(f"model.vocab_size={vocab_size} does not match the tokenizer "
                       f"{config.tokenizer} (vocab {tok.vocab_size})")
    corpus = corpus_lib.build_corpus(config.data.include_site_packages)
    streams = data_lib.tokenize_corpus(corpus, tok, config.data.cache_dir)
    self._data_lib, self._val = data_lib, streams["val"]
    self.train = data_lib.PackedDataset(streams["train"], config.data.seq_len,
                                        config.data.batch_size, seed=config.seed)
    self.seq_len, self.batch_size = config.data.seq_len, config.data.batch_size

  def batch_at(self, step: int) -> dict:
    return self.train.batch_at(step)

  def val_batches(self, n: int) -> list[dict]:
    it = self._data_lib.eval_batches(self._val, self.seq_len, self.batch_size)
    return [b for _, b in zip(range(n), it)]


def _truncate_metrics(path: str, step: int) -> None:
  """Drops rows logged after `step` by a run that died before its next
  checkpoint: the resumed run logs those steps again (atomic rewrite)."""
  rows = [line + "\n" for line in paths.read_text(path).splitlines()
          if line.strip() and json.loads(line)["step"] <= step]
  paths.write_atomic({path: "".join(rows)})


def make_mesh(config: ml_collections.ConfigDict):
  """The training mesh of `config.mesh`, or None: every axis 1 (or no `mesh`
  field) means one device and the unsharded steps, exactly as without meshes.

  Raises:
    ValueError: unknown axis names, or a size that does not match the devices.
  """
  mesh_cfg = config.get("mesh")
  if mesh_cfg is None or all(size == 1 for size in mesh_cfg.values()):
    return None
  return sh.make_mesh(dict(mesh_cfg))


def make_sharded_steps(config: ml_collections.ConfigDict, model_cfg: tr.TransformerConfig,
                       optimizer, mesh, rules: sh.Rules):
  """(train_step, eval_step, place) on a mesh: jitted with in/out shardings.

  `place(batch)` turns a host batch that every process computed in full (the
  data order is a pure function of (seed, step)) into global arrays split over
  the 'batch' rule's axes; each process keeps only its own devices' rows.

  Raises:
    ValueError: a batch or parameter dimension its mesh axes do not divide.
  """
  shape = (config.data.batch_size, config.data.seq_len)
  train_step = make_sharded_train_step(model_cfg, optimizer, mesh, rules,
                                          batch_size=shape[0], seq_len=shape[1])
  batch_sharding = sh.batch_sharding(mesh, rules, shape, what="training batch [B, L]")
  # Replicated scalars: every process can read the loss.
  eval_step = jax.jit(make_eval_step(model_cfg),
                      in_shardings=(sh.param_shardings(model_cfg, mesh, rules), batch_sharding),
                      out_shardings=sh.replicated(mesh))
  place = lambda batch: {k: sh.put_global(v, batch_sharding) for k, v in batch.items()}
  return train_step, eval_step, place


def train(config: ml_collections.ConfigDict, workdir: str, *, datasets=None,
          stop_after_step: int | None = None) -> dict:
  """Trains (or resumes) a model; returns the last logged metrics.

  Args:
    config: see configs/train.py.
    workdir: output folder; an existing checkpoint there is resumed.
    datasets: optional object with `batch_at(step)` and `val_batches(n)`
      (see CorpusData, built from `config.data` and the tokenizer otherwise).
    stop_after_step: return right after this step as if the process had
      been killed (no final save; a checkpoint only if the step is due), to
      exercise resumption or train in stages; default `config.stop_after_step`
      (0 = off).
  """
  validate(config)
  if stop_after_step is None and config.get("stop_after_step", 0):
    stop_after_step = config.stop_after_step
  model_cfg = model_config_from(config)
  mesh = make_mesh(config)  # None: one device; bad meshes fail before any write
  rules = None if mesh is None else sh.get_rules(config.get("sharding_rules", "tensor_parallel"))
  is_main = jax.process_index() == 0
  if is_main:  # a missing or read-only bucket fails here, not at the first checkpoint
    paths.check_writable(workdir, "workdir")
  if datasets is None:
    datasets = CorpusData(config, vocab_size=model_cfg.vocab_size)
  train_data = val_data = datasets
  if is_main:
    utils.write_atomic({os.path.join(workdir, "config.json"): config.to_json(indent=2)})
  optimizer = make_optimizer(config)
  if mesh is None:
    train_step, eval_step = make_train_step(model_cfg, optimizer), make_eval_step(model_cfg)
    place = lambda batch: batch
  else:
    train_step, eval_step, place = make_sharded_steps(config, model_cfg, optimizer, mesh, rules)
  checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                                       save_every=config.checkpoint_every,
                                       keep=config.keep_checkpoints)
  if mesh is None:
    state = init_state(model_cfg, optimizer, config.seed)
  else:  # created already sharded; orbax restores into the same shardings
    state = init_train_state(model_cfg, optimizer, config.seed, mesh, rules)
  if checkpointer.latest_step() is not None:
    _, state, _ = checkpointer.restore(state)
  start = int(state.step)
  val_batches = [place(b) for b in val_data.val_batches(config.eval_batches)]
  tokens_per_step = config.data.batch_size * config.data.seq_len

  metrics_path = os.path.join(workdir, "metrics.jsonl")
  if is_main and start and paths.exists(metrics_path):
    _truncate_metrics(metrics_path, start)
  last: dict = {}
  t_last, steps_since = time.perf_counter(), 0
  bar = tqdm(range(start, config.num_steps), initial=start, total=config.num_steps,
             desc=f"train {os.path.basename(workdir.rstrip('/'))}", disable=not is_main,
             mininterval=2.0)
  for step in bar:
    state, metrics = train_step(state, place(train_data.batch_at(step)))
    steps_since += 1
    done = step + 1
    if done % config.log_every == 0 or done == config.num_steps or done % config.eval_every == 0:
      metrics = {k: float(v) for k, v in metrics.items()}  # blocks on this step only
      now = time.perf_counter()
      metrics.update(step=done, tokens_per_s=steps_since * tokens_per_step / (now - t_last))
      t_last, steps_since = now, 0
      if done % config.eval_every == 0 or done == config.num_steps:
        metrics["val_loss"] = evaluate(eval_step, state.params, val_batches)
      bar.set_postfix(loss=f"{metrics['loss']:.3f}", val=metrics.get("val_loss", float("nan")))
      if is_main:
        paths.append_line(metrics_path, json.dumps(metrics))
      last = metrics
    checkpointer.save(done, state, {"step": done}, force=done == config.num_steps)
    if stop_after_step is not None and done >= stop_after_step:
      break
  checkpointer.wait()
  checkpointer.close()
  last["params"] = state.params
  return last


def export_run(workdir: str, out: str, *, one_device: bool = False) -> int:
  """Writes a training run's latest checkpoint as a model folder (models.io.save_lm).

  Nothing is initialised: the train state is restored into abstract shapes,
  laid out on the run's own mesh (`config.mesh`, the shardings training
  saved), so a model too big for one host is exported by running this on
  every worker of its slice. one_device=True restores onto one device instead
  (a small run trained on a mesh, exported on a laptop). metrics.jsonl is
  copied beside the model.

  Returns:
    The exported step.
  """
  config = ml_collections.ConfigDict(
      json.loads(paths.read_text(os.path.join(workdir, "config.json"))))
  model_cfg = model_config_from(config)
  optimizer = make_optimizer(config)
  mesh = None if one_device else make_mesh(config)
  abstract = jax.eval_shape(lambda: init_state(model_cfg, optimizer, config.seed))
  if mesh is not None:
    shardings = train_state_shardings(
        model_cfg, optimizer, mesh, sh.get_rules(config.get("sharding_rules", "tensor_parallel")))
    abstract = jax.tree_util.tree_map(
        lambda x, sharding: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
        abstract, shardings)
  step, state, _ = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints")).restore(abstract)
  model_io.save_lm(out, model_cfg, state.params,
                   tokenizer_id=tokenizer_lib.Tokenizer.load(config.tokenizer).fingerprint,
                   extra={"trained_steps": step, "train_config": config.to_dict()})
  metrics = os.path.join(workdir, "metrics.jsonl")
  if jax.process_index() == 0 and paths.exists(metrics):
    paths.copy(metrics, os.path.join(out, "metrics.jsonl"))
  return step
