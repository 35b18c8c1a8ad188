//! The archive format (docs/decisions/0012-backups.md): JSON lines, zstd-compressed, then encrypted
//! in the age format to X25519 recipients, so `age -d -i key.txt FILE | zstd -d` reads it with
//! nothing of ours.
//!
//! ```text
//! {"header":{...}}                        format, versions, backup id, KEK id, created_at, backend, audit head
//! {"table":"users","columns":["id",...]}  a table begins
//! ["u1",1700000000000,{"b":"AAEC"},null]  one row: integer, text, {"b": base64 bytes} or null
//! ...
//! {"manifest":{...}}                      the header again, every table's row count and SHA-256, the MAC
//! ```
//!
//! A table's SHA-256 is over its row lines exactly as written (each with its newline). The manifest's
//! `mac` is HMAC-SHA256, under a key derived from a KEK ([`KekSet::backup_mac_key`]), of the header
//! line's exact bytes and the manifest without its `mac`: age's recipients are public keys, so
//! whoever can write the backup target can encrypt an archive; only the installation can make one
//! that authenticates. Writing and reading are plain blocking `Write`/`Read` pipelines, one line at a
//! time with every line bounded, so memory stays flat whatever an archive holds (ASVS V5.2.3).

use std::io::{BufRead, BufReader, Read, Write};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use portcullis_store::{Cell, TABLES, TableHeader};
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::KekSet;

/// The format's name, in every header.
pub const FORMAT: &str = "portcullis-backup";
/// Bumped on any change a reader of the previous version would misread. Version 2 added the backup
/// id, the KEK id and the manifest's MAC; version 1 archives are refused as unauthenticated.
pub const FORMAT_VERSION: u32 = 2;
/// zstd level: 3 is zstd's default, a good ratio at a speed that keeps up with the database.
const ZSTD_LEVEL: i32 = 3;
/// zstd's window when writing (2 MiB, what level 3 picks for large inputs anyway)...
const ZSTD_WINDOW_LOG: u32 = 21;
/// ...and the largest a reader accepts (8 MiB): a crafted frame cannot make the decoder allocate
/// zstd's default limit of 128 MiB.
const ZSTD_WINDOW_LOG_MAX: u32 = 23;
/// The longest row line a writer writes and a reader accepts. The largest values a row holds (audit
/// details, passkey and ceremony state, sealed personal data) are kilobytes; 4 MiB leaves room for
/// growth and bounds what one line of a crafted archive can make a reader hold (ASVS V5.2.3).
pub const MAX_LINE: usize = 4 << 20;
/// The most bytes of age header a reader looks through for its end (the header of a backup to a few
/// recipients, or to a passphrase, is a few hundred bytes).
const AGE_HEADER_MAX: usize = 64 << 10;
/// The longest header, table or manifest line (a manifest of every table is ~20 KiB).
const MAX_CONTROL_LINE: usize = 256 << 10;
/// The most columns a table may have (the widest has about twenty).
const MAX_COLUMNS: usize = 256;

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
    /// The backup's id, as its file is named: a reader refuses an archive stored under another
    /// backup's name. Absent in version 1.
    #[serde(default)]
    pub backup_id: String,
    /// The KEK whose derived key made the manifest's MAC (set by the writer). Absent in version 1.
    #[serde(default)]
    pub mac_kek_id: String,
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

/// The last line of an archive: the header again, every table's count and checksum, and the MAC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    #[serde(flatten)]
    pub header: Header,
    pub tables: Vec<TableEntry>,
    /// HMAC-SHA256 (lower-case hex) of the header line and this manifest without `mac`, under the
    /// key [`KekSet::backup_mac_key`] derives from `header.mac_kek_id`. Absent in version 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// A line that is not a row.
enum Control {
    Header(Header),
    Table { table: String, columns: Vec<String> },
    Manifest(Manifest),
}

/// Every control line, parsed into its types directly (no `serde_json::Value` in between, whose
/// per-value size would multiply what a crafted line costs).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawControl {
    header: Option<Header>,
    manifest: Option<Manifest>,
    table: Option<String>,
    columns: Option<Vec<String>>,
}

