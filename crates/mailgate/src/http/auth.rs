//! Admin API authentication: the bearer token in `data_dir/admin.token`
//! (created on first start, mode 0600), checked in constant time on every
//! request but `GET /healthz` and `GET /metrics`, and a bounded per-address
//! throttle that answers 429 to an address after repeated failures.
//!
//! The dashboard's session cookie ([`super::session`]) opens the same
//! doors. Without either, a page answers with a redirect to `/login`;
//! the API and a page's `?format=json` twin answer 401.
//!
//! May import: std, axum, `subtle`, `rand`, `base64`.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use subtle::ConstantTimeEq;

/// The token file's name inside `data_dir`.
pub const TOKEN_FILE: &str = "admin.token";
/// Bytes of OS randomness in a generated token (256 bits).
const TOKEN_BYTES: usize = 32;
/// A token an operator wrote by hand must still be hard to guess.
const MIN_TOKEN_LEN: usize = 22;

pub fn token_path(data_dir: &Path) -> PathBuf {
    data_dir.join(TOKEN_FILE)
}

/// Reads `data_dir/admin.token`, creating it with a fresh random token
/// first if it does not exist. Created with mode 0600 in one step, so it is
/// never readable by others, not even for a moment.
pub fn load_or_create(data_dir: &Path) -> anyhow::Result<String> {
    let path = token_path(data_dir);
    match create(&path) {
        Ok(token) => {
            tracing::info!(path = %path.display(), "created the admin API token");
            return Ok(token);
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("cannot create the admin API token file {}", path.display())),
    }
    let mode = std::fs::metadata(&path).with_context(|| format!("cannot read {}", path.display()))?.permissions().mode();
    if mode & 0o077 != 0 {
        bail!("{} is readable by other users (mode {:o}); run `chmod 600 {}`", path.display(), mode & 0o777, path.display());
    }
    read_token(&path)
}

fn create(path: &Path) -> io::Result<String> {
    let mut bytes = [0u8; TOKEN_BYTES];
    rand::TryRngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut bytes).map_err(io::Error::other)?;
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(format!("{token}\n").as_bytes())?;
    f.sync_all()?;
    Ok(token)
}

/// Reads a token file (the server's, or the CLI's `--token-file`): one line
/// of visible ASCII without spaces.
pub fn read_token(path: &Path) -> anyhow::Result<String> {
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(4096).read_to_string(&mut text))
        .with_context(|| format!("cannot read the admin API token from {}", path.display()))?;
    let token = text.trim_end_matches(['\n', '\r']);
    if token.len() < MIN_TOKEN_LEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
        bail!(
            "{}: expected one line of at least {MIN_TOKEN_LEN} visible ASCII characters without spaces (delete the file to have a new token generated)",
            path.display()
        );
    }
    Ok(token.to_string())
}

/// Failures from one address within `window` before it is refused.
const MAX_FAILURES: u32 = 5;
const WINDOW: Duration = Duration::from_secs(600);
/// How long a throttled address gets 429, whatever token it sends.
const BLOCK_FOR: Duration = Duration::from_secs(600);
/// Addresses tracked at most: a flood of source addresses must not grow it.
const MAX_TRACKED: usize = 4096;

struct Failures {
    count: u32,
    first: Instant,
    blocked_until: Option<Instant>,
}

impl Failures {
    fn expired(&self, now: Instant) -> bool {
        match self.blocked_until {
            Some(until) => now >= until,
            None => now.duration_since(self.first) >= WINDOW,
        }
    }
}

/// The token, the dashboard's login and sessions, and the failure table.
pub struct Guard {
    token: String,
    failures: Mutex<HashMap<IpAddr, Failures>>,
    /// `[http] admin_password`: the argon2 hash the login form checks.
    pub password: Option<String>,
    /// Cookies get `Secure` (the server speaks HTTPS).
    pub secure: bool,
    pub sessions: super::session::Sessions,
}

