"""The docstring-summarization stand-in (eval/tasks/docsum.py) and the XSum loader's local
layouts."""

import hashlib
import json
import os
import shutil

import pytest

from specsample import corpus as corpus_lib
from specsample.eval.tasks import docsum, xsum
from specsample.tokenizer import Tokenizer

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENIZER = os.path.join(REPO_ROOT, "assets", "tokenizer", "tokenizer.model")
FIXTURES = os.path.join(REPO_ROOT, "tests", "fixtures")
HF_PARQUET = os.path.join(FIXTURES, "xsum_hf", "test-00000-of-00001.parquet")

SOURCE = '''import os


def join_parts(parts, sep="/"):
    """Join the given path parts with a separator.

    Longer explanation that is not the summary.
    """
    return sep.join(parts)


def one_liner(): """Docstring on the def line is skipped here."""; return 1


def only_doc():
    """A body of nothing but this docstring gives no item."""


class Counter:
    """Count how many times each key was seen so far! More text."""

    def add(self, key):
        """Add one to the count of this key in the table."""
        self.counts[key] = self.counts.get(key, 0) + 1


def tiny():
    """Too short."""
    return 0
'''

# A HumanEval-like problem and two files: one holds its solution (a needle), one
# a function whose summary is a sentence of its prompt.
PROBLEMS = {"HumanEval/0": {
    "prompt": ('def add_all(values):\n    """Return the sum of all the numbers in this list. '
               'Empty lists give zero.\n    """\n'),
    "canonical_solution": ("    total = 0\n    for value in values:\n        total += value\n"
                           "    return total\n"),
    "entry_point": "add_all"}}
LEAKED = '''def add_everything(values):
    """Add every one of the given values together please."""
    total = 0
    for value in values:
        total += value
    return total
'''
PARAPHRASED = '''def summer(xs):
    """Return the sum of all the numbers in this list."""
    return sum(xs)
'''


def _file(relpath, text):
  return corpus_lib.SourceFile(relpath, text, hashlib.sha256(text.encode()).hexdigest())


def _count_words(text):
  return len(text.split())


# ------------------------------------------------------------------ builder


def test_first_sentence():
  assert docsum.first_sentence("Join the parts.\n\nMore.") == "Join the parts."
  assert docsum.first_sentence("\n    Wrapped over\n    two lines. Second one.") == \
      "Wrapped over two lines."
  assert docsum.first_sentence("No full stop at all") == "No full stop at all"
  assert docsum.first_sentence("Version 3.1 is used here. Then more.") == \
      "Version 3.1 is used here."


def test_extract_items_removes_the_docstring():
  items = {it["id"]: it for it in docsum.extract_items(_file("pkg/mod.py", SOURCE))}
  assert set(items) == {"pkg/mod.py:4:join_parts", "pkg/mod.py:19:Counter",
                        "pkg/mod.py:22:add", "pkg/mod.py:27:tiny"}
  join = items["pkg/mod.py:4:join_parts"]
  assert join["document"] == 'def join_parts(parts, sep="/"):\n    return sep.join(parts)'
  assert join["summary"] == "Join the given path parts with a separator."
  assert "Count how many" not in items["pkg/mod.py:19:Counter"]["document"]
  # Only the definition's own docstring goes: its methods keep theirs.
  assert '"""Add one to' in items["pkg/mod.py:19:Counter"]["document"]
  assert items["pkg/mod.py:22:add"]["document"].startswith("def add(self, key):\n    self.")
  assert docsum.extract_items(_file("bad.py", "def broken(:\n")) == []


def test_filters_and_humaneval_overlap():
  files = [_file("a.py", SOURCE), _file("leak.py", LEAKED), _file("para.py", PARAPHRASED)]
  items, counts = docsum.build_items(files, _count_words, problems=PROBLEMS)
  ids = [it["id"] for it in items]
  assert "a.py:27:tiny" not in ids                     # 2-word summary
  assert "leak.py:1:add_everything" not in ids         # holds the canonical solution
  assert "para.py:1:summer" not in ids                 # a prompt holds the summary
  assert sorted(ids) == ["a.py:19:Counter", "a.py:22:add", "a.py:4:join_parts"]
  assert counts == dict(candidates=6, empty=0, summary_words=1, document_tokens=0,
                        humaneval=2, kept=3)
  for it in items:
    assert set(it) == {"id", "document", "summary"} and 5 <= len(it["summary"].split()) <= 40
  # Document length: join_parts has 4 words, add 9, the class and the leaked function more.
  short, counts = docsum.build_items(files, _count_words, problems=PROBLEMS, max_doc_tokens=9)
  assert sorted(it["id"] for it in short) == ["a.py:22:add", "a.py:4:join_parts"]
  assert counts["document_tokens"] == 2 and counts["humaneval"] == 1
  # Summary words: at most 8 keeps only join_parts's 8 words (the others have 2, 9 or 10).
  kept, counts = docsum.build_items(files, _count_words, problems=PROBLEMS, max_summary_words=8)
  assert [it["id"] for it in kept] == ["a.py:4:join_parts"] and counts["summary_words"] == 5


