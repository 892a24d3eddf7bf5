/* jsonl.c: streaming JSONL reading and per-line validation (see jsonl.h). */
#include "jsonl.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <utf8proc.h>

#include "util.h"

static const char *const status_names[JSONL_N_STATUS] = {
    "ok", "blank_line", "bom", "invalid_utf8", "not_json", "not_object",
};

const char *jsonl_status_name(int status)
{
    if (status < 0 || status >= JSONL_N_STATUS)
        return "unknown";
    return status_names[status];
}

jsonl_path_state jsonl_path_check(const char *path, int regular_only)
{
    struct stat sb;
    if (stat(path, &sb) != 0)
        return JSONL_PATH_MISSING;
    if (S_ISDIR(sb.st_mode))
        return JSONL_PATH_DIR;
    if (regular_only && !S_ISREG(sb.st_mode))
        return JSONL_PATH_NOT_REGULAR;
    return access(path, R_OK) != 0 ? JSONL_PATH_UNREADABLE : JSONL_PATH_OK;
}

static int check_path(const char *path, const char *what, int regular_only)
{
    const char *hint = what ? what : "the path";
    switch (jsonl_path_check(path, regular_only)) {
    case JSONL_PATH_OK:
        return 0;
    case JSONL_PATH_DIR:
        return err_set(RB_EXIT_INPUT, "%s is a directory (%s must name a JSONL file)", path,
                       hint);
    case JSONL_PATH_NOT_REGULAR:
        return err_set(RB_EXIT_INPUT, "%s is not a regular file (a pipe or device): rubric "
                       "reads its input more than once; save it to a file and give that as %s",
                       path, hint);
    default: /* missing or unreadable */
        return err_set(RB_EXIT_INPUT, "%s: cannot open: %s (check %s)", path, strerror(errno),
                       hint);
    }
}

int jsonl_check_input(const char *path, const char *what) { return check_path(path, what, 1); }

int jsonl_open(jsonl_reader *r, const char *path)
{
    memset(r, 0, sizeof *r);
    int rc = check_path(path, NULL, 0);
    if (rc)
        return rc;
    r->fp = fopen(path, "rb");
    if (!r->fp)
        return err_set(RB_EXIT_INPUT, "%s: cannot open: %s (check the dataset path)", path,
                       strerror(errno));
    r->path = xstrdup(path);
    return 0;
}

int jsonl_next(jsonl_reader *r)
{
    errno = 0;
    ssize_t n = getline(&r->line, &r->cap, r->fp);
    if (n < 0) {
        if (ferror(r->fp))
            return err_set(RB_EXIT_RUNTIME, "%s: read error after line %lld: %s", r->path,
                           (long long)r->lineno, strerror(errno)), -1;
        return 0;
    }
    r->offset = r->next_offset;
    r->next_offset += n;
    r->lineno++;

    /* drop the line ending: "\n" or "\r\n" */
    if (n > 0 && r->line[n - 1] == '\n')
        n--;
    if (n > 0 && r->line[n - 1] == '\r')
        n--;
    r->line[n] = '\0';
    r->len = (size_t)n;
    return 1;
}

void jsonl_close(jsonl_reader *r)
{
    if (r->fp)
        fclose(r->fp);
    free(r->line);
    free(r->path);
    memset(r, 0, sizeof *r);
}

int jsonl_utf8_valid(const char *s, size_t len, size_t *bad_at)
{
    const utf8proc_uint8_t *p = (const utf8proc_uint8_t *)s;
    size_t i = 0;
    while (i < len) {
        /* ASCII runs are the common case */
        if (p[i] < 0x80) {
            i++;
            continue;
        }
        utf8proc_int32_t cp;
        utf8proc_ssize_t k = utf8proc_iterate(p + i, (utf8proc_ssize_t)(len - i), &cp);
        if (k <= 0) {
            if (bad_at)
                *bad_at = i;
            return 0;
        }
        i += (size_t)k;
    }
    return 1;
}

static int is_blank(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\n')
            return 0;
    return 1;
}

int jsonl_parse(const char *line, size_t len, json_t **obj, char *detail, size_t detail_n)
{
    char dummy[8];
    if (!detail) {
        detail = dummy;
        detail_n = sizeof dummy;
    }
    detail[0] = '\0';
    *obj = NULL;

    if (is_blank(line, len))
        return JSONL_BLANK;
    if (len >= 3 && (unsigned char)line[0] == 0xEF && (unsigned char)line[1] == 0xBB &&
        (unsigned char)line[2] == 0xBF) {
        snprintf(detail, detail_n, "UTF-8 byte order mark at the start of the line");
        return JSONL_BOM;
    }
    size_t bad_at = 0;
    if (!jsonl_utf8_valid(line, len, &bad_at)) {
        snprintf(detail, detail_n, "invalid UTF-8 byte 0x%02x at byte %zu",
                 (unsigned char)line[bad_at], bad_at + 1);
        return JSONL_BAD_UTF8;
    }

    json_error_t jerr;
    json_t *v = json_loadb(line, len, 0, &jerr);
    if (!v) {
        snprintf(detail, detail_n, "%s (column %d)", jerr.text, jerr.column);
        return JSONL_NOT_JSON;
    }
    if (!json_is_object(v)) {
        snprintf(detail, detail_n, "a JSON %s, not an object",
                 json_is_array(v) ? "array" : json_is_string(v) ? "string" : "scalar");
        json_decref(v);
        return JSONL_NOT_OBJECT;
    }
    *obj = v;
    return JSONL_OK;
}

int jsonl_read_line_at(const char *path, int64_t offset, char **line, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return err_set(RB_EXIT_RUNTIME, "%s: cannot reopen: %s", path, strerror(errno));
    char *buf = NULL;
    size_t cap = 0;
    ssize_t n = -1;
    if (fseeko(fp, offset, SEEK_SET) == 0)
        n = getline(&buf, &cap, fp);
    fclose(fp);
    if (n < 0) {
        free(buf);
        return err_set(RB_EXIT_RUNTIME, "%s: cannot read back the line at byte %lld", path,
                       (long long)offset);
    }
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        n--;
    buf[n] = '\0';
    *line = buf;
    *len = (size_t)n;
    return 0;
}
