"""Tests of specsample.tokenizer: exact round trip, reserved ids, save/load.

A tiny tokenizer (vocab 512) is trained once per session on 30 standard
library files; training takes about a second on 2 cores.
"""

import io

import pytest
import sentencepiece as spm

from specsample import corpus as corpus_lib
from specsample import tokenizer as tokenizer_lib

# Strings SentencePiece's defaults would mangle: whitespace runs, tabs, CR,
# blank lines, trailing spaces, unicode outside the training alphabet, control
# characters and the meta-space character itself.
NASTY = [
    "",
    "\n",
    "\n\n\n",
    " ",
    "   leading and trailing   ",
    "def f(x):\n\tif x:\n\t\treturn x  \n    \t  mixed\n",
    "windows\r\nline\r\nendings\r\n",
    "old mac\rcarriage\r",
    "form\x0cfeed and \x00 nul \x1b escape \x7f del",
    "unicode: héllo naïve 日本語 🐍 e\u0301 \u00a0nbsp \u3000ideo \u200bzw",
    "\ufeff# BOM at start\n",
    "meta \u2581 space\u2581\u2581 and  \u2581",
    "\u2581",
    "x = '''\n\n   \n'''   \n\n",
    "a" * 5000 + "\n" + " " * 300 + "\n",
]


@pytest.fixture(scope="session")
def stdlib_files():
  """All stdlib corpus files, sorted by relpath."""
  return corpus_lib.collect_sources()


@pytest.fixture(scope="session")
def train_texts(stdlib_files):
  """30 small stdlib files spread over the alphabet, used for training."""
  small = [f for f in stdlib_files if len(f.text) < 20_000]
  return [f.text for f in small[::len(small) // 30][:30]]


@pytest.fixture(scope="session")
def tokenizer(train_texts):
  return tokenizer_lib.train_tokenizer(train_texts, vocab_size=512)


def test_reserved_ids(tokenizer):
  assert (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id,
          tokenizer.unk_id) == (0, 1, 2, 3)
  assert [tokenizer.id_to_piece(i) for i in range(4)] == [
      "<pad>", "<s>", "</s>", "<unk>"]
  assert tokenizer.vocab_size == 512


def test_bos_eos_and_decode_drops_specials(tokenizer):
  ids = tokenizer.encode("x = 1\n")
  with_specials = tokenizer.encode("x = 1\n", add_bos=True, add_eos=True)
  assert with_specials == [tokenizer.bos_id] + ids + [tokenizer.eos_id]
  padded = [tokenizer.pad_id] + with_specials + [tokenizer.pad_id] * 3
  assert tokenizer.decode(padded) == "x = 1\n"


def test_round_trip_training_files(tokenizer, train_texts):
  for text in train_texts:
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_round_trip_unseen_files(tokenizer, stdlib_files):
  # Files the tokenizer never saw, including the largest ones.
  by_size = sorted(stdlib_files, key=lambda f: len(f.text))
  files = by_size[1::97] + by_size[-3:]
  report = tokenizer_lib.check_round_trip(
      tokenizer, [f.text for f in files], [f.relpath for f in files])
  assert report["failed"] == []
  assert report["passed"] == len(files)
  # A trained BPE must compress: bytes alone would give about 1 char/token.
  assert report["chars_per_token"] > 1.5


@pytest.mark.parametrize("text", NASTY)
def test_round_trip_nasty_strings(tokenizer, text):
  ids = tokenizer.encode(text)
  assert tokenizer.decode(ids) == text
  assert tokenizer.unk_id not in ids


def test_crlf_is_kept_not_normalized(tokenizer):
  # Rule: no line-ending normalization at all; "\r" is spelled as a byte.
  text = "a\r\nb\n"
  assert tokenizer.decode(tokenizer.encode(text)) == text
  assert tokenizer.encode(text) != tokenizer.encode("a\nb\n")


def test_meta_space_is_not_a_space(tokenizer):
  assert tokenizer.encode("a\u2581b") != tokenizer.encode("a b")
  assert tokenizer.decode(tokenizer.encode("a\u2581b")) == "a\u2581b"


def test_batch_equals_single(tokenizer):
  assert tokenizer.encode_batch(NASTY, add_bos=True) == [
      tokenizer.encode(t, add_bos=True) for t in NASTY]


def test_save_load(tokenizer, tmp_path):
  model_path = tokenizer.save(str(tmp_path / "tok"))
  assert model_path.endswith("tok/tokenizer.model")
  assert (tmp_path / "tok" / "tokenizer.vocab").exists()
  for loaded in (tokenizer_lib.Tokenizer.load(str(tmp_path / "tok")),
                 tokenizer_lib.Tokenizer.load(model_path)):
    assert loaded.fingerprint == tokenizer.fingerprint
    assert loaded.encode_batch(NASTY) == tokenizer.encode_batch(NASTY)


def test_training_is_deterministic(train_texts, tokenizer, tmp_path):
  prefix = str(tmp_path / "again")
  again = tokenizer_lib.train_tokenizer(train_texts, vocab_size=512,
                                        model_prefix=prefix)
  assert again.model_proto == tokenizer.model_proto
  assert tokenizer_lib.Tokenizer.load(prefix + ".model").model_proto == (
      tokenizer.model_proto)


def test_rejects_model_with_other_reserved_ids(train_texts):
  # SentencePiece's default layout is unk=0, bos=1, eos=2, no pad.
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(train_texts[:5]), model_writer=model,
      vocab_size=400, byte_fallback=True, minloglevel=2)
  with pytest.raises(ValueError, match="reserves"):
    tokenizer_lib.Tokenizer(model.getvalue())


@pytest.mark.parametrize("max_bytes", [10, 64, 1000])
def test_chunk_text(max_bytes):
  text = "short\n" + "é" * 200 + "\n\nx = 1\n" + "y" * 50 + "\r\nlast"
  chunks = tokenizer_lib.chunk_text(text, max_bytes)
  assert "".join(chunks) == text
  assert all(len(c.encode("utf-8")) <= max_bytes for c in chunks)


def test_round_trip_humaneval(tokenizer):
  # Prompts are what the models are conditioned on at evaluation time.
  problems = corpus_lib.read_humaneval_problems()
  texts = [p["prompt"] + p["canonical_solution"] for p in problems.values()]
  assert tokenizer_lib.check_round_trip(tokenizer, texts)["failed"] == []
