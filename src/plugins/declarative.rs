//! Declarative plugins: a source described by a TOML file instead of Rust
//! code (docs/sources.md, "Writing a plugin"). A file names the source, how its
//! deliveries are authenticated, where the delivery id is, and an ordered
//! list of rules; the first rule whose headers and conditions hold decides
//! what the delivery becomes: events built from RFC 9535 JSONPath fields, or
//! an ignore reason.
//!
//! The shipped files (`plugins/*.toml`) are compiled in; `[server]
//! plugins_dir` adds the user's own, and a user file for a shipped source
//! replaces it. A file that does not load stops start-up with its name, the
//! line and the reason. Loaded once per process: the names a file declares
//! live as long as the process.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use actix_web::http::header::HeaderMap;
use regex::Regex;
use serde::Deserialize;
use serde_json::Value;
use serde_json_path::JsonPath;
use toml::Spanned;

use super::payload::Reader;
use super::{
    timestamp, FieldProblem, Incoming, Mapping, Naming, PayloadError, Plugin, Profile,
    SourceOptions,
};
use crate::events::{
    App, Commit, CommitSha, Deploy, Event, EventTime, Failure, FailureChange, FieldError, ImageSha,
    IssueNumber, Link, Namespace,
};
use crate::ledger::DeliveryId;
use crate::signature::{self, HmacAlgorithm, HmacHeader, MacEncoding, Secret, Verifier};

/// The plugins shipped with hookgauge, as (file name, text).
pub const SHIPPED: &[(&str, &str)] = &[
    ("argocd.toml", include_str!("../../plugins/argocd.toml")),
    ("tekton.toml", include_str!("../../plugins/tekton.toml")),
    ("jenkins.toml", include_str!("../../plugins/jenkins.toml")),
];

/// Largest body a declarative source accepts unless its file says otherwise.
const DEFAULT_MAX_BODY_BYTES: usize = 5 * 1024 * 1024;

/// The most a file may allow (GitHub's ceiling, the largest of any sender).
const MAX_BODY_BYTES: usize = 25 * 1024 * 1024;

/// A plugin file that cannot be used: where, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginFileError {
    pub file: String,
    pub line: usize,
    pub reason: String,
}

impl fmt::Display for PluginFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.reason)
    }
}

impl std::error::Error for PluginFileError {}

/// Loads the shipped plugins and then every `*.toml` in `dir` (sorted by
/// name), a user file replacing a shipped plugin of the same source.
pub fn load(dir: Option<&Path>) -> Result<Vec<&'static dyn Plugin>, PluginFileError> {
    let mut loaded: Vec<(String, &'static Declarative)> = shipped()?
        .iter()
        .map(|(name, plugin)| (format!("plugins/{name}"), *plugin))
        .collect();
    let shipped = loaded.len();
    let mut replaced = vec![false; shipped];
    if let Some(dir) = dir {
        for path in toml_files(dir)? {
            let file = path.display().to_string();
            let text = std::fs::read_to_string(&path).map_err(|e| PluginFileError {
                file: file.clone(),
                line: 0,
                reason: format!("cannot read: {e}"),
            })?;
            let plugin = parse(&file, &text)?;
            match loaded.iter().position(|(_, p)| p.source == plugin.source) {
                Some(i) if i < shipped && !replaced[i] => {
                    replaced[i] = true;
                    tracing::info!(
                        source = plugin.source,
                        file,
                        "Plugin file replaces the shipped one"
                    );
                    loaded[i] = (file, Box::leak(Box::new(plugin)));
                }
                Some(i) => {
                    return Err(PluginFileError {
                        file,
                        line: 1,
                        reason: format!(
                            "source `{}` is already defined by {}",
                            plugin.source, loaded[i].0
                        ),
                    })
                }
                None => loaded.push((file, Box::leak(Box::new(plugin)))),
            }
        }
    }
    Ok(loaded
        .into_iter()
        .map(|(_, plugin)| plugin as &'static dyn Plugin)
        .collect())
}

/// The shipped plugins, parsed once per process: a plugin lives as long as
/// the process (its strings are `'static`), so loading them again, as every
/// `Settings` load does, must not allocate them again.
fn shipped() -> Result<&'static [(&'static str, &'static Declarative)], PluginFileError> {
    static SHIPPED_PLUGINS: std::sync::OnceLock<
        Result<Vec<(&'static str, &'static Declarative)>, PluginFileError>,
    > = std::sync::OnceLock::new();
    SHIPPED_PLUGINS
        .get_or_init(|| {
            SHIPPED
                .iter()
                .map(|(name, text)| {
                    let plugin: &'static Declarative = Box::leak(Box::new(parse(name, text)?));
                    Ok((*name, plugin))
                })
                .collect()
        })
        .as_ref()
        .map(Vec::as_slice)
        .map_err(Clone::clone)
}

