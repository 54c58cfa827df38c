//! SMTP AUTH: argon2id password checks, brute-force throttling per client
//! IP and per user, and `send_as` patterns.
//!
//! An unknown user costs the same work as a known one with a wrong
//! password and gets the same reply, so the server does not reveal which
//! users exist.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use mailgate_core::session::{AuthVerdict, Credentials};

use crate::config::User;

/// Failures after which replies are slowed down, one more second each.
const SLOW_AFTER: u32 = 3;
/// Longest added delay.
const MAX_DELAY: Duration = Duration::from_secs(5);
/// Failures after which the client is refused outright (421).
const REFUSE_AFTER: u32 = 10;
/// How long failures are remembered.
const MEMORY: Duration = Duration::from_secs(15 * 60);

/// Hashes a password the way `[[user]].password` expects (argon2id, PHC).
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>()).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Argon2::default().hash_password(password.as_bytes(), &salt).map_err(|e| anyhow::anyhow!("{e}"))?.to_string())
}

/// `*` matches any run of characters; comparison ignores case.
/// `local@domain` (or a pattern of one) with every U-label of the domain
/// written as its A-label; labels holding a `*` and labels IDNA refuses stay
/// as written, so they can only match themselves.
fn to_a_labels(address: &str) -> String {
    let Some((local, domain)) = address.rsplit_once('@') else { return address.to_string() };
    let labels: Vec<String> = domain
        .split('.')
        .map(|label| match label.contains('*') || label.is_ascii() {
            true => label.to_string(),
            false => idna::domain_to_ascii(label).unwrap_or_else(|_| label.to_string()),
        })
        .collect();
    format!("{local}@{}", labels.join("."))
}

pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.to_lowercase().chars().collect();
    let t: Vec<char> = text.to_lowercase().chars().collect();
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Ip(IpAddr),
    User(u64),
}

struct Failures {
    count: u32,
    last: Instant,
}

pub struct Authenticator {
    users: HashMap<String, User>,
    failures: Mutex<HashMap<Key, Failures>>,
    /// Verified against when the user is unknown, to spend the same time.
    dummy_hash: String,
}

fn user_key(name: &str) -> Key {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    name.to_lowercase().hash(&mut h);
    Key::User(h.finish())
}

impl Authenticator {
    pub fn new(users: &[User]) -> anyhow::Result<Arc<Self>> {
        Ok(Arc::new(Authenticator {
            users: users.iter().map(|u| (u.name.clone(), u.clone())).collect(),
            failures: Mutex::new(HashMap::new()),
            dummy_hash: hash_password("not a real password")?,
        }))
    }

    /// Whether `user` may use `address` (MAIL FROM or `From:`); `<>` is
    /// allowed only through an explicit `"<>"` pattern.
    pub fn may_send_as(&self, user: &str, address: &str) -> bool {
        let Some(u) = self.users.get(user) else { return false };
        let address = if address.is_empty() { "<>" } else { address };
        u.send_as.iter().any(|p| {
            if p.is_ascii() && address.is_ascii() {
                glob_match(p, address)
            } else {
                // A U-label and its A-label are one domain (`bücher.example`
                // = `xn--bcher-kva.example`): compare both in A-labels.
                glob_match(&to_a_labels(p), &to_a_labels(address))
            }
        })
    }

    fn count(&self, key: Key) -> u32 {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&key) {
            Some(f) if f.last.elapsed() < MEMORY => f.count,
            Some(_) => {
                map.remove(&key);
                0
            }
            None => 0,
        }
    }

    fn fail(&self, key: Key) -> u32 {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let f = map.entry(key).or_insert(Failures { count: 0, last: Instant::now() });
        if f.last.elapsed() >= MEMORY {
            f.count = 0;
        }
        f.count += 1;
        f.last = Instant::now();
        f.count
    }

    /// Checks credentials. Returns the verdict and how long to wait before
    /// answering: failures slow the client down, per IP and per user,
    /// loopback included.
    pub async fn verify(self: &Arc<Self>, ip: IpAddr, creds: Credentials) -> (AuthVerdict, Duration) {
        let ukey = user_key(&creds.username);
        let before = self.count(Key::Ip(ip)).max(self.count(ukey));
        if before >= REFUSE_AFTER {
            return (AuthVerdict::Throttled, Duration::from_secs(1));
        }
        let me = self.clone();
        let username = creds.username.clone();
        let ok = tokio::task::spawn_blocking(move || {
            let hash = me.users.get(&creds.username).map(|u| u.password_hash.as_str()).unwrap_or(&me.dummy_hash);
            let known = me.users.contains_key(&creds.username);
            let verified = PasswordHash::new(hash).is_ok_and(|h| Argon2::default().verify_password(creds.password.as_bytes(), &h).is_ok());
            known && verified
        })
        .await
        .unwrap_or(false);
        if ok {
            self.failures.lock().unwrap_or_else(|p| p.into_inner()).remove(&ukey);
            return (AuthVerdict::Accepted(username), Duration::ZERO);
        }
        let n = self.fail(Key::Ip(ip)).max(self.fail(ukey));
        tracing::warn!(client = %ip, user = %username, failures = n, "authentication failed");
        let delay = if n >= SLOW_AFTER { Duration::from_secs(u64::from(n - SLOW_AFTER + 1)).min(MAX_DELAY) } else { Duration::ZERO };
        if n >= REFUSE_AFTER { (AuthVerdict::Throttled, delay) } else { (AuthVerdict::Rejected, delay) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("*@example.test", "Alice@Example.TEST"));
        assert!(!glob_match("*@example.test", "alice@evil.test"));
        assert!(!glob_match("*@example.test", "alice@example.test.evil.test"));
        assert!(glob_match("app-*@example.test", "app-billing@example.test"));
        assert!(glob_match("ceo@example.test", "ceo@example.test"));
        assert!(!glob_match("ceo@example.test", "ceo2@example.test"));
        assert_eq!(to_a_labels("*@*.bücher.example"), "*@*.xn--bcher-kva.example");
        assert_eq!(to_a_labels("app@BÜCHER.example"), "app@xn--bcher-kva.example");
    }

    #[tokio::test]
    async fn throttles_and_hides_unknown_users() {
        let hash = hash_password("right").unwrap();
        let users = vec![User { name: "app".into(), password_hash: hash, send_as: vec!["*@example.test".into()] }];
        let a = Authenticator::new(&users).unwrap();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let creds = |u: &str, p: &str| Credentials { mechanism: "PLAIN", username: u.into(), password: p.into() };
        assert_eq!(a.verify(ip, creds("app", "right")).await.0, AuthVerdict::Accepted("app".into()));
        assert_eq!(a.verify(ip, creds("nobody", "x")).await, (AuthVerdict::Rejected, Duration::ZERO));
        assert_eq!(a.verify(ip, creds("app", "wrong")).await, (AuthVerdict::Rejected, Duration::ZERO));
        let (v, delay) = a.verify(ip, creds("app", "wrong")).await;
        assert_eq!(v, AuthVerdict::Rejected);
        assert!(delay >= Duration::from_secs(1));
        for _ in 0..10 {
            a.verify(ip, creds("x", "y")).await;
        }
        assert_eq!(a.verify(ip, creds("app", "right")).await.0, AuthVerdict::Throttled, "even the right password is refused now");
    }
}
