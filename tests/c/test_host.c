/* Out-of-process hosts through the C ABI (SPEC §5), with real processes: this program opens a
 * system whose manifest declares `exec` entry points that start this same program with `--host`;
 * as a host it connects with btb_host_connect and uses the btb_instance_* functions it would use
 * in-process. The broker side checks outcomes, progress, messages and the captured output.
 *   test_host SCRATCH_DIR */
#define _GNU_SOURCE
#include "btb.h"
#include "check.h"

#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define WAIT_MS 30000u

/* ---------------------------------------------------------------- the host side */

static int host_main(void) {
    btb_instance *instance = NULL;
    if (btb_host_connect(&instance) != BTB_OK) {
        fprintf(stderr, "host: cannot connect: %s\n", btb_last_error_message());
        return 10;
    }
    const char *task = getenv("BTB_TASK_NAME");
    const char *details = NULL;
    if (btb_instance_trigger_details(instance, &details) != BTB_OK) return 11;
    btb_instance *again = NULL;
    if (btb_host_connect(&again) != BTB_ERROR_STATE) return 12; /* once per process */
    /* The same instance as in-process: its task (from the broker's welcome), on which what
     * needs the app's system is UNSUPPORTED; the process is the run, so no finish_run. */
    btb_registration *reg = NULL;
    if (btb_instance_task(instance, &reg) != BTB_OK) return 13;
    const char *name = NULL;
    if (btb_registration_name(reg, &name) != BTB_OK || strcmp(name, task) != 0) return 21;
    if (btb_registration_unregister(reg, false) != BTB_ERROR_UNSUPPORTED) return 22;
    btb_registration_free(reg);
    if (btb_instance_finish_run(instance) != BTB_ERROR_STATE) return 14;
    printf("host %s got %s\n", task, details ? details : "(none)");
    fflush(stdout);

    int code = 0;
    if (strcmp(task, "progress") == 0) {
        btb_deferral *d = NULL;
        btb_instance_set_progress(instance, 30);
        btb_instance_get_deferral(instance, &d);
        btb_instance_set_progress(instance, 60);
        btb_deferral_complete(d);
        btb_deferral_free(d);
    } else if (strcmp(task, "fail") == 0) {
        btb_instance_report_failure(instance, "the input was empty");
    } else if (strcmp(task, "cancel") == 0) {
        btb_instance_set_progress(instance, 1); /* ready: the broker side cancels now */
        bool canceled = false;
        uint32_t reason = 99;
        btb_instance_wait_canceled(instance, WAIT_MS, &canceled);
        btb_instance_cancellation_reason(instance, &reason);
        fprintf(stderr, "host heard cancellation %u\n", reason);
        code = canceled && reason == BTB_CANCELLATION_ABORT ? 0 : 15;
    } else if (strcmp(task, "retry") == 0) {
        /* SPEC §12 from a host: the attempt, a refused output, an output, a retry request */
        uint32_t attempt = 0;
        btb_instance_attempt(instance, &attempt);
        if (attempt != 1) code = 16;
        else if (btb_instance_set_output(instance, "[1]") != BTB_ERROR_INVALID_ARGUMENT) code = 17;
        else if (btb_instance_set_output(instance, "{\"attempt\": 1}") != BTB_OK) code = 18;
        else if (btb_instance_request_retry(instance, -1, NULL) != BTB_ERROR_INVALID_ARGUMENT) code = 19;
        else if (btb_instance_request_retry(instance, 3600000, "host busy") != BTB_OK) code = 20;
    } else if (strcmp(task, "exit7") == 0) {
        fprintf(stderr, "about to fail\n");
        code = 7;
    }
    btb_instance_free(instance);
    return code;
}

/* ---------------------------------------------------------------- the broker side */

typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int completed;
    uint32_t outcome;
    uint32_t progress[8];
    int n_progress;
    char message[512];
    uint32_t attempt;
    int64_t retry_at_ms;
    char output[128];
} watch;

static void on_completed(btb_registration *r, const btb_completion *c, void *user_data) {
    (void)r;
    watch *w = user_data;
    pthread_mutex_lock(&w->lock);
    w->completed++;
    w->outcome = c->outcome;
    snprintf(w->message, sizeof w->message, "%s", c->message ? c->message : "");
    w->attempt = c->attempt;
    w->retry_at_ms = c->retry_at_ms;
    snprintf(w->output, sizeof w->output, "%s", c->output ? c->output : "(null)");
    pthread_cond_broadcast(&w->cond);
    pthread_mutex_unlock(&w->lock);
}

static void on_progress(btb_registration *r, const btb_uuid *instance_id, uint32_t p, void *user_data) {
    (void)r;
    (void)instance_id;
    watch *w = user_data;
    pthread_mutex_lock(&w->lock);
    if (w->n_progress < 8) w->progress[w->n_progress++] = p;
    pthread_cond_broadcast(&w->cond);
    pthread_mutex_unlock(&w->lock);
}

/* Waits until `*counter` reaches `n` (false after WAIT_MS). */
static bool wait_for(watch *w, const int *counter, int n) {
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += WAIT_MS / 1000;
    pthread_mutex_lock(&w->lock);
    int rc = 0;
    while (*counter < n && rc == 0) rc = pthread_cond_timedwait(&w->cond, &w->lock, &until);
    bool ok = *counter >= n;
    pthread_mutex_unlock(&w->lock);
    return ok;
}

