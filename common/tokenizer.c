/*
 * tokenizer.c: Hugging Face tokenizer.json (byte-level BPE) encode and decode.
 *
 * The pipeline is the one HF `tokenizers` runs for encode(text, add_special_tokens=False):
 *   1. split the raw text on added tokens (leftmost, then longest match; not normalized ones),
 *   2. NFC-normalize each remaining span (utf8proc), split it again on normalized added tokens,
 *   3. pre-tokenize each span with the Split regexes (PCRE2, UTF + UCP, JIT when available),
 *   4. BPE-merge the bytes of each piece by merge rank (a linked list of symbols and a min
 *      segment tree over the candidate pairs: O(n log n) in the piece length).
 * The byte-level alphabet (GPT-2's bytes_to_unicode) is applied at load time: vocabulary
 * entries are stored as raw bytes, so encoding works on bytes and never builds byte-level text.
 *
 * Thread safety: a loaded tokenizer is read-only. Each thread gets its own state (PCRE2 match
 * data and JIT stack, scratch buffers, a word -> ids cache) through a C11 tss key (<threads.h>).
 */
#include "tokenizer.h"

#include <jansson.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <threads.h>
#include <utf8proc.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "util.h"

/* The regex ByteLevel uses when its use_regex is true (GPT-2's pre-tokenizer pattern). */
static const char tok_gpt2_pattern[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

enum {
    TOK_MAX_SPLITS = 8,
    TOK_CACHE_MAX_WORD = 64,         /* longer pieces are not cached */
    TOK_CACHE_SLOTS = 1 << 16,       /* open-addressing slots (power of two) */
    TOK_CACHE_MAX_ENTRIES = 1 << 15, /* cleared when full (or its arenas are) */
    TOK_CACHE_KEY_BYTES = 1 << 20,
    TOK_CACHE_IDS = 1 << 18,
    TOK_JIT_STACK_MAX = 8 << 20,
};

typedef struct {
    uint32_t id;
    char *content;
    size_t len;
    int special, single_word, lstrip, rstrip, normalized;
} tok_added;

/* pair (left id, right id) -> (rank, merged id); rank UINT32_MAX marks an empty slot. */
typedef struct {
    uint64_t pair;
    uint32_t rank, merged;
} tok_merge_slot;

struct tokenizer {
    char *path;
    uint64_t fingerprint;
    uint64_t serial;
    uint32_t vocab_size; /* one past the largest id */

    /* Per id: the token's text (byte-level form, or an added token's content) and its
     * decoded bytes, both in arenas; offset UINT32_MAX where the id is unused. */
    char *text_arena;
    uint32_t *text_off;
    uint8_t *bytes_arena;
    uint32_t *bytes_off, *bytes_len;

    uint32_t byte_id[256];   /* id of each single byte */
    uint8_t char_byte[324];  /* byte-level code point -> byte (GPT-2 map is below U+0144) */
    uint8_t char_mapped[324];
    uint16_t byte_char[256]; /* byte -> byte-level code point */

    tok_merge_slot *merges;
    size_t merge_mask;
    uint32_t *vocab_slots; /* raw bytes -> id + 1 (0 = empty) */
    size_t vocab_mask;
    int ignore_merges;

    tok_added *added;
    size_t n_added;
    int has_raw_added, has_norm_added;
    uint8_t added_first[256]; /* first bytes of added tokens (any mode) */

    int nfc;
    pcre2_code *splits[TOK_MAX_SPLITS];
    int split_jit[TOK_MAX_SPLITS];
    int n_splits;
    uint32_t max_captures;
    int add_prefix_space;

    tss_t tls_key;
};

/* ---------------------------------------------------------------- token_vec */

void token_vec_push(token_vec *v, uint32_t id)
{
    if (v->n == v->cap) {
        v->cap = v->cap ? 2 * v->cap : 64;
        v->ids = xrealloc(v->ids, v->cap * sizeof *v->ids);
    }
    v->ids[v->n++] = id;
}

static void token_vec_append(token_vec *v, const uint32_t *ids, size_t n)
{
    if (v->n + n > v->cap) {
        while (v->n + n > v->cap)
            v->cap = v->cap ? 2 * v->cap : 64;
        v->ids = xrealloc(v->ids, v->cap * sizeof *v->ids);
    }
    memcpy(v->ids + v->n, ids, n * sizeof *ids);
    v->n += n;
}

void token_vec_free(token_vec *v)
{
    free(v->ids);
    v->ids = NULL;
    v->n = v->cap = 0;
}

/* ---------------------------------------------------------------- UTF-8 */

/* Length of the valid UTF-8 sequence at p[0..n), or 0 when invalid; then *bad is the length of
 * its maximal subpart (what one U+FFFD replaces, as Rust's from_utf8_lossy does). */
static size_t utf8_seq_len(const uint8_t *p, size_t n, size_t *bad)
{
    uint8_t c = p[0];
    size_t need;
    uint8_t lo = 0x80, hi = 0xBF;
    *bad = 1;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        need = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        need = 3;
        if (c == 0xE0)
            lo = 0xA0;
        if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 4;
        if (c == 0xF0)
            lo = 0x90;
        if (c == 0xF4)
            hi = 0x8F;
    } else
        return 0;
    for (size_t i = 1; i < need; i++) {
        uint8_t lo_i = i == 1 ? lo : 0x80, hi_i = i == 1 ? hi : 0xBF;
        if (i >= n || p[i] < lo_i || p[i] > hi_i) {
            *bad = i;
            return 0;
        }
    }
    return need;
}

/* Offset of the first invalid byte, or len when text is valid UTF-8. */
static size_t utf8_first_invalid(const char *text, size_t len)
{
    const uint8_t *p = (const uint8_t *)text;
    size_t i = 0, bad;
    while (i < len) {
        if (p[i] < 0x80) {
            i++;
            continue;
        }
        size_t k = utf8_seq_len(p + i, len - i, &bad);
        if (!k)
            return i;
        i += k;
    }
    return len;
}

static void utf8_put(uint8_t **w, int32_t cp)
{
    *w += utf8proc_encode_char(cp, *w);
}

/* ---------------------------------------------------------------- hash tables */

static size_t table_size_for(size_t n)
{
    size_t s = 16;
    while (s < 2 * n)
        s <<= 1;
    return s;
}

static inline uint64_t pair_key(uint32_t a, uint32_t b) { return (uint64_t)a << 32 | b; }

