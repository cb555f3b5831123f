//! Soak: the real `warden serve` (release build) under a steady mixed load for a long while —
//! advise, deny, approvals and executions against `warden lab serve` — recording the server's
//! resident memory and the latency percentiles every interval; afterwards the server is
//! stopped with SIGTERM and `warden audit verify` must pass.
//!
//! ```text
//! cargo bench -p warden --bench soak -- [--minutes 10] [--fraction 0.5] [--connections 32]
//!                                       [--interval 10] [--max-secs 20] [--dir DIR] [--rate N]
//! ```
//!
//! First the mix is run closed-loop (every connection sends as soon as it has its answer) for
//! `--max-secs` to measure the maximum rate on this machine; then it is held open-loop at
//! `--fraction` of that rate (or at `--rate` requests per second, skipping the measurement).
//! Latencies are measured from when each request was *due*, so a server that falls behind
//! shows it (no coordinated omission). Exit 1 if any request failed,
//! the log does not verify, or memory grew more than 20 % over the second half.
//!
//! `--abuse CALM` (minutes) runs A B A instead: the load alone for CALM minutes, then for
//! `--minutes` with three attackers beside it (a slowloris of 1,000 connections from
//! 127.0.0.2, an agent opening MCP sessions it never closes, an agent asking for approvals
//! with ever-new targets — each flood at `--flood-rate` requests per second), then alone
//! again. It exits 1 when the legitimate rate or p99 under attack is more than 1.5× off the
//! calm phases', or RSS grows more than 20 % over the attack's second half.

#[path = "../tests/support/procs.rs"]
mod procs;

#[path = "../tests/support/abuse.rs"]
mod abuse;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const WARDEN: &str = env!("CARGO_BIN_EXE_warden");
const EDR: &str = "spiffe://acme.example/soc/edr-responder";
const ENRICH: &str = "spiffe://acme.example/soc/enrichment-bot";
/// The attackers of `--abuse`: one floods approvals, the other MCP sessions.
const IAM: &str = "spiffe://acme.example/soc/identity-responder";
const PHISH: &str = "spiffe://acme.example/soc/phish-triage";

struct Args {
    minutes: f64,
    fraction: f64,
    connections: usize,
    interval: u64,
    max_secs: u64,
    dir: Option<PathBuf>,
    rate: Option<f64>,
    /// Minutes of each calm phase around the attack (`--abuse`).
    abuse: Option<f64>,
    flood_rate: f64,
}

fn args() -> Args {
    let mut a = Args {
        minutes: 10.0,
        fraction: 0.5,
        connections: 32,
        interval: 10,
        max_secs: 20,
        dir: None,
        rate: None,
        abuse: None,
        flood_rate: 50.0,
    };
    let argv: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("`{flag}` needs a value"));
        let number = || -> f64 { value.parse().unwrap_or_else(|_| panic!("`{flag}`: `{value}` is not a number")) };
        match flag.as_str() {
            "--minutes" => a.minutes = number(),
            "--fraction" => a.fraction = number(),
            "--connections" => a.connections = number() as usize,
            "--interval" => a.interval = number() as u64,
            "--max-secs" => a.max_secs = number() as u64,
            "--dir" => a.dir = Some(PathBuf::from(value)),
            "--rate" => a.rate = Some(number()),
            "--abuse" => a.abuse = Some(number()),
            "--flood-rate" => a.flood_rate = number(),
            _ => panic!("unknown flag `{flag}`"),
        }
    }
    a
}

