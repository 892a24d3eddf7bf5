/* cmd_export.c: placeholder until the export issue lands. */
#include "commands.h"
#include "log.h"
#include "util.h"

int cmd_merge(int argc, char **argv)
{
    log_error("'%s' is not implemented in this build yet", argv[0]);
    return RB_EXIT_RUNTIME;
}

int cmd_export_adapter(int argc, char **argv)
{
    log_error("'%s' is not implemented in this build yet", argv[0]);
    return RB_EXIT_RUNTIME;
}
