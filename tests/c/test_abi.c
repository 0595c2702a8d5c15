/* C ABI tests: every misuse case of SPEC §8 plus the registration flow, run as-is, under
 * AddressSanitizer and under valgrind (tests/sanitizers.sh). Usage: test_abi <scratch-dir> */
#define _GNU_SOURCE
#include "btb.h"
#include "check.h"

#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *dir;

static btb_system *open_system(const char *store) {
    btb_manifest *m = NULL;
    btb_system_options *o = NULL;
    btb_system *s = NULL;
    const char *timer[] = {"timer"};
    const char *both[] = {"timer", "systemEvent"};
    const char *general[] = {"general"};
    EXPECT(btb_manifest_new("org.example.ctest", "1.0", &m), BTB_OK);
    EXPECT(btb_manifest_declare(m, "app.Timer", timer, 1, NULL, 0), BTB_OK);
    EXPECT(btb_manifest_declare(m, "app.Sync", both, 2, NULL, 0), BTB_OK);
    EXPECT(btb_manifest_declare(m, "app.General", general, 1, NULL, 0), BTB_OK);
    const char *app_id = NULL; /* borrowed from the manifest */
    EXPECT(btb_manifest_app_id(m, &app_id), BTB_OK);
    CHECK(app_id && strcmp(app_id, "org.example.ctest") == 0);
    EXPECT(btb_system_options_new(&o), BTB_OK);
    EXPECT(btb_system_options_set_manifest(o, m), BTB_OK);
    EXPECT(btb_system_options_set_store(o, store), BTB_OK);
    EXPECT(btb_system_options_set_manual_clock(o, 1893456000000LL), BTB_OK);
    btb_status st = btb_system_open(o, &s);
    if (st != BTB_OK) s = NULL;
    btb_system_options_free(o);
    btb_manifest_free(m);
    return s;
}

static btb_builder *timer_builder(const char *name, uint32_t minutes) {
    btb_builder *b = NULL;
    btb_trigger *t = NULL;
    EXPECT(btb_new(&b), BTB_OK);
    EXPECT(btb_set_name(b, name), BTB_OK);
    EXPECT(btb_set_task_entry_point(b, "app.Timer"), BTB_OK);
    EXPECT(btb_time_trigger_new(minutes, false, &t), BTB_OK);
    EXPECT(btb_set_trigger(b, t), BTB_OK);
    EXPECT(btb_trigger_free(t), BTB_OK);
    return b;
}

static size_t count_all(btb_system *s) {
    btb_registration_list *l = NULL;
    size_t n = 999;
    EXPECT(btb_system_all_tasks(s, &l), BTB_OK);
    EXPECT(btb_registration_list_len(l, &n), BTB_OK);
    EXPECT(btb_registration_list_free(l), BTB_OK);
    return n;
}

static void test_version_and_names(void) {
    char expect[32];
    snprintf(expect, sizeof expect, "%d.%d.%d", BTB_VERSION_MAJOR, BTB_VERSION_MINOR, BTB_VERSION_PATCH);
    CHECK(strcmp(btb_version(), expect) == 0);
    CHECK(strcmp(btb_version(), BTB_VERSION_STRING) == 0);
    CHECK(strcmp(btb_status_name(BTB_OK), "BTB_OK") == 0);
    CHECK(strcmp(btb_status_name(BTB_ERROR_NO_TRIGGER), "BTB_ERROR_NO_TRIGGER") == 0);
    CHECK(strcmp(btb_status_name(BTB_ERROR_INTERNAL), "BTB_ERROR_INTERNAL") == 0);
    CHECK(strcmp(btb_status_name(12345), "BTB_UNKNOWN_STATUS") == 0);
}

static void *fresh_thread(void *arg) {
    (void)arg;
    const char *m = btb_last_error_message();
    return (void *)(m != NULL && m[0] == '\0' ? (void *)1 : NULL);
}