/// A control line is one of three objects; `Table` carries two keys, so it is written by hand
/// rather than through serde's externally tagged form.
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
    if line.len() > MAX_CONTROL_LINE {
        return Err(format!(
            "a control line of {} bytes, over the {MAX_CONTROL_LINE}-byte limit",
            line.len()
        ));
    }
    Ok(line)
}

fn parse_control(line: &[u8]) -> Result<Control, String> {
    if line.len() > MAX_CONTROL_LINE {
        return Err(format!(
            "a control line of {} bytes, over the {MAX_CONTROL_LINE}-byte limit",
            line.len()
        ));
    }
    let raw: RawControl = serde_json::from_slice(line).map_err(|e| e.to_string())?;
    match raw {
        RawControl { header: Some(header), manifest: None, table: None, columns: None } => {
            Ok(Control::Header(header))
        }
        RawControl { header: None, manifest: Some(manifest), table: None, columns: None } => {
            Ok(Control::Manifest(manifest))
        }
        RawControl { header: None, manifest: None, table: Some(table), columns: Some(columns) } => {
            Ok(Control::Table { table, columns })
        }
        _ => Err("an object that is neither a header, a table nor a manifest".to_owned()),
    }
}

/// Where a table may come in an archive: its place in [`TABLES`] (which fixes the load order), after
/// the previous table's. This bounds the tables a reader keeps to the schema's, and a table that is
/// unknown, repeated or out of place is refused where it is met.
fn table_position(name: &str, columns: usize, after: Option<usize>) -> Result<usize, String> {
    let Some(position) = TABLES.iter().position(|t| *t == name) else {
        return Err(format!("table {name:?} is not a table of this version's schema"));
    };
    if let Some(previous) = after
        && position <= previous
    {
        return Err(format!(
            "table {name} comes after table {}, against the fixed table order: tables were swapped or repeated",
            TABLES.get(previous).copied().unwrap_or_default()
        ));
    }
    if columns == 0 || columns > MAX_COLUMNS {
        return Err(format!("table {name}: {columns} columns (1 to {MAX_COLUMNS})"));
    }
    Ok(position)
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

/// Decodes a row line of at most `width` cells straight into [`Cell`]s: a crafted line cannot make
/// more cells than its table has columns, nor values nested in values.
fn decode_row(line: &[u8], width: usize) -> Result<Vec<Cell>, String> {
    let mut json = serde_json::Deserializer::from_slice(line);
    let row = RowSeed { width }.deserialize(&mut json).map_err(|e| e.to_string())?;
    json.end().map_err(|e| e.to_string())?;
    Ok(row)
}

struct RowSeed {
    width: usize,
}

impl<'de> DeserializeSeed<'de> for RowSeed {
    type Value = Vec<Cell>;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for RowSeed {
    type Value = Vec<Cell>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a row: an array of cells")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut cells = Vec::with_capacity(self.width.min(MAX_COLUMNS));
        while let Some(CellValue(cell)) = seq.next_element()? {
            if cells.len() == self.width {
                return Err(de::Error::custom(format!("more cells than the table's {} columns", self.width)));
            }
            cells.push(cell);
        }
        Ok(cells)
    }
}

struct CellValue(Cell);

impl<'de> Deserialize<'de> for CellValue {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(CellVisitor).map(CellValue)
    }
}

struct CellVisitor;

