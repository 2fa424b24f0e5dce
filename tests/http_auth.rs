//! The HTTP listener's security on a real socket: API keys and roles on every route (the same
//! keys as gRPC), TLS and mTLS with the gRPC listener's files and reload, and `/readyz` turning
//! 503 when a shutdown drain starts while the listener keeps serving.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use outrigger::auth::{Keys, Role};
use outrigger::proto::*;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

const BASE: &str = "/runtime/webhooks/durabletask";
const READER: &str = "reader-key-0123456789";
const WRITER: &str = "writer-key-0123456789";
const ADMIN: &str = "admin-key-0123456789";

fn keys(destructive_for_writers: bool) -> Keys {
    Keys::new(
        vec![
            (READER.into(), Role::Read),
            (WRITER.into(), Role::Write),
            (ADMIN.into(), Role::Full),
        ],
        destructive_for_writers,
    )
}

/// A sidecar with a gRPC and an HTTP listener; dropping `stop` begins the shutdown.
struct Running {
    grpc: SocketAddr,
    http: SocketAddr,
    stop: oneshot::Sender<()>,
    server: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

async fn serve(options: outrigger::server::Options) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let store = outrigger::store::open(&url, &Default::default()).await.unwrap();
    let grpc_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (grpc, http) = (grpc_listener.local_addr().unwrap(), http_listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let listeners = outrigger::server::Listeners {
            microsoft: vec![grpc_listener],
            dapr: vec![],
            http: vec![http_listener],
        };
        let shutdown = async move {
            let _ = stopped.await;
        };
        outrigger::server::serve(listeners, store, options, shutdown).await.expect("server");
    });
    Running {
        grpc,
        http,
        stop,
        server,
        _dir: dir,
    }
}

async fn with_keys(destructive_for_writers: bool) -> Running {
    let mut options = outrigger::server::Options {
        keys: keys(destructive_for_writers),
        ..Default::default()
    };
    options.http.dashboard = Some(Default::default());
    serve(options).await
}

#[derive(Debug)]
struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

async fn call(method: reqwest::Method, url: String, key: Option<&str>, body: Option<&str>) -> Answer {
    let mut request = reqwest::Client::new().request(method, url);
    if let Some(k) = key {
        request = request.bearer_auth(k);
    }
    if let Some(b) = body {
        request = request.header("content-type", "application/json").body(b.to_string());
    }
    let response = guarded("an HTTP answer", request.send()).await.expect("HTTP request");
    Answer {
        status: response.status(),
        headers: response.headers().clone(),
        body: response.text().await.unwrap(),
    }
}

async fn get(s: &Running, path: &str, key: Option<&str>) -> Answer {
    call(reqwest::Method::GET, format!("http://{}{path}", s.http), key, None).await
}

async fn post(s: &Running, path: &str, key: Option<&str>, body: Option<&str>) -> Answer {
    call(reqwest::Method::POST, format!("http://{}{path}", s.http), key, body).await
}

async fn delete(s: &Running, path: &str, key: Option<&str>) -> Answer {
    call(reqwest::Method::DELETE, format!("http://{}{path}", s.http), key, None).await
}

