"""Docstring summarization: an offline stand-in for XSum, built from the corpus's validation split.

No copy of XSum exists offline, so the summarization rows of Table 1 run on
this set through exactly the XSum code path (xsum.load_xsum, the 1-shot
prompt, the newline stop, ROUGE-2). One item per function or class of the
validation files (corpus.build_corpus().val) that has a docstring:

* document: the definition's source lines (signature and body, dedented) with
  the docstring statement removed;
* summary: the docstring's first sentence (its first paragraph up to the first
  ". ", "! " or "? ", whitespace collapsed).

Kept when the document has at most max_doc_tokens tokens (project tokenizer)
and the summary 5-40 words, and when neither overlaps HumanEval: the
definition (with its docstring) contains no corpus.humaneval_needles fragment,
and no HumanEval prompt contains the summary (whitespace and case ignored). The order is
sha256(id), a deterministic shuffle, so a prefix samples many files. The set is
written as {split}.jsonl (id, document, summary) plus info.json; its
fingerprint is the sha256 of the JSONL bytes.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import json
import os
import re
import sys
import textwrap
from typing import Any, Mapping, Sequence

from specsample import corpus as corpus_lib
from specsample import paths
from specsample.eval.tasks import xsum
from specsample.utils import write_atomic

LABEL = "docstring summarization (offline stand-in for XSum)"
BUILDER_VERSION = 1  # bump when the rules change: cached sets are then rebuilt
DEFAULTS = dict(max_doc_tokens=400, min_summary_words=5, max_summary_words=40)


def first_sentence(docstring: str) -> str:
  """The first sentence of a docstring's first paragraph, whitespace collapsed."""
  paragraph = inspect.cleandoc(docstring).split("\n\n", 1)[0]
  text = xsum.normalize_whitespace(paragraph)
  match = re.match(r"(.+?[.!?])(\s|$)", text)
  return match.group(1) if match else text


def extract_items(source: corpus_lib.SourceFile) -> list[dict[str, str]]:
  """(id, document, summary, definition) of every documented def/class of one file.

  A definition whose docstring shares a line with other code, or whose body is
  only the docstring, gives no item. Files that do not parse give none.
  """
  try:
    tree = ast.parse(source.text)
  except (SyntaxError, ValueError):
    return []
  lines = source.text.splitlines()
  items = []
  for node in ast.walk(tree):
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      continue
    docstring = ast.get_docstring(node, clean=False)
    if docstring is None or len(node.body) < 2:
      continue
    doc_node, after = node.body[0], node.body[1]
    if doc_node.lineno <= node.lineno or after.lineno <= doc_node.end_lineno:
      continue  # docstring on the def line or sharing a line with code
    # Lines are 1-based and inclusive; [start, end) slices of `lines`.
    start, end = node.lineno - 1, node.end_lineno
    kept = lines[start:doc_node.lineno - 1] + lines[doc_node.end_lineno:end]
    document = textwrap.dedent("\n".join(kept)).strip("\n")
    items.append({"id": f"{source.relpath}:{node.lineno}:{node.name}", "document": document,
                  "summary": first_sentence(docstring),
                  "definition": "\n".join(lines[start:end])})
  return items


def humaneval_prompts(problems: Mapping[str, Mapping[str, str]]) -> list[str]:
  """Every HumanEval prompt, whitespace collapsed and lower-cased (for summary matching)."""
  return [xsum.normalize_whitespace(p["prompt"]).lower() for p in problems.values()]


def overlaps_humaneval(definition: str, summary: str, needles, prompts: Sequence[str]) -> bool:
  """The definition holds a corpus.humaneval_needles fragment, or a prompt holds the summary."""
  text = summary.lower()
  return (any(text in prompt for prompt in prompts)
          or bool(corpus_lib.find_contaminated([corpus_lib.SourceFile("", definition, "")],
                                               needles)))


