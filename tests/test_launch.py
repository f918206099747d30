"""Tests for launch/: syntax, shellcheck, and the exact commands the launch scripts run.

Every script runs with a PATH whose first entry holds fake `gcloud`, `srun`, `git`, `python`, ...
that append their argv (and a few environment variables) to a JSON-lines log. A dry run must
leave that log empty; a real run against the fakes must call exactly what the dry run printed.
"""
from __future__ import annotations
import json
import os
import pathlib
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
SCRIPTS = ("tpu_vm.sh", "slurm_gpu.sbatch", "local.sh")
FAKE_TOOLS = ("gcloud", "gsutil", "srun", "sbatch", "git", "ssh", "scp", "pip", "python",
              "python3")

# Records the call, then exits with FAKE_RC (gcloud ... describe: FAKE_DESCRIBE_RC). A fake
# `python` given --process_id=$FAKE_FAIL_PROCESS exits 3 after 0.5 s; with FAKE_SLEEP it sleeps.
# With FAKE_ON_TERM=S a SIGTERM is recorded ({"signal": "TERM"}) and ends it with 0 S s later,
# as simlap does after saving.
FAKE_TOOL = """#!{python}
import json, os, signal, sys, time
name = os.path.basename(sys.argv[0])
args = sys.argv[1:]
def on_term(signum, frame):
  with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps(dict(tool=name, argv=args, pid=os.getpid(), signal="TERM")) + "\\n")
  time.sleep(float(os.environ["FAKE_ON_TERM"]))
  sys.exit(0)
if os.environ.get("FAKE_ON_TERM"):
  signal.signal(signal.SIGTERM, on_term)
with open(os.environ["FAKE_LOG"], "a") as f:
  f.write(json.dumps(dict(
      tool=name, argv=args, cwd=os.getcwd(), pid=os.getpid(),
      env={{k: os.environ.get(k) for k in ("XLA_FLAGS", "JAX_PLATFORMS", "TFDS_DATA_DIR")}},
  )) + "\\n")
if name == "gcloud" and "describe" in args:
  sys.exit(int(os.environ.get("FAKE_DESCRIBE_RC", "0")))
fail = os.environ.get("FAKE_FAIL_PROCESS")
if fail is not None and f"--process_id={{fail}}" in args:
  time.sleep(0.5)  # let its peers start first
  sys.exit(3)
time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
sys.exit(int(os.environ.get("FAKE_RC", "0")))
"""


@pytest.fixture
def fakes(tmp_path):
  """A directory of fake tools and the log they write; returns (bin_dir, log_path)."""
  bin_dir = tmp_path / "fakebin"
  bin_dir.mkdir()
  for tool in FAKE_TOOLS:
    path = bin_dir / tool
    path.write_text(FAKE_TOOL.format(python=sys.executable))
    path.chmod(0o755)
  return bin_dir, tmp_path / "calls.jsonl"


def calls(log):
  """The calls the fake tools recorded, in order."""
  if not log.exists():
    return []
  return [json.loads(line) for line in log.read_text().splitlines()]


def launch(script, *args, fakes, env=None, timeout=60):
  """Runs a launch script with bash, fakes first on PATH, in a clean environment.

  Args:
    script: file name under launch/.
    *args: the script's arguments.
    fakes: the `fakes` fixture.
    env: extra environment variables.
    timeout: seconds before the test fails instead of hanging.

  Returns:
    The CompletedProcess (text stdout and stderr).
  """
  bin_dir, log = fakes
  home = log.parent / "home"
  home.mkdir(exist_ok=True)
  clean = {
      "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
      "HOME": str(home),
      "TMPDIR": str(log.parent),
      "LANG": "C.UTF-8",
      "FAKE_LOG": str(log),
  }
  clean.update(env or {})
  return subprocess.run(["bash", str(LAUNCH / script), *args], env=clean, cwd=log.parent,
                        capture_output=True, text=True, timeout=timeout, check=False)


