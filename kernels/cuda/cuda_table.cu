/*
 * cuda_table.cu: the CUDA backend's start-up (is there a usable GPU?), its memory, the cuBLAS
 * GEMM, scratch buffers and the operation table.
 *
 * GEMM: cublasGemmEx on fp32 matrices. The compute type is the model config's
 * (kernel_gemm_precision_set: `bf16: true|auto` bf16, else `tf32: true` tf32, else fp32), or
 * RUBRIC_CUDA_GEMM's in the environment, which overrides it: fp32 (fp32 FMA accumulation, no
 * tensor cores: the table's fp32 contract; also before any model chose), tf32 (tensor cores
 * on inputs rounded to a 10-bit mantissa) or bf16 (tensor cores on inputs rounded to bf16, the
 * rate of the card's bf16 peak), both accumulating in fp32. RUBRIC_CUDA_TF32=1, the older
 * switch, still means tf32.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_common.h"
#include "cuda_info.h"

/* ---- start-up ---- */

static cublasHandle_t cuda_handle;
static cublasComputeType_t cuda_gemm_compute = CUBLAS_COMPUTE_32F;
static const char *const gemm_names[] = {"fp32", "tf32", "bf16"}; /* enum kernel_gemm_precision */
static int gemm_now = KERNEL_GEMM_FP32;
static int gemm_env_fixed;   /* RUBRIC_CUDA_GEMM chose it: requests do not change it */
static int gemm_logged = -1; /* the precision last announced */

static int gemm_precision_by_name(const char *name)
{
    for (int i = 0; i < 3; i++)
        if (strcmp(name, gemm_names[i]) == 0)
            return i;
    return -1;
}

static void gemm_set(int p)
{
    gemm_now = p;
    cuda_gemm_compute = p == KERNEL_GEMM_BF16   ? CUBLAS_COMPUTE_32F_FAST_16BF
                        : p == KERNEL_GEMM_TF32 ? CUBLAS_COMPUTE_32F_FAST_TF32
                                                : CUBLAS_COMPUTE_32F;
}
static const kernel_ops *cuda_table_ptr;  /* NULL when no usable GPU */
static pthread_once_t cuda_once = PTHREAD_ONCE_INIT;
static size_t cuda_peak_used;

extern "C" const char *cuda_cublas_status_name(int status)
{
    return cublasGetStatusName((cublasStatus_t)status);
}

cublasHandle_t cuda_blas(void) { return cuda_handle; }

int cuda_gemm_precision_now(void) { return gemm_now; }

static kernel_ops cuda_ops_table;
static void cuda_table_fill(kernel_ops *t);

/* No GPU, no driver, or cuBLAS cannot start: one info line, and the caller uses the CPU. */
static void cuda_start(void)
{
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count == 0) {
        /* cudaErrorInsufficientDriver is also what a machine without the driver gets */
        log_msg(CUDA_LOG_INFO, "CUDA backend: no usable GPU (%s); the CPU backend runs instead",
                e == cudaErrorInsufficientDriver
                    ? "no NVIDIA driver, or one older than this build's CUDA"
                : e != cudaSuccess ? cudaGetErrorString(e)
                                   : "no device");
        cudaGetLastError(); /* clear the sticky error for later callers */
        return;
    }
    int dev = 0;
    cudaDeviceProp prop;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaGetDeviceProperties(&prop, dev) != cudaSuccess) {
        log_msg(CUDA_LOG_INFO, "CUDA backend: the GPU did not answer (%s); the CPU backend "
                "runs instead", cudaGetErrorString(cudaGetLastError()));
        return;
    }
    cublasStatus_t st = cublasCreate(&cuda_handle);
    if (st != CUBLAS_STATUS_SUCCESS) {
        log_msg(CUDA_LOG_INFO, "CUDA backend: cublasCreate failed (%s); the CPU backend runs "
                "instead", cublasGetStatusName(st));
        return;
    }
    /* RUBRIC_CUDA_GEMM (or the older RUBRIC_CUDA_TF32=1) fixes the GEMMs' compute type for
     * the process; without it the model's config chooses (kernel_cuda_gemm_precision) */
    const char *mode = getenv("RUBRIC_CUDA_GEMM"), *tf32 = getenv("RUBRIC_CUDA_TF32");
    if ((!mode || !*mode) && tf32 && strcmp(tf32, "1") == 0)
        mode = "tf32";
    if (mode && *mode) {
        int p = gemm_precision_by_name(mode);
        if (p < 0) {
            log_msg(CUDA_LOG_WARN, "RUBRIC_CUDA_GEMM=%s is none of fp32, tf32, bf16: ignored",
                    mode);
        } else {
            gemm_env_fixed = 1;
            gemm_set(p);
        }
    }
    CUBLAS_CHECK(cublasSetMathMode(cuda_handle, CUBLAS_DEFAULT_MATH));
    CUBLAS_CHECK(cublasSetStream(cuda_handle, 0));
    log_msg(CUDA_LOG_INFO, "CUDA backend: device %d of %d, %s (sm_%d%d, %.1f GiB)%s%s%s", dev,
            count, prop.name, prop.major, prop.minor, (double)prop.totalGlobalMem / (1 << 30),
            gemm_env_fixed ? ", GEMMs in " : "", gemm_env_fixed ? gemm_names[gemm_now] : "",
            gemm_env_fixed ? " (RUBRIC_CUDA_GEMM)" : "");
    cuda_table_fill(&cuda_ops_table);
    cuda_table_ptr = &cuda_ops_table;
}

