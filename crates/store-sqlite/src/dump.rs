//! Dump and load for backups (see `portcullis_store::dump`): the catalog from `sqlite_master` and
//! `pragma_table_info`, values by their storage class.

use std::collections::BTreeSet;

use async_trait::async_trait;
use futures_util::TryStreamExt;
use portcullis_store::{
    Backend, Cell, DumpInfo, DumpSink, Loader, SEEDED_TABLES, StoreError, TABLES, TableHeader, quote_ident,
};
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection, Transaction, TypeInfo, ValueRef};

use crate::{SqliteStore, SqliteTx, corrupt, map_err};

/// SQLite binds at most 32766 parameters per statement (SQLITE_MAX_VARIABLE_NUMBER since 3.32).
const MAX_PARAMS: usize = 32_000;
/// Rows per INSERT statement at most.
const MAX_BATCH: usize = 500;

/// One column as the catalog describes it.
#[derive(Debug, Clone)]
struct Column {
    name: String,
    /// Position in the primary key (1-based), 0 when not part of it.
    pk: i64,
}

/// The tables of the database, except SQLite's and sqlx's own.
async fn user_tables(conn: &mut SqliteConnection) -> Result<BTreeSet<String>, StoreError> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
         AND name <> '_sqlx_migrations'",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(map_err)?;
    Ok(names.into_iter().collect())
}

/// The tables of [`TABLES`] present in the database, in that order; a table the list lacks is an
/// error, so a new migration's table cannot be left out of backups unnoticed.
async fn ordered_tables(conn: &mut SqliteConnection) -> Result<Vec<&'static str>, StoreError> {
    let present = user_tables(conn).await?;
    if let Some(unknown) = present.iter().find(|t| !TABLES.contains(&t.as_str())) {
        return Err(corrupt(&format!(
            "table {unknown} is not in portcullis_store::TABLES, so a backup would miss it"
        )));
    }
    Ok(TABLES.iter().copied().filter(|t| present.contains(*t)).collect())
}

async fn columns(conn: &mut SqliteConnection, table: &str) -> Result<Vec<Column>, StoreError> {
    let rows = sqlx::query("SELECT name, pk FROM pragma_table_info($1) ORDER BY cid")
        .bind(table)
        .fetch_all(&mut *conn)
        .await
        .map_err(map_err)?;
    rows.iter()
        .map(|r| {
            Ok(Column { name: r.try_get("name").map_err(map_err)?, pk: r.try_get("pk").map_err(map_err)? })
        })
        .collect()
}

async fn schema_version(conn: &mut SqliteConnection) -> Result<i64, StoreError> {
    let version: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
        .fetch_one(&mut *conn)
        .await
        .map_err(map_err)?;
    Ok(version.unwrap_or(0))
}

/// A value by the storage class it actually has (SQLite types values, not columns).
fn cell(row: &SqliteRow, index: usize, table: &str, column: &str) -> Result<Cell, StoreError> {
    let raw = row.try_get_raw(index).map_err(map_err)?;
    if raw.is_null() {
        return Ok(Cell::Null);
    }
    let kind = raw.type_info().name().to_owned();
    Ok(match kind.as_str() {
        "INTEGER" | "BOOLEAN" => Cell::Int(row.try_get::<i64, _>(index).map_err(map_err)?),
        "TEXT" => Cell::Text(row.try_get::<String, _>(index).map_err(map_err)?),
        "BLOB" => Cell::Bytes(row.try_get::<Vec<u8>, _>(index).map_err(map_err)?),
        other => {
            return Err(corrupt(&format!(
                "{table}.{column} holds a {other} value, which backups do not carry"
            )));
        }
    })
}

