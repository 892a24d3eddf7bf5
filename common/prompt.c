/* prompt.c: Alpaca rows rendered as Qwen3 chat or Alpaca text, encoded with labels. */
#include "prompt.h"

#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "log.h"
#include "util.h"

static const char alpaca_header_input[] =
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n";
static const char alpaca_header_no_input[] =
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n"
    "### Instruction:\n";
static const char qwen3_gen_tail[] = "<|im_start|>assistant\n<think>\n\n</think>\n\n";

/* ---- a small string builder ------------------------------------------------------------ */

typedef struct {
    char *s;
    size_t n, cap;
} strbuf;

static void sb_put(strbuf *b, const char *s, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        b->cap = RB_MAX(b->cap * 2, b->n + n + 64);
        b->s = xrealloc(b->s, b->cap);
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = '\0';
}

static void sb_puts(strbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

/* ---- style ------------------------------------------------------------------------------ */

const char *prompt_style_name(enum prompt_style style)
{
    return style == PROMPT_STYLE_QWEN3 ? "qwen3 chat template" : "alpaca";
}

int prompt_style_from_config(const rubric_config *cfg, enum prompt_style *style)
{
    int has_template = cfg->chat_template && cfg->chat_template[0];
    if (has_template && strcmp(cfg->chat_template, "qwen3") != 0)
        return err_set(RB_EXIT_INPUT, "chat_template: '%s' is not supported (use qwen3, or "
                       "remove it for the plain Alpaca text)", cfg->chat_template);
    if (cfg->prompt_format == PROMPT_ALPACA) {
        *style = PROMPT_STYLE_ALPACA;
        return 0;
    }
    if (cfg->prompt_format == PROMPT_CHATML_QWEN3) {
        *style = PROMPT_STYLE_QWEN3;
        return 0;
    }
    if (has_template) {
        /* config_finalize picks the format and logs this line; here only for a raw config */
        *style = PROMPT_STYLE_QWEN3;
        log_info("prompts: alpaca rows are rendered through the qwen3 chat template (system = "
                 "instruction, user = input, assistant = output), the way the model is served; "
                 "Axolotl would train on the plain Alpaca text here (a train/serve mismatch). "
                 "Set prompt_format: alpaca to force the plain text");
        return 0;
    }
    *style = PROMPT_STYLE_ALPACA;
    return 0;
}

/* ---- text rendering --------------------------------------------------------------------- */

static const char *alpaca_header(const char *input)
{
    return input[0] ? alpaca_header_input : alpaca_header_no_input;
}

static void render_prompt(strbuf *b, enum prompt_style style, const char *instruction,
                          const char *input)
{
    if (style == PROMPT_STYLE_ALPACA) {
        sb_puts(b, alpaca_header(input));
        sb_puts(b, instruction);
        if (input[0]) {
            sb_puts(b, "\n\n### Input:\n");
            sb_puts(b, input);
        }
        sb_puts(b, "\n\n### Response:\n");
        return;
    }
    sb_puts(b, "<|im_start|>system\n");
    sb_puts(b, instruction);
    sb_puts(b, "<|im_end|>\n<|im_start|>user\n");
    sb_puts(b, input);
    sb_puts(b, "<|im_end|>\n");
    sb_puts(b, qwen3_gen_tail);
}

char *prompt_render_prompt(enum prompt_style style, const char *instruction,
                           const char *input, size_t *len)
{
    strbuf b = {0};
    render_prompt(&b, style, instruction, input);
    if (len)
        *len = b.n;
    return b.s;
}

/* The answer text as the chat template writes it: leading newlines removed. */
static const char *answer_text(enum prompt_style style, const char *output, size_t *len)
{
    if (style == PROMPT_STYLE_QWEN3)
        while (*len > 0 && *output == '\n') {
            output++;
            (*len)--;
        }
    return output;
}

char *prompt_render_full(enum prompt_style style, const char *instruction, const char *input,
                         const char *output, size_t *len)
{
    strbuf b = {0};
    render_prompt(&b, style, instruction, input);
    size_t olen = strlen(output);
    const char *o = answer_text(style, output, &olen);
    sb_put(&b, o, olen);
    if (style == PROMPT_STYLE_QWEN3)
        sb_puts(&b, "<|im_end|>\n");
    if (len)
        *len = b.n;
    return b.s;
}

/* ---- encoding --------------------------------------------------------------------------- */

static int control_id(const tokenizer *tk, const char *text, uint32_t *id)
{
    int64_t v = tokenizer_token_id(tk, text);
    if (v < 0)
        return err_set(RB_EXIT_INPUT, "the tokenizer has no '%s' token (the qwen3 chat "
                       "template needs a Qwen tokenizer.json)", text);
    *id = (uint32_t)v;
    return 0;
}

static int encode_lit(const tokenizer *tk, const char *s, size_t n, token_vec *out)
{
    if (n == 0)
        return 0;
    return tokenizer_encode(tk, s, n, TOK_LITERAL, out);
}

int prompt_encoder_init(prompt_encoder *pe, const tokenizer *tk, enum prompt_style style,
                        const char *eos_token, int train_on_inputs)
{
    memset(pe, 0, sizeof *pe);
    pe->tk = tk;
    pe->style = style;
    pe->train_on_inputs = train_on_inputs;
    int rc = 0;
    if (style == PROMPT_STYLE_QWEN3) {
        if ((rc = control_id(tk, "<|im_start|>", &pe->im_start)) ||
            (rc = control_id(tk, "<|im_end|>", &pe->im_end)) ||
            (rc = control_id(tk, "<think>", &pe->think)) ||
            (rc = control_id(tk, "</think>", &pe->think_end)))
            return rc;
        pe->eos = pe->im_end;
    } else if ((rc = control_id(tk, eos_token ? eos_token : "<|im_end|>", &pe->eos))) {
        return rc;
    }
    if ((rc = encode_lit(tk, "\n", 1, &pe->nl)) || (rc = encode_lit(tk, "\n\n", 2, &pe->nl2)) ||
        (rc = encode_lit(tk, "assistant\n", 10, &pe->asst_header)))
        return rc;
    return 0;
}

void prompt_encoder_free(prompt_encoder *pe)
{
    token_vec_free(&pe->nl);
    token_vec_free(&pe->nl2);
    token_vec_free(&pe->asst_header);
}

void prompt_cache_free(prompt_cache *c)
{
    free(c->text);
    token_vec_free(&c->ids);
    memset(c, 0, sizeof *c);
}

void prompt_tokens_free(prompt_tokens *pt)
{
    token_vec_free(&pt->ids);
}

static void vec_append(token_vec *v, const uint32_t *ids, size_t n)
{
    if (v->n + n > v->cap) {
        v->cap = RB_MAX(2 * v->cap, v->n + n + 64);
        v->ids = xrealloc(v->ids, v->cap * sizeof *v->ids);
    }
    memcpy(v->ids + v->n, ids, n * sizeof *ids);
    v->n += n;
}

/* Encode text (a literal piece) through the cache: the same text gives the same ids. */
static int encode_cached(const tokenizer *tk, prompt_cache *c, const char *s, size_t n,
                         token_vec *out)
{
    if (!c)
        return encode_lit(tk, s, n, out);
    uint64_t h = XXH3_64bits(s, n);
    if (!(c->valid && c->hash == h && c->len == n && memcmp(c->text, s, n) == 0)) {
        c->valid = 0;
        c->ids.n = 0;
        int rc = encode_lit(tk, s, n, &c->ids);
        if (rc)
            return rc;
        free(c->text);
        c->text = xmalloc(n + 1);
        memcpy(c->text, s, n);
        c->len = n;
        c->hash = h;
        c->valid = 1;
    }
    vec_append(out, c->ids.ids, c->ids.n);
    return 0;
}

/* "<role>\n" + field as one literal piece. */
static int encode_turn_text(const tokenizer *tk, prompt_cache *c, const char *role,
                            const char *field, size_t len, token_vec *out)
{
    size_t rl = strlen(role);
    char stackbuf[4096];
    char *buf = rl + len <= sizeof stackbuf ? stackbuf : xmalloc(rl + len);
    memcpy(buf, role, rl);
    memcpy(buf + rl, field, len);
    int rc = encode_cached(tk, c, buf, rl + len, out);
    if (buf != stackbuf)
        free(buf);
    return rc;
}

static int encode_qwen3_prompt(const prompt_encoder *pe, prompt_cache *cache,
                               const char *instruction, size_t il, const char *input,
                               size_t nl, prompt_tokens *out)
{
    token_vec *v = &out->ids;
    int rc;

    /* the shared prefix: the system turn */
    token_vec_push(v, pe->im_start);
    if ((rc = encode_turn_text(pe->tk, cache, "system\n", instruction, il, v)))
        return rc;
    token_vec_push(v, pe->im_end);
    vec_append(v, pe->nl.ids, pe->nl.n);
    out->n_prefix = (uint32_t)v->n;

    /* the user turn */
    token_vec_push(v, pe->im_start);
    if ((rc = encode_turn_text(pe->tk, NULL, "user\n", input, nl, v)))
        return rc;
    token_vec_push(v, pe->im_end);
    vec_append(v, pe->nl.ids, pe->nl.n);

    /* the generation prompt with its empty think block */
    token_vec_push(v, pe->im_start);
    vec_append(v, pe->asst_header.ids, pe->asst_header.n);
    token_vec_push(v, pe->think);
    vec_append(v, pe->nl2.ids, pe->nl2.n);
    token_vec_push(v, pe->think_end);
    vec_append(v, pe->nl2.ids, pe->nl2.n);
    return 0;
}

static size_t common_prefix(const uint32_t *a, size_t na, const uint32_t *b, size_t nb)
{
    size_t i = 0;
    while (i < na && i < nb && a[i] == b[i])
        i++;
    return i;
}

static int encode_alpaca_prompt(const prompt_encoder *pe, prompt_cache *cache,
                                const char *instruction, size_t il, const char *input,
                                size_t nl, prompt_tokens *out)
{
    /* the whole prompt is one literal piece: pieces would not split where the pre-tokenizer
     * does (".\n\n" after an instruction is one token) */
    const char *hdr = nl ? alpaca_header_input : alpaca_header_no_input;
    strbuf b = {0};
    sb_puts(&b, hdr);
    sb_put(&b, instruction, il);
    size_t head_len = b.n;
    if (nl) {
        sb_puts(&b, "\n\n### Input:\n");
        sb_put(&b, input, nl);
    }
    sb_puts(&b, "\n\n### Response:\n");
    int rc = encode_lit(pe->tk, b.s, b.n, &out->ids);

    /* the shared prefix: the tokens that equal those of header + instruction alone */
    token_vec head = {0};
    if (!rc)
        rc = encode_cached(pe->tk, cache, b.s, head_len, &head);
    if (!rc)
        out->n_prefix = (uint32_t)common_prefix(head.ids, head.n, out->ids.ids, out->ids.n);
    token_vec_free(&head);
    free(b.s);
    return rc;
}

int prompt_encode(const prompt_encoder *pe, prompt_cache *cache, const char *instruction,
                  size_t instruction_len, const char *input, size_t input_len,
                  const char *output, size_t output_len, prompt_tokens *out)
{
    out->ids.n = 0;
    out->n_prefix = out->n_prompt = out->sup_start = 0;
    int rc = pe->style == PROMPT_STYLE_QWEN3
                 ? encode_qwen3_prompt(pe, cache, instruction, instruction_len, input,
                                       input_len, out)
                 : encode_alpaca_prompt(pe, cache, instruction, instruction_len, input,
                                        input_len, out);
    if (rc)
        return rc;
    out->n_prompt = (uint32_t)out->ids.n;
    out->sup_start = pe->train_on_inputs ? 0 : out->n_prompt;
    if (!output)
        return 0;

    /* the answer and its end token, supervised */
    const char *o = answer_text(pe->style, output, &output_len);
    if ((rc = encode_lit(pe->tk, o, output_len, &out->ids)))
        return rc;
    token_vec_push(&out->ids, pe->eos);
    return 0;
}