fn assert_refused(a: &Answer, status: StatusCode, what: &str) {
    assert_eq!(a.status, status, "{what}: {a:?}");
    assert!(
        a.json()["Message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: a message: {a:?}"
    );
    if status == StatusCode::UNAUTHORIZED {
        assert_eq!(a.headers["www-authenticate"], "Bearer", "{what}");
    }
}

#[tokio::test]
async fn every_route_needs_a_key_of_the_right_role_except_probes_and_the_page() {
    let s = with_keys(false).await;
    for open in ["/healthz", "/readyz", "/openapi.json", "/", "/assets/app.js"] {
        assert_eq!(get(&s, open, None).await.status, StatusCode::OK, "{open} is open");
    }
    let list = format!("{BASE}/instances");
    for (key, what) in [(None, "no key"), (Some("not-a-configured-key-at-all"), "a wrong key")] {
        for path in [list.as_str(), "/metrics", "/api/instances", "/api/config", "/api/events"] {
            assert_refused(&get(&s, path, key).await, StatusCode::UNAUTHORIZED, &format!("{path} with {what}"));
        }
        let start = post(&s, &format!("{BASE}/orchestrators/Hello"), key, None).await;
        assert_refused(&start, StatusCode::UNAUTHORIZED, &format!("a start with {what}"));
    }

    // A read key reads, and may change nothing.
    assert_eq!(get(&s, &list, Some(READER)).await.status, StatusCode::OK);
    let metrics = get(&s, "/metrics", Some(READER)).await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert!(metrics.body.contains("# TYPE"), "a Prometheus page: {}", metrics.body);
    let refused = post(&s, &format!("{BASE}/orchestrators/Hello/auth-1"), Some(READER), None).await;
    assert_refused(&refused, StatusCode::FORBIDDEN, "a start with a read key");
    assert!(refused.json()["Message"].as_str().unwrap().contains("'write'"), "{refused:?}");
    assert_refused(
        &post(&s, "/api/bulk?action=terminate", Some(READER), Some(r#"{"ids": ["x"]}"#)).await,
        StatusCode::FORBIDDEN,
        "a dashboard action with a read key",
    );

    // A write key starts and reads back; the key is checked on the status URL too.
    let started = post(&s, &format!("{BASE}/orchestrators/Hello/auth-1"), Some(WRITER), Some("1")).await;
    assert_eq!(started.status, StatusCode::ACCEPTED, "{started:?}");
    let status_url = started.json()["statusQueryGetUri"].as_str().unwrap().to_string();
    let polled = call(reqwest::Method::GET, status_url.clone(), Some(READER), None).await;
    assert_eq!(polled.status, StatusCode::ACCEPTED, "{polled:?}");
    assert_eq!(polled.json()["instanceId"], "auth-1");
    let unkeyed = call(reqwest::Method::GET, status_url, None, None).await;
    assert_refused(&unkeyed, StatusCode::UNAUTHORIZED, "the status URL without a key");
    let rows = get(&s, "/api/instances", Some(READER)).await;
    assert_eq!(rows.json()["items"][0]["instanceId"], "auth-1", "{rows:?}");

    // Purge by filter is destructive: a write key is refused, the full key may.
    let purge = format!("{BASE}/instances?createdTimeFrom=2000-01-01T00:00:00Z");
    assert_refused(
        &delete(&s, &purge, Some(WRITER)).await,
        StatusCode::FORBIDDEN,
        "purge by filter, write key",
    );
    assert_refused(
        &post(&s, "/api/bulk?action=purge&all=1", Some(WRITER), None).await,
        StatusCode::FORBIDDEN,
        "the dashboard's purge of a whole filter, write key",
    );
    // The only instance is running: nothing to purge, but the call was let through.
    assert_eq!(delete(&s, &purge, Some(ADMIN)).await.status, StatusCode::NOT_FOUND);
    let bulk = post(&s, "/api/bulk?action=purge&all=1", Some(ADMIN), None).await;
    assert_eq!(bulk.status, StatusCode::OK, "{bulk:?}");
    // Purging one named instance is an app's ordinary call: write is enough.
    let one = delete(&s, &format!("{BASE}/instances/auth-1"), Some(WRITER)).await;
    assert_eq!(
        one.status,
        StatusCode::PRECONDITION_FAILED,
        "allowed, refused only as running: {one:?}"
    );
    drop(s.stop);
}

#[tokio::test]
async fn allow_destructive_lets_write_keys_purge_by_filter() {
    let s = with_keys(true).await;
    let purge = format!("{BASE}/instances?createdTimeFrom=2000-01-01T00:00:00Z");
    assert_eq!(delete(&s, &purge, Some(WRITER)).await.status, StatusCode::NOT_FOUND, "let through");
    assert_refused(&delete(&s, &purge, Some(READER)).await, StatusCode::FORBIDDEN, "a read key still");
}

#[tokio::test]
async fn readyz_turns_503_when_the_drain_starts_and_the_listener_keeps_serving() {
    let s = serve(outrigger::server::Options {
        drain: Duration::from_secs(30),
        ..Default::default()
    })
    .await;
    assert_eq!(get(&s, "/readyz", None).await.status, StatusCode::OK);
    let mut client = Client::connect(format!("http://{}", s.grpc)).await.unwrap();
    let mut worker = Worker::connect(&mut client, GetWorkItemsRequest::default()).await;
    start(&mut client, "held", "Held", None).await;
    let (token, _) = worker.orchestration().await; // held: the drain waits for it

    let Running { http, stop, server, .. } = s;
    stop.send(()).unwrap();
    let url = format!("http://{http}");
    let drained = guarded("readiness to turn off", async {
        loop {
            let a = call(reqwest::Method::GET, format!("{url}/readyz"), None, None).await;
            if a.status != StatusCode::OK {
                return a;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(drained.status, StatusCode::SERVICE_UNAVAILABLE, "{drained:?}");
    assert!(drained.body.contains("draining"), "{drained:?}");
    // Still serving while the item is in flight: liveness and the API answer.
    assert_eq!(
        call(reqwest::Method::GET, format!("{url}/healthz"), None, None).await.status,
        StatusCode::OK
    );
    let status = call(reqwest::Method::GET, format!("{url}{BASE}/instances/held"), None, None).await;
    assert_eq!(status.status, StatusCode::ACCEPTED, "{status:?}");
    assert!(!server.is_finished());

    // Once the held item is answered the drain ends and the server returns.
    complete_orchestrator(&mut client, &token, "held", vec![])
        .await
        .expect("answer while draining");
    drop(worker);
    drop(client);
    guarded("the server to return", server).await.expect("server task");
}

// ---- TLS ----

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl runs");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA `name`.pem/.key and, signed by it, `leaf`.pem/.key for localhost (server) or a client.
fn make_pki(dir: &Path, ca: &str, leaf: &str, server: bool) {
    let (ca_pem, ca_key) = (format!("{ca}.pem"), format!("{ca}.key"));
    if !dir.join(&ca_pem).exists() {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN={ca}"),
                "-keyout",
                &ca_key,
                "-out",
                &ca_pem,
            ],
        );
    }
    let (pem, key, csr, ext) = (
        format!("{leaf}.pem"),
        format!("{leaf}.key"),
        format!("{leaf}.csr"),
        format!("{leaf}.ext"),
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            &format!("/CN={leaf}"),
            "-keyout",
            &key,
            "-out",
            &csr,
        ],
    );
    let extensions = if server {
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
    } else {
        "extendedKeyUsage=clientAuth\n"
    };
    std::fs::write(dir.join(&ext), extensions).unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_pem,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            &pem,
        ],
    );
}

fn certs(path: &Path) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_file_iter(path)
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// An HTTPS GET over HTTP/1.1 trusting `ca`, with an optional client certificate; the status
/// code, or the error that stopped it.
async fn https_get(addr: SocketAddr, path: &str, ca: &Path, client: Option<(&Path, &Path)>) -> Result<u16, String> {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(certs(ca));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(certs(cert), PrivateKeyDer::from_pem_file(key).unwrap())
            .unwrap(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let exchange = async {
        let mut tls = connector.connect(name, tcp).await.map_err(|e| e.to_string())?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        tls.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
        let mut answer = vec![];
        tls.read_to_end(&mut answer).await.map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&answer);
        let code = text
            .split_whitespace()
            .nth(1)
            .ok_or_else(|| format!("no status line in {text:?}"))?;
        code.parse::<u16>().map_err(|e| format!("{e}: {text:?}"))
    };
    guarded("an HTTPS answer", exchange).await
}

fn acceptor(dir: &Path, client_ca: Option<PathBuf>) -> outrigger::tls::Acceptor {
    outrigger::tls::Acceptor::new(outrigger::tls::Files {
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        client_ca,
    })
    .expect("TLS files load")
}

#[tokio::test]
async fn https_with_the_grpc_certificate_and_reload() {
    let pki = tempfile::tempdir().unwrap();
    let dir = pki.path();
    make_pki(dir, "ca", "server", true);
    make_pki(dir, "other-ca", "server2", true);
    let tls = acceptor(dir, None);
    let s = serve(outrigger::server::Options {
        tls: Some(tls.clone()),
        keys: keys(false),
        ..Default::default()
    })
    .await;
    assert_eq!(https_get(s.http, "/healthz", &dir.join("ca.pem"), None).await, Ok(200));
    // Keys apply over TLS as in the clear.
    assert_eq!(
        https_get(s.http, &format!("{BASE}/instances"), &dir.join("ca.pem"), None).await,
        Ok(401)
    );
    // A client speaking plain HTTP to the TLS listener gets no HTTP answer.
    let plain = reqwest::Client::new().get(format!("http://{}/healthz", s.http)).send().await;
    assert!(plain.is_err(), "plain HTTP refused: {plain:?}");

    // New files, reloaded (what SIGHUP and the file watch do): new handshakes present them.
    std::fs::copy(dir.join("server2.pem"), dir.join("server.pem")).unwrap();
    std::fs::copy(dir.join("server2.key"), dir.join("server.key")).unwrap();
    tls.reload("test");
    assert_eq!(https_get(s.http, "/healthz", &dir.join("other-ca.pem"), None).await, Ok(200));
    assert!(
        https_get(s.http, "/healthz", &dir.join("ca.pem"), None).await.is_err(),
        "the old CA no longer fits"
    );
    drop(s.stop);
}

#[tokio::test]
async fn mtls_refuses_a_client_without_a_certificate() {
    let pki = tempfile::tempdir().unwrap();
    let dir = pki.path();
    make_pki(dir, "ca", "server", true);
    make_pki(dir, "ca", "client", false);
    make_pki(dir, "rogue-ca", "rogue", false);
    let s = serve(outrigger::server::Options {
        tls: Some(acceptor(dir, Some(dir.join("ca.pem")))),
        ..Default::default()
    })
    .await;
    let ca = dir.join("ca.pem");
    let client = (dir.join("client.pem"), dir.join("client.key"));
    assert_eq!(https_get(s.http, "/healthz", &ca, Some((&client.0, &client.1))).await, Ok(200));
    assert!(https_get(s.http, "/healthz", &ca, None).await.is_err(), "no client certificate");
    let rogue = (dir.join("rogue.pem"), dir.join("rogue.key"));
    assert!(
        https_get(s.http, "/healthz", &ca, Some((&rogue.0, &rogue.1))).await.is_err(),
        "a certificate from another CA"
    );
    drop(s.stop);
}
