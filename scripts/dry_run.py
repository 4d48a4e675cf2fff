r"""Per-device parameter and KV-cache memory of the target/draft pair on a mesh, with no TPU.

  python scripts/dry_run.py --config=configs/tpu.py:slice=v4-32
  python scripts/dry_run.py --config=configs/tpu.py:slice=v5e-64 --hbm_gib=16 \
      --config.batch_size=64 --config.seq_len=1024

Prints a markdown table (specsample/dry_run.py) and exits with status 1 and a
message naming the sizes when the pair would not fit --hbm_gib per device, or
with status 2 and one line when a dimension does not divide its mesh axes. Nothing is allocated: shapes
come from jax.eval_shape on an abstract mesh, so any CPU machine will do.
"""

import sys

from absl import app, flags, logging
import jax
from ml_collections import config_flags

from specsample import cli, dry_run

_CONFIG = config_flags.DEFINE_config_file("config", None, "Slice config (configs/tpu.py).",
                                          lock_config=True)
_HBM_GIB = flags.DEFINE_float("hbm_gib", None, "HBM per device in GiB; default config.hbm_gib.")
flags.mark_flags_as_required(["config"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.info("devices (not used: shapes are abstract): %s", jax.devices())
  # A bad mesh / rules / shape raises ValueError naming them: one line, exit 2 (cli.run).
  report = dry_run.memory_report(_CONFIG.value, hbm_gib=_HBM_GIB.value)
  print(dry_run.format_report(report))
  try:
    dry_run.check_fits(report)
  except dry_run.DoesNotFitError as e:
    sys.exit(str(e))


if __name__ == "__main__":
  cli.run(main)
