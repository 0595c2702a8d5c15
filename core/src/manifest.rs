//! The manifest (SPEC §5): the app's identity and the entry points it declares, each with the
//! Windows task types it may use. Loaded from TOML or declared in code; every mistake names its line.

use foldhash::{HashMap, HashMapExt};
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::error::{Error, Result};
use crate::model::{TaskType, check_text};

/// One declared entry point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskDeclaration {
    pub entry_point: String,
    pub types: Vec<TaskType>,
    /// Out-of-process host: absolute program path and arguments, started without a shell.
    pub exec: Option<Vec<String>>,
}

impl TaskDeclaration {
    /// A declaration from type names as a manifest spells them (`"timer"`, `"systemEvent"`, …).
    pub fn new<S: AsRef<str>>(entry_point: &str, types: &[S]) -> Result<TaskDeclaration> {
        check_entry_point(entry_point)?;
        let mut parsed = Vec::with_capacity(types.len());
        for t in types {
            let t = t.as_ref();
            let ty = TaskType::parse(t).ok_or_else(|| {
                Error::invalid(format!(
                    "entry point {entry_point:?}: unknown task type {t:?} (known: {})",
                    known_types()
                ))
            })?;
            if !parsed.contains(&ty) {
                parsed.push(ty);
            }
        }
        Ok(TaskDeclaration {
            entry_point: entry_point.to_owned(),
            types: parsed,
            exec: None,
        })
    }

    /// Adds an out-of-process host command (`argv[0]` must be an absolute path).
    pub fn with_exec(mut self, argv: Vec<String>) -> Result<TaskDeclaration> {
        check_exec(&self.entry_point, &argv)?;
        self.exec = Some(argv);
        Ok(self)
    }
}

