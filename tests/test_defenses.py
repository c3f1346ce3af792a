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
    with pytest.raises(KeyError, match="allowed: bitdepth, jpeg, none"):
        DEFENSES.get("blur")


def bitdepth(bits):
    cls = DEFENSES.get("bitdepth")
    return cls(cls.Config(bits=bits))


def test_bitdepth_levels_by_hand():
    x = torch.tensor([0.0, 0.2, 0.49, 0.51, 0.7, 1.0]).view(1, 1, 2, 3).expand(1, 3, 2, 3)
    before = x.clone()
    # 1 bit: two levels {0, 1}; 2 bits: {0, 1/3, 2/3, 1}
    assert bitdepth(1)(x)[0, 0].flatten().tolist() == [0, 0, 0, 1, 1, 1]
    expected = torch.tensor([0, 1, 1, 2, 2, 3]) / 3
    assert torch.allclose(bitdepth(2)(x)[0, 0].flatten(), expected)
    assert torch.equal(x, before)


def test_bitdepth_shape_range_distinct_values_and_monotone_distortion():
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (4, 3, 16, 16), generator=g).float() / 255
    assert torch.equal(bitdepth(8)(x), x)  # 8 bits keeps an 8-bit image
    errors = []
    for bits in (7, 6, 5, 4, 3, 2, 1):
        y = bitdepth(bits)(x)
        assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
        assert torch.unique(y).numel() <= 2**bits
        errors.append(float((y - x).abs().mean()))
    assert errors == sorted(errors) and errors[0] < errors[-1]


@pytest.mark.parametrize("name", ["jpeg", "bitdepth"])
def test_defence_levels_monotone_in_strength(name):
    # stronger levels move an image further (AIP Table 8 orders levels this way); the picture
    # is smooth with every 8-bit value present, so neither codec nor quantiser aliases
    ramp = torch.arange(256.0).view(16, 16) / 255
    img = torch.stack([ramp, ramp.T, ramp.flip(0)]).unsqueeze(0)
    levels = {
        "jpeg": [jpeg(q) for q in (90, 70, 50, 30, 10)],
        "bitdepth": [bitdepth(b) for b in range(7, 1, -1)],
    }
    errors = [float((d(img) - img).abs().mean()) for d in levels[name]]
    assert errors == sorted(errors)
