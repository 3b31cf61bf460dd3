//! Authentication schemes: HMAC-SHA256 over the raw body with secret rotation,
//! compared in constant time, the Pelorus lenient re-serialisation check, and
//! the closed set of schemes the native sources use ([`Verifier`]): hex HMAC
//! headers, PagerDuty's signature list, static tokens, bearer tokens, basic
//! auth and Standard Webhooks.
//!
//! Owns the secret material (`Secret`). Nothing here logs, formats or returns a
//! secret or a computed MAC; errors carry only a bounded reason code.

use std::fmt;
use std::path::Path;

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// A shared secret. Prints as `[redacted]` in `Debug` and `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(value: impl Into<Vec<u8>>) -> Self {
        Secret(value.into())
    }

    /// The secret bytes, for computing a MAC. Never format them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Why a delivery failed authentication. Codes are bounded: they become
/// ledger reasons and JSON `reason` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the credential (signature, token or password) is missing")]
    Missing,
    #[error("the credential appears more than once")]
    Repeated,
    #[error("the credential is not of the form the source expects (for GitHub-style signatures, sha256=<64 lowercase hex digits>)")]
    Malformed,
    #[error("the signature uses an algorithm that is not accepted here")]
    UnsupportedAlgorithm,
    #[error("the signature does not match the body under any configured secret")]
    Mismatch,
    #[error("the signed timestamp is missing, malformed or outside the accepted window")]
    StaleTimestamp,
}

impl SignatureError {
    pub fn as_str(self) -> &'static str {
        match self {
            SignatureError::Missing => "missing_signature",
            SignatureError::Repeated => "repeated_signature",
            SignatureError::Malformed => "malformed_signature",
            SignatureError::UnsupportedAlgorithm => "unsupported_algorithm",
            SignatureError::Mismatch => "bad_signature",
            SignatureError::StaleTimestamp => "stale_timestamp",
        }
    }
}

/// Longest signature header value looked at; anything longer is malformed.
const MAX_SIGNATURE_HEADER: usize = 256;

/// Decodes a `sha256=<64 lowercase hex>` header value into the 32 MAC bytes.
pub fn parse_sha256_header(value: &[u8]) -> Result<[u8; 32], SignatureError> {
    parse_prefixed_hex(value, "sha256=")
}

/// Decodes `prefix` + 64 lowercase hex digits into the 32 MAC bytes; a
/// different `<algorithm>=` prefix is reported as such.
fn parse_prefixed_hex(value: &[u8], prefix: &str) -> Result<[u8; 32], SignatureError> {
    let mac = parse_mac(value, prefix, HmacAlgorithm::Sha256, MacEncoding::Hex)?;
    mac.try_into().map_err(|_| SignatureError::Malformed)
}

/// Decodes `prefix` + the encoded MAC of `algorithm` (lowercase hex, or
/// standard base64 with padding). A different `<algorithm>=` prefix is
/// reported as such; a wrong length or alphabet is malformed.
fn parse_mac(
    value: &[u8],
    prefix: &str,
    algorithm: HmacAlgorithm,
    encoding: MacEncoding,
) -> Result<Vec<u8>, SignatureError> {
    if value.len() > MAX_SIGNATURE_HEADER {
        return Err(SignatureError::Malformed);
    }
    let Some(encoded) = value.strip_prefix(prefix.as_bytes()) else {
        let other_algorithm = value
            .iter()
            .position(|&b| b == b'=')
            .is_some_and(|eq| eq > 0 && value[..eq].iter().all(u8::is_ascii_alphanumeric));
        return Err(if other_algorithm && !prefix.is_empty() {
            SignatureError::UnsupportedAlgorithm
        } else {
            SignatureError::Malformed
        });
    };
    let len = algorithm.output_len();
    match encoding {
        MacEncoding::Hex => {
            let lowercase_hex = encoded.len() == 2 * len
                && encoded
                    .iter()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b));
            if !lowercase_hex {
                return Err(SignatureError::Malformed);
            }
            hex::decode(encoded).map_err(|_| SignatureError::Malformed)
        }
        MacEncoding::Base64 => {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .ok()
                .filter(|mac| mac.len() == len)
                .ok_or(SignatureError::Malformed)
        }
    }
}

