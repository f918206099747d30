"""Evaluation of frozen features, at pod scale.

bank.py holds a split's features as a row-sharded `Bank`; knn.py and probes.py score it without
ever gathering it whole, to the protocols of array_eval.py (whole arrays). online.py is the
training loop's periodic evaluation, run.py a workdir's full one, as the evaluators of
evaluators.py (named, configured, timed). Nothing here imports training/
except training.state (the state's layout).
"""
