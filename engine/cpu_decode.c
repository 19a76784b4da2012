/* Decoded tokens of a Llama model on the CPU, in one call: the whole forward pass of one token
 * (or of a few: a speculative draft to check) against the KV cache, in one OpenMP parallel
 * region (a barrier between dependent phases, five a layer), with no allocation and no dispatch
 * per layer.
 *
 * Why: on a small model a token is a few million multiply-adds, and what costs is per-op overhead
 * (Python, dispatch, a parallel region per kernel) and kernels that are not made for one row.
 * engine/cpu_decode.py compiles this file with the machine's C compiler (-O3 -march=native,
 * so the loops below vectorize for whatever ISA the CPU has), loads it with ctypes, and checks
 * its logits against the eager forward before it is used.
 *
 * Numbers follow the eager path: activations are rounded to bf16 wherever eager stores them as
 * bf16 (a bf16 model; the input and output of torch's int8/int4 CPU kernels, which compute in
 * bf16), sums are fp32. Weight layouts are the runtime modules' own (engine/quantize.py):
 *   F32:       column tiles, [in / tile][out][tile] (engine/cpu_linear.py's TiledFp32Linear; a
 *              tile as wide as the input is (out, in) row-major);
 *   BF16:      (out, in) row-major;
 *   INT8:      int8 (out, in) and bf16 scales (out): w = q * scale;
 *   INT4:      torch's CPU pack, [out/64][in][32] bytes (row 64b + j in the low nibble of byte j,
 *              row 64b + 32 + j in the high one), the rows past the last 64 as [in][rest/2]
 *              (two neighbouring rows a byte, the first in the low nibble); bf16 scales and zeros
 *              (in/groupsize, out, 2): w = (q - 8) * scale + zero.
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>

#include "cpu_bf16.h"
#if defined(__AVX2__)
#include <immintrin.h>
#endif

enum { KIND_F32 = 0, KIND_BF16 = 1, KIND_INT8 = 2, KIND_INT4 = 3 };
enum { MAX_TOKENS = 16 };
/* Per-thread scratch blocks are multiples of MAX_TOKENS floats: with this, each starts at the same
 * cache-line offset, so a vectorised loop peels the same way on every thread. */
_Static_assert(MAX_TOKENS % 16 == 0, "MAX_TOKENS floats must be whole cache lines");

typedef struct {
    int32_t kind, out, in, groupsize; /* groupsize: INT4's group; F32's tile width */
    const void *weight;
    const uint16_t *scales; /* INT8: (out); INT4: (in / groupsize, out, 2) */
} Linear;

typedef struct {
    Linear q, k, v, o, gate, up, down;
    const void *input_norm, *post_norm; /* (dim), in the model's dtype */
} Layer;

typedef struct {
    int32_t n_layers, dim, n_heads, n_kv_heads, head_dim, hidden, vocab, bf16; /* bf16: the model's dtype */
    float eps;
    const void *embed, *norm; /* (vocab, dim), (dim) */
    const float *rope_cos, *rope_sin; /* (positions, head_dim), rotate-half */
    Linear lm_head;
    const Layer *layers;
    void *const *keys, *const *values; /* per layer (slots, n_kv_heads, cache_len, head_dim) */
    int64_t cache_len;
    float *scratch; /* cpu_decode_scratch_floats() floats: room for MAX_TOKENS tokens */
    int32_t threads;
} Model;

/* e^x to about one unit in the last place (Cephes' expf: 2^n times a degree-6 polynomial of the
 * rest), written so that the compiler vectorizes it: libm's expf is a call per element, and the
 * softmax over a long context and SiLU over the FFN width made it a tenth of a token's time. */