/// The hash under an HMAC signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HmacAlgorithm {
    /// Only where a sender offers nothing better and the user opts in
    /// (GitHub's legacy `X-Hub-Signature`, declarative plugins).
    Sha1,
    Sha256,
    Sha512,
}

impl HmacAlgorithm {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "sha1" => Some(HmacAlgorithm::Sha1),
            "sha256" => Some(HmacAlgorithm::Sha256),
            "sha512" => Some(HmacAlgorithm::Sha512),
            _ => None,
        }
    }

    fn output_len(self) -> usize {
        match self {
            HmacAlgorithm::Sha1 => 20,
            HmacAlgorithm::Sha256 => 32,
            HmacAlgorithm::Sha512 => 64,
        }
    }

    /// True when `expected` is this HMAC of `message` under `secret`,
    /// compared in constant time (`Mac::verify_slice`).
    fn matches(self, secret: &Secret, message: &[u8], expected: &[u8]) -> bool {
        fn check<M: Mac + hmac::digest::KeyInit>(
            key: &[u8],
            message: &[u8],
            expected: &[u8],
        ) -> bool {
            let Ok(mut mac) = <M as hmac::digest::KeyInit>::new_from_slice(key) else {
                return false;
            };
            mac.update(message);
            mac.verify_slice(expected).is_ok()
        }
        let key = secret.expose();
        match self {
            HmacAlgorithm::Sha1 => check::<Hmac<sha1::Sha1>>(key, message, expected),
            HmacAlgorithm::Sha256 => check::<HmacSha256>(key, message, expected),
            HmacAlgorithm::Sha512 => check::<Hmac<sha2::Sha512>>(key, message, expected),
        }
    }

    /// True when `expected` matches under any of `secrets`; every secret is
    /// tried, so the time taken does not say which one matched.
    fn any_matches(self, secrets: &[Secret], message: &[u8], expected: &[u8]) -> bool {
        secrets.iter().fold(false, |found, secret| {
            self.matches(secret, message, expected) | found
        })
    }
}

/// How a MAC is written in its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MacEncoding {
    /// Lowercase hexadecimal.
    Hex,
    /// Standard base64 with padding.
    Base64,
}

/// One header that may carry an HMAC of the raw body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HmacHeader {
    /// Lowercase header name.
    pub name: &'static str,
    /// What precedes the MAC (`sha256=`), possibly nothing.
    pub prefix: &'static str,
    pub algorithm: HmacAlgorithm,
    pub encoding: MacEncoding,
}

impl HmacHeader {
    /// `name: <prefix><lowercase hex HMAC-SHA256>`, the common form.
    pub const fn sha256_hex(name: &'static str, prefix: &'static str) -> Self {
        HmacHeader {
            name,
            prefix,
            algorithm: HmacAlgorithm::Sha256,
            encoding: MacEncoding::Hex,
        }
    }
}

/// Exactly one value of a header, or `Repeated`.
pub fn single_header<'a>(
    headers: &'a actix_web::http::header::HeaderMap,
    name: &str,
) -> Result<Option<&'a [u8]>, SignatureError> {
    let mut values = headers.get_all(name);
    let first = values.next();
    if values.next().is_some() {
        return Err(SignatureError::Repeated);
    }
    Ok(first.map(|v| v.as_bytes()))
}

/// True when `expected` is the HMAC-SHA256 of `message` under `secret`.
/// The comparison runs in constant time (`Mac::verify_slice`).
pub fn hmac_sha256_matches(secret: &Secret, message: &[u8], expected: &[u8]) -> bool {
    HmacAlgorithm::Sha256.matches(secret, message, expected)
}