fn warden(args: &[&str]) -> String {
    let out = Command::new(WARDEN).args(args).output().unwrap();
    assert!(out.status.success(), "warden {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The example bundle with the hourly budgets raised, so executions run for the whole soak, and
/// the EDR agent's approvals expiring after two minutes, so expiry runs during it.
fn soak_bundle(to: &Path) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/policy");
    copy_dir(&from, to);
    for (file, old, new) in [
        ("agents/edr-responder.toml", "max_per_hour = 10\n", "max_per_hour = 10000000\n"),
        ("agents/enrichment-bot.toml", "max_per_hour = 5000\n", "max_per_hour = 10000000\n"),
        // ~2,000 approvals stay pending by design of the mix: the caps on a human's inbox are
        // the attack's to meet, not the soak's.
        (
            "agents/edr-responder.toml",
            "approval_expiry = \"10m\"\n",
            "approval_expiry = \"2m\"\nmax_pending = 1000000\nmax_pending_per_action = 1000000\n",
        ),
    ] {
        let path = to.join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(old), "{file} lacks `{old}`");
        std::fs::write(path, text.replacen(old, new, 1)).unwrap();
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    addr: String,
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Conn {
    fn open(addr: &str) -> std::io::Result<Conn> {
        let w = TcpStream::connect(addr)?;
        w.set_nodelay(true)?;
        Ok(Conn { addr: addr.to_string(), r: BufReader::new(w.try_clone()?), w })
    }

    fn post(&mut self, path: &str, token: &str, body: &str) -> std::io::Result<(u16, Vec<u8>)> {
        write!(
            self.w,
            "POST {path} HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        )?;
        let mut line = String::new();
        self.r.read_line(&mut line)?;
        let status = line.get(9..12).and_then(|s| s.parse().ok()).ok_or(std::io::ErrorKind::InvalidData)?;
        let mut len = 0;
        loop {
            line.clear();
            self.r.read_line(&mut line)?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().map_err(|_| std::io::ErrorKind::InvalidData)?;
            }
        }
        let mut body = vec![0; len];
        self.r.read_exact(&mut body)?;
        Ok((status, body))
    }
}

/// The request mix: 40 % advise, 25 % deny, 10 % approvals (over 2,000 unknown hosts: a few
/// identical requests fold into each approval, which expires after two minutes, so the pending
/// set stays near 2,000 and the sweeper escalates and expires ~17 a second), 25 % executions
/// against the lab (each on a new alert).
fn nth_request(tag: &str, n: u64, me: usize, edr: &str, enrich: &str) -> (String, String) {
    let ask = |action: &str, target: String, confidence: f64, params: Value| {
        // Each agent works in its own task (an agent's task is its alone).
        let task = if action == "alert.enrich" { "INC-S2" } else { "INC-S" };
        json!({"task": task, "action": action, "target": target, "confidence": confidence, "params": params,
               "rationale": "soak", "evidence": [{"kind": "edr", "ref": "d:1"}]})
        .to_string()
    };
    let reason = || json!({"reason": "beacon"});
    match n % 20 {
        0..8 => (edr.into(), ask("host.isolate", "host:web-01".into(), 0.3, reason())),
        8..13 => (edr.into(), ask("host.wipe", "host:web-01".into(), 0.95, reason())),
        13..15 => {
            let host = (n / 20 * 37 + me as u64) % 2000;
            (edr.into(), ask("host.isolate", format!("host:soak-{host}"), 0.95, reason()))
        }
        _ => (enrich.into(), ask("alert.enrich", format!("alert:{tag}-{me}-{n}"), 0.95, json!({}))),
    }
}

/// What the clients saw in the current window.
#[derive(Default)]
struct Window {
    latencies: Vec<Duration>,
    outcomes: std::collections::BTreeMap<String, u64>,
}

struct Shared {
    window: Mutex<Window>,
    failures: AtomicU64,
    stop: AtomicBool,
    /// Makes the alerts of each phase distinct.
    tag: &'static str,
}

/// One client connection: closed loop when `period` is `None`, else one request every
/// `period` starting at `start`, latency counted from when each was due.
fn client(addr: &str, tokens: &(String, String), me: usize, period: Option<Duration>, start: Instant, s: &Shared) {
    let mut conn = Conn::open(addr).unwrap();
    let mut n = 0u64;
    while !s.stop.load(Ordering::Relaxed) {
        let due = match period {
            Some(p) => {
                let due = start + p * u32::try_from(n).unwrap_or(u32::MAX);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                due
            }
            None => Instant::now(),
        };
        let (token, body) = nth_request(s.tag, n, me, &tokens.0, &tokens.1);
        n += 1;
        match conn.post("/v1/actions", &token, &body) {
            Ok((200, answer)) => {
                let answer = serde_json::from_slice::<Value>(&answer).unwrap_or_default();
                let state = answer["state"].as_str().unwrap_or("unreadable").to_string();
                if state == "failed" || state == "unknown" {
                    eprintln!("{state} execution: {}", answer["execution"]["error"]);
                }
                let mut w = s.window.lock().unwrap();
                w.latencies.push(due.elapsed());
                *w.outcomes.entry(state).or_default() += 1;
            }
            Ok((status, answer)) => {
                s.failures.fetch_add(1, Ordering::Relaxed);
                eprintln!("HTTP {status}: {}", String::from_utf8_lossy(&answer));
            }
            Err(e) => {
                s.failures.fetch_add(1, Ordering::Relaxed);
                eprintln!("connection: {e}");
                match Conn::open(addr) {
                    Ok(c) => conn = c,
                    Err(_) => return,
                }
            }
        }
    }
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted.get(((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1))).copied().unwrap_or_default()
}

/// The database and its write-ahead log, in MiB.
fn disk_mib(data: &Path) -> (f64, f64) {
    let size = |name: &str| std::fs::metadata(data.join(name)).map_or(0, |m| m.len()) as f64 / (1024.0 * 1024.0);
    (size("warden.db"), size("warden.db-wal"))
}

/// A field of `/proc/PID/status` (`VmRSS`, `RssAnon`, `Threads`), as a number (KiB for sizes).
fn proc_status(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix(field)
                    .and_then(|v| v.strip_prefix(':'))
                    .map(|v| v.trim().trim_end_matches(" kB").parse().ok())
            })
        })
        .flatten()
        .unwrap_or(0)
}

