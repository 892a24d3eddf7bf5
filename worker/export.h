/*
 * export.h: a trained adapter out of a rubric checkpoint, in the layouts other tools load.
 *
 * export_adapter_write: PEFT's adapter folder (what PeftModel.from_pretrained and vLLM's
 *   --lora-modules read):
 *     adapter_config.json        peft_type LORA, task_type CAUSAL_LM, r, lora_alpha,
 *                                lora_dropout, target_modules, base_model_name_or_path, ...
 *     adapter_model.safetensors  F32 tensors named as PEFT saves them (no ".default" infix):
 *                                base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight
 *                                [r, in] and ...lora_B.weight [out, r]
 * export_merge: a full Hugging Face model folder with W' = W + (lora_alpha / r) * B @ A in
 *   every adapted linear (for QLoRA, W is first put through the NF4 quantize-dequantize the
 *   training used, so the merged model computes what was trained); config.json (dtype
 *   updated), generation_config.json, model.safetensors (sharded with an index past a size
 *   limit) and the tokenizer files of the base folder. Tied embeddings stay tied.
 *
 * Every file is written atomically (temp name, fsync, rename); the weights before the
 * config files, so a folder with a config always has complete weights next to it.
 * The layouts are documented in docs/export.md.
 */
#ifndef RUBRIC_EXPORT_H
#define RUBRIC_EXPORT_H

#include <stdint.h>

#include "ckpt.h"
#include "config.h"
#include "safetensors.h"

/* One LoRA tensor of a checkpoint: PEFT name, row-major fp32 [rows, cols]. */
typedef struct {
    char *name;
    int layer, module, is_b; /* parsed from the name (enum lora_module) */
    int64_t rows, cols;
    float *data;
} export_tensor;

/* A checkpoint's adapter: its config, its /state and its LoRA tensors (layer, module, A, B
 * order). */
typedef struct {
    char *path;
    rubric_config cfg;       /* parsed from /state config_yaml */
    ckpt_meta meta;
    int qlora;               /* the base was NF4 during training (adapter qlora/load_in_4bit) */
    unsigned targets;        /* enum lora_target bits found in the tensors */
    export_tensor *tensors;
    int n_tensors;
} export_adapter;

/* Verify the checkpoint (ckpt_verify), read its config and every /lora tensor, and check
 * the names are PEFT LoRA names, every A has its B and the shapes agree with lora_r.
 * Returns 0 or RB_EXIT_INPUT naming the file and tensor. Free with export_adapter_free. */
int export_adapter_read(const char *ckpt_path, export_adapter *a);
/* (ckpt_path may also be a training output_dir: its newest complete checkpoint is used.) */
void export_adapter_free(export_adapter *a);
/* The tensor of (layer, module, is_b), or NULL. */
const export_tensor *export_adapter_find(const export_adapter *a, int layer, int module,
                                         int is_b);

/* Refuse to write into out_dir when it is a non-empty folder that does not hold a previous
 * export of this kind (`marker`, e.g. "adapter_config.json"; NULL: any non-empty folder),
 * unless force. Creates it, and checks that it takes new files (RB_EXIT_INPUT otherwise). */
int export_prepare_dir(const char *out_dir, const char *marker, int force);

/* Write the PEFT adapter folder. base_model_name: adapter_config.json's
 * base_model_name_or_path (NULL: the config's base_model as written). */
int export_adapter_write(const export_adapter *a, const char *out_dir,
                         const char *base_model_name);

typedef struct {
    const char *model_dir;    /* base model folder (Hugging Face layout) */
    const char *out_dir;
    st_dtype dtype;           /* ST_BF16 (default), ST_F16 or ST_F32 */
    uint64_t max_shard_bytes; /* 0: one file */
    int force;                /* base model hash mismatch, foreign out folder: go on */
} export_merge_options;

/* Merge the adapter into the base model and write the folder. A base model whose config.json
 * hash differs from the checkpoint's is RB_EXIT_INPUT unless force (then a warning). */
int export_merge(const export_adapter *a, const export_merge_options *o);

/* W [out, in] += scale * B [out, r] @ A [r, in] (fp32, row-major). */
void export_merge_delta(float *w, const float *b, const float *a, int64_t out, int64_t in,
                        int64_t r, float scale);

/* The tokenizer files copied from the base folder (NULL-terminated). */
extern const char *const export_tokenizer_files[];

#endif