def printed(result):
  """The commands a dry run printed: argv lists from the lines starting with "+ "."""
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert lines, "the dry run printed nothing"
  for line in lines:
    assert line.startswith(("+ ", "# ")), f"unexpected dry-run line: {line!r}"
  return [shlex.split(line[2:]) for line in lines if line.startswith("+ ")]


def simlap_args(argv):
  """The arguments after `-m simlap.main` in a command, checking the interpreter before it."""
  i = argv.index("-m")
  assert argv[i + 1] == "simlap.main", argv
  assert os.path.basename(argv[i - 1]).startswith("python"), argv
  return argv[i + 2:]


# ---------------------------------------------------------------- syntax and lint


@pytest.mark.parametrize("script", SCRIPTS)
def test_bash_syntax(script):
  result = subprocess.run(["bash", "-n", str(LAUNCH / script)], capture_output=True, text=True,
                          check=False)
  assert result.returncode == 0, result.stderr
  assert "set -euo pipefail" in (LAUNCH / script).read_text()


@pytest.mark.parametrize("script", SCRIPTS)
def test_shellcheck(script):
  if shutil.which("shellcheck") is None:
    pytest.skip("shellcheck is not installed")
  result = subprocess.run(["shellcheck", "--shell=bash", str(LAUNCH / script)],
                          capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_runs_nothing(script, fakes):
  result = launch(script, "--help", fakes=fakes)
  assert result.returncode == 0, result.stderr
  assert "Usage:" in result.stdout and "--dry-run" in result.stdout
  assert calls(fakes[1]) == []


@pytest.mark.parametrize("script", SCRIPTS)
def test_unknown_argument_fails(script, fakes):
  result = launch(script, "--bogus", "--dry-run", fakes=fakes,
                  env={"ZONE": "z", "BUCKET": "b"})
  assert result.returncode != 0
  assert "unknown argument '--bogus'" in result.stderr
  assert result.stdout == ""
  assert calls(fakes[1]) == []


def test_fakes_record_calls(fakes):
  """The harness itself can fail: a fake that is called leaves a record."""
  bin_dir, log = fakes
  subprocess.run([str(bin_dir / "gcloud"), "compute", "tpus", "list"], check=True,
                 env={**os.environ, "FAKE_LOG": str(log)})
  assert [c["argv"] for c in calls(log)] == [["compute", "tpus", "list"]]


# ---------------------------------------------------------------- tpu_vm.sh

TPU_ARGS = ("--project", "my-proj", "--zone", "us-central2-b", "--accelerator-type", "v4-64",
            "--bucket", "gs://my-bucket/", "--config.batch_size=4096")
ODD_OVERRIDE = "--config.model.name=it's a b"


def test_tpu_dry_run(fakes):
  result = launch("tpu_vm.sh", *TPU_ARGS, "--dry-run", "--", ODD_OVERRIDE, fakes=fakes)
  cmds = printed(result)
  assert calls(fakes[1]) == [], "the dry run executed something"
  scope = ["--zone=us-central2-b", "--project=my-proj"]

  describe, create, archive, scp, unpack, install, train = cmds
  assert describe == ["gcloud", "compute", "tpus", "tpu-vm", "describe", "simlap-v4-64", *scope]
  assert create == ["gcloud", "compute", "tpus", "tpu-vm", "create", "simlap-v4-64", *scope,
                    "--accelerator-type=v4-64", "--version=tpu-ubuntu2204-base"]
  assert archive[:4] == ["git", "-C", str(REPO), "archive"] and archive[-1] == "HEAD"
  tarball = archive[-2].removeprefix("--output=")
  assert scp == ["gcloud", "compute", "tpus", "tpu-vm", "scp", tarball,
                 "simlap-v4-64:simlap.tar.gz", *scope, "--worker=all"]
  for cmd in (unpack, install, train):
    assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "simlap-v4-64"]
    assert "--worker=all" in cmd and "--zone=us-central2-b" in cmd
    assert cmd[-1].startswith("--command=")
  assert "tar -xzf ~/simlap.tar.gz -C ~/simlap" in unpack[-1]

  # The TPU wheel, installed on every worker.
  remote_install = install[-1].removeprefix("--command=")
  assert "pip install -q -e '.[train,tpu]'" in remote_install
  assert "python3.11 -m venv ~/simlap-venv" in remote_install

  # The job: the same entrypoint on every worker, GCS workdir and TFDS data dir.
  remote = shlex.split(train[-1].removeprefix("--command="))
  assert remote[:3] == ["cd", "~/simlap", "&&"]
  # exec: python replaces the remote shell, so the VM's SIGTERM reaches it.
  assert remote[3:5] == ["exec", "~/simlap-venv/bin/python"]
  assert "# signals: the VM's preemption or maintenance notice is SIGTERM" in result.stdout
  assert simlap_args(remote) == [
      "--config=configs/in1k.py",
      "--workdir=gs://my-bucket/simlap/simlap-v4-64/in1k",
      "--config.dataset.data_dir=gs://my-bucket/tensorflow_datasets",
      "--config.batch_size=4096",
      ODD_OVERRIDE,
  ]