static void test_null_and_handles(void) {
    btb_builder *b = NULL;
    btb_trigger *t = NULL;

    /* NULL out-parameters and NULL handles */
    EXPECT(btb_new(NULL), BTB_ERROR_NULL_ARGUMENT);
    MSG_HAS("out is NULL");
    EXPECT(btb_time_trigger_new(15, false, NULL), BTB_ERROR_NULL_ARGUMENT);
    EXPECT(btb_set_name(NULL, "x"), BTB_ERROR_NULL_ARGUMENT);
    MSG_HAS("builder is NULL");
    EXPECT(btb_new(&b), BTB_OK);
    EXPECT(btb_set_name(b, NULL), BTB_ERROR_NULL_ARGUMENT);
    MSG_HAS("name is NULL");
    EXPECT(btb_set_trigger(b, NULL), BTB_ERROR_NULL_ARGUMENT);
    EXPECT(btb_get_name(b, NULL), BTB_ERROR_NULL_ARGUMENT);

    /* freeing NULL is a no-op for every type */
    EXPECT(btb_free(NULL), BTB_OK);
    EXPECT(btb_trigger_free(NULL), BTB_OK);
    EXPECT(btb_condition_free(NULL), BTB_OK);
    EXPECT(btb_system_options_free(NULL), BTB_OK);
    EXPECT(btb_manifest_free(NULL), BTB_OK);
    EXPECT(btb_system_close(NULL), BTB_OK);
    EXPECT(btb_registration_free(NULL), BTB_OK);
    EXPECT(btb_task_group_free(NULL), BTB_OK);
    EXPECT(btb_registration_list_free(NULL), BTB_OK);
    EXPECT(btb_task_group_list_free(NULL), BTB_OK);

    /* wrong type: a trigger passed as a builder, and the other way round */
    EXPECT(btb_time_trigger_new(15, false, &t), BTB_OK);
    EXPECT(btb_set_name((btb_builder *)t, "x"), BTB_ERROR_INVALID_HANDLE);
    MSG_HAS("btb_trigger");
    EXPECT(btb_free((btb_builder *)t), BTB_ERROR_INVALID_HANDLE);
    EXPECT(btb_trigger_free((btb_trigger *)b), BTB_ERROR_INVALID_HANDLE);
    /* the wrongly freed objects are intact */
    EXPECT(btb_set_trigger(b, t), BTB_OK);

    /* foreign pointers: stack, heap, and garbage */
    int on_stack = 42;
    void *heap = malloc(64);
    memset(heap, 0xAB, 64);
    EXPECT(btb_set_name((btb_builder *)&on_stack, "x"), BTB_ERROR_INVALID_HANDLE);
    MSG_HAS("not made by btb");
    EXPECT(btb_free((btb_builder *)heap), BTB_ERROR_INVALID_HANDLE);
    EXPECT(btb_free((btb_builder *)(uintptr_t)0xB1000000FFFFFFF0ULL), BTB_ERROR_INVALID_HANDLE);
    EXPECT(btb_set_trigger(b, (btb_trigger *)(uintptr_t)0xB2000000FFFFFFFFULL), BTB_ERROR_INVALID_HANDLE);
    CHECK(on_stack == 42);
    free(heap);

    /* freed handles and double free */
    EXPECT(btb_trigger_free(t), BTB_OK);
    EXPECT(btb_trigger_free(t), BTB_ERROR_INVALID_HANDLE);
    MSG_HAS("freed");
    EXPECT(btb_set_trigger(b, t), BTB_ERROR_INVALID_HANDLE);
    EXPECT(btb_free(b), BTB_OK);
    EXPECT(btb_free(b), BTB_ERROR_INVALID_HANDLE);
    EXPECT(btb_set_name(b, "x"), BTB_ERROR_INVALID_HANDLE);

    /* a freed slot reused by a new object: the stale handle stays invalid */
    btb_builder *b2 = NULL;
    EXPECT(btb_new(&b2), BTB_OK);
    CHECK(b2 != b);
    EXPECT(btb_set_name(b, "x"), BTB_ERROR_INVALID_HANDLE);
    EXPECT(btb_set_name(b2, "x"), BTB_OK);
    EXPECT(btb_free(b2), BTB_OK);

    /* invalid UTF-8 */
    EXPECT(btb_new(&b), BTB_OK);
    EXPECT(btb_set_name(b, "bad\xff\xfe"), BTB_ERROR_INVALID_UTF8);
    MSG_HAS("offset 3");
    EXPECT(btb_custom_trigger_new("\xc3", 1, &t), BTB_ERROR_INVALID_UTF8);
    EXPECT(btb_free(b), BTB_OK);

    /* the last error is per thread and never NULL */
    CHECK(btb_last_error_message() != NULL);
    pthread_t th;
    void *ok = NULL;
    CHECK(pthread_create(&th, NULL, fresh_thread, NULL) == 0);
    pthread_join(th, &ok);
    CHECK(ok != NULL);
}

