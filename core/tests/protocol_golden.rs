//! Golden frames (SPEC §5, §10): the JSON bodies of control and instance protocol messages as
//! builds of protocol version 1 wrote them, checked in under `tests/golden/v1/`. Every later build
//! must keep decoding them to the same message — a peer of an older btb (an exec host linked
//! against an older libbtb, an older btbctl) keeps working across an upgrade of btbd.
//! `BTB_BLESS=1` writes the files of a *new* version directory only; v1's are never rewritten.

use std::collections::BTreeMap;
use std::path::PathBuf;

use btb_core::Completion;
use btb_core::control::{Filter, Offer, Reply, Request};
use btb_core::model::{
    ApplicationTriggerResult, Builder, CancellationReason, RunRecord, SystemConditionType,
    SystemTriggerType, TaskGroup, TaskOutcome, TaskRecord, Trigger, TriggerKind,
};
use btb_core::protocol::{HandedRun, ToBroker, ToHost};
use btb_core::view::{RunView, StateView, TaskView};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use uuid::Uuid;

#[derive(Debug)]
enum Frame {
    Req(Request),
    Rep(Reply),
    Tb(ToBroker),
    Th(ToHost),
}

fn id(n: u8) -> Uuid {
    Uuid::from_bytes([n; 16])
}

fn record() -> TaskRecord {
    serde_json::from_value(json!({
        "task_id": id(1), "name": "sync", "task_entry_point": "notes.Sync",
        "task_group": {"id": "g", "name": "Group"}, "cancel_on_condition_loss": true,
        "is_network_requested": false,
        "trigger": {"kind": "time", "freshness_minutes": 15, "one_shot": false},
        "conditions": [SystemConditionType::InternetAvailable as u32], "registered_at_ms": 1_700_000_000_000i64,
        "next_due_ms": 1_700_000_900_000i64, "seq": 3
    }))
    .expect("a v1 record")
}