static inline const tok_merge_slot *merge_find(const tokenizer *tk, uint32_t a, uint32_t b)
{
    uint64_t key = pair_key(a, b);
    size_t i = XXH3_64bits(&key, sizeof key) & tk->merge_mask;
    for (;;) {
        const tok_merge_slot *s = &tk->merges[i];
        if (s->rank == UINT32_MAX)
            return NULL;
        if (s->pair == key)
            return s;
        i = (i + 1) & tk->merge_mask;
    }
}

/* Later duplicates overwrite earlier ones, as HF's HashMap collect does. */
static void merge_insert(tokenizer *tk, uint32_t a, uint32_t b, uint32_t rank, uint32_t merged)
{
    uint64_t key = pair_key(a, b);
    size_t i = XXH3_64bits(&key, sizeof key) & tk->merge_mask;
    while (tk->merges[i].rank != UINT32_MAX && tk->merges[i].pair != key)
        i = (i + 1) & tk->merge_mask;
    tk->merges[i] = (tok_merge_slot){key, rank, merged};
}

static int64_t vocab_find(const tokenizer *tk, const uint8_t *bytes, size_t n)
{
    size_t i = XXH3_64bits(bytes, n) & tk->vocab_mask;
    for (;;) {
        uint32_t v = tk->vocab_slots[i];
        if (!v)
            return -1;
        uint32_t id = v - 1;
        if (tk->bytes_len[id] == n && memcmp(tk->bytes_arena + tk->bytes_off[id], bytes, n) == 0)
            return id;
        i = (i + 1) & tk->vocab_mask;
    }
}

static void vocab_insert(tokenizer *tk, uint32_t id)
{
    const uint8_t *bytes = tk->bytes_arena + tk->bytes_off[id];
    size_t n = tk->bytes_len[id];
    if (vocab_find(tk, bytes, n) >= 0)
        return;
    size_t i = XXH3_64bits(bytes, n) & tk->vocab_mask;
    while (tk->vocab_slots[i])
        i = (i + 1) & tk->vocab_mask;
    tk->vocab_slots[i] = id + 1;
}

/* ---------------------------------------------------------------- byte-level alphabet */

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the other bytes are
 * given the code points 256, 257, ... in byte order. */
static void bytelevel_build(tokenizer *tk)
{
    int next = 256;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        int cp = printable ? b : next++;
        tk->byte_char[b] = (uint16_t)cp;
        tk->char_byte[cp] = (uint8_t)b;
        tk->char_mapped[cp] = 1;
    }
}

/* Bytes of a token's text as the ByteLevel decoder gives them: every char mapped back to its
 * byte, or, when some char is outside the alphabet, the text's own UTF-8 bytes. */
static size_t bytelevel_decode_token(const tokenizer *tk, const char *text, size_t len,
                                     uint8_t *out)
{
    const uint8_t *p = (const uint8_t *)text;
    size_t i = 0, n = 0;
    while (i < len) {
        int32_t cp;
        utf8proc_ssize_t k = utf8proc_iterate(p + i, (utf8proc_ssize_t)(len - i), &cp);
        if (k <= 0 || cp >= (int32_t)sizeof tk->char_mapped || !tk->char_mapped[cp]) {
            memcpy(out, text, len);
            return len;
        }
        out[n++] = tk->char_byte[cp];
        i += (size_t)k;
    }
    return n;
}

/* ---------------------------------------------------------------- loading */

typedef struct {
    const char *file;
    json_t *root;
    char *text_buf;
    size_t text_len, text_cap;
    size_t bytes_len, bytes_cap;
} tok_loader;

static int load_error(const tok_loader *ld, const char *field, const char *what)
{
    return err_set(RB_EXIT_INPUT, "%s: field %s: %s", ld->file, field, what);
}

static uint32_t arena_add(char **arena, size_t *len, size_t *cap, const void *data, size_t n)
{
    if (*len + n + 1 > *cap) {
        while (*len + n + 1 > *cap)
            *cap = *cap ? 2 * *cap : 1 << 20;
        *arena = xrealloc(*arena, *cap);
    }
    uint32_t off = (uint32_t)*len;
    memcpy(*arena + off, data, n);
    (*arena)[off + n] = '\0';
    *len += n + 1;
    return off;
}

/* Record the text and decoded bytes of one id. */
static void set_token(tokenizer *tk, tok_loader *ld, uint32_t id, const char *text, size_t len)
{
    uint8_t tmp_small[256];
    uint8_t *tmp = len <= sizeof tmp_small ? tmp_small : xmalloc(len);
    size_t nb = bytelevel_decode_token(tk, text, len, tmp);
    tk->text_off[id] = arena_add(&tk->text_arena, &ld->text_len, &ld->text_cap, text, len);
    tk->bytes_off[id] = arena_add((char **)&tk->bytes_arena, &ld->bytes_len, &ld->bytes_cap,
                                  tmp, nb);
    tk->bytes_len[id] = (uint32_t)nb;
    if (tmp != tmp_small)
        free(tmp);
}

static int64_t json_id(json_t *v)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0 ||
        json_integer_value(v) >= (json_int_t)UINT32_MAX - 1)
        return -1;
    return json_integer_value(v);
}

/* One past the largest id among model.vocab and added_tokens. */
static int vocab_bounds(tokenizer *tk, tok_loader *ld, json_t *vocab, json_t *added)
{
    int64_t max_id = -1;
    const char *key;
    json_t *v;
    json_object_foreach(vocab, key, v) {
        int64_t id = json_id(v);
        if (id < 0)
            return load_error(ld, "model.vocab", "an id is not a non-negative integer");
        max_id = RB_MAX(max_id, id);
    }
    size_t i;
    json_array_foreach(added, i, v) {
        int64_t id = json_id(json_object_get(v, "id"));
        if (id < 0)
            return load_error(ld, "added_tokens", "an entry lacks a valid integer \"id\"");
        max_id = RB_MAX(max_id, id);
    }
    if (max_id < 0)
        return load_error(ld, "model.vocab", "the vocabulary is empty");
    tk->vocab_size = (uint32_t)(max_id + 1);
    return 0;
}

