/*
 * commands.h: the subcommands of `rubric`. Each takes the arguments after its name
 * (argv[0] is the command name) and returns the process exit code.
 */
#ifndef RUBRIC_COMMANDS_H
#define RUBRIC_COMMANDS_H

int cmd_prep(int argc, char **argv);        /* coordinator/cmd_prep.c */
int cmd_train(int argc, char **argv);       /* coordinator/cmd_train.c */
int cmd_score(int argc, char **argv);       /* coordinator/cmd_score.c */
int cmd_merge(int argc, char **argv);       /* coordinator/cmd_export.c */
int cmd_export_adapter(int argc, char **argv); /* coordinator/cmd_export.c */
int cmd_inspect(int argc, char **argv);     /* coordinator/cmd_inspect.c */
int cmd_init_model(int argc, char **argv);  /* worker/cmd_init_model.c */
int cmd_tokenize(int argc, char **argv);    /* common/cmd_tokenize.c */

#endif
