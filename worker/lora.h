/*
 * lora.h: LoRA adapter conventions shared by the model, checkpoints and export: the seven
 * target modules, their PEFT names, and PEFT's initialisation of lora_A.
 */
#ifndef RUBRIC_LORA_H
#define RUBRIC_LORA_H

#include <stdint.h>

/* The target modules of one decoder layer, in PEFT's (module registration) order. */
enum lora_module {
    LORA_MOD_Q, LORA_MOD_K, LORA_MOD_V, LORA_MOD_O, LORA_MOD_GATE, LORA_MOD_UP, LORA_MOD_DOWN,
    LORA_MOD_COUNT
};

/* "q_proj", ..., "down_proj" */
const char *lora_module_name(int mod);
/* "self_attn" or "mlp" */
const char *lora_module_parent(int mod);
/* The enum lora_target bit of a module (LORA_Q << mod). */
unsigned lora_module_bit(int mod);

/* PEFT's saved name: base_model.model.model.layers.<layer>.<parent>.<module>.lora_<A|B>.weight
 * (xmalloc'd). */
char *lora_param_name(int layer, int mod, int is_b);

/* PEFT's lora_A init (nn.init.kaiming_uniform_ with a = sqrt(5)): U(-1/sqrt(in), 1/sqrt(in))
 * for A [r, in], from a counter-based stream keyed by (seed, layer, mod): reproducible and
 * independent of the order tensors are initialised in. */
void lora_init_a(float *a, int r, int in, uint64_t seed, int layer, int mod);

/* Seed of the dropout mask of (layer, module) in forward call `call` (model-level counter). */
uint64_t lora_dropout_seed(uint64_t seed, uint64_t call, int layer, int mod);

#endif
