/* lora.c: LoRA module names, PEFT naming and initialisation. */
#include <math.h>
#include <xxhash.h>

#include "config.h"
#include "lora.h"
#include "util.h"

static const char *const module_names[LORA_MOD_COUNT] = {
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
};

const char *lora_module_name(int mod) { return module_names[mod]; }

const char *lora_module_parent(int mod) { return mod <= LORA_MOD_O ? "self_attn" : "mlp"; }

unsigned lora_module_bit(int mod) { return (unsigned)LORA_Q << mod; }

char *lora_param_name(int layer, int mod, int is_b)
{
    return xasprintf("base_model.model.model.layers.%d.%s.%s.lora_%s.weight", layer,
                     lora_module_parent(mod), lora_module_name(mod), is_b ? "B" : "A");
}

/* A 64-bit key for (seed, a, b, c) through xxHash. */
static uint64_t key_of(uint64_t seed, uint64_t a, uint64_t b, uint64_t c)
{
    uint64_t v[3] = {a, b, c};
    return XXH3_64bits_withSeed(v, sizeof(v), seed);
}

void lora_init_a(float *a, int r, int in, uint64_t seed, int layer, int mod)
{
    uint64_t key = key_of(seed, 0x4c6f5241u, (uint64_t)layer, (uint64_t)mod);
    double bound = 1.0 / sqrt((double)in);
    for (int64_t i = 0; i < (int64_t)r * in; i++) {
        uint64_t h = XXH3_64bits_withSeed(&i, sizeof(i), key);
        double u = (double)(h >> 11) * (1.0 / 9007199254740992.0); /* [0, 1) */
        a[i] = (float)((2.0 * u - 1.0) * bound);
    }
}

uint64_t lora_dropout_seed(uint64_t seed, uint64_t call, int layer, int mod)
{
    return key_of(seed, call, (uint64_t)layer, (uint64_t)mod);
}
