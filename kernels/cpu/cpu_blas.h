/*
 * cpu_blas.h: the two OpenBLAS entry points the CPU backend uses, declared here instead of
 * including <cblas.h>: OpenBLAS's openblas_config.h includes <sched.h>, which the -Iworker
 * include path resolves to worker/sched.h (the LR schedules), breaking cpu_set_t.
 * The enum values are CBLAS's (cblas.h: CblasRowMajor 101, CblasNoTrans 111, CblasTrans 112).
 */
#ifndef RUBRIC_CPU_BLAS_H
#define RUBRIC_CPU_BLAS_H

enum { CPU_BLAS_ROW_MAJOR = 101, CPU_BLAS_NO_TRANS = 111, CPU_BLAS_TRANS = 112 };

void cblas_sgemm(int order, int trans_a, int trans_b, int m, int n, int k, float alpha,
                 const float *a, int lda, const float *b, int ldb, float beta, float *c,
                 int ldc);
void openblas_set_num_threads(int n);
int openblas_get_num_threads(void);
char *openblas_get_corename(void);

/* Warn once when OpenBLAS chose a kernel far below what the CPU can run (it takes some recent
 * Xeons for "Prescott", SSE3 only: 4-5x slower). OPENBLAS_CORETYPE fixes it; it is read when
 * the library loads, so it must be in the environment before rubric starts. */
void cpu_blas_check(void);

#define CblasRowMajor CPU_BLAS_ROW_MAJOR
#define CblasNoTrans CPU_BLAS_NO_TRANS
#define CblasTrans CPU_BLAS_TRANS

#endif
