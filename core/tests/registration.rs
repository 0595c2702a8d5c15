//! SPEC §2 through `System`: every registration check in the order of the table, each with its
//! `ErrorKind` and a message that names the offending value; name policies; groups; listing;
//! unregister; closed systems. `:memory:` store, manual clock.

mod common;

use btb_core::{
    Builder, CustomRecurrence, ErrorKind, Manifest, NamePolicy, Policy, StoreLocation, System,
    SystemConditionType, SystemTriggerType, TaskDeclaration, TaskType, Trigger, TriggerKind,
};
use common::*;

fn with_name(name: Option<&str>) -> Builder {
    let mut b = builder("x");
    b.name = name.map(str::to_owned);
    b
}

// ---------------------------------------------------------------------------------------------
// Row 2: the name

#[test]
fn name_missing_empty_too_long_or_with_nul_is_invalid_argument() {
    let (system, _) = memory_system();
    expect_err(
        system.register(&with_name(None)),
        ErrorKind::InvalidArgument,
        &["no name", "1-256 bytes"],
    );
    expect_err(
        system.register(&with_name(Some(""))),
        ErrorKind::InvalidArgument,
        &["task name is empty"],
    );
    let long = "a".repeat(257);
    expect_err(
        system.register(&with_name(Some(&long))),
        ErrorKind::InvalidArgument,
        &["task name", "257 bytes", "256 bytes"],
    );
    // The limit counts bytes, not characters: 86 three-byte characters are 258 bytes.
    let wide = "€".repeat(86);
    expect_err(
        system.register(&with_name(Some(&wide))),
        ErrorKind::InvalidArgument,
        &["258 bytes"],
    );
    expect_err(
        system.register(&with_name(Some("a\0b"))),
        ErrorKind::InvalidArgument,
        &["task name", "\"a\\0b\"", "NUL"],
    );
    assert!(
        system.all_tasks().unwrap().is_empty(),
        "a failed register stored something"
    );

    // The boundaries themselves are fine.
    for ok in [
        "a".repeat(256),
        "é".repeat(128),
        "x".to_owned(),
        "naïve task ✓".to_owned(),
    ] {
        let r = system.register(&with_name(Some(&ok))).unwrap();
        assert_eq!(r.name(), ok);
    }
}

// ---------------------------------------------------------------------------------------------
// Row 3: the trigger