static int load_vocab(tokenizer *tk, tok_loader *ld, json_t *model, json_t *added)
{
    json_t *vocab = json_object_get(model, "vocab");
    if (!json_is_object(vocab))
        return load_error(ld, "model.vocab", "missing or not an object");
    if (!json_is_array(added) && added)
        return load_error(ld, "added_tokens", "not an array");
    int rc = vocab_bounds(tk, ld, vocab, added);
    if (rc)
        return rc;

    /* per-id tables, unused ids marked */
    size_t n = tk->vocab_size;
    tk->text_off = xmalloc(n * sizeof *tk->text_off);
    tk->bytes_off = xmalloc(n * sizeof *tk->bytes_off);
    tk->bytes_len = xcalloc(n, sizeof *tk->bytes_len);
    memset(tk->text_off, 0xFF, n * sizeof *tk->text_off);
    memset(tk->bytes_off, 0xFF, n * sizeof *tk->bytes_off);

    /* regular tokens: text, bytes, and the bytes -> id table */
    const char *key;
    json_t *v;
    json_object_foreach(vocab, key, v) set_token(tk, ld, (uint32_t)json_id(v), key, strlen(key));
    tk->vocab_mask = table_size_for(json_object_size(vocab)) - 1;
    tk->vocab_slots = xcalloc(tk->vocab_mask + 1, sizeof *tk->vocab_slots);
    json_object_foreach(vocab, key, v) vocab_insert(tk, (uint32_t)json_id(v));

    /* the id of each single byte */
    for (int b = 0; b < 256; b++) {
        uint8_t ch[4];
        uint8_t *w = ch;
        utf8_put(&w, tk->byte_char[b]);
        char name[8];
        memcpy(name, ch, (size_t)(w - ch));
        name[w - ch] = '\0';
        int64_t id = json_id(json_object_get(vocab, name));
        if (id < 0)
            return err_set(RB_EXIT_INPUT,
                           "%s: field model.vocab: no token for byte 0x%02X (\"%s\"); a "
                           "byte-level BPE vocabulary must hold all 256 byte symbols",
                           ld->file, b, name);
        tk->byte_id[b] = (uint32_t)id;
    }
    return 0;
}

/* The two halves of merge number i: "a b" or ["a", "b"]. */
static int merge_parts(tok_loader *ld, json_t *m, size_t i, char **a, char **b)
{
    if (json_is_string(m)) {
        const char *s = json_string_value(m);
        const char *sp = strchr(s, ' ');
        if (!sp || strchr(sp + 1, ' '))
            goto bad;
        *a = xmalloc((size_t)(sp - s) + 1);
        memcpy(*a, s, (size_t)(sp - s));
        (*a)[sp - s] = '\0';
        *b = xstrdup(sp + 1);
        return 0;
    }
    if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
        json_is_string(json_array_get(m, 1))) {
        *a = xstrdup(json_string_value(json_array_get(m, 0)));
        *b = xstrdup(json_string_value(json_array_get(m, 1)));
        return 0;
    }
bad:
    return err_set(RB_EXIT_INPUT,
                   "%s: field model.merges[%zu]: expected \"a b\" or [\"a\", \"b\"]", ld->file,
                   i);
}

static int load_merges(tokenizer *tk, tok_loader *ld, json_t *model)
{
    json_t *vocab = json_object_get(model, "vocab");
    json_t *merges = json_object_get(model, "merges");
    if (!json_is_array(merges))
        return load_error(ld, "model.merges", "missing or not an array");
    tk->merge_mask = table_size_for(json_array_size(merges)) - 1;
    tk->merges = xmalloc((tk->merge_mask + 1) * sizeof *tk->merges);
    for (size_t i = 0; i <= tk->merge_mask; i++)
        tk->merges[i].rank = UINT32_MAX;

    size_t i;
    json_t *m;
    json_array_foreach(merges, i, m) {
        char *a = NULL, *b = NULL;
        int rc = merge_parts(ld, m, i, &a, &b);
        if (rc)
            return rc;
        size_t la = strlen(a), lb = strlen(b);
        char *ab = xmalloc(la + lb + 1);
        memcpy(ab, a, la);
        memcpy(ab + la, b, lb + 1);
        int64_t ia = json_id(json_object_get(vocab, a));
        int64_t ib = json_id(json_object_get(vocab, b));
        int64_t iab = json_id(json_object_get(vocab, ab));
        if (ia < 0 || ib < 0 || iab < 0)
            rc = err_set(RB_EXIT_INPUT,
                         "%s: field model.merges[%zu]: \"%s\" + \"%s\" uses a token that is "
                         "not in model.vocab",
                         ld->file, i, a, b);
        else
            merge_insert(tk, (uint32_t)ia, (uint32_t)ib, (uint32_t)i, (uint32_t)iab);
        free(a);
        free(b);
        free(ab);
        if (rc)
            return rc;
    }
    return 0;
}

static int load_model(tokenizer *tk, tok_loader *ld, json_t *added)
{
    json_t *model = json_object_get(ld->root, "model");
    if (!json_is_object(model))
        return load_error(ld, "model", "missing or not an object");
    json_t *type = json_object_get(model, "type");
    if (type && (!json_is_string(type) || strcmp(json_string_value(type), "BPE") != 0))
        return err_set(RB_EXIT_INPUT,
                       "%s: field model.type is \"%s\"; rubric supports only byte-level BPE "
                       "tokenizers (Qwen, Llama 3, GPT-2 families)",
                       ld->file, json_is_string(type) ? json_string_value(type) : "?");
    json_t *dropout = json_object_get(model, "dropout");
    if (dropout && !json_is_null(dropout))
        return load_error(ld, "model.dropout", "BPE dropout is not supported (set it to null)");
    json_t *fallback = json_object_get(model, "byte_fallback");
    if (json_is_true(fallback))
        return load_error(ld, "model.byte_fallback", "byte_fallback is not supported");
    const char *affix[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int k = 0; k < 2; k++) {
        json_t *s = json_object_get(model, affix[k]);
        if (s && !json_is_null(s) && !(json_is_string(s) && json_string_length(s) == 0))
            return err_set(RB_EXIT_INPUT, "%s: field model.%s: only \"\" or null is supported",
                           ld->file, affix[k]);
    }
    tk->ignore_merges = json_is_true(json_object_get(model, "ignore_merges"));

    int rc = load_vocab(tk, ld, model, added);
    if (!rc)
        rc = load_merges(tk, ld, model);
    return rc;
}

static int added_flag(json_t *tok, const char *name)
{
    return json_is_true(json_object_get(tok, name));
}

