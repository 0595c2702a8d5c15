/* C ABI tests of the runtime (SPEC §3, §4, §8): run functions, progress, completion, failure,
 * deferrals completed from other threads, time triggers under a manual clock, latched conditions,
 * cancellation (unregister, condition loss, time limits, grace), CURRENTLY_RUNNING, run history,
 * handlers that call back into btb, the pull queue, background-activated handlers, misuse, and a
 * custom event signalled from another process. Deterministic: a manual clock, the simulated source
 * and btb_system_wait_idle; threads hand off through pipes, never through sleeps.
 * Run as-is, under AddressSanitizer and under valgrind.
 *
 * Usage: test_runtime SCRATCH_DIR
 *        test_runtime --signal FD APP_ID EVENT   (child mode: btb_signal_event, status byte to FD) */
#define _GNU_SOURCE
#include "btb.h"
#include "check.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *dir;
static const char *self_exe;
static pthread_t main_thread;



/* 2030-01-01T00:00:00Z */
#define T0 1893456000000LL
/* Upper bound of every wait for something that must happen (generous for valgrind). A wait that
 * must *not* end (something is still running) uses SHORT_MS: it can only time out. */
#define WAIT_MS 30000u
#define SHORT_MS 100u
#define MAXREC 16

/* ---------------------------------------------------------------------------------------------
 * Plumbing: handshakes through pipes, a recorder for completed/progress handlers, task contexts */

typedef struct {
    int r, w;
} chan;

static void chan_open(chan *c) {
    int fds[2];
    CHECK(pipe(fds) == 0);
    c->r = fds[0];
    c->w = fds[1];
}

static void chan_send(chan *c) {
    char b = 1;
    ssize_t n = write(c->w, &b, 1);
    (void)n;
}

/* Waits for one byte (an event), at most WAIT_MS. */
static bool chan_recv(chan *c) {
    struct pollfd p = {.fd = c->r, .events = POLLIN, .revents = 0};
    if (poll(&p, 1, (int)WAIT_MS) != 1) return false;
    char b;
    return read(c->r, &b, 1) == 1;
}

static void chan_close(chan *c) {
    close(c->r);
    close(c->w);
}

static bool uuid_eq(const btb_uuid *a, const btb_uuid *b) {
    return memcmp(a->bytes, b->bytes, sizeof a->bytes) == 0;
}

static bool uuid_zero(const btb_uuid *a) {
    static const btb_uuid zero;
    return uuid_eq(a, &zero);
}

typedef struct {
    pthread_mutex_t mu;
    int completed;
    btb_uuid id[MAXREC];
    uint32_t outcome[MAXREC], last_progress[MAXREC];
    int32_t reason[MAXREC];
    bool has_message[MAXREC];
    char message[MAXREC][256];
    int progressed;
    uint32_t progress[MAXREC];
    btb_uuid progress_id[MAXREC];
    bool handle_ok; /* the borrowed registration worked in every call */
    char name[64];
    btb_registration *stashed; /* a borrowed registration kept past its callback (misuse) */
} recorder;

static void rec_init(recorder *r) {
    memset(r, 0, sizeof *r);
    pthread_mutex_init(&r->mu, NULL);
    r->handle_ok = true;
}

static void rec_destroy(recorder *r) {
    pthread_mutex_destroy(&r->mu);
}

static int rec_completed(recorder *r) {
    pthread_mutex_lock(&r->mu);
    int n = r->completed;
    pthread_mutex_unlock(&r->mu);
    return n;
}

static int rec_progressed(recorder *r) {
    pthread_mutex_lock(&r->mu);
    int n = r->progressed;
    pthread_mutex_unlock(&r->mu);
    return n;
}

static void on_completed(btb_registration *reg, const btb_completion *c, void *ud) {
    recorder *r = ud;
    const char *name = NULL;
    bool ok = btb_registration_name(reg, &name) == BTB_OK && name != NULL;
    pthread_mutex_lock(&r->mu);
    if (r->completed < MAXREC) {
        int i = r->completed;
        r->id[i] = c->instance_id;
        r->outcome[i] = c->outcome;
        r->reason[i] = c->reason;
        r->last_progress[i] = c->last_progress;
        r->has_message[i] = c->message != NULL;
        snprintf(r->message[i], sizeof r->message[i], "%s", c->message ? c->message : "");
    }
    r->completed++;
    if (!ok || pthread_equal(pthread_self(), main_thread)) r->handle_ok = false;
    if (ok) snprintf(r->name, sizeof r->name, "%s", name);
    r->stashed = reg;
    pthread_mutex_unlock(&r->mu);
}

static void on_progress(btb_registration *reg, const btb_uuid *id, uint32_t progress, void *ud) {
    recorder *r = ud;
    const char *name = NULL;
    bool ok = btb_registration_name(reg, &name) == BTB_OK && id != NULL;
    pthread_mutex_lock(&r->mu);
    if (r->progressed < MAXREC) {
        r->progress[r->progressed] = progress;
        r->progress_id[r->progressed] = *id;
    }
    r->progressed++;
    if (!ok) r->handle_ok = false;
    pthread_mutex_unlock(&r->mu);
}

typedef struct {
    pthread_mutex_t mu;
    int runs;
    bool off_main; /* no run happened on the main (requesting) thread */
    btb_uuid id[MAXREC];
    bool details_null[MAXREC];
    char details[MAXREC][256];
    const char *fail_with; /* report this failure */
    bool defer;            /* take a deferral, keep it in `deferral` */
    bool defer_thread;     /* ... and hand it to a new thread that completes it on `go` */
    bool complete_on_cancel;
    bool clone;            /* keep an owned clone in `clone` */
    btb_instance *stashed; /* the borrowed handle, kept past the call (misuse) */
    btb_instance *clone_h;
    btb_deferral *deferral;
    pthread_t thread;
    bool thread_started;
    chan started, go, done, canceled;
    int cancels;
    uint32_t cancel_reason;
    bool cancel_saw_flag;
    btb_status complete_status; /* completing the deferral (canceled handler or deferral thread) */
    btb_status second_complete; /* completing it again (deferral thread) */
    btb_registration *chain;    /* request this registration from the run function */
    uint32_t chain_result;
    btb_status chain_status;
} task_ctx;

static void ctx_init(task_ctx *c) {
    memset(c, 0, sizeof *c);
    pthread_mutex_init(&c->mu, NULL);
    c->off_main = true;
    c->complete_status = 999;
    c->second_complete = 999;
    c->chain_status = 999;
    chan_open(&c->started);
    chan_open(&c->go);
    chan_open(&c->done);
    chan_open(&c->canceled);
}

static void ctx_destroy(task_ctx *c) {
    if (c->thread_started) pthread_join(c->thread, NULL);
    EXPECT(btb_instance_free(c->clone_h), BTB_OK);
    EXPECT(btb_deferral_free(c->deferral), BTB_OK);
    chan_close(&c->started);
    chan_close(&c->go);
    chan_close(&c->done);
    chan_close(&c->canceled);
    pthread_mutex_destroy(&c->mu);
}

static int ctx_runs(task_ctx *c) {
    pthread_mutex_lock(&c->mu);
    int n = c->runs;
    pthread_mutex_unlock(&c->mu);
    return n;
}

static int ctx_cancels(task_ctx *c) {
    pthread_mutex_lock(&c->mu);
    int n = c->cancels;
    pthread_mutex_unlock(&c->mu);
    return n;
}

static int record_run(task_ctx *c, btb_instance *inst) {
    const char *details = NULL;
    btb_uuid id;
    memset(&id, 0, sizeof id);
    btb_status s1 = btb_instance_trigger_details(inst, &details);
    btb_status s2 = btb_instance_id(inst, &id);
    pthread_mutex_lock(&c->mu);
    int i = c->runs++;
    if (i < MAXREC) {
        c->id[i] = id;
        c->details_null[i] = details == NULL;
        snprintf(c->details[i], sizeof c->details[i], "%s", details ? details : "");
    }
    if (pthread_equal(pthread_self(), main_thread) || s1 != BTB_OK || s2 != BTB_OK) c->off_main = false;
    c->stashed = inst;
    pthread_mutex_unlock(&c->mu);
    return i;
}

static void on_canceled(btb_instance *inst, uint32_t reason, void *ud) {
    task_ctx *c = ud;
    bool flag = false;
    uint32_t r = 99;
    bool ok = btb_instance_canceled(inst, &flag) == BTB_OK && flag &&
              btb_instance_cancellation_reason(inst, &r) == BTB_OK && r == reason;
    pthread_mutex_lock(&c->mu);
    c->cancels++;
    c->cancel_reason = reason;
    c->cancel_saw_flag = ok;
    btb_deferral *d = c->complete_on_cancel ? c->deferral : NULL;
    pthread_mutex_unlock(&c->mu);
    if (d) c->complete_status = btb_deferral_complete(d);
    chan_send(&c->canceled);
}

/* The thread a deferral is handed to: waits for `go`, reports progress through its own clone of
 * the instance, completes the deferral (twice: the second is STATE), and says `done`. */
static void *deferral_thread(void *arg) {
    task_ctx *c = arg;
    if (chan_recv(&c->go)) {
        pthread_mutex_lock(&c->mu);
        btb_instance *inst = c->clone_h;
        btb_deferral *d = c->deferral;
        pthread_mutex_unlock(&c->mu);
        btb_instance_set_progress(inst, 75);
        btb_status first = btb_deferral_complete(d);
        btb_status second = btb_deferral_complete(d);
        pthread_mutex_lock(&c->mu);
        c->complete_status = first;
        c->second_complete = second;
        pthread_mutex_unlock(&c->mu);
    }
    chan_send(&c->done);
    return NULL;
}

/* The general-purpose run function, steered by its task_ctx. */
static void run_task(btb_instance *inst, void *ud) {
    task_ctx *c = ud;
    int i = record_run(c, inst);
    if (c->fail_with) {
        btb_instance_report_failure(inst, "overwritten by the next report");
        btb_instance_report_failure(inst, c->fail_with);
    }
    if (c->chain) c->chain_status = btb_registration_request(c->chain, "{\"from\":\"run\"}", &c->chain_result);
    if (c->clone && i == 0) {
        btb_instance *cl = NULL;
        if (btb_instance_clone(inst, &cl) == BTB_OK) {
            pthread_mutex_lock(&c->mu);
            c->clone_h = cl;
            pthread_mutex_unlock(&c->mu);
        }
    }
    if (c->defer && i == 0) {
        btb_deferral *d = NULL;
        if (btb_instance_get_deferral(inst, &d) == BTB_OK) {
            pthread_mutex_lock(&c->mu);
            c->deferral = d;
            pthread_mutex_unlock(&c->mu);
        }
        btb_instance_add_canceled(inst, on_canceled, c, NULL, NULL);
        if (c->defer_thread && pthread_create(&c->thread, NULL, deferral_thread, c) == 0)
            c->thread_started = true;
    }
    chan_send(&c->started);
}

/* Progress 10, 10 (no change: not reported), 60, 100. */
static void run_progress(btb_instance *inst, void *ud) {
    task_ctx *c = ud;
    record_run(c, inst);
    uint32_t p = 1;
    btb_instance_set_progress(inst, 10);
    btb_instance_set_progress(inst, 10);
    btb_instance_set_progress(inst, 60);
    btb_instance_set_progress(inst, 100);
    btb_instance_progress(inst, &p);
    uint32_t susp = 1;
    bool canceled = true, net = true;
    uint32_t reason = 0;
    btb_registration *task = NULL;
    const char *name = NULL;
    bool ok = p == 100 && btb_instance_suspended_count(inst, &susp) == BTB_OK && susp == 0 &&
              btb_instance_canceled(inst, &canceled) == BTB_OK && !canceled &&
              btb_instance_cancellation_reason(inst, &reason) == BTB_ERROR_NOT_FOUND &&
              btb_instance_is_network_granted(inst, &net) == BTB_OK && !net &&
              btb_instance_task(inst, &task) == BTB_OK && btb_registration_name(task, &name) == BTB_OK &&
              strcmp(name, "work") == 0;
    btb_registration_free(task);
    if (!ok) btb_instance_report_failure(inst, "instance getters misbehaved");
}

/* ---------------------------------------------------------------------------------------------
 * Systems and registrations */

/* The grace period of the systems open_runtime opens. */
static uint32_t grace_ms = 5000;

static btb_system *open_runtime(const char *app_id, const char *store, bool manual, bool simulated) {
    btb_manifest *m = NULL;
    btb_system_options *o = NULL;
    btb_system *s = NULL;
    const char *general[] = {"general"};
    const char *timer[] = {"timer"};
    const char *event[] = {"systemEvent"};
    EXPECT(btb_manifest_new(app_id, "1.0", &m), BTB_OK);
    EXPECT(btb_manifest_declare(m, "app.Work", general, 1, NULL, 0), BTB_OK);
    EXPECT(btb_manifest_declare(m, "app.Timer", timer, 1, NULL, 0), BTB_OK);
    EXPECT(btb_manifest_declare(m, "app.Queued", general, 1, NULL, 0), BTB_OK);
    EXPECT(btb_manifest_declare(m, "app.Event", event, 1, NULL, 0), BTB_OK);
    EXPECT(btb_manifest_declare(m, "app.Orphan", general, 1, NULL, 0), BTB_OK);
    EXPECT(btb_system_options_new(&o), BTB_OK);
    EXPECT(btb_system_options_set_manifest(o, m), BTB_OK);
    EXPECT(btb_system_options_set_store(o, store), BTB_OK);
    if (manual) EXPECT(btb_system_options_set_manual_clock(o, T0), BTB_OK);
    EXPECT(btb_system_options_set_simulated(o, simulated), BTB_OK);
    EXPECT(btb_system_options_set_min_freshness_minutes(o, 1), BTB_OK);
    EXPECT(btb_system_options_set_timer_window_seconds(o, 0), BTB_OK);
    EXPECT(btb_system_options_set_time_limit_seconds(o, BTB_TRIGGER_KIND_APPLICATION, 30), BTB_OK);
    EXPECT(btb_system_options_set_time_limit_seconds(o, 77, 30), BTB_ERROR_INVALID_ARGUMENT);
    EXPECT(btb_system_options_set_grace_ms(o, grace_ms), BTB_OK);
    EXPECT(btb_system_options_set_max_concurrent(o, 4), BTB_OK);
    if (btb_system_open(o, &s) != BTB_OK) {
        fprintf(stderr, "cannot open a system: %s\n", btb_last_error_message());
        s = NULL;
    }
    btb_system_options_free(o);
    btb_manifest_free(m);
    return s;
}

