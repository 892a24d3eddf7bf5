/* ckpt.c: topology-free HDF5 checkpoints, written and read in parallel (layout in ckpt.h). */
#include "ckpt.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "log.h"
#include "util.h"

static const char *const optim_moments[3] = {"master", "exp_avg", "exp_avg_sq"};
static const char *const optim_descriptions[3] = {
    "AdamW's fp32 master copy of the parameter (row-major, same shape as /lora/<name>)",
    "AdamW first moment (exp_avg), fp32",
    "AdamW second moment (exp_avg_sq), fp32",
};

/* ------------------------------------------------------------------ small HDF5 helpers */

/* HDF5 prints its own error stack by default; ours names the file and the object instead. */
static void h5_quiet(void) { H5Eset_auto2(H5E_DEFAULT, NULL, NULL); }

static int attr_write(hid_t obj, const char *name, hid_t type, hid_t space, const void *data)
{
    hid_t a = H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
    herr_t st = a < 0 ? -1 : H5Awrite(a, type, data);
    if (a >= 0)
        H5Aclose(a);
    return st < 0 ? err_set(RB_EXIT_RUNTIME, "cannot write attribute '%s'", name) : 0;
}

static int attr_str(hid_t obj, const char *name, const char *text)
{
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, strlen(text) + 1);
    H5Tset_strpad(t, H5T_STR_NULLTERM);
    H5Tset_cset(t, H5T_CSET_UTF8);
    hid_t s = H5Screate(H5S_SCALAR);
    int rc = attr_write(obj, name, t, s, text);
    H5Sclose(s);
    H5Tclose(t);
    return rc;
}

static int attr_scalar(hid_t obj, const char *name, hid_t type, const void *v)
{
    hid_t s = H5Screate(H5S_SCALAR);
    int rc = attr_write(obj, name, type, s, v);
    H5Sclose(s);
    return rc;
}

/* A /state attribute and its companion "<name>_description". */
static int state_attr(hid_t g, const char *name, hid_t type, const void *v, const char *desc)
{
    char dname[128];
    snprintf(dname, sizeof dname, "%s_description", name);
    int rc = type == H5T_C_S1 ? attr_str(g, name, v) : attr_scalar(g, name, type, v);
    return rc ? rc : attr_str(g, dname, desc);
}

static int attr_exists(hid_t obj, const char *name) { return H5Aexists(obj, name) > 0; }

static int attr_read(hid_t obj, const char *name, hid_t type, void *v)
{
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    herr_t st = a < 0 ? -1 : H5Aread(a, type, v);
    if (a >= 0)
        H5Aclose(a);
    return st < 0 ? err_set(RB_EXIT_INPUT, "attribute '%s' is missing or unreadable", name) : 0;
}

static int attr_read_str(hid_t obj, const char *name, char **out)
{
    *out = NULL;
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    if (a < 0)
        return err_set(RB_EXIT_INPUT, "attribute '%s' is missing", name);
    hid_t ft = H5Aget_type(a);
    int rc = 0;
    if (H5Tget_class(ft) != H5T_STRING || H5Tis_variable_str(ft) > 0) {
        rc = err_set(RB_EXIT_INPUT, "attribute '%s' is not a fixed-length string", name);
    } else {
        size_t n = H5Tget_size(ft);
        char *buf = xcalloc(n + 1, 1);
        hid_t mt = H5Tcopy(H5T_C_S1);
        H5Tset_size(mt, n);
        H5Tset_cset(mt, H5Tget_cset(ft));
        if (H5Aread(a, mt, buf) < 0) {
            free(buf);
            rc = err_set(RB_EXIT_INPUT, "attribute '%s' is unreadable", name);
        } else {
            *out = buf;
        }
        H5Tclose(mt);
    }
    H5Tclose(ft);
    H5Aclose(a);
    return rc;
}

/* Select the flat element range [a, b) of a row-major [rows, cols] dataspace: a partial first
 * row, whole rows, a partial last row (a union of up to three hyperslabs). */
static void select_flat_range(hid_t space, int64_t cols, int64_t a, int64_t b)
{
    H5Sselect_none(space);
    int64_t ra = a / cols, ca = a % cols, rb = b / cols, cb = b % cols;
    hsize_t start[2], count[2];
#define ADD_BLOCK(r, c, nr, nc)                                                     \
    do {                                                                             \
        start[0] = (hsize_t)(r), start[1] = (hsize_t)(c);                            \
        count[0] = (hsize_t)(nr), count[1] = (hsize_t)(nc);                          \
        H5Sselect_hyperslab(space, H5S_SELECT_OR, start, NULL, count, NULL);         \
    } while (0)
    if (ra == rb) {
        ADD_BLOCK(ra, ca, 1, cb - ca);
        return;
    }
    if (ca > 0) {
        ADD_BLOCK(ra, ca, 1, cols - ca);
        ra++;
    }
    if (rb > ra)
        ADD_BLOCK(ra, 0, rb - ra, cols);
    if (cb > 0)
        ADD_BLOCK(rb, 0, 1, cb);
#undef ADD_BLOCK
}

/* The part of a parameter inside a slice: [lo, hi) in the parameter's own element numbering. */
static int slice_overlap(const ckpt_param *p, const ckpt_slice *s, int64_t *lo, int64_t *hi)
{
    int64_t pn = p->rows * p->cols;
    int64_t a = RB_MAX(s->begin, p->offset), b = RB_MIN(s->begin + s->len, p->offset + pn);
    if (b <= a)
        return 0;
    *lo = a - p->offset;
    *hi = b - p->offset;
    return 1;
}

