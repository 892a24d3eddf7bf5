/*
 * cuda_info.h: what the GPU check programs (tests/gpu) ask the CUDA backend, callable from C.
 * Only built when RUBRIC_HAVE_CUDA.
 */
#ifndef RUBRIC_CUDA_INFO_H
#define RUBRIC_CUDA_INFO_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The device the backend uses: its name and compute capability. Returns 0 when there is no
 * usable GPU (the same test as kernel_ops_cuda), 1 otherwise. */
int cuda_info_device(char *name, size_t name_len, int *cc_major, int *cc_minor);

/* The current device's UUID as 32 hex digits into buf (>= 33 bytes); 0 when there is no usable
 * GPU, 1 otherwise. Two processes with the same UUID share one physical GPU. */
int cuda_info_device_uuid(char *buf, size_t len);

/* The most device memory in use (total - free, so the CUDA context and cuBLAS workspace
 * count) seen at any allocation by the backend so far, in bytes. */
size_t cuda_info_peak_bytes(void);

#ifdef __cplusplus
}
#endif

#endif