def build_items(files: Sequence[corpus_lib.SourceFile], count_tokens, *,
                problems: Mapping[str, Mapping[str, str]] | None = None,
                max_doc_tokens: int = DEFAULTS["max_doc_tokens"],
                min_summary_words: int = DEFAULTS["min_summary_words"],
                max_summary_words: int = DEFAULTS["max_summary_words"]
                ) -> tuple[list[dict[str, str]], dict[str, int]]:
  """The filtered items of `files` in sha256(id) order, and how many each rule dropped.

  Args:
    files: source files (the corpus's validation split).
    count_tokens: text -> number of tokens (the project tokenizer's encode).
    problems: HumanEval problems to exclude overlaps with (default: the real 164).
    max_doc_tokens, min_summary_words, max_summary_words: the length filters.

  Returns:
    (items with id, document, summary; counts of candidates and drops per rule).
  """
  problems = corpus_lib.read_humaneval_problems() if problems is None else problems
  needles = corpus_lib.humaneval_needles(problems)
  prompts = humaneval_prompts(problems)
  counts = dict(candidates=0, empty=0, summary_words=0, document_tokens=0, humaneval=0, kept=0)
  items = []
  for source in files:
    for item in extract_items(source):
      counts["candidates"] += 1
      words = len(item["summary"].split())
      if not item["document"].strip() or not item["summary"]:
        counts["empty"] += 1
      elif not min_summary_words <= words <= max_summary_words:
        counts["summary_words"] += 1
      elif count_tokens(item["document"]) > max_doc_tokens:
        counts["document_tokens"] += 1
      elif overlaps_humaneval(item["definition"], item["summary"], needles, prompts):
        counts["humaneval"] += 1
      else:
        items.append({k: item[k] for k in ("id", "document", "summary")})
  counts["kept"] = len(items)
  items.sort(key=lambda it: hashlib.sha256(it["id"].encode()).hexdigest())
  return items, counts


def write_dataset(items: Sequence[Mapping[str, str]], out_dir: str, split: str,
                  info: Mapping[str, Any]) -> dict[str, Any]:
  """Writes <out_dir>/<split>.jsonl and info.json (with size and sha256); returns the info."""
  xsum.check_items(items, f"docstring summarization set for {out_dir}")
  text = "".join(json.dumps(dict(item), sort_keys=True) + "\n" for item in items)
  info = {**info, "label": LABEL, "split": split, "num_items": len(items),
          "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
          "path": os.path.join(out_dir, f"{split}.jsonl")}
  write_atomic({info["path"]: text,
                os.path.join(out_dir, "info.json"): json.dumps(info, indent=1) + "\n"})
  return info


def ensure_dataset(cache_dir: str, tokenizer, split: str = "test", **filters) -> dict[str, Any]:
  """The stand-in under cache_dir, built once: reused while Python, tokenizer and rules match.

  Args:
    cache_dir: folder of <split>.jsonl and info.json (e.g. <workdir>/docsum).
    tokenizer: the project tokenizer (has encode and fingerprint).
    split: the split name the file is written under (what config.xsum.split asks for).
    **filters: overrides of DEFAULTS.

  Returns:
    The info dict: label, path, num_items, sha256, filters, counts, corpus hash.
  """
  settings = {"builder_version": BUILDER_VERSION, "python": sys.version.split()[0],
              "stdlib": corpus_lib.sysconfig.get_paths()["stdlib"],
              "tokenizer": tokenizer.fingerprint, "filters": {**DEFAULTS, **filters}}
  info_path = os.path.join(cache_dir, "info.json")
  if paths.exists(info_path):
    try:
      info = json.loads(paths.read_text(info_path))
      intact = hashlib.sha256(paths.read_bytes(info["path"])).hexdigest() == info["sha256"]
      if intact and info.get("settings") == settings and info.get("split") == split:
        return info
    except (OSError, ValueError, KeyError):
      pass  # unreadable or stale: rebuilt below
  corpus = corpus_lib.build_corpus()
  items, counts = build_items(corpus.val, lambda text: len(tokenizer.encode(text)),
                              **settings["filters"])
  return write_dataset(items, cache_dir, split, {
      "settings": settings, "filters": settings["filters"], "counts": counts,
      "source": f"corpus.build_corpus().val: {len(corpus.val)} files, split hash "
                f"{corpus_lib.split_hash(corpus.val)}"})
