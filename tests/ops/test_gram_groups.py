"""gram_pass_groups (the batched many-pairs pass) and the block-row Gram of the compiled op."""
import pytest
import torch

from transfusion.ops import dispatch
from transfusion.ops import gram as G


def _inputs(n, widths, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, w, generator=g) * 3 + 1).to(dtype) for w in widths]


@pytest.mark.parametrize("use_kernel", [False, None])
@pytest.mark.parametrize("widths,groups,chunk", [([40, 30, 20, 50], [2, 2], 256),
                                                 ([300, 200, 7], [1, 2], 1000),
                                                 ([129, 1, 260, 5, 5], [3, 1, 1], 97)])
def test_groups_match_one_pass_per_group(widths, groups, chunk, use_kernel):
    xs = _inputs(1234, widths)
    shift = G.first_chunk_shift(xs, chunk, torch.float32)
    gram, colsum, chunk_sq = G.gram_pass_groups(xs, shift, groups, chunk, use_kernel=use_kernel)
    first, col = 0, 0
    for size in groups:
        w = sum(widths[first:first + size])
        g, s, q = G.gram_pass(xs[first:first + size], shift[col:col + w], chunk, use_kernel=False)
        # float32 GEMMs of other shapes: rounding differs (a few u x sqrt(chunk) relative)
        torch.testing.assert_close(gram[col:col + w, col:col + w], g, rtol=1e-5,
                                   atol=1e-5 * float(g.abs().max()))
        torch.testing.assert_close(colsum[col:col + w], s, rtol=1e-12, atol=1e-9)
        torch.testing.assert_close(chunk_sq[:, col:col + w], q, rtol=1e-12, atol=1e-9)
        outside = gram[col:col + w].clone()
        outside[:, col:col + w] = 0
        assert not outside.any()  # no blocks between groups
        first, col = first + size, col + w
    if use_kernel is None and dispatch.has_kernel("gram_pass_groups", "cpu"):
        assert torch.equal(gram, gram.T)  # the op mirrors its upper triangle


@pytest.mark.parametrize("n,widths", [(5000, [300, 200]), (1500, [1024]), (3, [5, 6])])
def test_block_row_gram_matches_torch_scheme(n, widths):
    """The compiled op's upper-triangle block rows give the same (symmetric) Gram as full GEMMs."""
    xs = _inputs(n, widths, seed=1)
    for dtype in (torch.float32, torch.float64):
        ys = [x.to(dtype) for x in xs]
        shift = G.first_chunk_shift(ys, 1024, dtype)
        a = G.gram_pass(ys, shift, 1024, dtype=dtype)
        b = G.gram_pass(ys, shift, 1024, dtype=dtype, use_kernel=False)
        tol = 1e-5 if dtype == torch.float32 else 1e-12
        for u, v in zip(a, b):
            torch.testing.assert_close(u, v, rtol=tol, atol=tol * float(v.abs().max()))
        assert torch.equal(a[0], a[0].T)
        torch.testing.assert_close(a[0].diagonal(), a[2].sum(0), rtol=0, atol=0)


def test_groups_validation():
    xs = _inputs(10, [2, 3])
    shift = G.first_chunk_shift(xs)
    with pytest.raises(ValueError):
        G.gram_pass_groups(xs, shift, [1])
    if dispatch.has_kernel("gram_pass_groups", "cpu"):
        with pytest.raises(RuntimeError):
            torch.ops.transfusion.gram_pass_groups(xs, shift.float(), 4, [3])


def test_groups_opcheck():
    if not dispatch.has_kernel("gram_pass_groups", "cpu"):
        pytest.skip("no compiled op")
    xs = _inputs(50, [3, 4, 2])
    shift = G.first_chunk_shift(xs).float()
    torch.library.opcheck(torch.ops.transfusion.gram_pass_groups.default, (xs, shift, 16, [2, 1]),
                          test_utils=("test_schema", "test_faketensor"))
