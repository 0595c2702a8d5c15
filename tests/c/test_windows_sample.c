/* Microsoft's BackgroundTask sample (Windows-universal-samples, Samples/BackgroundTask) in C, line
 * by line where C allows: SampleBackgroundTask (Canceled handler, deferral, a periodic timer that
 * reports progress 10% at a time and completes the deferral), registered by RegisterBackgroundTask
 * with a system trigger, with a condition (CancelOnConditionLoss), with a time trigger and with an
 * application trigger requested through the trigger itself; progress and completed handlers;
 * cancellation by Unregister(true); the grouped task run by its group's BackgroundActivated.
 * As on Windows, nothing names the system after setup: btb_register uses the default system (the
 * app's broker), btb_application_trigger_request(NULL, …) fires where the trigger is registered,
 * and a group's handler applies wherever the group is used. Simulated state and a manual clock
 * stand in for the machine. Run as-is and under AddressSanitizer.
 *
 * Usage: test_windows_sample SCRATCH_DIR */
#define _GNU_SOURCE
#include "btb.h"
#include "check.h"

#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>



#define T0 1893456000000LL /* 2030-01-01T00:00:00Z */
#define MIN 60000LL
#define WAIT_MS 30000
#define ENTRY_POINT "Tasks.SampleBackgroundTask"

/* ---------------------------------------------------------------------------------------------
 * SampleBackgroundTask.cs */

typedef struct {
    btb_instance *task_instance; /* owned clone: the timer outlives the run function */
    btb_deferral *deferral;
    volatile int cancel_requested;
    volatile uint32_t cancel_reason;
    uint32_t progress;
    int slow; /* the cancellation scenario: work until canceled */
    pthread_t periodic_timer;
} sample_task;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t changed = PTHREAD_COND_INITIALIZER;
static int started_count;
static int slow_mode;
static char finished[256];

static void on_canceled(btb_instance *sender, uint32_t reason, void *user_data) {
    (void)sender;
    sample_task *t = user_data;
    t->cancel_reason = reason;
    t->cancel_requested = 1;
}

static void tick(void) {
    struct timespec ts = {0, 2 * 1000 * 1000};
    nanosleep(&ts, NULL);
}

/* PeriodicTimerCallback, on a thread of its own (the sample's ThreadPoolTimer). */
static void *periodic_timer_callback(void *arg) {
    sample_task *t = arg;
    while (t->slow && !t->cancel_requested) tick();
    for (;;) {
        tick();
        if (!t->cancel_requested && t->progress < 100) {
            t->progress += 10;
            OK(btb_instance_set_progress(t->task_instance, t->progress));
        } else {
            btb_registration *task = NULL;
            const char *name = "?";
            OK(btb_instance_task(t->task_instance, &task));
            OK(btb_registration_name(task, &name));
            pthread_mutex_lock(&lock);
            snprintf(finished, sizeof finished, "%s canceled=%d reason=%u", name, t->cancel_requested,
                     t->cancel_requested ? t->cancel_reason : 0u);
            pthread_mutex_unlock(&lock);
            btb_registration_free(task);
            OK(btb_deferral_complete(t->deferral));
            btb_deferral_free(t->deferral);
            btb_instance_free(t->task_instance);
            free(t);
            return NULL;
        }
    }
}

/* Run(IBackgroundTaskInstance taskInstance) */
static void sample_background_task_run(btb_instance *task_instance, void *user_data) {
    (void)user_data;
    sample_task *t = calloc(1, sizeof *t);
    t->slow = slow_mode;
    OK(btb_instance_clone(task_instance, &t->task_instance));
    OK(btb_instance_add_canceled(t->task_instance, on_canceled, t, NULL, NULL)); /* Canceled += */
    OK(btb_instance_get_deferral(t->task_instance, &t->deferral));         /* GetDeferral() */
    CHECK(pthread_create(&t->periodic_timer, NULL, periodic_timer_callback, t) == 0);
    pthread_detach(t->periodic_timer);
    pthread_mutex_lock(&lock);
    started_count++;
    pthread_cond_broadcast(&changed);
    pthread_mutex_unlock(&lock);
}

/* ---------------------------------------------------------------------------------------------
 * BackgroundTaskSample.cs: registration, progress and completion */

static char progress_log[1024];
static char completed_log[1024];
static int completed_count;

static void on_progress(btb_registration *task, const btb_uuid *instance_id, uint32_t progress,
                        void *user_data) {
    (void)task, (void)instance_id, (void)user_data;
    pthread_mutex_lock(&lock);
    size_t n = strlen(progress_log);
    snprintf(progress_log + n, sizeof progress_log - n, "%u ", progress);
    pthread_mutex_unlock(&lock);
}