static inline float exp_approx(float x) {
    x = x < -87.3f ? -87.3f : x > 88.3f ? 88.3f : x;
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round(x / ln 2) */
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;               /* x - n ln 2, in two parts */
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    uint32_t bits = (uint32_t)((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, 4);
    return p * scale;
}

static inline float load(const void *p, int bf16, int64_t i) {
    return bf16 ? bf16_to_f32(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

static inline void store(void *p, int bf16, int64_t i, float f) {
    if (bf16)
        ((uint16_t *)p)[i] = f32_to_bf16(f);
    else
        ((float *)p)[i] = f;
}

static void round_all(float *x, int n) {
    for (int i = 0; i < n; i++) x[i] = round_bf16(x[i]);
}


static inline int min_int(int a, int b) { return a < b ? a : b; }

/* [begin, end) of n items for thread t of nt. */
static void share(int n, int t, int nt, int *begin, int *end) {
    *begin = (int)((int64_t)n * t / nt);
    *end = (int)((int64_t)n * (t + 1) / nt);
}

/* A token's work is shared out a phase at a time (five a layer, then the output layer), in chunks.
 * Each thread first takes the chunks of its own contiguous share, the same rows every token (they
 * may still be in its cache), then what is left of the others' shares: a thread that the machine
 * slows (a busy core, another VM on the host) no longer holds the others up at the barrier.
 * 7B-sized layers, 2-core EPYC VM, median of 50 tokens: fp32 83.9 -> 75.2 ms, bf16 38.1 -> 33.9,
 * int4 13.1 -> 10.8; the shipped model unchanged. (Plain dynamic scheduling balanced the big
 * layers as well but cost the shipped model 10-20%: its rows moved between cores every token.)
 * A chunk is a head, or CHUNK_ROWS rows (OUTPUT_CHUNK_ROWS of the output layer): whole blocks of
 * the int4 pack. */
enum { CHUNK_ROWS = 64, OUTPUT_CHUNK_ROWS = 256 };
static int chunks_of(int rows, int size) { return (rows + size - 1) / size; }

typedef struct {
    _Alignas(64) int taken; /* chunks of this thread's share handed out so far */
} Share;                    /* (a cache line each: a thread takes from its own share without contention) */

/* The next chunk of [0, chunks) for thread id of nt, or -1 when none is left; `from` (0 at first)
 * is how many shares, starting with the thread's own, it has found empty. */
static int next_chunk(Share *shares, int chunks, int id, int nt, int *from) {
    for (; *from < nt; ++*from) {
        int owner = (id + *from) % nt, begin, end;
        share(chunks, owner, nt, &begin, &end);
        if (__atomic_load_n(&shares[owner].taken, __ATOMIC_RELAXED) >= end - begin) continue; /* (no write to a line others read) */
        int chunk = begin + __atomic_fetch_add(&shares[owner].taken, 1, __ATOMIC_RELAXED);
        if (chunk < end) return chunk;
    }
    return -1;
}

/* (id and nt: the calling thread's, in cpu_decode_tokens' parallel region) */
#define EACH_CHUNK(chunk, shares, chunks) \
    for (int from_ = 0, chunk; (chunk = next_chunk(shares, chunks, id, nt, &from_)) >= 0;)

/* One row of activations in every form a layer may take it (prepared once per phase, per thread). */
typedef struct {
    const float *f;  /* as computed: what fp32 layers take */
    float *rounded;  /* rounded to bf16: what bf16 layers and torch's int8/int4 kernels take */
    uint16_t *bits;  /* the same, as bf16 bits */
    int16_t *q16;    /* rounded, then quantized to int16: rounded ~= q16 * q16_scale */
    float q16_scale;
} Input;

enum { NEED_ROUNDED = 1, NEED_BITS = 2, NEED_Q16 = 4 };

/* The forms of its input a layer reads. */
static int needs(const Linear *l) {
    switch (l->kind) {
    case KIND_F32: return 0;
    case KIND_BF16: return NEED_ROUNDED | NEED_BITS;
    case KIND_INT8: return NEED_ROUNDED | NEED_Q16;
    default: return NEED_ROUNDED | NEED_Q16;
    }
}

static void prepare(Input *in, const float *x, int n, int need) {
    in->f = x;
    if (!need) return;
    float top = 0;
    for (int i = 0; i < n; i++) {
        in->bits[i] = f32_to_bf16(x[i]);
        in->rounded[i] = bf16_to_f32(in->bits[i]);
        top = fabsf(in->rounded[i]) > top ? fabsf(in->rounded[i]) : top;
    }
    if (!(need & NEED_Q16)) return;
    in->q16_scale = top > 0 ? top / 32767 : 1;
    const float inverse = 1 / in->q16_scale;
    for (int i = 0; i < n; i++) {
        float v = in->rounded[i] * inverse; /* |v| <= 32767: rounded half away from zero */
        in->q16[i] = (int16_t)(v + (v >= 0 ? 0.5f : -0.5f));
    }
}

/* ---- y[r - r0] = W[r] . x for rows r0..r1 ---- */

/* Four rows at a time share each load of x; `omp simd` lets the compiler reorder the fp32 sums. */
#define DOT4(LOAD)                                                                               \
    int r = r0;                                                                                  \
    for (; r + 4 <= r1; r += 4) {                                                                \
        float a0 = 0, a1 = 0, a2 = 0, a3 = 0;                                                    \
        _Pragma("omp simd reduction(+ : a0, a1, a2, a3)") for (int k = 0; k < K; k++) {          \
            a0 += x[k] * LOAD(r, k);                                                             \
            a1 += x[k] * LOAD(r + 1, k);                                                         \
            a2 += x[k] * LOAD(r + 2, k);                                                         \
            a3 += x[k] * LOAD(r + 3, k);                                                         \
        }                                                                                        \
        y[r - r0] = a0, y[r + 1 - r0] = a1, y[r + 2 - r0] = a2, y[r + 3 - r0] = a3;              \
    }                                                                                            \
    for (; r < r1; r++) {                                                                        \
        float a = 0;                                                                             \
        _Pragma("omp simd reduction(+ : a)") for (int k = 0; k < K; k++) a += x[k] * LOAD(r, k); \
        y[r - r0] = a;                                                                           \
    }

#if defined(__AVX2__) && defined(__FMA__)
static inline float sum_of_8(__m256 v) {
    __m128 half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    half = _mm_hadd_ps(half, half);
    return _mm_cvtss_f32(_mm_hadd_ps(half, half));
}

/* 8 weights of a row from `k` as fp32: bf16 ones widened (a 16-bit shift). */
static inline __m256 row_8(const void *row, int bf16, int k) {
    if (bf16)
        return _mm256_castsi256_ps(
            _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)row + k))), 16));
    return _mm256_loadu_ps((const float *)row + k);
}

/* Without AVX-512 (fp32 rows; bf16 rows also without AVX512-BF16): row . x a row at a time, four
 * 8-wide sums in flight. The plain loops below, four rows side by side, ran the shipped model's
 * token 2x (fp32) and 3.5x (bf16) slower, built for x86-64-v3 on the EPYC. `bf16` is a constant
 * where it is inlined. */
static inline __attribute__((always_inline)) float row_dot_avx2(const void *row, const int bf16, const float *x, int K) {
    __m256 a = _mm256_setzero_ps(), b = a, c = a, d = a;
    int k = 0;
    for (; k + 32 <= K; k += 32) {
        a = _mm256_fmadd_ps(row_8(row, bf16, k), _mm256_loadu_ps(x + k), a);
        b = _mm256_fmadd_ps(row_8(row, bf16, k + 8), _mm256_loadu_ps(x + k + 8), b);
        c = _mm256_fmadd_ps(row_8(row, bf16, k + 16), _mm256_loadu_ps(x + k + 16), c);
        d = _mm256_fmadd_ps(row_8(row, bf16, k + 24), _mm256_loadu_ps(x + k + 24), d);
    }
    for (; k + 8 <= K; k += 8) a = _mm256_fmadd_ps(row_8(row, bf16, k), _mm256_loadu_ps(x + k), a);
    float sum = sum_of_8(_mm256_add_ps(_mm256_add_ps(a, b), _mm256_add_ps(c, d)));
    for (; k < K; k++) sum += load(row, bf16, k) * x[k];
    return sum;
}
#endif

#if defined(__AVX512F__)
/* Keep a loaded vector in a register: without this GCC re-reads each weight vector from memory for
 * every token it multiplies (it judged the registers too few), which made the loads, not the
 * multiply-adds, the limit. */
#define IN_REGISTER(v) __asm__("" : "+v"(v))

/* Ask for the weights `rows_ahead` rows past `at` into L2. With several tokens' work per row the
 * hardware prefetchers alone fell behind: two rows side by side for four tokens streamed 55 MB
 * of fp32 weights at 8 GB/s, a row alone at 20 (Zen 4, one thread); with this, at 22 for both. */
static inline void prefetch_rows_ahead(const void *at, int64_t row_bytes, int rows_ahead, int bytes) {
    /* (Past a layer's last row this points past its weights: an integer until it is a hint.) */
    const char *p = (const char *)((uintptr_t)at + (uintptr_t)(row_bytes * rows_ahead));
    /* (locality 2: prefetcht1. GCC 12 dropped _mm_prefetch's prefetches in this file, this it keeps.) */
    for (int line = 0; line < bytes; line += 64) __builtin_prefetch(p + line, 0, 2);
}
enum { PREFETCH_ROWS = 16 };

