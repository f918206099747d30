"""SimLAP training: `train_and_evaluate(config, workdir)`, read top to bottom in phases.

mesh -> data -> model and shapes (`jax.eval_shape`) -> sharded init -> jitted, donated train
step (training/step.py) -> checkpoint restore -> loop with periodic logging, evaluation,
checkpointing and a clean stop (runtime/preemption.py). One `jax.jit` over global arrays on a
mesh; the layout is runtime/sharding.py's. Every key is `fold_in(key(seed), step)` and the data
stream is a pure function of (seed, step), so a resumed run equals an uninterrupted one.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import logging
import os
from collections.abc import Iterator
from typing import Any

import jax
import ml_collections
from clu import periodic_actions

from simlap.runtime import checkpointing
from simlap import config_schema
from simlap.evaluation import online as eval_online
from simlap.training import init_from
from simlap.runtime import metrics_io
from simlap import objectives
from simlap.training import optim
from simlap.runtime import preemption
from simlap.runtime import sharding
from simlap.training import state as state_lib
from simlap.training import step as step_lib
from simlap.runtime import workdir as workdir_lib
from simlap.data import datasets
from simlap.data import train_stream
from simlap.evaluation import progress as eval_progress

# ------------------------------------------------------------------------------------------------
# The run.
# ------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _finish_writes_on_error(ckpt: checkpointing.Checkpointer, writer) -> Iterator[None]:
  """On an error in the loop (NaN, bad data), finishes pending checkpoint writes and flushes
  the metrics before the error propagates: the last good checkpoint must be complete on disk,
  not a half-written directory that the exiting process abandons."""
  try:
    yield
  except BaseException:
    ckpt.wait()
    try:
      writer.close()
    except Exception:  # pylint: disable=broad-except - the loop's error is the one to report
      logging.warning("could not finish writing the metrics", exc_info=True)
    raise


@dataclasses.dataclass(frozen=True)
class Trainer:
  """What a run builds once: the model, the jitted step and the state's layout on the mesh."""
  model: Any
  step_fn: Any  # (state, batch) -> (state, metrics), jitted, state donated
  init_fn: Any  # () -> TrainState
  state_sharding: Any
  abstract_state: Any  # ShapeDtypeStructs with shardings, for restoring
  num_steps: int