fn toml_files(dir: &Path) -> Result<Vec<PathBuf>, PluginFileError> {
    let entries = std::fs::read_dir(dir).map_err(|e| PluginFileError {
        file: dir.display().to_string(),
        line: 0,
        reason: format!("cannot read the plugins directory: {e}"),
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

// ---- The file format -------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    source: Spanned<String>,
    #[serde(default)]
    #[allow(dead_code)]
    description: String,
    max_body_bytes: Option<usize>,
    auth: Spanned<AuthFile>,
    #[serde(default)]
    delivery: DeliveryFile,
    /// The ignore reason when no rule applies.
    #[serde(default = "default_otherwise")]
    otherwise: Spanned<String>,
    #[serde(rename = "rule", default)]
    rules: Vec<Spanned<RuleFile>>,
}

fn default_otherwise() -> Spanned<String> {
    Spanned::new(0..0, "no_rule_matched".to_owned())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthFile {
    scheme: Spanned<String>,
    header: Option<Spanned<String>>,
    #[serde(default)]
    prefix: String,
    algorithm: Option<Spanned<String>>,
    encoding: Option<Spanned<String>>,
    parameter: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DeliveryFile {
    /// Header with the sender's delivery id.
    id_header: Option<Spanned<String>>,
    /// Body field with the delivery id, when no header has it.
    id: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    name: Spanned<String>,
    #[serde(default)]
    headers: toml::Table,
    when: Option<Spanned<String>>,
    in_option: Option<Spanned<InOptionFile>>,
    ignore: Option<Spanned<String>>,
    emit: Option<Spanned<OneOrMany>>,
    #[serde(default)]
    fields: std::collections::BTreeMap<String, Spanned<FieldValue>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InOptionFile {
    option: String,
    path: PathsFile,
}

/// A field: a JSONPath query, a list of them, or a table.
#[derive(Deserialize)]
#[serde(untagged)]
enum FieldValue {
    Paths(PathsFile),
    Spec(FieldFile),
}

#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(one) => vec![one],
            OneOrMany::Many(many) => many,
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum PathsFile {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FieldFile {
    path: Option<PathsFile>,
    value: Option<String>,
    pattern: Option<String>,
    #[serde(default)]
    optional: bool,
}

// ---- The loaded form ---------------------------------------------------------

/// A source defined by a plugin file.
pub struct Declarative {
    source: &'static str,
    max_body_bytes: usize,
    auth: Auth,
    id_header: Option<String>,
    id_path: Option<JsonPath>,
    otherwise: &'static str,
    rules: Vec<Rule>,
}

enum Auth {
    Hmac(HmacHeader),
    Token(&'static str),
    Bearer,
    StandardWebhooks,
    QueryToken(&'static str),
    None,
}

struct Rule {
    name: &'static str,
    headers: Vec<(String, Vec<String>)>,
    when: Option<JsonPath>,
    in_option: Option<(OptionList, Vec<Query>)>,
    outcome: Outcome,
}

#[derive(Clone, Copy)]
enum OptionList {
    Branches,
    Environments,
    IncidentLabels,
    IssueTypes,
    DeployWorkflows,
}

impl OptionList {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "branches" => OptionList::Branches,
            "environments" => OptionList::Environments,
            "incident_labels" => OptionList::IncidentLabels,
            "issue_types" => OptionList::IssueTypes,
            "deploy_workflows" => OptionList::DeployWorkflows,
            _ => return None,
        })
    }

    fn values(self, options: &SourceOptions) -> &[String] {
        match self {
            OptionList::Branches => &options.branches,
            OptionList::Environments => &options.environments,
            OptionList::IncidentLabels => &options.incident_labels,
            OptionList::IssueTypes => &options.issue_types,
            OptionList::DeployWorkflows => &options.deploy_workflows,
        }
    }
}

enum Outcome {
    Ignore(&'static str),
    Emit(Vec<Kind>, Box<Fields>),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Deploy,
    Commit,
    Link,
    FailureCreated,
    FailureResolved,
}

impl Kind {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "deploy" => Kind::Deploy,
            "commit" => Kind::Commit,
            "link" => Kind::Link,
            "failure_created" => Kind::FailureCreated,
            "failure_resolved" => Kind::FailureResolved,
            _ => return None,
        })
    }

    /// (required, optional) fields of this kind.
    fn fields(self) -> (&'static [&'static str], &'static [&'static str]) {
        match self {
            Kind::Deploy => (
                &["app", "time"],
                &["commit", "image", "namespace", "environment"],
            ),
            Kind::Commit => (&["app", "commit", "time"], &["image", "namespace", "link"]),
            Kind::Link => (&["app", "commit", "image", "time"], &[]),
            Kind::FailureCreated | Kind::FailureResolved => (&["app", "id", "time"], &[]),
        }
    }
}

/// One JSONPath query and its text (the field name in 422 answers).
struct Query {
    text: &'static str,
    path: JsonPath,
}

/// Where one event field comes from.
struct Field {
    /// Tried in order; the first node that is a string or number (and
    /// matches `pattern`) is the value.
    queries: Vec<Query>,
    constant: Option<String>,
    pattern: Option<Regex>,
    optional: bool,
}

#[derive(Default)]
struct Fields {
    app: Option<Field>,
    time: Option<Field>,
    commit: Option<Field>,
    image: Option<Field>,
    namespace: Option<Field>,
    environment: Option<Field>,
    link: Option<Field>,
    id: Option<Field>,
}

// ---- Loading -------------------------------------------------------------------

fn leak(text: String) -> &'static str {
    Box::leak(text.into_boxed_str())
}

