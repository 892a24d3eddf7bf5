/* score.c: data-parallel batch scoring: rank 0 streams, reorders and journals; workers score
 * (see score.h for the protocol, the output format and the journal). */
#include "score.h"

#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <libgen.h>
#include <limits.h>
#include <mpi.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "comm.h"
#include "jsonl.h"
#include "ops.h"
#include "world.h"
#include "log.h"
#include "metrics.h"
#include "prep.h"
#include "scorer.h"
#include "util.h"

/* MPI tags of the scoring protocol (MPI_COMM_WORLD). */
enum { TAG_CHUNK = 0x5c01, TAG_RESULT = 0x5c02, TAG_STOP = 0x5c03, TAG_READY = 0x5c04 };

/* A chunk message: chunk_header, uint32_t lens[n_rows], then the lines' bytes. */
typedef struct {
    int64_t chunk_id;
    int64_t first_row;
    int32_t n_rows;
    int32_t pad;
} chunk_header;

/* A result message: result_header, then n_rows output lines, each ending in '\n'. */
typedef struct {
    int64_t chunk_id;
    int32_t n_rows, n_ok, n_off_grammar, n_bad;
} result_header;

typedef struct {
    char *data;
    size_t len, cap;
} byte_buf;

static void buf_reserve(byte_buf *b, size_t extra)
{
    if (b->len + extra <= b->cap)
        return;
    b->cap = RB_MAX(b->cap * 2, b->len + extra + 4096);
    b->data = xrealloc(b->data, b->cap);
}

