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
@pytest.mark.parametrize("width", [16, 6, 3])
def test_unpack_fast_float_equals_unpack_fast(bits, width):
    """The decode path's float unpacking (int32 words for 1-2 bits, per-shift planes for 4) gives exactly
    the codes ``unpack_fast`` gives, for plane widths that are and are not a multiple of 4 bytes."""
    from slimkit_nlp.pq.quant import pack_fast, unpack_fast, unpack_fast_float

    g = torch.Generator().manual_seed(bits * 100 + width)
    codes = torch.randint(0, 1 << bits, (2, 3, 5, width * 8 // bits), generator=g)
    packed = pack_fast(codes, bits)
    got = unpack_fast_float(packed, bits)
    assert got.dtype == torch.float32
    assert torch.equal(got, unpack_fast(packed, bits).float())
    assert torch.equal(got, codes.float())
    assert torch.equal(unpack_fast_float(packed[:, :, 1:4], bits), codes[:, :, 1:4].float())   # a non-contiguous view
