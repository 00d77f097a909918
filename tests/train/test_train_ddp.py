import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import train_fakes  # noqa: E402

from transfusion.train import run_training  # noqa: E402
from transfusion.train.spec import RunSpec  # noqa: E402

WORKER = Path(__file__).parent / "train_ddp_worker.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_two(runs_dir, spec, stop_after):
    """What ``torchrun --nproc-per-node 2`` does, minus its agent process (faster to start)."""
    port = free_port()
    procs = []
    for rank in range(2):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "RANK": str(rank), "LOCAL_RANK": str(rank),
               "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, str(WORKER), str(runs_dir), spec.to_json(),
                                       str(stop_after)], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=150)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="needs torch.distributed")
def test_two_process_gloo_matches_single_process(tmp_path):
    spec = RunSpec(model="tiny", dataset="eyepacs", data_root="fake", recipe="retina", steps=8,
                   image_size=8, batch_size=8, seed=1,
                   overrides={"eval_every": 4, "log_every": 2, "checkpoint_every": 100,
                              "augment": True, "eval_batch_size": 7, "snapshot_every": 2})
    torch.set_num_threads(1)
    single = run_training(spec, tmp_path / "single", components=train_fakes.components(),
                          progress=False)
    # stopped after 3 steps and resumed (in the worker): exercises the gathered RNG states,
    # the agreed stop and rank-0 writes
    launch_two(tmp_path / "ddp", spec, 3)
    ddp = json.loads((tmp_path / "ddp" / spec.run_id / "final.json").read_text())
    # same global batches, same per-item augmentation seeds, no BatchNorm in the tiny net: the
    # averaged DDP gradient equals the single-process one up to float summation order
    for k, v in single["metrics"].items():
        assert ddp["metrics"][k] == pytest.approx(v, abs=1e-4), k
    rows = [json.loads(x) for x in (tmp_path / "ddp" / spec.run_id / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [0, 4, 8]
    assert all(r["n"] == 40 for r in rows if r["kind"] == "eval")  # shards gathered: whole eval set
    # snapshots: rank 0 writes them (the NaN check before each is a collective every rank joins)
    from transfusion.train.run_folder import RunFolder

    snaps = {d: RunFolder.of(tmp_path / d, spec.run_id).snapshots() for d in ("single", "ddp")}
    assert [st for st, _ in snaps["ddp"]] == [st for st, _ in snaps["single"]] == [0, 2, 4, 6, 8]
    for (_, a), (_, b) in zip(snaps["single"], snaps["ddp"]):
        wa, wb = (torch.load(p, weights_only=False)["state_dict"] for p in (a, b))
        assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa), b.name
