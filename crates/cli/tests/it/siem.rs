//! SIEM streaming (DESIGN §7), black box: the real server streams its audit log to the lab's
//! HEC-shaped receiver while agents work, and is killed with SIGKILL mid-stream three times.
//! After the last restart every exported entry has arrived — duplicates are allowed and
//! counted, gaps are not — and the receiver took only well-formed events with the right token.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::kill::client;
use crate::respond::start_lab;
use crate::serve::{http, stdout_of};
use crate::{edit, example_copy, warden};

const EDR: &str = "spiffe://acme.example/soc/edr-responder";
const ENRICH: &str = "spiffe://acme.example/soc/enrichment-bot";

fn metric(addr: &str, line: &str) -> Option<u64> {
    let (_, body) = http(addr, "GET", "/metrics", "-", None).ok()?;
    body.as_str()?.lines().find_map(|l| l.strip_prefix(line)?.trim().parse().ok())
}

#[test]
fn a_server_killed_mid_stream_resumes_and_no_entry_is_missing() {
    let (_lab, lab, keys) = start_lab(0);
    let policy = example_copy();
    edit(policy.path(), "agents/edr-responder.toml", "max_per_hour = 10", "max_per_hour = 100000");
    edit(policy.path(), "agents/enrichment-bot.toml", "max_per_hour = 5000", "max_per_hour = 100000");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    crate::serve::init_admin(&data);
    stdout_of(&data, &["agent", "add", EDR, "--owner", "team:endpoint-response"]);
    stdout_of(&data, &["agent", "add", ENRICH, "--owner", "team:soc-engineering"]);
    let tokens = Arc::new((
        stdout_of(&data, &["agent", "token", EDR, "--ttl", "1h"]).trim().to_string(),
        stdout_of(&data, &["agent", "token", ENRICH, "--ttl", "1h"]).trim().to_string(),
    ));
    // Small batches: the sink is always a little behind the agents, so a kill lands mid-stream.
    let config = tmp.path().join("warden.toml");
    std::fs::write(
        &config,
        format!(
            "[[siem.sinks]]\nname = \"splunk\"\nkind = \"splunk_hec\"\nurl = \"http://{lab}/services/collector/event\"\n\
             token = \"secret:LAB_HEC_TOKEN\"\nbatch = 3\ntimeout = \"2s\"\n"
        ),
    )
    .unwrap();
    let start = || {
        let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("warden"));
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--agent-rate", "100000", "--agent-burst", "100000"]);
        for tool in ["edr", "siem"] {
            cmd.arg("--tool-url").arg(format!("{tool}=http://{lab}"));
        }
        cmd.arg("--data").arg(&data).arg("--policy").arg(policy.path()).arg("--config").arg(&config);
        cmd.envs(keys.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        crate::procs::spawn_server(&mut cmd)
    };
    let received = || -> Vec<u64> {
        let (_, v) = http(&lab, "GET", "/siem/received", "-", None).unwrap();
        v["hec"].as_array().into_iter().flatten().filter_map(Value::as_u64).collect()
    };

    let mut kills_mid_stream = 0;
    for round in 0..3 {
        let (server, addr) = start();
        if round == 0 {
            let task = json!({"id": "INC-9", "title": "siem test", "trigger": {"source": "edr", "severity": "high"}});
            assert_eq!(http(&addr, "POST", "/v1/tasks", &tokens.0, Some(&task)).unwrap().0, 201);
            let task = json!({"id": "INC-10", "title": "siem test", "trigger": {"source": "siem", "severity": "high"}});
            assert_eq!(http(&addr, "POST", "/v1/tasks", &tokens.1, Some(&task)).unwrap().0, 201);
        }
        let acks = Arc::new(Mutex::new(Vec::new()));
        let clients: Vec<_> = (0..3)
            .map(|me| {
                let (addr, tokens, acks) = (addr.clone(), tokens.clone(), acks.clone());
                std::thread::spawn(move || {
                    client(&addr, &tokens, &format!("{round}-{me}"), &AtomicBool::new(false), &acks)
                })
            })
            .collect();
        // Kill once the sink has sent something in this round and is still behind.
        let before = received().len();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let behind = metric(&addr, "warden_siem_backlog{sink=\"splunk\"}").unwrap_or(0);
            if received().len() > before + 10 && behind > 0 {
                kills_mid_stream += 1;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(server); // SIGKILL
        for c in clients {
            c.join().expect("a client failed on an answer it received");
        }
    }
    assert_eq!(kills_mid_stream, 3, "each kill landed while the sink was behind");

    // The last restart, no load: the sink catches up from its durable cursor.
    let (server, addr) = start();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if metric(&addr, "warden_siem_backlog{sink=\"splunk\"}") == Some(0) {
            break;
        }
        assert!(Instant::now() < deadline, "the sink did not catch up");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(server);
    warden().arg("audit").arg("verify").arg("--data").arg(&data).assert().success();

    // What the SIEM must have: every entry the OCSF export holds.
    let out = warden().args(["audit", "export", "--format", "ocsf", "--data"]).arg(&data).assert().success();
    let want: Vec<u64> = String::from_utf8_lossy(&out.get_output().stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["metadata"]["sequence"].as_u64().unwrap())
        .collect();
    let got = received();
    let mut times: BTreeMap<u64, u64> = BTreeMap::new();
    for seq in &got {
        *times.entry(*seq).or_default() += 1;
    }
    let missing: Vec<&u64> = want.iter().filter(|s| !times.contains_key(s)).collect();
    assert!(missing.is_empty(), "{} gaps, the first: {:?}", missing.len(), &missing[..missing.len().min(10)]);
    let unknown: Vec<&u64> = times.keys().filter(|s| !want.contains(s)).collect();
    assert!(
        unknown.is_empty(),
        "{} events the log does not hold: {:?}",
        unknown.len(),
        &unknown[..unknown.len().min(10)]
    );
    let duplicates = got.len() - times.len();
    eprintln!(
        "siem kill test: {} entries exported, {} events received, {duplicates} duplicates over 3 kills",
        want.len(),
        got.len()
    );
    // At least once, never more than a batch again per kill.
    assert!(duplicates <= 3 * 3, "{duplicates} duplicates");
}