/* Write or read this rank's part of one [rows, cols] dataset (independent I/O). */
static int dataset_slice_io(hid_t d, const ckpt_param *p, const ckpt_slice *s, float *buf,
                            int write)
{
    int64_t lo, hi;
    if (!buf || !slice_overlap(p, s, &lo, &hi))
        return 0;
    hsize_t dims[2] = {(hsize_t)p->rows, (hsize_t)p->cols}, n = (hsize_t)(hi - lo);
    hid_t fs = H5Screate_simple(2, dims, NULL), ms = H5Screate_simple(1, &n, NULL);
    select_flat_range(fs, p->cols, lo, hi);
    float *mem = buf + (p->offset + lo - s->begin);
    herr_t st = write ? H5Dwrite(d, H5T_NATIVE_FLOAT, ms, fs, H5P_DEFAULT, mem)
                      : H5Dread(d, H5T_NATIVE_FLOAT, ms, fs, H5P_DEFAULT, mem);
    H5Sclose(fs);
    H5Sclose(ms);
    if (st < 0)
        return err_set(RB_EXIT_RUNTIME, "cannot %s elements [%" PRId64 ", %" PRId64 ") of %s",
                       write ? "write" : "read", lo, hi, p->name);
    return 0;
}

/* ------------------------------------------------------------------ meta and tables over MPI */

void ckpt_meta_free(ckpt_meta *m)
{
    free(m->sched_kind);
    free(m->config_yaml);
    free(m->base_model);
    m->sched_kind = m->config_yaml = m->base_model = NULL;
}

void ckpt_params_free(ckpt_param *params, int n)
{
    for (int i = 0; params && i < n; i++)
        free(params[i].name);
    free(params);
}

static void bcast_str(MPI_Comm comm, int root, char **s)
{
    int rank;
    MPI_Comm_rank(comm, &rank);
    int64_t n = rank == root ? (*s ? (int64_t)strlen(*s) + 1 : 0) : 0;
    MPI_Bcast(&n, 1, MPI_INT64_T, root, comm);
    if (rank != root)
        *s = n ? xmalloc((size_t)n) : NULL;
    if (n)
        MPI_Bcast(*s, (int)n, MPI_CHAR, root, comm);
}

int ckpt_params_bcast(MPI_Comm comm, int root, ckpt_param **params, int *n)
{
    int rank;
    MPI_Comm_rank(comm, &rank);
    MPI_Bcast(n, 1, MPI_INT, root, comm);
    if (rank != root)
        *params = xcalloc((size_t)*n, sizeof **params);
    for (int i = 0; i < *n; i++) {
        ckpt_param *p = &(*params)[i];
        int64_t v[3] = {p->offset, p->rows, p->cols};
        MPI_Bcast(v, 3, MPI_INT64_T, root, comm);
        p->offset = v[0], p->rows = v[1], p->cols = v[2];
        bcast_str(comm, root, &p->name);
    }
    return 0;
}

/* Every rank gets a copy of root's meta (strings duplicated). */
static void meta_bcast(MPI_Comm comm, const ckpt_meta *in, ckpt_meta *out)
{
    int rank;
    MPI_Comm_rank(comm, &rank);
    if (rank == 0)
        *out = *in;
    MPI_Bcast(out, (int)sizeof *out, MPI_BYTE, 0, comm);
    char *strs[3] = {NULL, NULL, NULL};
    if (rank == 0) {
        strs[0] = in->sched_kind ? xstrdup(in->sched_kind) : NULL;
        strs[1] = in->config_yaml ? xstrdup(in->config_yaml) : NULL;
        strs[2] = in->base_model ? xstrdup(in->base_model) : NULL;
    }
    for (int i = 0; i < 3; i++)
        bcast_str(comm, 0, &strs[i]);
    out->sched_kind = strs[0];
    out->config_yaml = strs[1];
    out->base_model = strs[2];
}

/* The worst return code of all ranks; a rank that did not fail itself gets a message saying
 * another one did. */
static int agree(MPI_Comm comm, int rc, const char *what)
{
    int worst = rc;
    MPI_Allreduce(&rc, &worst, 1, MPI_INT, MPI_MAX, comm);
    if (worst && !rc)
        err_set(worst, "%s failed on another rank (see its message)", what);
    return worst;
}

/* ------------------------------------------------------------------ writing */

