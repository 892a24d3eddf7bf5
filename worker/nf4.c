/*
 * nf4.c: NF4 quantization with double quantization, reproducing bitsandbytes' CPU path
 * (bitsandbytes 0.50: torch reference for quantize_4bit, the native CPU library for the 8-bit
 * blockwise quantization of the block scales, torch's float32 sum for their mean).
 *
 * Every value below is computed in fp32 with the same operations, in the same order, as
 * bitsandbytes and torch do, so the results match bit for bit. This file must be compiled without
 * floating-point contraction (C11 mode turns it off in GCC; never add -ffast-math here).
 */
#include "nf4.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

/* bitsandbytes' NF4 table (functional.get_4bit_type("nf4")), ascending. */
const float nf4_code[16] = {
    -1.0f,
    -0.6961928009986877f,
    -0.5250730514526367f,
    -0.39491748809814453f,
    -0.28444138169288635f,
    -0.18477343022823334f,
    -0.09105003625154495f,
    0.0f,
    0.07958029955625534f,
    0.16093020141124725f,
    0.24611230194568634f,
    0.33791524171829224f,
    0.44070982933044434f,
    0.5626170039176941f,
    0.7229568362236023f,
    1.0f,
};

/* torch clamps the block scale to this before taking its reciprocal (a subnormal in fp32). */
#define NF4_MIN_SCALE 1e-38f

/* The 8-bit quantizer of bnb's CPU library snaps [-1, 1] to this many bins, then looks up the
 * code of each bin. */
#define DQ_LUT_SIZE 65536

static float dyn_map[256];
static float nf4_bounds[15];
static pthread_once_t tables_once = PTHREAD_ONCE_INIT;

/* ---------------------------------------------------------------------------------------------
 * Tables
 * ------------------------------------------------------------------------------------------- */

/* torch.linspace(start, end, steps) in float32 (its CPU kernel: fused multiply-add from the
 * nearer end). */
static void linspace_f32(float start, float end, int steps, float *out)
{
    float step = (end - start) / (float)(steps - 1);
    int halfway = steps / 2;
    for (int i = 0; i < steps; i++)
        out[i] = i < halfway ? fmaf(step, (float)i, start)
                             : fmaf(-step, (float)(steps - i - 1), end);
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* bnb create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8): for exponent level
 * i = 0..6, 2^i fractions (midpoints of linspace(0.1, 1, 2^i + 1)) scaled by 10^(i - 6), both
 * signs; then 0 and 1; sorted. */
static void build_dynamic_map(float *map)
{
    float bounds[65];
    int n = 0;
    for (int i = 0; i < 7; i++) {
        int items = (1 << i) + 1;
        float scale = (float)pow(10.0, i - 6);
        linspace_f32(0.1f, 1.0f, items, bounds);
        for (int j = 0; j + 1 < items; j++) {
            float mean = (bounds[j] + bounds[j + 1]) / 2.0f;
            map[n++] = scale * mean;
            map[n++] = -scale * mean;
        }
    }
    map[n++] = 0.0f;
    map[n++] = 1.0f;
    qsort(map, (size_t)n, sizeof(float), cmp_float);
}

static void build_tables(void)
{
    build_dynamic_map(dyn_map);
    for (int i = 0; i < 15; i++)
        nf4_bounds[i] = (nf4_code[i] + nf4_code[i + 1]) / 2.0f;
}

static void tables_init(void)
{
    pthread_once(&tables_once, build_tables);
}

void nf4_dynamic_map(float map[256])
{
    tables_init();
    memcpy(map, dyn_map, sizeof dyn_map);
}

/* ---------------------------------------------------------------------------------------------
 * torch's float32 sum (single thread), for the mean of the block scales
 * ------------------------------------------------------------------------------------------- */

#define SUM_LANES 8  /* torch's AVX2 Vectorized<float> width, used by its sum kernel */
#define SUM_ILP 4
#define SUM_LEVELS 4

static int ceil_log2(int64_t x)
{
    if (x <= 2)
        return 1;
    int bits = 0;
    for (uint64_t v = (uint64_t)(x - 1); v; v >>= 1)
        bits++;
    return bits;
}

/* torch's row_sum/multi_row_sum: x holds `items` items of `lanes` floats; sums them lane-wise
 * with 4 interleaved rows and 4 cascade levels, into out[lanes]. */
