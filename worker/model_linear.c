/*
 * model_linear.c: a frozen linear layer (fp32 or NF4 weight, optional bias) plus its LoRA
 * branch, forward and backward, through the kernel table.
 *
 * NF4 weights are dequantized one tile of output rows at a time into a small buffer, so the
 * fp32 weight never exists whole.
 */
#include "model_internal.h"
#include "util.h"

/* Floats of one dequantized NF4 tile (rows of W). */
#define NF4_TILE_FLOATS (1 << 20)

static int tile_rows(const model_linear *lin)
{
    return (int)RB_MAX(1, RB_MIN((int64_t)lin->out, NF4_TILE_FLOATS / lin->in));
}

static float *wtile(model *m)
{
    if (!m->wtile) {
        m->wtile_floats = NF4_TILE_FLOATS + 65536;
        m->wtile = m->ops->alloc(sizeof(float) * (size_t)m->wtile_floats);
    }
    return m->wtile;
}

/* y [T, out] = x W^T (+ bias) + LoRA */
void linear_forward(model *m, const model_linear *lin, const float *x, int T, float *y,
                    float *u, float p, uint64_t seed)
{
    const kernel_ops *ops = m->ops;

    /* the base projection, whole or tile by tile */
    if (lin->w) {
        ops->gemm(0, 1, T, lin->out, lin->in, 1.0f, x, lin->in, lin->w, lin->in, 0.0f, y,
                  lin->out);
    } else {
        float *wt = wtile(m);
        int tr = tile_rows(lin);
        for (int r0 = 0; r0 < lin->out; r0 += tr) {
            int nr = RB_MIN(tr, lin->out - r0);
            ops->nf4_dequant_rows(wt, &lin->nf4, r0, nr);
            ops->gemm(0, 1, T, nr, lin->in, 1.0f, x, lin->in, wt, lin->in, 0.0f, y + r0,
                      lin->out);
        }
    }
    if (lin->bias)
        ops->add_bias(y, lin->bias, T, lin->out);

    /* the adapter */
    if (lin->lora_a_off >= 0)
        ops->lora_fwd(y, lin->out, u, x, m->params + lin->lora_a_off,
                      m->params + lin->lora_b_off, T, lin->in, lin->out, m->opt.lora_r,
                      m->lora_scale, p, seed);
}

/* dx (= or +=) dy W + LoRA's share; LoRA grads accumulate. dx may be NULL (not needed). */
void linear_backward(model *m, const model_linear *lin, const float *dy, const float *x,
                     const float *u, int T, float *dx, int dx_accumulate, float p,
                     uint64_t seed)
{
    const kernel_ops *ops = m->ops;
    float beta = dx_accumulate ? 1.0f : 0.0f;

    /* the adapter's gradients (and its share of dx when the base part has written dx) */
    if (dx && lin->w) {
        ops->gemm(0, 0, T, lin->in, lin->out, 1.0f, dy, lin->out, lin->w, lin->in, beta, dx,
                  lin->in);
    } else if (dx) {
        float *wt = wtile(m);
        int tr = tile_rows(lin);
        for (int r0 = 0; r0 < lin->out; r0 += tr) {
            int nr = RB_MIN(tr, lin->out - r0);
            ops->nf4_dequant_rows(wt, &lin->nf4, r0, nr);
            ops->gemm(0, 0, T, lin->in, nr, 1.0f, dy + r0, lin->out, wt, lin->in,
                      r0 == 0 ? beta : 1.0f, dx, lin->in);
        }
    }
    if (lin->lora_a_off >= 0) {
        ops->lora_bwd(dx, m->grads + lin->lora_a_off, m->grads + lin->lora_b_off, dy,
                      lin->out, u, x, m->params + lin->lora_a_off, m->params + lin->lora_b_off,
                      T, lin->in, lin->out, m->opt.lora_r, m->lora_scale, p, seed,
                      m->g.lora_tmp);
    }
}
