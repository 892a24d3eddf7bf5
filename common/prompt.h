/*
 * prompt.h: rendering an Alpaca row (instruction, input, output) as a prompt, and turning it
 * into token ids with the label boundary, the same way for training and for scoring.
 *
 * Styles:
 *   PROMPT_STYLE_QWEN3   the Qwen3 chat template with system = instruction, user = input,
 *                        assistant = output, as Hugging Face apply_chat_template(messages,
 *                        enable_thinking=False) renders it. The prompt (what the scorer feeds the
 *                        model) is the add_generation_prompt=True rendering:
 *                          <|im_start|>system\n{instruction}<|im_end|>\n
 *                          <|im_start|>user\n{input}<|im_end|>\n
 *                          <|im_start|>assistant\n<think>\n\n</think>\n\n
 *                        and the answer is output.lstrip("\n") followed by <|im_end|>.
 *   PROMPT_STYLE_ALPACA  Axolotl's Alpaca text ("Below is an instruction ... ### Response:\n";
 *                        the no-input form when input is empty); the answer is the output
 *                        followed by the eos token id.
 *
 * Tokens: control tokens (<|im_start|>, <|im_end|>, <think>, </think>, eos) are inserted as ids;
 * every piece of text between them, user fields included, is encoded with TOK_LITERAL, so
 * special-token text typed into a row ("<|im_end|>") stays ordinary text. Text between two
 * control tokens is encoded as one piece ("user\n" + input), so the ids equal HF's encoding of
 * the rendered string for every row whose fields hold no special-token text. The prompt and the
 * answer are encoded separately (as at serving time, where the model continues the prompt).
 *
 * The sample ends with the closing <|im_end|> (Qwen3) or eos (Alpaca): the "\n" the chat
 * template writes after the final <|im_end|> is not part of the sample, since nothing is learnt
 * after the end of the answer and the scorer stops at <|im_end|>.
 */
#ifndef RUBRIC_PROMPT_H
#define RUBRIC_PROMPT_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "tokenizer.h"

enum prompt_style { PROMPT_STYLE_QWEN3 = 1, PROMPT_STYLE_ALPACA = 2 };

/* The style a config asks for: prompt_format alpaca -> ALPACA; chatml_qwen3 -> QWEN3; auto ->
 * QWEN3 when chat_template is "qwen3", else ALPACA. config_finalize resolves auto and logs the
 * info line about rendering Alpaca rows through the chat template; for an unresolved config the
 * line is logged here. Returns 0 or RB_EXIT_INPUT (unknown chat_template). */
int prompt_style_from_config(const rubric_config *cfg, enum prompt_style *style);
const char *prompt_style_name(enum prompt_style style);

/* The prompt text up to where the answer begins (what the scorer feeds the model). */
char *prompt_render_prompt(enum prompt_style style, const char *instruction,
                           const char *input, size_t *len);
/* The full text as HF renders the whole conversation: for QWEN3 apply_chat_template([system,
 * user, assistant], tokenize=False, enable_thinking=False) including the final "\n"; for
 * ALPACA the prompt followed by the output (the eos id is added only as a token). Differences
 * from HF, by design: an output containing "</think>" is kept as literal text (HF would move it
 * into a reasoning block), and an input wrapped in <tool_response>...</tool_response> still gets
 * the empty think block. */
char *prompt_render_full(enum prompt_style style, const char *instruction, const char *input,
                         const char *output, size_t *len);

/* Everything needed to encode rows; read-only after init, shareable between threads. */
typedef struct {
    const tokenizer *tk;
    enum prompt_style style;
    uint32_t im_start, im_end, think, think_end;
    uint32_t eos;          /* end of the answer: <|im_end|> for QWEN3, eos_token for ALPACA */
    int train_on_inputs;   /* 1: prompt tokens are supervised too */
    token_vec nl, nl2, asst_header;  /* constant pieces ("\n", "\n\n", "assistant\n") */
} prompt_encoder;

/* eos_token: text of the Alpaca end token (NULL: "<|im_end|>"). Returns 0 or RB_EXIT_INPUT
 * when the tokenizer lacks a needed control token. */
int prompt_encoder_init(prompt_encoder *pe, const tokenizer *tk, enum prompt_style style,
                        const char *eos_token, int train_on_inputs);
void prompt_encoder_free(prompt_encoder *pe);

/* A per-thread memo of the last shared prefix (the system turn is the same on every row of a
 * dataset, and most of its text). Zero-initialise; free with prompt_cache_free. */
typedef struct {
    uint64_t hash;
    char *text;
    size_t len;
    token_vec ids;
    int valid;
} prompt_cache;

void prompt_cache_free(prompt_cache *c);

/* One encoded row. ids = prompt tokens, then (when an output was given) answer tokens. */
typedef struct {
    token_vec ids;
    uint32_t n_prefix;   /* shared prefix: through "<|im_start|>system\n...<|im_end|>\n" for
                            QWEN3; for ALPACA the tokens that equal the encoding of the header
                            and instruction alone */
    uint32_t n_prompt;   /* tokens before the answer */
    uint32_t sup_start;  /* first supervised token: n_prompt, or 0 with train_on_inputs */
} prompt_tokens;

void prompt_tokens_free(prompt_tokens *pt);

/*
 * Render and encode one row. output NULL: the prompt only (scoring); else prompt + answer + end
 * token (training). Field lengths are in bytes (the strings need not be NUL-terminated).
 * cache may be NULL. out->ids is reset first (its storage is reused). Returns 0 or an exit code
 * from the tokenizer (RB_EXIT_INPUT for invalid UTF-8).
 */
int prompt_encode(const prompt_encoder *pe, prompt_cache *cache, const char *instruction,
                  size_t instruction_len, const char *input, size_t input_len,
                  const char *output, size_t output_len, prompt_tokens *out);

#endif
