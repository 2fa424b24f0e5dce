//! A Postgres database of a test's own, on the server `OUTRIGGER_TEST_POSTGRES_URL` names (its
//! user may create databases; `./test.sh` provisions one). Shared by the store conformance suite
//! and the service tests that run a sidecar on Postgres. Each Postgres test first asks
//! [`available`], so a machine without a server runs the rest.
#![allow(dead_code)]

use sqlx::Connection;

/// Whether the Postgres tests can run here. Without `OUTRIGGER_TEST_POSTGRES_URL` they are
/// skipped (false, with a notice on stderr that the test harness does not capture), unless
/// `OUTRIGGER_TEST_REQUIRE_POSTGRES=1` (as `./test.sh` sets) makes that a failure.
pub fn available() -> bool {
    if std::env::var_os("OUTRIGGER_TEST_POSTGRES_URL").is_some() {
        return true;
    }
    if std::env::var("OUTRIGGER_TEST_REQUIRE_POSTGRES").is_ok_and(|v| v == "1") {
        panic!("OUTRIGGER_TEST_POSTGRES_URL is not set and OUTRIGGER_TEST_REQUIRE_POSTGRES=1: the Postgres tests must run");
    }
    static NOTICE: std::sync::Once = std::sync::Once::new();
    NOTICE.call_once(|| {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "postgres tests skipped: OUTRIGGER_TEST_POSTGRES_URL is not set (./test.sh provides a server)"
        );
    });
    false
}

/// The admin URL the Postgres tests read.
pub fn admin_url() -> String {
    std::env::var("OUTRIGGER_TEST_POSTGRES_URL").expect(
        "OUTRIGGER_TEST_POSTGRES_URL is not set: run the tests with ./test.sh, which provisions Postgres, \
         or point it at a database whose user may create databases",
    )
}

/// A fresh database named `<prefix>_<uuid>`, dropped (best effort) when this is dropped.
pub struct TestDatabase {
    admin: String,
    pub name: String,
    pub url: String,
}

impl TestDatabase {
    /// A fresh database with the current schema in place.
    pub async fn create(prefix: &str) -> TestDatabase {
        let admin = admin_url();
        let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
        create_migrated_database(&admin, &name).await;
        let url = with_database(&admin, &name);
        TestDatabase { admin, name, url }
    }
}

/// Creates a database with the current schema in place: a copy of a template migrated once
/// (named for the migrations' contents, so a changed migration gets a template of its own),
/// which spares every test the migrations' own commits. The store still runs its migrator on
/// open, and finds nothing to do.
pub async fn create_migrated_database(admin: &str, database: &str) {
    let template = migrated_template(admin).await;
    create(admin, database, Some(&template)).await;
}

async fn migrated_template(admin: &str) -> String {
    static TEMPLATE: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    TEMPLATE.get_or_init(|| build_template(admin)).await.clone()
}

async fn build_template(admin: &str) -> String {
    use std::hash::{Hash, Hasher};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/store/postgres/migrations");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("migrations")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for f in &files {
        (f.file_name(), std::fs::read(f).expect("migration")).hash(&mut hasher);
    }
    let name = format!("outrigger_template_{:016x}", hasher.finish());
    let mut conn = sqlx::PgConnection::connect(admin)
        .await
        .expect("connect to OUTRIGGER_TEST_POSTGRES_URL");
    let exists = sqlx::query("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(&name)
        .fetch_optional(&mut conn)
        .await
        .expect("look for the template");
    if exists.is_none() {
        // Built under a name of its own and renamed when whole, so a template that exists is
        // complete (a run stopped half-way leaves only a building_ database behind).
        let building = format!("building_{}", uuid::Uuid::new_v4().simple());
        create(admin, &building, None).await;
        let mut target = sqlx::PgConnection::connect(&with_database(admin, &building))
            .await
            .expect("connect");
        let migrator = sqlx::migrate::Migrator::new(dir).await.expect("read migrations");
        migrator.run(&mut target).await.expect("migrate the template");
        target.close().await.expect("close");
        let rename = format!("ALTER DATABASE {building} RENAME TO {name}");
        if sqlx::query(sqlx::AssertSqlSafe(rename)).execute(&mut conn).await.is_err() {
            // Another test process built it first.
            drop_database(admin, &building).await;
        }
    }
    name
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop has no runtime of its own to await on; a short-lived one on another thread does it.
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(drop_database(&admin, &name));
            Ok::<_, std::io::Error>(())
        });
        let _ = dropped.join();
    }
}

/// Creates a database. Postgres refuses to copy its template while another CREATE DATABASE
/// uses it ("source database is being accessed by other users"), so creations in this process
/// take turns, and one that still collides (with another process) is tried again.
pub async fn create_database(admin: &str, database: &str) {
    create(admin, database, None).await
}

/// Creates a database, a copy of `template` when given (Postgres's own `template1` otherwise).
async fn create(admin: &str, database: &str, template: Option<&str>) {
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _turn = TURN.lock().await;
    let mut conn = sqlx::PgConnection::connect(admin)
        .await
        .expect("connect to OUTRIGGER_TEST_POSTGRES_URL");
    let mut attempts = 0;
    loop {
        let from = template.map(|t| format!(" TEMPLATE {t}")).unwrap_or_default();
        match sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}{from}")))
            .execute(&mut conn)
            .await
        {
            Ok(_) => return,
            Err(e) if attempts < 20 && e.to_string().contains("being accessed by other users") => {
                attempts += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => panic!("CREATE DATABASE {database}: {e}"),
        }
    }
}

/// Best effort: a test that passed does not fail over cleanup. An autovacuum worker in the
/// database can make the drop fail for a moment (it is not ours to end).
pub async fn drop_database(admin: &str, database: &str) {
    let Ok(mut conn) = sqlx::PgConnection::connect(admin).await else {
        eprintln!("left database {database} behind: cannot connect");
        return;
    };
    let drop = format!("DROP DATABASE {database} WITH (FORCE)");
    for attempt in 1..=10 {
        match sqlx::query(sqlx::AssertSqlSafe(drop.clone())).execute(&mut conn).await {
            Ok(_) => return,
            Err(e) if attempt == 10 => eprintln!("left database {database} behind: {e}"),
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
        }
    }
}

/// The same server URL naming another database (query parameters kept).
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let authority = base.find("://").map_or(0, |i| i + 3);
    let server = match base[authority..].find('/') {
        Some(slash) => &base[..authority + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{server}/{database}?{q}"),
        None => format!("{server}/{database}"),
    }
}