fn known_types() -> String {
    TaskType::ALL
        .iter()
        .map(|t| t.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Entry points: 1–256 bytes, no whitespace or control characters.
pub(crate) fn check_entry_point(entry_point: &str) -> Result<()> {
    check_text("entry point", entry_point, 256)?;
    if entry_point
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(Error::invalid(format!(
            "entry point {entry_point:?} contains whitespace or a control character"
        )));
    }
    Ok(())
}

fn check_exec(entry_point: &str, argv: &[String]) -> Result<()> {
    check_command("exec", argv)
        .map_err(|e| Error::invalid(format!("entry point {entry_point:?}: {}", e.message())))
}

/// A command btb starts (`exec`, `activate`): an absolute program path, no shell, no NUL.
fn check_command(what: &str, argv: &[String]) -> Result<()> {
    match argv.first() {
        None => Err(Error::invalid(format!("{what} is empty"))),
        Some(program) if !Path::new(program).is_absolute() => Err(Error::invalid(format!(
            "{what} program {program:?} is not an absolute path (btb starts it without a shell or PATH search)"
        ))),
        Some(_) if argv.iter().any(|a| a.contains('\0')) => Err(Error::invalid(format!(
            "{what} argument contains a NUL byte"
        ))),
        Some(_) => Ok(()),
    }
}

/// Reverse-DNS app ids: they name the store directory and the control socket.
pub(crate) fn check_app_id(app_id: &str) -> Result<()> {
    check_text("app id", app_id, 255)?;
    let ok_chars = app_id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    // Each part starts with a letter, as in D-Bus names and Flatpak app ids: `org.example.2fa`
    // is refused (write `org.example.twofa` or `org.example.app2fa`).
    let ok_shape = app_id.contains('.')
        && app_id
            .split('.')
            .all(|seg| seg.starts_with(|c: char| c.is_ascii_alphabetic()));
    if !ok_chars || !ok_shape {
        return Err(Error::invalid(format!(
            "app id {app_id:?} is not a reverse-DNS name such as \"org.example.notes\" \
             (dot-separated parts, each starting with a letter, then letters, digits, '-', '_')"
        )));
    }
    Ok(())
}

/// The most entry points a manifest may declare (an app has a handful; a bound keeps a runaway
/// generator from costing minutes and gigabytes).
pub const MAX_TASKS: usize = 10_000;
/// The largest manifest file accepted, in bytes.
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;

/// The app's manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    app_id: String,
    version: String,
    tasks: Vec<TaskDeclaration>,
    /// Entry point → index in `tasks` (declaring and finding stay O(1)).
    index: HashMap<String, usize>,
    path: Option<PathBuf>,
    /// How to start the app for a run whose handler no process has (SPEC §12): absolute program
    /// path and arguments, started without a shell.
    activate: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileManifest {
    app_id: Spanned<String>,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    activate: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    task: Vec<FileTask>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTask {
    entry_point: Spanned<String>,
    types: Vec<Spanned<String>>,
    #[serde(default)]
    exec: Option<Spanned<Vec<String>>>,
}

impl Manifest {
    /// An empty manifest declared in code; `version` defaults to `"0"` when empty.
    pub fn new(app_id: &str, version: &str) -> Result<Manifest> {
        check_app_id(app_id)?;
        if version.contains('\0') {
            return Err(Error::invalid("manifest version contains a NUL byte"));
        }
        Ok(Manifest {
            app_id: app_id.to_owned(),
            version: if version.is_empty() { "0" } else { version }.to_owned(),
            tasks: Vec::new(),
            index: HashMap::new(),
            path: None,
            activate: None,
        })
    }

    /// Sets how to start the app for background work (`argv[0]` an absolute path).
    pub fn with_activate(mut self, argv: Vec<String>) -> Result<Manifest> {
        check_command("activate", &argv)?;
        self.activate = Some(argv);
        Ok(self)
    }

    /// How to start the app for background work, if the manifest says.
    pub fn activate(&self) -> Option<&[String]> {
        self.activate.as_deref()
    }

    /// Adds a declaration; an entry point declared twice, or more than [`MAX_TASKS`], is an error.
    pub fn declare(&mut self, task: TaskDeclaration) -> Result<()> {
        if self.index.contains_key(&task.entry_point) {
            return Err(Error::invalid(format!(
                "entry point {:?} is declared twice",
                task.entry_point
            )));
        }
        if self.tasks.len() >= MAX_TASKS {
            return Err(Error::invalid(format!(
                "a manifest may declare at most {MAX_TASKS} entry points"
            )));
        }
        self.index
            .insert(task.entry_point.clone(), self.tasks.len());
        self.tasks.push(task);
        Ok(())
    }

    /// Reads a TOML manifest file.
    pub fn load(path: impl AsRef<Path>) -> Result<Manifest> {
        let path = path.as_ref();
        // Reads one byte past the bound, so that an oversized file (or /dev/zero) is refused
        // without reading it all.
        let mut text = String::new();
        std::fs::File::open(path)
            .and_then(|f| {
                f.take(MAX_MANIFEST_BYTES as u64 + 1)
                    .read_to_string(&mut text)
            })
            .map_err(|e| {
                Error::invalid(format!("manifest {}: cannot read: {e}", path.display()))
            })?;
        let mut manifest = Self::parse(&text, &path.display().to_string())?;
        manifest.path = Some(path.to_owned());
        Ok(manifest)
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Manifest> {
        Self::parse(text, "<text>")
    }

    fn parse(text: &str, origin: &str) -> Result<Manifest> {
        if text.len() > MAX_MANIFEST_BYTES {
            return Err(Error::invalid(format!(
                "manifest {origin}: {} bytes; the limit is {MAX_MANIFEST_BYTES} bytes",
                text.len()
            )));
        }
        let line = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
        let at = |offset: usize, e: Error| {
            Error::invalid(format!(
                "manifest {origin}: line {}: {}",
                line(offset),
                e.message()
            ))
        };
        let file: FileManifest = toml::from_str(text).map_err(|e| {
            let where_ = e
                .span()
                .map(|s| format!("line {}: ", line(s.start)))
                .unwrap_or_default();
            Error::invalid(format!("manifest {origin}: {where_}{}", e.message().trim()))
        })?;
        let mut manifest =
            Manifest::new(file.app_id.get_ref(), file.version.as_deref().unwrap_or(""))
                .map_err(|e| at(file.app_id.span().start, e))?;
        if let Some(argv) = file.activate {
            check_command("activate", argv.get_ref()).map_err(|e| at(argv.span().start, e))?;
            manifest.activate = Some(argv.into_inner());
        }
        for task in file.task {
            let start = task.entry_point.span().start;
            let ep = task.entry_point.get_ref();
            check_entry_point(ep).map_err(|e| at(start, e))?;
            let mut types = Vec::new();
            for t in &task.types {
                let ty = TaskType::parse(t.get_ref()).ok_or_else(|| {
                    at(
                        t.span().start,
                        Error::invalid(format!(
                            "entry point {ep:?}: unknown task type {:?} (known: {})",
                            t.get_ref(),
                            known_types()
                        )),
                    )
                })?;
                if !types.contains(&ty) {
                    types.push(ty);
                }
            }
            let exec = match task.exec {
                Some(argv) => {
                    check_exec(ep, argv.get_ref()).map_err(|e| at(argv.span().start, e))?;
                    Some(argv.into_inner())
                }
                None => None,
            };
            manifest
                .declare(TaskDeclaration {
                    entry_point: ep.clone(),
                    types,
                    exec,
                })
                .map_err(|e| at(start, e))?;
        }
        Ok(manifest)
    }

    pub fn app_id(&self) -> &str {
        &self.app_id
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn tasks(&self) -> &[TaskDeclaration] {
        &self.tasks
    }

    /// The file this manifest was loaded from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The declaration of an entry point (case-sensitive, as on Windows).
    pub fn find(&self, entry_point: &str) -> Option<&TaskDeclaration> {
        self.index.get(entry_point).map(|&i| &self.tasks[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
app_id  = "org.example.notes"
version = "1.4.0"

[[task]]
entry_point = "notes.Sync"
types       = ["timer", "systemEvent"]

[[task]]
entry_point = "notes.Index"
types       = ["timer", "bluetooth"]
exec        = ["/usr/bin/notes", "--background-task"]
"#;

    #[test]
    fn parses_the_spec_example() {
        let m = Manifest::from_toml(GOOD).unwrap();
        assert_eq!(m.app_id(), "org.example.notes");
        assert_eq!(m.version(), "1.4.0");
        assert_eq!(m.tasks().len(), 2);
        assert_eq!(
            m.find("notes.Sync").unwrap().types,
            vec![TaskType::Timer, TaskType::SystemEvent]
        );
        assert_eq!(
            m.find("notes.Index").unwrap().exec.as_ref().unwrap()[0],
            "/usr/bin/notes"
        );
        assert!(
            m.find("notes.sync").is_none(),
            "entry points are case-sensitive"
        );
    }

    fn err(text: &str) -> String {
        let e = Manifest::from_toml(text).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument);
        e.message().to_owned()
    }

    #[test]
    fn unknown_key_names_its_line() {
        let m = err("app_id = \"a.b\"\n\n[[task]]\nentry_point = \"x\"\ntypes = []\ncolour = 1\n");
        assert!(m.contains("line 6"), "{m}");
        assert!(m.contains("colour"), "{m}");
    }

    #[test]
    fn unknown_type_names_its_line_and_value() {
        let m = err(
            "app_id = \"a.b\"\n[[task]]\nentry_point = \"x\"\ntypes = [\"timer\",\n  \"teleport\"]\n",
        );
        assert!(m.contains("line 5"), "{m}");
        assert!(m.contains("\"teleport\""), "{m}");
    }

    #[test]
    fn each_part_of_an_app_id_starts_with_a_letter() {
        for good in [
            "org.example.notes",
            "a.b",
            "org.example.app2fa",
            "io.x-y.z_9",
            "A.B",
        ] {
            assert!(check_app_id(good).is_ok(), "{good}");
        }
        for bad in [
            "org.example.2fa",
            "1org.example",
            "org._private.app",
            "org.-x.app",
            "org..app",
            "org.example.",
            ".org.example",
            "notes",
        ] {
            let e = check_app_id(bad).unwrap_err();
            assert!(
                e.message().contains("each starting with a letter"),
                "{bad}: {}",
                e.message()
            );
        }
    }

    #[test]
    fn other_mistakes() {
        assert!(err("version = \"1\"\n").contains("app_id"));
        assert!(
            err("app_id = \"notes\"\n").contains("line 1: app id \"notes\" is not a reverse-DNS")
        );
        assert!(
            err(
                "app_id = \"a.b\"\n[[task]]\nentry_point = \"x\"\ntypes = []\nexec = [\"notes\"]\n"
            )
            .contains("line 5: entry point \"x\": exec program \"notes\" is not an absolute path")
        );
        assert!(err("app_id = \"a.b\"\n[[task]]\nentry_point = \"x\"\ntypes = []\n[[task]]\nentry_point = \"x\"\ntypes = []\n")
            .contains("line 6: entry point \"x\" is declared twice"));
        assert!(
            err("app_id = \"a.b\"\n[[task]]\nentry_point = \"has space\"\ntypes = []\n")
                .contains("line 3")
        );
        assert!(err("app_id = 5\n").contains("line 1"));
        assert!(
            err(
                "app_id = \"a.b\"\n[[task]]\nentry_point = \"x\"\ntypes = [\"timer\"]\nexec = []\n"
            )
            .contains("exec is empty")
        );
    }

    #[test]
    fn in_code_declarations() {
        let mut m = Manifest::new("org.example.app", "").unwrap();
        assert_eq!(m.version(), "0");
        m.declare(TaskDeclaration::new("a.B", &["general"]).unwrap())
            .unwrap();
        assert!(
            m.declare(TaskDeclaration::new("a.B", &["timer"]).unwrap())
                .is_err()
        );
        let e = TaskDeclaration::new("a.C", &["Timer"]).unwrap_err();
        assert!(
            e.message().contains("unknown task type \"Timer\""),
            "{}",
            e.message()
        );
        assert!(
            TaskDeclaration::new("a.C", &["timer"])
                .unwrap()
                .with_exec(vec!["rel".into()])
                .is_err()
        );
        assert!(Manifest::new("../evil", "1").is_err());
        assert!(Manifest::new("org..x", "1").is_err());
    }

    #[test]
    fn declarations_are_bounded_and_found_by_name() {
        let mut text = String::from("app_id = \"org.example.big\"\n");
        for i in 0..MAX_TASKS {
            text.push_str(&format!(
                "[[task]]\nentry_point = \"e{i}\"\ntypes = [\"timer\"]\n"
            ));
        }
        let m = Manifest::from_toml(&text).unwrap();
        assert_eq!(m.tasks().len(), MAX_TASKS);
        assert_eq!(m.find("e9999").unwrap().entry_point, "e9999");
        assert!(m.find("e10000").is_none());
        text.push_str("[[task]]\nentry_point = \"one.more\"\ntypes = [\"timer\"]\n");
        let e = Manifest::from_toml(&text).unwrap_err();
        assert!(e.message().contains("at most 10000 entry points"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("btb.toml");
        std::fs::write(&p, " ".repeat(MAX_MANIFEST_BYTES + 1)).unwrap();
        let e = Manifest::load(&p).unwrap_err();
        assert!(e.message().contains("the limit is 4194304 bytes"), "{e}");
    }

    #[test]
    fn load_names_the_path() {
        let e = Manifest::load("/nonexistent/btb.toml").unwrap_err();
        assert!(e.message().contains("/nonexistent/btb.toml"));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("btb.toml");
        std::fs::write(&p, GOOD).unwrap();
        let m = Manifest::load(&p).unwrap();
        assert_eq!(m.path(), Some(p.as_path()));
    }
}
