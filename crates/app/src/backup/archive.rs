//! The archive format (docs/decisions/0012-backups.md): JSON lines, zstd-compressed, then encrypted
//! in the age format to X25519 recipients, so `age -d -i key.txt FILE | zstd -d` reads it with
//! nothing of ours.
//!
//! ```text
//! {"header":{...}}                        format, versions, created_at, backend, audit head, checkpoint
//! {"table":"users","columns":["id",...]}  a table begins
//! ["u1",1700000000000,{"b":"AAEC"},null]  one row: integer, text, {"b": base64 bytes} or null
//! ...
//! {"manifest":{...}}                      the header again, plus every table's row count and SHA-256
//! ```
//!
//! A table's SHA-256 is over its row lines exactly as written (each with its newline). Writing and
//! reading are plain blocking `Write`/`Read` pipelines, one row at a time, so memory stays flat
//! whatever the size of a table.

// age 0.13 marks classic X25519 recipients deprecated in favour of its post-quantum hybrid; they are
// what `age-keygen` and the age 1.1 tool that operators decrypt with (Debian's) produce and read, so
// backups use them on purpose (docs/decisions/0012-backups.md).
#![allow(deprecated)]

use std::io::{BufRead, BufReader, Read, Write};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use portcullis_store::{Cell, TableHeader};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The format's name, in every header.
pub const FORMAT: &str = "portcullis-backup";
/// Bumped on any change a reader of the previous version would misread.
pub const FORMAT_VERSION: u32 = 1;
/// zstd level: 3 is zstd's default, a good ratio at a speed that keeps up with the database.
const ZSTD_LEVEL: i32 = 3;
/// The longest line a reader accepts (a row of large sealed values is far below this).
const MAX_LINE: usize = 64 << 20;

/// Where the audit chain stood in the snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainPoint {
    pub seq: i64,
    /// Lower-case hex.
    pub hash: String,
}

/// The latest signed checkpoint in the snapshot, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointInfo {
    pub seq: i64,
    pub hash: String,
    pub at_ms: i64,
    pub key_id: String,
    pub signature: String,
}

/// What is known before the first row: the first line of an archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub format: String,
    pub format_version: u32,
    pub app_version: String,
    /// The newest migration applied in the snapshot: a restore migrates its target to this first.
    pub schema_version: i64,
    /// RFC 3339, UTC.
    pub created_at: String,
    pub created_at_ms: i64,
    /// `sqlite` or `postgresql`.
    pub backend: String,
    pub audit_head: ChainPoint,
    pub latest_checkpoint: Option<CheckpointInfo>,
}

/// One table in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableEntry {
    pub name: String,
    pub columns: Vec<String>,
    pub rows: u64,
    /// SHA-256 of the table's row lines, lower-case hex.
    pub sha256: String,
}

/// The last line of an archive: the header again and every table's count and checksum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    #[serde(flatten)]
    pub header: Header,
    pub tables: Vec<TableEntry>,
}

/// A line that is not a row.
enum Control {
    Header(Header),
    Table { table: String, columns: Vec<String> },
    Manifest(Manifest),
}

/// A control line is one of three single-key objects; `Table` carries two keys, so it is parsed by
/// hand rather than through serde's externally tagged form.
fn control_line(control: &Control) -> Result<Vec<u8>, String> {
    let value = match control {
        Control::Header(header) => serde_json::json!({ "header": header }),
        // Written by hand so the name comes first (serde_json's map would sort the keys).
        Control::Table { table, columns } => {
            let name = serde_json::to_string(table).map_err(|e| e.to_string())?;
            let columns = serde_json::to_string(columns).map_err(|e| e.to_string())?;
            return Ok(format!("{{\"table\":{name},\"columns\":{columns}}}\n").into_bytes());
        }
        Control::Manifest(manifest) => serde_json::json!({ "manifest": manifest }),
    };
    let mut line = serde_json::to_vec(&value).map_err(|e| e.to_string())?;
    line.push(b'\n');
    Ok(line)
}

