"""Run by test_train_ddp.py as one of 2 processes with torchrun's environment (RANK, WORLD_SIZE,
MASTER_ADDR, MASTER_PORT): a tiny run stopped after k steps, then resumed, with the fake components.
The process group is made here so both sessions share it (run_training then leaves it alone)."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import train_fakes  # noqa: E402

from transfusion.train import run_training  # noqa: E402
from transfusion.train.spec import RunSpec  # noqa: E402

if __name__ == "__main__":
    torch.set_num_threads(1)
    runs_dir, spec, stop_after = Path(sys.argv[1]), RunSpec.from_dict(json.loads(sys.argv[2])), int(sys.argv[3])
    dist.init_process_group("gloo")
    kw = dict(device="cpu", components=train_fakes.components(), progress=False)
    part = run_training(spec, runs_dir, max_steps_this_session=stop_after, **kw)
    assert part["status"] == "interrupted", part
    assert not (runs_dir / spec.run_id / "final.json").exists()
    final = run_training(spec, runs_dir, **kw)
    assert final["status"] == "finished"
    dist.barrier()  # both ranks done before the store's host (rank 0) tears it down (distributed.teardown)
    dist.destroy_process_group()