static int load_added(tokenizer *tk, tok_loader *ld, json_t *added)
{
    size_t n = json_array_size(added);
    tk->added = xcalloc(n ? n : 1, sizeof *tk->added);
    size_t i;
    json_t *a;
    json_array_foreach(added, i, a) {
        json_t *content = json_object_get(a, "content");
        if (!json_is_string(content) || json_string_length(content) == 0)
            return err_set(RB_EXIT_INPUT, "%s: field added_tokens[%zu].content: missing or empty",
                           ld->file, i);
        tok_added *t = &tk->added[tk->n_added++];
        t->id = (uint32_t)json_id(json_object_get(a, "id"));
        t->special = added_flag(a, "special");
        t->single_word = added_flag(a, "single_word");
        t->lstrip = added_flag(a, "lstrip");
        t->rstrip = added_flag(a, "rstrip");
        t->normalized = added_flag(a, "normalized");
        t->content = xmalloc(json_string_length(content) + 1);
        memcpy(t->content, json_string_value(content), json_string_length(content) + 1);
        t->len = json_string_length(content);
        set_token(tk, ld, t->id, t->content, t->len);
    }
    return 0;
}

/* Normalized added tokens are matched against NFC text, so their content is NFC'd too. */
static void added_normalize(tokenizer *tk)
{
    for (size_t i = 0; i < tk->n_added; i++) {
        tok_added *t = &tk->added[i];
        if (t->normalized && tk->nfc) {
            utf8proc_uint8_t *out = NULL;
            utf8proc_ssize_t n = utf8proc_map((const utf8proc_uint8_t *)t->content,
                                              (utf8proc_ssize_t)t->len, &out,
                                              UTF8PROC_STABLE | UTF8PROC_COMPOSE);
            if (n >= 0) {
                free(t->content);
                t->content = (char *)out;
                t->len = (size_t)n;
            }
        }
        if (t->normalized)
            tk->has_norm_added = 1;
        else
            tk->has_raw_added = 1;
        tk->added_first[(uint8_t)t->content[0]] = 1;
    }
}

static int load_normalizer_one(tokenizer *tk, tok_loader *ld, json_t *n, const char *field)
{
    const char *type = json_string_value(json_object_get(n, "type"));
    if (type && strcmp(type, "NFC") == 0) {
        tk->nfc = 1;
        return 0;
    }
    return err_set(RB_EXIT_INPUT, "%s: field %s: normalizer type \"%s\" is not supported "
                   "(rubric supports NFC, a Sequence of NFC, or null)",
                   ld->file, field, type ? type : "?");
}

static int load_normalizer(tokenizer *tk, tok_loader *ld)
{
    json_t *n = json_object_get(ld->root, "normalizer");
    if (!n || json_is_null(n))
        return 0;
    const char *type = json_string_value(json_object_get(n, "type"));
    if (!type || strcmp(type, "Sequence") != 0)
        return load_normalizer_one(tk, ld, n, "normalizer");
    json_t *list = json_object_get(n, "normalizers");
    size_t i;
    json_t *item;
    json_array_foreach(list, i, item) {
        char field[64];
        snprintf(field, sizeof field, "normalizer.normalizers[%zu]", i);
        int rc = load_normalizer_one(tk, ld, item, field);
        if (rc)
            return rc;
    }
    return 0;
}

static int add_split(tokenizer *tk, tok_loader *ld, const char *pattern, size_t len,
                     uint32_t extra_opts, const char *field)
{
    if (tk->n_splits == TOK_MAX_SPLITS)
        return load_error(ld, field, "too many Split pre-tokenizers");
    int errcode;
    PCRE2_SIZE erroff;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, len,
                                   PCRE2_UTF | PCRE2_UCP | extra_opts, &errcode, &erroff, NULL);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(errcode, msg, sizeof msg);
        return err_set(RB_EXIT_INPUT, "%s: field %s: the regex does not compile with PCRE2 at "
                       "offset %zu: %s", ld->file, field, (size_t)erroff, (char *)msg);
    }
    int i = tk->n_splits++;
    tk->splits[i] = re;
    tk->split_jit[i] = pcre2_jit_compile(re, PCRE2_JIT_COMPLETE) == 0;
    uint32_t caps = 0;
    pcre2_pattern_info(re, PCRE2_INFO_CAPTURECOUNT, &caps);
    tk->max_captures = RB_MAX(tk->max_captures, caps);
    return 0;
}

static int load_split(tokenizer *tk, tok_loader *ld, json_t *p, const char *field)
{
    const char *behavior = json_string_value(json_object_get(p, "behavior"));
    int invert = json_is_true(json_object_get(p, "invert"));
    if (!behavior || strcmp(behavior, "Isolated") != 0 || invert)
        return load_error(ld, field, "only Split with behavior \"Isolated\" and invert false "
                          "is supported");
    json_t *pat = json_object_get(p, "pattern");
    json_t *re = json_object_get(pat, "Regex");
    json_t *lit = json_object_get(pat, "String");
    if (json_is_string(re))
        return add_split(tk, ld, json_string_value(re), json_string_length(re), 0, field);
    if (json_is_string(lit))
        return add_split(tk, ld, json_string_value(lit), json_string_length(lit),
                         PCRE2_LITERAL, field);
    return load_error(ld, field, "pattern must be {\"Regex\": ...} or {\"String\": ...}");
}

/* One pre-tokenizer; *bytelevel is set when it was the ByteLevel step. */
static int load_pretok_one(tokenizer *tk, tok_loader *ld, json_t *p, const char *field,
                           int *bytelevel)
{
    const char *type = json_string_value(json_object_get(p, "type"));
    if (*bytelevel)
        return load_error(ld, field, "a pre-tokenizer after ByteLevel is not supported");
    if (type && strcmp(type, "Split") == 0)
        return load_split(tk, ld, p, field);
    if (type && strcmp(type, "ByteLevel") == 0) {
        *bytelevel = 1;
        tk->add_prefix_space = json_is_true(json_object_get(p, "add_prefix_space"));
        json_t *use_regex = json_object_get(p, "use_regex");
        if (!use_regex || json_is_true(use_regex))
            return add_split(tk, ld, tok_gpt2_pattern, strlen(tok_gpt2_pattern), 0, field);
        return 0;
    }
    return err_set(RB_EXIT_INPUT, "%s: field %s: pre-tokenizer type \"%s\" is not supported "
                   "(rubric supports Split and ByteLevel)", ld->file, field, type ? type : "?");
}