/// True when `expected` is the HMAC of `message` under any of `secrets`.
/// Every secret is tried, so the time taken does not say which one matched.
pub fn any_secret_matches(secrets: &[Secret], message: &[u8], expected: &[u8]) -> bool {
    HmacAlgorithm::Sha256.any_matches(secrets, message, expected)
}

/// The lowercase hex HMAC-SHA256 of `message`, for senders (`hookgauge send`).
pub fn sign_hex(secret: &Secret, message: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret.expose()).expect("HMAC accepts any key length");
    mac.update(message);
    hex::encode(mac.finalize().into_bytes())
}

/// Pelorus' lenient check: the candidates a Pelorus sender may have signed for
/// a JSON object it sent with different whitespace. SOURCES.md §13 lists them:
/// five separator pairs, each as is, with `{ `…` }` outer braces, and both of
/// those with a trailing newline. `None` when the body is not a JSON object.
pub fn pelorus_lenient_candidates(body: &[u8]) -> Option<Vec<Vec<u8>>> {
    let value: Value = serde_json::from_slice(body).ok()?;
    if !value.is_object() {
        return None;
    }
    const SEPARATORS: [(&str, &str); 5] = [
        (", ", ": "),
        (",", ":"),
        (", ", ":"),
        (",", " :"),
        (", ", " :"),
    ];
    let mut candidates = Vec::with_capacity(20);
    for (item, key) in SEPARATORS {
        let mut plain = String::with_capacity(body.len() + 16);
        write_python_json(&value, item, key, &mut plain);
        let spaced = match plain.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            Some(inner) if !inner.is_empty() => format!("{{ {inner} }}"),
            _ => plain.clone(),
        };
        for form in [plain, spaced] {
            let mut with_newline = form.clone().into_bytes();
            with_newline.push(b'\n');
            candidates.push(form.into_bytes());
            candidates.push(with_newline);
        }
    }
    Some(candidates)
}

/// True when the signature matches any lenient candidate under any secret.
pub fn pelorus_lenient_matches(secrets: &[Secret], body: &[u8], expected: &[u8]) -> bool {
    let Some(candidates) = pelorus_lenient_candidates(body) else {
        return false;
    };
    candidates.iter().fold(false, |found, candidate| {
        any_secret_matches(secrets, candidate, expected) | found
    })
}

/// Serialises like Python's `json.dumps(value, ensure_ascii=True,
/// separators=(item, key))`.
fn write_python_json(value: &Value, item: &str, key: &str, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_python_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, element) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item);
                }
                write_python_json(element, item, key, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (name, element)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(item);
                }
                write_python_string(name, out);
                out.push_str(key);
                write_python_json(element, item, key, out);
            }
            out.push('}');
        }
    }
}

fn write_python_string(s: &str, out: &mut String) {
    use std::fmt::Write;
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
    }
    out.push('"');
}

/// The most a secrets file may hold: a file of secrets is a few lines, and a
/// path pointing at a device or a large file must not be read without end.
const MAX_SECRETS_FILE_BYTES: u64 = 64 * 1024;

