//! SMTP AUTH: argon2id password checks, brute-force throttling, and
//! `send_as` patterns.
//!
//! Throttling is keyed on the client address (an IPv6 client by its /64):
//! from its [`SLOW_AFTER`]th failure each reply is delayed, from its
//! [`REFUSE_AFTER`]th it gets `454 4.7.0` without its password being
//! checked. Failures are also counted per user, across addresses, but a
//! user under attack only stops being checked from addresses that have
//! failed themselves: a lock-out per user alone would let anyone lock the
//! real user out from everywhere.
//!
//! With `[cluster] store`, the failures are counted in the cluster's shared
//! counters ([`crate::cluster::Counters`], windows of [`MEMORY`]) instead,
//! so guesses spread over several nodes are throttled as on one; the
//! thresholds and replies are the same. A failure is then remembered for
//! 15 to 30 minutes (the counters' sliding window) rather than 15 minutes
//! after the last one; when the database does not answer, the counters
//! fall back to this node's own counts (see `cluster::counters`).
//!
//! An unknown user costs the same work as a known one with a wrong
//! password (a dummy hash with the users' own argon2 parameters) and gets
//! the same reply, so the server does not reveal which users exist.
//!
//! May import: `config`, `cluster` (the shared counters), `mailgate-core`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use mailgate_core::session::{AuthVerdict, Credentials};

use crate::cluster::Counters;
use crate::config::User;

/// Failures after which replies are slowed down, one more second each.
const SLOW_AFTER: u32 = 3;
/// Longest added delay.
const MAX_DELAY: Duration = Duration::from_secs(5);
/// Failures from one address after which it gets `454 4.7.0`.
const REFUSE_AFTER: u32 = 10;
/// Failures for one user, all addresses together, after which an address
/// with any failure of its own gets `454 4.7.0` for that user.
const USER_GUARD_AFTER: u32 = 10;
/// Keys (addresses and user names) remembered at most.
const MAX_TRACKED: usize = 100_000;
/// The delay of a throttled reply: cheap for us, slows a guesser's loop.
const THROTTLED_DELAY: Duration = Duration::from_secs(1);
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
    /// One permit per core for password checks.
    checking: tokio::sync::Semaphore,
    /// Verified against when the user is unknown, to spend the same time:
    /// made with the argon2 parameters the configured users' hashes use.
    dummy_hash: String,
    /// The cluster's counters; `None`: `failures` above, this node only.
    shared: Option<Arc<Counters>>,
}

/// An IPv6 client usually holds a whole /64: its failures count together.
fn ip_key(ip: IpAddr) -> Key {
    match ip {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            Key::Ip(IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0)))
        }
        other => Key::Ip(other.to_canonical()),
    }
}

/// A dummy hash with the parameters most users' hashes have, so verifying
/// it costs what verifying theirs does.
fn dummy_hash(users: &[User]) -> anyhow::Result<String> {
    // Params is not Hash; there are few users.
    let mut counts: Vec<((argon2::Algorithm, argon2::Version, argon2::Params), usize)> = Vec::new();
    for u in users {
        let Ok(h) = PasswordHash::new(&u.password_hash) else { continue };
        let Ok(alg) = argon2::Algorithm::try_from(h.algorithm) else { continue };
        let (Ok(params), Some(version)) = (argon2::Params::try_from(&h), h.version.and_then(|v| argon2::Version::try_from(v).ok())) else {
            continue;
        };
        let key = (alg, version, params);
        match counts.iter_mut().find(|(k, _)| *k == key) {
            Some((_, n)) => *n += 1,
            None => counts.push((key, 1)),
        }
    }
    let Some(((alg, version, params), _)) = counts.into_iter().max_by_key(|(_, n)| *n) else {
        return hash_password("not a real password");
    };
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let argon = Argon2::new(alg, version, params);
    Ok(argon.hash_password(b"not a real password", &salt).map_err(|e| anyhow::anyhow!("{e}"))?.to_string())
}

