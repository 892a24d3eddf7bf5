/* prep.c: rubric prep: read, validate, dedup, tokenize, filter, split, pack, cache (prep.h). */
#include "prep.h"

#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <utf8proc.h>
#include <xxhash.h>
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "jsonl.h"
#include "log.h"
#include "prompt.h"
#include "util.h"

#define PREP_BATCH_ROWS 8192            /* rows per batch, at most */
#define PREP_BATCH_BYTES ((size_t)64 << 20) /* and at most this much line text */
#define PREP_SLOT_KEEP ((size_t)1 << 20)  /* a slot frees buffers larger than this */

static const char *const reason_names[PREP_N_REASONS] = {
    "ok", "blank_line", "bom", "invalid_utf8", "not_json", "not_object", "missing_field",
    "field_not_string", "not_a_score", "score_out_of_range", "score_count",
};

const char *prep_reason_name(int reason)
{
    if (reason <= 0 || reason >= PREP_N_REASONS)
        return "unknown";
    return reason_names[reason];
}

static const char *const field_names[3] = {"instruction", "input", "output"};

/* A growable array: VEC_PUSH(ptr, n, cap, value). */
#define VEC_PUSH(p, n, cap, v)                                                               \
    do {                                                                                     \
        if ((n) == (cap)) {                                                                  \
            (cap) = (cap) ? (cap) * 2 : 1024;                                                \
            (p) = xrealloc((p), (size_t)(cap) * sizeof *(p));                                \
        }                                                                                    \
        (p)[(n)++] = (v);                                                                    \
    } while (0)

/* ======================================================================================== */
/* row checks                                                                                */
/* ======================================================================================== */

enum score_kind { SCORE_NOT = 0, SCORE_OK = 1, SCORE_RANGE = 2 };

/* One line of the current batch and what the stages found out about it. */
typedef struct {
    char *line;
    size_t len, cap;
    int64_t lineno, offset;
    int reason;               /* 0 or enum prep_reason */
    char detail[200];
    json_t *obj;
    const char *field[3];
    size_t field_len[3];
    XXH128_hash_t hash;
    int score_kind;
    int n_scores;
    int duplicate;
    int tok_rc;
    prompt_tokens pt;
} row_slot;

/* Per-thread scratch. */
typedef struct {
    char *dump;
    size_t dump_cap;
    prep_score_shape *shape;
    prompt_cache cache;
} thread_scratch;

static void check_fields(row_slot *r)
{
    for (int i = 0; i < 3; i++) {
        json_t *v = json_object_get(r->obj, field_names[i]);
        if (!v) {
            r->reason = PREP_MISSING_FIELD;
            snprintf(r->detail, sizeof r->detail, "field '%s' is missing", field_names[i]);
            return;
        }
        if (!json_is_string(v)) {
            r->reason = PREP_FIELD_NOT_STRING;
            snprintf(r->detail, sizeof r->detail, "field '%s' is not a string",
                     field_names[i]);
            return;
        }
        r->field[i] = json_string_value(v);
        r->field_len[i] = json_string_length(v);
    }
}

/* The dedup key: XXH3-128 of the key-sorted, compact, ASCII-escaped JSON of the whole row. */
static void hash_row(row_slot *r, thread_scratch *ts)
{
    const size_t flags = JSON_SORT_KEYS | JSON_COMPACT | JSON_ENSURE_ASCII;
    size_t n = json_dumpb(r->obj, ts->dump, ts->dump_cap, flags);
    if (n > ts->dump_cap) {
        ts->dump_cap = n + 1024;
        ts->dump = xrealloc(ts->dump, ts->dump_cap);
        n = json_dumpb(r->obj, ts->dump, ts->dump_cap, flags);
    }
    r->hash = XXH3_128bits(ts->dump, n);
}

/* ---- the score shape: ^[0-9]+( [0-9]+)*$ (PCRE2), then the range and the count ---- */

struct prep_score_shape {
    pcre2_code *re;
    pcre2_match_data *md;
};

prep_score_shape *prep_score_shape_new(void)
{
    int errcode;
    PCRE2_SIZE erroff;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR) "^[0-9]+( [0-9]+)*\\z", PCRE2_ZERO_TERMINATED,
                                   0, &errcode, &erroff, NULL);
    if (!re) {
        err_set(RB_EXIT_RUNTIME, "cannot compile the score pattern");
        return NULL;
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
    prep_score_shape *sh = xcalloc(1, sizeof *sh);
    sh->re = re;
    sh->md = pcre2_match_data_create_from_pattern(re, NULL);
    return sh;
}

void prep_score_shape_free(prep_score_shape *sh)
{
    if (!sh)
        return;
    pcre2_match_data_free(sh->md);
    pcre2_code_free(sh->re);
    free(sh);
}

int prep_score_shape_count(prep_score_shape *sh, const char *s, size_t n, int lo, int hi,
                           int *in_range)
{
    return prep_score_shape_values(sh, s, n, lo, hi, in_range, NULL, 0);
}

int prep_score_shape_values(prep_score_shape *sh, const char *s, size_t n, int lo, int hi,
                            int *in_range, int *scores, int max)
{
    *in_range = 0;
    if (pcre2_match(sh->re, (PCRE2_SPTR)s, n, 0, 0, sh->md, NULL) < 0)
        return 0;
    int count = 0;
    *in_range = 1;
    const char *p = s, *end = s + n;
    while (p < end) {
        char *q;
        long v = strtol(p, &q, 10);
        if (v < lo || v > hi)
            *in_range = 0;
        if (count < max)
            scores[count] = (int)RB_MIN(v, INT_MAX);
        count++;
        p = q + (q < end);
    }
    return count;
}

/* Classify the output as scores. */
static void classify_score(row_slot *r, thread_scratch *ts, int score_min, int score_max)
{
    int in_range, count = prep_score_shape_count(ts->shape, r->field[2], r->field_len[2],
                                                 score_min, score_max, &in_range);
    r->score_kind = count == 0 ? SCORE_NOT : in_range ? SCORE_OK : SCORE_RANGE;
    r->n_scores = count;
}

/* ======================================================================================== */
/* dedup set of 128-bit hashes                                                               */
/* ======================================================================================== */

typedef struct {
    XXH128_hash_t *keys;
    size_t cap, n;
} hash_set;

static int hash_set_insert_raw(hash_set *s, XXH128_hash_t k)
{
    if ((k.low64 | k.high64) == 0)
        k.low64 = 1; /* all-zero marks an empty slot */
    size_t mask = s->cap - 1;
    size_t i = (size_t)k.low64 & mask;
    while (s->keys[i].low64 | s->keys[i].high64) {
        if (s->keys[i].low64 == k.low64 && s->keys[i].high64 == k.high64)
            return 0;
        i = (i + 1) & mask;
    }
    s->keys[i] = k;
    s->n++;
    return 1;
}

/* Returns 1 when k was new (inserted), 0 when already present. */
static int hash_set_insert(hash_set *s, XXH128_hash_t k)
{
    if (2 * (s->n + 1) > s->cap) {
        hash_set old = *s;
        s->cap = old.cap ? old.cap * 2 : 1 << 16;
        s->keys = xcalloc(s->cap, sizeof *s->keys);
        s->n = 0;
        for (size_t i = 0; i < old.cap; i++)
            if (old.keys[i].low64 | old.keys[i].high64)
                hash_set_insert_raw(s, old.keys[i]);
        free(old.keys);
    }
    return hash_set_insert_raw(s, k);
}

/* ======================================================================================== */
/* rows' own tokens, streamed into the cache file as they come (memory stays bounded)        */
/* ======================================================================================== */

#define PREP_TOKEN_CHUNK ((hsize_t)1 << 16) /* HDF5 chunk of the tokens dataset: 256 KiB */
#define PREP_FLUSH_TOKENS ((int64_t)1 << 22) /* tokens buffered before a write: 16 MiB */

typedef struct {
    hid_t dset;            /* "tokens": uint32, chunked, extendible */
    uint32_t *buf;
    int64_t n_buf, cap_buf;
    int64_t n_written;
} token_store;

static int token_store_create(token_store *ts, hid_t f)
{
    memset(ts, 0, sizeof *ts);
    hsize_t dims[1] = {0}, maxd[1] = {H5S_UNLIMITED}, chunk[1] = {PREP_TOKEN_CHUNK};
    hid_t space = H5Screate_simple(1, dims, maxd);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_chunk(dcpl, 1, chunk);
    ts->dset = H5Dcreate2(f, "tokens", H5T_NATIVE_UINT32, space, H5P_DEFAULT, dcpl,
                          H5P_DEFAULT);
    H5Pclose(dcpl);
    H5Sclose(space);
    return ts->dset < 0 ? err_set(RB_EXIT_RUNTIME, "cannot create the tokens dataset") : 0;
}

static int token_store_flush(token_store *ts)
{
    if (ts->n_buf == 0)
        return 0;
    hsize_t start[1] = {(hsize_t)ts->n_written}, count[1] = {(hsize_t)ts->n_buf};
    hsize_t size[1] = {start[0] + count[0]};
    herr_t e = H5Dset_extent(ts->dset, size);
    hid_t fs = H5Dget_space(ts->dset);
    hid_t ms = H5Screate_simple(1, count, NULL);
    if (e >= 0)
        e = H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL);
    if (e >= 0)
        e = H5Dwrite(ts->dset, H5T_NATIVE_UINT32, ms, fs, H5P_DEFAULT, ts->buf);
    H5Sclose(ms);
    H5Sclose(fs);
    if (e < 0)
        return err_set(RB_EXIT_RUNTIME, "cannot write tokens (disk full?)");
    ts->n_written += ts->n_buf;
    ts->n_buf = 0;
    return 0;
}

/* Append ids; returns their offset in the whole store. */
static int token_store_append(token_store *ts, const uint32_t *ids, int64_t n, int64_t *offset)
{
    *offset = ts->n_written + ts->n_buf;
    if (ts->n_buf + n > ts->cap_buf) {
        ts->cap_buf = RB_MAX(ts->n_buf + n, PREP_FLUSH_TOKENS + 4096);
        ts->buf = xrealloc(ts->buf, (size_t)ts->cap_buf * sizeof *ts->buf);
    }
    memcpy(ts->buf + ts->n_buf, ids, (size_t)n * sizeof *ids);
    ts->n_buf += n;
    return ts->n_buf >= PREP_FLUSH_TOKENS ? token_store_flush(ts) : 0;
}

static void token_store_close(token_store *ts)
{
    if (ts->dset > 0)
        H5Dclose(ts->dset);
    free(ts->buf);
    memset(ts, 0, sizeof *ts);
}

/* ======================================================================================== */
/* the builder: samples and tokens as they are accepted                                     */
/* ======================================================================================== */

