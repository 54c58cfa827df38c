//! DKIM keys in PostgreSQL (`cluster_dkim_keys`: info and private key PEM
//! per domain and selector), the [`KeyStore`] backend of a cluster.
//!
//! Every change is one transaction holding the domain's advisory lock and
//! bumping the domain's row in `cluster_key_version`, which nodes poll to
//! see that keys changed elsewhere. Every [`KeyStore::snapshot`] also
//! refreshes the copy in `data_dir/dkim/` (the files backend's layout), so
//! a node that starts while the database is down still signs, and the
//! readers of those files (ARC sealing, the dashboard) see the shared keys.
//!
//! May import: `cluster`, `sign::store`, `sign::backend`.

use std::path::{Path, PathBuf};

use postgres::GenericClient;

use super::{Db, LOCK_SPACE, ROTATION_LOCK};
use crate::sign::backend::{self, KeyStore, NewKey};
use crate::sign::store::{self, KeyInfo, KeyState};

pub struct PgKeys {
    db: Db,
    data_dir: PathBuf,
}

const COLUMNS: &str = "selector, algorithm, state, created, activated, retiring_since, pem";

fn secs(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn db_secs(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A row of `COLUMNS`; a row this version does not understand is an error
/// naming it, not a panic.
fn row_key(row: &postgres::Row) -> anyhow::Result<(KeyInfo, String)> {
    let selector: String = row.try_get(0)?;
    let state: String = row.try_get(2)?;
    let info = KeyInfo {
        state: KeyState::parse(&state)
            .ok_or_else(|| anyhow::anyhow!("key {selector}: state {state:?}, expected pending, active, retiring or retired"))?,
        algorithm: row.try_get(1)?,
        created: secs(row.try_get(3)?),
        activated: row.try_get::<_, Option<i64>>(4)?.map(secs),
        retiring_since: row.try_get::<_, Option<i64>>(5)?.map(secs),
        selector,
    };
    Ok((info, row.try_get(6)?))
}

fn read(c: &mut impl GenericClient, domain: &str) -> Result<Vec<postgres::Row>, postgres::Error> {
    c.query(&format!("SELECT {COLUMNS} FROM cluster_dkim_keys WHERE domain = $1 ORDER BY created, selector"), &[&domain])
}

fn rows(rows: Vec<postgres::Row>) -> anyhow::Result<Vec<(KeyInfo, String)>> {
    rows.iter().map(row_key).collect()
}

/// Takes the domain's lock for the rest of the transaction.
fn lock(tx: &mut postgres::Transaction<'_>, domain: &str) -> Result<(), postgres::Error> {
    tx.execute("SELECT pg_advisory_xact_lock($1, hashtext('dkim:' || $2))", &[&LOCK_SPACE, &domain]).map(|_| ())
}

fn bump(tx: &mut postgres::Transaction<'_>, domain: &str) -> Result<(), postgres::Error> {
    tx.execute(
        "INSERT INTO cluster_key_version (domain, version) VALUES ($1, 1)
         ON CONFLICT (domain) DO UPDATE SET version = cluster_key_version.version + 1",
        &[&domain],
    )
    .map(|_| ())
}

fn insert_row(tx: &mut postgres::Transaction<'_>, domain: &str, k: &KeyInfo, pem: &str) -> Result<(), postgres::Error> {
    tx.execute(
        "INSERT INTO cluster_dkim_keys (domain, selector, algorithm, state, created, activated, retiring_since, pem)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            &domain,
            &k.selector,
            &k.algorithm,
            &k.state.as_str(),
            &db_secs(k.created),
            &k.activated.map(db_secs),
            &k.retiring_since.map(db_secs),
            &pem,
        ],
    )
    .map(|_| ())
}

/// Runs `f` in a transaction holding the domain's lock; commits what it
/// did when it returns `Ok`.
fn locked<T>(db: &Db, domain: &str, f: impl FnOnce(&mut postgres::Transaction<'_>) -> anyhow::Result<T>) -> anyhow::Result<T> {
    let mut outcome = None;
    db.with(|c| {
        let mut tx = c.transaction()?;
        lock(&mut tx, domain)?;
        match f(&mut tx) {
            Ok(v) => {
                tx.commit()?;
                outcome = Some(Ok(v));
            }
            // Dropped: rolled back.
            Err(e) => outcome = Some(Err(e)),
        }
        Ok(())
    })?;
    outcome.unwrap_or_else(|| Err(anyhow::anyhow!("the key transaction did not run")))
}

/// A `postgres::Error` inside [`locked`]'s closure.
fn pg(e: postgres::Error) -> anyhow::Error {
    anyhow::anyhow!("cluster store: {e}")
}

impl PgKeys {
    /// Connects on first use.
    pub fn new(url: &str, data_dir: &Path) -> anyhow::Result<PgKeys> {
        Ok(PgKeys { db: Db::new(url)?, data_dir: data_dir.to_path_buf() })
    }

    /// Keys on disk, none in the store for a domain: imported, once (the
    /// first node to get the lock does it). Both, differing: the store
    /// wins (the disk copy is rewritten at the next load), with a warning.
    pub fn import_from_disk(&self, domains: &[String]) -> anyhow::Result<()> {
        for domain in domains {
            let disk = backend::Files::new(&self.data_dir).snapshot(domain)?;
            if disk.is_empty() {
                continue;
            }
            let imported = locked(&self.db, domain, |tx| {
                let have = rows(read(tx, domain).map_err(pg)?)?;
                if !have.is_empty() {
                    return Ok(Some(have));
                }
                for (info, pem) in &disk {
                    insert_row(tx, domain, info, pem).map_err(pg)?;
                }
                bump(tx, domain).map_err(pg)?;
                Ok(None)
            })?;
            match imported {
                None => tracing::warn!(
                    domain = %domain, keys = disk.len(),
                    "imported the DKIM keys found in data_dir into the cluster store (once: the store is the reference now)"
                ),
                Some(have) if !same_keys(&have, &disk) => tracing::warn!(
                    domain = %domain,
                    "the DKIM keys in data_dir differ from those in the cluster store: the store wins, the disk copy is replaced"
                ),
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Rewrites `data_dir/dkim/<domain>` when it differs from `keys`.
    fn mirror(&self, domain: &str, keys: &[(KeyInfo, String)]) {
        let disk = backend::Files::new(&self.data_dir).snapshot(domain).unwrap_or_default();
        if same_keys(&disk, keys) {
            return;
        }
        let written = keys
            .iter()
            .try_for_each(|(info, pem)| store::write_pem(&self.data_dir, domain, &info.selector, pem))
            .and_then(|()| store::save(&self.data_dir, domain, keys.iter().map(|(i, _)| i.clone()).collect()));
        if let Err(e) = written {
            tracing::warn!(domain, error = %format!("{e:#}"), "cannot write the local copy of the DKIM keys");
        }
    }
}

/// The same keys, in the same states, with the same private keys.
fn same_keys(a: &[(KeyInfo, String)], b: &[(KeyInfo, String)]) -> bool {
    let norm = |v: &[(KeyInfo, String)]| {
        let mut v: Vec<(String, &'static str, String)> =
            v.iter().map(|(i, p)| (i.selector.clone(), i.state.as_str(), p.trim().to_string())).collect();
        v.sort();
        v
    };
    norm(a) == norm(b)
}

impl KeyStore for PgKeys {
    fn kind(&self) -> &'static str {
        "postgresql"
    }

    fn list(&self, domain: &str) -> anyhow::Result<Vec<KeyInfo>> {
        Ok(self.snapshot(domain)?.into_iter().map(|(i, _)| i).collect())
    }

    fn load_pem(&self, domain: &str, selector: &str) -> anyhow::Result<String> {
        let row = self
            .db
            .with(|c| c.query_opt("SELECT pem FROM cluster_dkim_keys WHERE domain = $1 AND selector = $2", &[&domain, &selector]))?;
        let row = row.ok_or_else(|| anyhow::anyhow!("no key {selector} for {domain} in the cluster store"))?;
        Ok(row.try_get(0)?)
    }

    fn snapshot(&self, domain: &str) -> anyhow::Result<Vec<(KeyInfo, String)>> {
        let keys = rows(self.db.with(|c| read(c, domain))?)?;
        self.mirror(domain, &keys);
        Ok(keys)
    }

    fn insert(&self, domain: &str, keys: Vec<NewKey>, only_if_none: bool, now: u64) -> anyhow::Result<Vec<KeyInfo>> {
        locked(&self.db, domain, |tx| {
            let mut list: Vec<KeyInfo> = rows(read(tx, domain).map_err(pg)?)?.into_iter().map(|(i, _)| i).collect();
            if only_if_none && !list.is_empty() {
                return Ok(Vec::new());
            }
            let mut added = Vec::new();
            for k in &keys {
                let info = backend::new_info(k, &list, domain, now)?;
                insert_row(tx, domain, &info, &k.pem).map_err(pg)?;
                list.push(info.clone());
                added.push(info);
            }
            bump(tx, domain).map_err(pg)?;
            Ok(added)
        })
    }

    fn update(&self, domain: &str, change: &mut dyn FnMut(&mut Vec<KeyInfo>) -> bool) -> anyhow::Result<bool> {
        locked(&self.db, domain, |tx| {
            let before: Vec<KeyInfo> = rows(read(tx, domain).map_err(pg)?)?.into_iter().map(|(i, _)| i).collect();
            let mut after = before.clone();
            if !change(&mut after) {
                return Ok(false);
            }
            for k in after.iter().filter(|k| !before.contains(k)) {
                let n = tx
                    .execute(
                        "UPDATE cluster_dkim_keys SET state = $3, activated = $4, retiring_since = $5
                         WHERE domain = $1 AND selector = $2",
                        &[&domain, &k.selector, &k.state.as_str(), &k.activated.map(db_secs), &k.retiring_since.map(db_secs)],
                    )
                    .map_err(pg)?;
                if n != 1 {
                    anyhow::bail!("key {} of {domain}: a change may update keys, not add them", k.selector);
                }
            }
            bump(tx, domain).map_err(pg)?;
            Ok(true)
        })
    }

    fn generation(&self) -> anyhow::Result<Option<i64>> {
        let row = self.db.with(|c| c.query_one("SELECT COALESCE(sum(version), 0)::bigint FROM cluster_key_version", &[]))?;
        Ok(Some(row.try_get(0)?))
    }

    fn try_lead(&self) -> anyhow::Result<bool> {
        let row = self.db.with(|c| c.query_one("SELECT pg_try_advisory_lock($1, $2)", &[&LOCK_SPACE, &ROTATION_LOCK]))?;
        Ok(row.try_get(0)?)
    }

    fn release(&self) {
        // A lost connection has released it already.
        let _ = self.db.with(|c| c.execute("SELECT pg_advisory_unlock($1, $2)", &[&LOCK_SPACE, &ROTATION_LOCK]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::testpg::TestPg;
    use mailgate_core::dkim::Algorithm;

    #[test]
    fn keys_in_postgres_are_shared_locked_and_mirrored() {
        let pg = TestPg::start();
        let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        // Node A had keys on disk before the cluster: imported once.
        let (disk_info, _) = store::create(dir_a.path(), "ex.test", Algorithm::Ed25519Sha256, Some("old"), KeyState::Active, 10).unwrap();
        let a = PgKeys::new(&pg.url, dir_a.path()).unwrap();
        a.import_from_disk(&["ex.test".into()]).unwrap();
        assert_eq!(a.list("ex.test").unwrap(), vec![disk_info.clone()]);
        let g0 = a.generation().unwrap().unwrap();

        // Node B: different keys on disk; the store wins and B's copy is replaced.
        store::create(dir_b.path(), "ex.test", Algorithm::Ed25519Sha256, Some("other"), KeyState::Active, 20).unwrap();
        let b = PgKeys::new(&pg.url, dir_b.path()).unwrap();
        b.import_from_disk(&["ex.test".into()]).unwrap();
        assert_eq!(b.snapshot("ex.test").unwrap().len(), 1);
        assert_eq!(store::list(dir_b.path(), "ex.test").unwrap(), vec![disk_info.clone()], "the disk copy follows the store");
        assert_eq!(b.load_pem("ex.test", "old").unwrap(), store::load_pem(dir_a.path(), "ex.test", "old").unwrap());

        // A key made on B is seen on A; the generation moved.
        let (new, _) = backend::create(&b, "ex.test", Algorithm::Ed25519Sha256, None, KeyState::Pending, 30).unwrap();
        assert!(a.list("ex.test").unwrap().iter().any(|k| k.selector == new.selector && k.state == KeyState::Pending));
        assert!(a.generation().unwrap().unwrap() > g0);
        assert!(backend::create(&a, "ex.test", Algorithm::Ed25519Sha256, Some("old"), KeyState::Active, 40).is_err(), "selector taken");

        // Two nodes changing the same domain at once: each sees the other's
        // change under the lock, nothing is lost.
        let (ta, tb) = std::thread::scope(|s| {
            let ta = s.spawn(|| backend::create(&a, "ex.test", Algorithm::Ed25519Sha256, None, KeyState::Pending, 50).unwrap());
            let tb = s.spawn(|| backend::create(&b, "ex.test", Algorithm::Ed25519Sha256, None, KeyState::Pending, 50).unwrap());
            (ta.join().unwrap(), tb.join().unwrap())
        });
        assert_ne!(ta.0.selector, tb.0.selector);
        assert_eq!(a.list("ex.test").unwrap().len(), 4);

        // update: the change lands for both nodes; ensure adds nothing to a domain with keys.
        let changed = b
            .update("ex.test", &mut |keys| {
                keys.iter_mut().filter(|k| k.selector == "old").for_each(|k| k.state = KeyState::Retiring);
                true
            })
            .unwrap();
        assert!(changed);
        assert_eq!(a.list("ex.test").unwrap().iter().find(|k| k.selector == "old").map(|k| k.state), Some(KeyState::Retiring));
        assert!(backend::ensure(&a, "ex.test", &[Algorithm::Ed25519Sha256], 60).unwrap().is_empty());

        // One rotation leader at a time.
        assert!(a.try_lead().unwrap());
        assert!(!b.try_lead().unwrap());
        a.release();
        assert!(b.try_lead().unwrap());
        b.release();
    }
}