/// Reads a secrets file of at most [`MAX_SECRETS_FILE_BYTES`].
pub fn read_secrets_file(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let cannot = |e: std::io::Error| format!("cannot read {}: {e}", path.display());
    let mut text = String::new();
    std::fs::File::open(path)
        .map_err(cannot)?
        .take(MAX_SECRETS_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(cannot)?;
    if text.len() as u64 > MAX_SECRETS_FILE_BYTES {
        return Err(format!(
            "{} is larger than {MAX_SECRETS_FILE_BYTES} bytes: not a file of secrets",
            path.display()
        ));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PELORUS_OBJECT: &str = r#"{"app":"mongo-todolist","commit_hash":"5379bad65a3f83853a75aabec9e0e43c75fd18fc","image_sha":"sha256:af4092ccbfa99a3ec1ea93058fe39b8ddfd8db1c7a18081db397c50a0b8ec77d","namespace":"mongo-persistent","timestamp":1678105701}"#;

    fn lenient_hexes(secret: &str, body: &str) -> Vec<String> {
        let secret = Secret::new(secret);
        pelorus_lenient_candidates(body.as_bytes())
            .unwrap()
            .iter()
            .map(|c| sign_hex(&secret, c))
            .collect()
    }

    #[test]
    fn github_documented_vector() {
        let secret = Secret::new("It's a Secret to Everybody");
        assert_eq!(
            sign_hex(&secret, b"Hello, World!"),
            "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
        let header = b"sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        let mac = parse_sha256_header(header).unwrap();
        assert!(hmac_sha256_matches(&secret, b"Hello, World!", &mac));
        assert!(!hmac_sha256_matches(&secret, b"Hello, World?", &mac));
    }

    #[test]
    fn pelorus_documented_lenient_vectors() {
        let hexes = lenient_hexes("My Secret Token", PELORUS_OBJECT);
        assert_eq!(hexes.len(), 20);
        for expected in [
            "29a4606fccb6976cd43cb8a6cf210d402294e08fffda86f87c96fdb39d9fbc3c",
            "9f6140a622159a4e1d379603afe6a0d288d45bc9ad99943c29ec77e3f2cf1cee",
            "bd1f945ea524745eefdd2e9f6e915f51a6129928898012462bd29b93edbd31c2",
        ] {
            assert!(
                hexes.iter().any(|h| h == expected),
                "{expected} not produced"
            );
        }
    }

    #[test]
    fn lenient_serialisation_escapes_like_python() {
        let mut out = String::new();
        let value: Value =
            serde_json::from_str(r#"{"a":"é/😀\u007f\"\\\n","b":[1,true,null]}"#).unwrap();
        write_python_json(&value, ", ", ": ", &mut out);
        assert_eq!(
            out,
            r#"{"a": "\u00e9/\ud83d\ude00\u007f\"\\\n", "b": [1, true, null]}"#
        );
    }

    #[test]
    fn lenient_duplicate_key_keeps_first_position_and_last_value() {
        let mut out = String::new();
        let value: Value = serde_json::from_str(r#"{"a":1,"b":2,"a":3}"#).unwrap();
        write_python_json(&value, ",", ":", &mut out);
        assert_eq!(out, r#"{"a":3,"b":2}"#);
    }

    #[test]
    fn header_parsing_is_strict() {
        let hex = "a".repeat(64);
        assert!(parse_sha256_header(format!("sha256={hex}").as_bytes()).is_ok());
        assert_eq!(
            parse_sha256_header(format!("sha256={}", "A".repeat(64)).as_bytes()),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            parse_sha256_header(format!("sha1={}", "a".repeat(40)).as_bytes()),
            Err(SignatureError::UnsupportedAlgorithm)
        );
        assert_eq!(
            parse_sha256_header(hex.as_bytes()),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            parse_sha256_header(format!("sha256={}", &hex[..63]).as_bytes()),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            parse_sha256_header(format!("sha256={hex}").repeat(5).as_bytes()),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn rotation_accepts_either_secret() {
        let old = Secret::new("old");
        let new = Secret::new("new");
        let mac = hex::decode(sign_hex(&new, b"body")).unwrap();
        assert!(any_secret_matches(&[old.clone(), new], b"body", &mac));
        assert!(!any_secret_matches(&[old], b"body", &mac));
    }

    #[test]
    fn secrets_never_print() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?} {secret}"), "[redacted] [redacted]");
    }
}

/// Seconds a Standard Webhooks timestamp may be away from now.
pub const STANDARD_WEBHOOKS_TOLERANCE: i64 = 300;

/// Why a delivery failed authentication, and the header that carried it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthFailure {
    pub error: SignatureError,
    pub header: &'static str,
}

/// How one source instance authenticates a delivery. A closed set: every
/// scheme SOURCES.md names, each comparing in constant time, each trying
/// every configured secret (rotation).
#[derive(Debug, Clone)]
pub enum Verifier {
    /// No secret configured: every delivery passes (loopback only, warned).
    Open,
    /// An HMAC of the raw body in the first of `headers` present; a bad
    /// first choice is not rescued by another.
    Hmac {
        headers: Vec<HmacHeader>,
        secrets: Vec<Secret>,
    },
    /// A comma-separated list of `prefix<hex>` HMACs, one per active secret of
    /// the sender (PagerDuty); any match authenticates.
    HmacHexList {
        header: &'static str,
        prefix: &'static str,
        secrets: Vec<Secret>,
    },
    /// A static token carried in clear in `header` (GitLab's secret token).
    Token {
        header: &'static str,
        secrets: Vec<Secret>,
    },
    /// `Authorization: Bearer <token>`, or basic auth whose password is the
    /// token (senders that can only put credentials in the URL).
    Bearer { secrets: Vec<Secret> },
    /// A token in a query parameter of the webhook URL, for senders that can
    /// set nothing else (Tekton's CloudEvents sink). Weaker than a signature:
    /// the URL is the secret, and URLs end up in proxy logs.
    QueryToken {
        parameter: &'static str,
        secrets: Vec<Secret>,
    },
    /// Standard Webhooks v1: HMAC-SHA256 over `id.timestamp.body` under the
    /// base64-decoded `whsec_` keys, timestamp within ±5 minutes.
    StandardWebhooks { keys: Vec<Secret> },
}

impl Verifier {
    /// True when no secret is configured.
    pub fn is_open(&self) -> bool {
        matches!(self, Verifier::Open)
    }

    /// The headers this verifier reads credentials from (they are never
    /// stored or shown).
    pub fn header_names(&self) -> Vec<&'static str> {
        match self {
            Verifier::Open | Verifier::QueryToken { .. } => Vec::new(),
            Verifier::Hmac { headers, .. } => headers.iter().map(|h| h.name).collect(),
            Verifier::HmacHexList { header, .. } | Verifier::Token { header, .. } => vec![header],
            Verifier::Bearer { .. } => vec!["authorization"],
            Verifier::StandardWebhooks { .. } => vec!["webhook-signature"],
        }
    }

    /// How many secrets (or keys) are configured.
    pub fn secret_count(&self) -> usize {
        match self {
            Verifier::Open => 0,
            Verifier::Hmac { secrets, .. }
            | Verifier::HmacHexList { secrets, .. }
            | Verifier::Token { secrets, .. }
            | Verifier::Bearer { secrets }
            | Verifier::QueryToken { secrets, .. } => secrets.len(),
            Verifier::StandardWebhooks { keys } => keys.len(),
        }
    }

    /// Checks the delivery's credentials over the raw `body`; `query` is the
    /// request URL's query string (for [`Verifier::QueryToken`]).
    pub fn verify(
        &self,
        headers: &actix_web::http::header::HeaderMap,
        query: &str,
        body: &[u8],
        now: i64,
    ) -> Result<(), AuthFailure> {
        let fail = |error, header| Err(AuthFailure { error, header });
        let single = |header: &'static str| {
            single_header(headers, header).map_err(|error| AuthFailure { error, header })
        };
        let required = |header: &'static str| {
            single(header)?.ok_or(AuthFailure {
                error: SignatureError::Missing,
                header,
            })
        };
        match self {
            Verifier::Open => Ok(()),
            Verifier::Hmac {
                headers: candidates,
                secrets,
            } => {
                for candidate in candidates {
                    let name = candidate.name;
                    let Some(value) = single(name)? else { continue };
                    let mac = parse_mac(
                        value,
                        candidate.prefix,
                        candidate.algorithm,
                        candidate.encoding,
                    )
                    .map_err(|error| AuthFailure {
                        error,
                        header: name,
                    })?;
                    return if candidate.algorithm.any_matches(secrets, body, &mac) {
                        Ok(())
                    } else {
                        fail(SignatureError::Mismatch, name)
                    };
                }
                fail(SignatureError::Missing, candidates[0].name)
            }
            Verifier::HmacHexList {
                header,
                prefix,
                secrets,
            } => {
                let value = required(header)?;
                if value.len() > 16 * MAX_SIGNATURE_HEADER {
                    return fail(SignatureError::Malformed, header);
                }
                let macs: Vec<[u8; 32]> = value
                    .split(|&b| b == b',')
                    .map(|entry| entry.trim_ascii())
                    .filter(|entry| entry.starts_with(prefix.as_bytes()))
                    .filter_map(|entry| parse_prefixed_hex(entry, prefix).ok())
                    .collect();
                if macs.is_empty() {
                    return fail(SignatureError::Malformed, header);
                }
                let found = macs.iter().fold(false, |found, mac| {
                    any_secret_matches(secrets, body, mac) | found
                });
                if found {
                    Ok(())
                } else {
                    fail(SignatureError::Mismatch, header)
                }
            }
            Verifier::Token { header, secrets } => {
                let value = required(header)?;
                if any_token_matches(secrets, value) {
                    Ok(())
                } else {
                    fail(SignatureError::Mismatch, header)
                }
            }
            Verifier::Bearer { secrets } => {
                const AUTHORIZATION: &str = "authorization";
                let value = required(AUTHORIZATION)?;
                let token = bearer_or_basic_password(value).ok_or(AuthFailure {
                    error: SignatureError::Malformed,
                    header: AUTHORIZATION,
                })?;
                if any_token_matches(secrets, &token) {
                    Ok(())
                } else {
                    fail(SignatureError::Mismatch, AUTHORIZATION)
                }
            }
            Verifier::QueryToken { parameter, secrets } => {
                // Decoded as a form: a token with `+`, `/` or `=` may arrive
                // percent-encoded. A repeated parameter is refused.
                let mut presented = form_urlencoded::parse(query.as_bytes())
                    .filter(|(name, _)| name == parameter)
                    .map(|(_, value)| value);
                let token = presented.next();
                if presented.next().is_some() {
                    return fail(SignatureError::Repeated, parameter);
                }
                match token {
                    None => fail(SignatureError::Missing, parameter),
                    Some(token) if any_token_matches(secrets, token.as_bytes()) => Ok(()),
                    Some(_) => fail(SignatureError::Mismatch, parameter),
                }
            }
            Verifier::StandardWebhooks { keys } => {
                let (id_header, ts_header, sig_header) =
                    ("webhook-id", "webhook-timestamp", "webhook-signature");
                let id = required(id_header)?;
                let timestamp = required(ts_header)?;
                let signatures = required(sig_header)?;
                let seconds = std::str::from_utf8(timestamp)
                    .ok()
                    .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|t| t.parse::<i64>().ok());
                match seconds {
                    Some(ts) if (now - ts).abs() <= STANDARD_WEBHOOKS_TOLERANCE => {}
                    _ => return fail(SignatureError::StaleTimestamp, ts_header),
                }
                if id.contains(&b'.') || id.is_empty() {
                    return fail(SignatureError::Malformed, id_header);
                }
                let mut message = Vec::with_capacity(id.len() + timestamp.len() + body.len() + 2);
                message.extend_from_slice(id);
                message.push(b'.');
                message.extend_from_slice(timestamp);
                message.push(b'.');
                message.extend_from_slice(body);
                let macs: Vec<Vec<u8>> = signatures
                    .split(|&b| b == b' ')
                    .filter_map(|entry| entry.strip_prefix(b"v1,"))
                    .filter_map(|b64| {
                        use base64::Engine as _;
                        base64::engine::general_purpose::STANDARD.decode(b64).ok()
                    })
                    .filter(|mac| mac.len() == 32)
                    .collect();
                if macs.is_empty() {
                    return fail(SignatureError::Malformed, sig_header);
                }
                let found = macs.iter().fold(false, |found, mac| {
                    any_secret_matches(keys, &message, mac) | found
                });
                if found {
                    Ok(())
                } else {
                    fail(SignatureError::Mismatch, sig_header)
                }
            }
        }
    }
}

/// Constant-time comparison of `presented` against every secret: the MACs of
/// both under a fixed key are compared, so lengths leak nothing either.
pub fn any_token_matches(secrets: &[Secret], presented: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    const KEY: &[u8] = b"hookgauge token comparison";
    let digest = |bytes: &[u8]| {
        let mut mac = HmacSha256::new_from_slice(KEY).expect("HMAC accepts any key length");
        mac.update(bytes);
        mac.finalize().into_bytes()
    };
    let presented = digest(presented);
    secrets.iter().fold(false, |found, secret| {
        bool::from(digest(secret.expose()).ct_eq(&presented)) | found
    })
}

/// The token of `Bearer <token>`, or the password of `Basic <base64>`.
fn bearer_or_basic_password(value: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let text = std::str::from_utf8(value).ok()?.trim();
    let (scheme, rest) = text.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
        return Some(rest.as_bytes().to_vec());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let colon = decoded.iter().position(|&b| b == b':')?;
        return Some(decoded[colon + 1..].to_vec());
    }
    None
}

