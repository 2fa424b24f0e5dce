//! The commands: each builds a gRPC request, calls the sidecar and prints the answer.

use std::time::Duration;

use serde_json::{Value, json};
use tonic::codegen::InterceptedService;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use super::{InstancesArgs, InstancesCommand, ListArgs, Output, PurgeArgs, StartArgs, exit, table};
use crate::engine::events::kind_name;
use crate::http::payload::{self, Show};
use crate::model::{is_terminal, parse_runtime_status, runtime_status_name};
use crate::proto::history_event::EventType;
use crate::proto::purge_instances_request::Request as PurgeTarget;
use crate::proto::task_hub_sidecar_service_client::TaskHubSidecarServiceClient;
use crate::proto::*;
use crate::rfc3339::{self, Precision};
use crate::time::{self, Clock, Micros, SystemClock};

type Client = TaskHubSidecarServiceClient<InterceptedService<Channel, TaskHub>>;

/// Sends `taskhub: NAME` on every call when a task hub other than the default one is chosen.
#[derive(Clone)]
struct TaskHub(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for TaskHub {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(name) = &self.0 {
            request.metadata_mut().insert(crate::taskhub::HEADER, name.clone());
        }
        Ok(request)
    }
}

/// The `--task-hub` value as metadata, checked by the sidecar's own rules.
fn task_hub(name: Option<&str>) -> Result<TaskHub, Failure> {
    let Some(name) = name else { return Ok(TaskHub(None)) };
    let name = crate::taskhub::parse(name).map_err(|e| usage(format!("--task-hub: {e}")))?;
    Ok(TaskHub(name.map(|n| n.parse().expect("hub names are plain ASCII"))))
}

/// Why a command stopped: an exit code and what to tell the user.
struct Failure(u8, String);

type Outcome = Result<u8, Failure>;

fn usage(message: impl Into<String>) -> Failure {
    Failure(exit::USAGE, message.into())
}

/// The exit code for a gRPC status, with its message.
fn from_status(s: Status) -> Failure {
    let code = match s.code() {
        Code::NotFound => exit::NOT_FOUND,
        Code::AlreadyExists | Code::FailedPrecondition => exit::CONFLICT,
        Code::InvalidArgument | Code::OutOfRange => exit::USAGE,
        Code::Unavailable => exit::UNAVAILABLE,
        _ => exit::FAILED,
    };
    Failure(code, s.message().to_string())
}

pub async fn run(args: InstancesArgs) -> u8 {
    match execute(args).await {
        Ok(code) => code,
        Err(Failure(code, message)) => {
            eprintln!("error: {message}");
            code
        }
    }
}

async fn connect(address: &str, hub: TaskHub) -> Result<Client, Failure> {
    let url = if address.contains("://") {
        address.to_string()
    } else {
        format!("http://{address}")
    };
    let endpoint = Endpoint::from_shared(url.clone())
        .map_err(|e| usage(format!("--address '{address}' is not a URL: {e}")))?
        .connect_timeout(Duration::from_secs(5));
    let channel = endpoint.connect().await.map_err(|e| {
        let cause = std::error::Error::source(&e).map(|c| format!(": {c}")).unwrap_or_default();
        Failure(exit::UNAVAILABLE, format!("cannot reach the sidecar at {url}{cause}"))
    })?;
    Ok(TaskHubSidecarServiceClient::with_interceptor(channel, hub).max_decoding_message_size(64 << 20))
}

