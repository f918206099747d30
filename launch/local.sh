#!/usr/bin/env bash
# Runs simlap on this machine with the repository's .venv: all local accelerators, or N simulated
# CPU devices (--devices N), optionally split over P local processes (--processes P) to exercise
# the multi-host code path (jax.distributed over localhost, gloo collectives on CPU).
# Run with --help for the options; --dry-run prints the commands only.
#
# Signals: one process replaces this shell (exec), so a SIGTERM sent to the script reaches
# python itself; with --processes the script forwards SIGTERM and SIGINT to every process and
# keeps waiting while they save one agreed step and exit 0 (simlap/runtime/preemption.py).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() {
  cat <<'EOF'
Usage: launch/local.sh [options] [--config.KEY=VALUE ...] [-- ARGS...]

Runs  .venv/bin/python -m simlap.main --config=CONFIG --workdir=WORKDIR  in the repository root
(exec: a SIGTERM to this script reaches python; with --processes it is forwarded to every
process). On SIGTERM the job saves one step, agreed by all processes, and exits 0.

Options (environment variable in brackets):
  --config PATH[:ARG]  config file [SIMLAP_CONFIG], default configs/default.py
  --workdir DIR        run dir [WORKDIR], default workdirs/<config name> (a rerun resumes)
  --data-dir DIR       TFDS data dir, passed as --config.dataset.data_dir [TFDS_DATA_DIR]
  --devices N          simulate N CPU devices: XLA_FLAGS=--xla_force_host_platform_device_count=N
                       and JAX_PLATFORMS=cpu (default: use the machine's real devices)
  --processes P        run P processes on localhost, each with N simulated devices (needs
                       --devices): --coordinator_address=localhost:PORT --num_processes=P
                       --process_id=i; the mesh spans P*N devices
  --port PORT          coordinator port for --processes [SIMLAP_COORDINATOR_PORT], default 12355
  --python PATH        interpreter [PYTHON], default .venv/bin/python (bash scripts/setup.sh)
  --evaluate           run  python -m simlap.evaluate --workdir=WORKDIR  instead of training
                       (the workdir's config.json is the config; --processes P evaluates
                       as P processes, each reading its slice; only process 0 writes)
  --dry-run            print the commands (prefixed "+ ") and run nothing
  -h, --help           this text
  --config.KEY=VALUE   passed through to simlap.main (any number)
  -- ARGS...           everything after -- is passed through to simlap.main

Examples:
  launch/local.sh                                   # the embedded Fashion-MNIST job
  launch/local.sh --devices 8 --config.batch_size=512
  launch/local.sh --devices 4 --processes 2 --config.num_steps=20
  launch/local.sh --evaluate --workdir workdirs/default --devices 4 --processes 2
EOF
}

die() {
  echo "local.sh: error: $*" >&2
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

# Like run, but the command replaces this shell (exec): signals sent to the shell reach it.
run_exec() {
  if ((DRY_RUN)); then
    printf '+ exec %s\n' "$(quote "$@")"
  else
    printf '+ exec %s\n' "$(quote "$@")" >&2
    exec "$@"
  fi
}

# Like run, in the background; the pid goes to PIDS.
run_bg() {
  if ((DRY_RUN)); then
    printf '+ %s &\n' "$(quote "$@")"
  else
    printf '+ %s &\n' "$(quote "$@")" >&2
    "$@" &
    PIDS+=("$!")
  fi
}

# A name for the default workdir: configs/in1k.py:smoke -> in1k-smoke.
config_stem() {
  local path="${1%%:*}" arg=""
  [[ "$1" == *:* ]] && arg="-${1#*:}"
  path="$(basename "$path" .py)"
  printf '%s' "${path}${arg//[^A-Za-z0-9_.-]/_}"
}

parse_args() {
  CONFIG="${SIMLAP_CONFIG:-configs/default.py}"
  WORKDIR="${WORKDIR:-}"
  DATA_DIR="${TFDS_DATA_DIR:-}"
  DEVICES=""
  PROCESSES=1
  PORT="${SIMLAP_COORDINATOR_PORT:-12355}"
  PYTHON_BIN="${PYTHON:-$REPO_ROOT/.venv/bin/python}"
  DRY_RUN=0
  EVALUATE=0
  PASSTHROUGH=()
  while (($#)); do
    case "$1" in
      --config | --workdir | --data-dir | --devices | --processes | --port | --python)
        (($# >= 2)) || die "$1 needs a value"
        set -- "$1=$2" "${@:3}"
        continue
        ;;
      --config=*) CONFIG="${1#*=}" ;;
      --workdir=*) WORKDIR="${1#*=}" ;;
      --data-dir=*) DATA_DIR="${1#*=}" ;;
      --devices=*) DEVICES="${1#*=}" ;;
      --processes=*) PROCESSES="${1#*=}" ;;
      --port=*) PORT="${1#*=}" ;;
      --python=*) PYTHON_BIN="${1#*=}" ;;
      --dry-run) DRY_RUN=1 ;;
      --evaluate) EVALUATE=1 ;;
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
  [[ -z "$DEVICES" || "$DEVICES" =~ ^[1-9][0-9]*$ ]] || die "--devices needs a positive integer"
  [[ "$PROCESSES" =~ ^[1-9][0-9]*$ ]] || die "--processes needs a positive integer"
  [[ "$PORT" =~ ^[0-9]+$ ]] || die "--port needs a number"
  ((PROCESSES == 1)) || [[ -n "$DEVICES" ]] ||
    die "--processes simulates hosts on CPU and needs --devices N (devices per process)"
  # wait -n -p (wait_all) came with bash 5.1.
  ((PROCESSES == 1 || BASH_VERSINFO[0] * 100 + BASH_VERSINFO[1] >= 501)) ||
    die "--processes needs bash >= 5.1, this is ${BASH_VERSION}"
  if ((EVALUATE)); then
    [[ -z "$DATA_DIR" ]] || die "--evaluate reads the data dir from the workdir's config.json"
    local arg
    for arg in "${PASSTHROUGH[@]}"; do
      [[ "$arg" != --config.* ]] || die "--evaluate takes no --config.* overrides ('$arg')"
    done
  fi
  [[ -n "$WORKDIR" ]] || WORKDIR="$REPO_ROOT/workdirs/$(config_stem "$CONFIG")"
  if ((!DRY_RUN)) && [[ ! -x "$PYTHON_BIN" ]]; then
    die "no interpreter at '$PYTHON_BIN': run 'bash scripts/setup.sh' first (or pass --python)"
  fi
}