fn parse_control(line: &[u8]) -> Result<Control, String> {
    let mut value: serde_json::Value = serde_json::from_slice(line).map_err(|e| e.to_string())?;
    let object = value.as_object_mut().ok_or("not an object")?;
    if let Some(header) = object.remove("header") {
        return serde_json::from_value(header).map(Control::Header).map_err(|e| format!("header: {e}"));
    }
    if let Some(manifest) = object.remove("manifest") {
        return serde_json::from_value(manifest).map(Control::Manifest).map_err(|e| format!("manifest: {e}"));
    }
    match (object.remove("table"), object.remove("columns")) {
        (Some(serde_json::Value::String(table)), Some(columns)) => {
            let columns = serde_json::from_value(columns).map_err(|e| format!("columns: {e}"))?;
            Ok(Control::Table { table, columns })
        }
        _ => Err("an object that is neither a header, a table nor a manifest".to_owned()),
    }
}

/// Appends a row as a JSON array to `out` (no newline).
fn encode_row(row: &[Cell], out: &mut Vec<u8>) {
    out.push(b'[');
    for (i, cell) in row.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        match cell {
            Cell::Null => out.extend_from_slice(b"null"),
            Cell::Int(v) => out.extend_from_slice(v.to_string().as_bytes()),
            Cell::Text(v) => {
                // A string always serializes; the fallback is unreachable but keeps clippy's deny.
                let _ = serde_json::to_writer(&mut *out, v);
            }
            Cell::Bytes(v) => {
                out.extend_from_slice(b"{\"b\":\"");
                out.extend_from_slice(B64.encode(v).as_bytes());
                out.extend_from_slice(b"\"}");
            }
        }
    }
    out.push(b']');
}

fn decode_row(line: &[u8]) -> Result<Vec<Cell>, String> {
    let value: Vec<serde_json::Value> = serde_json::from_slice(line).map_err(|e| e.to_string())?;
    value
        .into_iter()
        .map(|v| match v {
            serde_json::Value::Null => Ok(Cell::Null),
            serde_json::Value::Number(n) => {
                n.as_i64().map(Cell::Int).ok_or_else(|| format!("{n} is not an i64"))
            }
            serde_json::Value::String(s) => Ok(Cell::Text(s)),
            serde_json::Value::Object(mut o) => match o.remove("b") {
                Some(serde_json::Value::String(b)) => {
                    B64.decode(b).map(Cell::Bytes).map_err(|e| format!("bytes: {e}"))
                }
                _ => Err("an object cell without bytes".to_owned()),
            },
            other => Err(format!("a {} cell", kind_of(&other))),
        })
        .collect()
}

fn kind_of(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Bool(_) => "boolean",
        serde_json::Value::Array(_) => "array",
        _ => "other",
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A table being written or read: its running count and checksum.
struct Running {
    name: String,
    columns: Vec<String>,
    rows: u64,
    hasher: Sha256,
}

impl Running {
    fn new(name: String, columns: Vec<String>) -> Self {
        Self { name, columns, rows: 0, hasher: Sha256::new() }
    }

    fn entry(self) -> TableEntry {
        TableEntry {
            name: self.name,
            columns: self.columns,
            rows: self.rows,
            sha256: hex(&self.hasher.finalize()),
        }
    }
}

/// Writes an archive into `W` (a file): rows in, encrypted bytes out.
pub struct ArchiveWriter<W: Write> {
    out: zstd::Encoder<'static, age::stream::StreamWriter<W>>,
    header: Header,
    current: Option<Running>,
    tables: Vec<TableEntry>,
    line: Vec<u8>,
}

impl<W: Write> std::fmt::Debug for ArchiveWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArchiveWriter").field("tables", &self.tables.len()).finish_non_exhaustive()
    }
}

impl<W: Write> ArchiveWriter<W> {
    /// Starts an archive encrypted to every recipient (at least one: X25519 keys, or one passphrase)
    /// and writes its header.
    pub fn new(
        out: W,
        recipients: &[Box<dyn age::Recipient + Send>],
        header: Header,
    ) -> Result<Self, String> {
        let encryptor =
            age::Encryptor::with_recipients(recipients.iter().map(|r| r.as_ref() as &dyn age::Recipient))
                .map_err(|e| format!("age: {e}"))?;
        let sealed = encryptor.wrap_output(out).map_err(|e| format!("age: {e}"))?;
        let out = zstd::Encoder::new(sealed, ZSTD_LEVEL).map_err(|e| format!("zstd: {e}"))?;
        let mut writer =
            Self { out, header: header.clone(), current: None, tables: Vec::new(), line: Vec::new() };
        writer.write_control(&Control::Header(header))?;
        Ok(writer)
    }

    fn write_control(&mut self, control: &Control) -> Result<(), String> {
        let line = control_line(control)?;
        self.out.write_all(&line).map_err(|e| format!("write: {e}"))
    }

