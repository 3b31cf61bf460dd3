//! CDEvents (spec 0.4 and 0.5) over the CloudEvents HTTP binding: binary
//! mode (`ce-*` headers, the CDEvent as the body), structured mode
//! (`application/cloudevents+json`, the CDEvent as `data`), batch mode
//! (`application/cloudevents-batch+json`, an array of structured events the
//! runner splits) and a bare CDEvent body without any envelope.
//!
//! `service.deployed`, `service.upgraded` and `service.rolledback` are
//! deploys; `incident.detected`/`reported` create a failure and
//! `incident.resolved` resolves it; `change.merged` is a commit at its merge
//! time and `artifact.packaged` links that commit to the artifact's digest.
//! Every other type is ignored with a reason. Field names in errors are
//! paths inside the CDEvent (`subject.content.artifactId`), or CloudEvents
//! attributes (`data`, `specversion`).
//!
//! Maps headers and payload only; never touches the store or the metrics.

use actix_web::http::header::{self, HeaderMap};
use serde_json::Value;

use super::payload::{self, Reader};
use super::{
    AuthScheme, FieldProblem, Incoming, Mapping, Naming, PayloadError, Plugin, Profile,
    SourceOptions,
};
use crate::events::{Commit, EventTime};
use crate::events::{CommitLink, Deploy, Event, FailureChange, FieldError, ImageSha, IssueNumber};
use crate::ledger::DeliveryId;
use crate::signature::{self, HmacHeader, Secret, Verifier};

pub struct CdEvents;

pub const SOURCE: &str = "cdevents";

/// The HMAC header when `signature_header` is not configured.
pub const DEFAULT_SIGNATURE_HEADER: &str = "x-hub-signature-256";

/// Media types of the CloudEvents JSON event format.
pub const STRUCTURED: &str = "application/cloudevents+json";
pub const BATCH: &str = "application/cloudevents-batch+json";

/// Event labels: the CDEvents types this source maps (version left out).
const EVENTS: &[&str] = &[
    "service.deployed",
    "service.upgraded",
    "service.rolledback",
    "incident.detected",
    "incident.reported",
    "incident.resolved",
    "change.merged",
    "artifact.packaged",
];

/// The type versions the spec versions define for the types above:
/// (major, minor) of `dev.cdevents.<type>.<major>.<minor>.<patch>`. Spec
/// 0.4 defines every one of them at 0.2.0, spec 0.5 at 0.3.0; a patch
/// release changes no field.
const TYPE_VERSIONS: &[(u64, u64)] = &[(0, 2), (0, 3)];

/// Spec versions (`context.version` in 0.4, `context.specversion` in 0.5),
/// as major.minor.
const SPEC_VERSIONS: &[&str] = &["0.4", "0.5"];

impl Plugin for CdEvents {
    /// Neither the event nor the delivery id is in one place: `event` and
    /// `delivery_id` below read the envelope.
    fn profile(&self) -> Profile {
        Profile {
            source: SOURCE,
            options: &[
                "environments",
                "namespaces",
                "apps",
                "auth",
                "signature_header",
            ],
            naming: Naming::NOWHERE,
            max_body_bytes: Profile::MAX_BODY_BYTES,
        }
    }

