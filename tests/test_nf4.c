/*
 * test_nf4.c: worker/nf4.c against pip bitsandbytes' CPU quantize_4bit / dequantize_4bit
 * (nf4, blocksize 64, with and without double quantization). Reference: bitsandbytes itself,
 * run on the CPU by tests/ref/gen_nf4_fixtures.py; every code, scale, offset and dequantized
 * value must be equal bit for bit.
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nf4.h"
#include "util.h"

#define DIR "tests/fixtures/nf4/"

typedef struct {
    void *data;
    size_t n; /* bytes */
} blob;

static blob load_file(const char *path)
{
    blob b;
    char *data;
    cr_assert_eq(read_file(path, &data, &b.n), 0, "%s (run tests/ref/gen_nf4_fixtures.py)",
                 err_msg());
    b.data = data;
    return b;
}

static blob load(const char *name, const char *key, const char *ext)
{
    char *path = xasprintf(DIR "%s.%s.%s", name, key, ext);
    blob b = load_file(path);
    free(path);
    return b;
}

/* Bitwise equality of fp32 arrays, naming the first difference. */
static void assert_same_f32(const float *got, const float *want, int64_t n, const char *what)
{
    for (int64_t i = 0; i < n; i++) {
        uint32_t a, b;
        memcpy(&a, &got[i], 4);
        memcpy(&b, &want[i], 4);
        cr_assert_eq(a, b, "%s[%lld]: got %.9g (0x%08x), bitsandbytes %.9g (0x%08x)", what,
                     (long long)i, (double)got[i], a, (double)want[i], b);
    }
}

static void assert_same_u8(const uint8_t *got, const uint8_t *want, int64_t n, const char *what)
{
    for (int64_t i = 0; i < n; i++)
        cr_assert_eq(got[i], want[i], "%s[%lld]: got 0x%02x, bitsandbytes 0x%02x", what,
                     (long long)i, got[i], want[i]);
}

/* The generator's pattern input (see gen_nf4_fixtures.py: pattern()). */
static float *pattern(int64_t n)
{
    float *w = xmalloc((size_t)n * sizeof(float));
    for (int64_t i = 0; i < n; i++) {
        uint32_t h = (uint32_t)((uint64_t)i * 2654435761u);
        float r = (float)(h % 1000003u);
        float v = r / 1000003.0f - 0.5f;
        w[i] = v * ((float)((i / 64) % 7) + 1.0f);
    }
    return w;
}

static json_t *load_manifest(void)
{
    json_error_t jerr;
    json_t *root = json_load_file(DIR "manifest.json", 0, &jerr);
    cr_assert(root, "%s: %s (run tests/ref/gen_nf4_fixtures.py)", DIR "manifest.json",
              jerr.text);
    return root;
}

static void check_scales(const nf4_tensor *q, const char *name)
{
    char what[128];
    if (!q->double_quant) {
        blob absmax = load(name, "absmax", "f32");
        cr_assert_eq((int64_t)(absmax.n / 4), q->n_blocks, "%s: block count", name);
        snprintf(what, sizeof what, "%s absmax", name);
        assert_same_f32(q->absmax, absmax.data, q->n_blocks, what);
        free(absmax.data);
        return;
    }
    blob aq = load(name, "absmax_q", "u8"), a2 = load(name, "absmax2", "f32");
    blob off = load(name, "offset", "f32");
    cr_assert_eq((int64_t)aq.n, q->n_blocks, "%s: block count", name);
    cr_assert_eq((int64_t)(a2.n / 4), q->n_blocks2, "%s: second-level block count", name);
    snprintf(what, sizeof what, "%s offset", name);
    assert_same_f32(&q->offset, off.data, 1, what);
    snprintf(what, sizeof what, "%s absmax_q", name);
    assert_same_u8(q->absmax_q, aq.data, q->n_blocks, what);
    snprintf(what, sizeof what, "%s absmax2", name);
    assert_same_f32(q->absmax2, a2.data, q->n_blocks2, what);
    free(aq.data);
    free(a2.data);
    free(off.data);
}

/* Weights near the fp32 limit: bitsandbytes' fp32 sum of the scales overflows and its
 * dequantized weights hold NaN; rubric refuses the tensor with a clear error instead. */
