/*
 * safetensors.h: reading and writing Hugging Face safetensors files.
 *
 * Format: 8-byte little-endian header length N, N bytes of JSON ({"name": {"dtype", "shape",
 * "data_offsets": [begin, end]}, "__metadata__": {...}}), then the data. A header that lies
 * (offsets past the end, overlapping tensors, a size that does not match dtype x shape, an
 * unknown dtype, a huge header length, non-string metadata) is rejected with an error naming
 * file and tensor. Gaps between tensors are allowed.
 */
#ifndef RUBRIC_SAFETENSORS_H
#define RUBRIC_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

typedef enum { ST_F32, ST_F16, ST_BF16, ST_F64, ST_I64, ST_I32, ST_I16, ST_I8, ST_U8, ST_BOOL }
    st_dtype;

#define ST_MAX_DIMS 8

typedef struct {
    char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    uint64_t begin, end; /* byte offsets into the data section */
    int file;            /* index into the set's files */
} st_tensor;

/* One file, or a sharded set (model.safetensors.index.json), opened read-only (mmap). */
typedef struct safetensors_set safetensors_set;

/* Open <dir>/model.safetensors, else the shards named by <dir>/model.safetensors.index.json
 * (the order transformers looks in). Each shard is mapped once; a tensor named by the index
 * but missing from its shard, or a name in two shards, is an error. */
int safetensors_open_dir(safetensors_set **out, const char *dir);
/* Open one file. */
int safetensors_open_file(safetensors_set **out, const char *path);
void safetensors_close(safetensors_set *s);

const st_tensor *safetensors_find(const safetensors_set *s, const char *name);
int safetensors_count(const safetensors_set *s);
const st_tensor *safetensors_at(const safetensors_set *s, int i);
const char *safetensors_file_of(const safetensors_set *s, const st_tensor *t);
/* Raw bytes of a tensor (points into the mapping, valid until safetensors_close; not
 * necessarily aligned for its dtype: copy with memcpy, or use safetensors_read_f32). */
const void *safetensors_data(const safetensors_set *s, const st_tensor *t);

/* Read a tensor converted to fp32. When ndim > 0 the shape must equal shape[0..ndim), else a
 * clear error naming the tensor, the file, the expected and the found shape. A missing tensor
 * is an error naming it and the folder. */
int safetensors_read_f32(const safetensors_set *s, const char *name, int ndim,
                         const int64_t *shape, float *out);

size_t st_dtype_size(st_dtype d);
/* "F32", "BF16", ... as the format spells them. */
const char *st_dtype_name(st_dtype d);
/* Number of elements (1 for a scalar). */
int64_t st_tensor_numel(const st_tensor *t);

/* A tensor to write: data in `dtype` already. */
typedef struct {
    const char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const void *data;
} st_write_tensor;

/* Write one file atomically (temp name, fsync, rename). metadata: flat string->string pairs as
 * a NULL-terminated array {"k1","v1","k2","v2",NULL}, or NULL. */
int safetensors_write(const char *path, const st_write_tensor *tensors, int n,
                      const char *const *metadata);
/* Write a model folder's weights: <dir>/model.safetensors, or, when the tensors hold more than
 * max_shard_bytes (0: no limit), shards model-0000K-of-0000N.safetensors (tensors kept in
 * order, a shard closed before it would pass the limit) plus model.safetensors.index.json,
 * as transformers names them. The other layout's leftover file is removed. */
int safetensors_write_dir(const char *dir, const st_write_tensor *tensors, int n,
                          const char *const *metadata, uint64_t max_shard_bytes);

/* fp32 <-> bf16: round to nearest even, NaN -> 0x7fc0 (torch's scalar choice).
 * fp32 <-> fp16: round to nearest even, subnormals, overflow to inf, NaN kept NaN with sign and
 * top payload bits. Both bit-exact with torch (tests/test_safetensors.c). */
uint16_t f32_to_bf16(float f);
float bf16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);
float f16_to_f32(uint16_t h);

#endif