/* y[t * ld + i] = W[row i] . x_t for NR <= 2 rows and NT <= 4 tokens (a draft checked at once),
 * each weight vector loaded once for all the tokens and each x vector once for both rows: 12 loads
 * for 16 multiply-adds, where a token at a time takes 2 loads for each. Every sum is taken in the
 * same order whatever NR and NT (two sums in flight, 16 wide, the same tail and reduction), so a
 * token checked in a draft gets the bits it gets decoded alone (gemv_f32 is this with one row and
 * one token), and greedy output with prompt lookup is exactly that without it. NR and NT are
 * constants where it is inlined: the arrays below then live in registers. */
static inline __attribute__((always_inline)) void f32_block(const float *w, int K, const Input *in, float *y, int ld,
                                                            const int NR, const int NT) {
    __m512 a[2][4], b[2][4];
    for (int i = 0; i < NR; i++)
        for (int t = 0; t < NT; t++) a[i][t] = b[i][t] = _mm512_setzero_ps();
    int k = 0;
    for (; k + 32 <= K; k += 32) {
        __m512 wa[2], wb[2];
        for (int i = 0; i < NR; i++) {
            const float *row = w + (int64_t)i * K + k;
            if (NT > 1) prefetch_rows_ahead(row, (int64_t)K * 4, PREFETCH_ROWS, 128);
            wa[i] = _mm512_loadu_ps(row), wb[i] = _mm512_loadu_ps(row + 16);
            IN_REGISTER(wa[i]);
            IN_REGISTER(wb[i]);
        }
        for (int t = 0; t < NT; t++) {
            __m512 xa = _mm512_loadu_ps(in[t].f + k), xb = _mm512_loadu_ps(in[t].f + k + 16);
            IN_REGISTER(xa);
            IN_REGISTER(xb);
            for (int i = 0; i < NR; i++) {
                a[i][t] = _mm512_fmadd_ps(wa[i], xa, a[i][t]);
                b[i][t] = _mm512_fmadd_ps(wb[i], xb, b[i][t]);
            }
        }
    }
    for (; k + 16 <= K; k += 16)
        for (int i = 0; i < NR; i++)
            for (int t = 0; t < NT; t++)
                a[i][t] = _mm512_fmadd_ps(_mm512_loadu_ps(w + (int64_t)i * K + k), _mm512_loadu_ps(in[t].f + k), a[i][t]);
    for (int i = 0; i < NR; i++)
        for (int t = 0; t < NT; t++) {
            const float *row = w + (int64_t)i * K, *x = in[t].f;
            float sum = _mm512_reduce_add_ps(_mm512_add_ps(a[i][t], b[i][t]));
            for (int j = k; j < K; j++) sum += row[j] * x[j];
            y[t * ld + i] = sum;
        }
}

/* A row at a time: the weights then stream through memory in one sequence, which the prefetchers
 * follow at twice the rate of four rows side by side (Zen 4, 2 threads, 36 layers of 1024x384:
 * 40 against 17-20 GB/s). */
static void gemv_f32(const float *w, const Input *in, float *y, int K, int r0, int r1) {
    for (int r = r0; r < r1; r++) f32_block(w + (int64_t)r * K, K, in, y + (r - r0), 1, 1, 1);
}
#elif defined(__AVX2__) && defined(__FMA__)
static void gemv_f32(const float *w, const Input *in, float *y, int K, int r0, int r1) {
    for (int r = r0; r < r1; r++) y[r - r0] = row_dot_avx2(w + (int64_t)r * K, 0, in->f, K);
}
#else
static void gemv_f32(const float *w, const Input *in, float *y, int K, int r0, int r1) {
    const float *x = in->f;
#define LOAD_F32(row, k) w[(int64_t)(row) * K + (k)]
    DOT4(LOAD_F32)
}
#endif

#if defined(__AVX512BF16__)
/* bf16 x bf16 products summed in fp32 by the CPU's bf16 dot-product instruction, 32 a step:
 * 2.5-3x a converting loop on a Zen 4 core. The products are exact, as in eager. As f32_block:
 * NR <= 2 rows by NT <= 4 tokens, every sum in one order whatever NR and NT. */
static inline __attribute__((always_inline)) void bf16_block(const uint16_t *w, int K, const Input *in, float *y,
                                                             int ld, const int NR, const int NT) {
    const int vectors = K / 32 * 32;
    __m512 acc[2][4], more[2][4];
    for (int i = 0; i < NR; i++)
        for (int t = 0; t < NT; t++) acc[i][t] = more[i][t] = _mm512_setzero_ps();
    int k = 0;
    for (; k + 64 <= vectors; k += 64) { /* two sums in flight */
        __m512i wa[2], wb[2];
        for (int i = 0; i < NR; i++) {
            const uint16_t *row = w + (int64_t)i * K + k;
            if (NT > 1) prefetch_rows_ahead(row, (int64_t)K * 2, PREFETCH_ROWS, 128);
            wa[i] = _mm512_loadu_si512(row), wb[i] = _mm512_loadu_si512(row + 32);
            IN_REGISTER(wa[i]);
            IN_REGISTER(wb[i]);
        }
        for (int t = 0; t < NT; t++) {
            __m512i xa = _mm512_loadu_si512(in[t].bits + k), xb = _mm512_loadu_si512(in[t].bits + k + 32);
            IN_REGISTER(xa);
            IN_REGISTER(xb);
            for (int i = 0; i < NR; i++) {
                acc[i][t] = _mm512_dpbf16_ps(acc[i][t], (__m512bh)wa[i], (__m512bh)xa);
                more[i][t] = _mm512_dpbf16_ps(more[i][t], (__m512bh)wb[i], (__m512bh)xb);
            }
        }
    }
    for (; k < vectors; k += 32)
        for (int i = 0; i < NR; i++)
            for (int t = 0; t < NT; t++)
                acc[i][t] = _mm512_dpbf16_ps(acc[i][t], (__m512bh)_mm512_loadu_si512(w + (int64_t)i * K + k),
                                             (__m512bh)_mm512_loadu_si512(in[t].bits + k));
    for (int i = 0; i < NR; i++)
        for (int t = 0; t < NT; t++) {
            const uint16_t *row = w + (int64_t)i * K;
            float sum = _mm512_reduce_add_ps(_mm512_add_ps(acc[i][t], more[i][t]));
            for (int j = vectors; j < K; j++) sum += bf16_to_f32(row[j]) * in[t].rounded[j];
            y[t * ld + i] = sum;
        }
}