    /// A table begins.
    pub fn table(&mut self, table: &TableHeader) -> Result<(), String> {
        if let Some(done) = self.current.take() {
            self.tables.push(done.entry());
        }
        self.write_control(&Control::Table { table: table.name.clone(), columns: table.columns.clone() })?;
        self.current = Some(Running::new(table.name.clone(), table.columns.clone()));
        Ok(())
    }

    /// One row of the current table. A row that does not fit the table's columns is refused here, as
    /// the reader would refuse it: an archive that cannot be restored must never be written.
    pub fn row(&mut self, row: &[Cell]) -> Result<(), String> {
        let Some(current) = self.current.as_mut() else { return Err("a row before any table".to_owned()) };
        if row.len() != current.columns.len() {
            return Err(format!(
                "table {}: a row of {} cells for {} columns",
                current.name,
                row.len(),
                current.columns.len()
            ));
        }
        self.line.clear();
        encode_row(row, &mut self.line);
        self.line.push(b'\n');
        current.hasher.update(&self.line);
        current.rows += 1;
        self.out.write_all(&self.line).map_err(|e| format!("write: {e}"))
    }

    /// Writes the manifest and closes the compression and the encryption; returns the manifest and
    /// the underlying writer (to flush and sync).
    pub fn finish(mut self) -> Result<(Manifest, W), String> {
        if let Some(done) = self.current.take() {
            self.tables.push(done.entry());
        }
        let manifest = Manifest { header: self.header.clone(), tables: std::mem::take(&mut self.tables) };
        self.write_control(&Control::Manifest(manifest.clone()))?;
        let sealed = self.out.finish().map_err(|e| format!("zstd: {e}"))?;
        let out = sealed.finish().map_err(|e| format!("age: {e}"))?;
        Ok((manifest, out))
    }
}

/// One item read from an archive, checked as it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Table(TableHeader),
    Row(Vec<Cell>),
    /// The manifest, after every table matched it; nothing follows.
    End(Box<Manifest>),
}

/// Reads and checks an archive: decrypts, decompresses, counts and hashes every table, and at the end
/// compares all of it with the manifest. Every defect is an error saying where and what.
pub struct ArchiveReader<R: Read> {
    lines: BufReader<zstd::Decoder<'static, BufReader<age::stream::StreamReader<R>>>>,
    header: Header,
    current: Option<Running>,
    tables: Vec<TableEntry>,
    line: Vec<u8>,
    line_no: u64,
    done: bool,
}

impl<R: Read> std::fmt::Debug for ArchiveReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArchiveReader").field("line", &self.line_no).finish_non_exhaustive()
    }
}

impl<R: Read> ArchiveReader<R> {
    /// Decrypts with the first identity that fits and reads the header.
    pub fn open(input: R, identities: &[Box<dyn age::Identity + Send + Sync>]) -> Result<Self, String> {
        let decryptor = age::Decryptor::new(input).map_err(|e| format!("not a readable age file: {e}"))?;
        let is_passphrase_file = decryptor.is_scrypt();
        let plain =
            decryptor.decrypt(identities.iter().map(|i| i.as_ref() as &dyn age::Identity)).map_err(|e| {
                match e {
                    age::DecryptError::NoMatchingKeys => {
                        "the identity does not decrypt this backup (it was encrypted to other recipients)"
                            .to_owned()
                    }
                    // What a wrong passphrase gives (scrypt's key does not open the file key).
                    age::DecryptError::DecryptionFailed if is_passphrase_file => {
                        "the passphrase does not decrypt this backup".to_owned()
                    }
                    other => format!("decryption failed: {other}"),
                }
            })?;
        let decoder = zstd::Decoder::new(plain).map_err(|e| format!("zstd: {e}"))?;
        let mut reader = Self {
            lines: BufReader::new(decoder),
            header: empty_header(),
            current: None,
            tables: Vec::new(),
            line: Vec::new(),
            line_no: 0,
            done: false,
        };
        if !reader.next_line()? {
            return Err("the archive is empty".to_owned());
        }
        match parse_control(&reader.line) {
            Ok(Control::Header(header)) => {
                if header.format != FORMAT {
                    return Err(format!("not a Portcullis backup (format {:?})", header.format));
                }
                if header.format_version != FORMAT_VERSION {
                    return Err(format!(
                        "backup format version {} is not {FORMAT_VERSION}, the one this binary reads",
                        header.format_version
                    ));
                }
                reader.header = header;
            }
            _ => return Err("the archive does not start with its header".to_owned()),
        }
        Ok(reader)
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Reads the next line into `self.line` without its newline; false at the end of the stream.
    fn next_line(&mut self) -> Result<bool, String> {
        self.line.clear();
        let n = (&mut self.lines)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut self.line)
            .map_err(|e| read_error(&e, self.line_no + 1))?;
        if n == 0 {
            return Ok(false);
        }
        self.line_no += 1;
        if self.line.last() != Some(&b'\n') {
            return Err(if n > MAX_LINE {
                format!("line {} is longer than {MAX_LINE} bytes", self.line_no)
            } else {
                format!("line {} is cut off: the archive was truncated", self.line_no)
            });
        }
        Ok(true)
    }

