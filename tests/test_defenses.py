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
    with pytest.raises(
        KeyError, match="allowed: bitdepth, denoiser, detector, jpeg, none, random_resize_pad"
    ):
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


@pytest.mark.parametrize("defense", [jpeg(50), bitdepth(3)], ids=["jpeg50", "bitdepth3"])
def test_bpda_gradient_is_the_identitys_and_forward_is_the_defence(defense):
    """BPDA (Athalye et al. 2018): an attacker differentiating through JPEG or bit depth gets
    the gradient it would get through the identity, and the forward pass is the defence's."""
    assert defense.gradient == "bpda"
    identity = DEFENSES.get("none")(DEFENSES.get("none").Config())
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (2, 3, 16, 16), generator=g).float() / 255
    weights = torch.randn(x.shape, generator=g)
    grads = []
    for d in (defense, identity):
        y = x.clone().requires_grad_(True)
        seen = d.attackable(y)
        (grad,) = torch.autograd.grad((seen * weights).pow(2).sum(), y)
        grads.append(grad)
        if d is defense:
            assert torch.equal(seen.detach(), defense(x))
            assert not torch.equal(seen.detach(), x)  # it did transform the images
    # d/dy Σ w·s(y)² = 2·w·s(y)·(ds/dy): the identity's Jacobian, at the defended point
    torch.testing.assert_close(grads[0], 2 * weights * weights * defense(x))
    torch.testing.assert_close(grads[1], 2 * weights * weights * x)
    # the backward pass itself is the identity's: the same upstream gradient passes unchanged
    y = x.clone().requires_grad_(True)
    (passed,) = torch.autograd.grad(defense.attackable(y), y, grad_outputs=weights)
    assert torch.equal(passed, weights)


def resize_pad(min_scale=0.5, seed=0):
    cls = DEFENSES.get("random_resize_pad")
    return cls(cls.Config(min_scale=min_scale, seed=seed))


def test_resize_pad_by_hand():
    """All-ones 8×8 images: at the smallest scale (0.5) the image becomes a 4×4 block of ones
    in the corner the draw picks, the rest black; at scale 1 it is left where it was."""
    ones = torch.ones(1, 3, 8, 8)
    top_left = resize_pad(0.5).transform(ones, torch.tensor([[0.0, 0.0, 0.0]]))
    bottom_right = resize_pad(0.5).transform(ones, torch.tensor([[0.0, 1.0, 1.0]]))
    block = torch.zeros(8, 8)
    block[:4, :4] = 1
    torch.testing.assert_close(top_left[0, 0], block)
    torch.testing.assert_close(bottom_right[0, 0], block.flip(0, 1))
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(resize_pad(1.0)(x), x)


def test_resize_pad_serves_each_image_its_own_draw_and_attackers_new_ones():
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, 256, (6, 3, 16, 16), generator=g).float() / 255
    defense = resize_pad(0.5)
    served = defense(x)
    # the same image, alone, in another order or another batch: served the same way
    assert torch.equal(defense(x[2:3]), served[2:3])
    assert torch.equal(defense(x.flip(0)), served.flip(0))
    # identical images share a draw; another seed draws anew
    twice = torch.cat([x[:1], x[:1]])
    assert torch.equal(defense(twice)[0], defense(twice)[1])
    assert not torch.equal(resize_pad(0.5, seed=1)(x), served)
    # black borders of different sizes: the images were not all drawn alike
    black = (served == 0).flatten(1).float().mean(1)
    assert black.unique().numel() > 1
    # an attacker's draws come from its generator: new at each call, repeated by its seed
    first = defense.attackable(x, torch.Generator().manual_seed(5))
    again = defense.attackable(x, torch.Generator().manual_seed(5))
    other = defense.attackable(x, torch.Generator().manual_seed(6))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_resize_pad_gradient_is_exact():
    """Its declared gradient is its own: autograd agrees with finite differences."""
    defense = resize_pad(0.6)
    assert defense.gradient == "exact" and defense.randomised
    x = torch.rand(2, 3, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    u = torch.rand(2, 3, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda y: defense.transform(y, u), (x.requires_grad_(True),), eps=1e-6, atol=1e-5
    )


@pytest.mark.parametrize("quality", [10, 50, 90])
def test_the_differentiable_jpeg_decodes_close_to_libjpeg(quality):
    from aipray.data.synthetic import SyntheticConfig, make_synthetic
    from aipray.defenses.jpeg import differentiable_jpeg
    from aipray.pixels import to_float

    catalog = make_synthetic(SyntheticConfig(n_users=20, n_items=40, n_cold=2, image_size=32))
    x = to_float(catalog.images[:40])
    real = jpeg(quality)(x)
    # with exact rounding it is libjpeg up to its fancy upsampling and integer DCT: about 1 of
    # 255 on average (measured 0.9-1.4), where passing the image through unchanged is 6-16 off
    exact = differentiable_jpeg(x, quality, torch.round)
    off, identity_off = (float((a - real).abs().mean() * 255) for a in (exact, x))
    assert off < 2.0 and off < identity_off / 4
    # the cubic rounding keeps it close, and lets a gradient through
    y = x.clone().requires_grad_(True)
    soft = differentiable_jpeg(y, quality)
    assert float((soft.detach() - real).abs().mean() * 255) < 2.5
    (grad,) = torch.autograd.grad(soft.sum(), y)
    assert grad.abs().sum() > 0 and not torch.allclose(grad, torch.ones_like(grad))


def test_bpda_with_an_approximation_serves_the_defence_and_passes_the_approximations_gradient():
    from aipray.defenses.jpeg import differentiable_jpeg

    g = torch.Generator().manual_seed(4)
    x = torch.randint(0, 256, (2, 3, 16, 16), generator=g).float() / 255
    weights = torch.randn(x.shape, generator=g)
    defense = jpeg(50)
    y = x.clone().requires_grad_(True)
    seen = defense.attackable(y, approximate=True)
    assert torch.equal(seen.detach(), defense(x))  # forward: libjpeg exactly
    (passed,) = torch.autograd.grad(seen, y, grad_outputs=weights)
    z = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(differentiable_jpeg(z, 50), z, grad_outputs=weights)
    torch.testing.assert_close(passed, expected)
    assert not torch.allclose(passed, weights)  # not the identity's
    # bit depth has no approximation: the identity's gradient, whatever the attacker asks
    y = x.clone().requires_grad_(True)
    (through_bits,) = torch.autograd.grad(
        bitdepth(3).attackable(y, approximate=True), y, grad_outputs=weights
    )
    assert torch.equal(through_bits, weights)
