//! The contract of dump and load (backups): every table in the fixed order, rows in primary-key
//! order from one snapshot, values that survive a load into an empty database byte for byte (on
//! either engine, and from one engine to the other), and a load that refuses a database holding data
//! unless forced.

use std::collections::BTreeMap;

use async_trait::async_trait;
use portcullis_domain::{SecurityEventKind, error_chain};
use portcullis_store::{Cell, DumpInfo, DumpSink, Store, StoreError, StoreTx, TABLES, TableHeader};

use super::{Failure, Outcome, Step, at, ensure, ensure_eq, event, migrated, role_scene, write_sealed_rows};

/// A whole dump, held in memory (fine for the small fixtures of the contract).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Dumped {
    pub info: Option<DumpInfo>,
    pub tables: Vec<(TableHeader, Vec<Vec<Cell>>)>,
}

impl Dumped {
    /// Each table's rows as column name → value, so dumps of engines that order a table's columns
    /// differently compare equal when they hold the same data.
    pub fn logical(&self) -> Vec<(String, Vec<BTreeMap<String, Cell>>)> {
        self.tables
            .iter()
            .map(|(header, rows)| {
                let rows = rows
                    .iter()
                    .map(|row| header.columns.iter().cloned().zip(row.iter().cloned()).collect())
                    .collect();
                (header.name.clone(), rows)
            })
            .collect()
    }

    /// The rows of one table.
    pub fn rows_of(&self, table: &str) -> usize {
        self.tables.iter().find(|(h, _)| h.name == table).map_or(0, |(_, rows)| rows.len())
    }
}

#[async_trait]
impl DumpSink for Dumped {
    async fn start(&mut self, info: DumpInfo, _snapshot: &mut dyn StoreTx) -> Result<(), StoreError> {
        self.info = Some(info);
        Ok(())
    }

    async fn table(&mut self, table: &TableHeader) -> Result<(), StoreError> {
        self.tables.push((table.clone(), Vec::new()));
        Ok(())
    }

    async fn row(&mut self, row: Vec<Cell>) -> Result<(), StoreError> {
        match self.tables.last_mut() {
            Some((_, rows)) => rows.push(row),
            None => return Err(portcullis_store::interrupted("a row came before any table")),
        }
        Ok(())
    }

    async fn end_table(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Dumps the whole store.
pub async fn dump_all(store: &dyn Store) -> Result<Dumped, Failure> {
    let mut dumped = Dumped::default();
    store.dump(&mut dumped).await.step("dump")?;
    Ok(dumped)
}

/// Loads a dump into `store` (migrated), a table at a time.
pub async fn load_all(store: &dyn Store, dumped: &Dumped, force: bool) -> Result<(), StoreError> {
    let mut loader = store.load(force).await?;
    for (header, rows) in &dumped.tables {
        loader.table(header).await?;
        loader.rows(rows.clone()).await?;
    }
    loader.finish().await
}

/// Migrates `store` and writes rows into most tables: users with sealed bytes of every value,
/// sessions, one-time tokens, security events (an identity key on PostgreSQL), a TOTP seed,
/// organizations with memberships and custom roles (booleans on PostgreSQL).
pub async fn seed(store: &dyn Store) -> Outcome {
    role_scene(store).await?;
    write_sealed_rows(store).await?;
    Ok(())
}

/// A migrated and seeded database dumps every table of [`TABLES`] (so none is missing from the list,
/// or the dump would have refused it), in that order, with the schema version, and each table's
/// rows in primary-key order.
pub async fn a_dump_holds_every_table_in_the_fixed_order_with_rows_in_key_order(
    store: &dyn Store,
) -> Outcome {
    seed(store).await?;
    let status = store.migration_status().await.step("read the migration status")?;

    let dumped = dump_all(store).await?;

    let names: Vec<&str> = dumped.tables.iter().map(|(h, _)| h.name.as_str()).collect();
    ensure_eq("the tables dumped", &names, &TABLES.to_vec())?;
    ensure_eq("the schema version", &dumped.info.map(|i| i.schema_version), &Some(status.schema_version()))?;
    ensure_eq("the backend", &dumped.info.map(|i| i.backend), &Some(store.backend()))?;
    ensure(dumped.rows_of("users") >= 4, || format!("only {} users dumped", dumped.rows_of("users")))?;
    ensure(dumped.rows_of("security_events") >= 4, || "security events missing".to_owned())?;
    ensure_eq("the genesis audit head", &dumped.rows_of("audit_head"), &1)?;
    for (header, rows) in &dumped.tables {
        let Some(id) = header.columns.iter().position(|c| c == "id") else { continue };
        let ids: Vec<&Cell> = rows.iter().map(|r| &r[id]).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        ensure_eq(&format!("the order of {}", header.name), &ids, &sorted)?;
    }
    Ok(())
}

/// Loading refuses a database that holds data (a conflict on `database`); forced, it replaces what is
/// there, and the result dumps exactly as the original did. An identity key continues after the
/// loaded ones: a new security event is stored, not refused as a duplicate.
pub async fn a_load_refuses_a_database_with_data_unless_forced_and_then_reproduces_the_dump(
    store: &dyn Store,
) -> Outcome {
    seed(store).await?;
    let before = dump_all(store).await?;

    match load_all(store, &before, false).await {
        Err(StoreError::Conflict { entity: "database" }) => {}
        Err(other) => {
            return Err(Failure(format!(
                "an unforced load: expected a conflict, got {}",
                error_chain(&other)
            )));
        }
        Ok(()) => return Err(Failure("an unforced load into a database with data succeeded".to_owned())),
    }
    load_all(store, &before, true).await.step("a forced load")?;
    let after = dump_all(store).await?;
    ensure_eq("the dump after the load", &after.logical(), &before.logical())?;

    let mut tx = store.begin().await.step("begin")?;
    tx.insert_security_event(&event(0x77, SecurityEventKind::LoginFailed, None, 50))
        .await
        .step("insert a security event after the load")?;
    tx.commit().await.step("commit")?;
    let _ = at(0);
    Ok(())
}

/// A load whose rows name a column the table lacks, or lack one it has, is refused naming both.
pub async fn a_load_with_other_columns_is_refused_naming_the_table_and_column(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let mut loader = store.load(false).await.step("start a load")?;
    let header =
        TableHeader { name: "ip_rules".to_owned(), columns: vec!["id".to_owned(), "nope".to_owned()] };
    match loader.table(&header).await {
        Err(StoreError::Corrupt(why)) => ensure(why.contains("ip_rules"), || format!("the reason: {why}")),
        Err(other) => Err(Failure(format!("expected Corrupt, got {}", error_chain(&other)))),
        Ok(()) => Err(Failure("a table with unknown columns was accepted".to_owned())),
    }
}
