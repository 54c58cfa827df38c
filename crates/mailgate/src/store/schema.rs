//! The SQLite schema as numbered migrations. `PRAGMA user_version` holds
//! how many have run; each runs once, in its own transaction, at start.
//! Add a migration at the end; never edit one that has shipped.

pub const MIGRATIONS: &[&str] = &[
    // 1: evaluations, deliveries, TLS sessions, reports sent and received.
    "CREATE TABLE evaluations (
        time INTEGER NOT NULL,
        source_ip TEXT NOT NULL,
        helo TEXT NOT NULL,
        envelope_from TEXT NOT NULL,
        header_from TEXT NOT NULL,
        spf_domain TEXT NOT NULL,
        spf_scope TEXT NOT NULL,
        spf_result TEXT NOT NULL,
        -- JSON array of {domain, selector, result}, sorted, so equal sets
        -- group together.
        dkim TEXT NOT NULL,
        arc TEXT NOT NULL,
        dmarc TEXT NOT NULL,
        spf_aligned INTEGER NOT NULL,
        dkim_aligned INTEGER NOT NULL,
        disposition TEXT NOT NULL,
        -- JSON of the published record; NULL without one.
        policy TEXT,
        has_rua INTEGER NOT NULL,
        override_reason TEXT,
        lookalike TEXT NOT NULL
    );
    CREATE INDEX evaluations_domain_time ON evaluations (header_from, time);
    CREATE INDEX evaluations_time ON evaluations (time);

    CREATE TABLE deliveries (
        time INTEGER NOT NULL,
        queue_id TEXT NOT NULL,
        recipient_domain TEXT NOT NULL,
        recipients INTEGER NOT NULL,
        mx_host TEXT NOT NULL,
        tls INTEGER NOT NULL,
        reply_code INTEGER NOT NULL,
        reply TEXT NOT NULL
    );
    CREATE INDEX deliveries_queue_id ON deliveries (queue_id);
    CREATE INDEX deliveries_time ON deliveries (time);

    CREATE TABLE tls_sessions (
        time INTEGER NOT NULL,
        policy_domain TEXT NOT NULL,
        mx_host TEXT NOT NULL,
        policy_type TEXT NOT NULL,
        result TEXT NOT NULL
    );
    CREATE INDEX tls_sessions_domain_time ON tls_sessions (policy_domain, time);
    CREATE INDEX tls_sessions_time ON tls_sessions (time);

    CREATE TABLE reported (
        kind TEXT NOT NULL,
        domain TEXT NOT NULL,
        until INTEGER NOT NULL,
        PRIMARY KEY (kind, domain)
    );

    CREATE TABLE sent_reports (
        id INTEGER PRIMARY KEY,
        time INTEGER NOT NULL,
        kind TEXT NOT NULL,
        domain TEXT NOT NULL,
        report_id TEXT NOT NULL,
        begin INTEGER NOT NULL,
        end INTEGER NOT NULL,
        destinations TEXT NOT NULL,
        messages INTEGER NOT NULL
    );

    CREATE TABLE reports (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        org_name TEXT NOT NULL,
        report_id TEXT NOT NULL,
        email TEXT NOT NULL,
        begin INTEGER NOT NULL,
        end INTEGER NOT NULL,
        policy_domain TEXT NOT NULL,
        policy TEXT,
        stored INTEGER NOT NULL,
        messages INTEGER NOT NULL,
        UNIQUE (kind, org_name, report_id)
    );
    CREATE INDEX reports_domain ON reports (policy_domain, id);
    CREATE INDEX reports_stored ON reports (stored);

    CREATE TABLE report_rows (
        report INTEGER NOT NULL REFERENCES reports (id) ON DELETE CASCADE,
        source_ip TEXT NOT NULL,
        count INTEGER NOT NULL,
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
        report INTEGER NOT NULL REFERENCES reports (id) ON DELETE CASCADE,
        policy_type TEXT NOT NULL,
        policy_domain TEXT NOT NULL,
        successes INTEGER NOT NULL,
        failures INTEGER NOT NULL,
        -- JSON: policy strings, MX hosts, failure details.
        detail TEXT NOT NULL
    );
    CREATE INDEX report_tls_report ON report_tls (report);",
    // 2: per-message timelines and hourly traffic counters (the dashboard).
    super::timeline::MIGRATION,
];