async fn execute(args: InstancesArgs) -> Outcome {
    let out = args.output;
    // Check arguments before connecting, so usage errors do not depend on a sidecar.
    let hub = task_hub(args.task_hub.as_deref())?;
    match &args.command {
        InstancesCommand::List(l) => {
            list_query(l)?;
        }
        InstancesCommand::Start(s) => {
            json_arg("--input", s.input.as_deref())?;
        }
        InstancesCommand::Raise { data, .. } => {
            json_arg("--data", data.as_deref())?;
        }
        InstancesCommand::Purge(p) => {
            purge_request(p)?;
        }
        _ => {}
    }
    let mut client = connect(&args.address, hub).await?;
    match args.command {
        InstancesCommand::List(l) => list(&mut client, &l, out).await,
        InstancesCommand::Show { instance_id } => show(&mut client, &instance_id, out).await,
        InstancesCommand::History { instance_id } => history(&mut client, &instance_id, out).await,
        InstancesCommand::Start(s) => start(&mut client, s, out).await,
        InstancesCommand::Raise { instance_id, event, data } => {
            let request = RaiseEventRequest {
                instance_id: instance_id.clone(),
                name: event.clone(),
                input: json_arg("--data", data.as_deref())?,
            };
            client.raise_event(request).await.map_err(from_status)?;
            done(out, &instance_id, "raise", &format!("raised event '{event}' to {instance_id}"))
        }
        InstancesCommand::Terminate {
            instance_id,
            reason,
            recursive,
        } => {
            let request = TerminateRequest {
                instance_id: instance_id.clone(),
                output: reason.map(|r| Value::String(r).to_string()),
                recursive,
            };
            client.terminate_instance(request).await.map_err(from_status)?;
            done(out, &instance_id, "terminate", &format!("terminating {instance_id}"))
        }
        InstancesCommand::Suspend { instance_id, reason } => {
            let request = SuspendRequest {
                instance_id: instance_id.clone(),
                reason,
            };
            client.suspend_instance(request).await.map_err(from_status)?;
            done(out, &instance_id, "suspend", &format!("suspending {instance_id}"))
        }
        InstancesCommand::Resume { instance_id, reason } => {
            let request = ResumeRequest {
                instance_id: instance_id.clone(),
                reason,
            };
            client.resume_instance(request).await.map_err(from_status)?;
            done(out, &instance_id, "resume", &format!("resuming {instance_id}"))
        }
        InstancesCommand::Restart { instance_id, new_id } => {
            let request = RestartInstanceRequest {
                instance_id,
                restart_with_new_instance_id: new_id,
            };
            let id = client
                .restart_instance(request)
                .await
                .map_err(from_status)?
                .into_inner()
                .instance_id;
            print_id(out, &id);
            Ok(exit::OK)
        }
        InstancesCommand::Rewind { instance_id, reason } => {
            let request = RewindInstanceRequest {
                instance_id: instance_id.clone(),
                reason,
            };
            client.rewind_instance(request).await.map_err(from_status)?;
            done(out, &instance_id, "rewind", &format!("rewinding {instance_id}"))
        }
        InstancesCommand::Purge(p) => purge(&mut client, &p, out).await,
        InstancesCommand::Watch { instance_id } => watch(&mut client, &instance_id, out).await,
    }
}

fn done(out: Output, id: &str, action: &str, text: &str) -> Outcome {
    match out {
        Output::Table => println!("{text}"),
        Output::Json => println!("{}", json!({ "instanceId": id, "action": action, "accepted": true })),
    }
    Ok(exit::OK)
}

fn print_id(out: Output, id: &str) {
    match out {
        Output::Table => println!("{id}"),
        Output::Json => println!("{}", json!({ "instanceId": id })),
    }
}

/// A JSON argument (or @FILE), checked here so a typo fails before anything is sent.
fn json_arg(flag: &str, value: Option<&str>) -> Result<Option<String>, Failure> {
    let Some(value) = value else { return Ok(None) };
    let text = match value.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).map_err(|e| usage(format!("{flag}: cannot read {path}: {e}")))?,
        None => value.to_string(),
    };
    serde_json::from_str::<Value>(&text).map_err(|e| usage(format!("{flag} is not valid JSON ({e}); quote strings: '\"text\"'")))?;
    Ok(Some(text.trim().to_string()))
}

/// An RFC 3339 time or an age ("15m": fifteen minutes ago).
fn when(flag: &str, text: &str) -> Result<prost_types::Timestamp, Failure> {
    let units = [('s', 1_000_000), ('m', 60_000_000), ('h', 3_600_000_000), ('d', 86_400_000_000)];
    if let Some((unit, us)) = units.iter().find(|(u, _)| text.ends_with(*u))
        && let Ok(n) = text[..text.len() - unit.len_utf8()].parse::<u32>()
    {
        // An age counts back from this machine's clock: the CLI is a client of the sidecar.
        return Ok(time::to_timestamp(SystemClock.now() - Micros::from(n) * us));
    }
    rfc3339::parse(text)
        .map(time::to_timestamp)
        .map_err(|e| usage(format!("{flag}: {e}, or an age such as 15m, 2h, 7d")))
}

fn statuses(values: &[String]) -> Result<Vec<i32>, Failure> {
    values
        .iter()
        .filter(|v| !v.trim().is_empty())
        .map(|v| {
            parse_runtime_status(v)
                .map(|s| s as i32)
                .map_err(|e| usage(format!("--status: {e}")))
        })
        .collect()
}

fn list_query(l: &ListArgs) -> Result<InstanceQuery, Failure> {
    Ok(InstanceQuery {
        runtime_status: statuses(&l.status)?,
        created_time_from: l.created_after.as_deref().map(|t| when("--created-after", t)).transpose()?,
        created_time_to: l.created_before.as_deref().map(|t| when("--created-before", t)).transpose()?,
        max_instance_count: l.limit as i32,
        continuation_token: l.page_token.clone(),
        instance_id_prefix: l.prefix.clone(),
        fetch_inputs_and_outputs: false,
        ..Default::default()
    })
}

