"""Shared test set-up: 8 fake CPU devices (for sharding tests) and tiny models.

XLA_FLAGS must be set before jax is imported anywhere, hence at module top.
"""

import os
import shutil
import tempfile

# The suite compiles at XLA backend optimization level 0: the same HLO passes and
# fusions, so the same programs, with LLVM's expensive code optimizations off.
# Compilation is most of the suite's time (tests/test_adaptive.py: 104 s -> 70 s);
# no test asserts on speed. Scripts, benchmarks and users compile at the default.
# An XLA_FLAGS that sets the level itself wins.
_FLAGS = os.environ.get("XLA_FLAGS", "")
if "xla_backend_optimization_level" not in _FLAGS:
  _FLAGS += " --xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = (_FLAGS + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# One XLA compilation cache per test run, shared by the worker processes and the
# scripts they start: many files compile the same decode loops on the same tiny
# pairs, and XLA compilation is most of the suite's time. The controller (or a
# `-n 0` run) makes the folder and removes it at the end; nothing persists
# between runs, so every run compiles everything at least once.
_OWN_CACHE = None
if "PYTEST_XDIST_WORKER" not in os.environ and "SPECSAMPLE_TEST_JAX_CACHE" not in os.environ:
  _OWN_CACHE = tempfile.mkdtemp(prefix="specsample-jax-cache-")
  os.environ["SPECSAMPLE_TEST_JAX_CACHE"] = _OWN_CACHE
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.environ["SPECSAMPLE_TEST_JAX_CACHE"])
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")

import jax  # noqa: E402
import pytest  # noqa: E402

from specsample.decoding import LM  # noqa: E402
from specsample.models import io as model_io  # noqa: E402
from specsample.models import transformer as tr  # noqa: E402
from specsample.models.presets import get_preset  # noqa: E402
from specsample.tokenizer import Tokenizer  # noqa: E402


def pytest_unconfigure(config):
  if _OWN_CACHE:
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)


def pytest_xdist_auto_num_workers(config):
  """`-n auto` (pytest.ini): one worker per core, at most 4 (each holds ~2 GB of JAX)."""
  usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return max(1, min(4, usable or 1))


def _random_lm(config, seed: int, scale: float) -> LM:
  # Untied embeddings give random models whose next-token
  # distributions are neither uniform nor one-hot: good test cases.
  params = jax.tree_util.tree_map(lambda x: x * scale, tr.init_params(config, jax.random.key(seed)))
  return LM(config, params)


@pytest.fixture(scope="session")
def tiny_pair():
  """(target, draft): random 2-layer / 1-layer models over a 16-token vocabulary."""
  target_cfg = get_preset("tiny", tie_embeddings=False, vocab_size=16)
  draft_cfg = target_cfg.replace(num_layers=1)
  return _random_lm(target_cfg, 0, 1.0), _random_lm(draft_cfg, 1, 1.0)


TOKENIZER = "assets/tokenizer/tokenizer.model"


def tiny_config(max_seq_len: int, **overrides):
  """A tiny model over the real tokenizer's 4096 ids (for model folders the scripts load)."""
  cfg = dict(vocab_size=4096, d_model=16, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8,
             mlp_dim=32, max_seq_len=max_seq_len)
  cfg.update(overrides)
  return tr.TransformerConfig(**cfg).validate()


def write_tiny_setup(root, max_seq_len: int):
  """Tiny target (2 layers) / draft (1 layer) folders with the real tokenizer, and a small
  corpus root, under `root`; returns it."""
  fp = Tokenizer.load(TOKENIZER).fingerprint
  for name, seed, layers in (("target", 0, 2), ("draft", 1, 1)):
    cfg = tiny_config(max_seq_len, num_layers=layers)
    model_io.save_lm(str(root / name), cfg, tr.init_params(cfg, jax.random.key(seed)),
                     tokenizer_id=fp, store_dtype="float32")
  corpus = root / "corpus"
  corpus.mkdir()
  for i in range(12):
    body = "".join(f"def f{i}_{j}(x):\n    return x + {j}  # line {j}\n" for j in range(30))
    (corpus / f"mod{i}.py").write_text(body)
  return root