extern "C" const char *kernel_cuda_gemm_precision(int precision)
{
    if (precision < KERNEL_GEMM_FP32 || precision > KERNEL_GEMM_BF16)
        precision = KERNEL_GEMM_FP32;
    if (!gemm_env_fixed)
        gemm_set(precision);
    if (gemm_logged != gemm_now) {
        gemm_logged = gemm_now;
        log_msg(CUDA_LOG_INFO, "CUDA backend: GEMMs in %s%s", gemm_names[gemm_now],
                gemm_env_fixed ? " (RUBRIC_CUDA_GEMM)" : " (the config's bf16 / tf32)");
    }
    return gemm_names[gemm_now];
}

extern "C" int kernel_cuda_devices(int device)
{
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
        cudaGetLastError(); /* no driver or no device: not an error for the caller */
        return 0;
    }
    if (device >= 0 && device < count && cudaSetDevice(device) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return count;
}

extern "C" const kernel_ops *kernel_ops_cuda(void)
{
    pthread_once(&cuda_once, cuda_start);
    return cuda_table_ptr;
}

extern "C" int cuda_info_device(char *name, size_t name_len, int *cc_major, int *cc_minor)
{
    if (!kernel_ops_cuda())
        return 0;
    int dev = 0;
    cudaDeviceProp prop;
    CUDA_CHECK(cudaGetDevice(&dev));
    CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
    if (name && name_len) {
        strncpy(name, prop.name, name_len - 1);
        name[name_len - 1] = '\0';
    }
    *cc_major = prop.major;
    *cc_minor = prop.minor;
    return 1;
}

extern "C" int cuda_info_device_uuid(char *buf, size_t len)
{
    if (!kernel_ops_cuda() || len < 33)
        return 0;
    int dev = 0;
    cudaDeviceProp prop;
    CUDA_CHECK(cudaGetDevice(&dev));
    CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
    for (int i = 0; i < 16; i++)
        snprintf(buf + 2 * i, 3, "%02x", (unsigned char)prop.uuid.bytes[i]);
    return 1;
}

extern "C" size_t cuda_info_peak_bytes(void) { return cuda_peak_used; }

/* ---- memory ---- */

static void cuda_note_usage(void)
{
    size_t free_b = 0, total_b = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    if (total_b - free_b > cuda_peak_used)
        cuda_peak_used = total_b - free_b;
}

void *cuda_alloc(size_t bytes)
{
    void *p = NULL;
    size_t n = bytes ? (bytes + 255) / 256 * 256 : 256;
    cudaError_t e = cudaMalloc(&p, n);
    if (e != cudaSuccess) {
        size_t free_b = 0, total_b = 0;
        cudaGetLastError();
        cudaMemGetInfo(&free_b, &total_b);
        rb_die(CUDA_EXIT_RUNTIME, "out of GPU memory allocating %zu bytes (%zu MiB free of %zu): "
               "%s; lower micro_batch_size or sequence_len, or enable gradient checkpointing",
               bytes, free_b >> 20, total_b >> 20, cudaGetErrorString(e));
    }
    CUDA_CHECK(cudaMemset(p, 0, n));
    cuda_note_usage();
    return p;
}

void cuda_free(void *p)
{
    if (p)
        CUDA_CHECK(cudaFree(p));
}

void cuda_upload(void *dst, const void *src, size_t bytes)
{
    if (bytes)
        CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
}

void cuda_download(void *dst, const void *src, size_t bytes)
{
    if (bytes)
        CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
}

/* Overlapping ranges are allowed (memmove, as on the CPU): they go through a scratch buffer,
 * since cudaMemcpy's result is undefined for them. */
