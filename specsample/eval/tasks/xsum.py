"""XSum 1-shot summarisation: load data, build prompts, score ROUGE-2.

Chen et al. (2023) evaluate XSum 1-shot with at most 128 new tokens and
report ROUGE-2 (0.112 nucleus p = 0.8, 0.157 greedy for the autoregressive
70B target). They do not print their prompt, so this module fixes one and
applies it identically to every decoding method:

    Article: {shot document}
    One-sentence summary: {shot summary}

    Article: {document}
    One-sentence summary:

* The shot is one fixed example: DEFAULT_SHOT (composed for this repo) unless
  the caller passes another, e.g. the first item of the train split
  (`load_xsum(source, "train", limit=1)[0]`).
* Whitespace runs inside documents and summaries (XSum puts each sentence on
  its own line) are collapsed to single spaces, so "\\n" only separates
  fields; that lets generation stop at the first "\\n".
* Documents, the shot's included, are cut to `max_doc_chars` characters
  (default 1000, at a word boundary) so that two documents plus 128 new
  tokens fit a 1024-token context with a small-vocabulary tokenizer.
* The summary is the continuation up to its first "\\n", stripped of
  surrounding whitespace; a continuation that starts with "\\n" gives an
  empty summary (ROUGE-2 of 0).

ROUGE-2 is the F-measure of `rouge_score` with the Porter stemmer, averaged
over articles, with a 95% confidence interval from `stats.mean_ci`.
"""

from __future__ import annotations

import glob
import json
import os
import re
from typing import Any, Callable, Mapping, Sequence

from specsample import paths
from specsample.eval.tasks import stats

DEFAULT_MAX_DOC_CHARS = 1000
DEFAULT_HUB_ID = "EdinburghNLP/xsum"
PROMPT_TEMPLATE = ("Article: {shot_document}\nOne-sentence summary: {shot_summary}\n\n"
                   "Article: {document}\nOne-sentence summary:")

# generate_fn(prompts) -> one raw continuation per prompt.
GenerateFn = Callable[[list[str]], list[str]]

# Composed for this repository (fictional events, no copyrighted text). Used
# by write_fixture for tests and CI smoke runs; DEFAULT_SHOT is the 1-shot
# example unless the caller supplies one.
DEFAULT_SHOT = {
    "id": "shot-0",
    "document": (
        "Volunteers in the coastal town of Marren have planted more than 4,000 "
        "young trees along the dunes this winter. The council said the project "
        "aims to slow erosion that has pushed the shoreline back by nearly three "
        "metres in a decade. Organisers said schools, local businesses and a "
        "rowing club took part, and that a second phase is planned for autumn "
        "if the saplings survive the spring storms."),
    "summary": ("Volunteers have planted thousands of trees on the dunes at Marren "
                "to slow coastal erosion."),
}
_FIXTURE_ITEMS = (
    ("A regional bus operator has cut fares for passengers under 21 to a flat "
     "one pound per journey. The company said the trial would run for six months "
     "and was funded by a grant from the local transport authority. Student "
     "groups welcomed the move, saying high fares had kept young people from "
     "jobs and college courses in nearby towns.",
     "Young passengers will pay a flat one-pound bus fare in a six-month trial."),
    ("The town's only cinema will reopen next month after a two-year closure, its "
     "new owners have announced. A community group raised money to buy the "
     "building when the previous operator went out of business. The renovated "
     "venue will have two screens and a cafe, and will host film clubs for "
     "schools.",
     "A community group is reopening the town's cinema after two years."),
    ("Engineers have finished repairs to a 19th-century stone bridge that was "
     "damaged by floods last year. The bridge carried about 6,000 vehicles a "
     "day before it closed, forcing drivers onto a long detour. Officials said "
     "the work cost less than expected and that the road would reopen on "
     "Monday morning.",
     "A flood-damaged historic bridge will reopen to traffic on Monday."),
    ("A hospital has begun using a mobile scanning unit to cut waiting times for "
     "heart tests. The unit travels between three rural clinics, so patients no "
     "longer need to make a long journey to the city. Staff said the average "
     "wait had already fallen from eleven weeks to four.",
     "A mobile heart-scanning unit has cut waiting times for rural patients."),
    ("The local football club has been fined after fans set off flares during a "
     "league match in March. The league's disciplinary panel said the club had "
     "failed to search supporters properly at the turnstiles. The club said it "
     "would appeal and had already banned two people identified on camera.",
     "A football club has been fined over flares set off by fans at a match."),
    ("Farmers in the valley say a dry spring has left hay crops at half their "
     "usual size. Some have started buying feed from abroad to get their cattle "
     "through the winter. A farming union called for emergency support and said "
     "prices for feed had risen by a third since January.",
     "A dry spring has halved hay crops and pushed up feed prices for farmers."),
    ("A library has extended its opening hours after a surge in visitors during "
     "the exam season. The library will now stay open until nine in the evening "
     "on weekdays. Managers said the extra hours were paid for by closing a "
     "little-used branch office in the same building.",
     "A library is opening later on weekdays after a rise in visitors."),
    ("Police have appealed for witnesses after a van crashed into a shop front "
     "on the high street early on Sunday. Nobody was hurt, but the building was "
     "declared unsafe and neighbouring homes were evacuated for several hours. "
     "The driver was later arrested.",
     "A van has crashed into a shop, forcing nearby homes to be evacuated."),
    ("A new cycle path linking two villages has opened after ten years of "
     "campaigning by residents. The four-mile route follows an old railway line "
     "and avoids a busy main road where two cyclists were injured last year. "
     "Campaigners said they hoped more children would now cycle to school.",
     "A cycle path along an old railway line now links two villages."),
    ("Scientists at a university have recorded the first breeding pair of a "
     "rare wading bird on the estuary for half a century. Researchers said "
     "cleaner water and new nature reserves had brought back the insects and "
     "worms the birds feed on. The nest is being watched around the clock.",
     "A rare wading bird is breeding on the estuary for the first time in 50 years."),
)


