//! The wire API of the vault server, version 1 ("Vault server protocol" in
//! disk-format/FORMAT.md): request routes, headers, bounds and error codes,
//! parsed and formatted here and only here, by both sides. Pure functions
//! over strings and bytes, so they are fuzzed (`fuzz/fuzz_targets/
//! site_request.rs`) and property-tested (`site/tests/protocol.rs`).

use vault::backend::check_name;
use vault::Kind;

/// The protocol version this code speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// The ALPN protocol: HTTP/2 only.
pub const ALPN_H2: &[u8] = b"h2";
/// Trailer that names a streamed object (`POST /v1/vaults/VAULT/KIND`).
pub const NAME_TRAILER: &str = "lifeboat-name";
/// Header of a `HEAD` answer: the object's size (not `Content-Length`,
/// which HTTP/2 checks against the answer's empty body).
pub const SIZE_HEADER: &str = "lifeboat-size";
/// Header of a failed `HEAD` answer (which has no body): the error code.
pub const ERROR_HEADER: &str = "lifeboat-error";
/// Header on a list answer when more names follow.
pub const MORE_HEADER: &str = "lifeboat-more";

/// Request headers, all together, at most this many bytes.
pub const MAX_HEADER_LIST: u32 = 16 * 1024;
/// A list answer holds at most this many names.
pub const LIST_PAGE: usize = 10_000;
/// A missing request names at most this many objects.
pub const MAX_MISSING: usize = 100_000;
/// An enroll, list or missing request body is at most this many bytes.
pub const MAX_SMALL_BODY: u64 = 8 << 20;
/// A path (with its query) is at most this many bytes.
pub const MAX_PATH: usize = 1024;

/// The largest object of `kind` a host may store.
pub fn max_object(kind: Kind) -> u64 {
    match kind {
        Kind::Pack => 1 << 30,
        Kind::Page => 16 << 20,
        Kind::Root => 32 << 20,
        Kind::Audit => 64 << 20,
        _ => 64 << 10,
    }
}

/// The kind whose prefix (`packs`, `roots`, …) is `s`.
pub fn kind_of(s: &str) -> Option<Kind> {
    Kind::ALL.into_iter().find(|k| k.prefix() == s)
}

/// A request the server understands, from its method and path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /v1/version`.
    Version,
    /// `POST /v1/enroll`.
    Enroll,
    /// `GET /v1/vaults/VAULT/KIND/NAME`.
    Get {
        /// The vault.
        vault: String,
        /// The object's kind.
        kind: Kind,
        /// The object's name.
        name: String,
    },
    /// `HEAD /v1/vaults/VAULT/KIND/NAME`.
    Head {
        /// The vault.
        vault: String,
        /// The object's kind.
        kind: Kind,
        /// The object's name.
        name: String,
    },
    /// `PUT /v1/vaults/VAULT/KIND/NAME`.
    Put {
        /// The vault.
        vault: String,
        /// The object's kind.
        kind: Kind,
        /// The object's name.
        name: String,
    },
    /// `POST /v1/vaults/VAULT/KIND`: a streamed object named in a trailer.
    Stream {
        /// The vault.
        vault: String,
        /// The object's kind.
        kind: Kind,
    },
    /// `GET /v1/vaults/VAULT/list/KIND?prefix=P&after=N`.
    List {
        /// The vault.
        vault: String,
        /// The kind listed.
        kind: Kind,
        /// Names start with this.
        prefix: String,
        /// Names sort after this (empty: from the first).
        after: String,
    },
    /// `POST /v1/vaults/VAULT/missing`.
    Missing {
        /// The vault.
        vault: String,
    },
    /// `DELETE /v1/vaults/VAULT/KIND/NAME`.
    Delete {
        /// The vault.
        vault: String,
        /// The object's kind.
        kind: Kind,
        /// The object's name.
        name: String,
    },
}

impl Route {
    /// The vault the request is about, if any.
    pub fn vault(&self) -> Option<&str> {
        match self {
            Route::Version | Route::Enroll => None,
            Route::Get { vault, .. }
            | Route::Head { vault, .. }
            | Route::Put { vault, .. }
            | Route::Stream { vault, .. }
            | Route::List { vault, .. }
            | Route::Missing { vault }
            | Route::Delete { vault, .. } => Some(vault),
        }
    }

    /// The largest request body this route accepts.
    pub fn max_body(&self) -> u64 {
        match self {
            Route::Version | Route::Get { .. } | Route::Head { .. } | Route::List { .. } | Route::Delete { .. } => 0,
            Route::Enroll | Route::Missing { .. } => MAX_SMALL_BODY,
            Route::Put { kind, .. } | Route::Stream { kind, .. } => max_object(*kind),
        }
    }
}

