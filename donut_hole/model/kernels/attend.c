/* The decoding engine's native kernels (donut_hole.model.kernels builds this file with -O3 -march=native
 * at first use; the engine runs the same arithmetic in PyTorch where it cannot):
 *
 * - attend_f32 / attend_bf16: single-query attention for many (row, head) groups, one pass over the keys
 *   (stored transposed, D x S, so the inner loop runs along S) and one over the values (S x D), the
 *   softmax's scores in a buffer that stays in L1; keys and values in float32 or bfloat16 (the upper half
 *   of a float32, widened by a shift), the arithmetic in float32;
 * - decoder_layers: every layer of an mBART decoder for one token of each running row, in one call.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static inline float widen(uint16_t x) {
    uint32_t bits = (uint32_t)x << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

#define MAX_DIM 256

/* ---- the decoder's layers for one token of each row ---------------------------------------------------
 *
 * An mBART decoder layer (pre-norm): self-attention over the row's tokens so far, cross-attention over its
 * page's cells, a GELU feed-forward, each added to the residual stream. `weights` holds 18 pointers per
 * layer, in this order: norm1 weight, bias; qkv weight, bias; out weight, bias; norm2 weight, bias;
 * cross query weight, bias; cross out weight, bias; norm3 weight, bias; fc1 weight, bias; fc2 weight,
 * bias; each weight transposed (inputs x outputs, as W^T). `caches` holds 4 pointers per layer: the
 * self-attention's keys (slots, H, D, capacity) and values (slots, H, capacity, D), float32, and the
 * cross-attention's keys (slots, H, D, S) and values (slots, H, S, D), float32 or bfloat16 (`cells_bf16`).
 * Row r writes its new key and value at position lengths[r] and attends to positions 0..lengths[r].
 * `hidden` (rows, C) is updated in place; `skip` leaves parts out, for benchmarks only (1: self-attention,
 * 2: cross-attention, 4: feed-forward); `scratch` holds at least rows * (5C + F) + max(S, capacity) floats.
 */

static void linear(const float *restrict x, long rows, long in, const float *restrict wt,
                   const float *restrict b, long out, float *restrict y, long y_stride) {
    /* y = x W^T + b with W^T stored (in x out): each input scales a row of W^T into y (no horizontal sums) */
    for (long r = 0; r < rows; r++) {
        float *restrict yr = y + r * y_stride;
        const float *restrict xr = x + r * in;
        for (long o = 0; o < out; o++) yr[o] = b[o];
        for (long i = 0; i < in; i++) {
            const float xi = xr[i];
            const float *restrict wi = wt + i * out;
            for (long o = 0; o < out; o++) yr[o] += xi * wi[o];
        }
    }
}

static void layer_norm(const float *restrict x, long rows, long width, const float *restrict g,
                       const float *restrict b, float eps, float *restrict y) {
    for (long r = 0; r < rows; r++) {
        const float *restrict xr = x + r * width;
        float *restrict yr = y + r * width;
        float mean = 0.0f;
        for (long i = 0; i < width; i++) mean += xr[i];
        mean /= (float)width;
        float var = 0.0f;
        for (long i = 0; i < width; i++) var += (xr[i] - mean) * (xr[i] - mean);
        const float inv = 1.0f / sqrtf(var / (float)width + eps);
        for (long i = 0; i < width; i++) yr[i] = (xr[i] - mean) * inv * g[i] + b[i];
    }
}

/* one query (D) over keys stored transposed (D rows of `key_stride`) and values (rows of D), n cells.
 * Scores in blocks of 64 cells (kept in registers across the D rows of keys), values with four partial sums
 * (so that consecutive cells do not wait on one another's additions). */
