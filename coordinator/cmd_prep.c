/* cmd_prep.c: placeholder until its issue lands. */
#include "commands.h"
#include "log.h"
#include "util.h"

int cmd_prep(int argc, char **argv)
{
    log_error("'%s' is not implemented in this build yet", argv[0]);
    return RB_EXIT_RUNTIME;
}
