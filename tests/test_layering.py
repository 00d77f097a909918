"""The package's layers import downwards only (DESIGN.md: data -> models/initializers -> train ->
analysis -> experiments -> report, the CLI on top), function-level imports included: issue 13
found a 7-file circle (train/loop.py imported the CLI, train/cli.py the experiments)."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "transfusion"

# rank of each top-level module / subpackage: an import may only go to an equal or lower rank
RANK = {
    "__init__": 0, "errors": 0, "utils": 0, "checkpoints": 0, "run_lock": 0, "_extension": 0,
    "memory": 0, "environment": 0,
    "ops": 1,
    "models": 2, "report": 2,
    "validation": 3, "initializers": 3,
    "data": 4,
    "train": 5,
    "analysis": 6,
    "experiments": 7,
    "cli": 8,
}


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "transfusion":
                yield from (a.name for a in node.names)
            elif node.module.startswith("transfusion."):
                yield _top(node.module)
        elif isinstance(node, ast.Import):
            yield from (_top(a.name) for a in node.names if a.name.startswith("transfusion."))


def test_every_module_has_a_layer():
    tops = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
            if (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists()))}
    assert tops <= set(RANK), f"give these a rank in tests/test_layering.py: {sorted(tops - set(RANK))}"


def test_imports_only_go_down():
    upward = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        here = _top(".".join(rel.parts))
        for target in _imports(path):
            if target in RANK and RANK[target] > RANK[here]:
                upward.append(f"{path.relative_to(PACKAGE.parent)} imports transfusion.{target}")
    assert not upward, "imports that go up a layer:\n" + "\n".join(sorted(upward))


# inside train/ (issue 13 split loop.py by job): the loop sits on its parts, the CLI on the loop
TRAIN_RANK = {
    "spec": 0, "recipes": 0, "metrics": 0, "run_folder": 0, "distributed": 0,
    "task": 1, "checkpoint": 1, "data_stream": 1, "stopping": 1, "run_log": 1,
    "evaluation": 2,
    "loop": 3,
    "cli": 4, "__init__": 4,
}


def _train_imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "transfusion.train":
                yield from (a.name for a in node.names if a.name in TRAIN_RANK)
                if any(a.name not in TRAIN_RANK for a in node.names):
                    yield "__init__"
            elif node.module.startswith("transfusion.train."):
                yield node.module.split(".")[2]
        elif isinstance(node, ast.Import):
            yield from (a.name.split(".")[2] for a in node.names
                        if a.name.startswith("transfusion.train."))


def test_train_modules_import_only_their_parts():
    train = PACKAGE / "train"
    assert {p.stem for p in train.glob("*.py")} == set(TRAIN_RANK), "rank new train/ modules here"
    upward = [f"train/{p.name} imports train.{t}" for p in sorted(train.glob("*.py"))
              for t in _train_imports(p) if TRAIN_RANK[t] > TRAIN_RANK[p.stem]]
    assert not upward, "imports that go up inside train/:\n" + "\n".join(upward)
