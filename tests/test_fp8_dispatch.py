"""The fp8 dispatch wire format of the executor (DeepEP's: float8_e4m3fn values, one float32 scale
per 128 values), against hand-worked byte counts and the e4m3 rounding bound."""
from __future__ import annotations

import pytest
import torch

from lshsim.executor.comm import (FP8_BLOCK, CommContext, CommStats, all_to_all, dequantize_fp8_rows, fake_fp8,
                                  fp8_row_bytes, quantize_fp8_rows)
from lshsim.executor.workload import WorkloadConfig


def test_row_bytes_count_one_byte_per_value_and_four_per_block():
    assert fp8_row_bytes(7168) == 7168 + 4 * 56          # DeepSeek-V3's hidden size: 56 blocks
    assert fp8_row_bytes(128) == 132 and fp8_row_bytes(129) == 129 + 8 and fp8_row_bytes(1) == 5


@pytest.mark.parametrize("d_model", [1, 100, 128, 300])
def test_round_trip_within_the_e4m3_rounding_bound(d_model):
    generator = torch.Generator().manual_seed(d_model)
    x = torch.randn(64, d_model, generator=generator) * torch.logspace(-6, 3, 64).unsqueeze(1)  # 9 decades
    packed = quantize_fp8_rows(x)
    assert packed.dtype == torch.uint8 and tuple(packed.shape) == (64, fp8_row_bytes(d_model))
    blocks = -(-d_model // FP8_BLOCK)
    scale = packed[:, d_model:].contiguous().view(torch.float32)  # (64, blocks), read independently
    for b in range(blocks):
        amax = x[:, b * FP8_BLOCK:(b + 1) * FP8_BLOCK].abs().amax(dim=1).clamp(min=1e-4)
        torch.testing.assert_close(scale[:, b], amax / 448.0, rtol=2e-7, atol=0)  # x (1/448): within an ulp
    y = dequantize_fp8_rows(packed, d_model, torch.float32)
    # e4m3: 3 mantissa bits, so half an ulp is 2^-4 of the value; below the smallest normal
    # (2^-6 of the scale unit) the spacing is 2^-9 units, half of it 2^-10
    unit = scale.repeat_interleave(FP8_BLOCK, dim=1)[:, :d_model]
    bound = torch.maximum(x.abs() * 2.0 ** -4, unit * 2.0 ** -10) * (1 + 1e-6)
    assert bool(((y - x).abs() <= bound).all())
    assert float((y - x).abs().max() / x.abs().max()) > 0  # it really rounds


def test_zero_rows_and_fake_fp8_gradient():
    x = torch.zeros(3, 130)
    assert torch.equal(dequantize_fp8_rows(quantize_fp8_rows(x), 130, torch.float32), x)
    w = torch.randn(4, 256, generator=torch.Generator().manual_seed(0), requires_grad=True)
    out = fake_fp8(w)
    assert not torch.equal(out.detach(), w.detach())
    out.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))  # straight through the rounding


def test_fp8_all_to_all_on_one_rank_counts_wire_bytes_and_passes_the_gradient_back():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(10, 200, generator=generator, requires_grad=True)
    stats = CommStats(1)
    y = all_to_all(x, [10], [10], CommContext("dispatch_a2a", stats=stats, wire="fp8"))
    torch.testing.assert_close(y, dequantize_fp8_rows(quantize_fp8_rows(x.detach()), 200, torch.float32))
    assert stats.sent_bytes[("dispatch_a2a", "forward")] == [10 * fp8_row_bytes(200)]
    g = torch.randn(10, 200, generator=generator)
    y.backward(g)
    assert torch.equal(x.grad, g)
    assert stats.sent_bytes[("dispatch_a2a", "backward")] == [10 * 200 * 4]  # the gradient in float32


def test_unknown_formats_are_refused_naming_the_field():
    with pytest.raises(ValueError, match="dispatch_format"):
        WorkloadConfig(tokens_per_rank=4, d_model=8, d_ffn=8, num_experts=2, dispatch_format="fp4")
    with pytest.raises(ValueError, match="wire='int8'"):
        all_to_all(torch.zeros(2, 4), [2], [2], CommContext("x", wire="int8"))
    assert WorkloadConfig.from_dict({"tokens_per_rank": 4, "d_model": 8, "d_ffn": 8, "num_experts": 2,
                                     "dispatch_format": "fp8"}).to_dict()["dispatch_format"] == "fp8"


@pytest.mark.gpu
def test_cuda_rounds_exactly_as_the_cpu_reference():
    """The executor's GPU runs are checked against CPU references: the fp8 bytes must be the same."""
    generator = torch.Generator().manual_seed(3)
    x = (torch.randn(512, 7168, generator=generator) * 3).to(torch.bfloat16)
    packed_cpu = quantize_fp8_rows(x)
    packed_gpu = quantize_fp8_rows(x.cuda())
    assert torch.equal(packed_gpu.cpu(), packed_cpu)
    y = dequantize_fp8_rows(packed_gpu, 7168, torch.bfloat16)
    assert y.dtype == torch.bfloat16 and y.is_cuda
    assert torch.equal(y.cpu(), dequantize_fp8_rows(packed_cpu, 7168, torch.bfloat16))


def test_no_rows_to_a_peer_pack_and_unpack_to_empty_records():
    # a rank that sends no rows to a peer packs an empty (0, record) block; the (0, nb) scales of the
    # empty reduction once made the byte view fail on one rank only, and the other ranks then hung
    for d_model in (130, 136, 256):
        packed = quantize_fp8_rows(torch.zeros(0, d_model))
        assert packed.shape == (0, fp8_row_bytes(d_model)) and packed.dtype == torch.uint8
        rows = dequantize_fp8_rows(packed, d_model, torch.bfloat16)
        assert rows.shape == (0, d_model) and rows.dtype == torch.bfloat16
    assert fake_fp8(torch.zeros(0, 136)).shape == (0, 136)


def test_the_expert_phase_of_a_rank_with_no_rows_still_reaches_its_input():
    # its backward must run the dispatch all-to-all that delivered the (empty) rows, as its peers do
    from lshsim.executor.moe_ops import expert_block

    x = torch.zeros(0, 8, requires_grad=True)
    generator = torch.Generator().manual_seed(2)
    w1 = torch.randn(2, 8, 16, generator=generator, requires_grad=True)
    w2 = torch.randn(2, 16, 8, generator=generator, requires_grad=True)
    out, _ = expert_block(x, torch.zeros(2, 2, dtype=torch.long), [0, 0], w1, w2)
    assert out.shape == (0, 8)
    out.sum().backward()
    assert x.grad is not None and x.grad.shape == (0, 8)