/// The server under test: where it listens, the agents' tokens, its pid and data directory.
struct Server {
    addr: String,
    tokens: Arc<(String, String)>,
    pid: u32,
    data: PathBuf,
}

/// Runs the clients for `secs` (closed loop, or at `rate` per second), reporting every
/// `interval` seconds; returns each window's (requests/s, p99, RSS).
fn phase(
    server: &Server,
    connections: usize,
    rate: Option<f64>,
    secs: f64,
    interval: u64,
) -> (Vec<(f64, Duration, u64)>, u64, Vec<Duration>) {
    let Server { addr, tokens, pid, data } = server;
    let (addr, pid) = (addr.as_str(), *pid);
    let shared = Arc::new(Shared {
        window: Mutex::default(),
        failures: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        tag: if rate.is_some() { "soak" } else { "max" },
    });
    let start = Instant::now();
    let clients: Vec<_> = (0..connections)
        .map(|me| {
            let (addr, tokens, shared) = (addr.to_string(), tokens.clone(), shared.clone());
            // Connections are staggered evenly across one period.
            let period = rate.map(|r| Duration::from_secs_f64(connections as f64 / r));
            let offset =
                period.map_or(Duration::ZERO, |p| p * u32::try_from(me).unwrap() / u32::try_from(connections).unwrap());
            std::thread::spawn(move || client(&addr, &tokens, me, period, start + offset, &shared))
        })
        .collect();
    let mut windows = Vec::new();
    let mut all = Vec::new();
    let mut at = Duration::ZERO;
    while at.as_secs_f64() < secs {
        let step = Duration::from_secs(interval).min(Duration::from_secs_f64(secs) - at);
        at += step;
        if let Some(wait) = (start + at).checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let w = std::mem::take(&mut *shared.window.lock().unwrap());
        let mut l = w.latencies;
        l.sort();
        let rps = l.len() as f64 / step.as_secs_f64();
        let rss = proc_status(pid, "VmRSS");
        let threads = proc_status(pid, "Threads");
        let outcomes: Vec<String> = w.outcomes.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let (db, wal) = disk_mib(data);
        println!(
            "| {:>5.0} | {:>6.0} | {:>9.2?} | {:>9.2?} | {:>9.2?} | {:>7.1} | {threads} | {db:.0} + {wal:.0} | {} |",
            at.as_secs_f64(),
            rps,
            percentile(&l, 0.5),
            percentile(&l, 0.99),
            l.last().copied().unwrap_or_default(),
            rss as f64 / 1024.0,
            outcomes.join(", ")
        );
        windows.push((rps, percentile(&l, 0.99), rss));
        all.extend(l);
    }
    shared.stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.join();
    }
    all.sort();
    (windows, shared.failures.load(Ordering::Relaxed), all)
}

fn header() {
    println!("| t (s) | req/s | p50 | p99 | max | RSS (MiB) | threads | db + WAL (MiB) | answers |");
    println!("|---|---|---|---|---|---|---|---|---|");
}

