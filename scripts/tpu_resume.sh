#!/usr/bin/env bash
# Brings a preempted spot slice back and resumes training from its last checkpoint (docs/tpu.md).
#
#   TPU=specsample ZONE=us-central2-b ACCELERATOR=v4-32 VERSION=tpu-ubuntu2204-base \
#   SOURCE=https://github.com/<you>/specsample.git [REF=main] [QR=specsample-qr] \
#   [INTERNAL_IPS=1] [SERVICE_ACCOUNT=...] [NAME=train] \
#     bash scripts/tpu_resume.sh python scripts/train.py --distributed=auto ... --workdir=gs://...
#
# 1. Looks at the slice (or, with QR set, its queued resource). A preempted spot slice
#    cannot be restarted: PREEMPTED / TERMINATED nodes and SUSPENDED / FAILED queued
#    resources are deleted.
# 2. Creates it again if it is gone (spot; through the queued resource QR when set) and
#    waits until it is READY.
# 3. Copies scripts/tpu_worker.sh to every worker and runs its `setup` (venv, repository,
#    pip install; a no-op where all is in place).
# 4. Stops any leftover job NAME and starts the given command under nohup on every worker
#    (`tpu_worker.sh start`, whose `python` is the workers' ~/venv/bin/python). The training command is the one that was running: it resumes
#    from the last complete checkpoint in its gs:// workdir (orbax skips an uncommitted one).
#
# A slice that is READY is left as it is: then only steps 3 and 4 run, so the script is
# also the way to relaunch after a crash. DRY_RUN=1 prints the gcloud commands instead of
# running them (STATE=PREEMPTED|READY|MISSING sets the state it assumes).
set -euo pipefail
: "${TPU:?set TPU}" "${ZONE:?set ZONE}" "${ACCELERATOR:?set ACCELERATOR}" "${VERSION:?set VERSION}"
: "${SOURCE:?set SOURCE (git URL or gs://.../specsample.tar.gz)}"
REF="${REF:-main}" NAME="${NAME:-train}" QR="${QR:-}"
(( $# )) || { echo "usage: tpu_resume.sh TRAINING COMMAND... (see the header)" >&2; exit 2; }
DRY="${DRY_RUN:-0}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

run() {
  if [[ "$DRY" == 1 ]]; then printf '+ %s\n' "$*"; else "$@"; fi
}

state() {  # READY, PREEMPTED, ... or MISSING
  if [[ "$DRY" == 1 ]]; then echo "${STATE:-PREEMPTED}"; return; fi
  if [[ -n "$QR" ]]; then
    gcloud compute tpus queued-resources describe "$QR" --zone="$ZONE" \
        --format='value(state.state)' 2>/dev/null || echo MISSING
  else
    gcloud compute tpus tpu-vm describe "$TPU" --zone="$ZONE" \
        --format='value(state)' 2>/dev/null || echo MISSING
  fi
}

create_flags=(--accelerator-type="$ACCELERATOR" --spot)
[[ "${INTERNAL_IPS:-0}" == 1 ]] && create_flags+=(--internal-ips)
[[ -n "${SERVICE_ACCOUNT:-}" ]] && create_flags+=(--service-account="$SERVICE_ACCOUNT")

current="$(state)"
echo "slice $TPU${QR:+ (queued resource $QR)}: $current"
case "$current" in
  PREEMPTED|TERMINATED|SUSPENDED|FAILED|STOPPED)
    if [[ -n "$QR" ]]; then
      run gcloud compute tpus queued-resources delete "$QR" --zone="$ZONE" --force --quiet
    else
      run gcloud compute tpus tpu-vm delete "$TPU" --zone="$ZONE" --quiet
    fi
    current=MISSING ;;
esac
if [[ "$current" == MISSING ]]; then
  if [[ -n "$QR" ]]; then
    run gcloud compute tpus queued-resources create "$QR" --zone="$ZONE" --node-id="$TPU" \
        --runtime-version="$VERSION" "${create_flags[@]}"
  else
    run gcloud compute tpus tpu-vm create "$TPU" --zone="$ZONE" --version="$VERSION" \
        "${create_flags[@]}"
  fi
  if [[ "$DRY" != 1 ]]; then  # a queued resource waits in the queue first
    until [[ "$(gcloud compute tpus tpu-vm describe "$TPU" --zone="$ZONE" \
                --format='value(state)' 2>/dev/null)" == READY ]]; do
      echo "waiting for $TPU to be READY ..."; sleep 60
    done
  fi
fi

ssh=(gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all)
[[ "${INTERNAL_IPS:-0}" == 1 ]] && ssh+=(--internal-ip)
scp=(gcloud compute tpus tpu-vm scp "$HERE/tpu_worker.sh" "$TPU:" --zone="$ZONE" --worker=all)
[[ "${INTERNAL_IPS:-0}" == 1 ]] && scp+=(--internal-ip)
run "${scp[@]}"
run "${ssh[@]}" --command="bash ~/tpu_worker.sh setup $(printf '%q' "$SOURCE") $(printf '%q' "$REF")"
run "${ssh[@]}" --command="bash ~/tpu_worker.sh stop $NAME; bash ~/tpu_worker.sh start $NAME -- $(printf '%q ' "$@")"
echo "follow it: ${ssh[*]/--worker=all/--worker=0} --command='tail -f ~/logs/$NAME.log'"
