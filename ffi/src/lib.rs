//! The C ABI of btb. Every export is a literal no-mangle `pub extern "C" fn` whose body
//! runs inside [`error::guard`] (or `guard_value` for infallible getters), so no panic crosses the
//! boundary. Handles are tagged, generation-checked table entries ([`handle`]), never raw pointers.
//!
//! Other pointer arguments — out-parameters, strings, arrays, callbacks with their `user_data` —
//! belong to the caller, and btb relies on the C contract documented on each function. Every export
//! that takes one is a `pub unsafe extern "C" fn` whose `# Safety` section says what the caller
//! promises (the C declaration is the same: C has no `unsafe`); exports that take only handles and
//! values stay safe. Inside, each such pointer becomes a checked Rust view in one `unsafe` block
//! whose SAFETY comment states what C promised (`handle::Out` for out-parameters, written by a safe
//! `write`; `handle::OutArray`; `strings::c_str`; `strings::arg_array`; `<*const T>::as_ref`), at
//! its top or at the top of the closure that uses it. Clippy's `not_unsafe_ptr_arg_deref` (denied by
//! default) fails the build when a safe export dereferences a pointer argument.
#![allow(non_camel_case_types)]

pub mod builder;
pub mod constants;
pub mod error;
pub mod handle;
pub mod instance;
pub mod log;
pub mod registration;
pub mod retry;
pub mod strings;
pub mod system;
pub mod trigger;

pub use error::btb_status;

use std::ffi::c_char;

/// Major version of the btb library this header belongs to.
pub const BTB_VERSION_MAJOR: u32 = 0;
/// Minor version.
pub const BTB_VERSION_MINOR: u32 = 1;
/// Patch version.
pub const BTB_VERSION_PATCH: u32 = 0;

/// The version of the loaded library, e.g. `"0.1.0"` (compare with `BTB_VERSION_*` to detect a
/// header/library mismatch). Static string, never NULL. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn btb_version() -> *const c_char {
    error::guard_value(c"?".as_ptr(), || {
        static VERSION: &std::ffi::CStr = match std::ffi::CStr::from_bytes_with_nul(
            concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes(),
        ) {
            Ok(v) => v,
            Err(_) => c"?",
        };
        VERSION.as_ptr()
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn version_macros_match_the_crate() {
        assert_eq!(
            super::BTB_VERSION_MAJOR.to_string(),
            env!("CARGO_PKG_VERSION_MAJOR")
        );
        assert_eq!(
            super::BTB_VERSION_MINOR.to_string(),
            env!("CARGO_PKG_VERSION_MINOR")
        );
        assert_eq!(
            super::BTB_VERSION_PATCH.to_string(),
            env!("CARGO_PKG_VERSION_PATCH")
        );
        let v = unsafe { std::ffi::CStr::from_ptr(super::btb_version()) };
        assert_eq!(v.to_str().unwrap(), btb_core::VERSION);
    }
}