static void gemv_bf16(const uint16_t *w, const Input *in, float *y, int K, int r0, int r1) {
    for (int r = r0; r < r1; r++) bf16_block(w + (int64_t)r * K, K, in, y + (r - r0), 1, 1, 1);
}
#elif defined(__AVX2__) && defined(__FMA__)
static void gemv_bf16(const uint16_t *w, const Input *in, float *y, int K, int r0, int r1) {
    for (int r = r0; r < r1; r++) y[r - r0] = row_dot_avx2(w + (int64_t)r * K, 1, in->rounded, K);
}
#else
static void gemv_bf16(const uint16_t *w, const Input *in, float *y, int K, int r0, int r1) {
    const float *x = in->rounded;
#define LOAD_BF16(row, k) bf16_to_f32(w[(int64_t)(row) * K + (k)])
    DOT4(LOAD_BF16)
}
#endif

/* int8 weights times the activations as int16 (the activations keep 15 bits against their
 * largest, finer than the bf16 rounding they already had), summed in int32 and scaled at the end;
 * the output is rounded to bf16 as torch's kernel rounds it. */
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
/* With AVX512-VNNI: 32 products a step, summed in pairs into 16 int32 lanes, flushed to fp32
 * every 4,096 inputs (a lane then holds at most 256 x 32767 x 128 < 2^31). */
static void gemv_int8(const int8_t *w, const uint16_t *scales, const Input *in, float *y, int K, int r0, int r1) {
    enum { FLUSH = 4096 };
    const int16_t *x = in->q16;
    const int vectors = K / 32 * 32;
    for (int r = r0; r < r1; r++) {
        const int8_t *row = w + (int64_t)r * K;
        __m512 total = _mm512_setzero_ps();
        for (int k0 = 0; k0 < vectors; k0 += FLUSH) {
            int end = k0 + FLUSH < vectors ? k0 + FLUSH : vectors;
            __m512i acc = _mm512_setzero_si512();
            for (int k = k0; k < end; k += 32) {
                __m512i weights = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(row + k)));
                acc = _mm512_dpwssd_epi32(acc, weights, _mm512_loadu_si512(x + k));
            }
            total = _mm512_add_ps(total, _mm512_cvtepi32_ps(acc));
        }
        float sum = _mm512_reduce_add_ps(total);
        for (int k = vectors; k < K; k++) sum += (float)((int32_t)x[k] * row[k]);
        y[r - r0] = sum * in->q16_scale * bf16_to_f32(scales[r]);
    }
}
#else
/* Integer sums flushed to fp32 every 256 inputs so that they cannot overflow
 * (256 x 32767 x 128 < 2^31): three times the speed of converting every weight to fp32 (one
 * Zen 4 core: 25 against 8 GB/s). */
static void gemv_int8(const int8_t *w, const uint16_t *scales, const Input *in, float *y, int K, int r0, int r1) {
    enum { FLUSH = 256 };
    const int16_t *x = in->q16;
    for (int r = r0; r < r1; r++) {
        const int8_t *row = w + (int64_t)r * K;
        float total = 0;
        for (int k0 = 0; k0 < K; k0 += FLUSH) {
            int end = k0 + FLUSH < K ? k0 + FLUSH : K;
            int32_t acc = 0;
            for (int k = k0; k < end; k++) acc += (int32_t)x[k] * row[k];
            total += (float)acc;
        }
        y[r - r0] = total * in->q16_scale * bf16_to_f32(scales[r]);
    }
}
#endif

/* int4_blocks' sums of 16-bit multiply-adds, 64 rows of a block: with AVX512-BW four accumulators
 * of 16 lanes, with AVX2 eight of 8 (each source vector's two 128-bit halves apart). Stored in
 * that order, both put row j of a block in the same place of `sums` (see lane_of_row). */
#if defined(__AVX512BW__)
enum { INT4_ACCS = 4 };
typedef __m512i Int4Acc;
static inline Int4Acc int4_pair(uint32_t both) { return _mm512_set1_epi32((int32_t)both); }
/* acc[s] += the 32 bytes of `bytes` as 16-bit pairs (one per row) times the activations' pair */
static inline void int4_add(Int4Acc *acc, int s, __m256i bytes, Int4Acc pair) {
#if defined(__AVX512VNNI__)
    acc[s] = _mm512_dpwssd_epi32(acc[s], _mm512_cvtepu8_epi16(bytes), pair);
#else
    acc[s] = _mm512_add_epi32(acc[s], _mm512_madd_epi16(_mm512_cvtepu8_epi16(bytes), pair));
#endif
}
static inline void int4_store(int32_t *sums, const Int4Acc *acc) {
    for (int i = 0; i < INT4_ACCS; i++) _mm512_storeu_si512(sums + 16 * i, acc[i]);
}
#elif defined(__AVX2__)
enum { INT4_ACCS = 8 };
typedef __m256i Int4Acc;
static inline Int4Acc int4_pair(uint32_t both) { return _mm256_set1_epi32((int32_t)both); }
static inline void int4_add(Int4Acc *acc, int s, __m256i bytes, Int4Acc pair) {
    __m256i low = _mm256_cvtepu8_epi16(_mm256_castsi256_si128(bytes)), high = _mm256_cvtepu8_epi16(_mm256_extracti128_si256(bytes, 1));
    acc[2 * s] = _mm256_add_epi32(acc[2 * s], _mm256_madd_epi16(low, pair));
    acc[2 * s + 1] = _mm256_add_epi32(acc[2 * s + 1], _mm256_madd_epi16(high, pair));
}
static inline void int4_store(int32_t *sums, const Int4Acc *acc) {
    for (int i = 0; i < INT4_ACCS; i++) _mm256_storeu_si256((__m256i *)(sums + 8 * i), acc[i]);
}
#endif

#if defined(__AVX512BW__) || defined(__AVX2__)
/* Rows r0..r1 of torch's CPU int4 pack, for whole blocks of 64 rows, in 16-bit integers: the
 * bytes of inputs k and k + 1 interleaved, so that each 16-bit pair (q_k, q_k+1) of a row meets
 * the activations' pair (x_k, x_k+1) in one multiply-add (x as q16, as for int8). Twice the rows a
 * step of the float loop below. Per group: y += scale * sum(x q) + (zero - 8 scale) * sum(x). */
