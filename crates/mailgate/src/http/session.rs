//! Dashboard logins: a password form checked against the argon2 hash in
//! `[http] admin_password`, sessions kept in memory (a restart logs
//! everyone out) behind an `HttpOnly`, `SameSite=Strict` cookie (`Secure`
//! under TLS), and a CSRF token per session that every state-changing
//! form carries. The login form itself carries one too, tied to a
//! short-lived cookie (double submit), so a page elsewhere cannot log a
//! browser in.
//!
//! May import: std, axum, `argon2`, `sha2`, `rand`, `base64`, `subtle`, maud.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordVerifier};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use base64::Engine;
use maud::{Markup, html};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::auth::{Access, Guard};
use super::dashboard::layout;

pub const SESSION_COOKIE: &str = "mailgate_session";
const LOGIN_COOKIE: &str = "mailgate_login";
/// A session lasts this long from login, however active.
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most; the oldest goes first past that.
const MAX_SESSIONS: usize = 1024;

struct Session {
    csrf: String,
    expires: Instant,
}

/// The live sessions, by the SHA-256 of their cookie (a lookup that leaks
/// timing leaks nothing about a cookie).
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<[u8; 32], Session>>,
}

/// 256 bits of OS randomness, URL-safe.
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    if rand::TryRngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut bytes).is_err() {
        // The OS generator failed: fall back on the thread generator
        // (seeded from the OS) rather than refuse every login.
        bytes = rand::random();
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn digest(cookie: &str) -> [u8; 32] {
    Sha256::digest(cookie.as_bytes()).into()
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new session: its cookie value.
    fn create(&self) -> String {
        let cookie = random_token();
        let now = Instant::now();
        let mut map = self.lock();
        map.retain(|_, s| s.expires > now);
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| *k)
        {
            map.remove(&oldest);
        }
        map.insert(digest(&cookie), Session { csrf: random_token(), expires: now + SESSION_TTL });
        cookie
    }

    /// The CSRF token of the live session `cookie` names.
    pub fn csrf(&self, cookie: &str) -> Option<String> {
        let map = self.lock();
        map.get(&digest(cookie)).filter(|s| s.expires > Instant::now()).map(|s| s.csrf.clone())
    }

    fn remove(&self, cookie: &str) {
        self.lock().remove(&digest(cookie));
    }
}

/// A cookie's value from the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Constant-time equality of two tokens.
pub fn same(a: &str, b: &str) -> bool {
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

fn set_cookie(name: &str, value: &str, path: &str, max_age: u64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    // The values are base64url: always a valid header.
    HeaderValue::from_str(&format!("{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"))
        .unwrap_or_else(|_| HeaderValue::from_static("invalid=1"))
}

#[derive(serde::Deserialize, Default)]
pub struct LoginQuery {
    next: Option<String>,
}

/// Where to go after logging in: a path on this server, nothing else.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') && !n.starts_with("/login") => n.to_string(),
        _ => "/".to_string(),
    }
}

fn login_page(guard: &Guard, token: &str, next: &str, error: Option<&str>) -> Markup {
    let body = html! {
        div.login {
            h1 { "mailgate" }
            @if guard.password.is_none() {
                p.error { "Password login is not set up: set " code { "[http] admin_password" } " to the output of " code { "mailgate user hash" } "." }
            }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            form method="post" action="/login" {
                input type="hidden" name="csrf" value=(token);
                input type="hidden" name="next" value=(next);
                label for="password" { "Password" }
                input #password type="password" name="password" autocomplete="current-password" autofocus required;
                button type="submit" { "Log in" }
            }
        }
    };
    layout::page("Log in", None, &Access::Anonymous, body)
}

