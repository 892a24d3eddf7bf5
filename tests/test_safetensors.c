/*
 * test_safetensors.c: rubric's safetensors reader and writer against files written by the
 * `safetensors` pip package and conversions done by torch (tests/ref/gen_safetensors_fixtures.py
 * regenerates the fixtures in tests/fixtures/safetensors/).
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "safetensors.h"
#include "util.h"

#define FIX "tests/fixtures/safetensors"

static json_t *load_json(const char *path)
{
    json_error_t e;
    json_t *j = json_load_file(path, 0, &e);
    cr_assert(j, "cannot read %s: %s", path, e.text);
    return j;
}

static uint32_t bits32(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static const st_tensor *must_find(const safetensors_set *s, const char *name)
{
    const st_tensor *t = safetensors_find(s, name);
    cr_assert(t, "tensor %s not found", name);
    return t;
}

/* Compare tensor `name` of s, read as fp32, with the exact values of a JSON list. */
static void expect_values(const safetensors_set *s, const char *name, json_t *shape,
                          json_t *values)
{
    const st_tensor *t = must_find(s, name);
    int64_t dims[ST_MAX_DIMS];
    int nd = (int)json_array_size(shape);
    cr_assert_eq(t->ndim, nd, "%s ndim", name);
    for (int i = 0; i < nd; i++)
        dims[i] = json_integer_value(json_array_get(shape, (size_t)i));
    int64_t n = st_tensor_numel(t);
    cr_assert_eq(n, (int64_t)json_array_size(values), "%s numel", name);
    float *out = xmalloc((size_t)(n ? n : 1) * sizeof *out);
    cr_assert_eq(safetensors_read_f32(s, name, nd, dims, out), 0, "%s: %s", name, err_msg());
    for (int64_t i = 0; i < n; i++) {
        float want = (float)json_number_value(json_array_get(values, (size_t)i));
        cr_assert_eq(bits32(out[i]), bits32(want), "%s[%lld]: %.9g vs %.9g", name,
                     (long long)i, out[i], want);
    }
    free(out);
}

/* ---- reading what the safetensors package wrote ---- */

Test(safetensors, reads_every_dtype_as_python_wrote_it)
{
    safetensors_set *s;
    cr_assert_eq(safetensors_open_file(&s, FIX "/small.safetensors"), 0, "%s", err_msg());
    json_t *exp = json_object_get(load_json(FIX "/small.expected.json"), "tensors");
    cr_assert_eq(safetensors_count(s), (int)json_object_size(exp));

    const char *name;
    json_t *e;
    json_object_foreach(exp, name, e) {
        const st_tensor *t = must_find(s, name);
        cr_assert_str_eq(st_dtype_name(t->dtype), json_string_value(json_object_get(e, "dtype")),
                         "%s dtype", name);
        json_t *ints = json_object_get(e, "ints");
        if (ints) { /* I64: compare the raw little-endian integers */
            const uint8_t *raw = safetensors_data(s, t);
            for (size_t i = 0; i < json_array_size(ints); i++) {
                int64_t v;
                memcpy(&v, raw + 8 * i, 8);
                cr_assert_eq(v, json_integer_value(json_array_get(ints, i)), "%s[%zu]", name,
                             i);
            }
            continue;
        }
        expect_values(s, name, json_object_get(e, "shape"), json_object_get(e, "values"));
    }

    /* lookups by index walk every tensor once, in name order */
    for (int i = 1; i < safetensors_count(s); i++)
        cr_assert_lt(strcmp(safetensors_at(s, i - 1)->name, safetensors_at(s, i)->name), 0);
    cr_assert_null(safetensors_at(s, safetensors_count(s)));
    cr_assert_str_eq(safetensors_file_of(s, must_find(s, "f32")), FIX "/small.safetensors");
    safetensors_close(s);
}

Test(safetensors, read_f32_names_tensor_file_and_shapes_on_mismatch)
{
    safetensors_set *s;
    cr_assert_eq(safetensors_open_file(&s, FIX "/small.safetensors"), 0);
    float buf[64];

    int64_t wrong[2] = {4, 3};
    cr_assert_eq(safetensors_read_f32(s, "f32", 2, wrong, buf), RB_EXIT_INPUT);
    cr_assert(strstr(err_msg(), "'f32'") && strstr(err_msg(), "small.safetensors") &&
              strstr(err_msg(), "[3, 4]") && strstr(err_msg(), "[4, 3]"), "%s", err_msg());

    cr_assert_eq(safetensors_read_f32(s, "model.norm.weight", 0, NULL, buf), RB_EXIT_INPUT);
    cr_assert(strstr(err_msg(), "model.norm.weight") && strstr(err_msg(), "missing"), "%s",
              err_msg());

    cr_assert_eq(safetensors_read_f32(s, "i64", 0, NULL, buf), RB_EXIT_INPUT);
    cr_assert(strstr(err_msg(), "'i64'") && strstr(err_msg(), "I64"), "%s", err_msg());
    safetensors_close(s);
}