static int write_state(hid_t f, const ckpt_meta *m, const ckpt_param *params, int n_params,
                       int with_optim)
{
    hid_t g = H5Gcreate2(f, "state", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (g < 0)
        return err_set(RB_EXIT_RUNTIME, "cannot create group /state");
    int64_t version = CKPT_FORMAT_VERSION, zero = 0, n_el = 0;
    int64_t world = m->world_size, stage = m->zero_stage, np = n_params, opt = with_optim;
    int64_t k = m->n_scores;
    for (int i = 0; i < n_params; i++)
        n_el += params[i].rows * params[i].cols;
    const char *yaml = m->config_yaml ? m->config_yaml : "";
    const char *base = m->base_model ? m->base_model : "";
    const char *sched = m->sched_kind ? m->sched_kind : "";
    hid_t I = H5T_NATIVE_INT64, U = H5T_NATIVE_UINT64, D = H5T_NATIVE_DOUBLE, S = H5T_C_S1;
    int rc = attr_str(g, "description", "training state of a rubric checkpoint; each attribute "
                      "X is explained by X_description")
        || state_attr(g, "format", S, "rubric-checkpoint", "file kind")
        || state_attr(g, "format_version", I, &version, "layout version (see docs/distributed.md)")
        || state_attr(g, "complete", I, &zero, "1 once every rank finished writing and the file "
                      "was hashed and renamed into place")
        || state_attr(g, "step", I, &m->step, "optimizer steps done")
        || state_attr(g, "epoch", I, &m->epoch, "0-based epoch the next step belongs to")
        || state_attr(g, "data_cursor", I, &m->data_cursor, "optimizer steps of that epoch "
                      "already done (position in the deterministic micro-batch schedule)")
        || state_attr(g, "total_steps", I, &m->total_steps, "optimizer steps of the whole run")
        || state_attr(g, "loss", D, &m->loss, "training loss of the last step (token-weighted)")
        || state_attr(g, "lr", D, &m->lr, "learning rate of the last step")
        || state_attr(g, "seed", U, &m->seed, "the run's seed")
        || state_attr(g, "sched_kind", S, sched, "learning-rate schedule")
        || state_attr(g, "base_lr", D, &m->base_lr, "peak learning rate of the schedule")
        || state_attr(g, "warmup_steps", I, &m->warmup_steps, "warmup steps of the schedule")
        || state_attr(g, "config_yaml", S, yaml, "the resolved training config (YAML)")
        || state_attr(g, "base_model", S, base, "base model folder the adapters belong to")
        || state_attr(g, "base_model_hash", U, &m->base_model_hash,
                      "xxHash64 of the base model's config.json (its identity)")
        || state_attr(g, "world_size", I, &world, "workers of the run that wrote this file")
        || state_attr(g, "zero_stage", I, &stage, "ZeRO stage of that run")
        || state_attr(g, "scores_per_row", I, &k, "scores per answer in the training data (the "
                      "K rubric score decodes by default); 0 for free-text outputs")
        || state_attr(g, "n_params", I, &np, "trainable tensors (datasets under /lora)")
        || state_attr(g, "n_elements", I, &n_el, "trainable elements, padding excluded")
        || state_attr(g, "has_optimizer_state", I, &opt, "1 when /optim holds AdamW's state");
    if (!rc && m->n_rng > 0) {
        hsize_t n = (hsize_t)m->n_rng;
        hid_t s = H5Screate_simple(1, &n, NULL);
        rc = attr_write(g, "rng_state", U, s, m->rng_state)
             || attr_str(g, "rng_state_description", "random generator state (uint64 words)");
        H5Sclose(s);
    }
    H5Gclose(g);
    return rc ? err_prefix(RB_EXIT_RUNTIME, "writing /state") : 0;
}

static hid_t create_dataset(hid_t parent, const char *name, const ckpt_param *p,
                            const char *desc)
{
    hsize_t dims[2] = {(hsize_t)p->rows, (hsize_t)p->cols};
    hid_t s = H5Screate_simple(2, dims, NULL);
    hid_t d = H5Dcreate2(parent, name, H5T_IEEE_F32LE, s, H5P_DEFAULT, H5P_DEFAULT,
                         H5P_DEFAULT);
    H5Sclose(s);
    if (d >= 0 && attr_str(d, "description", desc)) {
        H5Dclose(d);
        return -1;
    }
    return d;
}

/* Create /lora/<name> (and /optim/<name>/{master,exp_avg,exp_avg_sq}); write this rank's part. */
static int write_param(hid_t lora, hid_t optim, const ckpt_param *p, const ckpt_slice *s)
{
    hid_t d = create_dataset(lora, p->name, p, "LoRA weight, float32 row-major [rows, cols] "
                             "(PEFT name and shape)");
    if (d < 0)
        return err_set(RB_EXIT_RUNTIME, "cannot create /lora/%s", p->name);
    int rc = dataset_slice_io(d, p, s, s->lora, 1);
    H5Dclose(d);
    if (rc || optim < 0)
        return rc;

    hid_t g = H5Gcreate2(optim, p->name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (g < 0)
        return err_set(RB_EXIT_RUNTIME, "cannot create /optim/%s", p->name);
    rc = attr_str(g, "description", "AdamW state of the parameter of the same name");
    float *bufs[3] = {s->master, s->exp_avg, s->exp_avg_sq};
    for (int k = 0; k < 3 && !rc; k++) {
        d = create_dataset(g, optim_moments[k], p, optim_descriptions[k]);
        if (d < 0) {
            rc = err_set(RB_EXIT_RUNTIME, "cannot create /optim/%s/%s", p->name,
                         optim_moments[k]);
            break;
        }
        rc = dataset_slice_io(d, p, s, bufs[k], 1);
        H5Dclose(d);
    }
    H5Gclose(g);
    return rc;
}

/* Every rank: the file body, through MPI-IO. */
static int write_body(MPI_Comm comm, const char *tmp, const ckpt_meta *m,
                      const ckpt_param *params, int n_params, const ckpt_slice *s,
                      int with_optim)
{
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    H5Pset_fapl_mpio(fapl, comm, MPI_INFO_NULL);
    hid_t f = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
    H5Pclose(fapl);
    if (f < 0)
        return err_set(RB_EXIT_RUNTIME, "cannot create %s (is output_dir writable?)", tmp);
    int rc = attr_str(f, "description", "rubric training checkpoint: /lora (weights), /optim "
                      "(AdamW state), /state (position, config, schedule)");
    if (!rc)
        rc = write_state(f, m, params, n_params, with_optim);
    hid_t lora = H5Gcreate2(f, "lora", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    hid_t optim = with_optim ? H5Gcreate2(f, "optim", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT)
                             : -1;
    if (!rc && (lora < 0 || (with_optim && optim < 0)))
        rc = err_set(RB_EXIT_RUNTIME, "cannot create the groups of %s", tmp);
    if (!rc)
        rc = attr_str(lora, "description", "trainable LoRA tensors by PEFT name");
    if (!rc && optim >= 0)
        rc = attr_str(optim, "description", "AdamW state per parameter: master, exp_avg, "
                      "exp_avg_sq");
    for (int i = 0; i < n_params && !rc; i++)
        rc = write_param(lora, optim, &params[i], s);
    if (lora >= 0)
        H5Gclose(lora);
    if (optim >= 0)
        H5Gclose(optim);
    if (H5Fclose(f) < 0 && !rc)
        rc = err_set(RB_EXIT_RUNTIME, "cannot close %s", tmp);
    return rc ? err_prefix(rc, "writing %s", tmp) : 0;
}

static int hash_dataset(hid_t d, uint64_t *hash, double *sumsq, int64_t *numel)
{
    hid_t s = H5Dget_space(d);
    hssize_t n = H5Sget_simple_extent_npoints(s);
    H5Sclose(s);
    if (n < 0)
        return err_set(RB_EXIT_INPUT, "unreadable dataspace");
    float *buf = xmalloc((size_t)n * sizeof *buf + 1);
    int rc = 0;
    if (H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0) {
        rc = err_set(RB_EXIT_INPUT, "data unreadable (truncated file?)");
    } else {
        *hash = XXH64(buf, (size_t)n * sizeof *buf, 0);
        double ss = 0;
        for (hssize_t i = 0; i < n; i++)
            ss += (double)buf[i] * buf[i];
        if (sumsq)
            *sumsq = ss;
        if (numel)
            *numel = (int64_t)n;
    }
    free(buf);
    return rc;
}

/* Rank 0, after every rank closed the file: hash each dataset into an `xxh64` attribute and
 * mark the file complete. */
static int seal_file(const char *tmp, const ckpt_param *params, int n_params, int with_optim)
{
    hid_t f = H5Fopen(tmp, H5F_ACC_RDWR, H5P_DEFAULT);
    if (f < 0)
        return err_set(RB_EXIT_RUNTIME, "cannot reopen %s to seal it", tmp);
    int rc = 0;
    for (int i = 0; i < n_params && !rc; i++) {
        for (int k = -1; k < (with_optim ? 3 : 0) && !rc; k++) {
            char *path = k < 0 ? xasprintf("/lora/%s", params[i].name)
                               : xasprintf("/optim/%s/%s", params[i].name, optim_moments[k]);
            hid_t d = H5Dopen2(f, path, H5P_DEFAULT);
            uint64_t h = 0;
            rc = d < 0 ? err_set(RB_EXIT_RUNTIME, "cannot open %s", path)
                       : hash_dataset(d, &h, NULL, NULL);
            if (!rc)
                rc = attr_scalar(d, "xxh64", H5T_NATIVE_UINT64, &h);
            if (d >= 0)
                H5Dclose(d);
            if (rc)
                err_prefix(rc, "%s", path);
            free(path);
        }
    }
    hid_t g = rc ? -1 : H5Gopen2(f, "state", H5P_DEFAULT);
    int64_t one = 1;
    if (g >= 0) {
        hid_t a = H5Aopen(g, "complete", H5P_DEFAULT);
        if (a < 0 || H5Awrite(a, H5T_NATIVE_INT64, &one) < 0)
            rc = err_set(RB_EXIT_RUNTIME, "cannot mark /state complete");
        if (a >= 0)
            H5Aclose(a);
        H5Gclose(g);
    }
    if (H5Fclose(f) < 0 && !rc)
        rc = err_set(RB_EXIT_RUNTIME, "cannot close %s", tmp);
    return rc ? err_prefix(rc, "sealing %s", tmp) : 0;
}

static int fsync_path(const char *path)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0 || fsync(fd) != 0) {
        if (fd >= 0)
            close(fd);
        return err_set(RB_EXIT_RUNTIME, "cannot fsync %s", path);
    }
    close(fd);
    return 0;
}

/* checkpoint-<step>.h5 files of a folder, sorted by step (ascending). */
typedef struct {
    int64_t step;
    char *path;
} ckpt_entry;

static int entry_cmp(const void *a, const void *b)
{
    int64_t x = ((const ckpt_entry *)a)->step, y = ((const ckpt_entry *)b)->step;
    return (x > y) - (x < y);
}

static int list_checkpoints(const char *dir, ckpt_entry **out)
{
    *out = NULL;
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    int n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        int64_t step;
        int used = 0;
        if (sscanf(e->d_name, "checkpoint-%" SCNd64 ".h5%n", &step, &used) != 1 ||
            used != (int)strlen(e->d_name))
            continue;
        if (n == cap)
            *out = xrealloc(*out, (size_t)(cap = cap ? 2 * cap : 8) * sizeof **out);
        (*out)[n].step = step;
        (*out)[n++].path = xasprintf("%s/%s", dir, e->d_name);
    }
    closedir(d);
    qsort(*out, (size_t)n, sizeof **out, entry_cmp);
    return n;
}