static void int4_blocks(const uint8_t *packed, const uint16_t *sz, const Input *in, float *y, int N, int K, int G,
                        int r0, int r1) {
    /* Which lane of which accumulator holds row j of a block: the unpacks work in 128-bit halves. */
    int32_t lane_of_row[64];
    for (int j = 0; j < 64; j++) {
        int lane = j % 32, part = (j >= 32 ? 2 : 0) + (lane % 16 >= 8);
        lane_of_row[j] = part * 16 + lane % 8 + (lane >= 16 ? 8 : 0);
    }
    const int16_t *x = in->q16;
    const __m256i nibble = _mm256_set1_epi8(15);
    float xsums[K / G];
    for (int g = 0; g < K / G; g++) {
        int32_t total = 0;
        for (int k = g * G; k < (g + 1) * G; k++) total += x[k];
        xsums[g] = (float)total;
    }
    for (int b = r0 / 64 * 64; b < r1; b += 64) {
        const uint8_t *block = packed + (int64_t)b * K / 2; /* (K, 32) bytes */
        float rows[64] = {0};
        for (int g0 = 0; g0 < K; g0 += G) {
            Int4Acc acc[INT4_ACCS];
            for (int i = 0; i < INT4_ACCS; i++) acc[i] = int4_pair(0);
            for (int k = g0; k < g0 + G; k += 2) {
                __m256i a = _mm256_loadu_si256((const __m256i *)(block + (int64_t)k * 32));
                __m256i c = _mm256_loadu_si256((const __m256i *)(block + (int64_t)(k + 1) * 32));
                /* bytes j of a and c side by side: lanes j = 0-7, 16-23 (low), 8-15, 24-31 (high) */
                __m256i low = _mm256_unpacklo_epi8(a, c), high = _mm256_unpackhi_epi8(a, c);
                uint32_t both = (uint32_t)(uint16_t)x[k] | (uint32_t)(uint16_t)x[k + 1] << 16;
                const Int4Acc pair = int4_pair(both);
                int4_add(acc, 0, _mm256_and_si256(low, nibble), pair);
                int4_add(acc, 1, _mm256_and_si256(high, nibble), pair);
                int4_add(acc, 2, _mm256_and_si256(_mm256_srli_epi16(low, 4), nibble), pair);
                int4_add(acc, 3, _mm256_and_si256(_mm256_srli_epi16(high, 4), nibble), pair);
            }
            int32_t sums[64];
            int4_store(sums, acc);
            const uint16_t *group = sz + ((int64_t)(g0 / G) * N + b) * 2; /* (scale, zero) of each row */
            const float xsum = xsums[g0 / G];
#pragma omp simd
            for (int j = 0; j < 64; j++) {
                float scale = bf16_to_f32(group[2 * j]), zero = bf16_to_f32(group[2 * j + 1]);
                rows[j] += scale * (float)sums[lane_of_row[j]] + (zero - 8 * scale) * xsum;
            }
        }
        for (int j = 0; j < 64; j++)
            if (b + j >= r0 && b + j < r1) y[b + j - r0] = rows[j] * in->q16_scale;
    }
}
#endif

/* Rows r0..r1 of torch's CPU int4 pack (a block of 64 rows is computed whole: callers share rows
 * in multiples of 64, and heads of 64 or 128 rows line up with blocks).
 * Per group of inputs: acc = sum x * q over the group, then y += scale * acc + (zero - 8 scale) * sum x. */
static void int4_float(const uint8_t *packed, const uint16_t *sz, const Input *in, float *y, int N, int K, int G,
                      int r0, int r1) {
    const float *x = in->rounded;
    int full = N / 64 * 64;
    for (int i = r0; i < r1; i++) y[i - r0] = 0;
    for (int g0 = 0; g0 < K; g0 += G) {
        float xsum = 0;
        for (int k = g0; k < g0 + G; k++) xsum += x[k];
        const uint16_t *group = sz + (int64_t)(g0 / G) * N * 2;
        for (int b = r0 / 64 * 64; b < r1 && b < full; b += 64) {
            const uint8_t *block = packed + (int64_t)b * K / 2; /* (K, 32) bytes */
            float lo[32] = {0}, hi[32] = {0};
            for (int k = g0; k < g0 + G; k++) {
                const uint8_t *bytes = block + (int64_t)k * 32;
                float xk = x[k];
#pragma omp simd
                for (int j = 0; j < 32; j++) {
                    lo[j] += xk * (float)(bytes[j] & 15);
                    hi[j] += xk * (float)(bytes[j] >> 4);
                }
            }
            for (int j = 0; j < 64; j++) {
                int row = b + j;
                if (row < r0 || row >= r1) continue;
                float scale = bf16_to_f32(group[2 * row]), zero = bf16_to_f32(group[2 * row + 1]);
                y[row - r0] += scale * (j < 32 ? lo[j] : hi[j - 32]) + (zero - 8 * scale) * xsum;
            }
        }
        if (r1 > full) { /* the tail: [K][(N - full) / 2] bytes, two rows a byte */
            const uint8_t *tail = packed + (int64_t)full * K / 2;
            int pairs = (N - full) / 2;
            for (int row = full > r0 ? full : r0; row < r1; row++) {
                int p = (row - full) / 2, shift = ((row - full) & 1) * 4;
                float acc = 0;
                for (int k = g0; k < g0 + G; k++) acc += x[k] * (float)((tail[(int64_t)k * pairs + p] >> shift) & 15);
                float scale = bf16_to_f32(group[2 * row]), zero = bf16_to_f32(group[2 * row + 1]);
                y[row - r0] += scale * acc + (zero - 8 * scale) * xsum;
            }
        }
    }
}

/* Rows r0..r1 of an int4 layer: whole blocks by int4_blocks where the CPU has AVX512-BW or AVX2,
 * the rest (and everything elsewhere) by the float loop. */
static void gemv_int4(const uint8_t *packed, const uint16_t *sz, const Input *in, float *y, int N, int K, int G,
                      int r0, int r1) {
#if defined(__AVX512BW__) || defined(__AVX2__)
    int full = N / 64 * 64, split = r1 < full ? r1 : full;
    if (r0 < split) int4_blocks(packed, sz, in, y, N, K, G, r0, split);
    if (r1 > full) int4_float(packed, sz, in, y + ((full > r0 ? full : r0) - r0), N, K, G, full > r0 ? full : r0, r1);
#else
    int4_float(packed, sz, in, y, N, K, G, r0, r1);
#endif
}

/* One of f32_block / bf16_block with NR and NT as constants (each case is its own unrolled kernel). */
#define BLOCK_CASES(BLOCK, W, NR, NT)                      \
    switch ((NR) * 4 + (NT)) {                             \
    case 5: BLOCK(W, K, in + t, out, ld, 1, 1); break;     \
    case 6: BLOCK(W, K, in + t, out, ld, 1, 2); break;     \
    case 7: BLOCK(W, K, in + t, out, ld, 1, 3); break;     \
    case 8: BLOCK(W, K, in + t, out, ld, 1, 4); break;     \
    case 9: BLOCK(W, K, in + t, out, ld, 2, 1); break;     \
    case 10: BLOCK(W, K, in + t, out, ld, 2, 2); break;    \
    case 11: BLOCK(W, K, in + t, out, ld, 2, 3); break;    \
    default: BLOCK(W, K, in + t, out, ld, 2, 4); break;    \
    }

