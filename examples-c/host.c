/* An out-of-process background task (SPEC §5), Windows' recommended kind: the manifest declares
 * that entry point "notes.Index" runs this same program with --background-task. The app side
 * registers a task, fires it, and prints what the child did; the child side connects to its
 * instance with btb_host_connect and uses the same btb_instance_* functions as an in-process run
 * function. A crash in the child cannot take the app down: it would end the run FAILED, naming the
 * signal. Usage: host */
#define _POSIX_C_SOURCE 200809L
#include <btb.h>

#include <limits.h>
#include <pthread.h>
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

static const char *const outcomes[] = {"SUCCEEDED", "FAILED", "CANCELED"};

/* ---- the child: started by the broker, with its instance on BTB_HOST_FD ---- */

static int background_task(void) {
    btb_instance *instance = NULL;
    TRY(btb_host_connect(&instance));
    const char *details = NULL;
    TRY(btb_instance_trigger_details(instance, &details));
    printf("child pid %ld: indexing %s\n", (long)getpid(), details ? details : "everything");
    for (uint32_t p = 25; p <= 100; p += 25) TRY(btb_instance_set_progress(instance, p));
    TRY(btb_instance_free(instance));
    return 0; /* exit status 0: SUCCEEDED */
}

/* ---- the app ---- */

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int done;

static void on_progress(btb_registration *r, const btb_uuid *id, uint32_t progress, void *user_data) {
    (void)r, (void)id, (void)user_data;
    printf("app: progress %u%%\n", progress);
}

static void on_completed(btb_registration *r, const btb_completion *c, void *user_data) {
    (void)r, (void)user_data;
    printf("app: completed %s\n", outcomes[c->outcome]);
    pthread_mutex_lock(&lock);
    done = 1;
    pthread_cond_signal(&cond);
    pthread_mutex_unlock(&lock);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--background-task") == 0) return background_task();

    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1); /* exec needs an absolute path */
    if (n <= 0) return 1;
    self[n] = '\0';
    const char *types[] = {"general"};
    const char *exec[] = {self, "--background-task"};
    btb_manifest *m = NULL;
    btb_system_options *o = NULL;
    btb_system *s = NULL;
    TRY(btb_manifest_new("org.example.notes.host", "1.0", &m));
    TRY(btb_manifest_declare(m, "notes.Index", types, 1, exec, 2));
    TRY(btb_system_options_new(&o));
    TRY(btb_system_options_set_manifest(o, m));
    TRY(btb_system_options_set_store(o, ":memory:"));
    TRY(btb_system_open(o, &s));
    TRY(btb_system_options_free(o));
    TRY(btb_manifest_free(m));

    btb_builder *b = NULL;
    btb_trigger *t = NULL;
    btb_registration *r = NULL;
    TRY(btb_new(&b));
    TRY(btb_set_name(b, "index"));
    TRY(btb_set_task_entry_point(b, "notes.Index"));
    TRY(btb_application_trigger_new(&t));
    TRY(btb_set_trigger(b, t));
    TRY(btb_register_in(s, b, &r));
    TRY(btb_registration_add_progress(r, on_progress, NULL, NULL, NULL));
    TRY(btb_registration_add_completed(r, on_completed, NULL, NULL, NULL));
    uint32_t result = 0;
    printf("app pid %ld: requesting the index task\n", (long)getpid());
    TRY(btb_registration_request(r, "{\"folder\":\"notes\"}", &result));

    pthread_mutex_lock(&lock);
    while (!done) pthread_cond_wait(&cond, &lock);
    pthread_mutex_unlock(&lock);

    btb_run_list *runs = NULL;
    btb_run run;
    TRY(btb_registration_history(r, &runs));
    TRY(btb_run_list_get(runs, 0, &run));
    printf("app: the child's stdout, kept with the run: %s", run.stdout_tail ? run.stdout_tail : "(none)\n");
    TRY(btb_run_list_free(runs));
    TRY(btb_registration_free(r));
    TRY(btb_trigger_free(t));
    TRY(btb_free(b));
    TRY(btb_system_close(s));
    return 0;
}
