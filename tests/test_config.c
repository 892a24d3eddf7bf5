/*
 * test_config.c: the Axolotl-style config (common/config.c) and the shared command-line options
 * (common/cli.c).
 *
 * The issue's example config (jobs/example_axolotl.yml, verbatim) and a config with the other
 * keys users commonly have must parse to the values written in them; each kind of bad config
 * (tests/fixtures/config/) must fail with exit code 2 and a message naming file:line:column.
 * Tests run from the source root.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli.h"
#include "config.h"
#include "log.h"
#include "util.h"

#define FIX "tests/fixtures/config/"

/* ------------------------------------------------------------------------------------------ */
/* Helpers                                                                                    */

/* stderr into a temporary file while a block runs, so warnings and info lines can be read. */
static FILE *capture_file;
static int saved_stderr = -1;

static void capture_begin(void)
{
    fflush(stderr);
    capture_file = tmpfile();
    cr_assert(capture_file);
    saved_stderr = dup(STDERR_FILENO);
    dup2(fileno(capture_file), STDERR_FILENO);
}

/* Stop capturing; returns what was written (caller frees). */
static char *capture_end(void)
{
    fflush(stderr);
    dup2(saved_stderr, STDERR_FILENO);
    close(saved_stderr);
    long n = ftell(capture_file);
    char *text = calloc(1, (size_t)(n > 0 ? n : 0) + 1);
    rewind(capture_file);
    size_t got = fread(text, 1, (size_t)(n > 0 ? n : 0), capture_file);
    text[got] = '\0';
    fclose(capture_file);
    fputs(text, stderr); /* keep it in the test log */
    return text;
}

/* Load and finalize; returns the first non-zero code. */
static int load_final(rubric_config *cfg, const char *path, int strict)
{
    int rc = config_load(cfg, path, strict);
    return rc ? rc : config_finalize(cfg);
}

/* The failure must be exit code 2 with `place` (file:line:column) and `what` in the message. */
static void expect_input_error(int rc, const char *place, const char *what)
{
    cr_assert_eq(rc, RB_EXIT_INPUT, "expected exit code 2, got %d (%s)", rc, err_msg());
    cr_assert(strstr(err_msg(), place), "message lacks '%s': %s", place, err_msg());
    if (what)
        cr_assert(strstr(err_msg(), what), "message lacks '%s': %s", what, err_msg());
}

static void expect_load_error(const char *file, int strict, const char *place, const char *what)
{
    rubric_config cfg;
    int rc = load_final(&cfg, file, strict);
    expect_input_error(rc, place, what);
    config_free(&cfg);
}

static void setup(void) { log_init(-1, LOG_INFO); }

TestSuite(config, .init = setup);
TestSuite(cli, .init = setup);

/* ------------------------------------------------------------------------------------------ */
/* Good configs                                                                               */

Test(config, issue_example_parses_as_is)
{
    rubric_config c;
    capture_begin();
    int rc = load_final(&c, "jobs/example_axolotl.yml", 1);
    char *log = capture_end();
    cr_assert_eq(rc, 0, "%s", err_msg());

    cr_assert_str_eq(c.base_model, "Qwen/Qwen3-1.7B");
    cr_assert_str_eq(c.chat_template, "qwen3");
    cr_assert_eq(c.prompt_format, PROMPT_CHATML_QWEN3);
    cr_assert_eq(c.n_datasets, 1);
    cr_assert_str_eq(c.datasets[0].path, "data/train.jsonl");
    cr_assert_str_eq(c.datasets[0].ds_type, "json");
    cr_assert_str_eq(c.datasets[0].type, "alpaca");
    cr_assert_eq(c.load_in_4bit, 1);
    cr_assert_eq(c.adapter, ADAPTER_QLORA);
    cr_assert_eq(c.lora_r, 16);
    cr_assert_float_eq(c.lora_alpha, 32.0, 0);
    cr_assert_float_eq(c.lora_dropout, 0.05, 0);
    cr_assert_eq(c.lora_targets, (unsigned)LORA_ALL);
    cr_assert_eq(c.sequence_len, 4096);
    cr_assert_eq(c.sample_packing, 1);
    cr_assert_eq(c.micro_batch_size, 4);
    cr_assert_eq(c.gradient_accumulation_steps, 4);
    cr_assert_eq(c.num_epochs, 3);
    cr_assert_str_eq(c.optimizer, "adamw_torch_4bit");
    cr_assert_float_eq(c.learning_rate, 0.0002, 0);
    cr_assert_eq(c.lr_scheduler, SCHED_COSINE);
    cr_assert_float_eq(c.warmup_ratio, 0.1, 0);
    cr_assert_eq(c.gradient_checkpointing, 1);
    cr_assert_eq(c.flash_attention, 1);
    cr_assert_str_eq(c.bf16, "auto");
    cr_assert_eq(c.tf32, 1);
    cr_assert_str_eq(c.deepspeed, "deepspeed_configs/zero2.json");

    /* the DeepSpeed JSON: found from the cwd (not beside jobs/), stage 2, its bucket sizes */
    cr_assert_str_eq(c.deepspeed_path, "deepspeed_configs/zero2.json");
    cr_assert_eq(c.zero_stage, 2);
    cr_assert_eq(c.reduce_bucket_size, 500000000);
    cr_assert_eq(c.allgather_bucket_size, 500000000);

    /* one info line per key rubric handles differently, no warnings */
    const char *infos[] = {"flash_attention:", "tf32:", "bf16:", "moments are kept in fp32",
                           "chat template"};
    for (size_t i = 0; i < RB_ARRAY_LEN(infos); i++)
        cr_assert(strstr(log, infos[i]), "no info line with '%s':\n%s", infos[i], log);
    cr_assert_null(strstr(log, "warn"), "unexpected warning:\n%s", log);
    cr_assert(strstr(log, "jobs/example_axolotl.yml:23:1: flash_attention"), "%s", log);
    cr_assert_null(strstr(log, "gradient_checkpointing"), "gradient_checkpointing is acted on");
    free(log);
    config_free(&c);
}

