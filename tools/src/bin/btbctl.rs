//! `btbctl`: inspect and drive an app's background tasks (SPEC §10).
//!
//! It talks to the app's running broker through its control socket, or — when none runs — reads
//! the store directly (read-only, except `unregister` and `uninstall`). `enable`/`disable` install an app's manifest
//! for `btbd@.service` and enable/disable that unit. Exit status: 0 done, 1 an error (the message on
//! stderr names what failed), 2 a usage error, 3 `enable` installed the manifest but there is no
//! systemd user manager to start btbd (the command that starts it by hand is printed).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use btb_core::control::{Client, Reply, Request};
use btb_core::view::{RunView, StateView, TaskFacts, TaskView};
use btb_core::{Error, ErrorKind, Manifest, Result, Store, StoreLocation};
use clap::{CommandFactory, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "btbctl",
    version,
    about = "Inspect and drive an app's btb background tasks",
    long_about = "Inspect and drive an app's btb background tasks: through its running broker, \
                  or from its store when none runs (read-only then, except unregister).\n\
                  Select the app with --manifest PATH [--store PATH], or --app APP_ID for the \
                  default store location.",
    after_long_help = "Exit status: 0 done; 1 an error (the message on stderr names what failed); \
                       2 a usage error; 3 enable installed the manifest but no systemd user manager \
                       runs to start btbd (the command that starts it by hand is printed)."
)]
struct Cli {
    /// The app's manifest (its app id names the broker and the default store).
    #[arg(long, global = true, value_name = "PATH", conflicts_with = "app")]
    manifest: Option<PathBuf>,
    /// The app's store, if not at the default location.
    #[arg(long, global = true, value_name = "PATH")]
    store: Option<PathBuf>,
    /// The app id (reverse-DNS), for the default store location.
    #[arg(long, global = true, value_name = "APP_ID")]
    app: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the registered tasks.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one task and why it is not running (TASK: a name or a task id).
    Show {
        task: String,
        #[arg(long)]
        json: bool,
    },
    /// The recorded runs of a task, oldest first.
    History {
        task: String,
        #[arg(long)]
        json: bool,
    },
    /// Fire a task now, as if its trigger fired (needs a running broker).
    ///
    /// A one-shot task is spent by the run (it never fires again): that takes --yes, or --keep to
    /// run it without spending it.
    Run {
        task: String,
        /// Run even if its conditions do not hold.
        #[arg(long)]
        ignore_conditions: bool,
        /// The trigger details the run sees, as an application trigger's arguments (a JSON object).
        #[arg(long, value_name = "JSON", value_parser = json_object)]
        args: Option<serde_json::Value>,
        /// Run a one-shot task, spending it.
        #[arg(long, conflicts_with = "keep")]
        yes: bool,
        /// Run a one-shot task without spending it (also one spent already).
        #[arg(long)]
        keep: bool,
    },
    /// Signal a custom event (needs a running broker).
    Signal { event: String },
    /// Unregister a task (canceling its run, if one is going).
    Unregister { task: String },
    /// Uninstall the app: unregister every task, canceling running ones with UNINSTALL, and
    /// remove its store (with the run history) and its control socket. Takes --yes.
    ///
    /// Asks the app's running broker, which then holds nothing (btbd exits); without one, changes
    /// the store itself. The manifest installed by `enable` stays: `disable` removes it.
    Uninstall {
        /// Uninstall: without it, btbctl only says what would be removed.
        #[arg(long)]
        yes: bool,
    },
    /// Each state of the machine that conditions read, and where it comes from.
    Doctor {
        #[arg(long)]
        json: bool,
    },
    /// Install the app's manifest for btbd@.service and enable that unit.
    ///
    /// Copies --manifest PATH to ~/.local/share/btb/APP_ID/manifest.toml, where btbd@.service
    /// reads it, and runs `systemctl --user enable --now btbd@APP_ID.service`. Without a systemd
    /// user manager it exits 3 and prints the command that starts btbd by hand on stdout. A btbd
    /// already running reads the new manifest at once: a new version services the app (running
    /// tasks canceled with SERVICING_UPDATE, then SERVICING_COMPLETE); other changes at the same
    /// version take a restart (`systemctl --user restart btbd@APP_ID.service`).
    Enable,
    /// Stop and disable btbd@APP_ID.service and remove the installed manifest.
    ///
    /// Runs `systemctl --user disable --now btbd@APP_ID.service` where systemd runs, then removes
    /// ~/.local/share/btb/APP_ID/manifest.toml.
    Disable,
    /// Print shell completions.
    Completions { shell: clap_complete::Shell },
    /// Normalize calendar expressions and print their next elapses, as `systemd-analyze calendar`
    /// does (in the local zone, `TZ` included). Needs no app.
    Calendar {
        #[arg(required = true)]
        expressions: Vec<String>,
        /// How many elapses to print.
        #[arg(long, default_value_t = 1, value_name = "N")]
        iterations: u32,
        /// Count from this instant instead of now (RFC 3339, or @SECONDS since the epoch).
        #[arg(long, value_name = "TIME")]
        base_time: Option<String>,
    },
    /// Write the manual page btbctl.1 into DIR (for packagers: make install, the .deb).
    #[command(hide = true)]
    GenerateMan { dir: PathBuf },
}

