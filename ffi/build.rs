//! Sets the soname of the shared library (cargo does not: rust-lang/cargo#5045), so that
//! `libbtb.so.<MAJOR>` is what programs linked against `libbtb.so` record in `DT_NEEDED`.
fn main() {
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").unwrap_or_else(|_| "0".into());
    let target = std::env::var("TARGET").unwrap_or_default();
    if target.contains("linux") || target.contains("bsd") {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libbtb.so.{major}");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