void cuda_copy(void *dst, const void *src, size_t bytes)
{
    if (!bytes || dst == src)
        return;
    const char *d = (const char *)dst, *s = (const char *)src;
    if (d < s + bytes && s < d + bytes) {
        void *tmp = cuda_scratch(CUDA_SCRATCH_COPY, bytes);
        CUDA_CHECK(cudaMemcpyAsync(tmp, src, bytes, cudaMemcpyDeviceToDevice, 0));
        src = tmp;
    }
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, 0));
}

void cuda_memset0(void *p, size_t bytes)
{
    if (bytes)
        CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, 0));
}

void cuda_sync(void) { CUDA_CHECK(cudaDeviceSynchronize()); }

void *cuda_scratch(int slot, size_t bytes)
{
    static void *buf[CUDA_SCRATCH_N];
    static size_t cap[CUDA_SCRATCH_N];
    if (slot < 0 || slot >= CUDA_SCRATCH_N)
        rb_die(CUDA_EXIT_RUNTIME, "cuda_scratch: slot %d out of range", slot);
    if (bytes > cap[slot]) {
        cuda_free(buf[slot]);
        buf[slot] = cuda_alloc(bytes);
        cap[slot] = bytes;
    }
    return buf[slot];
}

/* ---- GEMM ---- */

/* C = beta * C over an m x n row-major block (the k == 0 case). */
__global__ void gemm_scale_kernel(float *c, int ldc, int m, int n, float beta)
{
    int64_t total = (int64_t)m * n;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        int64_t r = i / n, col = i % n;
        float *e = c + r * ldc + col;
        *e = beta == 0.0f ? 0.0f : beta * *e;
    }
}

/* Row-major C[m,n] = op(A) op(B) is column-major C^T[n,m] = op(B)^T op(A)^T, and a row-major
 * matrix read column-major is its transpose: so cuBLAS gets B first, then A, with the same
 * transpose flags and leading dimensions, and n, m swapped. */
void cuda_gemm(int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a,
               int lda, const float *b, int ldb, float beta, float *c, int ldc)
{
    if (m <= 0 || n <= 0)
        return;
    if (k <= 0) {
        gemm_scale_kernel<<<cuda_grid_for((int64_t)m * n), CUDA_THREADS>>>(c, ldc, m, n, beta);
        CUDA_CHECK_LAUNCH("gemm_scale_kernel");
        return;
    }
    CUBLAS_CHECK(cublasGemmEx(cuda_handle, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                              trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, n, m, k, &alpha, b,
                              CUDA_R_32F, ldb, a, CUDA_R_32F, lda, &beta, c, CUDA_R_32F, ldc,
                              cuda_gemm_compute, CUBLAS_GEMM_DEFAULT));
}

/* ---- the table ---- */

/* Filled field by field (C++ has no designated initializers before C++20). */
static void cuda_table_fill(kernel_ops *t)
{
    memset(t, 0, sizeof *t);
    t->name = "cuda";
    t->alloc = cuda_alloc;
    t->free = cuda_free;
    t->upload = cuda_upload;
    t->download = cuda_download;
    t->copy = cuda_copy;
    t->memset0 = cuda_memset0;
    t->sync = cuda_sync;
    t->gemm = cuda_gemm;
    t->axpy = cuda_axpy;
    t->scale = cuda_scale;
    t->add_bias = cuda_add_bias;
    t->sumsq = cuda_sumsq;
    t->embedding = cuda_embedding;
    t->gather_rows = cuda_gather_rows;
    t->scatter_add_rows = cuda_scatter_add_rows;
    t->append_rows = cuda_append_rows;
    t->rmsnorm_fwd = cuda_rmsnorm_fwd;
    t->rmsnorm_bwd = cuda_rmsnorm_bwd;
    t->rope_fwd = cuda_rope_fwd;
    t->rope_bwd = cuda_rope_bwd;
    t->attention_fwd = cuda_attention_fwd;
    t->attention_fwd_rows = cuda_attention_fwd_rows;
    t->attention_bwd = cuda_attention_bwd;
    t->swiglu_fwd = cuda_swiglu_fwd;
    t->swiglu_bwd = cuda_swiglu_bwd;
    t->lm_head_xent = cuda_lm_head_xent;
    t->lora_fwd = cuda_lora_fwd;
    t->lora_bwd = cuda_lora_bwd;
    t->dropout = cuda_dropout;
    t->add = cuda_add;
    t->nf4_dequant_rows = cuda_nf4_dequant_rows;
    t->adamw = cuda_adamw;
    t->host_memory = 0; /* device memory: callers stage through upload/download */
}