/// The app a command is about.
struct Target {
    app_id: String,
    store: PathBuf,
    /// Set when the app's running broker holds another store than this one: why it was not used.
    elsewhere: std::cell::RefCell<Option<String>>,
}

impl Target {
    fn of(cli: &Cli) -> Result<Target> {
        let app_id = match (&cli.manifest, &cli.app) {
            (Some(path), _) => Manifest::load(path)?.app_id().to_owned(),
            (None, Some(app)) => app.clone(),
            (None, None) => {
                usage_error("name the app: --manifest PATH [--store PATH], or --app APP_ID")
            }
        };
        let store = match &cli.store {
            Some(path) => path.clone(),
            None => StoreLocation::default_path(&app_id)?,
        };
        Ok(Target {
            app_id,
            store,
            elsewhere: Default::default(),
        })
    }

    /// The running broker of this store, or `None` when none runs — or when the app's broker
    /// holds another store (its hello names it): then this store is read alone, never that one.
    fn broker(&self) -> Result<Option<Client>> {
        let client = match Client::connect(&self.app_id) {
            Ok(client) => client,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let ours = std::fs::canonicalize(&self.store).unwrap_or_else(|_| self.store.clone());
        match &client.broker_store {
            Some(theirs) if Path::new(theirs) != ours => {
                let elsewhere = format!(
                    "the broker of app {:?} (pid {}) holds store {theirs}, not {}",
                    self.app_id,
                    client.broker_pid,
                    ours.display()
                );
                eprintln!("btbctl: {elsewhere}; this store is used alone");
                *self.elsewhere.borrow_mut() = Some(elsewhere);
                Ok(None)
            }
            _ => Ok(Some(client)),
        }
    }

    fn no_broker(&self, what: &str) -> Error {
        let why = match &*self.elsewhere.borrow() {
            Some(elsewhere) => format!("{elsewhere}: {what} needs the broker of this store"),
            None => format!(
                "no broker runs for app {:?}: {what} needs one (start the app, or btbd)",
                self.app_id
            ),
        };
        Error::new(ErrorKind::NotFound, why)
    }

    /// The id of the stored registration TASK names.
    fn stored_task(&self, store: &Store, task: &str) -> Result<uuid::Uuid> {
        let tasks = store.load()?;
        btb_core::view::find_task(tasks.iter().map(|t| &t.record), &self.app_id, task)
    }

    /// Views of the stored registrations, as far as the store alone tells.
    fn stored_views(&self, task: Option<&str>) -> Result<Vec<TaskView>> {
        let store = Store::open_read_only(&self.store)?;
        let tasks = store.load()?;
        let last = store.last_outcomes()?;
        let now = now_ms();
        let chosen = match task {
            Some(task) => Some(btb_core::view::find_task(
                tasks.iter().map(|t| &t.record),
                &self.app_id,
                task,
            )?),
            None => None,
        };
        let mut tasks: Vec<_> = tasks
            .into_iter()
            .filter(|t| chosen.is_none_or(|id| t.record.task_id == id))
            .collect();
        tasks.sort_by_key(|t| t.record.seq);
        Ok(tasks
            .iter()
            .map(|t| {
                let facts = TaskFacts {
                    next_due_ms: t.record.next_due_ms,
                    pending: t.pending.is_some(),
                    spent: t.spent,
                    running_since_ms: None,
                    last_outcome: last.get(&t.record.task_id).copied(),
                    waiting_for: None, // no broker: the states are not known
                    retry: t
                        .pending
                        .as_ref()
                        .and_then(|p| p.not_before.map(|at| (p.attempt, at))),
                    last_message: None,
                    waiting_for_handler: None,
                    unknown: Vec::new(), // no broker: nothing is known, said below
                    window_ms: None,
                };
                TaskView::new(&t.record, &facts, now, task.is_some())
            })
            .collect())
    }
}

/// A usage error, as clap reports its own: the message and the usage on stderr, exit status 2.
fn usage_error(message: &str) -> ! {
    Cli::command()
        .error(clap::error::ErrorKind::MissingRequiredArgument, message)
        .exit()
}

/// `--args`: a JSON object.
fn json_object(text: &str) -> std::result::Result<serde_json::Value, String> {
    match serde_json::from_str(text) {
        Ok(value @ serde_json::Value::Object(_)) => Ok(value),
        Ok(other) => Err(format!(
            "not a JSON object (the trigger details are one, e.g. '{{\"file\":\"a.txt\"}}'): {other}"
        )),
        Err(e) => Err(format!("not JSON: {e}")),
    }
}

/// Prints a line; a reader that went away (`btbctl list | head`) ends btbctl quietly, as it ends
/// any Unix tool.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            eprintln!("btbctl: cannot write the output: {e}");
            std::process::exit(1);
        }
    }};
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn unexpected(reply: Reply) -> Error {
    Error::new(
        ErrorKind::Internal,
        format!("the broker answered {reply:?}"),
    )
}

