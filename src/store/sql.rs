//! One way to bind and run a statement on either engine. [`Sql`] binds the few column types
//! the store writes and runs the statement; it is implemented once, for any sqlx connection
//! whose database takes those types, so the shared transactions and the `Store` run their
//! statements without naming an engine. The SQL stays each engine's (`queries.rs` where both
//! say the same); rows are read through [`Columns`].

use std::future::Future;
use std::marker::PhantomData;

use sqlx::query::Query;
use sqlx::{Database, Encode, Executor, IntoArguments, SqlSafeStr, Type};

use super::Result;
use super::encoding::{Columns, encode};
use crate::model::ActivityTask;

/// A connection of either engine.
pub(super) trait Conn: Send + Sized {
    type Sql: Sql<Conn = Self>;
    /// A statement to bind and run on a connection of this kind.
    fn sql(sql: impl SqlSafeStr) -> Self::Sql;
}

/// A statement being bound (in placeholder order), then run.
pub(super) trait Sql: Send + Sized {
    type Conn;
    type Row: Columns + Send;
    fn text(self, v: &str) -> Self;
    fn maybe_text(self, v: Option<&str>) -> Self;
    fn int(self, v: i64) -> Self;
    fn maybe_int(self, v: Option<i64>) -> Self;
    fn small(self, v: i32) -> Self;
    fn maybe_bytes(self, v: Option<Vec<u8>>) -> Self;
    fn bytes(self, v: Vec<u8>) -> Self;
    /// A list of ids, for the engine's own way of naming many rows ([`Lists`]).
    fn ids(self, v: &[i64]) -> Self;
    fn texts(self, v: &[&str]) -> Self;
    fn blobs(self, v: Vec<Vec<u8>>) -> Self;
    /// Activities to queue: their instance, execution, task id, request, name and version.
    fn activities(self, v: &[ActivityTask]) -> Self;
    /// Runs it; how many rows it changed.
    fn run(self, c: &mut Self::Conn) -> impl Future<Output = Result<u64>> + Send;
    fn rows(self, c: &mut Self::Conn) -> impl Future<Output = Result<Vec<Self::Row>>> + Send;
    fn row(self, c: &mut Self::Conn) -> impl Future<Output = Result<Option<Self::Row>>> + Send;
}

pub(super) struct Statement<C: sqlx::Connection>(
    Query<'static, C::Database, <C::Database as Database>::Arguments>,
    PhantomData<fn() -> C>,
);

impl<C> Conn for C
where
    C: sqlx::Connection,
    Statement<C>: Sql<Conn = C>,
{
    type Sql = Statement<C>;
    fn sql(sql: impl SqlSafeStr) -> Statement<C> {
        Statement(sqlx::query(sql), PhantomData)
    }
}