def test_tpu_options_from_environment(fakes):
  env = {"ZONE": "europe-west4-a", "BUCKET": "b2", "TPU_NAME": "pod1",
         "ACCELERATOR_TYPE": "v5litepod-16", "SIMLAP_CONFIG": "configs/in1k.py:smoke",
         "TFDS_DATA_DIR": "gs://data/tfds"}
  cmds = printed(launch("tpu_vm.sh", "--dry-run", "--spot", "--skip-install", fakes=fakes,
                        env=env))
  assert calls(fakes[1]) == []
  create = cmds[1]
  assert create[4:6] == ["create", "pod1"]
  assert "--version=v2-alpha-tpuv5-lite" in create and "--spot" in create
  assert not any(a.startswith("--project") for c in cmds for a in c)  # gcloud's default
  assert not any("pip install" in c[-1] for c in cmds)  # --skip-install
  remote = shlex.split(cmds[-1][-1].removeprefix("--command="))
  assert simlap_args(remote) == [
      "--config=configs/in1k.py:smoke",
      "--workdir=gs://b2/simlap/pod1/in1k-smoke",
      "--config.dataset.data_dir=gs://data/tfds",
  ]


def test_tpu_git_clone_mode(fakes):
  cmds = printed(launch("tpu_vm.sh", *TPU_ARGS, "--repo", "https://example.com/simlap.git",
                        "--ref", "v1.0", "--dry-run", fakes=fakes))
  assert not any(c[0] == "git" or "scp" in c for c in cmds)
  clone = cmds[2][-1].removeprefix("--command=")
  assert "--worker=all" in cmds[2]
  assert "git clone -q https://example.com/simlap.git ~/simlap" in clone
  assert "git -C ~/simlap checkout -q v1.0" in clone


@pytest.mark.parametrize("missing", ["--zone", "--bucket"])
def test_tpu_requires_zone_and_bucket(fakes, missing):
  args = ["--zone", "z", "--bucket", "b"]
  i = args.index(missing)
  del args[i:i + 2]
  result = launch("tpu_vm.sh", *args, "--dry-run", fakes=fakes)
  assert result.returncode != 0 and f"{missing} (or" in result.stderr
  assert calls(fakes[1]) == []


