//! The C ABI of btb. Every export is a literal no-mangle `pub extern "C" fn` whose body
//! runs inside [`error::guard`] (or `guard_value` for infallible getters), so no panic crosses the
//! boundary. Handles are tagged, generation-checked table entries ([`handle`]), never raw pointers.
#![allow(non_camel_case_types)]
#![allow(clippy::not_unsafe_ptr_arg_deref)] // handles are table keys; raw pointers are checked before use

pub mod builder;
pub mod constants;
pub mod error;
pub mod handle;
pub mod instance;
pub mod registration;
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
