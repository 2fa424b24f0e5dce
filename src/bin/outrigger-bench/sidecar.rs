//! The sidecar under test: spawning one, and reading its CPU time and memory from /proc.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Reads the CPU time and memory high-water mark of one or more processes (Linux /proc):
/// CPU is added up over them, memory is the largest of them.
#[derive(Debug, Clone)]
pub struct Probe {
    pids: Vec<u32>,
    ticks_per_second: f64,
}

impl Probe {
    pub fn new(pids: Vec<u32>) -> Probe {
        Probe {
            pids,
            ticks_per_second: clock_ticks(),
        }
    }

    /// User plus system CPU seconds the processes have used so far, all threads included.
    pub fn cpu_seconds(&self) -> Option<f64> {
        let mut ticks = 0;
        for pid in &self.pids {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            ticks += cpu_ticks(&stat)?;
        }
        Some(ticks as f64 / self.ticks_per_second)
    }

    /// Peak resident set size in MiB (VmHWM) since start or since the last [`Probe::reset_peak`].
    pub fn peak_rss_mib(&self) -> Option<f64> {
        self.status_kib("VmHWM:").map(|k| k as f64 / 1024.0)
    }

    /// Current resident set size in MiB (VmRSS).
    pub fn rss_mib(&self) -> Option<f64> {
        self.status_kib("VmRSS:").map(|k| k as f64 / 1024.0)
    }

    /// Restarts the peak RSS from the current RSS, so each workload reports its own peak.
    /// Needs permission to write the processes' clear_refs; returns whether it worked.
    pub fn reset_peak(&self) -> bool {
        self.pids
            .iter()
            .all(|pid| std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok())
    }

    fn status_kib(&self, key: &str) -> Option<u64> {
        self.pids
            .iter()
            .map(|pid| {
                let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
                status_field_kib(&status, key)
            })
            .collect::<Option<Vec<u64>>>()?
            .into_iter()
            .max()
    }
}

/// utime + stime in clock ticks from a /proc/PID/stat line. The command name (field 2) may
/// hold spaces and parentheses, so fields are counted after its closing parenthesis.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ")" the first field is field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some(utime + stime)
}

fn status_field_kib(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// The kernel's clock tick rate for /proc CPU times (USER_HZ), 100 on every common Linux.
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// An outrigger process started by the bench on a free port; killed when dropped.
pub struct Spawned {
    child: Child,
    pub address: String,
}

impl Spawned {
    /// Starts `binary` on 127.0.0.1 with a free port for its listener `port_flag` (`--port` or
    /// `--dapr-port`) and `database_url`, and waits until it logs its listening address. Its log goes to `log`. A sidecar that exits first (for example
    /// because it does not support the database URL) is an error carrying its last log lines.
    pub fn start(binary: &Path, port_flag: &str, database_url: &str, log: &Path) -> Result<Spawned, String> {
        let mut child = Command::new(binary)
            .args(["--host", "127.0.0.1", port_flag, "0", "--database-url", database_url])
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let stderr = child.stderr.take().expect("stderr is piped");
        let mut file = File::create(log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let (tx, rx) = mpsc::channel();
        // The log is drained for the process's whole life so its pipe never fills up.
        std::thread::spawn(move || {
            let mut address_sent = false;
            let mut early = vec![];
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = writeln!(file, "{line}");
                if address_sent {
                    continue;
                }
                if let Some(address) = line.split("listening addr=").nth(1) {
                    let address = address.split_whitespace().next().unwrap_or_default().to_string();
                    let _ = tx.send(Ok(address));
                    address_sent = true;
                } else {
                    early.push(line);
                }
            }
            if !address_sent {
                let tail = early.iter().rev().take(5).rev().cloned().collect::<Vec<_>>().join("\n");
                let _ = tx.send(Err(tail));
            }
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Ok(address)) => Ok(Spawned {
                child,
                address: format!("http://{address}"),
            }),
            Ok(Err(tail)) => {
                let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
                Err(format!("the sidecar exited before listening ({status}):\n{tail}"))
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                Err("the sidecar did not report a listening address within 60 s".into())
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_skip_a_command_name_with_spaces() {
        let stat = "4242 (tokio rt) worker) S 1 4242 4242 0 -1 4194560 500 0 0 0 731 269 0 0 20 0 7 0 100 0 0";
        assert_eq!(cpu_ticks(stat), Some(1000));
        assert_eq!(cpu_ticks("garbage"), None);
    }

    #[test]
    fn status_fields_in_kib() {
        let status = "Name:\toutrigger\nVmPeak:\t  300000 kB\nVmHWM:\t   51200 kB\nVmRSS:\t   40960 kB\n";
        assert_eq!(status_field_kib(status, "VmHWM:"), Some(51200));
        assert_eq!(status_field_kib(status, "VmRSS:"), Some(40960));
        assert_eq!(status_field_kib(status, "VmSwap:"), None);
    }

    #[test]
    fn probe_reads_this_process() {
        let probe = Probe::new(vec![std::process::id()]);
        assert!(probe.cpu_seconds().is_some());
        assert!(probe.peak_rss_mib().expect("VmHWM") > 0.0);
        assert!(probe.rss_mib().expect("VmRSS") > 0.0);
    }
}