impl SqliteStore {
    pub(crate) async fn dump_tables(&self, sink: &mut dyn DumpSink) -> Result<(), StoreError> {
        // A WAL reader sees one snapshot from its first read to the end of its transaction, while the
        // writer goes on committing (https://sqlite.org/wal.html, "Concurrency").
        let tx = self.reader.begin().await.map_err(map_err)?;
        let mut tx = SqliteTx { tx, failed: false };
        let schema_version = schema_version(&mut tx.tx).await?;
        sink.start(DumpInfo { backend: Backend::Sqlite, schema_version }, &mut tx).await?;
        for table in ordered_tables(&mut tx.tx).await? {
            let columns = columns(&mut tx.tx, table).await?;
            let mut key: Vec<&Column> = columns.iter().filter(|c| c.pk > 0).collect();
            key.sort_by_key(|c| c.pk);
            let order = if key.is_empty() {
                "rowid".to_owned()
            } else {
                key.iter().map(|c| quote_ident(&c.name)).collect::<Vec<_>>().join(", ")
            };
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
                    .map(|(i, c)| cell(&row, i, table, &c.name))
                    .collect::<Result<Vec<_>, _>>()?;
                sink.row(cells).await?;
            }
            drop(rows);
            sink.end_table().await?;
        }
        tx.tx.rollback().await.map_err(map_err)
    }

    pub(crate) async fn start_load(&self, force: bool) -> Result<Box<dyn Loader>, StoreError> {
        let mut tx = if self.path.is_some() {
            self.writer.begin_with("BEGIN IMMEDIATE").await
        } else {
            self.writer.begin().await
        }
        .map_err(map_err)?;
        let tables = ordered_tables(&mut tx).await?;
        if !force {
            for table in tables.iter().filter(|t| !SEEDED_TABLES.contains(t)) {
                let any: Option<i64> =
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
        Ok(Box::new(SqliteLoader { tx, table: None }))
    }
}

/// A load in progress: the writer's transaction and the table being filled.
#[derive(Debug)]
struct SqliteLoader {
    tx: Transaction<'static, Sqlite>,
    table: Option<TableHeader>,
}

#[async_trait]
impl Loader for SqliteLoader {
    async fn table(&mut self, table: &TableHeader) -> Result<(), StoreError> {
        if !TABLES.contains(&table.name.as_str()) {
            return Err(corrupt(&format!("table {} is not one this version knows", table.name)));
        }
        let target: BTreeSet<String> =
            columns(&mut self.tx, &table.name).await?.into_iter().map(|c| c.name).collect();
        if target.is_empty() {
            return Err(corrupt(&format!("table {} does not exist in the target database", table.name)));
        }
        let given: BTreeSet<String> = table.columns.iter().cloned().collect();
        if given.len() != table.columns.len() {
            return Err(corrupt(&format!("table {} names a column twice", table.name)));
        }
        if let Some(missing) = target.difference(&given).next() {
            return Err(corrupt(&format!("table {}: column {missing} is missing from the rows", table.name)));
        }
        if let Some(extra) = given.difference(&target).next() {
            return Err(corrupt(&format!(
                "table {}: column {extra} does not exist in the target",
                table.name
            )));
        }
        self.table = Some(table.clone());
        Ok(())
    }

    async fn rows(&mut self, rows: Vec<Vec<Cell>>) -> Result<(), StoreError> {
        let Some(table) = &self.table else { return Err(corrupt("rows came before their table")) };
        let width = table.columns.len().max(1);
        let batch = (MAX_PARAMS / width).clamp(1, MAX_BATCH);
        let list = table.columns.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ");
        let head = format!("INSERT INTO {} ({list}) ", quote_ident(&table.name));
        for chunk in rows.chunks(batch) {
            if let Some(bad) = chunk.iter().find(|r| r.len() != table.columns.len()) {
                return Err(corrupt(&format!(
                    "table {}: a row has {} cells for {} columns",
                    table.name,
                    bad.len(),
                    table.columns.len()
                )));
            }
            let mut query = QueryBuilder::<Sqlite>::new(&head);
            query.push_values(chunk, |mut b, row| {
                for cell in row {
                    match cell {
                        Cell::Null => b.push_bind(None::<i64>),
                        Cell::Int(v) => b.push_bind(*v),
                        Cell::Text(v) => b.push_bind(v.clone()),
                        Cell::Bytes(v) => b.push_bind(v.clone()),
                    };
                }
            });
            query
                .build()
                .execute(&mut *self.tx)
                .await
                .map_err(|e| corrupt(&format!("table {}: the rows do not insert: {e}", table.name)))?;
        }
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<(), StoreError> {
        // AUTOINCREMENT's counter (sqlite_sequence) follows explicit keys by itself.
        self.tx.commit().await.map_err(map_err)
    }
}