Test(config, common_axolotl_keys_parse)
{
    rubric_config c;
    capture_begin();
    int rc = load_final(&c, FIX "full.yml", 1);
    char *log = capture_end();
    cr_assert_eq(rc, 0, "%s", err_msg());

    cr_assert_str_eq(c.base_model, "./models/qwen3-tiny");
    cr_assert_eq(c.n_datasets, 2);
    cr_assert_str_eq(c.datasets[1].path, "data/train_b.jsonl");
    cr_assert_str_eq(c.datasets[0].ds_type, "json"); /* the default */
    cr_assert_eq(c.n_test_datasets, 1);
    cr_assert_str_eq(c.test_datasets[0].path, "data/test.jsonl");
    cr_assert_str_eq(c.score_after_train, "data/score_me.jsonl");
    cr_assert_str_eq(c.dataset_prepared_path, "prepared/run1");
    cr_assert_float_eq(c.val_set_size, 200.0, 0);
    cr_assert_str_eq(c.output_dir, "./out/run1");
    cr_assert_eq(c.prompt_format, PROMPT_ALPACA);
    cr_assert_eq(c.adapter, ADAPTER_LORA);
    cr_assert_eq(c.lora_r, 32);
    cr_assert_float_eq(c.lora_alpha, 64.0, 0);
    cr_assert_float_eq(c.lora_dropout, 0.0, 0);
    cr_assert_eq(c.lora_targets, (unsigned)LORA_ALL); /* lora_target_linear: true */
    cr_assert_eq(c.sequence_len, 1024);
    cr_assert_eq(c.sample_packing, 0);
    cr_assert_eq(c.micro_batch_size, 2);
    cr_assert_eq(c.gradient_accumulation_steps, 8);
    cr_assert_eq(c.num_epochs, 2);
    cr_assert_eq(c.max_steps, 500);
    cr_assert_float_eq(c.learning_rate, 1e-4, 0);
    cr_assert_eq(c.lr_scheduler, SCHED_LINEAR);
    cr_assert_eq(c.warmup_steps, 20);
    cr_assert_float_eq(c.weight_decay, 0.01, 0);
    cr_assert_float_eq(c.adam_beta2, 0.95, 0);
    cr_assert_float_eq(c.adam_epsilon, 1e-6, 0);
    cr_assert_float_eq(c.max_grad_norm, 0.5, 0);
    cr_assert_eq(c.train_on_inputs, 1);
    cr_assert_eq(c.seed, 1234u);
    cr_assert_str_eq(c.bf16, "false");
    cr_assert_eq(c.logging_steps, 10);
    cr_assert_eq(c.eval_steps, 50);
    cr_assert_eq(c.save_steps, 100);
    cr_assert_eq(c.save_total_limit, 3);
    cr_assert_str_eq(c.resume_from_checkpoint, "auto");
    cr_assert_str_eq(c.pad_token, "<|endoftext|>");
    cr_assert_eq(c.score_min, 1);
    cr_assert_eq(c.score_max, 5);
    cr_assert_eq(c.score_batch_size, 64);
    cr_assert_float_eq(c.gpu_hour_cost, 0.55, 0);
    cr_assert_null(c.deepspeed);
    cr_assert_eq(c.zero_stage, 2); /* no DeepSpeed JSON: ZeRO-2 */

    /* wandb_project has a value: one info line; the empty wandb_* keys say nothing */
    cr_assert(strstr(log, "full.yml:58:1: wandb_project"), "%s", log);
    cr_assert_null(strstr(log, "wandb_entity"), "%s", log);
    cr_assert_null(strstr(log, "warn"), "%s", log);
    cr_assert_null(strstr(log, "fp16"), "fp16: false needs no info line:\n%s", log);
    free(log);
    config_free(&c);
}

Test(config, defaults_without_a_file)
{
    rubric_config c;
    config_defaults(&c);
    cr_assert_eq(config_finalize(&c), 0, "%s", err_msg());
    cr_assert_eq(c.zero_stage, 2);
    cr_assert_eq(c.lora_r, 8);
    cr_assert_eq(c.max_steps, -1);
    cr_assert_eq(c.warmup_steps, -1);
    cr_assert_eq(c.prompt_format, PROMPT_ALPACA);
    cr_assert_str_eq(config_source(&c), "<defaults>");
    config_free(&c);
}