impl<'de> Visitor<'de> for CellVisitor {
    type Value = Cell;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("null, an integer, a string or {\"b\": base64}")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Cell, E> {
        Ok(Cell::Null)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Cell, E> {
        Ok(Cell::Int(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Cell, E> {
        i64::try_from(v).map(Cell::Int).map_err(|_| E::custom(format!("{v} is not an i64")))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Cell, E> {
        Err(E::custom(format!("{v} is not an i64")))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Cell, E> {
        Err(E::custom("a boolean cell"))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Cell, E> {
        Ok(Cell::Text(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Cell, E> {
        Ok(Cell::Text(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Cell, A::Error> {
        Err(de::Error::custom("an array cell"))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Cell, A::Error> {
        let mut bytes = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key != "b" || bytes.is_some() {
                return Err(de::Error::custom("an object cell without bytes"));
            }
            let encoded: std::borrow::Cow<'de, str> = map.next_value()?;
            bytes =
                Some(B64.decode(encoded.as_bytes()).map_err(|e| de::Error::custom(format!("bytes: {e}")))?);
        }
        bytes.map(Cell::Bytes).ok_or_else(|| de::Error::custom("an object cell without bytes"))
    }
}

/// What a row holds in memory once decoded, near enough: the `Vec` and each cell, plus what each
/// cell owns. Batches between the file and the database are bounded by it.
pub(crate) fn row_bytes(row: &[Cell]) -> usize {
    let held: usize = row
        .iter()
        .map(|cell| match cell {
            Cell::Text(v) => v.len(),
            Cell::Bytes(v) => v.len(),
            Cell::Null | Cell::Int(_) => 0,
        })
        .sum();
    std::mem::size_of::<Vec<Cell>>() + std::mem::size_of_val(row) + held
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

type HmacSha256 = Hmac<Sha256>;

/// The MAC's input: the header line exactly as in the archive (without its newline) and the manifest
/// as serialized without its `mac`, each prefixed with its length so neither can borrow from the other.
fn manifest_hmac(key: &[u8; 32], header_line: &[u8], manifest: &Manifest) -> Result<HmacSha256, String> {
    let body = serde_json::to_vec(&Manifest { mac: None, ..manifest.clone() }).map_err(|e| e.to_string())?;
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).map_err(|e| e.to_string())?;
    mac.update(&(header_line.len() as u64).to_be_bytes());
    mac.update(header_line);
    mac.update(&(body.len() as u64).to_be_bytes());
    mac.update(&body);
    Ok(mac)
}

/// The MAC a writer holding `key` puts in `manifest` (tests forge and re-sign archives with it).
pub fn manifest_mac(key: &[u8; 32], header_line: &[u8], manifest: &Manifest) -> Result<String, String> {
    Ok(hex(&manifest_hmac(key, header_line, manifest)?.finalize().into_bytes()))
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
    header_line: Vec<u8>,
    mac_key: zeroize::Zeroizing<[u8; 32]>,
    current: Option<Running>,
    position: Option<usize>,
    tables: Vec<TableEntry>,
    line: Vec<u8>,
}

impl<W: Write> std::fmt::Debug for ArchiveWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArchiveWriter").field("tables", &self.tables.len()).finish_non_exhaustive()
    }
}

impl<W: Write> ArchiveWriter<W> {
    /// Starts an archive encrypted to every recipient (at least one: X25519 keys, or one passphrase),
    /// authenticated under the active KEK of `keks`, and writes its header (its `format_version` and
    /// `mac_kek_id` are set here).
    pub fn new(
        out: W,
        recipients: &[Box<dyn age::Recipient + Send>],
        mut header: Header,
        keks: &KekSet,
    ) -> Result<Self, String> {
        header.format_version = FORMAT_VERSION;
        header.mac_kek_id = keks.active_id().to_owned();
        let mac_key = keks
            .backup_mac_key(&header.mac_kek_id)
            .ok_or_else(|| "no KEK is configured to authenticate the backup".to_owned())?;
        let encryptor =
            age::Encryptor::with_recipients(recipients.iter().map(|r| r.as_ref() as &dyn age::Recipient))
                .map_err(|e| format!("age: {e}"))?;
        let sealed = encryptor.wrap_output(out).map_err(|e| format!("age: {e}"))?;
        let mut out = zstd::Encoder::new(sealed, ZSTD_LEVEL).map_err(|e| format!("zstd: {e}"))?;
        out.window_log(ZSTD_WINDOW_LOG).map_err(|e| format!("zstd: {e}"))?;
        let header_line = control_line(&Control::Header(header.clone()))?;
        out.write_all(&header_line).map_err(|e| format!("write: {e}"))?;
        let header_line = header_line.strip_suffix(b"\n").unwrap_or(&header_line).to_vec();
        Ok(Self {
            out,
            header,
            header_line,
            mac_key,
            current: None,
            position: None,
            tables: Vec::new(),
            line: Vec::new(),
        })
    }

    fn write_control(&mut self, control: &Control) -> Result<(), String> {
        let line = control_line(control)?;
        self.out.write_all(&line).map_err(|e| format!("write: {e}"))
    }

    /// A table begins. Tables come in the order of [`TABLES`], each once, as a reader requires.
    pub fn table(&mut self, table: &TableHeader) -> Result<(), String> {
        let position = table_position(&table.name, table.columns.len(), self.position)?;
        if let Some(done) = self.current.take() {
            self.tables.push(done.entry());
        }
        self.write_control(&Control::Table { table: table.name.clone(), columns: table.columns.clone() })?;
        self.position = Some(position);
        self.current = Some(Running::new(table.name.clone(), table.columns.clone()));
        Ok(())
    }

    /// One row of the current table. A row that does not fit the table's columns, or whose line
    /// would be longer than [`MAX_LINE`], is refused here, as the reader would refuse it: an archive
    /// that cannot be restored must never be written.
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
        if self.line.len() > MAX_LINE {
            return Err(format!(
                "table {}: a row of {} bytes, over the {MAX_LINE}-byte line limit of the archive format",
                current.name,
                self.line.len()
            ));
        }
        current.hasher.update(&self.line);
        current.rows += 1;
        self.out.write_all(&self.line).map_err(|e| format!("write: {e}"))
    }

    /// Writes the manifest (with its MAC) and closes the compression and the encryption; returns the
    /// manifest and the underlying writer (to flush and sync).
    pub fn finish(mut self) -> Result<(Manifest, W), String> {
        if let Some(done) = self.current.take() {
            self.tables.push(done.entry());
        }
        let mut manifest =
            Manifest { header: self.header.clone(), tables: std::mem::take(&mut self.tables), mac: None };
        manifest.mac = Some(manifest_mac(&self.mac_key, &self.header_line, &manifest)?);
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
    /// The manifest, after its MAC and every table matched; nothing follows.
    End(Box<Manifest>),
}

/// The input with its first bytes (read ahead to bound the age header) put back in front, counted.
type Prefixed<R> = Counted<std::io::Chain<std::io::Cursor<Vec<u8>>, R>>;

/// A reader that counts the bytes read through it, for the decompression ratio check.
struct Counted<R> {
    inner: R,
    read: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
}

/// How many times its own size an archive may unpack to (real ones: about 3, since every row holds
/// random ids and hashes), past a floor for small archives. A decompression bomb costs time in
/// proportion to what it unpacks to; this ties that time to the bytes someone had to upload.
const MAX_UNPACK_RATIO: u64 = 256;
const UNPACK_FLOOR: u64 = 64 << 20;

/// Reads and checks an archive: decrypts, decompresses, counts and hashes every table, and at the end
/// authenticates the manifest and compares all of it with the manifest. Every defect is an error
/// saying where and what.
pub struct ArchiveReader<R: Read> {
    lines: BufReader<zstd::Decoder<'static, BufReader<age::stream::StreamReader<Prefixed<R>>>>>,
    /// Bytes of the encrypted file read so far, and of lines unpacked from it.
    packed: std::sync::Arc<std::sync::atomic::AtomicU64>,
    unpacked: u64,
    header: Header,
    header_line: Vec<u8>,
    mac_key: zeroize::Zeroizing<[u8; 32]>,
    current: Option<Running>,
    position: Option<usize>,
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
    /// Decrypts with the first identity that fits and reads the header, which must be of this
    /// version, name the backup `expected_id`, and name a KEK `keks` holds (its derived key checks
    /// the manifest's MAC at the end).
    pub fn open(
        mut input: R,
        identities: &[Box<dyn age::Identity + Send + Sync>],
        expected_id: &str,
        keks: &KekSet,
    ) -> Result<Self, String> {
        // age reads its header without a bound (and re-parses it as it grows): a crafted one of
        // megabytes would keep a thread busy for hours. Ours is a few hundred bytes.
        let mut prefix = Vec::with_capacity(AGE_HEADER_MAX);
        (&mut input)
            .take(AGE_HEADER_MAX as u64)
            .read_to_end(&mut prefix)
            .map_err(|e| format!("read: {e}"))?;
        if !prefix.windows(5).any(|w| w == b"\n--- ") {
            return Err(format!("not a backup: no age header within its first {} KiB", AGE_HEADER_MAX >> 10));
        }
        let packed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let input = Counted { inner: std::io::Cursor::new(prefix).chain(input), read: packed.clone() };
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
        let mut decoder = zstd::Decoder::new(plain).map_err(|e| format!("zstd: {e}"))?;
        decoder.window_log_max(ZSTD_WINDOW_LOG_MAX).map_err(|e| format!("zstd: {e}"))?;
        let mut reader = Self {
            lines: BufReader::new(decoder),
            header: empty_header(),
            header_line: Vec::new(),
            mac_key: zeroize::Zeroizing::new([0; 32]),
            current: None,
            position: None,
            tables: Vec::new(),
            line: Vec::new(),
            line_no: 0,
            done: false,
            packed,
            unpacked: 0,
        };
        if !reader.next_line()? {
            return Err("the archive is empty".to_owned());
        }
        let Ok(Control::Header(header)) = parse_control(&reader.line) else {
            return Err("the archive does not start with its header".to_owned());
        };
        if header.format != FORMAT {
            return Err(format!("not a Portcullis backup (format {:?})", header.format));
        }
        if header.format_version == 1 {
            return Err(format!(
                "backup format version 1 is unauthenticated (no MAC under the installation's KEK), so \
                 anyone who can write to the backup target could have made it; this binary refuses it. \
                 If you made it and trust the target, restore it with the release that wrote it ({})",
                header.app_version
            ));
        }
        if header.format_version != FORMAT_VERSION {
            return Err(format!(
                "backup format version {} is not {FORMAT_VERSION}, the one this binary reads",
                header.format_version
            ));
        }
        if header.backup_id != expected_id {
            return Err(format!(
                "the archive stored as backup {expected_id} is backup {:?}, by its header: an archive was \
                 copied or renamed under another backup's name",
                header.backup_id
            ));
        }
        reader.mac_key = keks.backup_mac_key(&header.mac_kek_id).ok_or_else(|| {
            format!(
                "the backup is authenticated under KEK `{}`, which keys.kek does not list: configure it \
                 (after the active KEK) to verify or restore this backup",
                header.mac_kek_id
            )
        })?;
        reader.header_line = reader.line[..reader.line.len() - 1].to_vec();
        reader.header = header;
        Ok(reader)
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Reads the next line into `self.line` (with its newline), reading no more than [`MAX_LINE`]
    /// bytes of it; false at the end of the stream.
    fn next_line(&mut self) -> Result<bool, String> {
        self.line.clear();
        let n = (&mut self.lines)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut self.line)
            .map_err(|e| read_error(&e, self.line_no + 1))?;
        if n == 0 {
            return Ok(false);
        }
        self.unpacked += n as u64;
        let packed = self.packed.load(std::sync::atomic::Ordering::Relaxed);
        if self.unpacked > MAX_UNPACK_RATIO * packed.max(UNPACK_FLOOR / MAX_UNPACK_RATIO) {
            return Err(format!(
                "the archive unpacks to more than {MAX_UNPACK_RATIO} times its size: refused as a \
                 decompression bomb"
            ));
        }
        self.line_no += 1;
        if self.line.last() != Some(&b'\n') {
            return Err(if n > MAX_LINE {
                format!("line {} is longer than {MAX_LINE} bytes, the most a row may take", self.line_no)
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
            let row = decode_row(body, current.columns.len())
                .map_err(|e| format!("table {}, row {}: {e}", current.name, current.rows))?;
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
                let position = table_position(&table, columns.len(), self.position)
                    .map_err(|e| format!("line {}: {e}", self.line_no))?;
                self.position = Some(position);
                self.current = Some(Running::new(table.clone(), columns.clone()));
                Ok(Item::Table(TableHeader { name: table, columns }))
            }
            Control::Manifest(manifest) => {
                self.authenticate(&manifest)?;
                self.check_manifest(&manifest)?;
                if self.next_line()? {
                    return Err("data follows the manifest".to_owned());
                }
                self.done = true;
                Ok(Item::End(Box::new(manifest)))
            }
        }
    }

    /// Checks the manifest's MAC in constant time (before anything else in it is believed).
    fn authenticate(&self, manifest: &Manifest) -> Result<(), String> {
        let forged = || {
            format!(
                "the manifest's MAC does not verify under KEK `{}`: this archive was not made by this \
                 installation (it was forged or altered by someone who can write to the backup target)",
                self.header.mac_kek_id
            )
        };
        let Some(tag) = manifest.mac.as_deref().and_then(unhex) else {
            return Err(forged());
        };
        manifest_hmac(&self.mac_key, &self.header_line, manifest)?.verify_slice(&tag).map_err(|_| forged())
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
        backup_id: String::new(),
        mac_kek_id: String::new(),
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
// age 0.13 marks classic X25519 recipients deprecated in favour of its post-quantum hybrid; they are
// what `age-keygen` and the age 1.1 tool that operators decrypt with (Debian's) produce and read, so
// backups use them on purpose (docs/decisions/0012-backups.md).
#[expect(deprecated, reason = "X25519 recipients, as backups use (ADR 0012)")]
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
        assert_eq!(decode_row(&line, 4).unwrap(), row);
    }

    #[test]
    fn a_row_is_decoded_into_at_most_its_tables_columns_and_no_nested_values() {
        assert_eq!(decode_row(b"[1,null]", 2).unwrap(), vec![Cell::Int(1), Cell::Null]);
        assert!(decode_row(b"[1,2,3]", 2).unwrap_err().contains("more cells than the table's 2 columns"));
        for bad in [
            &b"[[1]]"[..],
            b"[true]",
            b"[1.5]",
            b"[{\"c\":\"AA\"}]",
            b"[{\"b\":\"AA\",\"b\":\"AA\"}]",
            b"[1] x",
        ] {
            assert!(decode_row(bad, 4).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        assert!(decode_row(b"[18446744073709551615]", 1).unwrap_err().contains("is not an i64"));
    }

    fn test_header() -> Header {
        Header {
            format: FORMAT.to_owned(),
            format_version: FORMAT_VERSION,
            backup_id: "portcullis-20260101T000000Z-00000000".to_owned(),
            mac_kek_id: String::new(),
            app_version: "test".to_owned(),
            schema_version: 9,
            created_at: "2026-01-01T00:00:00Z".to_owned(),
            created_at_ms: 0,
            backend: "sqlite".to_owned(),
            audit_head: ChainPoint { seq: 0, hash: "00".repeat(32) },
            latest_checkpoint: None,
        }
    }

    /// Found by the backup_archive fuzz target (input ff ff 63 fe 63 fe 0a): the writer took a row of
    /// no cells for a table of one column, and the reader then refused its own archive.
    #[test]
    fn a_row_that_does_not_fit_its_tables_columns_is_refused_by_the_writer() {
        #[expect(deprecated, reason = "X25519 recipients, as backups use (ADR 0012)")]
        let identity = age::x25519::Identity::generate();
        let recipients: Vec<Box<dyn age::Recipient + Send>> = vec![Box::new(identity.to_public())];
        let keks = crate::testing::test_keks();
        let mut writer = ArchiveWriter::new(Vec::new(), &recipients, test_header(), &keks).unwrap();
        writer.table(&TableHeader { name: "users".to_owned(), columns: vec![String::new()] }).unwrap();

        assert_eq!(writer.row(&[]).unwrap_err(), "table users: a row of 0 cells for 1 columns");
        assert!(writer.row(&[Cell::Null, Cell::Null]).is_err());
        let long = Cell::Text("x".repeat(MAX_LINE));
        assert!(writer.row(&[long]).unwrap_err().contains("over the 4194304-byte line limit"));
        writer.row(&[Cell::Int(1)]).unwrap();
        let (manifest, _) = writer.finish().unwrap();
        assert_eq!(manifest.tables[0].rows, 1, "a refused row is not counted");
        assert_eq!(manifest.header.mac_kek_id, "test", "signed under the active KEK");
    }

    #[test]
    fn the_writer_refuses_a_table_out_of_the_fixed_order_or_unknown() {
        #[expect(deprecated, reason = "X25519 recipients, as backups use (ADR 0012)")]
        let identity = age::x25519::Identity::generate();
        let recipients: Vec<Box<dyn age::Recipient + Send>> = vec![Box::new(identity.to_public())];
        let keks = crate::testing::test_keks();
        let mut writer = ArchiveWriter::new(Vec::new(), &recipients, test_header(), &keks).unwrap();
        let table = |name: &str| TableHeader { name: name.to_owned(), columns: vec!["id".to_owned()] };
        writer.table(&table("users")).unwrap();
        assert!(writer.table(&table("instance")).unwrap_err().contains("against the fixed table order"));
        assert!(writer.table(&table("users")).is_err(), "a table twice");
        assert!(writer.table(&table("nope")).unwrap_err().contains("not a table of this version's schema"));
        writer.table(&table("sessions")).unwrap();
    }
}