static btb_system *open_sim(void) {
    return open_runtime("org.example.cruntime", ":memory:", true, true);
}

/* Registers a task; `trigger` is consumed. `entry_point` and `group` may be NULL; `condition` 0 = none. */
static btb_registration *reg_task(btb_system *s, const char *name, const char *entry_point, btb_trigger *trigger,
                                  uint32_t condition, bool cancel_on_loss, const char *group) {
    btb_builder *b = NULL;
    btb_registration *r = NULL;
    EXPECT(btb_new(&b), BTB_OK);
    EXPECT(btb_set_name(b, name), BTB_OK);
    EXPECT(btb_set_task_entry_point(b, entry_point), BTB_OK);
    EXPECT(btb_set_trigger(b, trigger), BTB_OK);
    if (condition) {
        btb_condition *c = NULL;
        EXPECT(btb_system_condition_new(condition, &c), BTB_OK);
        EXPECT(btb_add_condition(b, c), BTB_OK);
        EXPECT(btb_condition_free(c), BTB_OK);
    }
    EXPECT(btb_set_cancel_on_condition_loss(b, cancel_on_loss), BTB_OK);
    if (group) {
        btb_task_group *g = NULL;
        EXPECT(btb_task_group_new(group, NULL, &g), BTB_OK);
        EXPECT(btb_set_task_group(b, g), BTB_OK);
        EXPECT(btb_task_group_free(g), BTB_OK);
    }
    EXPECT(btb_register_in(s, b, &r), BTB_OK);
    EXPECT(btb_free(b), BTB_OK);
    EXPECT(btb_trigger_free(trigger), BTB_OK);
    return r;
}

static btb_trigger *app_trigger(void) {
    btb_trigger *t = NULL;
    EXPECT(btb_application_trigger_new(&t), BTB_OK);
    return t;
}

static btb_trigger *time_trigger(uint32_t minutes, bool one_shot) {
    btb_trigger *t = NULL;
    EXPECT(btb_time_trigger_new(minutes, one_shot, &t), BTB_OK);
    return t;
}

static uint32_t request(btb_registration *r, const char *args) {
    uint32_t res = 99;
    EXPECT(btb_registration_request(r, args, &res), BTB_OK);
    return res;
}

static bool wait_idle(btb_system *s) {
    bool idle = false;
    EXPECT(btb_system_wait_idle(s, WAIT_MS, &idle), BTB_OK);
    return idle;
}

/* True when something still runs after SHORT_MS (it cannot finish on its own). */
static bool still_busy(btb_system *s) {
    bool idle = true;
    EXPECT(btb_system_wait_idle(s, SHORT_MS, &idle), BTB_OK);
    return !idle;
}

static void advance(btb_system *s, int64_t ms) {
    EXPECT(btb_system_advance_clock(s, ms), BTB_OK);
}

static size_t count_all(btb_system *s) {
    btb_registration_list *l = NULL;
    size_t n = 999;
    EXPECT(btb_system_all_tasks(s, &l), BTB_OK);
    EXPECT(btb_registration_list_len(l, &n), BTB_OK);
    EXPECT(btb_registration_list_free(l), BTB_OK);
    return n;
}

static size_t history_len(btb_registration *r) {
    btb_run_list *l = NULL;
    size_t n = 999;
    EXPECT(btb_registration_history(r, &l), BTB_OK);
    EXPECT(btb_run_list_len(l, &n), BTB_OK);
    EXPECT(btb_run_list_free(l), BTB_OK);
    return n;
}

/* ---------------------------------------------------------------------------------------------
 * Tests */

/* Application trigger → run function with the JSON arguments; progress reaches progress handlers
 * in order; completion reaches completed handlers with SUCCEEDED and the instance id; history. */
static void test_run_progress_completion(void) {
    btb_system *s = open_sim();
    CHECK(s != NULL);
    if (!s) return;
    task_ctx ctx;
    recorder rec;
    ctx_init(&ctx);
    rec_init(&rec);
    uint64_t t_done = 0, t_prog = 0;

    EXPECT(btb_system_register_entry_point(s, "app.Work", run_progress, &ctx, NULL), BTB_OK);
    btb_registration *r = reg_task(s, "work", "app.Work", app_trigger(), 0, false, NULL);
    EXPECT(btb_registration_add_completed(r, on_completed, &rec, NULL, &t_done), BTB_OK);
    EXPECT(btb_registration_add_progress(r, on_progress, &rec, NULL, &t_prog), BTB_OK);
    CHECK(t_done != 0 && t_prog != 0 && t_done != t_prog);
    CHECK(wait_idle(s));
    CHECK(ctx_runs(&ctx) == 0); /* registering runs nothing */

    /* sorted keys, compact: the text comes back exactly */
    CHECK(request(r, "{\"file\":\"notes.txt\",\"size\":3}") == BTB_APPLICATION_TRIGGER_ALLOWED);
    CHECK(wait_idle(s));
    CHECK(ctx_runs(&ctx) == 1);
    CHECK(ctx.off_main);
    CHECK(!ctx.details_null[0] && strcmp(ctx.details[0], "{\"file\":\"notes.txt\",\"size\":3}") == 0);
    CHECK(rec_completed(&rec) == 1);
    CHECK(rec.handle_ok);
    CHECK(strcmp(rec.name, "work") == 0);
    CHECK(rec.outcome[0] == BTB_TASK_OUTCOME_SUCCEEDED);
    CHECK(rec.reason[0] == -1);
    CHECK(!rec.has_message[0]);
    CHECK(rec.last_progress[0] == 100);
    CHECK(uuid_eq(&rec.id[0], &ctx.id[0]) && !uuid_zero(&ctx.id[0]));
    CHECK(rec_progressed(&rec) == 3);
    CHECK(rec.progress[0] == 10 && rec.progress[1] == 60 && rec.progress[2] == 100);
    CHECK(uuid_eq(&rec.progress_id[0], &ctx.id[0]) && uuid_eq(&rec.progress_id[2], &ctx.id[0]));

    /* no arguments: no trigger details; every run has a new instance id */
    CHECK(request(r, NULL) == BTB_APPLICATION_TRIGGER_ALLOWED);
    CHECK(wait_idle(s));
    CHECK(ctx_runs(&ctx) == 2);
    CHECK(ctx.details_null[1]);
    CHECK(!uuid_eq(&ctx.id[0], &ctx.id[1]));
    CHECK(rec_completed(&rec) == 2 && uuid_eq(&rec.id[1], &ctx.id[1]));

    /* through the trigger object, as Windows' ApplicationTrigger.RequestAsync */
    btb_trigger *t = NULL;
    uint32_t res = 99;
    EXPECT(btb_registration_trigger(r, &t), BTB_OK);
    EXPECT(btb_application_trigger_request(s, t, "{\"via\":\"trigger\"}", &res), BTB_OK);
    CHECK(res == BTB_APPLICATION_TRIGGER_ALLOWED);
    CHECK(wait_idle(s));
    CHECK(ctx_runs(&ctx) == 3 && strcmp(ctx.details[2], "{\"via\":\"trigger\"}") == 0);
    EXPECT(btb_trigger_free(t), BTB_OK);

    /* history: oldest first, every field */
    btb_run_list *l = NULL;
    btb_run run;
    size_t n = 0;
    EXPECT(btb_registration_history(r, &l), BTB_OK);
    EXPECT(btb_run_list_len(l, &n), BTB_OK);
    CHECK(n == 3);
    EXPECT(btb_run_list_get(l, 0, &run), BTB_OK);
    CHECK(uuid_eq(&run.instance_id, &ctx.id[0]));
    CHECK(run.trigger_kind == BTB_TRIGGER_KIND_APPLICATION);
    CHECK(run.trigger_details && strcmp(run.trigger_details, "{\"file\":\"notes.txt\",\"size\":3}") == 0);
    CHECK(run.started_ms == T0 && run.ended_ms == T0);
    CHECK(run.outcome == BTB_TASK_OUTCOME_SUCCEEDED);
    CHECK(run.reason == -1);
    CHECK(run.message == NULL);
    CHECK(run.last_progress == 100);
    EXPECT(btb_run_list_get(l, 1, &run), BTB_OK);
    CHECK(uuid_eq(&run.instance_id, &ctx.id[1]) && run.trigger_details == NULL);
    EXPECT(btb_run_list_get(l, 2, &run), BTB_OK);
    CHECK(uuid_eq(&run.instance_id, &ctx.id[2]));
    EXPECT(btb_run_list_get(l, 3, &run), BTB_ERROR_INVALID_ARGUMENT);
    MSG_HAS("3 runs");
    EXPECT(btb_run_list_get(l, 0, NULL), BTB_ERROR_NULL_ARGUMENT);
    EXPECT(btb_run_list_len(l, NULL), BTB_ERROR_NULL_ARGUMENT);
    EXPECT(btb_run_list_free(l), BTB_OK);
    EXPECT(btb_run_list_free(l), BTB_ERROR_INVALID_HANDLE);
    EXPECT(btb_run_list_len(l, &n), BTB_ERROR_INVALID_HANDLE);
    EXPECT(btb_run_list_free(NULL), BTB_OK);
    EXPECT(btb_registration_history(r, NULL), BTB_ERROR_NULL_ARGUMENT);

    /* removed handlers are not called any more; unknown tokens are NOT_FOUND */
    EXPECT(btb_registration_remove_handler(r, t_done), BTB_OK);
    EXPECT(btb_registration_remove_handler(r, t_done), BTB_ERROR_NOT_FOUND);
    EXPECT(btb_registration_remove_handler(r, t_prog), BTB_OK);
    EXPECT(btb_registration_remove_handler(r, 123456789), BTB_ERROR_NOT_FOUND);
    CHECK(request(r, NULL) == BTB_APPLICATION_TRIGGER_ALLOWED);
    CHECK(wait_idle(s));
    CHECK(ctx_runs(&ctx) == 4);
    CHECK(rec_completed(&rec) == 3 && rec_progressed(&rec) == 9);
    CHECK(history_len(r) == 4);

    EXPECT(btb_registration_free(r), BTB_OK);
    EXPECT(btb_system_close(s), BTB_OK);
    ctx_destroy(&ctx);
    rec_destroy(&rec);
}

/* btb_instance_report_failure → FAILED(message), the last report winning; an entry point without
 * a handler fails saying what was looked for; the registration stays. */
static void test_failure(void) {
    btb_system *s = open_sim();
    CHECK(s != NULL);
    if (!s) return;
    task_ctx ctx;
    recorder rec, rec2;
    ctx_init(&ctx);
    rec_init(&rec);
    rec_init(&rec2);
    ctx.fail_with = "disk full: 3 bytes left";
    EXPECT(btb_system_register_entry_point(s, "app.Work", run_task, &ctx, NULL), BTB_OK);
    btb_registration *r = reg_task(s, "failing", "app.Work", app_trigger(), 0, false, NULL);
    EXPECT(btb_registration_add_completed(r, on_completed, &rec, NULL, NULL), BTB_OK);
    CHECK(request(r, "{}") == BTB_APPLICATION_TRIGGER_ALLOWED);
    CHECK(wait_idle(s));
    CHECK(rec_completed(&rec) == 1);
    CHECK(rec.outcome[0] == BTB_TASK_OUTCOME_FAILED);
    CHECK(rec.has_message[0] && strcmp(rec.message[0], "disk full: 3 bytes left") == 0);
    CHECK(rec.reason[0] == -1);
    CHECK(!ctx.details_null[0] && strcmp(ctx.details[0], "{}") == 0);

    btb_run_list *l = NULL;
    btb_run run;
    EXPECT(btb_registration_history(r, &l), BTB_OK);
    EXPECT(btb_run_list_get(l, 0, &run), BTB_OK);
    CHECK(run.outcome == BTB_TASK_OUTCOME_FAILED && run.reason == -1);
    CHECK(run.message && strcmp(run.message, "disk full: 3 bytes left") == 0);
    EXPECT(btb_run_list_free(l), BTB_OK);

    /* nothing registered under the entry point: the run waits for a handler (SPEC §12) */
    btb_registration *orphan = reg_task(s, "orphan", "app.Orphan", app_trigger(), 0, false, NULL);
    EXPECT(btb_registration_add_completed(orphan, on_completed, &rec2, NULL, NULL), BTB_OK);
    CHECK(request(orphan, NULL) == BTB_APPLICATION_TRIGGER_ALLOWED);
    CHECK(wait_idle(s));
    CHECK(rec_completed(&rec2) == 0);
    CHECK(request(orphan, NULL) == BTB_APPLICATION_TRIGGER_CURRENTLY_RUNNING); /* it waits */
    CHECK(count_all(s) == 2); /* the registration stays */

    /* an entry point whose handler was removed waits the same way… */
    EXPECT(btb_system_unregister_entry_point(s, "app.Work"), BTB_OK);
    CHECK(request(r, NULL) == BTB_APPLICATION_TRIGGER_ALLOWED);
    CHECK(wait_idle(s));
    CHECK(ctx_runs(&ctx) == 1);
    CHECK(rec_completed(&rec) == 1);
    /* …and registering it again runs what waited */
    ctx.fail_with = NULL;
    EXPECT(btb_system_register_entry_point(s, "app.Work", run_task, &ctx, NULL), BTB_OK);
    CHECK(wait_idle(s));
    CHECK(ctx_runs(&ctx) == 2);
    CHECK(rec_completed(&rec) == 2 && rec.outcome[1] == BTB_TASK_OUTCOME_SUCCEEDED);

    EXPECT(btb_registration_free(r), BTB_OK);
    EXPECT(btb_registration_free(orphan), BTB_OK);
    EXPECT(btb_system_close(s), BTB_OK);
    ctx_destroy(&ctx);
    rec_destroy(&rec);
    rec_destroy(&rec2);
}

