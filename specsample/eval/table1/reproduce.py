"""Table 1 of Chen et al. (2023), reproduced on one machine: `run` computes the missing cells
of the grid, then writes the report (scripts/reproduce.py; configs/reproduce.py has the fields).

The grid (grid.py) is {autoregressive, speculative} x {greedy, nucleus} x
{HumanEval, XSum} at batch 1 and K = config.num_draft (the
paper's setting), with config.auto a speculative cell at num_draft="auto" beside
each, the same at every extra batch size, and a K sweep at batch 1. The draft is
a draft model or a feature draft (models.io.load_draft); prompts are raw or in
the target's chat template (config.prompt_format, cells.py).
ms/token = summed wall time of the generate calls / summed mean new tokens per
row (per-row latency), timed after a warm-up on the same shapes. speedup = AR
ms/token / SpS ms/token at the same task, sampling and batch size. Quality is
checked, not assumed (report.build_rows, parity.py): greedy SpS must equal AR
token for token; every sampled cell must pass the per-token calibration test;
sampled SpS quality must agree with AR; all sampled checks together are
Bonferroni-corrected to a false failure rate of 1 - config.confidence.
Without config.xsum.path the XSum rows run on the docstring-summarization
stand-in (eval/tasks/docsum.py), labelled as such; its size and hash go to
<results_dir>/docsum.json and the table's header.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Callable

import jax
from tqdm import tqdm

from specsample import paths as paths_lib
from specsample.eval.table1 import cells as cells_lib
from specsample.eval.table1 import grid, markdown, plots, report, store
from specsample.eval.speed.timing import code_version, machine_info
from specsample.models import feature_draft as fd
from specsample.models import io as model_io
from specsample.models import transformer as tr
from specsample.tokenizer import Tokenizer
from specsample.utils import write_atomic


def _model_summary(cfg: tr.TransformerConfig, meta: dict | None = None) -> str:
  """Layers, width and parameters; a feature draft's own (its head reuses the target's)."""
  if (meta or {}).get("kind") == fd.KIND:
    draft_cfg = fd.FeatureDraftConfig(cfg, meta["head_size"])
    params = tr.count_params(jax.eval_shape(lambda: fd.init_params(draft_cfg, jax.random.key(0))))
    return (f"feature draft: 1 block on the target's features, d_model {cfg.d_model}, head "
            f"over {meta['head_size']} frequent tokens, {params / 1e6:.2f}M params")
  params = tr.count_params(tr.param_shapes(cfg))
  return f"{cfg.num_layers} layers, d_model {cfg.d_model}, {params / 1e6:.2f}M params"


def _check_models(config, tokenizer: Tokenizer) -> tuple[tuple, tuple]:
  """(target, draft) (config, meta) from config.json alone, each checked against the
  tokenizer: a model made for another vocabulary or tokenizer is named, unloaded."""
  target = model_io.load_config(config.target_dir)
  draft = model_io.load_draft_config(config.draft_dir)
  source = grid.tokenizer_path(config)
  for name, (cfg, meta) in (("target_dir", target), ("draft_dir", draft)):
    if cfg.vocab_size != tokenizer.vocab_size:
      raise ValueError(f"config.{name}: model vocab_size {cfg.vocab_size} != tokenizer "
                       f"({source}) vocab {tokenizer.vocab_size}")
    made_for = meta.get("tokenizer_id")
    if made_for and made_for != tokenizer.fingerprint:
      raise ValueError(f"config.{name}: made for another tokenizer ({made_for[:16]}) than "
                       f"{source} ({tokenizer.fingerprint[:16]})")
  return target, draft


def _compute_record(cell, fingerprint: str, config, tasks: dict, models: dict,
                    tokenizer: Tokenizer, progress: bool, prepared: cells_lib.Prepared) -> dict:
  """Computes one cell; returns its complete record (what the store saves)."""
  started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
  machine = {**machine_info(), "backend": jax.default_backend()}
  t0 = time.perf_counter()
  if cell.kind == "canonical":
    body = cells_lib.compute_canonical_cell(tasks[cell.task], models)
  else:
    body = cells_lib.compute_generate_cell(cell, config, tasks[cell.task], models, tokenizer,
                                           progress, prepared)
  return {"schema": store.SCHEMA_VERSION, "key": cell.key, "fingerprint": fingerprint,
          "cell": dataclasses.asdict(cell), "started": started, "machine": machine,
          "code": code_version(),
          "elapsed_s": time.perf_counter() - t0, **body, "complete": True}


def _canonical_summary(record: dict, machines: dict) -> dict:
  """The canonical log-likelihood, naming its machine by legend id when it has one."""
  ident = report.machine_identity(record["machine"])
  machine = next((m for m, info in machines.items() if report.machine_identity(info) == ident),
                 report.describe_machine(record["machine"]))
  return {**record["canonical"], "machine": machine}


def run(config, workdir: str, results_dir: str, command: str = "", progress: bool = True,
        start: Callable[[], None] = lambda: None) -> dict:
  """Computes the missing cells of the grid, then writes the report.

  Args:
    config: a configs/reproduce.py config.
    workdir: cell records live in <workdir>/cells; a rerun reuses them.
    results_dir: table1.md, table1.csv, table1.json and the PNG plots go here.
    command: the command line, recorded in the report.
    progress: show tqdm bars.
    start: called once the config is checked, before any JAX work.

  Returns:
    The results dict (as in table1.json) plus 'markdown'.
  """
  grid.check_config(config)
  start()
  t_start = time.perf_counter()
  tokenizer = Tokenizer.load(grid.tokenizer_path(config))
  if config.prompt_format == "chat" and not getattr(tokenizer, "chat_template", None):
    raise ValueError(f"config.prompt_format='chat' needs a tokenizer with a chat template; "
                     f"{grid.tokenizer_path(config)} has none (use 'raw')")
  (target_cfg, target_meta), (draft_cfg, draft_meta) = _check_models(config, tokenizer)
  tasks = cells_lib.load_tasks(config, tokenizer, workdir)
  cells_lib.check_fits(config, tasks, target_cfg, draft_cfg)
  fps = {"target": store.dir_fingerprint(config.target_dir),
         "draft": store.dir_fingerprint(config.draft_dir),
         "tokenizer": tokenizer.fingerprint}

  cells, cell_store = grid.plan_cells(config), store.CellStore(workdir)
  records, todo = {}, []
  for cell in cells:
    fp = store.cell_fingerprint(cell, config, tasks, fps)
    record, why = cell_store.load(cell, fp)
    if record is None:
      todo.append((cell, fp))
      if why != "not computed yet":
        tqdm.write(f"cell {cell.key}: stored record {why}")
    else:
      records[cell.key] = record

  models: dict = {}
  if todo:
    target = model_io.load_lm(config.target_dir)
    models = {"target": target, "draft": model_io.load_draft(config.draft_dir, target)}
    # Every loop the cells to compute need, two compiles at a time, then warmed up once
    # each and their prefills timed (cells.prepare).
    prepared = cells_lib.prepare([cell for cell, _ in todo], config, tasks, models, tokenizer)
    tqdm.write(f"compiled the cells' decode loops in {prepared.compile_s:.0f} s, warmed them "
               f"up and timed their prefills in {prepared.warm_up_s:.0f} s")
  else:
    prepared = cells_lib.Prepared()
  bar = tqdm(todo, desc="table 1 cells", unit="cell", disable=not progress)
  for cell, fp in bar:
    bar.set_postfix_str(cell.key)
    record = _compute_record(cell, fp, config, tasks, models, tokenizer, progress, prepared)
    cell_store.save(record)
    records[cell.key] = record
    if cell.kind == "generate":
      tqdm.write(f"{cell.key}: {record['timing']['ms_per_token']:.2f} ms/token, "
                 f"tokens/call {record['stats']['tokens_per_call']:.2f} "
                 f"({record['elapsed_s']:.0f} s)")
  bar.close()

  titles = {name: task.title for name, task in tasks.items()}
  rows, parity, machines = report.build_rows(cells, records, config, titles)
  failures = sum(not c["passed"] for p in parity for c in p["checks"])
  canonical = next((records[c.key] for c in cells if c.kind == "canonical"), None)
  canon_summary = _canonical_summary(canonical, machines) if canonical else None
  paths_lib.makedirs(results_dir)
  paths = {"markdown": os.path.join(results_dir, "table1.md"),
           "csv": os.path.join(results_dir, "table1.csv"),
           "json": os.path.join(results_dir, "table1.json")}
  paths["plots"] = plots.write_plots(rows, machines, results_dir)
  datasets = {name: {"title": task.title, "num_items_used": len(task.items),
                     **({"stand_in": task.dataset_info} if task.dataset_info else {})}
              for name, task in tasks.items()}
  if "xsum" in tasks and tasks["xsum"].dataset_info:
    paths["docsum"] = os.path.join(results_dir, "docsum.json")
    write_atomic({paths["docsum"]: json.dumps(tasks["xsum"].dataset_info, indent=1) + "\n"})
  results = {
      "command": command, "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
      "elapsed_s": time.perf_counter() - t_start, "precompile_s": prepared.compile_s,
      "prepare_warm_up_s": prepared.warm_up_s,
      "workdir": workdir,
      "config": config.to_dict(), "paper": {"citation": report.PAPER_CITATION, "table1": [
          {"task": t, "sampling": s, "method": m, "metric": v[0], "value": v[1],
           "ms_per_token": v[2], "speedup": v[3]} for (t, s, m), v in report.PAPER_TABLE1.items()]},
      "models": {"target": _model_summary(target_cfg),
                 "draft": _model_summary(draft_cfg, draft_meta),
                 "target_name": os.path.basename(os.path.normpath(config.target_dir)),
                 "target_source": target_meta.get("source"),
                 "draft_kind": ("feature draft" if draft_meta.get("kind") == fd.KIND
                                else "draft model"),
                 "fingerprints": fps},
      "datasets": datasets, "machines": machines, "rows": rows, "parity": parity,
      "parity_ok": failures == 0,
      "parity_failures": failures, "canonical_loglik": canon_summary,
      "num_sampled_checks": sum(len(p["checks"]) for p in parity if p["sampling"] != "greedy"),
      "computed": [c.key for c, _ in todo],
      "reused": sorted(records.keys() - {c.key for c, _ in todo}),
      "paths": paths,
  }
  text = markdown.format_markdown(results)
  write_atomic({paths["markdown"]: text})
  report.write_csv(rows, machines, paths["csv"])
  write_atomic({paths["json"]: json.dumps(results, indent=1, default=float) + "\n"})
  return {**results, "markdown": text}
