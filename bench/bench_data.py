"""Data pipeline speed: synthetic drawing per image, and one item from files vs the decoded cache.

Run: pytest bench/bench_data.py --benchmark-only
"""
import pytest
import torch

from transfusion.data import load_dataset, synthetic


@pytest.mark.parametrize("kind", ["fundus", "chexpert", "natural"])
def test_draw_one_image_128px(benchmark, kind):
    benchmark.group = "synthetic: draw one 128 px image"
    rng = synthetic._rng(0, kind, 0)
    if kind == "fundus":
        benchmark(synthetic.draw_fundus, 128, 2, "left", rng)
    elif kind == "chexpert":
        truth = {k: True for k in synthetic.CHEX5}
        benchmark(synthetic.draw_chest, 128, truth, True, rng)
    else:
        benchmark(synthetic.draw_natural, 128, synthetic.natural_class(3, 0), rng)


@pytest.fixture(scope="module")
def fundus_root(tmp_path_factory):
    return synthetic.make_fundus(tmp_path_factory.mktemp("bench") / "f", 64, 256, seed=0, workers=1)


@pytest.fixture
def one_thread():
    # as in a DataLoader worker (torch sets 1 thread there); per-item ops are too small for more
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("cached", [False, True], ids=["decode-jpeg", "npy-cache"])
def test_get_item(benchmark, fundus_root, tmp_path, cached, one_thread):
    benchmark.group = "loader: one 128 px training item (augmented), from 256 px JPEG or the cache"
    ds = load_dataset("eyepacs", fundus_root, "train", image_size=128, augment=True,
                      cache_dir=str(tmp_path / "cache") if cached else None)
    benchmark(ds.__getitem__, 0)


# ---- issue 18: the paper's sizes, straight decode vs the decoded cache --------------------------
# EyePACS photos are JPEGs of about 3000 x 2000 px resized to 587; CheXpert-small's are about
# 390 x 320 px resized to 224. The synthetic sets stand in (square JPEGs at SOURCE px); what is
# timed is one training item in one thread, as in one DataLoader worker.
PAPER_SIZES = {"eyepacs": (1536, 587), "chexpert": (384, 224)}


@pytest.fixture(scope="module")
def paper_roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("paper")
    return {"eyepacs": synthetic.make_fundus(base / "eyepacs", 24, PAPER_SIZES["eyepacs"][0], seed=0, workers=1),
            "chexpert": synthetic.make_chexpert(base / "chexpert", 24, PAPER_SIZES["chexpert"][0], seed=0, workers=1)}


@pytest.mark.parametrize("cached", [False, True], ids=["decode-jpeg", "npy-cache"])
@pytest.mark.parametrize("dataset", ["eyepacs", "chexpert"])
def test_get_item_paper_size(benchmark, paper_roots, tmp_path, dataset, cached, one_thread):
    source, size = PAPER_SIZES[dataset]
    benchmark.group = f"loader at the paper's size: {dataset} {source} px JPEG -> {size} px item"
    ds = load_dataset(dataset, paper_roots[dataset], "train", image_size=size, augment=True,
                      cache_dir=str(tmp_path / "cache") if cached else None)
    n = len(ds)
    state = {"i": 0}

    def one():
        state["i"] = (state["i"] + 1) % n
        return ds[state["i"]]

    benchmark.pedantic(one, rounds=max(12, n), iterations=1, warmup_rounds=2)
    benchmark.extra_info["images_per_s_per_core"] = 1.0 / benchmark.stats.stats.mean
