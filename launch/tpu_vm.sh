#!/usr/bin/env bash
# Runs simlap on a Cloud TPU VM pod slice: creates the slice (or reuses it), ships the code to
# every worker, installs simlap with the TPU JAX wheel on every worker, then starts the same
# `python -m simlap.main` on all workers at once. On a pod, JAX finds its peers by itself
# (jax.distributed.initialize() with no arguments), so every worker runs the identical command.
#
# The workdir (checkpoints, metrics) and the TFDS data dir live on GCS because every worker must
# see the same files. Preemption (Spot VMs) and maintenance events reach the training process as
# SIGTERM: the remote shell execs python, so no wrapper shell stands between the signal and it,
# and every worker then saves one agreed step and exits 0 (simlap/runtime/preemption.py); a rerun of this
# script resumes from it. Run with --help for the options; --dry-run prints the commands only.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() {
  cat <<'EOF'
Usage: launch/tpu_vm.sh --bucket BUCKET --zone ZONE [options] [--config.KEY=VALUE ...] [-- ARGS...]

Creates or reuses a TPU VM pod slice, copies the code to every worker, installs
simlap[train,tpu] (jax[tpu]) on every worker and runs on all workers:
  exec python -m simlap.main --config=CONFIG --workdir=WORKDIR --config.dataset.data_dir=DATA_DIR
On a preemption or maintenance notice (SIGTERM) every worker saves one agreed step and exits 0.

Options (environment variable in brackets):
  --project ID           GCP project [PROJECT]; default: gcloud's configured project
  --zone ZONE            TPU zone, e.g. us-central2-b [ZONE] (required)
  --accelerator-type T   TPU type [ACCELERATOR_TYPE], default v4-32
  --version V            TPU VM runtime [TPU_VERSION]; default chosen from the type:
                         v4 tpu-ubuntu2204-base, v5litepod v2-alpha-tpuv5-lite,
                         v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e
  --name NAME            TPU VM name [TPU_NAME], default simlap-<accelerator-type>
  --spot                 create the slice as a Spot VM (preemptible; simlap resumes from WORKDIR)
  --bucket BUCKET        GCS bucket, without gs:// [BUCKET] (required)
  --config PATH[:ARG]    config file [SIMLAP_CONFIG], default configs/in1k.py
  --workdir URI          run dir [WORKDIR], default gs://BUCKET/simlap/NAME/<config name>
                         (fixed per config so a rerun resumes from the last checkpoint)
  --data-dir URI         TFDS data dir [TFDS_DATA_DIR], default gs://BUCKET/tensorflow_datasets
  --repo URL             git-clone URL on every worker instead of copying this checkout
  --ref REF              git ref to ship or check out [SIMLAP_REF], default HEAD
                         (without --repo: `git archive REF` of this checkout, so
                         uncommitted changes are NOT shipped)
  --skip-install         only ship the code; the workers already have the environment
  --evaluate             run  python -m simlap.evaluate --workdir=WORKDIR  on every worker
                         instead of training (each worker reads its slice; worker 0 writes
                         WORKDIR/eval); --config.* overrides are refused
  --dry-run              print the commands (prefixed "+ ") and run nothing
  -h, --help             this text
  --config.KEY=VALUE     passed through to simlap.main (any number)
  -- ARGS...             everything after -- is passed through to simlap.main

Example:
  launch/tpu_vm.sh --project my-proj --zone us-central2-b --accelerator-type v4-64 \
      --bucket my-bucket --config.batch_size=4096
EOF
}

die() {
  echo "tpu_vm.sh: error: $*" >&2
  exit 2
}

# Prints its arguments as one shell-quoted command line (safe words stay bare).
quote() {
  local out="" arg
  for arg in "$@"; do
    if [[ "$arg" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
      out+="$arg "
    else
      out+="'${arg//\'/\'\\\'\'}' "
    fi
  done
  printf '%s' "${out% }"
}

# Prints the command (like `set -x`); runs it unless --dry-run.
run() {
  if ((DRY_RUN)); then
    printf '+ %s\n' "$(quote "$@")"
  else
    printf '+ %s\n' "$(quote "$@")" >&2
    "$@"
  fi
}

default_version() {
  case "$1" in
    v4-*) echo "tpu-ubuntu2204-base" ;;
    v5litepod-* | v5e-*) echo "v2-alpha-tpuv5-lite" ;;
    v5p-*) echo "v2-alpha-tpuv5" ;;
    v6e-*) echo "v2-alpha-tpuv6e" ;;
    *) die "no default runtime version for accelerator type '$1'; pass --version" ;;
  esac
}

