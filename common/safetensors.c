/*
 * safetensors.c: read (mmap, strict validation) and write Hugging Face safetensors files.
 *
 * Reading maps each file once, parses its JSON header with jansson and checks every claim the
 * header makes before any tensor is touched: the header length, each tensor's dtype, shape and
 * byte range, that ranges stay inside the data section and do not overlap, and that
 * __metadata__ maps strings to strings. A sharded set is read through
 * model.safetensors.index.json ("weight_map": tensor name -> shard file name).
 */
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util.h"

#define ST_MAX_HEADER (100u * 1000u * 1000u)

typedef struct {
    char *path;
    const uint8_t *map; /* whole file */
    size_t map_len;
    const uint8_t *data; /* start of the data section */
    uint64_t data_len;
} st_file;

struct safetensors_set {
    char *where;       /* the folder or file the set was opened from, for messages */
    st_file *files;
    int n_files;
    st_tensor *tensors; /* sorted by name */
    int n_tensors;
    int cap_tensors;
};

/* ---- dtypes ---- */

static const struct {
    const char *name;
    st_dtype dtype;
    size_t size;
} st_dtypes[] = {
    {"F32", ST_F32, 4}, {"F16", ST_F16, 2}, {"BF16", ST_BF16, 2}, {"F64", ST_F64, 8},
    {"I64", ST_I64, 8}, {"I32", ST_I32, 4}, {"I16", ST_I16, 2}, {"I8", ST_I8, 1},
    {"U8", ST_U8, 1},   {"BOOL", ST_BOOL, 1},
};

size_t st_dtype_size(st_dtype d)
{
    for (size_t i = 0; i < RB_ARRAY_LEN(st_dtypes); i++)
        if (st_dtypes[i].dtype == d)
            return st_dtypes[i].size;
    return 0;
}

const char *st_dtype_name(st_dtype d)
{
    for (size_t i = 0; i < RB_ARRAY_LEN(st_dtypes); i++)
        if (st_dtypes[i].dtype == d)
            return st_dtypes[i].name;
    return "?";
}

static int st_dtype_parse(const char *name, st_dtype *out)
{
    for (size_t i = 0; i < RB_ARRAY_LEN(st_dtypes); i++)
        if (strcmp(st_dtypes[i].name, name) == 0) {
            *out = st_dtypes[i].dtype;
            return 1;
        }
    return 0;
}

/* ---- fp32 <-> bf16 / fp16 ---- */

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float f32_from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t f32_to_bf16(float f)
{
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return 0x7fc0; /* NaN stays NaN (the canonical quiet NaN, as torch does) */
    uint32_t bias = 0x7fffu + ((u >> 16) & 1u); /* round to nearest, ties to even */
    return (uint16_t)((u + bias) >> 16);
}

float bf16_to_f32(uint16_t h) { return f32_from_bits((uint32_t)h << 16); }

/* Round-to-nearest-even shift right of m by s bits (s >= 1). */
static uint32_t shift_round_even(uint32_t m, int s)
{
    uint32_t q = m >> s, rem = m & ((1u << s) - 1u), half = 1u << (s - 1);
    if (rem > half || (rem == half && (q & 1u)))
        q++;
    return q;
}

uint16_t f32_to_f16(float f)
{
    uint32_t u = f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t ax = u & 0x7fffffffu;
    int e = (int)(ax >> 23);
    uint32_t mant = ax & 0x7fffffu;

    if (e == 0xff) /* inf, or NaN kept NaN (quiet, top payload bits kept) */
        return (uint16_t)(sign | 0x7c00u | (mant ? 0x200u | (mant >> 13) : 0u));
    if (e >= 143) /* 2^16 and above: past the largest half */
        return (uint16_t)(sign | 0x7c00u);
    if (e >= 113) { /* a normal half; a carry out of the mantissa bumps the exponent */
        uint32_t h = ((uint32_t)(e - 112) << 10) | (mant >> 13);
        uint32_t rem = mant & 0x1fffu;
        if (rem > 0x1000u || (rem == 0x1000u && (h & 1u)))
            h++;
        return (uint16_t)(sign | h);
    }
    if (e < 102) /* below half the smallest subnormal: zero */
        return sign;
    /* a subnormal half: value = h * 2^-24 */
    return (uint16_t)(sign | shift_round_even(mant | 0x800000u, 126 - e));
}