# The environment prefix (`env VAR=... `) for simulated CPU devices; empty otherwise.
device_env() {
  ENV_PREFIX=()
  [[ -n "$DEVICES" ]] || return 0
  # Drop a device count already in XLA_FLAGS, keep any other flags the user set.
  local flags=() words=() word
  read -r -a words <<<"${XLA_FLAGS:-}"
  for word in "${words[@]}"; do
    [[ "$word" == --xla_force_host_platform_device_count=* ]] || flags+=("$word")
  done
  flags+=("--xla_force_host_platform_device_count=${DEVICES}")
  ENV_PREFIX=(env "XLA_FLAGS=${flags[*]}" JAX_PLATFORMS=cpu)
}

# Sends SIGTERM to every process that is still running (the trap on SIGTERM and SIGINT).
forward_stop() {
  echo "local.sh: forwarding the stop signal to every process" >&2
  kill -TERM "${PIDS[@]}" 2>/dev/null || true
}

# Waits for every background process; if one fails, stops the others so nothing hangs waiting
# for a peer that is gone, and returns that failure. A signal the trap forwarded interrupts
# `wait` without any process having ended: it keeps waiting for them to save and exit.
wait_all() {
  local status=0 rc done_pid left="${#PIDS[@]}"
  while ((left > 0)); do
    rc=0
    wait -n -p done_pid || rc=$?
    if [[ -z "${done_pid:-}" ]]; then
      ((rc > 128)) || break # 127: no process left to wait for
      continue
    fi
    if ((rc != 0 && status == 0)); then
      status="$rc"
      echo "local.sh: a process exited with status $rc; stopping the others" >&2
      kill "${PIDS[@]}" 2>/dev/null || true
    fi
    left=$((left - 1))
  done
  return "$status"
}

main() {
  parse_args "$@"
  device_env
  local cmd=("${ENV_PREFIX[@]}" "$PYTHON_BIN" -m simlap.main "--config=${CONFIG}"
    "--workdir=${WORKDIR}")
  [[ -z "$DATA_DIR" ]] || cmd+=("--config.dataset.data_dir=${DATA_DIR}")
  ((!EVALUATE)) || cmd=("${ENV_PREFIX[@]}" "$PYTHON_BIN" -m simlap.evaluate "--workdir=${WORKDIR}")
  run cd "$REPO_ROOT"
  if ((PROCESSES == 1)); then
    ((!DRY_RUN)) || echo "# signals: exec: a SIGTERM to local.sh reaches python itself"
    run_exec "${cmd[@]}" "${PASSTHROUGH[@]}"
    return # dry run
  fi
  PIDS=()
  ((!DRY_RUN)) || echo "# signals: SIGTERM or SIGINT to local.sh is forwarded to every process"
  trap forward_stop INT TERM
  local i
  for ((i = 0; i < PROCESSES; i++)); do
    run_bg "${cmd[@]}" "--coordinator_address=localhost:${PORT}" \
      "--num_processes=${PROCESSES}" "--process_id=${i}" "${PASSTHROUGH[@]}"
  done
  if ((DRY_RUN)); then
    printf '+ wait\n'
  else
    wait_all
  fi
}

main "$@"