static void free_entries(ckpt_entry *e, int n)
{
    for (int i = 0; i < n; i++)
        free(e[i].path);
    free(e);
}

static void remove_oldest(const char *dir, int keep, const char *newest)
{
    ckpt_entry *e;
    int n = list_checkpoints(dir, &e);
    for (int i = 0; i < n - keep; i++) {
        if (strcmp(e[i].path, newest) == 0)
            continue;
        if (unlink(e[i].path) == 0)
            log_info("removed %s (save_total_limit %d)", e[i].path, keep);
        else
            log_warn("cannot remove old checkpoint %s", e[i].path);
    }
    free_entries(e, n);
}

int ckpt_save(MPI_Comm comm, const char *output_dir, const ckpt_meta *meta,
              const ckpt_param *params, int n_params, const ckpt_slice *slice, int with_optim,
              int save_total_limit, char **path_out)
{
    int rank;
    MPI_Comm_rank(comm, &rank);
    h5_quiet();
    ckpt_meta m;
    meta_bcast(comm, meta, &m);
    char *final = xasprintf("%s/checkpoint-%" PRId64 ".h5", output_dir, m.step);
    char *tmp = xasprintf("%s.tmp", final);

    /* 1. rank 0 makes the folder; 2. every rank writes its slices; 3. rank 0 seals */
    int rc = rank == 0 ? mkdir_p(output_dir) : 0;
    rc = agree(comm, rc, "creating output_dir");
    if (!rc)
        rc = agree(comm, write_body(comm, tmp, &m, params, n_params, slice, with_optim),
                   "writing the checkpoint");
    if (rank == 0 && !rc && getenv("RUBRIC_TEST_CKPT_DIE_BEFORE_SEAL"))
        raise(SIGKILL); /* tests: a job killed while the checkpoint is being written */
    if (rank == 0 && !rc) {
        rc = seal_file(tmp, params, n_params, with_optim);
        if (!rc)
            rc = fsync_path(tmp);
        if (!rc)
            rc = rename_durable(tmp, final);
        if (!rc && save_total_limit > 0)
            remove_oldest(output_dir, save_total_limit, final);
    }
    rc = agree(comm, rc, "sealing the checkpoint");
    if (rc && rank == 0)
        unlink(tmp);
    ckpt_meta_free(&m);
    free(tmp);
    if (path_out && !rc)
        *path_out = final;
    else
        free(final);
    return rc;
}

