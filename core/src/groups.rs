//! The background-activated handlers of task groups (WinRT
//! `BackgroundTaskRegistrationGroup.BackgroundActivated`), kept for the whole process: every
//! system of this process applies them where a registration names the group (the table is the
//! broker's, `broker/groups.rs`).

pub use crate::broker::groups::{add_background_activated, remove_background_activated};