static void cascade_row_sum(const float *x, int64_t items, int lanes, float *out)
{
    float acc[SUM_LEVELS][SUM_ILP][SUM_LANES];
    memset(acc, 0, sizeof acc);
    int64_t size = items / SUM_ILP;
    int level_power = RB_MAX(4, ceil_log2(size) / SUM_LEVELS);
    int64_t level_step = (int64_t)1 << level_power;
    int64_t level_mask = level_step - 1;

    /* full cascade steps, then the rest of the rows into level 0 */
    int64_t i = 0;
    while (i + level_step <= size) {
        for (int64_t j = 0; j < level_step; j++, i++)
            for (int k = 0; k < SUM_ILP; k++)
                for (int l = 0; l < lanes; l++)
                    acc[0][k][l] += x[((i * SUM_ILP) + k) * lanes + l];
        for (int j = 1; j < SUM_LEVELS; j++) {
            for (int k = 0; k < SUM_ILP; k++)
                for (int l = 0; l < lanes; l++) {
                    acc[j][k][l] += acc[j - 1][k][l];
                    acc[j - 1][k][l] = 0.0f;
                }
            if ((i & (level_mask << (j * level_power))) != 0)
                break;
        }
    }
    for (; i < size; i++)
        for (int k = 0; k < SUM_ILP; k++)
            for (int l = 0; l < lanes; l++)
                acc[0][k][l] += x[((i * SUM_ILP) + k) * lanes + l];
    for (int j = 1; j < SUM_LEVELS; j++)
        for (int k = 0; k < SUM_ILP; k++)
            for (int l = 0; l < lanes; l++)
                acc[0][k][l] += acc[j][k][l];

    /* items left over by the 4-row split go to row 0, then the rows are added up */
    for (int64_t r = size * SUM_ILP; r < items; r++)
        for (int l = 0; l < lanes; l++)
            acc[0][0][l] += x[r * lanes + l];
    for (int k = 1; k < SUM_ILP; k++)
        for (int l = 0; l < lanes; l++)
            acc[0][0][l] += acc[0][k][l];
    memcpy(out, acc[0][0], (size_t)lanes * sizeof(float));
}

/* torch.sum of a contiguous float32 vector with one thread (ATen cascade_sum). */
static float torch_sum_f32(const float *x, int64_t n)
{
    float lanes[SUM_LANES];
    if (n < SUM_LANES) {
        cascade_row_sum(x, n, 1, lanes);
        return 0.0f + lanes[0];
    }
    int64_t vec_items = n / SUM_LANES;
    cascade_row_sum(x, vec_items, SUM_LANES, lanes);
    float total = 0.0f;
    for (int64_t k = vec_items * SUM_LANES; k < n; k++)
        total += x[k];
    for (int k = 0; k < SUM_LANES; k++)
        total += lanes[k];
    return 0.0f + total;
}

/* ---------------------------------------------------------------------------------------------
 * Quantization
 * ------------------------------------------------------------------------------------------- */

/* The scale of block b of the 4-bit level: max |w| (torch's reference path). A partial last
 * block's scale is stored clamped to NF4_MIN_SCALE, a full block's is not. */
static float block_absmax(const float *w, int64_t n, int64_t b)
{
    int64_t start = b * NF4_BLOCK, end = RB_MIN(start + NF4_BLOCK, n);
    float am = 0.0f;
    for (int64_t i = start; i < end; i++)
        am = fmaxf(am, fabsf(w[i]));
    if (end - start < NF4_BLOCK)
        am = fmaxf(am, NF4_MIN_SCALE);
    return am;
}

/* torch.bucketize(x, bounds, right=False): the number of bounds strictly below x, so a value on
 * a midpoint takes the lower code. */
static uint8_t nf4_nearest(float x)
{
    int idx = 0;
    for (int i = 0; i < 15; i++)
        idx += nf4_bounds[i] < x;
    return (uint8_t)idx;
}

static float clamp_unit(float x)
{
    return x < -1.0f ? -1.0f : (x > 1.0f ? 1.0f : x);
}

/* The 4-bit codes of block b (unpacked, one per byte into idx[0 .. len)). A full block is
 * multiplied by the reciprocal of its scale, a partial one divided by it, as torch does. */