/// A B A: the load alone, the load beside the attackers, the load alone again. Returns the
/// attack phase's windows, the failures of all three, and whether the legitimate load held
/// within 1.5× of the calm phases (rate and p99).
fn abuse_phases(target: &Server, a: &Args, rate: f64, calm: f64, data: &str) -> (Vec<(f64, Duration, u64)>, u64, bool) {
    let run = |title: &str, minutes: f64| {
        println!("### {title}\n");
        header();
        let r = phase(target, a.connections, Some(rate), minutes * 60.0, a.interval);
        println!();
        r
    };
    let (calm1, f1, l1) = run("A: the load alone", calm);
    let ttl = format!("{}m", (a.minutes + 2.0 * calm) as u64 + 30);
    let mcp = warden(&["agent", "token", PHISH, "--ttl", &ttl, "--data", data]).trim().to_string();
    let flood = warden(&["agent", "token", IAM, "--ttl", &ttl, "--data", data]).trim().to_string();
    let task = json!({"id": "INC-F", "title": "flood", "trigger": {"source": "idp", "severity": "high"}}).to_string();
    let (status, _) = Conn::open(&target.addr).unwrap().post("/v1/tasks", &flood, &task).unwrap();
    assert_eq!(status, 201);
    fn flood_body(n: u64) -> String {
        json!({"task": "INC-F", "action": "account.disable", "target": format!("account:flood-{n}"), "confidence": 0.8,
               "params": {"reason": format!("takeover {n}")}, "rationale": "flood",
               "evidence": [{"kind": "idp", "ref": "risk:1"}, {"kind": "idp", "ref": "signin:1"}]})
        .to_string()
    }
    let attack = abuse::Attack::start(&target.addr, 1000, a.flood_rate, mcp, flood, flood_body);
    let (attacked, f2, l2) =
        run("B: the load beside a slowloris, an MCP session flood and an approval flood", a.minutes);
    let counts = attack.stop();
    println!("attackers: {counts:?}\n");
    let (calm2, f3, l3) = run("A: the load alone again", calm);
    let mean = |w: &[(f64, Duration, u64)]| w.iter().map(|w| w.0).sum::<f64>() / w.len().max(1) as f64;
    let calm_rate = (mean(&calm1) + mean(&calm2)) / 2.0;
    let mut calm_lat = [l1, l3].concat();
    calm_lat.sort();
    let (p99_calm, p99_attack) = (percentile(&calm_lat, 0.99), percentile(&l2, 0.99));
    let rate_ratio = calm_rate / mean(&attacked).max(f64::MIN_POSITIVE);
    let p99_ratio = p99_attack.as_secs_f64() / p99_calm.as_secs_f64().max(1e-9);
    let rss_max = attacked.iter().map(|w| w.2).max().unwrap_or(0);
    println!(
        "abuse: legitimate rate calm {calm_rate:.0}/s vs attacked {:.0}/s ({rate_ratio:.2}×); p99 calm {p99_calm:.2?} vs \
         attacked {p99_attack:.2?} ({p99_ratio:.2}×); RSS under attack at most {:.1} MiB",
        mean(&attacked),
        rss_max as f64 / 1024.0
    );
    let held = rate_ratio <= 1.5 && p99_ratio <= 1.5;
    (attacked, f1 + f2 + f3, held)
}