fn run_record() -> RunRecord {
    RunRecord {
        instance_id: id(2),
        task_id: id(1),
        trigger_kind: TriggerKind::Application,
        trigger_details: Some(r#"{"file":"a.txt"}"#.into()),
        started_ms: 1_700_000_000_000,
        ended_ms: 1_700_000_001_000,
        outcome: TaskOutcome::Failed,
        reason: None,
        message: Some("disk full".into()),
        last_progress: 40,
        stdout: Some("out\n".into()),
        stderr: None,
        attempt: 1,
        retry_at_ms: None,
        output: None,
    }
}

fn completion() -> Completion {
    Completion {
        instance_id: id(2),
        outcome: TaskOutcome::Canceled,
        message: Some("canceled: ABORT".into()),
        reason: Some(CancellationReason::Abort),
        last_progress: 10,
        attempt: 1,
        retry_at_ms: None,
        output: None,
    }
}

fn view() -> TaskView {
    TaskView {
        task_id: id(1),
        name: "sync".into(),
        group: Some("g".into()),
        entry_point: Some("notes.Sync".into()),
        trigger: json!({"kind": "time", "freshness_minutes": 15, "one_shot": false}),
        trigger_text: "every 15 min".into(),
        conditions: vec!["INTERNET_AVAILABLE".into()],
        next_due: Some("2023-11-14T22:28:20Z".into()),
        pending: false,
        spent: false,
        running_since: None,
        last_outcome: Some("SUCCEEDED".into()),
        waiting_for: Some(vec!["INTERNET_AVAILABLE".into()]),
        why: Some("waiting for INTERNET_AVAILABLE".into()),
    }
}

fn handed() -> HandedRun {
    HandedRun {
        instance_id: id(2),
        task: record(),
        trigger_details: Some(json!({"file": "a.txt"})),
        started_ms: 1_700_000_000_000,
        attempt: 1,
    }
}

/// One message of each kind, as version 1 knows them.
fn v1() -> Vec<(&'static str, Frame)> {
    use Frame::*;
    let builder = Builder {
        name: Some("sync".into()),
        task_entry_point: Some("notes.Sync".into()),
        task_group: Some(TaskGroup {
            id: "g".into(),
            name: "Group".into(),
        }),
        cancel_on_condition_loss: true,
        is_network_requested: true,
        name_policy: 1,
        trigger: Some(Trigger::Application { id: id(5) }),
        conditions: vec![SystemConditionType::InternetAvailable as u32],
        retry_policy: None,
    };
    let mut states = BTreeMap::new();
    states.insert(
        "INTERNET_AVAILABLE".to_owned(),
        StateView {
            state: Some(true),
            source: "netlink".into(),
        },
    );
    vec![
        ("request_hello", Req(hello_request(1, false))),
        ("request_hello_keep_alive", Req(hello_request(1, true))),
        (
            "request_signal",
            Req(Request::Signal {
                name: "sync-now".into(),
            }),
        ),
        ("request_list", Req(Request::List)),
        (
            "request_show",
            Req(Request::Show {
                task: "sync".into(),
            }),
        ),
        (
            "request_history",
            Req(Request::History {
                task: "sync".into(),
            }),
        ),
        (
            "request_run",
            Req(Request::Run {
                task: "sync".into(),
                ignore_conditions: true,
                details: None,
                keep: false,
            }),
        ),
        (
            "request_unregister",
            Req(Request::Unregister {
                task: "sync".into(),
                cancel_task: false,
            }),
        ),
        ("request_doctor", Req(Request::Doctor)),
        (
            "request_register",
            Req(Request::Register {
                builder,
                activation: false,
            }),
        ),
        (
            "request_registrations",
            Req(Request::Registrations {
                filter: Filter::Group { id: "g".into() },
            }),
        ),
        ("request_groups", Req(Request::Groups)),
        (
            "request_run_history",
            Req(Request::RunHistory { task_id: id(1) }),
        ),
        (
            "request_request",
            Req(Request::Request {
                trigger_id: id(5),
                arguments: Some(json!({"file": "a.txt"})),
            }),
        ),
        (
            "request_raise",
            Req(Request::Raise {
                event: SystemTriggerType::TimeZoneChange,
            }),
        ),
        (
            "request_set_state",
            Req(Request::SetState {
                condition: SystemConditionType::UserPresent,
                value: true,
            }),
        ),
        (
            "request_state_of",
            Req(Request::StateOf {
                condition: SystemConditionType::OnAcPower,
            }),
        ),
        ("request_work_cost", Req(Request::WorkCost)),
        ("request_due", Req(Request::Due { task_id: id(1) })),
        ("request_subscribe", Req(Request::Subscribe)),
        (
            "request_offer",
            Req(Request::Offer {
                offer: Offer {
                    entry_points: vec!["notes.Sync".into()],
                    activation: vec![None, Some("g".into())],
                    resolver: true,
                    starts: false, // a v1 offer: its client runs what it is handed at once
                    activated: false,
                },
            }),
        ),
        ("request_ready", Req(Request::Ready)),
        (
            "request_attach",
            Req(Request::Attach { instance_id: id(2) }),
        ),
        ("reply_hello", Rep(hello_reply(1))),
        ("reply_done", Rep(Reply::Done)),
        ("reply_fired", Rep(Reply::Fired { count: 2 })),
        (
            "reply_tasks",
            Rep(Reply::Tasks {
                tasks: vec![view()],
            }),
        ),
        (
            "reply_task",
            Rep(Reply::Task {
                task: Box::new(view()),
            }),
        ),
        (
            "reply_runs",
            Rep(Reply::Runs {
                runs: vec![RunView {
                    stdout: None, // version 1 did not send the tails
                    ..RunView::from(&run_record())
                }],
            }),
        ),
        ("reply_doctor", Rep(doctor_reply(states))),
        (
            "reply_registered",
            Rep(Reply::Registered { record: record() }),
        ),
        (
            "reply_registrations",
            Rep(Reply::Registrations {
                records: vec![record()],
            }),
        ),
        (
            "reply_groups",
            Rep(Reply::Groups {
                groups: vec![TaskGroup {
                    id: "g".into(),
                    name: "Group".into(),
                }],
            }),
        ),
        (
            "reply_history",
            Rep(Reply::History {
                runs: vec![run_record()],
            }),
        ),
        (
            "reply_requested",
            Rep(Reply::Requested {
                result: ApplicationTriggerResult::CurrentlyRunning,
            }),
        ),
        (
            "reply_state_of",
            Rep(Reply::StateOf {
                state: None,
                source: "unknown".into(),
            }),
        ),
        ("reply_work_cost", Rep(Reply::WorkCost { cost: None })),
        (
            "reply_due",
            Rep(Reply::Due {
                next_due_ms: Some(1_700_000_900_000),
                spent: false,
            }),
        ),
        (
            "reply_progress",
            Rep(Reply::Progress {
                task_id: id(1),
                instance_id: id(2),
                value: 50,
            }),
        ),
        (
            "reply_completed",
            Rep(Reply::Completed {
                task_id: id(1),
                completion: completion(),
            }),
        ),
        (
            "reply_run",
            Rep(Reply::Run {
                run: Box::new(handed()),
            }),
        ),
        (
            "reply_error",
            Rep(Reply::Error {
                kind: "NOT_FOUND".into(),
                message: "no task named \"x\"".into(),
            }),
        ),
        ("to_broker_hello", Tb(host_hello(1))),
        ("to_broker_progress", Tb(ToBroker::Progress { value: 42 })),
        ("to_broker_deferral_taken", Tb(ToBroker::DeferralTaken)),
        (
            "to_broker_deferral_completed",
            Tb(ToBroker::DeferralCompleted),
        ),
        (
            "to_broker_failure",
            Tb(ToBroker::Failure {
                message: "disk full".into(),
            }),
        ),
        ("to_broker_finished", Tb(ToBroker::Finished)),
        ("to_host_welcome", Th(welcome(1))),
        ("to_host_canceled", Th(ToHost::Canceled { reason: 3 })),
        (
            "to_host_refused",
            Th(ToHost::Refused {
                message: "another instance".into(),
            }),
        ),
        (
            "to_host_run",
            Th(ToHost::Run {
                run: Box::new(handed()),
                canceled: None,
                network_granted: true,
            }),
        ),
    ]
}

// The messages whose shape the version range changed are built here, once.

fn hello_request(version: u32, keep_alive: bool) -> Request {
    Request::Hello {
        version,
        min_version: None,
        keep_alive,
    }
}

fn hello_reply(version: u32) -> Reply {
    Reply::Hello {
        version,
        pid: 4242,
        app_id: "org.example.notes".into(),
        store: Some("/home/u/.local/state/btb/org.example.notes/btb.sqlite3".into()),
    }
}

fn doctor_reply(states: BTreeMap<String, StateView>) -> Reply {
    Reply::Doctor {
        states,
        broker: Some(4242),
        store_error: None,
    }
}

fn host_hello(version: u32) -> ToBroker {
    ToBroker::Hello {
        version,
        min_version: None,
        instance_id: id(2),
    }
}

fn welcome(version: u32) -> ToHost {
    ToHost::Welcome {
        version,
        canceled: Some(1),
        network_granted: false,
        trigger_details: None,
        task: None,
    }
}

fn dir(version: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(version)
}

fn check<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(
    name: &str,
    version: &str,
    message: &T,
) {
    let path = dir(version).join(format!("{name}.json"));
    if std::env::var_os("BTB_BLESS").is_some() && !path.exists() {
        std::fs::create_dir_all(dir(version)).unwrap();
        let mut body = serde_json::to_vec(message).unwrap();
        body.push(b'\n');
        std::fs::write(&path, body).unwrap();
    }
    let body = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (BTB_BLESS=1 writes a missing file)",
            path.display()
        )
    });
    let decoded: T = serde_json::from_slice(body.trim_ascii_end())
        .unwrap_or_else(|e| panic!("{name} ({version}) no longer decodes: {e}"));
    assert_eq!(
        &decoded, message,
        "{name} ({version}) decodes to another message"
    );
}