/* ------------------------------------------------------------------ reading */

static int read_state(hid_t f, ckpt_meta *m)
{
    memset(m, 0, sizeof *m);
    hid_t g = H5Gopen2(f, "state", H5P_DEFAULT);
    if (g < 0)
        return err_set(RB_EXIT_INPUT, "no /state group: not a rubric checkpoint");
    char *format = NULL;
    int64_t version = 0, world = 0, stage = 0, opt = 0;
    hid_t I = H5T_NATIVE_INT64, U = H5T_NATIVE_UINT64, D = H5T_NATIVE_DOUBLE;
    int rc = attr_read_str(g, "format", &format);
    if (!rc && strcmp(format, "rubric-checkpoint") != 0)
        rc = err_set(RB_EXIT_INPUT, "format is '%s', not 'rubric-checkpoint'", format);
    if (!rc)
        rc = attr_read(g, "format_version", I, &version);
    if (!rc && version != CKPT_FORMAT_VERSION)
        rc = err_set(RB_EXIT_INPUT, "format_version %" PRId64 " (this rubric reads %d)",
                     version, CKPT_FORMAT_VERSION);
    rc = rc || attr_read(g, "step", I, &m->step) || attr_read(g, "epoch", I, &m->epoch)
         || attr_read(g, "data_cursor", I, &m->data_cursor)
         || attr_read(g, "total_steps", I, &m->total_steps) || attr_read(g, "loss", D, &m->loss)
         || attr_read(g, "lr", D, &m->lr) || attr_read(g, "seed", U, &m->seed)
         || attr_read(g, "base_lr", D, &m->base_lr)
         || attr_read(g, "warmup_steps", I, &m->warmup_steps)
         || attr_read(g, "base_model_hash", U, &m->base_model_hash)
         || attr_read(g, "world_size", I, &world) || attr_read(g, "zero_stage", I, &stage)
         || attr_read(g, "n_elements", I, &m->n_elements)
         || attr_read(g, "has_optimizer_state", I, &opt)
         || attr_read_str(g, "sched_kind", &m->sched_kind)
         || attr_read_str(g, "config_yaml", &m->config_yaml)
         || attr_read_str(g, "base_model", &m->base_model);
    if (rc)
        rc = RB_EXIT_INPUT;
    m->world_size = (int)world;
    m->zero_stage = (int)stage;
    m->has_optimizer_state = (int)opt;
    int64_t k = 0; /* optional: files written before it have none */
    if (!rc && attr_exists(g, "scores_per_row"))
        rc = attr_read(g, "scores_per_row", I, &k) ? RB_EXIT_INPUT : 0;
    m->n_scores = (int)k;
    if (!rc && attr_exists(g, "rng_state")) {
        hid_t a = H5Aopen(g, "rng_state", H5P_DEFAULT);
        hid_t s = H5Aget_space(a);
        hssize_t n = H5Sget_simple_extent_npoints(s);
        if (n < 0 || n > CKPT_MAX_RNG || H5Aread(a, U, m->rng_state) < 0)
            rc = err_set(RB_EXIT_INPUT, "rng_state is unreadable or too long");
        m->n_rng = (int)n;
        H5Sclose(s);
        H5Aclose(a);
    }
    free(format);
    H5Gclose(g);
    if (rc)
        ckpt_meta_free(m);
    return rc ? err_prefix(rc, "/state") : 0;
}

