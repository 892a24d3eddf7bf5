/*
 * model.h: a Qwen3 / Qwen2 / Llama decoder with LoRA or QLoRA adapters, forward and backward
 * on a kernel backend (kernels/ops.h), and incremental inference with a KV cache.
 *
 * Loading: <dir>/config.json (model_config_load) and <dir>/model*.safetensors (bf16, fp16 or fp32,
 * one file or sharded). Base weights are frozen: fp32, or NF4 for QLoRA (quantized at load time,
 * dequantized tile by tile inside each linear layer).
 *
 * Trainable parameters: every lora_A / lora_B lives in ONE flat fp32 buffer of n_padded
 * elements (n rounded up to options.flat_align; the padding stays zero), with a parallel flat
 * gradient buffer. A table gives each tensor's PEFT name
 * ("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"), offset, rows and cols.
 * Both buffers are backend memory (host memory on the CPU backend); ZeRO partitions cut the
 * flat buffer, and the model reads the parameters from it on every call.
 *
 * Loss convention: a forward pass returns the SUM of the token losses and the count of
 * supervised tokens; the caller divides by the count of the whole optimizer step. Backward
 * accumulates grad_scale * d(loss sum)/d(params) into the gradient buffer, so the caller passes
 * grad_scale = 1/N with N the supervised tokens of the whole step.
 *
 * Threading: one model per process; calls are not reentrant.
 */
#ifndef RUBRIC_MODEL_H
#define RUBRIC_MODEL_H

#include <stdint.h>

#include "batch.h"
#include "config.h"
#include "model_config.h"
#include "ops.h"

typedef struct {
    enum adapter_kind adapter; /* ADAPTER_LORA, ADAPTER_QLORA (NF4 base) or ADAPTER_NONE */
    int lora_r;                /* default 8 */
    double lora_alpha;         /* default 16; scale = alpha / r */
    double lora_dropout;       /* default 0; applied to the LoRA input as PEFT does */
    unsigned lora_targets;     /* enum lora_target bits; default LORA_ALL */
    int gradient_checkpointing;/* recompute each layer in the backward pass */
    uint64_t seed;             /* LoRA A init and dropout masks */
    int64_t flat_align;        /* pad the flat buffer to a multiple of this (elements); >= 1 */
    const char *backend;       /* "cpu", "cuda" or "auto" (default "cpu") */
    int gemm_precision;        /* enum kernel_gemm_precision for a GPU's GEMMs (default bf16,
                                * as the config's `bf16: auto`); the CPU computes in fp32 */
    int max_tokens;            /* hint only: the workspace grows to the largest batch seen */
} model_options;

/* Defaults as listed above. */
void model_options_defaults(model_options *o);
/* Take adapter, r, alpha, dropout, targets, gradient_checkpointing and seed from a config. */
void model_options_from_config(model_options *o, const rubric_config *cfg);

/* One trainable tensor inside the flat buffer (row-major [rows, cols]). */
typedef struct {
    /* PEFT name, e.g. base_model.model.model.layers.3.mlp.up_proj.lora_B.weight */
    char *name;
    int64_t offset;   /* in elements from the start of the flat buffer */
    int rows, cols;   /* lora_A: [r, in]; lora_B: [out, r] */
} lora_param;

/* The trainable parameters, as seen by the optimizer, ZeRO and checkpoints. */
typedef struct {
    float *params;            /* [n_padded] backend memory */
    float *grads;             /* [n_padded] backend memory */
    int64_t n;                /* real elements */
    int64_t n_padded;         /* multiple of flat_align; elements n..n_padded stay 0 */
    int n_tensors;
    const lora_param *table;  /* [n_tensors], in model order (layer, module, A then B) */
} model_trainable_view;

typedef struct model model;

/* The GEMM precision a config asks of a GPU: bf16 (`bf16: true` or `auto`), else tf32 when
 * `tf32: true`, else fp32. */
int model_gemm_precision_of(const rubric_config *cfg);

/*
 * Load a Hugging Face folder. A missing tensor, a wrong shape or a truncated file is an error
 * naming the tensor and file (RB_EXIT_INPUT). LoRA A is initialised as PEFT does
 * (kaiming_uniform a=sqrt(5): U(-1/sqrt(in), 1/sqrt(in)), from options->seed), B is zero.
 */
int model_load(model **out, const char *dir, const model_options *opt);
void model_free(model *m);

const model_config *model_get_config(const model *m);
const kernel_ops *model_ops(const model *m);
/* Bytes of the frozen base weights as stored (fp32 or NF4) plus the trainable buffers. */
int64_t model_weight_bytes(const model *m);