float f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
    if (e == 0x1f)
        return f32_from_bits(sign | 0x7f800000u | (mant << 13));
    if (e != 0)
        return f32_from_bits(sign | ((e + 112u) << 23) | (mant << 13));
    if (mant == 0)
        return f32_from_bits(sign);
    /* subnormal: normalise */
    uint32_t ef = 113;
    while (!(mant & 0x400u)) {
        mant <<= 1;
        ef--;
    }
    return f32_from_bits(sign | (ef << 23) | ((mant & 0x3ffu) << 13));
}

/* ---- header parsing ---- */

static int st_tensor_cmp_name(const void *a, const void *b)
{
    return strcmp(((const st_tensor *)a)->name, ((const st_tensor *)b)->name);
}

static int st_tensor_cmp_begin(const void *a, const void *b)
{
    const st_tensor *x = *(const st_tensor *const *)a, *y = *(const st_tensor *const *)b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

static int st_get_u64_array(json_t *arr, size_t want, uint64_t *out, int64_t limit)
{
    if (!json_is_array(arr) || (want && json_array_size(arr) != want))
        return 0;
    for (size_t i = 0; i < json_array_size(arr); i++) {
        json_t *v = json_array_get(arr, i);
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > limit)
            return 0;
        out[i] = (uint64_t)json_integer_value(v);
    }
    return 1;
}

/* Parse one tensor entry of file `path` into t (name not yet set). */
static int st_parse_entry(const char *path, const char *name, json_t *entry, uint64_t data_len,
                          st_tensor *t)
{
    if (!json_is_object(entry))
        return err_set(RB_EXIT_INPUT, "%s: tensor '%s': header entry is not a JSON object", path,
                       name);

    json_t *dt = json_object_get(entry, "dtype");
    if (!json_is_string(dt))
        return err_set(RB_EXIT_INPUT, "%s: tensor '%s': missing or non-string \"dtype\"", path,
                       name);
    if (!st_dtype_parse(json_string_value(dt), &t->dtype))
        return err_set(RB_EXIT_INPUT, "%s: tensor '%s': unsupported dtype '%s' (rubric reads "
                       "F32, F16, BF16, F64, I64, I32, I16, I8, U8, BOOL)", path, name,
                       json_string_value(dt));

    json_t *shape = json_object_get(entry, "shape");
    uint64_t dims[ST_MAX_DIMS];
    if (!json_is_array(shape) || json_array_size(shape) > ST_MAX_DIMS ||
        !st_get_u64_array(shape, 0, dims, INT64_MAX))
        return err_set(RB_EXIT_INPUT, "%s: tensor '%s': \"shape\" must be a list of at most %d "
                       "non-negative integers", path, name, ST_MAX_DIMS);
    t->ndim = (int)json_array_size(shape);

    /* bytes = product(shape) * dtype size, with overflow checks */
    uint64_t bytes = st_dtype_size(t->dtype);
    for (int i = 0; i < t->ndim; i++) {
        t->shape[i] = (int64_t)dims[i];
        if (dims[i] && bytes > UINT64_MAX / dims[i])
            return err_set(RB_EXIT_INPUT, "%s: tensor '%s': shape is too large", path, name);
        bytes *= dims[i];
    }

    uint64_t off[2];
    if (!st_get_u64_array(json_object_get(entry, "data_offsets"), 2, off, INT64_MAX) ||
        off[0] > off[1])
        return err_set(RB_EXIT_INPUT, "%s: tensor '%s': \"data_offsets\" must be [begin, end] "
                       "with 0 <= begin <= end", path, name);
    t->begin = off[0];
    t->end = off[1];
    if (off[1] - off[0] != bytes)
        return err_set(RB_EXIT_INPUT, "%s: tensor '%s': data_offsets [%llu, %llu] hold %llu "
                       "bytes but dtype %s x shape needs %llu; the file is corrupt", path, name,
                       (unsigned long long)off[0], (unsigned long long)off[1],
                       (unsigned long long)(off[1] - off[0]), st_dtype_name(t->dtype),
                       (unsigned long long)bytes);
    if (off[1] > data_len)
        return err_set(RB_EXIT_INPUT, "%s: tensor '%s': data_offsets end %llu is past the end of "
                       "the data section (%llu bytes); the file is truncated or corrupt", path,
                       name, (unsigned long long)off[1], (unsigned long long)data_len);
    return 0;
}