static void buf_put(byte_buf *b, const void *p, size_t n)
{
    if (n == 0)
        return; /* an empty line: b->data may still be NULL (memcpy's arguments must not be) */
    buf_reserve(b, n);
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

/* An MPI call that failed (a rank died, most likely) ends the job with a clear message. */
static void mpi_ok(int rc, const char *what)
{
    if (rc != MPI_SUCCESS)
        rb_die_err(comm_check_mpi(rc, what, MPI_COMM_WORLD));
}

void score_options_defaults(score_options *o)
{
    memset(o, 0, sizeof *o);
    o->score_min = 0;
    o->score_max = 5;
    o->chunk_rows = 64;
    o->batch_rows = 8;
    o->prefix_cache = 1;
    o->style = PROMPT_STYLE_QWEN3;
    const char *env = getenv("RUBRIC_BACKEND");
    o->backend = env && *env ? env : "auto";
    o->worker_timeout_s = SCORE_WORKER_TIMEOUT_S;
}

volatile sig_atomic_t score_output_open = 0;

double score_chunk_timeout(double worker_timeout_s, int first, double slowest_chunk_s)
{
    if (first || slowest_chunk_s <= 0)
        return RB_MAX(worker_timeout_s, SCORE_FIRST_CHUNK_TIMEOUT_S);
    return worker_timeout_s + 5.0 * slowest_chunk_s;
}

static void sleep_briefly(void)
{
    struct timespec ts = {0, 1000000}; /* 1 ms */
    nanosleep(&ts, NULL);
}

int score_options_from_config(score_options *o, const rubric_config *cfg)
{
    o->score_min = cfg->score_min;
    o->score_max = cfg->score_max;
    if (cfg->score_batch_size > 0)
        o->batch_rows = cfg->score_batch_size;
    o->gpu_hour_cost = cfg->gpu_hour_cost;
    if (cfg->tokenizer_dir)
        o->tokenizer_dir = cfg->tokenizer_dir;
    if (!o->model_dir)
        o->model_dir = cfg->base_model_dir ? cfg->base_model_dir : cfg->base_model;
    o->eos_token = cfg->eos_token;
    return prompt_style_from_config(cfg, &o->style);
}

char *score_default_metrics_path(const char *output)
{
    size_t n = strlen(output);
    if (n > 6 && strcmp(output + n - 6, ".jsonl") == 0)
        n -= 6;
    return xasprintf("%.*s.metrics.json", (int)n, output);
}

int score_parse_answer(prep_score_shape *shape, const char *text, size_t len, int k,
                       int score_min, int score_max, int *scores, int *not_a_score)
{
    int v[PREP_MAX_SCORE_COUNT], in_range;
    int n = prep_score_shape_values(shape, text, len, score_min, score_max, &in_range, v,
                                    PREP_MAX_SCORE_COUNT);
    if (not_a_score)
        *not_a_score = n == 0;
    if (n == 0)
        return err_set(RB_EXIT_INPUT, "it is not integers separated by single spaces, which "
                       "rubric prep rejects too (not_a_score)");
    if (n != k)
        return err_set(RB_EXIT_INPUT, "it has %d score%s, where K is %d", n, plural_s(n), k);
    for (int i = 0; i < k; i++) {
        if (v[i] < score_min || v[i] > score_max)
            return err_set(RB_EXIT_INPUT, "score %d is outside %d..%d", v[i], score_min,
                           score_max);
        scores[i] = v[i];
    }
    return 0;
}

/* ======================================================================================== */
/* The worker's side: parse the rows of a chunk, score them, format the output lines.       */
/* ======================================================================================== */

typedef struct {
    const score_options *o;
    scorer_backend *backend;
    scorer_row *rows;
    scorer_result *results;
    int *slot;          /* per line: index into rows, or -1 for a bad line */
    char **errors;      /* per line: why it is bad */
    int cap;
    byte_buf out;
} score_worker;

/* The fake model of --fake-model: scores from a hash of the row. */
typedef struct {
    scorer_backend base;
    int k, score_min, score_max, delay_us;
} fake_backend;

static int fake_score_rows(scorer_backend *b, const scorer_row *rows, int n, scorer_result *out)
{
    fake_backend *f = (fake_backend *)b;
    for (int r = 0; r < n; r++) {
        XXH64_state_t *st = XXH64_createState();
        XXH64_reset(st, 0);
        XXH64_update(st, rows[r].instruction, rows[r].instruction_len);
        XXH64_update(st, "\x1f", 1);
        XXH64_update(st, rows[r].input, rows[r].input_len);
        uint64_t h = XXH64_digest(st);
        XXH64_freeState(st);
        memset(&out[r], 0, sizeof out[r]);
        out[r].ok = 1;
        out[r].n_scores = f->k;
        for (int i = 0; i < f->k; i++) {
            uint64_t hi = XXH64(&h, sizeof h, (uint64_t)i + 1);
            out[r].scores[i] = f->score_min + (int)(hi % (uint64_t)(f->score_max - f->score_min
                                                                    + 1));
        }
        out[r].off_grammar = (h >> 56) % 16 == 0;
        if (f->delay_us > 0)
            usleep((useconds_t)f->delay_us);
    }
    return 0;
}

static void fake_destroy(scorer_backend *b) { free(b); }

static scorer_backend *fake_backend_new(const score_options *o, int k)
{
    fake_backend *f = xcalloc(1, sizeof *f);
    f->base.score_rows = fake_score_rows;
    f->base.destroy = fake_destroy;
    f->k = k;
    f->score_min = o->score_min;
    f->score_max = o->score_max;
    f->delay_us = o->fake_delay_us;
    return &f->base;
}

/* gpu_index: this worker's place among the workers on its node (which GPU it takes). */
static int worker_open(score_worker *w, const score_options *o, int k, int gpu_index)
{
    memset(w, 0, sizeof *w);
    w->o = o;
    if (o->fake_model) {
        w->backend = fake_backend_new(o, k);
        return 0;
    }
    scorer_options so;
    scorer_options_defaults(&so);
    so.model_dir = o->model_dir;
    so.tokenizer_dir = o->tokenizer_dir;
    so.adapter = o->adapter;
    so.style = o->style;
    so.eos_token = o->eos_token;
    so.k = k;
    so.score_min = o->score_min;
    so.score_max = o->score_max;
    so.batch_rows = RB_MIN(o->batch_rows, o->chunk_rows); /* a batch never spans chunks */
    so.prefix_cache = o->prefix_cache;
    so.full_logits = o->full_logits;
    so.max_prompt_tokens = o->max_prompt_tokens;
    so.backend = o->backend;
    so.model = o->model;
    if (!o->model && !kernel_ops_select_local(o->backend, gpu_index, NULL))
        return RB_EXIT_INPUT; /* its message says why */
    scorer *s;
    int rc = scorer_new(&s, &so);
    if (rc)
        return rc;
    w->backend = scorer_backend_new(s);
    return 0;
}

static void worker_close(score_worker *w)
{
    if (w->backend)
        w->backend->destroy(w->backend);
    for (int i = 0; i < w->cap; i++)
        free(w->errors[i]);
    free(w->rows);
    free(w->results);
    free(w->slot);
    free(w->errors);
    free(w->out.data);
    memset(w, 0, sizeof *w);
}

static void worker_reserve(score_worker *w, int n)
{
    if (n <= w->cap)
        return;
    w->rows = xrealloc(w->rows, sizeof *w->rows * (size_t)n);
    w->results = xrealloc(w->results, sizeof *w->results * (size_t)n);
    w->slot = xrealloc(w->slot, sizeof *w->slot * (size_t)n);
    w->errors = xrealloc(w->errors, sizeof *w->errors * (size_t)n);
    for (int i = w->cap; i < n; i++)
        w->errors[i] = NULL;
    w->cap = n;
}

/* A string field of a row: absent is "" when optional, otherwise an error. */
static int row_field(json_t *obj, const char *key, int optional, const char **s, size_t *n,
                     char **why)
{
    json_t *v = json_object_get(obj, key);
    if (!v && optional) {
        *s = "";
        *n = 0;
        return 0;
    }
    if (!json_is_string(v)) {
        *why = xasprintf("field \"%s\" %s", key, v ? "is not a string" : "is missing");
        return 1;
    }
    *s = json_string_value(v);
    *n = json_string_length(v);
    return 0;
}

/* Parse one line into rows[n]; on failure record why. Returns the parsed object (kept alive
 * until the chunk is scored) or NULL. */
static json_t *worker_parse_line(score_worker *w, int line, const char *text, size_t len,
                                 int64_t row, int *n_rows)
{
    char detail[256] = "";
    json_t *obj = NULL;
    int st = jsonl_parse(text, len, &obj, detail, sizeof detail);
    free(w->errors[line]);
    w->errors[line] = NULL;
    w->slot[line] = -1;
    if (st != JSONL_OK) {
        w->errors[line] = xasprintf("line %lld: %s%s%s", (long long)row + 1,
                                    jsonl_status_name(st), detail[0] ? ": " : "", detail);
        return NULL;
    }
    scorer_row *r = &w->rows[*n_rows];
    char *why = NULL;
    if (row_field(obj, "instruction", 0, &r->instruction, &r->instruction_len, &why) ||
        row_field(obj, "input", 1, &r->input, &r->input_len, &why)) {
        w->errors[line] = xasprintf("line %lld: %s", (long long)row + 1, why);
        free(why);
        json_decref(obj);
        return NULL;
    }
    w->slot[line] = (*n_rows)++;
    return obj;
}

static void format_text(char *buf, size_t n, const int *scores, int k)
{
    size_t at = 0;
    buf[0] = '\0';
    for (int i = 0; i < k && at + 3 < n; i++)
        at += (size_t)snprintf(buf + at, n - at, i ? " %d" : "%d", scores[i]);
}

/* One output line (with its '\n') for a row. */
static void put_output_line(byte_buf *out, int64_t row, const scorer_result *r,
                            const char *error, result_header *h)
{
    json_t *o = json_object();
    json_object_set_new(o, "row", json_integer(row));
    if (r && r->ok) {
        json_t *scores = json_array();
        for (int i = 0; i < r->n_scores; i++)
            json_array_append_new(scores, json_integer(r->scores[i]));
        char text[3 * GRAMMAR_MAX_K + 1];
        format_text(text, sizeof text, r->scores, r->n_scores);
        json_object_set_new(o, "scores", scores);
        json_object_set_new(o, "text", json_string(text));
        json_object_set_new(o, "status", json_string(r->off_grammar ? "off_grammar" : "ok"));
        h->n_ok += !r->off_grammar;
        h->n_off_grammar += r->off_grammar != 0;
    } else {
        json_object_set_new(o, "scores", json_null());
        json_object_set_new(o, "text", json_null());
        json_object_set_new(o, "status", json_string("bad_row"));
        if (r) { /* the scorer's reason (a prompt too long, bad UTF-8) gets the line too */
            char *why = xasprintf("line %lld: %s", (long long)row + 1, r->error);
            json_object_set_new(o, "error", json_string(why));
            free(why);
        } else {
            json_object_set_new(o, "error", json_string(error));
        }
        h->n_bad++;
    }
    char *line = json_dumps(o, JSON_ENSURE_ASCII);
    json_decref(o);
    buf_put(out, line, strlen(line));
    buf_put(out, "\n", 1);
    free(line);
}

/* Score one chunk message into w->out (a result message). */
static int worker_process(score_worker *w, const char *msg, size_t len)
{
    chunk_header ch;
    if (len < sizeof ch)
        return err_set(RB_EXIT_RUNTIME, "score protocol: a chunk message of %zu bytes", len);
    memcpy(&ch, msg, sizeof ch);
    int n = ch.n_rows;
    worker_reserve(w, n);
    const uint32_t *lens = (const uint32_t *)(msg + sizeof ch);
    const char *text = msg + sizeof ch + sizeof(uint32_t) * (size_t)n;
    json_t **objs = xcalloc((size_t)RB_MAX(n, 1), sizeof *objs);

    /* parse every line; the good ones become scorer rows */
    int n_rows = 0;
    size_t at = 0;
    for (int i = 0; i < n; i++) {
        uint32_t li;
        memcpy(&li, &lens[i], sizeof li);
        objs[i] = worker_parse_line(w, i, text + at, li, ch.first_row + i, &n_rows);
        at += li;
    }

    /* score them */
    int rc = n_rows ? w->backend->score_rows(w->backend, w->rows, n_rows, w->results) : 0;

    /* format the output lines in input order */
    result_header h = {ch.chunk_id, n, 0, 0, 0};
    w->out.len = 0;
    buf_put(&w->out, &h, sizeof h);
    for (int i = 0; i < n && !rc; i++) {
        const scorer_result *r = w->slot[i] >= 0 ? &w->results[w->slot[i]] : NULL;
        put_output_line(&w->out, ch.first_row + i, r, w->errors[i], &h);
    }
    memcpy(w->out.data, &h, sizeof h);
    for (int i = 0; i < n; i++)
        json_decref(objs[i]);
    free(objs);
    return rc;
}

/* The loop of ranks 1..N: take chunks from rank 0 until told to stop. */
static int worker_loop(score_worker *w)
{
    byte_buf in = {0};
    for (;;) {
        MPI_Status st;
        mpi_ok(MPI_Probe(0, MPI_ANY_TAG, MPI_COMM_WORLD, &st), "waiting for a chunk");
        int count;
        MPI_Get_count(&st, MPI_BYTE, &count);
        buf_reserve(&in, (size_t)count + 1);
        mpi_ok(MPI_Recv(in.data, count, MPI_BYTE, 0, st.MPI_TAG, MPI_COMM_WORLD,
                        MPI_STATUS_IGNORE), "receiving a chunk");
        if (st.MPI_TAG == TAG_STOP)
            break;
        int rc = worker_process(w, in.data, (size_t)count);
        if (rc)
            rb_die_err(rc);
        mpi_ok(MPI_Send(w->out.data, (int)w->out.len, MPI_BYTE, 0, TAG_RESULT, MPI_COMM_WORLD),
               "sending results to rank 0");
    }
    free(in.data);
    return 0;
}

/* ======================================================================================== */
/* Rank 0: stream the input, reorder the results, write the output and the journal.          */
/* ======================================================================================== */

typedef struct {
    int filled;
    char *data;
    size_t len;
    result_header h;
} reorder_slot;

typedef struct {
    const score_options *o;
    int k;
    jsonl_reader in;
    int eof;
    int64_t next_row;        /* next input row to read */
    int64_t next_chunk;      /* next chunk id to hand out */
    /* reorder window */
    int window;
    reorder_slot *slots;
    int64_t next_write;      /* chunk id written next */
    /* output and journal */
    char *partial_path, *journal_path;
    FILE *out, *journal;
    int64_t out_bytes, rows_written;
    int64_t n_ok, n_off_grammar, n_bad;
    progress prog;
    double t_start;
    double slowest_chunk_s;  /* the longest a worker took for a chunk (MPI) */
} score_coord;

/* The journal's first line: what the partial output was made from. */
/* xxh3 of a file's bytes, as 16 hex digits into hex[17] ("unreadable" when it cannot be read). */
static void file_digest(const char *path, XXH3_state_t *st, char hex[17])
{
    FILE *fp = fopen(path, "rb");
    snprintf(hex, 17, "unreadable");
    if (!fp)
        return;
    XXH3_64bits_reset(st);
    char buf[1 << 16];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, fp)) > 0)
        XXH3_64bits_update(st, buf, n);
    if (!ferror(fp))
        snprintf(hex, 17, "%016llx", (unsigned long long)XXH3_64bits_digest(st));
    fclose(fp);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* What identifies a model folder's weights cheaply: its config.json's bytes and the name, size
 * and modification time of every file in it (sorted), hashed. */
static void model_digest(const char *dir, XXH3_state_t *st, char hex[17])
{
    char *cfg = xasprintf("%s/config.json", dir);
    file_digest(cfg, st, hex);
    free(cfg);
    XXH3_64bits_reset(st);
    XXH3_64bits_update(st, hex, 16);
    DIR *d = opendir(dir);
    char **names = NULL;
    size_t n = 0;
    for (struct dirent *e; d && (e = readdir(d)) != NULL;) {
        if (e->d_name[0] == '.')
            continue;
        names = xrealloc(names, sizeof *names * (n + 1));
        names[n++] = xstrdup(e->d_name);
    }
    if (d)
        closedir(d);
    qsort(names, n, sizeof *names, cmp_str);
    for (size_t i = 0; i < n; i++) {
        char *path = xasprintf("%s/%s", dir, names[i]);
        struct stat sb;
        if (stat(path, &sb) == 0 && S_ISREG(sb.st_mode)) {
            int64_t meta[2] = {(int64_t)sb.st_size, (int64_t)sb.st_mtime};
            XXH3_64bits_update(st, names[i], strlen(names[i]) + 1);
            XXH3_64bits_update(st, meta, sizeof meta);
        }
        free(path);
        free(names[i]);
    }
    free(names);
    snprintf(hex, 17, "%016llx", (unsigned long long)XXH3_64bits_digest(st));
}

