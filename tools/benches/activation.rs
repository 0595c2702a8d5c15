//! Activation (SPEC §12), next to its limit measured in the same run: fire → run start in an app
//! that a real `btbd` starts for background work, vs a bare `posix_spawn` of the same binary that
//! connects to a Unix socket and writes one byte.
//!
//! The app is this bench binary. Started by btbd (`BTB_ACTIVATION=1`, as `activate` in the
//! manifest says), it does what `examples-c/activated.c` does — opens its system (a client of
//! btbd), offers its run function, serves, exits — and its run function prints CLOCK_MONOTONIC to
//! its stdout (btbd's, read here). Run with `--bare SOCKET`, it connects to the socket, writes one
//! byte and prints CLOCK_MONOTONIC. Both paths so pay the same exec and process start-up of the
//! same binary and differ only by what btb adds: the request to btbd, its dispatch, the start of
//! the app by btbd, the app opening its system and offering its handler, the hand-over of the run.
//! A Rust app rather than the C example: the C example has no bare mode to compare with, and
//! both sides must be one binary.
//!
//! The fire is `Registration::request` from this process, a client of btbd that offers no run
//! function; each fire follows the exit of the app started for the previous one.
//!
//!   cargo bench -p btb-tools --bench activation [-- N]

use std::ffi::CString;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use btb_core::*;

const APP: &str = "org.example.bench.activation";
const ENTRY_POINT: &str = "bench.Activated";
const DEADLINE: Duration = Duration::from_secs(30);

fn now_ns() -> i128 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    i128::from(t.tv_sec) * 1_000_000_000 + i128::from(t.tv_nsec)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn summary(name: &str, mut samples: Vec<f64>) -> (f64, f64) {
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let (p50, p99) = (percentile(&samples, 0.5), percentile(&samples, 0.99));
    println!(
        "{name:<44} n={:<5} p50 {:>9.0} µs   p99 {:>9.0} µs",
        samples.len(),
        p50,
        p99
    );
    (p50, p99)
}

/// Started by btbd: serve the run, exit once none is left (as `examples-c/activated.c`). The run
/// function prints its start and, to split the time, when `main` began and when the system was
/// open. (No stamp for the offer: btbd may hand the run, and the run function start, before
/// `register_entry_point` returns.)
fn activated(main_ns: i128) {
    let manifest = std::env::var("BTB_MANIFEST").expect("btbd sets BTB_MANIFEST");
    let store = std::env::var("BTB_STORE").expect("btbd sets BTB_STORE");
    let system = System::open(SystemOptions {
        manifest: Some(Manifest::load(&manifest).unwrap()),
        store: StoreLocation::File(store.into()),
        ..SystemOptions::default()
    })
    .unwrap();
    let opened_ns = now_ns();
    assert!(!system.is_broker(), "the activated app is btbd's client");
    system
        .register_entry_point(
            ENTRY_POINT,
            Some(Handler::Call(Arc::new(move |_| {
                let started = now_ns();
                let mut out = std::io::stdout().lock();
                writeln!(out, "run-start {started} {main_ns} {opened_ns}").unwrap();
                out.flush().unwrap();
            }))),
        )
        .unwrap();
    assert!(system.serve_activation(DEADLINE).unwrap());
    system.close().unwrap();
}

/// The limit's child: connect, write one byte, print when that was done (and when `main` began).
fn bare(socket: &str, main_ns: i128) {
    let mut stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
    stream.write_all(&[1]).unwrap();
    println!("{} {main_ns}", now_ns());
}

/// The lines a child writes to one of its pipes, read on a thread as they come.
fn lines(pipe: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The first line that contains `needle`, within [`DEADLINE`].
fn wait_line(rx: &mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = Instant::now() + DEADLINE;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(line) => seen.push(line),
            Err(_) => panic!("no line with {needle:?} in time; saw:\n{}", seen.join("\n")),
        }
    }
}

/// A bare `posix_spawn` of `exe --bare SOCKET` with btbd's environment for an activated app:
/// spawn → the child has connected and written its byte (its own stamp); and spawn → its `main`.
fn posix_spawn_once(
    exe: &CString,
    listener: &std::os::unix::net::UnixListener,
    socket: &Path,
) -> (f64, f64) {
    use nix::spawn::{PosixSpawnAttr, PosixSpawnFileActions, posix_spawn};
    let (r, w) = nix::unistd::pipe().unwrap();
    let mut actions = PosixSpawnFileActions::init().unwrap();
    actions.add_dup2(w.as_raw_fd(), 1).unwrap();
    let attr = PosixSpawnAttr::init().unwrap();
    let args = [
        exe.clone(),
        CString::new("--bare").unwrap(),
        CString::new(socket.display().to_string()).unwrap(),
    ];
    let env = [
        CString::new("PATH=/usr/local/bin:/usr/bin:/bin").unwrap(),
        CString::new(format!(
            "XDG_RUNTIME_DIR={}",
            std::env::var("XDG_RUNTIME_DIR").unwrap()
        ))
        .unwrap(),
    ];
    let t0 = now_ns();
    let pid = posix_spawn(exe.as_c_str(), &actions, &attr, &args, &env).unwrap();
    drop(w);
    let (mut conn, _) = listener.accept().unwrap();
    let mut byte = [0u8];
    conn.read_exact(&mut byte).unwrap();
    let mut out = String::new();
    std::fs::File::from(r).read_to_string(&mut out).unwrap();
    nix::sys::wait::waitpid(pid, None).unwrap();
    let stamps = stamps(out.trim(), 2);
    (us(t0, stamps[0]), us(t0, stamps[1]))
}

