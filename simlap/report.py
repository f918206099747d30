"""eval/report.md: one evaluation's results dict (see `eval_workdir`) as readable Markdown."""
from __future__ import annotations

import math
from typing import Any


def _pct(x) -> str:
  return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def _num(x, digits: int = 3) -> str:
  return "–" if x is None else f"{x:.{digits}f}"


def markdown(res: dict[str, Any]) -> str:
  """A readable summary of one results dict (numbers first; PNGs linked at the end)."""
  s, a, b = res["summary"], res["analysis"], res["budget"]
  lines = [
      f"# Evaluation of `{res['workdir']}` at step {res['step']}", "",
      f"method **{res['method']}** (objective {res['objective']}); {b['backbone']}, "
      f"{b['num_steps']} steps × batch {b['batch_size']}, {b['train_split']} "
      f"({b['num_train']} images), image size {b['image_size']}.", "",
      "## Frozen-feature accuracy (test %, backbone features)", "",
      "| protocol | accuracy |", "|---|---|"]
  for k, v in res["knn"]["backbone"].items():
    lines.append(f"| kNN k={k}, T={res['protocol']['knn']['temperature']} | {_pct(v)} |")
  for k, v in res["knn"]["projector"].items():
    lines.append(f"| kNN k={k} (projector) | {_pct(v)} |")
  hp = res["linear_probe"]["hparams"]
  lines.append(f"| linear probe ({hp['optimizer']}, {hp['epochs']} ep, lr {hp['lr']}, "
               f"bs {hp['batch_size']}) | {_pct(res['linear_probe']['accuracy'])} |")
  for k, v in res["few_shot"]["shots"].items():
    lines.append(f"| {k}-shot ridge (λ={res['few_shot']['lam']}, seeds "
                 f"{res['few_shot']['seeds']}) | {_pct(v['mean'])} ± {_pct(v['std'])} |")
  lines.append(f"| online probe (trained with the model) | {_pct(res['online_probe'])} |")
  lines += ["", "## Analysis (test split)", "", "| quantity | backbone | projector |",
            "|---|---|---|",
            f"| effective rank (of dim) | {_num(s['effective_rank_backbone'], 1)} / "
            f"{a['spectrum']['backbone']['dim']} | {_num(s['effective_rank_projector'], 1)} / "
            f"{a['spectrum']['projector']['dim']} |",
            f"| intra- vs inter-class cosine AUROC | {_num(s['auroc_backbone'])} | "
            f"{_num(s['auroc_projector'])} |",
            f"| class-mean group recovery (chance {_num(s['group_recovery_chance'])}) | "
            f"{_num(s['group_recovery_class_mean_backbone'])} | "
            f"{_num(s['group_recovery_class_mean_projector'])} |", ""]
  if a.get("gates") is None:
    lines += ["Gates: none (objective without a gate, or an open gate).", ""]
  else:
    g = a["gates"]
    lines += [
        "## Gates", "",
        f"- class gates g(y, y): mean subspace Σ_d g = {g['activation_mean']:.1f} of "
        f"{g['dim']} dims; g > 0.5: {_pct(g['frac_open'])} %; near 0 / near 1 / in between: "
        f"{_pct(g['frac_near_zero'])} / {_pct(g['frac_near_one'])} / "
        f"{_pct(g['frac_intermediate'])} %; mean Bernoulli entropy "
        f"{g['entropy_bits_mean']:.3f} bits.",
        f"- AUROC in the class-gated subspace {_num(s['auroc_projector_gated'])}, in the "
        f"pair-gated subspace {_num(s['auroc_projector_pair_gated'])}.",
        f"- group recovery from gate cosine: {_num(s['group_recovery_gate'])} (class-mean "
        f"baseline {_num(s['group_recovery_class_mean_projector'])}, chance "
        f"{_num(s['group_recovery_chance'])}).",
        f"- pair subspace Σ g within groups {_num(s['pair_size_within'], 2)} vs across "
        f"{_num(s['pair_size_across'], 2)} (AUROC within > across "
        f"{_num(s['pair_size_within_vs_across_auroc'])}).", ""]
  lines += ["Plots: " + ", ".join(f"[{p}]({p})" for p in a.get("plots", [])), "",
            f"Timing (s): {res['timing_s']}", ""]
  return "\n".join(lines)
