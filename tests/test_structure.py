"""The shape of the package: imports run one way, files stay small, the repo stands alone."""
from __future__ import annotations
import ast
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "simlap"
MAX_LINES = 350
# The exceptions, and why: simlap/losses.py is the file other JAX projects copy whole (it
# imports only jax); splitting it would make them copy several files that import each other.
# simlap/config_schema.py is the one list of every field, its default and its description, so it
# grows with them.
LONGER_ALLOWED = {"simlap/losses.py": 660, "simlap/config_schema.py": 400}


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _simlap_imports(path: pathlib.Path) -> set[str]:
  """Every simlap module `path` imports, at top level or inside a function (lazy imports count:
  a cycle hidden behind one still loads modules twice or half-initialised)."""
  modules = {_module_name(p) for p in PACKAGE.rglob("*.py")}
  found = set()
  for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      # `from simlap import losses` names simlap.losses; `from simlap.x import f` names simlap.x.
      subs = [f"{node.module}.{a.name}" for a in node.names]
      names = [n for n in subs if n in modules] or [node.module]
    else:
      continue
    found |= {n for n in names if n in modules and n != "simlap"}
  return found


def import_graph() -> dict[str, set[str]]:
  return {_module_name(p): _simlap_imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One import cycle as [a, b, ..., a], or None (depth-first search, three colours)."""
  state: dict[str, int] = {}
  stack: list[str] = []

  def visit(node):
    state[node] = 1
    stack.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == 1:
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state and (cycle := visit(nxt)):
        return cycle
    stack.pop()
    state[node] = 2
    return None

  for node in sorted(graph):
    if node not in state and (cycle := visit(node)):
      return cycle
  return None


def test_no_import_cycle():
  assert find_cycle(import_graph()) is None, " -> ".join(find_cycle(import_graph()))


def test_cycle_finder_finds_a_planted_cycle():
  # The test above must be able to fail: evaluation.run -> training.state -> evaluation.run.
  graph = import_graph()
  graph["simlap.training.state"] = graph["simlap.training.state"] | {"simlap.evaluation.run"}
  cycle = find_cycle(graph)
  assert cycle is not None and "simlap.training.state" in cycle and "simlap.evaluation.run" in cycle


CLIS = {"simlap.main", "simlap.evaluate", "simlap.compare", "simlap.aot", "simlap.convert"}


def package_violations(graph: dict[str, set[str]]) -> list[str]:
  """Breaks of the package rules (README, "Layout"), as "importer -> imported: rule"."""
  def under(name, *packages):
    return any(name.startswith(p + ".") for p in packages)

  bad = []
  for mod, deps in graph.items():
    for dep in sorted(deps):
      if dep in CLIS:
        bad.append(f"{mod} -> {dep}: a CLI is imported by no module")
      if under(mod, "simlap.evaluation") and under(dep, "simlap.training") and (
          dep != "simlap.training.state"):
        bad.append(f"{mod} -> {dep}: evaluation takes only the state's layout from training")
      if under(mod, "simlap.models", "simlap.data") and (
          under(dep, "simlap.training", "simlap.evaluation", "simlap.objectives", "simlap.grid",
                "simlap.tpu") or dep == "simlap.objectives"):
        bad.append(f"{mod} -> {dep}: models and data know nothing of training or evaluation")
      if not under(mod, "simlap.grid") and under(dep, "simlap.grid") and mod not in CLIS:
        bad.append(f"{mod} -> {dep}: only CLIs use the grid")
  return bad


def test_packages_import_one_way():
  assert not package_violations(import_graph())


@pytest.mark.parametrize("importer, imported", [
    ("simlap.evaluation.run", "simlap.training.loop"),
    ("simlap.evaluation.knn", "simlap.training.optim"),
    ("simlap.models.model", "simlap.objectives"),
    ("simlap.data.train_stream", "simlap.training.state"),
    ("simlap.data.datasets", "simlap.evaluation.bank"),
    ("simlap.training.loop", "simlap.main"),
])
def test_package_rules_catch_a_planted_import(importer, imported):
  graph = import_graph()
  graph[importer] = graph[importer] | {imported}
  assert package_violations(graph), f"{importer} -> {imported} was not caught"


def test_losses_imports_only_jax():
  # Other projects copy simlap/losses.py whole: it may import jax and the standard library only.
  tree = ast.parse((PACKAGE / "losses.py").read_text(encoding="utf-8"))
  roots = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      roots |= {a.name.split(".")[0] for a in node.names}
    elif isinstance(node, ast.ImportFrom):
      roots.add((node.module or "").split(".")[0])
  assert roots - {"jax", "__future__", "functools", "math", "typing", "collections"} == set()


def test_no_objective_branch_outside_the_registry():
  # Which objective runs is decided once, in simlap/objectives/: nowhere else compares it.
  bad = []
  for path in PACKAGE.rglob("*.py"):
    if path.parent.name == "objectives":
      continue
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
      if isinstance(node, ast.Compare) and any(
          isinstance(n, ast.Attribute) and n.attr == "objective"
          for n in [node.left, *node.comparators]):
        bad.append(f"{path.relative_to(ROOT)}:{node.lineno}")
  assert not bad, f"objective comparisons outside simlap/objectives/: {bad}"


def test_modules_are_small():
  big = {name: n for p in PACKAGE.rglob("*.py")
         if (n := len(p.read_text(encoding="utf-8").splitlines()))
         > LONGER_ALLOWED.get(name := str(p.relative_to(ROOT)), MAX_LINES)}
  assert not big, f"modules over {MAX_LINES} lines (one job per file): {big}"


OUTSIDE = ("../" + "shared", "shared/" + "design")  # split so this file does not match itself


def test_no_file_points_outside_the_repository():
  files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                         check=False).stdout.split()
  if not files:
    pytest.skip("not a git checkout")
  bad = []
  for name in files:
    path = ROOT / name
    if path.suffix not in (".py", ".md", ".sh", ".sbatch", ".cfg", ".toml", ".ini", ""):
      continue
    if not path.is_file():
      continue
    for i, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
      if any(p in line for p in OUTSIDE):
        bad.append(f"{name}:{i}")
  assert not bad, f"references outside the repository: {bad}"