typedef struct {
    /* per candidate sample */
    int64_t n, cap;
    int32_t *prefix_id, *prefix_len, *len, *sup_start, *file_index, *n_scores;
    int64_t *suffix_offset, *line, *byte_offset;
    uint64_t *hash_lo;
    uint8_t *score_kind, *removed;
    /* rows' own tokens */
    token_store *store;
    /* shared prefixes, found by a hash of their ids */
    uint32_t *prefix_tokens;
    int64_t n_prefix_tokens, cap_prefix_tokens;
    int64_t *prefix_offsets;
    int64_t n_prefixes, cap_prefixes;
    uint64_t *pfx_hash_keys;
    int64_t *pfx_hash_ids;
    size_t pfx_hash_cap;
} builder;

static void builder_grow(builder *b)
{
    if (b->n < b->cap)
        return;
    b->cap = b->cap ? b->cap * 2 : 4096;
    size_t c = (size_t)b->cap;
    b->prefix_id = xrealloc(b->prefix_id, c * sizeof(int32_t));
    b->prefix_len = xrealloc(b->prefix_len, c * sizeof(int32_t));
    b->len = xrealloc(b->len, c * sizeof(int32_t));
    b->sup_start = xrealloc(b->sup_start, c * sizeof(int32_t));
    b->file_index = xrealloc(b->file_index, c * sizeof(int32_t));
    b->n_scores = xrealloc(b->n_scores, c * sizeof(int32_t));
    b->suffix_offset = xrealloc(b->suffix_offset, c * sizeof(int64_t));
    b->line = xrealloc(b->line, c * sizeof(int64_t));
    b->byte_offset = xrealloc(b->byte_offset, c * sizeof(int64_t));
    b->hash_lo = xrealloc(b->hash_lo, c * sizeof(uint64_t));
    b->score_kind = xrealloc(b->score_kind, c);
    b->removed = xrealloc(b->removed, c);
}

static void builder_free(builder *b)
{
    free(b->prefix_id), free(b->prefix_len), free(b->len), free(b->sup_start);
    free(b->file_index), free(b->n_scores), free(b->suffix_offset), free(b->line);
    free(b->byte_offset), free(b->hash_lo), free(b->score_kind), free(b->removed);
    free(b->prefix_tokens), free(b->prefix_offsets);
    free(b->pfx_hash_keys), free(b->pfx_hash_ids);
    memset(b, 0, sizeof *b);
}

static void prefix_table_rehash(builder *b)
{
    size_t cap = b->pfx_hash_cap ? b->pfx_hash_cap * 2 : 256;
    uint64_t *keys = xcalloc(cap, sizeof *keys);
    int64_t *ids = xmalloc(cap * sizeof *ids);
    for (size_t i = 0; i < cap; i++)
        ids[i] = -1;
    for (size_t i = 0; i < b->pfx_hash_cap; i++) {
        if (b->pfx_hash_ids[i] < 0)
            continue;
        size_t j = (size_t)b->pfx_hash_keys[i] & (cap - 1);
        while (ids[j] >= 0)
            j = (j + 1) & (cap - 1);
        keys[j] = b->pfx_hash_keys[i];
        ids[j] = b->pfx_hash_ids[i];
    }
    free(b->pfx_hash_keys);
    free(b->pfx_hash_ids);
    b->pfx_hash_keys = keys;
    b->pfx_hash_ids = ids;
    b->pfx_hash_cap = cap;
}

/* The id of the prefix ids[0..n), added when new. */
static int32_t builder_prefix(builder *b, const uint32_t *ids, size_t n)
{
    if (2 * (size_t)(b->n_prefixes + 1) > b->pfx_hash_cap)
        prefix_table_rehash(b);
    uint64_t h = XXH3_64bits(ids, n * sizeof *ids);
    size_t mask = b->pfx_hash_cap - 1, j = (size_t)h & mask;
    while (b->pfx_hash_ids[j] >= 0) {
        int64_t id = b->pfx_hash_ids[j];
        int64_t off = b->prefix_offsets[id], pn = b->prefix_offsets[id + 1] - off;
        if (b->pfx_hash_keys[j] == h && (size_t)pn == n &&
            memcmp(b->prefix_tokens + off, ids, n * sizeof *ids) == 0)
            return (int32_t)id;
        j = (j + 1) & mask;
    }

    /* a new prefix */
    if (b->n_prefixes + 2 > b->cap_prefixes) {
        b->cap_prefixes = RB_MAX(2 * b->cap_prefixes, 64);
        b->prefix_offsets = xrealloc(b->prefix_offsets,
                                     (size_t)b->cap_prefixes * sizeof *b->prefix_offsets);
    }
    if (b->n_prefixes == 0)
        b->prefix_offsets[0] = 0;
    int64_t id = b->n_prefixes++;
    for (size_t i = 0; i < n; i++)
        VEC_PUSH(b->prefix_tokens, b->n_prefix_tokens, b->cap_prefix_tokens, ids[i]);
    b->prefix_offsets[id + 1] = b->n_prefix_tokens;
    b->pfx_hash_keys[j] = h;
    b->pfx_hash_ids[j] = id;
    return (int32_t)id;
}

static int builder_add(builder *b, const row_slot *r, int file_index)
{
    builder_grow(b);
    int64_t i = b->n++;
    const prompt_tokens *pt = &r->pt;
    b->prefix_id[i] = builder_prefix(b, pt->ids.ids, pt->n_prefix);
    b->prefix_len[i] = (int32_t)pt->n_prefix;
    b->len[i] = (int32_t)pt->ids.n;
    b->sup_start[i] = (int32_t)pt->sup_start;
    b->file_index[i] = file_index;
    b->n_scores[i] = r->n_scores;
    b->score_kind[i] = (uint8_t)r->score_kind;
    b->removed[i] = 0;
    b->line[i] = r->lineno;
    b->byte_offset[i] = r->offset;
    b->hash_lo[i] = r->hash.low64 ^ r->hash.high64;
    return token_store_append(b->store, pt->ids.ids + pt->n_prefix,
                              (int64_t)(pt->ids.n - pt->n_prefix), &b->suffix_offset[i]);
}

/* ======================================================================================== */
/* the reading pass                                                                          */
/* ======================================================================================== */

typedef struct {
    const rubric_config *cfg;
    prompt_encoder pe;
    uint32_t pad_id; /* special_tokens.pad_token's id (checked at ctx_init) */
    thread_scratch *ts;
    int n_threads;
    row_slot *slots;
    hash_set seen;
    builder b;
    prep_stats *st;
    atomic_file rejects;
    int rejects_open;
    const char *path;      /* the file being read */
    int file_index;
    int64_t file_valid;    /* rows of this file that passed validation */
} prep_ctx;

static thread_scratch *scratch(prep_ctx *c)
{
#ifdef _OPENMP
    return &c->ts[omp_get_thread_num()];
#else
    return &c->ts[0];
#endif
}

/* text with each invalid UTF-8 byte replaced by U+FFFD (malloc'ed). */
static char *utf8_lossy(const char *text, size_t len, size_t *out_len)
{
    const utf8proc_uint8_t *p = (const utf8proc_uint8_t *)text;
    char *clean = xmalloc(3 * len + 1);
    size_t o = 0, i = 0;
    while (i < len) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t k =
            p[i] < 0x80 ? 1 : utf8proc_iterate(p + i, (utf8proc_ssize_t)(len - i), &cp);
        if (k > 0) {
            memcpy(clean + o, text + i, (size_t)k);
            o += (size_t)k;
            i += (size_t)k;
        } else {
            memcpy(clean + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i++;
        }
    }
    *out_len = o;
    return clean;
}

/* Append {"file","line","reason","detail","text"} to rejects.jsonl. Invalid UTF-8 in the text
 * is written as U+FFFD so the rejects file stays valid JSON. */
static void write_reject(prep_ctx *c, const char *path, int64_t line, int reason,
                         const char *detail, const char *text, size_t len)
{
    char *clean = NULL;
    if (!jsonl_utf8_valid(text, len, NULL)) {
        clean = utf8_lossy(text, len, &len);
        text = clean;
    }
    json_t *o = json_pack("{s:s, s:I, s:s, s:s, s:s%}", "file", path, "line",
                          (json_int_t)line, "reason", prep_reason_name(reason), "detail",
                          detail, "text", text, len);
    if (o) {
        json_dumpf(o, c->rejects.fp, JSON_COMPACT | JSON_ENSURE_ASCII);
        fputc('\n', c->rejects.fp);
        json_decref(o);
    }
    free(clean);
}

/* The strict-mode error for the first bad row ("FILE:LINE: reason: detail"). */
static int strict_error(const char *first_reject)
{
    return err_set(RB_EXIT_INPUT, "%s (strict: true stops at the first bad row; without it bad "
                   "rows are skipped, counted and listed in rejects.jsonl)", first_reject);
}

/* Count a bad row and write it to the rejects file; in strict mode it is the error. */
static int reject_row(prep_ctx *c, const char *path, int64_t line, int reason,
                      const char *detail, const char *text, size_t len)
{
    if (c->st->rejected_total == 0) {
        snprintf(c->st->first_reject, sizeof c->st->first_reject, "%s:%lld: %s: %s", path,
                 (long long)line, prep_reason_name(reason), detail);
        for (int k = 0; k < c->cfg->n_datasets; k++)
            if (strcmp(c->cfg->datasets[k].path, path) == 0) {
                c->st->first_reject_file = k;
                break;
            }
        c->st->first_reject_at = (int)RB_MIN(strlen(path) + 1, sizeof c->st->first_reject - 1);
    }
    c->st->rejected[reason]++;
    c->st->rejected_total++;
    write_reject(c, path, line, reason, detail, text, len);
    if (c->cfg->strict)
        return strict_error(c->st->first_reject);
    return 0;
}

/* Stage 1 (parallel): parse, check the fields, hash, classify the output. */
static void check_row(prep_ctx *c, row_slot *r)
{
    thread_scratch *ts = scratch(c);
    r->reason = 0;
    r->detail[0] = '\0';
    r->duplicate = 0;
    r->tok_rc = 0;
    int st = jsonl_parse(r->line, r->len, &r->obj, r->detail, sizeof r->detail);
    if (st != JSONL_OK) {
        r->reason = st; /* jsonl_status values 1..5 are prep_reason's first five */
        return;
    }
    check_fields(r);
    if (r->reason)
        return;
    hash_row(r, ts);
    classify_score(r, ts, c->cfg->score_min, c->cfg->score_max);
}

/* Stage 3 (parallel): render and tokenize a unique row. */
static void encode_row(prep_ctx *c, row_slot *r)
{
    thread_scratch *ts = scratch(c);
    r->tok_rc = prompt_encode(&c->pe, &ts->cache, r->field[0], r->field_len[0], r->field[1],
                              r->field_len[1], r->field[2], r->field_len[2], &r->pt);
}