/// Decodes a Standard Webhooks secret (`whsec_` + base64 of the key bytes).
pub fn standard_webhooks_key(secret: &Secret) -> Option<Secret> {
    use base64::Engine as _;
    let encoded = secret.expose().strip_prefix(b"whsec_")?;
    let key = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    (!key.is_empty()).then(|| Secret::new(key))
}

/// Standard Webhooks v1 signature header value (`v1,<base64>`) of a message.
pub fn standard_webhooks_sign(key: &Secret, id: &str, timestamp: i64, body: &[u8]) -> String {
    use base64::Engine as _;
    let mut mac = HmacSha256::new_from_slice(key.expose()).expect("HMAC accepts any key length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

#[cfg(test)]
mod verifier_tests {
    use super::*;
    use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_static(name),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn github_documented_vector_verifies() {
        let verifier = Verifier::Hmac {
            headers: vec![HmacHeader::sha256_hex("x-hub-signature-256", "sha256=")],
            secrets: vec![Secret::new("It's a Secret to Everybody")],
        };
        let h = headers(&[(
            "x-hub-signature-256",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        )]);
        assert_eq!(verifier.verify(&h, "", b"Hello, World!", 0), Ok(()));
        assert_eq!(
            verifier
                .verify(&h, "", b"Hello, World?", 0)
                .unwrap_err()
                .error,
            SignatureError::Mismatch
        );
    }

    #[test]
    fn standard_webhooks_documented_vector_verifies_within_the_window() {
        let key =
            standard_webhooks_key(&Secret::new("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD")).unwrap();
        let verifier = Verifier::StandardWebhooks {
            keys: vec![key.clone()],
        };
        let body = br#"{"email":"test@example.com","username":"test_user"}"#;
        let h = headers(&[
            ("webhook-id", "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk"),
            ("webhook-timestamp", "1649367553"),
            (
                "webhook-signature",
                "v2,AAAA v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=",
            ),
        ]);
        assert_eq!(verifier.verify(&h, "", body, 1649367553 + 300), Ok(()));
        assert_eq!(
            verifier
                .verify(&h, "", body, 1649367553 + 301)
                .unwrap_err()
                .error,
            SignatureError::StaleTimestamp
        );
        assert_eq!(
            standard_webhooks_sign(&key, "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk", 1649367553, body),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
    }

    #[test]
    fn pagerduty_list_matches_any_entry() {
        let secret = Secret::new("pd-secret");
        let good = sign_hex(&secret, b"{}");
        let verifier = Verifier::HmacHexList {
            header: "x-pagerduty-signature",
            prefix: "v1=",
            secrets: vec![secret],
        };
        let value = format!("v1={},v1={good}", "0".repeat(64));
        let h = headers(&[("x-pagerduty-signature", value.as_str())]);
        assert_eq!(verifier.verify(&h, "", b"{}", 0), Ok(()));
    }

    #[test]
    fn tokens_compare_whole_values() {
        let verifier = Verifier::Token {
            header: "x-gitlab-token",
            secrets: vec![Secret::new("abc")],
        };
        assert!(verifier
            .verify(&headers(&[("x-gitlab-token", "abc")]), "", b"", 0)
            .is_ok());
        for wrong in ["ab", "abcd", "ABC"] {
            assert_eq!(
                verifier
                    .verify(&headers(&[("x-gitlab-token", wrong)]), "", b"", 0)
                    .unwrap_err()
                    .error,
                SignatureError::Mismatch
            );
        }
    }

    #[test]
    fn query_tokens_are_form_decoded_and_single() {
        let verifier = Verifier::QueryToken {
            parameter: "token",
            secrets: vec![Secret::new("a+b/c=")],
        };
        let h = HeaderMap::new();
        assert!(verifier
            .verify(&h, "x=1&token=a%2Bb%2Fc%3D", b"", 0)
            .is_ok());
        let error = |q| verifier.verify(&h, q, b"", 0).unwrap_err().error;
        assert_eq!(
            error("token=a+b/c="),
            SignatureError::Mismatch,
            "+ is a space"
        );
        assert_eq!(error("x=1"), SignatureError::Missing);
        assert_eq!(
            error("token=a%2Bb%2Fc%3D&token=x"),
            SignatureError::Repeated
        );
    }

    #[test]
    fn hmac_headers_take_other_algorithms_and_base64() {
        use base64::Engine as _;
        let secret = Secret::new("k");
        let mut mac = Hmac::<sha2::Sha512>::new_from_slice(b"k").unwrap();
        mac.update(b"body");
        let b64 = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let verifier = Verifier::Hmac {
            headers: vec![HmacHeader {
                name: "x-sig",
                prefix: "sha512=",
                algorithm: HmacAlgorithm::Sha512,
                encoding: MacEncoding::Base64,
            }],
            secrets: vec![secret],
        };
        let value = format!("sha512={b64}");
        assert!(verifier
            .verify(&headers(&[("x-sig", value.as_str())]), "", b"body", 0)
            .is_ok());
        assert_eq!(
            verifier
                .verify(&headers(&[("x-sig", value.as_str())]), "", b"bodY", 0)
                .unwrap_err()
                .error,
            SignatureError::Mismatch
        );
        let short = format!("sha512={}", &b64[..20]);
        assert_eq!(
            verifier
                .verify(&headers(&[("x-sig", short.as_str())]), "", b"body", 0)
                .unwrap_err()
                .error,
            SignatureError::Malformed
        );
    }

    #[test]
    fn bearer_and_basic_password_are_accepted() {
        let verifier = Verifier::Bearer {
            secrets: vec![Secret::new("tok")],
        };
        assert!(verifier
            .verify(&headers(&[("authorization", "Bearer tok")]), "", b"", 0)
            .is_ok());
        // "user:tok"
        assert!(verifier
            .verify(
                &headers(&[("authorization", "Basic dXNlcjp0b2s=")]),
                "",
                b"",
                0
            )
            .is_ok());
        assert!(verifier
            .verify(&headers(&[("authorization", "Bearer nope")]), "", b"", 0)
            .is_err());
    }
}
