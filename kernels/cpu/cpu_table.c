/* cpu_table.c: the CPU backend's operation table. */
#include "cpu_blas.h"
#include "cpu_ops.h"

static const kernel_ops cpu_ops = {
    .name = "cpu",
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_upload,
    .download = cpu_download,
    .copy = cpu_copy,
    .memset0 = cpu_memset0,
    .sync = cpu_sync,
    .gemm = cpu_gemm,
    .axpy = cpu_axpy,
    .scale = cpu_scale,
    .add_bias = cpu_add_bias,
    .sumsq = cpu_sumsq,
    .embedding = cpu_embedding,
    .gather_rows = cpu_gather_rows,
    .scatter_add_rows = cpu_scatter_add_rows,
    .append_rows = cpu_append_rows,
    .rmsnorm_fwd = cpu_rmsnorm_fwd,
    .rmsnorm_bwd = cpu_rmsnorm_bwd,
    .rope_fwd = cpu_rope_fwd,
    .rope_bwd = cpu_rope_bwd,
    .attention_fwd = cpu_attention_fwd,
    .attention_fwd_rows = cpu_attention_fwd_rows,
    .attention_bwd = cpu_attention_bwd,
    .swiglu_fwd = cpu_swiglu_fwd,
    .swiglu_bwd = cpu_swiglu_bwd,
    .lm_head_xent = cpu_lm_head_xent,
    .lora_fwd = cpu_lora_fwd,
    .lora_bwd = cpu_lora_bwd,
    .dropout = cpu_dropout,
    .add = cpu_add,
    .nf4_dequant_rows = cpu_nf4_dequant_rows,
    .adamw = cpu_adamw,
    .host_memory = 1,
};

const kernel_ops *kernel_ops_cpu(void)
{
    cpu_blas_check();
    return &cpu_ops;
}
