//! The checked-in header must be what cbindgen generates from the sources (BTB_BLESS=1 rewrites it),
//! carry every core enum value under its C name, and declare every export inside the panic guard
//! (an export that takes a caller's pointer being `unsafe extern "C"`).

use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn generate() -> String {
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let config =
        cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let mut out = Vec::new();
    cbindgen::Builder::new()
        .with_crate(&crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen")
        .write(&mut out);
    String::from_utf8(out).unwrap()
}

#[test]
fn header_is_fresh() {
    let path = root().join("include/btb.h");
    let fresh = generate();
    if std::env::var_os("BTB_BLESS").is_some() {
        std::fs::write(&path, &fresh).unwrap();
        return;
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        current == fresh,
        "include/btb.h is stale: run `BTB_BLESS=1 cargo test -p btb-ffi --test header` and commit it"
    );
}

#[test]
fn header_names_every_core_value() {
    let h = std::fs::read_to_string(root().join("include/btb.h")).unwrap();
    let has = |name: &str, value: u32| {
        assert!(
            h.contains(&format!("{name} = {value},")),
            "header lacks `{name} = {value}`"
        );
    };
    for t in btb_core::SystemTriggerType::ALL {
        has(&format!("BTB_SYSTEM_TRIGGER_{}", t.name()), *t as u32);
    }
    for c in btb_core::SystemConditionType::ALL {
        has(&format!("BTB_CONDITION_{}", c.name()), *c as u32);
    }
    for r in btb_core::CancellationReason::ALL {
        has(&format!("BTB_CANCELLATION_{}", r.name()), *r as u32);
    }
    for r in btb_core::ApplicationTriggerResult::ALL {
        has(&format!("BTB_APPLICATION_TRIGGER_{}", r.name()), *r as u32);
    }
    for r in btb_core::CustomRecurrence::ALL {
        has(&format!("BTB_CUSTOM_RECURRENCE_{}", r.name()), *r as u32);
    }
    for c in btb_core::BackgroundWorkCostValue::ALL {
        has(&format!("BTB_BACKGROUND_WORK_COST_{}", c.name()), *c as u32);
    }
    for p in btb_core::NamePolicy::ALL {
        has(&format!("BTB_NAME_POLICY_{}", p.name()), *p as u32);
    }
    for o in btb_core::TaskOutcome::ALL {
        has(&format!("BTB_TASK_OUTCOME_{}", o.name()), *o as u32);
    }
    for b in btb_core::BackoffPolicy::ALL {
        has(&format!("BTB_BACKOFF_{}", b.name()), *b as u32);
    }
    for k in btb_core::TriggerKind::ALL {
        has(&format!("BTB_TRIGGER_KIND_{}", k.name()), *k as u32);
    }
    for k in btb_core::ErrorKind::ALL {
        has(&format!("BTB_ERROR_{}", k.name()), k.code());
    }
    let version = format!(
        "#define BTB_VERSION_STRING \"{}\"",
        env!("CARGO_PKG_VERSION")
    );
    assert!(h.contains(&version), "header lacks `{version}`");
}

/// Every `pub extern "C" fn` body runs inside `guard(` / `guard_value(` or a helper that does.
#[test]
fn every_export_is_panic_guarded() {
    let src = root().join("ffi/src");
    let mut exports = 0;
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let helpers: Vec<String> = text
            .split("\nfn ")
            .skip(1)
            .filter_map(|f| {
                let name = f.split(['<', '(']).next()?;
                let body = f.split("\n}\n").next()?;
                body.contains("guard(").then(|| format!("{name}("))
            })
            .collect();
        // An export that dereferences a caller's pointer is `unsafe extern "C"` (clippy's
        // `not_unsafe_ptr_arg_deref`, denied by default, finds the others): no export opts out.
        assert!(
            !text.contains("not_unsafe_ptr_arg_deref)]"),
            "{}: an export silences not_unsafe_ptr_arg_deref instead of being unsafe",
            path.display()
        );
        for chunk in text.split("#[unsafe(no_mangle)]").skip(1) {
            exports += 1;
            let body = chunk.split("\n}\n").next().unwrap();
            let sig = body
                .lines()
                .find(|l| l.contains("extern \"C\" fn"))
                .unwrap_or("?");
            assert!(
                sig.starts_with("pub extern \"C\" fn")
                    || sig.starts_with("pub unsafe extern \"C\" fn"),
                "{}: export is not a literal pub extern fn: {sig}",
                path.display()
            );
            let opens = body.split_once('{').map(|x| x.1).unwrap_or("");
            let guarded = opens.contains("guard(")
                || opens.contains("guard_value(")
                || helpers
                    .iter()
                    .any(|h| opens.trim_start().starts_with(h.as_str()));
            assert!(
                guarded,
                "{}: {sig} does not run inside guard()",
                path.display()
            );
        }
    }
    assert!(exports > 80, "found only {exports} exports");
}
