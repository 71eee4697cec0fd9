//! A real, throwaway PostgreSQL server per test: initdb + pg_ctl from /usr/lib/postgresql/*/bin
//! or PATH, as the `postgres` user when running as root, in a temp dir, on a free loopback port.
//! It can be stopped, started again on the same port, and killed.
//!
//! Without PostgreSQL binaries a test prints one visible SKIP line and returns, unless
//! ORASCALE_REQUIRE_POSTGRES=1 (set by .ci/run), where a missing server is a failure.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use tokio_postgres::{Client, NoTls};

pub const SUPERUSER_PASSWORD: &str = "orascale-test-superuser-pw";
/// The scaler's own role: read-only grants on `jobs`.
pub const SCALER_USER: &str = "scaler";
pub const SCALER_PASSWORD: &str = "Sc4ler-Pa55word-do-not-log";

pub struct Pg {
    pub dir: tempfile::TempDir,
    pub port: u16,
    bin: PathBuf,
    as_postgres: bool,
}

fn find_bin() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists() && p.join("pg_ctl").exists())
        .collect();
    candidates.sort();
    if let Some(newest) = candidates.pop() {
        return Some(newest);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find(|p| p.join("initdb").exists() && p.join("pg_ctl").exists())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl Pg {
    /// Starts a fresh server, or returns `None` after printing a SKIP line.
    pub fn start_or_skip(test: &str) -> Option<Pg> {
        let Some(bin) = find_bin() else {
            if std::env::var("ORASCALE_REQUIRE_POSTGRES").as_deref() == Ok("1") {
                panic!(
                    "{test}: ORASCALE_REQUIRE_POSTGRES=1 but no PostgreSQL binaries (initdb, pg_ctl) were found"
                );
            }
            // Visible even for a passing test (the harness captures eprintln!).
            super::skip(
                test,
                "no PostgreSQL server binaries (initdb, pg_ctl) in /usr/lib/postgresql/*/bin or PATH",
            );
            return None;
        };
        Some(Pg::init(bin))
    }

    fn init(bin: PathBuf) -> Pg {
        let as_postgres = is_root();
        let dir = tempfile::Builder::new()
            .prefix("orascale-pg")
            .tempdir()
            .unwrap();
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, SUPERUSER_PASSWORD).unwrap();
        if as_postgres {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(ok.success(), "chown the test dir to postgres");
        }
        let pg = Pg {
            dir,
            port: super::unused_port(),
            bin,
            as_postgres,
        };
        let data = pg.data();
        let out = pg.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                &format!("--pwfile={}", pwfile.display()),
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pg.start();
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn run(&self, tool: &str, args: &[&str]) -> Output {
        let exe = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        cmd.args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap()
    }

    /// Starts (or starts again) the server on its port and waits until it accepts connections.
    pub fn start(&self) {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log");
        let out = self.run(
            "pg_ctl",
            &[
                "-D",
                self.data().to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-t",
                "60",
                "-o",
                &opts,
                "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start: {} {}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// A clean, fast shutdown: sessions are terminated, the port closes.
    pub fn stop(&self) {
        let out = self.run(
            "pg_ctl",
            &[
                "-D",
                self.data().to_str().unwrap(),
                "-m",
                "fast",
                "-w",
                "-t",
                "60",
                "stop",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// SIGKILL to the postmaster, as a crash would; its backends go with it.
    pub fn kill(&self) {
        let pid = std::fs::read_to_string(self.data().join("postmaster.pid")).unwrap();
        let pid = pid.lines().next().unwrap().trim().to_string();
        assert!(
            Command::new("kill")
                .args(["-KILL", &pid])
                .status()
                .unwrap()
                .success()
        );
        // Wait until the port is closed.
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
                let _ = std::fs::remove_file(self.data().join("postmaster.pid"));
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("postgres did not die");
    }

    pub fn url(&self, user: &str, password: Option<&str>) -> String {
        match password {
            Some(pw) => format!(
                "postgres://{user}:{pw}@127.0.0.1:{}/postgres?sslmode=disable",
                self.port
            ),
            None => format!(
                "postgres://{user}@127.0.0.1:{}/postgres?sslmode=disable",
                self.port
            ),
        }
    }

    /// The scaler's URL, password included.
    pub fn scaler_url(&self) -> String {
        self.url(SCALER_USER, Some(SCALER_PASSWORD))
    }

    /// A superuser session for the test's own setup and checks.
    pub async fn admin(&self) -> Client {
        let (client, conn) =
            tokio_postgres::connect(&self.url("postgres", Some(SUPERUSER_PASSWORD)), NoTls)
                .await
                .expect("admin connects");
        tokio::spawn(conn);
        client
    }

    /// Creates the scaler role (read-only grants), `jobs` and a table the scaler may not read.
    pub async fn setup(&self) -> Client {
        let admin = self.admin().await;
        admin
            .batch_execute(&format!(
                "create role {SCALER_USER} login password '{SCALER_PASSWORD}';
                 create table jobs (id serial primary key, status text not null);
                 create table secrets (v text); insert into secrets values ('keep me');
                 grant select on jobs to {SCALER_USER};
                 grant execute on function pg_sleep(double precision) to {SCALER_USER};"
            ))
            .await
            .expect("setup");
        admin
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = self.run(
            "pg_ctl",
            &[
                "-D",
                self.data().to_str().unwrap(),
                "-m",
                "immediate",
                "stop",
            ],
        );
    }
}

/// The user's side of wake-ups: a statement trigger that notifies `jobs_changed` on every
/// change to `jobs` (docs/wakeups.md).
pub async fn notify_trigger(admin: &Client) {
    admin
        .batch_execute(
            "create function jobs_notify() returns trigger language plpgsql as $$
             begin perform pg_notify('jobs_changed', ''); return null; end $$;
             create trigger jobs_notify after insert or update or delete on jobs
               for each statement execute function jobs_notify();",
        )
        .await
        .expect("notify trigger");
}

/// Sets the number of queued jobs.
pub async fn set_queued(admin: &Client, n: i64) {
    admin
        .batch_execute(&format!(
            "begin; delete from jobs; insert into jobs(status) select 'queued' from generate_series(1, {n}); commit;"
        ))
        .await
        .unwrap();
}

/// Sessions of the scaler's role, by state.
pub async fn scaler_sessions(admin: &Client) -> Vec<(String, String)> {
    admin
        .query(
            "select coalesce(state, ''), coalesce(query, '') from pg_stat_activity where usename = $1",
            &[&SCALER_USER],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}
