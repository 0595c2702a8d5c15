/* Embedding without foreign-thread callbacks (SPEC §8): a host runtime — an event loop, a VM that
 * must run guest code on its own thread — takes its tasks from btb's pull queue with
 * btb_system_next_event and runs them on its main thread. btb never calls into the host here: no
 * run functions, no completed handlers; the host reads outcomes from the run history.
 *
 * The story: two application-trigger requests ("resize" an image, "upload" a file; the upload needs
 * the internet and is canceled when it goes away), a third request refused while its task is busy
 * and retried later, and a cancellation delivered through the same queue. Usage: pull_queue */
#define _POSIX_C_SOURCE 200809L
#include <btb.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TRY(call)                                                                        \
    do {                                                                                 \
        btb_status st_ = (call);                                                         \
        if (st_ != BTB_OK) {                                                             \
            fprintf(stderr, "%s failed: %s: %s\n", #call, btb_status_name(st_),          \
                    btb_last_error_message());                                           \
            exit(1);                                                                     \
        }                                                                                \
    } while (0)

static const char *const outcomes[] = {"SUCCEEDED", "FAILED", "CANCELED"};
static const char *const results[] = {"ALLOWED", "CURRENTLY_RUNNING", "DISABLED_BY_POLICY", "UNKNOWN_ERROR"};
static const char *const reasons[] = {
    "ABORT",         "TERMINATING",   "LOGGING_OFF",         "SERVICING_UPDATE",
    "IDLE_TASK",     "UNINSTALL",     "CONDITION_LOSS",      "SYSTEM_POLICY",
    "QUIET_HOURS_ENTERED", "EXECUTION_TIME_EXCEEDED", "RESOURCE_REVOCATION", "ENERGY_SAVER"};

/* The host's bookkeeping: requests it made that have not finished yet, and the one job it keeps
 * "in flight" across loop turns (as an asynchronous upload would be). */
typedef struct {
    btb_system *system;
    int outstanding;
    btb_instance *in_flight;
} host;

static btb_registration *register_job(btb_system *system, const char *name, bool needs_internet) {
    btb_builder *builder = NULL;
    btb_trigger *trigger = NULL;
    btb_registration *registration = NULL;
    TRY(btb_new(&builder));
    TRY(btb_set_name(builder, name));
    TRY(btb_set_task_entry_point(builder, "host.Job"));
    TRY(btb_application_trigger_new(&trigger));
    TRY(btb_set_trigger(builder, trigger));
    TRY(btb_trigger_free(trigger));
    if (needs_internet) {
        btb_condition *online = NULL;
        TRY(btb_system_condition_new(BTB_CONDITION_INTERNET_AVAILABLE, &online));
        TRY(btb_add_condition(builder, online));
        TRY(btb_condition_free(online));
        TRY(btb_set_cancel_on_condition_loss(builder, true));
    }
    TRY(btb_register_in(system, builder, &registration));
    TRY(btb_free(builder));
    return registration;
}

static void request(host *h, btb_registration *registration, const char *arguments) {
    const char *name = NULL;
    uint32_t result = 0;
    TRY(btb_registration_name(registration, &name));
    TRY(btb_registration_request(registration, arguments, &result));
    printf("host: request \"%s\" %s -> %s\n", name, arguments, results[result]);
    if (result == BTB_APPLICATION_TRIGGER_ALLOWED) h->outstanding++;
}

/* Runs one task on the host's thread. */
static void run_on_host(host *h, btb_instance *instance) {
    btb_registration *task = NULL;
    const char *name = NULL, *args = NULL;
    TRY(btb_instance_task(instance, &task));
    TRY(btb_registration_name(task, &name));
    TRY(btb_instance_trigger_details(instance, &args));
    printf("host: run \"%s\" with %s\n", name, args ? args : "(no arguments)");
    if (strcmp(name, "upload") == 0) {
        /* An asynchronous job: it stays in flight while the loop goes on. Then the host's own
         * network monitor reports the network gone, and btb cancels the job. */
        TRY(btb_instance_set_progress(instance, 30));
        printf("host: \"upload\" is in flight (30%%); the network goes away\n");
        h->in_flight = instance;
        TRY(btb_system_set_state(h->system, BTB_CONDITION_INTERNET_AVAILABLE, false));
    } else {
        TRY(btb_instance_set_progress(instance, 100));
        TRY(btb_instance_finish_run(instance));
        printf("host: \"%s\" finished\n", name);
        h->outstanding--;
        TRY(btb_instance_free(instance));
    }
    TRY(btb_registration_free(task));
}

