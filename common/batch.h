/*
 * batch.h: one packed micro-batch, as prep builds it and a worker's model consumes it.
 *
 * The micro-batch is one flat stream of n_tokens tokens (n_seq sequences of seq_len tokens,
 * concatenated). It is cut into n_samples segments by cu_seqlens; each segment is one training
 * sample (or padding). Attention at token t sees only tokens of its own segment at or before t;
 * positions restart at 0 in every segment. targets[t] is the token id the model must predict
 * after token t, or -1 where nothing is supervised (prompt, padding, the last token of a
 * segment).
 */
#ifndef RUBRIC_BATCH_H
#define RUBRIC_BATCH_H

#include <stdint.h>

typedef struct {
    int32_t n_seq;         /* sequences in the micro-batch */
    int32_t seq_len;       /* tokens per sequence, padding included */
    int32_t n_tokens;      /* n_seq * seq_len */
    int32_t n_samples;     /* segments, padding segments included */
    uint32_t *tokens;      /* [n_tokens] input ids */
    int32_t *positions;    /* [n_tokens] position within the segment */
    int32_t *targets;      /* [n_tokens] next-token id to learn, or -1 */
    int32_t *cu_seqlens;   /* [n_samples + 1] segment starts in the flat stream; last = n_tokens */
    int64_t n_supervised;  /* count of targets[t] >= 0 */
} packed_batch;

/* Allocate a batch for n_tokens tokens and up to max_samples segments (fields zeroed). */
void packed_batch_init(packed_batch *b, int32_t n_seq, int32_t seq_len, int32_t max_samples);
void packed_batch_free(packed_batch *b);

#endif
