/*
 * nf4.h: 4-bit NormalFloat (NF4) weights with double quantization, as bitsandbytes stores them
 * for QLoRA (quantize_4bit(quant_type='nf4', blocksize=64, compress_statistics=True)).
 *
 * Layout of one quantized tensor of n weights (flat, row-major as the fp32 source):
 *   codes     [(n + 1) / 2]  two 4-bit indices into nf4_code per byte; element 2i sits in the
 *                            HIGH nibble of byte i, element 2i + 1 in the low nibble (bnb order).
 *   block b = elements [64 b, 64 b + 64) (the last block may be partial) has scale absmax[b]:
 *     without double quantization: absmax[b] is stored as fp32;
 *     with double quantization:    absmax[b] = nf4_dynamic_map[absmax_q[b]] * absmax2[b / 256]
 *                                              + offset       (fp32, in that order, as bnb)
 *   weight i = nf4_code[code(i)] * absmax[i / 64]  (one fp32 multiply).
 * Values equal bitsandbytes' CPU output bit for bit (tests/test_nf4.c, fixtures from pip bnb;
 * the offset is torch's single-thread fp32 mean; details in docs/qlora.md).
 * An all-zero block stores absmax 0 (1e-38 when it is the partial last block, as torch clamps
 * it there) and code 7 (the value 0.0); it dequantizes to 0.0 times its scale (+0 or -0, never
 * NaN).
 * CUDA kernels reproducing this must not contract the absmax multiply-add into an FMA
 * (use __fmul_rn / __fadd_rn).
 */
#ifndef RUBRIC_NF4_H
#define RUBRIC_NF4_H

#include <stddef.h>
#include <stdint.h>

#define NF4_BLOCK 64       /* weights per first-level block (bnb blocksize) */
#define NF4_BLOCK2 256     /* first-level scales per second-level block */

/* The 16 NF4 code values (bitsandbytes' published table), ascending; index 7 is 0.0. */
extern const float nf4_code[16];

typedef struct {
    int64_t n;            /* number of weights */
    int64_t n_blocks;     /* ceil(n / 64) */
    int64_t n_blocks2;    /* ceil(n_blocks / 256) when double_quant, else 0 */
    int double_quant;     /* 1: absmax_q/absmax2/offset hold the scales; 0: absmax does */
    uint8_t *codes;       /* [(n + 1) / 2] packed 4-bit codes, high nibble first */
    float *absmax;        /* [n_blocks] fp32 scales (double_quant == 0 only, else NULL) */
    uint8_t *absmax_q;    /* [n_blocks] 8-bit dynamic-map codes of absmax - offset */
    float *absmax2;       /* [n_blocks2] second-level scales */
    float offset;         /* mean of the fp32 absmaxes */
} nf4_tensor;

/* Quantize n fp32 weights (double_quant 1 as QLoRA does). Returns 0, or RB_EXIT_INPUT for
 * n <= 0 or a non-finite weight (err_set names the element index). On failure *q is zeroed. */
int nf4_quantize(const float *w, int64_t n, int double_quant, nf4_tensor *q);

/* Dequantize elements [start, start + count) into out[0 .. count). Any start works; a start that
 * is a multiple of 64 (a tile of whole blocks) is the fast path. OpenMP-parallel over blocks
 * when count is large. */
void nf4_dequantize(const nf4_tensor *q, int64_t start, int64_t count, float *out);

/* The fp32 scale of block b (exactly what nf4_dequantize multiplies by). */
float nf4_block_absmax(const nf4_tensor *q, int64_t b);

/* Bytes held by the quantized representation (codes + scales), for memory accounting. */
size_t nf4_bytes(const nf4_tensor *q);

void nf4_free(nf4_tensor *q);

/* bitsandbytes' signed 8-bit dynamic quantization map (create_dynamic_map(signed=True)),
 * generated as bnb does; 256 ascending values in [-1, 1]. */
void nf4_dynamic_map(float map[256]);

#endif
