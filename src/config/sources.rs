//! The settings of the sources: `[sources.pelorus]` and every native
//! source instance (`[sources.<source>]`, `[sources.<source>.<name>]`), as
//! written and as checked into a [`SourceInstance`] with its verifier and
//! its [`SourceOptions`].
//!
//! Every error names the key it is about; secrets are read through the
//! parent module and never printed.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::{load_secrets, string_list, ConfigError};
use crate::events::{App, Namespace};
use crate::plugins::{self, AuthScheme, Plugin, SourceOptions};
use crate::signature::{Secret, Verifier};

/// `[sources.*]`: one table per webhook source.
/// `[sources]`: the Pelorus endpoint and the native sources. A native
/// source's section (`[sources.github]`) holds the options of its default
/// instance and, as sub-tables, named instances (`[sources.github.acme]`,
/// served at `/hooks/github/acme`). Unknown sources and options are refused
/// when the settings are checked, naming the key.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RawSources {
    #[serde(default)]
    pub pelorus: RawPelorus,
    #[serde(flatten)]
    pub native: BTreeMap<String, serde_json::Value>,
}

/// Options of one native source instance, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSourceOptions {
    /// Serve this instance (default: true once its section exists).
    pub enabled: Option<bool>,
    /// Shared secrets or tokens; two entries while one is rotated.
    #[serde(deserialize_with = "string_list")]
    pub secrets: Vec<String>,
    /// File with one secret per line (a mounted Kubernetes Secret).
    pub secrets_file: Option<PathBuf>,
    /// Branches whose pushes count (default: the repository's default branch).
    #[serde(deserialize_with = "string_list")]
    pub branches: Vec<String>,
    /// Environments that count as production (default: `production`).
    #[serde(deserialize_with = "string_list")]
    pub environments: Vec<String>,
    /// Environment → namespace (default: the environment as a label).
    pub namespaces: BTreeMap<String, String>,
    /// Labels that make an issue an incident (default: `incident`).
    #[serde(deserialize_with = "string_list")]
    pub incident_labels: Vec<String>,
    /// Repository / project / service → application name.
    pub apps: BTreeMap<String, String>,
    /// Opt-in deploy signals (workflows, pipelines, jobs, status contexts).
    #[serde(deserialize_with = "string_list")]
    pub deploy_workflows: Vec<String>,
    /// Issue or work item types that are incidents (Jira, Azure DevOps).
    #[serde(deserialize_with = "string_list")]
    pub issue_types: Vec<String>,
    /// GitHub only: also accept the SHA-1 `X-Hub-Signature`.
    pub legacy_sha1_signatures: bool,
    /// GitHub, GitLab: refs whose deploys are rework (`hotfix/*`).
    #[serde(deserialize_with = "string_list")]
    pub rework_refs: Vec<String>,
    /// GitHub: deployment tasks that are rework (`deploy:hotfix`).
    #[serde(deserialize_with = "string_list")]
    pub rework_tasks: Vec<String>,
    /// CDEvents only: how deliveries are authenticated, `hmac` (default),
    /// `bearer` or `standard-webhooks`.
    pub auth: Option<String>,
    /// CDEvents only: the header carrying `sha256=<hex HMAC of the body>`
    /// under `auth = "hmac"` (default `X-Hub-Signature-256`).
    pub signature_header: Option<String>,
    /// Largest body this instance reads (default: the source's own cap).
    pub max_body_bytes: Option<usize>,
}

/// One native source instance: `/hooks/<source>` or `/hooks/<source>/<name>`.
#[derive(Clone)]
pub struct SourceInstance {
    pub plugin: &'static dyn Plugin,
    pub name: Option<String>,
    pub enabled: bool,
    pub verifier: Verifier,
    /// The headers carrying this instance's credentials (the verifier's),
    /// redacted wherever headers are kept.
    pub credential_headers: Vec<&'static str>,
    pub options: SourceOptions,
    /// Largest body read from a delivery to this instance.
    pub max_body_bytes: usize,
}

impl SourceInstance {
    /// `github` or `github.acme`: the configuration key of this instance.
    pub fn key(&self) -> String {
        match &self.name {
            Some(name) => format!("{}.{name}", self.plugin.source()),
            None => self.plugin.source().to_owned(),
        }
    }
}