/* Retries and results (SPEC §12): a run that asks for a retry (attempt 1) runs again once the
 * manual clock reaches its delay (attempt 2); its outputs reach the completion and the history;
 * bad outputs are refused inside the run. */
typedef struct {
    pthread_mutex_t mu;
    int runs;
    uint32_t attempt[MAXREC];
    btb_status not_json, not_object, null_json, too_big, bad_utf8, negative_after, output, retry;
    int completed;
    uint32_t c_outcome[MAXREC], c_attempt[MAXREC];
    int64_t c_retry_at[MAXREC];
    char c_output[MAXREC][128], c_message[MAXREC][128];
} retry_ctx;

static void run_retry(btb_instance *inst, void *ud) {
    retry_ctx *c = ud;
    uint32_t attempt = 0;
    btb_status st = btb_instance_attempt(inst, &attempt);
    pthread_mutex_lock(&c->mu);
    int i = c->runs++;
    if (i < MAXREC) c->attempt[i] = st == BTB_OK ? attempt : 999;
    pthread_mutex_unlock(&c->mu);
    if (attempt == 1) {
        static char big[70 * 1024];
        memset(big, 'x', sizeof big - 1);
        memcpy(big, "{\"a\":\"", 6);
        memcpy(big + sizeof big - 3, "\"}", 3);
        c->not_json = btb_instance_set_output(inst, "{not json");
        c->not_object = btb_instance_set_output(inst, "[1, 2]");
        c->null_json = btb_instance_set_output(inst, NULL);
        c->too_big = btb_instance_set_output(inst, big);
        c->bad_utf8 = btb_instance_set_output(inst, "{\"a\": \"\xff\"}");
        c->negative_after = btb_instance_request_retry(inst, -5, NULL);
        c->output = btb_instance_set_output(inst, "{\"step\": 1}");
        c->retry = btb_instance_request_retry(inst, 0, "server busy");
    } else {
        btb_instance_set_output(inst, "{\"step\": 2, \"done\": true}");
    }
}

static void on_retry_completed(btb_registration *reg, const btb_completion *comp, void *ud) {
    (void)reg;
    retry_ctx *c = ud;
    pthread_mutex_lock(&c->mu);
    int i = c->completed++;
    if (i < MAXREC) {
        c->c_outcome[i] = comp->outcome;
        c->c_attempt[i] = comp->attempt;
        c->c_retry_at[i] = comp->retry_at_ms;
        snprintf(c->c_output[i], sizeof c->c_output[i], "%s", comp->output ? comp->output : "(null)");
        snprintf(c->c_message[i], sizeof c->c_message[i], "%s", comp->message ? comp->message : "(null)");
    }
    pthread_mutex_unlock(&c->mu);
}

static int retry_runs(retry_ctx *c) {
    pthread_mutex_lock(&c->mu);
    int n = c->runs;
    pthread_mutex_unlock(&c->mu);
    return n;
}

static void test_retry(void) {
    btb_system *s = open_sim();
    CHECK(s != NULL);
    if (!s) return;
    retry_ctx ctx;
    memset(&ctx, 0, sizeof ctx);
    pthread_mutex_init(&ctx.mu, NULL);
    EXPECT(btb_system_register_entry_point(s, "app.Work", run_retry, &ctx, NULL), BTB_OK);
    btb_builder *b = NULL;
    btb_retry_policy *p = NULL;
    btb_trigger *t = app_trigger();
    btb_registration *r = NULL;
    EXPECT(btb_new(&b), BTB_OK);
    EXPECT(btb_set_name(b, "flaky"), BTB_OK);
    EXPECT(btb_set_task_entry_point(b, "app.Work"), BTB_OK);
    EXPECT(btb_set_trigger(b, t), BTB_OK);
    EXPECT(btb_retry_policy_new(BTB_BACKOFF_LINEAR, 10000, 60000, &p), BTB_OK);
    EXPECT(btb_retry_policy_set_max_attempts(p, 3), BTB_OK);
    EXPECT(btb_set_retry_policy(b, p), BTB_OK);
    EXPECT(btb_register_in(s, b, &r), BTB_OK);
    EXPECT(btb_retry_policy_free(p), BTB_OK);
    EXPECT(btb_trigger_free(t), BTB_OK);
    EXPECT(btb_free(b), BTB_OK);
    EXPECT(btb_registration_add_completed(r, on_retry_completed, &ctx, NULL, NULL), BTB_OK);

    CHECK(request(r, "{\"file\": \"a\"}") == BTB_APPLICATION_TRIGGER_ALLOWED);
    CHECK(wait_idle(s));
    CHECK(retry_runs(&ctx) == 1 && ctx.attempt[0] == 1);
    CHECK(ctx.not_json == BTB_ERROR_INVALID_ARGUMENT);
    CHECK(ctx.not_object == BTB_ERROR_INVALID_ARGUMENT);
    CHECK(ctx.null_json == BTB_ERROR_NULL_ARGUMENT);
    CHECK(ctx.too_big == BTB_ERROR_INVALID_ARGUMENT);
    CHECK(ctx.bad_utf8 == BTB_ERROR_INVALID_UTF8);
    CHECK(ctx.negative_after == BTB_ERROR_INVALID_ARGUMENT);
    CHECK(ctx.output == BTB_OK && ctx.retry == BTB_OK);
    pthread_mutex_lock(&ctx.mu);
    CHECK(ctx.completed == 1);
    CHECK(ctx.c_outcome[0] == BTB_TASK_OUTCOME_RETRY && ctx.c_attempt[0] == 1);
    CHECK(ctx.c_retry_at[0] == T0 + 10000);
    CHECK(strcmp(ctx.c_output[0], "{\"step\":1}") == 0);
    CHECK(strcmp(ctx.c_message[0], "server busy") == 0);
    pthread_mutex_unlock(&ctx.mu);

    /* not before its delay; then attempt 2 */
    advance(s, 9999);
    CHECK(wait_idle(s));
    CHECK(retry_runs(&ctx) == 1);
    advance(s, 1);
    CHECK(wait_idle(s));
    CHECK(retry_runs(&ctx) == 2 && ctx.attempt[1] == 2);
    pthread_mutex_lock(&ctx.mu);
    CHECK(ctx.completed == 2);
    CHECK(ctx.c_outcome[1] == BTB_TASK_OUTCOME_SUCCEEDED && ctx.c_attempt[1] == 2);
    CHECK(ctx.c_retry_at[1] == -1);
    CHECK(strstr(ctx.c_output[1], "\"done\":true") != NULL);
    pthread_mutex_unlock(&ctx.mu);

    btb_run_list *l = NULL;
    btb_run run;
    size_t n = 0;
    EXPECT(btb_registration_history(r, &l), BTB_OK);
    EXPECT(btb_run_list_len(l, &n), BTB_OK);
    CHECK(n == 2);
    EXPECT(btb_run_list_get(l, 0, &run), BTB_OK);
    CHECK(run.outcome == BTB_TASK_OUTCOME_RETRY && run.attempt == 1);
    CHECK(run.retry_at_ms == T0 + 10000);
    CHECK(run.output && strcmp(run.output, "{\"step\":1}") == 0);
    CHECK(run.message && strcmp(run.message, "server busy") == 0);
    CHECK(run.trigger_details && strstr(run.trigger_details, "\"a\"") != NULL);
    EXPECT(btb_run_list_get(l, 1, &run), BTB_OK);
    CHECK(run.outcome == BTB_TASK_OUTCOME_SUCCEEDED && run.attempt == 2 && run.retry_at_ms == -1);
    CHECK(run.output && strstr(run.output, "\"step\":2") != NULL);
    CHECK(run.trigger_details && strstr(run.trigger_details, "\"a\"") != NULL); /* the same details */
    EXPECT(btb_run_list_free(l), BTB_OK);

    EXPECT(btb_registration_free(r), BTB_OK);
    EXPECT(btb_system_close(s), BTB_OK);
    pthread_mutex_destroy(&ctx.mu);
}

/* A deferral taken in the run function and completed from another thread: the instance completes
 * only then. While it runs, another request is CURRENTLY_RUNNING and is not queued. */
static void test_deferral_from_thread(void) {
    btb_system *s = open_sim();
    CHECK(s != NULL);
    if (!s) return;
    task_ctx ctx;
    recorder rec;
    ctx_init(&ctx);
    rec_init(&rec);
    ctx.defer = ctx.defer_thread = ctx.clone = true;
    EXPECT(btb_system_register_entry_point(s, "app.Work", run_task, &ctx, NULL), BTB_OK);
    btb_registration *r = reg_task(s, "deferred", "app.Work", app_trigger(), 0, false, NULL);
    EXPECT(btb_registration_add_completed(r, on_completed, &rec, NULL, NULL), BTB_OK);
    EXPECT(btb_registration_add_progress(r, on_progress, &rec, NULL, NULL), BTB_OK);

    CHECK(request(r, "{\"n\":1}") == BTB_APPLICATION_TRIGGER_ALLOWED);
    CHECK(request(r, "{\"n\":2}") == BTB_APPLICATION_TRIGGER_CURRENTLY_RUNNING);
    CHECK(chan_recv(&ctx.started)); /* the run function took the deferral and returned */
    CHECK(ctx.thread_started);
    CHECK(still_busy(s));
    CHECK(rec_completed(&rec) == 0);
    CHECK(history_len(r) == 0);
    CHECK(request(r, NULL) == BTB_APPLICATION_TRIGGER_CURRENTLY_RUNNING);

    chan_send(&ctx.go);
    CHECK(chan_recv(&ctx.done));
    CHECK(wait_idle(s));
    CHECK(ctx.complete_status == BTB_OK);          /* first complete */
    CHECK(ctx.second_complete == BTB_ERROR_STATE); /* completing twice */
    CHECK(rec_completed(&rec) == 1);
    CHECK(rec.outcome[0] == BTB_TASK_OUTCOME_SUCCEEDED);
    CHECK(rec.last_progress[0] == 75);
    CHECK(rec_progressed(&rec) == 1 && rec.progress[0] == 75);
    CHECK(uuid_eq(&rec.id[0], &ctx.id[0]));
    CHECK(ctx_runs(&ctx) == 1); /* the CURRENTLY_RUNNING requests were not queued */
    CHECK(history_len(r) == 1);
    /* the owned clone outlives the run; its deferral handle is still valid but spent */
    uint32_t p = 0;
    bool canceled = true;
    btb_deferral *late = NULL;
    EXPECT(btb_instance_progress(ctx.clone_h, &p), BTB_OK);
    CHECK(p == 75);
    EXPECT(btb_instance_canceled(ctx.clone_h, &canceled), BTB_OK);
    CHECK(!canceled);
    EXPECT(btb_instance_get_deferral(ctx.clone_h, &late), BTB_ERROR_STATE);
    MSG_HAS("completed");
    CHECK(late == NULL);
    EXPECT(btb_deferral_complete(ctx.deferral), BTB_ERROR_STATE);
    MSG_HAS("already completed");
    EXPECT(btb_deferral_free(ctx.deferral), BTB_OK);
    EXPECT(btb_deferral_complete(ctx.deferral), BTB_ERROR_INVALID_HANDLE);
    EXPECT(btb_deferral_free(ctx.deferral), BTB_ERROR_INVALID_HANDLE);
    ctx.deferral = NULL;

    /* once it completed, a request runs again */
    CHECK(request(r, "{\"n\":3}") == BTB_APPLICATION_TRIGGER_ALLOWED);
    CHECK(wait_idle(s));
    CHECK(ctx_runs(&ctx) == 2 && strcmp(ctx.details[1], "{\"n\":3}") == 0);
    CHECK(rec_completed(&rec) == 2);

    EXPECT(btb_registration_free(r), BTB_OK);
    EXPECT(btb_system_close(s), BTB_OK);
    ctx_destroy(&ctx);
    rec_destroy(&rec);
}

/* Time triggers under the manual clock: due exactly `freshness` after registration (window 0),
 * periodic ones drift-free, one-shots spent after firing, missed periods fire once. */