/* Stage 4 (in order): the length and supervision filters, then keep. */
static int accept_row(prep_ctx *c, row_slot *r)
{
    if (r->tok_rc)
        return err_set(r->tok_rc, "%s:%lld: cannot tokenize the row", c->path,
                       (long long)r->lineno);
    int64_t len = (int64_t)r->pt.ids.n;
    int64_t n_sup = len - RB_MAX((int64_t)r->pt.sup_start, 1);
    if (len > c->cfg->sequence_len) {
        c->st->too_long++;
        return 0;
    }
    if (n_sup <= 0) {
        c->st->no_supervised++;
        return 0;
    }
    return builder_add(&c->b, r, c->file_index);
}

static int process_batch(prep_ctx *c, int n)
{
    int rc = 0;

    /* 1. parse, check, hash (parallel) */
#pragma omp parallel for schedule(dynamic, 64)
    for (int i = 0; i < n; i++)
        check_row(c, &c->slots[i]);

    /* 2. rejects and dedup, in file order */
    for (int i = 0; i < n && !rc; i++) {
        row_slot *r = &c->slots[i];
        if (r->reason) {
            rc = reject_row(c, c->path, r->lineno, r->reason, r->detail, r->line, r->len);
            continue;
        }
        c->file_valid++;
        if (!hash_set_insert(&c->seen, r->hash)) {
            r->duplicate = 1;
            c->st->duplicates++;
        }
    }

    /* 3. render and tokenize the unique rows (parallel) */
    if (!rc) {
#pragma omp parallel for schedule(dynamic, 16)
        for (int i = 0; i < n; i++)
            if (!c->slots[i].reason && !c->slots[i].duplicate)
                encode_row(c, &c->slots[i]);
    }

    /* 4. filters and keep, in file order */
    for (int i = 0; i < n && !rc; i++)
        if (!c->slots[i].reason && !c->slots[i].duplicate)
            rc = accept_row(c, &c->slots[i]);

    /* release the batch; huge lines do not keep their buffers (memory stays bounded) */
    for (int i = 0; i < n; i++) {
        row_slot *r = &c->slots[i];
        json_decref(r->obj);
        r->obj = NULL;
        if (r->cap > PREP_SLOT_KEEP) {
            free(r->line);
            r->line = NULL;
            r->cap = 0;
        }
        if (r->pt.ids.cap * sizeof(uint32_t) > PREP_SLOT_KEEP)
            prompt_tokens_free(&r->pt);
    }
    return rc;
}

static void slot_take_line(row_slot *s, const jsonl_reader *r)
{
    if (s->cap < r->len + 1) {
        s->cap = r->len + 1;
        s->line = xrealloc(s->line, s->cap);
    }
    memcpy(s->line, r->line, r->len + 1);
    s->len = r->len;
    s->lineno = r->lineno;
    s->offset = r->offset;
}

static int read_file_rows(prep_ctx *c, const char *path, int file_index)
{
    jsonl_reader rd;
    int rc = jsonl_open(&rd, path);
    if (rc)
        return rc;
    c->path = path;
    c->file_index = file_index;
    c->file_valid = 0;

    int n = 0, got;
    size_t bytes = 0;
    while ((got = jsonl_next(&rd)) == 1) {
        slot_take_line(&c->slots[n++], &rd);
        bytes += rd.len;
        c->st->rows_read++;
        if (n == PREP_BATCH_ROWS || bytes >= PREP_BATCH_BYTES) {
            if ((rc = process_batch(c, n)))
                break;
            n = 0;
            bytes = 0;
        }
    }
    if (got < 0)
        rc = RB_EXIT_RUNTIME;
    if (!rc && n > 0)
        rc = process_batch(c, n);
    int64_t lines = rd.lineno;
    jsonl_close(&rd);
    if (rc)
        return rc;

    if (lines == 0)
        return err_set(RB_EXIT_INPUT, "%s: the file is empty (a dataset needs JSONL rows with "
                       "instruction, input and output)", path);
    if (c->file_valid == 0)
        return err_set(RB_EXIT_INPUT, "%s: none of its %lld lines is a usable row (see "
                       "rejects.jsonl for each line's reason)", path, (long long)lines);
    return 0;
}

/* ======================================================================================== */
/* scores: decided over the whole dataset, then rows that do not fit are rejected            */
/* ======================================================================================== */

/* A score dataset is one where more than half of the kept rows' outputs are integers separated
 * by single spaces; its number of scores per row is the most common count among in-range rows.
 * Rows that are not scores, are out of range, or have another count are then rejected. */
int prep_score_count_mode(const int64_t *counts)
{
    int mode = 0;
    for (int k = 1; k <= PREP_MAX_SCORE_COUNT; k++)
        if (counts[k] > (mode ? counts[mode] : 0))
            mode = k;
    return mode;
}

static int decide_scores(prep_ctx *c)
{
    builder *b = &c->b;
    int64_t shaped = 0, counts[PREP_MAX_SCORE_COUNT + 1] = {0};
    for (int64_t i = 0; i < b->n; i++) {
        shaped += b->score_kind[i] != SCORE_NOT;
        if (b->score_kind[i] == SCORE_OK)
            counts[RB_MIN(b->n_scores[i], PREP_MAX_SCORE_COUNT)]++;
    }
    if (b->n == 0 || 2 * shaped <= b->n) {
        c->st->score_dataset = 0;
        c->st->n_scores = 0;
        return 0;
    }
    int mode = prep_score_count_mode(counts);
    if (mode == 0)
        mode = 1; /* every shaped row is out of range: all are rejected as such */
    c->st->score_dataset = 1;
    c->st->n_scores = mode;

    for (int64_t i = 0; i < b->n; i++) {
        int reason = 0;
        char detail[200];
        if (b->score_kind[i] == SCORE_NOT) {
            reason = PREP_NOT_A_SCORE;
            snprintf(detail, sizeof detail, "field 'output' is not %d integer scores separated "
                     "by single spaces (this is a score dataset)", mode);
        } else if (b->score_kind[i] == SCORE_RANGE) {
            reason = PREP_SCORE_OUT_OF_RANGE;
            snprintf(detail, sizeof detail, "field 'output' has a score outside %d..%d (set "
                     "score_min/score_max for another range)", c->cfg->score_min,
                     c->cfg->score_max);
        } else if (b->n_scores[i] != mode) {
            reason = PREP_SCORE_COUNT;
            snprintf(detail, sizeof detail, "field 'output' has %d scores; the dataset has %d "
                     "per row", b->n_scores[i], mode);
        }
        if (!reason)
            continue;

        /* read the line back for the rejects file */
        const char *path = c->cfg->datasets[b->file_index[i]].path;
        char *text = NULL;
        size_t len = 0;
        int rc = jsonl_read_line_at(path, b->byte_offset[i], &text, &len);
        if (!rc)
            rc = reject_row(c, path, b->line[i], reason, detail, text, len);
        free(text);
        if (rc)
            return rc;
        b->removed[i] = 1;
    }
    return 0;
}

/* ======================================================================================== */
/* the dataset: kept samples, split, packed                                                  */
/* ======================================================================================== */

static prep_dataset *dataset_from_builder(builder *b, const rubric_config *cfg, uint32_t pad_id,
                                          int n_scores)
{
    prep_dataset *ds = xcalloc(1, sizeof *ds);
    ds->sequence_len = cfg->sequence_len;
    ds->sample_packing = cfg->sample_packing;
    ds->pad_id = pad_id;
    ds->n_scores = n_scores;
    int64_t n = 0;
    for (int64_t i = 0; i < b->n; i++)
        n += !b->removed[i];
    ds->n_samples = n;
    size_t m = (size_t)RB_MAX(n, 1);
    ds->prefix_id = xmalloc(m * sizeof(int32_t));
    ds->prefix_len = xmalloc(m * sizeof(int32_t));
    ds->suffix_offset = xmalloc(m * sizeof(int64_t));
    ds->len = xmalloc(m * sizeof(int32_t));
    ds->sup_start = xmalloc(m * sizeof(int32_t));
    ds->split = xcalloc(m, 1);
    ds->file_index = xmalloc(m * sizeof(int32_t));
    ds->line = xmalloc(m * sizeof(int64_t));
    for (int64_t i = 0, j = 0; i < b->n; i++) {
        if (b->removed[i])
            continue;
        ds->prefix_id[j] = b->prefix_id[i];
        ds->prefix_len[j] = b->prefix_len[i];
        ds->suffix_offset[j] = b->suffix_offset[i];
        ds->len[j] = b->len[i];
        ds->sup_start[j] = b->sup_start[i];
        ds->file_index[j] = b->file_index[i];
        ds->line[j] = b->line[i];
        j++;
    }

    /* the rows' tokens are in the cache file already; the prefixes move over */
    ds->tokens = NULL;
    ds->n_tokens = b->store->n_written + b->store->n_buf;
    ds->prefix_tokens = b->prefix_tokens;
    ds->prefix_offsets = b->prefix_offsets;
    ds->n_prefixes = b->n_prefixes;
    b->prefix_tokens = NULL;
    b->prefix_offsets = NULL;
    return ds;
}

typedef struct {
    uint64_t key;
    int64_t index;
} keyed_index;

static int cmp_keyed(const void *a, const void *b)
{
    const keyed_index *x = a, *y = b;
    if (x->key != y->key)
        return x->key < y->key ? -1 : 1;
    return (x->index > y->index) - (x->index < y->index);
}

/* How many rows go to validation: a fraction (< 1) rounds up, as HF train_test_split does. */
static int64_t val_count(double val_set_size, int64_t n)
{
    if (val_set_size <= 0)
        return 0;
    if (val_set_size < 1)
        return (int64_t)ceil(val_set_size * (double)n);
    return (int64_t)val_set_size;
}

/* The validation rows are the n_val rows with the smallest XXH3-64(row hash, seed): a row's side
 * depends only on its content, the seed and the count, not on the order of the files. */
static int split_rows(prep_dataset *ds, const uint64_t *row_hash, const rubric_config *cfg)
{
    int64_t n = ds->n_samples, n_val = val_count(cfg->val_set_size, n);
    if (n_val > 0 && n_val >= n)
        return err_set(RB_EXIT_INPUT, "val_set_size: %g leaves no training rows (%lld "
                       "row%s kept); lower it", cfg->val_set_size, (long long)n, plural_s(n));
    if (n_val == 0)
        return 0;
    keyed_index *k = xmalloc((size_t)n * sizeof *k);
    for (int64_t i = 0; i < n; i++) {
        k[i].key = XXH3_64bits_withSeed(&row_hash[i], sizeof row_hash[i], cfg->seed);
        k[i].index = i;
    }
    qsort(k, (size_t)n, sizeof *k, cmp_keyed);
    for (int64_t i = 0; i < n_val; i++)
        ds->split[k[i].index] = 1;
    free(k);
    return 0;
}

