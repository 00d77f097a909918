"""Issue 13: no function in the package is longer than a reader can hold at once (90 lines,
decorators and docstring included): split a longer one by job."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "transfusion"
MAX_LINES = 90


def test_no_function_is_longer_than_90_lines():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                n = node.end_lineno - first + 1
                if n > MAX_LINES:
                    long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}: {n} lines")
    assert not long, f"functions over {MAX_LINES} lines:\n" + "\n".join(long)
