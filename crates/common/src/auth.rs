//! Token authentication, as Ray's: with `RTD_AUTH_MODE=token` every TCP listener of
//! the cluster (node links, the object manager, owners' services, the dashboard, the
//! metrics endpoint) accepts only peers that present the cluster's token, and every
//! client presents it.
//!
//! The token comes from `RTD_AUTH_TOKEN`, else the file named by
//! `RTD_AUTH_TOKEN_PATH`, else `~/.rtd/auth_token` (`rtd get-auth-token --generate`
//! writes one there). Peers present it as `authorization: Bearer <token>` (gRPC
//! metadata or an HTTP header) or, from a browser, as the `rtd_auth_token` cookie that
//! the dashboard's login page sets. Tokens are compared in constant time.
//!
//! This module is the policy and its words; `rpc` applies it to gRPC, and the HTTP
//! servers through [`HttpAuthLayer`].

use std::fmt;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use subtle::ConstantTimeEq;

/// Ray's `RAY_AUTH_MODE`: `token` turns authentication on; unset or `disabled` leaves
/// it off.
pub const MODE_ENV: &str = "RTD_AUTH_MODE";
/// The token itself.
pub const TOKEN_ENV: &str = "RTD_AUTH_TOKEN";
/// A file holding the token.
pub const TOKEN_PATH_ENV: &str = "RTD_AUTH_TOKEN_PATH";
/// The cookie the dashboard's login page sets.
pub const COOKIE: &str = "rtd_auth_token";
/// How the refusal tells a client to fix it.
const HOW_TO_SET: &str = "set RTD_AUTH_TOKEN to the cluster's token (or RTD_AUTH_TOKEN_PATH to a file holding it, \
     or put it in ~/.rtd/auth_token); `rtd get-auth-token` on a node of the cluster prints it";
/// What starts the warning about listening beyond this machine without a token.
pub const SECURITY_WARNING: &str = "SECURITY WARNING:";
/// At most one warning about refused peers per this many milliseconds.
const WARN_EVERY_MS: u64 = 60_000;

#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    #[error("{MODE_ENV} must be 'token' or 'disabled', got {0:?}")]
    BadMode(String),
    #[error(
        "{MODE_ENV}=token but no token was found: set {TOKEN_ENV}, or {TOKEN_PATH_ENV} to a file holding it, \
         or create {} with `rtd get-auth-token --generate`", token_path().display()
    )]
    NoToken,
    #[error("cannot read the auth token from {path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("the auth token from {0} is not usable: it must be printable ASCII without spaces")]
    Malformed(String),
    #[error("cannot write the auth token to {path}: {reason}")]
    Unwritable { path: PathBuf, reason: String },
}

/// The cluster's shared secret. Its `Debug` does not show it.
#[derive(Clone)]
pub struct AuthToken(Arc<str>);

impl fmt::Debug for AuthToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthToken(..)")
    }
}

impl AuthToken {
    /// A token from text (a file's trailing newline is not part of it).
    pub fn parse(text: &str, from: &str) -> Result<Self, AuthError> {
        let token = text.trim();
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(AuthError::Malformed(from.to_string()));
        }
        Ok(AuthToken(Arc::from(token)))
    }

    /// 32 bytes from the operating system's CSPRNG, as 64 hex digits.
    pub fn generate() -> Self {
        use rand::RngCore;
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        AuthToken(Arc::from(bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()))
    }

    pub fn secret(&self) -> &str {
        &self.0
    }

    /// The `authorization` header value that presents this token.
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.0)
    }

    /// Whether `presented` is this token, in time independent of where they differ.
    pub fn matches(&self, presented: &[u8]) -> bool {
        self.0.as_bytes().ct_eq(presented).into()
    }
}

/// `~/.rtd/auth_token`.
fn default_token_path() -> PathBuf {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/"));
    home.join(".rtd").join("auth_token")
}

/// Where the token is read from (and `--generate` writes it): `RTD_AUTH_TOKEN_PATH`,
/// else `~/.rtd/auth_token`.
pub fn token_path() -> PathBuf {
    std::env::var_os(TOKEN_PATH_ENV).filter(|p| !p.is_empty()).map(PathBuf::from).unwrap_or_else(default_token_path)
}

/// The token from the environment or its file, whatever the mode; None when there
/// is none.
pub fn find_token() -> Result<Option<AuthToken>, AuthError> {
    if let Ok(text) = std::env::var(TOKEN_ENV) {
        if !text.is_empty() {
            return AuthToken::parse(&text, TOKEN_ENV).map(Some);
        }
    }
    let path = token_path();
    match std::fs::read_to_string(&path) {
        Ok(text) => AuthToken::parse(&text, &path.display().to_string()).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(AuthError::Unreadable { path, reason: e.to_string() }),
    }
}