/* First-fit decreasing: samples longest first, each into the leftmost bin with room. A max
 * segment tree over the bins' free space finds that bin in O(log n). */
typedef struct {
    int32_t *tree;
    int64_t leaves;
} fit_tree;

static void fit_tree_init(fit_tree *t, int64_t n, int32_t capacity)
{
    t->leaves = 1;
    while (t->leaves < n)
        t->leaves *= 2;
    t->tree = xmalloc(2 * (size_t)t->leaves * sizeof *t->tree);
    for (int64_t i = 0; i < 2 * t->leaves; i++)
        t->tree[i] = capacity;
}

/* The leftmost bin with free space >= need (one exists: an unused bin has full capacity). */
static int64_t fit_tree_take(fit_tree *t, int32_t need)
{
    int64_t node = 1;
    while (node < t->leaves)
        node = t->tree[2 * node] >= need ? 2 * node : 2 * node + 1;
    int64_t bin = node - t->leaves;
    t->tree[node] -= need;
    for (node /= 2; node >= 1; node /= 2)
        t->tree[node] = RB_MAX(t->tree[2 * node], t->tree[2 * node + 1]);
    return bin;
}

/* qsort_r comparator: sample indices by length (ctx), longest first, then by index. */
static int cmp_len_desc(const void *a, const void *b, void *ctx)
{
    const int32_t *len = ctx;
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    if (len[x] != len[y])
        return len[x] > len[y] ? -1 : 1;
    return (x > y) - (x < y);
}

/* Pack the samples of one split; appends bins to the dataset's bin lists. */
static void pack_split(prep_dataset *ds, int split, int64_t *n_bins, int64_t *cap_bins,
                       int64_t *n_entries)
{
    int64_t n = 0;
    for (int64_t i = 0; i < ds->n_samples; i++)
        n += ds->split[i] == split;
    if (n == 0)
        return;
    int64_t *idx = xmalloc((size_t)n * sizeof *idx);
    for (int64_t i = 0, j = 0; i < ds->n_samples; i++)
        if (ds->split[i] == split)
            idx[j++] = i;

    /* assign each sample a bin */
    int64_t *bin_of = xmalloc((size_t)n * sizeof *bin_of);
    int64_t used = 0;
    if (ds->sample_packing) {
        qsort_r(idx, (size_t)n, sizeof *idx, cmp_len_desc, ds->len);
        fit_tree t;
        fit_tree_init(&t, n, ds->sequence_len);
        for (int64_t j = 0; j < n; j++) {
            bin_of[j] = fit_tree_take(&t, ds->len[idx[j]]);
            used = RB_MAX(used, bin_of[j] + 1);
        }
        free(t.tree);
    } else {
        for (int64_t j = 0; j < n; j++)
            bin_of[j] = j;
        used = n;
    }

    /* counting sort of the samples by bin (keeps the decreasing order inside a bin) */
    int64_t base = *n_bins;
    if (base + used + 1 > *cap_bins) {
        *cap_bins = base + used + 1;
        ds->bin_offsets = xrealloc(ds->bin_offsets, (size_t)*cap_bins * sizeof(int64_t));
        ds->bin_tokens = xrealloc(ds->bin_tokens, (size_t)*cap_bins * sizeof(int64_t));
    }
    ds->bin_samples = xrealloc(ds->bin_samples, (size_t)(*n_entries + n) * sizeof(int64_t));
    int64_t *count = xcalloc((size_t)used + 1, sizeof *count);
    for (int64_t j = 0; j < n; j++)
        count[bin_of[j] + 1]++;
    for (int64_t k = 0; k < used; k++)
        count[k + 1] += count[k];
    for (int64_t k = 0; k < used; k++) {
        ds->bin_offsets[base + k] = *n_entries + count[k];
        ds->bin_tokens[base + k] = 0;
    }
    for (int64_t j = 0; j < n; j++) {
        int64_t at = *n_entries + count[bin_of[j]]++;
        ds->bin_samples[at] = idx[j];
        ds->bin_tokens[base + bin_of[j]] += ds->len[idx[j]];
    }
    *n_bins = base + used;
    *n_entries += n;
    ds->bin_offsets[*n_bins] = *n_entries;
    free(count);
    free(bin_of);
    free(idx);
}

static void pack_dataset(prep_dataset *ds)
{
    int64_t n_bins = 0, cap = 0, n_entries = 0;
    ds->bin_offsets = xcalloc(1, sizeof(int64_t));
    cap = 1;
    pack_split(ds, 0, &n_bins, &cap, &n_entries);
    ds->n_train_bins = n_bins;
    pack_split(ds, 1, &n_bins, &cap, &n_entries);
    ds->n_bins = n_bins;
    if (!ds->bin_tokens)
        ds->bin_tokens = xcalloc(1, sizeof(int64_t));
    if (!ds->bin_samples)
        ds->bin_samples = xcalloc(1, sizeof(int64_t));
}

/* ======================================================================================== */
/* the cache file                                                                            */
/* ======================================================================================== */

/*
 * <dataset_prepared_path>/<fingerprint>.h5 (serial HDF5, written by rank 0 only):
 *   attributes  fingerprint (16 hex digits), format_version, sequence_len, sample_packing,
 *               pad_id, n_scores, n_train_bins, report (the prep report as JSON)
 *   per sample  prefix_id, prefix_len, len, sup_start (int32), suffix_offset, line (int64),
 *               file_index (int32), split (uint8: 0 train, 1 val)
 *   tokens      tokens (uint32: each sample's tokens after its shared prefix),
 *               prefix_tokens (uint32), prefix_offsets (int64, n_prefixes + 1)
 *   bins        bin_offsets (int64, n_bins + 1) into bin_samples (int64), bin_tokens (int64)
 */

/* Silence HDF5's own error printing while we probe files; restored after. */
typedef struct {
    H5E_auto2_t func;
    void *data;
} h5_quiet;

static void h5_quiet_on(h5_quiet *q)
{
    H5Eget_auto2(H5E_DEFAULT, &q->func, &q->data);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
}

static void h5_quiet_off(h5_quiet *q) { H5Eset_auto2(H5E_DEFAULT, q->func, q->data); }