fn stamps(text: &str, n: usize) -> Vec<i128> {
    let stamps: Vec<i128> = text
        .split(' ')
        .map(|s| s.parse().expect("a CLOCK_MONOTONIC stamp"))
        .collect();
    assert_eq!(stamps.len(), n, "{text}");
    stamps
}

fn us(from: i128, to: i128) -> f64 {
    (to - from) as f64 / 1000.0
}

fn main() {
    let main_ns = now_ns();
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for a list
    }
    if std::env::var("BTB_ACTIVATION").as_deref() == Ok("1") {
        activated(main_ns);
        return;
    }
    if let Some(at) = args.iter().position(|a| a == "--bare") {
        bare(&args[at + 1], main_ns);
        return;
    }
    let n: usize = args
        .iter()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100);
    let dir = tempfile::tempdir().unwrap();
    let runtime = dir.path().join("run");
    std::fs::create_dir(&runtime).unwrap();
    // SAFETY: no other thread runs yet. This process (btbd's client), btbd and the app it starts
    // meet at this directory's control socket, not at the user's.
    unsafe { std::env::set_var("XDG_RUNTIME_DIR", &runtime) };
    let exe = std::env::current_exe().unwrap();
    let manifest = dir.path().join("manifest.toml");
    std::fs::write(
        &manifest,
        format!(
            "app_id = \"{APP}\"\nversion = \"1\"\nactivate = [{:?}]\n\n[[task]]\n\
             entry_point = \"{ENTRY_POINT}\"\ntypes = [\"general\"]\n",
            exe.display().to_string()
        ),
    )
    .unwrap();
    let store = dir.path().join("btb.sqlite3");

    let mut btbd = Command::new(env!("CARGO_BIN_EXE_btbd"))
        .arg("--manifest")
        .arg(&manifest)
        .arg("--store")
        .arg(&store)
        .env_remove("BTB_ACTIVATION")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = lines(btbd.stdout.take().unwrap());
    let stderr = lines(btbd.stderr.take().unwrap());
    wait_line(&stdout, "btbd: ready");

    let client = System::open(SystemOptions {
        manifest: Some(Manifest::load(&manifest).unwrap()),
        store: StoreLocation::File(store.clone()),
        simulated: true,
        ..SystemOptions::default()
    })
    .unwrap();
    assert!(!client.is_broker(), "btbd holds the store");
    let mut b = Builder::new();
    b.name = Some("sync".into());
    b.task_entry_point = Some(ENTRY_POINT.into());
    b.set_trigger(Trigger::application());
    let reg = client.register(&b).unwrap();

    let socket = dir.path().join("bare.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let exe_c = CString::new(exe.display().to_string()).unwrap();
    let warmup = 5;
    let (mut activation, mut spawn) = (Vec::with_capacity(n), Vec::with_capacity(n));
    // Where the activation's time goes: fire → app's main, main → system open, open → run start
    // (the offer, `serve_activation`, the hand-over); and the bare spawn → main.
    let mut parts: [Vec<f64>; 4] = Default::default();
    for i in 0..n + warmup {
        // Interleaved, so that both see the same machine.
        let t0 = now_ns();
        assert_eq!(
            reg.request(None).unwrap(),
            ApplicationTriggerResult::Allowed
        );
        let line = wait_line(&stdout, "run-start ");
        let [started, main, opened] = stamps(&line["run-start ".len()..], 3)[..] else {
            unreachable!()
        };
        // The next fire must start the app again, not find this one still offering its handler.
        let exited = wait_line(&stderr, "the activated app (pid");
        assert!(exited.contains("exited with status 0"), "{exited}");
        let (bare_us, bare_main_us) = posix_spawn_once(&exe_c, &listener, &socket);
        if i >= warmup {
            activation.push(us(t0, started));
            spawn.push(bare_us);
            for (part, value) in parts.iter_mut().zip([
                us(t0, main),
                us(main, opened),
                us(opened, started),
                bare_main_us,
            ]) {
                part.push(value);
            }
        }
    }
    client.close().unwrap();
    let _ = btbd.kill();
    let _ = btbd.wait();

    println!("fire -> run start in an activated app, {n} runs each (µs):");
    let (a50, a99) = summary("btbd activates the app -> run fn starts", activation);
    let (s50, s99) = summary("posix_spawn -> connect + 1 byte (limit)", spawn);
    println!("where the time goes (µs):");
    let [to_main, to_open, to_run, bare_main] = parts;
    summary("  fire -> the app's main (btbd, fork, exec)", to_main);
    summary("  main -> system open (a client of btbd)", to_open);
    summary("  open -> run fn starts (offer, hand-over)", to_run);
    summary("  posix_spawn -> child's main", bare_main);
    println!(
        "RESULT activation: btb p50 {a50:.0} µs p99 {a99:.0} µs; posix_spawn p50 {s50:.0} µs p99 {s99:.0} µs; ratio p50 {:.2}x, p99 {:.2}x (target <= 1.5x)",
        a50 / s50,
        a99 / s99
    );
}
