//! `mailgate serve`: binds the listeners, drops root (`privileges`), wires
//! the stages together and runs until SIGTERM.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::Context;
use mailgate_core::session::SessionConfig;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use crate::checks::auth::Authenticator;
use crate::checks::relay::{self, RelayPolicy};
use crate::config::Config;
use crate::inbound::Inbound;
use crate::metrics::Metrics;
use crate::outbound::Outbound;
use crate::spool::{self, Spool};
use crate::tls::ServerTls;
use crate::{http, listener, scheduler};
use mailgate_core::session::Role;

/// Connections the kernel may hold completed but not yet accepted. Tokio's
/// default (1,024) overflows when a few thousand clients connect at once,
/// and an overflowing queue drops SYNs, which clients retry only after
/// 1, 3, 7, 15... seconds. The kernel caps it at `net.core.somaxconn`.
const SMTP_BACKLOG: u32 = 4096;

fn bind_smtp(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    // As `TcpListener::bind` does: a restart must not wait for TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(SMTP_BACKLOG)
}

pub async fn serve(config: Config) -> anyhow::Result<()> {
    let config = Arc::new(config);
    http::listen::check_bind(&config)?;
    // Before anything listens: a SIGTERM that arrives as soon as the admin
    // API answers must find its handler.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    std::fs::create_dir_all(&config.data_dir).with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;
    // Bind while still root (ports below 1024), then give root up before
    // anything writes a file, so what the server creates is the user's.
    let mut smtp_sockets: Vec<TcpListener> = Vec::new();
    for l in &config.listeners {
        let socket = bind_smtp(l.bind).with_context(|| format!("cannot listen on {} ({})", l.bind, l.role.as_str()))?;
        smtp_sockets.push(socket);
    }
    let http_socket = match config.http_bind {
        Some(bind) => Some(TcpListener::bind(bind).await.with_context(|| format!("cannot listen on {bind} (http)"))?),
        None => None,
    };
    crate::privileges::drop_root(config.user.as_deref(), &config.data_dir)?;
    raise_fd_limit();
    // Created by the user the server runs as, so it can read it back.
    let admin_token = match config.http_bind {
        Some(_) => Some(http::auth::load_or_create(&config.data_dir)?),
        None => None,
    };
    let spool_dir = config.data_dir.join("spool");
    let (spool, recovery) =
        Spool::open(&spool_dir, config.spool.segment_size).with_context(|| format!("cannot open the spool in {}", spool_dir.display()))?;
    let spool = Arc::new(spool);
    spool.start_maintenance();
    tracing::info!(
        messages = recovery.messages, segments = recovery.segments, corrupt = recovery.corrupt.len(),
        dir = %spool_dir.display(), "spool recovered"
    );

    let free = Arc::new(AtomicU64::new(u64::MAX));
    relay::watch_free_space(spool_dir.clone(), free.clone(), spool::free_space);
    let local_domains = config.domains.iter().map(|d| d.name.clone()).collect();
    // With `[cluster] store`, AUTH failures are counted across nodes.
    let counters = config.cluster.store.as_deref().map(crate::cluster::Counters::shared).transpose()?;
    let auth = Authenticator::with_counters(&config.users, counters)?;
    let budget = crate::inbound::spill::Budget::new(config.limits.max_inflight_memory);
    let tls_files = config.tls.as_ref().map(|t| (t.cert.clone(), t.key.clone()));
    let store = open_store(&config)?;
    let metrics = Arc::new(Metrics::default());
    let suppressions = {
        // Reads the list from the store, whose PostgreSQL client blocks.
        let (config, store, metrics) = (config.clone(), store.clone(), metrics.clone());
        tokio::task::spawn_blocking(move || crate::suppression::Suppressions::new(&config, store, metrics))
            .await
            .context("suppression set-up task")?
            .context("cannot set up VERP and the suppression list")?
    };
    suppressions.start();
    let mut policy = RelayPolicy::new(local_domains, free, config.spool.min_free_space, auth.clone(), budget.clone())
        .with_suppressions(suppressions.clone());
    if !config.rates.is_empty() {
        // With `[cluster] store`, the limits count every node's sends.
        let counter: Arc<dyn crate::ratelimit::RateCounter> = match config.cluster.store.as_deref() {
            Some(url) => {
                let shared = crate::cluster::SharedRates::start(url)?;
                let waiting = shared.clone();
                // Off the async threads: the first RCPT should see the counts the cluster has.
                let _ = tokio::task::spawn_blocking(move || waiting.wait_synced(std::time::Duration::from_secs(2))).await;
                shared
            }
            None => Arc::new(crate::ratelimit::MemoryCounter::new()),
        };
        policy = policy.with_rate_limits(Arc::new(crate::checks::rate::RateLimiter::new(config.rates.clone(), counter, metrics.clone())));
    }
    let forwarding = match &config.srs {
        Some(srs) => {
            let srs = Arc::new(crate::srs::Srs::load(srs, &config.data_dir).context("cannot set up SRS")?);
            Some(Arc::new(crate::srs::Forwarding::new(srs, config.forwards.clone())))
        }
        None => None,
    };
    if let Some(f) = &forwarding {
        policy = policy.with_forwarding(f.clone());
    }
    let policy = Arc::new(policy);
    let recorder = crate::store::start_writer(
        store.clone(),
        config.reports.retention_days,
        config.reports.record,
        Some(&config.data_dir.join(crate::store::buffer::DIR)),
    );
    let checker = Arc::new(crate::checks::verdict::Checker::new(&config, Arc::new(lookalikes(&config)), Some(recorder.clone()))?);
    let signer = {
        // The key store may be PostgreSQL, whose client blocks.
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            let keys = crate::sign::backend::open(&config)?;
            crate::sign::Signer::start_with(keys, &config.data_dir, &config.domains)
        })
        .await
        .context("DKIM set-up task")?
        .context("cannot set up DKIM signing")?
    };
    let signer = Arc::new(signer);
    if config.cluster.store.is_some() {
        crate::sign::rotation::follow(signer.clone(), Duration::from_secs(config.cluster.poll_interval));
    }
    reload_on_hup(signer.clone());
    let server_tls = ServerTls::new(tls_files, &config.data_dir, &config.hostname).context("cannot set up TLS")?;
    server_tls.watch();
    crate::advisor::dane_watch::start(&server_tls, &config.hostname, config.nameservers.clone());
    let resolver = crate::dns::resolver(config.nameservers.as_deref()).context("cannot set up the DNS resolver")?;
    let d = &config.delivery;
    let trust = Arc::new(crate::outbound::tls::Trust::load(d.ca_file.as_deref()).context("cannot load trusted certificates")?);
    let hooks = crate::webhook::Hooks::start(&config.webhooks, &config.data_dir, metrics.clone(), trust.verifying.clone())?;
    if let Some(h) = &hooks {
        suppressions.set_hooks(h.clone());
    }
    let mta_sts = d.mta_sts.then(|| {
        crate::outbound::mta_sts::MtaSts::new(
            resolver.clone(),
            trust.verifying.clone(),
            d.mta_sts_port,
            Duration::from_secs(d.connect_timeout),
        )
    });
    let reports = Arc::new(crate::report::Reports::new(
        &config,
        crate::report::Parts {
            store: store.clone(),
            recorder: recorder.clone(),
            spool: spool.clone(),
            signer: signer.clone(),
            resolver: resolver.clone(),
            tls: trust.verifying.clone(),
            metrics: metrics.clone(),
        },
    ));
    if config.reports.send {
        crate::report::start(reports.clone());
    }
    let dane = crate::outbound::dane::start(&config).await?;
    let outbound = Arc::new(Outbound {
        hostname: config.hostname.clone(),
        resolver,
        spool: spool.clone(),
        mx_port: d.mx_port,
        max_messages_per_connection: d.max_messages_per_connection,
        idle_timeout: Duration::from_secs(d.idle_timeout),
        connect_timeout: Duration::from_secs(d.connect_timeout),
        command_timeout: Duration::from_secs(d.command_timeout),
        tls: crate::outbound::tls::opportunistic(),
        smarthost_auth: config.smarthost.as_ref().and_then(|s| s.credentials.clone()),
        danger_auth_without_tls: d.danger_smarthost_auth_without_tls,
        trust,
        mta_sts,
        dane,
        require_tls: d.require_tls.clone(),
        tls_events: Arc::new(crate::events::TlsEvents::new(Some(recorder.clone()), metrics.clone())),
        recorder: Some(recorder.clone()),
        ingester: Some(Arc::new(crate::report::ingest::Ingester::new(store.clone(), &config.data_dir).with_metrics(metrics.clone()))),
        suppressions: Some(suppressions.clone()),
        message_ids: hooks.is_some(),
    });
    crate::sign::rotation::watch(
        signer.clone(),
        outbound.resolver.clone(),
        Duration::from_secs(config.dkim.dns_check_interval),
        Duration::from_secs(config.dkim.rotation_overlap),
    );
    let dash_resolver = outbound.resolver.clone();
    let scheduler = scheduler::start(
        config.clone(),
        spool.clone(),
        outbound,
        metrics.clone(),
        signer.clone(),
        hooks.clone(),
        forwarding.as_ref().map(|f| f.srs.clone()),
    );
    let limits = listener::Limits::new(
        config.limits.max_connections,
        config.limits.max_connections_per_ip,
        config.limits.connections_per_ip_per_minute,
    );
    let (stop_tx, stop_rx) = watch::channel(false);

    let mut tasks = Vec::new();
    let receivers = listener::Receivers::start(config.smtp_threads).context("cannot start the SMTP threads")?;
    tracing::info!(threads = config.smtp_threads, "SMTP sessions run on their own threads ([server] smtp_threads)");
    for (l, socket) in config.listeners.iter().zip(smtp_sockets) {
        let mut session = SessionConfig::new(config.hostname.clone(), l.role);
        session.max_message_size = config.limits.max_message_size;
        session.max_recipients = config.limits.max_recipients;
        session.max_errors = config.limits.max_errors;
        session.max_submission_line = config.limits.max_submission_line;
        session.starttls = l.role != Role::Submissions;
        session.auth = l.role != Role::Mx;
        let ctx = Arc::new(Inbound {
            tls: Some(server_tls.clone()),
            implicit_tls: l.role == Role::Submissions,
            auth: auth.clone(),
            signer: signer.clone(),
            checker: checker.clone(),
            quarantine: config.policy.quarantine.is_some(),
            session: Arc::new(session),
            policy: policy.clone(),
            spool: spool.clone(),
            metrics: metrics.clone(),
            trusted: config.trusted_networks.clone(),
            deadlines: crate::inbound::clock::Deadlines {
                command_timeout: config.command_timeout(),
                data_timeout: config.data_timeout(),
                min_data_rate: config.limits.min_data_rate,
                session_timeout: Duration::from_secs(config.limits.session_timeout),
            },
            budget: budget.clone(),
            recorder: Some(recorder.clone()),
            hooks: hooks.clone(),
            forwarding: forwarding.clone(),
        });
        tracing::info!(role = l.role.as_str(), addr = %socket.local_addr()?, "listening");
        tasks.extend(receivers.serve(socket.into_std()?, &ctx, &limits, &metrics, &stop_rx)?);
    }

    if let (Some(socket), Some(token)) = (http_socket, admin_token) {
        let guard = http::auth::Guard::with_login(token, config.http_admin_password.clone(), config.http_tls);
        let api = Arc::new(http::Api {
            spool: spool.clone(),
            scheduler,
            metrics: metrics.clone(),
            recovery,
            guard,
            store: store.clone(),
            recorder: recorder.clone(),
            reports,
            config: config.clone(),
            resolver: Some(dash_resolver),
            suppressions: Some(suppressions.clone()),
        });
        let tls = config.http_tls.then(|| server_tls.clone());
        tasks.push(http::listen::start(socket, tls, http::router(api), stop_rx.clone()).await?);
    }

    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: no new connections; finishing in-flight transactions"),
        _ = int.recv() => tracing::info!("SIGINT: no new connections; finishing in-flight transactions"),
    }
    let _ = stop_tx.send(true);
    let grace = Duration::from_secs(config.limits.shutdown_grace);
    let all = futures_join(tasks);
    if tokio::time::timeout(grace, all).await.is_err() {
        tracing::warn!(grace_s = grace.as_secs(), "sessions still open after the grace period; closing them");
    }
    if let Some(h) = &hooks {
        // Events emitted so far are written before we exit.
        h.flush().await;
    }
    drop(receivers);
    tracing::info!(queued = spool.len(), "stopped");
    Ok(())
}