static int load_pretokenizer(tokenizer *tk, tok_loader *ld)
{
    json_t *p = json_object_get(ld->root, "pre_tokenizer");
    int bytelevel = 0, rc = 0;
    const char *type = json_string_value(json_object_get(p, "type"));
    if (type && strcmp(type, "Sequence") == 0) {
        size_t i;
        json_t *item;
        json_array_foreach(json_object_get(p, "pretokenizers"), i, item) {
            char field[64];
            snprintf(field, sizeof field, "pre_tokenizer.pretokenizers[%zu]", i);
            if ((rc = load_pretok_one(tk, ld, item, field, &bytelevel)))
                return rc;
        }
    } else if (p && !json_is_null(p)) {
        if ((rc = load_pretok_one(tk, ld, p, "pre_tokenizer", &bytelevel)))
            return rc;
    }
    if (!bytelevel)
        return load_error(ld, "pre_tokenizer", "a ByteLevel pre-tokenizer is required "
                          "(rubric supports byte-level BPE only)");
    return 0;
}

static int load_decoder(tokenizer *tk, tok_loader *ld)
{
    json_t *d = json_object_get(ld->root, "decoder");
    const char *type = json_string_value(json_object_get(d, "type"));
    if (!type || strcmp(type, "ByteLevel") != 0)
        return err_set(RB_EXIT_INPUT, "%s: field decoder: type \"%s\" is not supported (rubric "
                       "supports the ByteLevel decoder)", ld->file, type ? type : "null");
    return 0;
}

static void tls_free(void *p);

static int tokenizer_parse(tokenizer *tk, tok_loader *ld)
{
    if (!json_is_object(ld->root))
        return err_set(RB_EXIT_INPUT, "%s: not a JSON object", ld->file);
    json_t *added = json_object_get(ld->root, "added_tokens");
    if (added && !json_is_null(added) && !json_is_array(added))
        return load_error(ld, "added_tokens", "not an array");
    int rc;
    if ((rc = load_normalizer(tk, ld)) || (rc = load_pretokenizer(tk, ld)) ||
        (rc = load_decoder(tk, ld)) || (rc = load_model(tk, ld, added)) ||
        (rc = load_added(tk, ld, added)))
        return rc;
    added_normalize(tk);
    return 0;
}

int tokenizer_load(tokenizer **out, const char *path)
{
    static atomic_uint_fast64_t serial_next = 1;
    *out = NULL;
    char *file = path_is_dir(path) ? xasprintf("%s/tokenizer.json", path) : xstrdup(path);
    char *data;
    size_t n;
    int rc = read_file(file, &data, &n);
    if (rc) {
        err_prefix(rc, "cannot load the tokenizer (give the folder holding tokenizer.json, or "
                   "the file itself)");
        free(file);
        return rc;
    }

    /* parse the JSON */
    json_error_t jerr;
    json_t *root = json_loadb(data, n, JSON_ALLOW_NUL, &jerr);
    tokenizer *tk = xcalloc(1, sizeof *tk);
    tk->path = file;
    tk->fingerprint = XXH64(data, n, 0);
    tk->serial = atomic_fetch_add(&serial_next, 1);
    free(data);
    if (!root) {
        err_set(RB_EXIT_INPUT, "%s:%d:%d: not valid JSON: %s", file, jerr.line, jerr.column,
                jerr.text);
        free(tk->path);
        free(tk);
        return RB_EXIT_INPUT;
    }

    /* build the tables */
    bytelevel_build(tk);
    tok_loader ld = {.file = file, .root = root};
    if (tss_create(&tk->tls_key, tls_free) != thrd_success)
        rb_die(RB_EXIT_RUNTIME, "cannot create thread-local storage for the tokenizer");
    rc = tokenizer_parse(tk, &ld);
    json_decref(root);
    if (rc) {
        tokenizer_free(tk);
        return rc;
    }
    *out = tk;
    return 0;
}

/* ---------------------------------------------------------------- per-thread state */

typedef struct {
    uint64_t hash;
    uint32_t key_off, ids_off;
    uint16_t key_len, n_ids;
} tok_cache_slot;

typedef struct {
    pcre2_match_data *md;
    pcre2_match_context *mctx;
    pcre2_jit_stack *jit_stack;

    /* word -> ids cache: open addressing over an arena; cleared when full */
    tok_cache_slot *slots;
    uint8_t *keys;
    uint32_t *ids;
    size_t n_entries, keys_len, ids_len;

    /* BPE scratch */
    uint32_t *sym_id;
    int32_t *sym_prev, *sym_next;
    uint64_t *tree;
    size_t sym_cap, tree_cap;
    uint8_t *prefix_buf; /* add_prefix_space copies */
    size_t prefix_cap;
} tok_thread;

static void tls_free(void *p)
{
    tok_thread *ts = p;
    if (!ts)
        return;
    pcre2_match_data_free(ts->md);
    pcre2_match_context_free(ts->mctx);
    pcre2_jit_stack_free(ts->jit_stack);
    free(ts->slots);
    free(ts->keys);
    free(ts->ids);
    free(ts->sym_id);
    free(ts->sym_prev);
    free(ts->sym_next);
    free(ts->tree);
    free(ts->prefix_buf);
    free(ts);
}

static tok_thread *thread_state(const tokenizer *tk)
{
    tok_thread *ts = tss_get(tk->tls_key);
    if (ts)
        return ts;
    ts = xcalloc(1, sizeof *ts);
    ts->md = pcre2_match_data_create(tk->max_captures + 1, NULL);
    ts->mctx = pcre2_match_context_create(NULL);
    ts->jit_stack = pcre2_jit_stack_create(32 * 1024, TOK_JIT_STACK_MAX, NULL);
    if (!ts->md || !ts->mctx)
        rb_die(RB_EXIT_RUNTIME, "out of memory creating PCRE2 match data");
    if (ts->jit_stack)
        pcre2_jit_stack_assign(ts->mctx, NULL, ts->jit_stack);
    ts->slots = xcalloc(TOK_CACHE_SLOTS, sizeof *ts->slots);
    ts->keys = xmalloc(TOK_CACHE_KEY_BYTES);
    ts->ids = xmalloc(TOK_CACHE_IDS * sizeof *ts->ids);
    tss_set(tk->tls_key, ts);
    return ts;
}

static void cache_clear(tok_thread *ts)
{
    memset(ts->slots, 0, TOK_CACHE_SLOTS * sizeof *ts->slots);
    ts->n_entries = ts->keys_len = ts->ids_len = 0;
}

