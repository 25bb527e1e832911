"""synthetic_router_inputs with hidden="pooled" / "none": the (T, d) hidden states drawn in row blocks
(never held whole) give the logits, token ids and GrAP-pooled states of the whole draw bit for bit,
and LocMoE routes the pooled states exactly as the full ones."""
import pytest
import torch

from lshsim.dispatch import contiguous_placement
from lshsim.dispatch import synthetic
from lshsim.dispatch.routers import grap_scores, route_locmoe
from lshsim.dispatch.synthetic import _blocks_match_randn, _row_blocks, pooled_hidden, synthetic_router_inputs


def test_this_torch_draws_blocks_as_one_randn():
    assert _blocks_match_randn()


@pytest.mark.parametrize("rows,block", [(16, 16), (31, 16), (32, 16), (47, 16), (1000, 64), (4928 + 4672 * 3, 4672)])
def test_row_blocks_cover_the_rows_in_blocks_of_16_values(rows, block):
    blocks = list(_row_blocks(rows, block))
    assert blocks[0][0] == 0 and blocks[-1][1] == rows
    assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
    assert all(stop - start == block for start, stop in blocks[:-1])
    assert block <= blocks[-1][1] - blocks[-1][0] < 2 * block or len(blocks) == 1


# (tokens per rank, ranks, d, experts, skew, block values): widths that are and are not multiples of 16,
# token counts that are and are not multiples of the block rows, one block and several
CASES = [(100, 4, 64, 16, 0.0, 16 * 64), (100, 4, 64, 16, 1.5, 16 * 64), (37, 3, 40, 8, 0.0, 16 * 40 * 2),
         (250, 8, 24, 8, 0.7, 16 * 24 * 5), (64, 2, 96, 32, 0.0, 1 << 25), (512, 4, 1024, 64, 0.0, 1 << 16)]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("seed", [0, 3])
def test_block_draws_equal_the_whole_draw_bit_for_bit(monkeypatch, case, seed):
    tokens, world, d, experts, skew, block_values = case
    whole = synthetic_router_inputs(tokens, world, d, experts, seed=seed, skew=skew, vocab_size=1000)
    monkeypatch.setattr(synthetic, "BLOCK_VALUES", block_values)
    pooled = synthetic_router_inputs(tokens, world, d, experts, seed=seed, skew=skew, vocab_size=1000, hidden="pooled")
    none = synthetic_router_inputs(tokens, world, d, experts, seed=seed, skew=skew, vocab_size=1000, hidden="none")
    assert whole.hidden.shape == (tokens * world, d) and none.hidden is None
    for got in (pooled, none):
        assert torch.equal(got.logits, whole.logits)
        assert torch.equal(got.token_ids, whole.token_ids) and torch.equal(got.token_rank, whole.token_rank)
    assert torch.equal(pooled.hidden, pooled_hidden(whole.hidden, experts))


def test_locmoe_routes_the_pooled_states_as_the_full_ones(monkeypatch):
    monkeypatch.setattr(synthetic, "BLOCK_VALUES", 16 * 128)
    whole = synthetic_router_inputs(128, 8, 128, 16, seed=5)
    pooled = synthetic_router_inputs(128, 8, 128, 16, seed=5, hidden="pooled")
    assert torch.equal(grap_scores(pooled.hidden, 16), grap_scores(whole.hidden, 16))
    placement = contiguous_placement(16, 8, 4)
    a = route_locmoe(whole.hidden, placement, k=2, token_rank=whole.token_rank)
    b = route_locmoe(pooled.hidden, placement, k=2, token_rank=pooled.token_rank)
    assert torch.equal(a.expert_index, b.expert_index) and torch.equal(a.kept, b.kept)
    assert torch.equal(a.send_counts(), b.send_counts())


def test_bad_hidden_modes_are_refused():
    with pytest.raises(ValueError, match="hidden='every'"):
        synthetic_router_inputs(4, 2, 8, 4, hidden="every")
    with pytest.raises(ValueError, match="d_model=10 divisible by num_experts=4"):
        synthetic_router_inputs(4, 2, 10, 4, hidden="pooled")


def test_skipping_draws_equals_drawing_them():
    """`_generator_skip.skip` leaves a generator where drawing the numbers would: the same state bytes
    and the same next numbers, from a fresh seed and from the middle of a block of words."""
    from lshsim.dispatch import _generator_skip

    assert _generator_skip.skip_works()
    for first, numel in ((0, 16), (0, 7168 * 33), (7, 10**6 + 3), (1000, 624 * 5)):
        drawn, skipped = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
        for g in (drawn, skipped):
            if first:
                torch.randn(first, generator=g)
        torch.randn(numel, generator=drawn)
        assert _generator_skip.skip(skipped, _generator_skip.normal_draws(numel))
        assert torch.equal(drawn.get_state(), skipped.get_state())
        assert torch.equal(torch.randn(50, generator=drawn), torch.randn(50, generator=skipped))


