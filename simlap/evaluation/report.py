"""eval/report.md: one evaluation's results dict (see `eval_workdir`) as readable Markdown."""
from __future__ import annotations

from typing import Any

from simlap.evaluation import cells


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
    lines.append(f"| kNN k={k}, T={res['protocol']['knn']['temperature']} | {cells.pct(v)} |")
  for k, v in res["knn"]["projector"].items():
    lines.append(f"| kNN k={k} (projector) | {cells.pct(v)} |")
  hp = res["linear_probe"]["hparams"]
  lines.append(f"| linear probe ({hp['optimizer']}, {hp['epochs']} ep, lr {hp['lr']}, "
               f"bs {hp['batch_size']}) | {cells.pct(res['linear_probe']['accuracy'])} |")
  for k, v in res["few_shot"]["shots"].items():
    lines.append(f"| {k}-shot ridge (λ={res['few_shot']['lam']}, seeds "
                 f"{res['few_shot']['seeds']}) | {cells.mean_std(v['mean'], v['std'])} |")
  lines.append(f"| online probe (trained with the model) | {cells.pct(res['online_probe'])} |")
  lines += ["", "## Analysis (test split)", "", "| quantity | backbone | projector |",
            "|---|---|---|",
            f"| effective rank (of dim) | {cells.num(s['effective_rank_backbone'], 1)} / "
            f"{a['spectrum']['backbone']['dim']} | {cells.num(s['effective_rank_projector'], 1)} / "
            f"{a['spectrum']['projector']['dim']} |",
            f"| intra- vs inter-class cosine AUROC | {cells.num(s['auroc_backbone'])} | "
            f"{cells.num(s['auroc_projector'])} |",
            f"| class-mean group recovery (chance {cells.num(s['group_recovery_chance'])}) | "
            f"{cells.num(s['group_recovery_class_mean_backbone'])} | "
            f"{cells.num(s['group_recovery_class_mean_projector'])} |", ""]
  if a.get("gates") is None:
    lines += ["Gates: none (objective without a gate, or an open gate).", ""]
  else:
    g = a["gates"]
    lines += [
        "## Gates", "",
        f"- class gates g(y, y): mean subspace Σ_d g = {g['activation_mean']:.1f} of "
        f"{g['dim']} dims; g > 0.5: {cells.pct(g['frac_open'])} %; near 0 / near 1 / in between: "
        f"{cells.pct(g['frac_near_zero'])} / {cells.pct(g['frac_near_one'])} / "
        f"{cells.pct(g['frac_intermediate'])} %; mean Bernoulli entropy "
        f"{g['entropy_bits_mean']:.3f} bits.",
        f"- AUROC in the class-gated subspace {cells.num(s['auroc_projector_gated'])}, in the "
        f"pair-gated subspace {cells.num(s['auroc_projector_pair_gated'])}.",
        f"- group recovery from gate cosine: {cells.num(s['group_recovery_gate'])} (class-mean "
        f"baseline {cells.num(s['group_recovery_class_mean_projector'])}, chance "
        f"{cells.num(s['group_recovery_chance'])}).",
        f"- pair subspace Σ g within groups {cells.num(s['pair_size_within'], 2)} vs across "
        f"{cells.num(s['pair_size_across'], 2)} (AUROC within > across "
        f"{cells.num(s['pair_size_within_vs_across_auroc'])}).", ""]
  lines += shift_sections(res)
  lines += ["Plots: " + ", ".join(f"[{p}]({p})" for p in a.get("plots", [])), "",
            f"Timing (s): {res['timing_s']}", ""]
  return "\n".join(lines)


def shift_sections(res: dict[str, Any]) -> list[str]:
  """The robustness and transfer sections (none when they were not asked for)."""
  lines = []
  rob = res.get("robustness")
  if rob:
    sev = [str(s) for s in rob["severities"]]
    p = rob["probe"]
    rel = rob["relative_corruption_error"]
    lines += [
        "## Robustness: ridge probe under common corruptions (test %)", "",
        f"Ridge (λ={p['lam']}, {p['features']}) fitted on the clean {p['fit_on']} "
        f"({p['num_train']} images), scored on {rob['split']} ({rob['num_test']} images) "
        f"corrupted at severities {', '.join(sev)} (source: {rob['source']}, seed "
        f"{rob['seed']}).", "",
        f"- clean accuracy **{cells.pct(rob['clean_accuracy'])}**, mCA **{cells.pct(rob['mca'])}** "
        f"(mean of {len(rob['accuracy'])} corruptions × {len(sev)} severities), relative "
        f"corruption error (1 − mCA) / (1 − clean) **{cells.num(rel)}**.", ""]
    if rob["missing"]:
      lines += ["- missing: " + "; ".join(f"{k} ({v})" for k, v in rob["missing"].items()), ""]
    lines += ["| corruption | source | " + " | ".join(f"s{s}" for s in sev) + " | mean |",
              "|---|---|" + "---|" * (len(sev) + 1)]
    for name, acc in rob["accuracy"].items():
      lines.append(f"| {name} | {rob['sources'][name]} | "
                   + " | ".join(cells.pct(acc[s]) for s in sev) + f" | {cells.pct(acc['mean'])} |")
    lines.append("")
    if rob.get("picture"):
      lines += ["The first test image under every corruption and severity (as corrupted, "
                "before the eval view's resize):", "",
                f"![corruptions]({rob['picture']})", ""]
  transfer = res.get("transfer")
  if transfer:
    shots = res["protocol"]["transfer"]["few_shot"]["shots"]
    lines += ["## Transfer: frozen backbone on other datasets (test %)", "",
              f"Each target on its own train/test split, its images converted to the run's "
              f"input ({res['protocol']['transfer']['input']}); kNN k=20, T=0.07 against the "
              f"target's train split; few-shot ridge λ={res['few_shot']['lam']}, mean ± std "
              f"over seeds {res['protocol']['transfer']['few_shot']['seeds']}.", "",
              "| target | train / test | classes | kNN k=20 | "
              + " | ".join(f"{s}-shot" for s in shots) + " |",
              "|---|---|---|---|" + "---|" * len(shots)]
    for name, t in transfer.items():
      few = [t["few_shot"].get(f"{s}shot") for s in shots]
      lines.append(f"| {name} | {t['num_train']} / {t['num_test']} | {t['num_classes']} | "
                   f"{cells.pct(t['knn_accuracy'])} | " + " | ".join(
                       cells.DASH if f is None else cells.mean_std(f["mean"], f["std"])
                       for f in few) + " |")
    lines.append("")
  return lines
