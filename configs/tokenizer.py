"""Corpus and tokenizer: the Python standard library, SentencePiece BPE 4096.

Full run:
  python scripts/build_tokenizer.py --config=configs/tokenizer.py \
      --outdir=assets/tokenizer

Quick local run (tiny vocabulary, a sample of sentences):
  python scripts/build_tokenizer.py --config=configs/tokenizer.py:runlocal \
      --outdir=/tmp/tokenizer
"""

import ml_collections


def get_config(arg=None):
  """Returns the config; `arg="runlocal"` shrinks it for a smoke test."""
  config = ml_collections.ConfigDict()

  # --- Corpus (specsample/corpus.py) ---
  # Also train on site-packages; off so the corpus depends only on the Python
  # version, not on what happens to be pip-installed.
  config.include_site_packages = False
  # Percentage of content-hash buckets (int(sha256) % 100) used for validation.
  config.val_percent = 5
  # Files larger than this many bytes are skipped (generated tables).
  config.max_file_bytes = 1 << 20
  # Where the corpus statistics JSON is written.
  config.corpus_stats_path = "results/corpus.json"

  # --- Tokenizer training (specsample/tokenizer.py) ---
  # Total vocabulary including pad/bos/eos/unk and the 256 byte pieces.
  config.vocab_size = 4096
  # Training "sentences" are chunks of whole lines of at most this many bytes.
  config.chunk_bytes = 1000
  # Cap on training sentences (seeded sample above it); the stdlib has ~14k.
  config.max_sentences = 50_000
  # Characters covering this fraction of the text get their own piece; the
  # rest are spelled with byte pieces.
  config.character_coverage = 0.9995
  # Longest piece in characters (32 gained only 1% chars/token over 16).
  config.max_piece_length = 16
  # SentencePiece trainer threads.
  config.num_threads = 2
  # Seed of the sentence sample (only used above max_sentences).
  config.seed = 0

  # --- Checks ---
  # Which files the round-trip check runs on: "val" or "all" (train + val).
  config.check_split = "all"

  if arg == "runlocal":
    config.vocab_size = 512
    config.max_sentences = 2000
    config.check_split = "val"
  return config