fn time_text(ts: &Option<prost_types::Timestamp>) -> String {
    ts.as_ref()
        .map(|t| rfc3339::format(t.seconds * 1_000_000 + i64::from(t.nanos) / 1000, Precision::Seconds))
        .unwrap_or_else(|| "-".into())
}

fn status_name(s: &OrchestrationState) -> &'static str {
    runtime_status_name(OrchestrationStatus::try_from(s.orchestration_status).unwrap_or(OrchestrationStatus::Running))
}

async fn list(client: &mut Client, l: &ListArgs, out: Output) -> Outcome {
    let mut query = list_query(l)?;
    let mut all = vec![];
    let next = loop {
        let page = client
            .query_instances(QueryInstancesRequest {
                query: Some(query.clone()),
            })
            .await
            .map_err(from_status)?
            .into_inner();
        all.extend(page.orchestration_state);
        match page.continuation_token.filter(|t| !t.is_empty()) {
            Some(token) if l.all => query.continuation_token = Some(token),
            other => break other,
        }
    };
    match out {
        Output::Json => {
            let items: Vec<Value> = all.iter().map(|s| Value::Object(payload::status(s, Show::default()))).collect();
            println!("{}", json!({ "instances": items, "continuationToken": next }));
        }
        Output::Table => {
            let rows: Vec<Vec<String>> = all
                .iter()
                .map(|s| {
                    vec![
                        s.instance_id.clone(),
                        s.name.clone(),
                        status_name(s).to_string(),
                        time_text(&s.created_timestamp),
                        time_text(&s.last_updated_timestamp),
                    ]
                })
                .collect();
            print!("{}", table::render(&["INSTANCE ID", "NAME", "STATUS", "CREATED", "UPDATED"], &rows));
            if let Some(token) = next {
                println!("more: --page-token '{token}'");
            }
        }
    }
    Ok(exit::OK)
}

async fn get(client: &mut Client, id: &str) -> Result<OrchestrationState, Failure> {
    let request = GetInstanceRequest {
        instance_id: id.to_string(),
        get_inputs_and_outputs: true,
    };
    let r = client.get_instance(request).await.map_err(from_status)?.into_inner();
    r.orchestration_state
        .ok_or_else(|| Failure(exit::NOT_FOUND, format!("no instance with id '{id}'")))
}

fn print_state(s: &OrchestrationState, out: Output) {
    match out {
        Output::Json => {
            let status = payload::status(s, Show { input: true, output: true });
            println!("{}", Value::Object(status));
        }
        Output::Table => {
            let text = |v: &Option<String>| v.as_deref().map(|t| table::short(t, 200)).unwrap_or_else(|| "-".into());
            let mut rows = vec![
                vec!["instance id".into(), s.instance_id.clone()],
                vec!["name".into(), s.name.clone()],
                vec!["status".into(), status_name(s).into()],
                vec!["created".into(), time_text(&s.created_timestamp)],
                vec!["updated".into(), time_text(&s.last_updated_timestamp)],
                vec!["input".into(), text(&s.input)],
                vec!["output".into(), text(&s.output)],
                vec!["custom status".into(), text(&s.custom_status)],
            ];
            if let Some(f) = &s.failure_details {
                rows.push(vec![
                    "failure".into(),
                    table::short(&format!("{}: {}", f.error_type, f.error_message), 200),
                ]);
            }
            if let Some(p) = s.parent_instance_id.as_deref().filter(|p| !p.is_empty()) {
                rows.push(vec!["parent".into(), p.into()]);
            }
            // Key/value lines: no header row.
            let rendered = table::render(&["", ""], &rows);
            print!("{}", rendered.split_once('\n').map(|(_, rest)| rest).unwrap_or_default());
        }
    }
}

async fn show(client: &mut Client, id: &str, out: Output) -> Outcome {
    let s = get(client, id).await?;
    print_state(&s, out);
    Ok(exit::OK)
}

async fn fetch_history(client: &mut Client, id: &str) -> Result<Vec<HistoryEvent>, Failure> {
    let request = StreamInstanceHistoryRequest {
        instance_id: id.to_string(),
        ..Default::default()
    };
    let mut stream = client.stream_instance_history(request).await.map_err(from_status)?.into_inner();
    let mut events = vec![];
    while let Some(chunk) = stream.message().await.map_err(from_status)? {
        events.extend(chunk.events);
    }
    Ok(events)
}