Test(config, print_config_round_trips)
{
    rubric_config a, b;
    cr_assert_eq(load_final(&a, "jobs/example_axolotl.yml", 1), 0, "%s", err_msg());
    char *yaml = config_to_yaml(&a);
    cr_assert(strstr(yaml, "lora_r: 16\n"), "%s", yaml);
    cr_assert(strstr(yaml, "zero_stage: 2\n"), "%s", yaml);

    /* the printed YAML read back strictly gives the same config, printed the same */
    char path[] = "/tmp/rubric_roundtrip_XXXXXX.yml";
    int fd = mkstemps(path, 4);
    cr_assert(fd >= 0);
    cr_assert_eq(write(fd, yaml, strlen(yaml)), (ssize_t)strlen(yaml));
    close(fd);
    cr_assert_eq(load_final(&b, path, 1), 0, "%s\n%s", err_msg(), yaml);
    char *again = config_to_yaml(&b);
    cr_assert_str_eq(again, yaml);
    cr_assert_eq(b.lora_targets, a.lora_targets);
    cr_assert_float_eq(b.learning_rate, a.learning_rate, 0);
    unlink(path);
    free(yaml);
    free(again);
    config_free(&a);
    config_free(&b);
}

/* ------------------------------------------------------------------------------------------ */
/* Bad configs: exit code 2, file:line:column, what was expected                              */

Test(config, wrong_type)
{
    expect_load_error(FIX "wrong_type.yml", 0, FIX "wrong_type.yml:3:9",
                      "lora_r: expected an integer from 1 to 4096, got \"abc\"");
}

Test(config, value_out_of_range)
{
    expect_load_error(FIX "bad_value.yml", 0, FIX "bad_value.yml:3:15",
                      "lora_dropout: expected a number in [0, 1), got \"1.5\"");
}

Test(config, unknown_choice)
{
    expect_load_error(FIX "bad_choice.yml", 0, FIX "bad_choice.yml:2:15",
                      "expected cosine, linear or constant");
}

Test(config, unknown_lora_target)
{
    expect_load_error(FIX "bad_target.yml", 0, FIX "bad_target.yml:2:31", "qkv_proj");
}

Test(config, unsupported_dataset_type)
{
    expect_load_error(FIX "bad_dataset_type.yml", 0, FIX "bad_dataset_type.yml:4:11",
                      "datasets[0].type: expected alpaca");
}

Test(config, unknown_key_warns_with_its_line)
{
    rubric_config c;
    capture_begin();
    int rc = load_final(&c, FIX "unknown_key.yml", 0);
    char *log = capture_end();
    cr_assert_eq(rc, 0, "%s", err_msg());
    cr_assert(strstr(log, "warn: " FIX "unknown_key.yml:2:1: unknown key 'lora_rr'"), "%s", log);
    cr_assert(strstr(log, "did you mean 'lora_r'"), "%s", log);
    cr_assert_eq(c.lora_r, 4);
    free(log);
    config_free(&c);
}

Test(config, unknown_key_is_an_error_when_strict)
{
    expect_load_error(FIX "unknown_key.yml", 1, FIX "unknown_key.yml:2:1", "unknown key");
    expect_load_error(FIX "strict_in_file.yml", 0, FIX "strict_in_file.yml:3:1", "unknown key");
}

Test(config, yaml_syntax_error)
{
    expect_load_error(FIX "bad_syntax.yml", 0, FIX "bad_syntax.yml:3:", "YAML syntax error");
}

Test(config, duplicate_key)
{
    expect_load_error(FIX "duplicate_key.yml", 0, FIX "duplicate_key.yml:3:1",
                      "first at line 2");
}

Test(config, missing_file)
{
    expect_load_error(FIX "no_such_config.yml", 0, FIX "no_such_config.yml",
                      "No such file or directory");
}

Test(config, empty_or_not_a_mapping)
{
    expect_load_error(FIX "empty.yml", 0, FIX "empty.yml:1:1", "empty");
    expect_load_error(FIX "not_a_mapping.yml", 0, FIX "not_a_mapping.yml:1:1",
                      "expected a mapping");
}

Test(config, cross_key_conflict)
{
    expect_load_error(FIX "warmup_both.yml", 0, FIX "warmup_both.yml:3:1",
                      "warmup_steps and warmup_ratio");
}

/* ------------------------------------------------------------------------------------------ */
/* DeepSpeed JSON                                                                             */

Test(config, deepspeed_stage3_is_an_error)
{
    expect_load_error(FIX "ds_stage3.yml", 0, FIX "ds_stage3.yml:2:1", "stage 3");
}

Test(config, deepspeed_missing_file_warns_and_means_stage2)
{
    rubric_config c;
    capture_begin();
    int rc = load_final(&c, FIX "ds_missing.yml", 0);
    char *log = capture_end();
    cr_assert_eq(rc, 0, "%s", err_msg());
    cr_assert(strstr(log, "warn: " FIX "ds_missing.yml:2:1: deepspeed:"), "%s", log);
    cr_assert(strstr(log, "not found"), "%s", log);
    cr_assert_eq(c.zero_stage, 2);
    cr_assert_null(c.deepspeed_path);
    free(log);
    config_free(&c);
}

Test(config, deepspeed_beside_the_config_with_buckets)
{
    rubric_config c;
    cr_assert_eq(load_final(&c, FIX "ds_buckets.yml", 0), 0, "%s", err_msg());
    cr_assert_str_eq(c.deepspeed_path, FIX "ds_buckets.json");
    cr_assert_eq(c.zero_stage, 1);
    cr_assert_eq(c.reduce_bucket_size, 200000000);
    cr_assert_eq(c.allgather_bucket_size, 500000000); /* "auto": the default */
    config_free(&c);
}