fn print_json(value: &impl serde::Serialize) {
    out!(
        "{}",
        serde_json::to_string_pretty(value).expect("views serialize")
    );
}

/// Prints rows as columns aligned under their headers.
fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out!("{}", out.trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

fn or_dash(value: Option<&str>) -> String {
    value.unwrap_or("-").to_owned()
}

fn list(tasks: &[TaskView]) {
    let rows: Vec<Vec<String>> = tasks
        .iter()
        .map(|t| {
            let state = if t.running_since.is_some() {
                "running"
            } else if t.pending {
                "latched"
            } else if t.spent {
                "spent"
            } else {
                "-"
            };
            vec![
                t.name.clone(),
                t.trigger_text.clone(),
                or_dash(t.next_due.as_deref()),
                state.to_owned(),
                or_dash(t.last_outcome.as_deref()),
                t.task_id.to_string(),
            ]
        })
        .collect();
    table(
        &["NAME", "TRIGGER", "NEXT DUE", "STATE", "LAST", "TASK ID"],
        &rows,
    );
}

fn show(t: &TaskView) {
    let conditions = if t.conditions.is_empty() {
        "-".to_owned()
    } else {
        t.conditions.join(", ")
    };
    for (key, value) in [
        ("name", t.name.clone()),
        ("task id", t.task_id.to_string()),
        ("entry point", or_dash(t.entry_point.as_deref())),
        ("group", or_dash(t.group.as_deref())),
        ("trigger", t.trigger_text.clone()),
        ("conditions", conditions),
        ("next due", or_dash(t.next_due.as_deref())),
        ("last outcome", or_dash(t.last_outcome.as_deref())),
        ("why", or_dash(t.why.as_deref())),
    ] {
        out!("{key:<13} {value}");
    }
}

/// Lines of a run's stdout or stderr shown by `history` (all of it with `--json`).
const TAIL_LINES: usize = 5;

fn history(runs: &[RunView]) {
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            // A cancellation says why (LOGGING_OFF, UNINSTALL, ENERGY_SAVER, …).
            let status = match (&r.retry_at, &r.reason) {
                (Some(at), _) => format!("{} (next at {at})", r.status),
                (None, Some(reason)) => format!("{} ({reason})", r.status),
                (None, None) => r.status.clone(),
            };
            vec![
                r.started.clone(),
                r.ended.clone(),
                r.attempt.to_string(),
                status,
                format!("{}%", r.last_progress),
                or_dash(r.message.as_deref()),
            ]
        })
        .collect();
    table(
        &[
            "STARTED", "ENDED", "ATTEMPT", "STATUS", "PROGRESS", "MESSAGE",
        ],
        &rows,
    );
    // What each run handed back and the end of what it wrote, under the table.
    for r in runs {
        let tails = [("stdout", &r.stdout), ("stderr", &r.stderr)];
        if r.output.is_none() && tails.iter().all(|(_, t)| t.is_none()) {
            continue;
        }
        out!("");
        out!("run {} (started {}):", r.instance_id, r.started);
        if let Some(output) = &r.output {
            out!("  output: {output}");
        }
        for (name, tail) in tails {
            let Some(tail) = tail else { continue };
            let lines: Vec<&str> = tail.lines().collect();
            let shown = &lines[lines.len().saturating_sub(TAIL_LINES)..];
            out!("  {name} (last {} of {} lines):", shown.len(), lines.len());
            for line in shown {
                out!("    {line}");
            }
        }
    }
}