int ckpt_file_is_hdf5(const char *path)
{
    /* the superblock signature, at 0 or after a user block (512, 1024, 2048, ... bytes) */
    static const unsigned char sig[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return 0;
    int found = 0;
    unsigned char buf[8];
    for (long at = 0; !found && at <= (1L << 20); at = at ? 2 * at : 512) {
        if (fseek(fp, at, SEEK_SET) != 0 || fread(buf, 1, 8, fp) != 8)
            break;
        found = memcmp(buf, sig, 8) == 0;
    }
    fclose(fp);
    return found;
}

int ckpt_check_h5_file(const char *path, const char *what)
{
    struct stat sb;
    if (stat(path, &sb) != 0)
        return errno == ENOENT ? err_set(RB_EXIT_INPUT, "%s: no such file", path)
                               : err_set(RB_EXIT_INPUT, "%s: %s", path, strerror(errno));
    if (S_ISDIR(sb.st_mode))
        return err_set(RB_EXIT_INPUT, "%s is a directory, not %s", path, what);
    if (!S_ISREG(sb.st_mode)) /* a FIFO or a device: opening it could wait forever */
        return err_set(RB_EXIT_INPUT, "%s is not a regular file, not %s", path, what);
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return err_set(RB_EXIT_INPUT, "%s: cannot open: %s", path, strerror(errno));
    fclose(fp);
    if (!ckpt_file_is_hdf5(path))
        return err_set(RB_EXIT_INPUT, "%s is not %s (not an HDF5 file)", path, what);
    return 0;
}

int ckpt_check_file(const char *path)
{
    return ckpt_check_h5_file(path, "a checkpoint");
}

int ckpt_read_meta(const char *path, ckpt_meta *meta)
{
    h5_quiet();
    memset(meta, 0, sizeof *meta);
    int rc0 = ckpt_check_file(path);
    if (rc0)
        return rc0;
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0)
        return err_set(RB_EXIT_INPUT, "%s: a damaged HDF5 file (truncated or corrupt?)", path);
    int rc = read_state(f, meta);
    H5Fclose(f);
    return rc ? err_prefix(rc, "%s", path) : 0;
}

/* Check each dataset of a group against its xxh64 attribute. */
static int verify_dataset(hid_t f, const char *path)
{
    hid_t d = H5Dopen2(f, path, H5P_DEFAULT);
    if (d < 0)
        return err_set(RB_EXIT_INPUT, "%s is missing", path);
    uint64_t want = 0, got = 0;
    int rc = attr_read(d, "xxh64", H5T_NATIVE_UINT64, &want);
    if (!rc)
        rc = hash_dataset(d, &got, NULL, NULL);
    if (!rc && got != want)
        rc = err_set(RB_EXIT_INPUT, "content does not match its xxh64 (corrupt file)");
    H5Dclose(d);
    return rc ? err_prefix(rc, "%s", path) : 0;
}

static char *link_name(hid_t g, hsize_t i)
{
    ssize_t n = H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, NULL, 0, H5P_DEFAULT);
    if (n < 0)
        return NULL;
    char *s = xmalloc((size_t)n + 1);
    H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, s, (size_t)n + 1, H5P_DEFAULT);
    return s;
}

static hsize_t group_size(hid_t f, const char *name)
{
    H5G_info_t info;
    hid_t g = H5Gopen2(f, name, H5P_DEFAULT);
    if (g < 0)
        return 0;
    if (H5Gget_info(g, &info) < 0)
        info.nlinks = 0;
    H5Gclose(g);
    return info.nlinks;
}

#define CKPT_DAMAGED_ADVICE "; delete it or resume from an older checkpoint"

/* *damaged: the file is a rubric checkpoint (its /state reads) that is incomplete or whose
 * data does not check out, as opposed to another kind of HDF5 file. */
static int verify_open(hid_t f, int *damaged)
{
    ckpt_meta m;
    int rc = read_state(f, &m);
    if (rc)
        return rc;
    *damaged = 1;
    hid_t g = H5Gopen2(f, "state", H5P_DEFAULT);
    int64_t complete = 0;
    attr_read(g, "complete", H5T_NATIVE_INT64, &complete);
    H5Gclose(g);
    if (!complete)
        rc = err_set(RB_EXIT_INPUT, "not marked complete (its writer was interrupted)");
    hid_t lora = rc ? -1 : H5Gopen2(f, "lora", H5P_DEFAULT);
    if (!rc && lora < 0)
        rc = err_set(RB_EXIT_INPUT, "no /lora group");
    hsize_t n = lora >= 0 ? group_size(f, "lora") : 0;
    for (hsize_t i = 0; i < n && !rc; i++) {
        char *name = link_name(lora, i);
        char *p = xasprintf("/lora/%s", name ? name : "?");
        rc = verify_dataset(f, p);
        for (int k = 0; k < 3 && !rc && m.has_optimizer_state; k++) {
            free(p);
            p = xasprintf("/optim/%s/%s", name, optim_moments[k]);
            rc = verify_dataset(f, p);
        }
        free(p);
        free(name);
    }
    if (lora >= 0)
        H5Gclose(lora);
    ckpt_meta_free(&m);
    return rc;
}