    fn verifier(&self, secrets: Vec<Secret>, options: &SourceOptions) -> Result<Verifier, String> {
        Ok(match options.auth {
            AuthScheme::Hmac => {
                let name = match options.signature_header {
                    "" => DEFAULT_SIGNATURE_HEADER,
                    name => name,
                };
                Verifier::Hmac {
                    headers: vec![HmacHeader::sha256_hex(name, "sha256=")],
                    secrets,
                }
            }
            AuthScheme::Bearer => Verifier::Bearer { secrets },
            AuthScheme::StandardWebhooks => {
                let keys = secrets
                    .iter()
                    .map(|s| {
                        signature::standard_webhooks_key(s).ok_or_else(|| {
                            "with auth = \"standard-webhooks\" each secret must be whsec_ followed by base64"
                                .to_owned()
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Verifier::StandardWebhooks { keys }
            }
        })
    }

    fn batch(&self, headers: &HeaderMap) -> bool {
        media_type(headers).as_deref() == Some(BATCH)
    }

    fn event(&self, headers: &HeaderMap, payload: Option<&Value>) -> &'static str {
        let kind = match payload {
            Some(payload) => envelope(headers, payload)
                .ok()
                .and_then(|e| payload::text(e.cdevent, "context.type")),
            None => super::header(headers, "ce-type"),
        };
        match kind.and_then(parse_type) {
            Some(t) => super::known_event(Some(t.name), EVENTS),
            None if payload.is_none() && kind.is_none() => "unknown",
            None => "other",
        }
    }

    fn delivery_id(&self, headers: &HeaderMap, payload: &Value) -> Option<DeliveryId> {
        let envelope = envelope(headers, payload).ok()?;
        let id = envelope
            .id
            .or_else(|| payload::text(envelope.cdevent, "context.id"))?;
        let source = envelope
            .source
            .or_else(|| payload::text(envelope.cdevent, "context.source"))
            .unwrap_or_default();
        // CloudEvents ids are unique per source only.
        Some(
            DeliveryId::from_header(&format!("{source}#{id}")).unwrap_or_else(|| {
                DeliveryId::derived(&[SOURCE.as_bytes(), source.as_bytes(), id.as_bytes()])
            }),
        )
    }

    fn map(&self, incoming: &Incoming<'_>) -> Result<Mapping, PayloadError> {
        let options = incoming.options;
        let cdevent = envelope(incoming.headers, incoming.payload)?.cdevent;
        let invalid = |field, reason| PayloadError::Invalid(vec![FieldProblem { field, reason }]);
        let kind = match payload::at(cdevent, "context.type") {
            None => return Err(invalid("context.type", FieldError::Missing)),
            Some(Value::String(kind)) => kind,
            Some(_) => return Err(invalid("context.type", FieldError::WrongType)),
        };
        let Some(kind) = parse_type(kind) else {
            return Ok(Mapping::Ignored("not_a_cdevents_type"));
        };
        let spec = ["context.specversion", "context.version"]
            .iter()
            .find_map(|path| payload::at(cdevent, path));
        match spec {
            None => return Err(invalid("context.specversion", FieldError::Missing)),
            Some(Value::String(version)) => {
                let major_minor = version.splitn(3, '.').take(2).collect::<Vec<_>>().join(".");
                if !SPEC_VERSIONS.contains(&major_minor.as_str()) {
                    return Ok(Mapping::Ignored("spec_version_not_supported"));
                }
            }
            Some(_) => return Err(invalid("context.specversion", FieldError::WrongType)),
        }
        if !EVENTS.contains(&kind.name) {
            return Ok(Mapping::Ignored("type_not_used"));
        }
        if !TYPE_VERSIONS.contains(&kind.version) {
            return Ok(Mapping::Ignored("type_version_not_supported"));
        }
        match kind.name {
            "service.deployed" | "service.upgraded" | "service.rolledback" => {
                deploy(cdevent, kind.name, options)
            }
            "incident.detected" | "incident.reported" => {
                incident(cdevent, options, FailureChange::Created)
            }
            "incident.resolved" => incident(cdevent, options, FailureChange::Resolved),
            "change.merged" => merged(cdevent, options),
            _ => packaged(cdevent, options),
        }
    }
}

/// A CDEvent and the CloudEvents attributes it came with.
struct Envelope<'a> {
    cdevent: &'a Value,
    /// `ce-id` / `id`, when there is an envelope.
    id: Option<&'a str>,
    /// `ce-source` / `source`, when there is an envelope.
    source: Option<&'a str>,
}

/// The media type of the request, lowercase, without parameters.
fn media_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
}

/// Where the CDEvent is in `payload`: the `data` of a structured event (or
/// of one item of a batch), else the body itself (binary mode, bare body).
fn envelope<'a>(headers: &'a HeaderMap, payload: &'a Value) -> Result<Envelope<'a>, PayloadError> {
    let invalid = |field, reason| PayloadError::Invalid(vec![FieldProblem { field, reason }]);
    let structured = matches!(media_type(headers).as_deref(), Some(STRUCTURED | BATCH));
    if structured {
        let cdevent = match payload::at(payload, "data") {
            Some(data @ Value::Object(_)) => data,
            // Binary data (`data_base64`) is not a CDEvent in JSON.
            None if payload::at(payload, "data_base64").is_some() => {
                return Err(invalid("data", FieldError::WrongType))
            }
            None => return Err(invalid("data", FieldError::Missing)),
            Some(_) => return Err(invalid("data", FieldError::WrongType)),
        };
        return Ok(Envelope {
            cdevent,
            id: payload::text(payload, "id"),
            source: payload::text(payload, "source"),
        });
    }
    Ok(Envelope {
        cdevent: payload,
        id: super::header(headers, "ce-id"),
        source: super::header(headers, "ce-source"),
    })
}

/// A CDEvents type: `subject.predicate` and its (major, minor) version.
#[derive(Debug, PartialEq, Eq)]
struct EventType<'a> {
    name: &'a str,
    version: (u64, u64),
}