/* The flat trainable buffers and their table (all zeros when adapter is none). */
void model_trainable(model *m, model_trainable_view *out);
/* Index of a PEFT name in the table, or -1. */
int model_find_param(const model *m, const char *name);
/* Read PEFT adapter weights into the flat buffer: path is adapter_model.safetensors or the folder
 * holding it; names as PEFT saves them (the table's names). Every table entry must be present
 * with its shape, else an error naming the tensor and file (the buffer is then unchanged). */
int model_load_adapter(model *m, const char *path);

/* grads = 0 */
void model_zero_grad(model *m);

/*
 * Forward and backward of one packed micro-batch: *loss_sum = sum of the token losses,
 * *n_tok = supervised tokens, and grads += grad_scale * d(loss_sum)/d(params). A batch with no
 * supervised token returns 0 and 0 and leaves the gradients unchanged. Returns 0 or an error
 * code (bad token id, too many tokens).
 */
int model_forward_backward(model *m, const packed_batch *b, float grad_scale, double *loss_sum,
                           int64_t *n_tok);
/* Forward only (evaluation): loss sum and supervised count, no gradient. */
int model_forward_loss(model *m, const packed_batch *b, double *loss_sum, int64_t *n_tok);
/* Logits [n_rows, vocab] (host memory) at token rows rows[0..n_rows) of the batch (tests). */
int model_logits_at(model *m, const packed_batch *b, const int32_t *rows, int n_rows,
                    float *logits);

/* ---- inference with a KV cache (scoring) ---- */

/* Keys and values of every layer for one row, up to `capacity` tokens. */
typedef struct model_kv_cache model_kv_cache;

int model_kv_cache_new(model *m, int capacity, model_kv_cache **out);
void model_kv_cache_free(model_kv_cache *c);
/* Tokens held. */
int model_kv_cache_len(const model_kv_cache *c);
int model_kv_cache_capacity(const model_kv_cache *c);
/* Forget everything past len tokens (len <= current length). */
void model_kv_cache_truncate(model_kv_cache *c, int len);
/* dst = src (same model; dst capacity >= src length): a shared prefix computed once. */
int model_kv_cache_copy(model_kv_cache *dst, const model_kv_cache *src);

/*
 * Append n tokens at positions len..len+n-1 of the cache (they attend to the whole cache and
 * causally to each other) and write the logits of the LAST token into logits [vocab] (host
 * memory; NULL to skip the LM head). Errors when the cache would overflow.
 */
int model_prefill(model *m, model_kv_cache *c, const uint32_t *tokens, int n, float *logits);
/* One token per row for n_rows caches at once (batched greedy decoding): logits [n_rows, vocab]
 * (host memory). */
int model_decode_batch(model *m, model_kv_cache **caches, const uint32_t *tokens, int n_rows,
                       float *logits);
/*
 * Several rows at once: row r appends counts[r] >= 1 tokens (taken in order from tokens, the
 * rows one after another: sum(counts) tokens) to caches[r] (all distinct), and logits
 * [n_rows, vocab] (host memory; NULL to skip the LM head) receive each row's LAST token's
 * logits. The linear layers and the LM head run once for all rows; attention runs per row.
 * Equals n_rows calls of model_prefill up to rounding (tests/test_model.c: within 4e-6).
 */
int model_prefill_batch(model *m, model_kv_cache **caches, const uint32_t *tokens,
                        const int *counts, int n_rows, float *logits);
/* As model_prefill_batch, but logits [sum(counts), vocab] (host memory) receive the logits of
 * EVERY appended token, in token order: decoding that appends a token chosen from the last
 * logits together with tokens known to follow it (a grammar's forced separator) gets all their
 * logits from one pass. */
int model_extend_batch(model *m, model_kv_cache **caches, const uint32_t *tokens,
                       const int *counts, int n_rows, float *logits);

/* Which logits a pass of model_extend_batch_sel makes: token t's whole row when full[t], else
 * only the entries at ids[0..n_ids) (the rest of its row is left as it was). A scorer that
 * already knows a row left the grammar needs only the grammar's few ids, not 151,936. */
typedef struct {
    const uint8_t *full;         /* [sum(counts)] host */
    const uint32_t *ids;         /* [n_ids], each < vocab */
    int n_ids;
} model_logit_sel;

/* model_extend_batch with a selection (NULL: every row whole). The selected entries equal the
 * whole-row ones up to rounding (tests/test_model.c). */
int model_extend_batch_sel(model *m, model_kv_cache **caches, const uint32_t *tokens,
                           const int *counts, int n_rows, const model_logit_sel *sel,
                           float *logits);

/* The FLOPs one training step of batch b must do at the least (MFU's numerator, for the
 * benchmarks and the GPU check): base forward, the input gradient of every linear layer but
 * layer 0's q/k/v (their input, the embeddings, is frozen), LoRA rank r forward and backward,
 * causal attention forward and backward per sample, and the LM head at supervised rows. */
double model_step_flops(const model_config *c, const packed_batch *b, int r);

#endif
