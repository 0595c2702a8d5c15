/* An idle broker: a file store with N periodic tasks (freshness 15–1014 min) on the real clock.
 * With a third argument, also registers one task on that calendar expression (the control run:
 * "*:*:0/1" must show wake-ups). Prints "ready <pid>" once registered, then sits in pause() until
 * killed. Used by idle_strace.sh. */
#define _POSIX_C_SOURCE 200809L
#include <btb.h>

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define TRY(call)                                                                           \
    do {                                                                                    \
        if ((call) != BTB_OK) {                                                             \
            fprintf(stderr, "%s: %s\n", #call, btb_last_error_message());                   \
            return 1;                                                                       \
        }                                                                                   \
    } while (0)

static void run(btb_instance *instance, void *user_data) {
    (void)instance;
    (void)user_data;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s STORE N [CALENDAR]\n", argv[0]);
        return 2;
    }
    int n = atoi(argv[2]);
    const char *types[] = {"timer"};
    btb_manifest *m;
    btb_system_options *o;
    btb_system *s;
    TRY(btb_manifest_new("org.example.idle", "1", &m));
    TRY(btb_manifest_declare(m, "idle.Task", types, 1, NULL, 0));
    TRY(btb_system_options_new(&o));
    TRY(btb_system_options_set_manifest(o, m));
    TRY(btb_system_options_set_store(o, argv[1]));
    TRY(btb_system_options_set_durability(o, BTB_DURABILITY_NORMAL));
    TRY(btb_system_options_set_timer_window_seconds(o, 0));
    TRY(btb_system_open(o, &s));
    TRY(btb_system_register_entry_point(s, "idle.Task", run, NULL, NULL));
    btb_builder *b;
    TRY(btb_new(&b));
    TRY(btb_set_task_entry_point(b, "idle.Task"));
    for (int i = 0; i < n; i++) {
        char name[32];
        btb_trigger *t;
        btb_registration *r;
        snprintf(name, sizeof name, "periodic-%d", i);
        TRY(btb_set_name(b, name));
        TRY(btb_time_trigger_new(15 + (uint32_t)(i % 1000), false, &t));
        TRY(btb_set_trigger(b, t));
        TRY(btb_trigger_free(t));
        TRY(btb_register_in(s, b, &r));
        TRY(btb_registration_free(r));
    }
    if (argc > 3) {
        btb_trigger *t;
        btb_registration *r;
        TRY(btb_set_name(b, "control"));
        TRY(btb_calendar_trigger_new(argv[3], &t));
        TRY(btb_set_trigger(b, t));
        TRY(btb_trigger_free(t));
        TRY(btb_register_in(s, b, &r));
        TRY(btb_registration_free(r));
    }
    TRY(btb_free(b));
    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    for (;;) pause();
}
