"""bench/gpu_check.sh (issue 18): the parts that run without a GPU. Its syntax, its options, the
steps --dry-run prints (the commands it would run, nothing written), its refusal without CUDA,
the budget bookkeeping and results table, and the one-line summaries of bench/gpu_check_summary.py
on benchmark files shaped like pytest-benchmark's."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"
STEPS = ["build", "tests", "train", "bench-svcca", "bench-cbr", "bench-train"]

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def sh(*args, env_extra=None, timeout=120):
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "PYTHON", "GPU_CHECK_ALLOW_CPU")}
    env.update(env_extra or {})
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)


def test_syntax():
    r = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_help_lists_the_steps():
    r = sh("--help")
    assert r.returncode == 0 and "usage: bench/gpu_check.sh" in r.stdout
    assert " ".join(STEPS) in r.stdout


def test_dry_run_prints_every_step_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    r = sh("--dry-run", "--out", str(out), "--python", sys.executable)
    assert r.returncode == 0, r.stderr
    lines = [x for x in r.stdout.splitlines() if x.startswith("[")]
    assert [x[1:x.index("]")] for x in lines] == STEPS
    text = r.stdout
    for needle in ("TRANSFUSION_CUDA_ARCH=90", "--no-build-isolation", "-k cuda",
                   "tests/train/test_train_loss_checks.py", "--model resnet50", "--image-size 224",
                   "amp=bf16", "--device cuda", "bench/bench_svcca.py", "bench/bench_cbr.py",
                   "--benchmark-json=" + str(out), sys.executable):
        assert needle in text, needle
    assert not out.exists()


def test_only_and_skip_choose_steps(tmp_path):
    r = sh("--dry-run", "--only", "build,train", "--out", str(tmp_path))
    assert [x[1:x.index("]")] for x in r.stdout.splitlines() if x.startswith("[")] == ["build", "train"]
    r = sh("--dry-run", "--skip", "build,bench-cbr", "--out", str(tmp_path))
    assert [x[1:x.index("]")] for x in r.stdout.splitlines()
            if x.startswith("[")] == ["tests", "train", "bench-svcca", "bench-train"]


@pytest.mark.parametrize("args,needle", [
    (["--bogus"], "unknown option '--bogus'"),
    (["--budget", "ten"], "--budget must be a whole number"),
    (["--budget", "0"], "--budget must be a whole number"),
    (["--only", "build,nope"], "unknown step 'nope'"),
    (["--skip", ""], "--skip needs a value"),
    (["--out"], "--out needs a value"),
    (["--train-steps", "5"], "--train-steps must be a whole number >= 20"),
])
def test_bad_options_are_one_line_and_exit_2(args, needle):
    r = sh(*args, "--dry-run")
    assert r.returncode == 2
    assert needle in r.stderr and r.stderr.strip().splitlines()[-1].startswith("gpu_check: ")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_without_cuda_it_stops_before_writing(tmp_path):
    r = sh("--out", str(tmp_path / "out"), "--python", sys.executable)
    assert r.returncode == 3 and "no CUDA device visible" in r.stderr and "--dry-run" in r.stderr
    assert not (tmp_path / "out").exists()


def test_budget_skips_steps_and_the_table_says_so(tmp_path):
    r = sh("--only", "tests,bench-train", "--budget", "10", "--out", str(tmp_path / "o"),
           "--python", sys.executable, env_extra={"GPU_CHECK_ALLOW_CPU": "1"})
    assert r.returncode == 0, r.stderr
    table = (tmp_path / "o" / "results.md").read_text()
    assert "| tests | skipped | 0 | budget: 10s left, needs 20s |" in table
    assert "| bench-train | skipped | 0 | budget: 10s left, needs 15s |" in table
    assert table in r.stdout


# ---- bench/gpu_check_summary.py -----------------------------------------------------------------
def summary(*args):
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check_summary.py"), *args],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    return r.returncode, r.stdout.strip()


def bench_file(path, benchmarks):
    path.write_text(json.dumps({"benchmarks": benchmarks}))
    return str(path)


def test_summaries(tmp_path):
    sv = bench_file(tmp_path / "sv.json", [
        {"name": "test_cuda_gram_pass_ours", "group": "g", "stats": {"min": 0.01, "median": 0.01},
         "extra_info": {"fraction_of_cublas_rate": 0.81, "gram_gflops_3_blocks": 40000.0,
                        "cublas_mm_gflops": 49000.0, "compiled_op": True}},
        {"name": "test_cuda_svcca_ours", "group": "s", "stats": {"min": 0.012, "median": 0.013},
         "extra_info": {"speedup_vs_torch_svd_qr": 5.5, "speedup_vs_torch_qr_first": 2.25,
                        "abs_err_vs_float64_reference": 3e-9}}])
    assert summary("svcca", sv) == (0, "Gram pass 0.81x cuBLAS fp32 rate (40000 vs 49000 GFLOP/s, "
                                       "compiled op); svcca 12 ms (2.2x torch_qr_first, 5.5x "
                                       "torch_svd_qr; |err| 3.0e-09)")
    cb = bench_file(tmp_path / "cb.json", [
        {"name": "a", "group": "cuda-cbr-largew-train-step-bf16", "params": {"impl": i},
         "stats": {"min": t, "median": t}}
        for i, t in (("fused", 0.02), ("eager", 0.03), ("compiled-eager", 0.018))])
    assert summary("cbr", cb) == (0, "time / fused (median): cbr-largew-bf16: fused 20.0 ms, "
                                     "compiled-eager 0.90x, eager 1.50x")
    log = tmp_path / "t.log"
    log.write_text("....\n==== 12 passed, 3 skipped, 40 deselected in 9.12s ====\n")
    assert summary("pytest", str(log)) == (0, "12 passed, 3 skipped, 40 deselected")
    m = tmp_path / "metrics.jsonl"
    m.write_text("\n".join(json.dumps(r) for r in [
        {"step": 0, "kind": "eval", "eval_loss": 1.6},
        {"step": 10, "kind": "train", "loss": 1.5, "images_per_s": 900.0},
        {"step": 20, "kind": "train", "loss": 1.2, "images_per_s": 2000.0},
        {"step": 30, "kind": "train", "loss": 1.1, "images_per_s": 2200.0}]))
    assert summary("train", str(m)) == (0, "2100 images/s (median of 2 logged windows after the "
                                           "first; data-loading waits excluded), loss 1.500 -> 1.100")
    tsv = tmp_path / "s.tsv"
    tsv.write_text("build\tok\t80\tCUDA kernels for sm 90\ntrain\tFAILED (exit 2)\t5\ta|b\n")
    code, table = summary("table", str(tsv))
    assert table.splitlines() == ["| step | status | seconds | result |", "|---|---|---|---|",
                                  "| build | ok | 80 | CUDA kernels for sm 90 |",
                                  "| train | FAILED (exit 2) | 5 | a/b |"]
    assert summary("svcca", str(tmp_path / "missing.json"))[1].startswith("no result (FileNotFoundError")
    assert summary("nope")[0] == 2