def normalize_whitespace(text: str) -> str:
  """Collapses all whitespace runs (newlines included) to single spaces."""
  return re.sub(r"\s+", " ", text).strip()


def truncate_document(text: str, max_chars: int | None = DEFAULT_MAX_DOC_CHARS) -> str:
  """Normalises whitespace and cuts to at most max_chars at a word boundary.

  Args:
    text: the article.
    max_chars: character budget; None keeps the whole article.

  Returns:
    The shortened article (no partial last word unless it has no spaces).
  """
  text = normalize_whitespace(text)
  if max_chars is None or len(text) <= max_chars:
    return text
  cut = text[:max_chars]
  space = cut.rfind(" ")
  return cut[:space] if space > 0 else cut


def build_prompt(document: str, shot: Mapping[str, str] | None = None,
                 max_doc_chars: int | None = DEFAULT_MAX_DOC_CHARS) -> str:
  """Formats the 1-shot prompt of the module docstring for one article.

  Args:
    document: the article to summarise.
    shot: dict with "document" and "summary" (default DEFAULT_SHOT).
    max_doc_chars: character budget for each of the two documents.

  Returns:
    The prompt, ending in "One-sentence summary:" (no trailing space).
  """
  shot = DEFAULT_SHOT if shot is None else shot
  return PROMPT_TEMPLATE.format(
      shot_document=truncate_document(shot["document"], max_doc_chars),
      shot_summary=normalize_whitespace(shot["summary"]),
      document=truncate_document(document, max_doc_chars))


def truncate_summary(continuation: str) -> str:
  """The generated summary: text before the first "\\n", stripped."""
  return continuation.split("\n", 1)[0].strip()


def write_fixture(path: str | os.PathLike, n: int = 8) -> str:
  """Writes a small XSum-like JSONL file (id, document, summary) for tests.

  Args:
    path: output file; parent directories are created.
    n: number of items, at most len(_FIXTURE_ITEMS) (10).

  Returns:
    The path written, as a string.
  """
  if not 1 <= n <= len(_FIXTURE_ITEMS):
    raise ValueError(f"n must be in [1, {len(_FIXTURE_ITEMS)}], got {n}")
  path = os.fspath(path)
  paths.write_atomic({path: "".join(
      json.dumps({"id": f"fixture-{index}", "document": document, "summary": summary}) + "\n"
      for index, (document, summary) in enumerate(_FIXTURE_ITEMS[:n]))})
  return path


