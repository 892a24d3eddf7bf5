/*
 * safetensors.h: reading and writing Hugging Face safetensors files.
 *
 * Format: 8-byte little-endian header length N, N bytes of JSON ({"name": {"dtype", "shape",
 * "data_offsets": [begin, end]}, "__metadata__": {...}}), then the data. A header that lies
 * (offsets past the end, overlapping or unordered tensors, a size that does not match
 * dtype x shape, a huge header length) is rejected with an error naming file and tensor.
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

/* Open <dir>/model.safetensors, or the shards named by <dir>/model.safetensors.index.json. */
int safetensors_open_dir(safetensors_set **out, const char *dir);
/* Open one file. */
int safetensors_open_file(safetensors_set **out, const char *path);
void safetensors_close(safetensors_set *s);

const st_tensor *safetensors_find(const safetensors_set *s, const char *name);
int safetensors_count(const safetensors_set *s);
const st_tensor *safetensors_at(const safetensors_set *s, int i);
const char *safetensors_file_of(const safetensors_set *s, const st_tensor *t);
/* Raw bytes of a tensor (points into the mapping). */
const void *safetensors_data(const safetensors_set *s, const st_tensor *t);

/* Read a tensor converted to fp32. When ndim > 0 the shape must equal shape[0..ndim), else a
 * clear error naming the tensor, the file, the expected and the found shape. A missing tensor
 * is an error naming it and the folder. */
int safetensors_read_f32(const safetensors_set *s, const char *name, int ndim,
                         const int64_t *shape, float *out);

size_t st_dtype_size(st_dtype d);
const char *st_dtype_name(st_dtype d);

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

/* fp32 <-> bf16 (round to nearest even) and fp16. */
uint16_t f32_to_bf16(float f);
float bf16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);
float f16_to_f32(uint16_t h);

#endif