impl SourceInstance {
    /// This instance's section of `check-config`, secrets redacted.
    pub(super) fn to_redacted_toml(&self) -> String {
        let text = |s: &str| serde_json::to_string(s).unwrap_or_default();
        let list = |items: &[String]| {
            let quoted: Vec<String> = items.iter().map(|i| text(i)).collect();
            format!("[{}]", quoted.join(", "))
        };
        let secrets = self.verifier.secret_count();
        let mut out = format!(
            "\n[sources.{}]\nenabled = {}\nsecrets = [{}]\nmax_body_bytes = {}\n",
            self.key(),
            self.enabled,
            vec!["\"[redacted]\""; secrets].join(", "),
            self.max_body_bytes
        );
        let o = &self.options;
        let options = self.plugin.profile().options;
        let mut line = |name: &str, value: String| {
            if options.contains(&name) {
                out.push_str(&format!("{name} = {value}\n"));
            }
        };
        line("branches", list(&o.branches));
        line("environments", list(&o.environments));
        line("incident_labels", list(&o.incident_labels));
        line("deploy_workflows", list(&o.deploy_workflows));
        line("issue_types", list(&o.issue_types));
        line("rework_refs", list(&o.rework_refs));
        line("rework_tasks", list(&o.rework_tasks));
        line(
            "legacy_sha1_signatures",
            o.legacy_sha1_signatures.to_string(),
        );
        line("auth", text(o.auth.as_str()));
        line(
            "signature_header",
            text(match o.signature_header {
                "" => plugins::cdevents::DEFAULT_SIGNATURE_HEADER,
                name => name,
            }),
        );
        let table = |entries: Vec<(String, String)>| {
            let pairs: Vec<String> = entries
                .iter()
                .map(|(k, v)| format!("{} = {}", text(k), text(v)))
                .collect();
            format!("{{ {} }}", pairs.join(", "))
        };
        line(
            "namespaces",
            table(
                o.namespaces
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().to_owned()))
                    .collect(),
            ),
        );
        line(
            "apps",
            table(
                o.apps
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().to_owned()))
                    .collect(),
            ),
        );
        out
    }
}

impl std::fmt::Debug for SourceInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceInstance")
            .field("source", &self.plugin.source())
            .field("name", &self.name)
            .field("enabled", &self.enabled)
            .field("verifier", &self.verifier)
            .field("options", &self.options)
            .finish()
    }
}

/// Keys every native instance takes, besides its source's own options.
const COMMON_OPTIONS: &[&str] = &["enabled", "secrets", "secrets_file", "max_body_bytes"];