Test(safetensors, sharded_set_through_the_index)
{
    safetensors_set *s;
    cr_assert_eq(safetensors_open_dir(&s, FIX "/sharded"), 0, "%s", err_msg());
    json_t *exp = load_json(FIX "/sharded/expected.json");
    cr_assert_eq(safetensors_count(s), (int)json_object_size(exp));
    const char *name;
    json_t *e;
    json_object_foreach(exp, name, e) {
        expect_values(s, name, json_object_get(e, "shape"), json_object_get(e, "values"));
        const char *file = safetensors_file_of(s, must_find(s, name));
        const char *want = json_string_value(json_object_get(e, "file"));
        cr_assert(strlen(file) > strlen(want) && !strcmp(file + strlen(file) - strlen(want), want),
                  "%s is in %s, expected %s", name, file, want);
    }
    safetensors_close(s);
}

Test(safetensors, index_naming_a_tensor_its_shard_lacks_is_rejected)
{
    safetensors_set *s = (void *)1;
    cr_assert_eq(safetensors_open_dir(&s, FIX "/sharded_missing"), RB_EXIT_INPUT);
    cr_assert_null(s);
    cr_assert(strstr(err_msg(), "model.layers.0.mlp.up_proj.weight") &&
              strstr(err_msg(), "model-00002-of-00002.safetensors"), "%s", err_msg());
}

Test(safetensors, folder_without_weights_is_a_clear_error)
{
    safetensors_set *s;
    cr_assert_eq(safetensors_open_dir(&s, FIX "/bad"), RB_EXIT_INPUT);
    cr_assert(strstr(err_msg(), "model.safetensors"), "%s", err_msg());
    cr_assert_eq(safetensors_open_file(&s, FIX "/no_such.safetensors"), RB_EXIT_INPUT);
    cr_assert(strstr(err_msg(), "no_such.safetensors"), "%s", err_msg());
}

/* ---- headers that lie ---- */

static void expect_rejected(const char *file, const char *must_contain)
{
    char *path = xasprintf(FIX "/bad/%s", file);
    safetensors_set *s = NULL;
    err_clear();
    int rc = safetensors_open_file(&s, path);
    cr_assert_eq(rc, RB_EXIT_INPUT, "%s: rc %d (%s)", file, rc, err_msg());
    cr_assert_null(s);
    cr_assert(strstr(err_msg(), path), "%s: message does not name the file: %s", file,
              err_msg());
    if (must_contain)
        cr_assert(strstr(err_msg(), must_contain), "%s: message lacks '%s': %s", file,
                  must_contain, err_msg());
    free(path);
}

Test(safetensors, lying_headers_are_rejected_naming_file_and_tensor)
{
    expect_rejected("offsets_past_end.safetensors", "'w'");
    expect_rejected("overlap.safetensors", "overlap");
    expect_rejected("size_mismatch.safetensors", "'w'");
    expect_rejected("unknown_dtype.safetensors", "F8_E4M3");
    expect_rejected("negative_shape.safetensors", "'w'");
    expect_rejected("bad_offsets.safetensors", "'w'");
    expect_rejected("missing_dtype.safetensors", "'w'");
    expect_rejected("bad_metadata.safetensors", "__metadata__");
    expect_rejected("bad_json.safetensors", "JSON");
    expect_rejected("not_object.safetensors", "object");
    expect_rejected("duplicate_name.safetensors", "JSON");
    expect_rejected("huge_header.safetensors", "header length");
    expect_rejected("header_past_file.safetensors", "header length");
    expect_rejected("tiny.safetensors", "truncated");
    expect_rejected("truncated.safetensors", "'w'");
}

Test(safetensors, every_bad_fixture_is_covered)
{
    /* a new file in bad/ must be rejected too */
    DIR *d = opendir(FIX "/bad");
    cr_assert(d);
    struct dirent *e;
    int n = 0;
    while ((e = readdir(d))) {
        if (!strstr(e->d_name, ".safetensors"))
            continue;
        expect_rejected(e->d_name, NULL);
        n++;
    }
    closedir(d);
    cr_assert_geq(n, 15);
}

/* ---- conversions against torch ---- */

static void *read_raw(const safetensors_set *s, const char *name, st_dtype dtype, int64_t *n)
{
    const st_tensor *t = must_find(s, name);
    cr_assert_eq(t->dtype, dtype, "%s dtype", name);
    *n = st_tensor_numel(t);
    size_t bytes = (size_t)*n * st_dtype_size(dtype);
    void *p = xmalloc(bytes);
    memcpy(p, safetensors_data(s, t), bytes);
    return p;
}