fn main() -> ExitCode {
    let a = args();
    let tmp = match &a.dir {
        Some(d) => tempfile::tempdir_in(d).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    let (data, policy) = (tmp.path().join("data"), tmp.path().join("policy"));
    soak_bundle(&policy);
    let d = data.to_str().unwrap();

    // The lab, on its own port, with the keys it prints.
    let (_lab, lab_addr, keys) = procs::spawn_lab(Path::new(WARDEN), 0);

    warden(&["init", "--data", d]);
    warden(&["agent", "add", EDR, "--owner", "team:endpoint-response", "--data", d]);
    warden(&["agent", "add", ENRICH, "--owner", "team:soc-engineering", "--data", d]);
    warden(&["agent", "add", IAM, "--owner", "team:iam", "--data", d]);
    warden(&["agent", "add", PHISH, "--owner", "team:email-security", "--data", d]);
    let ttl = format!("{}m", (a.minutes as u64) + 30);
    let tokens = Arc::new((
        warden(&["agent", "token", EDR, "--ttl", &ttl, "--data", d]).trim().to_string(),
        warden(&["agent", "token", ENRICH, "--ttl", &ttl, "--data", d]).trim().to_string(),
    ));

    // `SOAK_WRAPPER="heaptrack -o /tmp/warden"` runs the server under a profiler (the RSS
    // column then shows the wrapper's).
    let wrapper: Vec<String> =
        std::env::var("SOAK_WRAPPER").map(|w| w.split_whitespace().map(String::from).collect()).unwrap_or_default();
    let mut cmd = match wrapper.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(WARDEN);
            c
        }
        None => Command::new(WARDEN),
    };
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--agent-rate", "1000000", "--agent-burst", "1000000"]);
    cmd.args(["--max-in-flight", "4096", "--data", d, "--policy", policy.to_str().unwrap()]);
    for tool in ["edr", "idp", "firewall", "mail", "ticketing", "siem"] {
        cmd.arg("--tool-url").arg(format!("{tool}=http://{lab_addr}"));
    }
    let (mut server, addr) = procs::spawn_server(cmd.envs(keys.iter().cloned()));
    let pid = server.0.id();

    let task = json!({"id": "INC-S", "title": "soak", "trigger": {"source": "edr", "severity": "high"}}).to_string();
    let (status, _) = Conn::open(&addr).unwrap().post("/v1/tasks", &tokens.0, &task).unwrap();
    assert_eq!(status, 201);
    let task = json!({"id": "INC-S2", "title": "soak", "trigger": {"source": "siem", "severity": "high"}}).to_string();
    let (status, _) = Conn::open(&addr).unwrap().post("/v1/tasks", &tokens.1, &task).unwrap();
    assert_eq!(status, 201);

    println!(
        "soak: {} connections; the mix: 40 % advise, 25 % deny, 10 % approval, 25 % execution (lab)\n",
        a.connections
    );
    let target = Server { addr, tokens, pid, data: data.clone() };
    let (rate, max_failures) = match a.rate {
        Some(rate) => {
            println!("holding {rate:.0}/s (given) for {} min\n", a.minutes);
            (rate, 0)
        }
        None => {
            println!("### Maximum ({} s closed loop)\n", a.max_secs);
            header();
            let (max, failures, _) = phase(&target, a.connections, None, a.max_secs as f64, a.interval);
            let max_rate = max.iter().map(|w| w.0).sum::<f64>() / max.len().max(1) as f64;
            let rate = max_rate * a.fraction;
            println!(
                "\nmaximum {max_rate:.0} requests/s; holding {rate:.0}/s ({:.0} %) for {} min\n",
                a.fraction * 100.0,
                a.minutes
            );
            (rate, failures)
        }
    };
    let (soak, failures, held) = match a.abuse {
        None => {
            println!("### Soak\n");
            header();
            let (soak, failures, _) = phase(&target, a.connections, Some(rate), a.minutes * 60.0, a.interval);
            (soak, failures, true)
        }
        Some(calm) => abuse_phases(&target, &a, rate, calm, d),
    };

    // Stop as an operator would, then verify the whole log.
    let stopped = Command::new("kill").args(["-TERM", &pid.to_string()]).status().map(|s| s.success()).unwrap_or(false);
    let exit = server.0.wait().ok().filter(|_| stopped);
    let verify = Command::new(WARDEN).args(["audit", "verify", "--data", d]).output().unwrap();
    let verify_text = String::from_utf8_lossy(&verify.stdout);
    println!("\nSIGTERM: {:?}; `warden audit verify`: {}", exit, verify_text.trim());

    let half = &soak[soak.len() / 2..];
    let (first, last) = (half.first().map_or(0, |w| w.2), half.last().map_or(0, |w| w.2));
    let growth = last as f64 / first.max(1) as f64;
    let p99s: Vec<f64> = soak.iter().map(|w| w.1.as_secs_f64() * 1e3).collect();
    let (lo, hi) = (p99s.iter().copied().fold(f64::MAX, f64::min), p99s.iter().copied().fold(0.0, f64::max));
    let achieved = soak.iter().map(|w| w.0).sum::<f64>() / soak.len().max(1) as f64;
    println!(
        "summary: achieved {achieved:.0}/s of {rate:.0}/s; RSS over the second half {:.1} → {:.1} MiB ({growth:.2}×); \
         p99 per window {lo:.1}–{hi:.1} ms; failures {} (max phase {})",
        first as f64 / 1024.0,
        last as f64 / 1024.0,
        failures,
        max_failures
    );
    if failures + max_failures > 0 || !verify.status.success() || growth > 1.2 || !held {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
