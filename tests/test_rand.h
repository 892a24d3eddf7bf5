/*
 * test_rand.h: the tests' reproducible random numbers. One 64-bit linear congruential step
 * (Knuth's MMIX constants) per draw, the top 53 bits made a double, so every platform and
 * every test file draws the same sequence from the same seed.
 */
#ifndef RUBRIC_TEST_RAND_H
#define RUBRIC_TEST_RAND_H

#include <stdint.h>

/* Uniform in [-1, 1); advances *state. */
static inline float test_frand(uint64_t *state)
{
    *state = *state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((double)(*state >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

#endif