Test(safetensors, f32_to_bf16_and_f16_match_torch_bit_for_bit)
{
    safetensors_set *s;
    cr_assert_eq(safetensors_open_file(&s, FIX "/convert.safetensors"), 0, "%s", err_msg());
    int64_t n, nb, nh;
    float *x = read_raw(s, "x", ST_F32, &n);
    uint16_t *xb = read_raw(s, "x_bf16", ST_BF16, &nb);
    uint16_t *xh = read_raw(s, "x_f16", ST_F16, &nh);
    cr_assert(n == nb && n == nh && n > 10000);

    int nan_seen = 0;
    for (int64_t i = 0; i < n; i++) {
        uint16_t b = f32_to_bf16(x[i]), h = f32_to_f16(x[i]);
        if (isnan(x[i])) {
            /* NaN stays NaN; torch's bf16 NaN bits differ between its scalar (0x7fc0) and
             * vector (0xffff) paths, so only NaN-ness is compared there. fp16 keeps the sign
             * and top payload bits exactly as torch does. */
            nan_seen++;
            cr_assert(isnan(bf16_to_f32(b)) && isnan(bf16_to_f32(xb[i])), "x[%lld] NaN lost",
                      (long long)i);
            cr_assert_eq(h, xh[i], "f16 NaN of %08x: %04x vs torch %04x", bits32(x[i]), h,
                         xh[i]);
            continue;
        }
        cr_assert_eq(b, xb[i], "bf16(%a = %08x): %04x vs torch %04x", x[i], bits32(x[i]), b,
                     xb[i]);
        cr_assert_eq(h, xh[i], "f16(%a = %08x): %04x vs torch %04x", x[i], bits32(x[i]), h,
                     xh[i]);
        cr_assert_eq(bits32(bf16_to_f32(b)), (uint32_t)b << 16);
    }
    cr_assert_gt(nan_seen, 3);
    free(x);
    free(xb);
    free(xh);
    safetensors_close(s);
}

Test(safetensors, every_f16_value_widens_as_torch_does)
{
    safetensors_set *s;
    cr_assert_eq(safetensors_open_file(&s, FIX "/convert.safetensors"), 0, "%s", err_msg());
    int64_t n, nf;
    uint16_t *h = read_raw(s, "all_f16", ST_F16, &n);
    float *want = read_raw(s, "all_f16_as_f32", ST_F32, &nf);
    cr_assert(n == 65536 && nf == n);
    for (int64_t i = 0; i < n; i++) {
        float got = f16_to_f32(h[i]);
        if (isnan(want[i])) {
            cr_assert(isnan(got), "%04x", h[i]);
            continue;
        }
        cr_assert_eq(bits32(got), bits32(want[i]), "f16 %04x: %a vs torch %a", h[i], got,
                     want[i]);
        cr_assert_eq(f32_to_f16(got), h[i], "f16 %04x does not round-trip", h[i]);
    }

    /* read_f32 widens F16 and BF16 tensors the same way */
    float *via = xmalloc((size_t)n * sizeof *via);
    int64_t shape[1] = {n};
    cr_assert_eq(safetensors_read_f32(s, "all_f16", 1, shape, via), 0);
    for (int64_t i = 0; i < n; i++)
        cr_assert(isnan(want[i]) ? isnan(via[i]) : bits32(via[i]) == bits32(want[i]));
    free(via);
    free(h);
    free(want);
    safetensors_close(s);
}

/* ---- writing ---- */

static char *tmp_dir(void)
{
    char tmpl[] = "/tmp/rubric-test-st-XXXXXX";
    cr_assert(mkdtemp(tmpl));
    return xstrdup(tmpl);
}

