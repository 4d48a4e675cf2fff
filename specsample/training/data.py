"""Data pipeline: tokenized corpus cache, packed LM batches, local datasets.

* `tokenize_files` turns a corpus split into one flat token stream
  (`bos + tokens + eos` per file, files concatenated) and caches it as `.npy`
  under a key made of the tokenizer's and the split's hashes, so a second run
  with the same tokenizer and corpus just loads the array.
* `PackedDataset` cuts the stream into fixed-length windows. Batch `step` is a
  pure function of `(seed, step)`, so resuming from a checkpoint only needs the
  step number and yields exactly the batches an uninterrupted run would have.
* `eval_batches` walks fixed, non-shuffled windows once, padding the last batch.
* `load_local_dataset` reads local JSON/JSONL/Parquet files with `datasets`,
  never touching the network (used for XSum: `document`, `summary`, `id`).

Batches are dicts of numpy arrays: `inputs` and `targets` `[B, L]` int32
(`targets` is `inputs` shifted left by one) and `weights` `[B, L]` float32
(1 for real tokens, 0 for padding in the last evaluation batch).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tqdm

from specsample import corpus as corpus_lib
from specsample import paths as paths_lib
from specsample import tokenizer as tokenizer_lib

# Files are encoded this many at a time: big enough for SentencePiece's
# threads, small enough for a responsive progress bar.
_ENCODE_BATCH = 64


def token_dtype(vocab_size: int) -> np.dtype:
  """uint16 when every id fits (halves the cache), int32 otherwise."""
  return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.int32)


def tokenize_files(files: Sequence[corpus_lib.SourceFile],
                   tokenizer: tokenizer_lib.Tokenizer,
                   cache_dir: str | None = None,
                   name: str = "tokens") -> np.ndarray:
  """Tokenizes files into one stream, cached on disk.

  Args:
    files: the split to tokenize, in order.
    tokenizer: the tokenizer; its fingerprint is part of the cache key.
    cache_dir: folder of the `.npy` cache; None disables caching.
    name: prefix of the cache file name (e.g. the split name).

  Returns:
    1-D array `[num_tokens]` of dtype `token_dtype(vocab_size)`: each file
    as `bos, tokens..., eos`, files concatenated in the given order.
  """
  key = hashlib.sha256(
      f"{tokenizer.fingerprint}\0{corpus_lib.split_hash(files)}".encode()
  ).hexdigest()[:16]
  path = os.path.join(cache_dir, f"{name}-{key}.npy") if cache_dir else None
  if path and paths_lib.exists(path):
    with paths_lib.open_file(path, "rb") as f:
      return np.load(f)
  dtype = token_dtype(tokenizer.vocab_size)
  pieces = []
  for start in tqdm.trange(0, len(files), _ENCODE_BATCH,
                           desc=f"tokenize {name}",
                           disable=len(files) <= _ENCODE_BATCH):
    batch = [f.text for f in files[start:start + _ENCODE_BATCH]]
    for ids in tokenizer.encode_batch(batch, add_bos=True, add_eos=True):
      pieces.append(np.asarray(ids, dtype=dtype))
  tokens = np.concatenate(pieces) if pieces else np.zeros([0], dtype)
  if path:  # whole or absent: a killed run never leaves a truncated cache file
    with paths_lib.local_file(path) as tmp:
      np.save(tmp, tokens)
  return tokens


def tokenize_corpus(corpus: corpus_lib.Corpus,
                    tokenizer: tokenizer_lib.Tokenizer,
                    cache_dir: str | None = ".cache/tokens"
                    ) -> dict[str, np.ndarray]:
  """Token streams of both splits: {"train": [N_train], "val": [N_val]}."""
  return {split: tokenize_files(files, tokenizer, cache_dir, name=split)
          for split, files in (("train", corpus.train), ("val", corpus.val))}


class PackedDataset:
  """Shuffled fixed-length windows over a token stream, resumable exactly.

  Epoch `e` draws, from `np.random.default_rng([seed, e])`, a start offset in
  `[0, seq_len)` and a permutation of the `num_windows` windows; window `i`
  covers `tokens[offset + i*seq_len : offset + (i+1)*seq_len + 1]`. The random
  offset makes different epochs cut the stream at different places. Each epoch
  yields `num_windows // batch_size` batches (the remainder is dropped), and
  iteration runs forever across epochs.
  """

  def __init__(self, tokens: np.ndarray, seq_len: int, batch_size: int,
               seed: int = 0):
    """Args: tokens `[N]` stream; seq_len L; batch_size B; seed."""
    if tokens.ndim != 1:
      raise ValueError(f"tokens must be 1-D, got shape {tokens.shape}")
    self.tokens = tokens
    self.seq_len = seq_len
    self.batch_size = batch_size
    self.seed = seed
    # seq_len - 1 tokens are reserved for the largest epoch offset, so every
    # epoch has the same number of windows whatever its offset.
    self.num_windows = (len(tokens) - seq_len) // seq_len
    self.steps_per_epoch = self.num_windows // batch_size
    if self.steps_per_epoch < 1:
      raise ValueError(
          f"{len(tokens)} tokens give {max(self.num_windows, 0)} windows of "
          f"{seq_len + 1}, fewer than batch_size={batch_size}")
    self._step = 0
    self._order_cache = (-1, None)

  def _epoch_order(self, epoch: int) -> tuple[int, np.ndarray]:
    """(offset, window permutation) of one epoch, cached as it costs O(N/L)."""
    if self._order_cache[0] != epoch:
      rng = np.random.default_rng([self.seed, epoch])
      offset = int(rng.integers(self.seq_len))
      self._order_cache = (epoch, (offset, rng.permutation(self.num_windows)))
    return self._order_cache[1]

  def batch_at(self, step: int) -> dict[str, np.ndarray]:
    """The batch of global step `step`, a pure function of (seed, step).

    Args:
      step: global step, counting from 0 across epochs.

    Returns:
      dict with `inputs`, `targets` `[B, L]` int32 and `weights` `[B, L]`
      float32 (all ones).
    """
    epoch, index = divmod(step, self.steps_per_epoch)
    offset, order = self._epoch_order(epoch)
    rows = order[index * self.batch_size:(index + 1) * self.batch_size]
    starts = offset + rows * self.seq_len  # [B]
    positions = starts[:, None] + np.arange(self.seq_len + 1)  # [B, L+1]
    window = self.tokens[positions]  # [B, L+1]
    window = window.astype(np.int32)
    return dict(inputs=window[:, :-1], targets=window[:, 1:],
                weights=np.ones(window[:, 1:].shape, np.float32))

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = self.batch_at(self._step)
    self._step += 1
    return batch

  def state(self) -> dict[str, int]:
    """Resumable position: the next step, with its epoch and index for logs."""
    epoch, index = divmod(self._step, self.steps_per_epoch)
    return dict(seed=self.seed, step=self._step, epoch=epoch, index=index)

  def restore(self, state: Mapping[str, int]) -> None:
    """Continues from a `state()`; the next batch is `batch_at(state["step"])`.

    Raises:
      ValueError: if the state was saved with a different seed.
    """
    if "seed" in state and int(state["seed"]) != self.seed:
      raise ValueError(f"state has seed {state['seed']}, dataset {self.seed}")
    self._step = int(state["step"])


def eval_batches(tokens: np.ndarray, seq_len: int, batch_size: int,
                 pad_id: int = tokenizer_lib.PAD_ID
                 ) -> Iterator[dict[str, np.ndarray]]:
  """Fixed, in-order, non-overlapping windows covering the whole stream once.

  Every token but the first is a target exactly once. The last window may be
  short and the last batch may have fewer windows; both are padded with
  `pad_id` and weight 0, so a weighted mean over all batches is exact.

  Args:
    tokens: `[N]` token stream.
    seq_len: L.
    batch_size: B.
    pad_id: id written into padding positions.

  Yields:
    dicts with `inputs`, `targets` `[B, L]` int32 and `weights` `[B, L]`.
  """
  num_windows = -(-(len(tokens) - 1) // seq_len)  # ceil
  for first in range(0, num_windows, batch_size):
    window = np.full([batch_size, seq_len + 1], pad_id, np.int32)  # [B, L+1]
    weights = np.zeros([batch_size, seq_len], np.float32)
    for row, w in enumerate(range(first, min(first + batch_size, num_windows))):
      chunk = tokens[w * seq_len:(w + 1) * seq_len + 1]
      window[row, :len(chunk)] = chunk
      weights[row, :len(chunk) - 1] = 1.0
    yield dict(inputs=window[:, :-1], targets=window[:, 1:], weights=weights)


_BUILDERS = {".json": "json", ".jsonl": "json", ".json.gz": "json",
             ".jsonl.gz": "json", ".parquet": "parquet"}


def _builder_for(files: Sequence[str]) -> str:
  """The `datasets` builder name shared by all files, from their extensions."""
  builders = set()
  for f in files:
    matches = [b for ext, b in _BUILDERS.items() if f.endswith(ext)]
    if not matches:
      raise ValueError(f"unsupported file type: {f} (want {sorted(_BUILDERS)})")
    builders.add(matches[0])
  if len(builders) != 1:
    raise ValueError(f"mixed file types: {files}")
  return builders.pop()


def _expand(path: str | Sequence[str]) -> list[str]:
  """Files named by a path, glob, folder (its json/parquet files) or list."""
  paths = [path] if isinstance(path, str) else list(path)
  files = []
  for p in paths:
    if paths_lib.isdir(p):
      files += [f for f in paths_lib.glob(os.path.join(p, "*"))
                if any(f.endswith(ext) for ext in _BUILDERS)]
    else:
      files += paths_lib.glob(p) or [p]
  missing = [f for f in files if not paths_lib.isfile(f)]
  if not files or missing:
    raise FileNotFoundError(f"no data files for {path!r}: missing {missing}")
  return files


def load_local_dataset(path: str | Sequence[str] | Mapping[str, Any],
                       split: str = "train",
                       fields: Sequence[str] | None = None,
                       cache_dir: str | None = None):
  """Loads local JSON/JSONL/Parquet files as a `datasets.Dataset`, offline.

  Only `datasets`' packaged builders are used, so nothing is downloaded; set
  `HF_DATASETS_OFFLINE=1` to make sure of it.

  Args:
    path: a file, glob, folder or list of them, used as split `split`; or a
      mapping split name -> such paths.
    split: the split to return.
    fields: columns to keep, in this order; all columns when None.
    cache_dir: `datasets` cache folder (its default when None).

  Returns:
    The `datasets.Dataset` of that split.

  Raises:
    KeyError: if a field is missing from the data.
  """
  import datasets  # pylint: disable=g-import-not-at-top  # slow import

  if isinstance(path, Mapping):
    data_files = {name: _expand(p) for name, p in path.items()}
  else:
    data_files = {split: _expand(path)}
  if split not in data_files:
    raise KeyError(f"split {split!r} not in {sorted(data_files)}")
  builder = _builder_for([f for fs in data_files.values() for f in fs])
  dataset = datasets.load_dataset(builder, data_files=data_files, split=split,
                                  cache_dir=cache_dir)
  if fields is not None:
    missing = [f for f in fields if f not in dataset.column_names]
    if missing:
      raise KeyError(f"fields {missing} not in columns {dataset.column_names}")
    dataset = dataset.select_columns(list(fields))
  return dataset