static int st_check_metadata(const char *path, json_t *meta)
{
    if (json_is_null(meta))
        return 0;
    if (!json_is_object(meta))
        return err_set(RB_EXIT_INPUT, "%s: \"__metadata__\" must be an object of strings", path);
    const char *k;
    json_t *v;
    json_object_foreach(meta, k, v) {
        if (!json_is_string(v))
            return err_set(RB_EXIT_INPUT, "%s: \"__metadata__\" value of '%s' is not a string",
                           path, k);
    }
    return 0;
}

/* Check that no two tensors of file `fi` (entries [first, n) of s) share bytes. */
static int st_check_overlap(const safetensors_set *s, int first, const char *path)
{
    int n = s->n_tensors - first;
    if (n < 2)
        return 0;
    const st_tensor **by_begin = xmalloc((size_t)n * sizeof *by_begin);
    for (int i = 0; i < n; i++)
        by_begin[i] = &s->tensors[first + i];
    qsort(by_begin, (size_t)n, sizeof *by_begin, st_tensor_cmp_begin);
    int rc = 0;
    const st_tensor *prev = NULL;
    for (int i = 0; i < n && !rc; i++) {
        const st_tensor *t = by_begin[i];
        if (t->begin == t->end)
            continue; /* an empty tensor holds no bytes */
        if (prev && t->begin < prev->end)
            rc = err_set(RB_EXIT_INPUT, "%s: tensors '%s' [%llu, %llu) and '%s' [%llu, %llu) "
                         "overlap; the header is corrupt", path, prev->name,
                         (unsigned long long)prev->begin, (unsigned long long)prev->end, t->name,
                         (unsigned long long)t->begin, (unsigned long long)t->end);
        prev = t;
    }
    free(by_begin);
    return rc;
}

static void st_add_tensor(safetensors_set *s, const st_tensor *t)
{
    if (s->n_tensors == s->cap_tensors) {
        s->cap_tensors = s->cap_tensors ? 2 * s->cap_tensors : 64;
        s->tensors = xrealloc(s->tensors, (size_t)s->cap_tensors * sizeof *s->tensors);
    }
    s->tensors[s->n_tensors++] = *t;
}

/* Parse the JSON header of file index fi and append its tensors to s. */
static int st_parse_header(safetensors_set *s, int fi)
{
    st_file *f = &s->files[fi];
    uint64_t hlen = (uint64_t)(f->data - f->map) - 8;
    json_error_t jerr;
    json_t *root = json_loadb((const char *)f->map + 8, (size_t)hlen, JSON_REJECT_DUPLICATES,
                              &jerr);
    if (!root)
        return err_set(RB_EXIT_INPUT, "%s: the header is not valid JSON (header column %d: %s)",
                       f->path, jerr.column, jerr.text);
    if (!json_is_object(root)) {
        json_decref(root);
        return err_set(RB_EXIT_INPUT, "%s: the header is not a JSON object", f->path);
    }

    int first = s->n_tensors, rc = 0;
    const char *name;
    json_t *entry;
    json_object_foreach(root, name, entry) {
        if (strcmp(name, "__metadata__") == 0) {
            rc = st_check_metadata(f->path, entry);
        } else {
            st_tensor t = {0};
            rc = st_parse_entry(f->path, name, entry, f->data_len, &t);
            if (!rc) {
                t.name = xstrdup(name);
                t.file = fi;
                st_add_tensor(s, &t);
            }
        }
        if (rc)
            break;
    }
    json_decref(root);
    if (!rc)
        rc = st_check_overlap(s, first, f->path);
    return rc;
}

/* ---- files ---- */