/// Why a request was not understood (answered `400`, or `413`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// No such route.
    #[error("no such request: {method} {path}")]
    NoRoute {
        /// The method.
        method: String,
        /// The path (cut to 100 characters).
        path: String,
    },
    /// A name, vault name or query value that breaks the object-name rule.
    #[error("bad name {name:?}: {why}")]
    BadName {
        /// The name (cut to 100 characters).
        name: String,
        /// What is wrong.
        why: String,
    },
    /// A header that does not parse.
    #[error("bad {header} header: {why}")]
    BadHeader {
        /// The header.
        header: &'static str,
        /// What is wrong.
        why: &'static str,
    },
    /// A body over its bound.
    #[error("the request is over its bound of {limit} bytes")]
    TooLarge {
        /// The bound.
        limit: u64,
    },
    /// A body that does not parse.
    #[error("bad request body: {why}")]
    BadBody {
        /// What is wrong.
        why: String,
    },
}

fn cut(s: &str) -> String {
    s.chars().take(100).collect()
}

fn name_ok(name: &str) -> Result<(), ProtocolError> {
    check_name(name).map_err(|e| ProtocolError::BadName {
        name: cut(name),
        why: match e {
            vault::VaultError::BadName { why, .. } => why.to_string(),
            other => other.to_string(),
        },
    })
}

/// A vault name: one object-name part.
pub fn check_vault_name(vault: &str) -> Result<(), ProtocolError> {
    name_ok(vault)?;
    if vault.contains('/') {
        return Err(ProtocolError::BadName { name: cut(vault), why: "a vault name is one part, without '/'".into() });
    }
    Ok(())
}

/// Parses a query of `key=value` pairs joined by `&`; values are names or
/// name prefixes, so nothing is percent-encoded (a `%` is refused).
fn parse_query(query: &str) -> Result<(String, String), ProtocolError> {
    let (mut prefix, mut after) = (String::new(), String::new());
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if !v.chars().all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c)) {
            return Err(ProtocolError::BadName {
                name: cut(v),
                why: "query values are object names or prefixes".into(),
            });
        }
        match k {
            "prefix" => prefix = v.to_string(),
            "after" => after = v.to_string(),
            _ => return Err(ProtocolError::BadName { name: cut(k), why: "unknown query parameter".into() }),
        }
    }
    Ok((prefix, after))
}

/// The route of a request from its method and path (with its query).
pub fn parse_route(method: &str, path_and_query: &str) -> Result<Route, ProtocolError> {
    let no_route = || ProtocolError::NoRoute { method: cut(method), path: cut(path_and_query) };
    if path_and_query.len() > MAX_PATH {
        return Err(ProtocolError::TooLarge { limit: MAX_PATH as u64 });
    }
    let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
    let rest = path.strip_prefix("/v1/").ok_or_else(no_route)?;
    match (method, rest) {
        ("GET", "version") if query.is_empty() => return Ok(Route::Version),
        ("POST", "enroll") if query.is_empty() => return Ok(Route::Enroll),
        _ => {}
    }
    let rest = rest.strip_prefix("vaults/").ok_or_else(no_route)?;
    let (vault, rest) = rest.split_once('/').ok_or_else(no_route)?;
    check_vault_name(vault)?;
    let vault = vault.to_string();
    if let Some(kind) = rest.strip_prefix("list/") {
        if method != "GET" {
            return Err(no_route());
        }
        let kind = kind_of(kind).ok_or_else(no_route)?;
        let (prefix, after) = parse_query(query)?;
        return Ok(Route::List { vault, kind, prefix, after });
    }
    if !query.is_empty() {
        return Err(no_route());
    }
    if rest == "missing" {
        return if method == "POST" { Ok(Route::Missing { vault }) } else { Err(no_route()) };
    }
    let (kind, name) = match rest.split_once('/') {
        Some((k, n)) => (k, Some(n)),
        None => (rest, None),
    };
    let kind = kind_of(kind).ok_or_else(no_route)?;
    let Some(name) = name else {
        return if method == "POST" { Ok(Route::Stream { vault, kind }) } else { Err(no_route()) };
    };
    name_ok(name)?;
    let name = name.to_string();
    match method {
        "GET" => Ok(Route::Get { vault, kind, name }),
        "HEAD" => Ok(Route::Head { vault, kind, name }),
        "PUT" => Ok(Route::Put { vault, kind, name }),
        "DELETE" => Ok(Route::Delete { vault, kind, name }),
        _ => Err(no_route()),
    }
}

/// The path of an object.
pub fn object_path(vault: &str, kind: Kind, name: &str) -> String {
    format!("/v1/vaults/{vault}/{}/{name}", kind.prefix())
}