/// What the environment asks for: Some(token) in token mode, None with auth off.
pub fn configured() -> Result<Option<AuthToken>, AuthError> {
    match std::env::var(MODE_ENV).unwrap_or_default().as_str() {
        "" | "disabled" => Ok(None),
        "token" => find_token()?.ok_or(AuthError::NoToken).map(Some),
        other => Err(AuthError::BadMode(other.to_string())),
    }
}

/// This process's configuration, read once: what its servers expect and its clients
/// present. A process starts by checking it (`rtd start`, `rtd.init()`), so a bad
/// configuration is an error there; a server that still meets one refuses everyone.
pub fn process() -> &'static Result<Option<AuthToken>, AuthError> {
    static PROCESS: OnceLock<Result<Option<AuthToken>, AuthError>> = OnceLock::new();
    PROCESS.get_or_init(configured)
}

/// The token this process's clients present, if any.
pub fn process_token() -> Option<AuthToken> {
    process().as_ref().ok().and_then(|t| t.clone())
}

/// Writes a new token to `path` (readable by its owner only, in a directory only its
/// owner can enter when this creates it) and returns it. An existing file is kept.
pub fn generate_token_file(path: &Path) -> Result<AuthToken, AuthError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let unwritable = |e: std::io::Error| AuthError::Unwritable { path: path.to_path_buf(), reason: e.to_string() };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(unwritable)?;
    }
    let token = AuthToken::generate();
    let mut file =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(unwritable)?;
    writeln!(file, "{}", token.secret()).map_err(unwritable)?;
    Ok(token)
}

/// What a server expects of its peers.
#[derive(Clone, Debug)]
pub enum Policy {
    /// Auth is off.
    Open,
    Token(AuthToken),
    /// Token mode without a usable token: nobody is let in, and this says why.
    Broken(String),
}

impl Policy {
    pub fn from_process() -> Self {
        match process() {
            Ok(None) => Policy::Open,
            Ok(Some(token)) => Policy::Token(token.clone()),
            Err(e) => Policy::Broken(e.to_string()),
        }
    }

    /// Lets in a request whose headers present the token (`authorization: Bearer`, or
    /// the login cookie); otherwise the refusal to send back, after a rate-limited
    /// warning naming `peer`.
    pub fn check(&self, headers: &http::HeaderMap, peer: Option<SocketAddr>) -> Result<(), String> {
        let token = match self {
            Policy::Open => return Ok(()),
            Policy::Token(token) => token,
            Policy::Broken(why) => return Err(format!("this server cannot check tokens: {why}")),
        };
        let presented = presented_token(headers);
        if presented.as_deref().is_some_and(|p| token.matches(p)) {
            return Ok(());
        }
        let what = if presented.is_some() { "a wrong token" } else { "no token" };
        warn_refused(peer, what);
        Err(format!(
            "authentication failed: this rtd cluster requires a token and the request carried {what}; {HOW_TO_SET}"
        ))
    }
}

/// The token a request presents: the bearer token of its `authorization` header,
/// else its `rtd_auth_token` cookie.
fn presented_token(headers: &http::HeaderMap) -> Option<Vec<u8>> {
    if let Some(value) = headers.get(http::header::AUTHORIZATION) {
        let value = value.as_bytes();
        return Some(value.strip_prefix(b"Bearer ").unwrap_or(value).to_vec());
    }
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| percent_encoding::percent_decode_str(value).collect())
}