struct Loader<'a> {
    file: &'a str,
    text: &'a str,
}

impl Loader<'_> {
    fn error(&self, span: Range<usize>, reason: impl Into<String>) -> PluginFileError {
        let line = self.text[..span.start.min(self.text.len())]
            .bytes()
            .filter(|&b| b == b'\n')
            .count()
            + 1;
        PluginFileError {
            file: self.file.to_owned(),
            line,
            reason: reason.into(),
        }
    }

    fn path(&self, text: &str, span: Range<usize>) -> Result<Query, PluginFileError> {
        let path = JsonPath::parse(text)
            .map_err(|e| self.error(span, format!("`{text}` is not a JSONPath query: {e}")))?;
        Ok(Query {
            text: leak(text.to_owned()),
            path,
        })
    }

    fn paths(&self, paths: PathsFile, span: Range<usize>) -> Result<Vec<Query>, PluginFileError> {
        match paths {
            PathsFile::One(one) => Ok(vec![self.path(&one, span)?]),
            PathsFile::Many(many) => many.iter().map(|p| self.path(p, span.clone())).collect(),
        }
    }

    fn label(&self, text: &Spanned<String>, what: &str) -> Result<&'static str, PluginFileError> {
        let value = text.get_ref();
        let valid = !value.is_empty()
            && value.len() <= 63
            && value
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !valid {
            return Err(self.error(
                text.span(),
                format!("{what} `{value}` must be 1 to 63 characters of a-z, 0-9, _ and -"),
            ));
        }
        Ok(leak(value.clone()))
    }

    /// A header name as `http` accepts it, lowercased.
    fn header_name(&self, name: &str, span: Range<usize>) -> Result<&'static str, PluginFileError> {
        actix_web::http::header::HeaderName::from_bytes(name.as_bytes())
            .map(|h| leak(h.as_str().to_owned()))
            .map_err(|_| self.error(span, format!("`{name}` is not a valid header name")))
    }

    fn auth(&self, auth: Spanned<AuthFile>) -> Result<Auth, PluginFileError> {
        let span = auth.span();
        let auth = auth.into_inner();
        let scheme = auth.scheme.get_ref().as_str();
        // Keys that mean nothing under the scheme are mistakes, not defaults.
        let allowed: &[&str] = match scheme {
            "hmac" => &["header", "prefix", "algorithm", "encoding"],
            "token" => &["header"],
            "query-token" => &["parameter"],
            _ => &[],
        };
        let given = [
            ("header", auth.header.is_some()),
            ("prefix", !auth.prefix.is_empty()),
            ("algorithm", auth.algorithm.is_some()),
            ("encoding", auth.encoding.is_some()),
            ("parameter", auth.parameter.is_some()),
        ];
        if let Some((key, _)) = given.iter().find(|(k, set)| *set && !allowed.contains(k)) {
            return Err(self.error(span, format!("`{key}` does not apply to scheme `{scheme}`")));
        }
        let header = |what: &str| match &auth.header {
            Some(h) => self.header_name(h.get_ref(), h.span()),
            None => Err(self.error(span.clone(), format!("scheme `{what}` needs `header`"))),
        };
        Ok(match scheme {
            "hmac" => {
                let algorithm = match &auth.algorithm {
                    None => HmacAlgorithm::Sha256,
                    Some(a) => HmacAlgorithm::parse(a.get_ref()).ok_or_else(|| {
                        self.error(a.span(), "`algorithm` must be sha256, sha512 or sha1")
                    })?,
                };
                let encoding = match auth.encoding.as_ref().map(|e| (e.get_ref().as_str(), e)) {
                    None | Some(("hex", _)) => MacEncoding::Hex,
                    Some(("base64", _)) => MacEncoding::Base64,
                    Some((_, e)) => return Err(self.error(e.span(), "`encoding` must be hex or base64")),
                };
                Auth::Hmac(HmacHeader {
                    name: header("hmac")?,
                    prefix: leak(auth.prefix.clone()),
                    algorithm,
                    encoding,
                })
            }
            "token" => Auth::Token(header("token")?),
            "bearer" | "basic" => Auth::Bearer,
            "standard-webhooks" => Auth::StandardWebhooks,
            "query-token" => {
                let parameter = match &auth.parameter {
                    None => "token".to_owned(),
                    Some(p) => {
                        let valid = !p.get_ref().is_empty()
                            && p.get_ref().bytes().all(|b| {
                                b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')
                            });
                        if !valid {
                            return Err(self.error(
                                p.span(),
                                "`parameter` must be letters, digits, _, - and .",
                            ));
                        }
                        p.get_ref().clone()
                    }
                };
                Auth::QueryToken(leak(parameter))
            }
            "none" => Auth::None,
            other => {
                return Err(self.error(
                    auth.scheme.span(),
                    format!(
                        "unknown scheme `{other}`; schemes: hmac, token, bearer, basic, standard-webhooks, query-token, none"
                    ),
                ))
            }
        })
    }

    fn field(
        &self,
        key: &str,
        value: Spanned<FieldValue>,
        required: bool,
    ) -> Result<Field, PluginFileError> {
        let span = value.span();
        let spec = match value.into_inner() {
            FieldValue::Paths(paths) => FieldFile {
                path: Some(paths),
                value: None,
                pattern: None,
                optional: false,
            },
            FieldValue::Spec(spec) => spec,
        };
        let queries = match spec.path {
            Some(paths) => self.paths(paths, span.clone())?,
            None => Vec::new(),
        };
        if queries.is_empty() == spec.value.is_none() {
            return Err(self.error(
                span,
                format!("fields.{key} needs exactly one of `path` and `value`"),
            ));
        }
        if spec.optional && required {
            return Err(self.error(
                span,
                format!("fields.{key} is required: it cannot be optional"),
            ));
        }
        if let Some(constant) = &spec.value {
            let checked = match key {
                "app" => App::parse(constant).map(drop),
                "time" => timestamp::parse_text(constant).map(drop),
                "commit" => CommitSha::parse(constant).map(drop),
                "image" => ImageSha::parse(constant).map(drop),
                "namespace" => Namespace::parse(constant).map(drop),
                "id" => IssueNumber::parse(constant).map(drop),
                _ => Ok(()),
            };
            if let Err(reason) = checked {
                return Err(self.error(
                    span,
                    format!(
                        "fields.{key}: `{constant}` is not valid ({})",
                        reason.as_str()
                    ),
                ));
            }
        }
        let pattern = match &spec.pattern {
            None => None,
            Some(p) => Some(Regex::new(p).map_err(|e| {
                self.error(
                    span.clone(),
                    format!("fields.{key}.pattern is not a regular expression: {e}"),
                )
            })?),
        };
        Ok(Field {
            queries,
            constant: spec.value,
            pattern,
            optional: spec.optional,
        })
    }

    fn rule(&self, rule: Spanned<RuleFile>) -> Result<Rule, PluginFileError> {
        let span = rule.span();
        let rule = rule.into_inner();
        let name = self.label(&rule.name, "rule name")?;
        let mut headers = Vec::new();
        for (header, values) in &rule.headers {
            let values = OneOrMany::deserialize(values.clone()).map_err(|_| {
                self.error(
                    span.clone(),
                    format!("headers.{header} must be a string or a list of strings"),
                )
            })?;
            let name = self.header_name(header, span.clone())?;
            headers.push((name.to_owned(), values.into_vec()));
        }
        let when = match &rule.when {
            None => None,
            Some(when) => Some(
                JsonPath::parse(&format!("$[?({})]", when.get_ref())).map_err(|e| {
                    self.error(
                        when.span(),
                        format!("`when` is not a JSONPath filter expression: {e}"),
                    )
                })?,
            ),
        };
        let in_option = match rule.in_option {
            None => None,
            Some(o) => {
                let o_span = o.span();
                let o = o.into_inner();
                let list = OptionList::parse(&o.option).ok_or_else(|| {
                    self.error(
                        o_span.clone(),
                        "in_option.option must be one of branches, environments, incident_labels, issue_types, deploy_workflows",
                    )
                })?;
                Some((list, self.paths(o.path, o_span)?))
            }
        };
        let outcome = match (rule.ignore, rule.emit) {
            (Some(reason), None) => {
                if !rule.fields.is_empty() {
                    return Err(self.error(span, "a rule that ignores takes no fields"));
                }
                Outcome::Ignore(self.label(&reason, "ignore reason")?)
            }
            (None, Some(emit)) => {
                let emit_span = emit.span();
                let mut kinds = Vec::new();
                for kind in emit.into_inner().into_vec() {
                    kinds.push(Kind::parse(&kind).ok_or_else(|| {
                        self.error(
                            emit_span.clone(),
                            format!("cannot emit `{kind}`; kinds: deploy, commit, link, failure_created, failure_resolved"),
                        )
                    })?);
                }
                Outcome::Emit(
                    kinds.clone(),
                    Box::new(self.fields(&kinds, rule.fields, span)?),
                )
            }
            _ => return Err(self.error(span, "a rule needs exactly one of `emit` and `ignore`")),
        };
        Ok(Rule {
            name,
            headers,
            when,
            in_option,
            outcome,
        })
    }

    fn fields(
        &self,
        kinds: &[Kind],
        table: std::collections::BTreeMap<String, Spanned<FieldValue>>,
        span: Range<usize>,
    ) -> Result<Fields, PluginFileError> {
        let mut fields = Fields::default();
        for (key, value) in table {
            let allowed = kinds.iter().any(|k| {
                let (required, optional) = k.fields();
                required.contains(&key.as_str()) || optional.contains(&key.as_str())
            });
            if !allowed {
                return Err(self.error(
                    value.span(),
                    format!("fields.{key} is not a field of what this rule emits"),
                ));
            }
            let required = kinds.iter().any(|k| k.fields().0.contains(&key.as_str()));
            let field = self.field(&key, value, required)?;
            let slot = match key.as_str() {
                "app" => &mut fields.app,
                "time" => &mut fields.time,
                "commit" => &mut fields.commit,
                "image" => &mut fields.image,
                "namespace" => &mut fields.namespace,
                "environment" => &mut fields.environment,
                "link" => &mut fields.link,
                _ => &mut fields.id,
            };
            *slot = Some(field);
        }
        for kind in kinds {
            for required in kind.fields().0 {
                if fields.get(required).is_none() {
                    return Err(self.error(span.clone(), format!("fields.{required} is required")));
                }
            }
        }
        Ok(fields)
    }
}

