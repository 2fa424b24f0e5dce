//! The binary's start-up contract: what an operator sees when the database is wrong, and the
//! `migrate` subcommand.

use std::process::{Command, Output};

fn outrigger(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_outrigger"))
        .args(args)
        .env_remove("OUTRIGGER_DATABASE_URL")
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "error")
        .output()
        .expect("run outrigger")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Port 1 on loopback refuses connections at once: a database that is not there.
const UNREACHABLE: &str = "postgres://outrigger:secret@127.0.0.1:1/outrigger";

#[test]
fn an_unreachable_postgres_at_start_exits_69_with_the_reason() {
    let o = outrigger(&["--port", "0", "--database-url", UNREACHABLE]);
    assert_eq!(o.status.code(), Some(69), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("cannot open postgres://outrigger:***@127.0.0.1:1/outrigger"), "{err}");
    assert!(err.contains("refused"), "the cause is named: {err}");
    assert!(!err.contains("secret"), "the password is never printed: {err}");
}

#[test]
fn migrate_reports_an_unreachable_database_the_same_way() {
    let o = outrigger(&["migrate", "--database-url", UNREACHABLE]);
    assert_eq!(o.status.code(), Some(69), "{}", stderr(&o));
    assert!(stderr(&o).contains("cannot migrate"), "{}", stderr(&o));
}

#[test]
fn an_unknown_database_scheme_is_refused() {
    let o = outrigger(&["--port", "0", "--database-url", "mysql://localhost/x"]);
    assert_eq!(o.status.code(), Some(69), "{}", stderr(&o));
    assert!(stderr(&o).contains("unsupported database URL"), "{}", stderr(&o));
}

#[test]
fn migrate_creates_the_schema_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("migrated.db");
    let url = format!("sqlite://{}", db.display());
    let o = outrigger(&["migrate", "--database-url", &url]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tables: Vec<String> = rt.block_on(async {
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE '\\_%' ESCAPE '\\' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name")
            .fetch_all(&mut conn)
            .await
            .unwrap()
    });
    assert_eq!(tables, ["activities", "entities", "entity_queue", "history", "inbox", "instances"]);
    // Running it again is a no-op.
    assert!(outrigger(&["migrate", "--database-url", &url]).status.success());
}