/* The host's main loop: take events until every request it made has finished. */
static void main_loop(host *h) {
    while (h->outstanding > 0) {
        btb_event event;
        TRY(btb_system_next_event(h->system, 10000, &event));
        switch (event.kind) {
        case BTB_EVENT_RUN:
            run_on_host(h, event.instance);
            break;
        case BTB_EVENT_CANCELED:
            printf("host: canceled (%s): stopping the job\n", reasons[event.reason]);
            TRY(btb_instance_finish_run(event.instance));
            TRY(btb_instance_free(event.instance));
            if (h->in_flight) {
                TRY(btb_instance_free(h->in_flight));
                h->in_flight = NULL;
            }
            h->outstanding--;
            break;
        default:
            fprintf(stderr, "host: no event within 10 s with %d job(s) outstanding\n", h->outstanding);
            exit(1);
        }
    }
}

static void print_history(btb_registration *registration) {
    const char *name = NULL;
    btb_run_list *runs = NULL;
    size_t n = 0;
    TRY(btb_registration_name(registration, &name));
    TRY(btb_registration_history(registration, &runs));
    TRY(btb_run_list_len(runs, &n));
    for (size_t i = 0; i < n; i++) {
        btb_run run;
        TRY(btb_run_list_get(runs, i, &run));
        printf("  %-7s %-12s %s, progress %u%s%s\n", name, run.trigger_details ? run.trigger_details : "",
               outcomes[run.outcome], run.last_progress, run.message ? ": " : "", run.message ? run.message : "");
    }
    TRY(btb_run_list_free(runs));
}

int main(void) {
    const char *general[] = {"general"};
    btb_manifest *manifest = NULL;
    btb_system_options *options = NULL;
    host h = {NULL, 0, NULL};

    TRY(btb_manifest_new("org.example.host", "1.0", &manifest));
    TRY(btb_manifest_declare(manifest, "host.Job", general, 1, NULL, 0));
    TRY(btb_system_options_new(&options));
    TRY(btb_system_options_set_manifest(options, manifest));
    TRY(btb_system_options_set_store(options, ":memory:"));
    /* The host feeds the network state itself (its own monitor), through the simulated source. */
    TRY(btb_system_options_set_simulated(options, true));
    TRY(btb_system_open(options, &h.system));
    TRY(btb_system_options_free(options));
    TRY(btb_manifest_free(manifest));

    /* Runs of "host.Job" go to the pull queue instead of a btb worker thread. */
    TRY(btb_system_register_entry_point_queued(h.system, "host.Job"));
    TRY(btb_system_set_state(h.system, BTB_CONDITION_INTERNET_AVAILABLE, true));
    btb_registration *resize = register_job(h.system, "resize", false);
    btb_registration *upload = register_job(h.system, "upload", true);

    request(&h, resize, "{\"image\":\"a.png\"}");
    request(&h, upload, "{\"file\":\"b.txt\"}");
    request(&h, resize, "{\"image\":\"c.png\"}"); /* refused: "resize" is busy */
    main_loop(&h);
    printf("host: all jobs done; retrying the refused request\n");
    request(&h, resize, "{\"image\":\"c.png\"}");
    main_loop(&h);

    bool idle = false;
    TRY(btb_system_wait_idle(h.system, 10000, &idle));
    printf("host: idle: %s\nrun history:\n", idle ? "yes" : "no");
    print_history(resize);
    print_history(upload);

    TRY(btb_registration_free(resize));
    TRY(btb_registration_free(upload));
    TRY(btb_system_close(h.system));
    return 0;
}