/// `dev.cdevents.<subject>.<predicate>.<major>.<minor>.<patch>[-suffix]`.
fn parse_type(kind: &str) -> Option<EventType<'_>> {
    let rest = kind.strip_prefix("dev.cdevents.")?;
    let mut parts = rest.splitn(3, '.');
    let (subject, predicate, version) = (parts.next()?, parts.next()?, parts.next()?);
    let name = &rest[..subject.len() + 1 + predicate.len()];
    let mut numbers = version.splitn(3, '.');
    let major = numbers.next()?.parse().ok()?;
    let minor = numbers.next()?.parse().ok()?;
    numbers.next()?;
    Some(EventType {
        name,
        version: (major, minor),
    })
}

/// The parts of a package URL this source reads: the package path
/// (namespace/name, percent-decoded) and the image digest its version
/// names, if it is one (`@sha256:<hex>` or `@sha256%3A<hex>`).
#[derive(Debug, PartialEq, Eq)]
struct Purl {
    path: String,
    digest: Option<ImageSha>,
}

fn parse_purl(purl: &str) -> Result<Purl, FieldError> {
    let rest = purl
        .strip_prefix("pkg:")
        .ok_or(FieldError::InvalidFormat)?
        .trim_start_matches('/');
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let (_kind, rest) = rest.split_once('/').ok_or(FieldError::InvalidFormat)?;
    let (path, version) = match rest.rsplit_once('@') {
        Some((path, version)) => (path, Some(percent_decode(version))),
        None => (rest, None),
    };
    let path = percent_decode(path);
    if path.is_empty() {
        return Err(FieldError::InvalidFormat);
    }
    let digest = match version {
        Some(version) if version.to_ascii_lowercase().starts_with("sha256:") => {
            Some(ImageSha::parse(&version.to_ascii_lowercase())?)
        }
        _ => None,
    };
    Ok(Purl { path, digest })
}

/// `%XX` escapes decoded (RFC 3986); a malformed escape is kept as written.
fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

/// The environment a service or incident event names, if any.
fn environment(cdevent: &Value) -> Option<&str> {
    payload::text(cdevent, "subject.content.environment.id").filter(|e| !e.is_empty())
}

/// `service.deployed`, `.upgraded` or `.rolledback`: a deploy of the service
/// `subject.id` into `subject.content.environment.id`, of the image the
/// `artifactId` pins by digest (else of no known image).
fn deploy(cdevent: &Value, kind: &str, options: &SourceOptions) -> Result<Mapping, PayloadError> {
    let environment = environment(cdevent)
        .or_else(|| options.environments.first().map(String::as_str))
        .unwrap_or("production");
    if !options.is_production(environment) {
        return Ok(Mapping::Ignored("environment_not_production"));
    }
    let mut r = Reader::new(cdevent);
    let app = r.parsed("subject.id", |key| options.app(key));
    let time = r.time("context.timestamp");
    let namespace = options
        .namespace(environment)
        .map_err(|reason| r.fail("subject.content.environment.id", reason))
        .ok();
    let image_sha = match payload::at(cdevent, "subject.content.artifactId") {
        None => None,
        Some(Value::String(artifact)) => parse_purl(artifact)
            .map_err(|reason| r.fail("subject.content.artifactId", reason))
            .ok()
            .and_then(|purl| purl.digest),
        Some(_) => {
            r.fail("subject.content.artifactId", FieldError::WrongType);
            None
        }
    };
    // A rollback restores an earlier version because the current one
    // failed: DORA's unplanned deployment, rework whatever the incidents say.
    let rework = kind == "service.rolledback";
    let deploy = (|| {
        Some(Event::Deploy(Deploy {
            app: app?,
            namespace: namespace?,
            image_sha,
            commit: None,
            environment: Some(environment.into()),
            rework,
            time: time?,
        }))
    })();
    r.finish_event(deploy)
}

