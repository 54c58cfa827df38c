//! The suppression list: per sending domain, the recipients mailgate will
//! not mail again (they hard bounced, complained, or an administrator put
//! them there), each with why, from where and until when.
//!
//! Kept in the report store so that nodes sharing one share the list. The
//! SQL is plain (an upsert with `ON CONFLICT ... DO UPDATE`, integer
//! times) so a PostgreSQL store runs it unchanged. Addresses and domains
//! are stored lower-cased: receivers treat local parts without regard to
//! case, and a list that did not would be dodged by `Bob@` for `bob@`.
//!
//! May import: the rest of `store`.

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::Result;
use super::sqlite::Sqlite;

/// The migration that creates the table (appended to `schema::MIGRATIONS`).
pub const MIGRATION: &str = "
    CREATE TABLE suppression (
        domain TEXT NOT NULL,
        address TEXT NOT NULL,
        -- A bounce category (no_such_user...), 'complaint' or 'manual'.
        category TEXT NOT NULL,
        -- The reply text, the feedback type, or the administrator's words.
        reason TEXT NOT NULL,
        -- bounce, async-bounce, complaint, manual.
        source TEXT NOT NULL,
        created INTEGER NOT NULL,
        -- Unix seconds; 0: never.
        expires INTEGER NOT NULL,
        PRIMARY KEY (domain, address)
    );
    CREATE INDEX suppression_address ON suppression (address);";

/// One entry of the list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suppressed {
    /// The sending domain whose mail to `address` is suppressed.
    pub domain: String,
    pub address: String,
    pub category: String,
    pub reason: String,
    /// `bounce`, `async-bounce`, `complaint` or `manual`.
    pub source: String,
    /// Unix seconds.
    pub created: u64,
    /// Unix seconds; 0: never.
    pub expires: u64,
}

impl Suppressed {
    /// Still in force at `now`.
    pub fn active(&self, now: u64) -> bool {
        self.expires == 0 || self.expires > now
    }
}

/// The suppression list's operations; every [`super::Store`] has them.
pub trait SuppressionStore {
    /// Adds the entry, replacing one for the same domain and address.
    fn suppression_add(&self, entry: &Suppressed) -> Result<()>;
    /// Removes `address` from `domain`'s list, or from every list; answers
    /// how many entries went.
    fn suppression_remove(&self, address: &str, domain: Option<&str>) -> Result<u64>;
    /// The entries in force at `now` (of one domain, or all), by domain
    /// and address.
    fn suppression_list(&self, domain: Option<&str>, now: u64) -> Result<Vec<Suppressed>>;
    /// The entry in force at `now` for `address` in `domain`'s list.
    fn suppression_lookup(&self, domain: &str, address: &str, now: u64) -> Result<Option<Suppressed>>;
    /// Deletes the entries expired at `now`; answers how many.
    fn suppression_expire(&self, now: u64) -> Result<u64>;
}

const COLUMNS: &str = "domain, address, category, reason, source, created, expires";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Suppressed> {
    Ok(Suppressed {
        domain: r.get(0)?,
        address: r.get(1)?,
        category: r.get(2)?,
        reason: r.get(3)?,
        source: r.get(4)?,
        created: r.get(5)?,
        expires: r.get(6)?,
    })
}

impl SuppressionStore for Sqlite {
    fn suppression_add(&self, e: &Suppressed) -> Result<()> {
        let w = self.writer();
        w.conn
            .prepare_cached(&format!(
                "INSERT INTO suppression ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (domain, address) DO UPDATE SET category = excluded.category, reason = excluded.reason,
                     source = excluded.source, created = excluded.created, expires = excluded.expires"
            ))?
            .execute(params![e.domain.to_lowercase(), e.address.to_lowercase(), e.category, e.reason, e.source, e.created, e.expires])?;
        Ok(())
    }

    fn suppression_remove(&self, address: &str, domain: Option<&str>) -> Result<u64> {
        let w = self.writer();
        let n = match domain {
            Some(d) => w
                .conn
                .execute("DELETE FROM suppression WHERE domain = ?1 AND address = ?2", params![d.to_lowercase(), address.to_lowercase()])?,
            None => w.conn.execute("DELETE FROM suppression WHERE address = ?1", params![address.to_lowercase()])?,
        };
        Ok(n as u64)
    }

    fn suppression_list(&self, domain: Option<&str>, now: u64) -> Result<Vec<Suppressed>> {
        list(&self.reader(), domain, now)
    }

    fn suppression_lookup(&self, domain: &str, address: &str, now: u64) -> Result<Option<Suppressed>> {
        let c = self.reader();
        Ok(c.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM suppression WHERE domain = ?1 AND address = ?2 AND (expires = 0 OR expires > ?3)"
        ))?
        .query_row(params![domain.to_lowercase(), address.to_lowercase(), now], row)
        .optional()?)
    }

    fn suppression_expire(&self, now: u64) -> Result<u64> {
        let w = self.writer();
        Ok(w.conn.execute("DELETE FROM suppression WHERE expires <> 0 AND expires <= ?1", params![now])? as u64)
    }
}

fn list(c: &Connection, domain: Option<&str>, now: u64) -> Result<Vec<Suppressed>> {
    let mut out = Vec::new();
    match domain {
        Some(d) => {
            let mut q = c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM suppression WHERE domain = ?1 AND (expires = 0 OR expires > ?2) ORDER BY domain, address"
            ))?;
            for r in q.query_map(params![d.to_lowercase(), now], row)? {
                out.push(r?);
            }
        }
        None => {
            let mut q =
                c.prepare_cached(&format!("SELECT {COLUMNS} FROM suppression WHERE expires = 0 OR expires > ?1 ORDER BY domain, address"))?;
            for r in q.query_map(params![now], row)? {
                out.push(r?);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(domain: &str, address: &str, expires: u64) -> Suppressed {
        Suppressed {
            domain: domain.into(),
            address: address.into(),
            category: "no_such_user".into(),
            reason: "550 5.1.1 no such user".into(),
            source: "bounce".into(),
            created: 100,
            expires,
        }
    }

    #[test]
    fn add_lookup_list_remove_expire() {
        let dir = tempfile::tempdir().unwrap();
        let s = Sqlite::open(&dir.path().join("r.db"), "test").unwrap();
        s.suppression_add(&entry("Example.com", "Bob@Elsewhere.test", 0)).unwrap();
        s.suppression_add(&entry("other.test", "bob@elsewhere.test", 150)).unwrap();
        assert!(s.suppression_lookup("example.com", "BOB@elsewhere.test", 1000).unwrap().is_some());
        assert!(s.suppression_lookup("other.test", "bob@elsewhere.test", 120).unwrap().is_some());
        assert!(s.suppression_lookup("other.test", "bob@elsewhere.test", 150).unwrap().is_none(), "expired at 150");
        assert_eq!(s.suppression_list(None, 120).unwrap().len(), 2);
        assert_eq!(s.suppression_list(Some("example.com"), 120).unwrap().len(), 1);
        // Replaced, not duplicated.
        s.suppression_add(&Suppressed { source: "manual".into(), ..entry("example.com", "bob@elsewhere.test", 0) }).unwrap();
        let all = s.suppression_list(Some("example.com"), 120).unwrap();
        assert_eq!((all.len(), all[0].source.as_str()), (1, "manual"));
        assert_eq!(s.suppression_expire(200).unwrap(), 1);
        assert_eq!(s.suppression_remove("bob@elsewhere.test", None).unwrap(), 1);
        assert!(s.suppression_list(None, 0).unwrap().is_empty());
    }
}
