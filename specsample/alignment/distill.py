"""Draft alignment: fine-tune the draft against the frozen target's distributions.

`run(config, workdir)` builds (or resumes) the distillation set, then
fine-tunes the draft with one of `alignment.losses.LOSSES`, starting from
`config.draft_dir`. Everything needed to resume lives in `workdir`:

  workdir/checkpoints/<step>/  orbax: params, optimizer state, step
  workdir/metrics.jsonl        one JSON object per logged step
  workdir/config.json          the resolved config
  workdir/model/               the fine-tuned draft (models.io.save_lm), at the end

`config.data.source="corpus"` trains on corpus windows instead of the
target's continuations: the teacher-forced baseline of issue 11.
"""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import ml_collections

from specsample import corpus as corpus_lib
from specsample import paths
from specsample import utils
from specsample.alignment import data as data_lib
from specsample.alignment import losses
from specsample.alignment import teacher
from specsample.models import io as model_io
from specsample.models import transformer as tr
from specsample.tokenizer import Tokenizer
from specsample.training import data as corpus_data
from specsample.training import loop as loop_lib
from specsample.training import train as train_lib


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first bad field. Cheap: nothing is loaded."""
  losses.get_loss(config.loss)
  if config.data.source not in ("distill", "corpus"):
    raise ValueError(f"config.data.source must be 'distill' or 'corpus', got {config.data.source!r}")
  if config.data.loss_on not in ("all", "completion"):
    raise ValueError(f"config.data.loss_on must be 'all' or 'completion', got "
                     f"{config.data.loss_on!r}")
  data_lib.check_settings(config)
  if not utils.is_int(config.teacher_topk) or config.teacher_topk < 0:
    raise ValueError(f"config.teacher_topk must be an int >= 0 (0 = exact target every step), "
                     f"got {config.teacher_topk!r}")
  for name in ("num_steps", "batch_size", "seq_len", "log_every", "checkpoint_every"):
    value = config[name]
    if not utils.is_positive_int(value):
      raise ValueError(f"config.{name} must be an int >= 1, got {value!r}")
  if config.seq_len < config.data.max_new_tokens + 1:
    raise ValueError(f"config.seq_len={config.seq_len} must exceed data.max_new_tokens="
                     f"{config.data.max_new_tokens}: a row keeps its whole completion")


def load_pair(config):
  """(target LM, draft LM, tokenizer), with their vocabularies and tokenizers checked."""
  tokenizer = Tokenizer.load(config.tokenizer)
  target, draft = model_io.load_lm(config.target_dir), model_io.load_lm(config.draft_dir)
  for name, m in (("target", target), ("draft", draft)):
    tokenizer.check_model(name, m, config.tokenizer, f" at {getattr(config, name + '_dir')}")
  return target, draft, tokenizer


def make_batches(config, target, tokenizer, workdir: str):
  """The training batches: distillation set (built or resumed) or corpus windows."""
  corpus = corpus_lib.build_corpus(root=config.data.corpus_root or None)
  if config.data.source == "corpus":
    streams = corpus_data.tokenize_corpus(corpus, tokenizer, config.data.cache_dir)
    return corpus_data.PackedDataset(streams["train"], config.seq_len, config.batch_size,
                                     seed=config.seed)
  data_dir = config.data.data_dir or os.path.join(workdir, "data")
  data_lib.build(config, target, tokenizer, data_dir, corpus.train)
  rows = data_lib.load_rows(data_dir, data_lib.manifest_for(config, target, tokenizer))
  batches = data_lib.DistillBatches(rows, config.seq_len, config.batch_size, config.seed,
                                    config.data.loss_on)
  if config.teacher_topk:
    batches.attach_teacher(*teacher.topk_cache(target, batches.tokens[:, :-1],
                                               config.teacher_topk, data_dir))
  return batches


@functools.lru_cache(maxsize=8)
def make_step(loss_name: str, draft_cfg, target_cfg, optim_json: str, num_steps: int):
  """(optimizer, jitted (state, target_params, batch, key) -> (state, metrics)).

  Cached on its arguments, so a resumed run in the same process (a test, a
  notebook) reuses the compiled step.
  """
  loss = losses.get_loss(loss_name)
  optimizer = train_lib.make_optimizer(ml_collections.ConfigDict(
      {"optim": json.loads(optim_json), "num_steps": num_steps}))

  def loss_fn(params, target_params, batch, key):
    draft_logits = tr.forward(draft_cfg, params, batch["inputs"])[0]
    if "topk_ids" in batch:  # cached teacher: compare on the top-k + tail categories
      target_argmax = batch["topk_ids"][..., 0]
      draft_in, target_in = teacher.coarsen(draft_logits, batch["topk_ids"], batch["topk_logq"])
    else:
      target_logits = jax.lax.stop_gradient(
          tr.forward(target_cfg, target_params, batch["inputs"])[0])
      target_argmax, draft_in, target_in = jnp.argmax(target_logits, -1), draft_logits, target_logits
    value, metrics = loss(draft_in, target_in, batch["weights"], key)
    agree = (jnp.argmax(draft_logits, -1) == target_argmax).astype(jnp.float32)
    mask = batch["weights"]
    metrics["greedy_agreement"] = (agree * mask).sum() / jnp.maximum(mask.sum(), 1.0)
    metrics["tokens"] = mask.sum()
    return value, metrics

  return optimizer, loop_lib.make_update_step(loss_fn, optimizer)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Builds the data (if needed) and fine-tunes the draft; returns the last metrics."""
  check_config(config)
  paths.check_writable(workdir, "workdir")  # a bad bucket fails here, not at the first checkpoint
  target, draft, tokenizer = load_pair(config)
  utils.write_atomic({os.path.join(workdir, "config.json"): config.to_json(indent=2)})
  batches = make_batches(config, target, tokenizer, workdir)

  optimizer, step_fn = make_step(config.loss, draft.config, target.config,
                                 config.optim.to_json(sort_keys=True), config.num_steps)
  state = train_lib.TrainState(step=jnp.zeros((), jnp.int32), params=draft.params,
                               opt_state=optimizer.init(draft.params))
  base_key = jax.random.key(config.seed)
  step = lambda state, i: step_fn(state, target.params, batches.batch_at(i),
                                  jax.random.fold_in(base_key, i))
  state, last = loop_lib.run_steps(
      state, step, config, workdir, desc=f"distill {config.loss}",
      postfix={"loss": "loss", "tvd": "tvd", "agree": "greedy_agreement"},
      tokens_per_step=config.batch_size * config.seq_len)
  if int(state.step) == config.num_steps:
    model_io.save_lm(os.path.join(workdir, "model"), draft.config, state.params,
                     tokenizer_id=tokenizer.fingerprint,
                     extra={"distilled_from": config.draft_dir, "loss": config.loss,
                            "steps": config.num_steps, "data_source": config.data.source})
    paths.copy(os.path.join(workdir, "metrics.jsonl"),
               os.path.join(workdir, "model", "metrics.jsonl"))
  return last