/// `incident.*`: the failure `subject.id` of the service
/// `subject.content.service.id`, scoped by the subject's source.
fn incident(
    cdevent: &Value,
    options: &SourceOptions,
    change: FailureChange,
) -> Result<Mapping, PayloadError> {
    if environment(cdevent).is_some_and(|e| !options.is_production(e)) {
        return Ok(Mapping::Ignored("environment_not_production"));
    }
    if payload::at(cdevent, "subject.content.service.id").is_none() {
        return Ok(Mapping::Ignored("incident_without_service"));
    }
    let mut r = Reader::new(cdevent);
    let app = r.parsed("subject.content.service.id", |key| options.app(key));
    let source = payload::text(cdevent, "subject.source")
        .or_else(|| payload::text(cdevent, "context.source"))
        .unwrap_or_default();
    let issue = r.parsed("subject.id", |id| {
        if id.is_empty() {
            return Err(FieldError::Empty);
        }
        IssueNumber::parse(&format!("{source}#{id}"))
    });
    let time = r.time("context.timestamp");
    r.finish_failure(app, issue, change, time)
}

/// `change.merged`: the commit its id names (a SHA, or a URL or `ref:sha`
/// ending in one) in the repository `subject.content.repository.id`, at the
/// merge time: CDEvents carry no commit time.
fn merged(cdevent: &Value, options: &SourceOptions) -> Result<Mapping, PayloadError> {
    let Some(id) = payload::text(cdevent, "subject.id") else {
        return Err(PayloadError::Invalid(vec![FieldProblem {
            field: "subject.id",
            reason: payload::at(cdevent, "subject.id")
                .map_or(FieldError::Missing, |_| FieldError::WrongType),
        }]));
    };
    let Ok(commit) = super::commit_in(id) else {
        return Ok(Mapping::Ignored("change_not_a_commit"));
    };
    if payload::at(cdevent, "subject.content.repository.id").is_none() {
        return Ok(Mapping::Ignored("change_without_repository"));
    }
    let mut r = Reader::new(cdevent);
    let app = r.parsed("subject.content.repository.id", |key| options.app(key));
    let time = r.time("context.timestamp");
    let commit = (|| {
        Some(Event::Commit(Commit {
            app: app?,
            commit,
            image_sha: None,
            namespace: None,
            commit_link: CommitLink::parse(id).ok(),
            time: time?,
            pushed: false,
        }))
    })();
    r.finish_event(commit)
}

