//! Compiles the C programs against the library and header built by this `cargo test` and runs them:
//! the header alone as C11 and C++17 with `-Werror -pedantic`, the ABI tests plain, under
//! AddressSanitizer and under valgrind, and the C example. Needs `cc`, `c++` and `valgrind`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `target/<profile>`, after building the cdylib there: `cargo test` links integration tests
/// against the rlib and does not (re)build `libbtb.so` itself.
fn lib_dir() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().unwrap();
            let dir = exe.parent().unwrap().parent().unwrap().to_owned();
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.args(["build", "--lib", "-p", "btb-ffi"]);
            if dir.file_name().is_some_and(|n| n == "release") {
                cmd.arg("--release");
            }
            run(&mut cmd);
            dir
        })
        .clone()
}

/// A directory with `libbtb.so` and its soname link `libbtb.so.0`.
fn linkable(scratch: &Path) -> PathBuf {
    let so = lib_dir().join("libbtb.so");
    assert!(
        so.exists(),
        "{} missing: cargo test builds the cdylib of btb-ffi",
        so.display()
    );
    let dir = scratch.join("lib");
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["libbtb.so", "libbtb.so.0"] {
        let link = dir.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&so, &link).unwrap();
    }
    dir
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    stdout
}

fn compile(compiler: &str, src: &Path, exe: &Path, lib: &Path, extra: &[&str]) {
    run(Command::new(compiler)
        .args(["-std=c11", "-g", "-Wall", "-Wextra", "-Werror"])
        .args(extra)
        .arg("-I")
        .arg(root().join("include"))
        .arg(src)
        .arg("-o")
        .arg(exe)
        .arg(format!("-L{}", lib.display()))
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .args(["-lbtb", "-lpthread"]));
}

fn abi_tests(wrapper: &[&str], extra_cflags: &[&str]) {
    let scratch = tempfile::tempdir().unwrap();
    let lib = linkable(scratch.path());
    let exe = scratch.path().join("test_abi");
    compile(
        "cc",
        &root().join("tests/c/test_abi.c"),
        &exe,
        &lib,
        extra_cflags,
    );
    let work = scratch.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let mut cmd = Command::new(wrapper.first().copied().unwrap_or(exe.to_str().unwrap()));
    if !wrapper.is_empty() {
        cmd.args(&wrapper[1..]).arg(&exe);
    }
    let out = run(cmd
        .arg(&work)
        .env_remove("BTB_MANIFEST")
        .env_remove("BTB_STORE"));
    let last = out.lines().last().unwrap_or("");
    assert!(
        last.ends_with(" passed, 0 failed"),
        "unexpected summary: {last}"
    );
    let passed: u32 = last.split(' ').next().unwrap().parse().unwrap();
    assert!(passed > 300, "only {passed} checks ran");
}

#[test]
fn header_compiles_as_c11_and_cpp17() {
    let scratch = tempfile::tempdir().unwrap();
    let c = scratch.path().join("h.c");
    std::fs::write(
        &c,
        "#include \"btb.h\"\nint main(void) { return btb_version() == 0; }\n",
    )
    .unwrap();
    let cpp = scratch.path().join("h.cpp");
    std::fs::copy(&c, &cpp).unwrap();
    let inc = root().join("include");
    for (compiler, std, src) in [("cc", "-std=c11", &c), ("c++", "-std=c++17", &cpp)] {
        run(Command::new(compiler)
            .args([
                std,
                "-Wall",
                "-Wextra",
                "-Werror",
                "-pedantic",
                "-fsyntax-only",
                "-I",
            ])
            .arg(&inc)
            .arg(src));
    }
}

#[test]
fn abi_tests_pass() {
    abi_tests(&[], &[]);
}

#[test]
fn abi_tests_pass_under_address_sanitizer() {
    abi_tests(&[], &["-fsanitize=address", "-fno-omit-frame-pointer"]);
}

#[test]
fn abi_tests_pass_under_valgrind() {
    abi_tests(
        &[
            "valgrind",
            "-q",
            "--error-exitcode=9",
            "--leak-check=full",
            "--show-leak-kinds=definite",
            "--errors-for-leak-kinds=definite",
            // The fork test's child exits at once with the parent's system open: not a leak.
            "--child-silent-after-fork=yes",
        ],
        &[],
    );
}

#[test]
fn c_example_registers_lists_fails_and_unregisters() {
    let scratch = tempfile::tempdir().unwrap();
    let lib = linkable(scratch.path());
    let exe = scratch.path().join("register");
    compile(
        "cc",
        &root().join("examples-c/register.c"),
        &exe,
        &lib,
        &["-pedantic"],
    );
    let out = run(&mut Command::new(&exe));
    assert!(out.contains("3 registered task(s)"), "{out}");
    assert!(
        out.contains("BTB_ERROR_INVALID_ARGUMENT: time trigger freshness 5 minutes"),
        "{out}"
    );
    assert!(
        out.contains("unregistered \"catch-up\"\n2 registered task(s)"),
        "{out}"
    );
}

#[test]
fn only_btb_symbols_are_exported_and_the_soname_is_set() {
    let so = lib_dir().join("libbtb.so");
    let out = run(Command::new("nm").args(["-D", "--defined-only"]).arg(&so));
    let symbols: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    assert!(symbols.len() > 80, "{symbols:?}");
    let foreign: Vec<&&str> = symbols.iter().filter(|s| !s.starts_with("btb_")).collect();
    assert!(foreign.is_empty(), "exported non-btb symbols: {foreign:?}");
    let dynamic = run(Command::new("readelf").arg("-d").arg(&so));
    assert!(
        dynamic.contains("Library soname: [libbtb.so.0]"),
        "{dynamic}"
    );
}