static void test_builder_roundtrip(void) {
    btb_builder *b = NULL;
    btb_trigger *t = NULL, *t2 = NULL;
    btb_condition *c = NULL;
    btb_task_group *g = NULL, *g2 = NULL;
    const char *s = NULL, *before = NULL;
    uint32_t v = 0, conds[4] = {0};
    size_t n = 0;
    bool flag = false;
    const char *text = NULL;

    EXPECT(btb_new(&b), BTB_OK);
    EXPECT(btb_get_name(b, &s), BTB_OK);
    CHECK(s == NULL);
    EXPECT(btb_set_name(b, "n\xc3\xa4me"), BTB_OK);
    EXPECT(btb_get_name(b, &s), BTB_OK);
    CHECK(s && strcmp(s, "n\xc3\xa4me") == 0);
    /* borrowed: the same string until the name changes, readable after other changes */
    before = s;
    EXPECT(btb_set_is_network_requested(b, false), BTB_OK);
    EXPECT(btb_get_name(b, &s), BTB_OK);
    CHECK(s == before && strcmp(before, "n\xc3\xa4me") == 0);
    EXPECT(btb_set_name(b, "other"), BTB_OK);
    EXPECT(btb_get_name(b, &s), BTB_OK);
    CHECK(s && strcmp(s, "other") == 0);
    EXPECT(btb_get_trigger(b, &t2), BTB_ERROR_NOT_FOUND);
    EXPECT(btb_custom_trigger_new("org.example.ping", BTB_CUSTOM_RECURRENCE_ALWAYS, &t), BTB_OK);
    EXPECT(btb_set_trigger(b, t), BTB_OK);
    EXPECT(btb_trigger_free(t), BTB_OK);
    EXPECT(btb_get_trigger(b, &t2), BTB_OK);
    EXPECT(btb_trigger_kind(t2, &v), BTB_OK);
    CHECK(v == BTB_TRIGGER_KIND_CUSTOM_EVENT);
    EXPECT(btb_trigger_text(t2, &text), BTB_OK);
    CHECK(text && strcmp(text, "org.example.ping") == 0);
    EXPECT(btb_trigger_freshness_minutes(t2, &v), BTB_ERROR_INVALID_ARGUMENT);
    MSG_HAS("custom event trigger has no freshness");
    EXPECT(btb_calendar_trigger_normalized(t2, &text), BTB_ERROR_INVALID_ARGUMENT);
    MSG_HAS("custom event trigger has no normalized calendar expression");
    EXPECT(btb_trigger_free(t2), BTB_OK);
    /* A calendar trigger's normal form is systemd's; a bad expression is refused by name. */
    EXPECT(btb_calendar_trigger_new("Mon-Wed 12-10-15 17:48", &t2), BTB_OK);
    EXPECT(btb_calendar_trigger_normalized(t2, &text), BTB_OK);
    CHECK(text && strcmp(text, "Mon..Wed 2012-10-15 17:48:00") == 0);
    EXPECT(btb_trigger_free(t2), BTB_OK);
    EXPECT(btb_calendar_trigger_new("*-*-* 10:61", &t2), BTB_OK);
    EXPECT(btb_calendar_trigger_normalized(t2, &text), BTB_ERROR_INVALID_ARGUMENT);
    MSG_HAS("minute 61 is out of range");
    EXPECT(btb_trigger_free(t2), BTB_OK);
    EXPECT(btb_system_condition_new(BTB_CONDITION_INTERNET_AVAILABLE, &c), BTB_OK);
    EXPECT(btb_add_condition(b, c), BTB_OK);
    EXPECT(btb_add_condition(b, c), BTB_OK); /* duplicates collapse */
    EXPECT(btb_condition_free(c), BTB_OK);
    EXPECT(btb_system_condition_new(BTB_CONDITION_ON_AC_POWER, &c), BTB_OK);
    EXPECT(btb_add_condition(b, c), BTB_OK);
    EXPECT(btb_condition_type(c, &v), BTB_OK);
    CHECK(v == 100);
    EXPECT(btb_condition_free(c), BTB_OK);
    EXPECT(btb_get_conditions(b, NULL, 0, &n), BTB_OK);
    CHECK(n == 2);
    EXPECT(btb_get_conditions(b, NULL, 2, &n), BTB_ERROR_NULL_ARGUMENT);
    EXPECT(btb_get_conditions(b, conds, 1, &n), BTB_OK);
    CHECK(n == 2 && conds[0] == BTB_CONDITION_INTERNET_AVAILABLE && conds[1] == 0);
    EXPECT(btb_task_group_new("lib.sync", NULL, &g), BTB_OK);
    EXPECT(btb_set_task_group(b, g), BTB_OK);
    EXPECT(btb_task_group_free(g), BTB_OK);
    EXPECT(btb_get_task_group(b, &g2), BTB_OK);
    EXPECT(btb_task_group_name(g2, &text), BTB_OK);
    CHECK(strcmp(text, "lib.sync") == 0); /* the name defaults to the id */
    EXPECT(btb_task_group_free(g2), BTB_OK);
    EXPECT(btb_task_group_new("", NULL, &g), BTB_ERROR_INVALID_ARGUMENT);
    EXPECT(btb_set_cancel_on_condition_loss(b, true), BTB_OK);
    EXPECT(btb_get_cancel_on_condition_loss(b, &flag), BTB_OK);
    CHECK(flag);
    EXPECT(btb_set_is_network_requested(b, true), BTB_OK);
    EXPECT(btb_get_is_network_requested(b, &flag), BTB_OK);
    CHECK(flag);
    EXPECT(btb_set_name_policy(b, BTB_NAME_POLICY_KEEP), BTB_OK);
    EXPECT(btb_get_name_policy(b, &v), BTB_OK);
    CHECK(v == BTB_NAME_POLICY_KEEP);
    EXPECT(btb_set_task_entry_point(b, "x.Y"), BTB_OK);
    EXPECT(btb_get_task_entry_point(b, &s), BTB_OK);
    CHECK(s && strcmp(s, "x.Y") == 0);
    EXPECT(btb_set_task_entry_point(b, NULL), BTB_OK);
    EXPECT(btb_get_task_entry_point(b, &s), BTB_OK);
    CHECK(s == NULL);
    EXPECT(btb_free(b), BTB_OK);
}