#[test]
fn version_1_frames_keep_decoding_to_the_same_messages() {
    let samples = v1();
    for (name, frame) in &samples {
        match frame {
            Frame::Req(m) => check(name, "v1", m),
            Frame::Rep(m) => check(name, "v1", m),
            Frame::Tb(m) => check(name, "v1", m),
            Frame::Th(m) => check(name, "v1", m),
        }
    }
    // Every file has its message here: none is silently left unchecked.
    let mut files: Vec<String> = std::fs::read_dir(dir("v1"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let mut names: Vec<String> = samples.iter().map(|(n, _)| format!("{n}.json")).collect();
    names.sort();
    assert_eq!(files, names);
}

/// Messages version 2 added (a version 1 broker answers an unknown request `UNSUPPORTED`).
fn v2() -> Vec<(&'static str, Frame)> {
    use Frame::*;
    vec![
        ("request_uninstall", Req(Request::Uninstall)),
        ("reply_uninstalled", Rep(Reply::Uninstalled { tasks: 2 })),
        (
            "request_offer_activated",
            Req(Request::Offer {
                offer: Offer {
                    entry_points: vec![],
                    activation: vec![],
                    resolver: false,
                    starts: true,
                    activated: true, // the app the broker started, before its handlers
                },
            }),
        ),
        (
            "to_host_welcome_task",
            Th(ToHost::Welcome {
                version: 2,
                canceled: None,
                network_granted: false,
                trigger_details: None,
                task: Some(Box::new(record())),
            }),
        ),
    ]
}

#[test]
fn version_2_frames_keep_decoding_to_the_same_messages() {
    for (name, frame) in &v2() {
        match frame {
            Frame::Req(m) => check(name, "v2", m),
            Frame::Rep(m) => check(name, "v2", m),
            Frame::Tb(m) => check(name, "v2", m),
            Frame::Th(m) => check(name, "v2", m),
        }
    }
}

#[test]
fn fields_and_messages_of_a_newer_version_are_taken_not_refused() {
    use btb_core::protocol::{Decoder, Framed, encode};
    let mut d = Decoder::default();
    d.push(&encode(
        &json!({"type": "progress", "value": 7, "eta_ms": 1000}),
    ));
    d.push(&encode(&json!({"type": "teleport", "to": "mars"})));
    d.push(&encode(&json!({"type": "progress", "value": "seven"})));
    d.push(&encode(&json!({"type": "finished"})));
    let mut out = Vec::new();
    while let Some(framed) = d.next_framed::<ToBroker>().unwrap() {
        out.push(framed);
    }
    assert!(matches!(
        out[0],
        Framed::Message(ToBroker::Progress { value: 7 })
    ));
    assert!(matches!(out[1], Framed::Message(ToBroker::Unknown)));
    assert!(
        matches!(&out[2], Framed::Unreadable(e) if e.contains("invalid type")),
        "{:?}",
        out[2]
    );
    assert!(
        matches!(out[3], Framed::Message(ToBroker::Finished)),
        "in step"
    );
    // A record with a field of a newer broker.
    let mut value = serde_json::to_value(Reply::Registered { record: record() }).unwrap();
    value["record"]["expedited"] = json!({"quota": 3});
    assert_eq!(
        serde_json::from_value::<Reply>(value).unwrap(),
        Reply::Registered { record: record() }
    );
    // Not JSON at all: the stream cannot be trusted.
    let mut d = Decoder::default();
    d.push(&[0, 0, 0, 3, b'{', b'{', b'{']);
    assert!(d.next_framed::<ToBroker>().is_err());
}

#[test]
fn versions_are_negotiated_as_the_highest_both_speak() {
    use btb_core::protocol::{MIN_VERSION, VERSION, negotiate};
    assert_eq!(negotiate(None, 1), Ok(1), "a version 1 peer");
    assert_eq!(negotiate(Some(1), VERSION + 5), Ok(VERSION), "a newer peer");
    assert_eq!(negotiate(Some(MIN_VERSION), VERSION), Ok(VERSION));
    let e = negotiate(Some(VERSION + 1), VERSION + 3).unwrap_err();
    assert!(
        e.contains(&format!("versions {}–{}", VERSION + 1, VERSION + 3))
            && e.contains(&format!("versions {MIN_VERSION}–{VERSION}")),
        "{e}"
    );
    assert!(negotiate(None, 0).is_err());
}