@pytest.mark.parametrize("exists", [False, True])
def test_tpu_real_run_calls_what_dry_run_prints(fakes, exists):
  """Against the fakes, a real run calls exactly the printed commands (create only if new)."""
  dry = printed(launch("tpu_vm.sh", *TPU_ARGS, "--dry-run", "--", ODD_OVERRIDE, fakes=fakes))
  env = {"FAKE_DESCRIBE_RC": "0" if exists else "1"}
  result = launch("tpu_vm.sh", *TPU_ARGS, "--", ODD_OVERRIDE, fakes=fakes, env=env)
  assert result.returncode == 0, result.stderr
  made = [[c["tool"], *c["argv"]] for c in calls(fakes[1]) if "diff-index" not in c["argv"]]
  expected = dry if not exists else [c for c in dry if "create" not in c]
  assert made == expected


def test_tpu_stops_at_first_failure(fakes):
  """set -e: when shipping the code fails, nothing is installed or started."""
  result = launch("tpu_vm.sh", *TPU_ARGS, fakes=fakes, env={"FAKE_RC": "1"})
  assert result.returncode != 0
  made = [c for c in calls(fakes[1]) if "diff-index" not in c["argv"]]
  assert [(c["tool"], c["argv"][3] if c["tool"] == "gcloud" else c["argv"][2]) for c in made] == [
      ("gcloud", "describe"), ("git", "archive")]


# ---------------------------------------------------------------- slurm_gpu.sbatch

SLURM_JOB = {  # what sbatch and srun put in a 3-node job of 4 GPUs each
    "SLURM_JOB_ID": "4242", "SLURM_JOB_NUM_NODES": "3", "SLURM_GPUS_PER_NODE": "a100:4",
    "SLURM_NTASKS_PER_NODE": "4", "SLURM_CPUS_PER_TASK": "6", "SLURM_SUBMIT_DIR": str(REPO),
}


def srun_command(cmds):
  """The one srun command of a dry run, after `cd REPO` and the TFDS_DATA_DIR export; the
  script execs it (signals sent to the batch shell reach srun, which forwards them)."""
  assert [c[0] for c in cmds] == ["cd", "export", "exec"], cmds
  assert cmds[0] == ["cd", str(REPO)] and cmds[2][1] == "srun"
  return cmds[2][1:]


def test_slurm_dry_run_outside_slurm(fakes):
  env = {"NODES": "4", "GPUS_PER_NODE": "8", "TFDS_DATA_DIR": "/shared/tfds"}
  cmds = printed(launch("slurm_gpu.sbatch", "--dry-run", "--config.batch_size=4096", "--",
                        ODD_OVERRIDE, fakes=fakes, env=env))
  assert calls(fakes[1]) == []
  srun = srun_command(cmds)
  assert cmds[1] == ["export", "TFDS_DATA_DIR=/shared/tfds"]
  i = srun.index("-m") - 1
  assert srun[:i] == ["srun", "--nodes=4", "--ntasks-per-node=8", "--kill-on-bad-exit=1"]
  assert not any(a.startswith(("--gpus-per-task", "--gpu-bind")) for a in srun)
  assert srun[i] == str(REPO / ".venv/bin/python")
  assert simlap_args(srun) == [
      "--config=configs/in1k.py",
      f"--workdir={REPO}/workdirs/in1k",
      "--config.dataset.data_dir=/shared/tfds",
      "--config.batch_size=4096",
      ODD_OVERRIDE,
  ]


def test_slurm_defaults_without_environment(fakes):
  srun = srun_command(printed(launch("slurm_gpu.sbatch", "--dry-run", fakes=fakes)))
  assert srun[1:3] == ["--nodes=2", "--ntasks-per-node=8"]


def test_slurm_sizes_from_slurm_variables(fakes):
  env = {**SLURM_JOB, "NODES": "99", "GPUS_PER_NODE": "99"}  # the allocation wins
  srun = srun_command(printed(launch("slurm_gpu.sbatch", "--dry-run", "--workdir", "/w/run1",
                                     fakes=fakes, env=env)))
  assert srun[1:5] == ["--nodes=3", "--ntasks-per-node=4", "--kill-on-bad-exit=1",
                       "--cpus-per-task=6"]
  assert "--workdir=/w/run1" in srun
  assert not any(a.startswith("--local_device_ids") for a in srun)