static int st_map_file(st_file *f, const char *path)
{
    memset(f, 0, sizeof *f);
    f->path = xstrdup(path);
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return err_set(errno == ENOENT ? RB_EXIT_INPUT : RB_EXIT_RUNTIME, "cannot open %s: %s",
                       path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return err_set(RB_EXIT_INPUT, "%s is not a regular file", path);
    }
    size_t len = (size_t)st.st_size;
    if (len < 8) {
        close(fd);
        return err_set(RB_EXIT_INPUT, "%s: truncated safetensors file (%zu bytes, fewer than "
                       "the 8-byte header length)", path, len);
    }
    void *map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED)
        return err_set(RB_EXIT_RUNTIME, "cannot map %s: %s", path, strerror(errno));
    f->map = map;
    f->map_len = len;

    /* the header length: little-endian u64, sane and inside the file */
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | f->map[i];
    if (hlen > ST_MAX_HEADER || hlen > len - 8)
        return err_set(RB_EXIT_INPUT, "%s: header length %llu is impossible (file is %zu bytes, "
                       "limit %u); the file is truncated or not safetensors", path,
                       (unsigned long long)hlen, len, ST_MAX_HEADER);
    if (hlen < 2)
        return err_set(RB_EXIT_INPUT, "%s: header length %llu is too short for a JSON object",
                       path, (unsigned long long)hlen);
    f->data = f->map + 8 + hlen;
    f->data_len = len - 8 - hlen;
    return 0;
}

static void st_unmap_file(st_file *f)
{
    if (f->map)
        munmap((void *)f->map, f->map_len);
    free(f->path);
}

static safetensors_set *st_set_new(const char *where)
{
    safetensors_set *s = xcalloc(1, sizeof *s);
    s->where = xstrdup(where);
    return s;
}

void safetensors_close(safetensors_set *s)
{
    if (!s)
        return;
    for (int i = 0; i < s->n_files; i++)
        st_unmap_file(&s->files[i]);
    for (int i = 0; i < s->n_tensors; i++)
        free(s->tensors[i].name);
    free(s->files);
    free(s->tensors);
    free(s->where);
    free(s);
}

/* Map file `path` as the next file of s and read its header. */
static int st_add_file(safetensors_set *s, const char *path)
{
    s->files = xrealloc(s->files, (size_t)(s->n_files + 1) * sizeof *s->files);
    int fi = s->n_files++;
    int rc = st_map_file(&s->files[fi], path);
    if (!rc)
        rc = st_parse_header(s, fi);
    return rc;
}

/* Sort the tensors by name for lookup; a name held by two files is an error. */
static int st_finish(safetensors_set *s)
{
    if (s->n_tensors > 1)
        qsort(s->tensors, (size_t)s->n_tensors, sizeof *s->tensors, st_tensor_cmp_name);
    for (int i = 1; i < s->n_tensors; i++)
        if (strcmp(s->tensors[i - 1].name, s->tensors[i].name) == 0)
            return err_set(RB_EXIT_INPUT, "tensor '%s' is in both %s and %s",
                           s->tensors[i].name, s->files[s->tensors[i - 1].file].path,
                           s->files[s->tensors[i].file].path);
    return 0;
}

int safetensors_open_file(safetensors_set **out, const char *path)
{
    *out = NULL;
    safetensors_set *s = st_set_new(path);
    int rc = st_add_file(s, path);
    if (!rc)
        rc = st_finish(s);
    if (rc) {
        safetensors_close(s);
        return rc;
    }
    *out = s;
    return 0;
}

/* Index of the shard named `file` in s, mapping it on first use. */
static int st_shard(safetensors_set *s, const char *dir, const char *index_path,
                    const char *file, int *fi)
{
    if (!*file || strchr(file, '/') || strcmp(file, "..") == 0)
        return err_set(RB_EXIT_INPUT, "%s: shard name '%s' must be a plain file name in the "
                       "same folder", index_path, file);
    char *path = xasprintf("%s/%s", dir, file);
    for (int i = 0; i < s->n_files; i++)
        if (strcmp(s->files[i].path, path) == 0) {
            free(path);
            *fi = i;
            return 0;
        }
    int rc = st_add_file(s, path);
    free(path);
    *fi = s->n_files - 1;
    return rc;
}

/* Open every shard named by the index's weight_map once, and check each named tensor is in
 * the shard the index says. */
