//! btb core: the background-task model of `Windows.ApplicationModel.Background` — model,
//! validation, manifest, store and system handle. No FFI and no Python live here.
#![forbid(unsafe_code)]

pub mod calendar;
pub mod clock;
pub mod error;
pub mod manifest;
pub mod model;
pub mod policy;
pub mod store;
pub mod system;
pub mod validate;

pub use clock::{Clock, ManualClock};
pub use error::{Error, ErrorKind, Result};
pub use manifest::{Manifest, TaskDeclaration};
pub use model::{
    ApplicationTriggerResult, BackgroundWorkCostValue, Builder, CancellationReason,
    CustomRecurrence, NamePolicy, SystemConditionType, SystemTriggerType, TaskGroup, TaskOutcome,
    TaskRecord, TaskType, Trigger, TriggerKind,
};
pub use policy::{Durability, Policy};
pub use store::{Store, StoreLocation};
pub use system::{
    ActivationHandler, Instance, Registration, System, SystemOptions, default_system,
    set_default_system,
};

/// The crate version (the workspace version).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
