//! Tidy checks on the source tree itself: the layer order of ARCHITECTURE.md
//! holds. A module of `src/` may name (`use crate::…` or a `crate::…` path)
//! only the modules below it; an import that runs up the order is a cycle in
//! the making and fails here, naming the file and the line.

use std::path::{Path, PathBuf};

use crate::harness::repo;

/// The top-level modules of the library, lowest first: each may use only
/// those before it. The same order, with what each layer is for, is in
/// ARCHITECTURE.md.
const LAYERS: &[&str] = &[
    "clock",
    "events",
    "signature",
    "ledger",
    "cli",
    "plugins",
    "store",
    "metrics",
    "poll",
    "config",
    "telemetry",
    "export",
    "send",
    "ingest",
    "admin",
    "app",
];

fn rust_files(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// The top-level module a file of `src/` belongs to (`None` for the crate
/// roots).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).unwrap();
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.trim_end_matches(".rs");
    (!matches!(name, "lib" | "main")).then(|| name.to_owned())
}

/// The modules a line of code names as `crate::<module>`, outside comments.
fn crate_modules(line: &str) -> Vec<&str> {
    let code = line.split("//").next().unwrap_or("");
    code.match_indices("crate::")
        .filter(|(at, _)| !code[..*at].ends_with(|c: char| c.is_alphanumeric() || c == '_'))
        .map(|(at, _)| {
            let rest = &code[at + "crate::".len()..];
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect()
}

#[test]
fn no_import_runs_up_the_layer_order() {
    let src = repo("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let rank = |module: &str| LAYERS.iter().position(|m| *m == module);
    let mut upward = Vec::new();
    let mut unknown = Vec::new();
    for file in &files {
        let Some(module) = module_of(&src, file) else {
            continue;
        };
        let Some(own) = rank(&module) else {
            unknown.push(format!(
                "{}: module `{module}` has no layer",
                file.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for (number, line) in text.lines().enumerate() {
            for used in crate_modules(line) {
                if used == module {
                    continue;
                }
                match rank(used) {
                    Some(theirs) if theirs < own => {}
                    Some(_) => upward.push(format!(
                        "{}:{}: `{module}` uses `{used}`, which is above it",
                        file.strip_prefix(repo("")).unwrap().display(),
                        number + 1
                    )),
                    None => unknown.push(format!(
                        "{}:{}: `crate::{used}` is no module with a layer",
                        file.display(),
                        number + 1
                    )),
                }
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "give every module a place in LAYERS (and ARCHITECTURE.md):\n{}",
        unknown.join("\n")
    );
    assert!(
        upward.is_empty(),
        "imports that run up the layer order (move the item down, or pass it in):\n{}",
        upward.join("\n")
    );
}

#[test]
fn every_library_module_has_a_layer() {
    let lib = std::fs::read_to_string(repo("src/lib.rs")).unwrap();
    let declared: Vec<&str> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod "))
        .map(|l| l.trim_end_matches(';'))
        .collect();
    let mut sorted_declared = declared.clone();
    sorted_declared.sort();
    let mut layers = LAYERS.to_vec();
    layers.sort();
    assert_eq!(
        sorted_declared, layers,
        "src/lib.rs and LAYERS list the same modules"
    );
}

#[test]
fn the_scan_sees_imports_and_paths_but_not_comments() {
    assert_eq!(
        crate_modules("use crate::store::{Store, StoreError};"),
        ["store"]
    );
    assert_eq!(
        crate_modules("    let now = crate::clock::now_seconds(); // crate::app"),
        ["clock"]
    );
    assert!(crate_modules("/// [`Settings`]: crate::config::Settings").is_empty());
    assert!(crate_modules("use hookgauge_crate::x;").is_empty());
}