Test(config, deepspeed_invalid_json)
{
    expect_load_error(FIX "ds_broken.yml", 0, FIX "ds_broken.json:4:", "invalid JSON");
}

/* ------------------------------------------------------------------------------------------ */
/* --set                                                                                      */

Test(config, set_overrides)
{
    rubric_config c;
    cr_assert_eq(config_load(&c, "jobs/example_axolotl.yml", 0), 0, "%s", err_msg());
    cr_assert_eq(config_set(&c, "lora_r=8"), 0, "%s", err_msg());
    cr_assert_eq(config_set(&c, "lora_target_modules=[q_proj, v_proj]"), 0, "%s", err_msg());
    cr_assert_eq(config_set(&c, "learning_rate=3e-4"), 0, "%s", err_msg());
    cr_assert_eq(config_set(&c, "datasets=[{path: other.jsonl, type: alpaca}]"), 0, "%s",
                 err_msg());
    cr_assert_eq(config_set(&c, "deepspeed="), 0, "%s", err_msg());
    cr_assert_eq(config_set(&c, "chat_template="), 0, "%s", err_msg());
    cr_assert_eq(config_finalize(&c), 0, "%s", err_msg());
    cr_assert_null(c.chat_template);
    cr_assert_eq(c.prompt_format, PROMPT_ALPACA);
    cr_assert_eq(c.lora_r, 8);
    cr_assert_eq(c.lora_targets, (unsigned)(LORA_Q | LORA_V));
    cr_assert_float_eq(c.learning_rate, 3e-4, 0);
    cr_assert_eq(c.n_datasets, 1);
    cr_assert_str_eq(c.datasets[0].path, "other.jsonl");
    cr_assert_null(c.deepspeed);
    cr_assert_eq(config_key_line(&c, "lora_r"), -1);
    cr_assert_eq(config_key_line(&c, "sequence_len"), 13);
    config_free(&c);
}

/* An integer out of its range names the range (one rule for every ranged integer key). */
Test(config, int_out_of_range_names_the_range)
{
    static const struct {
        const char *set, *what;
    } cases[] = {
        {"lora_r=5000", "lora_r: expected an integer from 1 to 4096, got \"5000\""},
        {"lora_r=0", "lora_r: expected an integer from 1 to 4096, got \"0\""},
        {"score_max=12", "score_max: expected an integer from 0 to 9, got \"12\""},
        {"zero_stage=3", "zero_stage: expected an integer from 0 to 2, got \"3\""},
        {"micro_batch_size=70000", "micro_batch_size: expected an integer from 1 to 65536"},
        {"sequence_len=8", "sequence_len: expected an integer from 16 to 1048576"},
        {"save_total_limit=-1", "save_total_limit: expected an integer from 0 to 1048576"},
        {"logging_steps=0", "logging_steps: expected a positive integer, got \"0\""},
    };
    for (size_t i = 0; i < RB_ARRAY_LEN(cases); i++) {
        rubric_config c;
        config_defaults(&c);
        expect_input_error(config_set(&c, cases[i].set), "--set:1:", cases[i].what);
        config_free(&c);
    }
    rubric_config c;
    config_defaults(&c);
    cr_assert_eq(config_set(&c, "lora_r=4096"), 0, "%s", err_msg());
    cr_assert_eq(c.lora_r, 4096);
    config_free(&c);
}

Test(config, set_bad_value_names_the_column)
{
    rubric_config c;
    config_defaults(&c);
    expect_input_error(config_set(&c, "lora_r=abc"), "--set:1:8",
                       "lora_r: expected an integer from 1 to 4096, got \"abc\"");
    expect_input_error(config_set(&c, "lora_target_modules=[q_proj, zz]"), "--set:1:30", "zz");
    expect_input_error(config_set(&c, "lora_r=[1"), "--set:1:", "YAML syntax error");
    expect_input_error(config_set(&c, "chat_template=chatml"), "--set:1:15",
                       "chat_template: expected qwen3 or tokenizer_default");
    config_free(&c);
}

Test(config, set_unknown_key_is_an_error)
{
    rubric_config c;
    config_defaults(&c);
    expect_input_error(config_set(&c, "lora_rr=8"), "--set:1:1", "unknown key 'lora_rr'");
    expect_input_error(config_set(&c, "lora_r"), "--set 'lora_r'", "expected key=value");
    config_free(&c);
}

/* ------------------------------------------------------------------------------------------ */
/* base_model: local folder or the Hugging Face cache                                         */

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    cr_assert(f, "cannot write %s", path);
    fputs(text, f);
    fclose(f);
}