/* Every row pair and token group of rows r0..r1 by BLOCK, the weights as TYPE. */
#define BLOCKS(BLOCK, TYPE)                                                                  \
    for (int r = r0; r < r1; r += 2)                                                         \
        for (int t = 0; t < T; t += 4) {                                                     \
            const TYPE *rows = (const TYPE *)l->weight + (int64_t)r * K;                     \
            float *out = y + (int64_t)t * ld + (r - r0);                                     \
            BLOCK_CASES(BLOCK, rows, r1 - r > 1 ? 2 : 1, T - t > 3 ? 4 : T - t)              \
        }

/* Rows r0..r1 of an fp32 or bf16 layer for T tokens, y[t * ld + r - r0]: two rows by up to four
 * tokens at a time. Returns 0 where this build has no such kernel (the caller goes token by token). */
static int tokens_rows(const Linear *l, const Input *in, int T, float *y, int ld, int r0, int r1) {
    const int K = l->in;
#if defined(__AVX512F__)
    if (l->kind == KIND_F32) {
        BLOCKS(f32_block, float)
        return 1;
    }
#endif
#if defined(__AVX512BF16__)
    if (l->kind == KIND_BF16) {
        BLOCKS(bf16_block, uint16_t)
        return 1;
    }
#endif
    (void)l, (void)in, (void)T, (void)y, (void)ld, (void)r0, (void)r1, (void)K;
    return 0;
}

enum { F32_BLOCK_ROWS = 16 };

/* Rows r0..r1 of an fp32 layer in column tiles for T tokens: a tile at a time, its rows r0..r1 one
 * sequential stream against the tile's slice of the input (small enough to stay in L1), each
 * row's sum the tiles' sums added in order. Every token takes the same order, checked in a draft
 * (tokens_rows) or alone (gemv_f32): the bits are the same. */
static void f32_rows(const Linear *l, const Input *in, int T, float *y, int ld, int r0, int r1) {
    const int tile = l->groupsize;
    Input slice_in[MAX_TOKENS];
    float sums[MAX_TOKENS * F32_BLOCK_ROWS];
    for (int k0 = 0; k0 < l->in; k0 += tile) {
        const Linear slice = {KIND_F32, l->out, tile, tile, (const float *)l->weight + (int64_t)k0 * l->out, NULL};
        for (int t = 0; t < T; t++) slice_in[t].f = in[t].f + k0;
        for (int b = r0; b < r1; b += F32_BLOCK_ROWS) {
            const int e = min_int(b + F32_BLOCK_ROWS, r1), first = k0 == 0;
            float *out = first ? y + (b - r0) : sums; /* the first tile's sums are the start */
            const int out_ld = first ? ld : F32_BLOCK_ROWS;
            if (!(T > 1 && tokens_rows(&slice, slice_in, T, out, out_ld, b, e)))
                for (int t = 0; t < T; t++) gemv_f32(slice.weight, &slice_in[t], out + (int64_t)t * out_ld, tile, b, e);
            if (!first)
                for (int t = 0; t < T; t++)
                    for (int r = b; r < e; r++) y[(int64_t)t * ld + (r - r0)] += sums[t * F32_BLOCK_ROWS + (r - b)];
        }
    }
}

/* Rows r0..r1 of one linear layer for T tokens: y[t * ld + r - r0] = W[r] . in[t], rounded to bf16
 * where eager's output is bf16 (every layer but an fp32 one). A block of rows is multiplied by
 * every token before the next block is read, so a draft of several tokens reads the weights once. */
static void linear_rows(const Linear *l, const Input *in, int T, float *y, int ld, int r0, int r1) {
    if (l->kind == KIND_F32) {
        f32_rows(l, in, T, y, ld, r0, r1);
        return;
    }
    const int block = l->kind == KIND_INT4 ? 64 : 16;
    for (int b = r0; b < r1; b += block) {
        int e = b + block < r1 ? b + block : r1;
        if (T > 1 && tokens_rows(l, in, T, y + (b - r0), ld, b, e)) {
            for (int t = 0; t < T; t++) round_all(y + (int64_t)t * ld + (b - r0), e - b);
            continue;
        }
        for (int t = 0; t < T; t++) {
            float *out = y + (int64_t)t * ld + (b - r0);
            switch (l->kind) {
            case KIND_BF16: gemv_bf16(l->weight, &in[t], out, l->in, b, e); break;
            case KIND_INT8: gemv_int8(l->weight, l->scales, &in[t], out, l->in, b, e); break;
            default: gemv_int4(l->weight, l->scales, &in[t], out, l->out, l->in, l->groupsize, b, e); break;
            }
            round_all(out, e - b);
        }
    }
}

/* out = RMSNorm(x) * weight, rounded where the model is bf16 (as the eager RMSNorm does). */
static void rms_norm(const Model *m, const float *x, const void *weight, float *out) {
    float squares = 0;
    for (int i = 0; i < m->dim; i++) squares += x[i] * x[i];
    float inv = 1.0f / sqrtf(squares / m->dim + m->eps);
    for (int i = 0; i < m->dim; i++) {
        float normed = m->bf16 ? round_bf16(x[i] * inv) : x[i] * inv;
        float scaled = load(weight, m->bf16, i) * normed;
        out[i] = m->bf16 ? round_bf16(scaled) : scaled;
    }
}

/* Rotate-half RoPE of one head in place, at position pos. */
static void rope(const Model *m, float *v, int64_t pos) {
    int half = m->head_dim / 2;
    const float *c = m->rope_cos + pos * m->head_dim, *s = m->rope_sin + pos * m->head_dim;
    for (int i = 0; i < half; i++) {
        float a = v[i], b = v[i + half];
        v[i] = a * c[i] - b * s[i];
        v[i + half] = b * c[i + half] + a * s[i + half];
    }
    if (m->bf16) round_all(v, m->head_dim);
}

/* Fused where the CPU fuses, in every copy of a loop: a contraction left to the compiler could
 * differ between a loop's vectorised body and its scalar remainder. */
#if defined(FP_FAST_FMAF)
#define MULTIPLY_ADD(a, b, c) fmaf(a, b, c)
#else
#define MULTIPLY_ADD(a, b, c) ((c) + (a) * (b))
#endif

/* q . k for one cached position, its sum always in one order. Left to the compiler (`omp simd`,
 * which lets it reorder the sum), the loop inlined in attend's loop over a draft's tokens summed a
 * token in another order than the same token alone (an x86-64-v3 build, head_dim 36; which of
 * GCC's choices differed was not pinned down). So: written out for whole 16-float vectors (the
 * compiler's reduction epilogue for a loop this short also cost as much as the loop), else the
 * AVX2 row dot product, else a plain loop, which the compiler may vectorise only in order. */