int ckpt_verify(const char *path)
{
    h5_quiet();
    int rc = ckpt_check_file(path);
    if (rc)
        return rc;
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0)
        return err_set(RB_EXIT_INPUT, "checkpoint %s: a damaged HDF5 file (truncated or "
                       "corrupt?)" CKPT_DAMAGED_ADVICE, path);
    int damaged = 0;
    rc = verify_open(f, &damaged);
    H5Fclose(f);
    if (!rc)
        return 0;
    err_prefix(rc, "checkpoint %s", path);
    if (damaged) { /* a real checkpoint, damaged: only then is deleting it the advice */
        char *msg = xstrdup(err_msg());
        err_set(rc, "%s" CKPT_DAMAGED_ADVICE, msg);
        free(msg);
    }
    return rc;
}

int ckpt_find_latest(const char *dir, char **path)
{
    *path = NULL;
    ckpt_entry *e;
    int n = list_checkpoints(dir, &e);
    for (int i = n - 1; i >= 0 && !*path; i--) {
        if (ckpt_verify(e[i].path) == 0)
            *path = xstrdup(e[i].path);
        else
            log_warn("skipping invalid checkpoint: %s", err_msg());
    }
    free_entries(e, n);
    if (!*path)
        return err_set(RB_EXIT_INPUT, "no valid checkpoint-*.h5 in %s to resume from", dir);
    return 0;
}

/* Every table entry present with its shape, and nothing else. */
static int check_table(hid_t f, const ckpt_param *params, int n_params, int with_optim)
{
    hsize_t n = group_size(f, "lora");
    if ((int64_t)n != n_params)
        return err_set(RB_EXIT_INPUT, "/lora holds %llu tensors, the model trains %d (another "
                       "lora_r, target modules or model?)", (unsigned long long)n, n_params);
    for (int i = 0; i < n_params; i++) {
        const ckpt_param *p = &params[i];
        for (int k = -1; k < (with_optim ? 3 : 0); k++) {
            char *path = k < 0 ? xasprintf("/lora/%s", p->name)
                               : xasprintf("/optim/%s/%s", p->name, optim_moments[k]);
            hid_t d = H5Dopen2(f, path, H5P_DEFAULT);
            hsize_t dims[2] = {0, 0};
            int nd = -1;
            if (d >= 0) {
                hid_t s = H5Dget_space(d);
                nd = H5Sget_simple_extent_ndims(s);
                if (nd == 2)
                    H5Sget_simple_extent_dims(s, dims, NULL);
                H5Sclose(s);
                H5Dclose(d);
            }
            int rc = 0;
            if (d < 0)
                rc = err_set(RB_EXIT_INPUT, "%s is missing (the model trains it)", path);
            else if (nd != 2 || (int64_t)dims[0] != p->rows || (int64_t)dims[1] != p->cols)
                rc = err_set(RB_EXIT_INPUT, "%s has shape [%llu, %llu], the model's is "
                             "[%" PRId64 ", %" PRId64 "]", path, (unsigned long long)dims[0],
                             (unsigned long long)dims[1], p->rows, p->cols);
            free(path);
            if (rc)
                return rc;
        }
    }
    return 0;
}

/* Read this rank's slices into fresh buffers. */
static int read_slices(hid_t f, const ckpt_param *params, int n_params, const ckpt_slice *s,
                       int with_optim, float *bufs[4])
{
    int rc = 0;
    for (int i = 0; i < n_params && !rc; i++) {
        for (int k = -1; k < (with_optim ? 3 : 0) && !rc; k++) {
            char *path = k < 0 ? xasprintf("/lora/%s", params[i].name)
                               : xasprintf("/optim/%s/%s", params[i].name, optim_moments[k]);
            hid_t d = H5Dopen2(f, path, H5P_DEFAULT);
            rc = d < 0 ? err_set(RB_EXIT_INPUT, "cannot open %s", path)
                       : dataset_slice_io(d, &params[i], s, bufs[k + 1], 0);
            if (d >= 0)
                H5Dclose(d);
            free(path);
        }
    }
    return rc;
}