Test(config, base_model_from_the_hf_cache)
{
    char home[] = "/tmp/rubric_hf_XXXXXX";
    cr_assert(mkdtemp(home));
    char *snap = xasprintf("%s/hub/models--Qwen--Qwen3-1.7B/snapshots/0123abcd", home);
    char *refs = xasprintf("%s/hub/models--Qwen--Qwen3-1.7B/refs", home);
    cr_assert_eq(mkdir_p(snap), 0);
    cr_assert_eq(mkdir_p(refs), 0);
    char *ref = xasprintf("%s/main", refs);
    write_text(ref, "0123abcd");
    setenv("HF_HOME", home, 1);
    unsetenv("HF_HUB_CACHE");

    /* a snapshot without config.json is an incomplete download */
    rubric_config c;
    cr_assert_eq(load_final(&c, "jobs/example_axolotl.yml", 0), 0, "%s", err_msg());
    expect_input_error(config_resolve_model(&c), "jobs/example_axolotl.yml:1:1",
                       "incomplete download");
    char *config_json = xasprintf("%s/config.json", snap);
    write_text(config_json, "{}");
    free(config_json);
    cr_assert_eq(config_resolve_model(&c), 0, "%s", err_msg());
    cr_assert_str_eq(c.base_model_dir, snap);
    cr_assert_str_eq(c.tokenizer_dir, snap);

    /* a model that is not there: say how to download it */
    cr_assert_eq(config_set(&c, "base_model=Qwen/Qwen3-0.6B"), 0);
    expect_input_error(config_resolve_model(&c), "--set",
                       "huggingface-cli download Qwen/Qwen3-0.6B");
    config_free(&c);

    /* a local folder is used, made absolute so checkpoints stay valid from elsewhere */
    config_defaults(&c);
    cr_assert_eq(config_set(&c, "base_model=tests/fixtures/config"), 0);
    cr_assert_eq(config_resolve_model(&c), 0, "%s", err_msg());
    char *abs = realpath("tests/fixtures/config", NULL);
    cr_assert_not_null(abs);
    cr_assert_str_eq(c.base_model_dir, abs);
    free(abs);
    config_free(&c);
    char *rm = xasprintf("rm -rf '%s'", home);
    cr_assert_eq(system(rm), 0);
    free(rm);
    free(snap);
    free(refs);
    free(ref);
}

Test(config, base_model_missing_from_the_cache)
{
    setenv("HF_HOME", "/nonexistent/rubric_hf", 1);
    unsetenv("HF_HUB_CACHE");
    rubric_config c;
    cr_assert_eq(load_final(&c, "jobs/example_axolotl.yml", 0), 0, "%s", err_msg());
    expect_input_error(config_resolve_model(&c), "jobs/example_axolotl.yml:1:1",
                       "huggingface-cli download Qwen/Qwen3-1.7B");
    config_free(&c);
}

/* ------------------------------------------------------------------------------------------ */
/* The shared command-line options                                                            */

static int own_seen;

static int own_option(int opt, const char *arg, void *ctx)
{
    if (opt == 'o') {
        *(const char **)ctx = arg;
        own_seen++;
        return 0;
    }
    return err_set(RB_EXIT_INPUT, "unexpected option %d", opt);
}

static const struct option own_longs[] = {{"out", required_argument, NULL, 'o'}, {0}};

static cli_spec test_spec(const char **out)
{
    cli_spec s = {.command = "train", .usage = "[CONFIG] [options]", .options = own_longs,
                  .short_options = "o:", .on_option = own_option, .ctx = out,
                  .config_positional = 1, .config_required = 1, .max_args = 1};
    return s;
}

Test(cli, common_and_own_options)
{
    char *argv[] = {"train", "jobs/example_axolotl.yml", "--set", "lora_r=8", "--strict",
                    "--out", "x.jsonl", "--set", "seed=7", "extra", "--quiet", NULL};
    const char *out_path = NULL;
    cli_spec spec = test_spec(&out_path);
    cli_common cli;
    cr_assert_eq(cli_parse_common(11, argv, &spec, &cli), 0);
    cr_assert_str_eq(cli.config_path, "jobs/example_axolotl.yml");
    cr_assert_eq(cli.n_sets, 2);
    cr_assert_str_eq(cli.sets[1], "seed=7");
    cr_assert_eq(cli.strict, 1);
    cr_assert_eq(cli.quiet, 1);
    cr_assert_str_eq(out_path, "x.jsonl");
    cr_assert_eq(cli.n_args, 1);
    cr_assert_str_eq(cli.args[0], "extra");
    cr_assert_eq(log_get_level(), LOG_WARN);

    rubric_config c;
    cr_assert_eq(cli_load_config(&cli, &c), 0, "%s", err_msg());
    cr_assert_eq(c.lora_r, 8);
    cr_assert_eq(c.seed, 7u);
    config_free(&c);
    cli_free(&cli);
}

Test(cli, usage_errors_exit_2)
{
    const char *out_path = NULL;
    cli_spec spec = test_spec(&out_path);
    cli_common cli;
    char *bad_option[] = {"train", "c.yml", "--bogus", NULL};
    cr_assert_eq(cli_parse_common(3, bad_option, &spec, &cli), RB_EXIT_INPUT);
    cli_free(&cli);
    char *bad_level[] = {"train", "c.yml", "--log-level", "loud", NULL};
    cr_assert_eq(cli_parse_common(4, bad_level, &spec, &cli), RB_EXIT_INPUT);
    cli_free(&cli);
    char *no_config[] = {"train", "--strict", NULL};
    cr_assert_eq(cli_parse_common(2, no_config, &spec, &cli), RB_EXIT_INPUT);
    cli_free(&cli);
    char *bad_set[] = {"train", "c.yml", "--set", "lora_r", NULL};
    cr_assert_eq(cli_parse_common(4, bad_set, &spec, &cli), RB_EXIT_INPUT);
    cli_free(&cli);
    char *missing_value[] = {"train", "c.yml", "--set", NULL};
    cr_assert_eq(cli_parse_common(3, missing_value, &spec, &cli), RB_EXIT_INPUT);
    cli_free(&cli);
    char *too_many[] = {"train", "c.yml", "a", "b", NULL};
    cr_assert_eq(cli_parse_common(4, too_many, &spec, &cli), RB_EXIT_INPUT);
    cli_free(&cli);
}