/* Slot of word in the cache: the entry when found, else the empty slot for it. */
static tok_cache_slot *cache_slot(tok_thread *ts, const uint8_t *w, size_t n, uint64_t h)
{
    size_t i = h & (TOK_CACHE_SLOTS - 1);
    for (;;) {
        tok_cache_slot *s = &ts->slots[i];
        if (!s->key_len)
            return s;
        if (s->hash == h && s->key_len == n && memcmp(ts->keys + s->key_off, w, n) == 0)
            return s;
        i = (i + 1) & (TOK_CACHE_SLOTS - 1);
    }
}

static void cache_put(tok_thread *ts, const uint8_t *w, size_t n, uint64_t h,
                      const uint32_t *ids, size_t n_ids)
{
    if (ts->n_entries == TOK_CACHE_MAX_ENTRIES || ts->keys_len + n > TOK_CACHE_KEY_BYTES ||
        ts->ids_len + n_ids > TOK_CACHE_IDS)
        cache_clear(ts);
    tok_cache_slot *s = cache_slot(ts, w, n, h);
    s->hash = h;
    s->key_off = (uint32_t)ts->keys_len;
    s->key_len = (uint16_t)n;
    s->ids_off = (uint32_t)ts->ids_len;
    s->n_ids = (uint16_t)n_ids;
    memcpy(ts->keys + ts->keys_len, w, n);
    memcpy(ts->ids + ts->ids_len, ids, n_ids * sizeof *ids);
    ts->keys_len += n;
    ts->ids_len += n_ids;
    ts->n_entries++;
}

/* ---------------------------------------------------------------- BPE */

static void bpe_reserve(tok_thread *ts, size_t n)
{
    if (n <= ts->sym_cap)
        return;
    ts->sym_cap = n + n / 2;
    ts->sym_id = xrealloc(ts->sym_id, ts->sym_cap * sizeof *ts->sym_id);
    ts->sym_prev = xrealloc(ts->sym_prev, ts->sym_cap * sizeof *ts->sym_prev);
    ts->sym_next = xrealloc(ts->sym_next, ts->sym_cap * sizeof *ts->sym_next);
}

/*
 * The candidate merges of a piece live in a min segment tree over symbol positions: leaf i holds
 * (rank << 32 | i) of the pair starting at symbol i, or TOK_NO_PAIR. The root is the pair to
 * merge next: the lowest rank, the leftmost among equals (HF's order). A merge updates three
 * leaves, O(log n) each, and no stale entries pile up as they do in a heap.
 */
#define TOK_NO_PAIR UINT64_MAX

static inline void tree_set(uint64_t *tree, size_t m, size_t i, uint64_t v)
{
    i += m;
    tree[i] = v;
    for (i >>= 1; i >= 1; i >>= 1)
        tree[i] = RB_MIN(tree[2 * i], tree[2 * i + 1]);
}

/* Key of the pair starting at symbol pos, or TOK_NO_PAIR. */
static inline uint64_t pair_entry(const tokenizer *tk, const tok_thread *ts, int32_t pos)
{
    int32_t next = ts->sym_next[pos];
    if (next < 0)
        return TOK_NO_PAIR;
    const tok_merge_slot *m = merge_find(tk, ts->sym_id[pos], ts->sym_id[next]);
    return m ? (uint64_t)m->rank << 32 | (uint32_t)pos : TOK_NO_PAIR;
}

/* Merge the bytes of one piece by rank; appends the ids to out. O(n log n) in the length. */
static void bpe_word(const tokenizer *tk, tok_thread *ts, const uint8_t *w, size_t n,
                     token_vec *out)
{
    bpe_reserve(ts, n);
    for (size_t i = 0; i < n; i++) {
        ts->sym_id[i] = tk->byte_id[w[i]];
        ts->sym_prev[i] = (int32_t)i - 1;
        ts->sym_next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
    }

    /* the tree of every adjacent pair with a merge, built bottom-up in O(n) */
    size_t m = 1;
    while (m < n)
        m <<= 1;
    if (2 * m > ts->tree_cap) {
        ts->tree_cap = 2 * m;
        ts->tree = xrealloc(ts->tree, ts->tree_cap * sizeof *ts->tree);
    }
    uint64_t *tree = ts->tree;
    for (size_t i = 0; i < m; i++)
        tree[m + i] = i < n ? pair_entry(tk, ts, (int32_t)i) : TOK_NO_PAIR;
    for (size_t i = m - 1; i >= 1; i--)
        tree[i] = RB_MIN(tree[2 * i], tree[2 * i + 1]);

    /* merge the best pair until none is left */
    while (tree[1] != TOK_NO_PAIR) {
        int32_t pos = (int32_t)(uint32_t)tree[1];
        int32_t next = ts->sym_next[pos];
        ts->sym_id[pos] = merge_find(tk, ts->sym_id[pos], ts->sym_id[next])->merged;
        ts->sym_next[pos] = ts->sym_next[next];
        if (ts->sym_next[pos] >= 0)
            ts->sym_prev[ts->sym_next[pos]] = pos;
        tree_set(tree, m, (size_t)next, TOK_NO_PAIR);
        tree_set(tree, m, (size_t)pos, pair_entry(tk, ts, pos));
        if (ts->sym_prev[pos] >= 0)
            tree_set(tree, m, (size_t)ts->sym_prev[pos], pair_entry(tk, ts, ts->sym_prev[pos]));
    }
    for (int32_t i = 0; i >= 0; i = ts->sym_next[i])
        token_vec_push(out, ts->sym_id[i]);
}

/* The ids of one pre-tokenized piece, through the cache. */
static void encode_word(const tokenizer *tk, tok_thread *ts, const uint8_t *w, size_t n,
                        token_vec *out)
{
    if (n == 0)
        return;
    if (n == 1) {
        token_vec_push(out, tk->byte_id[w[0]]);
        return;
    }
    if (tk->ignore_merges) {
        int64_t id = vocab_find(tk, w, n);
        if (id >= 0) {
            token_vec_push(out, (uint32_t)id);
            return;
        }
    }
    if (n > TOK_CACHE_MAX_WORD) {
        bpe_word(tk, ts, w, n, out);
        return;
    }
    uint64_t h = XXH3_64bits(w, n);
    tok_cache_slot *s = cache_slot(ts, w, n, h);
    if (s->key_len) {
        token_vec_append(out, ts->ids + s->ids_off, s->n_ids);
        return;
    }
    size_t start = out->n;
    bpe_word(tk, ts, w, n, out);
    cache_put(ts, w, n, h, out->ids + start, out->n - start);
}