#define SAME(x) (x)
#define BLOCK 64
#define ONE_QUERY(NAME, T, LOAD)                                                                           \
    static void NAME(const float *restrict q, const T *restrict keys, long key_stride,                     \
                     const T *restrict values, long n, long dim, float scale, float *restrict scores,      \
                     float *restrict out) {                                                                \
        long j0 = 0;                                                                                       \
        for (; j0 + BLOCK <= n; j0 += BLOCK) {                                                             \
            float block[BLOCK] = {0};                                                                      \
            for (long d = 0; d < dim; d++) {                                                               \
                const float qd = q[d] * scale;                                                             \
                const T *restrict row = keys + d * key_stride + j0;                                        \
                for (long j = 0; j < BLOCK; j++) block[j] += qd * LOAD(row[j]);                            \
            }                                                                                              \
            for (long j = 0; j < BLOCK; j++) scores[j0 + j] = block[j];                                    \
        }                                                                                                  \
        for (long j = j0; j < n; j++) scores[j] = 0.0f;                                                    \
        for (long d = 0; d < dim && j0 < n; d++) {                                                         \
            const float qd = q[d] * scale;                                                                 \
            const T *restrict row = keys + d * key_stride;                                                 \
            for (long j = j0; j < n; j++) scores[j] += qd * LOAD(row[j]);                                  \
        }                                                                                                  \
        float best = scores[0]; /* finite: built with -ffast-math */                                       \
        for (long j = 1; j < n; j++) best = scores[j] > best ? scores[j] : best;                           \
        float total = 0.0f;                                                                                \
        for (long j = 0; j < n; j++) {                                                                     \
            scores[j] = expf(scores[j] - best);                                                            \
            total += scores[j];                                                                            \
        }                                                                                                  \
        float acc[4][MAX_DIM];                                                                             \
        for (long a = 0; a < 4; a++)                                                                       \
            for (long d = 0; d < dim; d++) acc[a][d] = 0.0f;                                               \
        long j = 0;                                                                                        \
        for (; j + 4 <= n; j += 4) {                                                                       \
            const T *restrict row = values + j * dim;                                                      \
            const float p0 = scores[j], p1 = scores[j + 1], p2 = scores[j + 2], p3 = scores[j + 3];        \
            for (long d = 0; d < dim; d++) {                                                               \
                acc[0][d] += p0 * LOAD(row[d]);                                                            \
                acc[1][d] += p1 * LOAD(row[dim + d]);                                                      \
                acc[2][d] += p2 * LOAD(row[2 * dim + d]);                                                  \
                acc[3][d] += p3 * LOAD(row[3 * dim + d]);                                                  \
            }                                                                                              \
        }                                                                                                  \
        for (; j < n; j++)                                                                                 \
            for (long d = 0; d < dim; d++) acc[0][d] += scores[j] * LOAD(values[j * dim + d]);             \
        const float inv = 1.0f / total;                                                                    \
        for (long d = 0; d < dim; d++) out[d] = (acc[0][d] + acc[1][d] + acc[2][d] + acc[3][d]) * inv;    \
    }

ONE_QUERY(one_query_f32, float, SAME)
ONE_QUERY(one_query_bf16, uint16_t, widen)

/* softmax(scale q K^T) V for `groups` independent (row, head) groups of one query each: q (groups, dim),
 * keys (groups, dim, cells) stored transposed, values (groups, cells, dim); 0, or non-zero on failure */
#define ATTEND(NAME, T, ONE)                                                                               \
    int NAME(const float *q, const T *keys, const T *values, float *out, long groups, long cells, long dim,  \
             float scale) {                                                                                \
        if (dim > MAX_DIM) return 2;                                                                       \
        float *scores = (float *)malloc(sizeof(float) * (size_t)(cells > 0 ? cells : 1));                  \
        if (!scores) return 1;                                                                             \
        for (long g = 0; g < groups; g++)                                                                  \
            ONE(q + g * dim, keys + g * dim * cells, cells, values + g * cells * dim, cells, dim, scale,  \
                scores, out + g * dim);                                                                    \
        free(scores);                                                                                      \
        return 0;                                                                                          \
    }