/* A value given to an option that takes none ("--strict=1") is named as such, through the
 * binary (prep, score) and the parser itself, not "unknown option '-'". */
Test(cli, value_given_to_a_flag_is_named)
{
    const char *bin = getenv("RUBRIC_BIN");
    cr_assert(bin, "RUBRIC_BIN is not set (run through meson test)");
    const char *cases[][2] = {
        {"prep no-such.yml --strict=1", "--strict takes no value (got '--strict=1')"},
        {"score --full-logits=1", "--full-logits takes no value (got '--full-logits=1')"},
        {"prep no-such.yml --quiet=yes", "--quiet takes no value"},
        {"prep no-such.yml --bogus=1", "unknown option '--bogus=1'"},
    };
    for (size_t i = 0; i < RB_ARRAY_LEN(cases); i++) {
        char *cmd = xasprintf("'%s' %s 2>&1", bin, cases[i][0]);
        FILE *p = popen(cmd, "r");
        cr_assert(p);
        char buf[4096];
        size_t n = fread(buf, 1, sizeof buf - 1, p);
        buf[n] = '\0';
        int st = pclose(p);
        cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == RB_EXIT_INPUT, "%s: status %d: %s",
                  cases[i][0], st, buf);
        cr_expect(strstr(buf, cases[i][1]), "%s: %s", cases[i][0], buf);
        cr_expect(!strstr(buf, "unknown option '-'\n"), "%s: %s", cases[i][0], buf);
        free(cmd);
    }
}

/* A command without a config (init-model) takes the logging options but not the config ones. */
Test(cli, no_config_spec_takes_the_logging_options_only)
{
    cli_spec spec = {.command = "init-model", .no_config = 1};
    cli_common cli;
    char *quiet[] = {"init-model", "-q", NULL};
    cr_assert_eq(cli_parse_common(2, quiet, &spec, &cli), 0);
    cr_assert_eq(cli.quiet, 1);
    cr_assert_eq(log_get_level(), LOG_WARN);
    cli_free(&cli);
    char *level[] = {"init-model", "--log-level", "error", NULL};
    cr_assert_eq(cli_parse_common(3, level, &spec, &cli), 0);
    cr_assert_eq(log_get_level(), LOG_ERROR);
    cli_free(&cli);
    log_set_level(LOG_INFO);
    char *config[] = {"init-model", "--config", "c.yml", NULL};
    cr_assert_eq(cli_parse_common(3, config, &spec, &cli), RB_EXIT_INPUT);
    cli_free(&cli);
    char *set[] = {"init-model", "-c", "c.yml", NULL};
    cr_assert_eq(cli_parse_common(3, set, &spec, &cli), RB_EXIT_INPUT);
    cli_free(&cli);
}

Test(cli, help_returns_0_and_sets_help)
{
    const char *out_path = NULL;
    cli_spec spec = test_spec(&out_path);
    cli_common cli;
    char *argv[] = {"train", "--help", NULL};
    cr_assert_eq(cli_parse_common(2, argv, &spec, &cli), 0);
    cr_assert_eq(cli.help, 1);
    cli_free(&cli);
}

Test(cli, bad_set_value_fails_the_load)
{
    const char *out_path = NULL;
    cli_spec spec = test_spec(&out_path);
    cli_common cli;
    char *argv[] = {"train", "--config", "jobs/example_axolotl.yml", "--set", "lora_r=abc",
                    NULL};
    cr_assert_eq(cli_parse_common(5, argv, &spec, &cli), 0);
    rubric_config c;
    expect_input_error(cli_load_config(&cli, &c), "--set:1:8", "lora_r");
    config_free(&c);
    cli_free(&cli);
}

/* ------------------------------------------------------------------------------------------ */
/* docs/config.md documents every key                                                         */

Test(config, every_key_is_documented)
{
    char *doc = NULL;
    cr_assert_eq(read_file("docs/config.md", &doc, NULL), 0, "%s", err_msg());
    int n = 0;
    for (const char *name; (name = config_key_name(n)); n++) {
        char *row = xasprintf("\n| `%s` |", name);
        cr_assert(strstr(doc, row), "docs/config.md has no table row for `%s`", name);
        free(row);
    }
    cr_assert_gt(n, 50);
    free(doc);
}

/* ------------------------------------------------------------------------------------------ */
/* One YAML document per config                                                               */

Test(config, second_document_is_an_error_naming_its_line)
{
    /* everything after the `---` used to be dropped without a word */
    const char *text = "base_model: x\noutput_dir: first\n---\noutput_dir: second\n";
    rubric_config c;
    expect_input_error(config_load_text(&c, "cfg.yml", text, 0), "cfg.yml:3:1:",
                       "a second YAML document starts here");
    config_free(&c);

    char dir[] = "/tmp/rubric_cfgdoc_XXXXXX";
    cr_assert(mkdtemp(dir));
    char *path = xasprintf("%s/cfg.yml", dir);
    write_text(path, text);
    char *place = xasprintf("%s:3:1:", path);
    expect_load_error(path, 0, place, "one document per config file");

    /* --set: a value holding a second document */
    config_defaults(&c);
    expect_input_error(config_set(&c, "output_dir=a\n---\nb"), "--set:", "second YAML document");
    config_free(&c);
    unlink(path);
    rmdir(dir);
    free(place);
    free(path);
}