def test_slurm_one_task_per_node(fakes):
  srun = srun_command(printed(launch("slurm_gpu.sbatch", "--dry-run", "--one-task-per-node",
                                     fakes=fakes, env=SLURM_JOB)))
  assert srun[1:4] == ["--nodes=3", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
  assert "--cpus-per-task=24" in srun
  assert "--local_device_ids=0,1,2,3" in simlap_args(srun)


def test_slurm_rejects_fewer_tasks_than_gpus(fakes):
  result = launch("slurm_gpu.sbatch", "--dry-run", fakes=fakes,
                  env={**SLURM_JOB, "SLURM_NTASKS_PER_NODE": "1"})
  assert result.returncode != 0 and "--ntasks-per-node=4" in result.stderr
  assert calls(fakes[1]) == []


def test_slurm_signals_every_task_before_the_time_limit(fakes):
  header = (LAUNCH / "slurm_gpu.sbatch").read_text().split("set -euo pipefail")[0]
  assert "\n#SBATCH --signal=TERM@120\n" in header  # all job steps' tasks, not the batch shell
  result = launch("slurm_gpu.sbatch", "--dry-run", fakes=fakes)
  printed(result)
  assert ("# signals: #SBATCH --signal=TERM@120: SIGTERM to every task 120 s before the time "
          "limit") in result.stdout


def test_slurm_sigterm_to_the_batch_shell_reaches_srun(fakes):
  """srun replaces the batch shell (exec): a SIGTERM sent to the shell reaches srun, which
  forwards it to every task; the job step's exit status is the script's."""
  proc = start_script("slurm_gpu.sbatch", fakes=fakes, env={**SLURM_JOB, "FAKE_SLEEP": "60",
                                                            "FAKE_ON_TERM": "0"})
  (call,) = wait_for_calls(fakes[1], 1, proc)
  assert call["tool"] == "srun" and call["pid"] == proc.pid
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=30) == 0
  assert [(c["tool"], c["signal"]) for c in calls(fakes[1]) if "signal" in c] == [("srun", "TERM")]


def test_slurm_real_run_calls_srun(fakes):
  env = {**SLURM_JOB, "TFDS_DATA_DIR": "/shared/tfds"}
  dry = printed(launch("slurm_gpu.sbatch", "--dry-run", "--", ODD_OVERRIDE, fakes=fakes,
                       env=env))
  result = launch("slurm_gpu.sbatch", "--", ODD_OVERRIDE, fakes=fakes, env=env)
  assert result.returncode == 0, result.stderr
  (call,) = calls(fakes[1])
  assert [call["tool"], *call["argv"]] == srun_command(dry)
  assert call["cwd"] == str(REPO)
  assert call["env"]["TFDS_DATA_DIR"] == "/shared/tfds"


# ---------------------------------------------------------------- local.sh


def test_local_dry_run_devices(fakes):
  user_flags = "--xla_cpu_foo=1 --xla_force_host_platform_device_count=2"
  cmds = printed(launch("local.sh", "--devices", "8", "--dry-run", "--config.batch_size=512",
                        "--", ODD_OVERRIDE, fakes=fakes, env={"XLA_FLAGS": user_flags}))
  assert calls(fakes[1]) == []
  assert cmds[0] == ["cd", str(REPO)]
  (cmd,) = cmds[1:]
  assert cmd[:4] == ["exec", "env",
                     "XLA_FLAGS=--xla_cpu_foo=1 --xla_force_host_platform_device_count=8",
                     "JAX_PLATFORMS=cpu"]
  assert cmd[4] == str(REPO / ".venv/bin/python")
  assert simlap_args(cmd) == [
      "--config=configs/default.py",
      f"--workdir={REPO}/workdirs/default",
      "--config.batch_size=512",
      ODD_OVERRIDE,
  ]


