//! The PostgreSQL schema as numbered migrations, the counterpart of
//! `store/schema.rs` (same tables and columns; BIGINT for SQLite's
//! INTEGER, BOOLEAN for its 0/1 flags, BIGSERIAL ids for its rowids).
//! `schema_version` holds the versions that ran. All pending migrations
//! run in one transaction under an advisory lock, so nodes starting at
//! once neither race nor half-migrate. Add at the end; never edit one that
//! has shipped.
//!
//! May import: the rest of `store::pg`, `postgres`.

use postgres::Client;

use super::super::{Result, StoreError};

/// Advisory lock keys ("mailgate" and "mailgatr" in ASCII, arbitrary).
pub(super) const MIGRATE_LOCK: i64 = 0x6d61_696c_6761_7465;
pub(super) const REPORT_LOCK: i64 = 0x6d61_696c_6761_7472;

pub(super) const MIGRATIONS: &[&str] = &[
    // 1: the SQLite schema as of its migration 5: raw rows with interned
    // DKIM sets and policies, the hourly aggregates, timelines, traffic
    // counters, reports sent and received; a node column on every record.
    "CREATE TABLE dkim_sets (id BIGSERIAL PRIMARY KEY, json TEXT NOT NULL UNIQUE);
    CREATE TABLE policies (id BIGSERIAL PRIMARY KEY, json TEXT NOT NULL UNIQUE, has_rua BOOLEAN NOT NULL);
    CREATE TABLE tls_policies (id BIGSERIAL PRIMARY KEY, text TEXT NOT NULL UNIQUE);

    CREATE TABLE evaluations (
        time BIGINT NOT NULL,
        source_ip TEXT NOT NULL,
        helo TEXT NOT NULL,
        envelope_from TEXT NOT NULL,
        header_from TEXT NOT NULL,
        spf_domain TEXT NOT NULL,
        spf_scope TEXT NOT NULL,
        spf_result TEXT NOT NULL,
        dkim BIGINT NOT NULL,
        arc TEXT NOT NULL,
        dmarc TEXT NOT NULL,
        spf_aligned BOOLEAN NOT NULL,
        dkim_aligned BOOLEAN NOT NULL,
        disposition TEXT NOT NULL,
        policy BIGINT NOT NULL,
        override_reason TEXT NOT NULL,
        lookalike TEXT NOT NULL,
        node TEXT NOT NULL
    );
    CREATE INDEX evaluations_by_time ON evaluations (time);

    CREATE TABLE eval_hourly (
        hour BIGINT NOT NULL,
        header_from TEXT NOT NULL,
        source_ip TEXT NOT NULL,
        envelope_from TEXT NOT NULL,
        disposition TEXT NOT NULL,
        spf_domain TEXT NOT NULL,
        spf_scope TEXT NOT NULL,
        spf_result TEXT NOT NULL,
        dkim BIGINT NOT NULL,
        override_reason TEXT NOT NULL,
        policy BIGINT NOT NULL,
        spf_aligned BOOLEAN NOT NULL,
        dkim_aligned BOOLEAN NOT NULL,
        dmarc TEXT NOT NULL,
        lookalike BOOLEAN NOT NULL,
        helo TEXT NOT NULL,
        count BIGINT NOT NULL,
        first BIGINT NOT NULL,
        last BIGINT NOT NULL,
        PRIMARY KEY (header_from, hour, source_ip, envelope_from, disposition, spf_domain, spf_scope, spf_result, dkim,
                     override_reason, policy, spf_aligned, dkim_aligned, dmarc, lookalike)
    );

    CREATE TABLE domain_hourly (
        hour BIGINT NOT NULL,
        header_from TEXT NOT NULL,
        policy BIGINT NOT NULL,
        messages BIGINT NOT NULL,
        dmarc_pass BIGINT NOT NULL,
        spf_aligned BIGINT NOT NULL,
        dkim_aligned BIGINT NOT NULL,
        rejected BIGINT NOT NULL,
        quarantined BIGINT NOT NULL,
        lookalike BIGINT NOT NULL,
        first BIGINT NOT NULL,
        last BIGINT NOT NULL,
        PRIMARY KEY (hour, header_from, policy)
    );
    CREATE INDEX domain_hourly_domain ON domain_hourly (header_from, hour);

    CREATE TABLE deliveries (
        id BIGSERIAL PRIMARY KEY,
        time BIGINT NOT NULL,
        queue_id TEXT NOT NULL,
        recipient_domain TEXT NOT NULL,
        recipients BIGINT NOT NULL,
        mx_host TEXT NOT NULL,
        tls BOOLEAN NOT NULL,
        reply_code BIGINT NOT NULL,
        reply TEXT NOT NULL,
        node TEXT NOT NULL
    );
    CREATE INDEX deliveries_queue_id ON deliveries (queue_id);
    CREATE INDEX deliveries_time ON deliveries (time);

    CREATE TABLE tls_sessions (
        time BIGINT NOT NULL,
        policy_domain TEXT NOT NULL,
        mx_host TEXT NOT NULL,
        policy_type TEXT NOT NULL,
        result TEXT NOT NULL,
        policy BIGINT NOT NULL DEFAULT 0,
        node TEXT NOT NULL
    );
    CREATE INDEX tls_sessions_domain_time ON tls_sessions (policy_domain, time);
    CREATE INDEX tls_sessions_time ON tls_sessions (time);

    CREATE TABLE tls_hourly (
        hour BIGINT NOT NULL,
        policy_domain TEXT NOT NULL,
        mx_host TEXT NOT NULL,
        policy_type TEXT NOT NULL,
        result TEXT NOT NULL,
        policy BIGINT NOT NULL,
        count BIGINT NOT NULL,
        PRIMARY KEY (hour, policy_domain, mx_host, policy_type, result, policy)
    );

    CREATE TABLE reported (
        kind TEXT NOT NULL,
        domain TEXT NOT NULL,
        until BIGINT NOT NULL,
        PRIMARY KEY (kind, domain)
    );

    CREATE TABLE sent_reports (
        id BIGSERIAL PRIMARY KEY,
        time BIGINT NOT NULL,
        kind TEXT NOT NULL,
        domain TEXT NOT NULL,
        report_id TEXT NOT NULL,
        begin BIGINT NOT NULL,
        \"end\" BIGINT NOT NULL,
        destinations TEXT NOT NULL,
        messages BIGINT NOT NULL,
        node TEXT NOT NULL
    );

    CREATE TABLE reports (
        id BIGSERIAL PRIMARY KEY,
        kind TEXT NOT NULL,
        org_name TEXT NOT NULL,
        report_id TEXT NOT NULL,
        email TEXT NOT NULL,
        begin BIGINT NOT NULL,
        \"end\" BIGINT NOT NULL,
        policy_domain TEXT NOT NULL,
        policy TEXT,
        stored BIGINT NOT NULL,
        messages BIGINT NOT NULL,
        UNIQUE (kind, org_name, report_id)
    );
    CREATE INDEX reports_domain ON reports (policy_domain, id);
    CREATE INDEX reports_stored ON reports (stored);

    CREATE TABLE report_rows (
        id BIGSERIAL PRIMARY KEY,
        report BIGINT NOT NULL REFERENCES reports (id) ON DELETE CASCADE,
        source_ip TEXT NOT NULL,
        count BIGINT NOT NULL,
        disposition TEXT NOT NULL,
        dkim_evaluated TEXT NOT NULL,
        spf_evaluated TEXT NOT NULL,
        reasons TEXT NOT NULL,
        header_from TEXT NOT NULL,
        envelope_from TEXT NOT NULL,
        dkim TEXT NOT NULL,
        spf TEXT NOT NULL
    );
    CREATE INDEX report_rows_report ON report_rows (report);
    CREATE INDEX report_rows_source ON report_rows (source_ip);

    CREATE TABLE report_tls (
        id BIGSERIAL PRIMARY KEY,
        report BIGINT NOT NULL REFERENCES reports (id) ON DELETE CASCADE,
        policy_type TEXT NOT NULL,
        policy_domain TEXT NOT NULL,
        successes BIGINT NOT NULL,
        failures BIGINT NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE INDEX report_tls_report ON report_tls (report);

    -- Timelines (store/timeline.rs). SQLite compares senders and
    -- recipients with COLLATE NOCASE; here they are indexed lower-cased.
    CREATE TABLE messages (
        seq BIGSERIAL,
        event_id TEXT PRIMARY KEY,
        queue_id TEXT,
        time BIGINT NOT NULL,
        client_ip TEXT NOT NULL,
        sender TEXT NOT NULL,
        message_id TEXT NOT NULL,
        action TEXT NOT NULL,
        detail TEXT NOT NULL,
        node TEXT NOT NULL
    );
    CREATE INDEX messages_time ON messages (time);
    CREATE INDEX messages_queue_id ON messages (queue_id);
    CREATE INDEX messages_message_id ON messages (message_id);
    CREATE INDEX messages_sender ON messages (lower(sender));
    CREATE INDEX messages_client_ip ON messages (client_ip);

    CREATE TABLE message_recipients (
        event_id TEXT NOT NULL,
        recipient TEXT NOT NULL
    );
    CREATE INDEX message_recipients_recipient ON message_recipients (lower(recipient));
    CREATE INDEX message_recipients_event ON message_recipients (event_id);

    CREATE TABLE message_events (
        id BIGSERIAL PRIMARY KEY,
        queue_id TEXT NOT NULL,
        time BIGINT NOT NULL,
        detail TEXT NOT NULL,
        node TEXT NOT NULL
    );
    CREATE INDEX message_events_queue_id ON message_events (queue_id);
    CREATE INDEX message_events_time ON message_events (time);

    CREATE TABLE lookalike_hits (
        time BIGINT NOT NULL,
        resembles TEXT NOT NULL,
        domain TEXT NOT NULL,
        rule TEXT NOT NULL,
        identity TEXT NOT NULL,
        client_ip TEXT NOT NULL,
        event_id TEXT NOT NULL,
        node TEXT NOT NULL
    );
    CREATE INDEX lookalike_hits_resembles ON lookalike_hits (resembles, time);
    CREATE INDEX lookalike_hits_time ON lookalike_hits (time);

    CREATE TABLE traffic_hourly (
        hour BIGINT NOT NULL,
        counter TEXT NOT NULL,
        n BIGINT NOT NULL,
        PRIMARY KEY (hour, counter)
    );",
    // 2: the suppression list (SQLite migration 6).
    "CREATE TABLE suppression (
        domain TEXT NOT NULL,
        address TEXT NOT NULL,
        category TEXT NOT NULL,
        reason TEXT NOT NULL,
        source TEXT NOT NULL,
        created BIGINT NOT NULL,
        expires BIGINT NOT NULL,
        PRIMARY KEY (domain, address)
    );
    CREATE INDEX suppression_address ON suppression (address);",
];

/// Runs the pending migrations, all in one transaction holding
/// [`MIGRATE_LOCK`]: a node that starts while another migrates waits for
/// it, then finds nothing left to do.
pub(super) fn migrate(c: &mut Client) -> Result<()> {
    let mut tx = c.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK])?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT PRIMARY KEY, time BIGINT NOT NULL)")?;
    let done: i64 = tx.query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[])?.try_get(0)?;
    let done = usize::try_from(done).unwrap_or(0);
    if done > MIGRATIONS.len() {
        return Err(StoreError::Data(format!(
            "the PostgreSQL store is at schema version {done}, newer than this mailgate knows ({})",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(done) {
        tx.batch_execute(sql)?;
        tx.execute("INSERT INTO schema_version (version, time) VALUES ($1, $2)", &[&(i as i64 + 1), &super::big(super::unix_now())])?;
        tracing::info!(version = i + 1, "PostgreSQL report store migrated");
    }
    tx.commit()?;
    Ok(())
}
