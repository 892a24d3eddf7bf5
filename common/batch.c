/* batch.c: packed micro-batch storage. */
#include "batch.h"

#include <stdlib.h>

#include "util.h"

void packed_batch_init(packed_batch *b, int32_t n_seq, int32_t seq_len, int32_t max_samples)
{
    size_t n = (size_t)n_seq * (size_t)seq_len;
    b->n_seq = n_seq;
    b->seq_len = seq_len;
    b->n_tokens = (int32_t)n;
    b->n_samples = 0;
    b->tokens = xcalloc(n, sizeof *b->tokens);
    b->positions = xcalloc(n, sizeof *b->positions);
    b->targets = xcalloc(n, sizeof *b->targets);
    b->cu_seqlens = xcalloc((size_t)max_samples + 1, sizeof *b->cu_seqlens);
    b->n_supervised = 0;
}

void packed_batch_free(packed_batch *b)
{
    free(b->tokens);
    free(b->positions);
    free(b->targets);
    free(b->cu_seqlens);
    b->tokens = NULL;
    b->positions = b->targets = b->cu_seqlens = NULL;
}