impl Fields {
    fn get(&self, name: &str) -> Option<&Field> {
        match name {
            "app" => self.app.as_ref(),
            "time" => self.time.as_ref(),
            "commit" => self.commit.as_ref(),
            "image" => self.image.as_ref(),
            "namespace" => self.namespace.as_ref(),
            "environment" => self.environment.as_ref(),
            "link" => self.link.as_ref(),
            "id" => self.id.as_ref(),
            _ => None,
        }
    }
}

/// Parses one plugin file.
pub fn parse(file: &str, text: &str) -> Result<Declarative, PluginFileError> {
    let loader = Loader { file, text };
    let raw: File = toml::from_str(text)
        .map_err(|e| loader.error(e.span().unwrap_or(0..0), e.message().to_owned()))?;
    let source = loader.label(&raw.source, "source")?;
    if super::SOURCES.iter().any(|p| p.source() == source) || source == super::pelorus::SOURCE {
        return Err(loader.error(
            raw.source.span(),
            format!("`{source}` is a built-in source"),
        ));
    }
    let auth = loader.auth(raw.auth)?;
    let id_path = match &raw.delivery.id {
        None => None,
        Some(id) => Some(loader.path(id.get_ref(), id.span())?.path),
    };
    let otherwise = if raw.otherwise.span() == (0..0) {
        "no_rule_matched"
    } else {
        loader.label(&raw.otherwise, "otherwise")?
    };
    let count = raw.rules.len();
    let mut rules = Vec::with_capacity(count);
    for (i, rule) in raw.rules.into_iter().enumerate() {
        let span = rule.span();
        let rule = loader.rule(rule)?;
        let unconditional =
            rule.headers.is_empty() && rule.when.is_none() && rule.in_option.is_none();
        if unconditional && i + 1 < count {
            return Err(loader.error(
                span,
                format!("rule `{}` has no headers, when or in_option: the rules after it could never apply", rule.name),
            ));
        }
        rules.push(rule);
    }
    if rules.is_empty() {
        return Err(loader.error(0..0, "a plugin needs at least one [[rule]]"));
    }
    let max_body_bytes = raw.max_body_bytes.map_or(Ok(DEFAULT_MAX_BODY_BYTES), |n| {
        if (1..=MAX_BODY_BYTES).contains(&n) {
            Ok(n)
        } else {
            Err(loader.error(
                0..0,
                format!("max_body_bytes must be 1 to {MAX_BODY_BYTES}"),
            ))
        }
    })?;
    let id_header = match &raw.delivery.id_header {
        None => None,
        Some(h) => Some(loader.header_name(h.get_ref(), h.span())?.to_owned()),
    };
    Ok(Declarative {
        source,
        max_body_bytes,
        auth,
        id_header,
        id_path,
        otherwise,
        rules,
    })
}

