//! Compiles the C programs against the library and header built by this `cargo test` and runs them:
//! the header alone as C11 and C++17 with `-Werror -pedantic`, the ABI and runtime tests plain,
//! under AddressSanitizer and under valgrind, and the C examples (one of them started by a real
//! btbd, which this test builds). Needs `cc`, `c++` and `valgrind`.

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

/// A command for a C program that gets a runtime directory of its own under `scratch`: brokers
/// listen on `$XDG_RUNTIME_DIR/btb/<app id>.sock`, and the suites run at once (plain, ASan,
/// valgrind) with the same app ids — sharing the user's directory, one suite's broker answered
/// another suite's client ("serves store …, not this store").
fn isolated(program: impl AsRef<std::ffi::OsStr>, scratch: &Path) -> Command {
    let runtime = scratch.join("run");
    std::fs::create_dir_all(&runtime).unwrap();
    let mut cmd = Command::new(program);
    cmd.env("XDG_RUNTIME_DIR", runtime);
    cmd
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
        .args(["-std=c11", "-g", "-Wall", "-Wextra", "-Werror", "-pedantic"])
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

/// Compiles `tests/c/<program>.c`, runs it (under `wrapper`, if any) with a scratch directory, and
/// checks its summary line: no failure, and at least `min_checks` checks ran.
fn c_tests(program: &str, min_checks: u32, wrapper: &[&str], extra_cflags: &[&str]) {
    let scratch = tempfile::tempdir().unwrap();
    let lib = linkable(scratch.path());
    let exe = scratch.path().join(program);
    compile(
        "cc",
        &root().join(format!("tests/c/{program}.c")),
        &exe,
        &lib,
        extra_cflags,
    );
    let work = scratch.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let mut cmd = isolated(
        wrapper.first().copied().unwrap_or(exe.to_str().unwrap()),
        scratch.path(),
    );
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
    assert!(passed > min_checks, "only {passed} checks ran");
}

const ASAN: &[&str] = &["-fsanitize=address", "-fno-omit-frame-pointer"];

const VALGRIND: &[&str] = &[
    "valgrind",
    "-q",
    "--error-exitcode=9",
    "--leak-check=full",
    "--show-leak-kinds=definite",
    "--errors-for-leak-kinds=definite",
    // Forked children exit at once with the parent's system open (test_abi), or exec a fresh,
    // untraced image (test_runtime): their verdicts travel through pipes, not exit codes.
    "--child-silent-after-fork=yes",
];

fn abi_tests(wrapper: &[&str], extra_cflags: &[&str]) {
    c_tests("test_abi", 300, wrapper, extra_cflags);
}

fn runtime_tests(wrapper: &[&str], extra_cflags: &[&str]) {
    c_tests("test_runtime", 1000, wrapper, extra_cflags);
}

/// Host processes are this same program started again by the broker (`--host`), not traced by
/// valgrind (it follows no exec); plain and under ASan, where each process checks itself.
fn host_tests(extra_cflags: &[&str]) {
    c_tests("test_host", 25, &[], extra_cflags);
}

#[test]
fn host_processes() {
    host_tests(&[]);
}

#[test]
fn host_processes_with_asan() {
    host_tests(ASAN);
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
    abi_tests(&[], ASAN);
}

#[test]
fn abi_tests_pass_under_valgrind() {
    abi_tests(VALGRIND, &[]);
}

#[test]
fn runtime_tests_pass() {
    runtime_tests(&[], &[]);
}

#[test]
fn runtime_tests_pass_under_address_sanitizer() {
    runtime_tests(&[], ASAN);
}

#[test]
fn runtime_tests_pass_under_valgrind() {
    runtime_tests(VALGRIND, &[]);
}

/// The log hook (`tests/c/test_log.c`): btb's log lines reach a C callback; replacing and
/// removing it frees its user data.
#[test]
fn log_lines_reach_a_c_callback() {
    c_tests("test_log", 25, &[], &[]);
    c_tests("test_log", 25, &[], ASAN);
}

/// Microsoft's BackgroundTask sample, transliterated to C (`tests/c/test_windows_sample.c`).
#[test]
fn the_windows_background_task_sample_ports_line_by_line() {
    c_tests("test_windows_sample", 40, &[], &[]);
    c_tests("test_windows_sample", 40, &[], ASAN);
}

#[test]
fn c_example_registers_lists_fails_and_unregisters() {
    let scratch = tempfile::tempdir().unwrap();
    let lib = linkable(scratch.path());
    let exe = scratch.path().join("register");
    compile("cc", &root().join("examples-c/register.c"), &exe, &lib, &[]);
    let out = run(&mut isolated(&exe, scratch.path()));
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

/// Builds `examples-c/<name>.c` (plain, or with AddressSanitizer) and returns its output.
fn run_example(name: &str, extra_cflags: &[&str]) -> String {
    let scratch = tempfile::tempdir().unwrap();
    let lib = linkable(scratch.path());
    let exe = scratch.path().join(name);
    compile(
        "cc",
        &root().join(format!("examples-c/{name}.c")),
        &exe,
        &lib,
        extra_cflags,
    );
    run(&mut isolated(&exe, scratch.path()))
}

#[test]
fn c_examples_run_tasks_and_drain_the_pull_queue() {
    for cflags in [&[][..], ASAN] {
        let out = run_example("tasks", cflags);
        for expected in [
            "main: request -> ALLOWED\n",
            "main: request while it runs -> CURRENTLY_RUNNING (not queued)\n",
            "upload: running on a btb worker thread with arguments {\"file\":\"notes.txt\",\"size\":1024}\n",
            "upload: took a deferral;",
            "main: still running: its deferral is not completed yet\n",
            "worker thread: upload done, completing the deferral\n",
            "upload: progress 10% (instance ",
            "upload: progress 100% (instance ",
            "sync: ran at 2030-01-01 00:15:00 UTC\n",
            "sync: ran at 2030-01-01 00:30:00 UTC\n",
            "history of \"upload\": 1 run(s)\n",
            "application trigger {\"file\":\"notes.txt\",\"size\":1024}  SUCCEEDED, progress 100",
            "history of \"sync\": 2 run(s)\n",
        ] {
            assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
        }
        // The deferral holds the completion back until the worker thread completes it.
        let worker = out.find("worker thread: upload done").unwrap();
        let completed = out.find("upload: completed SUCCEEDED").expect(&out);
        let still_running = out.find("main: still running").unwrap();
        assert!(still_running < worker && worker < completed, "{out}");
        assert!(
            !out.contains("sync: ran at 2030-01-01 00:14"),
            "sync ran early: {out}"
        );
        assert_eq!(out.matches("sync: completed SUCCEEDED").count(), 2, "{out}");

        let out = run_example("pull_queue", cflags);
        for expected in [
            "host: request \"resize\" {\"image\":\"a.png\"} -> ALLOWED\n",
            "host: request \"upload\" {\"file\":\"b.txt\"} -> ALLOWED\n",
            "host: request \"resize\" {\"image\":\"c.png\"} -> CURRENTLY_RUNNING\n",
            "host: run \"resize\" with {\"image\":\"a.png\"}\n",
            "host: run \"upload\" with {\"file\":\"b.txt\"}\n",
            "host: canceled (CONDITION_LOSS): stopping the job\n",
            "host: request \"resize\" {\"image\":\"c.png\"} -> ALLOWED\n",
            "host: run \"resize\" with {\"image\":\"c.png\"}\n",
            "host: idle: yes\n",
            "  resize  {\"image\":\"a.png\"} SUCCEEDED, progress 100\n",
            "  resize  {\"image\":\"c.png\"} SUCCEEDED, progress 100\n",
            "  upload  {\"file\":\"b.txt\"} CANCELED, progress 30: canceled: CONDITION_LOSS\n",
        ] {
            assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
        }
    }
}

#[test]
fn c_example_runs_a_task_in_a_child_process() {
    for cflags in [&[][..], ASAN] {
        let out = run_example("host", cflags);
        let app_pid = out
            .split("app pid ")
            .nth(1)
            .and_then(|s| s.split(':').next())
            .expect(&out);
        let child_pid = out
            .split("child pid ")
            .nth(1)
            .and_then(|s| s.split(':').next())
            .expect(&out);
        assert_ne!(app_pid, child_pid, "the task ran in another process: {out}");
        for expected in [
            "app: progress 25%\n",
            "app: progress 100%\n",
            "app: completed SUCCEEDED\n",
            "app: the child's stdout, kept with the run: child pid ",
            "indexing {\"folder\":\"notes\"}\n",
        ] {
            assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
        }
    }
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

/// `target/<profile>` after building btbd and btbctl there (`cargo test -p btb-ffi` builds only
/// this crate).
fn tools_dir() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dir = lib_dir();
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.args([
                "build",
                "-p",
                "btb-tools",
                "--bin",
                "btbd",
                "--bin",
                "btbctl",
            ]);
            if dir.file_name().is_some_and(|n| n == "release") {
                cmd.arg("--release");
            }
            run(&mut cmd);
            dir
        })
        .clone()
}

const DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// The lines a child writes to one of its pipes, read on a thread as they come.
fn lines(pipe: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits, at most until `deadline`, for a line that contains `needle`; returns it with the lines
/// seen before it.
fn wait_line(
    rx: &std::sync::mpsc::Receiver<String>,
    needle: &str,
    deadline: std::time::Instant,
    what: &str,
) -> String {
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(line) => seen.push(line),
            Err(_) => panic!(
                "{what}: no line with {needle:?} in time; saw:\n{}",
                seen.join("\n")
            ),
        }
    }
}

/// Activation with a C app (SPEC §12): btbd holds the store with no app code; the task's run
/// function is only in `examples-c/activated.c`, which the manifest's `activate` names. The app
/// registers the task and exits; `btbctl run` fires it; btbd starts the app (clean environment,
/// `BTB_ACTIVATION=1`), which opens its system as btbd's client, offers its run function, serves
/// the run from `btb_system_serve_activation` and exits 0 once nothing is left; the run is
/// recorded SUCCEEDED with the output the app set. Plain and under AddressSanitizer (a leak or
/// an error makes the app exit non-zero, which btbd logs).
#[test]
fn btbd_activates_a_c_app_that_exits_once_it_has_served() {
    for cflags in [&[][..], ASAN] {
        btbd_activates_a_c_app(cflags, &[]);
    }
}

