"""What every script shares: one-line user errors with exit status 2, and asset paths
that resolve from the repository when the working directory is elsewhere."""

from __future__ import annotations

import os
import sys
from typing import Callable, Sequence

from absl import app, flags, logging
import jax

from specsample import distributed
from specsample import paths
from specsample.models import fetch
from specsample.models import io as model_io

_TRACEBACK = flags.DEFINE_bool("traceback", False,
                               "On a user error, show the full traceback instead of one line.")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USER_ERROR_STATUS = 2
# Bad config values, bad or missing input files, missing or corrupt models, a bucket
# path without its client library, a model fetch that failed (GGUF and tokenizer
# errors are ValueErrors).
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
               model_io.ModelLoadError, paths.MissingClientError, fetch.FetchError)


def _fail(error: BaseException, cause_last: bool = False) -> None:
  """One line on stderr, exit status 2. cause_last: the message embeds a traceback
  (config_flags does) whose last line is the cause."""
  lines = [l.strip() for l in str(error).strip().splitlines() if l.strip()]
  line = lines[0] if lines else type(error).__name__
  if cause_last and len(lines) > 1:
    line = f"{line.rstrip(':')}: {lines[-1]}"
  print(f"{os.path.basename(sys.argv[0])}: error: {line} (--traceback shows where)",
        file=sys.stderr)
  sys.exit(USER_ERROR_STATUS)


def _parse_flags(argv: Sequence[str]) -> list[str]:
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:  # e.g. a config file's bad argument or a --config.field's bad type
    if "--traceback" in argv:
      raise
    _fail(e, cause_last=True)
  except (AttributeError, KeyError) as e:  # config_flags: an override of no config field
    if "--traceback" in argv:
      raise
    field = next((a.partition("=")[0] for a in argv if a.startswith("--config.")
                  and str(e).strip("'\"") in a.partition("=")[0]), str(e))
    _fail(ValueError(f"{field}: the config has no such field"))


def run(main: Callable[[list[str]], None]) -> None:
  """app.run(main), with user errors as one line on stderr and exit status 2."""
  def guarded(argv):
    try:
      return main(argv)
    except USER_ERRORS as e:
      if _TRACEBACK.value:
        raise
      _fail(e)
  app.run(guarded, flags_parser=_parse_flags)


def repo_path(relpath: str) -> str:
  """A path inside the repository, whatever the working directory."""
  return os.path.join(REPO_ROOT, relpath)


def resolve_path(path: str) -> str:
  """`path`, or the repository's path of that name when `path` is relative, does not
  exist here and does there: defaults such as 'assets/pair/target' then work from
  any folder, while a path that exists relative to the working directory wins. A
  bucket path (gs://...) is returned as it is. A name of models/fetch.py's MODELS
  (not an existing path) is fetched and converted on first use: its folder."""
  if not path or paths.is_remote(path):
    return path
  if fetch.is_name(path) and not os.path.exists(path):
    return fetch.ensure(path)
  if path and not os.path.isabs(path) and not os.path.exists(path):
    candidate = repo_path(path)
    if os.path.exists(candidate):
      return candidate
  return path


def resolve_paths(config, fields: Sequence[str]) -> None:
  """resolve_path on config fields; dotted names reach sub-configs ('xsum.path')."""
  for field in fields:
    *parents, leaf = field.split(".")
    node = config
    for parent in parents:
      node = node[parent]
    node[leaf] = resolve_path(node[leaf])


def start_jax(multi_host: bool = True) -> None:
  """Starts jax.distributed per the --distributed flags (when multi_host), then logs the
  devices. Scripts pass it to their library call, which runs it once the config is checked."""
  if multi_host:
    distributed.maybe_initialize()
  logging.info("process %d of %d, devices: %s", jax.process_index(), jax.process_count(),
               jax.devices())
