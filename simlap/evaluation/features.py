"""Frozen features of a whole split, as host arrays (small splits), and the online evaluation.

The evaluation itself lives in simlap/evaluation/: `evaluation.bank.extract_bank` keeps a
split's features as a row-sharded bank on the devices, and `evaluation.online.evaluate_online`
is what training calls. `extract_features` here gathers a bank to the host in split order, for
callers that want numpy (tests, small splits); never use it for an ImageNet-size train split.
"""
from __future__ import annotations

import numpy as np

from simlap.evaluation import bank as bank_lib
from simlap.evaluation.online import evaluate_online

__all__ = ["evaluate_online", "extract_features"]


def extract_features(config, model, state, mesh, split: str, *,
                     embeddings: bool = False) -> dict[str, np.ndarray]:
  """Frozen features of every example of `split` on the host, padding rows last (see "mask").

  Returns host arrays over the padded split (N_pad rows, the N real ones first in split
  order): "features" (N_pad, F) pooled backbone features, "predictions" (N_pad,) online-probe
  argmax, "labels" (N_pad,), "mask" (N_pad,) bool (True = real example; each appears exactly
  once), with `embeddings` also "embeddings" (N_pad, D), and any extra label keys of the
  dataset (e.g. "coarse_label") under their own names.
  """
  bank = bank_lib.extract_bank(config, model, state, mesh, split, embeddings=embeddings)
  names = [n for n in bank.columns if n != "index"]
  cols = bank_lib.gathered(bank, names + ["index"])
  index = cols.pop("index")
  order = np.argsort(np.where(index < 0, np.iinfo(np.int32).max, index), kind="stable")
  return {n: v[order] for n, v in cols.items()}
