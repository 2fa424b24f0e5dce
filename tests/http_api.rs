//! The HTTP listener on a real socket, spoken to with a plain HTTP client: every route of the
//! Durable Functions API with its status codes, headers and payload fields, the async polling
//! pattern run to completion, paging, proxies, probes and the OpenAPI document. Orchestrations
//! are run by a scripted raw worker over gRPC.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use outrigger::proto::history_event::EventType;
use outrigger::proto::orchestrator_action::OrchestratorActionType as ActionType;
use outrigger::proto::work_item::Request as Item;
use outrigger::proto::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const BASE: &str = "/runtime/webhooks/durabletask";

/// A sidecar serving both gRPC and HTTP.
struct HttpSidecar {
    grpc: Client,
    http: SocketAddr,
    web: reqwest::Client,
    _stop: oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

impl HttpSidecar {
    async fn start() -> HttpSidecar {
        HttpSidecar::with_public_url(None).await
    }

    async fn with_public_url(public_url: Option<&str>) -> HttpSidecar {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = outrigger::store::open(&url, &Default::default()).await.unwrap();
        let grpc_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc_addr = grpc_listener.local_addr().unwrap();
        let http = http_listener.local_addr().unwrap();
        let mut options = outrigger::server::Options::default();
        options.http.public_url = public_url.map(str::to_string);
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            outrigger::server::serve(
                outrigger::server::Listeners {
                    microsoft: vec![grpc_listener],
                    dapr: vec![],
                    http: vec![http_listener],
                },
                store,
                options,
                shutdown,
            )
            .await
            .expect("server");
        });
        let grpc = Client::connect(format!("http://{grpc_addr}")).await.unwrap();
        HttpSidecar {
            grpc,
            http,
            web: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            _stop: stop,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    fn api(&self, path: &str) -> String {
        self.url(&format!("{BASE}{path}"))
    }

    async fn send(&self, method: reqwest::Method, url: &str, body: Option<Value>) -> Answer {
        let mut request = self.web.request(method, url);
        if let Some(b) = body {
            request = request.header("content-type", "application/json").body(b.to_string());
        }
        Answer::from(guarded("an HTTP answer", request.send()).await.expect("HTTP request")).await
    }

    async fn get(&self, url: &str) -> Answer {
        self.send(reqwest::Method::GET, url, None).await
    }

    async fn post(&self, url: &str, body: Option<Value>) -> Answer {
        self.send(reqwest::Method::POST, url, body).await
    }

    async fn delete(&self, url: &str) -> Answer {
        self.send(reqwest::Method::DELETE, url, None).await
    }

    /// Starts `name` over HTTP and returns the management payload.
    async fn start_http(&self, name: &str, id: &str, input: Value) -> Value {
        let a = self.post(&self.api(&format!("/orchestrators/{name}/{id}")), Some(input)).await;
        assert_eq!(a.status, StatusCode::ACCEPTED, "{a:?}");
        a.json()
    }

    /// Polls the status URL until `done` holds for the status object (the worker moves it).
    async fn until(&self, id: &str, done: impl Fn(&Value) -> bool) -> Answer {
        let url = self.api(&format!("/instances/{id}"));
        guarded("the awaited status", async {
            loop {
                let a = self.get(&url).await;
                if a.status != StatusCode::NOT_FOUND && done(&a.json()) {
                    return a;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }
}

#[derive(Debug)]
struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Answer {
    async fn from(r: reqwest::Response) -> Answer {
        Answer {
            status: r.status(),
            headers: r.headers().clone(),
            body: r.text().await.expect("body"),
        }
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// An error answer: its code and its message.
    fn error(&self) -> (StatusCode, String) {
        let message = self.json()["Message"]
            .as_str()
            .unwrap_or_else(|| panic!("no Message: {}", self.body))
            .to_string();
        (self.status, message)
    }
}

// ---------------------------------------------------------------------------------------------
// A scripted worker: what each orchestration name does.
// ---------------------------------------------------------------------------------------------

/// Runs forever on its own stream:
/// - `Greeter` calls activity `Greet` with its input and completes with the result;
/// - `Waiter` completes with the data of the first `go` event;
/// - `Failer` fails;
/// - anything else does nothing (stays running until terminated).
///
/// `Greet` answers `"Hello, <input>!"`.
async fn scripted_worker(sidecar: &HttpSidecar) -> tokio::task::JoinHandle<()> {
    let mut client = sidecar.grpc.clone();
    let mut stream = client.get_work_items(GetWorkItemsRequest::default()).await.unwrap().into_inner();
    tokio::spawn(async move {
        while let Ok(Some(item)) = stream.message().await {
            let token = item.completion_token.clone();
            match item.request {
                Some(Item::OrchestratorRequest(r)) => {
                    let events: Vec<&HistoryEvent> = r.past_events.iter().chain(&r.new_events).collect();
                    let started = events.iter().find_map(|e| match &e.event_type {
                        Some(EventType::ExecutionStarted(s)) => Some(s.clone()),
                        _ => None,
                    });
                    let Some(started) = started else { continue };
                    let actions = script(&started, &events);
                    let _ = complete_orchestrator(&mut client, &token, &r.instance_id, actions).await;
                }
                Some(Item::ActivityRequest(r)) => {
                    let who: String = serde_json::from_str(r.input.as_deref().unwrap_or("\"\"")).unwrap_or_default();
                    let result = Value::String(format!("Hello, {who}!")).to_string();
                    let _ = complete_activity(&mut client, &token, &r, &result).await;
                }
                _ => {}
            }
        }
    })
}

fn script(started: &ExecutionStartedEvent, events: &[&HistoryEvent]) -> Vec<OrchestratorAction> {
    match started.name.as_str() {
        "Greeter" => {
            let result = events.iter().find_map(|e| match &e.event_type {
                Some(EventType::TaskCompleted(c)) => c.result.clone(),
                _ => None,
            });
            match result {
                Some(r) => vec![complete(2, OrchestrationStatus::Completed, &r)],
                None => vec![schedule_task(1, "Greet", started.input.as_deref().unwrap_or("null"))],
            }
        }
        "Waiter" => events
            .iter()
            .find_map(|e| match &e.event_type {
                Some(EventType::EventRaised(r)) if r.name == "go" => Some(vec![complete(
                    1,
                    OrchestrationStatus::Completed,
                    r.input.as_deref().unwrap_or("null"),
                )]),
                _ => None,
            })
            .unwrap_or_default(),
        "Failer" => vec![action(
            1,
            ActionType::CompleteOrchestration(CompleteOrchestrationAction {
                orchestration_status: OrchestrationStatus::Failed as i32,
                failure_details: Some(TaskFailureDetails {
                    error_type: "ValueError".into(),
                    error_message: "it broke".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        )],
        _ => vec![],
    }
}

const PAYLOAD_FIELDS: [&str; 9] = [
    "id",
    "statusQueryGetUri",
    "sendEventPostUri",
    "terminatePostUri",
    "purgeHistoryDeleteUri",
    "restartPostUri",
    "suspendPostUri",
    "resumePostUri",
    "rewindPostUri",
];

// ---------------------------------------------------------------------------------------------
// Start and status
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_start_answers_202_with_location_retry_after_and_the_management_payload() {
    let s = HttpSidecar::start().await;
    let a = s
        .post(&s.api("/orchestrators/Idle/order%2F42?version=2.0"), Some(json!({"item": "tea"})))
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{a:?}");
    assert_eq!(a.header("content-type"), Some("application/json"));
    assert_eq!(a.header("retry-after"), Some("10"));
    let p = a.json();
    let keys: Vec<&str> = p.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, PAYLOAD_FIELDS, "the Durable Functions fields, in its order");
    let instance = format!("http://{}{BASE}/instances/order%2F42", s.http);
    assert_eq!(p["id"], "order/42");
    assert_eq!(p["statusQueryGetUri"], instance);
    assert_eq!(a.header("location"), Some(instance.as_str()));
    assert_eq!(p["sendEventPostUri"], format!("{instance}/raiseEvent/{{eventName}}"));
    assert_eq!(p["terminatePostUri"], format!("{instance}/terminate?reason={{text}}"));
    assert_eq!(p["purgeHistoryDeleteUri"], instance);
    assert_eq!(p["restartPostUri"], format!("{instance}/restart"));
    assert_eq!(p["suspendPostUri"], format!("{instance}/suspend?reason={{text}}"));
    assert_eq!(p["resumePostUri"], format!("{instance}/resume?reason={{text}}"));
    assert_eq!(p["rewindPostUri"], format!("{instance}/rewind?reason={{text}}"));

    // The instance exists as gRPC sees it, with the name, version and input given.
    let state = get(&mut s.grpc.clone(), "order/42").await.expect("created");
    assert_eq!(state.name, "Idle");
    assert_eq!(state.version.as_deref(), Some("2.0"));
    assert_eq!(state.input.as_deref(), Some(r#"{"item":"tea"}"#));

    // While pending, the status URL answers 202, pointing at itself.
    let status = s.get(&instance).await;
    assert_eq!(status.status, StatusCode::ACCEPTED);
    assert_eq!(status.header("location"), Some(instance.as_str()));
    assert_eq!(status.header("retry-after"), Some("5"));
    let body = status.json();
    let keys: Vec<&str> = body.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "name",
            "instanceId",
            "runtimeStatus",
            "input",
            "customStatus",
            "output",
            "createdTime",
            "lastUpdatedTime"
        ]
    );
    assert_eq!(body["name"], "Idle");
    assert_eq!(body["instanceId"], "order/42");
    assert_eq!(body["runtimeStatus"], "Pending");
    assert_eq!(body["input"], json!({"item": "tea"}));
    assert_eq!(body["customStatus"], Value::Null);
    assert_eq!(body["output"], Value::Null);
    let created = body["createdTime"].as_str().unwrap();
    assert_eq!(created.len(), "2026-01-01T00:00:00Z".len(), "second precision: {created}");
    let created_us = outrigger::rfc3339::parse(created).unwrap();
    assert!((created_us / 1000 - now_ms()).abs() < 60_000, "{created}");
    // showInput=false leaves the input out; the query string is kept in Location.
    let hidden = s.get(&format!("{instance}?showInput=false")).await;
    assert_eq!(hidden.json()["input"], Value::Null);
    assert_eq!(hidden.header("location"), Some(format!("{instance}?showInput=false").as_str()));

    // Without an id, a new 32-hex one is made.
    let a = s.post(&s.api("/orchestrators/Idle"), None).await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    let id = a.json()["id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 32);
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
    assert_eq!(get(&mut s.grpc.clone(), &id).await.expect("created").input, None);
}

#[tokio::test]
async fn the_async_pattern_runs_to_completion_with_a_plain_http_client() {
    let s = HttpSidecar::start().await;
    let _worker = scripted_worker(&s).await;
    let a = s.post(&s.api("/orchestrators/Waiter"), Some(json!("ignored"))).await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    let payload = a.json();
    let mut location = a.header("location").expect("Location").to_string();
    let id = payload["id"].as_str().unwrap().to_string();

    // A polling client: follow Location while 202, honouring Retry-After (scaled down so the
    // test is quick), until 200. The instance waits for an event sent after the first poll.
    let mut polls = 0;
    let mut raised = false;
    let done = guarded("the instance to finish", async {
        loop {
            let a = s.get(&location).await;
            polls += 1;
            if a.status == StatusCode::OK {
                return a;
            }
            assert_eq!(a.status, StatusCode::ACCEPTED, "{a:?}");
            let retry: u64 = a.header("retry-after").expect("Retry-After").parse().unwrap();
            assert_eq!(retry, 5);
            location = a.header("location").expect("Location while running").to_string();
            assert_eq!(location, payload["statusQueryGetUri"]);
            assert!(["Pending", "Running"].contains(&a.json()["runtimeStatus"].as_str().unwrap()));
            if !raised {
                let send = payload["sendEventPostUri"].as_str().unwrap().replace("{eventName}", "go");
                let r = s.post(&send, Some(json!({"answer": 42}))).await;
                assert_eq!(r.status, StatusCode::ACCEPTED, "{r:?}");
                assert!(r.body.is_empty());
                raised = true;
            }
            tokio::time::sleep(Duration::from_millis(retry * 10)).await;
        }
    })
    .await;
    assert!(polls >= 2, "it was still running at the first poll");
    assert_eq!(done.header("location"), None, "no Location once finished");
    assert_eq!(done.header("retry-after"), None);
    let body = done.json();
    assert_eq!(body["runtimeStatus"], "Completed");
    assert_eq!(body["instanceId"], id.as_str());
    assert_eq!(body["output"], json!({"answer": 42}));
    assert_eq!(body["input"], json!("ignored"));
}

#[tokio::test]
async fn a_start_with_timeout_waits_for_the_output_or_falls_back_to_202() {
    let s = HttpSidecar::start().await;
    let _worker = scripted_worker(&s).await;
    // Finishes in time: 200 and the output itself as the body.
    let a = s.post(&s.api("/orchestrators/Greeter/g1?timeout=10"), Some(json!("Ada"))).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    assert_eq!(a.json(), json!("Hello, Ada!"));
    // Fails in time: 200 with the status object.
    let a = s.post(&s.api("/orchestrators/Failer/f1?timeout=10"), None).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    assert_eq!(a.json()["runtimeStatus"], "Failed");
    assert_eq!(a.json()["output"], "it broke");
    assert_eq!(a.json()["failureDetails"]["errorType"], "ValueError");
    // Does not finish in time: the usual 202 and payload.
    let began = std::time::Instant::now();
    let a = s.post(&s.api("/orchestrators/Idle/i1?timeout=0.3"), None).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{a:?}");
    assert!(began.elapsed() >= Duration::from_millis(250), "it waited");
    assert_eq!(a.json()["id"], "i1");
    assert!(a.header("location").is_some());
    // A bad timeout is refused before anything starts.
    let a = s.post(&s.api("/orchestrators/Idle/i2?timeout=soon"), None).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(get(&mut s.grpc.clone(), "i2").await.is_none());
}

#[tokio::test]
async fn status_with_history_shows_the_durable_functions_events() {
    let s = HttpSidecar::start().await;
    let _worker = scripted_worker(&s).await;
    s.start_http("Greeter", "h1", json!("Bo")).await;
    s.until("h1", |b| b["runtimeStatus"] == "Completed").await;

    let a = s.get(&s.api("/instances/h1?showHistory=true&showHistoryOutput=true")).await;
    assert_eq!(a.status, StatusCode::OK);
    let body = a.json();
    assert_eq!(body["output"], "Hello, Bo!");
    let events = body["historyEvents"].as_array().expect("historyEvents");
    let types: Vec<&str> = events.iter().map(|e| e["EventType"].as_str().unwrap()).collect();
    // Episode markers are left out; the completed task stands for its scheduling.
    assert_eq!(types, ["ExecutionStarted", "TaskCompleted", "ExecutionCompleted"]);
    assert_eq!(events[0]["FunctionName"], "Greeter");
    assert_eq!(events[0]["Input"], "Bo");
    assert_eq!(events[1]["FunctionName"], "Greet");
    assert_eq!(events[1]["Result"], "Hello, Bo!");
    let scheduled = outrigger::rfc3339::parse(events[1]["ScheduledTime"].as_str().unwrap()).unwrap();
    let finished = outrigger::rfc3339::parse(events[1]["Timestamp"].as_str().unwrap()).unwrap();
    assert!(scheduled <= finished);
    assert_eq!(events[1]["Timestamp"].as_str().unwrap().len(), "2026-01-01T00:00:00.0000000Z".len());
    assert_eq!(events[2]["OrchestrationStatus"], "Completed");
    assert_eq!(events[2]["Result"], "Hello, Bo!");

    // Without showHistoryOutput the results are left out; without showHistory, the history.
    let a = s.get(&s.api("/instances/h1?showHistory=true")).await;
    let events = a.json()["historyEvents"].as_array().unwrap().clone();
    assert_eq!(events[1]["Result"], Value::Null);
    assert_eq!(events[2]["Result"], Value::Null);
    assert!(s.get(&s.api("/instances/h1")).await.json().get("historyEvents").is_none());

    // A failed instance: 200 by default, 500 on request.
    s.start_http("Failer", "f1", Value::Null).await;
    let done = s.until("f1", |b| b["runtimeStatus"] == "Failed").await;
    assert_eq!(done.status, StatusCode::OK);
    let a = s.get(&s.api("/instances/f1?returnInternalServerErrorOnFailure=true")).await;
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(a.json()["failureDetails"]["errorMessage"], "it broke");
}

// ---------------------------------------------------------------------------------------------
// List and paging
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn list_pages_through_250_instances_with_the_continuation_header() {
    let s = HttpSidecar::start().await;
    let before = now_ms() - 1000;
    let mut grpc = s.grpc.clone();
    for i in 0..250 {
        start(&mut grpc, &format!("p-{i:03}"), "Idle", Some("\"in\"")).await;
    }
    let mut seen = vec![];
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut request = s.web.get(s.api("/instances?top=100"));
        if let Some(t) = &token {
            request = request.header("x-ms-continuation-token", t);
        }
        let a = Answer::from(request.send().await.unwrap()).await;
        assert_eq!(a.status, StatusCode::OK);
        let items = a.json().as_array().unwrap().clone();
        pages += 1;
        for i in &items {
            assert_eq!(i["runtimeStatus"], "Pending");
            assert_eq!(i["input"], Value::Null, "list leaves inputs out by default");
            seen.push(i["instanceId"].as_str().unwrap().to_string());
        }
        match a.header("x-ms-continuation-token") {
            Some(t) => {
                assert_eq!(items.len(), 100);
                token = Some(t.to_string());
            }
            None => {
                assert_eq!(items.len(), 50);
                break;
            }
        }
    }
    assert_eq!(pages, 3);
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), 250, "no instance twice, none missing");

    // Filters: prefix, status, created range, showInput; without top, 100.
    let a = s.get(&s.api("/instances?instanceIdPrefix=p-24&showInput=true")).await;
    let items = a.json().as_array().unwrap().clone();
    let ids: Vec<&str> = items.iter().map(|i| i["instanceId"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        [
            "p-240", "p-241", "p-242", "p-243", "p-244", "p-245", "p-246", "p-247", "p-248", "p-249"
        ]
    );
    assert_eq!(items[0]["input"], "in");
    assert_eq!(s.get(&s.api("/instances")).await.json().as_array().unwrap().len(), 100);
    let none = s.get(&s.api("/instances?runtimeStatus=Completed,Failed")).await;
    assert_eq!(none.json(), json!([]));
    assert_eq!(none.header("x-ms-continuation-token"), None);
    let pending = s
        .get(&s.api("/instances?runtimeStatus=Running&runtimeStatus=pending&top=1000"))
        .await;
    assert_eq!(pending.json().as_array().unwrap().len(), 250);
    let from = outrigger::rfc3339::format(before * 1000, outrigger::rfc3339::Precision::Millis);
    let in_range = s.get(&s.api(&format!("/instances?createdTimeFrom={from}&top=1000"))).await;
    assert_eq!(in_range.json().as_array().unwrap().len(), 250);
    let earlier = s.get(&s.api(&format!("/instances?createdTimeTo={from}"))).await;
    assert_eq!(earlier.json(), json!([]));
}

// ---------------------------------------------------------------------------------------------
// Signals: raise, suspend, resume, terminate
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn raise_suspend_resume_and_terminate_act_and_answer_like_durable_functions() {
    let s = HttpSidecar::start().await;
    let _worker = scripted_worker(&s).await;
    let p = s.start_http("Idle", "sig", json!(null)).await;
    s.until("sig", |b| b["runtimeStatus"] == "Running").await;
    let link = |field: &str| p[field].as_str().unwrap().to_string();

    let raise = link("sendEventPostUri").replace("{eventName}", "ping");
    let a = s.post(&raise, Some(json!([1, 2]))).await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    // Not JSON: refused, as Durable Functions does.
    let plain = s
        .web
        .post(&raise)
        .header("content-type", "text/plain")
        .body("hi")
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), StatusCode::BAD_REQUEST);
    let broken = s
        .web
        .post(&raise)
        .header("content-type", "application/json")
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(broken.status(), StatusCode::BAD_REQUEST);
    s.until("sig", |_| true).await;
    let seen = guarded("the event in history", async {
        loop {
            let h = s.get(&s.api("/instances/sig?showHistory=true&showHistoryOutput=true")).await.json();
            if let Some(e) = h["historyEvents"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["EventType"] == "EventRaised")
            {
                return e.clone();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(seen["Name"], "ping");
    assert_eq!(seen["Input"], json!([1, 2]));

    let suspend = link("suspendPostUri").replace("{text}", "lunch");
    assert_eq!(s.post(&suspend, None).await.status, StatusCode::ACCEPTED);
    let a = s.until("sig", |b| b["runtimeStatus"] == "Suspended").await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "suspended still counts as running");
    let resume = link("resumePostUri").replace("{text}", "back");
    assert_eq!(s.post(&resume, None).await.status, StatusCode::ACCEPTED);
    s.until("sig", |b| b["runtimeStatus"] == "Running").await;

    let terminate = link("terminatePostUri").replace("{text}", "no%20longer%20needed");
    assert_eq!(s.post(&terminate, None).await.status, StatusCode::ACCEPTED);
    let a = s.until("sig", |b| b["runtimeStatus"] == "Terminated").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["output"], "no longer needed");

    // A finished instance: 410 Gone for every signal.
    for url in [raise.clone(), suspend, resume, terminate] {
        let a = s.post(&url, Some(json!(1))).await;
        assert_eq!(a.error().0, StatusCode::GONE, "{url}");
    }
    // An unknown one: 404.
    for action in ["raiseEvent/x", "terminate", "suspend", "resume", "rewind", "restart"] {
        let a = s.post(&s.api(&format!("/instances/ghost/{action}")), Some(json!(1))).await;
        let (code, message) = a.error();
        assert_eq!(code, StatusCode::NOT_FOUND, "{action}");
        assert!(message.contains("ghost"), "{message}");
    }
}

// ---------------------------------------------------------------------------------------------
// Rewind, restart, purge
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn rewind_restart_and_purge_follow_the_instance_state() {
    let s = HttpSidecar::start().await;
    let _worker = scripted_worker(&s).await;
    s.start_http("Greeter", "done", json!("Cy")).await;
    s.until("done", |b| b["runtimeStatus"] == "Completed").await;
    s.start_http("Failer", "bad", Value::Null).await;
    s.until("bad", |b| b["runtimeStatus"] == "Failed").await;
    s.start_http("Idle", "live", Value::Null).await;

    // Rewind: only a failed instance (412 otherwise).
    assert_eq!(
        s.post(&s.api("/instances/done/rewind"), None).await.error().0,
        StatusCode::PRECONDITION_FAILED
    );
    let a = s.post(&s.api("/instances/bad/rewind?reason=retry"), None).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{a:?}");
    // It runs again (and, scripted to fail, fails again), with the rewind in its history.
    let url = s.api("/instances/bad?showHistory=true");
    guarded("the rewound run to fail again", async {
        loop {
            let b = s.get(&url).await.json();
            let rewound = b["historyEvents"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["EventType"] == "ExecutionRewound");
            if rewound && b["runtimeStatus"] == "Failed" {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    // Restart: a finished instance under its id (202 payload), or a new id; 409 when live.
    let a = s.post(&s.api("/instances/done/restart"), None).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{a:?}");
    assert_eq!(a.json()["id"], "done");
    assert!(a.header("location").unwrap().ends_with("/instances/done"));
    let a = s
        .post(&s.api("/instances/done/restart?restartWithNewInstanceId=true&timeout=10"), None)
        .await;
    assert_eq!(a.status, StatusCode::OK, "waited for the new instance: {a:?}");
    assert_eq!(a.json(), json!("Hello, Cy!"), "the original input again");
    let a = s.post(&s.api("/instances/live/restart"), None).await;
    assert_eq!(a.error().0, StatusCode::CONFLICT);

    // Purge one: 412 live, 200 finished, then 404.
    assert_eq!(s.delete(&s.api("/instances/live")).await.error().0, StatusCode::PRECONDITION_FAILED);
    s.until("done", |b| b["runtimeStatus"] == "Completed").await;
    let a = s.delete(&s.api("/instances/done")).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json(), json!({"instancesDeleted": 1}));
    assert_eq!(s.delete(&s.api("/instances/done")).await.error().0, StatusCode::NOT_FOUND);
    assert_eq!(s.get(&s.api("/instances/done")).await.error().0, StatusCode::NOT_FOUND);

    // Purge by filter: createdTimeFrom is required; only finished instances go; none is 404.
    let (code, message) = s.delete(&s.api("/instances")).await.error();
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(message.contains("createdTimeFrom"), "{message}");
    let a = s
        .delete(&s.api("/instances?createdTimeFrom=2000-01-01T00:00:00Z&runtimeStatus=Failed"))
        .await;
    assert_eq!(a.json(), json!({"instancesDeleted": 1}), "only 'bad'");
    let a = s.delete(&s.api("/instances?createdTimeFrom=2000-01-01T00:00:00Z")).await;
    assert_eq!(a.json(), json!({"instancesDeleted": 1}), "the restarted copy; 'live' stays");
    assert_eq!(
        s.delete(&s.api("/instances?createdTimeFrom=2000-01-01T00:00:00Z")).await.error().0,
        StatusCode::NOT_FOUND
    );
    assert!(get(&mut s.grpc.clone(), "live").await.is_some());
}

// ---------------------------------------------------------------------------------------------
// Errors, proxies, probes, the document
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn bad_input_is_400_conflicts_409_unknown_404_with_messages() {
    let s = HttpSidecar::start().await;
    s.start_http("Idle", "dup", Value::Null).await;
    let (code, message) = s.post(&s.api("/orchestrators/Idle/dup"), None).await.error();
    assert_eq!(code, StatusCode::CONFLICT);
    assert!(message.contains("dup"), "{message}");

    let not_json = s.web.post(s.api("/orchestrators/Idle")).body("{oops").send().await.unwrap();
    assert_eq!(not_json.status(), StatusCode::BAD_REQUEST);
    let long = "x".repeat(1025);
    let cases = [
        (format!("/orchestrators/Idle/{long}"), "POST"),
        ("/instances/dup?showHistory=maybe".to_string(), "GET"),
        ("/instances?top=0".to_string(), "GET"),
        ("/instances?top=many".to_string(), "GET"),
        ("/instances?createdTimeFrom=yesterday".to_string(), "GET"),
        ("/instances?runtimeStatus=Sleeping".to_string(), "GET"),
        ("/instances?createdTimeFrom=nope".to_string(), "DELETE"),
    ];
    for (path, method) in cases {
        let a = s.send(method.parse().unwrap(), &s.api(&path), None).await;
        let (code, message) = a.error();
        assert_eq!(code, StatusCode::BAD_REQUEST, "{method} {path}");
        assert!(!message.is_empty());
    }
    let bad_token = s
        .web
        .get(s.api("/instances"))
        .header("x-ms-continuation-token", "forged")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_token.status(), StatusCode::BAD_REQUEST);

    let (code, message) = s.get(&s.api("/instances/nobody")).await.error();
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert!(message.contains("nobody"), "{message}");
    assert_eq!(s.get(&s.url("/no/such/route")).await.error().0, StatusCode::NOT_FOUND);
}

/// The next entity batch a worker gets: its entity id and its operations as (name, input).
async fn entity_batch(worker: &mut Worker) -> (String, String, Vec<(String, Option<String>)>) {
    let item = guarded("an entity batch", worker.next()).await;
    let Some(Item::EntityRequestV2(request)) = item.request else {
        panic!("expected an entity batch, got {item:?}");
    };
    let operations = request
        .operation_requests
        .iter()
        .map(|e| match &e.event_type {
            Some(EventType::EntityOperationSignaled(s)) => (s.operation.clone(), s.input.clone()),
            other => panic!("not a signal: {other:?}"),
        })
        .collect();
    (item.completion_token, request.instance_id, operations)
}

/// Answers an entity batch: every operation succeeded, and the entity's state is now `state`.
async fn finish_batch(client: &mut Client, token: String, operations: usize, state: Option<&str>) {
    let success = OperationResult {
        result_type: Some(operation_result::ResultType::Success(OperationResultSuccess::default())),
    };
    client
        .complete_entity_task(EntityBatchResult {
            results: vec![success; operations],
            entity_state: state.map(str::to_string),
            completion_token: token,
            ..Default::default()
        })
        .await
        .expect("CompleteEntityTask");
}

#[tokio::test]
async fn entities_are_signalled_read_and_listed_as_durable_functions_does() {
    let s = HttpSidecar::start().await;
    let mut client = s.grpc.clone();
    let mut worker = Worker::connect(&mut client, GetWorkItemsRequest::default()).await;

    // A JSON body is the operation's input as sent; the name is case-insensitive.
    let a = s.post(&s.api("/entities/Counter/k1?op=add"), Some(json!({"by": 5}))).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{a:?}");
    let (token, id, ops) = entity_batch(&mut worker).await;
    assert_eq!(id, "@counter@k1");
    assert_eq!(ops, vec![("add".to_string(), Some(r#"{"by":5}"#.to_string()))]);
    finish_batch(&mut client, token, 1, Some(r#"{"n":5}"#)).await;

    // Any other body is passed as a JSON string.
    let a = guarded(
        "an answer",
        s.web
            .post(s.api("/entities/counter/k1?op=note"))
            .header("content-type", "text/plain")
            .body("hi there")
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(a.status(), StatusCode::ACCEPTED);
    let (token, _, ops) = entity_batch(&mut worker).await;
    assert_eq!(ops, vec![("note".to_string(), Some(r#""hi there""#.to_string()))]);
    finish_batch(&mut client, token, 1, Some(r#"{"n":6}"#)).await;

    let state = s.get(&s.api("/entities/counter/k1")).await;
    assert_eq!(state.status, StatusCode::OK, "{state:?}");
    assert_eq!(state.json(), json!({"n": 6}));
    let (code, message) = s.get(&s.api("/entities/counter/K1")).await.error();
    assert_eq!(code, StatusCode::NOT_FOUND, "keys are case-sensitive");
    assert!(message.contains("K1"), "{message}");

    // Three more entities with state, one of another name; one signalled but never run.
    for (path, state) in [
        ("/entities/counter/k2", "1"),
        ("/entities/counter/k3", "2"),
        ("/entities/timer/t1", "3"),
    ] {
        assert_eq!(s.post(&s.api(&format!("{path}?op=set")), None).await.status, StatusCode::ACCEPTED);
        let (token, _, ops) = entity_batch(&mut worker).await;
        assert_eq!(ops, vec![("set".to_string(), None)], "no body, no input");
        finish_batch(&mut client, token, 1, Some(state)).await;
    }

    // A list of one name, without and with state.
    let listed = s.get(&s.api("/entities/counter")).await;
    assert_eq!(listed.status, StatusCode::OK);
    let rows = listed.json();
    let ids: Vec<(&str, &str)> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["entityId"]["name"].as_str().unwrap(), r["entityId"]["key"].as_str().unwrap()))
        .collect();
    assert_eq!(ids, vec![("counter", "k1"), ("counter", "k2"), ("counter", "k3")]);
    assert!(rows[0].get("state").is_none(), "no state unless asked: {rows}");
    let when = rows[0]["lastOperationTime"].as_str().expect("a time");
    let millis = outrigger::rfc3339::parse(when).expect("RFC 3339") / 1000;
    assert!((now_ms() - millis).abs() < 60_000, "recent: {when}");
    let with_state = s.get(&s.api("/entities/counter?fetchState=true")).await.json();
    assert_eq!(with_state[0]["state"], json!({"n": 6}));
    assert_eq!(with_state[2]["state"], json!(2));

    // Every name, two at a time, by the continuation header.
    let first = s.get(&s.api("/entities?top=2")).await;
    assert_eq!(first.json().as_array().unwrap().len(), 2);
    let token = first.headers["x-ms-continuation-token"].to_str().unwrap().to_string();
    let rest = guarded(
        "the next page",
        s.web.get(s.api("/entities?top=2")).header("x-ms-continuation-token", &token).send(),
    )
    .await
    .unwrap();
    assert!(rest.headers().get("x-ms-continuation-token").is_none(), "the last page");
    let rest: Value = serde_json::from_str(&rest.text().await.unwrap()).unwrap();
    let names: Vec<&str> = rest
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["entityId"]["key"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["k3", "t1"]);
    // A time window on the last operation.
    let future = s.get(&s.api("/entities?lastOperationTimeFrom=2999-01-01T00:00:00Z")).await.json();
    assert_eq!(future, json!([]));

    // DELETE signals the entity's delete operation; once run without state, it is gone.
    assert_eq!(s.delete(&s.api("/entities/counter/k2")).await.status, StatusCode::ACCEPTED);
    let (token, _, ops) = entity_batch(&mut worker).await;
    assert_eq!(ops, vec![("delete".to_string(), None)]);
    finish_batch(&mut client, token, 1, None).await;
    assert_eq!(s.get(&s.api("/entities/counter/k2")).await.status, StatusCode::NOT_FOUND);

    // Refusals: no operation, a name that would read as another id, a bad page size.
    for (method, path) in [
        ("POST", "/entities/counter/k1"),
        ("POST", "/entities/counter/k1?op="),
        ("GET", "/entities/a@b/k"),
        ("POST", "/entities/a@b/k?op=x"),
        ("GET", "/entities?top=0"),
        ("GET", "/entities/counter?lastOperationTimeFrom=yesterday"),
    ] {
        let (code, message) = s.send(method.parse().unwrap(), &s.api(path), None).await.error();
        assert_eq!(code, StatusCode::BAD_REQUEST, "{method} {path}");
        assert!(!message.is_empty());
    }
}

#[tokio::test]
async fn links_follow_forwarding_headers_or_the_configured_public_url() {
    let s = HttpSidecar::start().await;
    let a = s
        .web
        .post(s.api("/orchestrators/Idle/fw"))
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "ops.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(
        a.headers()["location"],
        format!("https://ops.example.com{BASE}/instances/fw").as_str()
    );
    let body: Value = serde_json::from_str(&a.text().await.unwrap()).unwrap();
    for field in &PAYLOAD_FIELDS[1..] {
        assert!(body[field].as_str().unwrap().starts_with("https://ops.example.com/"), "{field}");
    }
    let polled = s
        .web
        .get(s.api("/instances/fw"))
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "ops.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(
        polled.headers()["location"],
        format!("https://ops.example.com{BASE}/instances/fw").as_str()
    );

    let configured = HttpSidecar::with_public_url(Some("https://public.example/base")).await;
    let a = configured.post(&configured.api("/orchestrators/Idle/pu"), None).await;
    assert_eq!(
        a.json()["statusQueryGetUri"],
        format!("https://public.example/base{BASE}/instances/pu")
    );
}

#[tokio::test]
async fn probes_answer_and_the_openapi_document_names_exactly_the_routes() {
    let s = HttpSidecar::start().await;
    let live = s.get(&s.url("/healthz")).await;
    assert_eq!((live.status, live.body.as_str()), (StatusCode::OK, "ok\n"));
    let ready = s.get(&s.url("/readyz")).await;
    assert_eq!((ready.status, ready.body.as_str()), (StatusCode::OK, "ready\n"));

    let doc = s.get(&s.url("/openapi.json")).await;
    assert_eq!(doc.status, StatusCode::OK);
    assert_eq!(doc.body, outrigger::http::OPENAPI_DOCUMENT);
    let doc = doc.json();
    let methods = ["get", "post", "delete", "put", "patch"];
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        let concrete = path
            .replace("{entityName}", "counter")
            .replace("{entityKey}", "doc-probe")
            .replace("{name}", "Idle")
            .replace("{instanceId}", "doc-probe")
            .replace("{eventName}", "e");
        for method in methods {
            let a = s
                .send(method.to_uppercase().parse().unwrap(), &s.url(&concrete), Some(json!(null)))
                .await;
            if item.get(method).is_some() {
                operations += 1;
                assert_ne!(
                    a.status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path} is documented but not served"
                );
                assert!(!a.body.contains("no route for"), "{method} {path} is documented but not served");
                let documented = &item[method]["responses"];
                assert!(
                    documented.get(a.status.as_str()).is_some(),
                    "{method} {path} answered {} which the document does not list: {}",
                    a.status,
                    a.body
                );
            } else {
                assert_eq!(
                    a.status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path} is served but not documented"
                );
            }
        }
    }
    assert_eq!(operations, 21);
}