static void test_registration_checks(void) {
    btb_system *s = open_system(":memory:");
    CHECK(s != NULL);
    if (!s) return;
    btb_builder *b = NULL;
    btb_trigger *t = NULL;
    btb_condition *c1 = NULL, *c2 = NULL;
    btb_registration *r = NULL, *r2 = NULL;

    EXPECT(btb_new(&b), BTB_OK);
    EXPECT(btb_register_in(s, b, &r), BTB_ERROR_INVALID_ARGUMENT);
    MSG_HAS("no name");
    EXPECT(btb_set_name(b, ""), BTB_OK);
    EXPECT(btb_register_in(s, b, &r), BTB_ERROR_INVALID_ARGUMENT);
    MSG_HAS("empty");
    char long_name[300];
    memset(long_name, 'a', 257);
    long_name[257] = 0;
    EXPECT(btb_set_name(b, long_name), BTB_OK);
    EXPECT(btb_register_in(s, b, &r), BTB_ERROR_INVALID_ARGUMENT);
    MSG_HAS("257 bytes");
    EXPECT(btb_set_name(b, "nightly"), BTB_OK);
    EXPECT(btb_register_in(s, b, &r), BTB_ERROR_NO_TRIGGER);
    MSG_HAS("\"nightly\"");
    EXPECT(btb_system_trigger_new(BTB_SYSTEM_TRIGGER_INTERNET_AVAILABLE, false, &t), BTB_OK);
    EXPECT(btb_set_trigger(b, t), BTB_OK);
    EXPECT(btb_trigger_free(t), BTB_OK);
    EXPECT(btb_register_in(s, b, &r), BTB_ERROR_NO_ENTRY_POINT);
    MSG_HAS("background-activated handler");
    EXPECT(btb_set_task_entry_point(b, "app.Missing"), BTB_OK);
    EXPECT(btb_register_in(s, b, &r), BTB_ERROR_NOT_DECLARED);
    MSG_HAS("\"app.Missing\"");
    EXPECT(btb_set_task_entry_point(b, "app.Timer"), BTB_OK);
    EXPECT(btb_register_in(s, b, &r), BTB_ERROR_NOT_DECLARED);
    MSG_HAS("systemEvent");
    EXPECT(btb_set_task_entry_point(b, "app.Sync"), BTB_OK);
    EXPECT(btb_system_trigger_new(99, false, &t), BTB_OK);
    EXPECT(btb_set_trigger(b, t), BTB_OK);
    EXPECT(btb_trigger_free(t), BTB_OK);
    EXPECT(btb_register_in(s, b, &r), BTB_ERROR_INVALID_ARGUMENT);
    MSG_HAS("99");
    EXPECT(btb_system_trigger_new(BTB_SYSTEM_TRIGGER_CONTROL_CHANNEL_RESET, true, &t), BTB_OK);
    EXPECT(btb_set_trigger(b, t), BTB_OK);
    EXPECT(btb_trigger_free(t), BTB_OK);
    EXPECT(btb_register_in(s, b, &r), BTB_ERROR_INVALID_ARGUMENT);
    MSG_HAS("one-shot");
    EXPECT(btb_time_trigger_new(14, false, &t), BTB_OK);
    EXPECT(btb_set_trigger(b, t), BTB_OK);
    EXPECT(btb_trigger_free(t), BTB_OK);
    EXPECT(btb_register_in(s, b, &r), BTB_ERROR_INVALID_ARGUMENT);
    MSG_HAS("14 minutes");
    EXPECT(btb_calendar_trigger_new("*-13-01", &t), BTB_OK);
    EXPECT(btb_set_trigger(b, t), BTB_OK);
    EXPECT(btb_trigger_free(t), BTB_OK);
    EXPECT(btb_register_in(s, b, &r), BTB_ERROR_INVALID_ARGUMENT);
    MSG_HAS("month 13");
    EXPECT(btb_calendar_trigger_new("Mon..Fri 09:30", &t), BTB_OK);
    EXPECT(btb_set_trigger(b, t), BTB_OK);
    EXPECT(btb_trigger_free(t), BTB_OK);
    EXPECT(btb_system_condition_new(BTB_CONDITION_USER_PRESENT, &c1), BTB_OK);
    EXPECT(btb_system_condition_new(BTB_CONDITION_USER_NOT_PRESENT, &c2), BTB_OK);
    EXPECT(btb_add_condition(b, c1), BTB_OK);
    EXPECT(btb_add_condition(b, c2), BTB_OK);
    EXPECT(btb_register_in(s, b, &r), BTB_ERROR_CONFLICT);
    MSG_HAS("USER_NOT_PRESENT");
    EXPECT(btb_register_in(s, b, NULL), BTB_ERROR_NULL_ARGUMENT);
    EXPECT(btb_register_in(NULL, b, &r), BTB_ERROR_NULL_ARGUMENT);
    EXPECT(btb_register_in(s, NULL, &r), BTB_ERROR_NULL_ARGUMENT);
    EXPECT(btb_register_in((btb_system *)b, b, &r), BTB_ERROR_INVALID_HANDLE);
    CHECK(count_all(s) == 0); /* nothing stored by any failure */

    /* the builder is borrowed: fix it and register again */
    btb_free(b);
    EXPECT(btb_new(&b), BTB_OK);
    EXPECT(btb_set_name(b, "nightly"), BTB_OK);
    EXPECT(btb_set_task_entry_point(b, "app.Sync"), BTB_OK);
    EXPECT(btb_calendar_trigger_new("Mon..Fri 09:30", &t), BTB_OK);
    EXPECT(btb_set_trigger(b, t), BTB_OK);
    EXPECT(btb_trigger_free(t), BTB_OK);
    EXPECT(btb_add_condition(b, c1), BTB_OK);
    EXPECT(btb_register_in(s, b, &r), BTB_OK);
    CHECK(count_all(s) == 1);

    /* name policies */
    btb_uuid id1, id2;
    EXPECT(btb_registration_task_id(r, &id1), BTB_OK);
    EXPECT(btb_set_name_policy(b, BTB_NAME_POLICY_KEEP), BTB_OK);
    EXPECT(btb_register_in(s, b, &r2), BTB_OK);
    EXPECT(btb_registration_task_id(r2, &id2), BTB_OK);
    CHECK(memcmp(&id1, &id2, sizeof id1) == 0);
    EXPECT(btb_registration_free(r2), BTB_OK);
    EXPECT(btb_set_name_policy(b, BTB_NAME_POLICY_FAIL), BTB_OK);
    EXPECT(btb_register_in(s, b, &r2), BTB_ERROR_CONFLICT);
    MSG_HAS("FAIL");
    EXPECT(btb_set_name_policy(b, 7), BTB_OK);
    EXPECT(btb_register_in(s, b, &r2), BTB_ERROR_INVALID_ARGUMENT);
    MSG_HAS("name policy value 7");
    EXPECT(btb_set_name_policy(b, BTB_NAME_POLICY_ALLOW), BTB_OK);
    EXPECT(btb_register_in(s, b, &r2), BTB_OK);
    CHECK(count_all(s) == 2);
    EXPECT(btb_set_name_policy(b, BTB_NAME_POLICY_REPLACE), BTB_OK);
    EXPECT(btb_registration_free(r2), BTB_OK);
    EXPECT(btb_register_in(s, b, &r2), BTB_OK);
    CHECK(count_all(s) == 1);
    EXPECT(btb_registration_unregister(r, false), BTB_ERROR_NOT_FOUND); /* replaced */
    EXPECT(btb_registration_free(r), BTB_OK);

    /* registration getters */
    const char *text = NULL;
    size_t n = 0;
    uint32_t conds[2];
    bool spent = true;
    EXPECT(btb_registration_name(r2, &text), BTB_OK);
    CHECK(strcmp(text, "nightly") == 0);
    EXPECT(btb_registration_task_entry_point(r2, &text), BTB_OK);
    CHECK(strcmp(text, "app.Sync") == 0);
    EXPECT(btb_registration_conditions(r2, conds, 2, &n), BTB_OK);
    CHECK(n == 1 && conds[0] == BTB_CONDITION_USER_PRESENT);
    EXPECT(btb_registration_is_spent(r2, &spent), BTB_OK);
    CHECK(!spent);
    EXPECT(btb_registration_trigger(r2, &t), BTB_OK);
    EXPECT(btb_trigger_text(t, &text), BTB_OK);
    CHECK(strcmp(text, "Mon..Fri 09:30") == 0);
    EXPECT(btb_calendar_trigger_normalized(t, &text), BTB_OK);
    CHECK(strcmp(text, "Mon..Fri *-*-* 09:30:00") == 0);
    EXPECT(btb_trigger_free(t), BTB_OK);
    btb_uuid id;
    char idtext[BTB_UUID_STRING_SIZE + 1];
    btb_registration *found = NULL;
    EXPECT(btb_registration_task_id(r2, &id), BTB_OK);
    memset(idtext, 'x', sizeof idtext);
    EXPECT(btb_uuid_to_string(&id, idtext, BTB_UUID_STRING_SIZE - 1), BTB_ERROR_INVALID_ARGUMENT);
    MSG_HAS("BTB_UUID_STRING_SIZE");
    CHECK(idtext[0] == 'x'); /* nothing written on error */
    EXPECT(btb_uuid_to_string(&id, NULL, BTB_UUID_STRING_SIZE), BTB_ERROR_NULL_ARGUMENT);
    EXPECT(btb_uuid_to_string(&id, idtext, BTB_UUID_STRING_SIZE), BTB_OK);
    CHECK(strlen(idtext) == 36 && idtext[8] == '-' && idtext[BTB_UUID_STRING_SIZE] == 'x');
    EXPECT(btb_system_find_task(s, &id, &found), BTB_OK);
    EXPECT(btb_registration_free(found), BTB_OK);

    /* groups: listed by the group, not by all_tasks */
    btb_task_group *g = NULL;
    btb_task_group_list *gl = NULL;
    btb_registration_list *rl = NULL;
    btb_registration *gr = NULL;
    EXPECT(btb_task_group_new("lib.sync", "Sync library", &g), BTB_OK);
    btb_builder *gb = timer_builder("grouped", 15);
    EXPECT(btb_set_task_group(gb, g), BTB_OK);
    EXPECT(btb_register_in(s, gb, &gr), BTB_OK);
    CHECK(count_all(s) == 1);
    EXPECT(btb_system_all_task_groups(s, &gl), BTB_OK);
    EXPECT(btb_task_group_list_len(gl, &n), BTB_OK);
    CHECK(n == 1);
    btb_task_group *g2 = NULL;
    EXPECT(btb_task_group_list_get(gl, 0, &g2), BTB_OK);
    EXPECT(btb_task_group_name(g2, &text), BTB_OK);
    CHECK(strcmp(text, "Sync library") == 0);
    EXPECT(btb_task_group_list_get(gl, 1, &g2), BTB_ERROR_INVALID_ARGUMENT);
    EXPECT(btb_task_group_free(g2), BTB_OK);
    EXPECT(btb_task_group_list_free(gl), BTB_OK);
    EXPECT(btb_system_group_tasks(s, "lib.sync", &rl), BTB_OK);
    EXPECT(btb_registration_list_len(rl, &n), BTB_OK);
    CHECK(n == 1);
    EXPECT(btb_registration_list_get(rl, 5, &found), BTB_ERROR_INVALID_ARGUMENT);
    EXPECT(btb_registration_list_free(rl), BTB_OK);
    EXPECT(btb_registration_unregister(gr, true), BTB_OK);
    EXPECT(btb_registration_unregister(gr, true), BTB_ERROR_NOT_FOUND);
    EXPECT(btb_system_get_task_group(s, "lib.sync", &g2), BTB_ERROR_NOT_FOUND);
    EXPECT(btb_registration_free(gr), BTB_OK);
    EXPECT(btb_task_group_free(g), BTB_OK);
    btb_free(gb);

    /* NO_ENTRY_POINT goes away with an activation handler */
    btb_builder *nb = NULL;
    EXPECT(btb_new(&nb), BTB_OK);
    EXPECT(btb_set_name(nb, "inproc"), BTB_OK);
    EXPECT(btb_application_trigger_new(&t), BTB_OK);
    EXPECT(btb_set_trigger(nb, t), BTB_OK);
    EXPECT(btb_trigger_free(t), BTB_OK);
    EXPECT(btb_register_in(s, nb, &found), BTB_ERROR_NO_ENTRY_POINT);
    EXPECT(btb_system_set_background_activated(s, NULL, NULL, NULL, NULL), BTB_OK);
    EXPECT(btb_register_in(s, nb, &found), BTB_ERROR_NO_ENTRY_POINT);
    btb_free(nb);

    /* a manual clock moves only when told */
    int64_t t0 = 0, t1 = 0;
    EXPECT(btb_system_now_ms(s, &t0), BTB_OK);
    CHECK(t0 == 1893456000000LL);
    EXPECT(btb_system_advance_clock(s, 60000), BTB_OK);
    EXPECT(btb_system_now_ms(s, &t1), BTB_OK);
    CHECK(t1 == t0 + 60000);
    EXPECT(btb_system_advance_clock(s, -1), BTB_ERROR_INVALID_ARGUMENT);
    MSG_HAS("-1 ms");

    /* closing: the system handle is gone, registrations report STATE */
    EXPECT(btb_system_close(s), BTB_OK);
    EXPECT(btb_system_close(s), BTB_ERROR_INVALID_HANDLE);
    EXPECT(btb_register_in(s, b, &r), BTB_ERROR_INVALID_HANDLE);
    EXPECT(btb_registration_unregister(r2, false), BTB_ERROR_STATE);
    MSG_HAS("closed");
    EXPECT(btb_registration_free(r2), BTB_OK);
    btb_condition_free(c1);
    btb_condition_free(c2);
    btb_free(b);
}

