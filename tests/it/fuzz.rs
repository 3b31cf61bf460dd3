//! The fuzz targets of `fuzz/` run on stable over every provider fixture,
//! every shipped plugin file, their seeds and every input a fuzzing run
//! kept as a regression (`fuzz/regressions/<target>/`): none may panic.
//! The coverage-guided runs themselves are `cargo fuzz run <target>`.

#[allow(dead_code)]
#[path = "../../fuzz/targets.rs"]
pub mod targets;

use std::path::{Path, PathBuf};

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

#[test]
fn every_fuzz_target_survives_the_fixtures_seeds_and_regressions() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut shared = Vec::new();
    files_under(&root.join("tests/fixtures"), &mut shared);
    files_under(&root.join("plugins"), &mut shared);
    assert!(shared.len() > 50, "fixtures found: {}", shared.len());
    for (name, target) in targets::TARGETS {
        let mut inputs = shared.clone();
        files_under(&root.join("fuzz/seeds").join(name), &mut inputs);
        files_under(&root.join("fuzz/regressions").join(name), &mut inputs);
        for input in &inputs {
            let data = std::fs::read(input).unwrap();
            if std::panic::catch_unwind(|| target(&data)).is_err() {
                panic!("fuzz target {name} panicked on {}", input.display());
            }
        }
    }
}