Test(config, leading_document_marker_is_fine)
{
    rubric_config c;
    int rc = config_load_text(&c, "cfg.yml", "---\nbase_model: x\noutput_dir: kept\n", 0);
    cr_assert_eq(rc, 0, "%s", err_msg());
    cr_assert_str_eq(c.output_dir, "kept");
    config_free(&c);

    /* an explicit end `...` with nothing after it is one document too */
    rc = config_load_text(&c, "cfg.yml", "---\noutput_dir: kept\n...\n", 0);
    cr_assert_eq(rc, 0, "%s", err_msg());
    cr_assert_str_eq(c.output_dir, "kept");
    config_free(&c);
}

/* ------------------------------------------------------------------------------------------ */
/* Dataset files, checked for train and prep before anything is made                          */

/* A temporary folder with cfg.yml holding `text` (each %s: the folder); it is loaded and
 * finalized, which must succeed: only config_check_datasets looks at the files. */
static char *dataset_config(char *dir, const char *text, rubric_config *c)
{
    cr_assert(mkdtemp(dir));
    char *path = xasprintf("%s/cfg.yml", dir);
    char *body = xasprintf(text, dir, dir, dir);
    write_text(path, body);
    free(body);
    int rc = load_final(c, path, 0);
    cr_assert_eq(rc, 0, "load and finalize must not look at the files: %s", err_msg());
    return path;
}

Test(config, missing_dataset_file_names_its_place)
{
    char dir[] = "/tmp/rubric_cfgds_XXXXXX";
    rubric_config c;
    char *path = dataset_config(dir,
                                "base_model: x\n"
                                "datasets:\n"
                                "  - path: %s/train.jsonl\n"
                                "    type: alpaca\n"
                                "  - path: %s/trian.jsonl\n",
                                &c);
    char *train = xasprintf("%s/train.jsonl", dir);
    write_text(train, "{\"instruction\": \"i\", \"input\": \"x\", \"output\": \"1\"}\n");

    /* the first exists; the second, at line 5 column 11, does not */
    char *place = xasprintf("%s:5:11: datasets[1].path: %s/trian.jsonl does not exist", path,
                            dir);
    expect_input_error(config_check_datasets(&c), place, NULL);
    config_free(&c);
    free(place);

    /* a relative path is read from the working directory (the source root here) */
    rubric_config r;
    int rc = config_load_text(&r, "rel.yml", "datasets:\n  - path: tests/no_such.jsonl\n", 0);
    cr_assert_eq(rc, 0, "%s", err_msg());
    r.config_path = xstrdup("rel.yml");
    expect_input_error(config_check_datasets(&r), "rel.yml:2:11: datasets[0].path",
                       "tests/no_such.jsonl does not exist");
    free(r.datasets[0].path);
    r.datasets[0].path = xstrdup("jobs/example_axolotl.yml"); /* any file there */
    cr_assert_eq(config_check_datasets(&r), 0, "%s", err_msg());
    config_free(&r);

    unlink(train);
    unlink(path);
    rmdir(dir);
    free(train);
    free(path);
}

/* output_dir, checked by train before the model loads: a regular file, a path under a file
 * (mkdir fails even for root) and an existing folder that takes no file are exit 2 at the
 * key's place with the reason; a missing folder is made, a writable one left as it was. */
Test(config, output_dir_must_be_a_writable_folder)
{
    char dir[] = "/tmp/rubric_cfgout_XXXXXX";
    rubric_config c;
    char *path = dataset_config(dir, "base_model: x\n# checkpoints\noutput_dir: %s/my.yml\n", &c);
    char *file = xasprintf("%s/my.yml", dir);
    write_text(file, "lora_r: 8\n");
    char *place = xasprintf("%s:3:1: output_dir: %s exists and is not a folder", path, file);
    expect_input_error(config_check_output_dir(&c), place, "--set output_dir=");

    /* under a regular file: the mkdir error and its reason (the key now set by --set) */
    cr_assert_eq(config_set(&c, "output_dir=elsewhere"), 0, "%s", err_msg());
    free(c.output_dir);
    c.output_dir = xasprintf("%s/out", file);
    expect_input_error(config_check_output_dir(&c), "--set: output_dir: ", "Not a directory");
    cr_expect(strstr(err_msg(), c.output_dir), "%s", err_msg());

    /* missing: made, and nothing left in it */
    char *fresh = xasprintf("%s/runs/a", dir);
    free(c.output_dir);
    c.output_dir = xstrdup(fresh);
    cr_assert_eq(config_check_output_dir(&c), 0, "%s", err_msg());
    cr_assert(path_is_dir(fresh));
    cr_assert_eq(rmdir(fresh), 0, "the write test left a file in %s", fresh);

    /* an existing folder that takes no file: mode 0555 for a user, chattr +i for root */
    char *ro = xasprintf("%s/ro", dir), *cmd = xasprintf("chattr +i %s 2>/dev/null", ro);
    cr_assert_eq(mkdir(ro, 0555), 0);
    int locked = geteuid() != 0 || system(cmd) == 0;
    if (locked) {
        free(c.output_dir);
        c.output_dir = xstrdup(ro);
        expect_input_error(config_check_output_dir(&c), "--set: output_dir: ", "not writable");
        cr_expect(strstr(err_msg(), ro), "%s", err_msg());
    } else {
        cr_log_warn("chattr +i is not supported here: the unwritable-folder case is skipped");
    }
    free(cmd);
    cmd = xasprintf("chattr -i %s 2>/dev/null; rm -rf %s", ro, dir);
    cr_expect_eq(system(cmd), 0);
    config_free(&c);
    free(cmd);
    free(ro);
    free(fresh);
    free(place);
    free(file);
    free(path);
}