/// How a request got in, for handlers (a request extension).
#[derive(Clone, Debug)]
pub enum Access {
    /// The public paths (`/login`, `/healthz`, ...).
    Anonymous,
    Bearer,
    /// A dashboard session: its cookie and CSRF token.
    Session {
        cookie: String,
        csrf: String,
    },
}

/// The throttle's key: IPv4 addresses as they are, IPv6 by their /64, which
/// one client usually holds whole.
fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

impl Guard {
    pub fn new(token: String) -> Arc<Guard> {
        Guard::with_login(token, None, false)
    }

    /// With the dashboard's login: `password` is the argon2 hash, `secure`
    /// whether cookies travel over HTTPS only.
    pub fn with_login(token: String, password: Option<String>, secure: bool) -> Arc<Guard> {
        Arc::new(Guard { token, failures: Mutex::new(HashMap::new()), password, secure, sessions: Default::default() })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Failures>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn blocked(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let table = self.table();
        let until = table.get(&key(ip))?.blocked_until?;
        (until > now).then(|| until - now)
    }

    /// Counts a failure; `Some(wait)` when the address is now throttled.
    pub(super) fn fail(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let mut table = self.table();
        if table.len() >= MAX_TRACKED && !table.contains_key(&key(ip)) {
            table.retain(|_, f| !f.expired(now));
            if table.len() >= MAX_TRACKED {
                // Still full of live entries: forget the oldest unblocked
                // one (or, failing that, the oldest), so the table stays
                // bounded; a blocked address is the last thing to forget.
                let victim = table.iter().min_by_key(|(_, f)| (f.blocked_until.is_some(), f.first)).map(|(k, _)| *k);
                if let Some(victim) = victim {
                    table.remove(&victim);
                }
            }
        }
        let f = table.entry(key(ip)).or_insert(Failures { count: 0, first: now, blocked_until: None });
        if f.expired(now) {
            *f = Failures { count: 0, first: now, blocked_until: None };
        }
        f.count += 1;
        if f.count >= MAX_FAILURES {
            f.blocked_until = Some(now + BLOCK_FOR);
            return Some(BLOCK_FOR);
        }
        None
    }

    fn valid(&self, req: &Request) -> bool {
        let Some(value) = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let Some((scheme, token)) = value.split_once(' ') else { return false };
        scheme.eq_ignore_ascii_case("bearer") && bool::from(token.trim().as_bytes().ct_eq(self.token.as_bytes()))
    }
}

/// Paths anyone on the network may read: liveness and counters, which
/// carry no addresses; the login form and the style sheet.
fn public(req: &Request) -> bool {
    let path = req.uri().path();
    (matches!(*req.method(), Method::GET | Method::HEAD) && matches!(path, "/healthz" | "/metrics" | "/dashboard.css" | "/favicon.ico"))
        || path == "/login"
}

/// A dashboard page (not its JSON twin), which a browser without a
/// session is sent to the login form for; anything else gets 401, as
/// before the dashboard.
fn page_for_people(req: &Request) -> bool {
    let path = req.uri().path();
    matches!(*req.method(), Method::GET | Method::HEAD)
        && (matches!(path, "/" | "/queue" | "/tls" | "/messages") || path.starts_with("/messages/") || path.starts_with("/domains/"))
        && !req.uri().query().is_some_and(|q| q.split('&').any(|kv| kv == "format=json"))
        && req.headers().get(header::AUTHORIZATION).is_none()
}

/// A page or its JSON twin: asking for one without credentials guesses nothing.
fn dashboard_read(req: &Request) -> bool {
    let path = req.uri().path();
    matches!(*req.method(), Method::GET | Method::HEAD)
        && (matches!(path, "/" | "/queue" | "/tls" | "/messages") || path.starts_with("/messages/") || path.starts_with("/domains/"))
}

/// The dashboard session the request's cookie names, if it is live.
fn session(guard: &Guard, req: &Request) -> Option<Access> {
    let cookie = super::session::cookie(req.headers(), super::session::SESSION_COOKIE)?;
    let csrf = guard.sessions.csrf(cookie)?;
    Some(Access::Session { cookie: cookie.to_string(), csrf })
}

pub(super) fn too_many(wait: Duration) -> Response {
    let mut resp =
        (StatusCode::TOO_MANY_REQUESTS, axum::Json(serde_json::json!({"error": "too many failed attempts from this address; wait"})))
            .into_response();
    if let Ok(v) = HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

/// The middleware: 429 for a throttled address, 401 for a missing or wrong
/// token, otherwise the request goes on.
pub async fn require_token(
    State(guard): State<Arc<Guard>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request,
    next: Next,
) -> Response {
    if public(&req) {
        req.extensions_mut().insert(Access::Anonymous);
        return next.run(req).await;
    }
    let now = Instant::now();
    let ip = peer.ip();
    if let Some(wait) = guard.blocked(ip, now) {
        tracing::warn!(client = %ip, path = req.uri().path(), "admin API: refused, address throttled after failed attempts");
        return too_many(wait);
    }
    if guard.valid(&req) {
        req.extensions_mut().insert(Access::Bearer);
        return next.run(req).await;
    }
    if let Some(access) = session(&guard, &req) {
        // The API changes state on POST and DELETE: from a browser
        // session, only with the session's CSRF token in a header (the
        // dashboard's own forms carry it in the form, checked there).
        if let Access::Session { csrf, .. } = &access
            && req.uri().path().starts_with("/api/")
            && !matches!(*req.method(), Method::GET | Method::HEAD)
        {
            let sent = req.headers().get("x-csrf-token").and_then(|v| v.to_str().ok()).unwrap_or("");
            if !super::session::same(csrf, sent) {
                return (StatusCode::FORBIDDEN, axum::Json(serde_json::json!({"error": "missing or wrong X-CSRF-Token"}))).into_response();
            }
        }
        req.extensions_mut().insert(access);
        return next.run(req).await;
    }
    if page_for_people(&req) {
        // A browser without a session: to the login form, and back here
        // after it. Not a failure: sessions expire.
        let back = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let to = format!("/login?next={}", url_escape(back));
        return axum::response::Redirect::to(&to).into_response();
    }
    let presented = req.headers().contains_key(header::AUTHORIZATION);
    tracing::warn!(
        client = %ip, method = %req.method(), path = req.uri().path(),
        reason = if presented { "wrong token" } else { "no token" },
        "admin API: authentication failed"
    );
    // A wrong token, or any request without one but a dashboard read,
    // counts towards the throttle; a page's JSON twin asked without
    // credentials (or with an expired session) guesses nothing.
    if (presented || !dashboard_read(&req))
        && let Some(wait) = guard.fail(ip, now)
    {
        tracing::warn!(client = %ip, block_s = wait.as_secs(), "admin API: throttling this address after repeated failures");
        return too_many(wait);
    }
    let mut resp = (StatusCode::UNAUTHORIZED, axum::Json(serde_json::json!({"error": "missing or wrong bearer token"}))).into_response();
    resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"mailgate\""));
    resp
}

/// Percent-encodes a path and query for a query parameter.
fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_table_stays_bounded() {
        let g = Guard::new("x".repeat(30));
        let now = Instant::now();
        for i in 0..(MAX_TRACKED as u32 * 3) {
            g.fail(IpAddr::V4(std::net::Ipv4Addr::from(0x0A00_0000 + i)), now);
        }
        assert!(g.table().len() <= MAX_TRACKED);
    }

    #[test]
    fn fifth_failure_blocks_and_ipv6_counts_per_64() {
        let g = Guard::new("x".repeat(30));
        let now = Instant::now();
        for i in 1..MAX_FAILURES {
            let ip: IpAddr = format!("2001:db8::{i}").parse().unwrap();
            assert!(g.fail(ip, now).is_none());
        }
        let ip: IpAddr = "2001:db8::ffff".parse().unwrap();
        assert!(g.fail(ip, now).is_some());
        assert!(g.blocked("2001:db8::1234".parse().unwrap(), now).is_some());
        assert!(g.blocked("2001:db9::1".parse().unwrap(), now).is_none());
        assert!(g.blocked(ip, now + BLOCK_FOR).is_none());
    }
}