// ---- Running -------------------------------------------------------------------

impl Rule {
    /// True when the headers, the condition and (given `options`) the
    /// option list all hold.
    fn applies(
        &self,
        headers: &HeaderMap,
        payload: &Value,
        wrapped: &Value,
        options: Option<&SourceOptions>,
    ) -> bool {
        let headers_match = self.headers.iter().all(|(name, wanted)| {
            super::header(headers, name).is_some_and(|v| wanted.iter().any(|w| w == v))
        });
        let condition = self
            .when
            .as_ref()
            .is_none_or(|when| !when.query(wrapped).is_empty());
        let listed = self.in_option.as_ref().is_none_or(|(list, queries)| {
            let Some(options) = options else {
                return true;
            };
            let values = list.values(options);
            queries.iter().any(|q| {
                q.path
                    .query(payload)
                    .iter()
                    .filter_map(|v| v.as_str())
                    .any(|v| values.iter().any(|w| w == v))
            })
        });
        headers_match && condition && listed
    }
}

impl Field {
    /// The field's value as text (numbers as written), or `None` when it is
    /// absent (a problem unless the field is optional).
    fn value(&self, payload: &Value) -> Option<Value> {
        if let Some(constant) = &self.constant {
            return Some(Value::String(constant.clone()));
        }
        self.queries.iter().find_map(|q| {
            q.path.query(payload).iter().find_map(|node| {
                let text = match node {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    _ => return None,
                };
                match &self.pattern {
                    None => Some((*node).clone()),
                    Some(pattern) => pattern.captures(&text).map(|c| {
                        let found = c.get(1).or_else(|| c.get(0)).map_or("", |m| m.as_str());
                        Value::String(found.to_owned())
                    }),
                }
            })
        })
    }

