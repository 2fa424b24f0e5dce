//! The realistic-worker variant: hello5 run by bench/sdk_hello5.py through the Python SDK.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::driver::Outcome;

/// Runs the Python driver against `address` and reads its figures from its stdout.
pub async fn run(python: &Path, script: &Path, address: &str, count: usize, concurrency: usize) -> Result<(Outcome, u64), String> {
    // The SDK takes host:port, not a URL.
    let address = address.trim_start_matches("http://").trim_end_matches('/').to_string();
    let mut command = Command::new(python);
    command.arg(script).args([
        "--address",
        &address,
        "--count",
        &count.to_string(),
        "--concurrency",
        &concurrency.to_string(),
    ]);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| {
            format!(
                "cannot run {}: {e} (create the venv with ./bench.sh or sdk-tests/run.sh python)",
                python.display()
            )
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(10).collect();
        return Err(format!(
            "{} failed ({}):\n{}",
            script.display(),
            output.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .ok_or("the SDK driver printed no result")?;
    parse(line)
}

/// The driver's JSON result as an [`Outcome`] and the number of activities it ran.
fn parse(line: &str) -> Result<(Outcome, u64), String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("bad SDK driver output: {e}"))?;
    let field = |name: &str| {
        v.get(name)
            .and_then(Value::as_f64)
            .ok_or(format!("SDK driver output lacks '{name}'"))
    };
    let mut outcome = Outcome {
        completed: field("completed")? as usize,
        failed: field("failed")? as usize,
        elapsed: Duration::from_secs_f64(field("elapsed_s")?),
        latencies_ms: v
            .get("latencies_ms")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_f64)
            .collect(),
        ..Default::default()
    };
    for e in v.get("errors").and_then(Value::as_array).into_iter().flatten() {
        outcome.errors.add(e.as_str().unwrap_or_default().to_string());
    }
    Ok((outcome, field("activities")? as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_driver_result() {
        let line = r#"{"completed": 2, "failed": 1, "elapsed_s": 0.5, "activities": 10, "latencies_ms": [3.5, 4.0], "errors": ["x ended FAILED"]}"#;
        let (outcome, activities) = parse(line).expect("parse");
        assert_eq!((outcome.completed, outcome.failed, activities), (2, 1, 10));
        assert_eq!(outcome.elapsed, Duration::from_millis(500));
        assert_eq!(outcome.latencies_ms, vec![3.5, 4.0]);
        assert_eq!(outcome.errors.first, vec!["x ended FAILED".to_string()]);
        assert!(parse(r#"{"completed": 1}"#).is_err());
    }
}
