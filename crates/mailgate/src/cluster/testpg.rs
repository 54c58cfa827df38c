//! Tests only: a private PostgreSQL in a temporary directory (Debian's
//! `initdb` and `pg_ctl`, run as `postgres` when the tests run as root),
//! on 127.0.0.1 at a free port. Stopped and removed when dropped.
//!
//! May import: nothing of mailgate.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct TestPg {
    pub url: String,
    data: PathBuf,
    log: PathBuf,
    as_postgres: bool,
    _dir: tempfile::TempDir,
}

fn pg_bin(name: &str) -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin").join(name))))
        .filter(|(_, p)| p.exists())
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p).unwrap_or_else(|| PathBuf::from(name))
}

impl TestPg {
    /// Panics when PostgreSQL is not installed: these tests must not pass
    /// by skipping (CI installs Debian's `postgresql`).
    pub fn start() -> TestPg {
        let dir = tempfile::tempdir().expect("tempdir");
        // SAFETY: geteuid has no preconditions.
        let as_postgres = unsafe { libc::geteuid() } == 0;
        if as_postgres {
            let ok = Command::new("chown").arg("postgres:postgres").arg(dir.path()).status().is_ok_and(|s| s.success());
            assert!(ok, "cannot give the test directory to the postgres user");
        }
        let data = dir.path().join("data");
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let pg = TestPg {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            log: dir.path().join("log"),
            data,
            as_postgres,
            _dir: dir,
        };
        let initdb = pg_bin("initdb");
        let out = pg
            .cmd(&initdb)
            .args(["-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8", "--locale=C", "-D"])
            .arg(&pg.data)
            .output()
            .unwrap_or_else(|e| panic!("{}: {e} (install Debian's postgresql)", initdb.display()));
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        let conf = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\nfsync = off\n",
            pg.data.parent().unwrap_or(Path::new("/tmp")).display()
        );
        let mut text = std::fs::read_to_string(pg.data.join("postgresql.conf")).expect("postgresql.conf");
        text.push_str(&conf);
        std::fs::write(pg.data.join("postgresql.conf"), text).expect("postgresql.conf");
        pg.start_again();
        pg
    }

    fn cmd(&self, program: &Path) -> Command {
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        }
    }

    pub fn start_again(&self) {
        let out = self.cmd(&pg_bin("pg_ctl")).arg("-D").arg(&self.data).arg("-l").arg(&self.log).args(["-w", "start"]).output();
        let ok = out.as_ref().is_ok_and(|o| o.status.success());
        assert!(ok, "pg_ctl start: {:?}\n{}", out, std::fs::read_to_string(&self.log).unwrap_or_default());
    }

    pub fn stop(&self) {
        let _ = self.cmd(&pg_bin("pg_ctl")).arg("-D").arg(&self.data).args(["-m", "fast", "-w", "stop"]).output();
    }
}

impl Drop for TestPg {
    fn drop(&mut self) {
        let _ = self.cmd(&pg_bin("pg_ctl")).arg("-D").arg(&self.data).args(["-m", "immediate", "-w", "stop"]).output();
    }
}
