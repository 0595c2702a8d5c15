/* Background tasks that actually run (SPEC §3–§4): a C run function on an application trigger gets
 * its arguments, reports progress and takes a deferral that another thread completes; a
 * time-triggered task runs as a manual clock moves. Completed and progress handlers print what
 * happens, and the run history is printed at the end. Usage: tasks */
#define _POSIX_C_SOURCE 200809L
#include <btb.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define TRY(call)                                                                        \
    do {                                                                                 \
        btb_status st_ = (call);                                                         \
        if (st_ != BTB_OK) {                                                             \
            fprintf(stderr, "%s failed: %s: %s\n", #call, btb_status_name(st_),          \
                    btb_last_error_message());                                           \
            exit(1);                                                                     \
        }                                                                                \
    } while (0)

#define START_MS 1893456000000LL /* 2030-01-01 00:00:00 UTC */

static const char *const outcomes[] = {"SUCCEEDED", "FAILED", "CANCELED"};
static const char *const results[] = {"ALLOWED", "CURRENTLY_RUNNING", "DISABLED_BY_POLICY", "UNKNOWN_ERROR"};

static void format_time(int64_t ms, char *buf, size_t len) {
    time_t secs = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    strftime(buf, len, "%Y-%m-%d %H:%M:%S UTC", &tm);
}

static void short_id(const btb_uuid *id, char out[9]) {
    char text[BTB_UUID_STRING_SIZE];
    TRY(btb_uuid_to_string(id, text, sizeof text));
    memcpy(out, text, 8);
    out[8] = '\0';
}

/* ---- the upload task: application trigger, progress, a deferral completed by another thread ---- */

typedef struct {
    int go[2];                /* main → worker: "finish now" (so the output tells a clear story) */
    btb_instance *instance;   /* the worker's own (owned) handle to the instance */
    btb_deferral *deferral;
    pthread_t thread;
} upload_job;

static void *upload_worker(void *arg) {
    upload_job *job = arg;
    char byte;
    if (read(job->go[0], &byte, 1) != 1) return NULL;
    for (uint32_t p = 40; p <= 100; p += 30) TRY(btb_instance_set_progress(job->instance, p));
    printf("worker thread: upload done, completing the deferral\n");
    TRY(btb_deferral_complete(job->deferral));
    TRY(btb_deferral_free(job->deferral));
    TRY(btb_instance_free(job->instance));
    return NULL;
}

/* Runs on a btb worker thread; `instance` is borrowed for the call. */
static void run_upload(btb_instance *instance, void *user_data) {
    upload_job *job = user_data;
    const char *args = NULL;
    TRY(btb_instance_trigger_details(instance, &args));
    printf("upload: running on a btb worker thread with arguments %s\n", args ? args : "(none)");
    TRY(btb_instance_set_progress(instance, 10));
    /* Finish later, on another thread: take a deferral and an owned handle to the instance. */
    TRY(btb_instance_get_deferral(instance, &job->deferral));
    TRY(btb_instance_clone(instance, &job->instance));
    if (pthread_create(&job->thread, NULL, upload_worker, job) != 0) {
        btb_instance_report_failure(instance, "cannot start the upload thread");
        TRY(btb_deferral_complete(job->deferral));
        TRY(btb_deferral_free(job->deferral));
        TRY(btb_instance_free(job->instance));
        return;
    }
    printf("upload: took a deferral; the run function returns, a worker thread finishes the job\n");
}

/* ---- the sync task: a time trigger, run as the manual clock moves ---- */

static void run_sync(btb_instance *instance, void *user_data) {
    btb_system *system = user_data;
    int64_t now = 0;
    char when[64];
    (void)instance;
    TRY(btb_system_now_ms(system, &now));
    format_time(now, when, sizeof when);
    printf("sync: ran at %s\n", when);
}

/* ---- handlers: called on a btb thread with no btb lock held ---- */

static void on_progress(btb_registration *registration, const btb_uuid *instance_id, uint32_t progress,
                        void *user_data) {
    const char *name = NULL;
    char id[9];
    (void)user_data;
    TRY(btb_registration_name(registration, &name));
    short_id(instance_id, id);
    printf("%s: progress %u%% (instance %s...)\n", name, progress, id);
}

static void on_completed(btb_registration *registration, const btb_completion *completion, void *user_data) {
    const char *name = NULL;
    char id[9];
    (void)user_data;
    TRY(btb_registration_name(registration, &name));
    short_id(&completion->instance_id, id);
    printf("%s: completed %s (instance %s..., last progress %u)%s%s\n", name, outcomes[completion->outcome], id,
           completion->last_progress, completion->message ? ": " : "",
           completion->message ? completion->message : "");
}

/* ---- setup and the story ---- */