static int h5_write(hid_t f, const char *name, hid_t type, int64_t n, const void *data)
{
    hsize_t dims[1] = {(hsize_t)n};
    hid_t space = H5Screate_simple(1, dims, NULL);
    hid_t d = H5Dcreate2(f, name, type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    herr_t e = d < 0 ? -1 : n > 0 ? H5Dwrite(d, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) : 0;
    if (d >= 0)
        H5Dclose(d);
    H5Sclose(space);
    return d < 0 || e < 0 ? err_set(RB_EXIT_RUNTIME, "cannot write dataset '%s'", name) : 0;
}

static int h5_read(hid_t f, const char *name, hid_t type, size_t elem, int64_t *n, void **data)
{
    hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
    if (d < 0)
        return err_set(RB_EXIT_RUNTIME, "dataset '%s' is missing (rebuild with rubric prep)",
                       name);
    hid_t space = H5Dget_space(d);
    hsize_t dims[1] = {0};
    H5Sget_simple_extent_dims(space, dims, NULL);
    H5Sclose(space);
    *n = (int64_t)dims[0];
    *data = xmalloc(RB_MAX((size_t)dims[0], 1) * elem);
    herr_t e = dims[0] ? H5Dread(d, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, *data) : 0;
    H5Dclose(d);
    return e < 0 ? err_set(RB_EXIT_RUNTIME, "cannot read dataset '%s'", name) : 0;
}

static void h5_attr_i64(hid_t f, const char *name, int64_t v)
{
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(f, name, H5T_NATIVE_INT64, space, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(a, H5T_NATIVE_INT64, &v);
    H5Aclose(a);
    H5Sclose(space);
}

static int h5_get_i64(hid_t f, const char *name, int64_t *v)
{
    if (H5Aexists(f, name) <= 0)
        return err_set(RB_EXIT_RUNTIME, "attribute '%s' is missing", name);
    hid_t a = H5Aopen(f, name, H5P_DEFAULT);
    herr_t e = H5Aread(a, H5T_NATIVE_INT64, v);
    H5Aclose(a);
    return e < 0 ? err_set(RB_EXIT_RUNTIME, "cannot read attribute '%s'", name) : 0;
}

static void h5_attr_str(hid_t f, const char *name, const char *s)
{
    hid_t type = H5Tcopy(H5T_C_S1);
    H5Tset_size(type, strlen(s) + 1);
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(f, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(a, type, s);
    H5Aclose(a);
    H5Sclose(space);
    H5Tclose(type);
}

/* A string attribute (malloc'ed), or NULL. */
static char *h5_get_str(hid_t f, const char *name)
{
    if (H5Aexists(f, name) <= 0)
        return NULL;
    hid_t a = H5Aopen(f, name, H5P_DEFAULT);
    hid_t type = H5Aget_type(a);
    size_t n = H5Tget_size(type);
    char *s = xcalloc(n + 1, 1);
    hid_t mem = H5Tcopy(H5T_C_S1);
    H5Tset_size(mem, n);
    H5Aread(a, mem, s);
    H5Tclose(mem);
    H5Tclose(type);
    H5Aclose(a);
    return s;
}

static int write_datasets(hid_t f, const prep_dataset *ds)
{
    int64_t n = ds->n_samples;
    int rc = 0;
    rc = rc ? rc : h5_write(f, "prefix_id", H5T_NATIVE_INT32, n, ds->prefix_id);
    rc = rc ? rc : h5_write(f, "prefix_len", H5T_NATIVE_INT32, n, ds->prefix_len);
    rc = rc ? rc : h5_write(f, "len", H5T_NATIVE_INT32, n, ds->len);
    rc = rc ? rc : h5_write(f, "sup_start", H5T_NATIVE_INT32, n, ds->sup_start);
    rc = rc ? rc : h5_write(f, "suffix_offset", H5T_NATIVE_INT64, n, ds->suffix_offset);
    rc = rc ? rc : h5_write(f, "line", H5T_NATIVE_INT64, n, ds->line);
    rc = rc ? rc : h5_write(f, "file_index", H5T_NATIVE_INT32, n, ds->file_index);
    rc = rc ? rc : h5_write(f, "split", H5T_NATIVE_UINT8, n, ds->split);
    rc = rc ? rc : h5_write(f, "prefix_tokens", H5T_NATIVE_UINT32,
                            ds->n_prefixes ? ds->prefix_offsets[ds->n_prefixes] : 0,
                            ds->prefix_tokens);
    rc = rc ? rc : h5_write(f, "prefix_offsets", H5T_NATIVE_INT64, ds->n_prefixes + 1,
                            ds->prefix_offsets);
    rc = rc ? rc : h5_write(f, "bin_offsets", H5T_NATIVE_INT64, ds->n_bins + 1,
                            ds->bin_offsets);
    rc = rc ? rc : h5_write(f, "bin_samples", H5T_NATIVE_INT64, ds->bin_offsets[ds->n_bins],
                            ds->bin_samples);
    rc = rc ? rc : h5_write(f, "bin_tokens", H5T_NATIVE_INT64, ds->n_bins, ds->bin_tokens);
    return rc;
}

/* The temporary cache file of a build: the tokens stream into it during the pass, the rest is
 * written at the end, then it is fsync'ed and renamed into place. */
typedef struct {
    char *path, *tmp;
    hid_t f;
    token_store store;
} cache_file;

static int cache_file_create(cache_file *cf, const char *path)
{
    memset(cf, 0, sizeof *cf);
    cf->path = xstrdup(path);
    cf->tmp = xasprintf("%s.tmp.%d", path, (int)getpid());
    cf->f = H5Fcreate(cf->tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (cf->f < 0)
        return err_set(RB_EXIT_RUNTIME, "%s: cannot create the prepared dataset (check that "
                       "dataset_prepared_path is writable)", cf->tmp);
    return token_store_create(&cf->store, cf->f);
}

/* Close and remove the temporary file (a failed build leaves nothing behind). */
static void cache_file_abort(cache_file *cf)
{
    token_store_close(&cf->store);
    if (cf->f > 0)
        H5Fclose(cf->f);
    if (cf->tmp)
        unlink(cf->tmp);
    free(cf->tmp);
    free(cf->path);
    memset(cf, 0, sizeof *cf);
}

static int cache_file_commit(cache_file *cf, const prep_dataset *ds, const char *fingerprint,
                             const char *report_json)
{
    hid_t f = cf->f;
    int rc = token_store_flush(&cf->store);
    token_store_close(&cf->store);
    h5_attr_str(f, "fingerprint", fingerprint);
    h5_attr_i64(f, "format_version", PREP_FORMAT_VERSION);
    h5_attr_i64(f, "sequence_len", ds->sequence_len);
    h5_attr_i64(f, "sample_packing", ds->sample_packing);
    h5_attr_i64(f, "pad_id", ds->pad_id);
    h5_attr_i64(f, "n_scores", ds->n_scores);
    h5_attr_i64(f, "n_train_bins", ds->n_train_bins);
    h5_attr_str(f, "report", report_json);
    if (!rc)
        rc = write_datasets(f, ds);
    cf->f = 0;
    if (H5Fclose(f) < 0 && !rc)
        rc = err_set(RB_EXIT_RUNTIME, "%s: cannot close the prepared dataset", cf->tmp);

    /* durable before it becomes visible */
    int fd = rc ? -1 : open(cf->tmp, O_RDONLY);
    if (fd >= 0) {
        if (fsync(fd) != 0)
            rc = err_set(RB_EXIT_RUNTIME, "%s: fsync failed: %s", cf->tmp, strerror(errno));
        close(fd);
    }
    if (!rc)
        rc = rename_durable(cf->tmp, cf->path);
    if (rc) {
        err_prefix(rc, "%s", cf->path);
        cache_file_abort(cf);
        return rc;
    }
    free(cf->tmp);
    free(cf->path);
    memset(cf, 0, sizeof *cf);
    return 0;
}

static int read_datasets(hid_t f, prep_dataset *ds)
{
    int64_t n, m;
    int rc = 0;
#define RD(name, type, elem, field, count)                                                   \
    if (!rc)                                                                                 \
        rc = h5_read(f, name, type, elem, count, (void **)&ds->field);
    RD("prefix_id", H5T_NATIVE_INT32, 4, prefix_id, &ds->n_samples)
    RD("prefix_len", H5T_NATIVE_INT32, 4, prefix_len, &n)
    RD("len", H5T_NATIVE_INT32, 4, len, &n)
    RD("sup_start", H5T_NATIVE_INT32, 4, sup_start, &n)
    RD("suffix_offset", H5T_NATIVE_INT64, 8, suffix_offset, &n)
    RD("line", H5T_NATIVE_INT64, 8, line, &n)
    RD("file_index", H5T_NATIVE_INT32, 4, file_index, &n)
    RD("split", H5T_NATIVE_UINT8, 1, split, &n)
    RD("prefix_tokens", H5T_NATIVE_UINT32, 4, prefix_tokens, &m)
    RD("prefix_offsets", H5T_NATIVE_INT64, 8, prefix_offsets, &ds->n_prefixes)
    RD("bin_offsets", H5T_NATIVE_INT64, 8, bin_offsets, &ds->n_bins)
    RD("bin_samples", H5T_NATIVE_INT64, 8, bin_samples, &m)
    RD("bin_tokens", H5T_NATIVE_INT64, 8, bin_tokens, &m)
#undef RD
    ds->n_prefixes -= 1;
    ds->n_bins -= 1;
    return rc;
}

/* The tokens dataset: read whole when it fits max_resident_bytes, else kept open and read a
 * sample at a time (with a 64 MiB chunk cache). */
static int open_tokens(hid_t f, prep_dataset *ds, int64_t max_resident_bytes)
{
    hid_t dapl = H5Pcreate(H5P_DATASET_ACCESS);
    H5Pset_chunk_cache(dapl, 4099, (size_t)64 << 20, 1.0);
    hid_t d = H5Dopen2(f, "tokens", dapl);
    H5Pclose(dapl);
    if (d < 0)
        return err_set(RB_EXIT_RUNTIME, "dataset 'tokens' is missing (rebuild with rubric "
                       "prep)");
    hid_t space = H5Dget_space(d);
    hsize_t dims[1] = {0};
    H5Sget_simple_extent_dims(space, dims, NULL);
    H5Sclose(space);
    ds->n_tokens = (int64_t)dims[0];
    if (ds->n_tokens * 4 > max_resident_bytes) {
        ds->h5_tokens = d;
        return 0;
    }
    ds->tokens = xmalloc((size_t)RB_MAX(ds->n_tokens, 1) * sizeof *ds->tokens);
    herr_t e = ds->n_tokens
                   ? H5Dread(d, H5T_NATIVE_UINT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, ds->tokens)
                   : 0;
    H5Dclose(d);
    return e < 0 ? err_set(RB_EXIT_RUNTIME, "cannot read dataset 'tokens'") : 0;
}

int prep_dataset_open(prep_dataset **out, const char *path)
{
    return prep_dataset_open_ex(out, path, PREP_RESIDENT_TOKEN_BYTES);
}

int prep_dataset_open_ex(prep_dataset **out, const char *path, int64_t max_resident_bytes)
{
    *out = NULL;
    h5_quiet q;
    h5_quiet_on(&q);
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) {
        h5_quiet_off(&q);
        return err_set(RB_EXIT_INPUT, "%s: cannot open the prepared dataset (run rubric prep "
                       "first)", path);
    }
    prep_dataset *ds = xcalloc(1, sizeof *ds);
    int64_t v[6] = {0};
    int rc = h5_get_i64(f, "format_version", &v[0]);
    if (!rc && v[0] != PREP_FORMAT_VERSION)
        rc = err_set(RB_EXIT_INPUT, "format version %lld, this rubric reads %d (rerun rubric "
                     "prep)", (long long)v[0], PREP_FORMAT_VERSION);
    rc = rc ? rc : h5_get_i64(f, "sequence_len", &v[1]);
    rc = rc ? rc : h5_get_i64(f, "sample_packing", &v[2]);
    rc = rc ? rc : h5_get_i64(f, "pad_id", &v[3]);
    rc = rc ? rc : h5_get_i64(f, "n_scores", &v[4]);
    rc = rc ? rc : h5_get_i64(f, "n_train_bins", &v[5]);
    rc = rc ? rc : read_datasets(f, ds);
    rc = rc ? rc : open_tokens(f, ds, max_resident_bytes);
    if (ds->h5_tokens > 0)
        ds->h5_file = f;
    else
        H5Fclose(f);
    h5_quiet_off(&q);
    ds->sequence_len = (int32_t)v[1];
    ds->sample_packing = (int32_t)v[2];
    ds->pad_id = (uint32_t)v[3];
    ds->n_scores = (int32_t)v[4];
    ds->n_train_bins = v[5];
    if (rc) {
        prep_dataset_close(ds);
        return err_prefix(rc, "%s", path);
    }
    *out = ds;
    return 0;
}

void prep_dataset_close(prep_dataset *ds)
{
    if (!ds)
        return;
    free(ds->prefix_id), free(ds->prefix_len), free(ds->suffix_offset), free(ds->len);
    free(ds->sup_start), free(ds->split), free(ds->file_index), free(ds->line);
    free(ds->tokens), free(ds->prefix_tokens), free(ds->prefix_offsets);
    free(ds->bin_offsets), free(ds->bin_samples), free(ds->bin_tokens);
    if (ds->h5_tokens > 0)
        H5Dclose(ds->h5_tokens);
    if (ds->h5_file > 0)
        H5Fclose(ds->h5_file);
    free(ds);
}

void prep_sample_tokens(const prep_dataset *ds, int64_t i, uint32_t *out)
{
    int64_t p = ds->prefix_id[i], np = ds->prefix_len[i];
    memcpy(out, ds->prefix_tokens + ds->prefix_offsets[p], (size_t)np * sizeof *out);
    int64_t own = ds->len[i] - np;
    if (ds->tokens || own == 0) {
        memcpy(out + np, ds->tokens + ds->suffix_offset[i], (size_t)own * sizeof *out);
        return;
    }
    hsize_t start[1] = {(hsize_t)ds->suffix_offset[i]}, count[1] = {(hsize_t)own};
    hid_t fs = H5Dget_space(ds->h5_tokens);
    hid_t ms = H5Screate_simple(1, count, NULL);
    herr_t e = H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL);
    if (e >= 0)
        e = H5Dread(ds->h5_tokens, H5T_NATIVE_UINT32, ms, fs, H5P_DEFAULT, out + np);
    H5Sclose(ms);
    H5Sclose(fs);
    if (e < 0)
        rb_die(RB_EXIT_RUNTIME, "prepared dataset: cannot read the tokens of sample %lld",
               (long long)i);
}

/* ---- the fingerprint -------------------------------------------------------------------- */

static void fp_add(XXH3_state_t *s, const void *p, size_t n) { XXH3_64bits_update(s, p, n); }
static void fp_str(XXH3_state_t *s, const char *str)
{
    const char *v = str ? str : "<none>";
    fp_add(s, v, strlen(v) + 1);
}

/* The whole content of each input file is hashed (XXH3-64, streamed): a cache never survives a
 * changed byte, at the cost of reading the inputs once per run. */
static int fp_file(XXH3_state_t *s, const char *path)
{
    int rc = jsonl_check_input(path, "the dataset path");
    if (rc)
        return rc;
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return err_set(RB_EXIT_INPUT, "%s: cannot open: %s (check the dataset path)", path,
                       strerror(errno));
    char *buf = xmalloc(1 << 20);
    size_t n;
    uint64_t total = 0;
    while ((n = fread(buf, 1, 1 << 20, fp)) > 0) {
        fp_add(s, buf, n);
        total += n;
    }
    int bad = ferror(fp) ? (errno ? errno : EIO) : 0;
    fclose(fp);
    free(buf);
    fp_add(s, &total, sizeof total);
    return bad ? err_set(RB_EXIT_RUNTIME, "%s: read error: %s", path, strerror(bad)) : 0;
}

static int compute_fingerprint(const rubric_config *cfg, const tokenizer *tk,
                               enum prompt_style style, char out[17])
{
    XXH3_state_t *s = XXH3_createState();
    XXH3_64bits_reset(s);
    int64_t version = PREP_FORMAT_VERSION;
    fp_add(s, &version, sizeof version);
    int rc = 0;
    for (int i = 0; i < cfg->n_datasets && !rc; i++) {
        fp_str(s, cfg->datasets[i].type);
        rc = fp_file(s, cfg->datasets[i].path);
    }
    uint64_t tfp = tokenizer_fingerprint(tk);
    int64_t keys[] = {style, cfg->train_on_inputs, cfg->sequence_len, cfg->sample_packing,
                      cfg->score_min, cfg->score_max, (int64_t)cfg->seed};
    fp_add(s, &tfp, sizeof tfp);
    fp_add(s, keys, sizeof keys);
    fp_add(s, &cfg->val_set_size, sizeof cfg->val_set_size);
    fp_str(s, cfg->eos_token);
    fp_str(s, cfg->pad_token);
    snprintf(out, 17, "%016llx", (unsigned long long)XXH3_64bits_digest(s));
    XXH3_freeState(s);
    return rc;
}

/* Does path hold a prepared dataset with this fingerprint? */
static int cache_matches(const char *path, const char *fingerprint, char **report)
{
    *report = NULL;
    if (!path_exists(path))
        return 0;
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0)
        return 0;
    char *fp = h5_get_str(f, "fingerprint");
    int64_t version = 0;
    h5_get_i64(f, "format_version", &version);
    int ok = fp && strcmp(fp, fingerprint) == 0 && version == PREP_FORMAT_VERSION;
    if (ok)
        *report = h5_get_str(f, "report");
    H5Fclose(f);
    free(fp);
    err_clear();
    return ok && *report;
}

/* ======================================================================================== */
/* the schedule                                                                              */
/* ======================================================================================== */

int prep_schedule_init(prep_schedule *s, const prep_dataset *ds, int n_workers,
                       int grad_accum, int micro_batch_size, uint64_t seed)
{
    memset(s, 0, sizeof *s);
    if (n_workers < 1 || grad_accum < 1 || micro_batch_size < 1)
        return err_set(RB_EXIT_INPUT, "schedule: workers (%d), gradient_accumulation_steps (%d) "
                       "and micro_batch_size (%d) must be >= 1", n_workers, grad_accum,
                       micro_batch_size);
    if (ds->n_train_bins == 0)
        return err_set(RB_EXIT_INPUT, "schedule: the prepared dataset has no training rows");
    s->ds = ds;
    s->n_workers = n_workers;
    s->grad_accum = grad_accum;
    s->micro_batch_size = micro_batch_size;
    s->seed = seed;
    s->bins_per_step = (int64_t)n_workers * grad_accum * micro_batch_size;
    s->steps_per_epoch = (ds->n_train_bins + s->bins_per_step - 1) / s->bins_per_step;
    s->cached_epoch = -1;
    return 0;
}

void prep_schedule_free(prep_schedule *s)
{
    free(s->order);
    s->order = NULL;
}

/* The epoch's bin order: bins sorted by XXH3-64(bin, seed + epoch). */
static void schedule_order(prep_schedule *s, int epoch)
{
    if (s->cached_epoch == epoch)
        return;
    int64_t n = s->ds->n_train_bins;
    keyed_index *k = xmalloc((size_t)n * sizeof *k);
    uint64_t seed = s->seed + (uint64_t)epoch;
    for (int64_t i = 0; i < n; i++) {
        k[i].key = XXH3_64bits_withSeed(&i, sizeof i, seed);
        k[i].index = i;
    }
    qsort(k, (size_t)n, sizeof *k, cmp_keyed);
    s->order = xrealloc(s->order, (size_t)n * sizeof *s->order);
    for (int64_t i = 0; i < n; i++)
        s->order[i] = k[i].index;
    free(k);
    s->cached_epoch = epoch;
}

/* qsort_r comparator: bin ids by token count (ctx), largest first; empty bins (-1) last. */
static int cmp_bins_by_tokens(const void *a, const void *b, void *ctx)
{
    const int64_t *tokens = ctx;
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    int64_t tx = x < 0 ? -1 : tokens[x], ty = y < 0 ? -1 : tokens[y];
    if (tx != ty)
        return tx > ty ? -1 : 1;
    return (x > y) - (x < y);
}

/* Greedy LPT: deal items (sorted, largest first) to n_groups groups of `room` items each,
 * each to the least-loaded group with room (lowest index on ties). group_of[i] is the result. */
static void deal_lpt(const int64_t *items, int64_t n, const int64_t *tokens, int n_groups,
                     int room, int *group_of)
{
    int64_t *load = xcalloc((size_t)n_groups, sizeof *load);
    int *filled = xcalloc((size_t)n_groups, sizeof *filled);
    for (int64_t i = 0; i < n; i++) {
        int best = -1;
        for (int g = 0; g < n_groups; g++)
            if (filled[g] < room && (best < 0 || load[g] < load[best]))
                best = g;
        group_of[i] = best;
        filled[best]++;
        load[best] += items[i] < 0 ? 0 : tokens[items[i]];
    }
    free(load);
    free(filled);
}

int prep_schedule_step(prep_schedule *s, int epoch, int64_t step, int worker, int64_t *bins)
{
    if (epoch < 0 || step < 0 || step >= s->steps_per_epoch || worker < 0 ||
        worker >= s->n_workers)
        return err_set(RB_EXIT_INPUT, "schedule: (epoch %d, step %lld, worker %d) is out of "
                       "range (%lld step%s per epoch, %d worker%s)", epoch, (long long)step,
                       worker, (long long)s->steps_per_epoch, plural_s(s->steps_per_epoch),
                       s->n_workers, plural_s(s->n_workers));
    schedule_order(s, epoch);

    /* this step's bins, padded with empty bins (-1), largest first */
    int64_t per = s->bins_per_step, first = step * per;
    int64_t *items = xmalloc((size_t)per * sizeof *items);
    for (int64_t i = 0; i < per; i++)
        items[i] = first + i < s->ds->n_train_bins ? s->order[first + i] : -1;
    qsort_r(items, (size_t)per, sizeof *items, cmp_bins_by_tokens, s->ds->bin_tokens);

    /* 1. to workers */
    int per_worker = s->grad_accum * s->micro_batch_size;
    int *group = xmalloc((size_t)per * sizeof *group);
    deal_lpt(items, per, s->ds->bin_tokens, s->n_workers, per_worker, group);
    int64_t *mine = xmalloc((size_t)per_worker * sizeof *mine);
    int n_mine = 0;
    for (int64_t i = 0; i < per; i++)
        if (group[i] == worker)
            mine[n_mine++] = items[i];

    /* 2. to this worker's micro-batches (mine is still largest first) */
    int *mb = xmalloc((size_t)per_worker * sizeof *mb);
    deal_lpt(mine, n_mine, s->ds->bin_tokens, s->grad_accum, s->micro_batch_size, mb);
    int *fill = xcalloc((size_t)s->grad_accum, sizeof *fill);
    for (int i = 0; i < n_mine; i++) {
        int m = mb[i];
        bins[(int64_t)m * s->micro_batch_size + fill[m]++] = mine[i];
    }
    free(fill);
    free(mb);
    free(mine);
    free(group);
    free(items);
    return 0;
}

/* ======================================================================================== */
/* building a micro-batch                                                                    */
/* ======================================================================================== */

static int32_t batch_seq_len(const prep_dataset *ds, const int64_t *bins, int n_bins)
{
    if (ds->sample_packing)
        return ds->sequence_len;
    int64_t longest = 1;
    for (int i = 0; i < n_bins; i++)
        if (bins[i] >= 0)
            longest = RB_MAX(longest, ds->bin_tokens[bins[i]]);
    int64_t rounded = (longest + 63) / 64 * 64;
    return (int32_t)RB_MIN(rounded, (int64_t)ds->sequence_len);
}

/* One sample as a segment at b->tokens[at..]. */
static void put_sample(const prep_dataset *ds, int64_t i, packed_batch *b, int32_t at)
{
    int32_t len = ds->len[i], sup = RB_MAX(ds->sup_start[i], 1);
    prep_sample_tokens(ds, i, b->tokens + at);
    for (int32_t t = 0; t < len; t++) {
        b->positions[at + t] = t;
        int32_t next = t + 1;
        b->targets[at + t] = next < len && next >= sup ? (int32_t)b->tokens[at + next] : -1;
    }
    b->n_supervised += len - sup;
    b->cu_seqlens[++b->n_samples] = at + len;
}

static void put_padding(const prep_dataset *ds, packed_batch *b, int32_t at, int32_t end)
{
    for (int32_t t = at; t < end; t++) {
        b->tokens[t] = ds->pad_id;
        b->positions[t] = t - at;
        b->targets[t] = -1;
    }
    b->cu_seqlens[++b->n_samples] = end;
}

void prep_build_batch(const prep_dataset *ds, const int64_t *bins, int n_bins,
                      packed_batch *b)
{
    int32_t seq_len = batch_seq_len(ds, bins, n_bins);
    int64_t max_samples = n_bins;
    for (int i = 0; i < n_bins; i++)
        if (bins[i] >= 0)
            max_samples += ds->bin_offsets[bins[i] + 1] - ds->bin_offsets[bins[i]];
    packed_batch_init(b, n_bins, seq_len, (int32_t)max_samples);
    b->cu_seqlens[0] = 0;

    for (int s = 0; s < n_bins; s++) {
        int32_t at = s * seq_len, end = at + seq_len;
        if (bins[s] >= 0)
            for (int64_t k = ds->bin_offsets[bins[s]]; k < ds->bin_offsets[bins[s] + 1]; k++) {
                int64_t i = ds->bin_samples[k];
                put_sample(ds, i, b, at);
                at += ds->len[i];
            }
        if (at < end)
            put_padding(ds, b, at, end);
    }
}

/* ======================================================================================== */
/* the report                                                                                */
/* ======================================================================================== */

/* rejects.jsonl next to the cache file (malloc'ed). */
static char *rejects_path_of(const char *cache_path)
{
    const char *slash = cache_path ? strrchr(cache_path, '/') : NULL;
    if (!slash)
        return xstrdup("rejects.jsonl");
    return xasprintf("%.*s/rejects.jsonl", (int)(slash - cache_path), cache_path);
}

static json_t *stats_json(const prep_stats *st, const char *cache_path)
{
    json_t *rej = json_object();
    for (int r = 1; r < PREP_N_REASONS; r++)
        json_object_set_new(rej, prep_reason_name(r), json_integer(st->rejected[r]));
    json_t *o = json_object();
    json_object_set_new(o, "prepared", json_string(cache_path ? cache_path : ""));
    json_object_set_new(o, "rows_read", json_integer(st->rows_read));
    json_object_set_new(o, "rejected", json_integer(st->rejected_total));
    json_object_set_new(o, "rejected_by_reason", rej);
    json_object_set_new(o, "first_reject", json_string(st->first_reject));
    json_object_set_new(o, "first_reject_file", json_integer(st->first_reject_file));
    json_object_set_new(o, "first_reject_at", json_integer(st->first_reject_at));
    char *rejects = rejects_path_of(cache_path);
    json_object_set_new(o, "rejects", json_string(st->rejected_total ? rejects : ""));
    free(rejects);
    json_object_set_new(o, "duplicates", json_integer(st->duplicates));
    json_object_set_new(o, "too_long", json_integer(st->too_long));
    json_object_set_new(o, "no_supervised_tokens", json_integer(st->no_supervised));
    json_object_set_new(o, "kept", json_integer(st->kept));
    json_object_set_new(o, "train_rows", json_integer(st->train_rows));
    json_object_set_new(o, "val_rows", json_integer(st->val_rows));
    json_object_set_new(o, "tokens", json_integer(st->tokens_total));
    json_object_set_new(o, "supervised_tokens", json_integer(st->tokens_supervised));
    json_object_set_new(o, "max_sample_tokens", json_integer(st->max_len));
    json_object_set_new(o, "train_bins", json_integer(st->train_bins));
    json_object_set_new(o, "val_bins", json_integer(st->val_bins));
    json_object_set_new(o, "packing_efficiency", json_real(st->packing_efficiency));
    json_object_set_new(o, "score_dataset", json_boolean(st->score_dataset));
    json_object_set_new(o, "scores_per_row", json_integer(st->n_scores));
    json_object_set_new(o, "seconds", json_real(st->seconds));
    json_object_set_new(o, "rows_per_second", json_real(st->rows_per_s));
    return o;
}

char *prep_stats_to_json(const prep_stats *st, const char *cache_path)
{
    json_t *o = stats_json(st, cache_path);
    char *s = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(o);
    return s;
}

static void stats_from_json(prep_stats *st, const char *text)
{
    json_t *o = json_loads(text, 0, NULL);
    if (!o)
        return;
#define GETI(key, field) st->field = json_integer_value(json_object_get(o, key))
    GETI("rows_read", rows_read);
    GETI("rejected", rejected_total);
    GETI("duplicates", duplicates);
    GETI("too_long", too_long);
    GETI("no_supervised_tokens", no_supervised);
    GETI("kept", kept);
    GETI("train_rows", train_rows);
    GETI("val_rows", val_rows);
    GETI("tokens", tokens_total);
    GETI("supervised_tokens", tokens_supervised);
    GETI("max_sample_tokens", max_len);
    GETI("train_bins", train_bins);
    GETI("val_bins", val_bins);
    GETI("scores_per_row", n_scores);
#undef GETI
    json_t *rej = json_object_get(o, "rejected_by_reason");
    for (int r = 1; r < PREP_N_REASONS; r++)
        st->rejected[r] = json_integer_value(json_object_get(rej, prep_reason_name(r)));
    const char *first = json_string_value(json_object_get(o, "first_reject"));
    snprintf(st->first_reject, sizeof st->first_reject, "%s", first ? first : "");
    st->first_reject_file = (int)json_integer_value(json_object_get(o, "first_reject_file"));
    st->first_reject_at = (int)json_integer_value(json_object_get(o, "first_reject_at"));
    st->score_dataset = json_is_true(json_object_get(o, "score_dataset"));
    st->packing_efficiency = json_number_value(json_object_get(o, "packing_efficiency"));
    st->seconds = json_number_value(json_object_get(o, "seconds"));
    st->rows_per_s = json_number_value(json_object_get(o, "rows_per_second"));
    json_decref(o);
}

static void print_stats_table(const prep_stats *st, const char *cache_path)
{
    printf("  %-28s %12lld\n", "rows read", (long long)st->rows_read);
    printf("  %-28s %12lld\n", "rejected", (long long)st->rejected_total);
    for (int r = 1; r < PREP_N_REASONS; r++)
        if (st->rejected[r])
            printf("    %-26s %12lld\n", prep_reason_name(r), (long long)st->rejected[r]);
    if (st->rejected_total) {
        char *rejects = rejects_path_of(cache_path);
        printf("    %-26s %s\n", "listed in", rejects);
        free(rejects);
    }
    printf("  %-28s %12lld\n", "duplicates", (long long)st->duplicates);
    printf("  %-28s %12lld\n", "too long (> sequence_len)", (long long)st->too_long);
    printf("  %-28s %12lld\n", "no supervised tokens", (long long)st->no_supervised);
    printf("  %-28s %12lld\n", "kept", (long long)st->kept);
    printf("  %-28s %12lld\n", "train rows", (long long)st->train_rows);
    printf("  %-28s %12lld\n", "val rows", (long long)st->val_rows);
    printf("  %-28s %12lld\n", "tokens", (long long)st->tokens_total);
    printf("  %-28s %12lld\n", "supervised tokens", (long long)st->tokens_supervised);
    printf("  %-28s %12lld\n", "longest sample (tokens)", (long long)st->max_len);
    if (st->score_dataset)
        printf("  %-28s %12d\n", "scores per row", st->n_scores);
    else
        printf("  %-28s %12s\n", "outputs", "free text");
    printf("  %-28s %12lld\n", "train bins", (long long)st->train_bins);
    printf("  %-28s %11.1f%%\n", "packing efficiency", 100.0 * st->packing_efficiency);
    printf("  %-28s %11.2fs\n", "time", st->seconds);
    printf("  %-28s %12.0f\n", "rows/s", st->rows_per_s);
}

void prep_stats_print(const prep_stats *st, const char *cache_path)
{
    printf("rubric prep: %s%s\n", cache_path ? cache_path : "",
           st->cache_reused ? " (reused: fingerprint matches)" : "");
    print_stats_table(st, cache_path);
}

int prep_is_dataset_file(const char *path)
{
    h5_quiet q;
    h5_quiet_on(&q);
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    int yes = 0;
    if (f >= 0) {
        yes = H5Aexists(f, "fingerprint") > 0 && H5Aexists(f, "report") > 0;
        H5Fclose(f);
    }
    h5_quiet_off(&q);
    err_clear();
    return yes;
}

/* The fingerprint and report attributes of a prepared dataset (malloc'ed, NULL if absent). */
static void read_identity(const char *path, char **fingerprint, char **report)
{
    h5_quiet q;
    h5_quiet_on(&q);
    *fingerprint = *report = NULL;
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f >= 0) {
        *fingerprint = h5_get_str(f, "fingerprint");
        *report = h5_get_str(f, "report");
        H5Fclose(f);
    }
    h5_quiet_off(&q);
    err_clear();
}

