//! The memory of an idle `btbd` holding an app with 100 registrations (SPEC §10), next to a
//! minimal process that opens the same SQLite store and waits: this bench binary re-run with
//! `--sqlite-idle STORE` (rusqlite only; btb's code is linked in but never runs, so none of it is
//! resident). systemd's own `systemd --user` cannot be measured here: PID 1 is not systemd.
//!
//!   cargo bench -p btb-tools --bench btbd_rss

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use btb_core::*;

const TASKS: usize = 100;

/// Starts `cmd`, waits for its first stdout line, returns the child and its VmRSS in KiB.
fn start(mut cmd: Command) -> (Child, u64) {
    let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap();
    (child, rss)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--sqlite-idle") {
        let conn = rusqlite::Connection::open(&args[i + 1]).unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM registrations", [], |r| r.get(0))
            .unwrap();
        println!("ready {n}");
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line); // idle until the bench closes stdin
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("btb.sqlite3");
    let manifest = dir.path().join("manifest.toml");
    std::fs::write(
        &manifest,
        "app_id = \"org.example.bench.btbd\"\nversion = \"1\"\n\n[[task]]\nentry_point = \"app.Sync\"\n\
         types = [\"timer\", \"general\"]\nexec = [\"/bin/true\"]\n",
    )
    .unwrap();
    let sys = System::open(SystemOptions {
        manifest: Some(Manifest::load(&manifest).unwrap()),
        store: StoreLocation::File(store.clone()),
        simulated: true,
        policy: Policy {
            durability: Durability::Normal,
            ..Policy::default()
        },
        ..SystemOptions::default()
    })
    .unwrap();
    for i in 0..TASKS {
        let mut b = Builder::new();
        b.name = Some(format!("sync-{i}"));
        b.task_entry_point = Some("app.Sync".into());
        b.set_trigger(Trigger::Time {
            freshness_minutes: 60 + i as u32,
            one_shot: false,
        });
        sys.register(&b).unwrap();
    }
    sys.close().unwrap();

    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    let mut btbd = Command::new(env!("CARGO_BIN_EXE_btbd"));
    btbd.arg("--manifest")
        .arg(&manifest)
        .arg("--store")
        .arg(&store)
        .env("XDG_RUNTIME_DIR", &run)
        .env("RUST_LOG", "warn");
    let (mut daemon, daemon_rss) = start(btbd);
    let mut minimal = Command::new(std::env::current_exe().unwrap());
    minimal
        .arg("--sqlite-idle")
        .arg(&store)
        .stdin(Stdio::piped());
    let (mut sqlite, sqlite_rss) = start(minimal);
    println!(
        "RESULT idle btbd with {TASKS} registrations: VmRSS {daemon_rss} KiB; a process holding the \
         same SQLite store open: {sqlite_rss} KiB; ratio {:.2}x",
        daemon_rss as f64 / sqlite_rss as f64
    );
    let _ = daemon.kill();
    let _ = daemon.wait();
    drop(sqlite.stdin.take());
    let _ = sqlite.wait();
}
