/*
 * cuda_hash.h: the dropout mask's hash, callable on the device and the host.
 *
 * The CPU backend keeps element i when XXH3_64bits_withSeed(&i, 8, seed) (libxxhash, i an
 * int64_t in memory) maps to u >= p. The GPU cannot call libxxhash, so this is XXH3's path for
 * 4..8-byte inputs (xxhash.h 0.8: XXH3_len_4to8_64b with the default secret, then
 * XXH3_rrmxmx) restricted to an 8-byte little-endian integer. test_kernels_cuda checks it
 * against the library on the host, GPU or not, so the two backends draw identical masks.
 */
#ifndef RUBRIC_CUDA_HASH_H
#define RUBRIC_CUDA_HASH_H

#include <stdint.h>

#ifdef __CUDACC__
#define CUDA_HASH_FN __host__ __device__ static inline
#else
#define CUDA_HASH_FN static inline
#endif

/* XXH3's default secret, bytes 8..15 and 16..23 read little-endian. */
#define CUDA_HASH_SECRET_8 0x1cad21f72c81017cULL
#define CUDA_HASH_SECRET_16 0xdb979083e96dd4deULL
#define CUDA_HASH_PRIME_MX2 0x9FB21C651E98DF25ULL

CUDA_HASH_FN uint64_t cuda_hash_rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

CUDA_HASH_FN uint32_t cuda_hash_swap32(uint32_t x)
{
    return ((x << 24) & 0xff000000u) | ((x << 8) & 0x00ff0000u) | ((x >> 8) & 0x0000ff00u) |
           ((x >> 24) & 0x000000ffu);
}

/* XXH3_64bits_withSeed of the 8 bytes of `i` (little-endian int64). */
CUDA_HASH_FN uint64_t cuda_hash_index(int64_t i, uint64_t seed)
{
    uint64_t x = (uint64_t)i;
    uint32_t lo = (uint32_t)x, hi = (uint32_t)(x >> 32);
    seed ^= (uint64_t)cuda_hash_swap32((uint32_t)seed) << 32;
    uint64_t bitflip = (CUDA_HASH_SECRET_8 ^ CUDA_HASH_SECRET_16) - seed;
    uint64_t input64 = (uint64_t)hi + ((uint64_t)lo << 32);
    uint64_t h = input64 ^ bitflip;
    h ^= cuda_hash_rotl64(h, 49) ^ cuda_hash_rotl64(h, 24);
    h *= CUDA_HASH_PRIME_MX2;
    h ^= (h >> 35) + 8u;
    h *= CUDA_HASH_PRIME_MX2;
    return h ^ (h >> 28);
}

/* The uniform in [0, 1) the mask compares with p: the top 24 bits, as cpu_dropout does. */
CUDA_HASH_FN float cuda_hash_uniform(int64_t i, uint64_t seed)
{
    return (float)(cuda_hash_index(i, seed) >> 40) * (1.0f / 16777216.0f);
}

#endif