static void test_time_trigger(void) {
    btb_system *s = open_sim();
    CHECK(s != NULL);
    if (!s) return;
    task_ctx periodic, once;
    recorder rec;
    ctx_init(&periodic);
    ctx_init(&once);
    rec_init(&rec);
    /* the periodic task through its entry point, the one-shot through the system's handler */
    EXPECT(btb_system_register_entry_point(s, "app.Timer", run_task, &periodic, NULL), BTB_OK);
    btb_registration *r = reg_task(s, "every-minute", "app.Timer", time_trigger(1, false), 0, false, NULL);
    EXPECT(btb_registration_add_completed(r, on_completed, &rec, NULL, NULL), BTB_OK);
    EXPECT(btb_system_set_background_activated(s, NULL, run_task, &once, NULL), BTB_OK);
    btb_registration *o = reg_task(s, "in-two-minutes", NULL, time_trigger(2, true), 0, false, NULL);

    int64_t due = 0;
    bool spent = true;
    EXPECT(btb_registration_next_due_ms(r, &due), BTB_OK);
    CHECK(due == T0 + 60000);
    EXPECT(btb_registration_next_due_ms(o, &due), BTB_OK);
    CHECK(due == T0 + 120000);
    EXPECT(btb_registration_is_spent(o, &spent), BTB_OK);
    CHECK(!spent);

    CHECK(wait_idle(s));
    advance(s, 59999);
    CHECK(wait_idle(s));
    CHECK(ctx_runs(&periodic) == 0);
    advance(s, 1);
    CHECK(wait_idle(s));
    CHECK(ctx_runs(&periodic) == 1);
    CHECK(periodic.details_null[0]);
    CHECK(periodic.off_main);
    EXPECT(btb_registration_next_due_ms(r, &due), BTB_OK);
    CHECK(due == T0 + 120000);
    CHECK(ctx_runs(&once) == 0);

    advance(s, 60000); /* T0 + 2 min: both */
    CHECK(wait_idle(s));
    CHECK(ctx_runs(&periodic) == 2);
    CHECK(ctx_runs(&once) == 1);
    EXPECT(btb_registration_is_spent(o, &spent), BTB_OK);
    CHECK(spent);
    EXPECT(btb_registration_next_due_ms(o, &due), BTB_ERROR_NOT_FOUND);

    /* 3.5 periods at once: the missed ones fire once, the next due time stays on the grid */
    advance(s, 210000); /* T0 + 5.5 min */
    CHECK(wait_idle(s));
    CHECK(ctx_runs(&periodic) == 3);
    CHECK(ctx_runs(&once) == 1);
    EXPECT(btb_registration_next_due_ms(r, &due), BTB_OK);
    CHECK(due == T0 + 360000);
    advance(s, 30000);
    CHECK(wait_idle(s));
    CHECK(ctx_runs(&periodic) == 4);

    CHECK(rec_completed(&rec) == 4);
    btb_run_list *l = NULL;
    btb_run run;
    EXPECT(btb_registration_history(r, &l), BTB_OK);
    EXPECT(btb_run_list_get(l, 0, &run), BTB_OK);
    CHECK(run.trigger_kind == BTB_TRIGGER_KIND_TIME && run.trigger_details == NULL);
    CHECK(run.started_ms == T0 + 60000 && run.ended_ms == T0 + 60000);
    EXPECT(btb_run_list_get(l, 2, &run), BTB_OK);
    CHECK(run.started_ms == T0 + 330000);
    EXPECT(btb_run_list_get(l, 3, &run), BTB_OK);
    CHECK(run.started_ms == T0 + 360000);
    EXPECT(btb_run_list_free(l), BTB_OK);
    CHECK(history_len(o) == 1);

    EXPECT(btb_registration_free(r), BTB_OK);
    EXPECT(btb_registration_free(o), BTB_OK);
    EXPECT(btb_system_close(s), BTB_OK);
    ctx_destroy(&periodic);
    ctx_destroy(&once);
    rec_destroy(&rec);
}

/* A fire is latched until every condition holds (btb_system_set_state releases it); further fires
 * coalesce. cancel_on_condition_loss cancels with CONDITION_LOSS and does not re-latch. */
static void test_condition_latch(void) {
    /* The C surface of the latch (its semantics are the core's: core/tests/runtime_latch.rs):
     * states read and set through the ABI, a fire waiting for them, its arguments kept. */
    btb_system *s = open_sim();
    CHECK(s != NULL);
    if (!s) return;
    task_ctx ctx;
    recorder rec;
    ctx_init(&ctx);
    rec_init(&rec);
    EXPECT(btb_system_register_entry_point(s, "app.Work", run_task, &ctx, NULL), BTB_OK);
    btb_registration *r = reg_task(s, "online-only", "app.Work", app_trigger(), BTB_CONDITION_INTERNET_AVAILABLE,
                                   false, NULL);
    EXPECT(btb_registration_add_completed(r, on_completed, &rec, NULL, NULL), BTB_OK);
    int32_t state = 7;
    EXPECT(btb_system_state(s, BTB_CONDITION_INTERNET_AVAILABLE, &state), BTB_OK);
    CHECK(state == BTB_STATE_UNKNOWN); /* unknown until reported */
    const char *source = NULL;
    EXPECT(btb_system_state_source(s, BTB_CONDITION_INTERNET_AVAILABLE, &source), BTB_OK);
    CHECK(source != NULL && strcmp(source, "simulated") == 0);
    EXPECT(btb_system_state_source(s, 9999, &source), BTB_ERROR_INVALID_ARGUMENT);
    EXPECT(btb_system_state_source(s, BTB_CONDITION_INTERNET_AVAILABLE, NULL), BTB_ERROR_NULL_ARGUMENT);
    EXPECT(btb_system_set_state(s, BTB_CONDITION_INTERNET_AVAILABLE, false), BTB_OK);
    EXPECT(btb_system_state(s, BTB_CONDITION_INTERNET_AVAILABLE, &state), BTB_OK);
    CHECK(state == 0);
    CHECK(request(r, "{\"n\":1}") == BTB_APPLICATION_TRIGGER_ALLOWED);
    CHECK(wait_idle(s)); /* latched: nothing runs or is runnable */
    CHECK(ctx_runs(&ctx) == 0);
    EXPECT(btb_system_set_state(s, BTB_CONDITION_INTERNET_AVAILABLE, true), BTB_OK);
    EXPECT(btb_system_state(s, BTB_CONDITION_INTERNET_AVAILABLE, &state), BTB_OK);
    CHECK(state == 1);
    CHECK(wait_idle(s));
    CHECK(ctx_runs(&ctx) == 1);
    CHECK(strcmp(ctx.details[0], "{\"n\":1}") == 0); /* the latched request's arguments */
    CHECK(rec_completed(&rec) == 1 && rec.outcome[0] == BTB_TASK_OUTCOME_SUCCEEDED);

    /* condition loss */
    task_ctx lossy;
    recorder rec2;
    ctx_init(&lossy);
    rec_init(&rec2);
    lossy.defer = lossy.complete_on_cancel = true;
    EXPECT(btb_system_register_entry_point(s, "app.Queued", run_task, &lossy, NULL), BTB_OK);
    btb_registration *c = reg_task(s, "cancel-on-loss", "app.Queued", app_trigger(),
                                   BTB_CONDITION_INTERNET_AVAILABLE, true, NULL);
    EXPECT(btb_registration_add_completed(c, on_completed, &rec2, NULL, NULL), BTB_OK);
    CHECK(request(c, NULL) == BTB_APPLICATION_TRIGGER_ALLOWED);
    CHECK(chan_recv(&lossy.started));
    CHECK(still_busy(s));
    EXPECT(btb_system_set_state(s, BTB_CONDITION_INTERNET_AVAILABLE, false), BTB_OK);
    CHECK(chan_recv(&lossy.canceled));
    CHECK(wait_idle(s));
    CHECK(ctx_cancels(&lossy) == 1 && lossy.cancel_reason == BTB_CANCELLATION_CONDITION_LOSS);
    CHECK(lossy.cancel_saw_flag);
    CHECK(lossy.complete_status == BTB_OK);
    CHECK(rec_completed(&rec2) == 1);
    CHECK(rec2.outcome[0] == BTB_TASK_OUTCOME_CANCELED);
    CHECK(rec2.reason[0] == BTB_CANCELLATION_CONDITION_LOSS);
    CHECK(rec2.has_message[0]);
    /* not re-latched: the condition coming back runs nothing */
    EXPECT(btb_system_set_state(s, BTB_CONDITION_INTERNET_AVAILABLE, true), BTB_OK);
    CHECK(wait_idle(s));
    CHECK(ctx_runs(&lossy) == 1);
    btb_run_list *l = NULL;
    btb_run run;
    EXPECT(btb_registration_history(c, &l), BTB_OK);
    EXPECT(btb_run_list_get(l, 0, &run), BTB_OK);
    CHECK(run.outcome == BTB_TASK_OUTCOME_CANCELED && run.reason == BTB_CANCELLATION_CONDITION_LOSS);
    CHECK(run.message != NULL);
    EXPECT(btb_run_list_free(l), BTB_OK);

    EXPECT(btb_registration_free(r), BTB_OK);
    EXPECT(btb_registration_free(c), BTB_OK);
    EXPECT(btb_system_close(s), BTB_OK);
    ctx_destroy(&ctx);
    ctx_destroy(&lossy);
    rec_destroy(&rec);
    rec_destroy(&rec2);
}

/* unregister(cancel_task = true) cancels the running instance with ABORT: its canceled handler
 * runs, the instance reads as canceled, and it ends. */
static void test_unregister_cancels(void) {
    btb_system *s = open_sim();
    CHECK(s != NULL);
    if (!s) return;
    task_ctx ctx;
    recorder rec;
    ctx_init(&ctx);
    rec_init(&rec);
    ctx.defer = ctx.complete_on_cancel = ctx.clone = true;
    EXPECT(btb_system_register_entry_point(s, "app.Work", run_task, &ctx, NULL), BTB_OK);
    btb_registration *r = reg_task(s, "doomed", "app.Work", app_trigger(), 0, false, NULL);
    EXPECT(btb_registration_add_completed(r, on_completed, &rec, NULL, NULL), BTB_OK);
    CHECK(request(r, NULL) == BTB_APPLICATION_TRIGGER_ALLOWED);
    CHECK(chan_recv(&ctx.started));
    CHECK(still_busy(s));
    EXPECT(btb_registration_unregister(r, true), BTB_OK);
    CHECK(chan_recv(&ctx.canceled));
    CHECK(wait_idle(s));
    CHECK(ctx_cancels(&ctx) == 1);
    CHECK(ctx.cancel_reason == BTB_CANCELLATION_ABORT);
    CHECK(ctx.cancel_saw_flag);
    CHECK(ctx.complete_status == BTB_OK);
    bool canceled = false;
    uint32_t reason = 99;
    EXPECT(btb_instance_canceled(ctx.clone_h, &canceled), BTB_OK);
    CHECK(canceled);
    EXPECT(btb_instance_cancellation_reason(ctx.clone_h, &reason), BTB_OK);
    CHECK(reason == BTB_CANCELLATION_ABORT);
    /* The completed handler hears of the canceled run although the task is gone (SPEC §4). */
    CHECK(rec_completed(&rec) == 1);
    CHECK(rec.outcome[0] == BTB_TASK_OUTCOME_CANCELED && rec.reason[0] == BTB_CANCELLATION_ABORT);
    CHECK(count_all(s) == 0);
    EXPECT(btb_registration_unregister(r, true), BTB_ERROR_NOT_FOUND);
    uint32_t res = 99;
    EXPECT(btb_registration_request(r, NULL, &res), BTB_OK);
    CHECK(res == BTB_APPLICATION_TRIGGER_UNKNOWN_ERROR); /* nobody holds the trigger any more */
    MSG_HAS("no registration holds the application trigger of task"); /* OK, yet explained */
    CHECK(wait_idle(s));
    CHECK(ctx_runs(&ctx) == 1);

    /* without cancel_task the running instance finishes normally */
    task_ctx ctx2;
    ctx_init(&ctx2);
    ctx2.defer = ctx2.clone = true;
    EXPECT(btb_system_register_entry_point(s, "app.Queued", run_task, &ctx2, NULL), BTB_OK);
    btb_registration *r2 = reg_task(s, "finishes", "app.Queued", app_trigger(), 0, false, NULL);
    CHECK(request(r2, NULL) == BTB_APPLICATION_TRIGGER_ALLOWED);
    CHECK(chan_recv(&ctx2.started));
    EXPECT(btb_registration_unregister(r2, false), BTB_OK);
    CHECK(still_busy(s));
    EXPECT(btb_instance_canceled(ctx2.clone_h, &canceled), BTB_OK);
    CHECK(!canceled);
    CHECK(ctx_cancels(&ctx2) == 0);
    EXPECT(btb_deferral_complete(ctx2.deferral), BTB_OK);
    CHECK(wait_idle(s));

    EXPECT(btb_registration_free(r), BTB_OK);
    EXPECT(btb_registration_free(r2), BTB_OK);
    EXPECT(btb_system_close(s), BTB_OK);
    ctx_destroy(&ctx);
    ctx_destroy(&ctx2);
    rec_destroy(&rec);
}

/* The policy time limit cancels with EXECUTION_TIME_EXCEEDED; deferrals do not extend it; after
 * the grace period an instance that ignores cancellation is recorded CANCELED and abandoned. */