/// The same, with the manifest's `activate` starting the app under valgrind (an error or a
/// definite leak makes it exit 9, which btbd logs).
#[test]
fn btbd_activates_a_c_app_under_valgrind() {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let valgrind = std::env::split_paths(&path)
        .map(|dir| dir.join("valgrind"))
        .find(|p| p.is_file())
        .expect("valgrind on PATH");
    let mut wrapper = vec![valgrind.display().to_string()];
    wrapper.extend(VALGRIND[1..].iter().map(|a| a.to_string()));
    btbd_activates_a_c_app(&[], &wrapper);
}

/// `wrapper`: what `activate` runs the app under (absolute path first), if anything.
fn btbd_activates_a_c_app(cflags: &[&str], wrapper: &[String]) {
    let scratch = tempfile::tempdir().unwrap();
    let lib = linkable(scratch.path());
    let app = scratch.path().join("activated");
    compile(
        "cc",
        &root().join("examples-c/activated.c"),
        &app,
        &lib,
        cflags,
    );
    let runtime = scratch.path().join("run");
    std::fs::create_dir(&runtime).unwrap();
    let manifest = scratch.path().join("manifest.toml");
    std::fs::write(
        &manifest,
        format!(
            "app_id = \"org.example.activated\"\nversion = \"1\"\nactivate = {}\n\
             [[task]]\nentry_point = \"notes.Sync\"\ntypes = [\"general\"]\n",
            serde_json::json!([wrapper, &[app.display().to_string()]].concat())
        ),
    )
    .unwrap();
    let store = scratch.path().join("btb.sqlite3");
    let tools = tools_dir();
    // Every process of the test (and the app btbd starts, which keeps XDG_RUNTIME_DIR) meets at
    // this runtime directory's control socket, not at the user's.
    let command = |program: &Path| {
        let mut cmd = Command::new(program);
        cmd.env("XDG_RUNTIME_DIR", &runtime)
            .env_remove("BTB_MANIFEST")
            .env_remove("BTB_STORE")
            .env_remove("BTB_ACTIVATION");
        cmd
    };
    let btbctl = |args: &[&str]| {
        run(command(&tools.join("btbctl"))
            .arg("--manifest")
            .arg(&manifest)
            .arg("--store")
            .arg(&store)
            .args(args))
    };

    // The user opens the app once: it registers the task and closes.
    let out = run(command(&app).arg(&manifest).arg(&store));
    assert!(out.contains("registered \"sync\""), "{out}");

    let mut btbd = command(&tools.join("btbd"))
        .arg("--manifest")
        .arg(&manifest)
        .arg("--store")
        .arg(&store)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = lines(btbd.stdout.take().unwrap());
    let stderr = lines(btbd.stderr.take().unwrap());
    let deadline = std::time::Instant::now() + DEADLINE;
    let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_line(&stdout, "btbd: ready", deadline, "btbd");
        btbctl(&["run", "sync", "--args", r#"{"folder":"notes"}"#]);
        // The activated app prints to btbd's stdout (inherited); btbd logs its start and exit.
        let started = wait_line(
            &stderr,
            "started the app for background work",
            deadline,
            "btbd",
        );
        let pid = started
            .split("(pid ")
            .nth(1)
            .and_then(|s| s.split(')').next())
            .expect(&started)
            .to_owned();
        let synced = wait_line(&stdout, "syncing", deadline, "the app");
        assert_eq!(
            synced,
            format!(r#"activated pid {pid}: syncing {{"folder":"notes"}}"#)
        );
        let served = wait_line(&stdout, "activated pid", deadline, "the app");
        assert_eq!(
            served,
            format!("activated pid {pid}: nothing left to serve, exiting (a client of btbd: yes)")
        );
        let exited = wait_line(&stderr, "the activated app", deadline, "btbd");
        assert!(
            exited.contains(&format!(
                "the activated app (pid {pid}) exited with status 0"
            )),
            "{exited}"
        );
        let history: serde_json::Value =
            serde_json::from_str(&btbctl(&["history", "sync", "--json"])).unwrap();
        let runs = history.as_array().expect("a JSON array of runs");
        assert_eq!(runs.len(), 1, "{history}");
        assert_eq!(runs[0]["status"], "SUCCEEDED", "{history}");
        assert_eq!(
            runs[0]["output"]["served_by"].to_string(),
            pid,
            "the run's output is the activated app's: {history}"
        );
    }));
    let _ = btbd.kill();
    let _ = btbd.wait();
    if let Err(panic) = checked {
        std::panic::resume_unwind(panic);
    }
}