static btb_registration *reg(btb_system *s, const char *name, watch *w) {
    btb_builder *b = NULL;
    btb_trigger *t = NULL;
    btb_registration *r = NULL;
    OK(btb_new(&b));
    OK(btb_set_name(b, name));
    OK(btb_set_task_entry_point(b, "app.Host"));
    OK(btb_application_trigger_new(&t));
    OK(btb_set_trigger(b, t));
    OK(btb_register_in(s, b, &r));
    OK(btb_trigger_free(t));
    OK(btb_free(b));
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->cond, NULL);
    OK(btb_registration_add_completed(r, on_completed, w, NULL, NULL));
    OK(btb_registration_add_progress(r, on_progress, w, NULL, NULL));
    return r;
}

static void request(btb_registration *r, const char *args) {
    uint32_t result = 99;
    OK(btb_registration_request(r, args, &result));
    CHECK(result == BTB_APPLICATION_TRIGGER_ALLOWED);
}

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "--host") == 0) return host_main();
    if (argc < 2) {
        fprintf(stderr, "usage: %s SCRATCH_DIR\n", argv[0]);
        return 2;
    }
    char self[PATH_MAX], store[PATH_MAX + 32];
    if (!realpath(argv[0], self)) return 2;
    snprintf(store, sizeof store, "%s/host.sqlite3", argv[1]);

    btb_manifest *m = NULL;
    btb_system_options *o = NULL;
    btb_system *s = NULL;
    const char *general[] = {"general"};
    const char *exec[] = {self, "--host"};
    OK(btb_manifest_new("org.example.chost", "1.0", &m));
    OK(btb_manifest_declare(m, "app.Host", general, 1, exec, 2));
    OK(btb_system_options_new(&o));
    OK(btb_system_options_set_manifest(o, m));
    OK(btb_system_options_set_store(o, store));
    OK(btb_system_options_set_simulated(o, true));
    OK(btb_system_options_set_grace_ms(o, 10000));
    OK(btb_system_open(o, &s));
    btb_system_options_free(o);
    btb_manifest_free(m);
    if (!s) return 1;

    /* progress and a deferral; exit 0 */
    watch progress = {0};
    btb_registration *r = reg(s, "progress", &progress);
    request(r, "{\"n\":1}");
    CHECK(wait_for(&progress, &progress.completed, 1));
    CHECK(progress.outcome == BTB_TASK_OUTCOME_SUCCEEDED);
    CHECK(progress.n_progress == 2 && progress.progress[0] == 30 && progress.progress[1] == 60);
    btb_run_list *runs = NULL;
    btb_run run;
    OK(btb_registration_history(r, &runs));
    OK(btb_run_list_get(runs, 0, &run));
    CHECK(run.stdout_tail && strcmp(run.stdout_tail, "host progress got {\"n\":1}\n") == 0);
    CHECK(run.stderr_tail == NULL);
    CHECK(run.last_progress == 60);
    OK(btb_run_list_free(runs));
    OK(btb_registration_free(r));

    /* a reported failure wins over exit 0 */
    watch fail = {0};
    r = reg(s, "fail", &fail);
    request(r, NULL);
    CHECK(wait_for(&fail, &fail.completed, 1));
    CHECK(fail.outcome == BTB_TASK_OUTCOME_FAILED);
    CHECK(strcmp(fail.message, "the input was empty") == 0);
    OK(btb_registration_free(r));

    /* a retry asked for by the host, with its output (SPEC §12) */
    watch retry = {0};
    r = reg(s, "retry", &retry);
    request(r, NULL);
    CHECK(wait_for(&retry, &retry.completed, 1));
    CHECK(retry.outcome == BTB_TASK_OUTCOME_RETRY);
    CHECK(strcmp(retry.message, "host busy") == 0);
    CHECK(retry.attempt == 1 && retry.retry_at_ms > 0);
    CHECK(strcmp(retry.output, "{\"attempt\":1}") == 0);
    OK(btb_registration_history(r, &runs));
    OK(btb_run_list_get(runs, 0, &run));
    CHECK(run.outcome == BTB_TASK_OUTCOME_RETRY && run.attempt == 1);
    CHECK(run.retry_at_ms == retry.retry_at_ms && run.retry_at_ms >= run.ended_ms + 3600000);
    CHECK(run.output && strcmp(run.output, "{\"attempt\":1}") == 0);
    OK(btb_run_list_free(runs));
    OK(btb_registration_unregister(r, true)); /* drops the waiting attempt */
    OK(btb_registration_free(r));

    /* a non-zero exit names the status and quotes stderr */
    watch exit7 = {0};
    r = reg(s, "exit7", &exit7);
    request(r, NULL);
    CHECK(wait_for(&exit7, &exit7.completed, 1));
    CHECK(exit7.outcome == BTB_TASK_OUTCOME_FAILED);
    CHECK(strcmp(exit7.message, "the host process exited with status 7; stderr ends with:\nabout to fail") == 0);
    OK(btb_registration_free(r));

    /* cancellation reaches the host over its socket; it exits inside the grace */
    watch cancel = {0};
    r = reg(s, "cancel", &cancel);
    request(r, NULL);
    CHECK(wait_for(&cancel, &cancel.n_progress, 1));
    OK(btb_registration_unregister(r, true));
    CHECK(wait_for(&cancel, &cancel.completed, 1));
    CHECK(cancel.outcome == BTB_TASK_OUTCOME_CANCELED);
    OK(btb_registration_free(r));

    /* not started by a broker */
    btb_instance *none = NULL;
    EXPECT(btb_host_connect(&none), BTB_ERROR_STATE);
    MSG_HAS("BTB_HOST_FD");
    EXPECT(btb_host_connect(NULL), BTB_ERROR_NULL_ARGUMENT);

    OK(btb_system_close(s));
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}