int prep_dataset_print(const char *path)
{
    /* open it as training does: every dataset read and checked, tokens left on disk */
    prep_dataset *ds;
    int rc = prep_dataset_open_ex(&ds, path, 0);
    if (rc)
        return rc;
    char *fingerprint, *report;
    read_identity(path, &fingerprint, &report);
    prep_stats st;
    memset(&st, 0, sizeof st);
    if (report)
        stats_from_json(&st, report);

    /* the file's own layout */
    int64_t val = 0;
    for (int64_t i = 0; i < ds->n_samples; i++)
        val += ds->split[i];
    printf("prepared dataset: %s\n", path);
    printf("  %-28s %12s\n", "fingerprint", fingerprint ? fingerprint : "?");
    printf("  %-28s %12d\n", "format version", PREP_FORMAT_VERSION);
    printf("  %-28s %12d\n", "sequence_len", ds->sequence_len);
    printf("  %-28s %12s\n", "sample packing", ds->sample_packing ? "on" : "off");
    printf("  %-28s %12lld\n", "samples (train + val)", (long long)ds->n_samples);
    printf("  %-28s %12lld\n", "  val samples", (long long)val);
    printf("  %-28s %12lld\n", "bins (train + val)", (long long)ds->n_bins);
    printf("  %-28s %12lld\n", "  train bins", (long long)ds->n_train_bins);
    printf("  %-28s %12u\n", "pad id", ds->pad_id);

    /* the report of the build that wrote it */
    if (report) {
        printf("the build's report:\n");
        print_stats_table(&st, path);
    } else {
        printf("(no build report stored in the file)\n");
    }
    free(fingerprint);
    free(report);
    prep_dataset_close(ds);
    return 0;
}