    /// The name problems are reported under: the first query.
    fn name(&self, key: &'static str) -> &'static str {
        self.queries.first().map_or(key, |q| q.text)
    }
}

/// Reads the fields of one rule, collecting every problem.
struct Extract<'a, 'r> {
    payload: &'a Value,
    fields: &'a Fields,
    r: Reader<'r>,
}

impl Extract<'_, '_> {
    fn text(&mut self, key: &'static str) -> Option<String> {
        let field = self.fields.get(key)?;
        match field.value(self.payload) {
            Some(Value::String(s)) => Some(s),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => {
                if !field.optional {
                    self.r.fail(field.name(key), FieldError::Missing);
                }
                None
            }
        }
    }

    fn parsed<T>(
        &mut self,
        key: &'static str,
        parse: impl FnOnce(&str) -> Result<T, FieldError>,
    ) -> Option<T> {
        let text = self.text(key)?;
        let field = self.fields.get(key)?;
        parse(&text)
            .map_err(|e| self.r.fail(field.name(key), e))
            .ok()
    }

    fn time(&mut self) -> Option<EventTime> {
        let field = self.fields.get("time")?;
        match field.value(self.payload) {
            Some(value) => timestamp::parse_value(&value)
                .map_err(|e| self.r.fail(field.name("time"), e))
                .ok(),
            None => {
                self.r.fail(field.name("time"), FieldError::Missing);
                None
            }
        }
    }
}

impl Declarative {
    /// The first rule that applies; without `options`, option lists are
    /// not consulted (the event label, read before the instance's options).
    fn rule(
        &self,
        headers: &HeaderMap,
        payload: &Value,
        options: Option<&SourceOptions>,
    ) -> Option<&Rule> {
        // Conditions are filter expressions over a one-element array, so
        // that `@` is the payload itself.
        let wrapped = Value::Array(vec![payload.clone()]);
        self.rules
            .iter()
            .find(|rule| rule.applies(headers, payload, &wrapped, options))
    }