fn doctor(
    states: &BTreeMap<String, StateView>,
    broker: Option<u32>,
    store_error: Option<&str>,
    json: bool,
) {
    if json {
        let mut object = serde_json::to_value(states).expect("views serialize");
        object["broker"] = broker.into();
        object["store_error"] = store_error.into();
        print_json(&object);
        return;
    }
    let rows: Vec<Vec<String>> = states
        .iter()
        .map(|(name, s)| {
            let state = match s.state {
                Some(true) => "yes",
                Some(false) => "no",
                None => "unknown",
            };
            vec![name.clone(), state.to_owned(), s.source.clone()]
        })
        .collect();
    table(&["CONDITION", "STATE", "SOURCE"], &rows);
    match broker {
        Some(pid) => out!("broker: pid {pid}"),
        None => out!("broker: none running (states read by btbctl itself)"),
    }
    if let Some(e) = store_error {
        out!("store: CANNOT BE WRITTEN — runs are held until it can: {e}");
    }
}

/// The exit status of `enable` when the manifest is installed but no systemd user manager runs.
const NO_SYSTEMD: u8 = 3;

/// Where `btbd@.service` reads an app's manifest: `%h/.local/share/btb/%i/manifest.toml`.
fn installed_manifest(app_id: &str) -> Result<PathBuf> {
    let home = std::env::var_os("HOME")
        .filter(|h| Path::new(h).is_absolute())
        .ok_or_else(|| {
            Error::invalid(
                "HOME is not an absolute path: cannot place the manifest for btbd@.service",
            )
        })?;
    Ok(PathBuf::from(home)
        .join(".local/share/btb")
        .join(app_id)
        .join("manifest.toml"))
}

