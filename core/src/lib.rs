//! btb core: the background-task model of `Windows.ApplicationModel.Background` — model,
//! validation, manifest, store and system handle. No FFI and no Python live here.
// The two steps that need unsafe code (between fork and exec; adopting an inherited descriptor)
// live in the `btb-os` crate.
#![forbid(unsafe_code)]

mod broker;
pub mod calendar;
mod client;
pub mod clock;
pub mod control;
pub mod error;
mod files;
pub mod groups;
pub mod host;
mod link;
mod lockfile;
pub mod manifest;
pub mod model;
mod options;
mod pidfd;
mod platform;
pub mod policy;
pub mod protocol;
mod registry;
mod runfile;
mod socket_note;
mod source;
pub mod store;
pub mod system;
pub mod uninstall;
pub mod validate;
pub mod view;
mod wake;

pub use broker::{
    CanceledFn, Completion, Deferral, Event, Handler, Instance, RunFn, wait_app_calls,
};
pub use clock::{Clock, ManualClock};
pub use error::{Error, ErrorKind, Result};
pub use manifest::{Manifest, TaskDeclaration};
pub use model::{
    ApplicationTriggerResult, BackgroundWorkCostValue, BackoffPolicy, Builder, CancellationReason,
    CustomRecurrence, NamePolicy, RetryPolicy, RunRecord, SystemConditionType, SystemTriggerType,
    TaskGroup, TaskOutcome, TaskRecord, TaskType, Trigger, TriggerKind,
};
pub use platform::PlatformOptions;
pub use policy::{Durability, Policy};
pub use store::{Store, StoreLocation};
pub use system::{
    CompletedFn, ProgressFn, Registration, Resolver, System, SystemOptions, default_system,
    request_application_trigger, set_default_system,
};

/// The crate version (the workspace version).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