/* ByteLevel's add_prefix_space: a piece not starting with a space gets one. */
static void encode_piece(const tokenizer *tk, tok_thread *ts, const uint8_t *w, size_t n,
                         token_vec *out)
{
    if (!tk->add_prefix_space || (n > 0 && w[0] == ' ')) {
        encode_word(tk, ts, w, n, out);
        return;
    }
    if (n + 1 > ts->prefix_cap) {
        ts->prefix_cap = 2 * (n + 1);
        ts->prefix_buf = xrealloc(ts->prefix_buf, ts->prefix_cap);
    }
    ts->prefix_buf[0] = ' ';
    memcpy(ts->prefix_buf + 1, w, n);
    encode_word(tk, ts, ts->prefix_buf, n + 1, out);
}

/* ---------------------------------------------------------------- pre-tokenization */

/* A PCRE2 failure: a resource limit hit by this text is bad input, anything else a runtime
 * failure. */
static int regex_error(int rc)
{
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(rc, msg, sizeof msg);
    int limit = rc == PCRE2_ERROR_MATCHLIMIT || rc == PCRE2_ERROR_DEPTHLIMIT ||
                rc == PCRE2_ERROR_HEAPLIMIT || rc == PCRE2_ERROR_JIT_STACKLIMIT;
    if (limit)
        return err_set(RB_EXIT_INPUT, "the pre-tokenizer regex hit a PCRE2 limit on this text "
                       "(%s); the text is pathological for the tokenizer's pattern", (char *)msg);
    return err_set(RB_EXIT_RUNTIME, "the pre-tokenizer regex failed (PCRE2 error %d: %s)", rc,
                   (char *)msg);
}

/* Split s[0..n) with regex `step` (matches and the text between them are pieces, as HF's
 * "Isolated" behavior), then with the next steps, and encode the final pieces. */
static int split_span(const tokenizer *tk, tok_thread *ts, int step, const uint8_t *s, size_t n,
                      token_vec *out)
{
    if (n == 0)
        return 0;
    if (step == tk->n_splits) {
        encode_piece(tk, ts, s, n, out);
        return 0;
    }
    pcre2_code *re = tk->splits[step];
    size_t pos = 0, last = 0;
    while (pos < n) {
        int rc = tk->split_jit[step]
                     ? pcre2_jit_match(re, s, n, pos, 0, ts->md, ts->mctx)
                     : pcre2_match(re, s, n, pos, PCRE2_NO_UTF_CHECK, ts->md, ts->mctx);
        if (rc == PCRE2_ERROR_NOMATCH)
            break;
        if (rc < 0)
            return regex_error(rc);
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(ts->md);
        size_t ms = ov[0], me = ov[1];
        if (me == ms) {
            /* an empty match: step over one character */
            pos = ms + 1;
            while (pos < n && (s[pos] & 0xC0) == 0x80)
                pos++;
            continue;
        }
        int err = split_span(tk, ts, step + 1, s + last, ms - last, out);
        if (!err)
            err = split_span(tk, ts, step + 1, s + ms, me - ms, out);
        if (err)
            return err;
        pos = last = me;
    }
    return split_span(tk, ts, step + 1, s + last, n - last, out);
}

/* ---------------------------------------------------------------- added tokens */

/* The longest added token (of the given normalized-ness) starting at s[i], or NULL. */
static const tok_added *added_at(const tokenizer *tk, const uint8_t *s, size_t n, size_t i,
                                 int normalized)
{
    const tok_added *best = NULL;
    for (size_t k = 0; k < tk->n_added; k++) {
        const tok_added *t = &tk->added[k];
        if (t->normalized != normalized || t->len > n - i || (best && t->len <= best->len))
            continue;
        if (memcmp(s + i, t->content, t->len) == 0)
            best = t;
    }
    return best;
}

/* Start of the character that ends at s[i] (i > 0). */
static size_t prev_char_start(const uint8_t *s, size_t i)
{
    size_t k = i - 1;
    while (k > 0 && (s[k] & 0xC0) == 0x80)
        k--;
    return k;
}

static int32_t cp_before(const uint8_t *s, size_t i)
{
    if (i == 0)
        return -1;
    size_t k = prev_char_start(s, i);
    int32_t cp;
    utf8proc_iterate(s + k, (utf8proc_ssize_t)(i - k), &cp);
    return cp;
}

static int32_t cp_at(const uint8_t *s, size_t n, size_t i, size_t *len)
{
    int32_t cp = -1;
    utf8proc_ssize_t k = i < n ? utf8proc_iterate(s + i, (utf8proc_ssize_t)(n - i), &cp) : 0;
    *len = k > 0 ? (size_t)k : 1;
    return cp;
}

static int is_word_char(int32_t cp)
{
    if (cp < 0)
        return 0;
    utf8proc_category_t c = utf8proc_category(cp);
    return (c >= UTF8PROC_CATEGORY_LU && c <= UTF8PROC_CATEGORY_LO) ||
           (c >= UTF8PROC_CATEGORY_ND && c <= UTF8PROC_CATEGORY_NO) || cp == '_';
}

static int is_space_char(int32_t cp)
{
    if (cp < 0)
        return 0;
    utf8proc_category_t c = utf8proc_category(cp);
    return (cp >= 0x09 && cp <= 0x0D) || cp == 0x85 || c == UTF8PROC_CATEGORY_ZS ||
           c == UTF8PROC_CATEGORY_ZL || c == UTF8PROC_CATEGORY_ZP;
}

typedef int (*span_fn)(const tokenizer *tk, tok_thread *ts, const uint8_t *s, size_t n,
                       int flags, token_vec *out);

/* Split s[0..n) on added tokens of the given kind as HF's AddedVocabulary does (leftmost
 * match, longest among those; single_word, lstrip and rstrip honoured); the text between
 * matches goes to `gap`. */