/* Retry policies (SPEC §12): handle misuse, setters that check what they can, the builder's copy,
 * the bounds checked at registration, the registration's copy; instance calls on bad handles. */
static void test_retry_policy(void) {
    btb_retry_policy *p = NULL, *p2 = NULL;
    btb_builder *b = NULL;
    btb_trigger *t = NULL;
    uint32_t v = 99;
    int64_t ms = 0;
    double jitter = -1;
    bool flag = true;

    /* NULL out-parameters and handles */
    EXPECT(btb_retry_policy_new(BTB_BACKOFF_EXPONENTIAL, 30000, 18000000, NULL), BTB_ERROR_NULL_ARGUMENT);
    MSG_HAS("out is NULL");
    EXPECT(btb_retry_policy_set_max_attempts(NULL, 3), BTB_ERROR_NULL_ARGUMENT);
    MSG_HAS("policy is NULL");
    EXPECT(btb_retry_policy_set_jitter(NULL, 0.5), BTB_ERROR_NULL_ARGUMENT);
    EXPECT(btb_retry_policy_backoff(NULL, &v), BTB_ERROR_NULL_ARGUMENT);
    EXPECT(btb_retry_policy_free(NULL), BTB_OK);

    /* what the constructor can check: an unknown backoff, a negative delay */
    EXPECT(btb_retry_policy_new(7, 30000, 18000000, &p), BTB_ERROR_INVALID_ARGUMENT);
    MSG_HAS("unknown backoff policy value 7");
    EXPECT(btb_retry_policy_new(BTB_BACKOFF_LINEAR, -1, 18000000, &p), BTB_ERROR_INVALID_ARGUMENT);
    MSG_HAS("initial delay -1 ms is negative");
    EXPECT(btb_retry_policy_new(BTB_BACKOFF_LINEAR, 10000, -5, &p), BTB_ERROR_INVALID_ARGUMENT);
    MSG_HAS("max delay -5 ms");
    CHECK(p == NULL);

    /* a policy and its getters */
    EXPECT(btb_retry_policy_new(BTB_BACKOFF_LINEAR, 10000, 60000, &p), BTB_OK);
    EXPECT(btb_retry_policy_backoff(p, NULL), BTB_ERROR_NULL_ARGUMENT);
    EXPECT(btb_retry_policy_backoff(p, &v), BTB_OK);
    CHECK(v == BTB_BACKOFF_LINEAR);
    EXPECT(btb_retry_policy_initial_delay_ms(p, &ms), BTB_OK);
    CHECK(ms == 10000);
    EXPECT(btb_retry_policy_max_delay_ms(p, &ms), BTB_OK);
    CHECK(ms == 60000);
    EXPECT(btb_retry_policy_max_attempts(p, &v), BTB_OK);
    CHECK(v == 0);
    EXPECT(btb_retry_policy_retry_on_failure(p, &flag), BTB_OK);
    CHECK(!flag);
    EXPECT(btb_retry_policy_jitter(p, &jitter), BTB_OK);
    CHECK(jitter == 0.0);
    EXPECT(btb_retry_policy_set_max_attempts(p, 4), BTB_OK);
    EXPECT(btb_retry_policy_set_retry_on_failure(p, true), BTB_OK);
    EXPECT(btb_retry_policy_set_jitter(p, 0.25), BTB_OK);
    /* jitter out of range (or NaN) is refused at the setter and changes nothing */
    EXPECT(btb_retry_policy_set_jitter(p, 1.5), BTB_ERROR_INVALID_ARGUMENT);
    MSG_HAS("jitter 1.5 is outside 0");
    EXPECT(btb_retry_policy_set_jitter(p, -0.1), BTB_ERROR_INVALID_ARGUMENT);
    EXPECT(btb_retry_policy_set_jitter(p, NAN), BTB_ERROR_INVALID_ARGUMENT);
    EXPECT(btb_retry_policy_jitter(p, &jitter), BTB_OK);
    CHECK(jitter == 0.25);
    EXPECT(btb_retry_policy_max_attempts(p, &v), BTB_OK);
    CHECK(v == 4);
    EXPECT(btb_retry_policy_retry_on_failure(p, &flag), BTB_OK);
    CHECK(flag);

    /* wrong types both ways */
    EXPECT(btb_time_trigger_new(15, false, &t), BTB_OK);
    EXPECT(btb_retry_policy_set_max_attempts((btb_retry_policy *)t, 2), BTB_ERROR_INVALID_HANDLE);
    MSG_HAS("btb_trigger");
    EXPECT(btb_retry_policy_free((btb_retry_policy *)t), BTB_ERROR_INVALID_HANDLE);
    EXPECT(btb_trigger_free((btb_trigger *)p), BTB_ERROR_INVALID_HANDLE);
    MSG_HAS("btb_retry_policy");
    EXPECT(btb_trigger_free(t), BTB_OK);

    /* the builder copies it; NULL clears; the getter is NOT_FOUND without one */
    EXPECT(btb_new(&b), BTB_OK);
    EXPECT(btb_get_retry_policy(b, &p2), BTB_ERROR_NOT_FOUND);
    MSG_HAS("no retry policy");
    EXPECT(btb_get_retry_policy(b, NULL), BTB_ERROR_NULL_ARGUMENT);
    EXPECT(btb_set_retry_policy(NULL, p), BTB_ERROR_NULL_ARGUMENT);
    EXPECT(btb_set_retry_policy(b, (btb_retry_policy *)b), BTB_ERROR_INVALID_HANDLE);
    EXPECT(btb_set_retry_policy(b, p), BTB_OK);
    EXPECT(btb_retry_policy_set_max_attempts(p, 9), BTB_OK); /* the builder's copy is unchanged */
    EXPECT(btb_get_retry_policy(b, &p2), BTB_OK);
    EXPECT(btb_retry_policy_max_attempts(p2, &v), BTB_OK);
    CHECK(v == 4);
    EXPECT(btb_retry_policy_backoff(p2, &v), BTB_OK);
    CHECK(v == BTB_BACKOFF_LINEAR);
    EXPECT(btb_retry_policy_jitter(p2, &jitter), BTB_OK);
    CHECK(jitter == 0.25);
    EXPECT(btb_retry_policy_free(p2), BTB_OK);
    EXPECT(btb_set_retry_policy(b, NULL), BTB_OK);
    EXPECT(btb_get_retry_policy(b, &p2), BTB_ERROR_NOT_FOUND);

    /* freed handles and double free */
    EXPECT(btb_retry_policy_free(p), BTB_OK);
    EXPECT(btb_retry_policy_free(p), BTB_ERROR_INVALID_HANDLE);
    MSG_HAS("freed");
    EXPECT(btb_set_retry_policy(b, p), BTB_ERROR_INVALID_HANDLE);
    EXPECT(btb_retry_policy_set_jitter(p, 0.5), BTB_ERROR_INVALID_HANDLE);
    EXPECT(btb_free(b), BTB_OK);

    /* the bounds of SPEC §12 are checked at registration */
    btb_system *s = open_system(":memory:");
    CHECK(s != NULL);
    if (!s) return;
    btb_registration *r = NULL;
    b = timer_builder("retrying", 15);
    EXPECT(btb_retry_policy_new(BTB_BACKOFF_EXPONENTIAL, 5000, 60000, &p), BTB_OK);
    EXPECT(btb_set_retry_policy(b, p), BTB_OK);
    EXPECT(btb_register_in(s, b, &r), BTB_ERROR_INVALID_ARGUMENT);
    MSG_HAS("initial delay 5000 ms");
    EXPECT(btb_retry_policy_free(p), BTB_OK);
    EXPECT(btb_retry_policy_new(BTB_BACKOFF_EXPONENTIAL, 60000, 30000, &p), BTB_OK);
    EXPECT(btb_set_retry_policy(b, p), BTB_OK);
    EXPECT(btb_register_in(s, b, &r), BTB_ERROR_INVALID_ARGUMENT);
    MSG_HAS("max delay 30000 ms");
    EXPECT(btb_retry_policy_free(p), BTB_OK);
    CHECK(count_all(s) == 0);
    EXPECT(btb_retry_policy_new(BTB_BACKOFF_EXPONENTIAL, 30000, 18000000, &p), BTB_OK);
    EXPECT(btb_retry_policy_set_max_attempts(p, 3), BTB_OK);
    EXPECT(btb_set_retry_policy(b, p), BTB_OK);
    EXPECT(btb_retry_policy_free(p), BTB_OK);
    EXPECT(btb_register_in(s, b, &r), BTB_OK);
    EXPECT(btb_registration_retry_policy(r, &p2), BTB_OK);
    EXPECT(btb_retry_policy_max_attempts(p2, &v), BTB_OK);
    CHECK(v == 3);
    EXPECT(btb_retry_policy_initial_delay_ms(p2, &ms), BTB_OK);
    CHECK(ms == 30000);
    EXPECT(btb_retry_policy_free(p2), BTB_OK);
    EXPECT(btb_registration_free(r), BTB_OK);
    EXPECT(btb_set_retry_policy(b, NULL), BTB_OK);
    EXPECT(btb_set_name(b, "plain"), BTB_OK);
    EXPECT(btb_register_in(s, b, &r), BTB_OK);
    EXPECT(btb_registration_retry_policy(r, &p2), BTB_ERROR_NOT_FOUND);
    EXPECT(btb_registration_free(r), BTB_OK);
    EXPECT(btb_free(b), BTB_OK);

    /* instance calls on a NULL or wrong-type handle (runs: tests/c/test_runtime.c) */
    EXPECT(btb_instance_attempt(NULL, &v), BTB_ERROR_NULL_ARGUMENT);
    MSG_HAS("instance is NULL");
    EXPECT(btb_instance_request_retry(NULL, 0, NULL), BTB_ERROR_NULL_ARGUMENT);
    EXPECT(btb_instance_set_output(NULL, "{}"), BTB_ERROR_NULL_ARGUMENT);
    EXPECT(btb_instance_attempt((btb_instance *)s, &v), BTB_ERROR_INVALID_HANDLE);
    MSG_HAS("btb_system");
    EXPECT(btb_instance_request_retry((btb_instance *)s, 1000, "x"), BTB_ERROR_INVALID_HANDLE);
    EXPECT(btb_instance_set_output((btb_instance *)s, "{}"), BTB_ERROR_INVALID_HANDLE);
    EXPECT(btb_system_close(s), BTB_OK);
}

