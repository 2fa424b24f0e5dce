//! The sidecar binary in a process of its own, for figures only a separate process gives
//! (its peak RSS) and for signals. Killed when dropped.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::Client;

pub struct Spawned {
    child: Child,
    pub addr: SocketAddr,
    pub http: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Spawned {
    /// `outrigger` on a fresh SQLite file, gRPC and HTTP on ports of its choosing, with `args`.
    pub fn start(args: &[&str]) -> Spawned {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let mut child = Command::new(env!("CARGO_BIN_EXE_outrigger"))
            .args(["--port", "0", "--http-port", "0", "--database-url", &url])
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run outrigger");
        let (tx, lines) = mpsc::channel::<String>();
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if tx.send(line.clone()).is_err() {
                        eprintln!("sidecar: {line}");
                    }
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let (mut addr, mut http) = (None, None);
        while addr.is_none() || http.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = lines.recv_timeout(left).expect("the sidecar to say where it listens");
            let after = |key: &str| {
                line.split(key)
                    .nth(1)
                    .map(|a| a.split_whitespace().next().unwrap().parse().unwrap())
            };
            if line.contains("listening http=") {
                http = after("listening http=");
            } else if line.contains("listening addr=") {
                addr = after("listening addr=");
            }
        }
        // Later lines go to this test's stderr.
        std::thread::spawn(move || lines.iter().for_each(|l| eprintln!("sidecar: {l}")));
        Spawned {
            child,
            addr: addr.unwrap(),
            http: http.unwrap(),
            _dir: dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub async fn client(&self) -> Client {
        Client::connect(format!("http://{}", self.addr)).await.expect("connect")
    }

    /// A field of /proc/<pid>/status in KiB (VmRSS now, VmHWM the peak).
    pub fn kib(&self, field: &str) -> u64 {
        proc_status_kib(self.pid(), field)
    }

    /// A gauge or counter from the metrics endpoint (the first sample of that name).
    pub fn metric(&self, name: &str) -> f64 {
        let mut conn = std::net::TcpStream::connect(self.http).expect("connect http");
        write!(conn, "GET /metrics HTTP/1.1\r\nHost: sidecar\r\nConnection: close\r\n\r\n").unwrap();
        let mut body = String::new();
        conn.read_to_string(&mut body).expect("metrics");
        body.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("no {name} in the metrics"))
            .trim()
            .parse()
            .expect("a number")
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field).and_then(|r| r.strip_prefix(':')))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Polls `condition` (a cheap read of the sidecar's state) until it holds, for at most 30 s.
pub async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