static int st_open_index(safetensors_set *s, const char *dir, const char *index_path)
{
    json_error_t jerr;
    json_t *root = json_load_file(index_path, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return err_set(RB_EXIT_INPUT, "%s:%d: not valid JSON: %s", index_path, jerr.line,
                       jerr.text);
    json_t *wm = json_object_get(root, "weight_map");
    int rc = 0;
    if (!json_is_object(wm) || json_object_size(wm) == 0)
        rc = err_set(RB_EXIT_INPUT, "%s: \"weight_map\" must be a non-empty object of tensor "
                     "name -> shard file", index_path);

    const char *name;
    json_t *file;
    int *shard_of = NULL;
    size_t n = 0;
    if (!rc)
        shard_of = xmalloc(json_object_size(wm) * sizeof *shard_of);
    if (!rc)
        json_object_foreach(wm, name, file) {
            if (!json_is_string(file)) {
                rc = err_set(RB_EXIT_INPUT, "%s: weight_map entry '%s' is not a file name",
                             index_path, name);
                break;
            }
            if ((rc = st_shard(s, dir, index_path, json_string_value(file), &shard_of[n++])))
                break;
        }

    /* every tensor the index names must be in its shard */
    if (!rc && !(rc = st_finish(s))) {
        n = 0;
        json_object_foreach(wm, name, file) {
            const st_tensor *t = safetensors_find(s, name);
            int want = shard_of[n++];
            if (!t || t->file != want) {
                rc = err_set(RB_EXIT_INPUT, "%s: tensor '%s' is named by %s but is missing "
                             "from that shard", s->files[want].path, name, index_path);
                break;
            }
        }
    }
    free(shard_of);
    json_decref(root);
    return rc;
}

int safetensors_open_dir(safetensors_set **out, const char *dir)
{
    *out = NULL;
    char *index_path = xasprintf("%s/model.safetensors.index.json", dir);
    char *single = xasprintf("%s/model.safetensors", dir);
    safetensors_set *s = st_set_new(dir);
    int rc;
    if (path_exists(single))
        rc = (rc = st_add_file(s, single)) ? rc : st_finish(s);
    else if (path_exists(index_path))
        rc = st_open_index(s, dir, index_path);
    else
        rc = err_set(RB_EXIT_INPUT, "%s has neither model.safetensors nor "
                     "model.safetensors.index.json; is it a Hugging Face model folder?", dir);
    free(index_path);
    free(single);
    if (rc) {
        safetensors_close(s);
        return rc;
    }
    *out = s;
    return 0;
}

/* ---- lookup and reading ---- */

const st_tensor *safetensors_find(const safetensors_set *s, const char *name)
{
    st_tensor key = {.name = (char *)name};
    return bsearch(&key, s->tensors, (size_t)s->n_tensors, sizeof key, st_tensor_cmp_name);
}

int safetensors_count(const safetensors_set *s) { return s->n_tensors; }

const st_tensor *safetensors_at(const safetensors_set *s, int i)
{
    return i >= 0 && i < s->n_tensors ? &s->tensors[i] : NULL;
}

const char *safetensors_file_of(const safetensors_set *s, const st_tensor *t)
{
    return s->files[t->file].path;
}

const void *safetensors_data(const safetensors_set *s, const st_tensor *t)
{
    return s->files[t->file].data + t->begin;
}

int64_t st_tensor_numel(const st_tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= t->shape[i];
    return n;
}

static void st_format_shape(char *buf, size_t cap, int ndim, const int64_t *shape)
{
    size_t k = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && k < cap; i++)
        k += (size_t)snprintf(buf + k, cap - k, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (k < cap)
        snprintf(buf + k, cap - k, "]");
}

static int st_shape_matches(const st_tensor *t, int ndim, const int64_t *shape)
{
    if (t->ndim != ndim)
        return 0;
    for (int i = 0; i < ndim; i++)
        if (t->shape[i] != shape[i])
            return 0;
    return 1;
}

/* Convert n elements of dtype d at src (any alignment) to fp32. */
static void st_convert_f32(st_dtype d, const uint8_t *src, int64_t n, float *out)
{
    switch (d) {
    case ST_F32:
        memcpy(out, src, (size_t)n * 4);
        break;
    case ST_BF16:
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (n > 65536)
#endif
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, src + 2 * i, 2);
            out[i] = bf16_to_f32(h);
        }
        break;
    case ST_F16:
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (n > 65536)
#endif
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, src + 2 * i, 2);
            out[i] = f16_to_f32(h);
        }
        break;
    case ST_F64:
        for (int64_t i = 0; i < n; i++) {
            double v;
            memcpy(&v, src + 8 * i, 8);
            out[i] = (float)v;
        }
        break;
    default:
        break;
    }
}