/* argv[0]: test_store runs this program again as a client process. */
static const char *self_path;

static void test_store(void) {
    char path[4096], corrupt[4096];
    snprintf(path, sizeof path, "%s/store/btb.sqlite3", dir);
    btb_system *s = open_system(path);
    CHECK(s != NULL);
    if (!s) return;
    struct stat st;
    CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == 0600);
    btb_builder *b = timer_builder("survivor", 30);
    btb_registration *r = NULL;
    EXPECT(btb_register_in(s, b, &r), BTB_OK);
    EXPECT(btb_registration_free(r), BTB_OK);

    /* a second system on the same store is a client of the first's broker */
    btb_system *s2 = open_system(path);
    CHECK(s2 != NULL);
    bool is_broker = true;
    uint32_t pid = 0;
    EXPECT(btb_system_is_broker(s, &is_broker), BTB_OK);
    CHECK(is_broker);
    EXPECT(btb_system_is_broker(s2, &is_broker), BTB_OK);
    CHECK(!is_broker);
    EXPECT(btb_system_broker_pid(s2, &pid), BTB_OK);
    CHECK(pid == (uint32_t)getpid());
    CHECK(count_all(s2) == 1);
    bool idle = false;
    EXPECT(btb_system_wait_idle(s2, 0, &idle), BTB_ERROR_UNSUPPORTED);
    MSG_HAS("client");
    EXPECT(btb_system_close(s2), BTB_OK);

    /* and so is another process: this program run as a client registers one task */
    {
        pid_t child = fork();
        if (child == 0) {
            execl(self_path, self_path, "--client", path, (char *)NULL);
            _exit(127);
        }
        int status = 0;
        CHECK(waitpid(child, &status, 0) == child);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        CHECK(count_all(s) == 2);
    }

    /* survives close and reopen */
    EXPECT(btb_system_close(s), BTB_OK);
    s = open_system(path);
    CHECK(s != NULL);
    if (!s) return;
    CHECK(count_all(s) == 2);
    EXPECT(btb_system_close(s), BTB_OK);
    btb_free(b);

    /* a corrupt file is an error naming it, and is left untouched */
    snprintf(corrupt, sizeof corrupt, "%s/corrupt.sqlite3", dir);
    FILE *f = fopen(corrupt, "wb");
    char junk[4096];
    for (size_t i = 0; i < sizeof junk; i++) junk[i] = (char)(i * 7 + 3);
    fwrite(junk, 1, sizeof junk, f);
    fclose(f);
    s = open_system(corrupt);
    CHECK(s == NULL);
    MSG_HAS(corrupt);
    char back[4096 + 1];
    f = fopen(corrupt, "rb");
    size_t got = fread(back, 1, sizeof back, f);
    fclose(f);
    CHECK(got == sizeof junk && memcmp(back, junk, sizeof junk) == 0);
}

