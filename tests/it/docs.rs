//! The documentation stays true to the code: every key of the configuration
//! structs is in the reference (docs/configuration.md), every shell block of
//! README.md and docs/ parses, and every relative link and anchor resolves.
//! (The TOML blocks pass `check-config`: `cli::doc_toml_samples_load`.)

use std::collections::BTreeSet;
use std::path::PathBuf;

use hookgauge::config::{RawConfig, RawSourceOptions};

use crate::harness::repo;

/// README.md and every Markdown file of docs/, as (path, text).
pub fn documents() -> Vec<(PathBuf, String)> {
    let mut paths = vec![repo("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    paths.extend(docs);
    paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p, text)
        })
        .collect()
}

/// The code blocks of `text` fenced as `language`.
pub fn blocks<'a>(text: &'a str, language: &str) -> Vec<&'a str> {
    let fence = format!("```{language}\n");
    text.split(fence.as_str())
        .skip(1)
        .map(|rest| &rest[..rest.find("```").unwrap()])
        .collect()
}

/// The fields a struct with `deny_unknown_fields` accepts, read from the
/// error it gives for an unknown one.
fn fields_named_by(error: &str) -> Vec<String> {
    let expected = error
        .split("expected")
        .nth(1)
        .unwrap_or_else(|| panic!("an unknown-field error lists the fields: {error}"));
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

fn fields_of_section(section: &str) -> Vec<String> {
    let text = format!("{section}\nzz_probe = 1\n");
    let error = toml::from_str::<RawConfig>(&text).unwrap_err().to_string();
    fields_named_by(&error)
}

#[test]
fn every_configuration_key_is_in_the_reference() {
    let reference = std::fs::read_to_string(repo("docs/configuration.md")).unwrap();
    let mut keys = BTreeSet::new();
    let top = fields_of_section("");
    assert!(top.contains(&"server".to_owned()), "{top:?}");
    for section in &top {
        match section.as_str() {
            "sources" => {
                for key in fields_of_section("[sources.pelorus]") {
                    keys.insert(format!("sources.pelorus.{key}"));
                }
                let error =
                    serde_json::from_value::<RawSourceOptions>(serde_json::json!({"zz_probe": 1}))
                        .unwrap_err()
                        .to_string();
                for key in fields_named_by(&error) {
                    keys.insert(format!("sources.<source>.{key}"));
                }
            }
            "poll" => {
                for key in fields_of_section("[poll]") {
                    if !matches!(key.as_str(), "github" | "gitlab" | "gitea") {
                        keys.insert(format!("poll.{key}"));
                    }
                }
                for key in fields_of_section("[[poll.github]]\nrepo = \"a/b\"") {
                    keys.insert(format!("poll.<provider>[].{key}"));
                }
            }
            section => {
                for key in fields_of_section(&format!("[{section}]")) {
                    keys.insert(format!("{section}.{key}"));
                }
            }
        }
    }
    assert!(keys.len() > 50, "{keys:?}");
    let missing: Vec<&String> = keys
        .iter()
        .filter(|key| !reference.contains(&format!("| `{key}` |")))
        .collect();
    assert!(
        missing.is_empty(),
        "configuration keys without a row in docs/configuration.md: {missing:?}"
    );
}

#[test]
fn shell_blocks_parse() {
    let mut checked = 0;
    for (path, text) in documents() {
        for block in blocks(&text, "sh") {
            let output = std::process::Command::new("bash")
                .args(["-n", "-c", block])
                .output()
                .unwrap();
            assert!(
                output.status.success(),
                "{}: a shell block does not parse:\n{block}\n{}",
                path.display(),
                String::from_utf8_lossy(&output.stderr)
            );
            checked += 1;
        }
    }
    assert!(checked >= 10, "{checked} shell blocks");
}

/// GitHub's anchor of a heading: lower case, punctuation but `-` and `_`
/// dropped, spaces as `-`.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(text: &str) -> BTreeSet<String> {
    let mut fenced = false;
    let mut found = BTreeSet::new();
    for line in text.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
        } else if !fenced && line.starts_with('#') {
            found.insert(anchor(line.trim_start_matches('#')));
        }
    }
    found
}

#[test]
fn relative_links_and_anchors_resolve() {
    let mut broken = Vec::new();
    for (path, text) in documents() {
        let dir = path.parent().unwrap();
        for (at, _) in text.match_indices("](") {
            let rest = &text[at + 2..];
            let target = &rest[..rest.find(')').unwrap_or(0)];
            if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (file, fragment) = target.split_once('#').unwrap_or((target, ""));
            let file = if file.is_empty() {
                path.clone()
            } else {
                dir.join(file)
            };
            if !file.exists() {
                broken.push(format!("{}: {target}: no such file", path.display()));
                continue;
            }
            if !fragment.is_empty() {
                let text = std::fs::read_to_string(&file).unwrap_or_default();
                if !anchors(&text).contains(fragment) {
                    broken.push(format!("{}: {target}: no such heading", path.display()));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}