int safetensors_read_f32(const safetensors_set *s, const char *name, int ndim,
                         const int64_t *shape, float *out)
{
    const st_tensor *t = safetensors_find(s, name);
    if (!t)
        return err_set(RB_EXIT_INPUT, "tensor '%s' is missing from %s", name, s->where);
    const char *path = safetensors_file_of(s, t);
    if (ndim > 0 && !st_shape_matches(t, ndim, shape)) {
        char want[256], got[256];
        st_format_shape(want, sizeof want, ndim, shape);
        st_format_shape(got, sizeof got, t->ndim, t->shape);
        return err_set(RB_EXIT_INPUT, "%s: tensor '%s' has shape %s, expected %s (does "
                       "config.json match the weights?)", path, name, got, want);
    }
    if (t->dtype != ST_F32 && t->dtype != ST_BF16 && t->dtype != ST_F16 && t->dtype != ST_F64)
        return err_set(RB_EXIT_INPUT, "%s: tensor '%s' is %s, not a floating-point tensor "
                       "(F32, F16, BF16 or F64)", path, name, st_dtype_name(t->dtype));
    st_convert_f32(t->dtype, safetensors_data(s, t), st_tensor_numel(t), out);
    return 0;
}

/* ---- writing ---- */

static int st_check_write_tensor(const char *path, const st_write_tensor *t, uint64_t *bytes)
{
    if (!t->name || !*t->name || strcmp(t->name, "__metadata__") == 0)
        return err_set(RB_EXIT_RUNTIME, "%s: a tensor needs a name other than __metadata__",
                       path);
    size_t es = st_dtype_size(t->dtype);
    if (!es || t->ndim < 0 || t->ndim > ST_MAX_DIMS)
        return err_set(RB_EXIT_RUNTIME, "%s: tensor '%s' has a bad dtype or ndim", path,
                       t->name);
    uint64_t b = es;
    for (int i = 0; i < t->ndim; i++) {
        if (t->shape[i] < 0)
            return err_set(RB_EXIT_RUNTIME, "%s: tensor '%s' has a negative dimension", path,
                           t->name);
        b *= (uint64_t)t->shape[i];
    }
    if (b && !t->data)
        return err_set(RB_EXIT_RUNTIME, "%s: tensor '%s' has no data", path, t->name);
    *bytes = b;
    return 0;
}

/* Build the header JSON (compact, padded with spaces to a multiple of 8 bytes). */
static int st_build_header(const char *path, const st_write_tensor *tensors, int n,
                           const char *const *metadata, char **out, size_t *out_len)
{
    json_t *root = json_object();
    int rc = 0;
    if (metadata) {
        json_t *meta = json_object();
        for (int i = 0; metadata[i] && metadata[i + 1]; i += 2)
            json_object_set_new(meta, metadata[i], json_string(metadata[i + 1]));
        json_object_set_new(root, "__metadata__", meta);
    }
    uint64_t off = 0;
    for (int i = 0; i < n && !rc; i++) {
        const st_write_tensor *t = &tensors[i];
        uint64_t bytes;
        if ((rc = st_check_write_tensor(path, t, &bytes)))
            break;
        if (json_object_get(root, t->name)) {
            rc = err_set(RB_EXIT_RUNTIME, "%s: tensor '%s' is written twice", path, t->name);
            break;
        }
        json_t *shape = json_array();
        for (int d = 0; d < t->ndim; d++)
            json_array_append_new(shape, json_integer(t->shape[d]));
        json_t *offs = json_pack("[II]", (json_int_t)off, (json_int_t)(off + bytes));
        json_object_set_new(root, t->name,
                            json_pack("{s:s, s:o, s:o}", "dtype", st_dtype_name(t->dtype),
                                      "shape", shape, "data_offsets", offs));
        off += bytes;
    }
    char *text = rc ? NULL : json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(root);
    if (rc)
        return rc;
    if (!text)
        return err_set(RB_EXIT_RUNTIME, "%s: cannot encode the header", path);

    size_t len = strlen(text), padded = (len + 7) & ~(size_t)7;
    char *buf = xmalloc(padded);
    memcpy(buf, text, len);
    memset(buf + len, ' ', padded - len);
    free(text);
    *out = buf;
    *out_len = padded;
    return 0;
}