/* ======================================================================================== */
/* the run                                                                                   */
/* ======================================================================================== */

static void fill_final_stats(prep_stats *st, const prep_dataset *ds)
{
    st->kept = ds->n_samples;
    st->train_rows = st->val_rows = st->tokens_total = st->tokens_supervised = st->max_len = 0;
    for (int64_t i = 0; i < ds->n_samples; i++) {
        if (ds->split[i])
            st->val_rows++;
        else
            st->train_rows++;
        st->tokens_total += ds->len[i];
        st->tokens_supervised += ds->len[i] - RB_MAX(ds->sup_start[i], 1);
        st->max_len = RB_MAX(st->max_len, (int64_t)ds->len[i]);
    }
    st->train_bins = ds->n_train_bins;
    st->val_bins = ds->n_bins - ds->n_train_bins;
    int64_t train_tokens = 0;
    for (int64_t b = 0; b < ds->n_train_bins; b++)
        train_tokens += ds->bin_tokens[b];
    st->packing_efficiency =
        ds->n_train_bins ? (double)train_tokens / ((double)ds->n_train_bins * ds->sequence_len)
                         : 0.0;
}

/* A token the config names under special_tokens (`key`: pad_token, eos_token) must be one of
 * the tokenizer's: exit 2 naming the key's place, never a silent fallback. */