#[test]
fn missing_trigger_is_no_trigger_naming_the_task() {
    let (system, _) = memory_system();
    let mut b = builder("sync-notes");
    b.trigger = None;
    expect_err(
        system.register(&b),
        ErrorKind::NoTrigger,
        &["\"sync-notes\"", "no trigger"],
    );
    b.set_trigger(time(15));
    system.register(&b).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Row 4: no entry point and no activation handler

#[test]
fn no_entry_point_needs_a_system_or_group_activation_handler() {
    let (system, _) = memory_system();
    let mut b = builder("in-process");
    b.task_entry_point = None;
    expect_err(
        system.register(&b),
        ErrorKind::NoEntryPoint,
        &["\"in-process\"", "no entry point", "the system has no"],
    );
    // An empty entry point counts as none.
    b.task_entry_point = Some(String::new());
    expect_err(
        system.register(&b),
        ErrorKind::NoEntryPoint,
        &["\"in-process\""],
    );

    // A group handler does not serve ungrouped tasks.
    system
        .set_background_activated(Some("g1"), Some(noop_handler()))
        .unwrap();
    expect_err(
        system.register(&b),
        ErrorKind::NoEntryPoint,
        &["\"in-process\""],
    );

    // The system's handler does.
    system
        .set_background_activated(None, Some(noop_handler()))
        .unwrap();
    let r = system.register(&b).unwrap();
    assert_eq!(r.task_entry_point(), None);

    // Removing it brings the error back.
    system.set_background_activated(None, None).unwrap();
    expect_err(
        system.register(&b),
        ErrorKind::NoEntryPoint,
        &["\"in-process\""],
    );
    assert_eq!(system.all_tasks().unwrap().len(), 1);
}

#[test]
fn a_group_handler_serves_only_its_own_group_and_the_system_handler_serves_all() {
    let (system, _) = memory_system();
    system
        .set_background_activated(Some("g1"), Some(noop_handler()))
        .unwrap();
    let mut b = builder("grouped");
    b.task_entry_point = None;

    b.task_group = Some(group("g1", "Group one"));
    let r = system.register(&b).unwrap();
    assert_eq!(r.task_group().unwrap().id, "g1");

    b.task_group = Some(group("g2", "Group two"));
    expect_err(
        system.register(&b),
        ErrorKind::NoEntryPoint,
        &["\"grouped\"", "task group \"g2\"", "nor the system"],
    );

    system
        .set_background_activated(None, Some(noop_handler()))
        .unwrap();
    let r = system.register(&b).unwrap();
    assert_eq!(r.task_group().unwrap().id, "g2");

    // With only the system handler gone, g2 fails again and g1 still works.
    system.set_background_activated(None, None).unwrap();
    expect_err(system.register(&b), ErrorKind::NoEntryPoint, &["\"g2\""]);
    b.task_group = Some(group("g1", "Group one"));
    system.register(&b).unwrap();
    assert_eq!(system.group_tasks("g1").unwrap().len(), 2);
    assert_eq!(system.group_tasks("g2").unwrap().len(), 1);
}

#[test]
fn a_task_without_entry_point_needs_no_manifest_declaration() {
    // With a handler, the entry-point and task-type checks do not apply at all.
    let clock = btb_core::ManualClock::new(T0).unwrap();
    let mut opts = options(StoreLocation::Memory, &clock, Policy::default());
    opts.manifest = Some(Manifest::new("org.example.empty", "1").unwrap());
    let system = System::open(opts).unwrap();
    system
        .set_background_activated(None, Some(noop_handler()))
        .unwrap();
    for trigger in all_trigger_kinds() {
        let mut b = builder("no-ep");
        b.task_entry_point = None;
        b.set_trigger(trigger);
        system.register(&b).unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// Rows 5 and 6: the manifest

#[test]
fn undeclared_entry_point_is_not_declared_naming_it() {
    let (system, _) = memory_system();
    let mut b = builder("t");
    b.task_entry_point = Some("app.Missing".to_owned());
    expect_err(
        system.register(&b),
        ErrorKind::NotDeclared,
        &["\"app.Missing\"", "not declared", APP_ID, "app.All"],
    );
    // Entry points are case-sensitive, as on Windows.
    b.task_entry_point = Some("app.all".to_owned());
    expect_err(
        system.register(&b),
        ErrorKind::NotDeclared,
        &["\"app.all\""],
    );
    assert!(system.all_tasks().unwrap().is_empty());
}

fn all_trigger_kinds() -> Vec<Trigger> {
    vec![
        time(15),
        Trigger::Maintenance {
            freshness_minutes: 15,
            one_shot: false,
        },
        Trigger::System {
            trigger_type: SystemTriggerType::InternetAvailable as u32,
            one_shot: false,
        },
        Trigger::application(),
        Trigger::CustomEvent {
            trigger_id: "evt".to_owned(),
            recurrence: CustomRecurrence::Always as u32,
        },
        Trigger::Calendar {
            expression: "daily".to_owned(),
        },
    ]
}

#[test]
fn each_trigger_kind_needs_its_task_type() {
    // SPEC §5: time/calendar → timer, maintenance/application → general,
    // system/custom event → systemEvent.
    let expected = |kind: TriggerKind| match kind {
        TriggerKind::Time | TriggerKind::Calendar => TaskType::Timer,
        TriggerKind::Maintenance | TriggerKind::Application => TaskType::General,
        TriggerKind::System | TriggerKind::CustomEvent => TaskType::SystemEvent,
    };
    let mut manifest = Manifest::new(APP_ID, "1").unwrap();
    for ty in TaskType::ALL {
        manifest
            .declare(TaskDeclaration::new(&format!("only.{}", ty.name()), &[ty.name()]).unwrap())
            .unwrap();
    }
    let clock = btb_core::ManualClock::new(T0).unwrap();
    let mut opts = options(StoreLocation::Memory, &clock, Policy::default());
    opts.manifest = Some(manifest);
    let system = System::open(opts).unwrap();

    let triggers = all_trigger_kinds();
    assert_eq!(triggers.len(), TriggerKind::ALL.len());
    let mut accepted = 0;
    for trigger in triggers {
        let needed = expected(trigger.kind());
        for &ty in TaskType::ALL {
            let ep = format!("only.{}", ty.name());
            let mut b = builder("typed");
            b.task_entry_point = Some(ep.clone());
            b.set_trigger(trigger.clone());
            let result = system.register(&b);
            if ty == needed {
                let r = result.unwrap_or_else(|e| panic!("{:?} on {ep}: {e}", trigger.kind()));
                assert_eq!(r.trigger(), trigger);
                accepted += 1;
            } else {
                expect_err(
                    result,
                    ErrorKind::NotDeclared,
                    &[
                        &format!("{ep:?}"),
                        &format!("[{}]", ty.name()),
                        &format!("needs task type {:?}", needed.name()),
                    ],
                );
            }
        }
    }
    assert_eq!(accepted, TriggerKind::ALL.len());
    assert_eq!(system.all_tasks().unwrap().len(), accepted);
}

// ---------------------------------------------------------------------------------------------
// Row 7: values

fn maintenance(freshness_minutes: u32) -> Trigger {
    Trigger::Maintenance {
        freshness_minutes,
        one_shot: true,
    }
}

#[test]
fn freshness_between_15_minutes_and_30_days_by_default() {
    let (system, _) = memory_system();
    for (make, kind) in [
        (time as fn(u32) -> Trigger, "time"),
        (maintenance as fn(u32) -> Trigger, "maintenance"),
    ] {
        let mut b = builder(kind);
        for bad in [0, 1, 14] {
            b.set_trigger(make(bad));
            expect_err(
                system.register(&b),
                ErrorKind::InvalidArgument,
                &[
                    &format!("{kind} trigger freshness {bad} minutes"),
                    "below the minimum of 15 minutes",
                    "min_freshness_minutes",
                ],
            );
        }
        for bad in [43_201, 100_000, u32::MAX] {
            b.set_trigger(make(bad));
            expect_err(
                system.register(&b),
                ErrorKind::InvalidArgument,
                &[
                    &format!("{kind} trigger freshness {bad} minutes"),
                    "above the maximum of 43200 minutes",
                ],
            );
        }
        for ok in [15, 16, 43_200] {
            b.set_trigger(make(ok));
            let r = system.register(&b).unwrap();
            assert_eq!(r.trigger().freshness_minutes(), Some(ok));
        }
    }
    assert_eq!(system.all_tasks().unwrap().len(), 6);
}

#[test]
fn a_test_policy_lowers_the_minimum_visibly() {
    let policy = Policy {
        min_freshness_minutes: 1,
        ..Policy::default()
    };
    let (system, _) = memory_system_with(policy);
    assert_eq!(system.policy().min_freshness_minutes, 1);
    let mut b = builder("fast");
    b.set_trigger(time(1));
    system.register(&b).unwrap();
    b.set_trigger(maintenance(1));
    system.register(&b).unwrap();
    b.set_trigger(time(0));
    expect_err(
        system.register(&b),
        ErrorKind::InvalidArgument,
        &[
            "freshness 0 minutes",
            "minimum of 1 minutes",
            "min_freshness_minutes",
        ],
    );
    // The maximum does not move.
    b.set_trigger(time(43_201));
    expect_err(system.register(&b), ErrorKind::InvalidArgument, &["43201"]);

    // A policy may also raise it.
    let (strict, _) = memory_system_with(Policy {
        min_freshness_minutes: 60,
        ..Policy::default()
    });
    b.set_trigger(time(15));
    expect_err(
        strict.register(&b),
        ErrorKind::InvalidArgument,
        &["freshness 15 minutes", "minimum of 60 minutes"],
    );

    // Out-of-range policies are refused when the system opens.
    for bad in [0, 43_201] {
        let clock = btb_core::ManualClock::new(T0).unwrap();
        let policy = Policy {
            min_freshness_minutes: bad,
            ..Policy::default()
        };
        expect_err(
            System::open(options(StoreLocation::Memory, &clock, policy)),
            ErrorKind::InvalidArgument,
            &[&format!("min_freshness_minutes {bad}")],
        );
    }
}

fn system_trigger(trigger_type: u32, one_shot: bool) -> Trigger {
    Trigger::System {
        trigger_type,
        one_shot,
    }
}

#[test]
fn unknown_system_trigger_type_is_invalid_argument() {
    let (system, _) = memory_system();
    let mut b = builder("sys");
    for bad in [0, 16, 99, u32::MAX] {
        b.set_trigger(system_trigger(bad, false));
        expect_err(
            system.register(&b),
            ErrorKind::InvalidArgument,
            &[&format!("unknown system trigger type value {bad}")],
        );
    }
    for t in SystemTriggerType::ALL {
        b.set_trigger(system_trigger(*t as u32, false));
        system.register(&b).unwrap();
    }
    assert_eq!(system.all_tasks().unwrap().len(), 15);
}

#[test]
fn control_channel_reset_cannot_be_one_shot() {
    let (system, _) = memory_system();
    let mut b = builder("ccr");
    b.set_trigger(system_trigger(
        SystemTriggerType::ControlChannelReset as u32,
        true,
    ));
    expect_err(
        system.register(&b),
        ErrorKind::InvalidArgument,
        &["CONTROL_CHANNEL_RESET", "one-shot"],
    );
    b.set_trigger(system_trigger(
        SystemTriggerType::ControlChannelReset as u32,
        false,
    ));
    system.register(&b).unwrap();
    // Every other type may be one-shot.
    for t in SystemTriggerType::ALL
        .iter()
        .filter(|t| **t != SystemTriggerType::ControlChannelReset)
    {
        b.set_trigger(system_trigger(*t as u32, true));
        let r = system.register(&b).unwrap();
        assert!(r.trigger().one_shot());
    }
}

#[test]
fn unknown_condition_type_is_invalid_argument() {
    let (system, _) = memory_system();
    for bad in [0, 9, 99, 104, u32::MAX] {
        let mut b = builder("cond");
        b.add_condition(SystemConditionType::InternetAvailable as u32);
        b.add_condition(bad);
        expect_err(
            system.register(&b),
            ErrorKind::InvalidArgument,
            &[&format!("unknown system condition type value {bad}")],
        );
    }
    assert!(system.all_tasks().unwrap().is_empty());
    for c in SystemConditionType::ALL {
        let mut b = builder("cond");
        b.add_condition(*c as u32);
        assert_eq!(system.register(&b).unwrap().conditions(), &[*c]);
    }
}

#[test]
fn unknown_recurrence_and_empty_custom_trigger_id_are_invalid_argument() {
    let (system, _) = memory_system();
    let mut b = builder("custom");
    let custom = |id: &str, recurrence| Trigger::CustomEvent {
        trigger_id: id.to_owned(),
        recurrence,
    };
    for bad in [2, 7, u32::MAX] {
        b.set_trigger(custom("evt", bad));
        expect_err(
            system.register(&b),
            ErrorKind::InvalidArgument,
            &[&format!(
                "unknown custom system event trigger recurrence value {bad}"
            )],
        );
    }
    b.set_trigger(custom("", 0));
    expect_err(
        system.register(&b),
        ErrorKind::InvalidArgument,
        &["custom event trigger id is empty"],
    );
    b.set_trigger(custom(&"e".repeat(257), 0));
    expect_err(
        system.register(&b),
        ErrorKind::InvalidArgument,
        &["custom event trigger id is 257 bytes"],
    );
    b.set_trigger(custom(&"e".repeat(256), 0));
    system.register(&b).unwrap();
    b.set_trigger(custom("e\0vt", 0));
    expect_err(system.register(&b), ErrorKind::InvalidArgument, &["NUL"]);
    for ok in [CustomRecurrence::Once, CustomRecurrence::Always] {
        b.set_trigger(custom("evt", ok as u32));
        system.register(&b).unwrap();
    }
}

#[test]
fn unknown_name_policy_is_invalid_argument() {
    let (system, _) = memory_system();
    let mut b = builder("np");
    for bad in [4, 100, u32::MAX] {
        b.name_policy = bad;
        expect_err(
            system.register(&b),
            ErrorKind::InvalidArgument,
            &[&format!("unknown name policy value {bad}")],
        );
    }
    assert!(system.all_tasks().unwrap().is_empty());
}

#[test]
fn bad_calendar_expression_is_invalid_argument_naming_it() {
    let (system, _) = memory_system();
    let mut b = builder("cal");
    for bad in [
        "",
        "   ",
        "every tuesday",
        "*-*-* 25:00",
        "Mon..Fri 09:70",
        "*-13-01",
        "*-*-* 10:00 Mars/Olympus",
        "*-*~29",
    ] {
        b.set_trigger(Trigger::Calendar {
            expression: bad.to_owned(),
        });
        expect_err(
            system.register(&b),
            ErrorKind::InvalidArgument,
            &["bad calendar expression", &format!("{bad:?}")],
        );
    }
    assert!(system.all_tasks().unwrap().is_empty());
    for ok in [
        "daily",
        "Mon..Fri *-*-* 09:30",
        "*-*-01 00:00:00 UTC",
        "*:0/15",
        // systemd.time(7) forms (issue 20).
        "*-*-* 10:00 Europe/Berlin",
        "Mon-Wed 12-10-15 17:48",
        "Wed, 17:48",
        "semi-annually",
        "03:17:00/0.42",
        "Mon 2017-05~07/1",
    ] {
        b.set_trigger(Trigger::Calendar {
            expression: ok.to_owned(),
        });
        system.register(&b).unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// Row 8: conflicts

#[test]
fn contradictory_conditions_are_a_conflict() {
    use SystemConditionType as C;
    let (system, _) = memory_system();
    for (a, b) in [
        (C::InternetAvailable, C::InternetNotAvailable),
        (C::UserPresent, C::UserNotPresent),
        (C::SessionConnected, C::SessionDisconnected),
    ] {
        for (first, second) in [(a, b), (b, a)] {
            let mut builder = builder("never");
            builder.add_condition(C::OnAcPower as u32);
            builder.add_condition(first as u32);
            builder.add_condition(second as u32);
            let err = expect_err(
                system.register(&builder),
                ErrorKind::Conflict,
                &["\"never\"", "contradictory", a.name(), b.name()],
            );
            assert!(!err.message().contains("ON_AC_POWER"), "{}", err.message());
        }
    }
    assert!(system.all_tasks().unwrap().is_empty());
    // Non-contradictory mixes of those are fine.
    let mut b = builder("fine");
    for c in [
        C::InternetAvailable,
        C::UserPresent,
        C::SessionConnected,
        C::FreeNetworkAvailable,
    ] {
        b.add_condition(c as u32);
    }
    system.register(&b).unwrap();
}

#[test]
fn name_policy_fail_rejects_a_taken_name() {
    let (system, _) = memory_system();
    let mut b = builder("unique");
    b.name_policy = NamePolicy::Fail as u32;
    let first = system.register(&b).unwrap();
    let err = expect_err(
        system.register(&b),
        ErrorKind::Conflict,
        &["\"unique\"", "FAIL", &first.task_id().to_string()],
    );
    assert!(!err.message().contains("task group"), "{}", err.message());
    assert_eq!(system.all_tasks().unwrap(), vec![first.clone()]);
    // Another name is fine; FAIL looks at the name only.
    b.name = Some("other".to_owned());
    system.register(&b).unwrap();
    // Once the first is unregistered the name is free again.
    first.unregister(false).unwrap();
    b.name = Some("unique".to_owned());
    system.register(&b).unwrap();
}

#[test]
fn name_policy_keep_returns_the_existing_registration() {
    let (system, clock) = memory_system();
    let mut b = builder("keep");
    b.name_policy = NamePolicy::Keep as u32;
    // Nothing to keep yet: registers.
    let first = system.register(&b).unwrap();
    clock.advance_ms(60_000).unwrap();
    // A different description under KEEP still returns the original, unchanged.
    b.set_trigger(time(120));
    b.add_condition(SystemConditionType::OnAcPower as u32);
    let kept = system.register(&b).unwrap();
    assert_eq!(kept.task_id(), first.task_id());
    assert_eq!(kept, first);
    assert_eq!(kept.trigger(), time(30));
    assert!(kept.conditions().is_empty());
    assert_eq!(kept.record().registered_at_ms, T0);
    assert_eq!(system.all_tasks().unwrap().len(), 1);

    // With several (made under ALLOW), KEEP returns the oldest.
    b.name_policy = NamePolicy::Allow as u32;
    system.register(&b).unwrap();
    b.name_policy = NamePolicy::Keep as u32;
    assert_eq!(system.register(&b).unwrap().task_id(), first.task_id());
    assert_eq!(system.all_tasks().unwrap().len(), 2);

    // KEEP still validates first.
    b.set_trigger(time(1));
    expect_err(
        system.register(&b),
        ErrorKind::InvalidArgument,
        &["freshness 1 minutes"],
    );
}

#[test]
fn name_policy_replace_removes_the_old_registrations() {
    let (system, _) = memory_system();
    let mut b = builder("replace-me");
    let a = system.register(&b).unwrap();
    let dup = system.register(&b).unwrap();
    let bystander = system.register(&builder("bystander")).unwrap();
    b.name_policy = NamePolicy::Replace as u32;
    b.set_trigger(time(45));
    let new = system.register(&b).unwrap();
    assert_ne!(new.task_id(), a.task_id());
    assert_ne!(new.task_id(), dup.task_id());
    assert_eq!(new.trigger(), time(45));
    for old in [&a, &dup] {
        expect_err(
            system.find(&old.task_id()),
            ErrorKind::NotFound,
            &[&old.task_id().to_string()],
        );
        expect_err(old.unregister(false), ErrorKind::NotFound, &[]);
    }
    let ids: Vec<_> = system
        .all_tasks()
        .unwrap()
        .iter()
        .map(|r| r.task_id())
        .collect();
    assert_eq!(ids, vec![bystander.task_id(), new.task_id()]);
    // With nothing to replace, REPLACE simply registers.
    b.name = Some("fresh".to_owned());
    system.register(&b).unwrap();
    assert_eq!(system.all_tasks().unwrap().len(), 3);
}

#[test]
fn name_policy_allow_is_the_default_and_makes_duplicates() {
    assert_eq!(Builder::new().name_policy, NamePolicy::Allow as u32);
    let (system, _) = memory_system();
    let b = builder("same");
    let ids: Vec<_> = (0..3)
        .map(|_| system.register(&b).unwrap().task_id())
        .collect();
    assert_eq!(ids.len(), 3);
    assert!(ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2]);
    let listed: Vec<_> = system
        .all_tasks()
        .unwrap()
        .iter()
        .map(|r| r.task_id())
        .collect();
    assert_eq!(listed, ids, "all_tasks lists in registration order");
}

#[test]
fn the_name_scope_is_the_task_group() {
    let (system, _) = memory_system();
    let mut b = builder("shared-name");
    b.name_policy = NamePolicy::Fail as u32;
    let ungrouped = system.register(&b).unwrap();
    b.task_group = Some(group("lib", "A library"));
    let in_lib = system.register(&b).unwrap();
    b.task_group = Some(group("other", "Other"));
    let in_other = system.register(&b).unwrap();
    b.task_group = Some(group("lib", "A library"));
    expect_err(
        system.register(&b),
        ErrorKind::Conflict,
        &[
            "\"shared-name\"",
            "in task group \"lib\"",
            &in_lib.task_id().to_string(),
        ],
    );

    // KEEP finds the one in its own scope.
    b.name_policy = NamePolicy::Keep as u32;
    assert_eq!(system.register(&b).unwrap().task_id(), in_lib.task_id());
    b.task_group = None;
    assert_eq!(system.register(&b).unwrap().task_id(), ungrouped.task_id());

    // REPLACE removes only the one in its own scope.
    b.name_policy = NamePolicy::Replace as u32;
    b.task_group = Some(group("lib", "A library"));
    let replaced = system.register(&b).unwrap();
    assert!(system.find(&in_lib.task_id()).is_err());
    system.find(&ungrouped.task_id()).unwrap();
    system.find(&in_other.task_id()).unwrap();
    assert_eq!(system.group_tasks("lib").unwrap(), vec![replaced]);
    assert_eq!(system.all_tasks().unwrap(), vec![ungrouped]);
    assert_eq!(system.group_tasks("other").unwrap(), vec![in_other]);
}

// ---------------------------------------------------------------------------------------------
// The order of the checks

struct Mistake {
    what: &'static str,
    /// Position in the table of SPEC §2; mistakes sharing a position have no defined order.
    row: u32,
    /// The builder field it changes; two mistakes on one field cannot be combined
    /// (`conditions` mistakes append, so they can).
    field: &'static str,
    apply: fn(&mut Builder),
    kind: ErrorKind,
    /// A part of the message only this mistake produces.
    signature: &'static str,
}

fn mistakes() -> Vec<Mistake> {
    vec![
        Mistake {
            what: "no name",
            row: 2,
            field: "name",
            apply: |b| b.name = None,
            kind: ErrorKind::InvalidArgument,
            signature: "has no name",
        },
        Mistake {
            what: "no trigger",
            row: 3,
            field: "trigger",
            apply: |b| b.trigger = None,
            kind: ErrorKind::NoTrigger,
            signature: "has no trigger",
        },
        Mistake {
            what: "no entry point, no handler",
            row: 4,
            field: "entry point",
            apply: |b| b.task_entry_point = None,
            kind: ErrorKind::NoEntryPoint,
            signature: "has no entry point",
        },
        Mistake {
            what: "undeclared entry point",
            row: 5,
            field: "entry point",
            apply: |b| b.task_entry_point = Some("app.Nope".to_owned()),
            kind: ErrorKind::NotDeclared,
            signature: "\"app.Nope\" of task",
        },
        Mistake {
            what: "undeclared task type",
            row: 6,
            field: "entry point",
            apply: |b| b.task_entry_point = Some("app.General".to_owned()),
            kind: ErrorKind::NotDeclared,
            signature: "declared with types [general]",
        },
        Mistake {
            what: "freshness too low",
            row: 7,
            field: "trigger",
            apply: |b| b.set_trigger(time(14)),
            kind: ErrorKind::InvalidArgument,
            signature: "freshness 14 minutes",
        },
        Mistake {
            what: "bad calendar expression",
            row: 7,
            field: "trigger",
            apply: |b| {
                b.set_trigger(Trigger::Calendar {
                    expression: "Funday".to_owned(),
                })
            },
            kind: ErrorKind::InvalidArgument,
            signature: "bad calendar expression",
        },
        Mistake {
            what: "unknown condition",
            row: 7,
            field: "conditions",
            apply: |b| b.add_condition(77),
            kind: ErrorKind::InvalidArgument,
            signature: "unknown system condition type value 77",
        },
        Mistake {
            what: "unknown name policy",
            row: 7,
            field: "name policy",
            apply: |b| b.name_policy = 9,
            kind: ErrorKind::InvalidArgument,
            signature: "unknown name policy value 9",
        },
        Mistake {
            what: "contradictory conditions",
            row: 8,
            field: "conditions",
            apply: |b| {
                b.add_condition(SystemConditionType::UserPresent as u32);
                b.add_condition(SystemConditionType::UserNotPresent as u32);
            },
            kind: ErrorKind::Conflict,
            signature: "contradictory conditions",
        },
        Mistake {
            what: "name taken under FAIL",
            row: 9,
            field: "name policy",
            apply: |b| b.name_policy = NamePolicy::Fail as u32,
            kind: ErrorKind::Conflict,
            signature: "already registered",
        },
    ]
}

#[test]
fn a_builder_with_several_mistakes_reports_the_earliest() {
    let (system, _) = memory_system();
    // "taken" exists, so FAIL conflicts.
    system.register(&builder("taken")).unwrap();
    let base = builder("taken");
    {
        // The base is valid (checked on a twin system so nothing else gets stored here).
        let (twin, _) = memory_system();
        twin.register(&base).unwrap();
    }
    let all = mistakes();
    for m in &all {
        let mut b = base.clone();
        (m.apply)(&mut b);
        expect_err(system.register(&b), m.kind, &[m.signature]);
    }
    let mut pairs = 0;
    for (i, early) in all.iter().enumerate() {
        for late in &all[i + 1..] {
            if early.row == late.row || (early.field == late.field && early.field != "conditions") {
                continue;
            }
            assert!(early.row < late.row);
            // Apply in both orders: the order of the builder calls must not matter.
            for order in [[early, late], [late, early]] {
                let mut b = base.clone();
                for m in order {
                    (m.apply)(&mut b);
                }
                let err = system.register(&b).expect_err(early.what);
                assert_eq!(
                    err.kind(),
                    early.kind,
                    "{} + {}: {}",
                    early.what,
                    late.what,
                    err.message()
                );
                assert!(
                    err.message().contains(early.signature),
                    "{} + {} should report {:?}, got {:?}",
                    early.what,
                    late.what,
                    early.signature,
                    err.message()
                );
            }
            pairs += 1;
        }
    }
    eprintln!("{pairs} pairs of mistakes checked in both orders");
    assert!(pairs >= 35, "only {pairs} combinations checked");

    // Every combinable mistake at once: the name is reported.
    let mut b = base.clone();
    for m in all
        .iter()
        .filter(|m| m.field != "entry point" || m.row == 6)
    {
        (m.apply)(&mut b);
    }
    expect_err(
        system.register(&b),
        ErrorKind::InvalidArgument,
        &["has no name"],
    );
    assert_eq!(
        system.all_tasks().unwrap().len(),
        1,
        "a failed register stored something"
    );
}

#[test]
fn a_closed_system_reports_state_before_anything_else() {
    let (system, _) = memory_system();
    let r = system.register(&builder("before-close")).unwrap();
    let clone = system.clone();
    assert!(!system.is_closed());
    system.close().unwrap();
    assert!(clone.is_closed(), "clones share one system");
    // Even a builder that is wrong in every way gets STATE: the handle comes first.
    expect_err(
        clone.register(&Builder::new()),
        ErrorKind::State,
        &["closed"],
    );
    expect_err(
        system.register(&builder("after")),
        ErrorKind::State,
        &["closed"],
    );
    expect_err(system.all_tasks(), ErrorKind::State, &["closed"]);
    expect_err(system.all_task_groups(), ErrorKind::State, &["closed"]);
    expect_err(system.group_tasks("g"), ErrorKind::State, &["closed"]);
    expect_err(system.task_group("g"), ErrorKind::State, &["closed"]);
    expect_err(system.find(&r.task_id()), ErrorKind::State, &["closed"]);
    expect_err(
        system.unregister(&r.task_id(), false),
        ErrorKind::State,
        &["closed"],
    );
    expect_err(r.unregister(true), ErrorKind::State, &["closed"]);
    expect_err(
        system.set_background_activated(None, Some(noop_handler())),
        ErrorKind::State,
        &["closed"],
    );
    // Closing twice is harmless, and the snapshot stays readable.
    system.close().unwrap();
    assert_eq!(r.name(), "before-close");
}

// ---------------------------------------------------------------------------------------------
// The builder and the registration

#[test]
fn the_builder_is_borrowed_fix_it_and_register_again() {
    let (system, _) = memory_system();
    let mut b = builder("retry");
    b.set_trigger(time(5));
    b.add_condition(SystemConditionType::InternetAvailable as u32);
    let before = b.clone();
    expect_err(
        system.register(&b),
        ErrorKind::InvalidArgument,
        &["freshness 5"],
    );
    assert_eq!(b, before, "register must not change the builder");
    b.set_trigger(time(20));
    let r = system.register(&b).unwrap();
    assert_eq!(r.trigger(), time(20));
    assert_eq!(r.conditions(), &[SystemConditionType::InternetAvailable]);
    // The same builder registers again (ALLOW), and later changes don't touch the registration.
    let again = system.register(&b).unwrap();
    assert_ne!(again.task_id(), r.task_id());
    b.name = Some("renamed".to_owned());
    b.set_trigger(time(99));
    assert_eq!(r.name(), "retry");
    assert_eq!(r.trigger(), time(20));
}

#[test]
fn duplicate_conditions_collapse_in_first_added_order() {
    use SystemConditionType as C;
    let mut b = builder("dups");
    for c in [
        C::OnAcPower,
        C::InternetAvailable,
        C::OnAcPower,
        C::InternetAvailable,
    ] {
        b.add_condition(c as u32);
    }
    assert_eq!(
        b.conditions,
        vec![C::OnAcPower as u32, C::InternetAvailable as u32]
    );
    // Duplicates pushed past add_condition collapse at registration.
    b.conditions.extend([
        C::DeviceIdle as u32,
        C::OnAcPower as u32,
        C::DeviceIdle as u32,
    ]);
    let (system, _) = memory_system();
    let r = system.register(&b).unwrap();
    assert_eq!(
        r.conditions(),
        &[C::OnAcPower, C::InternetAvailable, C::DeviceIdle]
    );
}

#[test]
fn the_registration_holds_everything_the_builder_held() {
    let (system, _) = memory_system();
    let mut b = builder("full");
    b.task_entry_point = Some("app.SystemEvent".to_owned());
    b.task_group = Some(group("grp", "The group"));
    b.cancel_on_condition_loss = true;
    b.is_network_requested = true;
    b.set_trigger(system_trigger(
        SystemTriggerType::TimeZoneChange as u32,
        true,
    ));
    b.add_condition(SystemConditionType::BatteryNotLow as u32);
    b.add_condition(SystemConditionType::UserPresent as u32);
    let r = system.register(&b).unwrap();
    assert_eq!(r.name(), "full");
    assert_eq!(r.task_entry_point(), Some("app.SystemEvent"));
    assert_eq!(r.task_group(), Some(&group("grp", "The group")));
    assert!(r.cancel_on_condition_loss());
    assert!(r.is_network_requested());
    assert_eq!(r.trigger(), system_trigger(11, true));
    assert_eq!(
        r.conditions(),
        &[
            SystemConditionType::BatteryNotLow,
            SystemConditionType::UserPresent
        ]
    );
    assert!(!r.is_spent());
    assert_eq!(r.system(), system);
    assert_eq!(system.find(&r.task_id()).unwrap().record(), r.record());

    let plain = system.register(&builder("plain")).unwrap();
    assert!(!plain.cancel_on_condition_loss());
    assert!(!plain.is_network_requested());
    assert_eq!(plain.task_group(), None);
    assert!(plain.record().seq > r.record().seq);
}

#[test]
fn next_due_is_registration_time_plus_freshness() {
    let (system, clock) = memory_system();
    let r = system.register(&builder("t30")).unwrap();
    assert_eq!(r.record().registered_at_ms, T0);
    assert_eq!(r.record().next_due_ms, Some(T0 + 30 * 60_000));

    clock.advance_ms(123_456).unwrap();
    let mut b = builder("m45");
    b.set_trigger(maintenance(45));
    b.task_entry_point = Some("app.General".to_owned());
    let m = system.register(&b).unwrap();
    assert_eq!(m.record().registered_at_ms, T0 + 123_456);
    assert_eq!(m.record().next_due_ms, Some(T0 + 123_456 + 45 * 60_000));

    clock.advance_ms(1).unwrap();
    let mut b = builder("max");
    b.set_trigger(time(43_200));
    let max = system.register(&b).unwrap();
    assert_eq!(
        max.record().next_due_ms,
        Some(T0 + 123_457 + 43_200 * 60_000)
    );

    // Calendar triggers are due at their next matching time; event triggers have no due time.
    for trigger in all_trigger_kinds()
        .into_iter()
        .filter(|t| !matches!(t.kind(), TriggerKind::Time | TriggerKind::Maintenance))
    {
        let mut b = builder("other");
        b.set_trigger(trigger.clone());
        let r = system.register(&b).unwrap();
        assert_eq!(r.record().registered_at_ms, T0 + 123_457);
        let expected = match &trigger {
            btb_core::Trigger::Calendar { expression } => {
                btb_core::calendar::CalendarSpec::parse(expression)
                    .unwrap()
                    .next_after(T0 + 123_457, &btb_core::calendar::system_time_zone())
            }
            _ => None,
        };
        assert_eq!(r.record().next_due_ms, expected, "{:?}", r.trigger());
        assert_eq!(expected.is_some(), trigger.kind() == TriggerKind::Calendar);
    }
}

// ---------------------------------------------------------------------------------------------
// Listing, groups, unregister

#[test]
fn grouped_tasks_are_listed_by_their_group_not_by_all_tasks() {
    let (system, _) = memory_system();
    let loose = system.register(&builder("loose")).unwrap();
    let mut b = builder("lib-task");
    b.task_group = Some(group("z.lib", "Zed library"));
    let z1 = system.register(&b).unwrap();
    let z2 = system.register(&b).unwrap();
    b.task_group = Some(group("a.lib", "A library"));
    let a1 = system.register(&b).unwrap();

    assert_eq!(system.all_tasks().unwrap(), vec![loose.clone()]);
    assert_eq!(
        system.group_tasks("z.lib").unwrap(),
        vec![z1.clone(), z2.clone()]
    );
    assert_eq!(system.group_tasks("a.lib").unwrap(), vec![a1.clone()]);
    assert!(system.group_tasks("nope").unwrap().is_empty());
    assert_eq!(
        system.all_task_groups().unwrap(),
        vec![group("a.lib", "A library"), group("z.lib", "Zed library")],
        "groups are listed by id"
    );
    assert_eq!(system.task_group("z.lib").unwrap().name, "Zed library");
    expect_err(
        system.task_group("nope"),
        ErrorKind::NotFound,
        &["\"nope\""],
    );
    // find reaches grouped tasks too.
    assert_eq!(system.find(&z2.task_id()).unwrap(), z2);

    // An app that clears all_tasks leaves the library's tasks alone.
    for r in system.all_tasks().unwrap() {
        r.unregister(true).unwrap();
    }
    assert!(system.all_tasks().unwrap().is_empty());
    assert_eq!(system.all_task_groups().unwrap().len(), 2);

    // A group disappears with its last task, not before.
    z1.unregister(false).unwrap();
    assert_eq!(system.group_tasks("z.lib").unwrap(), vec![z2.clone()]);
    assert!(system.task_group("z.lib").is_ok());
    z2.unregister(false).unwrap();
    expect_err(
        system.task_group("z.lib"),
        ErrorKind::NotFound,
        &["\"z.lib\""],
    );
    assert_eq!(
        system.all_task_groups().unwrap(),
        vec![group("a.lib", "A library")]
    );
    system.unregister(&a1.task_id(), false).unwrap();
    assert!(system.all_task_groups().unwrap().is_empty());

    // Naming it again recreates it.
    system.register(&b).unwrap();
    assert_eq!(
        system.all_task_groups().unwrap(),
        vec![group("a.lib", "A library")]
    );
}

#[test]
fn a_group_without_a_name_is_named_by_its_id() {
    let g = btb_core::TaskGroup::new("only.id", None).unwrap();
    assert_eq!(g.name, "only.id");
    expect_err(
        btb_core::TaskGroup::new("", None),
        ErrorKind::InvalidArgument,
        &["empty"],
    );
    expect_err(
        btb_core::TaskGroup::new("a".repeat(257), None),
        ErrorKind::InvalidArgument,
        &["257 bytes"],
    );
    expect_err(
        btb_core::TaskGroup::new("id", Some("n\0".to_owned())),
        ErrorKind::InvalidArgument,
        &["NUL"],
    );
    let (system, _) = memory_system();
    let mut b = builder("t");
    b.task_group = Some(g.clone());
    system.register(&b).unwrap();
    assert_eq!(system.all_task_groups().unwrap(), vec![g]);
}

#[test]
fn unregistering_twice_is_not_found() {
    let (system, _) = memory_system();
    let r = system.register(&builder("once")).unwrap();
    let keep = system.register(&builder("keep")).unwrap();
    r.unregister(false).unwrap();
    let id = r.task_id().to_string();
    expect_err(r.unregister(false), ErrorKind::NotFound, &[&id]);
    expect_err(
        system.unregister(&r.task_id(), true),
        ErrorKind::NotFound,
        &[&id],
    );
    expect_err(system.find(&r.task_id()), ErrorKind::NotFound, &[&id]);
    expect_err(
        system.unregister(&uuid::Uuid::nil(), false),
        ErrorKind::NotFound,
        &["00000000-0000-0000-0000-000000000000"],
    );
    assert_eq!(system.all_tasks().unwrap(), vec![keep]);
}

#[test]
fn memory_systems_are_independent_and_ephemeral() {
    let (a, _) = memory_system();
    let (b, _) = memory_system();
    assert_eq!(a.store_path(), ":memory:");
    a.register(&builder("only-in-a")).unwrap();
    assert!(b.all_tasks().unwrap().is_empty());
    a.close().unwrap();
    let (c, _) = memory_system();
    assert!(c.all_tasks().unwrap().is_empty());
}

#[test]
fn a_system_needs_a_manifest() {
    let opts = btb_core::SystemOptions {
        store: StoreLocation::Memory,
        ..Default::default()
    };
    expect_err(
        System::open(opts),
        ErrorKind::InvalidArgument,
        &["no manifest"],
    );
}

#[test]
fn a_group_keeps_its_first_name_and_bad_groups_are_rejected() {
    let (system, _clock) = memory_system();
    let mut b = builder("a");
    b.task_group = Some(group("lib", "First name"));
    let first = system.register(&b).unwrap();
    b.task_group = Some(group("lib", "Second name"));
    let second = system.register(&b).unwrap();
    assert_eq!(first.task_group().unwrap().name, "First name");
    assert_eq!(second.task_group().unwrap().name, "First name");
    assert_eq!(system.task_group("lib").unwrap().name, "First name");

    for (id, name, needle) in [
        ("", "n", "task group id is empty"),
        ("a\0b", "n", "NUL"),
        ("ok", "a\0b", "task group name"),
    ] {
        b.task_group = Some(btb_core::TaskGroup {
            id: id.into(),
            name: name.into(),
        });
        let err = system.register(&b).unwrap_err();
        assert_eq!(err.kind(), btb_core::ErrorKind::InvalidArgument);
        assert!(err.message().contains(needle), "{}", err.message());
    }
    let long = "g".repeat(257);
    b.task_group = Some(btb_core::TaskGroup {
        id: long,
        name: "n".into(),
    });
    assert!(
        system
            .register(&b)
            .unwrap_err()
            .message()
            .contains("257 bytes")
    );
}
