/* ops.c: choosing the kernel backend by name. */
#include <string.h>

#include "ops.h"
#include "rubric_build.h"
#include "util.h"


const kernel_ops *kernel_ops_select(const char *name)
{
    if (!name || strcmp(name, "cpu") == 0)
        return kernel_ops_cpu();
    if (strcmp(name, "cpu-staged") == 0)
        return kernel_ops_cpu_staged();
#if RUBRIC_HAVE_CUDA
    if (strcmp(name, "cuda") == 0 || strcmp(name, "auto") == 0) {
        const kernel_ops *ops = kernel_ops_cuda();
        if (ops)
            return ops;
        if (strcmp(name, "auto") == 0)
            return kernel_ops_cpu();
        err_set(RB_EXIT_INPUT, "backend 'cuda': no usable GPU answered; use backend 'cpu'");
        return NULL;
    }
#else
    if (strcmp(name, "auto") == 0)
        return kernel_ops_cpu();
    if (strcmp(name, "cuda") == 0) {
        err_set(RB_EXIT_INPUT, "backend 'cuda': this rubric was built without CUDA; use 'cpu'");
        return NULL;
    }
#endif
    err_set(RB_EXIT_INPUT, "unknown backend '%s': expected cpu, cuda or auto (or, for tests, "
            "cpu-staged)", name);
    return NULL;
}

const char *kernel_gemm_precision_set(const kernel_ops *ops, int precision)
{
#if RUBRIC_HAVE_CUDA
    if (ops && strcmp(ops->name, "cuda") == 0)
        return kernel_cuda_gemm_precision(precision);
#else
    (void)ops;
    (void)precision;
#endif
    return "fp32";
}

int kernel_backend_name_check(const char *name, const char *what)
{
    static const char *const known[] = {"cpu", "cuda", "auto", "cpu-staged"};
    for (size_t i = 0; name && i < sizeof known / sizeof known[0]; i++)
        if (strcmp(name, known[i]) == 0)
            return 0;
    return err_set(RB_EXIT_INPUT, "%s: unknown backend '%s': expected cpu, cuda or auto (or, for "
                   "tests, cpu-staged)", what,
                   name ? name : "");
}

const kernel_ops *kernel_ops_select_local(const char *name, int local_index, int *gpus_seen)
{
    if (gpus_seen)
        *gpus_seen = 0;
#if RUBRIC_HAVE_CUDA
    if (name && (strcmp(name, "cuda") == 0 || strcmp(name, "auto") == 0)) {
        int n = kernel_cuda_devices(-1);
        if (n > 0)
            kernel_cuda_devices(local_index % n);
        if (gpus_seen)
            *gpus_seen = n;
    }
#else
    (void)local_index;
#endif
    return kernel_ops_select(name);
}