int safetensors_write(const char *path, const st_write_tensor *tensors, int n,
                      const char *const *metadata)
{
    char *header = NULL;
    size_t hlen = 0;
    int rc = st_build_header(path, tensors, n, metadata, &header, &hlen);
    if (rc)
        return rc;

    atomic_file af;
    if ((rc = atomic_file_open(&af, path))) {
        free(header);
        return rc;
    }
    uint8_t len_le[8];
    for (int i = 0; i < 8; i++)
        len_le[i] = (uint8_t)((uint64_t)hlen >> (8 * i));
    int ok = fwrite(len_le, 1, 8, af.fp) == 8 && fwrite(header, 1, hlen, af.fp) == hlen;
    for (int i = 0; i < n && ok; i++) {
        uint64_t bytes;
        st_check_write_tensor(path, &tensors[i], &bytes);
        ok = !bytes || fwrite(tensors[i].data, 1, bytes, af.fp) == bytes;
    }
    free(header);
    if (!ok) {
        rc = err_set(RB_EXIT_RUNTIME, "cannot write %s: %s", path, strerror(errno));
        atomic_file_abort(&af);
        return rc;
    }
    return atomic_file_commit(&af);
}

/* Shard file name i (0-based) of n, as transformers names them. */
static char *st_shard_name(int i, int n)
{
    return xasprintf("model-%05d-of-%05d.safetensors", i + 1, n);
}

int safetensors_write_dir(const char *dir, const st_write_tensor *tensors, int n,
                          const char *const *metadata, uint64_t max_shard_bytes)
{
    /* cut the tensors, in order, into shards of at most max_shard_bytes (one tensor larger
     * than that gets a shard of its own) */
    int *shard = xmalloc((size_t)(n ? n : 1) * sizeof *shard);
    int n_shards = 0;
    uint64_t used = 0, total = 0;
    for (int i = 0; i < n; i++) {
        uint64_t bytes;
        int rc = st_check_write_tensor(dir, &tensors[i], &bytes);
        if (rc) {
            free(shard);
            return rc;
        }
        if (n_shards == 0 || (max_shard_bytes && used > 0 && used + bytes > max_shard_bytes)) {
            n_shards++;
            used = 0;
        }
        used += bytes;
        total += bytes;
        shard[i] = n_shards - 1;
    }

    int rc = 0;
    char *single = xasprintf("%s/model.safetensors", dir);
    char *index_path = xasprintf("%s/model.safetensors.index.json", dir);
    if (n_shards <= 1) {
        rc = safetensors_write(single, tensors, n, metadata);
        if (!rc)
            unlink(index_path);
        free(single);
        free(index_path);
        free(shard);
        return rc;
    }

    /* each shard, then the index naming every tensor's shard */
    json_t *wm = json_object();
    for (int k = 0, first = 0; k < n_shards && !rc; k++) {
        int last = first;
        while (last < n && shard[last] == k)
            last++;
        char *name = st_shard_name(k, n_shards);
        char *path = xasprintf("%s/%s", dir, name);
        rc = safetensors_write(path, tensors + first, last - first, metadata);
        for (int i = first; i < last; i++)
            json_object_set_new(wm, tensors[i].name, json_string(name));
        free(path);
        free(name);
        first = last;
    }
    if (!rc) {
        json_t *root = json_pack("{s:{s:I}, s:o}", "metadata", "total_size", (json_int_t)total,
                                 "weight_map", json_incref(wm));
        char *text = json_dumps(root, JSON_INDENT(2) | JSON_SORT_KEYS);
        rc = write_file_atomic(index_path, text, strlen(text));
        free(text);
        json_decref(root);
    }
    if (!rc)
        unlink(single);
    json_decref(wm);
    free(single);
    free(index_path);
    free(shard);
    return rc;
}
