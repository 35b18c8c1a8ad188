//! Fuzzes the backup archive reader (`ArchiveReader`), which `backup verify` and `backup restore`
//! run on files that may have been tampered with: the manifest, the header, table lines and rows.
//!
//! Each input is read in one of two ways, by its first byte:
//!
//! - `0xFF` then arbitrary tables of rows: written with `ArchiveWriter` (the writer `backup create`
//!   uses) to this process's key and authenticated under this process's KEK, and read back. Tables
//!   are named from `portcullis_store::TABLES` in its order (the writer refuses any other). The
//!   writer refuses exactly the rows that do not fit their table's columns; every table, column and
//!   cell it took must come back exactly as written, and the manifest at the end must be the
//!   writer's.
//! - anything else: the decrypted, decompressed text of an archive as an attacker would write it
//!   (JSON lines: a header, tables, rows, a manifest), compressed and encrypted to this process's key
//!   here so that the reader gets past age and zstd to the lines. It is read to its end or its first
//!   defect. The reader expects the backup id `fuzz` and knows the KEK `fuzz`, so a crafted header
//!   naming them gets to the rows; a crafted manifest's MAC is checked like any other.
//!
//! Invariant for both: no panic, no hang; and in the second, an archive read to its manifest holds
//! for every table exactly the rows the manifest counts (the reader checks the MAC, counts and
//! checksums; a manifest it accepted over rows it did not count would be a bug).
#![no_main]

use std::io::Write;
use std::sync::LazyLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use portcullis_app::KekSet;
use portcullis_app::backup_format::{
    ArchiveReader, ArchiveWriter, ChainPoint, FORMAT, FORMAT_VERSION, Header, Item,
};
use portcullis_store::{Cell, TABLES, TableHeader};

#[expect(deprecated, reason = "X25519 recipients, as backups use (ADR 0012)")]
static IDENTITY: LazyLock<age::x25519::Identity> = LazyLock::new(age::x25519::Identity::generate);
/// The KEK whose derived key authenticates the archives written here (32 bytes of 0x2a).
static KEKS: LazyLock<KekSet> =
    LazyLock::new(|| KekSet::parse("fuzz:KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio").expect("a KEK"));
/// The backup id every archive here has.
const ID: &str = "fuzz";

#[derive(Debug, Arbitrary)]
enum FuzzCell {
    Null,
    Int(i64),
    Text(String),
    Bytes(Vec<u8>),
}

impl From<FuzzCell> for Cell {
    fn from(cell: FuzzCell) -> Self {
        match cell {
            FuzzCell::Null => Cell::Null,
            FuzzCell::Int(v) => Cell::Int(v),
            FuzzCell::Text(v) => Cell::Text(v),
            FuzzCell::Bytes(v) => Cell::Bytes(v),
        }
    }
}

#[derive(Debug, Arbitrary)]
struct FuzzTable {
    /// How far past the previous table in `TABLES` this one is.
    skip: u8,
    columns: Vec<String>,
    rows: Vec<Vec<FuzzCell>>,
}

fn header() -> Header {
    Header {
        format: FORMAT.to_owned(),
        format_version: FORMAT_VERSION,
        backup_id: ID.to_owned(),
        mac_kek_id: String::new(),
        app_version: "fuzz".to_owned(),
        schema_version: 9,
        created_at: "2026-01-01T00:00:00Z".to_owned(),
        created_at_ms: 1_767_225_600_000,
        backend: "sqlite".to_owned(),
        audit_head: ChainPoint { seq: 0, hash: "00".repeat(32) },
        latest_checkpoint: None,
    }
}

fn identities() -> Vec<Box<dyn age::Identity + Send + Sync>> {
    vec![Box::new(IDENTITY.clone())]
}

fn round_trip(tables: Vec<FuzzTable>) {
    let recipients: Vec<Box<dyn age::Recipient + Send>> = vec![Box::new(IDENTITY.to_public())];
    let mut writer = ArchiveWriter::new(Vec::new(), &recipients, header(), &KEKS).expect("a writer");
    let mut written = Vec::new();
    let mut next = 0usize;
    for table in tables.into_iter().take(8) {
        let position = next + usize::from(table.skip % 4);
        let Some(name) = TABLES.get(position) else { break };
        next = position + 1;
        let header = TableHeader { name: (*name).to_owned(), columns: table.columns };
        if header.columns.is_empty() || header.columns.len() > 256 {
            assert!(writer.table(&header).is_err(), "a table of {} columns was taken", header.columns.len());
            continue;
        }
        writer.table(&header).expect("a table");
        let rows: Vec<Vec<Cell>> =
            table.rows.into_iter().take(64).map(|row| row.into_iter().map(Cell::from).collect()).collect();
        let mut kept = Vec::new();
        for row in rows {
            // A row that does not fit the columns is refused, and the archive stays readable.
            match writer.row(&row) {
                Ok(()) => kept.push(row),
                Err(_) => assert_ne!(row.len(), header.columns.len(), "a fitting row was refused"),
            }
        }
        written.push((header, kept));
    }
    let (manifest, bytes) = writer.finish().expect("finished");
    let mut reader =
        ArchiveReader::open(bytes.as_slice(), &identities(), ID, &KEKS).expect("our own archive opens");
    let mut read: Vec<(TableHeader, Vec<Vec<Cell>>)> = Vec::new();
    loop {
        match reader.next_item().expect("our own archive reads") {
            Item::Table(header) => read.push((header, Vec::new())),
            Item::Row(row) => read.last_mut().expect("a row after a table").1.push(row),
            Item::End(end) => {
                assert_eq!(*end, manifest, "the manifest read is the one written");
                break;
            }
        }
    }
    assert_eq!(read, written, "every table, column and cell comes back as written");
}

fn read_crafted(plain: &[u8]) {
    let compressed = zstd::encode_all(plain, 1).expect("zstd");
    let recipient = IDENTITY.to_public();
    let encryptor =
        age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient)).expect("age");
    let mut sealed = Vec::new();
    let mut out = encryptor.wrap_output(&mut sealed).expect("age");
    out.write_all(&compressed).expect("age");
    out.finish().expect("age");
    let Ok(mut reader) = ArchiveReader::open(sealed.as_slice(), &identities(), ID, &KEKS) else { return };
    let mut counted: Vec<u64> = Vec::new();
    // Bounded: every item consumes at least one line of the input.
    for _ in 0..=plain.len() {
        match reader.next_item() {
            Ok(Item::Table(_)) => counted.push(0),
            Ok(Item::Row(_)) => *counted.last_mut().expect("the reader refuses a row before a table") += 1,
            Ok(Item::End(manifest)) => {
                let rows: Vec<u64> = manifest.tables.iter().map(|t| t.rows).collect();
                assert_eq!(rows, counted, "an accepted manifest counts exactly the rows read");
                return;
            }
            Err(_) => return,
        }
    }
    panic!("the reader yielded more items than the input has lines");
}

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((0xFF, rest)) => {
            if let Ok(tables) = arbitrary::Unstructured::new(rest).arbitrary::<Vec<FuzzTable>>() {
                round_trip(tables);
            }
        }
        _ => read_crafted(data),
    }
});
