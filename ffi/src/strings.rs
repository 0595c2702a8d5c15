//! Strings across the boundary: in = NUL-terminated UTF-8, copied; out = owned (`btb_string_free`)
//! or borrowed from a handle, as each function documents.

use std::ffi::{CStr, CString, c_char};

use btb_core::{Error, ErrorKind, Result};

use crate::error::{btb_status, guard};

/// Reads a required C string argument.
pub(crate) fn arg<'a>(ptr: *const c_char, what: &str) -> Result<&'a str> {
    if ptr.is_null() {
        return Err(Error::new(
            ErrorKind::NullArgument,
            format!("{what} is NULL"),
        ));
    }
    // SAFETY: the caller promises a NUL-terminated string that lives for the call (documented).
    let bytes = unsafe { CStr::from_ptr(ptr) }.to_bytes();
    std::str::from_utf8(bytes).map_err(|e| {
        Error::new(
            ErrorKind::InvalidUtf8,
            format!(
                "{what} is not valid UTF-8 (invalid byte at offset {})",
                e.valid_up_to()
            ),
        )
    })
}

/// Reads an optional C string argument (NULL = none).
pub(crate) fn opt_arg<'a>(ptr: *const c_char, what: &str) -> Result<Option<&'a str>> {
    if ptr.is_null() {
        Ok(None)
    } else {
        arg(ptr, what).map(Some)
    }
}

/// Reads an array of `n` C strings.
pub(crate) fn arg_array(ptr: *const *const c_char, n: usize, what: &str) -> Result<Vec<String>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    if ptr.is_null() {
        return Err(Error::new(
            ErrorKind::NullArgument,
            format!("{what} is NULL but its length is {n}"),
        ));
    }
    // SAFETY: the caller promises `n` readable pointers (documented).
    let items = unsafe { std::slice::from_raw_parts(ptr, n) };
    items
        .iter()
        .enumerate()
        .map(|(i, p)| arg(*p, &format!("{what}[{i}]")).map(str::to_owned))
        .collect()
}

/// A C copy of a Rust string (interior NULs cannot occur: inputs were C strings or validated).
pub(crate) fn c_string(s: &str) -> CString {
    CString::new(s).unwrap_or_else(|_| CString::new(s.replace('\0', "")).expect("no NUL"))
}

/// An owned C string for an out-parameter; the caller frees it with `btb_string_free`.
pub(crate) fn owned(s: &str) -> *mut c_char {
    c_string(s).into_raw()
}

/// Frees a string that btb returned as owned. NULL is a no-op. Passing any other pointer, or
/// freeing twice, is undefined behaviour (as with `free`). Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn btb_string_free(string: *mut c_char) -> btb_status {
    guard(|| {
        if !string.is_null() {
            // SAFETY: documented: `string` came from btb's `CString::into_raw` and is freed once.
            drop(unsafe { CString::from_raw(string) });
        }
        Ok(())
    })
}