static void check_overflow_case(const char *name, int64_t n)
{
    blob w = load(name, "w", "f32"), deq = load(name, "deq", "f32");
    int bnb_nan = 0;
    for (int64_t i = 0; i < n; i++)
        bnb_nan |= isnan(((float *)deq.data)[i]);
    cr_assert(bnb_nan, "%s: the fixture no longer shows bitsandbytes overflowing", name);
    nf4_tensor q;
    cr_assert_eq(nf4_quantize(w.data, n, 1, &q), RB_EXIT_INPUT, "%s: not refused", name);
    cr_assert(strstr(err_msg(), "double_quant"), "%s: %s", name, err_msg());
    cr_assert_null(q.codes);
    free(w.data);
    free(deq.data);
}

/* A case stored in full: input, all codes, all dequantized values. */
static void check_full_case(const char *name, int64_t n, int double_quant)
{
    blob w = load(name, "w", "f32"), codes = load(name, "codes", "u8");
    blob deq = load(name, "deq", "f32");
    cr_assert_eq((int64_t)(w.n / 4), n, "%s: input size", name);
    cr_assert_eq((int64_t)codes.n, (n + 1) / 2, "%s: packed size", name);

    nf4_tensor q;
    cr_assert_eq(nf4_quantize(w.data, n, double_quant, &q), 0, "%s: %s", name, err_msg());
    char what[128];
    snprintf(what, sizeof what, "%s codes", name);
    assert_same_u8(q.codes, codes.data, (n + 1) / 2, what);
    check_scales(&q, name);

    float *out = xmalloc((size_t)n * sizeof(float));
    nf4_dequantize(&q, 0, n, out);
    snprintf(what, sizeof what, "%s dequantized", name);
    assert_same_f32(out, deq.data, n, what);
    for (int64_t i = 0; i < n; i++)
        cr_assert(isfinite(out[i]), "%s: dequantized[%lld] is not finite", name, (long long)i);

    free(out);
    nf4_free(&q);
    free(w.data);
    free(codes.data);
    free(deq.data);
}

/* The large pattern case: scales in full, codes and values at the edges. */
static void check_pattern_case(const char *name, int64_t n, int64_t edge)
{
    float *w = pattern(n);
    blob codes = load(name, "codes", "u8"), deq = load(name, "deq", "f32");
    cr_assert_eq((int64_t)codes.n, 2 * edge);

    nf4_tensor q;
    cr_assert_eq(nf4_quantize(w, n, 1, &q), 0, "%s", err_msg());
    int64_t bytes = (n + 1) / 2;
    assert_same_u8(q.codes, codes.data, edge, "pattern codes (head)");
    assert_same_u8(q.codes + bytes - edge, (uint8_t *)codes.data + edge, edge,
                   "pattern codes (tail)");
    check_scales(&q, name);

    float *out = xmalloc((size_t)edge * sizeof(float));
    nf4_dequantize(&q, 0, edge, out);
    assert_same_f32(out, deq.data, edge, "pattern dequantized");
    free(out);
    nf4_free(&q);
    free(w);
    free(codes.data);
    free(deq.data);
}

Test(nf4, dynamic_map_is_bnb_create_dynamic_map)
{
    blob want = load_file(DIR "dynamic_map.f32");
    cr_assert_eq(want.n, 256 * sizeof(float));
    float map[256];
    nf4_dynamic_map(map);
    assert_same_f32(map, want.data, 256, "dynamic map");
    free(want.data);
}

Test(nf4, code_table_is_sorted_with_zero_at_7)
{
    for (int i = 0; i + 1 < 16; i++)
        cr_assert_lt(nf4_code[i], nf4_code[i + 1]);
    cr_assert_eq(nf4_code[0], -1.0f);
    cr_assert_eq(nf4_code[7], 0.0f);
    cr_assert_eq(nf4_code[15], 1.0f);
}

