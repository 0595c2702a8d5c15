//! Strings across the boundary: in = NUL-terminated UTF-8, copied; out = borrowed from the handle
//! (or callback argument) they came from — btb never hands C a string to free (the header's
//! conventions block).

use std::ffi::{CStr, CString, c_char};

use btb_core::{Error, ErrorKind, Result};

use crate::handle::required;

/// Wraps the C string argument `ptr` of an entry point (`None` for NULL). Call it at the top of the
/// entry point; [`arg`] and [`opt_arg`] then check it where the argument is used.
///
/// # Safety
///
/// `ptr` is NULL or points to a NUL-terminated string that stays valid and unchanged during `'a` —
/// the C contract on every string argument of btb ("strings in are NUL-terminated", read during the
/// call). `'a` must not outlive the call.
pub(crate) unsafe fn c_str<'a>(ptr: *const c_char) -> Option<&'a CStr> {
    if ptr.is_null() {
        None
    } else {
        // SAFETY: non-NULL, and NUL-terminated and valid during `'a` by the caller's promise.
        Some(unsafe { CStr::from_ptr(ptr) })
    }
}

/// A required string argument: NULL is `BTB_ERROR_NULL_ARGUMENT`, bad UTF-8 `BTB_ERROR_INVALID_UTF8`.
pub(crate) fn arg<'a>(s: Option<&'a CStr>, what: &str) -> Result<&'a str> {
    let s = required(s, what)?;
    std::str::from_utf8(s.to_bytes()).map_err(|e| {
        Error::new(
            ErrorKind::InvalidUtf8,
            format!(
                "{what} is not valid UTF-8 (invalid byte at offset {})",
                e.valid_up_to()
            ),
        )
    })
}

/// An optional string argument (NULL = none).
pub(crate) fn opt_arg<'a>(s: Option<&'a CStr>, what: &str) -> Result<Option<&'a str>> {
    s.map(|s| arg(Some(s), what)).transpose()
}

/// Reads an array of `n` C strings (copied).
///
/// # Safety
///
/// When `n` is not 0, `ptr` is NULL or points to `n` readable pointers, each NULL or a
/// NUL-terminated string, all valid during the call (the C contract of string arrays).
pub(crate) unsafe fn arg_array(
    ptr: *const *const c_char,
    n: usize,
    what: &str,
) -> Result<Vec<String>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    if ptr.is_null() {
        return Err(Error::new(
            ErrorKind::NullArgument,
            format!("{what} is NULL but its length is {n}"),
        ));
    }
    // SAFETY: non-NULL, and `n` readable pointers by the caller's promise.
    let items = unsafe { std::slice::from_raw_parts(ptr, n) };
    items
        .iter()
        .enumerate()
        // SAFETY: each item is NULL or a NUL-terminated string valid during the call (as above).
        .map(|(i, p)| arg(unsafe { c_str(*p) }, &format!("{what}[{i}]")).map(str::to_owned))
        .collect()
}

/// A C copy of a Rust string (interior NULs cannot occur: inputs were C strings or validated).
pub(crate) fn c_string(s: &str) -> CString {
    CString::new(s).unwrap_or_else(|_| CString::new(s.replace('\0', "")).expect("no NUL"))
}
