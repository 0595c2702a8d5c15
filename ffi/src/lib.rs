//! The C ABI of btb. Every export is a literal no-mangle `pub extern "C" fn` whose body
//! runs inside [`error::guard`] (or `guard_value` for infallible getters), so no panic crosses the
//! boundary. Handles are tagged, generation-checked table entries ([`handle`]), never raw pointers.
//!
//! Other pointer arguments — out-parameters, strings, arrays — point to the caller's memory, and
//! btb relies on the C contract documented on each function. An export turns each such pointer
//! into a checked Rust view in one `unsafe` block whose SAFETY comment states what C promised
//! (`handle::Out` for out-parameters, written by a safe `write`; `handle::OutArray`;
//! `strings::c_str`; `strings::arg_array`; `<*const T>::as_ref`), at its top or at the top of the
//! closure that uses it. Such an export carries `#[expect(clippy::not_unsafe_ptr_arg_deref)]`: it
//! is a safe Rust function whose soundness rests on its caller, as every C function's does, and
//! the expectation marks exactly those exports. Apart from those `unsafe fn` conversions, no
//! function dereferences a pointer it was given.
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