impl<C, DB> Sql for Statement<C>
where
    C: sqlx::Connection<Database = DB>,
    DB: Lists,
    DB::Arguments: IntoArguments<DB>,
    DB::Row: Columns,
    DB::QueryResult: Affected,
    for<'c> &'c mut C: Executor<'c, Database = DB>,
    for<'t> &'t str: Encode<'t, DB> + Type<DB>,
    for<'t> Option<&'t str>: Encode<'t, DB> + Type<DB>,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
    for<'t> Option<i64>: Encode<'t, DB> + Type<DB>,
    for<'t> i32: Encode<'t, DB> + Type<DB>,
    for<'t> Vec<u8>: Encode<'t, DB> + Type<DB>,
    for<'t> Option<Vec<u8>>: Encode<'t, DB> + Type<DB>,
{
    type Conn = C;
    type Row = DB::Row;
    fn text(self, v: &str) -> Self {
        Statement(self.0.bind(v), PhantomData)
    }
    fn maybe_text(self, v: Option<&str>) -> Self {
        Statement(self.0.bind(v), PhantomData)
    }
    fn int(self, v: i64) -> Self {
        Statement(self.0.bind(v), PhantomData)
    }
    fn maybe_int(self, v: Option<i64>) -> Self {
        Statement(self.0.bind(v), PhantomData)
    }
    fn small(self, v: i32) -> Self {
        Statement(self.0.bind(v), PhantomData)
    }
    fn maybe_bytes(self, v: Option<Vec<u8>>) -> Self {
        Statement(self.0.bind(v), PhantomData)
    }
    fn bytes(self, v: Vec<u8>) -> Self {
        Statement(self.0.bind(v), PhantomData)
    }
    fn ids(self, v: &[i64]) -> Self {
        Statement(DB::ids(self.0, v), PhantomData)
    }
    fn texts(self, v: &[&str]) -> Self {
        Statement(DB::texts(self.0, v), PhantomData)
    }
    fn blobs(self, v: Vec<Vec<u8>>) -> Self {
        Statement(DB::blobs(self.0, v), PhantomData)
    }
    fn activities(self, v: &[ActivityTask]) -> Self {
        Statement(DB::activities(self.0, v), PhantomData)
    }
    async fn run(self, c: &mut C) -> Result<u64> {
        Ok(self.0.execute(c).await?.affected())
    }
    async fn rows(self, c: &mut C) -> Result<Vec<DB::Row>> {
        Ok(self.0.fetch_all(c).await?)
    }
    async fn row(self, c: &mut C) -> Result<Option<DB::Row>> {
        Ok(self.0.fetch_optional(c).await?)
    }
}

type Bound<DB> = Query<'static, DB, <DB as Database>::Arguments>;

/// How a list is bound, whatever its length, so the statement's text stays the same and stays
/// prepared: Postgres binds an array (`= ANY($1)`, `UNNEST`), one per column; SQLite, which has
/// none, one JSON array its `json_each` reads (`IN (SELECT value FROM json_each(?1))`), bytes
/// as hex, each row of many columns an array.
pub(super) trait Lists: Database {
    fn ids(q: Bound<Self>, v: &[i64]) -> Bound<Self>;
    fn texts(q: Bound<Self>, v: &[&str]) -> Bound<Self>;
    fn blobs(q: Bound<Self>, v: Vec<Vec<u8>>) -> Bound<Self>;
    fn activities(q: Bound<Self>, v: &[ActivityTask]) -> Bound<Self>;
}

impl Lists for sqlx::Sqlite {
    fn ids(q: Bound<Self>, v: &[i64]) -> Bound<Self> {
        q.bind(serde_json::to_string(v).expect("numbers encode"))
    }
    fn texts(q: Bound<Self>, v: &[&str]) -> Bound<Self> {
        q.bind(serde_json::to_string(v).expect("strings encode"))
    }
    fn blobs(q: Bound<Self>, v: Vec<Vec<u8>>) -> Bound<Self> {
        q.bind(json_array(&v, |out, b| {
            out.push('"');
            push_hex(out, b);
            out.push('"');
        }))
    }
    fn activities(q: Bound<Self>, v: &[ActivityTask]) -> Bound<Self> {
        let text = |s: &str| serde_json::to_string(s).expect("strings encode");
        q.bind(json_array(v, |out, a| {
            let r = &a.request;
            out.push_str(&format!("[{},{},{},\"", text(&a.instance_id), text(&a.execution_id), r.task_id));
            push_hex(out, &encode(r));
            let version = r.version.as_deref().map_or_else(|| "null".to_string(), text);
            out.push_str(&format!("\",{},{version}]", text(&r.name)));
        }))
    }
}

/// A JSON array written out by hand, `item` writing each element, so that bytes go into the
/// text as hex directly, with no other copy of them on the way (a step's payloads can be
/// tens of megabytes).
fn json_array<T>(items: &[T], mut item: impl FnMut(&mut String, &T)) -> String {
    let mut json = String::from("[");
    for (i, t) in items.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        item(&mut json, t);
    }
    json.push(']');
    json
}