/* OnCompleted: args.CheckResult() throws unless the task succeeded. */
static void on_completed(btb_registration *task, const btb_completion *args, void *user_data) {
    (void)user_data;
    const char *name = "?";
    OK(btb_registration_name(task, &name));
    pthread_mutex_lock(&lock);
    size_t n = strlen(completed_log);
    if (args->outcome == BTB_TASK_OUTCOME_SUCCEEDED)
        snprintf(completed_log + n, sizeof completed_log - n, "%s Completed;", name);
    else
        snprintf(completed_log + n, sizeof completed_log - n, "%s %s reason=%d;", name,
                 args->outcome == BTB_TASK_OUTCOME_CANCELED ? "Canceled" : "Failed", args->reason);
    completed_count++;
    pthread_cond_broadcast(&changed);
    pthread_mutex_unlock(&lock);
}

static btb_registration *register_background_task(const char *task_entry_point, const char *name,
                                                  const btb_trigger *trigger,
                                                  const btb_condition *condition,
                                                  const btb_task_group *group) {
    btb_builder *builder = NULL;
    btb_registration *task = NULL;
    OK(btb_new(&builder));
    OK(btb_set_name(builder, name));
    if (task_entry_point != NULL) OK(btb_set_task_entry_point(builder, task_entry_point));
    OK(btb_set_trigger(builder, trigger));
    if (condition != NULL) {
        OK(btb_add_condition(builder, condition));
        /* If the condition changes while the background task is executing it will be canceled. */
        OK(btb_set_cancel_on_condition_loss(builder, true));
    }
    if (group != NULL) OK(btb_set_task_group(builder, group));
    OK(btb_register(builder, &task)); /* builder.Register(): no system named */
    btb_free(builder);
    /* AttachProgressAndCompletedHandlers */
    OK(btb_registration_add_progress(task, on_progress, NULL, NULL, NULL));
    OK(btb_registration_add_completed(task, on_completed, NULL, NULL, NULL));
    return task;
}

/* Waits until `*counter` (guarded by `lock`) reaches `count`, at most WAIT_MS. */
static int wait_count(const int *counter, int count) {
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += WAIT_MS / 1000;
    pthread_mutex_lock(&lock);
    int rc = 0;
    while (*counter < count && rc == 0) rc = pthread_cond_timedwait(&changed, &lock, &deadline);
    int ok = *counter >= count;
    pthread_mutex_unlock(&lock);
    return ok;
}

/* Completions reported, and runs started, in all. */
static int wait_completed(int count) { return wait_count(&completed_count, count); }
static int wait_started(int count) { return wait_count(&started_count, count); }

static int logged(const char *log, const char *needle) {
    pthread_mutex_lock(&lock);
    int found = strstr(log, needle) != NULL;
    pthread_mutex_unlock(&lock);
    return found;
}

/* ---------------------------------------------------------------------------------------------
 * The grouped task: BackgroundTaskRegistrationGroup.BackgroundActivated */

static char activated[256];

/* WinRT: OnBackgroundActivated(BackgroundTaskRegistrationGroup sender, BackgroundActivatedEventArgs args) */
static void on_background_activated(btb_task_group *sender, btb_instance *task_instance, void *user_data) {
    (void)user_data;
    btb_registration *task = NULL;
    const char *name = "?", *group_name = "?";
    OK(btb_task_group_name(sender, &group_name));
    OK(btb_instance_task(task_instance, &task));
    OK(btb_registration_name(task, &name));
    pthread_mutex_lock(&lock);
    snprintf(activated, sizeof activated, "%s: %s", group_name, name);
    pthread_mutex_unlock(&lock);
    btb_registration_free(task);
}

