"""similarity_matrix: every layer against every layer in one pass equals the pairwise ops."""
import pytest
import torch

from transfusion.errors import InputError
from transfusion.ops import cka, conv_to_datapoints, svcca
from transfusion.ops.similarity_matrix import similarity_matrix


def _cnn_layers(seed):
    """Real activations: a CBR-Tiny's four stages on a batch of images."""
    from transfusion.models import build_model

    torch.manual_seed(seed)
    model = build_model("cbr_tiny", 2).eval()
    acts = {}
    hooks = [getattr(model, n).register_forward_hook(
        lambda m, i, o, n=n: acts.__setitem__(n, o.detach().double())) for n in ("cbr1", "cbr2", "cbr3", "cbr4")]
    with torch.no_grad():
        model(torch.rand(48, 3, 32, 32))
    for h in hooks:
        h.remove()
    return acts


def test_matrix_equals_the_pairwise_ops_on_real_activations():
    a, b = _cnn_layers(0), _cnn_layers(1)
    m = similarity_matrix(a, b, method="cka", pool=2)
    assert m.values.shape == (4, 4) and m.rows == list(a) and m.cols == list(b)
    assert m.n == 48 * 4
    for i, ra in enumerate(a):
        for j, rb in enumerate(b):
            x = conv_to_datapoints(a[ra], pool=2, warn=False)
            y = conv_to_datapoints(b[rb], pool=2, warn=False)
            assert m.values[i, j] == pytest.approx(cka(x, y).mean, abs=1e-9)
    s = similarity_matrix(a, b, method="svcca", pool=2)
    x, y = conv_to_datapoints(a["cbr1"], pool=2, warn=False), conv_to_datapoints(b["cbr2"], pool=2, warn=False)
    with pytest.warns(RuntimeWarning):  # 192 datapoints for 64 neurons: flagged as few
        want = svcca(x, y).mean
    assert s.values[0, 1] == pytest.approx(want, abs=1e-9)


def test_one_model_against_itself_is_symmetric_with_ones_on_the_diagonal():
    a = _cnn_layers(2)
    m = similarity_matrix(a, method="cka", pool=2)
    torch.testing.assert_close(m.values, m.values.T)
    torch.testing.assert_close(torch.diagonal(m.values), torch.ones(4, dtype=torch.float64))
    assert "cbr1" in repr(m) and m.to_dict()["rows"] == list(a)


def test_bad_inputs():
    with pytest.raises(InputError, match="dict"):
        similarity_matrix(torch.zeros(3, 3))
    with pytest.raises(InputError, match="method"):
        similarity_matrix({"a": torch.randn(20, 2)}, method="nope")
    with pytest.raises(InputError, match="same batches|different numbers of datapoints"):
        similarity_matrix({"a": torch.randn(20, 2)}, {"b": torch.randn(30, 2)})


def test_heatmap_is_drawn(tmp_path):
    from transfusion.report.figures import similarity_heatmap

    a = _cnn_layers(3)
    m = similarity_matrix(a, method="cka", pool=2)
    path = similarity_heatmap(m.values, m.rows, m.cols, tmp_path / "map.png", title="CKA")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_cross_layer_map_pools_every_stage_to_the_smallest_map():
    # the demo's layer-change failed: at 32 px CBR-Tiny's last stage is 3x3, smaller than pool=4,
    # so its rows did not match the other stages'
    from transfusion.analysis.similarity import cross_layer_map
    from transfusion.models import build_model

    torch.manual_seed(0)
    a, b = build_model("cbr_tiny", 2), build_model("cbr_tiny", 2)
    batches = [torch.rand(8, 3, 32, 32), torch.rand(8, 3, 32, 32)]
    with pytest.warns(RuntimeWarning):  # 16 images: few datapoints, flagged
        m = cross_layer_map(a, b, batches, pool=4)
    assert m.values.shape == (4, 4) and torch.isfinite(m.values).all()
    assert m.n < 16 * 16  # pooled below 4x4 to the smallest map
