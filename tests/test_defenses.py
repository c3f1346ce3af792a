import pytest
import torch

from aipray.defenses import DEFENSES


def jpeg(q):
    cls = DEFENSES.get("jpeg")
    return cls(cls.Config(quality=q))


def test_jpeg_shape_range_and_inputs_unchanged():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (5, 3, 32, 32), generator=g).float() / 255
    before = x.clone()
    y = jpeg(75)(x)
    assert torch.equal(x, before)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert y.min() >= 0 and y.max() <= 1
    assert torch.equal(y * 255, torch.round(y * 255))


def test_jpeg_stronger_quality_distorts_more():
    # a smooth picture with an edge: JPEG error grows as quality drops
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 32), torch.linspace(0, 1, 32), indexing="ij")
    img = torch.stack([xx, yy, (xx > 0.5).float()]).unsqueeze(0)
    img = torch.round(img * 255) / 255
    errors = [float((jpeg(q)(img) - img).abs().mean()) for q in (95, 75, 50, 10)]
    assert errors == sorted(errors)
    assert errors[0] < errors[-1]


def test_none_is_identity():
    cls = DEFENSES.get("none")
    x = torch.rand(2, 3, 8, 8)
    assert cls(cls.Config())(x) is x


def test_unknown_defense_lists_allowed():
    with pytest.raises(KeyError, match="allowed: jpeg, none"):
        DEFENSES.get("blur")