def test_local_dry_run_real_devices(fakes):
  cmds = printed(launch("local.sh", "--dry-run", "--config", "configs/in1k.py:smoke",
                        "--data-dir", "/data/tfds", fakes=fakes))
  (cmd,) = cmds[1:]
  assert cmd[:2] == ["exec", str(REPO / ".venv/bin/python")]  # no simulated devices
  assert simlap_args(cmd) == [
      "--config=configs/in1k.py:smoke",
      f"--workdir={REPO}/workdirs/in1k-smoke",
      "--config.dataset.data_dir=/data/tfds",
  ]


def test_local_real_run(fakes):
  python = str(fakes[0] / "python")
  args = ("--devices", "4", "--workdir", "/tmp/w", "--python", python, "--config.seed=3")
  dry = printed(launch("local.sh", "--dry-run", *args, fakes=fakes))
  result = launch("local.sh", *args, fakes=fakes)
  assert result.returncode == 0, result.stderr
  (call,) = calls(fakes[1])
  assert call["cwd"] == str(REPO)
  assert call["env"]["XLA_FLAGS"] == "--xla_force_host_platform_device_count=4"
  assert call["env"]["JAX_PLATFORMS"] == "cpu"
  assert [python, *call["argv"]] == dry[1][4:]  # after `exec env XLA_FLAGS=.. JAX_PLATFORMS=cpu`


def test_local_processes_dry_run(fakes):
  result = launch("local.sh", "--devices", "4", "--processes", "2", "--port", "23456",
                  "--dry-run", "--config.num_steps=5", fakes=fakes)
  assert calls(fakes[1]) == []
  cmds = printed(result)
  assert result.stdout.splitlines()[-1] == "+ wait"
  assert "# signals: SIGTERM or SIGINT to local.sh is forwarded to every process" in result.stdout
  procs = cmds[1:3]
  for i, cmd in enumerate(procs):
    assert cmd[-1] == "&"
    assert "XLA_FLAGS=--xla_force_host_platform_device_count=4" in cmd
    assert simlap_args(cmd[:-1])[2:] == [
        "--coordinator_address=localhost:23456", "--num_processes=2", f"--process_id={i}",
        "--config.num_steps=5"]


def test_local_processes_need_devices(fakes):
  result = launch("local.sh", "--processes", "2", "--dry-run", fakes=fakes)
  assert result.returncode != 0 and "needs --devices" in result.stderr


def test_local_processes_dead_peer_stops_the_rest(fakes):
  """If one process dies, local.sh stops the others and fails instead of hanging."""
  python = str(fakes[0] / "python")
  start = time.monotonic()
  result = launch("local.sh", "--devices", "2", "--processes", "3", "--python", python,
                  fakes=fakes, env={"FAKE_FAIL_PROCESS": "1", "FAKE_SLEEP": "60"}, timeout=30)
  assert time.monotonic() - start < 20
  assert result.returncode == 3, result.stderr
  started = calls(fakes[1])
  assert "--process_id=1" in {c["argv"][-1] for c in started}
  for call in started:  # every process it started is gone
    with pytest.raises(ProcessLookupError):
      os.kill(call["pid"], 0)


def test_local_sigterm_reaches_the_one_process(fakes):
  """One process replaces the script (exec): a SIGTERM to local.sh reaches python itself."""
  python = str(fakes[0] / "python")
  proc = start_script("local.sh", "--python", python, fakes=fakes,
                      env={"FAKE_SLEEP": "60", "FAKE_ON_TERM": "0"})
  (call,) = wait_for_calls(fakes[1], 1, proc)
  assert call["pid"] == proc.pid
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=30) == 0
  assert [c["signal"] for c in calls(fakes[1]) if "signal" in c] == ["TERM"]


