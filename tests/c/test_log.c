/* The log hook (btb_set_log_callback): btb's log lines reach a C callback at the level asked for,
 * a new callback replaces the old one (whose user_data is freed), and NULL removes it. */
#define _GNU_SOURCE
#include "btb.h"
#include "check.h"
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define WAIT_MS 30000

/* What one callback saw: lines may come from any btb thread, so under a mutex. */
typedef struct {
    pthread_mutex_t lock;
    int lines;
    int below_level; /* lines above the level asked for (must stay 0) */
    int bad_target;
    uint32_t max_level;
    bool saw_start, saw_end;
    int freed;
} sink;

static void sink_init(sink *s, uint32_t max_level) {
    memset(s, 0, sizeof *s);
    pthread_mutex_init(&s->lock, NULL);
    s->max_level = max_level;
}

static void on_log(uint32_t level, const char *target, const char *message, void *user_data) {
    sink *s = user_data;
    pthread_mutex_lock(&s->lock);
    s->lines++;
    if (level < BTB_LOG_ERROR || level > s->max_level) s->below_level++;
    if (strncmp(target, "btb", 3) != 0) s->bad_target++;
    if (level == BTB_LOG_INFO && strstr(message, "of \"logged\" starts (attempt 1")) s->saw_start = true;
    if (level == BTB_LOG_INFO && strstr(message, "of \"logged\" ended SUCCEEDED after ") &&
        strstr(message, "ms (attempt 1)"))
        s->saw_end = true;
    pthread_mutex_unlock(&s->lock);
}

static void free_sink(void *user_data) {
    sink *s = user_data;
    pthread_mutex_lock(&s->lock);
    s->freed++;
    pthread_mutex_unlock(&s->lock);
}

static int lines_of(sink *s) {
    pthread_mutex_lock(&s->lock);
    int n = s->lines;
    pthread_mutex_unlock(&s->lock);
    return n;
}

static void run_task(btb_instance *instance, void *user_data) {
    (void)instance;
    (void)user_data;
}

static void request_and_wait(btb_system *sys, btb_registration *r) {
    uint32_t res = 99;
    bool idle = false;
    EXPECT(btb_registration_request(r, NULL, &res), BTB_OK);
    CHECK(res == BTB_APPLICATION_TRIGGER_ALLOWED);
    EXPECT(btb_system_wait_idle(sys, WAIT_MS, &idle), BTB_OK);
    CHECK(idle);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s SCRATCH_DIR\n", argv[0]);
        return 2;
    }
    char run[4096];
    snprintf(run, sizeof run, "%s/run", argv[1]);
    if (mkdir(run, 0700) != 0 && errno != EEXIST) {
        perror(run);
        return 2;
    }
    static char abs_run[4096];
    if (!realpath(run, abs_run)) {
        perror(run);
        return 2;
    }
    setenv("XDG_RUNTIME_DIR", abs_run, 1);

    sink info, errors, dropped;
    sink_init(&info, BTB_LOG_INFO);
    sink_init(&errors, BTB_LOG_ERROR);
    sink_init(&dropped, BTB_LOG_TRACE);

    /* A level that is none: refused, and the caller keeps its user_data. */
    EXPECT(btb_set_log_callback(on_log, 0, &info, free_sink), BTB_ERROR_INVALID_ARGUMENT);
    MSG_HAS("BTB_LOG_");
    EXPECT(btb_set_log_callback(on_log, BTB_LOG_TRACE + 1, &info, free_sink), BTB_ERROR_INVALID_ARGUMENT);
    CHECK(info.freed == 0);

    EXPECT(btb_set_log_callback(on_log, BTB_LOG_INFO, &info, free_sink), BTB_OK);

    btb_manifest *m = NULL;
    btb_system_options *o = NULL;
    btb_system *sys = NULL;
    const char *general[] = {"general"};
    EXPECT(btb_manifest_new("org.example.clog", "1.0", &m), BTB_OK);
    EXPECT(btb_manifest_declare(m, "app.Logged", general, 1, NULL, 0), BTB_OK);
    EXPECT(btb_system_options_new(&o), BTB_OK);
    EXPECT(btb_system_options_set_manifest(o, m), BTB_OK);
    EXPECT(btb_system_options_set_store(o, ":memory:"), BTB_OK);
    EXPECT(btb_system_open(o, &sys), BTB_OK);
    btb_system_options_free(o);
    btb_manifest_free(m);
    if (!sys) {
        printf("%d passed, %d failed\n", passed, failed + 1);
        return 1;
    }
    EXPECT(btb_system_register_entry_point(sys, "app.Logged", run_task, NULL, NULL), BTB_OK);
    btb_builder *b = NULL;
    btb_trigger *t = NULL;
    btb_registration *r = NULL;
    EXPECT(btb_new(&b), BTB_OK);
    EXPECT(btb_set_name(b, "logged"), BTB_OK);
    EXPECT(btb_set_task_entry_point(b, "app.Logged"), BTB_OK);
    EXPECT(btb_application_trigger_new(&t), BTB_OK);
    EXPECT(btb_set_trigger(b, t), BTB_OK);
    EXPECT(btb_register_in(sys, b, &r), BTB_OK);
    EXPECT(btb_free(b), BTB_OK);
    EXPECT(btb_trigger_free(t), BTB_OK);

    /* The broker logs each run's start and end at INFO, target "btb". */
    request_and_wait(sys, r);
    pthread_mutex_lock(&info.lock);
    CHECK(info.saw_start);
    CHECK(info.saw_end);
    CHECK(info.below_level == 0);
    CHECK(info.bad_target == 0);
    pthread_mutex_unlock(&info.lock);

    /* Replaced: the old user_data is freed once, the new callback hears only errors. */
    EXPECT(btb_set_log_callback(on_log, BTB_LOG_ERROR, &errors, free_sink), BTB_OK);
    CHECK(info.freed == 1);
    int before = lines_of(&info);
    request_and_wait(sys, r);
    CHECK(lines_of(&info) == before);
    CHECK(lines_of(&errors) == 0);
    CHECK(!errors.saw_start && !errors.saw_end);

    /* Removed: the user_data is freed, nothing more is heard. */
    EXPECT(btb_set_log_callback(NULL, 0, NULL, NULL), BTB_OK);
    CHECK(errors.freed == 1);
    request_and_wait(sys, r);
    CHECK(lines_of(&errors) == 0);
    CHECK(lines_of(&info) == before);
    /* Removing with a user_data frees it at once (btb never keeps it). */
    EXPECT(btb_set_log_callback(NULL, BTB_LOG_INFO, &dropped, free_sink), BTB_OK);
    CHECK(dropped.freed == 1 && dropped.lines == 0);

    /* Installed again after a removal: it hears again. */
    sink again;
    sink_init(&again, BTB_LOG_INFO);
    EXPECT(btb_set_log_callback(on_log, BTB_LOG_INFO, &again, free_sink), BTB_OK);
    request_and_wait(sys, r);
    pthread_mutex_lock(&again.lock);
    CHECK(again.saw_start && again.saw_end);
    pthread_mutex_unlock(&again.lock);
    EXPECT(btb_set_log_callback(NULL, 0, NULL, NULL), BTB_OK);
    CHECK(again.freed == 1);

    EXPECT(btb_registration_free(r), BTB_OK);
    EXPECT(btb_system_close(sys), BTB_OK);
    CHECK(info.freed == 1 && errors.freed == 1 && dropped.freed == 1 && again.freed == 1);
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}
