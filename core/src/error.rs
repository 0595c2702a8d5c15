//! The one error type of btb. Every validation rule maps to exactly one [`ErrorKind`]; the C ABI and
//! the Python package translate kinds with exhaustive matches, so a new kind fails to compile until
//! both map it.

use std::fmt;

/// What went wrong, with a stable number that the bindings share (the C status, Python's `.status`).
/// Numbers are never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ErrorKind {
    /// A required pointer or argument was NULL / None.
    NullArgument = 1,
    /// A handle was freed, foreign, or of another type.
    InvalidHandle = 2,
    /// A value is out of range, malformed or otherwise unacceptable.
    InvalidArgument = 3,
    /// A string was not valid UTF-8.
    InvalidUtf8 = 4,
    /// The builder has no trigger.
    NoTrigger = 5,
    /// No entry point and no activation handler for the task's group or the system.
    NoEntryPoint = 6,
    /// The entry point, or the trigger's task type for it, is not declared in the manifest.
    NotDeclared = 7,
    /// Contradictory conditions, or a name taken under the `FAIL` name policy.
    Conflict = 8,
    /// The store cannot be opened, read or written.
    Store = 9,
    /// No such registration, group or object.
    NotFound = 10,
    /// Not valid now: closed system, used after fork, completed deferral.
    State = 11,
    /// Not supported on this platform or in this build.
    Unsupported = 12,
    /// Refused by policy.
    Policy = 13,
    /// An internal error (a caught panic).
    Internal = 14,
}

impl ErrorKind {
    /// Every kind, in numeric order.
    pub const ALL: [ErrorKind; 14] = [
        ErrorKind::NullArgument,
        ErrorKind::InvalidHandle,
        ErrorKind::InvalidArgument,
        ErrorKind::InvalidUtf8,
        ErrorKind::NoTrigger,
        ErrorKind::NoEntryPoint,
        ErrorKind::NotDeclared,
        ErrorKind::Conflict,
        ErrorKind::Store,
        ErrorKind::NotFound,
        ErrorKind::State,
        ErrorKind::Unsupported,
        ErrorKind::Policy,
        ErrorKind::Internal,
    ];

    /// The kind with this [`ErrorKind::name`]; an unknown name (a peer of a newer build) is
    /// `Internal`.
    pub fn named(name: &str) -> ErrorKind {
        ErrorKind::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .unwrap_or(ErrorKind::Internal)
    }

    /// The stable status number (`BTB_ERROR_*`).
    pub fn code(self) -> u32 {
        self as u32
    }

    /// The kind's name, as the bindings spell their statuses after it: `NO_TRIGGER` is
    /// `BTB_ERROR_NO_TRIGGER` in C and `NoTriggerError` in Python.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::NullArgument => "NULL_ARGUMENT",
            ErrorKind::InvalidHandle => "INVALID_HANDLE",
            ErrorKind::InvalidArgument => "INVALID_ARGUMENT",
            ErrorKind::InvalidUtf8 => "INVALID_UTF8",
            ErrorKind::NoTrigger => "NO_TRIGGER",
            ErrorKind::NoEntryPoint => "NO_ENTRY_POINT",
            ErrorKind::NotDeclared => "NOT_DECLARED",
            ErrorKind::Conflict => "CONFLICT",
            ErrorKind::Store => "STORE",
            ErrorKind::NotFound => "NOT_FOUND",
            ErrorKind::State => "STATE",
            ErrorKind::Unsupported => "UNSUPPORTED",
            ErrorKind::Policy => "POLICY",
            ErrorKind::Internal => "INTERNAL",
        }
    }
}

/// An error: a kind and a message that names the offending value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
        }
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::InvalidArgument, message)
    }

    pub fn store(path: &str, what: impl fmt::Display) -> Self {
        Error::new(ErrorKind::Store, format!("store {path}: {what}"))
    }

    pub fn state(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::State, message)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_dense_and_stable() {
        for (i, kind) in ErrorKind::ALL.iter().enumerate() {
            assert_eq!(kind.code(), i as u32 + 1);
            assert!(
                kind.name()
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            );
        }
        assert_eq!(ErrorKind::Internal.code(), 14);
    }
}
