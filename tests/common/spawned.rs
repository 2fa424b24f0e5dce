//! The sidecar binary in a process of its own, for figures only a separate process gives
//! (its peak RSS, its CPU time, its log lines, a descriptor limit) and for signals. Killed
//! when dropped.
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
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Spawned {
    /// `outrigger` on a fresh SQLite file, gRPC and HTTP on ports of its choosing, with `args`.
    pub fn start(args: &[&str]) -> Spawned {
        Spawned::launch(None, args)
    }

    /// The same, with at most `fd_limit` open descriptors (`ulimit -n`).
    pub fn with_fd_limit(fd_limit: u32, args: &[&str]) -> Spawned {
        Spawned::launch(Some(fd_limit), args)
    }

    fn launch(fd_limit: Option<u32>, args: &[&str]) -> Spawned {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let binary = env!("CARGO_BIN_EXE_outrigger");
        let mut command = match fd_limit {
            // The shell lowers its limit and execs the sidecar, which keeps the shell's pid.
            Some(n) => {
                let mut sh = Command::new("sh");
                sh.arg("-c").arg(format!("ulimit -n {n} && exec \"$0\" \"$@\"")).arg(binary);
                sh
            }
            None => Command::new(binary),
        };
        let mut child = command
            .args(["--port", "0", "--http-port", "0", "--database-url", &url])
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run outrigger");
        // Every line goes to this test's stderr and to `lines`, for `wait_for_line`.
        let (tx, lines) = mpsc::channel::<String>();
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    eprintln!("sidecar: {line}");
                    let _ = tx.send(line);
                }
            });
        }
        let mut spawned = Spawned {
            child,
            addr: ([0, 0, 0, 0], 0).into(),
            http: ([0, 0, 0, 0], 0).into(),
            lines,
            seen: vec![],
            _dir: dir,
        };
        let after = |line: String, key: &str| -> SocketAddr {
            let addr = line.split(key).nth(1).and_then(|a| a.split_whitespace().next());
            addr.and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("no address in {line:?}"))
        };
        spawned.addr = after(spawned.wait_for_line("listening addr="), "listening addr=");
        spawned.http = after(spawned.wait_for_line("listening http="), "listening http=");
        spawned
    }

    /// The first log line (seen before or from now on, for at most 30 s) containing `needle`.
    pub fn wait_for_line(&mut self, needle: &str) -> String {
        if let Some(l) = self.seen.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                Err(_) => panic!("no log line with {needle:?}; seen: {:#?}", self.seen),
            }
        }
    }

    /// User and system CPU time the process has used so far.
    pub fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).expect("read stat");
        // Fields after the command name (which ends with the last ')'): utime is the 12th.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // Linux reports CPU time in USER_HZ, 100 per second on every architecture it runs on.
        Duration::from_millis(ticks * 10)
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
