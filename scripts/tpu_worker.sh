#!/usr/bin/env bash
# What each TPU worker runs (docs/tpu.md): install, start a job in the background, stop it.
#
#   bash tpu_worker.sh setup SOURCE [REF]    Python 3.11 venv (uv) at ~/venv, the repository at
#                                            ~/specsample (git URL + branch/tag/commit, or a
#                                            gs://.../specsample.tar.gz from `git archive`),
#                                            pip install -e '.[gcs]' "jax[tpu]==$JAX_VERSION".
#                                            Safe to rerun: it updates what is there.
#   bash tpu_worker.sh start NAME -- CMD...  CMD under nohup in its own session, in ~/specsample,
#                                            output in ~/logs/NAME.log, pid in ~/logs/NAME.pid; the
#                                            job outlives the ssh session. `python` is the venv's
#                                            (~/venv/bin/python). Refuses a NAME still running.
#   bash tpu_worker.sh stop [NAME]           Stops that job (default: every job started here)
#                                            and anything else holding the TPU, then removes
#                                            libtpu's lock file: the cleanup after a Ctrl-C.
#   bash tpu_worker.sh status                Each job: running or exited, and its log's last line.
#
# DRY_RUN=1 prints the commands instead of running them.
set -euo pipefail

VENV="${VENV:-$HOME/venv}"
REPO_DIR="${REPO_DIR:-$HOME/specsample}"
LOGS="${LOGS:-$HOME/logs}"
PYTHON_VERSION="${PYTHON_VERSION:-3.11}"
JAX_VERSION="${JAX_VERSION:-0.10.2}"   # setup.py's jax pin; tests/test_runbook.py checks they agree

run() {
  if [[ "${DRY_RUN:-0}" == 1 ]]; then
    printf '+ %s\n' "$*"
  else
    "$@"
  fi
}

setup() {
  local source="${1:?usage: tpu_worker.sh setup SOURCE [REF]}" ref="${2:-main}"
  if ! command -v uv >/dev/null && [[ ! -x "$HOME/.local/bin/uv" ]]; then
    run sh -c "curl -LsSf https://astral.sh/uv/install.sh | sh"
  fi
  local uv; uv="$(command -v uv || echo "$HOME/.local/bin/uv")"
  # The images' system Python is 3.10 (Ubuntu 22.04); uv fetches a standalone 3.11.
  if [[ ! -x "$VENV/bin/python" ]]; then
    run "$uv" venv --seed --python "$PYTHON_VERSION" "$VENV"
  fi
  if [[ "$source" == gs://* ]]; then  # a tarball of the working tree, e.g. unpushed changes
    run mkdir -p "$REPO_DIR"
    run sh -c "gcloud storage cp '$source' - | tar -xz -C '$REPO_DIR'"
  elif [[ -d "$REPO_DIR/.git" ]]; then
    run git -C "$REPO_DIR" fetch --tags origin
    run git -C "$REPO_DIR" checkout --force "$ref"
    if git -C "$REPO_DIR" show-ref --verify --quiet "refs/remotes/origin/$ref"; then
      run git -C "$REPO_DIR" reset --hard "origin/$ref"
    fi
  else
    run git clone "$source" "$REPO_DIR"
    run git -C "$REPO_DIR" checkout "$ref"
  fi
  run "$VENV/bin/python" -m pip install --quiet -e "$REPO_DIR[gcs]" "jax[tpu]==$JAX_VERSION"
  run "$VENV/bin/python" -c "import sys, jax; print(sys.version.split()[0], jax.__version__, jax.process_count(), jax.device_count())"
}

start() {
  local name="${1:?usage: tpu_worker.sh start NAME -- CMD...}"; shift
  [[ "${1:-}" == "--" ]] && shift
  (( $# )) || { echo "tpu_worker.sh start: no command given" >&2; exit 2; }
  [[ "$1" == python ]] && set -- "$VENV/bin/python" "${@:2}"  # the venv's, never the system's
  local pid_file="$LOGS/$name.pid"
  if [[ -f "$pid_file" ]] && kill -0 "$(cat "$pid_file")" 2>/dev/null; then
    echo "tpu_worker.sh: job '$name' is still running (pid $(cat "$pid_file")); stop it first" >&2
    exit 1
  fi
  run mkdir -p "$LOGS"
  if [[ "${DRY_RUN:-0}" == 1 ]]; then
    printf '+ cd %q && setsid nohup %s > %q 2>&1 < /dev/null &\n' "$REPO_DIR" "$*" "$LOGS/$name.log"
    return
  fi
  cd "$REPO_DIR"
  setsid nohup "$@" > "$LOGS/$name.log" 2>&1 < /dev/null &
  echo $! > "$pid_file"
  echo "started '$name' (pid $!): tail -f $LOGS/$name.log"
}

stop() {
  local pids=() pid_file
  for pid_file in "$LOGS"/${1:-*}.pid; do
    [[ -f "$pid_file" ]] || continue
    pids+=("$(cat "$pid_file")")
  done
  for pid in "${pids[@]}"; do  # each job is its own session: signal the whole group
    run kill -TERM -- "-$pid" 2>/dev/null || true
  done
  for _ in $(seq 30); do
    local alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    (( alive )) || break
    sleep 1
  done
  for pid in "${pids[@]}"; do run kill -KILL -- "-$pid" 2>/dev/null || true; done
  # Left over from an ssh session killed with Ctrl-C: any process still holding a TPU
  # device (/dev/accel* on v4, /dev/vfio/<n> on v5e and later), then libtpu's lock file.
  local sudo="" devices holders
  (( EUID == 0 )) || sudo="sudo -n"
  devices="$(ls /dev/accel* /dev/vfio/[0-9]* 2>/dev/null || true)"
  if [[ -n "$devices" ]]; then
    holders="$($sudo lsof -t $devices 2>/dev/null | sort -u || true)"
    [[ -z "$holders" ]] || run $sudo kill -KILL $holders || true
    run $sudo rm -f /tmp/libtpu_lockfile || true
  fi
  run rm -f "$LOGS"/${1:-*}.pid
}

status() {
  local pid_file name
  for pid_file in "$LOGS"/*.pid; do
    [[ -f "$pid_file" ]] || { echo "no jobs"; return; }
    name="$(basename "$pid_file" .pid)"
    if kill -0 "$(cat "$pid_file")" 2>/dev/null; then state=running; else state=exited; fi
    echo "$name: $state; $(tail -n 1 "$LOGS/$name.log" 2>/dev/null | tr '\r' '\n' | tail -n 1)"
  done
}

case "${1:-}" in
  setup|start|stop|status) cmd="$1"; shift; "$cmd" "$@" ;;
  *) sed -n '2,18p' "$0"; exit 2 ;;
esac
