//! The shipped Prometheus rules: `promtool check rules` is clean and every
//! `promtool test rules` file in deploy/prometheus/tests passes, and together
//! the tests name every recording rule and every alert.

use std::path::{Path, PathBuf};
use std::process::Command;

fn files(dir: &str, suffix: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no {suffix} files in {}", dir.display());
    files
}

fn promtool(args: &[&str], files: &[PathBuf]) -> (bool, String) {
    let output = Command::new("promtool")
        .args(args)
        .args(files)
        .output()
        .expect("promtool is installed (Debian package `prometheus`; scripts/test installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn shipped_rules_pass_promtool_check_rules() {
    let (ok, output) = promtool(
        &["check", "rules"],
        &files("deploy/prometheus/rules", ".yml"),
    );
    assert!(ok, "{output}");
}

#[test]
fn shipped_rule_tests_pass_and_cover_every_rule() {
    let tests = files("deploy/prometheus/tests", ".test.yml");
    let (ok, output) = promtool(&["test", "rules"], &tests);
    assert!(ok, "{output}");

    let test_text: String = tests
        .iter()
        .map(|t| std::fs::read_to_string(t).unwrap())
        .collect();
    let mut uncovered = Vec::new();
    for rules in files("deploy/prometheus/rules", ".yml") {
        for line in std::fs::read_to_string(&rules).unwrap().lines() {
            let line = line.trim();
            let name = line
                .strip_prefix("- record:")
                .or_else(|| line.strip_prefix("- alert:"))
                .map(str::trim);
            if let Some(name) = name {
                if !test_text.contains(name) {
                    uncovered.push(name.to_owned());
                }
            }
        }
    }
    assert!(
        uncovered.is_empty(),
        "rules no promtool test mentions: {uncovered:?}"
    );
}
