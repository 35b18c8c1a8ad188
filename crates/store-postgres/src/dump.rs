//! Dump and load for backups (see `portcullis_store::dump`): the catalog from `information_schema`,
//! values decoded by their column's type, one REPEATABLE READ snapshot.

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use futures_util::TryStreamExt;
use portcullis_store::{
    Backend, Cell, DumpInfo, DumpSink, Loader, SEEDED_TABLES, StoreError, TABLES, TableHeader, quote_ident,
};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Postgres, QueryBuilder, Row, Transaction};

use crate::{BEGIN_READ, PostgresStore, PostgresTx, corrupt, map_err};

/// PostgreSQL binds at most 65535 parameters per statement (the protocol's 16-bit count).
const MAX_PARAMS: usize = 60_000;
/// Rows per INSERT statement at most.
const MAX_BATCH: usize = 500;

/// One column as the catalog describes it.
#[derive(Debug, Clone)]
struct Column {
    name: String,
    /// `udt_name`: int2, int4, int8, bool, text, bytea, ...
    kind: String,
    identity: bool,
}

async fn user_tables(conn: &mut PgConnection) -> Result<BTreeSet<String>, StoreError> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' \
         AND table_name <> '_sqlx_migrations'",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(map_err)?;
    Ok(names.into_iter().collect())
}

/// The tables of [`TABLES`] present in the database, in that order; a table the list lacks is an
/// error, so a new migration's table cannot be left out of backups unnoticed.
async fn ordered_tables(conn: &mut PgConnection) -> Result<Vec<&'static str>, StoreError> {
    let present = user_tables(conn).await?;
    if let Some(unknown) = present.iter().find(|t| !TABLES.contains(&t.as_str())) {
        return Err(corrupt(&format!(
            "table {unknown} is not in portcullis_store::TABLES, so a backup would miss it"
        )));
    }
    Ok(TABLES.iter().copied().filter(|t| present.contains(*t)).collect())
}

async fn columns(conn: &mut PgConnection, table: &str) -> Result<Vec<Column>, StoreError> {
    let rows = sqlx::query(
        "SELECT column_name::text AS name, udt_name::text AS kind, is_identity::text AS identity \
         FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = $1 \
         ORDER BY ordinal_position",
    )
    .bind(table)
    .fetch_all(&mut *conn)
    .await
    .map_err(map_err)?;
    rows.iter()
        .map(|r| {
            Ok(Column {
                name: r.try_get("name").map_err(map_err)?,
                kind: r.try_get("kind").map_err(map_err)?,
                identity: r.try_get::<String, _>("identity").map_err(map_err)? == "YES",
            })
        })
        .collect()
}

async fn primary_key(conn: &mut PgConnection, table: &str) -> Result<Vec<String>, StoreError> {
    sqlx::query_scalar(
        "SELECT kcu.column_name::text FROM information_schema.table_constraints tc \
         JOIN information_schema.key_column_usage kcu ON kcu.constraint_schema = tc.constraint_schema \
         AND kcu.constraint_name = tc.constraint_name AND kcu.table_name = tc.table_name \
         WHERE tc.constraint_type = 'PRIMARY KEY' AND tc.table_schema = current_schema() \
         AND tc.table_name = $1 ORDER BY kcu.ordinal_position",
    )
    .bind(table)
    .fetch_all(&mut *conn)
    .await
    .map_err(map_err)
}

async fn schema_version(conn: &mut PgConnection) -> Result<i64, StoreError> {
    let version: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
        .fetch_one(&mut *conn)
        .await
        .map_err(map_err)?;
    Ok(version.unwrap_or(0))
}

fn cell(row: &PgRow, index: usize, table: &str, column: &Column) -> Result<Cell, StoreError> {
    fn get<'r, T: sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>>(
        row: &'r PgRow,
        index: usize,
    ) -> Result<Option<T>, StoreError> {
        row.try_get::<Option<T>, _>(index).map_err(map_err)
    }
    let cell = match column.kind.as_str() {
        "int2" => get::<i16>(row, index)?.map(|v| Cell::Int(v.into())),
        "int4" => get::<i32>(row, index)?.map(|v| Cell::Int(v.into())),
        "int8" => get::<i64>(row, index)?.map(Cell::Int),
        "bool" => get::<bool>(row, index)?.map(|v| Cell::Int(v.into())),
        "text" | "varchar" | "bpchar" => get::<String>(row, index)?.map(Cell::Text),
        "bytea" => get::<Vec<u8>>(row, index)?.map(Cell::Bytes),
        other => {
            return Err(corrupt(&format!(
                "{table}.{} has type {other}, which backups do not carry",
                column.name
            )));
        }
    };
    Ok(cell.unwrap_or(Cell::Null))
}

