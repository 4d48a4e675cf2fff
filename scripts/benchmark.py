r"""Speed of speculative vs autoregressive sampling. See configs/benchmark.py for every field.

  nice -n 10 python scripts/benchmark.py --config=configs/benchmark.py
  python scripts/benchmark.py --config=configs/benchmark.py:runlocal \
      --config.target_dir=/tmp/pair/target --config.draft_dir=/tmp/pair/draft \
      --config.output_dir=/tmp/bench
  # Every worker of a TPU slice, one mesh over all chips (docs/tpu.md, step 5):
  python scripts/benchmark.py --distributed=auto --config=configs/benchmark.py \
      --config.mesh.data=2 --config.mesh.tensor=8 --config.batch_sizes='(16,)' ...

Writes <output_dir>/benchmark.json and <output_dir>/benchmark.md (atomically;
process 0 alone). A bad setting prints one line and exits with status 2.
"""

import sys

from absl import app, flags
import jax
from ml_collections import config_flags

from specsample import cli
from specsample.eval.speed import benchmark
from specsample.eval.speed import report as benchmark_report

_CONFIG = config_flags.DEFINE_config_file("config", None, "Benchmark config file.",
                                          lock_config=True)
flags.mark_flags_as_required(["config"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  cli.resolve_paths(config, ("target_dir", "draft_dir", "tokenizer"))
  results = benchmark.run(config, command=" ".join(["python"] + sys.argv), start=cli.start_jax)
  if jax.process_index() != 0:
    return  # every process measured the same runs; process 0 writes them
  json_path, md_path = benchmark_report.write_results(results, config.output_dir)
  print(benchmark_report.format_markdown(results))
  print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
  cli.run(main)