/// Opens the report store in `data_dir` (after the privilege drop, so the
/// server's user owns it).
/// With `[cluster] store`, the PostgreSQL store instead: made without
/// waiting for the database, which a thread keeps trying to reach (and
/// migrate) in the background, so that mail never waits for it; until it
/// answers, writes go to the recorder's on-disk buffer.
pub fn open_store(config: &Config) -> anyhow::Result<Arc<dyn crate::store::Store>> {
    let node = &config.cluster.node_id;
    if let Some(url) = &config.cluster.store {
        let store = Arc::new(crate::store::pg::Postgres::lazy(url, node).context("[cluster] store")?);
        let probe = store.clone();
        let (done, wait) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("pg-connect".into())
            .spawn(move || {
                let mut delay = Duration::from_secs(1);
                let mut first = true;
                loop {
                    match probe.ready() {
                        Ok(()) => {
                            tracing::info!("report store: PostgreSQL connected");
                            let _ = done.send(());
                            return;
                        }
                        Err(e) => {
                            if first {
                                let _ = done.send(());
                                first = false;
                            }
                            tracing::warn!(error = %e, retry_s = delay.as_secs(), "report store: PostgreSQL unreachable; records are buffered on disk");
                        }
                    }
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            })
            .context("cannot start the PostgreSQL connect thread")?;
        // The first attempt, so a CLI command that reads right away finds
        // the store ready; its failure is not fatal.
        let _ = wait.recv_timeout(Duration::from_secs(10));
        return Ok(store);
    }
    let path = config.data_dir.join(crate::store::sqlite::FILE);
    let store = crate::store::sqlite::Sqlite::open(&path, node).with_context(|| format!("cannot open {}", path.display()))?;
    Ok(Arc::new(store))
}

/// Re-reads DKIM keys on SIGHUP.
fn reload_on_hup(signer: Arc<crate::sign::Signer>) {
    tokio::spawn(async move {
        let Ok(mut hup) = signal(SignalKind::hangup()) else { return };
        while hup.recv().await.is_some() {
            match signer.reload_async().await {
                Ok(()) => tracing::info!("SIGHUP: DKIM keys reloaded"),
                Err(e) => tracing::error!(error = %format!("{e:#}"), "DKIM key reload failed; keeping the old keys"),
            }
        }
    });
}

/// Every connection is a descriptor: the soft limit (often 1024) is raised
/// to the hard one, so `max_connections` can be reached.
fn raise_fd_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read or write the struct we pass.
    let raised = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            tracing::warn!(error = %std::io::Error::last_os_error(), "cannot read the open-file limit");
            return;
        }
        let soft = lim.rlim_cur;
        lim.rlim_cur = lim.rlim_max;
        soft == lim.rlim_max || libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0
    };
    if raised {
        tracing::info!(open_files = lim.rlim_cur, "open-file limit (RLIMIT_NOFILE)");
    } else {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot raise the open-file limit to the hard limit");
    }
}

async fn futures_join(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}

/// The domains look-alike detection protects: ours and `[lookalike].protect`.
pub fn lookalikes(config: &Config) -> crate::checks::lookalike::Lookalikes {
    crate::checks::lookalike::Lookalikes::new(
        config.domains.iter().map(|d| d.name.as_str()).chain(config.protect.iter().map(String::as_str)),
    )
}
