r"""Train a feature draft on recorded target shards. See configs/feature_draft.py.

  python scripts/train_feature_draft.py --config=configs/feature_draft.py --workdir=workdirs/feature_draft

--export writes <workdir>/model from the latest checkpoint (of a run still
training, or killed). --report=FILE writes the run's held-out curve (agreement
against training tokens, alignment/feature_curve.py) as markdown and exits.
A bad setting or missing data prints one line and exits 2.
"""

from absl import flags
from ml_collections import config_flags

from specsample import cli
from specsample import paths
from specsample.alignment import feature_curve, feature_train

_CONFIG = config_flags.DEFINE_config_file("config", cli.repo_path("configs/feature_draft.py"),
                                          "Feature draft config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (resumed if it holds a checkpoint).")
_EXPORT = flags.DEFINE_bool("export", False, "Only write <workdir>/model from the latest checkpoint.")
_REPORT = flags.DEFINE_string("report", "", "Write the held-out curve of --workdir to this markdown file.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  del argv
  config = _CONFIG.value
  if _REPORT.value:
    rows = feature_curve.read(_WORKDIR.value)
    paths.write_atomic({_REPORT.value: feature_curve.markdown(rows, f"Feature draft {_WORKDIR.value}")})
    print(_REPORT.value)
    return
  cli.resolve_paths(config, ("target_dir", "data_dir"))
  if isinstance(config.extra_data_dirs, (tuple, list)):  # else check_config names the field
    config.extra_data_dirs = tuple(cli.resolve_path(d) for d in config.extra_data_dirs)
  feature_train.check_config(config)
  cli.start_jax(False)
  print((feature_train.export if _EXPORT.value else feature_train.run)(config, _WORKDIR.value))


if __name__ == "__main__":
  cli.run(main)
