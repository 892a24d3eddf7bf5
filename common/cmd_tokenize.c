/*
 * cmd_tokenize.c: `rubric tokenize`: JSONL text -> token ids (or ids -> text with --decode),
 * streamed line by line, with the ids Hugging Face `tokenizers` gives for
 * encode(text, add_special_tokens=False).
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "jsonl.h"
#include "log.h"
#include "tokenizer.h"
#include "util.h"

typedef struct {
    const char *tokenizer_dir;
    const char *input;
    const char *output;
    int literal;
    int decode;
} tokenize_args;

static void tokenize_usage(FILE *out)
{
    fprintf(out,
            "usage: rubric tokenize --tokenizer DIR [--input FILE|-] [--output FILE|-]\n"
            "                       [--literal] [--decode]\n"
            "\n"
            "Encode JSONL text with a Hugging Face tokenizer.json (byte-level BPE, as Qwen3's),\n"
            "giving the ids of `tokenizers` encode(text, add_special_tokens=False).\n"
            "\n"
            "  --tokenizer DIR  folder holding tokenizer.json (or the file itself)\n"
            "  --input FILE     JSONL, one {\"text\": \"...\"} per line (default: - = stdin)\n"
            "  --output FILE    JSONL, one {\"ids\": [...]} per line (default: - = stdout);\n"
            "                   a file is written atomically (nothing is left on an error);\n"
            "                   the input file itself is refused (exit 2)\n"
            "  --literal        encode added-token text such as <|im_end|> as plain text, as\n"
            "                   rubric does for user data in training and scoring\n"
            "                   (default: match added tokens whole, as Hugging Face does)\n"
            "  --decode         the reverse: {\"ids\": [...]} lines in, {\"text\": \"...\"} out;\n"
            "                   bytes that are not valid UTF-8 become U+FFFD\n"
            "\n"
            "A line that is not a JSON object with the expected field is an error naming\n"
            "FILE:LINE (exit 2).\n");
}

static int tokenize_parse_args(int argc, char **argv, tokenize_args *a)
{
    *a = (tokenize_args){.input = "-", .output = "-"};
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        int has_value = i + 1 < argc;
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            tokenize_usage(stdout);
            exit(0);
        } else if (strcmp(arg, "--literal") == 0) {
            a->literal = 1;
        } else if (strcmp(arg, "--decode") == 0) {
            a->decode = 1;
        } else if (has_value && strcmp(arg, "--tokenizer") == 0) {
            a->tokenizer_dir = argv[++i];
        } else if (has_value && strcmp(arg, "--input") == 0) {
            a->input = argv[++i];
        } else if (has_value && strcmp(arg, "--output") == 0) {
            a->output = argv[++i];
        } else {
            return err_set(RB_EXIT_INPUT, "tokenize: unknown option or missing value: '%s' "
                           "(see rubric tokenize --help)", arg);
        }
    }
    if (!a->tokenizer_dir)
        return err_set(RB_EXIT_INPUT, "tokenize: --tokenizer DIR is required (the folder "
                       "holding tokenizer.json; see rubric tokenize --help)");
    return 0;
}

/* {"text": ...} -> {"ids": [...]} */
static int tokenize_encode_line(const tokenizer *tk, json_t *row, int flags, token_vec *ids,
                                json_t **reply)
{
    json_t *text = json_object_get(row, "text");
    if (!json_is_string(text))
        return err_set(RB_EXIT_INPUT, "field \"text\": missing or not a string");
    ids->n = 0;
    int rc = tokenizer_encode(tk, json_string_value(text), json_string_length(text), flags, ids);
    if (rc)
        return err_prefix(rc, "field \"text\"");
    json_t *arr = json_array();
    for (size_t i = 0; i < ids->n; i++)
        json_array_append_new(arr, json_integer(ids->ids[i]));
    *reply = json_pack("{s:o}", "ids", arr);
    return 0;
}

/* {"ids": [...]} -> {"text": ...} */
static int tokenize_decode_line(const tokenizer *tk, json_t *row, token_vec *ids, json_t **reply)
{
    json_t *arr = json_object_get(row, "ids");
    if (!json_is_array(arr))
        return err_set(RB_EXIT_INPUT, "field \"ids\": missing or not an array");
    ids->n = 0;
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 ||
            json_integer_value(v) > (json_int_t)UINT32_MAX)
            return err_set(RB_EXIT_INPUT, "field \"ids\"[%zu]: not a non-negative integer", i);
        token_vec_push(ids, (uint32_t)json_integer_value(v));
    }
    char *text;
    size_t len;
    int rc = tokenizer_decode(tk, ids->ids, ids->n, &text, &len);
    if (rc)
        return err_prefix(rc, "field \"ids\"");
    *reply = json_pack("{s:s%}", "text", text, len);
    free(text);
    return 0;
}