static void test_time_limit(void) {
    /* A time limit set through the options reaches a C run function as EXECUTION_TIME_EXCEEDED
     * and the completion as CANCELED (limits, grace and abandonment are the core's:
     * core/tests/runtime_cancel.rs). */
    btb_system *s = open_sim();
    CHECK(s != NULL);
    if (!s) return;
    task_ctx ctx;
    recorder rec;
    ctx_init(&ctx);
    rec_init(&rec);
    ctx.defer = ctx.complete_on_cancel = true;
    EXPECT(btb_system_register_entry_point(s, "app.Work", run_task, &ctx, NULL), BTB_OK);
    btb_registration *r = reg_task(s, "slow", "app.Work", app_trigger(), 0, false, NULL);
    EXPECT(btb_registration_add_completed(r, on_completed, &rec, NULL, NULL), BTB_OK);
    CHECK(request(r, NULL) == BTB_APPLICATION_TRIGGER_ALLOWED);
    CHECK(chan_recv(&ctx.started));
    advance(s, 30000); /* the application limit of this policy */
    CHECK(chan_recv(&ctx.canceled));
    CHECK(ctx.cancel_reason == BTB_CANCELLATION_EXECUTION_TIME_EXCEEDED);
    CHECK(wait_idle(s));
    CHECK(ctx.complete_status == BTB_OK);
    CHECK(rec_completed(&rec) == 1);
    CHECK(rec.outcome[0] == BTB_TASK_OUTCOME_CANCELED);
    CHECK(rec.reason[0] == BTB_CANCELLATION_EXECUTION_TIME_EXCEEDED);
    CHECK(rec.has_message[0]);
    EXPECT(btb_registration_free(r), BTB_OK);
    EXPECT(btb_system_close(s), BTB_OK);
    ctx_destroy(&ctx);
    rec_destroy(&rec);
}

/* Handlers and run functions may call any btb function: a completed handler unregisters its own
 * task and reads its history; a run function requests another task. wait_idle from a handler is
 * STATE (it would wait for itself). */
typedef struct {
    btb_system *system;
    btb_status unregister_status, history_status, wait_status, again_status;
    size_t history;
    int calls;
} reentrant;

static void on_completed_unregister(btb_registration *reg, const btb_completion *c, void *ud) {
    reentrant *x = ud;
    btb_run_list *l = NULL;
    bool idle = false;
    (void)c;
    x->calls++;
    x->history_status = btb_registration_history(reg, &l);
    if (x->history_status == BTB_OK) btb_run_list_len(l, &x->history);
    btb_run_list_free(l);
    x->wait_status = btb_system_wait_idle(x->system, 10, &idle);
    x->unregister_status = btb_registration_unregister(reg, false);
    x->again_status = btb_registration_unregister(reg, false);
}

static void test_reentrant_handlers(void) {
    btb_system *s = open_sim();
    CHECK(s != NULL);
    if (!s) return;
    task_ctx first, second;
    recorder rec;
    reentrant x;
    memset(&x, 0, sizeof x);
    x.system = s;
    ctx_init(&first);
    ctx_init(&second);
    rec_init(&rec);
    EXPECT(btb_system_register_entry_point(s, "app.Work", run_task, &first, NULL), BTB_OK);
    EXPECT(btb_system_register_entry_point(s, "app.Queued", run_task, &second, NULL), BTB_OK);
    btb_registration *a = reg_task(s, "first", "app.Work", app_trigger(), 0, false, NULL);
    btb_registration *b = reg_task(s, "second", "app.Queued", app_trigger(), 0, false, NULL);
    first.chain = b;
    EXPECT(btb_registration_add_completed(a, on_completed_unregister, &x, NULL, NULL), BTB_OK);
    EXPECT(btb_registration_add_completed(b, on_completed, &rec, NULL, NULL), BTB_OK);
    CHECK(count_all(s) == 2);
    CHECK(request(a, NULL) == BTB_APPLICATION_TRIGGER_ALLOWED);
    CHECK(wait_idle(s));
    CHECK(ctx_runs(&first) == 1);
    CHECK(first.chain_status == BTB_OK && first.chain_result == BTB_APPLICATION_TRIGGER_ALLOWED);
    CHECK(ctx_runs(&second) == 1 && strcmp(second.details[0], "{\"from\":\"run\"}") == 0);
    CHECK(rec_completed(&rec) == 1);
    CHECK(x.calls == 1);
    CHECK(x.history_status == BTB_OK && x.history == 1);
    CHECK(x.wait_status == BTB_ERROR_STATE);
    CHECK(x.unregister_status == BTB_OK);
    CHECK(x.again_status == BTB_ERROR_NOT_FOUND);
    CHECK(count_all(s) == 1);
    EXPECT(btb_registration_unregister(a, false), BTB_ERROR_NOT_FOUND);

    EXPECT(btb_registration_free(a), BTB_OK);
    EXPECT(btb_registration_free(b), BTB_OK);
    EXPECT(btb_system_close(s), BTB_OK);
    ctx_destroy(&first);
    ctx_destroy(&second);
    rec_destroy(&rec);
}

/* The pull queue: runs of queued entry points and groups arrive through btb_system_next_event on
 * the host's thread; btb_instance_finish_run ends them; cancellations arrive as events too. */
static void test_pull_queue(void) {
    btb_system *s = open_sim();
    CHECK(s != NULL);
    if (!s) return;
    recorder rec;
    rec_init(&rec);
    btb_event ev;
    memset(&ev, 0xAB, sizeof ev);
    EXPECT(btb_system_next_event(s, 0, &ev), BTB_OK);
    CHECK(ev.kind == BTB_EVENT_NONE && ev.instance == NULL && ev.reason == 0);
    EXPECT(btb_system_next_event(s, 10, NULL), BTB_ERROR_NULL_ARGUMENT);
    EXPECT(btb_system_next_event(NULL, 10, &ev), BTB_ERROR_NULL_ARGUMENT);

    EXPECT(btb_system_register_entry_point_queued(s, "app.Queued"), BTB_OK);
    btb_registration *r = reg_task(s, "hosted", "app.Queued", app_trigger(), 0, false, NULL);
    EXPECT(btb_registration_add_completed(r, on_completed, &rec, NULL, NULL), BTB_OK);
    EXPECT(btb_registration_add_progress(r, on_progress, &rec, NULL, NULL), BTB_OK);

    CHECK(request(r, "{\"job\":1}") == BTB_APPLICATION_TRIGGER_ALLOWED);
    EXPECT(btb_system_next_event(s, WAIT_MS, &ev), BTB_OK);
    CHECK(ev.kind == BTB_EVENT_RUN && ev.instance != NULL && ev.reason == 0);
    if (ev.kind == BTB_EVENT_RUN) {
        const char *details = NULL;
        btb_uuid id;
        btb_registration *task = NULL;
        const char *name = NULL;
        EXPECT(btb_instance_trigger_details(ev.instance, &details), BTB_OK);
        CHECK(details && strcmp(details, "{\"job\":1}") == 0);
        EXPECT(btb_instance_id(ev.instance, &id), BTB_OK);
        EXPECT(btb_instance_task(ev.instance, &task), BTB_OK);
        EXPECT(btb_registration_name(task, &name), BTB_OK);
        CHECK(strcmp(name, "hosted") == 0);
        EXPECT(btb_registration_free(task), BTB_OK);
        CHECK(still_busy(s)); /* running on the host, not done until finish_run */
        CHECK(request(r, NULL) == BTB_APPLICATION_TRIGGER_CURRENTLY_RUNNING);
        EXPECT(btb_instance_set_progress(ev.instance, 42), BTB_OK);
        EXPECT(btb_instance_finish_run(ev.instance), BTB_OK);
        EXPECT(btb_instance_finish_run(ev.instance), BTB_ERROR_STATE);
        MSG_HAS("already finished");
        CHECK(wait_idle(s));
        CHECK(rec_completed(&rec) == 1);
        CHECK(rec.outcome[0] == BTB_TASK_OUTCOME_SUCCEEDED && rec.last_progress[0] == 42);
        CHECK(uuid_eq(&rec.id[0], &id));
        CHECK(rec_progressed(&rec) == 1 && rec.progress[0] == 42);
        EXPECT(btb_instance_free(ev.instance), BTB_OK);
        EXPECT(btb_instance_free(ev.instance), BTB_ERROR_INVALID_HANDLE);
    }

    /* a host-side failure and a deferral taken on the host */
    CHECK(request(r, NULL) == BTB_APPLICATION_TRIGGER_ALLOWED);
    EXPECT(btb_system_next_event(s, WAIT_MS, &ev), BTB_OK);
    CHECK(ev.kind == BTB_EVENT_RUN);
    if (ev.kind == BTB_EVENT_RUN) {
        const char *details = (const char *)1;
        btb_deferral *d = NULL;
        EXPECT(btb_instance_trigger_details(ev.instance, &details), BTB_OK);
        CHECK(details == NULL);
        EXPECT(btb_instance_get_deferral(ev.instance, &d), BTB_OK);
        EXPECT(btb_instance_report_failure(ev.instance, "guest raised ValueError"), BTB_OK);
        EXPECT(btb_instance_finish_run(ev.instance), BTB_OK);
        CHECK(still_busy(s));
        EXPECT(btb_deferral_complete(d), BTB_OK);
        CHECK(wait_idle(s));
        CHECK(rec_completed(&rec) == 2 && rec.outcome[1] == BTB_TASK_OUTCOME_FAILED);
        CHECK(strcmp(rec.message[1], "guest raised ValueError") == 0);
        EXPECT(btb_deferral_free(d), BTB_OK);
        EXPECT(btb_instance_free(ev.instance), BTB_OK);
    }

    /* cancellation: a CANCELED event for the instance the host is running */
    CHECK(request(r, NULL) == BTB_APPLICATION_TRIGGER_ALLOWED);
    btb_event run_ev, cancel_ev;
    EXPECT(btb_system_next_event(s, WAIT_MS, &run_ev), BTB_OK);
    CHECK(run_ev.kind == BTB_EVENT_RUN);
    advance(s, 30000); /* the application limit */
    EXPECT(btb_system_next_event(s, WAIT_MS, &cancel_ev), BTB_OK);
    CHECK(cancel_ev.kind == BTB_EVENT_CANCELED);
    CHECK(cancel_ev.reason == BTB_CANCELLATION_EXECUTION_TIME_EXCEEDED);
    if (run_ev.kind == BTB_EVENT_RUN && cancel_ev.kind == BTB_EVENT_CANCELED) {
        btb_uuid a, b;
        bool canceled = false;
        EXPECT(btb_instance_id(run_ev.instance, &a), BTB_OK);
        EXPECT(btb_instance_id(cancel_ev.instance, &b), BTB_OK);
        CHECK(uuid_eq(&a, &b));
        EXPECT(btb_instance_canceled(run_ev.instance, &canceled), BTB_OK);
        CHECK(canceled);
        EXPECT(btb_instance_finish_run(cancel_ev.instance), BTB_OK);
        EXPECT(btb_instance_finish_run(run_ev.instance), BTB_ERROR_STATE); /* the same run */
        CHECK(wait_idle(s));
        CHECK(rec_completed(&rec) == 3);
        CHECK(rec.outcome[2] == BTB_TASK_OUTCOME_CANCELED);
        CHECK(rec.reason[2] == BTB_CANCELLATION_EXECUTION_TIME_EXCEEDED);
    }
    EXPECT(btb_instance_free(run_ev.instance), BTB_OK);
    EXPECT(btb_instance_free(cancel_ev.instance), BTB_OK);

    /* unregister(cancel) of a hosted run */
    CHECK(request(r, NULL) == BTB_APPLICATION_TRIGGER_ALLOWED);
    EXPECT(btb_system_next_event(s, WAIT_MS, &run_ev), BTB_OK);
    CHECK(run_ev.kind == BTB_EVENT_RUN);
    EXPECT(btb_registration_unregister(r, true), BTB_OK);
    EXPECT(btb_system_next_event(s, WAIT_MS, &cancel_ev), BTB_OK);
    CHECK(cancel_ev.kind == BTB_EVENT_CANCELED && cancel_ev.reason == BTB_CANCELLATION_ABORT);
    EXPECT(btb_instance_finish_run(run_ev.instance), BTB_OK);
    CHECK(wait_idle(s));
    EXPECT(btb_instance_free(run_ev.instance), BTB_OK);
    EXPECT(btb_instance_free(cancel_ev.instance), BTB_OK);

    /* a group's runs through the queue, the system's through a callback */
    task_ctx sys;
    ctx_init(&sys);
    EXPECT(btb_system_set_background_activated_queued(s, "lib.hosted"), BTB_OK);
    EXPECT(btb_system_set_background_activated(s, NULL, run_task, &sys, NULL), BTB_OK);
    btb_registration *g = reg_task(s, "grouped", NULL, app_trigger(), 0, false, "lib.hosted");
    btb_registration *plain = reg_task(s, "plain", NULL, app_trigger(), 0, false, NULL);
    CHECK(request(plain, NULL) == BTB_APPLICATION_TRIGGER_ALLOWED);
    CHECK(request(g, NULL) == BTB_APPLICATION_TRIGGER_ALLOWED);
    EXPECT(btb_system_next_event(s, WAIT_MS, &ev), BTB_OK);
    CHECK(ev.kind == BTB_EVENT_RUN);
    if (ev.kind == BTB_EVENT_RUN) {
        btb_registration *task = NULL;
        btb_task_group *grp = NULL;
        const char *gid = NULL;
        EXPECT(btb_instance_task(ev.instance, &task), BTB_OK);
        EXPECT(btb_registration_task_group(task, &grp), BTB_OK);
        CHECK(grp != NULL);
        if (grp) {
            EXPECT(btb_task_group_id(grp, &gid), BTB_OK);
            CHECK(strcmp(gid, "lib.hosted") == 0);
        }
        EXPECT(btb_task_group_free(grp), BTB_OK);
        EXPECT(btb_registration_free(task), BTB_OK);
        EXPECT(btb_instance_finish_run(ev.instance), BTB_OK);
        EXPECT(btb_instance_free(ev.instance), BTB_OK);
    }
    CHECK(wait_idle(s));
    CHECK(ctx_runs(&sys) == 1);
    EXPECT(btb_system_next_event(s, 0, &ev), BTB_OK);
    CHECK(ev.kind == BTB_EVENT_NONE);

    EXPECT(btb_registration_free(r), BTB_OK);
    EXPECT(btb_registration_free(g), BTB_OK);
    EXPECT(btb_registration_free(plain), BTB_OK);
    EXPECT(btb_system_close(s), BTB_OK);
    ctx_destroy(&sys);
    rec_destroy(&rec);
}