/// The names of an attempt's two counters in the cluster store: the
/// address (an IPv6 /64) and a digest of the lower-cased user name (any
/// guessed name fits, and names are not stored).
fn shared_keys(ikey: Key, user: &str) -> Vec<String> {
    use sha2::Digest;
    let ip = match ikey {
        Key::Ip(ip) => ip.to_string(),
        Key::User(h) => h.to_string(),
    };
    let digest = sha2::Sha256::digest(user.to_lowercase().as_bytes());
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    vec![format!("auth:ip:{ip}"), format!("auth:user:{hex}")]
}

fn user_key(name: &str) -> Key {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    name.to_lowercase().hash(&mut h);
    Key::User(h.finish())
}

impl Authenticator {
    pub fn new(users: &[User]) -> anyhow::Result<Arc<Self>> {
        Self::with_counters(users, None)
    }

    /// Failures counted in `shared` (a cluster's counters) when given.
    pub fn with_counters(users: &[User], shared: Option<Arc<Counters>>) -> anyhow::Result<Arc<Self>> {
        Ok(Arc::new(Authenticator {
            shared,
            users: users.iter().map(|u| (u.name.clone(), u.clone())).collect(),
            failures: Mutex::new(HashMap::new()),
            checking: tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get())),
            dummy_hash: dummy_hash(users)?,
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

    /// Under one lock, so parallel attempts cannot all pass: throttled
    /// (`Err`, with the address's failures), or the attempt is counted as a
    /// failure in advance (undone on success) and the new counts returned.
    fn admit(&self, ikey: Key, ukey: Key) -> Result<(u32, u32), u32> {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let count = |map: &HashMap<Key, Failures>, key| map.get(&key).filter(|f| f.last.elapsed() < MEMORY).map_or(0, |f| f.count);
        let from_ip = count(&map, ikey);
        if from_ip >= REFUSE_AFTER || (from_ip > 0 && count(&map, ukey) >= USER_GUARD_AFTER) {
            return Err(from_ip);
        }
        Ok((fail(&mut map, ikey), fail(&mut map, ukey)))
    }

    /// [`Authenticator::admit`] on the shared counters: the attempt is
    /// counted first (atomic per key on every node) and taken back if the
    /// counts before it throttle the address.
    async fn admit_shared(&self, shared: &Arc<Counters>, keys: &[String]) -> Result<(u32, u32), u32> {
        let counts = shared.add_all(keys, 1, MEMORY).await;
        let n = |i: usize| u32::try_from(counts.get(i).copied().unwrap_or(0)).unwrap_or(u32::MAX);
        let (from_ip, for_user) = (n(0), n(1));
        let (ip_before, user_before) = (from_ip.saturating_sub(1), for_user.saturating_sub(1));
        if ip_before >= REFUSE_AFTER || (ip_before > 0 && user_before >= USER_GUARD_AFTER) {
            shared.add_all(keys, -1, MEMORY).await;
            return Err(ip_before);
        }
        Ok((from_ip, for_user))
    }

    /// The attempt succeeded: its advance failure is taken back.
    fn undo(&self, keys: [Key; 2]) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        for key in keys {
            if let Some(f) = map.get_mut(&key) {
                f.count = f.count.saturating_sub(1);
            }
        }
    }
}

fn fail(map: &mut HashMap<Key, Failures>, key: Key) -> u32 {
    if map.len() >= MAX_TRACKED {
        // Guessed user names and many addresses must not grow this
        // without bound: forget what has expired, then what matters
        // least (keys below the first delay).
        map.retain(|_, f| f.last.elapsed() < MEMORY);
        if map.len() >= MAX_TRACKED / 2 {
            map.retain(|_, f| f.count >= SLOW_AFTER);
        }
    }
    let f = map.entry(key).or_insert(Failures { count: 0, last: Instant::now() });
    if f.last.elapsed() >= MEMORY {
        f.count = 0;
    }
    f.count += 1;
    f.last = Instant::now();
    f.count
}

impl Authenticator {
    /// Checks credentials. Returns the verdict and how long to wait before
    /// answering: an address's failures slow it down and then throttle it
    /// (loopback included); a user's failures throttle only addresses that
    /// have failed too.
    pub async fn verify(self: &Arc<Self>, ip: IpAddr, creds: Credentials) -> (AuthVerdict, Duration) {
        let (ikey, ukey) = (ip_key(ip), user_key(&creds.username));
        let names = shared_keys(ikey, &creds.username);
        let admitted = match &self.shared {
            Some(shared) => self.admit_shared(shared, &names).await,
            None => self.admit(ikey, ukey),
        };
        let (n, for_user) = match admitted {
            Ok(counts) => counts,
            Err(from_ip) => {
                tracing::info!(client = %ip, user = %creds.username, failures = from_ip, "authentication throttled");
                return (AuthVerdict::Throttled, THROTTLED_DELAY);
            }
        };
        let me = self.clone();
        let username = creds.username.clone();
        // Each check holds argon2's memory (19 MiB by default) and a core:
        // at most one per core at a time, in arrival order.
        let Ok(_permit) = self.checking.acquire().await else { return (AuthVerdict::Throttled, THROTTLED_DELAY) };
        let ok = tokio::task::spawn_blocking(move || {
            let user = me.users.get(&creds.username);
            let hash = user.map_or(me.dummy_hash.as_str(), |u| u.password_hash.as_str());
            // The parameters come from the hash itself.
            let verified = PasswordHash::new(hash).is_ok_and(|h| Argon2::default().verify_password(creds.password.as_bytes(), &h).is_ok());
            user.is_some() && verified
        })
        .await
        .unwrap_or(false);
        if ok {
            // Only this attempt's advance failure is taken back: earlier
            // ones stay, so a login does not lift the guard for addresses
            // that are guessing.
            match &self.shared {
                Some(shared) => {
                    shared.add_all(&names, -1, MEMORY).await;
                }
                None => self.undo([ikey, ukey]),
            }
            return (AuthVerdict::Accepted(username), Duration::ZERO);
        }
        tracing::warn!(client = %ip, user = %username, failures = n, user_failures = for_user, "authentication failed");
        let delay = if n >= SLOW_AFTER { Duration::from_secs(u64::from(n - SLOW_AFTER + 1)).min(MAX_DELAY) } else { Duration::ZERO };
        // Checked and wrong is 535; 454 is for attempts not checked at all.
        (AuthVerdict::Rejected, delay)
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

    #[tokio::test]
    async fn a_user_under_attack_still_logs_in_from_a_clean_address() {
        let users = vec![User { name: "app".into(), password_hash: hash_password("right").unwrap(), send_as: vec![] }];
        let a = Authenticator::new(&users).unwrap();
        let creds = |u: &str, p: &str| Credentials { mechanism: "PLAIN", username: u.into(), password: p.into() };
        for i in 1..=USER_GUARD_AFTER {
            let ip = IpAddr::from([127, 0, 1, i as u8]);
            assert_eq!(a.verify(ip, creds("app", "guess")).await.0, AuthVerdict::Rejected);
        }
        // An address that has failed is throttled for this user, even with
        // the right password...
        let (v, delay) = a.verify(IpAddr::from([127, 0, 1, 1]), creds("app", "right")).await;
        assert_eq!((v, delay), (AuthVerdict::Throttled, THROTTLED_DELAY));
        // ...a clean one is not.
        assert_eq!(
            a.verify(IpAddr::from([127, 0, 2, 1]), creds("app", "right")).await,
            (AuthVerdict::Accepted("app".into()), Duration::ZERO)
        );
    }

    #[test]
    fn the_dummy_hash_has_the_users_parameters() {
        let params = argon2::Params::new(1024, 1, 1, None).unwrap();
        let cheap = Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let salt = SaltString::encode_b64(&[7u8; 16]).unwrap();
        let hash = cheap.hash_password(b"pw", &salt).unwrap().to_string();
        let users = vec![User { name: "app".into(), password_hash: hash, send_as: vec![] }];
        let dummy = dummy_hash(&users).unwrap();
        assert!(dummy.starts_with("$argon2id$v=19$m=1024,t=1,p=1$"), "{dummy}");
        assert!(dummy_hash(&[]).unwrap().starts_with("$argon2id$"));
    }
}
