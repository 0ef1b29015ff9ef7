/* Fused decode kernels of the grouped progressive-quantization KV cache (slimkit_nlp/pq/grouped.py).
 *
 * Built at first use by native.py with the system C compiler; attention.py falls back to PyTorch ops when
 * it cannot be built. Both kernels read the packed planes directly: no unpacked or dequantized copy of the
 * cache is ever written, which is what the PyTorch path spends most of a decode step on.
 *
 * Packing (quant.pack_tokens): a plane of b-bit codes is uint8 [BH, T * b / 8, D]; byte [u, c] holds
 * channel c of the k = 8 / b tokens k*u .. k*u + k - 1, token k*u + i in bits b*i .. b*i + b - 1.
 * All tensors are contiguous; BH is batch * kv_heads; float32 unless stated.
 */
#include <stdint.h>
#include <string.h>

#define MAX_D 1024

/* Codes of token t of channel 0..d-1 of one (batch, head) plane, as floats. */
static inline void decode_row(const uint8_t *plane, int64_t t, int64_t d, int bits, float *out) {
    const int k = 8 / bits;
    const uint8_t *row = plane + (t / k) * d;
    const int shift = bits * (int)(t % k);
    const uint8_t mask = (uint8_t)((1 << bits) - 1);
    for (int64_t c = 0; c < d; c++) out[c] = (float)((row[c] >> shift) & mask);
}

/* MSB and LSB codes of token t joined: (msb << lsb_bits) | lsb, as floats. */
static inline void decode_joined_row(const uint8_t *msb, int msb_bits, const uint8_t *lsb, int lsb_bits,
                                     int64_t t, int64_t d, float *out) {
    const int km = 8 / msb_bits, kl = 8 / lsb_bits;
    const uint8_t *rm = msb + (t / km) * d, *rl = lsb + (t / kl) * d;
    const int sm = msb_bits * (int)(t % km), sl = lsb_bits * (int)(t % kl);
    const uint8_t mm = (uint8_t)((1 << msb_bits) - 1), ml = (uint8_t)((1 << lsb_bits) - 1);
    for (int64_t c = 0; c < d; c++)
        out[c] = (float)((((rm[c] >> sm) & mm) << lsb_bits) | ((rl[c] >> sl) & ml));
}

/* Attention logits of queries against quantized keys, scales folded into the queries per group.
 *
 * q     [BH, R, D]      queries (unscaled)
 * msb   uint8 [BH, T * msb_bits / 8, D]; lsb uint8 [BH, T * lsb_bits / 8, D] or NULL (then code = msb)
 * scale, zero [BH, T / G, D]   per group of G consecutive tokens and channel: key = code * scale + zero
 * out   [BH, R, T]      out[r, t] = sum_c q[r, c] * key[t, c]
 * Returns 0, or -1 when D > MAX_D.
 */
int pq_key_scores(const float *q, const uint8_t *msb, int msb_bits, const uint8_t *lsb, int lsb_bits,
                  const float *scale, const float *zero, int64_t bh, int64_t r, int64_t t, int64_t d,
                  int64_t g, float *out) {
    if (d > MAX_D) return -1;
    const int64_t n = t / g, um = t * msb_bits / 8, ul = lsb ? t * lsb_bits / 8 : 0;
    float code[MAX_D];
    float qs[r][d];
    float qz[r];
    for (int64_t p = 0; p < bh; p++) {
        const float *qp = q + p * r * d;
        const uint8_t *mp = msb + p * um * d, *lp = lsb ? lsb + p * ul * d : NULL;
        float *op = out + p * r * t;
        for (int64_t gi = 0; gi < n; gi++) {
            const float *s = scale + (p * n + gi) * d, *z = zero + (p * n + gi) * d;
            for (int64_t i = 0; i < r; i++) {
                float acc = 0.0f;
                for (int64_t c = 0; c < d; c++) {
                    qs[i][c] = qp[i * d + c] * s[c];
                    acc += qp[i * d + c] * z[c];
                }
                qz[i] = acc;
            }
            for (int64_t j = gi * g; j < (gi + 1) * g; j++) {
                if (lp) decode_joined_row(mp, msb_bits, lp, lsb_bits, j, d, code);
                else decode_row(mp, j, d, msb_bits, code);
                for (int64_t i = 0; i < r; i++) {
                    float acc = 0.0f;
                    for (int64_t c = 0; c < d; c++) acc += qs[i][c] * code[c];
                    op[i * t + j] = acc + qz[i];
                }
            }
        }
    }
    return 0;
}

/* Probabilities times quantized values, scales folded into the probabilities per token.
 *
 * p     [BH, R, ldp]    probabilities; columns 0..T-1 are read (ldp >= T: a slice of wider rows)
 * codes uint8 [BH, T * bits / 8, D]
 * scale, zero [BH, T, D / group]   per token and group of channels: value = code * scale + zero
 * out   [BH, R, D]      out[r, c] = sum_t p[r, t] * value[t, c]
 * Returns 0, or -1 when D > MAX_D or group does not divide D.
 */
int pq_value_output(const float *p, int64_t ldp, const uint8_t *codes, int bits, const float *scale,
                    const float *zero, int64_t bh, int64_t r, int64_t t, int64_t d, int64_t group, float *out) {
    if (d > MAX_D || group <= 0 || d % group) return -1;
    const int64_t nj = d / group, u = t * bits / 8;
    float code[MAX_D];
    float zsum[r][nj];
    for (int64_t b = 0; b < bh; b++) {
        const float *pb = p + b * r * ldp;
        const uint8_t *cb = codes + b * u * d;
        const float *sb = scale + b * t * nj, *zb = zero + b * t * nj;
        float *ob = out + b * r * d;
        memset(ob, 0, sizeof(float) * (size_t)(r * d));
        memset(zsum, 0, sizeof(float) * (size_t)(r * nj));
        for (int64_t j = 0; j < t; j++) {
            decode_row(cb, j, d, bits, code);
            for (int64_t i = 0; i < r; i++) {
                const float pr = pb[i * ldp + j];
                if (pr == 0.0f) continue;
                float *o = ob + i * d;
                for (int64_t q = 0; q < nj; q++) {
                    const float a = pr * sb[j * nj + q];
                    zsum[i][q] += pr * zb[j * nj + q];
                    for (int64_t c = q * group; c < (q + 1) * group; c++) o[c] += a * code[c];
                }
            }
        }
        for (int64_t i = 0; i < r; i++)
            for (int64_t q = 0; q < nj; q++)
                for (int64_t c = q * group; c < (q + 1) * group; c++) ob[i * d + c] += zsum[i][q];
    }
    return 0;
}