    /// The next item; after [`Item::End`] it is an error to call again.
    pub fn next_item(&mut self) -> Result<Item, String> {
        if self.done {
            return Err("read past the manifest".to_owned());
        }
        if !self.next_line()? {
            return Err("the archive ends before its manifest: it was truncated".to_owned());
        }
        if self.line.first() == Some(&b'[') {
            let Some(current) = self.current.as_mut() else {
                return Err(format!("line {}: a row before any table", self.line_no));
            };
            current.hasher.update(&self.line);
            current.rows += 1;
            let body = &self.line[..self.line.len() - 1];
            let row =
                decode_row(body).map_err(|e| format!("table {}, row {}: {e}", current.name, current.rows))?;
            if row.len() != current.columns.len() {
                return Err(format!(
                    "table {}, row {}: {} cells for {} columns",
                    current.name,
                    current.rows,
                    row.len(),
                    current.columns.len()
                ));
            }
            return Ok(Item::Row(row));
        }
        let control = parse_control(&self.line).map_err(|e| format!("line {}: {e}", self.line_no))?;
        if let Some(done) = self.current.take() {
            self.tables.push(done.entry());
        }
        match control {
            Control::Header(_) => Err(format!("line {}: a second header", self.line_no)),
            Control::Table { table, columns } => {
                self.current = Some(Running::new(table.clone(), columns.clone()));
                Ok(Item::Table(TableHeader { name: table, columns }))
            }
            Control::Manifest(manifest) => {
                self.check_manifest(&manifest)?;
                if self.next_line()? {
                    return Err("data follows the manifest".to_owned());
                }
                self.done = true;
                Ok(Item::End(Box::new(manifest)))
            }
        }
    }

    fn check_manifest(&self, manifest: &Manifest) -> Result<(), String> {
        if manifest.header != self.header {
            return Err("the manifest's header does not match the archive's first line".to_owned());
        }
        for (i, read) in self.tables.iter().enumerate() {
            let Some(listed) = manifest.tables.get(i) else {
                return Err(format!("table {} is in the archive but not in the manifest", read.name));
            };
            if listed.name != read.name {
                return Err(format!(
                    "table {} is where the manifest lists table {}: tables were swapped or removed",
                    read.name, listed.name
                ));
            }
            if listed.columns != read.columns {
                return Err(format!("table {}: its columns differ from the manifest's", read.name));
            }
            if listed.rows != read.rows {
                return Err(format!(
                    "table {}: {} rows read, the manifest says {}",
                    read.name, read.rows, listed.rows
                ));
            }
            if listed.sha256 != read.sha256 {
                return Err(format!(
                    "table {}: SHA-256 {} does not match the manifest's {}: its rows were changed",
                    read.name, read.sha256, listed.sha256
                ));
            }
        }
        if let Some(missing) = manifest.tables.get(self.tables.len()) {
            return Err(format!("table {} is in the manifest but not in the archive", missing.name));
        }
        Ok(())
    }
}

/// An I/O error while reading: age reports a changed or cut chunk as `InvalidData`/`UnexpectedEof`.
fn read_error(error: &std::io::Error, line: u64) -> String {
    match error.kind() {
        std::io::ErrorKind::UnexpectedEof => {
            format!("the archive is truncated (at line {line}): its encrypted stream ends early")
        }
        std::io::ErrorKind::InvalidData => format!(
            "the archive is corrupt at line {line}: an encrypted chunk fails authentication ({error}); \
             a byte was changed or the file was cut"
        ),
        _ => format!("reading line {line}: {error}"),
    }
}

