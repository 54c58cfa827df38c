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
    // 2: cheaper inserts and hourly aggregates. The JSON an evaluation
    // repeats (its DKIM result set, the published policy) is interned in
    // side tables and the raw rows keep only ids; the raw table keeps one
    // index (time, for pruning and the edges of a report period). The
    // hourly aggregates hold exactly the grouping of a DMARC aggregate
    // report record (and what the dashboard shows), so neither a report
    // nor a page scans raw rows. `override_reason` is '' and `policy` 0
    // for none, because a primary key cannot hold NULL.
    "CREATE TABLE dkim_sets (id INTEGER PRIMARY KEY, json TEXT NOT NULL UNIQUE);
    CREATE TABLE policies (id INTEGER PRIMARY KEY, json TEXT NOT NULL UNIQUE, has_rua INTEGER NOT NULL);
    INSERT OR IGNORE INTO dkim_sets (json) SELECT DISTINCT dkim FROM evaluations;
    INSERT OR IGNORE INTO policies (json, has_rua) SELECT policy, max(has_rua) FROM evaluations WHERE policy IS NOT NULL GROUP BY policy;

    CREATE TABLE evaluations_v2 (
        time INTEGER NOT NULL,
        source_ip TEXT NOT NULL,
        helo TEXT NOT NULL,
        envelope_from TEXT NOT NULL,
        header_from TEXT NOT NULL,
        spf_domain TEXT NOT NULL,
        spf_scope TEXT NOT NULL,
        spf_result TEXT NOT NULL,
        dkim INTEGER NOT NULL,       -- dkim_sets.id
        arc TEXT NOT NULL,
        dmarc TEXT NOT NULL,
        spf_aligned INTEGER NOT NULL,
        dkim_aligned INTEGER NOT NULL,
        disposition TEXT NOT NULL,
        policy INTEGER NOT NULL,     -- policies.id, 0 without a record
        override_reason TEXT NOT NULL,
        lookalike TEXT NOT NULL      -- JSON array, '[]' mostly
    );
    INSERT INTO evaluations_v2
        SELECT e.time, e.source_ip, e.helo, e.envelope_from, e.header_from, e.spf_domain, e.spf_scope, e.spf_result,
               d.id, e.arc, e.dmarc, e.spf_aligned, e.dkim_aligned, e.disposition, coalesce(p.id, 0),
               coalesce(e.override_reason, ''), e.lookalike
        FROM evaluations e JOIN dkim_sets d ON d.json = e.dkim LEFT JOIN policies p ON p.json = e.policy
        ORDER BY e.rowid;
    DROP TABLE evaluations;
    ALTER TABLE evaluations_v2 RENAME TO evaluations;
    CREATE INDEX evaluations_by_time ON evaluations (time);

    CREATE TABLE eval_hourly (
        hour INTEGER NOT NULL,       -- Unix seconds, a multiple of 3600
        header_from TEXT NOT NULL,
        source_ip TEXT NOT NULL,
        envelope_from TEXT NOT NULL,
        disposition TEXT NOT NULL,
        spf_domain TEXT NOT NULL,
        spf_scope TEXT NOT NULL,
        spf_result TEXT NOT NULL,
        dkim INTEGER NOT NULL,
        override_reason TEXT NOT NULL,
        policy INTEGER NOT NULL,
        spf_aligned INTEGER NOT NULL,
        dkim_aligned INTEGER NOT NULL,
        dmarc TEXT NOT NULL,
        lookalike INTEGER NOT NULL,  -- 1: some look-alike finding
        helo TEXT NOT NULL,          -- one seen
        count INTEGER NOT NULL,
        first INTEGER NOT NULL,      -- the earliest and latest time counted
        last INTEGER NOT NULL,
        -- Domain first: a report or a page of one domain seeks straight
        -- to its rows, and a scan of all domains comes out in domain
        -- order without sorting.
        PRIMARY KEY (header_from, hour, source_ip, envelope_from, disposition, spf_domain, spf_scope, spf_result, dkim,
                     override_reason, policy, spf_aligned, dkim_aligned, dmarc, lookalike)
    ) WITHOUT ROWID;
    INSERT INTO eval_hourly
        SELECT time / 3600 * 3600, header_from, source_ip, envelope_from, disposition, spf_domain, spf_scope, spf_result,
               dkim, override_reason, policy, spf_aligned, dkim_aligned, dmarc, lookalike <> '[]', max(helo), count(*),
               min(time), max(time)
        FROM evaluations
        GROUP BY 1, header_from, source_ip, envelope_from, disposition, spf_domain, spf_scope, spf_result, dkim,
                 override_reason, policy, spf_aligned, dkim_aligned, dmarc, lookalike <> '[]';

    -- Per hour and domain (and policy seen): the counts the dashboard
    -- charts and the list of domains to report, a few hundred rows a day.
    CREATE TABLE domain_hourly (
        hour INTEGER NOT NULL,
        header_from TEXT NOT NULL,
        policy INTEGER NOT NULL,
        messages INTEGER NOT NULL,
        dmarc_pass INTEGER NOT NULL,
        spf_aligned INTEGER NOT NULL,
        dkim_aligned INTEGER NOT NULL,
        rejected INTEGER NOT NULL,
        quarantined INTEGER NOT NULL,
        lookalike INTEGER NOT NULL,
        first INTEGER NOT NULL,
        last INTEGER NOT NULL,
        PRIMARY KEY (hour, header_from, policy)
    ) WITHOUT ROWID;
    INSERT INTO domain_hourly
        SELECT time / 3600 * 3600, header_from, policy, count(*), sum(dmarc = 'pass'), sum(spf_aligned), sum(dkim_aligned),
               sum(disposition = 'reject'), sum(disposition = 'quarantine'), sum(lookalike <> '[]'), min(time), max(time)
        FROM evaluations GROUP BY 1, header_from, policy;

    -- The MTA-STS policy text of a TLS session (RFC 8460 policy-string),
    -- interned: one row per distinct policy; 0 for none.
    CREATE TABLE tls_policies (id INTEGER PRIMARY KEY, text TEXT NOT NULL UNIQUE);
    ALTER TABLE tls_sessions ADD COLUMN policy INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE tls_hourly (
        hour INTEGER NOT NULL,
        policy_domain TEXT NOT NULL,
        mx_host TEXT NOT NULL,
        policy_type TEXT NOT NULL,
        result TEXT NOT NULL,
        policy INTEGER NOT NULL,
        count INTEGER NOT NULL,
        PRIMARY KEY (hour, policy_domain, mx_host, policy_type, result, policy)
    ) WITHOUT ROWID;
    INSERT INTO tls_hourly
        SELECT time / 3600 * 3600, policy_domain, mx_host, policy_type, result, 0, count(*)
        FROM tls_sessions GROUP BY 1, policy_domain, mx_host, policy_type, result;",
    // 3: per-message timelines and hourly traffic counters (the dashboard).
    super::timeline::MIGRATION,
    // 4: one domain's hours (the dashboard's charts and spoofing counts)
    // without reading every domain's: the primary key starts with the hour.
    "CREATE INDEX domain_hourly_domain ON domain_hourly (header_from, hour);",
    // 5: the node that wrote each record (`[cluster] node_id`), so rows
    // from several nodes can be told apart; '' for rows from before.
    "ALTER TABLE evaluations ADD COLUMN node TEXT NOT NULL DEFAULT '';
    ALTER TABLE deliveries ADD COLUMN node TEXT NOT NULL DEFAULT '';
    ALTER TABLE tls_sessions ADD COLUMN node TEXT NOT NULL DEFAULT '';
    ALTER TABLE messages ADD COLUMN node TEXT NOT NULL DEFAULT '';
    ALTER TABLE message_events ADD COLUMN node TEXT NOT NULL DEFAULT '';
    ALTER TABLE lookalike_hits ADD COLUMN node TEXT NOT NULL DEFAULT '';
    ALTER TABLE sent_reports ADD COLUMN node TEXT NOT NULL DEFAULT '';",
    // 6: the suppression list (recipients not to mail again, per sending domain).
    super::suppression::MIGRATION,
    // 7: a message's queue id is its event id whenever it has one, so the
    // event id's key finds it; a second index on the same value cost every
    // recorded message a B-tree insert.
    "DROP INDEX messages_queue_id;",
    // 8: a message's recipients keyed by (recipient, event id) in one
    // B-tree, instead of a rowid table with an index on each: a search by
    // recipient reads the key alone, and each recipient recorded costs two
    // B-tree inserts instead of three. Pruning finds rows by event id.
    "CREATE TABLE message_recipients_v2 (
        recipient TEXT NOT NULL COLLATE NOCASE,
        event_id TEXT NOT NULL,
        PRIMARY KEY (recipient, event_id)
    ) WITHOUT ROWID;
    INSERT OR IGNORE INTO message_recipients_v2 (recipient, event_id) SELECT recipient, event_id FROM message_recipients;
    DROP TABLE message_recipients;
    ALTER TABLE message_recipients_v2 RENAME TO message_recipients;
    CREATE INDEX message_recipients_event ON message_recipients (event_id);",
];
