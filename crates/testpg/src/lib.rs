//! Throwaway PostgreSQL clusters for tests: a real server from the machine's PostgreSQL
//! binaries, in a temporary directory, on a free loopback port, gone when the test process is.
//!
//! `initdb` refuses to run as root, so as root the cluster belongs to the `postgres` user (as
//! Debian's package creates it). The server runs under a small shell that reads commands on its
//! standard input (`stop`, `start`); when the test process ends, however it ends, that input
//! closes and the shell stops the server and removes the directory — no cluster outlives its
//! tests.
//!
//! ```text
//! let Some(pg) = warden_testpg::shared() else { return };   // skipped, saying why
//! let url = pg.fresh_database();                            // postgres://…/t3, empty
//! ```
//!
//! Where the machine has no PostgreSQL the tests that need one skip with a message, unless
//! `WARDEN_REQUIRE_POSTGRES=1` (set by `.ci/run`), where they fail.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A running cluster.
#[derive(Debug)]
pub struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    /// As whom the server runs (`postgres` when the tests run as root).
    user: Option<String>,
    keeper: Mutex<(Child, ChildStdin)>,
    next_db: AtomicU32,
}

/// The cluster this test process shares, started on first use; `None` (and a message on
/// stderr) where the machine has no PostgreSQL and none is required.
pub fn shared() -> Option<&'static Cluster> {
    static SHARED: OnceLock<Result<Cluster, String>> = OnceLock::new();
    match SHARED.get_or_init(Cluster::start) {
        Ok(c) => Some(c),
        Err(why) => {
            if std::env::var("WARDEN_REQUIRE_POSTGRES").is_ok_and(|v| v == "1") {
                panic!("PostgreSQL is required here (WARDEN_REQUIRE_POSTGRES=1) and {why}");
            }
            eprintln!("skipped: {why}");
            None
        }
    }
}

/// The newest PostgreSQL binaries on the machine.
fn bin_dir() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("WARDEN_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b)
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{cmd:?} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }
}

impl Cluster {
    /// Creates and starts a new cluster (with TLS on, its certificate at [`Cluster::ca`]).
    pub fn start() -> Result<Cluster, String> {
        let bin = bin_dir().ok_or("no PostgreSQL binaries were found under /usr/lib/postgresql")?;
        let user = is_root().then(|| "postgres".to_string());
        let as_user = |program: &Path| {
            let mut c = match &user {
                Some(u) => {
                    let mut c = Command::new("runuser");
                    c.args(["-u", u, "--"]).arg(program);
                    c
                }
                None => Command::new(program),
            };
            c.stdin(Stdio::null());
            c
        };
        let dir = PathBuf::from(run(as_user(Path::new("mktemp")).args(["-d", "/tmp/warden-pg.XXXXXX"]))?.trim());
        let data = dir.join("data");
        run(as_user(&bin.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync", "-D"])
            .arg(&data))?;
        // A CA, and the server's certificate for 127.0.0.1 and localhost signed by it.
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        run(as_user(Path::new("openssl"))
            .args(["req", "-x509", "-days", "30", "-subj", "/CN=warden test CA"])
            .args(ec)
            .arg("-keyout")
            .arg(dir.join("ca.key"))
            .arg("-out")
            .arg(dir.join("ca.crt")))?;
        run(as_user(Path::new("openssl"))
            .args(["req", "-new", "-subj", "/CN=localhost"])
            .args(ec)
            .arg("-keyout")
            .arg(data.join("server.key"))
            .arg("-out")
            .arg(dir.join("server.csr")))?;
        std::fs::write(dir.join("server.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n")
            .map_err(|e| format!("cannot write the certificate's extensions: {e}"))?;
        run(as_user(Path::new("openssl"))
            .args(["x509", "-req", "-days", "30", "-CAcreateserial"])
            .arg("-in")
            .arg(dir.join("server.csr"))
            .arg("-CA")
            .arg(dir.join("ca.crt"))
            .arg("-CAkey")
            .arg(dir.join("ca.key"))
            .arg("-extfile")
            .arg(dir.join("server.ext"))
            .arg("-out")
            .arg(data.join("server.crt")))?;
        run(as_user(Path::new("chmod")).arg("0600").arg(data.join("server.key")))?;
        run(as_user(Path::new("chmod")).arg("0755").arg(&dir))?;
        let port = free_port()?;
        let server = format!(
            "{} -D {} -p {port} -k {} -c listen_addresses=127.0.0.1 -c ssl=on -c max_connections=300 \
             -c shared_buffers=64MB",
            bin.join("postgres").display(),
            data.display(),
            dir.display()
        );
        let script = format!(
            "start() {{ {server} >>{log} 2>&1 & pid=$!; }}
             start
             while read -r cmd; do
               case \"$cmd\" in
                 stop) kill -INT $pid; wait $pid;;
                 kill) kill -KILL $pid; wait $pid;;
                 start) start;;
               esac
             done
             kill -INT $pid 2>/dev/null; wait $pid
             rm -rf {dir}",
            log = dir.join("server.log").display(),
            dir = dir.display(),
        );
        let mut keeper = as_user(Path::new("sh"))
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start PostgreSQL: {e}"))?;
        let input = keeper.stdin.take().ok_or("no stdin")?;
        let cluster = Cluster { bin, dir, port, user, keeper: Mutex::new((keeper, input)), next_db: AtomicU32::new(0) };
        cluster.wait_ready(Duration::from_secs(30))?;
        Ok(cluster)
    }

    fn wait_ready(&self, within: Duration) -> Result<(), String> {
        let started = Instant::now();
        loop {
            let ok = Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return Ok(());
            }
            if started.elapsed() > within {
                let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
                return Err(format!("PostgreSQL did not start within {within:?}: {log}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn tell(&self, cmd: &str) {
        let mut k = self.keeper.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(k.1, "{cmd}");
        let _ = k.1.flush();
    }

    /// The loopback port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The CA that signed the server's certificate: for `sslrootcert`.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// The URL of database `db`, without TLS.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}?sslmode=disable", self.port)
    }

    /// The URL of database `db` over TLS, trusting the cluster's certificate.
    pub fn tls_url(&self, db: &str) -> String {
        format!("postgres://postgres@localhost:{}/{db}?sslmode=require&sslrootcert={}", self.port, self.ca().display())
    }

    /// Runs `sql` as the superuser on database `db`.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, String> {
        run(Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres"])
            .args(["-p", &self.port.to_string(), "-d", db, "-c", sql]))
    }

    /// A new, empty database; returns its name.
    pub fn fresh_name(&self) -> String {
        let n = self.next_db.fetch_add(1, Ordering::Relaxed);
        let name = format!("t{}_{n}", std::process::id());
        if let Err(e) = self.psql("postgres", &format!("CREATE DATABASE {name}")) {
            panic!("cannot create a test database: {e}");
        }
        name
    }

    /// The URL of a new, empty database.
    pub fn fresh_database(&self) -> String {
        self.url(&self.fresh_name())
    }

    /// Stops the server (fast shutdown: connections are cut) and waits until it is down.
    pub fn stop(&self) {
        self.tell("stop");
        self.wait_down();
    }

    /// Kills the server's postmaster (SIGKILL), as a crash would.
    pub fn kill(&self) {
        self.tell("kill");
        self.wait_down();
    }

    fn wait_down(&self) {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            let up = Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if !up {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the server again after [`Cluster::stop`] and waits until it answers.
    pub fn start_again(&self) -> Result<(), String> {
        self.tell("start");
        self.wait_ready(Duration::from_secs(30))
    }

    /// As whom the server runs.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }
}