def make_trainer(config: ml_collections.ConfigDict, mesh, info: datasets.DatasetInfo
                 ) -> Trainer:
  """Builds the model and compiles nothing yet; shapes come from `jax.eval_shape`."""
  # The mesh's devices, not JAX's default backend, say what the step is compiled for: a TPU
  # compile from a CPU host (simlap.aot) gets the TPU's ops.
  objective = objectives.get(config.objective)
  model, tx, schedule = state_lib.build(config, info, objective, mesh.devices.flat[0].platform)
  init_fn = functools.partial(state_lib.init_state, config, model, tx, objective)
  # The batch is split over devices; the state is replicated, or split too under FSDP.
  abstract, state_sharding = state_lib.abstract_state(config, model, tx, objective, mesh)
  fsdp = state_sharding if config.sharding.params == "fsdp" else None
  num_steps = optim.total_steps(config, info.num_train)
  step_fn = jax.jit(
      functools.partial(step_lib.train_step, config=config, model=model, tx=tx,
                        schedule=schedule, fsdp=fsdp,
                        constants=objective.step_constants(config, num_steps, info.num_train)),
      in_shardings=(state_sharding, sharding.batch_sharding(mesh)),
      out_shardings=(state_sharding, sharding.replicated(mesh)),
      donate_argnums=0)
  return Trainer(model=model, step_fn=step_fn,
                 init_fn=jax.jit(init_fn, out_shardings=state_sharding),
                 state_sharding=state_sharding, abstract_state=abstract, num_steps=num_steps)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       stop_at: int | None = None) -> dict[str, Any]:
  """Trains `config`, resuming from `workdir` if it holds checkpoints; returns a summary.

  `stop_at` ends this job after that step with a checkpoint, as a preemption would, without
  changing the schedule (time-boxed jobs; resume tests).
  """
  config_schema.validate(config)
  workdir = workdir_lib.prepare(workdir)
  workdir_lib.check_resumable(config, workdir)  # before anything is built or restored

  # ---- mesh and data: every process reads only its slice; batches are global arrays ----
  mesh = sharding.make_mesh(config.mesh)
  sharding.check_batch_divisible(config.batch_size, mesh)
  info = datasets.get_dataset_info(config)

  # ---- model, shapes, sharded init and the jitted, donated step ----
  trainer = make_trainer(config, mesh, info)
  model, step_fn, num_steps = trainer.model, trainer.step_fn, trainer.num_steps

  # ---- restore, or start fresh ----
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"),
                                    every_steps=config.checkpoint_every,
                                    keep=config.keep_checkpoints,
                                    keep_steps=config.keep_checkpoint_steps)
  logging.info("config: %s on %s (%d train images, %d classes), %s, batch %d, %d steps, %s "
               "lr %g; workdir %s", config.method, config.dataset.name, info.num_train,
               info.num_classes, config.model.backbone, config.batch_size, num_steps,
               config.optimizer.name, optim.peak_learning_rate(config), workdir)
  restored = ckpt.restore(trainer.abstract_state)
  if restored is None:
    state = init_from.maybe_load(config, trainer.init_fn())  # config.init_from's weights
    logging.info("starting from scratch: %d steps", num_steps)
  else:
    state, _, step = restored
    logging.info("resumed from the checkpoint at step %d of %d", step, num_steps)
  start_step = int(jax.device_get(state.step))
  if jax.process_index() == 0:
    workdir_lib.write_config(config, workdir)

  writer = metrics_io.create_writer(workdir, start_step)  # heals metrics.jsonl to start_step
  if start_step == 0:
    writer.write_hparams({k: v for k, v in config.to_dict().items()
                          if isinstance(v, (int, float, str, bool))})
  report = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer)
  meta = {"seed": config.seed, "num_steps": num_steps, "objective": config.objective}
  eval_results: dict[str, float] = {}

  def run_eval(step, should_stop=None) -> bool:
    """Evaluates; False if `should_stop` (a preemption notice) ended it between blocks."""
    nonlocal eval_results
    logging.info("step %d: evaluating", step)
    try:
      eval_results = eval_online.evaluate_online(config, model, state, mesh, info.num_classes,
                                                 should_stop=should_stop)
    except eval_progress.Interrupted as e:
      logging.warning("step %d: evaluation stopped by a preemption notice (%s); step %d is "
                      "saved", step, e, step)
      return False
    writer.write_scalars(step, eval_results)
    logging.info("step %d: %s", step, ", ".join(f"{k.removeprefix('eval/')} {v:.4f}"
                                                 for k, v in eval_results.items()))
    return True

  def save(step, force):
    if force or ckpt.should_save(step):  # the NaN check costs a host sync: save steps only
      step_lib.raise_if_nonfinite(state)  # no checkpoint after a NaN, ever
      writer.sync()  # rows up to `step` stored before its checkpoint (never recomputed)
      ckpt.save(step, state, {**meta, "step": step}, force=force)

  # ---- the loop: no host transfer except on log, eval and checkpoint steps ----
  batches = train_stream.train_iterator(config, mesh, seed=config.seed, start_step=start_step)
  step = start_step
  preempted = False
  in_flight = collections.deque()
  with preemption.StopRule(stop_at=stop_at) as stop_rule, _finish_writes_on_error(ckpt, writer):
    while step < num_steps:
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        state, metrics = step_fn(state, next(batches))
      step += 1
      ckpt.check_saves()  # a failed asynchronous save stops the run now (SaveFailedError)
      # Let dispatch run at most 2 steps ahead of the devices: enough to keep them busy, while
      # steps/s stays honest and SIGTERM stops within a few steps (not a queue of hundreds).
      in_flight.append(metrics["loss"])
      if len(in_flight) > 2:
        in_flight.popleft().block_until_ready()
      report(step)
      log_step = step % config.log_every == 0 or step == num_steps
      # Preemption, stop_at and NaN (raises): the same decision on every process (preemption.py).
      check = functools.partial(step_lib.raise_if_nonfinite, state) if log_step else None
      stop = stop_rule.stop_now(step, check_finite=check)
      if log_step:
        host = jax.device_get(metrics)
        writer.write_scalars(step, host)
        writer.flush()  # a killed job keeps its metrics up to the last log step
        logging.info("step %d/%d: loss %.4f, online probe accuracy %.3f, lr %.3g", step,
                     num_steps, host["loss"], host["probe_accuracy"], host["learning_rate"])
      if stop:  # no evaluation first: a preempted job has seconds to save
        preempted = step < num_steps
        save(step, force=True)
        break
      # An evaluation step saves first, checkpoint step or not: an evaluation that fails or is
      # pre-empted then costs no training and cannot loop (resume, replay, fail again).
      eval_step = bool(config.eval_every) and step % config.eval_every == 0 and step < num_steps
      save(step, force=step == num_steps or eval_step)
      if eval_step and not run_eval(step, functools.partial(stop_rule.preempted_now, step)):
        preempted = True  # a notice during the evaluation: its step is already saved
        break
  ckpt.wait()
  if not preempted and config.eval_at_end:
    run_eval(step)
  writer.close()
  ckpt.close()
  summary = {"step": step, "num_steps": num_steps, "preempted": preempted,
             "workdir": workdir, "train_step_compilations": step_fn._cache_size(),  # noqa: SLF001
             **eval_results}
  if jax.process_index() == 0:
    workdir_lib.write_json(os.path.join(workdir, "summary.json"), summary)
  return summary