/// One warning a minute at most, counting those it stands for.
fn warn_refused(peer: Option<SocketAddr>, what: &str) {
    static LAST_MS: AtomicU64 = AtomicU64::new(0);
    static SUPPRESSED: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let last = LAST_MS.load(Ordering::Relaxed);
    if now.saturating_sub(last) < WARN_EVERY_MS
        || LAST_MS.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_err()
    {
        SUPPRESSED.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let peer = peer.map(|p| p.to_string()).unwrap_or_else(|| "an unknown address".into());
    let more = SUPPRESSED.swap(0, Ordering::Relaxed);
    let more = if more > 0 { format!(" ({more} more refused since the last warning)") } else { String::new() };
    tracing::warn!("refused a connection from {peer} that presented {what}{more}");
}

/// Loudly warns when a server of this process listens beyond this machine with
/// authentication off.
pub fn warn_if_exposed(what: &str, addr: SocketAddr) {
    if !addr.ip().is_loopback() && process().as_ref().is_ok_and(|t| t.is_none()) {
        tracing::warn!(
            "{SECURITY_WARNING} {what} listens on {addr} without authentication: anyone who can reach this port \
             can run code on this cluster. Set {MODE_ENV}=token (see `rtd get-auth-token --generate`)."
        );
    }
}

/// A tower layer for HTTP servers (the dashboard, `/metrics`): a request without the
/// token is answered 401 before it reaches a route. A browser asking for a page gets
/// a login page that stores the token in a cookie.
#[derive(Clone)]
pub struct HttpAuthLayer {
    policy: Arc<Policy>,
}

impl HttpAuthLayer {
    pub fn new(policy: Policy) -> Self {
        Self { policy: Arc::new(policy) }
    }
}

impl<S> tower::Layer<S> for HttpAuthLayer {
    type Service = HttpAuth<S>;
    fn layer(&self, inner: S) -> HttpAuth<S> {
        HttpAuth { inner, policy: self.policy.clone() }
    }
}

#[derive(Clone)]
pub struct HttpAuth<S> {
    inner: S,
    policy: Arc<Policy>,
}

/// The 401 page a browser gets: a form that sets the cookie and reloads.
const LOGIN_PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>rtd dashboard: sign in</title></head>
<body style="font-family: sans-serif; margin: 4em">
<h1>This rtd cluster requires a token</h1>
<p>Paste the cluster's token (<code>rtd get-auth-token</code> on one of its nodes prints it).</p>
<form id="login"><input id="token" type="password" size="70" autofocus> <button type="submit">Sign in</button></form>
<script>
document.getElementById("login").addEventListener("submit", (e) => {
  e.preventDefault();
  const token = encodeURIComponent(document.getElementById("token").value.trim());
  document.cookie = "rtd_auth_token=" + token + "; path=/; SameSite=Strict";
  location.reload();
});
</script></body></html>
"#;

impl<S, B, R> tower::Service<http::Request<B>> for HttpAuth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: From<String> + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let peer = request.extensions().get::<axum::extract::ConnectInfo<SocketAddr>>().map(|c| c.0);
        match self.policy.check(request.headers(), peer) {
            Ok(()) => Box::pin(self.inner.call(request)),
            Err(message) => {
                let wants_page = request
                    .headers()
                    .get(http::header::ACCEPT)
                    .and_then(|a| a.to_str().ok())
                    .is_some_and(|a| a.contains("text/html"));
                let (content_type, body) = if wants_page {
                    ("text/html; charset=utf-8", LOGIN_PAGE.to_string())
                } else {
                    ("text/plain; charset=utf-8", format!("{message}\n"))
                };
                let mut response = http::Response::new(R::from(body));
                *response.status_mut() = http::StatusCode::UNAUTHORIZED;
                response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
                response.headers_mut().insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
                Box::pin(std::future::ready(Ok(response)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        pairs.iter().map(|(k, v)| (k.parse().unwrap(), v.parse().unwrap())).collect()
    }

    #[test]
    fn tokens_are_checked_from_the_header_or_the_cookie() {
        let token = AuthToken::parse("s3cret\n", "test").unwrap();
        let policy = Policy::Token(token.clone());
        assert!(policy.check(&headers(&[("authorization", "Bearer s3cret")]), None).is_ok());
        assert!(policy.check(&headers(&[("cookie", "a=b; rtd_auth_token=s3cret")]), None).is_ok());
        for bad in
            [headers(&[]), headers(&[("authorization", "Bearer s3cre")]), headers(&[("cookie", "rtd_auth_token=x")])]
        {
            let refusal = policy.check(&bad, None).unwrap_err();
            assert!(refusal.contains("RTD_AUTH_TOKEN"), "{refusal}");
        }
        assert!(Policy::Open.check(&headers(&[]), None).is_ok());
        assert!(Policy::Broken("no token".into())
            .check(&headers(&[("authorization", "Bearer s3cret")]), None)
            .is_err());
    }

    #[test]
    fn unusable_tokens_are_refused() {
        for bad in ["", "  \n", "has space", "caf\u{e9}"] {
            assert!(matches!(AuthToken::parse(bad, "test"), Err(AuthError::Malformed(_))), "{bad:?}");
        }
        assert_eq!(format!("{:?}", AuthToken::generate()), "AuthToken(..)");
    }

    #[test]
    fn a_generated_token_file_is_the_owners_alone_and_not_overwritten() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("rtd-auth-test-{}", std::process::id()));
        let path = dir.join("sub").join("auth_token");
        let token = generate_token_file(&path).unwrap();
        assert_eq!(token.secret().len(), 64);
        assert_ne!(token.secret(), AuthToken::generate().secret());
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(path.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
        let read = AuthToken::parse(&std::fs::read_to_string(&path).unwrap(), "file").unwrap();
        assert!(read.matches(token.secret().as_bytes()));
        assert!(matches!(generate_token_file(&path), Err(AuthError::Unwritable { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
