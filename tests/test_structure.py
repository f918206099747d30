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
      names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
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
  # The test above must be able to fail: the old evaluate -> checkpoint_eval -> train ->
  # evaluate cycle, lazy import included.
  graph = import_graph()
  graph["simlap.training.loop"] = graph["simlap.training.loop"] | {"simlap.evaluation.run"}
  cycle = find_cycle(graph)
  assert cycle is not None and "simlap.training.loop" in cycle and "simlap.evaluation.run" in cycle


def test_imports_run_one_way_through_evaluation():
  # evaluators <- evaluation.{knn, probes} <- evaluation.online <- features <- train
  #   <- eval_workdir <- {evaluate, compare}
  graph = import_graph()
  assert graph["simlap.evaluation.array_eval"] <= {"simlap.losses"}  # pure array code
  assert graph["simlap.losses"] == set()  # imports only jax: other projects copy it
  assert "simlap.evaluation.array_eval" in graph["simlap.evaluation.probes"]
  assert "simlap.evaluation.online" in graph["simlap.evaluation.features"]
  # The evaluation package is a library of the trainer, never the other way round.
  for name in (n for n in graph if n.startswith("simlap.evaluation.")):
    assert not graph[name] & {"simlap.training.loop", "simlap.evaluation.run", "simlap.main"}, name
  assert "simlap.evaluation.features" in graph["simlap.training.loop"]
  assert "simlap.training.loop" in graph["simlap.evaluation.run"]
  assert "simlap.evaluation.run" in graph["simlap.evaluate"] & graph["simlap.compare"]


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