int main(int argc, char **argv) {
    (void)argc, (void)argv;
    /* Setup: the app's broker (on Windows, the OS). */
    btb_manifest *manifest = NULL;
    btb_system_options *options = NULL;
    btb_system *system = NULL;
    const char *types[] = {"systemEvent", "timer", "general"};
    OK(btb_manifest_new("org.example.backgroundtask", "1", &manifest));
    OK(btb_manifest_declare(manifest, ENTRY_POINT, types, 3, NULL, 0));
    OK(btb_system_options_new(&options));
    OK(btb_system_options_set_manifest(options, manifest));
    OK(btb_system_options_set_store(options, ":memory:"));
    OK(btb_system_options_set_manual_clock(options, T0));
    OK(btb_system_options_set_simulated(options, true));
    OK(btb_system_open(options, &system));
    OK(btb_system_register_entry_point(system, ENTRY_POINT, sample_background_task_run, NULL, NULL));
    OK(btb_system_set_default(system));
    btb_system_options_free(options);
    btb_manifest_free(manifest);

    /* SampleBackgroundTask: SystemTrigger(TimeZoneChange, false) */
    btb_trigger *trigger = NULL;
    OK(btb_system_trigger_new(BTB_SYSTEM_TRIGGER_TIME_ZONE_CHANGE, false, &trigger));
    btb_registration *sample = register_background_task(ENTRY_POINT, "SampleBackgroundTask", trigger, NULL, NULL);
    btb_trigger_free(trigger);
    OK(btb_system_raise_event(system, BTB_SYSTEM_TRIGGER_TIME_ZONE_CHANGE, NULL));
    CHECK(wait_completed(1));
    CHECK(logged(progress_log, "10 20 30 40 50 60 70 80 90 100 "));
    CHECK(logged(completed_log, "SampleBackgroundTask Completed;"));
    OK(btb_registration_unregister(sample, true));
    btb_registration_free(sample);

    /* SampleBackgroundTaskWithCondition: + SystemCondition(InternetAvailable) */
    btb_condition *condition = NULL;
    OK(btb_system_set_state(system, BTB_CONDITION_INTERNET_AVAILABLE, false));
    OK(btb_system_trigger_new(BTB_SYSTEM_TRIGGER_TIME_ZONE_CHANGE, false, &trigger));
    OK(btb_system_condition_new(BTB_CONDITION_INTERNET_AVAILABLE, &condition));
    btb_registration *with_condition = register_background_task(
        ENTRY_POINT, "SampleBackgroundTaskWithCondition", trigger, condition, NULL);
    btb_trigger_free(trigger);
    btb_condition_free(condition);
    OK(btb_system_raise_event(system, BTB_SYSTEM_TRIGGER_TIME_ZONE_CHANGE, NULL));
    bool idle = false;
    OK(btb_system_wait_idle(system, WAIT_MS, &idle));
    CHECK(idle && !logged(completed_log, "SampleBackgroundTaskWithCondition")); /* latched */
    OK(btb_system_set_state(system, BTB_CONDITION_INTERNET_AVAILABLE, true));
    CHECK(wait_completed(2));
    CHECK(logged(completed_log, "SampleBackgroundTaskWithCondition Completed;"));
    OK(btb_registration_unregister(with_condition, true));
    btb_registration_free(with_condition);

    /* TimeTriggeredTask: TimeTrigger(15, false); it runs within its 15-minute window. */
    OK(btb_time_trigger_new(15, false, &trigger));
    btb_registration *timed = register_background_task(ENTRY_POINT, "TimeTriggeredTask", trigger, NULL, NULL);
    btb_trigger_free(trigger);
    OK(btb_system_advance_clock(system, 30 * MIN));
    CHECK(wait_completed(3));
    OK(btb_system_advance_clock(system, 15 * MIN));
    CHECK(wait_completed(4));
    OK(btb_registration_unregister(timed, true));
    btb_registration_free(timed);

    /* ApplicationTriggerTask: trigger.RequestAsync() on the trigger itself */
    uint32_t result = 99;
    OK(btb_application_trigger_new(&trigger));
    btb_registration *app = register_background_task(ENTRY_POINT, "ApplicationTriggerTask", trigger, NULL, NULL);
    OK(btb_application_trigger_request(NULL, trigger, NULL, &result));
    CHECK(result == BTB_APPLICATION_TRIGGER_ALLOWED);
    CHECK(wait_completed(5));
    CHECK(logged(completed_log, "ApplicationTriggerTask Completed;"));

    /* Cancellation: Unregister(true) while it runs */
    slow_mode = 1;
    int before = started_count;
    OK(btb_application_trigger_request(NULL, trigger, NULL, &result));
    CHECK(result == BTB_APPLICATION_TRIGGER_ALLOWED);
    CHECK(wait_started(before + 1));
    OK(btb_registration_unregister(app, true));
    CHECK(wait_completed(6));
    CHECK(logged(completed_log, "ApplicationTriggerTask Canceled reason=0;"));
    OK(btb_system_wait_idle(system, WAIT_MS, &idle));
    CHECK(idle);
    CHECK(logged(finished, "ApplicationTriggerTask canceled=1 reason=0"));
    btb_registration_free(app);
    btb_trigger_free(trigger);

    /* GroupedBackgroundTask: a group's BackgroundActivated handler, no entry point */
    btb_task_group *group = NULL;
    uint64_t token = 0;
    OK(btb_task_group_new("3F2504E0-4F89-11D3-9A0C-0305E82C3301", "Example Group", &group));
    OK(btb_task_group_add_background_activated(group, on_background_activated, NULL, NULL, &token));
    OK(btb_application_trigger_new(&trigger));
    btb_registration *grouped = register_background_task(NULL, "GroupedBackgroundTask", trigger, NULL, group);
    OK(btb_application_trigger_request(NULL, trigger, NULL, &result));
    CHECK(result == BTB_APPLICATION_TRIGGER_ALLOWED);
    CHECK(wait_completed(7));
    CHECK(logged(activated, "Example Group: GroupedBackgroundTask"));
    CHECK(logged(completed_log, "GroupedBackgroundTask Completed;"));
    OK(btb_task_group_remove_background_activated(token));
    CHECK(btb_task_group_remove_background_activated(token) == BTB_ERROR_NOT_FOUND);
    btb_registration_free(grouped);
    btb_trigger_free(trigger);
    btb_task_group_free(group);

    OK(btb_system_set_default(NULL));
    OK(btb_system_close(system));
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}