static int64_t block_codes(const float *w, int64_t n, int64_t b, float am, uint8_t *idx)
{
    int64_t start = b * NF4_BLOCK, len = RB_MIN(NF4_BLOCK, n - start);
    if (len == NF4_BLOCK) {
        float inv = 1.0f / fmaxf(am, NF4_MIN_SCALE);
        for (int64_t i = 0; i < len; i++)
            idx[i] = nf4_nearest(clamp_unit(w[start + i] * inv));
    } else {
        for (int64_t i = 0; i < len; i++)
            idx[i] = nf4_nearest(clamp_unit(w[start + i] / am));
    }
    return len;
}

/* Codes and fp32 scales of every block. Pairs (2i, 2i + 1) go to byte i, the even element in
 * the high nibble; an odd count pads the last low nibble with the code of 0.0. */
static void quantize_blocks(const float *w, int64_t n, uint8_t *codes, float *absmax,
                            int64_t n_blocks)
{
    #pragma omp parallel for schedule(static) if (n_blocks > 256)
    for (int64_t b = 0; b < n_blocks; b++) {
        uint8_t idx[NF4_BLOCK + 1];
        absmax[b] = block_absmax(w, n, b);
        int64_t len = block_codes(w, n, b, absmax[b], idx);
        if (len & 1)
            idx[len++] = nf4_nearest(0.0f);
        uint8_t *out = codes + b * (NF4_BLOCK / 2);
        for (int64_t i = 0; i < len; i += 2)
            out[i / 2] = (uint8_t)(idx[i] << 4 | idx[i + 1]);
    }
}

/* bnb's CPU lookup table: bin i of [-1, 1] gets the number of code midpoints below the bin's
 * value. */
static void build_dq_lut(const float *map, uint8_t *lut)
{
    float mid[255];
    for (int i = 0; i < 255; i++)
        mid[i] = 0.5f * (map[i] + map[i + 1]);
    int code = 0;
    for (int i = 0; i < DQ_LUT_SIZE; i++) {
        float val = -1.0f + (2.0f * (float)i) / (float)(DQ_LUT_SIZE - 1);
        while (code < 255 && mid[code] < val)
            code++;
        lut[i] = (uint8_t)code;
    }
}

/* bnb quantize_blockwise (CPU, 8-bit, dynamic map) of x[0 .. n) in blocks of 256: per block
 * the absmax, then each value times its reciprocal, clamped, snapped to a LUT bin. An all-zero
 * block gets absmax 0 and code 0. */
static void quantize_8bit_blockwise(const float *x, int64_t n, const uint8_t *lut, uint8_t *q,
                                    float *absmax2)
{
    for (int64_t start = 0, b = 0; start < n; start += NF4_BLOCK2, b++) {
        int64_t end = RB_MIN(start + NF4_BLOCK2, n);
        float am = 0.0f;
        for (int64_t i = start; i < end; i++)
            am = fmaxf(am, fabsf(x[i]));
        absmax2[b] = am;
        if (am == 0.0f) {
            memset(q + start, 0, (size_t)(end - start));
            continue;
        }
        float inv = 1.0f / am;
        for (int64_t i = start; i < end; i++) {
            float v = clamp_unit(x[i] * inv);
            float t = (v + 1.0f) * 0.5f;
            t = t * (float)(DQ_LUT_SIZE - 1);
            t = t + 0.5f;
            q[i] = lut[(uint16_t)t];
        }
    }
}

/* Weights near the fp32 limit overflow the fp32 sum of the scales (bitsandbytes then yields NaN
 * weights); refuse them. */
static int check_scales(const nf4_tensor *q)
{
    for (int64_t b = 0; b < q->n_blocks; b++) {
        float s = nf4_block_absmax(q, b);
        if (!isfinite(s))
            return err_set(RB_EXIT_INPUT,
                           "nf4: double quantization overflows fp32 (block %lld of %lld, "
                           "weights too large, offset %g); disable "
                           "bnb_4bit_use_double_quant for this model",
                           (long long)b, (long long)q->n_blocks, (double)q->offset);
    }
    return 0;
}

/* Double quantization: offset = mean of the scales; the centred scales as 8-bit codes. */
static int double_quantize(nf4_tensor *q, const float *absmax)
{
    q->offset = torch_sum_f32(absmax, q->n_blocks) / (float)q->n_blocks;
    float *centred = xmalloc((size_t)q->n_blocks * sizeof(float));
    for (int64_t b = 0; b < q->n_blocks; b++)
        centred[b] = absmax[b] - q->offset;
    uint8_t *lut = xmalloc(DQ_LUT_SIZE);
    build_dq_lut(dyn_map, lut);
    q->n_blocks2 = (q->n_blocks + NF4_BLOCK2 - 1) / NF4_BLOCK2;
    q->absmax_q = xmalloc((size_t)q->n_blocks);
    q->absmax2 = xmalloc((size_t)q->n_blocks2 * sizeof(float));
    quantize_8bit_blockwise(centred, q->n_blocks, lut, q->absmax_q, q->absmax2);
    free(lut);
    free(centred);
    return check_scales(q);
}

