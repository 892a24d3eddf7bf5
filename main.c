/* main.c: `rubric <command> [options]`: dispatch to the subcommands. */
#include <stdio.h>
#include <string.h>

#include "commands.h"
#include "log.h"
#include "rubric_build.h"
#include "util.h"

typedef struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} command;

static const command commands[] = {
    {"prep", cmd_prep, "validate, deduplicate, tokenize, split and pack a dataset"},
    {"train", cmd_train, "LoRA / QLoRA fine-tuning (coordinator + ZeRO-2 workers under MPI)"},
    {"score", cmd_score, "data-parallel batch scoring with metrics"},
    {"merge", cmd_merge, "merge an adapter into the base model (Hugging Face layout)"},
    {"export-adapter", cmd_export_adapter, "write an adapter in PEFT's layout"},
    {"inspect", cmd_inspect, "print a checkpoint or prepared dataset readably"},
    {"init-model", cmd_init_model, "write a randomly initialised model in Hugging Face layout"},
    {"tokenize", cmd_tokenize, "encode or decode JSONL text with a tokenizer.json"},
};

static void usage(FILE *out)
{
    fprintf(out,
            "usage: rubric <command> [options]\n"
            "\n"
            "Fine-tune a small Qwen3 model to score text on a rubric, and score with it.\n"
            "\n"
            "commands:\n");
    for (size_t i = 0; i < RB_ARRAY_LEN(commands); i++)
        fprintf(out, "  %-15s %s\n", commands[i].name, commands[i].summary);
    fprintf(out,
            "\n"
            "Run `rubric <command> --help` for a command's options.\n"
            "Under MPI (mpirun, srun) rank 0 is the coordinator and ranks 1..N are workers.\n"
            "Exit codes: 0 success, 1 runtime failure, 2 bad usage or bad input.\n");
}

int main(int argc, char **argv)
{
    log_init(-1, LOG_INFO);
    if (argc < 2) {
        usage(stderr);
        return RB_EXIT_INPUT;
    }
    const char *name = argv[1];
    if (strcmp(name, "--help") == 0 || strcmp(name, "-h") == 0 || strcmp(name, "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(name, "--version") == 0 || strcmp(name, "version") == 0) {
        printf("rubric %s (%s backend%s)\n", RUBRIC_VERSION,
               RUBRIC_HAVE_CUDA ? "CUDA + CPU" : "CPU",
               RUBRIC_HAVE_CUDA ? ", NCCL" : "");
        return 0;
    }
    for (size_t i = 0; i < RB_ARRAY_LEN(commands); i++)
        if (strcmp(name, commands[i].name) == 0)
            return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "rubric: error: unknown command '%s'\n\n", name);
    usage(stderr);
    return RB_EXIT_INPUT;
}