/* One input line to one output line; errors are prefixed by the caller with FILE:LINE. */
static int tokenize_line(const tokenizer *tk, const tokenize_args *a, const char *line,
                         size_t len, token_vec *ids, FILE *out)
{
    json_error_t jerr;
    json_t *row = json_loadb(line, len, JSON_ALLOW_NUL, &jerr);
    if (!row)
        return err_set(RB_EXIT_INPUT, "not valid JSON (column %d): %s", jerr.column, jerr.text);
    json_t *reply = NULL;
    int rc;
    if (!json_is_object(row))
        rc = err_set(RB_EXIT_INPUT, "not a JSON object");
    else if (a->decode)
        rc = tokenize_decode_line(tk, row, ids, &reply);
    else
        rc = tokenize_encode_line(tk, row, a->literal ? TOK_LITERAL : TOK_MATCH_ADDED, ids,
                                  &reply);
    json_decref(row);
    if (rc)
        return rc;
    int w = json_dumpf(reply, out, JSON_COMPACT);
    json_decref(reply);
    if (w != 0 || fputc('\n', out) == EOF)
        return err_set(RB_EXIT_RUNTIME, "cannot write the output");
    return 0;
}

static int tokenize_stream(const tokenizer *tk, const tokenize_args *a, FILE *in, FILE *out)
{
    const char *in_name = strcmp(a->input, "-") == 0 ? "<stdin>" : a->input;
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    long line_no = 0;
    token_vec ids = {0};
    int rc = 0;
    while (!rc && (n = getline(&line, &cap, in)) >= 0) {
        line_no++;
        size_t len = (size_t)n;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            len--;
        if (len >= 3 && memcmp(line, "\xEF\xBB\xBF", 3) == 0)
            rc = err_set(RB_EXIT_INPUT, "line %ld starts with a UTF-8 byte-order mark (BOM), "
                         "which is not JSON; save the file as UTF-8 without BOM", line_no);
        else
            rc = tokenize_line(tk, a, line, len, &ids, out);
        if (rc)
            err_prefix(rc, "%s:%ld", in_name, line_no);
    }
    if (!rc && ferror(in))
        rc = err_set(RB_EXIT_RUNTIME, "%s: read error", in_name);
    free(line);
    token_vec_free(&ids);
    return rc;
}

int cmd_tokenize(int argc, char **argv)
{
    tokenize_args a;
    int rc = tokenize_parse_args(argc, argv, &a);
    if (rc) {
        log_error("%s", err_msg());
        return rc;
    }

    /* the input first (a directory or unreadable file is an error before any work), the
     * output must not be the input (the ids would replace the text) and must be writable */
    if (strcmp(a.input, "-") != 0 && (rc = jsonl_check_input(a.input, "--input"))) {
        log_error("tokenize: %s", err_msg());
        return rc;
    }
    if (strcmp(a.input, "-") != 0 && strcmp(a.output, "-") != 0 && same_path(a.input, a.output)) {
        log_error("tokenize: --output %s is the input file: the %s would replace the %s; give "
                  "another --output", a.output, a.decode ? "text" : "ids",
                  a.decode ? "ids" : "text");
        return RB_EXIT_INPUT;
    }
    /* a directory, a path under a file or an unwritable folder would fail only at the end */
    if (strcmp(a.output, "-") != 0 && (rc = check_output_file(a.output, "--output"))) {
        log_error("tokenize: %s", err_msg());
        return rc;
    }

    /* the tokenizer and the input */
    tokenizer *tk;
    if ((rc = tokenizer_load(&tk, a.tokenizer_dir))) {
        log_error("%s", err_msg());
        return rc;
    }
    FILE *in = stdin;
    if (strcmp(a.input, "-") != 0 && !(in = fopen(a.input, "rb"))) {
        log_error("tokenize: cannot open --input %s: %m", a.input);
        tokenizer_free(tk);
        return RB_EXIT_INPUT;
    }

    /* stream to stdout, or to a temporary file renamed into place at the end */
    atomic_file af = {0};
    int to_file = strcmp(a.output, "-") != 0;
    if (to_file && (rc = atomic_file_open(&af, a.output)) == 0)
        rc = tokenize_stream(tk, &a, in, af.fp);
    else if (!to_file)
        rc = tokenize_stream(tk, &a, in, stdout);
    if (to_file && !rc && af.fp)
        rc = atomic_file_commit(&af);
    else if (to_file && af.fp)
        atomic_file_abort(&af);
    if (!to_file && !rc && fflush(stdout) != 0)
        rc = err_set(RB_EXIT_RUNTIME, "cannot write to stdout");

    if (in != stdin)
        fclose(in);
    tokenizer_free(tk);
    if (rc)
        log_error("%s", err_msg());
    return rc;
}
