"""Issue 13: one owner per file format. Torch files are read in one place (with weights_only), the
model-checkpoint layout is spelled in one place, and a run folder's file names in one place (the
loop writes and experiments read through RunFolder), so that no reader looks for a name or a
layout that no writer produces."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "transfusion"
RUN_FOLDER_NAMES = {"config.json", "init_summary.json", "metrics.jsonl", "metrics.csv", "final.json",
                    "model_final.pt", "last.pt", "step0.pt", "similarity.json", "feature_reuse.json",
                    "checkpoints", "tensorboard"}


def _calls_and_strings(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            base = node.func.value
            if isinstance(base, ast.Name) and base.id == "torch" and node.func.attr == "load":
                yield "call", "torch.load"
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield "str", node.value


def _where(kind: str, test) -> list[str]:
    return sorted(str(p.relative_to(PACKAGE.parent)) for p in PACKAGE.rglob("*.py")
                  if any(k == kind and test(v) for k, v in _calls_and_strings(p)))


def test_torch_files_are_read_in_one_place():
    assert _where("call", lambda v: True) == ["transfusion/checkpoints.py"]


def test_the_model_checkpoint_layout_has_one_owner():
    assert _where("str", lambda v: v == "transfusion-model") == ["transfusion/checkpoints.py"]


def test_run_folder_file_names_have_one_owner():
    assert _where("str", lambda v: v in RUN_FOLDER_NAMES) == ["transfusion/train/run_folder.py"]
