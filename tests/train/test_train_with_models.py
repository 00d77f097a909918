"""The loop with the models stream's real registry and initializers (fake data): pretrain a CBR
model, then start a run from it with the transfer initialisation."""
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import train_fakes  # noqa: E402

from transfusion.train import run_training  # noqa: E402
from transfusion.train.loop import Components  # noqa: E402
from transfusion.train.spec import RunSpec  # noqa: E402

models = pytest.importorskip("transfusion.models")
inits = pytest.importorskip("transfusion.initializers")


def comps():
    return Components(build_model=models.build_model, initialize=inits.initialize,
                      load_dataset=train_fakes.load_dataset)


@pytest.mark.slow
def test_pretrain_then_transfer_with_real_models(tmp_path):
    torch.set_num_threads(2)
    common = dict(model="cbr_tiny", data_root="fake", steps=2, image_size=32, batch_size=8,
                  overrides={"eval_every": 2, "eval_batch_size": 40})
    pre = RunSpec(dataset="imagefolder", recipe="pretrain", **common)
    fin = run_training(pre, tmp_path, components=comps(), progress=False)
    assert fin["headline"] == "accuracy"
    ck = tmp_path / pre.run_id / "model_final.pt"
    info = torch.load(ck, weights_only=False)
    assert info["format"] == "transfusion-model" and info["model_name"] == "cbr_tiny"
    step0 = torch.load(tmp_path / pre.run_id / "checkpoints" / "step0.pt", weights_only=False)
    assert info["num_classes"] == step0["num_classes"] == 4

    tr = RunSpec(dataset="eyepacs", init="transfer", checkpoint=str(ck), **common)
    out = run_training(tr, tmp_path, components=comps(), progress=False)
    assert out["status"] == "finished"
    summary = json.loads((tmp_path / tr.run_id / "init_summary.json").read_text())
    assert summary["method"] == "transfer"
    start = torch.load(tmp_path / tr.run_id / "checkpoints" / "step0.pt", weights_only=False)["state_dict"]
    # every non-head tensor of the transfer run starts from the pretrained model's final weights
    for k, v in info["state_dict"].items():
        if not k.startswith(models.build_model("cbr_tiny", 5).head_prefix):
            assert torch.equal(start[k], v), k