# A name for the default workdir: configs/in1k.py:smoke -> in1k-smoke.
config_stem() {
  local path="${1%%:*}" arg=""
  [[ "$1" == *:* ]] && arg="-${1#*:}"
  path="$(basename "$path" .py)"
  printf '%s' "${path}${arg//[^A-Za-z0-9_.-]/_}"
}

parse_args() {
  PROJECT="${PROJECT:-}"
  ZONE="${ZONE:-}"
  ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-32}"
  TPU_VERSION="${TPU_VERSION:-}"
  TPU_NAME="${TPU_NAME:-}"
  BUCKET="${BUCKET:-}"
  CONFIG="${SIMLAP_CONFIG:-configs/in1k.py}"
  WORKDIR="${WORKDIR:-}"
  DATA_DIR="${TFDS_DATA_DIR:-}"
  GIT_URL=""
  REF="${SIMLAP_REF:-HEAD}"
  SPOT=0
  SKIP_INSTALL=0
  DRY_RUN=0
  EVALUATE=0
  PASSTHROUGH=()
  while (($#)); do
    case "$1" in
      --project | --zone | --accelerator-type | --version | --name | --bucket | --config | \
        --workdir | --data-dir | --repo | --ref)
        (($# >= 2)) || die "$1 needs a value"
        set -- "$1=$2" "${@:3}"
        continue
        ;;
      --project=*) PROJECT="${1#*=}" ;;
      --zone=*) ZONE="${1#*=}" ;;
      --accelerator-type=*) ACCELERATOR_TYPE="${1#*=}" ;;
      --version=*) TPU_VERSION="${1#*=}" ;;
      --name=*) TPU_NAME="${1#*=}" ;;
      --bucket=*) BUCKET="${1#*=}" ;;
      --config=*) CONFIG="${1#*=}" ;;
      --workdir=*) WORKDIR="${1#*=}" ;;
      --data-dir=*) DATA_DIR="${1#*=}" ;;
      --repo=*) GIT_URL="${1#*=}" ;;
      --ref=*) REF="${1#*=}" ;;
      --spot) SPOT=1 ;;
      --skip-install) SKIP_INSTALL=1 ;;
      --evaluate) EVALUATE=1 ;;
      --dry-run) DRY_RUN=1 ;;
      -h | --help)
        usage
        exit 0
        ;;
      --config.*) PASSTHROUGH+=("$1") ;;
      --)
        shift
        PASSTHROUGH+=("$@")
        break
        ;;
      *) die "unknown argument '$1' (see --help; use -- to pass arguments to simlap.main)" ;;
    esac
    shift
  done
  BUCKET="${BUCKET#gs://}"
  BUCKET="${BUCKET%/}"
  [[ -n "$ZONE" ]] || die "--zone (or ZONE) is required"
  [[ -n "$BUCKET" ]] || die "--bucket (or BUCKET) is required"
  [[ -n "$TPU_VERSION" ]] || TPU_VERSION="$(default_version "$ACCELERATOR_TYPE")"
  [[ -n "$TPU_NAME" ]] || TPU_NAME="simlap-${ACCELERATOR_TYPE}"
  [[ -n "$WORKDIR" ]] || WORKDIR="gs://${BUCKET}/simlap/${TPU_NAME}/$(config_stem "$CONFIG")"
  [[ -n "$DATA_DIR" ]] || DATA_DIR="gs://${BUCKET}/tensorflow_datasets"
  [[ "$WORKDIR" == gs://* ]] ||
    echo "tpu_vm.sh: warning: workdir '$WORKDIR' is not on GCS; workers will not share it" >&2
  GCLOUD_SCOPE=("--zone=${ZONE}")
  [[ -z "$PROJECT" ]] || GCLOUD_SCOPE+=("--project=${PROJECT}")
}

# ---- the TPU VM ----
create_or_reuse() {
  local describe=(gcloud compute tpus tpu-vm describe "$TPU_NAME" "${GCLOUD_SCOPE[@]}")
  local create=(gcloud compute tpus tpu-vm create "$TPU_NAME" "${GCLOUD_SCOPE[@]}"
    "--accelerator-type=${ACCELERATOR_TYPE}" "--version=${TPU_VERSION}")
  ((SPOT)) && create+=(--spot)
  if ((DRY_RUN)); then
    run "${describe[@]}"
    echo "# only if the describe above fails (no TPU VM of that name yet):"
    run "${create[@]}"
  elif run "${describe[@]}" >/dev/null 2>&1; then
    echo "tpu_vm.sh: reusing the existing TPU VM $TPU_NAME" >&2
  else
    run "${create[@]}"
  fi
}

# Runs one shell command line on every worker of the slice, in parallel.
on_all_workers() {
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${GCLOUD_SCOPE[@]}" --worker=all \
    "--command=$1"
}

# ---- the code ----
ship_code() {
  if [[ -n "$GIT_URL" ]]; then
    local clone
    clone="git clone -q $(quote "$GIT_URL") ~/simlap"
    on_all_workers "rm -rf ~/simlap && ${clone} && git -C ~/simlap checkout -q $(quote "$REF")"
    return
  fi
  if ((!DRY_RUN)) && ! git -C "$REPO_ROOT" diff-index --quiet HEAD -- 2>/dev/null; then
    echo "tpu_vm.sh: warning: uncommitted changes are not shipped (git archive $REF)" >&2
  fi
  local tarball="${TMPDIR:-/tmp}/${TPU_NAME}-code.tar.gz"
  run git -C "$REPO_ROOT" archive --format=tar.gz "--output=${tarball}" "$REF"
  run gcloud compute tpus tpu-vm scp "$tarball" "${TPU_NAME}:simlap.tar.gz" \
    "${GCLOUD_SCOPE[@]}" --worker=all
  on_all_workers "rm -rf ~/simlap && mkdir -p ~/simlap && tar -xzf ~/simlap.tar.gz -C ~/simlap"
}

# ---- the environment: Python 3.11 venv with simlap[train,tpu] (jax[tpu]) ----
install() {
  # The Ubuntu 22.04 TPU images ship Python 3.10; jax 0.10.2 needs >= 3.11 (deadsnakes PPA).
  local apt="sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3.11 python3.11-venv"
  local ppa="sudo add-apt-repository -y ppa:deadsnakes/ppa && sudo apt-get update -q"
  local py="command -v python3.11 >/dev/null || { ${ppa} && ${apt}; }"
  local venv="python3.11 -m venv ~/simlap-venv && ~/simlap-venv/bin/pip install -q -U pip"
  local pkg="cd ~/simlap && ~/simlap-venv/bin/pip install -q -e '.[train,tpu]'"
  on_all_workers "set -e; ${py}; ${venv}; ${pkg}"
}

# ---- the job: the same command on every worker ----
train() {
  local args=(-m simlap.main "--config=${CONFIG}" "--workdir=${WORKDIR}"
    "--config.dataset.data_dir=${DATA_DIR}" "${PASSTHROUGH[@]}")
  ((!EVALUATE)) || args=(-m simlap.evaluate "--workdir=${WORKDIR}" "${PASSTHROUGH[@]}")
  if ((DRY_RUN)); then
    echo "# signals: the VM's preemption or maintenance notice is SIGTERM; exec makes python the" \
      "process it reaches on every worker"
  fi
  # `~` must reach the remote shell unquoted; the arguments are quoted for it. exec: python
  # replaces the remote shell and receives the VM's SIGTERM itself.
  on_all_workers "cd ~/simlap && exec ~/simlap-venv/bin/python $(quote "${args[@]}")"
}

# Evaluate mode reads its config from WORKDIR/config.json: refuse overrides before any VM exists.
check_evaluate() {
  local arg
  for arg in "${PASSTHROUGH[@]}"; do
    [[ "$arg" != --config.* ]] || die "--evaluate takes no --config.* overrides ('$arg')"
  done
}

main() {
  parse_args "$@"
  ((!EVALUATE)) || check_evaluate
  create_or_reuse
  ship_code
  ((SKIP_INSTALL)) || install
  train
}

main "$@"