_EXTENSIONS = (".jsonl", ".json", ".parquet", ".jsonl.gz", ".json.gz")
KNOWN_SPLITS = ("train", "validation", "test")


def _builder(path: str) -> str:
  lower = path.lower()
  if lower.endswith((".json", ".jsonl", ".json.gz", ".jsonl.gz")):
    return "json"
  if lower.endswith(".parquet"):
    return "parquet"
  raise ValueError(f"{path}: unsupported XSum file type (want JSON, JSONL or Parquet)")


def local_data_files(path: str, split: str) -> tuple[str, list[str]]:
  """(builder, files) of one split of a local copy, in the usual layouts, no conversion.

  A file is used as it is (a name starting with another split's name, e.g.
  train-00000-of-00001.parquet asked for as "test", is an error). A folder
  may hold {split}.jsonl/.json/.parquet, HF shards {split}-00000-of-0000N.*,
  or either under data/, or {split}/*.parquet (the hub's parquet export).
  """
  if not os.path.isdir(path):
    other = [s for s in KNOWN_SPLITS
             if s != split and re.match(rf"{s}[-_.]", os.path.basename(path).lower())]
    if other:
      raise ValueError(f"{path}: the file name says split {other[0]!r}, but split {split!r} "
                       "was asked for (config.xsum.split)")
    return _builder(path), [path]
  patterns = [f"{split}{ext}" for ext in _EXTENSIONS] + [f"{split}-*{ext}" for ext in _EXTENSIONS]
  patterns += [f"data/{p}" for p in patterns] + [f"{split}/*.parquet", f"*/{split}/*.parquet"]
  for pattern in patterns:
    files = sorted(glob.glob(os.path.join(glob.escape(path), pattern)))
    if files:
      return _builder(files[0]), files
  found = sorted({re.split(r"[-_.]", os.path.basename(f))[0]
                  for f in glob.glob(os.path.join(glob.escape(path), "**", "*"), recursive=True)
                  if f.lower().endswith(_EXTENSIONS)})
  raise FileNotFoundError(f"{path}: no file for split {split!r} ({split}.jsonl/.json/.parquet, "
                          f"{split}-*-of-*.parquet, data/ or {split}/); splits found: "
                          f"{found or 'none'}")


def check_items(items: Sequence[Mapping[str, Any]], where: str) -> None:
  """Raises ValueError naming the file, row and field of a missing or empty text."""
  for index, item in enumerate(items):
    for field in ("document", "summary"):
      value = item.get(field)
      if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: row {index} (id {item.get('id')!r}): field {field!r} is "
                         f"{'missing' if value is None else 'empty'}")


def load_xsum(source: str | os.PathLike, split: str = "test", limit: int | None = None,
              cache_dir: str | None = None) -> list[dict[str, str]]:
  """Loads XSum items from a local file/directory or the Hugging Face hub.

  Args:
    source: a local JSON/JSONL/Parquet file with fields document, summary
      (id optional; the row index is used when absent), a directory in one of
      the layouts of local_data_files, or a hub id such as
      "EdinburghNLP/xsum", tried only when no such local path exists.
    split: split name; for a single local file it only names the split.
    limit: keep the first `limit` items.
    cache_dir: datasets cache directory (default: the datasets default).

  Returns:
    List of dicts with "id", "document" and "summary" strings.

  Raises:
    RuntimeError: the hub could not be reached (e.g. offline); the message
      says how to use a local copy instead.
    ValueError / FileNotFoundError: a missing or empty field (naming the file,
      row and field) or no file for the split (naming the folder).
  """
  import datasets  # Heavy; imported only when loading.

  source = os.fspath(source)
  if os.path.exists(source):
    builder, data_files = local_data_files(source, split)
    where = data_files[0] if len(data_files) == 1 else f"{source} ({split} files)"
    dataset = datasets.load_dataset(builder, data_files={split: data_files},
                                    split=split, cache_dir=cache_dir)
  else:
    where = f"{source} (hub, split {split!r})"
    try:
      dataset = datasets.load_dataset(source, split=split, cache_dir=cache_dir)
    except Exception as exc:  # Connection, offline mode, missing repo, ...
      raise RuntimeError(
          f"could not load XSum {split!r} from the hub id {source!r} (no such "
          f"local path either): {exc}. Offline? Download the data elsewhere "
          "and pass a local JSONL/Parquet file with fields document, summary, "
          "id.") from exc
  missing = {"document", "summary"} - set(dataset.column_names)
  if missing:
    raise ValueError(f"{where}: no field {sorted(missing)} (XSum needs document and summary; "
                     f"has {dataset.column_names})")
  if limit is not None:
    dataset = dataset.select(range(min(limit, len(dataset))))
  has_id = "id" in dataset.column_names
  items = [{"id": str(row["id"]) if has_id else str(index),
            "document": row["document"], "summary": row["summary"]}
           for index, row in enumerate(dataset)]
  if not items:
    raise ValueError(f"{where}: no rows in split {split!r}")
  check_items(items, where)
  return items