    fn emit(
        &self,
        kinds: &[Kind],
        fields: &Fields,
        payload: &Value,
        options: &SourceOptions,
    ) -> Result<Mapping, PayloadError> {
        let mut x = Extract {
            payload,
            fields,
            r: Reader::new(payload),
        };
        let app = x.parsed("app", |key| options.app(key));
        let time = x.time();
        let commit = x.parsed("commit", CommitSha::parse);
        let image = x.parsed("image", ImageSha::parse);
        let environment = x.text("environment");
        if let Some(environment) = &environment {
            if !options.is_production(environment) {
                return Ok(Mapping::Ignored("environment_not_production"));
            }
        }
        let namespace = match x.parsed("namespace", Namespace::parse) {
            Some(namespace) => Some(namespace),
            None => {
                let environment = environment
                    .clone()
                    .or_else(|| options.environments.first().cloned())
                    .unwrap_or_else(|| "production".into());
                options
                    .namespace(&environment)
                    .map_err(|e| x.r.fail("environment", e))
                    .ok()
            }
        };
        let id = x.parsed("id", IssueNumber::parse);
        let link = x
            .text("link")
            .and_then(|u| crate::events::CommitLink::parse(&u).ok());
        let (Some(app), Some(time)) = (app, time) else {
            return x.r.finish(None);
        };
        let mut events = Vec::new();
        for kind in kinds {
            let event = match kind {
                Kind::Deploy => namespace.clone().map(|namespace| {
                    Event::Deploy(Deploy {
                        app: app.clone(),
                        namespace,
                        image_sha: image,
                        commit: commit.clone(),
                        environment: environment.clone().map(Into::into),
                        rework: false,
                        time,
                    })
                }),
                Kind::Commit => commit.clone().map(|commit| {
                    Event::Commit(Commit {
                        app: app.clone(),
                        commit,
                        image_sha: image,
                        namespace: None,
                        commit_link: link.clone(),
                        time,
                        pushed: false,
                    })
                }),
                Kind::Link => commit.clone().zip(image).map(|(commit, image_sha)| {
                    Event::Link(Link {
                        app: app.clone(),
                        commit,
                        image_sha,
                        time,
                    })
                }),
                Kind::FailureCreated | Kind::FailureResolved => id.clone().map(|issue_number| {
                    Event::Failure(Failure {
                        app: app.clone(),
                        issue_number,
                        change: if *kind == Kind::FailureCreated {
                            FailureChange::Created
                        } else {
                            FailureChange::Resolved
                        },
                        time,
                    })
                }),
            };
            match event {
                Some(event) => events.push(event),
                None if x.r.has_problems() => {}
                None => {
                    return Err(PayloadError::Invalid(vec![FieldProblem {
                        field: "fields",
                        reason: FieldError::Missing,
                    }]))
                }
            }
        }
        x.r.finish(Some(events)).map(Mapping::Events)
    }
}

impl Plugin for Declarative {
    /// The rules name the event and `event`, `classify` and `delivery_id`
    /// below read them.
    fn profile(&self) -> Profile {
        Profile {
            source: self.source,
            options: super::LIST_OPTIONS,
            naming: Naming::NOWHERE,
            max_body_bytes: self.max_body_bytes,
        }
    }

    fn verifier(&self, secrets: Vec<Secret>, _options: &SourceOptions) -> Result<Verifier, String> {
        Ok(match &self.auth {
            Auth::Hmac(header) => Verifier::Hmac {
                headers: vec![*header],
                secrets,
            },
            Auth::Token(header) => Verifier::Token { header, secrets },
            Auth::Bearer => Verifier::Bearer { secrets },
            Auth::QueryToken(parameter) => Verifier::QueryToken { parameter, secrets },
            Auth::StandardWebhooks => Verifier::StandardWebhooks {
                keys: secrets
                    .iter()
                    .map(|s| {
                        signature::standard_webhooks_key(s).ok_or_else(|| {
                            "each secret must be whsec_ followed by base64".to_owned()
                        })
                    })
                    .collect::<Result<_, _>>()?,
            },
            Auth::None => {
                return Err(format!(
                    "{} takes no secrets (its scheme is none)",
                    self.source
                ))
            }
        })
    }

    fn event(&self, headers: &HeaderMap, payload: Option<&Value>) -> &'static str {
        let Some(payload) = payload else {
            return "unknown";
        };
        self.rule(headers, payload, None)
            .map_or("other", |rule| rule.name)
    }

    /// One rule lookup decides both the label and the mapping.
    fn classify(
        &self,
        headers: &HeaderMap,
        payload: &Value,
        options: &SourceOptions,
    ) -> (&'static str, Result<Mapping, PayloadError>) {
        let rule = self.rule(headers, payload, Some(options));
        (
            rule.map_or("other", |r| r.name),
            self.outcome(rule, payload, options),
        )
    }

    fn delivery_id(&self, headers: &HeaderMap, payload: &Value) -> Option<DeliveryId> {
        if let Some(id) = self
            .id_header
            .as_deref()
            .and_then(|name| super::header_delivery_id(headers, &[name]))
        {
            return Some(id);
        }
        let path = self.id_path.as_ref()?;
        path.query(payload).iter().find_map(|v| match v {
            Value::String(s) => DeliveryId::from_header(s),
            Value::Number(n) => DeliveryId::from_header(&n.to_string()),
            _ => None,
        })
    }