static inline float dot_f32(const float *q, const float *k, int n) {
#if defined(__AVX512F__)
    if (n % 16 == 0) {
        __m512 acc = _mm512_setzero_ps();
        for (int i = 0; i < n; i += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(q + i), _mm512_loadu_ps(k + i), acc);
        return _mm512_reduce_add_ps(acc);
    }
#endif
#if defined(__AVX2__) && defined(__FMA__)
    return row_dot_avx2(k, 0, q, n);
#else
    float dot = 0;
    for (int i = 0; i < n; i++) dot = MULTIPLY_ADD(q[i], k[i], dot);
    return dot;
#endif
}

static inline float dot_bf16(const float *q, const uint16_t *k, int n) {
#if defined(__AVX512F__)
    if (n % 16 == 0) {
        __m512 acc = _mm512_setzero_ps();
        for (int i = 0; i < n; i += 16) {
            __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(k + i)));
            acc = _mm512_fmadd_ps(_mm512_loadu_ps(q + i), _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16)), acc);
        }
        return _mm512_reduce_add_ps(acc);
    }
#endif
#if defined(__AVX2__) && defined(__FMA__)
    return row_dot_avx2(k, 1, q, n);
#else
    float dot = 0;
    for (int i = 0; i < n; i++) dot = MULTIPLY_ADD(q[i], bf16_to_f32(k[i]), dot);
    return dot;
#endif
}

/* s[p] = exp(s[p] - most) for p < n, returning their sum. Not inlined: one copy of the loop, so
 * its order (vectorised, peeled by alignment) depends on n and s alone, whichever token calls. */
static __attribute__((noinline)) float exp_and_sum(float *s, int64_t n, float most) {
    float sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t p = 0; p < n; p++) sum += (s[p] = exp_approx(s[p] - most));
    return sum;
}

/* Floats between two tokens' attention scores: whole cache lines, so that every token's scores
 * sit as the first token's do (a vectorised sum may peel its loop by alignment). */
static int64_t score_stride(const Model *m) { return (m->cache_len + 15) / 16 * 16; }

/* Attention of query head h for T tokens at positions first..first + T - 1, token t seeing
 * positions 0..first + t of its key/value head. Token t's rotated query is at q + t * ld on entry,
 * its output there on return. Each key and value row is read once for all the tokens (checking a
 * draft of T reads the cache as often as one token does), and each token's sums are taken in the
 * order they are alone: the same bits as decoding it by itself. work: MAX_TOKENS x score_stride
 * floats for the scores, then T x head_dim output sums (attention_floats). */
static void attend(const Model *m, int h, int T, int64_t first, const void *keys, const void *values, float *work,
                   float *q, int ld) {
    const int HD = m->head_dim;
    const int64_t stride = score_stride(m);
    float *s = work, *sums = work + MAX_TOKENS * stride;
    const int64_t base = (int64_t)(h / (m->n_heads / m->n_kv_heads)) * m->cache_len * HD;
    const float scale = 1.0f / sqrtf((float)HD);
    float top[MAX_TOKENS], total[MAX_TOKENS];
    for (int t = 0; t < T; t++) top[t] = -INFINITY;
    for (int64_t p = 0; p < first + T; p++) {
        const void *key = m->bf16 ? (const void *)((const uint16_t *)keys + base + p * HD)
                                  : (const void *)((const float *)keys + base + p * HD);
        for (int t = p > first ? (int)(p - first) : 0; t < T; t++) { /* the tokens that see p */
            const float *query = q + (int64_t)t * ld;
            float score = (m->bf16 ? dot_bf16(query, key, HD) : dot_f32(query, key, HD)) * scale;
            s[t * stride + p] = score;
            top[t] = score > top[t] ? score : top[t];
        }
    }
    for (int t = 0; t < T; t++) total[t] = exp_and_sum(s + t * stride, first + t + 1, top[t]);
    memset(sums, 0, (size_t)T * HD * sizeof(float));
    for (int64_t p = 0; p < first + T; p++) {
        for (int t = p > first ? (int)(p - first) : 0; t < T; t++) {
            float w = s[t * stride + p] / total[t], *a = sums + t * HD; /* (element-wise: any alignment) */
            if (m->bf16) {
                const uint16_t *v = (const uint16_t *)values + base + p * HD;
#pragma omp simd
                for (int i = 0; i < HD; i++) a[i] += w * bf16_to_f32(v[i]);
            } else {
                const float *v = (const float *)values + base + p * HD;
#pragma omp simd
                for (int i = 0; i < HD; i++) a[i] += w * v[i];
            }
        }
    }
    for (int t = 0; t < T; t++)
        for (int i = 0; i < HD; i++) q[(int64_t)t * ld + i] = m->bf16 ? round_bf16(sums[t * HD + i]) : sums[t * HD + i];
}

/* A thread's room for attend: every token's scores, then every token's output sums. */
static size_t attention_floats(const Model *m) { return (size_t)MAX_TOKENS * (score_stride(m) + m->head_dim); }

static int widest(const Model *m) { return (m->dim > m->hidden ? m->dim : m->hidden) + 64; }

/* Per thread and token: the normalised residual and its Input forms (rounded, bits, q16); per
 * thread: a layer's output rows for every token (64 a token), attend's work. */
static size_t per_thread_floats(const Model *m) {
    return (size_t)MAX_TOKENS * (3 * widest(m) + 3 * 64 + m->head_dim) + attention_floats(m);
}

/* The work-sharing counters (one per phase and thread) take the end of the scratch, cache-line aligned. */
static size_t shares_bytes(const Model *m) { return (size_t)(5 * m->n_layers + 1) * m->threads * sizeof(Share); }

size_t cpu_decode_scratch_floats(const Model *m) {
    return (size_t)MAX_TOKENS * (m->dim            /* x: the residual stream */
                                 + m->dim          /* q, then the attention output */
                                 + m->hidden)      /* SiLU(gate) * up */
           + (size_t)m->threads * per_thread_floats(m)
           + (shares_bytes(m) + 64) / sizeof(float); /* the counters, and room to align them */
}

/* Every token's input forms that `need` asks for, for rows of `width` activations, a token every `stride` floats. */
static void prepare_all(Input *in, int T, const float *x, int stride, int width, int need) {
    for (int t = 0; t < T; t++) prepare(&in[t], x + (int64_t)t * stride, width, need);
}

