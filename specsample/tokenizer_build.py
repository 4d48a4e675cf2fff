"""Builds the corpus and trains the project tokenizer, then checks its exact round trip.

Writes `<outdir>/tokenizer.model` (+ `.vocab`) and the corpus statistics JSON,
and reports characters per token (scripts/build_tokenizer.py, configs/tokenizer.py).
"""

from __future__ import annotations

import json
import time

from absl import logging

from specsample import corpus as corpus_lib
from specsample import tokenizer as tokenizer_lib


def build_tokenizer(config, outdir: str) -> dict:
  """Collects the corpus, trains, saves and checks the tokenizer.

  Args:
    config: a `configs/tokenizer.py` config.
    outdir: folder the model is written to.

  Returns:
    A report dict: corpus stats, training time, round-trip results.
  """
  start = time.time()
  corpus = corpus_lib.build_corpus(
      config.include_site_packages, config.val_percent,
      max_bytes=config.max_file_bytes)
  stats = corpus_lib.write_corpus_stats(corpus, config.corpus_stats_path)
  logging.info("corpus: %s", json.dumps(stats["splits"]))
  logging.info("excluded %d HumanEval-contaminated files, %d duplicates",
               stats["contaminated_excluded"], stats["duplicates_removed"])

  train_start = time.time()
  tokenizer = tokenizer_lib.train_tokenizer(
      [f.text for f in corpus.train], config.vocab_size,
      chunk_bytes=config.chunk_bytes, max_sentences=config.max_sentences,
      character_coverage=config.character_coverage,
      max_piece_length=config.max_piece_length,
      num_threads=config.num_threads, seed=config.seed)
  train_seconds = time.time() - train_start
  model_path = tokenizer.save(outdir)
  logging.info("trained in %.1f s, saved %s", train_seconds, model_path)

  # Check the saved file, not the in-memory model, so the artefact is tested.
  tokenizer = tokenizer_lib.Tokenizer.load(model_path)
  checks = {"val": corpus.val}
  if config.check_split == "all":
    checks["all"] = corpus.train + corpus.val
  round_trip = {}
  for name, files in checks.items():
    round_trip[name] = tokenizer_lib.check_round_trip(
        tokenizer, [f.text for f in files], [f.relpath for f in files])
    r = round_trip[name]
    print(f"round trip [{name}]: {r['passed']}/{r['total']} files exact; "
          f"{r['chars_per_token']:.3f} chars/token "
          f"({r['chars']} chars, {r['tokens']} tokens)")
    if r["failed"]:
      print(f"  failed: {r['failed']}")
  total_seconds = time.time() - start
  print(f"train {train_seconds:.1f} s, total {total_seconds:.1f} s; "
        f"model {model_path} (fingerprint {tokenizer.fingerprint[:16]})")
  return dict(corpus=stats, train_seconds=train_seconds,
              total_seconds=total_seconds, round_trip=round_trip)
