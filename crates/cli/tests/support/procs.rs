//! Child processes of the real `warden` binary, shared by the CLI tests (`tests/it`) and the
//! soak bench (`benches/soak.rs`): the lab estate on a free port with the keys it prints, the
//! server's printed address, and a guard that kills what it holds when dropped.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A child process, killed and reaped when dropped.
#[derive(Debug)]
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `warden lab serve` (the binary at `warden`) on a free port, each call delayed by
/// `delay_ms`: the process, its address and the keys it printed (`NAME`, value).
pub fn spawn_lab(warden: &Path, delay_ms: u64) -> (Running, String, Vec<(String, String)>) {
    let mut lab = Command::new(warden)
        .args(["lab", "serve", "--listen", "127.0.0.1:0", "--delay-ms", &delay_ms.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(lab.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let addr = line.trim().strip_prefix("lab estate listening on ").expect("the address is printed").to_string();
    let mut keys = Vec::new();
    // One line per key the lab prints (`warden_lab::Keys::env`).
    for _ in 0..7 {
        line.clear();
        out.read_line(&mut line).unwrap();
        let (k, v) = line.trim().strip_prefix("export ").unwrap().split_once('=').unwrap();
        keys.push((k.to_string(), v.to_string()));
    }
    (Running(lab), addr, keys)
}

/// Starts `cmd` (a `warden serve … --listen 127.0.0.1:0`) and reads the address it prints on
/// its first `listening on` line (a wrapper such as a profiler may print before it).
pub fn spawn_server(cmd: &mut Command) -> (Running, String) {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "the server exited before listening");
        if let Some(a) = line.trim().strip_prefix("listening on ") {
            break a.to_string();
        }
    };
    (Running(child), addr)
}