def test_local_processes_get_sigterm_and_are_waited_for(fakes):
  """SIGTERM to local.sh goes to every process; the script waits while they save (here 1 s)
  and exits 0 with them, instead of returning while they still run."""
  python = str(fakes[0] / "python")
  proc = start_script("local.sh", "--devices", "2", "--processes", "3", "--python", python,
                      fakes=fakes, env={"FAKE_SLEEP": "60", "FAKE_ON_TERM": "1"})
  started = wait_for_calls(fakes[1], 3, proc)
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=30) == 0, proc.stderr.read()
  got = sorted(c["argv"][-1] for c in calls(fakes[1]) if "signal" in c)
  assert got == [f"--process_id={i}" for i in range(3)]
  for call in started:  # all ended before the script did
    with pytest.raises(ProcessLookupError):
      os.kill(call["pid"], 0)


def start_script(script, *args, fakes, env):
  """Starts a launch script like `launch`, in the background (stderr piped, stdout dropped)."""
  bin_dir, log = fakes
  home = log.parent / "home"
  home.mkdir(exist_ok=True)
  clean = {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
           "HOME": str(home), "TMPDIR": str(log.parent), "LANG": "C.UTF-8",
           "FAKE_LOG": str(log), **env}
  return subprocess.Popen(["bash", str(LAUNCH / script), *args], env=clean, cwd=log.parent,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for_calls(log, n, proc, timeout=30):
  """The first `n` calls, once the fakes recorded them (each installs its SIGTERM handler
  before it records the call)."""
  deadline = time.monotonic() + timeout
  while len(calls(log)) < n:
    if proc.poll() is not None or time.monotonic() > deadline:
      proc.kill()
      pytest.fail(f"{len(calls(log))} of {n} calls (exit {proc.poll()})")
    time.sleep(0.05)
  return calls(log)[:n]


def test_local_evaluate_mode_dry_run(fakes):
  # Evaluate mode: simlap.evaluate on the workdir, as P processes with the same start-up flags.
  result = launch("local.sh", "--evaluate", "--workdir", "/w/run", "--devices", "4",
                  "--processes", "2", "--port", "23456", "--dry-run", "--", "--step=8",
                  fakes=fakes)
  cmds = [c for c in printed(result) if "-m" in c]
  assert calls(fakes[1]) == [], "the dry run executed something"
  assert len(cmds) == 2
  for i, cmd in enumerate(cmds):
    j = cmd.index("-m")
    assert cmd[j + 1] == "simlap.evaluate", cmd
    assert cmd[j + 2:] == ["--workdir=/w/run", "--coordinator_address=localhost:23456",
                           "--num_processes=2", f"--process_id={i}", "--step=8", "&"], cmd
  bad = launch("local.sh", "--evaluate", "--dry-run", "--config.batch_size=8", fakes=fakes)
  assert bad.returncode == 2 and "--config.* overrides" in bad.stderr


def test_tpu_and_slurm_evaluate_mode_dry_run(fakes):
  tpu_args = [a for a in TPU_ARGS if not a.startswith("--config.")]
  tpu = printed(launch("tpu_vm.sh", *tpu_args, "--evaluate", "--dry-run", "--", "--step=8",
                       fakes=fakes))
  remote = tpu[-1][-1]
  assert "exec ~/simlap-venv/bin/python -m simlap.evaluate --workdir=" in remote, remote
  assert remote.endswith("--step=8") and "simlap.main" not in remote
  srun = srun_command(printed(launch("slurm_gpu.sbatch", "--dry-run", "--evaluate",
                                     "--workdir", "/w/run1", fakes=fakes)))
  i = srun.index("-m")
  assert srun[i + 1:i + 3] == ["simlap.evaluate", "--workdir=/w/run1"], srun
  assert calls(fakes[1]) == [], "the dry run executed something"
  for script, args in (("tpu_vm.sh", tpu_args), ("slurm_gpu.sbatch", ())):
    bad = launch(script, *args, "--evaluate", "--dry-run", "--config.batch_size=8", fakes=fakes)
    assert bad.returncode == 2 and "--config.* overrides" in bad.stderr, (script, bad.stderr)
