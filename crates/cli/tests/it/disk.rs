//! A full disk, for real: the binary serves from a small tmpfs (in a private mount namespace,
//! `unshare -r -m`) that a ballast file fills. Requests then fail closed — 503
//! `store_unavailable`, `warden_store_failing 1` — and nothing acknowledged is lost; when the
//! ballast goes the server recovers by itself, and afterwards the log verifies.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::example_dir;
use crate::serve::http;

const EDR: &str = "spiffe://acme.example/soc/edr-responder";

/// What runs inside the namespace: a 24 MiB tmpfs, a data directory on it, the ballast that
/// leaves ~384 KiB free, the server; the ballast goes when the test says so, then (after the
/// server stops) the log is verified.
const SCRIPT: &str = r#"
set -eu
mount -t tmpfs -o size=24m tmpfs "$MNT"
"$WARDEN" init --data "$MNT/data" > /dev/null
"$WARDEN" agent add "$EDR" --owner team:endpoint-response --data "$MNT/data" > /dev/null
"$WARDEN" agent token "$EDR" --ttl 1h --data "$MNT/data" > "$OUT/token"
dd if=/dev/zero of="$MNT/ballast" bs=64k 2> /dev/null || true
truncate -s -384K "$MNT/ballast"
"$WARDEN" serve --data "$MNT/data" --policy "$POLICY" --listen 127.0.0.1:0 --agent-rate 100000 --agent-burst 100000 > "$OUT/serve.out" 2> "$OUT/serve.err" &
pid=$!
echo "$pid" > "$OUT/pid"
while [ ! -e "$OUT/release" ]; do sleep 0.05; done
rm -f "$MNT/ballast"
touch "$OUT/released"
wait "$pid" || echo "$?" > "$OUT/serve.rc"
set +e
"$WARDEN" audit verify --data "$MNT/data" > "$OUT/verify.out" 2>&1
echo "$?" > "$OUT/verify.rc"
"#;

fn wait_for(path: &Path, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && text.ends_with('\n')
        {
            return text;
        }
        assert!(Instant::now() < deadline, "`{}` never appeared", path.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn metric(addr: &str, name: &str) -> f64 {
    let (_, text) = http(addr, "GET", "/metrics", "", None).unwrap();
    let text = text.as_str().unwrap_or_default().to_string();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `{name}` in {text}"))
}

#[test]
fn a_full_disk_fails_closed_loses_nothing_and_recovers_when_space_returns() {
    if !Command::new("unshare").args(["-r", "-m", "true"]).status().is_ok_and(|s| s.success()) {
        eprintln!("skipped: this machine gives no private mount namespace (`unshare -r -m`)");
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let mnt = tempfile::tempdir().unwrap();
    let mut ns = Command::new("unshare")
        .args(["-r", "-m", "sh", "-c", SCRIPT])
        .env("MNT", mnt.path())
        .env("OUT", out.path())
        .env("WARDEN", assert_cmd::cargo::cargo_bin("warden"))
        .env("POLICY", example_dir())
        .env("EDR", EDR)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let token = wait_for(&out.path().join("token"), Duration::from_secs(60)).trim().to_string();
    let listening = wait_for(&out.path().join("serve.out"), Duration::from_secs(60));
    let addr = listening.trim().strip_prefix("listening on ").expect("the address is printed").to_string();
    let pid = wait_for(&out.path().join("pid"), Duration::from_secs(5)).trim().to_string();

    // Fill what is left: tasks with long titles, until the store refuses.
    let title = "x".repeat(4000);
    let mut acknowledged = Vec::new();
    let mut refused = 0;
    for i in 0..5000 {
        let body = json!({"id": format!("INC-{i}"), "title": title, "trigger": {"source": "edr", "severity": "high"}});
        let (status, answer) = http(&addr, "POST", "/v1/tasks", &token, Some(&body)).unwrap();
        match status {
            201 => acknowledged.push(format!("INC-{i}")),
            503 => {
                assert_eq!(answer["error"]["code"], "store_unavailable", "{answer}");
                assert!(!answer.to_string().contains(mnt.path().to_str().unwrap()), "no path in the answer");
                refused += 1;
                if refused == 20 {
                    break;
                }
            }
            other => panic!("{other}: {answer}"),
        }
    }
    assert_eq!(refused, 20, "the disk never filled ({} acknowledged)", acknowledged.len());
    eprintln!("disk full after {} acknowledged tasks", acknowledged.len());
    assert!(!acknowledged.is_empty());
    assert_eq!(metric(&addr, "warden_store_failing"), 1.0);
    assert!(metric(&addr, "warden_store_write_failures_total") >= 20.0);
    // Reads still answer while writes cannot: every acknowledged task is there.
    for id in &acknowledged {
        let (status, task) = http(&addr, "GET", &format!("/v1/tasks/{id}"), &token, None).unwrap();
        assert_eq!(status, 200, "{id}: {task}");
    }

    // Space returns: the next write succeeds, with no restart and no operator.
    std::fs::write(out.path().join("release"), "").unwrap();
    wait_for_file(&out.path().join("released"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let recovered = loop {
        let body = json!({"id": "INC-after", "title": "after", "trigger": {"source": "edr", "severity": "high"}});
        let (status, answer) = http(&addr, "POST", "/v1/tasks", &token, Some(&body)).unwrap();
        if status == 201 {
            break true;
        }
        assert_eq!(status, 503, "{answer}");
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(recovered, "the server did not recover once space returned");
    assert_eq!(metric(&addr, "warden_store_failing"), 0.0);

    // Stopped cleanly, the log verifies: nothing the full disk refused corrupted it.
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let rc = wait_for(&out.path().join("verify.rc"), Duration::from_secs(60));
    let verify = std::fs::read_to_string(out.path().join("verify.out")).unwrap_or_default();
    assert_eq!(rc.trim(), "0", "audit verify: {verify}");
    assert!(!out.path().join("serve.rc").exists(), "the server exited with an error");
    let status = ns.wait().unwrap();
    let mut err = String::new();
    use std::io::Read as _;
    ns.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(status.success(), "{err}");
}

fn wait_for_file(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(Instant::now() < deadline, "`{}` never appeared", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}