static btb_registration *register_task(btb_system *system, const char *name, const char *entry_point,
                                       btb_trigger *trigger) {
    btb_builder *builder = NULL;
    btb_registration *registration = NULL;
    TRY(btb_new(&builder));
    TRY(btb_set_name(builder, name));
    TRY(btb_set_task_entry_point(builder, entry_point));
    TRY(btb_set_trigger(builder, trigger));
    TRY(btb_register_in(system, builder, &registration));
    TRY(btb_free(builder));
    TRY(btb_trigger_free(trigger));
    TRY(btb_registration_add_completed(registration, on_completed, NULL, NULL, NULL));
    TRY(btb_registration_add_progress(registration, on_progress, NULL, NULL, NULL));
    return registration;
}

static void wait_idle(btb_system *system) {
    bool idle = false;
    TRY(btb_system_wait_idle(system, 10000, &idle));
    if (!idle) {
        fprintf(stderr, "the system did not become idle\n");
        exit(1);
    }
}

static void print_history(btb_registration *registration) {
    static const char *const kinds[] = {"time", "maintenance", "system", "application", "custom event", "calendar"};
    const char *name = NULL;
    btb_run_list *runs = NULL;
    size_t n = 0;
    TRY(btb_registration_name(registration, &name));
    TRY(btb_registration_history(registration, &runs));
    TRY(btb_run_list_len(runs, &n));
    printf("history of \"%s\": %zu run(s)\n", name, n);
    for (size_t i = 0; i < n; i++) {
        btb_run run;
        char id[9], started[64];
        TRY(btb_run_list_get(runs, i, &run));
        short_id(&run.instance_id, id);
        format_time(run.started_ms, started, sizeof started);
        printf("  %s...  %s  %s trigger%s%s  %s, progress %u, %lld ms\n", id, started, kinds[run.trigger_kind],
               run.trigger_details ? " " : "", run.trigger_details ? run.trigger_details : "",
               outcomes[run.outcome], run.last_progress, (long long)(run.ended_ms - run.started_ms));
    }
    TRY(btb_run_list_free(runs));
}

int main(void) {
    const char *general[] = {"general"};
    const char *timer[] = {"timer"};
    btb_manifest *manifest = NULL;
    btb_system_options *options = NULL;
    btb_system *system = NULL;
    btb_trigger *trigger = NULL;
    upload_job job;
    uint32_t result = 0;
    bool idle = true;

    printf("btb %s\n", btb_version());
    TRY(btb_manifest_new("org.example.notes", "1.0", &manifest));
    TRY(btb_manifest_declare(manifest, "notes.Upload", general, 1, NULL, 0));
    TRY(btb_manifest_declare(manifest, "notes.Sync", timer, 1, NULL, 0));
    TRY(btb_system_options_new(&options));
    TRY(btb_system_options_set_manifest(options, manifest));
    TRY(btb_system_options_set_store(options, ":memory:"));
    /* Time moves only when told (tests, simulations); timers fire exactly when due. */
    TRY(btb_system_options_set_manual_clock(options, START_MS));
    TRY(btb_system_options_set_timer_window_seconds(options, 0));
    TRY(btb_system_open(options, &system));
    TRY(btb_system_options_free(options));
    TRY(btb_manifest_free(manifest));

    memset(&job, 0, sizeof job);
    if (pipe(job.go) != 0) return 1;
    TRY(btb_system_register_entry_point(system, "notes.Upload", run_upload, &job, NULL));
    TRY(btb_system_register_entry_point(system, "notes.Sync", run_sync, system, NULL));
    TRY(btb_application_trigger_new(&trigger));
    btb_registration *upload = register_task(system, "upload", "notes.Upload", trigger);
    TRY(btb_time_trigger_new(15, false, &trigger));
    btb_registration *sync = register_task(system, "sync", "notes.Sync", trigger);
    printf("registered \"upload\" (application trigger) and \"sync\" (time trigger, every 15 minutes)\n");

    /* 1. The application trigger, with arguments. */
    TRY(btb_registration_request(upload, "{\"file\":\"notes.txt\",\"size\":1024}", &result));
    printf("main: request -> %s\n", results[result]);
    TRY(btb_registration_request(upload, NULL, &result));
    printf("main: request while it runs -> %s (not queued)\n", results[result]);
    TRY(btb_system_wait_idle(system, 200, &idle));
    printf("main: %s\n", idle ? "idle?!" : "still running: its deferral is not completed yet");
    printf("main: letting the worker thread finish\n");
    if (write(job.go[1], "g", 1) != 1) return 1;
    wait_idle(system);
    pthread_join(job.thread, NULL);

    /* 2. The time trigger, as the manual clock moves. */
    TRY(btb_system_advance_clock(system, 14 * 60000));
    wait_idle(system);
    printf("main: clock moved 14 minutes; sync is due at 15\n");
    TRY(btb_system_advance_clock(system, 60000));
    wait_idle(system);
    TRY(btb_system_advance_clock(system, 15 * 60000));
    wait_idle(system);

    print_history(upload);
    print_history(sync);

    TRY(btb_registration_free(upload));
    TRY(btb_registration_free(sync));
    TRY(btb_system_close(system));
    close(job.go[0]);
    close(job.go[1]);
    return 0;
}