/* Tasks without an entry point run through their group's background-activated handler, else the
 * system's; without either they fail saying so. */
static void test_background_activated(void) {
    btb_system *s = open_sim();
    CHECK(s != NULL);
    if (!s) return;
    task_ctx sys, grp;
    recorder rec;
    ctx_init(&sys);
    ctx_init(&grp);
    rec_init(&rec);
    EXPECT(btb_system_set_background_activated(s, NULL, run_task, &sys, NULL), BTB_OK);
    EXPECT(btb_system_set_background_activated(s, "lib.sync", run_task, &grp, NULL), BTB_OK);
    btb_registration *plain = reg_task(s, "plain", NULL, app_trigger(), 0, false, NULL);
    btb_registration *grouped = reg_task(s, "grouped", NULL, app_trigger(), 0, false, "lib.sync");
    btb_registration *other = reg_task(s, "other", NULL, app_trigger(), 0, false, "lib.other");
    CHECK(request(plain, "{\"who\":\"plain\"}") == BTB_APPLICATION_TRIGGER_ALLOWED);
    CHECK(request(grouped, "{\"who\":\"grouped\"}") == BTB_APPLICATION_TRIGGER_ALLOWED);
    CHECK(request(other, "{\"who\":\"other\"}") == BTB_APPLICATION_TRIGGER_ALLOWED);
    CHECK(wait_idle(s));
    CHECK(ctx_runs(&grp) == 1 && strcmp(grp.details[0], "{\"who\":\"grouped\"}") == 0);
    CHECK(ctx_runs(&sys) == 2);

    /* removing the system's handler: the plain task waits for one (SPEC §12)… */
    EXPECT(btb_system_set_background_activated(s, NULL, NULL, NULL, NULL), BTB_OK);
    EXPECT(btb_registration_add_completed(plain, on_completed, &rec, NULL, NULL), BTB_OK);
    CHECK(request(plain, NULL) == BTB_APPLICATION_TRIGGER_ALLOWED);
    CHECK(wait_idle(s));
    CHECK(rec_completed(&rec) == 0);
    CHECK(ctx_runs(&sys) == 2);
    /* …and runs once one is set again */
    EXPECT(btb_system_set_background_activated(s, NULL, run_task, &sys, NULL), BTB_OK);
    CHECK(wait_idle(s));
    CHECK(rec_completed(&rec) == 1 && rec.outcome[0] == BTB_TASK_OUTCOME_SUCCEEDED);
    CHECK(ctx_runs(&sys) == 3);

    EXPECT(btb_system_set_background_activated(NULL, NULL, run_task, NULL, NULL), BTB_ERROR_NULL_ARGUMENT);
    EXPECT(btb_system_set_background_activated(s, "\xff", run_task, NULL, NULL), BTB_ERROR_INVALID_UTF8);
    EXPECT(btb_system_set_background_activated_queued(NULL, NULL), BTB_ERROR_NULL_ARGUMENT);

    EXPECT(btb_registration_free(plain), BTB_OK);
    EXPECT(btb_registration_free(grouped), BTB_OK);
    EXPECT(btb_registration_free(other), BTB_OK);
    EXPECT(btb_system_close(s), BTB_OK);
    ctx_destroy(&sys);
    ctx_destroy(&grp);
    rec_destroy(&rec);
}

/* System events raised by the app and custom events signalled in-process. */
static void test_events(void) {
    btb_system *s = open_sim();
    CHECK(s != NULL);
    if (!s) return;
    task_ctx ctx;
    ctx_init(&ctx);
    EXPECT(btb_system_register_entry_point(s, "app.Event", run_task, &ctx, NULL), BTB_OK);
    btb_trigger *t = NULL;
    EXPECT(btb_system_trigger_new(BTB_SYSTEM_TRIGGER_SMS_RECEIVED, false, &t), BTB_OK);
    btb_registration *sms = reg_task(s, "sms", "app.Event", t, 0, false, NULL);
    EXPECT(btb_custom_trigger_new("org.example.ping", BTB_CUSTOM_RECURRENCE_ONCE, &t), BTB_OK);
    btb_registration *once = reg_task(s, "ping-once", "app.Event", t, 0, false, NULL);
    EXPECT(btb_custom_trigger_new("org.example.ping", BTB_CUSTOM_RECURRENCE_ALWAYS, &t), BTB_OK);
    btb_registration *always = reg_task(s, "ping-always", "app.Event", t, 0, false, NULL);

    size_t fired = 99;
    EXPECT(btb_system_raise_event(s, BTB_SYSTEM_TRIGGER_SMS_RECEIVED, &fired), BTB_OK);
    CHECK(fired == 1);
    CHECK(wait_idle(s));
    CHECK(ctx_runs(&ctx) == 1 && ctx.details_null[0]);
    EXPECT(btb_system_raise_event(s, BTB_SYSTEM_TRIGGER_USER_AWAY, &fired), BTB_OK);
    CHECK(fired == 0);
    EXPECT(btb_system_raise_event(s, BTB_SYSTEM_TRIGGER_SMS_RECEIVED, NULL), BTB_OK);
    CHECK(wait_idle(s));
    CHECK(ctx_runs(&ctx) == 2);
    EXPECT(btb_system_raise_event(s, 99, &fired), BTB_ERROR_INVALID_ARGUMENT);
    EXPECT(btb_system_raise_event(s, 0, &fired), BTB_ERROR_INVALID_ARGUMENT);

    EXPECT(btb_system_signal_event(s, "org.example.ping", &fired), BTB_OK);
    CHECK(fired == 2);
    CHECK(wait_idle(s));
    CHECK(ctx_runs(&ctx) == 4);
    EXPECT(btb_system_signal_event(s, "org.example.ping", &fired), BTB_OK);
    CHECK(fired == 1); /* ONCE: once per broker run */
    CHECK(wait_idle(s));
    CHECK(ctx_runs(&ctx) == 5);
    EXPECT(btb_system_signal_event(s, "org.example.nobody", &fired), BTB_OK);
    CHECK(fired == 0);
    EXPECT(btb_system_signal_event(s, NULL, &fired), BTB_ERROR_NULL_ARGUMENT);
    CHECK(history_len(once) == 1 && history_len(always) == 2 && history_len(sms) == 2);
    btb_run_list *l = NULL;
    btb_run run;
    EXPECT(btb_registration_history(always, &l), BTB_OK);
    EXPECT(btb_run_list_get(l, 0, &run), BTB_OK);
    CHECK(run.trigger_kind == BTB_TRIGGER_KIND_CUSTOM_EVENT);
    EXPECT(btb_run_list_free(l), BTB_OK);

    EXPECT(btb_registration_free(sms), BTB_OK);
    EXPECT(btb_registration_free(once), BTB_OK);
    EXPECT(btb_registration_free(always), BTB_OK);
    EXPECT(btb_system_close(s), BTB_OK);
    ctx_destroy(&ctx);
}

static void on_canceled_noop(btb_instance *inst, uint32_t reason, void *ud) {
    (void)inst;
    (void)reason;
    (void)ud;
}