/// Why systemd cannot start units for this user here, or `None` when its user manager answers.
fn no_systemd_user_manager() -> Option<String> {
    // sd_booted(3): the system was booted with systemd as PID 1.
    if !Path::new("/run/systemd/system").exists() {
        return Some(
            "systemd is not running on this machine (/run/systemd/system is absent)".into(),
        );
    }
    match std::process::Command::new("systemctl")
        .args(["--user", "show-environment"])
        .stdout(std::process::Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!(
            "the systemd user manager does not answer (systemctl --user: {})",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Some(format!("systemctl cannot be run ({e})")),
    }
}

/// Runs `systemctl --user ACTION --now UNIT`.
fn systemctl(action: &str, unit: &str) -> Result<()> {
    let out = std::process::Command::new("systemctl")
        .args(["--user", action, "--now", unit])
        .output()
        .map_err(|e| Error::invalid(format!("cannot run systemctl: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "systemctl --user {action} --now {unit} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// A word as a POSIX shell reads it back unchanged.
fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:@%,".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

fn enable(cli: &Cli, target: &Target) -> Result<ExitCode> {
    let Some(source) = &cli.manifest else {
        return Err(Error::invalid(
            "enable installs a manifest: pass --manifest PATH",
        ));
    };
    let installed = installed_manifest(&target.app_id)?;
    let dir = installed.parent().expect("a file in a directory");
    let fail = |what: &str, e: std::io::Error| Error::invalid(format!("cannot {what}: {e}"));
    std::fs::create_dir_all(dir).map_err(|e| fail(&format!("create {}", dir.display()), e))?;
    // Whole or not at all: a broker (re)starting now reads the old manifest or the new one.
    let partial = dir.join(".manifest.toml.partial");
    std::fs::copy(source, &partial)
        .and_then(|_| std::fs::rename(&partial, &installed))
        .map_err(|e| {
            fail(
                &format!("install the manifest at {}", installed.display()),
                e,
            )
        })?;
    out!(
        "installed the manifest of {} at {}",
        target.app_id,
        installed.display()
    );
    let unit = format!("btbd@{}.service", target.app_id);
    if let Some(why) = no_systemd_user_manager() {
        // btbd beside this btbctl (as installed), else the one on PATH.
        let btbd = std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.join("btbd")))
            .filter(|btbd| btbd.is_file())
            .map_or_else(|| "btbd".to_owned(), |p| p.display().to_string());
        eprintln!("btbctl: {why}: {unit} is not enabled; start btbd by hand with:");
        let manifest = installed.display().to_string();
        out!("{} --manifest {}", shell_word(&btbd), shell_word(&manifest));
        return Ok(ExitCode::from(NO_SYSTEMD));
    }
    systemctl("enable", &unit)?;
    out!("enabled and started {unit}");
    Ok(ExitCode::SUCCESS)
}

fn disable(target: &Target) -> Result<ExitCode> {
    Manifest::new(&target.app_id, "0")?; // an app id, not a path
    let installed = installed_manifest(&target.app_id)?;
    let unit = format!("btbd@{}.service", target.app_id);
    match no_systemd_user_manager() {
        None => {
            systemctl("disable", &unit)?;
            out!("stopped and disabled {unit}");
        }
        Some(why) => eprintln!(
            "btbctl: {why}: no unit to stop (a btbd started by hand keeps running until stopped)"
        ),
    }
    match std::fs::remove_file(&installed) {
        Ok(()) => {
            let _ = std::fs::remove_dir(installed.parent().expect("a file in a directory"));
            out!("removed {}", installed.display());
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            out!("no manifest installed at {}", installed.display())
        }
        Err(e) => {
            return Err(Error::invalid(format!(
                "cannot remove {}: {e}",
                installed.display()
            )));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The manual pages: btbctl.1 (clap's sections, then what clap does not describe) and, as
/// `clap_mangen::generate_to` writes them, btbctl-COMMAND.1 for each command it lists.
fn generate_man(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        clap_mangen::Man::new(sub.clone())
            .section("1")
            .generate_to(dir)?;
    }
    let man = clap_mangen::Man::new(cmd).section("1");
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    man.render_subcommands_section(&mut page)?;
    page.extend_from_slice(MAN_EXTRA.as_bytes());
    man.render_version_section(&mut page)?;
    std::fs::write(dir.join(man.get_filename()), page)
}

const MAN_EXTRA: &str = r#".SH "EXIT STATUS"
.TP
\fB0\fR
Done.
.TP
\fB1\fR
An error; the message on stderr names what failed.
.TP
\fB2\fR
A usage error.
.TP
\fB3\fR
\fBenable\fR installed the manifest, but no systemd user manager runs to start btbd; the command that starts it by hand is printed on stdout.
.SH ENVIRONMENT
.TP
\fBXDG_RUNTIME_DIR\fR
Where the app's broker listens (its control socket).
.TP
\fBXDG_STATE_HOME\fR
The default store: \fI$XDG_STATE_HOME/btb/APP_ID/btb.sqlite3\fR (\fI~/.local/state\fR when unset).
.SH FILES
.TP
\fI~/.local/share/btb/APP_ID/manifest.toml\fR
The manifest \fBbtbctl enable\fR installs and \fBbtbd@APP_ID.service\fR reads.
.SH "SEE ALSO"
\fBbtbd\fR(8), \fBsystemctl\fR(1)
"#;

fn run(cli: Cli) -> Result<ExitCode> {
    match &cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "btbctl",
                &mut std::io::stdout(),
            );
            return Ok(ExitCode::SUCCESS);
        }
        Command::GenerateMan { dir } => {
            generate_man(dir).map_err(|e| {
                Error::invalid(format!(
                    "cannot write the man page into {}: {e}",
                    dir.display()
                ))
            })?;
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    if let Command::Calendar {
        expressions,
        iterations,
        base_time,
    } = &cli.command
    {
        calendar(expressions, *iterations, base_time.as_deref())?;
        return Ok(ExitCode::SUCCESS);
    }
    let target = Target::of(&cli)?;
    match cli.command {
        Command::Enable => return enable(&cli, &target),
        Command::Disable => return disable(&target),
        _ => {}
    }
    let mut broker = target.broker()?;
    let mut call = |request: Request| -> Result<Option<Reply>> {
        broker.as_mut().map(|b| b.call(&request)).transpose()
    };
    match cli.command {
        Command::List { json } => {
            let tasks = match call(Request::List)? {
                Some(Reply::Tasks { tasks }) => tasks,
                Some(other) => return Err(unexpected(other)),
                None => target.stored_views(None)?,
            };
            if json {
                print_json(&tasks)
            } else {
                list(&tasks)
            }
        }
        Command::Show { task, json } => {
            let view = match call(Request::Show { task: task.clone() })? {
                Some(Reply::Task { task }) => *task,
                Some(other) => return Err(unexpected(other)),
                None => target.stored_views(Some(&task))?.remove(0),
            };
            if json { print_json(&view) } else { show(&view) }
        }
        Command::History { task, json } => {
            let runs = match call(Request::History { task: task.clone() })? {
                Some(Reply::Runs { runs }) => runs,
                Some(other) => return Err(unexpected(other)),
                None => {
                    let store = Store::open_read_only(&target.store)?;
                    let id = target.stored_task(&store, &task)?;
                    store.history(&id)?.iter().map(Into::into).collect()
                }
            };
            if json {
                print_json(&runs)
            } else {
                history(&runs)
            }
        }
        Command::Run {
            task,
            ignore_conditions,
            args,
            yes,
            keep,
        } => {
            let view = match call(Request::Show { task: task.clone() })? {
                Some(Reply::Task { task }) => *task,
                Some(other) => return Err(unexpected(other)),
                None => return Err(target.no_broker("run")),
            };
            let one_shot = view.trigger.get("one_shot") == Some(&serde_json::Value::Bool(true));
            if one_shot && !yes && !keep {
                usage_error(&format!(
                    "{task:?} has a one-shot trigger: this run spends it (it never fires again). \
                     Pass --yes to run it so, or --keep to run it without spending it"
                ));
            }
            match call(Request::Run {
                task: task.clone(),
                ignore_conditions,
                details: args,
                keep,
            })? {
                Some(Reply::Done) if one_shot && !keep => out!("fired {task:?} (now spent)"),
                Some(Reply::Done) => out!("fired {task:?}"),
                Some(other) => return Err(unexpected(other)),
                None => return Err(target.no_broker("run")),
            }
        }
        Command::Signal { event } => match call(Request::Signal {
            name: event.clone(),
        })? {
            Some(Reply::Fired { count }) => out!("signalled {event:?}: {count} task(s) fired"),
            Some(other) => return Err(unexpected(other)),
            None => return Err(target.no_broker("signal")),
        },
        Command::Unregister { task } => match call(Request::Unregister {
            task: task.clone(),
            cancel_task: true,
        })? {
            Some(Reply::Done) => out!("unregistered {task:?}"),
            Some(other) => return Err(unexpected(other)),
            None => {
                // No broker: change the store itself, holding its lock as a broker would.
                let mut store = Store::open(
                    &StoreLocation::File(target.store.clone()),
                    &target.app_id,
                    btb_core::Durability::Full,
                )?;
                let id = target.stored_task(&store, &task)?;
                store.delete(&id)?;
                out!("unregistered {task:?}");
            }
        },
        Command::Uninstall { yes } => {
            if !yes {
                usage_error(&format!(
                    "uninstall unregisters every task of {} and removes its store {} (run history \
                     included): add --yes",
                    target.app_id,
                    target.store.display()
                ));
            }
            let tasks = match call(Request::Uninstall) {
                Ok(Some(Reply::Uninstalled { tasks })) => tasks,
                Ok(Some(other)) => return Err(unexpected(other)),
                Ok(None) if !target.store.exists() => {
                    btb_core::uninstall::remove_control_socket(&target.app_id)?;
                    out!(
                        "{} has no store at {}: nothing to uninstall",
                        target.app_id,
                        target.store.display()
                    );
                    return Ok(ExitCode::SUCCESS);
                }
                Ok(None) => btb_core::uninstall::uninstall_store(&target.store, &target.app_id)?,
                Err(e) if e.kind() == ErrorKind::Unsupported => {
                    return Err(Error::new(
                        ErrorKind::Unsupported,
                        format!(
                            "the running broker of {} is of an older btb that cannot uninstall \
                             ({}): stop it (systemctl --user stop btbd@{}.service, or close the \
                             app), then run btbctl uninstall again",
                            target.app_id,
                            e.message(),
                            target.app_id
                        ),
                    ));
                }
                Err(e) => return Err(e),
            };
            out!(
                "uninstalled {}: {tasks} task(s) unregistered, store {} removed",
                target.app_id,
                target.store.display()
            );
        }
        Command::Doctor { json } => match call(Request::Doctor)? {
            Some(Reply::Doctor {
                states,
                broker,
                store_error,
            }) => doctor(&states, broker, store_error.as_deref(), json),
            Some(other) => return Err(unexpected(other)),
            None => {
                // No broker: read the machine here, as a broker would.
                let system = btb_core::System::open(btb_core::SystemOptions {
                    manifest: Some(Manifest::new(&target.app_id, "0")?),
                    store: StoreLocation::Memory,
                    ..btb_core::SystemOptions::default()
                })?;
                doctor(&system.doctor()?, None, None, json);
                system.close()?;
            }
        },
        Command::Completions { .. }
        | Command::Calendar { .. }
        | Command::GenerateMan { .. }
        | Command::Enable
        | Command::Disable => unreachable!("handled above"),
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse(); // usage errors exit 2
    match run(cli) {
        Ok(status) => status,
        Err(e) => {
            eprintln!("btbctl: {}", e.message());
            ExitCode::from(1)
        }
    }
}

/// `btbctl calendar`: the lines `systemd-analyze calendar` prints (without its "From now"), for
/// each expression; an error for the first one that does not parse, after the others.
fn calendar(expressions: &[String], iterations: u32, base_time: Option<&str>) -> Result<()> {
    use jiff::{Timestamp, tz::TimeZone};
    let base = match base_time {
        None => Timestamp::now(),
        Some(text) => match text.strip_prefix('@') {
            Some(seconds) => seconds
                .parse()
                .ok()
                .and_then(|s| Timestamp::from_second(s).ok()),
            None => text.parse().ok(),
        }
        .ok_or_else(|| Error::invalid(format!("bad --base-time {text:?}")))?,
    };
    let local = btb_core::calendar::system_time_zone();
    let show = |at: Timestamp, tz: &TimeZone| {
        let abbreviation = tz.to_offset_info(at).abbreviation().to_owned();
        let civil = tz.to_datetime(at);
        format!("{} {abbreviation}", civil.strftime("%a %Y-%m-%d %H:%M:%S"))
    };
    let mut failure = None;
    for (n, expression) in expressions.iter().enumerate() {
        // Blocks are separated by a blank line (also before one that fails, as systemd-analyze).
        if n > 0 {
            out!("");
        }
        let spec = match btb_core::calendar::CalendarSpec::parse(expression) {
            Ok(spec) => spec,
            Err(e) => {
                eprintln!("btbctl: {}", e.message());
                failure.get_or_insert(e);
                continue;
            }
        };
        let normalized = spec.normalized();
        if normalized != *expression {
            out!("  Original form: {expression}");
        }
        out!("Normalized form: {normalized}");
        let mut at = base.as_microsecond();
        for i in 1..=iterations.max(1) {
            let Some(next) = spec.next_elapse_us(at, &local) else {
                if i == 1 {
                    out!("    Next elapse: never");
                }
                break;
            };
            at = next;
            let next = Timestamp::from_microsecond(next).expect("an elapse is an instant");
            let label = if i == 1 {
                "    Next elapse".to_owned()
            } else {
                format!("       Iter. #{i}")
            };
            out!("{label}: {}", show(next, &local));
            if local != TimeZone::UTC {
                out!("       (in UTC): {}", show(next, &TimeZone::UTC));
            }
        }
    }
    match failure {
        // Already printed; the exit status says it.
        Some(_) => Err(Error::invalid("a calendar expression did not parse")),
        None => Ok(()),
    }
}