impl PostgresStore {
    pub(crate) async fn dump_tables(&self, sink: &mut dyn DumpSink) -> Result<(), StoreError> {
        // REPEATABLE READ: every statement of the transaction sees the snapshot taken at its first
        // (PostgreSQL manual, "Transaction Isolation"), while other sessions go on writing.
        let tx = self.pool.begin_with(BEGIN_READ).await.map_err(map_err)?;
        let mut tx = PostgresTx { tx, failed: false };
        let schema_version = schema_version(&mut tx.tx).await?;
        sink.start(DumpInfo { backend: Backend::Postgres, schema_version }, &mut tx).await?;
        for table in ordered_tables(&mut tx.tx).await? {
            let columns = columns(&mut tx.tx, table).await?;
            let key = primary_key(&mut tx.tx, table).await?;
            if key.is_empty() {
                return Err(corrupt(&format!("table {table} has no primary key to order its rows by")));
            }
            // Text keys in byte order (COLLATE "C"), as SQLite sorts them, so a dump of the same rows
            // is the same on both engines whatever the database's collation.
            let order = key
                .iter()
                .map(|k| {
                    let text = columns.iter().any(|c| &c.name == k && c.kind == "text");
                    let collate = if text { " COLLATE \"C\"" } else { "" };
                    format!("{}{collate}", quote_ident(k))
                })
                .collect::<Vec<_>>()
                .join(", ");
            let list = columns.iter().map(|c| quote_ident(&c.name)).collect::<Vec<_>>().join(", ");
            let sql = format!("SELECT {list} FROM {} ORDER BY {order}", quote_ident(table));
            sink.table(&TableHeader {
                name: table.to_owned(),
                columns: columns.iter().map(|c| c.name.clone()).collect(),
            })
            .await?;
            let mut rows = sqlx::query(&sql).fetch(&mut *tx.tx);
            while let Some(row) = rows.try_next().await.map_err(map_err)? {
                let cells = columns
                    .iter()
                    .enumerate()
                    .map(|(i, c)| cell(&row, i, table, c))
                    .collect::<Result<Vec<_>, _>>()?;
                sink.row(cells).await?;
            }
            drop(rows);
            sink.end_table().await?;
        }
        tx.tx.rollback().await.map_err(map_err)
    }

    pub(crate) async fn start_load(&self, force: bool) -> Result<Box<dyn Loader>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let tables = ordered_tables(&mut tx).await?;
        if !force {
            for table in tables.iter().filter(|t| !SEEDED_TABLES.contains(t)) {
                let any: Option<i32> =
                    sqlx::query_scalar(&format!("SELECT 1 FROM {} LIMIT 1", quote_ident(table)))
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(map_err)?;
                if any.is_some() {
                    return Err(StoreError::Conflict { entity: "database" });
                }
            }
        }
        // Children first, so no foreign key is ever left dangling mid-way.
        for table in tables.iter().rev() {
            sqlx::query(&format!("DELETE FROM {}", quote_ident(table)))
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
        }
        Ok(Box::new(PostgresLoader { tx, table: None, identities: Vec::new() }))
    }
}

/// A load in progress: its transaction, the table being filled and the identity columns to move past
/// the loaded keys at the end.
#[derive(Debug)]
struct PostgresLoader {
    tx: Transaction<'static, Postgres>,
    table: Option<(TableHeader, Vec<Column>, bool)>,
    identities: Vec<(String, String)>,
}

/// Binds a cell as the target column's type: PostgreSQL checks parameter types, SQLite does not.
fn push_cell(
    b: &mut sqlx::query_builder::Separated<'_, '_, Postgres, &'static str>,
    cell: &Cell,
    column: &Column,
) -> Result<(), String> {
    match (column.kind.as_str(), cell) {
        ("int2", Cell::Null) => b.push_bind(None::<i16>),
        ("int4", Cell::Null) => b.push_bind(None::<i32>),
        ("int8", Cell::Null) => b.push_bind(None::<i64>),
        ("bool", Cell::Null) => b.push_bind(None::<bool>),
        ("text" | "varchar" | "bpchar", Cell::Null) => b.push_bind(None::<String>),
        ("bytea", Cell::Null) => b.push_bind(None::<Vec<u8>>),
        ("int2", Cell::Int(v)) => b.push_bind(i16::try_from(*v).map_err(|_| "out of range for int2")?),
        ("int4", Cell::Int(v)) => b.push_bind(i32::try_from(*v).map_err(|_| "out of range for int4")?),
        ("int8", Cell::Int(v)) => b.push_bind(*v),
        ("bool", Cell::Int(0)) => b.push_bind(false),
        ("bool", Cell::Int(1)) => b.push_bind(true),
        ("text" | "varchar" | "bpchar", Cell::Text(v)) => b.push_bind(v.clone()),
        ("bytea", Cell::Bytes(v)) => b.push_bind(v.clone()),
        (kind, cell) => return Err(format!("a {} value does not fit its {kind} column", cell_kind(cell))),
    };
    Ok(())
}