/// What a history line says besides its type.
fn details(e: &HistoryEvent) -> String {
    let payload = |v: &Option<String>| v.as_deref().map(|t| table::short(t, 60)).unwrap_or_default();
    let failure = |f: &Option<TaskFailureDetails>| {
        f.as_ref()
            .map(|f| table::short(&format!("{}: {}", f.error_type, f.error_message), 80))
            .unwrap_or_default()
    };
    match &e.event_type {
        Some(EventType::ExecutionStarted(s)) => format!("{} {}", s.name, payload(&s.input)),
        Some(EventType::ExecutionCompleted(c)) => {
            let status = OrchestrationStatus::try_from(c.orchestration_status).unwrap_or(OrchestrationStatus::Completed);
            format!(
                "{} {}{}",
                runtime_status_name(status),
                payload(&c.result),
                failure(&c.failure_details)
            )
        }
        Some(EventType::ExecutionTerminated(t)) => payload(&t.input),
        Some(EventType::TaskScheduled(t)) => format!("{} {}", t.name, payload(&t.input)),
        Some(EventType::TaskCompleted(c)) => format!("task {} {}", c.task_scheduled_id, payload(&c.result)),
        Some(EventType::TaskFailed(f)) => format!("task {} {}", f.task_scheduled_id, failure(&f.failure_details)),
        Some(EventType::SubOrchestrationInstanceCreated(c)) => format!("{} {}", c.name, c.instance_id),
        Some(EventType::SubOrchestrationInstanceCompleted(c)) => format!("task {} {}", c.task_scheduled_id, payload(&c.result)),
        Some(EventType::SubOrchestrationInstanceFailed(f)) => format!("task {} {}", f.task_scheduled_id, failure(&f.failure_details)),
        Some(EventType::TimerCreated(t)) => format!("fires {}", time_text(&t.fire_at)),
        Some(EventType::TimerFired(t)) => format!("timer {}", t.timer_id),
        Some(EventType::EventRaised(r)) => format!("{} {}", r.name, payload(&r.input)),
        Some(EventType::EventSent(s)) => format!("{} to {}", s.name, s.instance_id),
        Some(EventType::ContinueAsNew(c)) => payload(&c.input),
        Some(EventType::ExecutionSuspended(s)) => payload(&s.input),
        Some(EventType::ExecutionResumed(r)) => payload(&r.input),
        Some(EventType::ExecutionRewound(r)) => payload(&r.reason),
        _ => String::new(),
    }
    .trim()
    .to_string()
}

fn history_rows(events: &[HistoryEvent]) -> Vec<Vec<String>> {
    events
        .iter()
        .map(|e| {
            vec![
                e.timestamp
                    .as_ref()
                    .map(|t| rfc3339::format(t.seconds * 1_000_000 + i64::from(t.nanos) / 1000, Precision::Millis))
                    .unwrap_or_default(),
                kind_name(e).to_string(),
                e.event_id.to_string(),
                details(e),
            ]
        })
        .collect()
}

const HISTORY_HEADER: [&str; 4] = ["TIME", "EVENT", "ID", "DETAILS"];

async fn history(client: &mut Client, id: &str, out: Output) -> Outcome {
    let events = fetch_history(client, id).await?;
    match out {
        Output::Json => println!("{}", Value::Array(payload::history(&events, true))),
        Output::Table => print!("{}", table::render(&HISTORY_HEADER, &history_rows(&events))),
    }
    Ok(exit::OK)
}

/// The exit code for how an instance ended.
fn ended(s: &OrchestrationState) -> u8 {
    if s.orchestration_status == OrchestrationStatus::Completed as i32 {
        exit::OK
    } else {
        exit::NOT_COMPLETED
    }
}

async fn start(client: &mut Client, s: StartArgs, out: Output) -> Outcome {
    let wait = match s.wait {
        Some(w) if !(w.is_finite() && w >= 0.0) => return Err(usage("--wait must be a number of seconds")),
        w => w.map(Duration::from_secs_f64),
    };
    let request = CreateInstanceRequest {
        instance_id: s.id.unwrap_or_default(),
        name: s.name,
        version: s.version,
        input: json_arg("--input", s.input.as_deref())?,
        ..Default::default()
    };
    let id = client.start_instance(request).await.map_err(from_status)?.into_inner().instance_id;
    let Some(wait) = wait else {
        print_id(out, &id);
        return Ok(exit::OK);
    };
    let mut request = tonic::Request::new(GetInstanceRequest {
        instance_id: id.clone(),
        get_inputs_and_outputs: true,
    });
    request.set_timeout(wait);
    match client.wait_for_instance_completion(request).await {
        Ok(r) => {
            let state = r
                .into_inner()
                .orchestration_state
                .ok_or_else(|| Failure(exit::NOT_FOUND, format!("instance '{id}' was purged while waiting")))?;
            print_state(&state, out);
            Ok(ended(&state))
        }
        Err(e) if matches!(e.code(), Code::DeadlineExceeded | Code::Cancelled) => {
            print_state(&get(client, &id).await?, out);
            Ok(exit::STILL_RUNNING)
        }
        Err(e) => Err(from_status(e)),
    }
}

