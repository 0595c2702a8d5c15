/* Registers three background tasks with different triggers and conditions, lists them, shows a
 * registration that fails and why, and unregisters one. Usage: register [STORE]  (default :memory:) */
#include <btb.h>

#include <stdio.h>
#include <stdlib.h>

#define TRY(call)                                                                        \
    do {                                                                                 \
        btb_status st_ = (call);                                                         \
        if (st_ != BTB_OK) {                                                             \
            fprintf(stderr, "%s failed: %s: %s\n", #call, btb_status_name(st_),          \
                    btb_last_error_message());                                           \
            exit(1);                                                                     \
        }                                                                                \
    } while (0)

static btb_registration *register_task(btb_system *system, const char *name, const char *entry_point,
                                       btb_trigger *trigger, const uint32_t *conditions, size_t n) {
    btb_builder *builder = NULL;
    btb_registration *registration = NULL;
    TRY(btb_new(&builder));
    TRY(btb_set_name(builder, name));
    TRY(btb_set_task_entry_point(builder, entry_point));
    TRY(btb_set_trigger(builder, trigger));
    for (size_t i = 0; i < n; i++) {
        btb_condition *condition = NULL;
        TRY(btb_system_condition_new(conditions[i], &condition));
        TRY(btb_add_condition(builder, condition));
        TRY(btb_condition_free(condition));
    }
    TRY(btb_register_in(system, builder, &registration));
    TRY(btb_free(builder));
    TRY(btb_trigger_free(trigger));
    return registration;
}

static void list_tasks(btb_system *system) {
    btb_registration_list *list = NULL;
    size_t n = 0;
    TRY(btb_system_all_tasks(system, &list));
    TRY(btb_registration_list_len(list, &n));
    printf("%zu registered task(s):\n", n);
    for (size_t i = 0; i < n; i++) {
        btb_registration *r = NULL;
        btb_trigger *t = NULL;
        btb_uuid id;
        char id_text[BTB_UUID_STRING_SIZE];
        const char *name = NULL, *entry_point = NULL;
        uint32_t kind = 0;
        size_t n_conditions = 0;
        TRY(btb_registration_list_get(list, i, &r));
        TRY(btb_registration_task_id(r, &id));
        TRY(btb_uuid_to_string(&id, id_text, sizeof id_text));
        TRY(btb_registration_name(r, &name));
        TRY(btb_registration_task_entry_point(r, &entry_point));
        TRY(btb_registration_trigger(r, &t));
        TRY(btb_trigger_kind(t, &kind));
        TRY(btb_registration_conditions(r, NULL, 0, &n_conditions));
        static const char *const kinds[] = {"time", "maintenance", "system", "application", "custom event", "calendar"};
        printf("  %s  %-10s entry point %-12s %s trigger, %zu condition(s)\n", id_text, name, entry_point,
               kinds[kind], n_conditions);
        TRY(btb_trigger_free(t));
        TRY(btb_registration_free(r));
    }
    TRY(btb_registration_list_free(list));
}

int main(int argc, char **argv) {
    const char *store = argc > 1 ? argv[1] : ":memory:";
    const char *timer_types[] = {"timer", "systemEvent"};
    const char *general_types[] = {"general"};
    btb_manifest *manifest = NULL;
    btb_system_options *options = NULL;
    btb_system *system = NULL;
    btb_trigger *trigger = NULL;

    printf("btb %s\n", btb_version());
    TRY(btb_manifest_new("org.example.notes", "1.0", &manifest));
    TRY(btb_manifest_declare(manifest, "notes.Sync", timer_types, 2, NULL, 0));
    TRY(btb_manifest_declare(manifest, "notes.Upload", general_types, 1, NULL, 0));
    TRY(btb_system_options_new(&options));
    TRY(btb_system_options_set_manifest(options, manifest));
    TRY(btb_system_options_set_store(options, store));
    TRY(btb_system_open(options, &system));
    TRY(btb_system_options_free(options));
    TRY(btb_manifest_free(manifest));

    /* 1. every 30 minutes while the internet is available */
    uint32_t online[] = {BTB_CONDITION_INTERNET_AVAILABLE};
    TRY(btb_time_trigger_new(30, false, &trigger));
    btb_registration *sync = register_task(system, "sync", "notes.Sync", trigger, online, 1);
    /* 2. when the internet comes back, if the user is away */
    uint32_t away[] = {BTB_CONDITION_USER_NOT_PRESENT, BTB_CONDITION_INTERNET_AVAILABLE};
    TRY(btb_system_trigger_new(BTB_SYSTEM_TRIGGER_INTERNET_AVAILABLE, false, &trigger));
    btb_registration *catch_up = register_task(system, "catch-up", "notes.Sync", trigger, away, 2);
    /* 3. on request from the app, on AC power */
    uint32_t ac[] = {BTB_CONDITION_ON_AC_POWER};
    TRY(btb_application_trigger_new(&trigger));
    btb_registration *upload = register_task(system, "upload", "notes.Upload", trigger, ac, 1);
    list_tasks(system);

    /* a registration that fails: 5 minutes is below Windows' 15-minute minimum */
    btb_builder *bad = NULL;
    btb_registration *never = NULL;
    TRY(btb_new(&bad));
    TRY(btb_set_name(bad, "too-often"));
    TRY(btb_set_task_entry_point(bad, "notes.Sync"));
    TRY(btb_time_trigger_new(5, false, &trigger));
    TRY(btb_set_trigger(bad, trigger));
    TRY(btb_trigger_free(trigger));
    btb_status st = btb_register_in(system, bad, &never);
    printf("registering \"too-often\" fails: %s: %s\n", btb_status_name(st), btb_last_error_message());
    TRY(btb_free(bad));
    if (st == BTB_OK) return 1;

    TRY(btb_registration_unregister(catch_up, false));
    printf("unregistered \"catch-up\"\n");
    list_tasks(system);

    TRY(btb_registration_free(sync));
    TRY(btb_registration_free(catch_up));
    TRY(btb_registration_free(upload));
    TRY(btb_system_close(system));
    return 0;
}
