/*
 * ckpt.h: training checkpoints in HDF5, written and read in parallel, independent of the
 * number of workers.
 *
 * File: <output_dir>/checkpoint-<step>.h5, written as checkpoint-<step>.h5.tmp by every rank of
 * the communicator (parallel HDF5, MPI-IO), then, after all ranks closed it, rank 0 hashes every
 * dataset, marks the file complete, fsyncs it and renames it into place. A reader never sees a
 * half-written checkpoint under the final name; a job killed while writing leaves the previous
 * checkpoint intact (and a stale .tmp that the next save of that step overwrites).
 *
 * Layout (format_version 1; every group and dataset has a `description` attribute, every
 * /state attribute X has a companion X_description, so `h5dump -A` explains itself):
 *
 *   /lora/<param name>                         float32 [rows, cols]  the LoRA weights
 *   /optim/<param name>/master                 float32 [rows, cols]  AdamW's fp32 master copy
 *   /optim/<param name>/exp_avg                float32 [rows, cols]  first moment
 *   /optim/<param name>/exp_avg_sq             float32 [rows, cols]  second moment
 *   /state (group attributes)
 *       format ("rubric-checkpoint"), format_version, complete (1 once renamed into place)
 *       step, epoch, data_cursor, total_steps      training position (see ckpt_meta)
 *       loss, lr                                   of the last step
 *       seed, rng_state[n]                         random state
 *       sched_kind, base_lr, warmup_steps          learning-rate schedule
 *       config_yaml                                the resolved config, as YAML text
 *       base_model, base_model_hash                base model folder and xxHash of config.json
 *       world_size, zero_stage                     the run that wrote it (informational)
 *       n_params, n_elements, has_optimizer_state
 *   every dataset also carries `xxh64` (uint64, of its float32 bytes in row-major order),
 *   checked by ckpt_verify.
 *
 * <param name> is the PEFT name (base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight).
 * The parameters are slices of one flat buffer; each rank writes and reads one contiguous flat
 * range [begin, begin + len) of it (its ZeRO partition), selected in each dataset it touches by
 * hyperslabs. So a checkpoint written by N workers is read back by M workers, each reading its
 * new partition: resume re-shards.
 */
#ifndef RUBRIC_CKPT_H
#define RUBRIC_CKPT_H

#include <mpi.h>
#include <stdint.h>

#define CKPT_FORMAT_VERSION 1
#define CKPT_MAX_RNG 8

/* One trainable tensor: row-major [rows, cols] at `offset` elements into the flat buffer. */
typedef struct {
    char *name;
    int64_t offset;
    int64_t rows, cols;
} ckpt_param;

/* The run's state besides the tensors. Strings are owned by the struct (ckpt_meta_free). */
typedef struct {
    int64_t step;            /* optimizer steps done */
    int64_t epoch;           /* 0-based epoch the next step belongs to */
    int64_t data_cursor;     /* optimizer steps of that epoch already done */
    int64_t total_steps;     /* of the whole run */
    double loss;             /* loss of the last step */
    double lr;               /* learning rate of the last step */
    uint64_t seed;
    int n_rng;
    uint64_t rng_state[CKPT_MAX_RNG];
    char *sched_kind;        /* "cosine", "linear", "constant" */
    double base_lr;
    int64_t warmup_steps;
    char *config_yaml;
    char *base_model;
    uint64_t base_model_hash;
    int world_size;          /* workers */
    int zero_stage;
    int n_scores;            /* scores per row the model was trained to answer (0: free text,
                              * or a file from before this attribute) */
    int has_optimizer_state; /* set by ckpt_load / ckpt_read_meta */
    int64_t n_elements;      /* set by ckpt_load / ckpt_read_meta */
} ckpt_meta;

void ckpt_meta_free(ckpt_meta *m);

/* The flat range this rank writes or reads. len may be 0 (the coordinator). Pointers are
 * [len] each; master/exp_avg/exp_avg_sq NULL when the rank has no optimizer state. */
typedef struct {
    int64_t begin, len;
    float *lora;
    float *master, *exp_avg, *exp_avg_sq;
} ckpt_slice;

/* Copy root's parameter table to every rank of comm (collective). On non-root ranks *params
 * and *n are outputs (free with ckpt_params_free). */
int ckpt_params_bcast(MPI_Comm comm, int root, ckpt_param **params, int *n);
void ckpt_params_free(ckpt_param *params, int n);

/*
 * Write <output_dir>/checkpoint-<meta->step>.h5 (collective over comm). `meta` is significant on
 * rank 0 only; every rank passes the same parameter table and its own slice. with_optim: write
 * /optim (every rank with len > 0 must then have master/exp_avg/exp_avg_sq). save_total_limit
 * > 0: rank 0 then removes the oldest checkpoint-*.h5 beyond that many. *path_out (optional,
 * every rank) is the final path. Returns 0 or RB_EXIT_RUNTIME on every rank alike.
 */
int ckpt_save(MPI_Comm comm, const char *output_dir, const ckpt_meta *meta,
              const ckpt_param *params, int n_params, const ckpt_slice *slice, int with_optim,
              int save_total_limit, char **path_out);

/* Whether path holds an HDF5 superblock signature (at 0 or after a user block). */
int ckpt_file_is_hdf5(const char *path);

/* Before opening an HDF5 file: 0 for a readable one, else RB_EXIT_INPUT with "PATH: no such
 * file", "PATH is a directory, not WHAT", "PATH is not a regular file, not WHAT" (a FIFO is
 * never opened), "PATH: cannot open: ..." or "PATH is not WHAT (not an HDF5 file)", WHAT the
 * caller's words for what it reads. */
int ckpt_check_h5_file(const char *path, const char *what);
/* ckpt_check_h5_file for a checkpoint (WHAT "a checkpoint"); ckpt_verify and ckpt_read_meta
 * start with it. */
int ckpt_check_file(const char *path);

/* Serial, whole-file check: ckpt_check_file, then opens, format and version, complete mark,
 * every dataset's hash.
 * Returns 0 or RB_EXIT_INPUT with a message naming the file and what is wrong; only a damaged
 * checkpoint (truncated, incomplete, a hash that does not match) adds "delete it or resume
 * from an older checkpoint". */
int ckpt_verify(const char *path);

/* Read /state (serial). */
int ckpt_read_meta(const char *path, ckpt_meta *meta);

/* The newest checkpoint-*.h5 in dir that passes ckpt_verify (warning about each one that does
 * not). Returns 0 with *path set, or RB_EXIT_INPUT when there is none. */
int ckpt_find_latest(const char *dir, char **path);

/*
 * Load (collective over comm): rank 0 verifies the whole file first, then every rank checks the
 * table (every parameter present with its shape, no extra one) and the base model hash
 * (expect_hash 0: not checked), and reads its slice; with_optim requires /optim. Nothing is
 * written into the slice unless everything checks out. meta (every rank) gets /state.
 */
int ckpt_load(MPI_Comm comm, const char *path, const ckpt_param *params, int n_params,
              uint64_t expect_hash, const ckpt_slice *slice, int with_optim, ckpt_meta *meta);

/* Print a checkpoint readably (rubric inspect): state, config, parameters with shape and norm,
 * optimizer state present. */
int ckpt_print(const char *path, int show_config);

#endif