static void test_default_system(void) {
    btb_builder *b = timer_builder("d", 15);
    btb_registration *r = NULL;
    unsetenv("BTB_MANIFEST");
    EXPECT(btb_register(b, &r), BTB_ERROR_STATE);
    MSG_HAS("BTB_MANIFEST");
    btb_system *s = open_system(":memory:");
    EXPECT(btb_system_set_default(s), BTB_OK);
    EXPECT(btb_register(b, &r), BTB_OK);
    EXPECT(btb_registration_free(r), BTB_OK);
    CHECK(count_all(s) == 1);
    EXPECT(btb_system_set_default(NULL), BTB_OK);
    EXPECT(btb_system_close(s), BTB_OK);

    /* from BTB_MANIFEST + BTB_STORE */
    char mpath[4096];
    snprintf(mpath, sizeof mpath, "%s/btb.toml", dir);
    FILE *f = fopen(mpath, "w");
    fputs("app_id = \"org.example.env\"\n[[task]]\nentry_point = \"app.Timer\"\ntypes = [\"timer\"]\n", f);
    fclose(f);
    setenv("BTB_MANIFEST", mpath, 1);
    setenv("BTB_STORE", ":memory:", 1);
    EXPECT(btb_register(b, &r), BTB_OK);
    EXPECT(btb_registration_free(r), BTB_OK);
    btb_system_set_default(NULL);
    unsetenv("BTB_MANIFEST");
    unsetenv("BTB_STORE");
    btb_free(b);
}