def rouge2_scores(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
  """ROUGE-2 F-measure of each prediction against its reference.

  Args:
    predictions: generated summaries.
    references: gold summaries, same length.

  Returns:
    One F-measure in [0, 1] per pair.
  """
  from rouge_score import rouge_scorer

  if len(predictions) != len(references):
    raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
  scorer = rouge_scorer.RougeScorer(["rouge2"], use_stemmer=True)
  # RougeScorer.score takes (target, prediction), in that order.
  return [scorer.score(ref, pred)["rouge2"].fmeasure
          for pred, ref in zip(predictions, references)]


def score_summaries(items: Sequence[Mapping[str, str]], continuations: Sequence[str]
                    ) -> dict[str, Any]:
  """Truncates raw continuations and scores them against the references.

  Args:
    items: XSum items (id, document, summary), as from load_xsum.
    continuations: one raw generated continuation per item.

  Returns:
    dict with "rouge2" (mean F), "rouge2_ci" ([low, high], 95% normal),
    "num_items" and "items" (id, prediction, reference, rouge2).
  """
  if len(items) != len(continuations):
    raise ValueError(f"{len(items)} items but {len(continuations)} continuations")
  predictions = [truncate_summary(text) for text in continuations]
  references = [item["summary"] for item in items]
  scores = rouge2_scores(predictions, references)
  interval = stats.mean_ci(scores)
  return {
      "rouge2": interval.mean,
      "rouge2_ci": [interval.low, interval.high],
      "num_items": len(items),
      "items": [dict(id=item["id"], prediction=pred, reference=ref, rouge2=score)
                for item, pred, ref, score in zip(items, predictions, references, scores)],
  }


def evaluate(generate_fn: GenerateFn, items: Sequence[Mapping[str, str]], *,
             shot: Mapping[str, str] | None = None,
             max_doc_chars: int | None = DEFAULT_MAX_DOC_CHARS,
             batch_size: int | None = None) -> dict[str, Any]:
  """Builds 1-shot prompts, generates, truncates at "\\n", scores ROUGE-2.

  Args:
    generate_fn: prompts -> one raw continuation per prompt (max new tokens,
      temperature and top-p are its business; the paper uses 128 tokens).
    items: XSum items, as from load_xsum.
    shot: the fixed 1-shot example (default DEFAULT_SHOT).
    max_doc_chars: character budget per document in the prompt.
    batch_size: prompts per generate_fn call (default: all at once).

  Returns:
    The dict of score_summaries.
  """
  prompts = [build_prompt(item["document"], shot, max_doc_chars) for item in items]
  batch_size = batch_size or max(1, len(prompts))
  continuations: list[str] = []
  for start in range(0, len(prompts), batch_size):
    batch = prompts[start:start + batch_size]
    out = list(generate_fn(batch))
    if len(out) != len(batch):
      raise ValueError(f"generate_fn returned {len(out)} strings for "
                       f"{len(batch)} prompts")
    continuations.extend(out)
  return score_summaries(items, continuations)
