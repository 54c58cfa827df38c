//! The suppression list in PostgreSQL: the same table and statements as
//! the SQLite store's (`store::suppression`), with `$N` parameters.
//!
//! May import: the rest of `store`.

use postgres::Row;

use super::Postgres;
use crate::store::Result;
use crate::store::suppression::{Suppressed, SuppressionStore};

const COLUMNS: &str = "domain, address, category, reason, source, created, expires";

fn row(r: &Row) -> Result<Suppressed> {
    let secs = |i: usize| -> Result<u64> { Ok(u64::try_from(r.try_get::<_, i64>(i)?).unwrap_or(0)) };
    Ok(Suppressed {
        domain: r.try_get(0)?,
        address: r.try_get(1)?,
        category: r.try_get(2)?,
        reason: r.try_get(3)?,
        source: r.try_get(4)?,
        created: secs(5)?,
        expires: secs(6)?,
    })
}

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl SuppressionStore for Postgres {
    fn suppression_add(&self, e: &Suppressed) -> Result<()> {
        let mut w = self.pool.writer()?;
        let r = w
            .client()
            .execute(
                &format!(
                    "INSERT INTO suppression ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)
                     ON CONFLICT (domain, address) DO UPDATE SET category = excluded.category, reason = excluded.reason,
                         source = excluded.source, created = excluded.created, expires = excluded.expires"
                ),
                &[&e.domain.to_lowercase(), &e.address.to_lowercase(), &e.category, &e.reason, &e.source, &int(e.created), &int(e.expires)],
            )
            .map(|_| ())
            .map_err(Into::into);
        w.check(r)
    }

    fn suppression_remove(&self, address: &str, domain: Option<&str>) -> Result<u64> {
        let mut w = self.pool.writer()?;
        let address = address.to_lowercase();
        let r = match domain {
            Some(d) => w.client().execute("DELETE FROM suppression WHERE domain = $1 AND address = $2", &[&d.to_lowercase(), &address]),
            None => w.client().execute("DELETE FROM suppression WHERE address = $1", &[&address]),
        };
        w.check(r.map_err(Into::into))
    }

    fn suppression_list(&self, domain: Option<&str>, now: u64) -> Result<Vec<Suppressed>> {
        self.pool.read(|c| {
            let rows = match domain {
                Some(d) => c.query(
                    &format!(
                        "SELECT {COLUMNS} FROM suppression WHERE domain = $1 AND (expires = 0 OR expires > $2) ORDER BY domain, address"
                    ),
                    &[&d.to_lowercase(), &int(now)],
                )?,
                None => c.query(
                    &format!("SELECT {COLUMNS} FROM suppression WHERE expires = 0 OR expires > $1 ORDER BY domain, address"),
                    &[&int(now)],
                )?,
            };
            rows.iter().map(row).collect()
        })
    }

    fn suppression_lookup(&self, domain: &str, address: &str, now: u64) -> Result<Option<Suppressed>> {
        self.pool.read(|c| {
            let found = c.query_opt(
                &format!("SELECT {COLUMNS} FROM suppression WHERE domain = $1 AND address = $2 AND (expires = 0 OR expires > $3)"),
                &[&domain.to_lowercase(), &address.to_lowercase(), &int(now)],
            )?;
            found.as_ref().map(row).transpose()
        })
    }

    fn suppression_expire(&self, now: u64) -> Result<u64> {
        let mut w = self.pool.writer()?;
        let r = w.client().execute("DELETE FROM suppression WHERE expires <> 0 AND expires <= $1", &[&int(now)]);
        w.check(r.map_err(Into::into))
    }
}
