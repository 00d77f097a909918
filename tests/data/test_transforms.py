import numpy as np
import torch

from transfusion.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RETINA_AUGMENT,
    ImageTransform,
    augment_tensor,
    decode_array,
)


def test_normalisation_is_imagenet():
    arr = np.full((8, 8, 3), 255, np.uint8)
    x = ImageTransform(3, None)(arr)
    expect = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(x[:, 0, 0], expect)
    g = ImageTransform(1, None)(np.zeros((8, 8, 1), np.uint8))
    assert g.shape == (1, 8, 8) and torch.allclose(g, torch.full_like(g, -0.449 / 0.226), atol=1e-3)


def test_pad_keeps_aspect_and_channels():
    wide = np.zeros((10, 20, 3), np.uint8)
    wide[:, :, 0] = 200
    out = decode_array(wide, 20, 3, "pad")
    assert out.shape == (20, 20, 3)
    assert out[0, 10, 0] == 0 and out[10, 10, 0] == 200  # black bars above and below
    gray = decode_array(wide, 12, 1, "stretch")
    assert gray.shape == (12, 12, 1) and 50 < gray[6, 6, 0] < 70  # ITU-R 601 luma of pure red 200
    rgb = decode_array(np.full((9, 9), 77, np.uint8), 9, 3, "stretch")
    assert (rgb == 77).all()


def test_augment_is_random_but_shape_preserving():
    torch.manual_seed(0)
    x = torch.rand(3, 32, 32)
    outs = [augment_tensor(x, RETINA_AUGMENT) for _ in range(4)]
    assert all(o.shape == x.shape and o.min() >= 0 and o.max() <= 1 for o in outs)
    assert not torch.equal(outs[0], outs[1])