static void test_fork(void) {
    btb_system *s = open_system(":memory:");
    btb_builder *b = timer_builder("f", 15);
    int fds[2];
    CHECK(pipe(fds) == 0);
    pid_t pid = fork();
    if (pid == 0) {
        /* The verdict travels through a pipe: under valgrind the child's exit code reports the
         * parent's threads' memory, which the child never owns. */
        btb_registration *r = NULL;
        btb_registration_list *l = NULL;
        char ok = btb_register_in(s, b, &r) == BTB_ERROR_STATE &&
                  strstr(btb_last_error_message(), "forked child") != NULL &&
                  btb_system_all_tasks(s, &l) == BTB_ERROR_STATE &&
                  btb_system_close(s) == BTB_ERROR_STATE;
        ssize_t w = write(fds[1], &ok, 1);
        _exit(w == 1 ? 0 : 1);
    }
    close(fds[1]);
    char verdict = 0;
    CHECK(read(fds[0], &verdict, 1) == 1);
    CHECK(verdict == 1);
    close(fds[0]);
    int status = 0;
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(count_all(s) == 0);
    btb_free(b);
    EXPECT(btb_system_close(s), BTB_OK);
}

/* The client process of test_store: opens the store that the parent's broker holds, checks
 * that it is a client of that broker, and registers a task through it. */
static int run_client(const char *path) {
    btb_system *s = open_system(path);
    if (!s) return 10;
    bool is_broker = true;
    uint32_t pid = 0;
    if (btb_system_is_broker(s, &is_broker) != BTB_OK || is_broker) return 11;
    if (btb_system_broker_pid(s, &pid) != BTB_OK || pid != (uint32_t)getppid()) return 12;
    btb_builder *b = timer_builder("from-client", 30);
    btb_registration *r = NULL;
    if (btb_register_in(s, b, &r) != BTB_OK) return 13;
    btb_registration_free(r);
    btb_free(b);
    return btb_system_close(s) == BTB_OK ? 0 : 14;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "--client") == 0) return run_client(argv[2]);
    if (argc < 2) {
        fprintf(stderr, "usage: %s SCRATCH_DIR\n", argv[0]);
        return 2;
    }
    dir = argv[1];
    self_path = argv[0];
    test_version_and_names();
    test_null_and_handles();
    test_builder_roundtrip();
    test_registration_checks();
    test_retry_policy();
    test_store();
    test_default_system();
    test_fork();
    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