/// `artifact.packaged`: the artifact `subject.id` (a package URL pinned by
/// digest) was built from the commit `subject.content.change.id`.
fn packaged(cdevent: &Value, options: &SourceOptions) -> Result<Mapping, PayloadError> {
    let mut r = Reader::new(cdevent);
    let purl = r.parsed("subject.id", parse_purl);
    let change = r.text("subject.content.change.id");
    let time: Option<EventTime> = r.time("context.timestamp");
    if r.has_problems() {
        return Err(r.finish::<()>(None).unwrap_err());
    }
    let (Some(purl), Some(change)) = (purl, change) else {
        return r.finish_event(None);
    };
    let Some(image_sha) = purl.digest else {
        return Ok(Mapping::Ignored("artifact_without_digest"));
    };
    let Ok(commit) = super::commit_in(change) else {
        return Ok(Mapping::Ignored("change_not_a_commit"));
    };
    let app = options
        .app(&purl.path)
        .map_err(|reason| r.fail("subject.id", reason))
        .ok();
    r.finish_link(app, commit, image_sha, time)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};
    use serde_json::json;

    const DIGEST: &str = "0b31b1c02ff458ad9b7b81cbdf8f028bd54699fa151f221d1e8de6817db93427";
    const SHA: &str = "e83c5163316f89bfbde7d9ab23ca2e25604af290";

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    fn json_headers() -> HeaderMap {
        headers(&[("content-type", "application/json")])
    }

    fn options() -> SourceOptions {
        let mut options = CdEvents.defaults();
        options.environments = vec!["production".into(), "prod".into()];
        options
    }

    fn cdevent(kind: &str, subject: Value) -> Value {
        json!({
            "context": {
                "specversion": "0.5.1",
                "id": "evt-1",
                "source": "/ci/shop",
                "type": format!("dev.cdevents.{kind}"),
                "timestamp": "2024-05-01T10:00:00Z",
            },
            "subject": subject,
        })
    }

    fn map(payload: &Value) -> Result<Mapping, PayloadError> {
        CdEvents.classify(&json_headers(), payload, &options()).1
    }

    fn one_event(payload: &Value) -> Event {
        match map(payload) {
            Ok(Mapping::Events(mut events)) if events.len() == 1 => events.remove(0),
            other => panic!("expected one event, got {other:?}"),
        }
    }

    fn problems(result: Result<Mapping, PayloadError>) -> Vec<(&'static str, &'static str)> {
        match result {
            Err(PayloadError::Invalid(problems)) => problems
                .into_iter()
                .map(|p| (p.field, p.reason.as_str()))
                .collect(),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn cdevents_types_parse_with_their_versions() {
        assert_eq!(
            parse_type("dev.cdevents.service.deployed.0.3.0"),
            Some(EventType {
                name: "service.deployed",
                version: (0, 3)
            })
        );
        assert_eq!(
            parse_type("dev.cdevents.change.merged.0.2.0-draft").map(|t| t.version),
            Some((0, 2))
        );
        assert_eq!(parse_type("dev.cdevents.service.deployed"), None);
        assert_eq!(
            parse_type("dev.tekton.event.pipelinerun.successful.v1"),
            None
        );
    }

    #[test]
    fn cdevents_purls_give_their_digest_either_escaped_or_not() {
        let escaped = parse_purl(&format!("pkg:oci/myapp@sha256%3A{DIGEST}")).unwrap();
        assert_eq!(escaped.path, "myapp");
        assert_eq!(
            escaped.digest.unwrap().to_string(),
            format!("sha256:{DIGEST}")
        );
        let plain = parse_purl(&format!(
            "pkg:oci/myapp@sha256:{}?repository_url=ghcr.io/acme/myapp",
            DIGEST.to_uppercase()
        ))
        .unwrap();
        assert_eq!(plain.digest, escaped.digest);
        let tagged = parse_purl("pkg:golang/mygit.com/myorg/myapp@234fd47e07d1004f0aed9c").unwrap();
        assert_eq!(tagged.path, "mygit.com/myorg/myapp");
        assert_eq!(tagged.digest, None);
        assert_eq!(parse_purl("pkg:oci/myapp").unwrap().digest, None);
        assert_eq!(
            parse_purl("pkg:oci/myapp@sha256:abc"),
            Err(FieldError::InvalidFormat)
        );
        assert_eq!(parse_purl("oci/myapp"), Err(FieldError::InvalidFormat));
    }

    #[test]
    fn cdevents_deploy_takes_service_environment_and_digest() {
        let event = one_event(&cdevent(
            "service.deployed.0.3.0",
            json!({"id": "shop", "content": {
                "environment": {"id": "prod"},
                "artifactId": format!("pkg:oci/shop@sha256%3A{DIGEST}"),
            }}),
        ));
        let Event::Deploy(deploy) = event else {
            panic!("not a deploy: {event:?}")
        };
        assert_eq!(deploy.app.as_str(), "shop");
        assert_eq!(deploy.namespace.as_str(), "prod");
        assert_eq!(
            deploy.image_sha.unwrap().to_string(),
            format!("sha256:{DIGEST}")
        );
        assert_eq!(deploy.time.seconds(), 1_714_557_600);
    }

    #[test]
    fn cdevents_deploy_of_a_tagged_artifact_has_no_image() {
        for kind in ["service.upgraded.0.2.0", "service.rolledback.0.3.0"] {
            let event = one_event(&cdevent(
                kind,
                json!({"id": "https://argocd.example/applications/shop", "content": {
                    "environment": {"id": "production"},
                    "artifactId": "pkg:oci/shop@v1.4.2",
                }}),
            ));
            let Event::Deploy(deploy) = event else {
                panic!("not a deploy: {event:?}")
            };
            assert_eq!(deploy.image_sha, None);
            assert_eq!(deploy.commit, None);
            // A rollback is rework (DORA's unplanned deployment); an upgrade is not.
            assert_eq!(deploy.rework, kind.starts_with("service.rolledback"));
            assert_eq!(
                deploy.app.as_str(),
                "https://argocd.example/applications/shop"
            );
        }
    }

    #[test]
    fn cdevents_deploy_outside_production_is_ignored() {
        let payload = cdevent(
            "service.deployed.0.3.0",
            json!({"id": "shop", "content": {"environment": {"id": "staging"}}}),
        );
        assert_eq!(
            map(&payload).unwrap(),
            Mapping::Ignored("environment_not_production")
        );
    }

    #[test]
    fn cdevents_bad_fields_are_each_named() {
        let payload = json!({
            "context": {"specversion": "0.5.0", "type": "dev.cdevents.service.deployed.0.3.0",
                        "timestamp": "yesterday"},
            "subject": {"content": {"environment": {"id": "prod"}, "artifactId": "pkg:oci/x@sha256:12"}},
        });
        assert_eq!(
            problems(map(&payload)),
            vec![
                ("subject.id", "missing_field"),
                ("context.timestamp", "invalid_format"),
                ("subject.content.artifactId", "invalid_format"),
            ]
        );
        let no_version = json!({"context": {"type": "dev.cdevents.service.deployed.0.3.0"}});
        assert_eq!(
            problems(map(&no_version)),
            vec![("context.specversion", "missing_field")]
        );
    }

    #[test]
    fn cdevents_unknown_types_and_versions_are_ignored() {
        let cases = [
            ("pipelinerun.finished.0.3.0", "type_not_used"),
            ("service.deployed.0.1.1", "type_version_not_supported"),
            ("service.deployed.1.0.0", "type_version_not_supported"),
        ];
        for (kind, reason) in cases {
            let payload = cdevent(kind, json!({"id": "x"}));
            assert_eq!(map(&payload).unwrap(), Mapping::Ignored(reason), "{kind}");
        }
        let mut old = cdevent("service.deployed.0.3.0", json!({"id": "x"}));
        old["context"]["specversion"] = "0.3.0".into();
        assert_eq!(
            map(&old).unwrap(),
            Mapping::Ignored("spec_version_not_supported")
        );
        let mut foreign = cdevent("x", json!({}));
        foreign["context"]["type"] = "com.example.thing.happened".into();
        assert_eq!(
            map(&foreign).unwrap(),
            Mapping::Ignored("not_a_cdevents_type")
        );
    }

    #[test]
    fn cdevents_incidents_are_failures_scoped_by_source() {
        let subject = json!({"id": "INC-7", "source": "/pagerduty", "content": {
            "environment": {"id": "prod"}, "service": {"id": "shop"}}});
        let Event::Failure(created) =
            one_event(&cdevent("incident.detected.0.3.0", subject.clone()))
        else {
            panic!("not a failure")
        };
        assert_eq!(created.issue_number.as_str(), "/pagerduty#INC-7");
        assert_eq!(created.change, FailureChange::Created);
        let Event::Failure(resolved) = one_event(&cdevent("incident.resolved.0.2.0", subject))
        else {
            panic!("not a failure")
        };
        assert_eq!(resolved.issue_number, created.issue_number);
        assert_eq!(resolved.change, FailureChange::Resolved);
        let without_service = cdevent(
            "incident.reported.0.3.0",
            json!({"id": "INC-8", "content": {"environment": {"id": "prod"}}}),
        );
        assert_eq!(
            map(&without_service).unwrap(),
            Mapping::Ignored("incident_without_service")
        );
    }

    #[test]
    fn cdevents_merged_change_is_a_commit_at_merge_time() {
        let url = format!("https://git.example/acme/shop/commit/{SHA}");
        let Event::Commit(commit) = one_event(&cdevent(
            "change.merged.0.3.0",
            json!({"id": url, "content": {"repository": {"id": "acme/shop"}}}),
        )) else {
            panic!("not a commit")
        };
        assert_eq!(commit.commit.as_str(), SHA);
        assert_eq!(commit.app.as_str(), "acme/shop");
        assert_eq!(commit.commit_link.unwrap().as_str(), url);
        assert_eq!(commit.time.seconds(), 1_714_557_600);
        let pull_request = cdevent(
            "change.merged.0.3.0",
            json!({"id": "1234", "content": {"repository": {"id": "acme/shop"}}}),
        );
        assert_eq!(
            map(&pull_request).unwrap(),
            Mapping::Ignored("change_not_a_commit")
        );
    }

    #[test]
    fn cdevents_packaged_artifact_links_its_change_to_its_digest() {
        let Event::Link(link) = one_event(&cdevent(
            "artifact.packaged.0.3.0",
            json!({"id": format!("pkg:oci/shop@sha256:{DIGEST}"),
                   "content": {"change": {"id": SHA, "source": "git.example/acme/shop"}}}),
        )) else {
            panic!("not a link")
        };
        assert_eq!(link.app.as_str(), "shop");
        assert_eq!(link.commit.as_str(), SHA);
        let unpinned = cdevent(
            "artifact.packaged.0.3.0",
            json!({"id": "pkg:oci/shop@v2", "content": {"change": {"id": SHA}}}),
        );
        assert_eq!(
            map(&unpinned).unwrap(),
            Mapping::Ignored("artifact_without_digest")
        );
        let no_change = cdevent("artifact.packaged.0.3.0", json!({"id": "pkg:oci/shop@v2"}));
        assert_eq!(
            problems(map(&no_change)),
            vec![("subject.content.change.id", "missing_field")]
        );
    }

    #[test]
    fn cdevents_structured_events_carry_the_cdevent_as_data() {
        let structured = headers(&[("content-type", STRUCTURED)]);
        let inner = cdevent(
            "service.deployed.0.3.0",
            json!({"id": "shop", "content": {"environment": {"id": "prod"}}}),
        );
        let event = json!({"specversion": "1.0", "id": "ce-9", "source": "/argo",
                           "type": "dev.cdevents.service.deployed.0.3.0", "data": inner});
        assert_eq!(
            CdEvents.event(&structured, Some(&event)),
            "service.deployed"
        );
        assert_eq!(
            CdEvents.delivery_id(&structured, &event).unwrap().as_str(),
            "/argo#ce-9"
        );
        assert!(matches!(
            CdEvents.classify(&structured, &event, &options()).1,
            Ok(Mapping::Events(_))
        ));
        let empty = json!({"specversion": "1.0", "id": "ce-9"});
        assert_eq!(
            problems(CdEvents.classify(&structured, &empty, &options()).1),
            vec![("data", "missing_field")]
        );
    }

    #[test]
    fn cdevents_binary_mode_ids_come_from_the_headers() {
        let binary = headers(&[
            ("content-type", "application/json"),
            ("ce-id", "abc"),
            ("ce-source", "/tekton"),
            ("ce-type", "dev.cdevents.service.deployed.0.3.0"),
        ]);
        assert_eq!(CdEvents.event(&binary, None), "service.deployed");
        let payload = cdevent("service.deployed.0.3.0", json!({"id": "shop"}));
        assert_eq!(
            CdEvents.delivery_id(&binary, &payload).unwrap().as_str(),
            "/tekton#abc"
        );
        assert_eq!(
            CdEvents
                .delivery_id(&json_headers(), &payload)
                .unwrap()
                .as_str(),
            "/ci/shop#evt-1"
        );
    }
}