/// `GET /login`: the form, with a fresh CSRF token in a cookie and in the form.
pub async fn form(
    State(api): State<Arc<super::Api>>,
    headers: HeaderMap,
    query: Result<Query<LoginQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let guard = &api.guard;
    let next = safe_next(query.as_ref().ok().and_then(|q| q.next.as_deref()));
    // The token of a login form still open in another tab (or loaded
    // again by a favicon's redirect) stays valid: reuse the cookie's.
    let token = match cookie(&headers, LOGIN_COOKIE) {
        Some(t) if t.len() == 43 && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') => t.to_string(),
        _ => random_token(),
    };
    let mut resp = login_page(guard, &token, &next, None).into_response();
    resp.headers_mut().append(header::SET_COOKIE, set_cookie(LOGIN_COOKIE, &token, "/login", 3600, guard.secure));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

#[derive(serde::Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    password: String,
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    next: Option<String>,
}

/// `POST /login`: checks the CSRF token and the password; a session
/// cookie and a redirect on success, the form again with 401 otherwise.
pub async fn login(
    State(api): State<Arc<super::Api>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let guard = &api.guard;
    let ip = peer.ip();
    if let Some(wait) = guard.blocked(ip, Instant::now()) {
        return super::auth::too_many(wait);
    }
    let Ok(Form(form)) = form else {
        return (StatusCode::BAD_REQUEST, "expected a form with password, csrf and next").into_response();
    };
    let next = safe_next(form.next.as_deref());
    let expected = cookie(&headers, LOGIN_COOKIE).unwrap_or("");
    if expected.is_empty() || !same(expected, &form.csrf) {
        tracing::warn!(client = %ip, "dashboard: login refused, missing or wrong CSRF token");
        return (StatusCode::FORBIDDEN, "CSRF token missing or wrong: reload the login page and try again").into_response();
    }
    let ok = match guard.password.clone() {
        Some(hash) => {
            let password = form.password;
            tokio::task::spawn_blocking(move || {
                PasswordHash::new(&hash).is_ok_and(|h| argon2::Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
            })
            .await
            .unwrap_or(false)
        }
        None => false,
    };
    if !ok {
        tracing::warn!(client = %ip, "dashboard: login failed");
        if let Some(wait) = guard.fail(ip, Instant::now()) {
            return super::auth::too_many(wait);
        }
        let token = random_token();
        let mut resp = (StatusCode::UNAUTHORIZED, login_page(guard, &token, &next, Some("Wrong password."))).into_response();
        resp.headers_mut().append(header::SET_COOKIE, set_cookie(LOGIN_COOKIE, &token, "/login", 3600, guard.secure));
        return resp;
    }
    tracing::info!(client = %ip, "dashboard: logged in");
    let session = guard.sessions.create();
    let mut resp = Redirect::to(&next).into_response();
    let h = resp.headers_mut();
    h.append(header::SET_COOKIE, set_cookie(SESSION_COOKIE, &session, "/", SESSION_TTL.as_secs(), guard.secure));
    h.append(header::SET_COOKIE, set_cookie(LOGIN_COOKIE, "", "/login", 0, guard.secure));
    resp
}

#[derive(serde::Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    pub csrf: String,
}

/// Whether a state-changing form may proceed: a bearer token needs no
/// CSRF token (a browser never sends one by itself); a session must send
/// its own.
pub fn csrf_ok(access: &Access, form_token: &str) -> bool {
    match access {
        Access::Bearer => true,
        Access::Session { csrf, .. } => same(csrf, form_token),
        Access::Anonymous => false,
    }
}

pub fn csrf_refused() -> Response {
    (StatusCode::FORBIDDEN, "CSRF token missing or wrong: reload the page and try again").into_response()
}

/// `POST /logout`.
pub async fn logout(
    State(api): State<Arc<super::Api>>,
    Extension(access): Extension<Access>,
    form: Result<Form<CsrfForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let guard = &api.guard;
    let token = form.map(|Form(f)| f.csrf).unwrap_or_default();
    if !csrf_ok(&access, &token) {
        return csrf_refused();
    }
    if let Access::Session { cookie, .. } = &access {
        guard.sessions.remove(cookie);
    }
    let mut resp = Redirect::to("/login").into_response();
    resp.headers_mut().append(header::SET_COOKIE, set_cookie(SESSION_COOKIE, "", "/", 0, guard.secure));
    resp
}
