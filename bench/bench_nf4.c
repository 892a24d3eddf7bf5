/*
 * bench_nf4.c: NF4 quantize and dequantize throughput of worker/nf4.c.
 *
 *   bench_nf4 WEIGHTS.f32 [PASSES]
 *
 * Reads a raw little-endian fp32 weight vector, quantizes it once (NF4, blocksize 64, double
 * quantization), then dequantizes it PASSES times in two ways: the whole tensor at once, and in
 * tiles of 64 rows of 4096 (as a matrix product consumes it). Prints one JSON line with the
 * seconds of the quantization and of the best pass of each way, and an xxh64 digest of the
 * dequantized values so a driver can check them against bitsandbytes. Threads: OMP_NUM_THREADS.
 * Run it through bench/bench_nf4.py, which times bitsandbytes' CPU path in the same run and
 * prints the ratios.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "nf4.h"
#include "util.h"

#define TILE (64 * 4096)

static double time_whole(const nf4_tensor *q, float *out, int passes)
{
    double best = 1e30;
    for (int p = 0; p < passes; p++) {
        double t0 = now_seconds();
        nf4_dequantize(q, 0, q->n, out);
        best = RB_MIN(best, now_seconds() - t0);
    }
    return best;
}

static double time_tiles(const nf4_tensor *q, float *tile, int passes)
{
    double best = 1e30;
    for (int p = 0; p < passes; p++) {
        double t0 = now_seconds();
        for (int64_t start = 0; start < q->n; start += TILE)
            nf4_dequantize(q, start, RB_MIN((int64_t)TILE, q->n - start), tile);
        best = RB_MIN(best, now_seconds() - t0);
    }
    return best;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s WEIGHTS.f32 [PASSES]\n", argv[0]);
        return RB_EXIT_INPUT;
    }
    int passes = argc > 2 ? atoi(argv[2]) : 5;

    /* the weights */
    char *data;
    size_t bytes;
    if (read_file(argv[1], &data, &bytes))
        rb_die_err(RB_EXIT_INPUT);
    int64_t n = (int64_t)(bytes / sizeof(float));
    const float *w = (const float *)data;

    /* quantize once, then the two ways of dequantizing */
    nf4_tensor q;
    double t0 = now_seconds();
    if (nf4_quantize(w, n, 1, &q))
        rb_die_err(RB_EXIT_INPUT);
    double quantize_s = now_seconds() - t0;
    float *out = xmalloc((size_t)n * sizeof(float));
    float *tile = xmalloc(TILE * sizeof(float));
    double whole_s = time_whole(&q, out, passes);
    double tiles_s = time_tiles(&q, tile, passes);
    uint64_t digest = XXH64(out, (size_t)n * sizeof(float), 0);

    char hex[17];
    snprintf(hex, sizeof hex, "%016llx", (unsigned long long)digest);
    json_t *j = json_pack("{s:I, s:I, s:f, s:f, s:f, s:s}", "n", (json_int_t)n, "bytes",
                          (json_int_t)nf4_bytes(&q), "quantize_seconds", quantize_s,
                          "dequant_seconds", whole_s, "dequant_tiles_seconds", tiles_s,
                          "digest", hex);
    char *line = json_dumps(j, JSON_COMPACT);
    printf("%s\n", line);

    free(line);
    json_decref(j);
    free(out);
    free(tile);
    nf4_free(&q);
    free(data);
    return 0;
}
