"""Evaluation at pod scale: a feature bank sharded by rows over the mesh, and the kNN, linear
probe and few-shot ridge probe that run on it without ever gathering it whole.

  bank.py      frozen features of a split as row-sharded global arrays (`Bank`)
  knn.py       local top-k per device, then a merge of the devices' candidates
  probes.py    data-parallel linear probe; few-shot ridge moving only the sampled rows
  progress.py  console progress with an ETA, and a stop check between blocks
  online.py    the periodic evaluation of the training loop
  evaluators.py  the named, configured evaluators that `run.evaluate_workdir` lists and times
"""