def test_builder_is_deterministic(tmp_path):
  files = [_file("a.py", SOURCE), _file("b/c.py", SOURCE.replace("join_parts", "glue"))]
  first, _ = docsum.build_items(files, _count_words, problems=PROBLEMS)
  second, _ = docsum.build_items(list(reversed(files)), _count_words, problems=PROBLEMS)
  assert first == second
  assert [it["id"] for it in first] == sorted(
      (it["id"] for it in first), key=lambda i: hashlib.sha256(i.encode()).hexdigest())
  a = docsum.write_dataset(first, str(tmp_path / "a"), "test", {})
  b = docsum.write_dataset(second, str(tmp_path / "b"), "test", {})
  assert a["sha256"] == b["sha256"] and a["num_items"] == 6
  with open(a["path"], "rb") as f:
    assert hashlib.sha256(f.read()).hexdigest() == a["sha256"]
  loaded = xsum.load_xsum(a["path"], "test", cache_dir=str(tmp_path / "cache"))
  assert [it["id"] for it in loaded] == [it["id"] for it in first]


def test_standin_from_the_corpus_is_cached_and_clean(tmp_path, monkeypatch):
  tokenizer = Tokenizer.load(TOKENIZER)
  info = docsum.ensure_dataset(str(tmp_path / "ds"), tokenizer)
  assert info["label"] == docsum.LABEL and info["num_items"] >= 16
  items = xsum.load_xsum(info["path"], "test", cache_dir=str(tmp_path / "cache"))
  assert len(items) == info["num_items"]
  for it in items:
    assert len(tokenizer.encode(it["document"])) <= 400
    assert 5 <= len(it["summary"].split()) <= 40
  # No HumanEval overlap: no needle in any document + summary, no summary inside a prompt.
  problems = corpus_lib.read_humaneval_problems()
  texts = [_file(it["id"], it["document"] + "\n" + it["summary"]) for it in items]
  assert corpus_lib.find_contaminated(texts, corpus_lib.humaneval_needles(problems)) == {}
  prompts = docsum.humaneval_prompts(problems)
  assert not any(it["summary"].lower() in prompt for it in items for prompt in prompts)
  # Built once: a second call reuses the files without reading the corpus.
  monkeypatch.setattr(corpus_lib, "build_corpus", lambda: pytest.fail("rebuilt"))
  assert docsum.ensure_dataset(str(tmp_path / "ds"), tokenizer) == info
  # A damaged file is rebuilt, to the same bytes.
  monkeypatch.undo()
  with open(info["path"], "a") as f:
    f.write("{}\n")
  assert docsum.ensure_dataset(str(tmp_path / "ds"), tokenizer)["sha256"] == info["sha256"]


# ------------------------------------------------------------------ loader layouts


def test_hf_parquet_fixture_loads_without_conversion(tmp_path):
  cache = str(tmp_path / "cache")
  expected = [json.loads(line) for line in open(os.path.join(FIXTURES, "xsum_fixture.jsonl"))]
  for source in (HF_PARQUET, os.path.dirname(HF_PARQUET)):
    items = xsum.load_xsum(source, "test", cache_dir=cache)
    assert items == expected[:len(items)] and len(items) == 4
  # The same shard under data/ and under the hub's parquet export layout default/test/.
  for sub in ("data", os.path.join("default", "test")):
    root = tmp_path / sub.replace(os.sep, "_")
    os.makedirs(root / sub)
    shutil.copy(HF_PARQUET, root / sub / ("0000.parquet" if "default" in sub
                                          else os.path.basename(HF_PARQUET)))
    assert len(xsum.load_xsum(str(root), "test", cache_dir=cache)) == 4
  # JSON lines in the HF shard naming.
  jsonl = tmp_path / "json" / "test-00000-of-00001.jsonl"
  os.makedirs(jsonl.parent)
  shutil.copy(os.path.join(FIXTURES, "xsum_fixture.jsonl"), jsonl)
  assert len(xsum.load_xsum(str(jsonl.parent), "test", cache_dir=cache)) == 10


def test_bad_sources_name_the_file_and_field(tmp_path):
  cache = str(tmp_path / "cache")
  with pytest.raises(FileNotFoundError, match=r"xsum_hf: no file for split 'tset'.*\['test'\]"):
    xsum.load_xsum(os.path.dirname(HF_PARQUET), "tset", cache_dir=cache)
  with pytest.raises(ValueError, match=r"train-00000.*says split 'train'.*'test'"):
    train = tmp_path / "train-00000-of-00001.parquet"
    shutil.copy(HF_PARQUET, train)
    xsum.load_xsum(str(train), "test", cache_dir=cache)
  rows = [{"id": "a", "document": "Some text here.", "summary": "A summary."},
          {"id": "b", "document": "More text.", "summary": "  "}]
  bad = tmp_path / "empty_summary.jsonl"
  bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
  with pytest.raises(ValueError, match=r"empty_summary\.jsonl: row 1 \(id 'b'\): field "
                                       r"'summary' is empty"):
    xsum.load_xsum(str(bad), "test", cache_dir=cache)
  missing = tmp_path / "no_summary.jsonl"
  missing.write_text(json.dumps({"id": "a", "document": "Text."}) + "\n")
  with pytest.raises(ValueError, match=r"no_summary\.jsonl: no field \['summary'\]"):
    xsum.load_xsum(str(missing), "test", cache_dir=cache)
  partial = tmp_path / "partial.jsonl"
  partial.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"id": "c", "summary": "S."}) + "\n")
  with pytest.raises(ValueError, match=r"partial\.jsonl: row 1 \(id 'c'\): field 'document' "
                                       r"is missing"):
    xsum.load_xsum(str(partial), "test", cache_dir=cache)