/* x[t] += layer(in[t]) for rows [begin, end): a residual connection, 64 rows at a time. */
static void add_rows(const Model *m, const Linear *l, const Input *in, int T, float *x, float *y, int begin, int end) {
    for (int r = begin; r < end; r += 64) {
        int stop = r + 64 < end ? r + 64 : end;
        linear_rows(l, in, T, y, 64, r, stop);
        for (int t = 0; t < T; t++) {
            float *xt = x + (int64_t)t * m->dim;
            for (int i = r; i < stop; i++) {
                float sum = xt[i] + y[t * 64 + i - r];
                xt[i] = m->bf16 ? round_bf16(sum) : sum;
            }
        }
    }
}

/* Logits (T, vocab) for T <= MAX_TOKENS tokens at positions pos..pos + T - 1 (each attending to
 * every position up to its own), their keys and values written into cache slot `slot`. */
void cpu_decode_tokens(const Model *m, const int64_t *tokens, int T, int64_t pos, int64_t slot, float *logits) {
    const int D = m->dim, HD = m->head_dim, H = m->n_heads, KVH = m->n_kv_heads, W = widest(m);
    float *x = m->scratch, *q = x + MAX_TOKENS * D, *act = q + MAX_TOKENS * D;
    float *per_thread = act + MAX_TOKENS * m->hidden;
    const int64_t slot_bytes = (int64_t)KVH * m->cache_len * HD * (m->bf16 ? 2 : 4);

    for (int t = 0; t < T; t++)
        for (int i = 0; i < D; i++) x[t * D + i] = load(m->embed, m->bf16, tokens[t] * D + i);

    const uintptr_t after = (uintptr_t)(per_thread + (size_t)m->threads * per_thread_floats(m));
    Share(*shares)[m->threads] = (Share(*)[m->threads])((after + 63) & ~(uintptr_t)63); /* per phase, per thread */
    memset(shares, 0, shares_bytes(m));
#pragma omp parallel num_threads(m->threads)
    {
        const int id = omp_get_thread_num(), nt = omp_get_num_threads();
        float *mine = per_thread + (int64_t)id * per_thread_floats(m);
        float *normed = mine, *forms = normed + MAX_TOKENS * W, *rows = forms + MAX_TOKENS * 2 * W;
        float *attention = rows + MAX_TOKENS * (3 * 64 + HD); /* attend's work */
        Input in[MAX_TOKENS];
        for (int t = 0; t < T; t++) {
            float *f = forms + (int64_t)t * 2 * W;
            in[t] = (Input){.rounded = f, .bits = (uint16_t *)(f + W), .q16 = (int16_t *)(f + W) + W};
        }
        for (int layer = 0; layer < m->n_layers; layer++) {
            const Layer *L = m->layers + layer;
            Share(*phase)[m->threads] = shares + 5 * layer;
            char *keys = (char *)m->keys[layer] + slot * slot_bytes, *values = (char *)m->values[layer] + slot * slot_bytes;

            /* q, k, v a head at a time (whole heads, so that RoPE has both halves): q into `q`,
             * k and v into the cache. Every thread normalises the residual for itself. */
            for (int t = 0; t < T; t++) rms_norm(m, x + t * D, L->input_norm, normed + t * W);
            prepare_all(in, T, normed, W, D, needs(&L->q) | needs(&L->k) | needs(&L->v));
            EACH_CHUNK(u, phase[0], H + 2 * KVH) {
                const Linear *l = u < H ? &L->q : u < H + KVH ? &L->k : &L->v;
                int h = u < H ? u : u < H + KVH ? u - H : u - H - KVH;
                linear_rows(l, in, T, rows, HD, h * HD, (h + 1) * HD);
                for (int t = 0; t < T; t++) {
                    float *head = rows + t * HD;
                    if (u < H + KVH) rope(m, head, pos + t);
                    if (u < H) {
                        memcpy(q + t * D + h * HD, head, HD * sizeof(float));
                    } else {
                        void *cache = u < H + KVH ? keys : values;
                        int64_t at = ((int64_t)h * m->cache_len + pos + t) * HD;
                        for (int i = 0; i < HD; i++) store(cache, m->bf16, at + i, head[i]);
                    }
                }
            }
#pragma omp barrier
            /* a head's draft tokens at once: each key and value row read once for all of them */
            EACH_CHUNK(h, phase[1], H) attend(m, h, T, pos, keys, values, attention, q + h * HD, D);
#pragma omp barrier
            prepare_all(in, T, q, D, D, needs(&L->o));
            EACH_CHUNK(c, phase[2], chunks_of(D, CHUNK_ROWS))
                add_rows(m, &L->o, in, T, x, rows, CHUNK_ROWS * c, min_int(CHUNK_ROWS * (c + 1), D));
#pragma omp barrier
            /* act = SiLU(gate(x')) * up(x'), x' the normalised residual */
            for (int t = 0; t < T; t++) rms_norm(m, x + t * D, L->post_norm, normed + t * W);
            prepare_all(in, T, normed, W, D, needs(&L->gate) | needs(&L->up));
            EACH_CHUNK(c, phase[3], chunks_of(m->hidden, CHUNK_ROWS)) {
                int r = CHUNK_ROWS * c, stop = min_int(r + CHUNK_ROWS, m->hidden);
                float *gate = rows, *up = rows + MAX_TOKENS * 64;
                linear_rows(&L->gate, in, T, gate, 64, r, stop);
                linear_rows(&L->up, in, T, up, 64, r, stop);
                for (int t = 0; t < T; t++)
#pragma omp simd
                    for (int i = r; i < stop; i++) {
                        float g = gate[t * 64 + i - r], silu = g / (1.0f + exp_approx(-g));
                        if (m->bf16) silu = round_bf16(silu);
                        float product = silu * up[t * 64 + i - r];
                        act[(int64_t)t * m->hidden + i] = m->bf16 ? round_bf16(product) : product;
                    }
            }
#pragma omp barrier
            prepare_all(in, T, act, m->hidden, m->hidden, needs(&L->down));
            EACH_CHUNK(c, phase[4], chunks_of(D, CHUNK_ROWS))
                add_rows(m, &L->down, in, T, x, rows, CHUNK_ROWS * c, min_int(CHUNK_ROWS * (c + 1), D));
#pragma omp barrier
        }
        for (int t = 0; t < T; t++) rms_norm(m, x + t * D, m->norm, normed + t * W);
        prepare_all(in, T, normed, W, D, needs(&m->lm_head));
        EACH_CHUNK(c, shares[5 * m->n_layers], chunks_of(m->vocab, OUTPUT_CHUNK_ROWS)) {
            int r = OUTPUT_CHUNK_ROWS * c;
            linear_rows(&m->lm_head, in, T, logits + r, m->vocab, r, min_int(r + OUTPUT_CHUNK_ROWS, m->vocab));
        }
    }
}
