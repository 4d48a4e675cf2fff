"""What the fine-tuning jobs share: one optimizer step, and a resumable loop around it.

Draft alignment (alignment/distill.py) and KV Prediction (training/kvp_train.py)
train different parameters against a frozen target with different losses, but
step, checkpoint, resume and log the same way:

  * `make_update_step`: value_and_grad of a loss with metrics, an optax update,
    the step counter; jitted, state donated.
  * `run_steps`: restores the latest checkpoint of <workdir>/checkpoints,
    drops metrics lines past it, runs to config.num_steps (or
    config.stop_after_step), appends a metrics line every config.log_every
    steps and checkpoints every config.checkpoint_every (and at the end).
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Callable, Mapping

import jax
import optax
from tqdm import tqdm

from specsample import checkpoint as ckpt_lib
from specsample import paths
from specsample.training import train as train_lib


def make_update_step(loss_fn: Callable, optimizer: optax.GradientTransformation) -> Callable:
  """Jitted (state, *args) -> (state, metrics) for loss_fn(params, *args) -> (loss, metrics).

  The metrics gain "loss" and "grad_norm"; the state argument is donated.
  """
  @functools.partial(jax.jit, donate_argnums=0)
  def step(state: train_lib.TrainState, *args):
    (value, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, *args)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics.update(loss=value, grad_norm=optax.tree.norm(grads))
    return train_lib.TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return step


def run_steps(state: train_lib.TrainState, step_fn: Callable, config, workdir: str, *,
              desc: str, postfix: Mapping[str, str], tokens_per_step: int | None = None
              ) -> tuple[train_lib.TrainState, dict]:
  """Trains `state` (or the checkpoint it resumes from) with step_fn(state, step index).

  Args:
    state: the initial state; its structure is the restore template.
    step_fn: (state, step) -> (state, metrics), e.g. a `make_update_step` step
      with its batch for that step bound.
    config: num_steps, log_every, checkpoint_every, stop_after_step.
    workdir: checkpoints/ and metrics.jsonl go here.
    desc, postfix: the progress bar's label, and {label: metric} shown on it.
    tokens_per_step: if given, metrics lines also carry tokens_per_s.

  Returns:
    (the final state, the last metrics line written, or {} if none was).
  """
  checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                                       save_every=config.checkpoint_every, keep=2)
  if checkpointer.latest_step() is not None:
    _, state, _ = checkpointer.restore(state)
  start = int(state.step)
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  if start and paths.exists(metrics_path):
    train_lib._truncate_metrics(metrics_path, start)  # pylint: disable=protected-access
  last, t_last = {}, time.perf_counter()
  bar = tqdm(range(start, config.num_steps), initial=start, total=config.num_steps, desc=desc,
             mininterval=2.0)
  for step in bar:
    state, metrics = step_fn(state, step)
    done = step + 1
    if done % config.log_every == 0 or done == config.num_steps:
      metrics = {k: float(v) for k, v in metrics.items()}
      now = time.perf_counter()
      s_per_step = (now - t_last) / config.log_every
      metrics.update(step=done, s_per_step=s_per_step)
      if tokens_per_step:
        metrics["tokens_per_s"] = tokens_per_step / s_per_step
      t_last = now
      bar.set_postfix({label: f"{metrics[key]:.3f}" for label, key in postfix.items()})
      paths.append_line(metrics_path, json.dumps(metrics))
      last = metrics
    checkpointer.save(done, state, {"step": done}, force=done == config.num_steps)
    if config.stop_after_step and done >= config.stop_after_step:
      break
  checkpointer.wait()
  checkpointer.close()
  return state, last
