/* An app that btbd starts for background work (SPEC §12), as Windows activates an app for its
 * in-process background task: the task's run function lives only in this program, and it runs
 * while the app is closed because the manifest says how to start the app:
 *
 *     app_id   = "org.example.notes"
 *     version  = "1"
 *     activate = ["/abs/path/to/activated"]
 *     [[task]]
 *     entry_point = "notes.Sync"
 *     types       = ["general"]
 *
 * Usage:
 *     activated MANIFEST [STORE]    the app opened by its user: registers the task "sync" and exits
 *     btbd --manifest MANIFEST [--store STORE]               btbd holds the store, with no app code
 *     btbctl --manifest MANIFEST [--store STORE] run sync    the task fires while the app is closed
 * btbd then starts this program with BTB_ACTIVATION=1 (and BTB_MANIFEST, BTB_STORE): it opens its
 * system — a client of btbd —, offers its run function, serves the runs btbd hands it, and exits
 * once none is left. The run is recorded with its output (btbctl history sync). */
#define _POSIX_C_SOURCE 200809L
#include <btb.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

/* How long an activated app waits for work before it gives up (btbd hands the run at once). */
#define SERVE_TIMEOUT_MS 30000

static btb_system *open_system(const char *manifest_path, const char *store) {
    btb_manifest *manifest = NULL;
    btb_system_options *options = NULL;
    btb_system *system = NULL;
    TRY(btb_manifest_load(manifest_path, &manifest));
    TRY(btb_system_options_new(&options));
    TRY(btb_system_options_set_manifest(options, manifest));
    if (store) TRY(btb_system_options_set_store(options, store)); /* NULL: the per-app default */
    TRY(btb_system_open(options, &system));
    TRY(btb_system_options_free(options));
    TRY(btb_manifest_free(manifest));
    return system;
}

/* The run function of notes.Sync: on a btb thread of this process, handed the run by btbd. */
static void sync_notes(btb_instance *instance, void *user_data) {
    (void)user_data;
    const char *details = NULL; /* borrowed for this call */
    char output[64];
    TRY(btb_instance_trigger_details(instance, &details));
    printf("activated pid %ld: syncing %s\n", (long)getpid(), details ? details : "everything");
    fflush(stdout); /* btbd's stdout: a pipe or the journal */
    snprintf(output, sizeof output, "{\"served_by\": %ld}", (long)getpid());
    TRY(btb_instance_set_output(instance, output)); /* kept with the run */
}

/* Started by btbd: serve, then exit. */
static int serve(void) {
    const char *manifest = getenv("BTB_MANIFEST");
    if (!manifest) {
        fprintf(stderr, "activated: BTB_MANIFEST is not set (btbd sets it when it loaded a manifest file)\n");
        return 2;
    }
    btb_system *system = open_system(manifest, getenv("BTB_STORE"));
    bool broker = true, done = false;
    TRY(btb_system_is_broker(system, &broker));
    TRY(btb_system_register_entry_point(system, "notes.Sync", sync_notes, NULL, NULL));
    TRY(btb_system_serve_activation(system, SERVE_TIMEOUT_MS, &done));
    printf("activated pid %ld: %s (a client of btbd: %s)\n", (long)getpid(),
           done ? "nothing left to serve, exiting" : "timed out", broker ? "no" : "yes");
    fflush(stdout);
    TRY(btb_system_close(system));
    return done ? 0 : 1;
}

/* Opened by its user: register the task (once: REPLACE keeps restarts from piling up duplicates). */
static int register_task(const char *manifest, const char *store) {
    btb_system *system = open_system(manifest, store);
    btb_builder *builder = NULL;
    btb_trigger *trigger = NULL;
    btb_registration *registration = NULL;
    TRY(btb_new(&builder));
    TRY(btb_set_name(builder, "sync"));
    TRY(btb_set_task_entry_point(builder, "notes.Sync"));
    TRY(btb_set_name_policy(builder, BTB_NAME_POLICY_REPLACE));
    TRY(btb_application_trigger_new(&trigger));
    TRY(btb_set_trigger(builder, trigger));
    TRY(btb_register_in(system, builder, &registration));
    printf("registered \"sync\"; the app closes now, and btbd starts it again to run the task\n");
    TRY(btb_registration_free(registration));
    TRY(btb_trigger_free(trigger));
    TRY(btb_free(builder));
    TRY(btb_system_close(system));
    return 0;
}

int main(int argc, char **argv) {
    const char *activation = getenv("BTB_ACTIVATION");
    if (activation && strcmp(activation, "1") == 0) return serve();
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: %s MANIFEST [STORE]\n", argv[0]);
        return 2;
    }
    return register_task(argv[1], argc == 3 ? argv[2] : NULL);
}
