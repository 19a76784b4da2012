/* Quantized weights dequantized to bf16 for a prefill's GEMM (engine/quantize.py's gemm).
 *
 * Why: torch's int8/int4 CPU kernels are made for one row at a time; for the hundreds of rows of
 * a prefill a bf16 GEMM over the dequantized weight is several times faster, but dequantizing
 * with torch ops (unpack, convert, scale, each a pass over memory) cost as much as the GEMM
 * itself: a 7B-sized int4 layer, 512 rows, took 341 ms against the bf16 GEMM's 107. Here it is
 * one pass that the compiler vectorizes, over a chunk of rows small enough to stay in cache.
 * Layouts are those of engine/cpu_decode.c's header comment.
 */
#include <omp.h>
#include <stdint.h>

#include "cpu_bf16.h"

/* Rows r0..r1 of an int8 (N, K) weight with bf16 scales (N) into out (r1 - r0, K), row-major:
 * w = q * scale, rounded to bf16 (as torch's q.to(bf16) * scale rounds it). */
void dequant_int8_rows(const int8_t *restrict weight, const uint16_t *restrict scales, int64_t K,
                       int64_t r0, int64_t r1, uint16_t *restrict out, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = r0; r < r1; r++) {
        const int8_t *src = weight + r * K;
        uint16_t *dst = out + (r - r0) * K;
        const float scale = bf16_to_f32(scales[r]);
        for (int64_t k = 0; k < K; k++) dst[k] = f32_to_bf16((float)src[k] * scale);
    }
}

/* Full 64-row blocks b0..b1 of an int4 weight in torch's CPU pack ([N/64][K][32] bytes; row
 * 64b + j in the low nibble of byte j, row 64b + 32 + j in the high one) with bf16 scales and
 * zeros (K / G, N, 2), into out (K, 64 (b1 - b0)): the weight TRANSPOSED, column c holding row
 * 64 b0 + c, which is the order the pack already has its rows in (the GEMM takes either).
 * w = (q - 8) * scale + zero, rounded to bf16 once. */
void dequant_int4_blocks(const uint8_t *restrict packed, const uint16_t *restrict scales_and_zeros,
                         int64_t N, int64_t K, int64_t G, int64_t b0, int64_t b1, uint16_t *restrict out,
                         int threads) {
    const int64_t ld = (b1 - b0) * 64, groups = K / G;
#pragma omp parallel for collapse(2) num_threads(threads) schedule(static)
    for (int64_t g = 0; g < groups; g++) {
        for (int64_t b = b0; b < b1; b++) {
            float scale[64], offset[64];
            const uint16_t *sz = scales_and_zeros + (g * N + b * 64) * 2;
            for (int j = 0; j < 64; j++) {
                scale[j] = bf16_to_f32(sz[2 * j]);
                offset[j] = bf16_to_f32(sz[2 * j + 1]) - 8.0f * scale[j];
            }
            for (int64_t k = g * G; k < (g + 1) * G; k++) {
                const uint8_t *src = packed + (b * K + k) * 32;
                uint16_t *dst = out + k * ld + (b - b0) * 64;
                for (int j = 0; j < 32; j++) {
                    dst[j] = f32_to_bf16((float)(src[j] & 15) * scale[j] + offset[j]);
                    dst[32 + j] = f32_to_bf16((float)(src[j] >> 4) * scale[32 + j] + offset[32 + j]);
                }
            }
        }
    }
}