fn empty_header() -> Header {
    Header {
        format: String::new(),
        format_version: 0,
        app_version: String::new(),
        schema_version: 0,
        created_at: String::new(),
        created_at_ms: 0,
        backend: String::new(),
        audit_head: ChainPoint { seq: 0, hash: String::new() },
        latest_checkpoint: None,
    }
}

/// Parses `age1…` public keys; the error names the wrong one by its position, not its text: what
/// was pasted there by mistake may be an `AGE-SECRET-KEY-…`, which must not reach a log.
pub fn parse_recipients(keys: &[String]) -> Result<Vec<age::x25519::Recipient>, String> {
    keys.iter()
        .enumerate()
        .map(|(i, k)| {
            let shape = if k.trim().starts_with("AGE-SECRET-KEY-") {
                "an identity (a secret key), not a recipient: give its public key (age-keygen -y)".to_owned()
            } else {
                "not an age1… X25519 public key".to_owned()
            };
            k.trim().parse::<age::x25519::Recipient>().map_err(|_| format!("recipient {}: {shape}", i + 1))
        })
        .collect()
}

/// Reads an age identity file as `age-keygen` writes it (`# comments` and `AGE-SECRET-KEY-1…` lines).
/// An error names the path and the line, never the content.
pub fn read_identities(path: &std::path::Path) -> Result<Vec<Box<dyn age::Identity + Send + Sync>>, String> {
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| format!("the identity file {} cannot be read: {e}", path.display()))?,
    );
    let mut identities: Vec<Box<dyn age::Identity + Send + Sync>> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let identity = line.parse::<age::x25519::Identity>().map_err(|_| {
            format!("line {} of the identity file {} is not an age X25519 identity", n + 1, path.display())
        })?;
        identities.push(Box::new(identity));
    }
    if identities.is_empty() {
        return Err(format!("the identity file {} holds no age identity", path.display()));
    }
    Ok(identities)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrong_recipient_is_named_by_its_position_and_a_pasted_secret_key_is_never_echoed() {
        let pasted = "AGE-SECRET-KEY-1QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ".to_owned();
        let why = parse_recipients(&["age1nope".to_owned(), pasted.clone()]).unwrap_err();
        assert_eq!(why, "recipient 1: not an age1… X25519 public key");
        let why = parse_recipients(&[pasted]).unwrap_err();
        assert!(why.starts_with("recipient 1: an identity (a secret key)") && !why.contains("QQQQ"), "{why}");
    }

    #[test]
    fn a_row_of_every_kind_of_cell_round_trips() {
        let row = vec![
            Cell::Null,
            Cell::Int(i64::MIN),
            Cell::Text("é\"\n\u{0}".to_owned()),
            Cell::Bytes((0..=255).collect()),
        ];
        let mut line = Vec::new();
        encode_row(&row, &mut line);
        assert_eq!(decode_row(&line).unwrap(), row);
    }

    /// Found by the backup_archive fuzz target (input ff ff 63 fe 63 fe 0a): the writer took a row of
    /// no cells for a table of one column, and the reader then refused its own archive.
    #[test]
    fn a_row_that_does_not_fit_its_tables_columns_is_refused_by_the_writer() {
        #[expect(deprecated, reason = "X25519 recipients, as backups use (ADR 0012)")]
        let identity = age::x25519::Identity::generate();
        let header = Header {
            format: FORMAT.to_owned(),
            format_version: FORMAT_VERSION,
            app_version: "test".to_owned(),
            schema_version: 9,
            created_at: "2026-01-01T00:00:00Z".to_owned(),
            created_at_ms: 0,
            backend: "sqlite".to_owned(),
            audit_head: ChainPoint { seq: 0, hash: "00".repeat(32) },
            latest_checkpoint: None,
        };
        let recipients: Vec<Box<dyn age::Recipient + Send>> = vec![Box::new(identity.to_public())];
        let mut writer = ArchiveWriter::new(Vec::new(), &recipients, header).unwrap();
        writer.table(&TableHeader { name: String::new(), columns: vec![String::new()] }).unwrap();

        assert_eq!(writer.row(&[]).unwrap_err(), "table : a row of 0 cells for 1 columns");
        assert!(writer.row(&[Cell::Null, Cell::Null]).is_err());
        writer.row(&[Cell::Int(1)]).unwrap();
        let (manifest, _) = writer.finish().unwrap();
        assert_eq!(manifest.tables[0].rows, 1, "a refused row is not counted");
    }
}
