/* ops.c: choosing the kernel backend by name. */
#include <string.h>

#include "ops.h"
#include "rubric_build.h"
#include "util.h"


const kernel_ops *kernel_ops_select(const char *name)
{
    if (!name || strcmp(name, "cpu") == 0)
        return kernel_ops_cpu();
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
    err_set(RB_EXIT_INPUT, "unknown backend '%s': expected cpu, cuda or auto", name);
    return NULL;
}