/* Misuse: handles used past their lifetime, NULLs, undeclared names, wrong system kinds, bad JSON. */
static void test_misuse(void) {
    btb_system *s = open_sim();
    CHECK(s != NULL);
    if (!s) return;
    task_ctx ctx;
    recorder rec;
    ctx_init(&ctx);
    rec_init(&rec);
    ctx.clone = true;
    EXPECT(btb_system_register_entry_point(s, "app.Work", run_task, &ctx, NULL), BTB_OK);
    btb_registration *r = reg_task(s, "misused", "app.Work", app_trigger(), 0, false, NULL);
    EXPECT(btb_registration_add_completed(r, on_completed, &rec, NULL, NULL), BTB_OK);
    EXPECT(btb_registration_add_progress(r, on_progress, &rec, NULL, NULL), BTB_OK);
    CHECK(request(r, NULL) == BTB_APPLICATION_TRIGGER_ALLOWED);
    CHECK(wait_idle(s));
    CHECK(ctx_runs(&ctx) == 1);

    /* a borrowed instance used after its callback returned */
    btb_instance *stale = ctx.stashed;
    uint32_t p = 0;
    btb_uuid id;
    btb_deferral *d = NULL;
    btb_instance *copy = NULL;
    CHECK(stale != NULL && stale != ctx.clone_h);
    EXPECT(btb_instance_progress(stale, &p), BTB_ERROR_INVALID_HANDLE);
    MSG_HAS("freed");
    EXPECT(btb_instance_set_progress(stale, 5), BTB_ERROR_INVALID_HANDLE);
    EXPECT(btb_instance_id(stale, &id), BTB_ERROR_INVALID_HANDLE);
    EXPECT(btb_instance_get_deferral(stale, &d), BTB_ERROR_INVALID_HANDLE);
    EXPECT(btb_instance_report_failure(stale, "late"), BTB_ERROR_INVALID_HANDLE);
    EXPECT(btb_instance_clone(stale, &copy), BTB_ERROR_INVALID_HANDLE);
    EXPECT(btb_instance_free(stale), BTB_ERROR_INVALID_HANDLE);
    EXPECT(btb_instance_finish_run(stale), BTB_ERROR_INVALID_HANDLE);
    /* ... and a borrowed registration used after its completed handler returned */
    btb_registration *stale_reg = rec.stashed;
    const char *name = NULL;
    CHECK(stale_reg != NULL && stale_reg != r);
    EXPECT(btb_registration_name(stale_reg, &name), BTB_ERROR_INVALID_HANDLE);
    EXPECT(btb_registration_free(stale_reg), BTB_ERROR_INVALID_HANDLE);
    /* the owned clone still works; the run is over */
    EXPECT(btb_instance_id(ctx.clone_h, &id), BTB_OK);
    CHECK(uuid_eq(&id, &ctx.id[0]));
    EXPECT(btb_instance_get_deferral(ctx.clone_h, &d), BTB_ERROR_STATE);
    EXPECT(btb_instance_finish_run(ctx.clone_h), BTB_ERROR_STATE); /* a callback run finished already */
    EXPECT(btb_instance_set_progress(ctx.clone_h, 9), BTB_OK);     /* harmless: nobody hears it */
    CHECK(wait_idle(s));
    CHECK(rec_progressed(&rec) == 0);
    /* canceled-handler bookkeeping on a live handle */
    uint64_t tok = 0;
    EXPECT(btb_instance_add_canceled(ctx.clone_h, NULL, NULL, NULL, &tok), BTB_ERROR_NULL_ARGUMENT);
    EXPECT(btb_instance_add_canceled(NULL, on_canceled_noop, NULL, NULL, &tok), BTB_ERROR_NULL_ARGUMENT);
    EXPECT(btb_instance_add_canceled(ctx.clone_h, on_canceled_noop, NULL, NULL, &tok), BTB_OK);
    EXPECT(btb_instance_remove_canceled(ctx.clone_h, tok), BTB_OK);
    EXPECT(btb_instance_remove_canceled(ctx.clone_h, tok), BTB_ERROR_NOT_FOUND);
    uint32_t reason = 0;
    EXPECT(btb_instance_cancellation_reason(ctx.clone_h, &reason), BTB_ERROR_NOT_FOUND);
    EXPECT(btb_instance_progress(ctx.clone_h, NULL), BTB_ERROR_NULL_ARGUMENT);
    EXPECT(btb_instance_trigger_details(NULL, &name), BTB_ERROR_NULL_ARGUMENT);
    EXPECT(btb_instance_report_failure(ctx.clone_h, NULL), BTB_ERROR_NULL_ARGUMENT);
    EXPECT(btb_instance_report_failure(ctx.clone_h, "\xc3"), BTB_ERROR_INVALID_UTF8);
    EXPECT(btb_instance_free(NULL), BTB_OK);
    EXPECT(btb_deferral_free(NULL), BTB_OK);
    EXPECT(btb_deferral_complete(NULL), BTB_ERROR_NULL_ARGUMENT);
    /* wrong handle types */
    EXPECT(btb_instance_progress((btb_instance *)r, &p), BTB_ERROR_INVALID_HANDLE);
    MSG_HAS("btb_registration");
    EXPECT(btb_deferral_complete((btb_deferral *)ctx.clone_h), BTB_ERROR_INVALID_HANDLE);
    EXPECT(btb_registration_request((btb_registration *)ctx.clone_h, NULL, &p), BTB_ERROR_INVALID_HANDLE);

    /* NULL handlers and arguments */
    EXPECT(btb_system_register_entry_point(s, "app.Work", NULL, NULL, NULL), BTB_ERROR_NULL_ARGUMENT);
    MSG_HAS("handler");
    EXPECT(btb_system_register_entry_point(s, NULL, run_task, NULL, NULL), BTB_ERROR_NULL_ARGUMENT);
    EXPECT(btb_system_register_entry_point(NULL, "app.Work", run_task, NULL, NULL), BTB_ERROR_NULL_ARGUMENT);
    EXPECT(btb_system_register_entry_point_queued(s, NULL), BTB_ERROR_NULL_ARGUMENT);
    EXPECT(btb_registration_add_completed(r, NULL, NULL, NULL, NULL), BTB_ERROR_NULL_ARGUMENT);
    EXPECT(btb_registration_add_progress(r, NULL, NULL, NULL, NULL), BTB_ERROR_NULL_ARGUMENT);
    EXPECT(btb_registration_add_completed(NULL, on_completed, &rec, NULL, NULL), BTB_ERROR_NULL_ARGUMENT);
    EXPECT(btb_registration_request(r, NULL, NULL), BTB_ERROR_NULL_ARGUMENT);
    EXPECT(btb_registration_request(NULL, NULL, &p), BTB_ERROR_NULL_ARGUMENT);
    EXPECT(btb_system_wait_idle(s, 10, NULL), BTB_ERROR_NULL_ARGUMENT);
    EXPECT(btb_system_set_state(NULL, BTB_CONDITION_INTERNET_AVAILABLE, true), BTB_ERROR_NULL_ARGUMENT);
    EXPECT(btb_system_state(s, BTB_CONDITION_INTERNET_AVAILABLE, NULL), BTB_ERROR_NULL_ARGUMENT);

    /* names not in the manifest */
    EXPECT(btb_system_register_entry_point(s, "app.Undeclared", run_task, NULL, NULL), BTB_ERROR_NOT_DECLARED);
    MSG_HAS("app.Undeclared");
    EXPECT(btb_system_register_entry_point_queued(s, "app.Undeclared"), BTB_ERROR_NOT_DECLARED);
    EXPECT(btb_system_unregister_entry_point(s, "app.Undeclared"), BTB_ERROR_NOT_DECLARED);
    EXPECT(btb_system_register_entry_point(s, "\xff", run_task, NULL, NULL), BTB_ERROR_INVALID_UTF8);

    /* unknown enum values */
    EXPECT(btb_system_set_state(s, 999, true), BTB_ERROR_INVALID_ARGUMENT);
    MSG_HAS("999");
    int32_t state = 0;
    EXPECT(btb_system_state(s, 0, &state), BTB_ERROR_INVALID_ARGUMENT);

    /* bad arguments: not JSON, not an object, not UTF-8; nothing runs */
    uint32_t res = 99;
    EXPECT(btb_registration_request(r, "{not json", &res), BTB_ERROR_INVALID_ARGUMENT);
    MSG_HAS("JSON");
    EXPECT(btb_registration_request(r, "[1, 2]", &res), BTB_ERROR_INVALID_ARGUMENT);
    MSG_HAS("object");
    EXPECT(btb_registration_request(r, "42", &res), BTB_ERROR_INVALID_ARGUMENT);
    EXPECT(btb_registration_request(r, "{\"a\":\"\xff\"}", &res), BTB_ERROR_INVALID_UTF8);
    CHECK(res == 99); /* out-parameters are written only on success */
    btb_trigger *t = NULL;
    EXPECT(btb_registration_trigger(r, &t), BTB_OK);
    EXPECT(btb_application_trigger_request(s, t, "{oops}", &res), BTB_ERROR_INVALID_ARGUMENT);
    EXPECT(btb_application_trigger_request(s, NULL, NULL, &res), BTB_ERROR_NULL_ARGUMENT);
    EXPECT(btb_application_trigger_request(s, t, NULL, NULL), BTB_ERROR_NULL_ARGUMENT);
    EXPECT(btb_trigger_free(t), BTB_OK);
    CHECK(wait_idle(s));
    CHECK(ctx_runs(&ctx) == 1);
    /* an application trigger nobody registered with; a time trigger is no application trigger */
    t = app_trigger();
    EXPECT(btb_application_trigger_request(s, t, NULL, &res), BTB_OK);
    CHECK(res == BTB_APPLICATION_TRIGGER_UNKNOWN_ERROR);
    MSG_HAS("no registration holds application trigger");
    MSG_HAS("in this system");
    EXPECT(btb_application_trigger_request(NULL, t, NULL, &res), BTB_OK);
    CHECK(res == BTB_APPLICATION_TRIGGER_UNKNOWN_ERROR);
    MSG_HAS("in any open system of this process");
    EXPECT(btb_trigger_free(t), BTB_OK);
    t = time_trigger(15, false);
    EXPECT(btb_application_trigger_request(s, t, NULL, &res), BTB_ERROR_INVALID_ARGUMENT);
    MSG_HAS("not an application trigger");
    EXPECT(btb_trigger_free(t), BTB_OK);
    btb_registration *timed = reg_task(s, "timed", "app.Timer", time_trigger(15, false), 0, false, NULL);
    EXPECT(btb_registration_request(timed, NULL, &res), BTB_ERROR_INVALID_ARGUMENT);
    EXPECT(btb_registration_free(timed), BTB_OK);

    /* a system reading the platform, on the real clock: no simulated states, no manual time */
    btb_system *real = open_runtime("org.example.creal", ":memory:", false, false);
    CHECK(real != NULL);
    if (real) {
        EXPECT(btb_system_set_state(real, BTB_CONDITION_INTERNET_AVAILABLE, true), BTB_ERROR_STATE);
        MSG_HAS("simulated");
        EXPECT(btb_system_advance_clock(real, 1000), BTB_ERROR_STATE);
        MSG_HAS("real clock");
        EXPECT(btb_system_close(real), BTB_OK);
    }

    /* btb_signal_event to an app without a broker; bad names */
    EXPECT(btb_signal_event("org.example.nobody", "org.example.ping"), BTB_ERROR_NOT_FOUND);
    MSG_HAS("org.example.nobody");
    EXPECT(btb_signal_event("not an app id", "x"), BTB_ERROR_INVALID_ARGUMENT);
    EXPECT(btb_signal_event("org.example.nobody", ""), BTB_ERROR_INVALID_ARGUMENT);
    EXPECT(btb_signal_event("org.example.nobody", "two\nlines"), BTB_ERROR_INVALID_ARGUMENT);
    EXPECT(btb_signal_event(NULL, "x"), BTB_ERROR_NULL_ARGUMENT);
    EXPECT(btb_signal_event("org.example.nobody", NULL), BTB_ERROR_NULL_ARGUMENT);
    EXPECT(btb_signal_event("org.example.nobody", "\xff"), BTB_ERROR_INVALID_UTF8);

    /* after close: the system handle is gone, the registration reports STATE */
    EXPECT(btb_system_close(s), BTB_OK);
    bool idle = false;
    btb_event ev;
    EXPECT(btb_system_wait_idle(s, 10, &idle), BTB_ERROR_INVALID_HANDLE);
    EXPECT(btb_system_next_event(s, 10, &ev), BTB_ERROR_INVALID_HANDLE);
    EXPECT(btb_system_register_entry_point(s, "app.Work", run_task, NULL, NULL), BTB_ERROR_INVALID_HANDLE);
    EXPECT(btb_registration_request(r, NULL, &res), BTB_ERROR_STATE);
    MSG_HAS("closed");
    EXPECT(btb_registration_add_completed(r, on_completed, &rec, NULL, NULL), BTB_ERROR_STATE);
    btb_run_list *l = NULL;
    EXPECT(btb_registration_history(r, &l), BTB_ERROR_STATE);
    /* the instance handle outlives its system */
    EXPECT(btb_instance_id(ctx.clone_h, &id), BTB_OK);
    EXPECT(btb_registration_free(r), BTB_OK);
    ctx_destroy(&ctx);
    rec_destroy(&rec);
}

/* Closing a system cancels running instances with TERMINATING and waits (at most grace) for them. */
static void test_close_terminates(void) {
    btb_system *s = open_sim();
    CHECK(s != NULL);
    if (!s) return;
    task_ctx ctx;
    ctx_init(&ctx);
    ctx.defer = ctx.complete_on_cancel = ctx.clone = true;
    EXPECT(btb_system_register_entry_point(s, "app.Work", run_task, &ctx, NULL), BTB_OK);
    btb_registration *r = reg_task(s, "long", "app.Work", app_trigger(), 0, false, NULL);
    CHECK(request(r, NULL) == BTB_APPLICATION_TRIGGER_ALLOWED);
    CHECK(chan_recv(&ctx.started));
    EXPECT(btb_system_close(s), BTB_OK);
    CHECK(ctx_cancels(&ctx) == 1 && ctx.cancel_reason == BTB_CANCELLATION_TERMINATING);
    CHECK(ctx.complete_status == BTB_OK);
    EXPECT(btb_registration_free(r), BTB_OK);
    ctx_destroy(&ctx);
}

/* free_user_data (the C shutdown contract): called once btb is done with user_data — never after a
 * failed call, once when a handler is replaced or removed, and for a run function abandoned by
 * close only when that run finally returns (close does not wait past its grace). */
typedef struct {
    chan started, release, freed;
    int frees;
} ud_ctx;

static void ud_init(ud_ctx *c) {
    chan_open(&c->started);
    chan_open(&c->release);
    chan_open(&c->freed);
    c->frees = 0;
}

static void ud_destroy(ud_ctx *c) {
    chan_close(&c->started);
    chan_close(&c->release);
    chan_close(&c->freed);
}

static void ud_free(void *user_data) {
    ud_ctx *c = user_data;
    __atomic_add_fetch(&c->frees, 1, __ATOMIC_SEQ_CST);
    chan_send(&c->freed);
}

static int ud_frees(ud_ctx *c) { return __atomic_load_n(&c->frees, __ATOMIC_SEQ_CST); }

static void ud_noop(btb_instance *instance, void *user_data) { (void)instance, (void)user_data; }

/* Ignores cancellation: returns only when the test releases it. */
static void ud_stuck(btb_instance *instance, void *user_data) {
    (void)instance;
    ud_ctx *c = user_data;
    chan_send(&c->started);
    CHECK(chan_recv(&c->release));
}

static void ud_completed(btb_registration *r, const btb_completion *c, void *user_data) {
    (void)r, (void)c, (void)user_data;
}

/* A finalizer may call btb: it runs with no btb lock held. */
static btb_system *reenter_system;
static btb_builder *reenter_builder;
static int reentered;

static void ud_reenter(void *user_data) {
    (void)user_data;
    btb_registration *r = NULL;
    if (btb_register_in(reenter_system, reenter_builder, &r) == BTB_OK) {
        reentered++;
        btb_registration_free(r);
    }
}

static btb_builder *replace_builder(const char *name) {
    btb_builder *b = NULL;
    btb_trigger *t = app_trigger();
    EXPECT(btb_new(&b), BTB_OK);
    EXPECT(btb_set_name(b, name), BTB_OK);
    EXPECT(btb_set_task_entry_point(b, "app.Work"), BTB_OK);
    EXPECT(btb_set_trigger(b, t), BTB_OK);
    EXPECT(btb_set_name_policy(b, BTB_NAME_POLICY_REPLACE), BTB_OK);
    EXPECT(btb_trigger_free(t), BTB_OK);
    return b;
}

static void test_free_user_data(void) {
    grace_ms = 50;
    btb_system *s = open_sim();
    grace_ms = 5000;
    CHECK(s != NULL);
    if (!s) return;
    ud_ctx a, b, c;
    ud_init(&a);
    ud_init(&b);
    ud_init(&c);
    /* A failed call leaves user_data with the caller. */
    EXPECT(btb_system_register_entry_point(s, "app.Undeclared", ud_noop, &a, ud_free), BTB_ERROR_NOT_DECLARED);
    CHECK(ud_frees(&a) == 0);
    /* Replacing a handler finalizes the old user_data, once. */
    EXPECT(btb_system_register_entry_point(s, "app.Work", ud_noop, &a, ud_free), BTB_OK);
    EXPECT(btb_system_register_entry_point(s, "app.Work", ud_stuck, &b, ud_free), BTB_OK);
    CHECK(chan_recv(&a.freed) && ud_frees(&a) == 1);
    /* Removing a completed handler finalizes its user_data. */
    btb_registration *r = reg_task(s, "stuck", "app.Work", app_trigger(), 0, false, NULL);
    uint64_t token = 0;
    EXPECT(btb_registration_add_completed(r, ud_completed, &c, ud_free, &token), BTB_OK);
    EXPECT(btb_registration_remove_handler(r, token), BTB_OK);
    CHECK(chan_recv(&c.freed) && ud_frees(&c) == 1);
    /* Replacing a registration drops its completed handler: the finalizer registers again. */
    btb_builder *dup = replace_builder("dup");
    btb_registration *first = NULL, *second = NULL;
    EXPECT(btb_register_in(s, dup, &first), BTB_OK);
    EXPECT(btb_registration_add_completed(first, ud_completed, NULL, ud_reenter, NULL), BTB_OK);
    reenter_system = s;
    reenter_builder = replace_builder("other");
    EXPECT(btb_register_in(s, dup, &second), BTB_OK);
    CHECK(reentered == 1);
    btb_free(reenter_builder);
    btb_free(dup);
    EXPECT(btb_registration_free(first), BTB_OK);
    EXPECT(btb_registration_free(second), BTB_OK);
    /* A run that ignores cancellation outlives close (grace 50 ms) and keeps its user_data. */
    CHECK(request(r, NULL) == BTB_APPLICATION_TRIGGER_ALLOWED);
    CHECK(chan_recv(&b.started));
    EXPECT(btb_system_close(s), BTB_OK);
    CHECK(ud_frees(&b) == 0);
    chan_send(&b.release);
    CHECK(chan_recv(&b.freed) && ud_frees(&b) == 1);
    CHECK(ud_frees(&a) == 1 && ud_frees(&c) == 1);
    EXPECT(btb_registration_free(r), BTB_OK);
    ud_destroy(&a);
    ud_destroy(&b);
    ud_destroy(&c);
}