    fn map(&self, incoming: &Incoming<'_>) -> Result<Mapping, PayloadError> {
        let rule = self.rule(incoming.headers, incoming.payload, Some(incoming.options));
        self.outcome(rule, incoming.payload, incoming.options)
    }
}

impl Declarative {
    /// What the rule that applies (if any) makes of the delivery.
    fn outcome(
        &self,
        rule: Option<&Rule>,
        payload: &Value,
        options: &SourceOptions,
    ) -> Result<Mapping, PayloadError> {
        match rule.map(|r| &r.outcome) {
            None => Ok(Mapping::Ignored(self.otherwise)),
            Some(Outcome::Ignore(reason)) => Ok(Mapping::Ignored(reason)),
            Some(Outcome::Emit(kinds, fields)) => self.emit(kinds, fields, payload, options),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_plugins_load() {
        for (name, text) in SHIPPED {
            parse(name, text).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    fn error(text: &str) -> String {
        match parse("p.toml", text) {
            Ok(_) => panic!("loaded"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn bad_files_name_the_line_and_reason() {
        let base = "source = \"x\"\n[auth]\nscheme = \"bearer\"\n";
        let e = error(&format!(
            "{base}[[rule]]\nname = \"r\"\nwhen = \"@.a ==\"\nignore = \"i\"\n"
        ));
        assert!(
            e.starts_with("p.toml:6: `when` is not a JSONPath filter"),
            "{e}"
        );
        let e = error(
            "source = \"x\"\n[auth]\nscheme = \"rot13\"\n[[rule]]\nname=\"r\"\nignore=\"i\"\n",
        );
        assert!(e.starts_with("p.toml:3: unknown scheme `rot13`"), "{e}");
        let e = error(&format!(
            "{base}[[rule]]\nname = \"r\"\nemit = \"deploy\"\nfields.app = \"$.a\"\n"
        ));
        assert!(e.contains("fields.time is required"), "{e}");
        let e = error("source = \"github\"\n[auth]\nscheme = \"bearer\"\n[[rule]]\nname=\"r\"\nignore=\"i\"\n");
        assert!(
            e.starts_with("p.toml:1: `github` is a built-in source"),
            "{e}"
        );
        let e = error("source = \"x\"\n[auth]\nscheme = \"bearer\"\nheader = \"x-token\"\n[[rule]]\nname=\"r\"\nignore=\"i\"\n");
        assert!(
            e.contains("`header` does not apply to scheme `bearer`"),
            "{e}"
        );
        let e = error("source = \"x\"\n[auth]\nscheme = \"token\"\nheader = \"bad header\"\n[[rule]]\nname=\"r\"\nignore=\"i\"\n");
        assert!(
            e.starts_with("p.toml:4: `bad header` is not a valid header name"),
            "{e}"
        );
        let e = error(&format!("{base}[[rule]]\nname = \"r\"\nemit = \"deploy\"\nfields.app = {{ path = \"$.a\", optional = true }}\nfields.time = \"$.t\"\n"));
        assert!(
            e.contains("fields.app is required: it cannot be optional"),
            "{e}"
        );
        let e = error(&format!("{base}[[rule]]\nname = \"r\"\nemit = \"deploy\"\nfields.app = \"$.a\"\nfields.time = {{ value = \"soon\" }}\n"));
        assert!(e.contains("fields.time: `soon` is not valid"), "{e}");
        let e = error(&format!(
            "{base}[[rule]]\nname = \"r\"\nwhen = \"@.a, 0\"\nignore = \"i\"\n"
        ));
        assert!(e.contains("is not a JSONPath filter"), "{e}");
        let e = error(&format!("{base}[[rule]]\nname = \"all\"\nignore = \"i\"\n[[rule]]\nname = \"r\"\nwhen = \"@.a\"\nignore = \"j\"\n"));
        assert!(e.starts_with("p.toml:4: rule `all` has no headers"), "{e}");
        let e = error(&format!(
            "max_body_bytes = 0\n{base}[[rule]]\nname = \"r\"\nignore = \"i\"\n"
        ));
        assert!(e.contains("max_body_bytes must be 1 to"), "{e}");
        let e = error("source = \"x\"\nsorce = 1\n");
        assert!(e.starts_with("p.toml:2: unknown field `sorce`"), "{e}");
        let e = error(&format!("{base}[[rule]]\nname = \"r\"\nemit = \"deploy\"\nfields.app = \"$.a\"\nfields.time = {{ path = \"$.t\", pattern = \"(\" }}\n"));
        assert!(
            e.contains("fields.time.pattern is not a regular expression"),
            "{e}"
        );
    }
}