Test(config, dataset_path_that_is_a_directory)
{
    char dir[] = "/tmp/rubric_cfgds_XXXXXX";
    rubric_config c;
    char *path = dataset_config(dir, "base_model: x\ndatasets:\n  - path: %s\n", &c);
    char *place = xasprintf("%s:3:11: datasets[0].path", path);
    expect_input_error(config_check_datasets(&c), place, "is a directory");
    config_free(&c);
    unlink(path);
    rmdir(dir);
    free(place);
    free(path);
}

Test(config, empty_or_absent_datasets)
{
    char dir[] = "/tmp/rubric_cfgds_XXXXXX";
    rubric_config c;
    char *path = dataset_config(dir, "base_model: x\ndatasets: []\n", &c);
    char *place = xasprintf("%s:2:1: datasets: no dataset given", path);
    expect_input_error(config_check_datasets(&c), place, NULL);
    config_free(&c);

    /* no datasets key at all: the file is named */
    config_load_text(&c, "cfg.yml", "base_model: x\n", 0);
    expect_input_error(config_check_datasets(&c), "datasets: no dataset given", NULL);
    config_free(&c);
    unlink(path);
    rmdir(dir);
    free(place);
    free(path);
}

Test(config, train_with_a_missing_dataset_makes_no_output_dir)
{
    const char *bin = getenv("RUBRIC_BIN");
    cr_assert(bin, "RUBRIC_BIN is not set (run through meson test)");
    char dir[] = "/tmp/rubric_cfgds_XXXXXX";
    rubric_config c;
    char *path = dataset_config(dir,
                                "base_model: %s\n" /* a local folder: it resolves */
                                "output_dir: %s/out\n"
                                "datasets:\n"
                                "  - path: %s/missing.jsonl\n",
                                &c);
    config_free(&c);
    char *cmd = xasprintf("'%s' train '%s' 2>'%s/err.txt'", bin, path, dir);
    int status = system(cmd);
    char *err_path = xasprintf("%s/err.txt", dir), *err = NULL;
    cr_assert_eq(read_file(err_path, &err, NULL), 0);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == RB_EXIT_INPUT, "status %d: %s",
              status, err);
    char *place = xasprintf("%s:4:11: datasets[0].path", path);
    cr_assert(strstr(err, place), "%s", err);
    char *out = xasprintf("%s/out", dir);
    cr_assert(!path_exists(out), "output_dir was created before the datasets were checked");
    unlink(err_path);
    unlink(path);
    rmdir(dir);
    free(out);
    free(place);
    free(err);
    free(err_path);
    free(cmd);
    free(path);
}

Test(config, nested_key_typo_gets_a_suggestion)
{
    rubric_config c;
    capture_begin();
    int rc = config_load_text(&c, "cfg.yml",
                              "datasets:\n  - pth: a.jsonl\n    path: a.jsonl\n"
                              "special_tokens:\n  pad_tokn: x\n",
                              0);
    char *log = capture_end();
    cr_assert_eq(rc, 0, "%s", err_msg());
    cr_assert(strstr(log, "cfg.yml:2:5: unknown key 'datasets[0].pth' (did you mean 'path'?)"),
              "%s", log);
    cr_assert(strstr(log, "unknown key 'special_tokens.pad_tokn' (did you mean 'pad_token'?)"),
              "%s", log);
    free(log);
    config_free(&c);
}

/* The files scored after training are checked before training: a missing score_after_train or
 * test_datasets path names its key's place. */
Test(config, score_files_checked_before_training)
{
    char dir[] = "/tmp/rubric_cfgds_XXXXXX";
    rubric_config c;
    char *path = dataset_config(dir,
                                "base_model: x\n"
                                "datasets:\n"
                                "  - path: %s/train.jsonl\n"
                                "score_after_train: %s/tset.jsonl\n",
                                &c);
    char *place = xasprintf("%s:4:1: score_after_train", path);
    expect_input_error(config_check_score_files(&c), place, "does not exist");
    free(place);
    config_free(&c);
    unlink(path);
    free(path);

    char dir2[] = "/tmp/rubric_cfgds_XXXXXX";
    path = dataset_config(dir2,
                          "base_model: x\n"
                          "datasets:\n"
                          "  - path: %s/train.jsonl\n"
                          "test_datasets:\n"
                          "  - path: %s\n",
                          &c);
    expect_input_error(config_check_score_files(&c), "test_datasets[0].path", "is a directory");
    config_free(&c);
    unlink(path);
    rmdir(dir);
    rmdir(dir2);
    free(path);
}