fn purge_request(p: &PurgeArgs) -> Result<PurgeInstancesRequest, Failure> {
    let filtered = !p.status.is_empty() || p.created_after.is_some() || p.created_before.is_some();
    let request = match &p.instance_id {
        Some(id) if filtered || p.all => return Err(usage("give an instance id or filters, not both")),
        Some(id) => PurgeTarget::InstanceId(id.clone()),
        None if !filtered && !p.all => {
            return Err(usage(
                "purge needs an instance id, a filter (--status, --created-after, --created-before) or --all",
            ));
        }
        None => PurgeTarget::PurgeInstanceFilter(PurgeInstanceFilter {
            created_time_from: p.created_after.as_deref().map(|t| when("--created-after", t)).transpose()?,
            created_time_to: p.created_before.as_deref().map(|t| when("--created-before", t)).transpose()?,
            runtime_status: statuses(&p.status)?,
            timeout: None,
        }),
    };
    Ok(PurgeInstancesRequest {
        request: Some(request),
        recursive: p.recursive,
        ..Default::default()
    })
}

async fn purge(client: &mut Client, p: &PurgeArgs, out: Output) -> Outcome {
    let r = client.purge_instances(purge_request(p)?).await.map_err(from_status)?.into_inner();
    if let Some(id) = &p.instance_id
        && r.deleted_instance_count == 0
    {
        return Err(Failure(exit::NOT_FOUND, format!("no instance with id '{id}'")));
    }
    match out {
        Output::Json => println!(
            "{}",
            json!({ "instancesDeleted": r.deleted_instance_count, "isComplete": r.is_complete.unwrap_or(true) })
        ),
        Output::Table => println!("purged {} instance(s)", r.deleted_instance_count),
    }
    Ok(exit::OK)
}

/// Prints history events as they are appended until the instance finishes. Between looks it
/// waits on WaitForInstanceCompletion, so the end is seen the moment it happens.
async fn watch(client: &mut Client, id: &str, out: Output) -> Outcome {
    const LOOK_EVERY: Duration = Duration::from_millis(500);
    let mut shown = 0;
    let mut execution = String::new();
    if out == Output::Table {
        println!(
            "{:<24}  {:<33}  {:>4}  {}",
            HISTORY_HEADER[0], HISTORY_HEADER[1], HISTORY_HEADER[2], HISTORY_HEADER[3]
        );
    }
    loop {
        let state = get(client, id).await?;
        let events = fetch_history(client, id).await?;
        // A new execution (continue-as-new, restart) starts a fresh history.
        let current = state.execution_id.clone().unwrap_or_default();
        if current != execution || events.len() < shown {
            execution = current;
            shown = 0;
        }
        for e in &events[shown..] {
            match out {
                Output::Json => {
                    let line = payload::history(std::slice::from_ref(e), true);
                    for v in line {
                        println!("{v}");
                    }
                }
                Output::Table => {
                    // Fixed widths: rows are printed as they come, so they cannot be measured.
                    for row in history_rows(std::slice::from_ref(e)) {
                        println!("{:<24}  {:<33}  {:>4}  {}", row[0], row[1], row[2], row[3]);
                    }
                }
            }
        }
        shown = events.len();
        let status = OrchestrationStatus::try_from(state.orchestration_status).unwrap_or(OrchestrationStatus::Running);
        // The state was read before the history, so the history already holds the end.
        if is_terminal(status) {
            if out == Output::Table {
                println!("{id} {}", runtime_status_name(status));
            }
            return Ok(ended(&state));
        }
        let mut wait = tonic::Request::new(GetInstanceRequest {
            instance_id: id.to_string(),
            get_inputs_and_outputs: false,
        });
        wait.set_timeout(LOOK_EVERY);
        match client.wait_for_instance_completion(wait).await {
            Ok(_) => {}
            Err(e) if matches!(e.code(), Code::DeadlineExceeded | Code::Cancelled) => {}
            Err(e) => return Err(from_status(e)),
        }
    }
}