/// The table `<key>.<name>` with its values parsed; an error names the
/// entry and says why.
fn table_of<T>(
    key: &str,
    name: &str,
    table: BTreeMap<String, String>,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<BTreeMap<String, T>, ConfigError> {
    table
        .into_iter()
        .map(|(entry, value)| match parse(&value) {
            Ok(parsed) => Ok((entry, parsed)),
            Err(reason) => Err(ConfigError::invalid(
                &format!("{key}.{name}.{entry}"),
                reason,
            )),
        })
        .collect()
}

/// The range of a source instance's `max_body_bytes`: below 1 KiB no real
/// delivery fits; 25 MiB is the largest any provider sends (GitHub).
const MIN_BODY_CAP: usize = 1024;
const MAX_BODY_CAP: usize = 25 * 1024 * 1024;

fn is_option(plugin: &dyn Plugin, key: &str) -> bool {
    COMMON_OPTIONS.contains(&key) || plugin.profile().options.contains(&key)
}

/// Builds the native source instances of `[sources.*]`.
pub(super) fn native_sources(
    sections: &BTreeMap<String, serde_json::Value>,
    known: &[&'static dyn Plugin],
) -> Result<Vec<SourceInstance>, ConfigError> {
    let mut instances = Vec::new();
    for (source, section) in sections {
        let key = format!("sources.{source}");
        let plugin = known
            .iter()
            .copied()
            .find(|p| p.source() == source)
            .ok_or_else(|| {
                let known: Vec<&str> = known.iter().map(|p| p.source()).collect();
                ConfigError::invalid(
                    &key,
                    format!(
                        "unknown source; known sources: pelorus, {}",
                        known.join(", ")
                    ),
                )
            })?;
        let serde_json::Value::Object(table) = section else {
            return Err(ConfigError::invalid(&key, "must be a table"));
        };
        let mut own = serde_json::Map::new();
        for (k, v) in table {
            if is_option(plugin, k) {
                own.insert(k.clone(), v.clone());
            } else if v.is_object() {
                let valid_name = !k.is_empty()
                    && k.len() <= 63
                    && k.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                    });
                if !valid_name {
                    return Err(ConfigError::invalid(
                        &format!("{key}.{k}"),
                        "an instance name is 1 to 63 characters of a-z, 0-9, - and _",
                    ));
                }
                instances.push(source_instance(plugin, Some(k), v, &format!("{key}.{k}"))?);
            } else {
                return Err(ConfigError::invalid(
                    &format!("{key}.{k}"),
                    format!(
                        "not an option of {source}; its options: {}",
                        COMMON_OPTIONS
                            .iter()
                            .chain(plugin.profile().options)
                            .copied()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
        if !own.is_empty() {
            let own = serde_json::Value::Object(own);
            instances.push(source_instance(plugin, None, &own, &key)?);
        }
    }
    Ok(instances)
}

fn source_instance(
    plugin: &'static dyn Plugin,
    name: Option<&str>,
    table: &serde_json::Value,
    key: &str,
) -> Result<SourceInstance, ConfigError> {
    if let serde_json::Value::Object(map) = table {
        if let Some(k) = map.keys().find(|k| !is_option(plugin, k)) {
            return Err(ConfigError::invalid(
                &format!("{key}.{k}"),
                format!("not an option of {}", plugin.source()),
            ));
        }
    }
    let raw: RawSourceOptions = serde_json::from_value(table.clone())
        .map_err(|e| ConfigError::invalid(key, e.to_string()))?;
    let secrets = load_secrets(key, &raw.secrets, raw.secrets_file.as_deref())?;
    let mut options = plugin.defaults();
    if !raw.branches.is_empty() {
        options.branches = raw.branches;
    }
    if !raw.environments.is_empty() {
        options.environments = raw.environments;
    }
    if !raw.incident_labels.is_empty() {
        options.incident_labels = raw.incident_labels;
    }
    if !raw.issue_types.is_empty() {
        options.issue_types = raw.issue_types;
    }
    options.deploy_workflows = raw.deploy_workflows;
    options.rework_refs = raw.rework_refs;
    options.rework_tasks = raw.rework_tasks;
    options.legacy_sha1_signatures = raw.legacy_sha1_signatures;
    if let Some(auth) = raw.auth {
        options.auth = AuthScheme::parse(&auth).ok_or_else(|| {
            ConfigError::invalid(
                &format!("{key}.auth"),
                "must be hmac, bearer or standard-webhooks",
            )
        })?;
    }
    if let Some(name) = raw.signature_header {
        let header =
            actix_web::http::header::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                ConfigError::invalid(
                    &format!("{key}.signature_header"),
                    "not a valid header name",
                )
            })?;
        // Read once per instance at start-up: leaked to live as long as the process.
        options.signature_header = Box::leak(header.as_str().to_owned().into_boxed_str());
    }
    // No source has default namespaces or apps: the written ones are all.
    options.namespaces = table_of(key, "namespaces", raw.namespaces, |value| {
        Namespace::parse(value).map_err(|e| format!("not an RFC 1123 label ({})", e.as_str()))
    })?;
    options.apps = table_of(key, "apps", raw.apps, |value| {
        App::parse(value).map_err(|e| format!("not a valid application name ({})", e.as_str()))
    })?;
    let verifier = if secrets.is_empty() {
        Verifier::Open
    } else {
        plugin
            .verifier(secrets, &options)
            .map_err(|reason| ConfigError::invalid(&format!("{key}.secrets"), reason))?
    };
    let max_body_bytes = match raw.max_body_bytes {
        None => plugin.profile().max_body_bytes,
        Some(n) if (MIN_BODY_CAP..=MAX_BODY_CAP).contains(&n) => n,
        Some(_) => {
            return Err(ConfigError::invalid(
                &format!("{key}.max_body_bytes"),
                format!("must be between {MIN_BODY_CAP} and {MAX_BODY_CAP} bytes"),
            ))
        }
    };
    Ok(SourceInstance {
        plugin,
        name: name.map(str::to_owned),
        enabled: raw.enabled.unwrap_or(true),
        credential_headers: verifier.header_names(),
        verifier,
        options,
        max_body_bytes,
    })
}

/// `[sources.pelorus]`: the Pelorus-compatible endpoint `POST /pelorus/webhook`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPelorus {
    pub enabled: bool,
    /// Shared secrets; two entries while a secret is rotated.
    pub secrets: Vec<String>,
    /// File with one secret per line (a mounted Kubernetes Secret).
    pub secrets_file: Option<PathBuf>,
    /// After a strict check fails, try Pelorus' whitespace-lenient check.
    pub lenient_signatures: bool,
}

impl Default for RawPelorus {
    fn default() -> Self {
        RawPelorus {
            enabled: true,
            secrets: Vec::new(),
            secrets_file: None,
            lenient_signatures: true,
        }
    }
}

#[derive(Debug, Clone)]
pub struct PelorusSettings {
    pub enabled: bool,
    pub secrets: Vec<Secret>,
    pub lenient_signatures: bool,
}