impl Lists for sqlx::Postgres {
    fn ids(q: Bound<Self>, v: &[i64]) -> Bound<Self> {
        q.bind(v.to_vec())
    }
    fn texts(q: Bound<Self>, v: &[&str]) -> Bound<Self> {
        q.bind(v.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }
    fn blobs(q: Bound<Self>, v: Vec<Vec<u8>>) -> Bound<Self> {
        q.bind(v)
    }
    fn activities(q: Bound<Self>, v: &[ActivityTask]) -> Bound<Self> {
        let column = |f: fn(&ActivityTask) -> Option<String>| v.iter().map(f).collect::<Vec<_>>();
        let q = q
            .bind(column(|a| Some(a.instance_id.clone())))
            .bind(column(|a| Some(a.execution_id.clone())));
        let q = q.bind(v.iter().map(|a| a.request.task_id).collect::<Vec<_>>());
        let q = q.bind(v.iter().map(|a| encode(&a.request)).collect::<Vec<_>>());
        q.bind(column(|a| Some(a.request.name.clone())))
            .bind(column(|a| a.request.version.clone()))
    }
}

/// Lower-case hex, which SQLite's `unhex` reads back.
fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.reserve(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
}

/// How many rows a statement changed (each driver says it its own way).
pub(super) trait Affected {
    fn affected(&self) -> u64;
}

impl Affected for sqlx::sqlite::SqliteQueryResult {
    fn affected(&self) -> u64 {
        self.rows_affected()
    }
}

impl Affected for sqlx::postgres::PgQueryResult {
    fn affected(&self) -> u64 {
        self.rows_affected()
    }
}

#[cfg(test)]
mod tests {
    use sqlx::Connection;

    use super::*;

    #[tokio::test]
    async fn bytes_bound_as_a_list_come_back_from_sqlite_unchanged() {
        let mut conn = sqlx::SqliteConnection::connect("sqlite::memory:").await.unwrap();
        let blobs = vec![vec![], vec![0, 1, 0x7f, 0x80, 0xff], (0..=255).collect()];
        let q = <sqlx::SqliteConnection as Conn>::sql("SELECT unhex(value) AS b FROM json_each($1) ORDER BY key");
        let rows = q.blobs(blobs.clone()).rows(&mut conn).await.unwrap();
        let back: Vec<Vec<u8>> = rows.iter().map(|r| r.bytes("b").unwrap().to_vec()).collect();
        assert_eq!(back, blobs);
    }

    #[tokio::test]
    async fn activities_bound_as_one_list_come_back_from_sqlite_column_for_column() {
        let mut conn = sqlx::SqliteConnection::connect("sqlite::memory:").await.unwrap();
        let task = |id: i32, name: &str, version: Option<&str>| ActivityTask {
            instance_id: format!("i\"{id}\\ é"),
            execution_id: "e".into(),
            request: crate::proto::ActivityRequest {
                name: name.into(),
                version: version.map(Into::into),
                task_id: id,
                input: Some("\u{0}[1]".into()),
                ..Default::default()
            },
        };
        let tasks = vec![task(7, "Say \"hi\"", None), task(-1, "ünï", Some("2.0"))];
        let q = <sqlx::SqliteConnection as Conn>::sql(
            "SELECT a.value ->> 0 AS i, a.value ->> 1 AS e, a.value ->> 2 AS t, unhex(a.value ->> 3) AS r, \
             a.value ->> 4 AS n, a.value ->> 5 AS v FROM json_each($1) a ORDER BY a.key",
        );
        let rows = q.activities(&tasks).rows(&mut conn).await.unwrap();
        assert_eq!(rows.len(), tasks.len());
        for (r, a) in rows.iter().zip(&tasks) {
            assert_eq!(r.text("i").unwrap(), a.instance_id);
            assert_eq!(r.text("e").unwrap(), a.execution_id);
            assert_eq!(r.small("t").unwrap(), a.request.task_id);
            assert_eq!(r.bytes("r").unwrap(), encode(&a.request));
            assert_eq!(r.text("n").unwrap(), a.request.name);
            assert_eq!(r.maybe_text("v").unwrap(), a.request.version);
        }
    }
}
