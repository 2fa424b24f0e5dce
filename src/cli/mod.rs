//! `outrigger instances ...`: list, inspect and act on instances of a running sidecar over
//! gRPC, from a terminal or a script. Tables for people, `--output json` for programs, and
//! exit codes a script can branch on (see [`exit`]).

mod commands;
mod table;

use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};

pub use commands::run;

/// Exit codes of `outrigger instances`.
pub mod exit {
    /// The command did what it was asked (for `watch` and `start --wait`: the instance completed).
    pub const OK: u8 = 0;
    /// The sidecar refused or failed the request for a reason not listed below.
    pub const FAILED: u8 = 1;
    /// Bad usage: an unknown flag, a malformed value, or input the sidecar rejected.
    pub const USAGE: u8 = 2;
    /// No instance with that id.
    pub const NOT_FOUND: u8 = 3;
    /// The instance is not in a state that allows it (live when it must be finished, an id
    /// already in use, not failed for a rewind).
    pub const CONFLICT: u8 = 4;
    /// `watch` or `start --wait`: the instance ended but did not complete (failed,
    /// terminated or canceled).
    pub const NOT_COMPLETED: u8 = 5;
    /// `start --wait`: the instance was still running when the wait ran out.
    pub const STILL_RUNNING: u8 = 6;
    /// The sidecar could not be reached (BSD EX_UNAVAILABLE, as the server uses).
    pub const UNAVAILABLE: u8 = 69;
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    Table,
    /// One JSON document (the HTTP API's shapes) for scripts.
    Json,
}

/// List, inspect and act on orchestration instances of a running sidecar (over gRPC).
///
/// Times are printed in UTC. Where a time is accepted, give RFC 3339 (2026-01-31T12:00:00Z,
/// or just 2026-01-31) or an age such as 90s, 15m, 2h or 7d (that long ago).
///
/// Exit codes: 0 done (watch, start --wait: completed); 1 the sidecar failed the request;
/// 2 bad usage or input; 3 no such instance; 4 the instance's state does not allow it;
/// 5 it ended without completing (failed, terminated, canceled); 6 still running when
/// --wait ran out; 69 the sidecar cannot be reached.
#[derive(Debug, Clone, Args)]
pub struct InstancesArgs {
    /// The sidecar's gRPC address.
    #[arg(long, env = "OUTRIGGER_ADDRESS", default_value = "http://localhost:4001", global = true)]
    pub address: String,

    /// The task hub to act on (sent as `taskhub` metadata); the default hub when not given.
    #[arg(long, env = "OUTRIGGER_TASK_HUB", global = true)]
    pub task_hub: Option<String>,

    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,

    #[command(subcommand)]
    pub command: InstancesCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum InstancesCommand {
    /// List instances, oldest first, one page at a time.
    List(ListArgs),
    /// Show one instance's status, input and output.
    Show { instance_id: String },
    /// Print an instance's history (its current execution).
    History { instance_id: String },
    /// Start an orchestration; prints its instance id.
    Start(StartArgs),
    /// Send an external event to an instance.
    Raise {
        instance_id: String,
        /// The event name the orchestration waits for.
        event: String,
        /// The event's data, as JSON (or @FILE to read it from a file).
        #[arg(long)]
        data: Option<String>,
    },
    /// Terminate an instance.
    Terminate {
        instance_id: String,
        /// Why; becomes the instance's output.
        #[arg(long)]
        reason: Option<String>,
        /// Terminate its running sub-orchestrations too.
        #[arg(long)]
        recursive: bool,
    },
    /// Suspend an instance (events raised meanwhile are kept).
    Suspend {
        instance_id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Resume a suspended instance.
    Resume {
        instance_id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Start a finished instance again with its original input; prints the instance id.
    Restart {
        instance_id: String,
        /// Run it under a new instance id (the old instance stays as it is).
        #[arg(long)]
        new_id: bool,
    },
    /// Rewind a failed instance so its failed tasks run again.
    Rewind {
        instance_id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Purge finished instances: one by id, or every one matching the filters.
    Purge(PurgeArgs),
    /// Follow an instance's history live, printing events as they happen, until it ends.
    Watch { instance_id: String },
}

#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Only these runtime statuses (Running, Pending, Completed, Failed, Terminated, Canceled,
    /// Suspended, ContinuedAsNew); repeat or separate with commas.
    #[arg(long, value_delimiter = ',')]
    pub status: Vec<String>,
    /// Only instance ids starting with this.
    #[arg(long)]
    pub prefix: Option<String>,
    /// Only instances created at or after this time (or age).
    #[arg(long)]
    pub created_after: Option<String>,
    /// Only instances created before this time (or age).
    #[arg(long)]
    pub created_before: Option<String>,
    /// Instances per page (at most 1000).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: u32,
    /// Continue from the page token a previous list printed.
    #[arg(long)]
    pub page_token: Option<String>,
    /// Fetch every page, not only the first.
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Clone, Args)]
pub struct StartArgs {
    /// The orchestrator to run, as the worker registered it.
    pub name: String,
    /// The instance id (default: a new random one).
    #[arg(long)]
    pub id: Option<String>,
    /// The input, as JSON (or @FILE to read it from a file).
    #[arg(long)]
    pub input: Option<String>,
    #[arg(long)]
    pub version: Option<String>,
    /// Wait up to this many seconds for the instance to finish, then print its status.
    #[arg(long)]
    pub wait: Option<f64>,
}

#[derive(Debug, Clone, Args)]
pub struct PurgeArgs {
    /// The instance to purge. Without it, the filters choose (at least one is required).
    pub instance_id: Option<String>,
    /// Only these final statuses (Completed, Failed, Terminated, Canceled); default all four.
    #[arg(long, value_delimiter = ',')]
    pub status: Vec<String>,
    /// Only instances created at or after this time (or age).
    #[arg(long)]
    pub created_after: Option<String>,
    /// Only instances created before this time (or age).
    #[arg(long)]
    pub created_before: Option<String>,
    /// Purge every finished instance (when no other filter is given).
    #[arg(long)]
    pub all: bool,
    /// Purge sub-orchestrations too.
    #[arg(long)]
    pub recursive: bool,
}

/// Runs a CLI command on its own runtime.
pub fn main(args: InstancesArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILED);
        }
    };
    ExitCode::from(runtime.block_on(run(args)))
}