Test(nf4, matches_bitsandbytes_on_every_case)
{
    json_t *root = load_manifest();
    json_t *cases = json_object_get(root, "cases");
    cr_assert(json_array_size(cases) >= 10, "manifest lists too few cases");
    size_t i;
    json_t *c;
    json_array_foreach(cases, i, c) {
        const char *name = json_string_value(json_object_get(c, "name"));
        int64_t n = json_integer_value(json_object_get(c, "n"));
        int dq = (int)json_integer_value(json_object_get(c, "double_quant"));
        if (strcmp(name, "huge_values") == 0)
            check_overflow_case(name, n);
        else if (json_integer_value(json_object_get(c, "pattern")))
            check_pattern_case(name, n, json_integer_value(json_object_get(c, "edge")));
        else
            check_full_case(name, n, dq);
    }
    json_decref(root);
}

/* Dequantizing any tile (aligned or not) gives the same values as the whole tensor. */
Test(nf4, tiles_equal_whole_tensor)
{
    blob w = load("random", "w", "f32");
    int64_t n = (int64_t)(w.n / 4);
    nf4_tensor q;
    cr_assert_eq(nf4_quantize(w.data, n, 1, &q), 0, "%s", err_msg());
    float *whole = xmalloc((size_t)n * sizeof(float));
    float *tile = xmalloc((size_t)n * sizeof(float));
    nf4_dequantize(&q, 0, n, whole);

    const int64_t starts[] = {0, 64, 640, 1, 63, 65, 3 * 64 + 17, n - 64, n - 1};
    const int64_t counts[] = {64, 128, 6400, 1, 2, 200, 77, 64, 1};
    for (size_t k = 0; k < RB_ARRAY_LEN(starts); k++) {
        nf4_dequantize(&q, starts[k], counts[k], tile);
        cr_assert_eq(memcmp(tile, whole + starts[k], (size_t)counts[k] * sizeof(float)), 0,
                     "tile [%lld, +%lld) differs from the whole-tensor dequantization",
                     (long long)starts[k], (long long)counts[k]);
    }
    /* nf4_block_absmax is the scale the dequantization uses (CUDA kernels rely on it) */
    for (int64_t i = 0; i < n; i++) {
        uint8_t byte = q.codes[i / 2];
        int code = (i & 1) ? (byte & 0x0f) : (byte >> 4);
        cr_assert_eq(whole[i], nf4_code[code] * nf4_block_absmax(&q, i / 64), "element %lld",
                     (long long)i);
    }
    free(whole);
    free(tile);
    nf4_free(&q);
    free(w.data);
}

Test(nf4, rejects_bad_input)
{
    nf4_tensor q;
    float w[70] = {0};
    w[65] = NAN;
    cr_assert_eq(nf4_quantize(w, 70, 1, &q), RB_EXIT_INPUT);
    cr_assert(strstr(err_msg(), "65"), "message names the element: %s", err_msg());
    cr_assert_null(q.codes);
    w[65] = INFINITY;
    cr_assert_eq(nf4_quantize(w, 70, 0, &q), RB_EXIT_INPUT);
    cr_assert_eq(nf4_quantize(w, 0, 1, &q), RB_EXIT_INPUT);
}

/* Storage: 4 bits per weight, plus 8 bits per 64 weights and fp32 per 64 * 256 weights. */
Test(nf4, bytes_per_parameter)
{
    int64_t n = 64 * 256 * 8;
    float *w = xmalloc((size_t)n * sizeof(float));
    for (int64_t i = 0; i < n; i++)
        w[i] = (float)((i * 37) % 101) - 50.0f;
    nf4_tensor q;
    cr_assert_eq(nf4_quantize(w, n, 1, &q), 0, "%s", err_msg());
    cr_assert_eq(q.n_blocks, 256 * 8);
    cr_assert_eq(q.n_blocks2, 8);
    cr_assert_eq(nf4_bytes(&q), (size_t)(n / 2 + n / 64 + 8 * 4 + 4));
    double bits = 8.0 * (double)nf4_bytes(&q) / (double)n;
    cr_assert(bits > 4.12 && bits < 4.13, "%.4f bits per weight", bits);
    nf4_free(&q);
    cr_assert_eq(nf4_quantize(w, n, 0, &q), 0, "%s", err_msg());
    cr_assert_eq(nf4_bytes(&q), (size_t)(n / 2 + n / 64 * 4));
    nf4_free(&q);
    free(w);
}
