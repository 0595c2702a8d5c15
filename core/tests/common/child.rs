//! This test binary run again as another process of a test (an ignored test named for its role),
//! talking through its stdin and stdout, one line per event, under deadlines. Killed and reaped
//! whatever happens to the test.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a child may take to say what a test waits for.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A child process and the lines it prints.
pub struct Proc {
    pub child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    /// This binary again as the ignored test `name`, with `env` added to its environment.
    pub fn role(name: &str, env: &[(&str, &OsStr)]) -> Proc {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([
            name,
            "--ignored",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Proc::new(child)
    }

    /// Reads `child`'s stdout (piped) on a thread of its own.
    pub fn new(mut child: Child) -> Proc {
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc { child, lines }
    }

    /// The next line with `tag`, from the tag on (libtest prints its own lines around ours).
    pub fn expect(&self, tag: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(at) = line.find(tag) {
                        return line[at..].to_owned();
                    }
                }
                Err(e) => panic!("no {tag:?} line from the child within {DEADLINE:?}: {e}"),
            }
        }
    }

    /// Writes a line to its stdin.
    pub fn tell(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    pub fn sigkill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Takes the child's lines from here on (to merge several children's, say).
    pub fn take_lines(&mut self) -> mpsc::Receiver<String> {
        let (_, empty) = mpsc::channel();
        std::mem::replace(&mut self.lines, empty)
    }

    pub fn wait_success(&mut self) {
        let status = self.child.wait().unwrap();
        assert!(status.success(), "child failed: {status}");
    }

    /// Says `line` (its cue to end), waits for it to exit successfully, and checks that none of
    /// the lines it printed since they were last read contains `absent`.
    pub fn ends_without(&mut self, line: &str, absent: &str) {
        self.tell(line);
        self.wait_success();
        let lines: Vec<String> = self.take_lines().try_iter().collect();
        assert!(
            !lines.iter().any(|l| l.contains(absent)),
            "no {absent:?} line: {lines:?}"
        );
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Prints one line for the test that runs this process, at once.
pub fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").unwrap();
    out.flush().unwrap();
}