def test_block_draws_without_the_skip_are_the_same(monkeypatch):
    """Where the generator cannot skip (no numba, another torch), the hidden states are drawn and
    dropped instead: the same inputs."""
    from lshsim.dispatch import _generator_skip

    whole = synthetic_router_inputs(100, 4, 64, 16, seed=1, skew=0.5)
    monkeypatch.setattr(synthetic, "BLOCK_VALUES", 16 * 64)
    monkeypatch.setattr(_generator_skip, "_WORKS", False)
    pooled = synthetic_router_inputs(100, 4, 64, 16, seed=1, skew=0.5, hidden="pooled")
    assert torch.equal(pooled.logits, whole.logits) and torch.equal(pooled.token_ids, whole.token_ids)
    assert torch.equal(pooled.hidden, pooled_hidden(whole.hidden, 16))


def test_blocks_drawn_ahead_are_the_blocks_drawn_in_turn_and_stop_when_left():
    from lshsim.dispatch.synthetic import _BlocksAhead, _draw_blocks

    expected = [(a, b, blk.clone()) for a, b, blk in _draw_blocks(torch.Generator().manual_seed(9), 200, 24, 32)]
    with _BlocksAhead(torch.Generator().manual_seed(9), 200, 24, 32) as blocks:
        got = [(a, b, blk.clone()) for a, b, blk in blocks]
    assert [(a, b) for a, b, _ in got] == [(a, b) for a, b, _ in expected]
    assert all(torch.equal(x[2], y[2]) for x, y in zip(got, expected))
    with _BlocksAhead(torch.Generator().manual_seed(9), 2000, 24, 32) as blocks:
        next(iter(blocks))                       # leave after one block: the helper stops
    assert not blocks.helper.is_alive()


def test_an_error_of_the_helper_reaches_the_caller():
    from lshsim.dispatch.synthetic import _BlocksAhead

    with pytest.raises(TypeError):
        with _BlocksAhead("not a generator", 64, 8, 16) as blocks:
            list(blocks)
    assert not blocks.helper.is_alive()


def test_no_skip_when_numba_is_missing_or_its_compiler_is_off(monkeypatch):
    """NUMBA_DISABLE_JIT=1 (numba's debugging switch) made the MT19937 loop run in Python: it still
    passed the self-check, then took about 1.5 ms a regeneration, 40 minutes for DeepSeek-V3's
    hidden states on 64 GPUs (branch robust3). Now the generator draws instead; without numba too."""
    import sys

    import numba

    from lshsim.dispatch import _generator_skip

    whole = synthetic_router_inputs(100, 4, 64, 16, seed=1)
    for setting in ("jit off", "no numba"):
        monkeypatch.setattr(_generator_skip, "_WORKS", None)
        monkeypatch.setattr(_generator_skip, "_KERNEL", None)
        with monkeypatch.context() as patch:
            if setting == "jit off":
                patch.setattr(numba.config, "DISABLE_JIT", True)
            else:
                patch.setitem(sys.modules, "numba", None)          # `import numba` raises ImportError
            assert _generator_skip.skip_works() is False, setting
            generator = torch.Generator().manual_seed(0)
            assert _generator_skip.skip(generator, 10**9) is False
            assert torch.equal(generator.get_state(), torch.Generator().manual_seed(0).get_state())
            patch.setattr(synthetic, "BLOCK_VALUES", 16 * 64)
            pooled = synthetic_router_inputs(100, 4, 64, 16, seed=1, hidden="pooled")
            assert torch.equal(pooled.logits, whole.logits)
    monkeypatch.setattr(_generator_skip, "_WORKS", None)
    assert _generator_skip.skip_works()


@pytest.mark.parametrize("seed", [-1, 2 ** 32, 2 ** 64, 1.5, True, "3"])
def test_a_seed_outside_torch_32_bits_is_refused(seed):
    """torch seeds its CPU generator with the low 32 bits: -1 drew seed 2^32 - 1's tokens, 2^32 seed 0's,
    2^64 stopped with torch's "Overflow when unpacking long long" naming no seed."""
    with pytest.raises(ValueError, match=r"seed=.* must be a whole number in \[0, 4294967295\]"):
        synthetic_router_inputs(4, 2, 8, 4, seed=seed)
    assert synthetic_router_inputs(4, 2, 8, 4, seed=2 ** 32 - 1).logits.shape == (8, 4)
