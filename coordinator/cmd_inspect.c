/* cmd_inspect.c: `rubric inspect FILE.h5`: print a training checkpoint or a prepared dataset
 * readably. */
#include <stdio.h>
#include <string.h>

#include "ckpt.h"
#include "commands.h"
#include "log.h"
#include "prep.h"
#include "util.h"

static void inspect_usage(FILE *out)
{
    fprintf(out,
            "usage: rubric inspect [--no-config] FILE.h5\n"
            "\n"
            "Print a training checkpoint: step, epoch, loss, learning-rate schedule, base model,\n"
            "the run's layout, each LoRA tensor with its shape and norm, which optimizer state\n"
            "is present, and the resolved config. The whole file is verified first (format\n"
            "version, completeness, every dataset's hash): a truncated, corrupt or foreign file\n"
            "is an error (exit 2). The layout is in docs/distributed.md; `h5dump -A FILE`\n"
            "shows the same attributes with their descriptions.\n"
            "\n"
            "A prepared dataset (dataset_prepared_path/<fingerprint>.h5, written by rubric prep)\n"
            "is printed too: fingerprint, sequence_len, packing, samples, bins, and the report of\n"
            "the build that wrote it (rows read, rejected by reason, duplicates, tokens, scores\n"
            "per row). Any other file is an error (exit 2).\n");
}

int cmd_inspect(int argc, char **argv)
{
    const char *path = NULL;
    int show_config = 1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            inspect_usage(stdout);
            return 0;
        } else if (strcmp(argv[i], "--no-config") == 0) {
            show_config = 0;
        } else if (argv[i][0] == '-' || path) {
            log_error("inspect: unexpected argument '%s'", argv[i]);
            inspect_usage(stderr);
            return RB_EXIT_INPUT;
        } else {
            path = argv[i];
        }
    }
    if (!path) {
        inspect_usage(stderr);
        return RB_EXIT_INPUT;
    }
    int rc = ckpt_check_h5_file(path, "a checkpoint or prepared dataset (.h5), what `rubric "
                                "inspect` reads");
    if (!rc)
        rc = prep_is_dataset_file(path) ? prep_dataset_print(path) : ckpt_print(path, show_config);
    if (rc)
        log_error("inspect: %s", err_msg());
    return rc;
}