/* An absolute path for the journal (so ./a and /x/a are one file), or the path as given. */
static char *canonical(const char *path)
{
    char *r = path ? realpath(path, NULL) : NULL;
    return r ? r : path ? xstrdup(path) : NULL;
}

/* The journal's first line: everything that decides the output's rows. The model and adapter
 * are identified by content (the adapter's bytes; the model folder's config.json and file
 * sizes and dates), so a checkpoint copied over another under the same name is caught. */
static char *journal_header(const score_options *o, int k)
{
    struct stat sb;
    int have = stat(o->input, &sb) == 0;
    int64_t size = have ? (int64_t)sb.st_size : -1;
    int64_t mtime = have ? (int64_t)sb.st_mtime : -1;
    char *input = canonical(o->input);
    char *model = o->fake_model ? NULL : canonical(o->model_dir);
    char *adapter = canonical(o->adapter);
    char model_hash[17] = "", adapter_hash[17] = "";
    XXH3_state_t *st = XXH3_createState();
    if (model)
        model_digest(model, st, model_hash);
    if (adapter)
        file_digest(adapter, st, adapter_hash);
    XXH3_freeState(st);
    json_t *h = json_pack("{s:s, s:i, s:s, s:I, s:I, s:i, s:i, s:i, s:i, s:s?, s:s?, s:s?, s:s?, "
                          "s:b, s:i}",
                          "journal", "rubric-score", "version", 2, "input", input,
                          "input_size", (json_int_t)size, "input_mtime", (json_int_t)mtime,
                          "chunk_rows", o->chunk_rows, "scores_per_row", k,
                          "score_min", o->score_min, "score_max", o->score_max,
                          "model", model, "model_files", model ? model_hash : NULL,
                          "adapter", adapter, "adapter_bytes", adapter ? adapter_hash : NULL,
                          "fake_model", o->fake_model, "prompt_style", (int)o->style);
    char *text = json_dumps(h, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(h);
    free(input);
    free(model);
    free(adapter);
    return text;
}

static int fsync_file(FILE *fp, const char *path)
{
    if (fflush(fp) != 0 || fsync(fileno(fp)) != 0)
        return err_set(RB_EXIT_RUNTIME, "%s: cannot write: %s (is the disk full?)", path,
                       strerror(errno));
    return 0;
}

/* Which part of the journal header differs (the first key, sorted), for the message. */
static int journal_mismatch(const char *path, json_t *have, json_t *want)
{
    const char *key;
    json_t *w;
    json_object_foreach(want, key, w) {
        json_t *h = have ? json_object_get(have, key) : NULL;
        if (h && json_equal(h, w))
            continue;
        char *hs = h ? json_dumps(h, JSON_ENCODE_ANY) : NULL;
        char *ws = json_dumps(w, JSON_ENCODE_ANY);
        if (strcmp(key, "input_mtime") == 0 && h) { /* dates, not epoch seconds */
            char a[40], b[40];
            time_t th = (time_t)json_integer_value(h), tw = (time_t)json_integer_value(w);
            strftime(a, sizeof a, "%Y-%m-%d %H:%M:%S", localtime(&th));
            strftime(b, sizeof b, "%Y-%m-%d %H:%M:%S", localtime(&tw));
            free(hs);
            free(ws);
            hs = xasprintf("modified %s", a);
            ws = xasprintf("modified %s", b);
        }
        const char *what = strcmp(key, "adapter_bytes") == 0 ? " (the checkpoint's contents)"
                           : strcmp(key, "model_files") == 0 ? " (the model folder's files)"
                                                             : "";
        int rc = err_set(RB_EXIT_INPUT, "--resume: %s belongs to a run with other inputs or "
                         "options: its %s%s is %s, this run's is %s. To keep the rows already "
                         "scored, rerun with the same --input, model, adapter and options; to "
                         "score everything again, drop --resume", path, key, what,
                         hs ? hs : "missing", ws);
        free(hs);
        free(ws);
        return rc;
    }
    return err_set(RB_EXIT_INPUT, "%s: this journal belongs to a run with other inputs or "
                   "options; drop --resume to start over", path);
}

/* Read the journal: the header must match, and the last complete commit gives the rows and
 * output bytes already safe. */
static int journal_read(const char *path, const char *want_header, int64_t *rows,
                        int64_t *bytes)
{
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return err_set(RB_EXIT_RUNTIME, "%s: cannot open: %s", path, strerror(errno));
    char *line = NULL;
    size_t cap = 0;
    ssize_t n = getline(&line, &cap, fp);
    int rc = 0;
    json_t *have = n > 0 ? json_loads(line, 0, NULL) : NULL;
    json_t *want = json_loads(want_header, 0, NULL);
    if (!have || !json_equal(have, want))
        rc = journal_mismatch(path, have, want);
    *rows = *bytes = 0;
    while (!rc && (n = getline(&line, &cap, fp)) > 0) {
        long long r, b;
        if (line[n - 1] != '\n')
            break; /* a commit torn by the kill: the one before it stands */
        if (sscanf(line, "commit %lld %lld", &r, &b) == 2)
            *rows = r, *bytes = b;
    }
    json_decref(have);
    json_decref(want);
    free(line);
    fclose(fp);
    return rc;
}

/* Skip the rows already written on a resume. */
static int coord_skip_rows(score_coord *c, int64_t rows)
{
    for (int64_t i = 0; i < rows; i++) {
        int got = jsonl_next(&c->in);
        if (got < 0)
            return RB_EXIT_RUNTIME;
        if (got == 0)
            return err_set(RB_EXIT_INPUT, "%s: has %lld line%s, but the journal says %lld "
                           "were scored; was the input changed? drop --resume to start over",
                           c->o->input, (long long)i, plural_s(i), (long long)rows);
    }
    c->next_row = rows;
    c->next_chunk = c->next_write = rows / c->o->chunk_rows;
    c->rows_written = rows;
    return 0;
}

static int coord_resume(score_coord *c, const char *header)
{
    int64_t rows = 0, bytes = 0;
    int rc = journal_read(c->journal_path, header, &rows, &bytes);
    if (rc)
        return rc;
    struct stat sb;
    if (stat(c->partial_path, &sb) != 0 || sb.st_size < bytes)
        return err_set(RB_EXIT_INPUT, "%s: missing or shorter than the journal %s says; drop "
                       "--resume to start over", c->partial_path, c->journal_path);
    if (truncate(c->partial_path, (off_t)bytes) != 0)
        return err_set(RB_EXIT_RUNTIME, "%s: cannot truncate: %s", c->partial_path,
                       strerror(errno));
    c->out = fopen(c->partial_path, "ab");
    c->journal = fopen(c->journal_path, "ab");
    if (!c->out || !c->journal)
        return err_set(RB_EXIT_RUNTIME, "%s: cannot open for appending: %s", c->partial_path,
                       strerror(errno));
    c->out_bytes = bytes;
    log_info("resuming %s: %lld row%s already scored", c->o->output, (long long)rows,
             plural_s(rows));
    return coord_skip_rows(c, rows);
}

static int coord_start_fresh(score_coord *c, const char *header)
{
    c->out = fopen(c->partial_path, "wb");
    c->journal = fopen(c->journal_path, "wb");
    if (!c->out || !c->journal)
        return err_set(RB_EXIT_RUNTIME, "%s: cannot create: %s (check the output folder)",
                       c->out ? c->journal_path : c->partial_path, strerror(errno));
    fprintf(c->journal, "%s\n", header);
    int rc = fsync_file(c->out, c->partial_path);
    return rc ? rc : fsync_file(c->journal, c->journal_path);
}

static int coord_open(score_coord *c, const score_options *o, int k, int n_workers)
{
    memset(c, 0, sizeof *c);
    c->o = o;
    c->k = k;
    c->window = o->window_chunks > 0 ? o->window_chunks : RB_MAX(16, 4 * n_workers);
    c->slots = xcalloc((size_t)c->window, sizeof *c->slots);
    c->partial_path = xasprintf("%s.partial", o->output);
    c->journal_path = xasprintf("%s.journal", o->output);
    int rc = jsonl_open(&c->in, o->input);
    if (rc)
        return rc;

    char *header = journal_header(o, k);
    int have_journal = path_exists(c->journal_path);
    if (o->resume && have_journal)
        rc = coord_resume(c, header);
    else {
        if (o->resume)
            log_warn("--resume: no journal %s; scoring from the first row", c->journal_path);
        else if (have_journal)
            log_warn("%s: an earlier run of this output was interrupted; starting over (use "
                     "--resume to continue it instead)", c->journal_path);
        rc = coord_start_fresh(c, header);
    }
    free(header);
    if (!rc)
        score_output_open = 1;
    c->t_start = now_seconds();
    progress_start(&c->prog, "scoring", 0, "rows");
    c->prog.base = c->rows_written; /* the rate counts this run's rows only */
    progress_update(&c->prog, c->rows_written);
    return rc;
}

/* Read the next chunk of input lines into a chunk message. Returns its row count (0 at the
 * end of the input) or -1 on a read error. */
static int coord_read_chunk(score_coord *c, byte_buf *msg)
{
    if (c->eof)
        return 0;
    byte_buf text = {0};
    uint32_t *lens = xmalloc(sizeof *lens * (size_t)c->o->chunk_rows);
    int n = 0;
    while (n < c->o->chunk_rows) {
        int got = jsonl_next(&c->in);
        if (got < 0) {
            n = -1;
            break;
        }
        if (got == 0) {
            c->eof = 1;
            break;
        }
        lens[n++] = (uint32_t)c->in.len;
        buf_put(&text, c->in.line, c->in.len);
    }
    if (n > 0) {
        chunk_header h = {c->next_chunk++, c->next_row, n, 0};
        c->next_row += n;
        msg->len = 0;
        buf_put(msg, &h, sizeof h);
        buf_put(msg, lens, sizeof *lens * (size_t)n);
        if (text.len)
            buf_put(msg, text.data, text.len);
    }
    free(lens);
    free(text.data);
    return n;
}

/* Keep a result until its turn comes. */
static int coord_store(score_coord *c, const char *msg, size_t len)
{
    result_header h;
    if (len < sizeof h)
        return err_set(RB_EXIT_RUNTIME, "score protocol: a result message of %zu bytes", len);
    memcpy(&h, msg, sizeof h);
    if (h.chunk_id < c->next_write || h.chunk_id >= c->next_write + c->window)
        return err_set(RB_EXIT_RUNTIME, "score protocol: chunk %lld is outside the window",
                       (long long)h.chunk_id);
    reorder_slot *s = &c->slots[h.chunk_id % c->window];
    s->h = h;
    s->len = len - sizeof h;
    s->data = xmalloc(s->len + 1);
    memcpy(s->data, msg + sizeof h, s->len);
    s->filled = 1;
    return 0;
}

/* Write every result whose turn has come, then commit them in the journal. */
static int coord_drain(score_coord *c)
{
    int wrote = 0;
    for (;;) {
        reorder_slot *s = &c->slots[c->next_write % c->window];
        if (!s->filled)
            break;
        if (s->len && fwrite(s->data, 1, s->len, c->out) != s->len)
            return err_set(RB_EXIT_RUNTIME, "%s: cannot write: %s", c->partial_path,
                           strerror(errno));
        c->out_bytes += (int64_t)s->len;
        c->rows_written += s->h.n_rows;
        c->n_ok += s->h.n_ok;
        c->n_off_grammar += s->h.n_off_grammar;
        c->n_bad += s->h.n_bad;
        free(s->data);
        memset(s, 0, sizeof *s);
        c->next_write++;
        wrote = 1;
    }
    if (!wrote)
        return 0;

    /* the output first, then the commit that vouches for it */
    int rc = fsync_file(c->out, c->partial_path);
    if (rc)
        return rc;
    fprintf(c->journal, "commit %lld %lld\n", (long long)c->rows_written,
            (long long)c->out_bytes);
    rc = fsync_file(c->journal, c->journal_path);
    progress_update(&c->prog, c->rows_written);
    return rc;
}

static int coord_can_issue(const score_coord *c)
{
    return !c->eof && c->next_chunk < c->next_write + c->window;
}

/* Close the output: rename it into place and drop the journal. */
static int coord_finish(score_coord *c)
{
    progress_finish(&c->prog);
    int rc = fsync_file(c->out, c->partial_path);
    fclose(c->out);
    c->out = NULL;
    if (!rc)
        rc = rename_durable(c->partial_path, c->o->output);
    if (!rc) {
        fclose(c->journal);
        c->journal = NULL;
        if (unlink(c->journal_path) != 0)
            log_warn("%s: cannot remove: %s", c->journal_path, strerror(errno));
    }
    return rc;
}

static void coord_close(score_coord *c)
{
    if (c->out)
        fclose(c->out);
    if (c->journal)
        fclose(c->journal);
    for (int i = 0; i < c->window; i++)
        free(c->slots[i].data);
    free(c->slots);
    free(c->partial_path);
    free(c->journal_path);
    jsonl_close(&c->in);
}

/* One process: rank 0 scores every chunk itself. */
static int coord_run_local(score_coord *c, score_worker *w)
{
    byte_buf msg = {0};
    int rc = 0, n;
    while (!rc && (n = coord_read_chunk(c, &msg)) > 0) {
        rc = worker_process(w, msg.data, msg.len);
        if (!rc)
            rc = coord_store(c, w->out.data, w->out.len);
        if (!rc)
            rc = coord_drain(c);
    }
    if (!rc && n < 0)
        rc = RB_EXIT_RUNTIME;
    free(msg.data);
    return rc;
}

typedef struct {
    byte_buf msg;
    MPI_Request req;
    int busy;
    double since;            /* when its chunk was handed out */
    int64_t n_results;       /* chunks it sent back */
    chunk_header held;       /* the chunk it holds (when busy) */
} worker_slot;

/* Hand worker w the next chunk, if the input and the window allow. */
static int coord_issue(score_coord *c, worker_slot *ws, int w)
{
    if (ws->busy || !coord_can_issue(c))
        return 0;
    if (ws->req != MPI_REQUEST_NULL)
        mpi_ok(MPI_Wait(&ws->req, MPI_STATUS_IGNORE), "sending a chunk");
    int n = coord_read_chunk(c, &ws->msg);
    if (n < 0)
        return RB_EXIT_RUNTIME;
    if (n == 0)
        return 0;
    mpi_ok(MPI_Isend(ws->msg.data, (int)ws->msg.len, MPI_BYTE, w, TAG_CHUNK, MPI_COMM_WORLD,
                     &ws->req), "sending a chunk");
    ws->busy = 1;
    ws->since = now_seconds();
    memcpy(&ws->held, ws->msg.data, sizeof ws->held);
    return 0;
}

/* Wait for the next result from any worker; a worker that holds a chunk past its deadline
 * (score_chunk_timeout) ends the job, naming it and the chunk. */
static void coord_wait_result(const score_coord *c, const worker_slot *ws, int world,
                              MPI_Status *st)
{
    for (;;) {
        int flag = 0;
        mpi_ok(MPI_Iprobe(MPI_ANY_SOURCE, TAG_RESULT, MPI_COMM_WORLD, &flag, st),
               "waiting for a worker's results");
        if (flag)
            return;
        double now = now_seconds();
        for (int w = 1; w < world; w++) {
            double limit = score_chunk_timeout(c->o->worker_timeout_s, ws[w].n_results == 0,
                                               c->slowest_chunk_s);
            if (!ws[w].busy || now - ws[w].since <= limit)
                continue;
            const chunk_header *h = &ws[w].held;
            rb_die(RB_EXIT_RUNTIME, "rank %d has sent nothing for %.1f s while holding chunk "
                   "%lld (rows %lld..%lld of %s), past its limit of %.1f s (--worker-timeout "
                   "%g + 5 x the slowest chunk so far, %.1f s; a worker's first chunk: at "
                   "least %.0f s): it died or hangs (see its log); stopping the job. The rows "
                   "written so far are kept: run the same command with --resume to continue",
                   w, now - ws[w].since, (long long)h->chunk_id, (long long)h->first_row,
                   (long long)(h->first_row + h->n_rows - 1), c->o->input, limit,
                   c->o->worker_timeout_s, c->slowest_chunk_s, SCORE_FIRST_CHUNK_TIMEOUT_S);
        }
        sleep_briefly();
    }
}

/* Under MPI: chunks to whichever worker is free, results back in any order. */
static int coord_run_mpi(score_coord *c, int world)
{
    worker_slot *ws = xcalloc((size_t)world, sizeof *ws);
    for (int w = 1; w < world; w++)
        ws[w].req = MPI_REQUEST_NULL;
    byte_buf res = {0};
    int rc = 0, busy = 0;
    for (int w = 1; w < world && !rc; w++) {
        rc = coord_issue(c, &ws[w], w);
        busy += ws[w].busy;
    }
    while (!rc && busy > 0) {
        MPI_Status st;
        coord_wait_result(c, ws, world, &st);
        worker_slot *from = &ws[st.MPI_SOURCE];
        c->slowest_chunk_s = RB_MAX(c->slowest_chunk_s, now_seconds() - from->since);
        from->n_results++;
        int count;
        MPI_Get_count(&st, MPI_BYTE, &count);
        buf_reserve(&res, (size_t)count);
        mpi_ok(MPI_Recv(res.data, count, MPI_BYTE, st.MPI_SOURCE, TAG_RESULT, MPI_COMM_WORLD,
                        MPI_STATUS_IGNORE), "receiving a worker's results");
        ws[st.MPI_SOURCE].busy = 0;
        rc = coord_store(c, res.data, (size_t)count);
        if (!rc)
            rc = coord_drain(c);

        /* the freed worker first, then any that waited for the window to move */
        for (int i = 0; i < world - 1 && !rc; i++)
            rc = coord_issue(c, &ws[1 + (st.MPI_SOURCE - 1 + i) % (world - 1)],
                             1 + (st.MPI_SOURCE - 1 + i) % (world - 1));
        busy = 0;
        for (int w = 1; w < world; w++)
            busy += ws[w].busy;
    }
    for (int w = 1; w < world; w++) {
        if (ws[w].req != MPI_REQUEST_NULL)
            mpi_ok(MPI_Wait(&ws[w].req, MPI_STATUS_IGNORE), "sending a chunk");
        free(ws[w].msg.data);
    }
    free(ws);
    free(res.data);
    return rc;
}

static void stop_workers(int world)
{
    for (int w = 1; w < world; w++)
        mpi_ok(MPI_Send(NULL, 0, MPI_BYTE, w, TAG_STOP, MPI_COMM_WORLD), "stopping a worker");
}

/* ======================================================================================== */
/* Setup and the metrics pass.                                                               */
/* ======================================================================================== */

/* K of a file as prep decides it (prep_score_count_mode): the most common count of scores
 * among the rows whose "output" is integers separated by single spaces, all in the score
 * range; of a tie, the smallest. Every row is read (prep reads them all too). */
static int infer_k_from(const char *path, int lo, int hi, int *k)
{
    prep_score_shape *shape = prep_score_shape_new();
    if (!shape)
        return RB_EXIT_RUNTIME;
    jsonl_reader r;
    int rc = jsonl_open(&r, path);
    if (rc) {
        prep_score_shape_free(shape);
        return rc;
    }
    int64_t counts[PREP_MAX_SCORE_COUNT + 1] = {0};
    int64_t nonblank = 0, labelled = 0, out_of_range = 0, first_out = 0;
    int got;
    while ((got = jsonl_next(&r)) > 0) {
        json_t *obj = NULL;
        nonblank += r.len > strspn(r.line, " \t\r\n");
        if (jsonl_parse(r.line, r.len, &obj, NULL, 0) != JSONL_OK)
            continue;
        json_t *jout = json_object_get(obj, "output");
        const char *out = json_string_value(jout);
        int in_range, n = out ? prep_score_shape_count(shape, out, json_string_length(jout), lo,
                                                       hi, &in_range)
                              : 0;
        labelled += out != NULL;
        if (n > 0 && in_range)
            counts[RB_MIN(n, PREP_MAX_SCORE_COUNT)]++;
        else if (n > 0 && out_of_range++ == 0)
            first_out = r.lineno;
        json_decref(obj);
    }
    jsonl_close(&r);
    prep_score_shape_free(shape);
    if (got < 0)
        return RB_EXIT_RUNTIME;
    *k = prep_score_count_mode(counts);
    if (*k == 0 && nonblank == 0)
        return err_set(RB_EXIT_INPUT, "%s has no rows (it is empty or only blank lines)", path);
    if (*k == 0 && out_of_range > 0)
        return err_set(RB_EXIT_INPUT, "%s: cannot tell how many scores a row has: no row's "
                       "\"output\" is scores within %d..%d (%lld row%s scores outside it, "
                       "the first at line %lld); set score_min/score_max (e.g. --set "
                       "score_max=9) or give --num-scores K", path, lo, hi,
                       (long long)out_of_range, out_of_range == 1 ? " has" : "s have",
                       (long long)first_out);
    if (*k == 0)
        return err_set(RB_EXIT_INPUT, "%s: cannot tell how many scores a row has: %s; give "
                       "--num-scores K", path, labelled ? "no row's \"output\" is integer "
                       "scores separated by single spaces" : "no row has an \"output\"");
    if (*k > GRAMMAR_MAX_K)
        return err_set(RB_EXIT_INPUT, "%s: most rows' \"output\" has %d scores; at most %d are "
                       "supported", path, *k, GRAMMAR_MAX_K);
    return 0;
}

/* K from the input, else (an unlabelled input) from the baseline's reference set. */
static int infer_k(const score_options *o, int *k)
{
    int rc = infer_k_from(o->input, o->score_min, o->score_max, k);
    if (rc && o->baseline_from &&
        infer_k_from(o->baseline_from, o->score_min, o->score_max, k) == 0)
        return 0;
    return rc;
}

/* A path whose folders include something that is not one (a file): an error naming it. */
static int check_folders_are_folders(const char *path, const char *what)
{
    char *p = xstrdup(path);
    int rc = 0;
    for (char *s = p + 1; !rc && *s; s++) {
        if (*s != '/')
            continue;
        *s = '\0';
        struct stat st;
        if (stat(p, &st) == 0 && !S_ISDIR(st.st_mode))
            rc = err_set(RB_EXIT_INPUT, "%s %s: %s is a file, not a folder: give a path in a "
                         "folder (or move the file)", what, path, p);
        *s = '/';
    }
    free(p);
    return rc;
}

int score_check_adapter_path(const char *adapter)
{
    if (!adapter || !path_is_dir(adapter))
        return 0;
    char *peft = xasprintf("%s/adapter_config.json", adapter);
    int is_peft = path_exists(peft);
    free(peft);
    return is_peft ? err_set(RB_EXIT_INPUT, "--adapter %s is a PEFT adapter folder; score "
                             "takes rubric checkpoints (.h5). Merge it into the model "
                             "with PEFT and give the merged folder as --model, or give "
                             "the rubric checkpoint it was exported from", adapter)
                   : err_set(RB_EXIT_INPUT, "--adapter %s is a directory; give a rubric "
                             "checkpoint file (checkpoint-N.h5)", adapter);
}

int score_check_metrics_path(const score_options *o)
{
    char *mpath = o->metrics_path ? xstrdup(o->metrics_path)
                                  : score_default_metrics_path(o->output);
    /* a refused default says where it came from */
    const char *what = o->metrics_path ? "--metrics" : "the metrics file (by default OUTPUT's "
                                                       "name with .metrics.json)";
    char *partial = xasprintf("%s.partial", o->output);
    char *journal = xasprintf("%s.journal", o->output);
    int rc = 0;
    if (same_path(mpath, o->input))
        rc = err_set(RB_EXIT_INPUT, "%s %s is the input file: the metrics would replace "
                     "the rows; give another --metrics", what, mpath);
    else if (same_path(mpath, o->output) || strcmp(mpath, partial) == 0 ||
             strcmp(mpath, journal) == 0)
        rc = err_set(RB_EXIT_INPUT, "%s %s is the output (or one of its side files): "
                     "the metrics would replace the predictions; give another --metrics", what,
                     mpath);
    else if (o->baseline_from && same_path(mpath, o->baseline_from))
        rc = err_set(RB_EXIT_INPUT, "%s %s is the --baseline-from file: the metrics "
                     "would replace the reference rows; give another --metrics", what, mpath);
    else if (path_is_dir(mpath))
        rc = err_set(RB_EXIT_INPUT, "%s %s is a directory: give a file name", what, mpath);
    else
        rc = check_folders_are_folders(mpath, "--metrics");
    free(mpath);
    free(partial);
    free(journal);
    return rc;
}

int score_check_baseline_path(const score_options *o)
{
    return o->baseline_from ? jsonl_check_input(o->baseline_from, "--baseline-from") : 0;
}

/* --input must be a readable file, --output must not be a folder nor the input itself (the
 * predictions would replace the rows), and neither may be the output's side files. */
static int check_paths(const score_options *o)
{
    if (!o->output[0])
        return err_set(RB_EXIT_INPUT, "--output is empty: give a file name");
    if (o->metrics_path && !o->metrics_path[0])
        return err_set(RB_EXIT_INPUT, "--metrics is empty: give a file name");
    int rc = jsonl_check_input(o->input, "--input");
    if (!rc)
        rc = score_check_baseline_path(o);
    if (rc)
        return rc;
    if (path_is_dir(o->output))
        return err_set(RB_EXIT_INPUT, "--output %s is a directory: give a file name (e.g. "
                       "%s/preds.jsonl)", o->output, o->output);
    rc = check_folders_are_folders(o->output, "--output");
    if (rc)
        return rc;
    if (same_path(o->input, o->output))
        return err_set(RB_EXIT_INPUT, "--output %s is the input file: the predictions would "
                       "replace the rows; give another --output", o->output);
    char *partial = xasprintf("%s.partial", o->output);
    char *journal = xasprintf("%s.journal", o->output);
    const char *ref = o->baseline_from;
    if (strcmp(o->input, partial) == 0 || strcmp(o->input, journal) == 0)
        rc = err_set(RB_EXIT_INPUT, "--input %s is a side file of --output %s; give another "
                     "--output", o->input, o->output);
    else if (ref && same_path(ref, o->output))
        rc = err_set(RB_EXIT_INPUT, "--output %s is the --baseline-from file: the predictions "
                     "would replace the reference rows; give another --output", o->output);
    else if (ref && (same_path(ref, partial) || same_path(ref, journal)))
        rc = err_set(RB_EXIT_INPUT, "--baseline-from %s is a side file of --output %s; give "
                     "another --output", ref, o->output);
    else if (path_is_dir(partial) || path_is_dir(journal))
        rc = err_set(RB_EXIT_INPUT, "%s is a directory, where --output %s keeps its %s: "
                     "remove it or give another --output", path_is_dir(partial) ? partial
                     : journal, o->output, path_is_dir(partial) ? "rows while scoring"
                     : "journal (for --resume)");
    if (!rc)
        rc = score_check_metrics_path(o);
    free(partial);
    free(journal);
    return rc;
}

/* The lines of a file (a final line without '\n' counts), or -1 with err_set. */
static int64_t count_lines(const char *path)
{
    jsonl_reader r;
    if (jsonl_open(&r, path))
        return -1;
    int64_t n = 0;
    int got;
    while ((got = jsonl_next(&r)) > 0)
        n++;
    jsonl_close(&r);
    return got < 0 ? -1 : n;
}

/* A --resume of a finished run (no journal left) must be of the same input: the output has
 * one line per input line, made after the input was last changed. */
static int check_complete_resume(const score_options *o)
{
    char *journal = xasprintf("%s.journal", o->output);
    char *partial = xasprintf("%s.partial", o->output);
    int complete = o->resume && !path_exists(journal) && !path_exists(partial) &&
                   path_exists(o->output);
    free(journal);
    free(partial);
    if (!complete)
        return 0;
    int64_t n_in = count_lines(o->input), n_out = count_lines(o->output);
    if (n_in < 0 || n_out < 0)
        return err_prefix(RB_EXIT_INPUT, "--resume");
    if (n_in != n_out)
        return err_set(RB_EXIT_INPUT, "--resume: %s is a finished run of %lld row%s, but %s "
                       "has %lld line%s: it was made from another input; drop --resume to "
                       "score %s again (or give another --output)", o->output,
                       (long long)n_out, plural_s(n_out), o->input, (long long)n_in,
                       plural_s(n_in), o->input);
    struct stat si, so;
    if (stat(o->input, &si) == 0 && stat(o->output, &so) == 0 && si.st_mtime > so.st_mtime)
        return err_set(RB_EXIT_INPUT, "--resume: %s changed after %s was finished: drop "
                       "--resume to score it again", o->input, o->output);
    return 0;
}

/* --resume of an interrupted run: its journal must be of this input and these options
 * (checked again when the run opens it; here before any model loads). */
static int check_journal(const score_options *o, int k)
{
    char *journal = xasprintf("%s.journal", o->output);
    int rc = 0;
    if (o->resume && path_exists(journal)) {
        char *header = journal_header(o, k);
        int64_t rows, bytes;
        rc = journal_read(journal, header, &rows, &bytes);
        free(header);
    }
    free(journal);
    return rc;
}

/* The folders this run made for --output and --metrics: for each, the deepest and the
 * highest of them (rank 0). A run that fails before the output is opened removes them
 * again, deepest first, each only while empty (rmdir), so nothing of it is left. */
static char *made_dir_deep[2], *made_dir_top[2];

static void made_folders_remove(void);

/* Make path's folder (check_output_file), remembering which of its folders did not exist. */
static int make_output_folder(const char *path, const char *what, int slot)
{
    char *copy = xstrdup(path);
    char *deep = xstrdup(dirname(copy)), *top = path_first_missing(deep);
    free(copy);
    int rc = check_output_file(path, what);
    if (top && !rc) {
        made_dir_deep[slot] = deep;
        made_dir_top[slot] = top;
        rb_at_die(made_folders_remove); /* out of memory loading the model, say */
    } else {
        free(deep);
        free(top);
    }
    return rc;
}

/* Remove the made folders while empty (remove 1), or only forget them (remove 0: once the
 * run writes into them, they are the user's). */
static void made_folders_done(int remove)
{
    for (int i = 0; i < 2; i++) {
        if (remove && made_dir_deep[i])
            rmdir_empty_upto(made_dir_deep[i], made_dir_top[i]);
        free(made_dir_deep[i]);
        free(made_dir_top[i]);
        made_dir_deep[i] = made_dir_top[i] = NULL;
    }
}

static void made_folders_remove(void) { made_folders_done(1); }

/* Checks of rank 0 before anything is written. */
static int score_prepare(const score_options *o, int *k)
{
    if (!o->input || !o->output)
        return err_set(RB_EXIT_INPUT, "--input and --output are required");
    if (!o->fake_model && !o->model_dir && !o->model)
        return err_set(RB_EXIT_INPUT, "no model: give --model DIR (or base_model in the "
                       "config)");
    if (o->chunk_rows < 1)
        return err_set(RB_EXIT_INPUT, "--chunk-rows must be at least 1");
    if (o->score_max - o->score_min + 1 > METRICS_MAX_RANGE || o->score_min > o->score_max)
        return err_set(RB_EXIT_INPUT, "score range %d..%d is empty or too wide", o->score_min,
                       o->score_max);
    if (!path_exists(o->input))
        return err_set(RB_EXIT_INPUT, "%s: no such file (check --input)", o->input);
    if (o->fake_delay_us > 0 && !o->fake_model)
        log_warn("--fake-delay-us applies to --fake-model only; ignored");
    int rc = check_paths(o);
    if (!rc)
        rc = check_complete_resume(o);
    if (rc)
        return rc;
    *k = o->k;
    rc = o->k > 0 ? 0 : infer_k(o, k);
    if (!rc)
        rc = check_journal(o, *k);
    /* last, as it makes the folders (check_paths named any file among them): where the
     * output and the metrics go, each folder made and a file created and removed in it */
    char *mpath = o->metrics_path ? xstrdup(o->metrics_path)
                                  : score_default_metrics_path(o->output);
    if (!rc)
        rc = make_output_folder(o->output, "--output", 0);
    if (!rc)
        rc = make_output_folder(mpath, "--metrics", 1);
    free(mpath);
    if (rc)
        made_folders_done(1);
    return rc;
}

/* Read the truth of an input line by rubric prep's rule (score_parse_answer): 1 with scores,
 * 0 with no "output", -1 when the line is not a JSON object, -2 when its "output" is not k
 * scores in lo..hi, -3 when it is not scores at all (not_a_score); err_msg() says why. */
static int truth_of(prep_score_shape *shape, const char *line, size_t len, int k, int lo,
                    int hi, int *scores)
{
    json_t *obj = NULL;
    if (jsonl_parse(line, len, &obj, NULL, 0) != JSONL_OK)
        return -1;
    json_t *out = json_object_get(obj, "output");
    int rc = 1, not_score = 0;
    if (!out)
        rc = 0;
    else if (!json_is_string(out))
        rc = -2, err_set(RB_EXIT_INPUT, "\"output\" is not a string");
    else if (score_parse_answer(shape, json_string_value(out), json_string_length(out), k, lo,
                                hi, scores, &not_score) != 0)
        rc = not_score ? -3 : -2;
    if (rc < -1) {
        char *why = xstrdup(err_msg());
        char *text = json_dumps(out, JSON_ENCODE_ANY);
        err_set(RB_EXIT_INPUT, "\"output\" %.40s%s: %s", text, strlen(text) > 40 ? "..." : "",
                why);
        free(text);
        free(why);
    }
    json_decref(obj);
    return rc;
}

/* Rows the metrics could not use because of their "output" (the first one's line and why;
 * n_shape of them not scores at all, as prep's not_a_score). */
typedef struct {
    int64_t n, n_shape, first_line;
    char why[200];
} truth_problems;

/* A wrong field of a prediction line: "FIELD: VALUE WHAT" into why (the value as JSON,
 * shortened). Returns -3. */
static int pred_field_error(char *why, size_t n, const char *field, const json_t *v,
                            const char *what)
{
    char *text = v ? json_dumps(v, JSON_ENCODE_ANY | JSON_REAL_PRECISION(10)) : NULL;
    snprintf(why, n, "%s: %.40s%s %s", field, text ? text : "(missing)",
             text && strlen(text) > 40 ? "..." : "", what);
    free(text);
    return -3;
}

/* The prediction of an output line: 1 with scores (and off-grammar flag), 0 for a bad row,
 * -2 when it has *n_scores scores where k are due, -3 when the line is not ours or a field is
 * wrong (not JSON, no status, an unknown status, a score that is not an integer in lo..hi:
 * why says which); *row its "row" (-1 without one). */
static int pred_of(const char *line, int k, int lo, int hi, int *scores, int *off_grammar,
                   int64_t *row, size_t *n_scores, char *why, size_t why_n)
{
    json_error_t je;
    json_t *obj = json_loads(line, 0, &je);
    *row = -1;
    *n_scores = 0;
    if (!obj) {
        snprintf(why, why_n, "not JSON (%.60s, column %d): not a line of rubric score's output",
                 je.text, je.column);
        return -3;
    }
    if (!json_is_object(obj)) {
        json_decref(obj);
        snprintf(why, why_n, "not a JSON object: not a line of rubric score's output");
        return -3;
    }
    json_t *r = json_object_get(obj, "row");
    *row = json_is_integer(r) ? (int64_t)json_integer_value(r) : -1;
    json_t *jstatus = json_object_get(obj, "status");
    const char *status = json_string_value(jstatus);
    json_t *arr = json_object_get(obj, "scores");
    *n_scores = json_array_size(arr);
    int rc;
    if (!jstatus)
        rc = pred_field_error(why, why_n, "status", NULL, "(ok, off_grammar or bad_row): not "
                              "a line of rubric score's output");
    else if (status && strcmp(status, "bad_row") == 0)
        rc = 0;
    else if (!status || (strcmp(status, "ok") != 0 && strcmp(status, "off_grammar") != 0))
        rc = pred_field_error(why, why_n, "status", jstatus, "is not ok, off_grammar or bad_row");
    else if (!json_is_array(arr) || *n_scores == 0)
        rc = pred_field_error(why, why_n, "scores", arr, "is not a list of scores");
    else if (*n_scores != (size_t)k)
        rc = -2;
    else {
        rc = 1;
        for (int i = 0; i < k && rc == 1; i++) {
            json_t *v = json_array_get(arr, (size_t)i);
            char field[32], range[48];
            snprintf(field, sizeof field, "scores[%d]", i);
            snprintf(range, sizeof range, "is outside %d..%d", lo, hi);
            if (!json_is_integer(v))
                rc = pred_field_error(why, why_n, field, v, "is not an integer");
            else if (json_integer_value(v) < lo || json_integer_value(v) > hi)
                rc = pred_field_error(why, why_n, field, v, range);
            else
                scores[i] = (int)json_integer_value(v);
        }
        *off_grammar = strcmp(status, "off_grammar") == 0;
    }
    json_decref(obj);
    return rc;
}

/* The reference histograms for the majority baseline: every truth of a file; *n the rows
 * with a usable truth, *with_output those with an "output" at all. */
static int baseline_modes(const char *path, int k, int lo, int hi, int *modes, int64_t *n,
                          int64_t *with_output)
{
    metrics_acc ref;
    int rc = metrics_init(&ref, k, lo, hi);
    jsonl_reader r;
    if (!rc)
        rc = jsonl_open(&r, path);
    if (rc)
        return rc;
    prep_score_shape *shape = prep_score_shape_new();
    if (!shape) {
        jsonl_close(&r);
        metrics_free(&ref);
        return RB_EXIT_RUNTIME;
    }
    int t[METRICS_MAX_K];
    *with_output = 0;
    while (jsonl_next(&r) > 0) {
        int got = truth_of(shape, r.line, r.len, k, lo, hi, t);
        *with_output += got == 1 || got <= -2;
        if (got == 1)
            metrics_add_row(&ref, t, t, 0);
    }
    prep_score_shape_free(shape);
    *n = ref.counts[METRICS_ROWS];
    metrics_baseline_modes(&ref, modes);
    jsonl_close(&r);
    metrics_free(&ref);
    return 0;
}

static int metrics_zip(const score_options *o, const char *preds_path, metrics_acc *m,
                       metrics_acc *base, const int *modes, truth_problems *tp)
{
    jsonl_reader in, pr;
    int rc = jsonl_open(&in, o->input);
    if (!rc && (rc = jsonl_open(&pr, preds_path)) != 0)
        jsonl_close(&in);
    prep_score_shape *shape = rc ? NULL : prep_score_shape_new();
    if (!rc && !shape) {
        jsonl_close(&in);
        jsonl_close(&pr);
        rc = RB_EXIT_RUNTIME;
    }
    if (rc)
        return rc;
    int t[METRICS_MAX_K], p[METRICS_MAX_K], og = 0;
    while (!rc && jsonl_next(&in) > 0) {
        if (jsonl_next(&pr) <= 0) {
            rc = err_set(RB_EXIT_INPUT, "%s has %lld line%s, fewer than %s: these predictions "
                         "are not of this input, or their run did not finish (finish it with "
                         "--resume, or score the input again)", preds_path,
                         (long long)(in.lineno - 1), in.lineno == 2 ? "" : "s", o->input);
            break;
        }
        int have_truth = truth_of(shape, in.line, in.len, m->k, m->score_min, m->score_max,
                                  t);
        int64_t row = -1;
        size_t n_scores = 0;
        char why[160] = "";
        int have_pred = pred_of(pr.line, m->k, m->score_min, m->score_max, p, &og, &row,
                                &n_scores, why, sizeof why);
        if (have_pred == -3)
            rc = err_set(RB_EXIT_INPUT, "%s:%lld: %s", preds_path, (long long)pr.lineno, why);
        else if (have_pred == -2)
            rc = err_set(RB_EXIT_INPUT, "%s:%lld: the prediction has %zu score%s, where K is %d "
                         "(--num-scores, else inferred from the input): give the --num-scores "
                         "these predictions were made with (--num-scores %zu)", preds_path,
                         (long long)pr.lineno, n_scores, plural_s(n_scores), m->k,
                         n_scores);
        else if (row != in.lineno - 1)
            rc = err_set(RB_EXIT_INPUT, "%s:%lld: the prediction of row %lld, where row %lld "
                         "(line %lld of %s) is due: these predictions are not of this input, "
                         "or not in its order", preds_path, (long long)pr.lineno,
                         (long long)row, (long long)(in.lineno - 1), (long long)in.lineno,
                         o->input);
        else if (have_truth < 0 || have_pred == 0) {
            metrics_add_bad(m), metrics_add_bad(base);
            if (have_truth <= -2 && have_pred == 1) {
                tp->n_shape += have_truth == -3;
                if (tp->n++ == 0) {
                    tp->first_line = (long long)in.lineno;
                    snprintf(tp->why, sizeof tp->why, "%s", err_msg());
                }
            }
        }
        else if (have_truth == 0)
            metrics_add_unlabelled(m), metrics_add_unlabelled(base);
        else {
            metrics_add_row(m, t, p, og);
            metrics_add_row(base, t, modes, 0);
        }
    }
    if (!rc && jsonl_next(&pr) > 0)
        rc = err_set(RB_EXIT_INPUT, "%s has more lines than %s (%lld): these predictions are "
                     "not of this input", preds_path, o->input, (long long)in.lineno);
    prep_score_shape_free(shape);
    jsonl_close(&in);
    jsonl_close(&pr);
    return rc;
}

/* How the metrics' row counts relate to the scoring summary's (a bad row of the metrics is a
 * bad input row, or a scored row whose "output" cannot be compared), and a hint when the
 * truths do not have the expected shape (--num-scores, score range). */
static void log_truth_problems(const char *input, const metrics_acc *m, const truth_problems *tp)
{
    long long bad = (long long)m->counts[METRICS_BAD];
    if (tp->n > 0)
        log_warn("%s: %lld scored row%s left out of the metrics: their \"output\" is not %d "
                 "scores in %d..%d separated by single spaces, as rubric prep requires (first: "
                 "line %lld: %s); check --num-scores and the score range "
                 "(score_min/score_max)", input, (long long)tp->n, tp->n == 1 ? "" : "s",
                 m->k, m->score_min, m->score_max, (long long)tp->first_line, tp->why);
    /* on stdout, the metrics table's stream: under mpirun the two streams are forwarded apart,
     * and this line belongs before the table */
    char shape[96] = "";
    if (tp->n_shape > 0)
        snprintf(shape, sizeof shape, ", %lld of them not scores as rubric prep reads them "
                 "(not_a_score)", (long long)tp->n_shape);
    printf("metrics rows: %lld compared with their \"output\", %lld bad (%lld bad input "
           "rows or predictions, %lld unusable \"output\"%s), %lld without \"output\"\n",
           (long long)m->counts[METRICS_ROWS], bad, bad - (long long)tp->n, (long long)tp->n,
           shape, (long long)m->counts[METRICS_UNLABELLED]);
}

int score_metrics(const score_options *o, const char *preds_path, const char *metrics_path,
                  int *labelled)
{
    int k = o->k;
    int rc = k > 0 ? 0 : infer_k(o, &k);
    if (rc)
        return rc;
    int modes[METRICS_MAX_K];
    int64_t n_ref, ref_outputs;
    const char *ref = o->baseline_from ? o->baseline_from : o->input;
    rc = baseline_modes(ref, k, o->score_min, o->score_max, modes, &n_ref, &ref_outputs);
    if (rc)
        return err_prefix(rc, "majority baseline");
    /* a reference with no usable truth gives no baseline (not one of made-up answers) */
    char why[PATH_MAX + 128] = "";
    if (n_ref == 0)
        snprintf(why, sizeof why, "no row of %s has an \"output\" of %d score%s in %d..%d", ref,
                 k, plural_s(k), o->score_min, o->score_max);
    metrics_acc m, base;
    metrics_init(&m, k, o->score_min, o->score_max);
    metrics_init(&base, k, o->score_min, o->score_max);
    truth_problems tp = {0};
    rc = metrics_zip(o, preds_path, &m, &base, modes, &tp);
    *labelled = m.counts[METRICS_ROWS] > 0;
    if (!rc)
        log_truth_problems(o->input, &m, &tp);
    if (!rc && *labelled && n_ref == 0) {
        char seen[96];
        if (ref_outputs > 0)
            snprintf(seen, sizeof seen, "%lld row%s an \"output\" of another shape or range",
                     (long long)ref_outputs, ref_outputs == 1 ? " has" : "s have");
        else
            snprintf(seen, sizeof seen, "no row has an \"output\"");
        log_warn("%s: no row has an \"output\" of %d score%s in %d..%d (%s): the majority "
                 "baseline is undefined; check --baseline-from, --num-scores and "
                 "score_min/score_max", ref, k, plural_s(k), o->score_min, o->score_max,
                 seen);
    }
    if (!rc && *labelled) {
        const metrics_acc *b = n_ref > 0 ? &base : NULL;
        const char *b_why = n_ref > 0 ? NULL : why;
        metrics_print(stdout, &m, b, modes, b_why);
        fflush(stdout);
        rc = metrics_write_json(metrics_path, &m, b, modes, b_why);
        if (!rc && n_ref > 0)
            log_info("metrics: %s (majority baseline from %s, %lld row%s)", metrics_path, ref,
                     (long long)n_ref, plural_s(n_ref));
        else if (!rc)
            log_info("metrics: %s (majority baseline undefined: %s)", metrics_path, why);
    } else if (!rc) {
        log_info("no row has a usable \"output\": no metrics");
        /* a metrics file of an earlier run would now describe other predictions */
        if (path_exists(metrics_path) && unlink(metrics_path) == 0)
            log_info("removed %s: it was of an earlier run of %s", metrics_path, preds_path);
    }
    metrics_free(&m);
    metrics_free(&base);
    return rc;
}

/* ======================================================================================== */
/* The job.                                                                                  */
/* ======================================================================================== */

static void log_summary(const score_coord *c, int n_workers)
{
    double secs = now_seconds() - c->t_start;
    int64_t done = c->n_ok + c->n_off_grammar + c->n_bad;
    double rate = secs > 0 ? (double)done / secs : 0;
    log_info("scored %lld row%s in %.1f s (%.1f rows/s on %d worker%s): %lld ok, %lld "
             "off-grammar, %lld bad", (long long)done, plural_s(done), secs, rate,
             n_workers,
             n_workers == 1 ? "" : "s", (long long)c->n_ok, (long long)c->n_off_grammar,
             (long long)c->n_bad);
    if (c->o->gpu_hour_cost > 0 && rate > 0)
        log_info("cost: %.4f per million rows at gpu_hour_cost %.2f per worker-hour",
                 c->o->gpu_hour_cost * n_workers / 3600.0 / rate * 1e6, c->o->gpu_hour_cost);
}

/* A --resume of a run that already finished (its journal is gone, the output is in place). */
static int already_complete(const score_options *o)
{
    char *journal = xasprintf("%s.journal", o->output);
    char *partial = xasprintf("%s.partial", o->output);
    int done = o->resume && !path_exists(journal) && !path_exists(partial) &&
               path_exists(o->output);
    free(journal);
    free(partial);
    if (done)
        log_info("--resume: %s is already complete; computing its metrics only", o->output);
    return done;
}

static int coordinator_main(const score_options *o, int k, int world, score_worker *local)
{
    score_coord c;
    int rc = 0;
    if (already_complete(o)) {
        if (world > 1)
            stop_workers(world);
        goto metrics;
    }
    rc = coord_open(&c, o, k, world - 1);
    if (!rc)
        rc = world > 1 ? coord_run_mpi(&c, world) : coord_run_local(&c, local);
    if (rc && world > 1 && c.next_chunk > 0)
        rb_die_err(rc); /* workers may be busy with a chunk: end the whole job */
    if (world > 1)
        stop_workers(world);
    if (!rc)
        rc = coord_finish(&c);
    if (!rc)
        log_summary(&c, RB_MAX(world - 1, 1));
    coord_close(&c);
    if (rc)
        return rc;

metrics:;
    /* metrics from the finished output (a resumed run counts every row) */
    char *mpath = o->metrics_path ? xstrdup(o->metrics_path)
                                  : score_default_metrics_path(o->output);
    score_options with_k = *o;
    with_k.k = k;
    int labelled;
    rc = score_metrics(&with_k, o->output, mpath, &labelled);
    free(mpath);
    return rc;
}

/* Under MPI, after the workers tried to load the model: each tells rank 0 how it went (its
 * exit code; a failing worker logs its own error), rank 0 tells everyone the first failure.
 * Returns 0 when every worker is ready, else that exit code on every rank. A worker that
 * does not answer within score_chunk_timeout(.., 1, ..) ends the job, named. */
static int agree_loaded(const score_options *o, int rank, int world, int rc)
{
    int verdict[2] = {0, 0}; /* exit code, rank */
    if (rank > 0) {
        if (rc)
            log_error("%s", err_msg());
        mpi_ok(MPI_Send(&rc, 1, MPI_INT, 0, TAG_READY, MPI_COMM_WORLD), "telling rank 0 "
               "the model is loaded");
        mpi_ok(MPI_Bcast(verdict, 2, MPI_INT, 0, MPI_COMM_WORLD), "hearing from rank 0");
        return verdict[0];
    }
    int *codes = xcalloc((size_t)world, sizeof *codes);
    MPI_Request *req = xcalloc((size_t)world, sizeof *req);
    for (int w = 1; w < world; w++)
        mpi_ok(MPI_Irecv(&codes[w], 1, MPI_INT, w, TAG_READY, MPI_COMM_WORLD, &req[w]),
               "waiting for the workers to load the model");
    double t0 = now_seconds(), limit = score_chunk_timeout(o->worker_timeout_s, 1, 0);
    for (int w = 1; w < world;) {
        int flag = 0;
        mpi_ok(MPI_Test(&req[w], &flag, MPI_STATUS_IGNORE),
               "waiting for the workers to load the model");
        if (flag) {
            w++;
            continue;
        }
        if (now_seconds() - t0 > limit)
            rb_die(RB_EXIT_RUNTIME, "rank %d has not loaded the model after %.0f s: it died or "
                   "hangs (see its log); stopping the job (nothing was scored)", w, limit);
        sleep_briefly();
    }
    for (int w = 1; w < world && !verdict[0]; w++)
        if (codes[w])
            verdict[0] = codes[w], verdict[1] = w;
    free(codes);
    free(req);
    mpi_ok(MPI_Bcast(verdict, 2, MPI_INT, 0, MPI_COMM_WORLD), "telling the workers to start");
    if (verdict[0])
        return err_set(verdict[0], "rank %d could not load the model (its error is above); "
                       "nothing was scored", verdict[1]);
    return 0;
}

int score_run(const score_options *o)
{
    int rank, world;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world);

    /* rank 0 checks the job and tells everyone the shape (or that it failed) */
    int setup[2] = {0, 0};
    if (rank == 0)
        setup[0] = score_prepare(o, &setup[1]);
    mpi_ok(MPI_Bcast(setup, 2, MPI_INT, 0, MPI_COMM_WORLD), "sharing the job's shape");
    if (setup[0])
        return setup[0];
    int k = setup[1];

    /* rank 0's backend for every rank (another node's ranks may not see its RUBRIC_BACKEND) */
    char backend[32] = "";
    if (rank == 0)
        snprintf(backend, sizeof backend, "%s", o->backend ? o->backend : "auto");
    mpi_ok(MPI_Bcast(backend, sizeof backend, MPI_CHAR, 0, MPI_COMM_WORLD),
           "sharing the backend");
    score_options own = *o;
    own.backend = backend;
    o = &own;
    if (rank == 0)
        log_info("scoring %s -> %s: %d score%s per row in %d..%d, %d worker%s, chunks of %d "
                 "row%s%s", o->input, o->output, k, plural_s(k), o->score_min, o->score_max,
                 RB_MAX(world - 1, 1), world > 2 ? "s" : "", o->chunk_rows,
                 plural_s(o->chunk_rows),
                 o->fake_model ? " (fake model)" : "");

    /* the workers (or the single process) load the model; rank 0 opens the output only once
     * they all have, so a model that does not load leaves nothing behind */
    score_worker w;
    int gpu_index = 0, node_workers = 1;
    int rc = world_node_place(MPI_COMM_WORLD, rank > 0 || world == 1, &gpu_index,
                              &node_workers);
    if (rc) {
        made_folders_done(1);
        return rc;
    }
    if (rank > 0 || world == 1) {
        rc = worker_open(&w, o, k, gpu_index);
        if (rc && world == 1) {
            made_folders_done(1); /* nothing was written: leave no new empty folder */
            rb_die_err(rc);
        }
    }
    if (world > 1) {
        rc = agree_loaded(o, rank, world, rc);
        if (rc) {
            if (rank > 0)
                worker_close(&w);
            else
                made_folders_done(1);
            return rc;
        }
    }
    made_folders_done(0); /* the output is opened next: its folders stay */
    if (rank > 0)
        rc = worker_loop(&w);
    else
        rc = coordinator_main(o, k, world, world == 1 ? &w : NULL);
    if (rank > 0 || world == 1)
        worker_close(&w);
    return rc;
}
