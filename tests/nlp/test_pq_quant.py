"""Progressive quantization: integer codes, MSB/LSB planes and bit packing."""
import pytest
import torch

from slimkit_nlp.pq import dequantize, dequantize_msb, join_planes, pack, quantize, split_planes, unpack
from slimkit_nlp.pq.quant import packed_width


@pytest.mark.parametrize("msb,lsb", [(6, 4), (8, 4), (4, 4), (3, 5), (8, 8)])
def test_msb_plus_lsb_reconstructs_one_shot_quantization(msb, lsb):
    x = torch.randn(2, 3, 17, 64) * 3
    for align in (lsb, 0):  # the MSB-aligned grid the attention uses, and the plain min..max grid
        codes, scale, zero = quantize(x, msb + lsb, align)
        hi, lo = split_planes(codes, lsb)
        assert int(hi.max()) < 2 ** msb and int(lo.max()) < 2 ** lsb
        # through the packed planes, as the cache stores them
        hi2, lo2 = unpack(pack(hi, msb), msb, 64), unpack(pack(lo, lsb), lsb, 64)
        assert torch.equal(join_planes(hi2, lo2, lsb), codes)
        full = dequantize(codes, scale, zero)
        assert (full - x).abs().max() <= scale.float().max() * 0.5 + 1e-3
    codes, scale, zero = quantize(x, msb + lsb, lsb)
    hi, _ = split_planes(codes, lsb)
    full = dequantize(codes, scale, zero)
    # MSB alone, dequantized at the middle of the LSB range: within half an MSB step ...
    approx = dequantize_msb(hi, lsb, scale, zero)
    step = scale.float() * 2 ** lsb
    assert ((approx - full).abs() <= step / 2 + 1e-4).all()
    assert (approx - full).abs().mean() < (dequantize(hi << lsb, scale, zero) - full).abs().mean()
    # ... and on the aligned grid it is as good as static msb-bit quantization (same grid from
    # row min to max, up to the float16 rounding of scale and zero)
    s_codes, s_scale, s_zero = quantize(x, msb)
    static = dequantize(s_codes, s_scale, s_zero)
    assert (approx - x).abs().mean() < 1.05 * (static - x).abs().mean()
    assert torch.allclose(approx.amax(-1), x.amax(-1), atol=2e-2) and torch.allclose(approx.amin(-1), x.amin(-1),
                                                                                      atol=2e-2)


def test_lsb_zero_is_static_quantization():
    x = torch.randn(4, 32)
    codes, s, z = quantize(x, 8)
    assert torch.equal(dequantize_msb(codes, 0, s, z), dequantize(codes, s, z))


@pytest.mark.parametrize("bits", list(range(1, 17)))
def test_pack_round_trip_and_size(bits):
    for d in (64, 12):
        codes = torch.randint(0, 2 ** bits, (2, 5, d), dtype=torch.int32)
        packed = pack(codes, bits)
        assert packed.dtype == torch.uint8 and packed.shape[-1] == packed_width(d, bits)
        assert torch.equal(unpack(packed, bits, d), codes)
    # exact sizes for 64-dim rows: 64 * bits / 8 bytes
    assert pack(torch.zeros(1, 64, dtype=torch.int32), bits).numel() == 64 * bits // 8


def test_two_4bit_codes_per_byte():
    packed = pack(torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]]), 4)
    assert packed.tolist() == [[0x21, 0x43, 0x65, 0x87]]


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_token_packing_round_trips_and_matches_its_definition(bits):
    """``pack_tokens`` puts token ``k*u + i`` of channel ``c`` in bits ``bits*i ..`` of byte ``[u, c]``; the fast
    ``unpack_tokens`` equals the token-by-token reference and returns the codes, also on a non-contiguous slice."""
    from slimkit_nlp.pq.quant import pack_tokens, unpack_tokens, unpack_tokens_reference

    k = 8 // bits
    g = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 1 << bits, (2, 3, 4 * k, 6), generator=g)
    packed = pack_tokens(codes, bits)
    assert packed.dtype == torch.uint8 and packed.shape == (2, 3, 4, 6)
    u, c, i = 1, 2, k - 1   # one byte, written from the definition
    expected = sum(int(codes[0, 0, k * u + j, c]) << (bits * j) for j in range(k))
    assert int(packed[0, 0, u, c]) == expected
    assert int(codes[0, 0, k * u + i, c]) == (int(packed[0, 0, u, c]) >> (bits * i)) % (1 << bits)
    got = unpack_tokens(packed, bits)
    assert got.dtype == torch.uint8 and torch.equal(got.long(), codes)
    assert torch.equal(unpack_tokens_reference(packed, bits), codes)
    assert torch.equal(unpack_tokens(packed[:, 1:, 1:3], bits).long(), codes[:, 1:, k:3 * k])


def test_token_packing_needs_whole_bytes_of_tokens():
    from slimkit_nlp.pq.quant import pack_tokens

    with pytest.raises(ValueError, match="multiple of 4 tokens"):
        pack_tokens(torch.zeros(1, 1, 6, 8, dtype=torch.uint8), 2)