ATTEND(attend_f32, float, one_query_f32)
ATTEND(attend_bf16, uint16_t, one_query_bf16)

int decoder_layers(float *hidden, long rows, const long *lengths, long layers, long width, long heads,
                   long ffn, long cells, long slots, long capacity, float eps, float self_scale,
                   float cross_scale, int cells_bf16, void *const *weights, void *const *caches,
                   float *scratch, int skip) {
    const long dim = width / heads;
    if (dim > MAX_DIM) return 2;
    float *normed = scratch;                    /* rows x C */
    float *qkv = normed + rows * width;         /* rows x 3C */
    float *inner = qkv + rows * 3 * width;      /* rows x F */
    float *mixed = inner + rows * ffn;          /* rows x C */
    float *scores = mixed + rows * width;       /* max(S, capacity) */
    for (long l = 0; l < layers; l++) {
        const float *const *w = (const float *const *)(weights + 18 * l);
        float *keys = (float *)caches[4 * l], *values = (float *)caches[4 * l + 1];
        const void *cross_keys = caches[4 * l + 2], *cross_values = caches[4 * l + 3];
        /* self-attention */
        if (!(skip & 1)) {
        layer_norm(hidden, rows, width, w[0], w[1], eps, normed);
        linear(normed, rows, width, w[2], w[3], 3 * width, qkv, 3 * width);
        for (long r = 0; r < rows; r++) {
            const long at = lengths[r];
            const float *q = qkv + r * 3 * width, *k = q + width, *v = k + width;
            for (long h = 0; h < heads; h++) {
                float *kh = keys + ((r * heads + h) * dim) * capacity;
                float *vh = values + ((r * heads + h) * capacity) * dim;
                for (long d = 0; d < dim; d++) {
                    kh[d * capacity + at] = k[h * dim + d];
                    vh[at * dim + d] = v[h * dim + d];
                }
                one_query_f32(q + h * dim, kh, capacity, vh, at + 1, dim, self_scale, scores,
                              mixed + r * width + h * dim);
            }
        }
        linear(mixed, rows, width, w[4], w[5], width, normed, width);
        for (long i = 0; i < rows * width; i++) hidden[i] += normed[i];
        }
        /* cross-attention */
        if (!(skip & 2)) {
        layer_norm(hidden, rows, width, w[6], w[7], eps, normed);
        linear(normed, rows, width, w[8], w[9], width, qkv, width);
        for (long r = 0; r < rows; r++) {
            for (long h = 0; h < heads; h++) {
                const long group = r * heads + h;
                if (cells_bf16)
                    one_query_bf16(qkv + r * width + h * dim,
                                   (const uint16_t *)cross_keys + group * dim * cells, cells,
                                   (const uint16_t *)cross_values + group * cells * dim, cells, dim,
                                   cross_scale, scores, mixed + r * width + h * dim);
                else
                    one_query_f32(qkv + r * width + h * dim, (const float *)cross_keys + group * dim * cells,
                                  cells, (const float *)cross_values + group * cells * dim, cells, dim,
                                  cross_scale, scores, mixed + r * width + h * dim);
            }
        }
        linear(mixed, rows, width, w[10], w[11], width, normed, width);
        for (long i = 0; i < rows * width; i++) hidden[i] += normed[i];
        }
        /* feed-forward */
        if (!(skip & 4)) {
        layer_norm(hidden, rows, width, w[12], w[13], eps, normed);
        linear(normed, rows, width, w[14], w[15], ffn, inner, ffn);
        for (long i = 0; i < rows * ffn; i++)
            inner[i] = 0.5f * inner[i] * (1.0f + erff(inner[i] * 0.70710678118654752f));
        linear(inner, rows, ffn, w[16], w[17], width, normed, width);
        for (long i = 0; i < rows * width; i++) hidden[i] += normed[i];
        }
    }
    (void)slots;
    return 0;
}
