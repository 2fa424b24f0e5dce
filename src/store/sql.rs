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
use super::encoding::Columns;

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

/// How a list is bound, one parameter whatever its length: Postgres binds an array (`= ANY($1)`);
/// SQLite, which has none, a JSON array its `json_each` reads (`IN (SELECT value FROM
/// json_each(?1))`). Either way the statement's text stays the same, and stays prepared.
pub(super) trait Lists: Database {
    fn ids(q: Bound<Self>, v: &[i64]) -> Bound<Self>;
    fn texts(q: Bound<Self>, v: &[&str]) -> Bound<Self>;
}

impl Lists for sqlx::Sqlite {
    fn ids(q: Bound<Self>, v: &[i64]) -> Bound<Self> {
        q.bind(serde_json::to_string(v).expect("numbers encode"))
    }
    fn texts(q: Bound<Self>, v: &[&str]) -> Bound<Self> {
        q.bind(serde_json::to_string(v).expect("strings encode"))
    }
}

impl Lists for sqlx::Postgres {
    fn ids(q: Bound<Self>, v: &[i64]) -> Bound<Self> {
        q.bind(v.to_vec())
    }
    fn texts(q: Bound<Self>, v: &[&str]) -> Bound<Self> {
        q.bind(v.iter().map(|s| s.to_string()).collect::<Vec<_>>())
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
