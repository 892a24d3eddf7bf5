/*
 * tokenizer.h: Hugging Face tokenizer.json (byte-level BPE, NFC normalizer, Split regex
 * pre-tokenizer, ByteLevel decoder, added tokens), encode and decode in C.
 *
 * Ids equal those of HF `tokenizers`: Tokenizer.from_file(...).encode(text,
 * add_special_tokens=False).ids. A loaded tokenizer is read-only: encode and decode may be
 * called from several threads at once.
 */
#ifndef RUBRIC_TOKENIZER_H
#define RUBRIC_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

typedef struct tokenizer tokenizer;

/* A growable array of token ids. */
typedef struct {
    uint32_t *ids;
    size_t n, cap;
} token_vec;

void token_vec_push(token_vec *v, uint32_t id);
void token_vec_free(token_vec *v);

enum tokenizer_flags {
    TOK_MATCH_ADDED = 1, /* match added tokens ("<|im_end|>", "<think>") whole, as HF does */
    TOK_LITERAL = 0,     /* encode added-token text as ordinary text (user data) */
};

/* Load from a folder holding tokenizer.json, or from the file itself. Returns 0 or an exit
 * code (err_msg() names the file and what is wrong). */
int tokenizer_load(tokenizer **out, const char *path);
void tokenizer_free(tokenizer *tk);

/* Append the ids of text[0..len) to out. Invalid UTF-8 is an error (RB_EXIT_INPUT). */
int tokenizer_encode(const tokenizer *tk, const char *text, size_t len, int flags,
                     token_vec *out);

/* Decode ids to UTF-8 (added tokens written as their text). *text is NUL-terminated and owned
 * by the caller. Bytes of a multi-byte character split across ids are joined before UTF-8 is
 * checked, so a valid character never turns into U+FFFD. */
int tokenizer_decode(const tokenizer *tk, const uint32_t *ids, size_t n, char **text,
                     size_t *len);

/* Id of a token by its exact text (regular or added), or -1. */
int64_t tokenizer_token_id(const tokenizer *tk, const char *token_text);
/* Text of a token (added tokens as written; regular tokens in byte-level form), or NULL. */
const char *tokenizer_token_text(const tokenizer *tk, uint32_t id);
/* One past the largest id. */
uint32_t tokenizer_vocab_size(const tokenizer *tk);
/* A stable fingerprint of the loaded tokenizer.json (for prep's cache key). */
uint64_t tokenizer_fingerprint(const tokenizer *tk);

#endif
