/*
 * jsonl.h: a streaming JSONL reader with physical line numbers and row validation.
 *
 * One line is read at a time with getline(), so memory is bounded by the longest line, never by
 * the file. Each line is checked in this order, and the first failure is its reason:
 *   blank_line    empty or only whitespace
 *   bom           starts with a UTF-8 byte order mark (EF BB BF)
 *   invalid_utf8  not valid UTF-8 (overlong forms and encoded surrogates included)
 *   not_json      jansson cannot parse it (also: "\u0000", lone \uD800 surrogates, NaN,
 *                 integers beyond 64 bits; Python's json accepts these, rubric does not)
 *   not_object    valid JSON, but not an object
 * Duplicate keys are accepted and the last value wins, as in Python's json.loads.
 * A line may end in "\n" or "\r\n"; a missing final newline is fine.
 */
#ifndef RUBRIC_JSONL_H
#define RUBRIC_JSONL_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

enum jsonl_status {
    JSONL_OK = 0,
    JSONL_BLANK,
    JSONL_BOM,
    JSONL_BAD_UTF8,
    JSONL_NOT_JSON,
    JSONL_NOT_OBJECT,
    JSONL_N_STATUS
};

typedef struct {
    FILE *fp;
    char *path;
    char *line;        /* the current line, NUL-terminated, newline removed */
    size_t len;        /* its length in bytes */
    size_t cap;
    int64_t lineno;    /* physical line number of `line`, from 1 */
    int64_t offset;    /* byte offset of `line` in the file */
    int64_t next_offset;
} jsonl_reader;

/* What stands in the way of reading path as an input file (errno kept for JSONL_PATH_MISSING
 * and JSONL_PATH_UNREADABLE); regular_only: a pipe or device is JSONL_PATH_NOT_REGULAR. The one
 * test behind jsonl_check_input and the config's dataset checks, which word it each their way. */
typedef enum {
    JSONL_PATH_OK,
    JSONL_PATH_MISSING,      /* stat failed */
    JSONL_PATH_DIR,
    JSONL_PATH_NOT_REGULAR,
    JSONL_PATH_UNREADABLE,
} jsonl_path_state;
jsonl_path_state jsonl_path_check(const char *path, int regular_only);

/* Check, before any work, that path is a readable regular file. Returns 0, or RB_EXIT_INPUT
 * with "PATH is a directory", "PATH is not a regular file" (a pipe or device: prep and score
 * read their input more than once) or "PATH: cannot open: REASON". what (e.g. "the dataset
 * path", "--input") names it in the message; NULL: "the path". */
int jsonl_check_input(const char *path, const char *what);

/* Open a file for reading, once through (a pipe or device is accepted here). Returns 0 or
 * RB_EXIT_INPUT (a directory, missing or unreadable, with the path). */
int jsonl_open(jsonl_reader *r, const char *path);
/* Read the next line. Returns 1 when a line was read, 0 at the end of the file, or -1 on a read
 * error (err_set with the path). */
int jsonl_next(jsonl_reader *r);
void jsonl_close(jsonl_reader *r);

/* The status name written to rejects files and reports ("blank_line", "bom", ...). */
const char *jsonl_status_name(int status);

/* Check one line (len bytes, need not be NUL-terminated) and parse it. On JSONL_OK *obj is a
 * new reference to a JSON object. Otherwise *obj is NULL and detail (when not NULL) receives a
 * short explanation (jansson's message with its column, the byte offset of bad UTF-8). */
int jsonl_parse(const char *line, size_t len, json_t **obj, char *detail, size_t detail_n);

/* 1 when s[0..len) is valid UTF-8, else 0 and *bad_at is the offset of the first bad byte. */
int jsonl_utf8_valid(const char *s, size_t len, size_t *bad_at);

/* Read one line back by its byte offset (for late rejects). *line is malloc'ed. */
int jsonl_read_line_at(const char *path, int64_t offset, char **line, size_t *len);

#endif
