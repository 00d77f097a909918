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
