r"""Builds the docstring-summarization stand-in for XSum and writes its size and hash.

  python scripts/build_docsum.py --cache_dir=workdirs/reproduce/docsum --out=results/docsum.json

The set (specsample/eval/tasks/docsum.py): functions/classes of the corpus's validation
split, document = the definition without its docstring, summary = the docstring's
first sentence. It is built once into --cache_dir (test.jsonl + info.json; the
default is where scripts/reproduce.py's default run looks, so a run with the same
tokenizer reuses it: the default --tokenizer is the toy setting's, and
--tokenizer=smollm2-135m-instruct the real pair's) and rebuilt only when Python,
the tokenizer or the rules change. No network beyond a model name's first fetch.
"""

import json

from absl import flags

from specsample import cli
from specsample.eval.tasks import docsum
from specsample.tokenizer import Tokenizer
from specsample.utils import write_atomic

_CACHE_DIR = flags.DEFINE_string("cache_dir", "workdirs/reproduce/docsum",
                                 "Folder of <split>.jsonl and info.json (reused when current).")
_TOKENIZER = flags.DEFINE_string("tokenizer", "assets/tokenizer/tokenizer.model",
                                 "Project tokenizer (the <= 400-token document filter).")
_SPLIT = flags.DEFINE_string("split", "test", "Split name of the written file (config.xsum.split).")
_OUT = flags.DEFINE_string("out", "results/docsum.json", "Where the size, hash and counts go.")


def main(argv):
  del argv
  info = docsum.ensure_dataset(_CACHE_DIR.value, Tokenizer.load(cli.resolve_path(_TOKENIZER.value)),
                               split=_SPLIT.value)
  write_atomic({_OUT.value: json.dumps(info, indent=1) + "\n"})
  print(f"{info['label']}: {info['num_items']} items, sha256 {info['sha256']}, {info['path']}")


if __name__ == "__main__":
  cli.run(main)