static int check_finite(const float *w, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(w[i]))
            return err_set(RB_EXIT_INPUT,
                           "nf4: weight element %lld is %g; a checkpoint with NaN or infinite "
                           "weights cannot be quantized (check the model files)",
                           (long long)i, (double)w[i]);
    return 0;
}

int nf4_quantize(const float *w, int64_t n, int double_quant, nf4_tensor *q)
{
    memset(q, 0, sizeof *q);
    if (n <= 0)
        return err_set(RB_EXIT_INPUT, "nf4: cannot quantize a tensor of %lld elements",
                       (long long)n);
    int rc = check_finite(w, n);
    if (rc)
        return rc;
    tables_init();

    /* 1. the 4-bit codes and one fp32 scale per block of 64 */
    q->n = n;
    q->n_blocks = (n + NF4_BLOCK - 1) / NF4_BLOCK;
    q->double_quant = double_quant ? 1 : 0;
    q->codes = xcalloc((size_t)(n + 1) / 2, 1);
    float *absmax = xmalloc((size_t)q->n_blocks * sizeof(float));
    quantize_blocks(w, n, q->codes, absmax, q->n_blocks);

    /* 2. the scales themselves: kept as fp32, or quantized again */
    if (!q->double_quant) {
        q->absmax = absmax;
        return 0;
    }
    rc = double_quantize(q, absmax);
    free(absmax);
    if (rc)
        nf4_free(q);
    return rc;
}

/* ---------------------------------------------------------------------------------------------
 * Dequantization
 * ------------------------------------------------------------------------------------------- */

float nf4_block_absmax(const nf4_tensor *q, int64_t b)
{
    if (!q->double_quant)
        return q->absmax[b];
    tables_init();
    float scale = dyn_map[q->absmax_q[b]] * q->absmax2[b / NF4_BLOCK2];
    return scale + q->offset;
}

static inline uint8_t code_at(const uint8_t *codes, int64_t i)
{
    uint8_t byte = codes[i >> 1];
    return (i & 1) ? (byte & 0x0f) : (byte >> 4);
}

/* Elements [start, start + len) all inside block b. */
static void dequantize_span(const nf4_tensor *q, int64_t b, int64_t start, int64_t len,
                            float *out)
{
    float scaled[16];
    float s = nf4_block_absmax(q, b);
    for (int k = 0; k < 16; k++)
        scaled[k] = nf4_code[k] * s;
    int64_t i = 0;
    if ((start & 1) == 0) {
        const uint8_t *p = q->codes + (start >> 1);
        for (; i + 1 < len; i += 2, p++) {
            out[i] = scaled[*p >> 4];
            out[i + 1] = scaled[*p & 0x0f];
        }
    }
    for (; i < len; i++)
        out[i] = scaled[code_at(q->codes, start + i)];
}

void nf4_dequantize(const nf4_tensor *q, int64_t start, int64_t count, float *out)
{
    if (count <= 0)
        return;
    int64_t end = start + count;
    int64_t b_first = start / NF4_BLOCK, b_last = (end - 1) / NF4_BLOCK;
    tables_init();

    #pragma omp parallel for schedule(static) if (b_last - b_first > 1024)
    for (int64_t b = b_first; b <= b_last; b++) {
        int64_t lo = RB_MAX(start, b * NF4_BLOCK);
        int64_t hi = RB_MIN(end, (b + 1) * NF4_BLOCK);
        dequantize_span(q, b, lo, hi - lo, out + (lo - start));
    }
}

size_t nf4_bytes(const nf4_tensor *q)
{
    size_t bytes = (size_t)(q->n + 1) / 2;
    if (q->double_quant)
        bytes += (size_t)q->n_blocks + (size_t)q->n_blocks2 * sizeof(float) + sizeof(float);
    else
        bytes += (size_t)q->n_blocks * sizeof(float);
    return bytes;
}

void nf4_free(nf4_tensor *q)
{
    free(q->codes);
    free(q->absmax);
    free(q->absmax_q);
    free(q->absmax2);
    memset(q, 0, sizeof *q);
}