/// A `Range: bytes=A-B` header: the bytes `A..=B`. Only one range, both
/// ends given.
pub fn parse_range(value: &str) -> Result<(u64, u64), ProtocolError> {
    let bad = |why| ProtocolError::BadHeader { header: "Range", why };
    let spec = value.strip_prefix("bytes=").ok_or(bad("not bytes=A-B"))?;
    let (a, b) = spec.split_once('-').ok_or(bad("not bytes=A-B"))?;
    let num = |s: &str| {
        if s.is_empty() || s.len() > 20 || !s.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad("not bytes=A-B"));
        }
        s.parse::<u64>().map_err(|_| bad("a number over 64 bits"))
    };
    let (a, b) = (num(a)?, num(b)?);
    if b < a {
        return Err(bad("the range ends before it starts"));
    }
    Ok((a, b))
}

/// A write's condition, from `If-None-Match` and `If-Match`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// No condition (`put`).
    None,
    /// `If-None-Match: *`: create if absent.
    Absent,
    /// `If-Match: "ETAG"`: replace if unchanged.
    Matches(String),
}

/// Parses the conditional headers of a `PUT`.
pub fn parse_condition(if_none_match: Option<&str>, if_match: Option<&str>) -> Result<Condition, ProtocolError> {
    match (if_none_match, if_match) {
        (None, None) => Ok(Condition::None),
        (Some("*"), None) => Ok(Condition::Absent),
        (Some(_), None) => Err(ProtocolError::BadHeader { header: "If-None-Match", why: "only * is supported" }),
        (None, Some(tag)) => parse_etag(tag).map(Condition::Matches),
        (Some(_), Some(_)) => Err(ProtocolError::BadHeader { header: "If-Match", why: "with If-None-Match" }),
    }
}

/// An `ETag` value: a quoted tag of visible ASCII without quotes.
pub fn parse_etag(value: &str) -> Result<String, ProtocolError> {
    let bad = |why| ProtocolError::BadHeader { header: "ETag", why };
    let inner = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).ok_or(bad("not quoted"))?;
    if inner.is_empty() || inner.len() > 200 || !inner.bytes().all(|b| b.is_ascii_graphic() && b != b'"') {
        return Err(bad("not a tag"));
    }
    Ok(inner.to_string())
}

/// An `ETag` header value for a tag.
pub fn etag(tag: &str) -> String {
    format!("\"{tag}\"")
}

/// The body of a missing request or answer: `KIND/NAME` lines.
pub fn parse_object_lines(body: &[u8]) -> Result<Vec<(Kind, String)>, ProtocolError> {
    let text = std::str::from_utf8(body).map_err(|_| ProtocolError::BadBody { why: "not UTF-8".into() })?;
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if out.len() == MAX_MISSING {
            return Err(ProtocolError::BadBody { why: format!("more than {MAX_MISSING} objects") });
        }
        let (kind, name) = line
            .split_once('/')
            .ok_or_else(|| ProtocolError::BadBody { why: format!("{:?} is not KIND/NAME", cut(line)) })?;
        let kind =
            kind_of(kind).ok_or_else(|| ProtocolError::BadBody { why: format!("unknown kind {:?}", cut(kind)) })?;
        name_ok(name)?;
        out.push((kind, name.to_string()));
    }
    Ok(out)
}

/// Formats objects as `KIND/NAME` lines.
pub fn object_lines<'a>(objects: impl IntoIterator<Item = (Kind, &'a str)>) -> String {
    let mut s = String::new();
    for (kind, name) in objects {
        s.push_str(kind.prefix());
        s.push('/');
        s.push_str(name);
        s.push('\n');
    }
    s
}

/// The body of a list answer: names, one a line.
pub fn parse_names(body: &[u8]) -> Result<Vec<String>, ProtocolError> {
    let text = std::str::from_utf8(body).map_err(|_| ProtocolError::BadBody { why: "not UTF-8".into() })?;
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            name_ok(l)?;
            Ok(l.to_string())
        })
        .collect()
}

/// The error codes of an answer's JSON body (`{"error": CODE, "message":
/// TEXT}`), with their status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// `400`: the request does not parse.
    BadRequest,
    /// `400`: an object name breaks the rule.
    BadName,
    /// `401`: no client certificate.
    NoCertificate,
    /// `403`: the host may not do this.
    Forbidden,
    /// `403`: the host's certificate was revoked.
    Revoked,
    /// `403`: the certificate is no enrolled host's, or the host is not
    /// enrolled for the vault.
    NotEnrolled,
    /// `404`.
    NotFound,
    /// `412` to a create: the object exists.
    Exists,
    /// `412` to a replace: the object changed.
    Conflict,
    /// `413`.
    TooLarge,
    /// `416`: a range past the end.
    ShortObject,
    /// `422`: the bytes do not match the name, or do not parse.
    NameMismatch,
    /// `507`.
    NoSpace,
    /// `500`.
    Io,
}

