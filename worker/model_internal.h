/*
 * model_internal.h: the model's private structures, shared by worker/model_*.c only.
 */
#ifndef RUBRIC_MODEL_INTERNAL_H
#define RUBRIC_MODEL_INTERNAL_H

#include "lora.h"
#include "model.h"

/* A frozen linear layer y = x W^T (+ b), W [out, in], fp32 or NF4, with an optional LoRA. */
typedef struct {
    int in, out;
    float *w;                /* fp32 weight in backend memory, or NULL when NF4 */
    kernel_nf4_weight nf4;   /* NF4 weight (packed/absmax in backend memory) when w == NULL */
    float *bias;             /* [out] or NULL */
    int64_t lora_a_off;      /* offset of lora_A in the flat buffer, or -1: no adapter */
    int64_t lora_b_off;
} model_linear;

typedef struct {
    float *attn_norm, *mlp_norm;  /* [hidden] */
    float *q_norm, *k_norm;       /* [head_dim] (qwen3) or NULL */
    model_linear lin[LORA_MOD_COUNT];
} model_layer;

/* Activations of one layer for T tokens (saved for the backward or scratch). */
typedef struct {
    float *xn1, *rstd1;          /* input RMSNorm */
    float *q_lin, *rstd_q, *q;   /* projection, per-head norm rstd, after norm + RoPE */
    float *k_lin, *rstd_k, *k;
    float *v;
    float *attn, *lse;           /* attention output, per-row logsumexp [T, heads] */
    float *x_mid;                /* residual after attention */
    float *xn2, *rstd2;          /* MLP RMSNorm */
    float *gate, *up, *h;        /* [T, intermediate] */
    float *u[LORA_MOD_COUNT];    /* LoRA x.A^T [T, r] */
    float *tmp;                  /* [T, hidden] o_proj / down_proj output */
} layer_acts;

/* Gradient scratch of the backward pass for T tokens. */
typedef struct {
    float *dres;                 /* [T, hidden] gradient of the residual stream */
    float *dxn;                  /* [T, hidden] */
    float *dattn, *dq;           /* [T, heads * head_dim] */
    float *dk, *dv;              /* [T, kv_heads * head_dim] */
    float *dh, *dgate, *dup;     /* [T, intermediate] */
    float *lora_tmp;             /* [T, max(r, widest input)] */
} grad_scratch;

/* Per-batch inputs in backend memory. */
typedef struct {
    uint32_t *tokens;
    int32_t *positions;
    int32_t *cu_seqlens;
    int32_t *sel_rows;           /* supervised rows */
    int32_t *sel_targets;
    int cap_tokens, cap_segs;
} batch_dev;

struct model {
    model_config cfg;
    model_options opt;
    const kernel_ops *ops;
    char *dir;

    /* frozen base */
    float *embed;                /* [vocab, hidden] */
    float *lm_head;              /* == embed when tied */
    float *final_norm;
    model_layer *layers;
    int64_t base_bytes;

    /* trainable */
    float *params, *grads;
    int64_t n_params, n_padded;
    lora_param *table;
    int n_table;
    float lora_scale;
    uint64_t fwd_calls;          /* dropout masks differ per training forward */

    /* workspace for T tokens */
    int cap_tokens;
    float **xs;                  /* [layers + 1] residual stream at each layer input */
    layer_acts *acts;            /* [layers] or [1] with checkpointing / no grad */
    int n_acts;
    grad_scratch g;
    float *wtile;                /* NF4 dequantized tile */
    int64_t wtile_floats;
    batch_dev bd;
    float *sel_h, *sel_hn, *sel_rstd, *sel_dh; /* supervised rows [n_sel, hidden] */
    int cap_sel;

    /* inference workspace (KV-cache path) */
    int infer_cap;
    layer_acts infer_acts;
    float *infer_x[2];
    uint32_t *infer_tokens;
    int32_t *infer_pos, *infer_cu, *infer_last;
    float **infer_kv_rows;       /* backend [2 * layers * rows]: the caches' k, then v */
    float *infer_h, *infer_hn, *infer_rstd, *infer_logits;
    int infer_cap_rows;
    /* selected logits (model_extend_batch_sel): the LM head's rows at sel_ids, and per pass
     * the rows that want only those (their index, hidden states and logits) */
    uint32_t *sel_ids;           /* host [n_sel_ids] */
    int n_sel_ids;
    float *head_sel;             /* backend [n_sel_ids, hidden] */
    int32_t *infer_part;         /* backend [infer_cap_rows] */
    float *infer_part_hn, *infer_part_logits; /* backend [rows, hidden], [rows, n_sel_ids] */
};

/* model_linear.c */
void linear_forward(model *m, const model_linear *lin, const float *x, int T, float *y,
                    float *u, float p, uint64_t seed);
void linear_backward(model *m, const model_linear *lin, const float *dy, const float *x,
                     const float *u, int T, float *dx, int dx_accumulate, float p,
                     uint64_t seed);

/* model.c */
void model_acts_alloc(model *m, layer_acts *a, int T);
void model_acts_free(model *m, layer_acts *a);
int model_reserve(model *m, int T, int n_segs, int n_sel);

/* The attention inputs of one layer call: packed training batch or a KV cache. */
typedef struct {
    int T;
    const int32_t *positions;    /* backend [T] */
    const int32_t *cu_q, *cu_k;  /* backend */
    int n_seg, max_q;
    /* inference: per-row caches (k/v rows written at each row's length) */
    model_kv_cache **caches;
    int n_rows;
    const int32_t *rows_cu;      /* backend [n_rows + 1]: each row's first query */
    const int32_t *rows_klen;    /* backend [n_rows]: each row's keys, len + cnt */
    float *const *rows_k;        /* backend [layers * n_rows]: layer l's cache of row r at */
    float *const *rows_v;        /*   l * n_rows + r (attention_fwd_rows, append_rows) */
    int max_count;               /* the most tokens a row appends */
    int train;                   /* dropout on */
    int kv_only;                 /* inference: only cache the keys and values (x_out unset) */
} layer_io;

void layer_forward(model *m, int l, const float *x_in, float *x_out, layer_acts *a,
                   const layer_io *io);

/* model_infer.c */
void model_infer_release(model *m);
struct model_kv_cache {
    model *m;
    int len, cap;
    float **k, **v;              /* [layers] each [cap, kv_heads * head_dim] backend */
};

#endif