static int split_added(const tokenizer *tk, tok_thread *ts, const uint8_t *s, size_t n,
                       int normalized, int flags, span_fn gap, token_vec *out)
{
    size_t done = 0, i = 0;
    while (i < n) {
        if (!tk->added_first[s[i]]) {
            i++;
            continue;
        }
        const tok_added *t = added_at(tk, s, n, i, normalized);
        if (!t) {
            i++;
            continue;
        }
        size_t start = i, stop = i + t->len, clen;
        if (t->single_word && (is_word_char(cp_before(s, start)) ||
                               is_word_char(cp_at(s, n, stop, &clen)))) {
            i++;
            continue;
        }
        if (t->lstrip) {
            while (start > done && is_space_char(cp_before(s, start)))
                start = prev_char_start(s, start);
        }
        if (t->rstrip) {
            while (stop < n && is_space_char(cp_at(s, n, stop, &clen)))
                stop += clen;
        }
        int rc = gap(tk, ts, s + done, start - done, flags, out);
        if (rc)
            return rc;
        token_vec_push(out, t->id);
        done = i = stop;
    }
    return gap(tk, ts, s + done, n - done, flags, out);
}

/* ---------------------------------------------------------------- encode */

static int span_pretokenize(const tokenizer *tk, tok_thread *ts, const uint8_t *s, size_t n,
                            int flags, token_vec *out)
{
    return split_span(tk, ts, 0, s, n, out);
}

/* Text made only of code points below U+0300 is already NFC (no composition starts there). */
static int nfc_trivial(const uint8_t *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] >= 0xCC) /* lead bytes of U+0300 and above */
            return 0;
    return 1;
}

static int span_normalize(const tokenizer *tk, tok_thread *ts, const uint8_t *s, size_t n,
                          int flags, token_vec *out)
{
    if (n == 0)
        return 0;
    const uint8_t *text = s;
    utf8proc_uint8_t *norm = NULL;
    if (tk->nfc && !nfc_trivial(s, n)) {
        utf8proc_ssize_t m = utf8proc_map(s, (utf8proc_ssize_t)n, &norm,
                                          UTF8PROC_STABLE | UTF8PROC_COMPOSE);
        if (m < 0)
            return err_set(RB_EXIT_INPUT, "tokenizer: NFC normalization failed: %s",
                           utf8proc_errmsg(m));
        text = norm;
        n = (size_t)m;
    }
    int rc;
    if ((flags & TOK_MATCH_ADDED) && tk->has_norm_added)
        rc = split_added(tk, ts, text, n, 1, flags, span_pretokenize, out);
    else
        rc = span_pretokenize(tk, ts, text, n, flags, out);
    free(norm);
    return rc;
}

int tokenizer_encode(const tokenizer *tk, const char *text, size_t len, int flags,
                     token_vec *out)
{
    if (len > INT32_MAX)
        return err_set(RB_EXIT_INPUT, "a text of %zu bytes is too long to tokenize (the limit "
                       "is 2 GiB)", len);
    size_t bad = utf8_first_invalid(text, len);
    if (bad < len)
        return err_set(RB_EXIT_INPUT, "invalid UTF-8 at byte %zu (0x%02X); the text must be "
                       "UTF-8", bad, (uint8_t)text[bad]);
    tok_thread *ts = thread_state(tk);
    const uint8_t *s = (const uint8_t *)text;
    if ((flags & TOK_MATCH_ADDED) && tk->has_raw_added)
        return split_added(tk, ts, s, len, 0, flags, span_normalize, out);
    return span_normalize(tk, ts, s, len, flags, out);
}

/* ---------------------------------------------------------------- decode */

int tokenizer_decode(const tokenizer *tk, const uint32_t *ids, size_t n, char **text,
                     size_t *len)
{
    *text = NULL;
    *len = 0;

    /* the bytes of all tokens, joined */
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] >= tk->vocab_size || tk->bytes_off[ids[i]] == UINT32_MAX)
            return err_set(RB_EXIT_INPUT, "token id %u (position %zu) is not in the vocabulary "
                           "(%u ids)", ids[i], i, tk->vocab_size);
        total += tk->bytes_len[ids[i]];
    }
    uint8_t *raw = xmalloc(total + 1);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        memcpy(raw + k, tk->bytes_arena + tk->bytes_off[ids[i]], tk->bytes_len[ids[i]]);
        k += tk->bytes_len[ids[i]];
    }

    /* UTF-8 with each maximal invalid subpart replaced by U+FFFD (at most 3 bytes per byte) */
    uint8_t *dst = xmalloc(3 * total + 1), *w = dst;
    size_t i = 0, bad;
    while (i < total) {
        size_t m = utf8_seq_len(raw + i, total - i, &bad);
        if (m) {
            memcpy(w, raw + i, m);
            w += m;
            i += m;
        } else {
            utf8_put(&w, 0xFFFD);
            i += bad;
        }
    }
    *w = '\0';
    free(raw);
    *text = (char *)dst;
    *len = (size_t)(w - dst);
    return 0;
}

/* ---------------------------------------------------------------- lookups */

int64_t tokenizer_token_id(const tokenizer *tk, const char *token_text)
{
    size_t len = strlen(token_text);
    for (size_t i = 0; i < tk->n_added; i++)
        if (tk->added[i].len == len && memcmp(tk->added[i].content, token_text, len) == 0)
            return tk->added[i].id;
    uint8_t *bytes = xmalloc(len + 1);
    size_t nb = bytelevel_decode_token(tk, token_text, len, bytes);
    int64_t id = vocab_find(tk, bytes, nb);
    free(bytes);
    if (id >= 0 && strcmp(tk->text_arena + tk->text_off[id], token_text) != 0)
        id = -1;
    return id;
}

const char *tokenizer_token_text(const tokenizer *tk, uint32_t id)
{
    if (id >= tk->vocab_size || tk->text_off[id] == UINT32_MAX)
        return NULL;
    return tk->text_arena + tk->text_off[id];
}

uint32_t tokenizer_vocab_size(const tokenizer *tk) { return tk->vocab_size; }

uint64_t tokenizer_fingerprint(const tokenizer *tk) { return tk->fingerprint; }

void tokenizer_free(tokenizer *tk)
{
    if (!tk)
        return;
    tls_free(tss_get(tk->tls_key));
    tss_set(tk->tls_key, NULL);
    tss_delete(tk->tls_key);
    for (int i = 0; i < tk->n_splits; i++)
        pcre2_code_free(tk->splits[i]);
    for (size_t i = 0; i < tk->n_added; i++)
        free(tk->added[i].content);
    free(tk->added);
    free(tk->text_arena);
    free(tk->text_off);
    free(tk->bytes_arena);
    free(tk->bytes_off);
    free(tk->bytes_len);
    free(tk->merges);
    free(tk->vocab_slots);
    free(tk->path);
    free(tk);
}