impl ErrorCode {
    /// Every code.
    pub const ALL: [ErrorCode; 14] = [
        ErrorCode::BadRequest,
        ErrorCode::BadName,
        ErrorCode::NoCertificate,
        ErrorCode::Forbidden,
        ErrorCode::Revoked,
        ErrorCode::NotEnrolled,
        ErrorCode::NotFound,
        ErrorCode::Exists,
        ErrorCode::Conflict,
        ErrorCode::TooLarge,
        ErrorCode::ShortObject,
        ErrorCode::NameMismatch,
        ErrorCode::NoSpace,
        ErrorCode::Io,
    ];

    /// The HTTP status.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::BadRequest | ErrorCode::BadName => 400,
            ErrorCode::NoCertificate => 401,
            ErrorCode::Forbidden | ErrorCode::Revoked | ErrorCode::NotEnrolled => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::Exists | ErrorCode::Conflict => 412,
            ErrorCode::TooLarge => 413,
            ErrorCode::ShortObject => 416,
            ErrorCode::NameMismatch => 422,
            ErrorCode::NoSpace => 507,
            ErrorCode::Io => 500,
        }
    }

    /// The code in the JSON body.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad-request",
            ErrorCode::BadName => "bad-name",
            ErrorCode::NoCertificate => "no-certificate",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Revoked => "revoked",
            ErrorCode::NotEnrolled => "not-enrolled",
            ErrorCode::NotFound => "not-found",
            ErrorCode::Exists => "exists",
            ErrorCode::Conflict => "conflict",
            ErrorCode::TooLarge => "too-large",
            ErrorCode::ShortObject => "short-object",
            ErrorCode::NameMismatch => "name-mismatch",
            ErrorCode::NoSpace => "no-space",
            ErrorCode::Io => "io",
        }
    }

    /// The code named `s`.
    pub fn from_code(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl From<&ProtocolError> for ErrorCode {
    fn from(e: &ProtocolError) -> ErrorCode {
        match e {
            ProtocolError::BadName { .. } => ErrorCode::BadName,
            ProtocolError::TooLarge { .. } => ErrorCode::TooLarge,
            _ => ErrorCode::BadRequest,
        }
    }
}

/// An error answer's body.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ErrorBody {
    /// The code ([`ErrorCode::as_str`]).
    pub error: String,
    /// What went wrong, for people.
    pub message: String,
}

/// `POST /v1/enroll`'s body.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EnrollRequest {
    /// The one-time token of the enrollment file.
    pub token: String,
    /// The host enrolling.
    pub host: String,
    /// The host's public key, SubjectPublicKeyInfo DER in hex.
    pub public_key: String,
}

/// `POST /v1/enroll`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EnrollAnswer {
    /// The host's certificate, PEM.
    pub certificate: String,
}

/// `GET /v1/version`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VersionAnswer {
    /// [`PROTOCOL_VERSION`].
    pub protocol: u32,
    /// The server's version.
    pub server: String,
}

/// Everything the fuzz target runs on one input: the first line as method
/// and path, the second as a range, the third as an ETag, the rest as a
/// missing body; whatever parses must format back to itself. Panics only on
/// a bug.
pub fn fuzz_request(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.splitn(4, '\n');
    let first = lines.next().unwrap_or("");
    let (method, path) = first.split_once(' ').unwrap_or(("GET", first));
    if let Ok(route) = parse_route(method, path) {
        match &route {
            Route::Get { vault, kind, name }
            | Route::Head { vault, kind, name }
            | Route::Put { vault, kind, name }
            | Route::Delete { vault, kind, name } => {
                assert_eq!(object_path(vault, *kind, name), path, "an object path formats back to itself");
                check_name(name).expect("a routed name is a valid name");
            }
            Route::List { prefix, after, .. } => assert!(!prefix.contains('%') && !after.contains('%')),
            _ => {}
        }
        assert!(route.vault().is_none_or(|v| check_vault_name(v).is_ok()));
    }
    if let Ok((a, b)) = parse_range(lines.next().unwrap_or("")) {
        assert!(a <= b);
        assert_eq!(parse_range(&format!("bytes={a}-{b}")), Ok((a, b)));
    }
    if let Ok(tag) = parse_etag(lines.next().unwrap_or("")) {
        assert_eq!(parse_etag(&etag(&tag)), Ok(tag));
    }
    if let Ok(objects) = parse_object_lines(lines.next().unwrap_or("").as_bytes()) {
        let again = object_lines(objects.iter().map(|(k, n)| (*k, n.as_str())));
        assert_eq!(parse_object_lines(again.as_bytes()).expect("formatted lines parse"), objects);
    }
}