/* A custom event signalled by another process (a fresh process image: fork + exec of this binary
 * in --signal mode) reaches this broker through its socket under $XDG_RUNTIME_DIR/btb/. */
static btb_status signal_from_child(const char *app_id, const char *event) {
    int fds[2];
    char fd_text[16];
    if (pipe(fds) != 0) return 999;
    snprintf(fd_text, sizeof fd_text, "%d", fds[1]);
    char *argv[] = {(char *)self_exe, "--signal", fd_text, (char *)app_id, (char *)event, NULL};
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        execv(self_exe, argv);
        _exit(127);
    }
    close(fds[1]);
    /* The verdict travels through the pipe: the exit status is not trusted under valgrind. */
    unsigned char verdict[2] = {0xFF, 0xFF};
    ssize_t got = pid > 0 ? read(fds[0], verdict, sizeof verdict) : -1;
    close(fds[0]);
    int status = 0;
    if (pid > 0) waitpid(pid, &status, 0);
    return got == 2 && verdict[0] == 'S' ? verdict[1] : 998;
}

static void test_cross_process(void) {
    char store[4096];
    snprintf(store, sizeof store, "%s/signal/btb.sqlite3", dir);
    btb_system *s = open_runtime("org.example.csignal", store, true, true);
    CHECK(s != NULL);
    if (!s) return;
    task_ctx ctx;
    recorder rec;
    ctx_init(&ctx);
    rec_init(&rec);
    EXPECT(btb_system_register_entry_point(s, "app.Event", run_task, &ctx, NULL), BTB_OK);
    btb_trigger *t = NULL;
    EXPECT(btb_custom_trigger_new("org.example.wake", BTB_CUSTOM_RECURRENCE_ALWAYS, &t), BTB_OK);
    btb_registration *r = reg_task(s, "woken", "app.Event", t, 0, false, NULL);
    EXPECT(btb_registration_add_completed(r, on_completed, &rec, NULL, NULL), BTB_OK);

    char sock[4096];
    struct stat st;
    snprintf(sock, sizeof sock, "%s/run/btb/org.example.csignal.sock", dir);
    CHECK(stat(sock, &st) == 0 && S_ISSOCK(st.st_mode) && (st.st_mode & 0777) == 0600);

    EXPECT(signal_from_child("org.example.csignal", "org.example.wake"), BTB_OK);
    CHECK(wait_idle(s));
    CHECK(ctx_runs(&ctx) == 1);
    CHECK(rec_completed(&rec) == 1 && rec.outcome[0] == BTB_TASK_OUTCOME_SUCCEEDED);
    EXPECT(signal_from_child("org.example.csignal", "org.example.wake"), BTB_OK);
    CHECK(wait_idle(s));
    CHECK(ctx_runs(&ctx) == 2);
    /* an event nobody listens to is accepted and runs nothing */
    EXPECT(signal_from_child("org.example.csignal", "org.example.other"), BTB_OK);
    CHECK(wait_idle(s));
    CHECK(ctx_runs(&ctx) == 2);
    /* from this process too, through the socket */
    EXPECT(btb_signal_event("org.example.csignal", "org.example.wake"), BTB_OK);
    CHECK(wait_idle(s));
    CHECK(ctx_runs(&ctx) == 3);
    CHECK(history_len(r) == 3);
    /* another app's broker is not this one */
    EXPECT(signal_from_child("org.example.cother", "org.example.wake"), BTB_ERROR_NOT_FOUND);

    EXPECT(btb_registration_free(r), BTB_OK);
    EXPECT(btb_system_close(s), BTB_OK);
    /* once closed, nobody listens */
    EXPECT(signal_from_child("org.example.csignal", "org.example.wake"), BTB_ERROR_NOT_FOUND);
    EXPECT(btb_signal_event("org.example.csignal", "org.example.wake"), BTB_ERROR_NOT_FOUND);
    ctx_destroy(&ctx);
    rec_destroy(&rec);
}

static int child_signal(int argc, char **argv) {
    if (argc != 5) return 2;
    int fd = atoi(argv[2]);
    btb_status st = btb_signal_event(argv[3], argv[4]);
    unsigned char verdict[2] = {'S', (unsigned char)st};
    ssize_t w = write(fd, verdict, sizeof verdict);
    close(fd);
    return w == 2 ? 0 : 1;
}

/* A system opened paused runs nothing until btb_system_start, so run functions registered after
 * opening still get the run due at open (the catch-up of a periodic task that missed its time). */
static btb_system *open_paused_at(const char *store, int64_t now_ms) {
    btb_manifest *m = NULL;
    btb_system_options *o = NULL;
    btb_system *s = NULL;
    const char *timer[] = {"timer"};
    EXPECT(btb_manifest_new("org.example.cpaused", "1.0", &m), BTB_OK);
    EXPECT(btb_manifest_declare(m, "app.Timer", timer, 1, NULL, 0), BTB_OK);
    EXPECT(btb_system_options_new(&o), BTB_OK);
    EXPECT(btb_system_options_set_manifest(o, m), BTB_OK);
    EXPECT(btb_system_options_set_store(o, store), BTB_OK);
    EXPECT(btb_system_options_set_manual_clock(o, now_ms), BTB_OK);
    EXPECT(btb_system_options_set_min_freshness_minutes(o, 1), BTB_OK);
    EXPECT(btb_system_options_set_timer_window_seconds(o, 0), BTB_OK);
    EXPECT(btb_system_options_set_paused(o, true), BTB_OK);
    EXPECT(btb_system_open(o, &s), BTB_OK);
    btb_system_options_free(o);
    btb_manifest_free(m);
    return s;
}

static void test_paused_start(void) {
    char store[4096];
    snprintf(store, sizeof store, "%s/paused.sqlite3", dir);
    btb_system *s = open_paused_at(store, T0);
    CHECK(s != NULL);
    if (!s) return;
    EXPECT(btb_system_start(s), BTB_OK);
    btb_registration *r = reg_task(s, "tick", "app.Timer", time_trigger(5, false), 0, false, NULL);
    EXPECT(btb_registration_free(r), BTB_OK);
    EXPECT(btb_system_close(s), BTB_OK);

    s = open_paused_at(store, T0 + 3600 * 1000LL); /* an hour later: 12 periods missed */
    CHECK(s != NULL);
    if (!s) return;
    task_ctx ctx;
    ctx_init(&ctx);
    EXPECT(btb_system_register_entry_point(s, "app.Timer", run_task, &ctx, NULL), BTB_OK);
    CHECK(wait_idle(s));
    CHECK(ctx_runs(&ctx) == 0); /* paused */
    EXPECT(btb_system_start(s), BTB_OK);
    EXPECT(btb_system_start(s), BTB_OK); /* starting twice changes nothing */
    CHECK(wait_idle(s));
    CHECK(ctx_runs(&ctx) == 1); /* one catch-up run, not twelve */
    btb_registration_list *l = NULL;
    btb_registration *found = NULL;
    EXPECT(btb_system_all_tasks(s, &l), BTB_OK);
    EXPECT(btb_registration_list_get(l, 0, &found), BTB_OK);
    CHECK(history_len(found) == 1);
    EXPECT(btb_registration_free(found), BTB_OK);
    EXPECT(btb_registration_list_free(l), BTB_OK);
    EXPECT(btb_system_close(s), BTB_OK);
    EXPECT(btb_system_start(NULL), BTB_ERROR_NULL_ARGUMENT);
    ctx_destroy(&ctx);
}

static void test_disabled_by_policy(void) {
    btb_manifest *m = NULL;
    btb_system_options *o = NULL;
    btb_system *s = NULL;
    const char *general[] = {"general"};
    EXPECT(btb_manifest_new("org.example.cpolicy", "1.0", &m), BTB_OK);
    EXPECT(btb_manifest_declare(m, "app.Work", general, 1, NULL, 0), BTB_OK);
    EXPECT(btb_system_options_new(&o), BTB_OK);
    EXPECT(btb_system_options_set_manifest(o, m), BTB_OK);
    EXPECT(btb_system_options_set_store(o, ":memory:"), BTB_OK);
    EXPECT(btb_system_options_set_allow_application_triggers(o, false), BTB_OK);
    EXPECT(btb_system_open(o, &s), BTB_OK);
    btb_system_options_free(o);
    btb_manifest_free(m);
    if (!s) return;
    btb_registration *r = reg_task(s, "blocked", "app.Work", app_trigger(), 0, false, NULL);
    CHECK(request(r, NULL) == BTB_APPLICATION_TRIGGER_DISABLED_BY_POLICY);
    CHECK(wait_idle(s));
    CHECK(history_len(r) == 0);
    EXPECT(btb_registration_free(r), BTB_OK);
    EXPECT(btb_system_close(s), BTB_OK);
}

static void write_attr(const char *supply_dir, const char *name, const char *value) {
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", supply_dir, name);
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    if (!f) return;
    fprintf(f, "%s\n", value);
    fclose(f);
}

/* The platform sources read the machine where the options point: a power-supply tree on battery
 * reads ON_AC_POWER false from "sysfs"; a missing tree reads unknown from "unknown". */
static void test_platform_options(void) {
    char root[4096], bat[4200], missing[4096];
    snprintf(root, sizeof root, "%s/power_supply", dir);
    snprintf(bat, sizeof bat, "%s/BAT0", root);
    snprintf(missing, sizeof missing, "%s/no_such_sysfs", dir);
    CHECK(mkdir(root, 0700) == 0 || errno == EEXIST);
    CHECK(mkdir(bat, 0700) == 0 || errno == EEXIST);
    write_attr(bat, "type", "Battery");
    write_attr(bat, "status", "Discharging");
    write_attr(bat, "capacity", "80");

    const char *paths[] = {root, missing};
    const int32_t want[] = {BTB_STATE_FALSE, BTB_STATE_UNKNOWN};
    const char *want_source[] = {"sysfs", "unknown"};
    for (int i = 0; i < 2; i++) {
        btb_manifest *m = NULL;
        btb_system_options *o = NULL;
        btb_system *s = NULL;
        const char *general[] = {"general"};
        EXPECT(btb_manifest_new("org.example.cplatform", "1.0", &m), BTB_OK);
        EXPECT(btb_manifest_declare(m, "app.Work", general, 1, NULL, 0), BTB_OK);
        EXPECT(btb_system_options_new(&o), BTB_OK);
        EXPECT(btb_system_options_set_manifest(o, m), BTB_OK);
        EXPECT(btb_system_options_set_store(o, ":memory:"), BTB_OK);
        EXPECT(btb_system_options_set_power_supply_root(o, "\xff"), BTB_ERROR_INVALID_UTF8);
        EXPECT(btb_system_options_set_power_supply_root(NULL, root), BTB_ERROR_NULL_ARGUMENT);
        EXPECT(btb_system_options_set_localtime_path(o, NULL), BTB_OK); /* the default */
        EXPECT(btb_system_options_set_power_supply_root(o, paths[i]), BTB_OK);
        EXPECT(btb_system_open(o, &s), BTB_OK);
        btb_system_options_free(o);
        btb_manifest_free(m);
        if (!s) return;
        int32_t state = 7;
        const char *source = NULL;
        EXPECT(btb_system_state(s, BTB_CONDITION_ON_AC_POWER, &state), BTB_OK);
        CHECK(state == want[i]);
        EXPECT(btb_system_state_source(s, BTB_CONDITION_ON_AC_POWER, &source), BTB_OK);
        CHECK(source != NULL && strcmp(source, want_source[i]) == 0);
        EXPECT(btb_system_set_state(s, BTB_CONDITION_ON_AC_POWER, true), BTB_ERROR_STATE);
        EXPECT(btb_system_close(s), BTB_OK);
    }
}

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "--signal") == 0) return child_signal(argc, argv);
    if (argc < 2) {
        fprintf(stderr, "usage: %s SCRATCH_DIR\n", argv[0]);
        return 2;
    }
    static char abs_dir[4096];
    if (!realpath(argv[1], abs_dir)) {
        perror(argv[1]);
        return 2;
    }
    dir = abs_dir; /* XDG_RUNTIME_DIR must be absolute */
    self_exe = argv[0];
    main_thread = pthread_self();
    /* Control sockets go to a private runtime directory inside the scratch directory. */
    char run[4096];
    snprintf(run, sizeof run, "%s/run", dir);
    if (mkdir(run, 0700) != 0 && errno != EEXIST) {
        perror(run);
        return 2;
    }
    chmod(run, 0700);
    setenv("XDG_RUNTIME_DIR", run, 1);
    unsetenv("BTB_MANIFEST");
    unsetenv("BTB_STORE");

    test_run_progress_completion();
    test_failure();
    test_retry();
    test_deferral_from_thread();
    test_time_trigger();
    test_condition_latch();
    test_unregister_cancels();
    test_time_limit();
    test_reentrant_handlers();
    test_pull_queue();
    test_background_activated();
    test_events();
    test_paused_start();
    test_disabled_by_policy();
    test_platform_options();
    test_misuse();
    test_close_terminates();
    test_free_user_data();
    test_cross_process();
    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