static void rm_rf(const char *dir)
{
    char *cmd = xasprintf("rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
    free(cmd);
}

Test(safetensors, written_file_reads_back_identically)
{
    char *dir = tmp_dir();
    char *path = xasprintf("%s/w.safetensors", dir);
    float f[6] = {1.5f, -2.0f, 0.0f, 3.25f, -0.0f, 1e-30f};
    uint16_t b[3] = {f32_to_bf16(0.1f), f32_to_bf16(-7.0f), 0x7fc0};
    uint16_t h[2] = {f32_to_f16(0.5f), f32_to_f16(65504.0f)};
    double d[1] = {1.0 / 3.0};
    int64_t i64[2] = {-1, 1ll << 50};
    uint8_t u8[3] = {1, 2, 255};
    st_write_tensor ts[] = {
        {"a.weight", ST_F32, 2, {2, 3}, f},  {"b", ST_BF16, 1, {3}, b},
        {"c", ST_F16, 2, {1, 2}, h},         {"d", ST_F64, 0, {0}, d},
        {"e", ST_I64, 1, {2}, i64},          {"f", ST_U8, 3, {1, 3, 1}, u8},
        {"empty", ST_F32, 2, {0, 4}, NULL},
    };
    int n = (int)RB_ARRAY_LEN(ts);
    const char *meta[] = {"format", "pt", "source", "rubric test", NULL};
    cr_assert_eq(safetensors_write(path, ts, n, meta), 0, "%s", err_msg());

    /* header: 8-byte aligned, padded with spaces */
    char *raw;
    size_t len;
    cr_assert_eq(read_file(path, &raw, &len), 0);
    uint64_t hlen;
    memcpy(&hlen, raw, 8);
    cr_assert_eq(hlen % 8, 0);
    cr_assert_eq(raw[8], '{');
    cr_assert(raw[8 + hlen - 1] == '}' || raw[8 + hlen - 1] == ' ');
    free(raw);

    safetensors_set *s;
    cr_assert_eq(safetensors_open_file(&s, path), 0, "%s", err_msg());
    cr_assert_eq(safetensors_count(s), n);
    for (int i = 0; i < n; i++) {
        const st_tensor *t = must_find(s, ts[i].name);
        cr_assert_eq(t->dtype, ts[i].dtype, "%s", ts[i].name);
        cr_assert_eq(t->ndim, ts[i].ndim, "%s", ts[i].name);
        for (int k = 0; k < t->ndim; k++)
            cr_assert_eq(t->shape[k], ts[i].shape[k]);
        size_t bytes = (size_t)(t->end - t->begin);
        cr_assert_eq(bytes, (size_t)st_tensor_numel(t) * st_dtype_size(t->dtype));
        if (bytes)
            cr_assert_eq(memcmp(safetensors_data(s, t), ts[i].data, bytes), 0, "%s",
                         ts[i].name);
    }
    safetensors_close(s);

    /* nothing but the file itself is left in the folder */
    DIR *dd = opendir(dir);
    struct dirent *e;
    int files = 0;
    while ((e = readdir(dd)))
        files += e->d_name[0] != '.';
    closedir(dd);
    cr_assert_eq(files, 1);
    rm_rf(dir);
    free(path);
    free(dir);
}

Test(safetensors, writer_refuses_duplicate_names_and_writes_nothing)
{
    char *dir = tmp_dir();
    char *path = xasprintf("%s/dup.safetensors", dir);
    float f[2] = {1, 2};
    st_write_tensor ts[] = {{"w", ST_F32, 1, {2}, f}, {"w", ST_F32, 1, {2}, f}};
    cr_assert_neq(safetensors_write(path, ts, 2, NULL), 0);
    cr_assert(strstr(err_msg(), "'w'"), "%s", err_msg());
    cr_assert_not(path_exists(path));
    rm_rf(dir);
    free(path);
    free(dir);
}

Test(safetensors, write_dir_shards_past_the_limit_and_reads_back)
{
    char *dir = tmp_dir();
    enum { N = 5, LEN = 100 };
    float data[N][LEN];
    st_write_tensor ts[N];
    char names[N][32];
    for (int i = 0; i < N; i++) {
        for (int k = 0; k < LEN; k++)
            data[i][k] = (float)(i * 1000 + k);
        snprintf(names[i], sizeof names[i], "t%d.weight", i);
        ts[i] = (st_write_tensor){names[i], ST_F32, 2, {10, 10}, data[i]};
    }
    /* 400 bytes each, at most 900 per shard: shards of 2, 2 and 1 */
    cr_assert_eq(safetensors_write_dir(dir, ts, N, NULL, 900), 0, "%s", err_msg());
    char *index = xasprintf("%s/model.safetensors.index.json", dir);
    char *third = xasprintf("%s/model-00003-of-00003.safetensors", dir);
    cr_assert(path_exists(index) && path_exists(third));

    safetensors_set *s;
    cr_assert_eq(safetensors_open_dir(&s, dir), 0, "%s", err_msg());
    cr_assert_eq(safetensors_count(s), N);
    for (int i = 0; i < N; i++) {
        float out[LEN];
        int64_t shape[2] = {10, 10};
        cr_assert_eq(safetensors_read_f32(s, names[i], 2, shape, out), 0, "%s", err_msg());
        cr_assert_eq(memcmp(out, data[i], sizeof out), 0);
    }
    cr_assert(strstr(safetensors_file_of(s, must_find(s, "t4.weight")), "00003-of-00003"));
    safetensors_close(s);

    /* without a limit: one model.safetensors, and the stale index is gone */
    cr_assert_eq(safetensors_write_dir(dir, ts, N, NULL, 0), 0, "%s", err_msg());
    cr_assert_not(path_exists(index));
    cr_assert_eq(safetensors_open_dir(&s, dir), 0, "%s", err_msg());
    cr_assert_eq(safetensors_count(s), N);
    safetensors_close(s);
    rm_rf(dir);
    free(index);
    free(third);
    free(dir);
}
