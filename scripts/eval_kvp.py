r"""Measure KV Prediction: TTFT, its FLOPs, quality and SpS + KVP latency. See configs/kvp_eval.py.

  nice -n 19 python scripts/eval_kvp.py --config=configs/kvp_eval.py:phases=quality
  flock /tmp/timing.lock python scripts/eval_kvp.py --config=configs/kvp_eval.py:phases=timing

Writes results/kvp.json, results/kvp.md and results/kvp_pareto.png.
"""

from absl import logging
from ml_collections import config_flags

from specsample import cli
from specsample.eval.kvp import bench as kvp_bench

_CONFIG = config_flags.DEFINE_config_file("config", cli.repo_path("configs/kvp_eval.py"),
                                          "KV Prediction evaluation config.", lock_config=True)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  config = _CONFIG.value
  cli.resolve_paths(config, ("target_dir", "tokenizer"))
  cli.start_jax(False)
  kvp_bench.run(config)
  print(open(f"{config.out_dir}/kvp.md").read())


if __name__ == "__main__":
  cli.run(main)
