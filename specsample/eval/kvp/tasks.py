"""Task quality under KV Prediction: Table 1's metrics on long-prompt variants of its tasks,
greedy, with the target's full prefill and with KVP, paired item by item.

The variants are prompts KV Prediction is for, most of their tokens context (on
SmolLM2-135M-Instruct with the defaults: 1,264 and 664 tokens on average):
  humaneval_long: the first `num_items` HumanEval problems in Table 1's format (chat:
    the assistant turn prefilled with "```python"), the problem's prompt preceded
    in that turn by about `context_tokens` tokens of validation-split code (a
    different stretch per problem, whole lines): the function in a module.
    Executed as in Table 1 (the problem's prompt + the completion, cut at the
    stop sequences); pass@1.
  summary_long: the docstring-summarization stand-in (eval/tasks/docsum.py) in
    Table 1's format, with `shots` solved examples before each item (other
    items of the set, never an evaluated one): many-shot; ROUGE-2 of the
    reply's first line.
Raw prompts (a tokenizer without a chat template) keep the same content:
context + prompt, and "Article: ... One-sentence summary:" blocks.

Both settings decode autoregressively and greedily, all items in one batch,
so an output differs between them only through the prompt's cache: a
paired difference of the metric, the share of items whose tokens are
identical and the mean length of the common prefix measure what KVP changes.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from specsample.decoding import api
from specsample.decoding import kv_prediction as kvpd
from specsample.decoding.sampling import Sampling
from specsample.eval.tasks import chat, docsum, humaneval, stats, xsum
from specsample.models.lm import LM

VARIANTS = ("humaneval_long", "summary_long")


def _whole_lines(text: str) -> str:
  """`text` from its first line start to its last line end (a stretch of decoded code)."""
  start, end = text.find("\n") + 1, text.rfind("\n") + 1
  return text[start:end] if end > start else ""


def humaneval_long(tokenizer, problems: Sequence[dict], val_stream: np.ndarray,
                   context_tokens: int) -> list[str]:
  """The humaneval_long prompts (module docstring), one per problem."""
  step = max((len(val_stream) - context_tokens) // max(len(problems), 1), 1)
  texts = []
  for i, problem in enumerate(problems):
    stretch = val_stream[i * step:i * step + context_tokens].tolist()
    context = _whole_lines(tokenizer.decode(stretch)) + "\n\n"
    texts.append(chat.humaneval_prompt(tokenizer, problem["prompt"], context=context)
                 if _is_chat(tokenizer) else context + problem["prompt"])
  return texts


def summary_long(tokenizer, items: Sequence[dict], num_items: int, shots: int,
                 max_doc_chars: int) -> list[str]:
  """The summary_long prompts of items[:num_items]: item i's shots are items past
  num_items, taken in turn (module docstring)."""
  pool = items[num_items:]
  if shots and not pool:
    raise ValueError(f"tasks.shots={shots} needs more than tasks.num_items={num_items} items "
                     f"in the stand-in ({len(items)})")
  texts = []
  for i, item in enumerate(items[:num_items]):
    examples = [pool[(i * shots + j) % len(pool)] for j in range(shots)]
    if _is_chat(tokenizer):
      texts.append(chat.summary_prompt(tokenizer, item["document"], code=True,
                                       max_doc_chars=max_doc_chars, shot=examples))
    else:
      cut = lambda text: chat.cut_code(text, max_doc_chars)
      texts.append("".join(f"Article: {cut(e['document'])}\nOne-sentence summary: "
                           f"{xsum.normalize_whitespace(e['summary'])}\n\n" for e in examples)
                   + f"Article: {cut(item['document'])}\nOne-sentence summary:")
  return texts


def _is_chat(tokenizer) -> bool:
  return bool(getattr(tokenizer, "chat_template", None))


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
  n = 0
  for x, y in zip(a, b):
    if x != y:
      break
    n += 1
  return n


def measure_tasks(config, target: LM, kvp: kvpd.KVP, tokenizer, val_stream: np.ndarray
                  ) -> dict:
  """{variant: row} for config.tasks (configs/kvp_eval.py): per-item metrics with full
  prefill and with `kvp`, their paired difference, identical outputs, common prefix."""
  t = config.tasks
  problems = humaneval.load_problems(t.num_items)
  info = docsum.ensure_dataset(t.docsum_dir, tokenizer)
  items = xsum.load_xsum(info["path"], info.get("split", "test"))
  stops = chat.CODE_STOPS if _is_chat(tokenizer) else humaneval.STOP_SEQUENCES

  def pass_at_1(texts):
    scored = humaneval.score_completions(problems, [[text] for text in texts], ks=(1,),
                                         stops=stops, timeout_s=t.timeout_s, workers=t.workers)
    return [p["pass@1"] for p in scored["problems"]]

  def rouge2(texts):
    return [it["rouge2"] for it in xsum.score_summaries(items[:t.num_items], texts)["items"]]

  variants = {
      "humaneval_long": ("pass@1", humaneval_long(tokenizer, problems, val_stream,
                                                  t.context_tokens), pass_at_1),
      "summary_long": ("ROUGE-2", summary_long(tokenizer, items, t.num_items, t.shots,
                                               t.max_doc_chars), rouge2),
  }
  greedy = dict(method="autoregressive", sampling=Sampling(temperature=0),
                max_new_tokens=t.max_new_tokens, eos_id=tokenizer.eos_id, pad_to=t.pad_to)
  settings = {"full": {}, "kvp": dict(prefill="kv_prediction", kvp=kvp)}
  out = {}
  for name, (metric, texts, score) in variants.items():
    ids = tokenizer.encode_batch(texts, add_bos=getattr(tokenizer, "add_bos_token", True))
    tokens = {s: api.generate(target, ids, **greedy, **kw).tokens for s, kw in settings.items()}
    scores = {s: score([tokenizer.decode(row) for row in tokens[s]]) for s in settings}
    diff = stats.difference_ci(scores["kvp"], scores["full"], paired=True)
    out[name] = {
        "metric": metric, "items": len(ids), "prompt_tokens": float(np.mean([len(p) for p in ids])),
        "full": float(np.mean(scores["full"])), "kvp": float(np.mean(scores["kvp"])),
        "difference": diff.mean, "difference_ci": [diff.low, diff.high],
        "identical": float(np.mean([a == b for a, b in zip(tokens["full"], tokens["kvp"])])),
        "common_prefix": float(np.mean([_common_prefix(a, b)
                                        for a, b in zip(tokens["full"], tokens["kvp"])])),
        "new_tokens": {s: float(np.mean([len(r) for r in tokens[s]])) for s in settings},
        "per_item": {s: scores[s] for s in settings},
    }
  return out


def check_config(config) -> None:
  """One line naming the field, before anything loads (configs/kvp_eval.py's tasks)."""
  t = config.tasks
  for field in ("num_items", "max_new_tokens", "pad_to", "workers"):
    if int(t[field]) < 1:
      raise ValueError(f"config.tasks.{field} must be >= 1, got {t[field]}")
  for field in ("context_tokens", "shots"):
    if int(t[field]) < 0:
      raise ValueError(f"config.tasks.{field} must be >= 0, got {t[field]}")
  if t.aux not in config.kvp_dirs:
    raise ValueError(f"config.tasks.aux must name one of config.kvp_dirs "
                     f"({', '.join(config.kvp_dirs)}), got {t.aux!r}")
  if not os.path.basename(os.path.normpath(t.docsum_dir)):
    raise ValueError(f"config.tasks.docsum_dir must be a folder path, got {t.docsum_dir!r}")