static int load_open(hid_t f, const ckpt_param *params, int n_params, uint64_t expect_hash,
                     const ckpt_slice *s, int with_optim, ckpt_meta *meta)
{
    int rc = read_state(f, meta);
    if (!rc && with_optim && !meta->has_optimizer_state)
        rc = err_set(RB_EXIT_INPUT, "it holds no optimizer state (resume needs /optim)");
    if (!rc && expect_hash && meta->base_model_hash != expect_hash)
        rc = err_set(RB_EXIT_INPUT, "it was trained on another base model (%s, config hash "
                     "%016" PRIx64 "; this run's is %016" PRIx64 ")", meta->base_model,
                     meta->base_model_hash, expect_hash);
    if (!rc)
        rc = check_table(f, params, n_params, with_optim);
    if (rc)
        return rc;

    /* read into temporaries; the caller's buffers change only when everything was read */
    size_t bytes = (size_t)s->len * sizeof(float);
    float *bufs[4] = {xmalloc(bytes + 1), NULL, NULL, NULL};
    for (int k = 1; k < 4 && with_optim; k++)
        bufs[k] = xmalloc(bytes + 1);
    rc = read_slices(f, params, n_params, s, with_optim, bufs);
    float *dst[4] = {s->lora, s->master, s->exp_avg, s->exp_avg_sq};
    for (int k = 0; k < 4; k++) {
        if (!rc && bufs[k] && dst[k] && s->len > 0)
            memcpy(dst[k], bufs[k], bytes);
        free(bufs[k]);
    }
    return rc;
}

int ckpt_load(MPI_Comm comm, const char *path, const ckpt_param *params, int n_params,
              uint64_t expect_hash, const ckpt_slice *slice, int with_optim, ckpt_meta *meta)
{
    int rank;
    MPI_Comm_rank(comm, &rank);
    h5_quiet();
    memset(meta, 0, sizeof *meta);

    /* 1. rank 0 checks the whole file (hashes) before anyone reads a byte of it */
    int rc = rank == 0 ? ckpt_verify(path) : 0;
    rc = agree(comm, rc, "verifying the checkpoint");
    if (rc)
        return rc;

    /* 2. every rank checks the table and reads its own slice */
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    H5Pset_fapl_mpio(fapl, comm, MPI_INFO_NULL);
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, fapl);
    H5Pclose(fapl);
    if (f < 0)
        rc = err_set(RB_EXIT_INPUT, "cannot open it");
    else
        rc = load_open(f, params, n_params, expect_hash, slice, with_optim, meta);
    if (f >= 0)
        H5Fclose(f);
    if (rc)
        err_prefix(rc, "checkpoint %s", path);
    rc = agree(comm, rc, "loading the checkpoint");
    if (rc)
        ckpt_meta_free(meta);
    return rc;
}

/* ------------------------------------------------------------------ printing */

static void print_state(const char *path, const ckpt_meta *m)
{
    printf("checkpoint    %s (format %d, complete, every dataset's hash verified)\n", path,
           CKPT_FORMAT_VERSION);
    printf("step          %" PRId64 " / %" PRId64 "   epoch %" PRId64 "   data cursor %" PRId64
           "\n", m->step, m->total_steps, m->epoch, m->data_cursor);
    printf("loss          %.4f   lr %.3e   (%s schedule, base lr %.3e, %" PRId64
           " warmup steps)\n", m->loss, m->lr, m->sched_kind, m->base_lr, m->warmup_steps);
    printf("base model    %s (config.json xxh64 %016" PRIx64 ")\n", m->base_model,
           m->base_model_hash);
    printf("written by    %d worker%s, ZeRO stage %d; seed %" PRIu64 "\n", m->world_size,
           m->world_size == 1 ? "" : "s", m->zero_stage, m->seed);
    if (m->n_scores > 0)
        printf("answers       %d scores per row\n", m->n_scores);
    else
        printf("answers       free text (or not recorded)\n");
}

static int print_params(hid_t f, int has_optim)
{
    hid_t lora = H5Gopen2(f, "lora", H5P_DEFAULT);
    hsize_t n = group_size(f, "lora");
    int64_t total = 0;
    printf("\n%-72s %14s %12s\n", "parameter", "shape", "norm");
    for (hsize_t i = 0; i < n; i++) {
        char *name = link_name(lora, i);
        hid_t d = H5Dopen2(lora, name, H5P_DEFAULT);
        hid_t s = H5Dget_space(d);
        hsize_t dims[2] = {0, 0};
        H5Sget_simple_extent_dims(s, dims, NULL);
        H5Sclose(s);
        uint64_t h;
        double ss = 0;
        int64_t numel = 0;
        hash_dataset(d, &h, &ss, &numel);
        H5Dclose(d);
        total += numel;
        char shape[64];
        snprintf(shape, sizeof shape, "[%llu, %llu]", (unsigned long long)dims[0],
                 (unsigned long long)dims[1]);
        printf("%-72s %14s %12.6g\n", name, shape, sqrt(ss));
        free(name);
    }
    H5Gclose(lora);
    printf("%llu tensors, %" PRId64 " elements\n", (unsigned long long)n, total);
    if (has_optim)
        printf("optimizer     AdamW master, exp_avg, exp_avg_sq for all %llu tensors "
               "(/optim)\n", (unsigned long long)group_size(f, "optim"));
    else
        printf("optimizer     none (weights only)\n");
    return 0;
}

int ckpt_print(const char *path, int show_config)
{
    int rc = ckpt_verify(path);
    if (rc)
        return rc;
    ckpt_meta m;
    if ((rc = ckpt_read_meta(path, &m)))
        return rc;
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    print_state(path, &m);
    print_params(f, m.has_optimizer_state);
    H5Fclose(f);
    if (show_config)
        printf("\nconfig (resolved YAML):\n%s%s", m.config_yaml,
               m.config_yaml[0] && m.config_yaml[strlen(m.config_yaml) - 1] != '\n' ? "\n" : "");
    ckpt_meta_free(&m);
    return 0;
}
