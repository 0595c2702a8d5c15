//! The manifest loader: `Manifest::from_toml` on arbitrary text. It must return `Ok` or an
//! `InvalidArgument` error, never panic; an accepted manifest must satisfy the checks the
//! in-code constructors make (so TOML cannot smuggle in what the API would refuse).
#![no_main]

use btb_core::{ErrorKind, Manifest, TaskDeclaration};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Manifest::from_toml(text) {
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{}", e.message());
            assert!(
                e.message().starts_with("manifest <text>: "),
                "{}",
                e.message()
            );
        }
        Ok(m) => {
            // The same identity and declarations are accepted by the in-code API.
            let mut again = Manifest::new(m.app_id(), m.version()).expect("app id / version");
            assert!(!m.version().is_empty());
            for t in m.tasks() {
                let names: Vec<&str> = t.types.iter().map(|ty| ty.name()).collect();
                let mut d = TaskDeclaration::new(&t.entry_point, &names).expect("declaration");
                if let Some(argv) = &t.exec {
                    d = d.with_exec(argv.clone()).expect("exec");
                }
                assert_eq!(&d, t);
                again.declare(d).expect("entry points are unique");
                assert!(m.find(&t.entry_point).is_some());
            }
            assert_eq!(again.tasks(), m.tasks());
        }
    }
});
