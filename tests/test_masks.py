"""keep_mask: the cheaper dropout masks keep every element independently with probability 1 - p."""

import torch

from starlora.masks import MaskDropout, drop, keep_mask


def test_keep_mask_keeps_each_element_with_probability_one_minus_p():
    n = 1_000_000  # the standard error of a rate near 0.9 is 3e-4: 2e-3 is over 6 of them
    for p in (0.1, 0.5):
        keep = keep_mask((n,), p, "cpu", torch.Generator().manual_seed(0))
        assert keep.dtype == torch.bool and keep.shape == (n,)
        for half in (keep[0::2], keep[1::2]):  # both 32-bit halves of every 64-bit random word are uniform
            assert abs(half.double().mean().item() - (1 - p)) < 2e-3
        # neighbours independent: P(both kept) = (1 - p)^2
        assert abs((keep[:-1] & keep[1:]).double().mean().item() - (1 - p) ** 2) < 2e-3
    assert keep_mask((1000,), 0.0, "cpu").all()


def test_keep_mask_is_a_function_of_the_seed_and_odd_sizes_work():
    a = keep_mask((3, 5, 7), 0.1, "cpu", torch.Generator().manual_seed(4))
    b = keep_mask((3, 5, 7), 0.1, "cpu", torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and a.shape == (3, 5, 7)


def test_dropout_scales_kept_elements_and_zeroes_the_rest():
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    keep = torch.tensor([[True, False, True, False]])
    assert torch.equal(drop(x, keep, 0.5), torch.tensor([[2.0, 0.0, 6.0, 0.0]]))
    module = MaskDropout(0.1).eval()
    assert module(x) is x  # eval mode: identity
    module.train()
    torch.manual_seed(0)
    out = module(torch.ones(200, 300))
    assert (
        set(out.unique().tolist()) <= {0.0, torch.tensor(1 / 0.9).item()}
        and abs((out > 0).float().mean().item() - 0.9) < 0.01
    )