fn cell_kind(cell: &Cell) -> &'static str {
    match cell {
        Cell::Null => "null",
        Cell::Int(_) => "integer",
        Cell::Text(_) => "text",
        Cell::Bytes(_) => "bytes",
    }
}

#[async_trait]
impl Loader for PostgresLoader {
    async fn table(&mut self, table: &TableHeader) -> Result<(), StoreError> {
        if !TABLES.contains(&table.name.as_str()) {
            return Err(corrupt(&format!("table {} is not one this version knows", table.name)));
        }
        let target: BTreeMap<String, Column> =
            columns(&mut self.tx, &table.name).await?.into_iter().map(|c| (c.name.clone(), c)).collect();
        if target.is_empty() {
            return Err(corrupt(&format!("table {} does not exist in the target database", table.name)));
        }
        let given: BTreeSet<&String> = table.columns.iter().collect();
        if given.len() != table.columns.len() {
            return Err(corrupt(&format!("table {} names a column twice", table.name)));
        }
        if let Some(missing) = target.keys().find(|c| !given.contains(c)) {
            return Err(corrupt(&format!("table {}: column {missing} is missing from the rows", table.name)));
        }
        let mut ordered = Vec::with_capacity(table.columns.len());
        for name in &table.columns {
            let Some(column) = target.get(name) else {
                return Err(corrupt(&format!(
                    "table {}: column {name} does not exist in the target",
                    table.name
                )));
            };
            ordered.push(column.clone());
        }
        let identity = ordered.iter().any(|c| c.identity);
        for column in ordered.iter().filter(|c| c.identity) {
            self.identities.push((table.name.clone(), column.name.clone()));
        }
        self.table = Some((table.clone(), ordered, identity));
        Ok(())
    }

    async fn rows(&mut self, rows: Vec<Vec<Cell>>) -> Result<(), StoreError> {
        let Some((table, columns, identity)) = &self.table else {
            return Err(corrupt("rows came before their table"));
        };
        let width = columns.len().max(1);
        let batch = (MAX_PARAMS / width).clamp(1, MAX_BATCH);
        let list = columns.iter().map(|c| quote_ident(&c.name)).collect::<Vec<_>>().join(", ");
        // GENERATED ALWAYS identity columns take the stored keys only when told to.
        let overriding = if *identity { " OVERRIDING SYSTEM VALUE" } else { "" };
        let head = format!("INSERT INTO {} ({list}){overriding} ", quote_ident(&table.name));
        for chunk in rows.chunks(batch) {
            if let Some(bad) = chunk.iter().find(|r| r.len() != columns.len()) {
                return Err(corrupt(&format!(
                    "table {}: a row has {} cells for {} columns",
                    table.name,
                    bad.len(),
                    columns.len()
                )));
            }
            let mut fault: Option<String> = None;
            let mut query = QueryBuilder::<Postgres>::new(&head);
            query.push_values(chunk, |mut b, row| {
                for (cell, column) in row.iter().zip(columns) {
                    if let Err(why) = push_cell(&mut b, cell, column)
                        && fault.is_none()
                    {
                        fault = Some(format!("table {}, column {}: {why}", table.name, column.name));
                    }
                }
            });
            if let Some(fault) = fault {
                return Err(corrupt(&fault));
            }
            query
                .build()
                .execute(&mut *self.tx)
                .await
                .map_err(|e| corrupt(&format!("table {}: the rows do not insert: {e}", table.name)))?;
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<(), StoreError> {
        // Explicit keys do not move an identity's sequence: without this the next insert would
        // collide with a restored row.
        for (table, column) in &self.identities {
            let sql = format!(
                "SELECT setval(pg_get_serial_sequence($1, $2), COALESCE(MAX({col}), 0) + 1, false) FROM {tab}",
                col = quote_ident(column),
                tab = quote_ident(table)
            );
            sqlx::query(&sql)
                .bind(quote_ident(table))
                .bind(column)
                .execute(&mut *self.tx)
                .await
                .map_err(map_err)?;
        }
        self.tx.commit().await.map_err(map_err)
    }
}