static int special_token_id(const rubric_config *cfg, const tokenizer *tk, const char *key,
                            const char *text, uint32_t *id)
{
    int64_t v = tokenizer_token_id(tk, text);
    if (v >= 0) {
        *id = (uint32_t)v;
        return 0;
    }
    char *place = config_key_place(cfg, "special_tokens");
    int rc = err_set(RB_EXIT_INPUT, "%s: special_tokens.%s: the tokenizer has no '%s' token "
                     "(base_model %s); give one of its tokens (see its tokenizer.json, "
                     "added_tokens)", place, key, text, cfg->base_model ? cfg->base_model : "?");
    free(place);
    return rc;
}

/* The padding id: special_tokens.pad_token, else <|endoftext|>, else (a tokenizer without
 * it) the eos id. */
static int pad_token_id(const rubric_config *cfg, const tokenizer *tk, uint32_t eos,
                        uint32_t *id)
{
    if (cfg->pad_token)
        return special_token_id(cfg, tk, "pad_token", cfg->pad_token, id);
    int64_t v = tokenizer_token_id(tk, "<|endoftext|>");
    *id = v >= 0 ? (uint32_t)v : eos;
    return 0;
}

/* The special tokens the config names, checked before a cache is reused (a cache built with a
 * token the tokenizer lacks must not hide the mistake). */
static int check_special_tokens(const rubric_config *cfg, const tokenizer *tk,
                                enum prompt_style style)
{
    uint32_t id;
    int rc = style != PROMPT_STYLE_QWEN3 && cfg->eos_token
                 ? special_token_id(cfg, tk, "eos_token", cfg->eos_token, &id)
                 : 0;
    return rc ? rc : pad_token_id(cfg, tk, 0, &id);
}

static int ctx_init(prep_ctx *c, const rubric_config *cfg, const tokenizer *tk,
                    enum prompt_style style, prep_stats *st)
{
    memset(c, 0, sizeof *c);
    c->cfg = cfg;
    c->st = st;
    /* check_special_tokens has vouched for eos_token and pad_token */
    int rc = prompt_encoder_init(&c->pe, tk, style, cfg->eos_token, cfg->train_on_inputs);
    if (!rc)
        rc = pad_token_id(cfg, tk, c->pe.eos, &c->pad_id);
    if (rc)
        return rc;
#ifdef _OPENMP
    c->n_threads = omp_get_max_threads();
#else
    c->n_threads = 1;
#endif
    c->ts = xcalloc((size_t)c->n_threads, sizeof *c->ts);
    for (int t = 0; t < c->n_threads; t++)
        if (!(c->ts[t].shape = prep_score_shape_new()))
            return RB_EXIT_RUNTIME;
    c->slots = xcalloc(PREP_BATCH_ROWS, sizeof *c->slots);
    return 0;
}

static void ctx_free(prep_ctx *c)
{
    for (int t = 0; t < c->n_threads; t++) {
        free(c->ts[t].dump);
        prep_score_shape_free(c->ts[t].shape);
        prompt_cache_free(&c->ts[t].cache);
    }
    free(c->ts);
    if (c->slots)
        for (int i = 0; i < PREP_BATCH_ROWS; i++) {
            free(c->slots[i].line);
            prompt_tokens_free(&c->slots[i].pt);
        }
    free(c->slots);
    prompt_encoder_free(&c->pe);
    free(c->seen.keys);
    builder_free(&c->b);
    if (c->rejects_open)
        atomic_file_abort(&c->rejects);
}

/* Read, check, tokenize, filter, split and pack; the dataset is returned in *out. */
static int build_dataset(prep_ctx *c, const rubric_config *cfg, prep_dataset **out)
{
    int rc = 0;
    for (int i = 0; i < cfg->n_datasets && !rc; i++)
        rc = read_file_rows(c, cfg->datasets[i].path, i);
    if (!rc)
        rc = decide_scores(c);
    if (rc)
        return rc;

    /* the per-row hashes of the kept rows, for the split */
    int64_t n = 0;
    uint64_t *hashes = xmalloc((size_t)RB_MAX(c->b.n, 1) * sizeof *hashes);
    for (int64_t i = 0; i < c->b.n; i++)
        if (!c->b.removed[i])
            hashes[n++] = c->b.hash_lo[i];
    prep_dataset *ds = dataset_from_builder(&c->b, cfg, c->pad_id,
                                            c->st->n_scores);
    if (ds->n_samples == 0)
        rc = err_set(RB_EXIT_INPUT, "no usable rows in the dataset(s): %lld read, %lld rejected, "
                     "%lld duplicates, %lld longer than sequence_len %d, %lld without supervised "
                     "tokens (see %s/rejects.jsonl)", (long long)c->st->rows_read,
                     (long long)c->st->rejected_total, (long long)c->st->duplicates,
                     (long long)c->st->too_long, cfg->sequence_len,
                     (long long)c->st->no_supervised, cfg->dataset_prepared_path);
    if (!rc)
        rc = split_rows(ds, hashes, cfg);
    free(hashes);
    if (rc) {
        prep_dataset_close(ds);
        return rc;
    }
    pack_dataset(ds);
    *out = ds;
    return 0;
}


/* A reused cache under strict: true. Its build skipped bad rows that a strict build stops at,
 * so the first of them is the same error a fresh strict build gives. Returns 0 (reuse it),
 * RB_EXIT_INPUT (that error), or -1: the report predates first_reject, rebuild. */
static int reuse_check_strict(const rubric_config *cfg, const prep_stats *st, const char *path)
{
    if (!cfg->strict || st->rejected_total == 0)
        return 0;
    int k = st->first_reject_file, at = st->first_reject_at;
    if (!st->first_reject[0] || k < 0 || k >= cfg->n_datasets || at < 1 ||
        at >= (int)strlen(st->first_reject))
        return -1;
    log_info("prep: %s matches, but its build skipped %lld bad row%s and strict is on",
             path, (long long)st->rejected_total, plural_s(st->rejected_total));

    /* the file by this config's path (the cache matches content, not names) */
    char *where = xasprintf("%s:%s", cfg->datasets[k].path, st->first_reject + at);
    int rc = strict_error(where);
    free(where);
    return rc;
}

/* One warning per reject reason, with the count and where the rows are listed. */
static void warn_rejects(const prep_stats *st, const char *prepared_dir)
{
    if (st->rejected_total == 0)
        return;
    for (int r = 1; r < PREP_N_REASONS; r++)
        if (st->rejected[r])
            log_warn("prep: rejected %lld of %lld row%s (%s); see %s/rejects.jsonl",
                     (long long)st->rejected[r], (long long)st->rows_read,
                     plural_s(st->rows_read), prep_reason_name(r), prepared_dir);
}

int prep_cache_path(const rubric_config *cfg, const tokenizer *tk, char **path)
{
    enum prompt_style style;
    char fp[17];
    int rc = prompt_style_from_config(cfg, &style);
    if (!rc)
        rc = compute_fingerprint(cfg, tk, style, fp);
    if (rc)
        return rc;
    *path = xasprintf("%s/%s.h5", cfg->dataset_prepared_path, fp);
    return 0;
}

static int write_outputs(prep_ctx *c, cache_file *cf, const prep_dataset *ds,
                         const char *fingerprint)
{
    char *report = prep_stats_to_json(c->st, cf->path);
    int rc = cache_file_commit(cf, ds, fingerprint, report);
    if (!rc) {
        char *rp = xasprintf("%s/report.json", c->cfg->dataset_prepared_path);
        size_t n = strlen(report);
        report = xrealloc(report, n + 2);
        report[n] = '\n';
        report[n + 1] = '\0';
        rc = write_file_atomic(rp, report, n + 1);
        free(rp);
    }
    free(report);
    return rc;
}

int prep_run(const rubric_config *cfg, const tokenizer *tk, char **cache_path,
             prep_stats *stats)
{
    memset(stats, 0, sizeof *stats);
    *cache_path = NULL;
    if (cfg->n_datasets < 1)
        return err_set(RB_EXIT_INPUT, "datasets: no dataset given (add one with path and "
                       "type: alpaca)");
    double t0 = now_seconds();
    enum prompt_style style;
    char fp[17];
    int rc = prompt_style_from_config(cfg, &style);
    if (!rc)
        rc = check_special_tokens(cfg, tk, style);
    if (!rc)
        rc = compute_fingerprint(cfg, tk, style, fp);
    if (!rc)
        rc = mkdir_p(cfg->dataset_prepared_path);
    if (rc)
        return rc;
    char *path = xasprintf("%s/%s.h5", cfg->dataset_prepared_path, fp);
    h5_quiet q;
    h5_quiet_on(&q);

    /* 1. reuse a matching cache */
    char *report = NULL;
    if (cache_matches(path, fp, &report)) {
        stats_from_json(stats, report);
        stats->cache_reused = 1;
        free(report);
        rc = reuse_check_strict(cfg, stats, path);
        if (rc != -1) {
            h5_quiet_off(&q);
            if (rc) {
                free(path);
                return rc;
            }
            log_info("prep: reusing %s (fingerprint %s matches)", path, fp);
            warn_rejects(stats, cfg->dataset_prepared_path);
            *cache_path = path;
            return 0;
        }
        memset(stats, 0, sizeof *stats); /* an old report: rebuild to find the bad row */
        rc = 0;
    }
    log_info("prep: building %s (%s prompts, sequence_len %d)", path, prompt_style_name(style),
             cfg->sequence_len);

    /* 2. build it */
    json_object_seed(0); /* before any thread creates objects */
    prep_ctx c;
    cache_file cf = {0};
    prep_dataset *ds = NULL;
    rc = ctx_init(&c, cfg, tk, style, stats);
    if (!rc)
        rc = cache_file_create(&cf, path);
    c.b.store = &cf.store;
    char *rejects_path = xasprintf("%s/rejects.jsonl", cfg->dataset_prepared_path);
    if (!rc && !(rc = atomic_file_open(&c.rejects, rejects_path)))
        c.rejects_open = 1;
    if (!rc)
        rc = build_dataset(&c, cfg, &ds);
    if (c.rejects_open) {
        /* the rejects file is kept even when the build fails: it explains the failure */
        int rc2 = atomic_file_commit(&c.rejects);
        c.rejects_open = 0;
        rc = rc ? rc : rc2;
    }

    /* 3. stats, then the cache file and report.json */
    if (!rc) {
        fill_final_stats(stats, ds);
        stats->seconds = now_seconds() - t0;
        stats->rows_per_s = stats->rows_read / RB_MAX(stats->seconds, 1e-9);
        rc = write_outputs(&c, &cf, ds, fp);
    } else {
        cache_file_abort(&cf);
    }
    h5_quiet_off(&q);
    prep_dataset_close(ds);
    ctx_free(&c);
    free(rejects_path);
    if (rc) {
        free(path);
        return rc;
    }
    warn_rejects(stats, cfg->dataset_prepared_path);
    *cache_path = path;
    return 0;
}
