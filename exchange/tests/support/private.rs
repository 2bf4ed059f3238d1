//! Private Redis and PostgreSQL servers for the tests that flush, kill or
//! restart them, so tests running in parallel on the shared servers are not
//! disturbed. Each runs on a free port with its data in a temp dir and is
//! stopped (immediately) when dropped.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

fn temp_dir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(exchange_common::testing::random_name(prefix));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `redis-server` without persistence: a restart loses everything.
pub struct PrivateRedis {
    pub port: u16,
    pub url: String,
    child: Option<Child>,
    dir: PathBuf,
}

impl PrivateRedis {
    pub async fn start() -> Self {
        let port = free_port();
        let mut r = Self {
            port,
            url: format!("redis://127.0.0.1:{port}"),
            child: None,
            dir: temp_dir("redis-"),
        };
        r.spawn().await;
        r
    }

    async fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install redis-server)");
        self.child = Some(child);
        let client = redis::Client::open(self.url.as_str()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut c) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok()
            {
                return;
            }
            assert!(Instant::now() < deadline, "private redis did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn flushall(&self) {
        let client = redis::Client::open(self.url.as_str()).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let _: () = redis::cmd("FLUSHALL").query_async(&mut c).await.unwrap();
    }

    /// `kill -9`, then a new empty server on the same port after `down`.
    pub async fn restart(&mut self, down: Duration) {
        self.kill();
        tokio::time::sleep(down).await;
        self.spawn().await;
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A throwaway PostgreSQL cluster (initdb into a temp dir, run as user
/// `postgres` when the tests run as root), trust auth on 127.0.0.1.
pub struct PrivatePostgres {
    pub port: u16,
    /// The `postgres` database of the instance.
    pub url: String,
    dir: PathBuf,
    bindir: PathBuf,
    as_postgres: bool,
}

fn pg_bindir() -> PathBuf {
    if let Ok(d) = std::env::var("EXCHANGE_PG_BINDIR")
        && !d.is_empty()
    {
        return d.into();
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if d.join("initdb").exists() {
            return d;
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path().join("bin")))
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions.pop().expect(
        "PostgreSQL server binaries (EXCHANGE_PG_BINDIR, pg_config or /usr/lib/postgresql/*/bin)",
    )
}

impl PrivatePostgres {
    pub fn start() -> Self {
        let as_postgres = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        let dir = temp_dir("pg-");
        if as_postgres {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .unwrap();
            assert!(ok.success(), "chown the private postgres dir");
        }
        let port = free_port();
        let pg = Self {
            port,
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            dir,
            bindir: pg_bindir(),
            as_postgres,
        };
        let data = pg.dir.join("data");
        pg.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        pg.up();
        pg
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let bin = self.bindir.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&bin);
            c
        } else {
            Command::new(&bin)
        };
        let out = cmd
            .args(args)
            .current_dir(&self.dir)
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
        assert!(
            out.status.success(),
            "{tool} {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn data(&self) -> String {
        self.dir.join("data").to_str().unwrap().to_owned()
    }

    /// `pg_ctl start` (waits until it accepts connections).
    pub fn up(&self) {
        let opts = format!(
            // fsync=off survives `-m immediate` (the OS keeps the pages);
            // synchronous_commit=off would not: acknowledged commits still in
            // the WAL buffers die with the server.
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("postgres.log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-o",
                &opts,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "start",
            ],
        );
    }

    /// `pg_ctl -m immediate stop`: a crash as far as the clients can tell.
    pub fn crash(&self) {
        self.run(
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        );
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let bin = self.bindir.join("pg_ctl");
        let data = self.data();
        let args = ["-D", data.as_str(), "-m", "immediate", "stop"];
        let _ = if self.as_postgres {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&bin)
                .args(args)
                .output()
        } else {
            Command::new(&bin).args(args).output()
        };
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
