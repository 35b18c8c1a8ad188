//! The documentation's security claims are checked: docs/asvs/matrix.toml covers every OWASP ASVS 5.0
//! requirement exactly once, every test it names exists, and docs/asvs.md is its current rendering.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// What to run after editing the matrix; every failure about the page says so.
const REGENERATE: &str = "UPDATE_ASVS=1 cargo test -p portcullis --test e2e docs";

/// The columns of the ASVS CSV export, in order.
const CSV_COLUMNS: [&str; 7] =
    ["chapter_id", "chapter_name", "section_id", "section_name", "req_id", "req_description", "L"];

/// How many requirements ASVS 5.0.0 has.
const ASVS_5_0_0_REQUIREMENTS: usize = 345;

/// Longest requirement text shown on the page, in characters, before it is cut at a word.
const DESCRIPTION_CHARS: usize = 100;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// One requirement of the standard, as the CSV states it.
#[derive(Debug)]
struct Requirement {
    chapter_id: String,
    chapter_name: String,
    id: String,
    description: String,
    level: u8,
}

/// docs/asvs/matrix.toml.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Matrix {
    /// The hand-written sentence about where the project stands.
    standing: String,
    req: Vec<Entry>,
}

/// The project's status for one requirement.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    id: String,
    status: Status,
    #[serde(default)]
    tests: Vec<String>,
    #[serde(default)]
    note: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
enum Status {
    /// The named tests check the requirement for everything Portcullis does today.
    #[serde(rename = "proven")]
    Proven,
    /// The named tests check part of it; the note says what is missing.
    #[serde(rename = "partial")]
    Partial,
    /// It cannot apply to this product; the note says why.
    #[serde(rename = "n/a")]
    NotApplicable,
    /// Not met or not yet proven; the note says what is missing and which issue delivers it.
    #[serde(rename = "open")]
    Open,
}

impl Status {
    const ALL: [Status; 4] = [Status::Proven, Status::Partial, Status::NotApplicable, Status::Open];

    fn label(self) -> &'static str {
        match self {
            Status::Proven => "proven",
            Status::Partial => "partial",
            Status::NotApplicable => "n/a",
            Status::Open => "open",
        }
    }

    fn needs_tests(self) -> bool {
        matches!(self, Status::Proven | Status::Partial)
    }
}

/// Splits CSV text (RFC 4180) into records. Fields are separated by commas and may be quoted; inside
/// quotes, commas and line breaks are data and `""` stands for one quote. CR before LF is dropped and
/// blank lines are skipped. Written by hand: one small file does not justify a dependency.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => quoted = false,
                _ => field.push(c),
            }
            continue;
        }
        match c {
            '"' => quoted = true,
            ',' => record.push(std::mem::take(&mut field)),
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                record.push(std::mem::take(&mut field));
                if record.len() == 1 && record[0].is_empty() {
                    record.clear();
                } else {
                    records.push(std::mem::take(&mut record));
                }
            }
            _ => field.push(c),
        }
    }
    assert!(!quoted, "the CSV ends inside a quoted field");
    if !field.is_empty() || !record.is_empty() {
        record.push(field);
        records.push(record);
    }
    records
}

fn requirements() -> Vec<Requirement> {
    let text = std::fs::read_to_string(root().join("docs/asvs/ASVS-5.0.0-en.csv")).unwrap();
    let mut records = parse_csv(&text).into_iter();
    let header = records.next().expect("the CSV is empty");
    assert_eq!(header, CSV_COLUMNS, "unexpected CSV columns");
    records
        .map(|record| {
            assert_eq!(
                record.len(),
                CSV_COLUMNS.len(),
                "a CSV record has the wrong number of fields: {record:?}"
            );
            let [chapter_id, chapter_name, _section_id, _section_name, id, description, level] =
                <[String; 7]>::try_from(record).unwrap();
            let level = level.parse().unwrap_or_else(|_| panic!("{id}: level {level:?} is not a number"));
            Requirement { chapter_id, chapter_name, id, description, level }
        })
        .collect()
}

fn matrix() -> Matrix {
    let path = root().join("docs/asvs/matrix.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    toml::from_str(&text).unwrap_or_else(|e| panic!("{} is not a valid matrix: {e}", path.display()))
}

/// Every `.rs` file under `dir`, concatenated, skipping build output.
fn rust_sources(dir: &Path, out: &mut String) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if !path.ends_with("target") {
                rust_sources(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push_str(&std::fs::read_to_string(&path).unwrap());
        }
    }
}

#[test]
fn the_csv_reader_handles_quoted_commas_doubled_quotes_and_line_breaks() {
    let text = "a,b,c\r\n\"x, y\",\"say \"\"hi\"\"\",\"two\nlines\"\n\n1,,3\nlast,row,\"\"";
    let records = parse_csv(text);
    assert_eq!(
        records,
        vec![
            vec!["a", "b", "c"],
            vec!["x, y", "say \"hi\"", "two\nlines"],
            vec!["1", "", "3"],
            vec!["last", "row", ""],
        ]
    );
}

#[test]
fn the_asvs_list_in_the_repository_is_the_complete_5_0_0_list() {
    let requirements = requirements();
    assert_eq!(requirements.len(), ASVS_5_0_0_REQUIREMENTS);
    let mut seen = BTreeSet::new();
    for r in &requirements {
        assert!(seen.insert(r.id.as_str()), "{} is listed twice", r.id);
        assert!((1..=3).contains(&r.level), "{}: level {} is not 1, 2 or 3", r.id, r.level);
        assert!(
            r.id.starts_with(&format!("{}.", r.chapter_id)),
            "{} is not in chapter {}",
            r.id,
            r.chapter_id
        );
        assert!(!r.description.trim().is_empty(), "{} has no description", r.id);
    }
    // Where the shared copy is at hand, the repository's copy must be identical to it.
    let shared = root().join("../shared/asvs/ASVS-5.0.0-en.csv");
    if let Ok(original) = std::fs::read(&shared) {
        let copy = std::fs::read(root().join("docs/asvs/ASVS-5.0.0-en.csv")).unwrap();
        assert!(copy == original, "docs/asvs/ASVS-5.0.0-en.csv differs from {}", shared.display());
    }
}

#[test]
fn every_asvs_requirement_is_in_the_matrix_exactly_once_and_nothing_else_is() {
    let requirements = requirements();
    let matrix = matrix();
    let listed: BTreeSet<&str> = requirements.iter().map(|r| r.id.as_str()).collect();
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for entry in &matrix.req {
        *count.entry(entry.id.as_str()).or_default() += 1;
    }
    let missing: Vec<_> = listed.iter().filter(|id| !count.contains_key(*id)).collect();
    let twice: Vec<_> = count.iter().filter(|(_, n)| **n > 1).map(|(id, _)| id).collect();
    let unknown: Vec<_> = count.keys().filter(|id| !listed.contains(*id)).collect();
    assert!(
        missing.is_empty() && twice.is_empty() && unknown.is_empty(),
        "docs/asvs/matrix.toml: missing {missing:?}; more than once {twice:?}; not in ASVS 5.0.0 {unknown:?}"
    );
}

#[test]
fn every_matrix_row_names_its_evidence_or_says_why_not() {
    let matrix = matrix();
    assert!(!matrix.standing.trim().is_empty(), "the matrix says nothing about where the project stands");
    let mut problems = Vec::new();
    for entry in &matrix.req {
        let id = &entry.id;
        if entry.status.needs_tests() && entry.tests.is_empty() {
            problems.push(format!("{id} is {} but names no test", entry.status.label()));
        }
        if !entry.status.needs_tests() && entry.note.trim().is_empty() {
            problems.push(format!("{id} is {} but has no note saying why", entry.status.label()));
        }
        if entry.note.contains('\n') {
            problems.push(format!("{id}: the note must be one line"));
        }
        let mut seen = BTreeSet::new();
        for test in &entry.tests {
            if test.is_empty()
                || !test.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                problems.push(format!("{id}: {test:?} is not a test function name"));
            }
            if !seen.insert(test) {
                problems.push(format!("{id} names {test} twice"));
            }
        }
    }
    assert!(problems.is_empty(), "docs/asvs/matrix.toml:\n{}", problems.join("\n"));
}

#[test]
fn every_test_named_in_the_asvs_matrix_exists() {
    let matrix = matrix();
    let mut sources = String::new();
    rust_sources(&root().join("crates"), &mut sources);
    let named: BTreeSet<&str> = matrix.req.iter().flat_map(|e| e.tests.iter().map(String::as_str)).collect();
    assert!(named.len() > 10, "the matrix names too few tests: {named:?}");
    let missing: Vec<_> =
        named.into_iter().filter(|name| !sources.contains(&format!("fn {name}("))).collect();
    assert!(
        missing.is_empty(),
        "docs/asvs/matrix.toml names tests that do not exist under crates/: {missing:?}"
    );
}

#[test]
fn docs_asvs_md_is_the_rendering_of_the_matrix() {
    let rendered = render(&requirements(), &matrix());
    let path = root().join("docs/asvs.md");
    if std::env::var_os("UPDATE_ASVS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &rendered).unwrap();
        eprintln!("docs: wrote {}", path.display());
        return;
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    if current != rendered {
        let line = current
            .lines()
            .zip(rendered.lines())
            .position(|(a, b)| a != b)
            .map_or_else(|| current.lines().count().min(rendered.lines().count()) + 1, |index| index + 1);
        panic!(
            "docs/asvs.md is not the rendering of docs/asvs/matrix.toml (first difference at line {line}); \
             edit the matrix, not the page, and run `{REGENERATE}`"
        );
    }
}

/// Counts of each status, per level (index 0 is level 1).
type Tally = [[usize; 4]; 3];

fn tally<'a>(rows: impl Iterator<Item = (&'a Requirement, &'a Entry)>) -> Tally {
    let mut tally = [[0; 4]; 3];
    for (requirement, entry) in rows {
        let status = Status::ALL.iter().position(|s| *s == entry.status).unwrap();
        tally[usize::from(requirement.level - 1)][status] += 1;
    }
    tally
}

/// `proven / partial / n/a / open` for one level.
fn cell(counts: [usize; 4]) -> String {
    counts.map(|n| n.to_string()).join(" / ")
}

fn sum(tally: &Tally) -> [usize; 4] {
    let mut total = [0; 4];
    for level in tally {
        for (t, n) in total.iter_mut().zip(level) {
            *t += n;
        }
    }
    total
}

/// Text for a Markdown table cell.
fn escape(text: &str) -> String {
    text.replace('|', "\\|")
}

/// The requirement without its "Verify that" preamble, cut at a word near [`DESCRIPTION_CHARS`].
fn short_description(text: &str) -> String {
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let text =
        text.strip_prefix("Verify that").map_or(text.as_str(), |rest| rest.trim_start_matches([',', ' ']));
    let mut chars = text.chars();
    let text: String = match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    };
    if text.chars().count() <= DESCRIPTION_CHARS {
        return text;
    }
    let cut: String = text.chars().take(DESCRIPTION_CHARS).collect();
    let cut = cut.rsplit_once(' ').map_or(cut.as_str(), |(head, _)| head);
    format!("{}…", cut.trim_end_matches([',', ';', ':', '.']))
}

/// docs/asvs.md: an introduction with where the project stands, the summary per chapter and level,
/// then every requirement chapter by chapter.
fn render(requirements: &[Requirement], matrix: &Matrix) -> String {
    let entries: BTreeMap<&str, &Entry> = matrix.req.iter().map(|e| (e.id.as_str(), e)).collect();
    let rows: Vec<(&Requirement, &Entry)> = requirements
        .iter()
        .map(|r| (r, *entries.get(r.id.as_str()).unwrap_or_else(|| panic!("{} is not in the matrix", r.id))))
        .collect();
    let mut chapters: Vec<(&str, &str)> = Vec::new();
    for r in requirements {
        if chapters.last().is_none_or(|(id, _)| *id != r.chapter_id) {
            chapters.push((r.chapter_id.as_str(), r.chapter_name.as_str()));
        }
    }
    let overall = tally(rows.iter().copied());

    let mut out = String::new();
    let w = &mut out;
    writeln!(w, "# OWASP ASVS 5.0: what Portcullis proves").unwrap();
    writeln!(w).unwrap();
    writeln!(
        w,
        "<!-- Generated by crates/server/tests/e2e/docs.rs from docs/asvs/matrix.toml and \
         docs/asvs/ASVS-5.0.0-en.csv. Do not edit: change the matrix and run `{REGENERATE}`. -->"
    )
    .unwrap();
    writeln!(w).unwrap();
    writeln!(
        w,
        "This page is generated from `docs/asvs/matrix.toml`. It lists every requirement of the OWASP \
         Application Security Verification Standard 5.0.0 (`docs/asvs/ASVS-5.0.0-en.csv`, CC BY-SA 4.0, \
         see `docs/asvs/README.md`) with its level and one status: **proven** (the named tests check it \
         for everything Portcullis does today), **partial** (the named tests check part of it; the note \
         says what is missing), **n/a** (it cannot apply to this product; the note says why) or **open** \
         (not met or not yet proven; the note names the issue that delivers it). \
         `crates/server/tests/e2e/docs.rs` checks that every requirement appears exactly once, that every \
         named test exists, and that this page is the current rendering of the matrix."
    )
    .unwrap();
    writeln!(w).unwrap();
    writeln!(w, "{}", matrix.standing.trim()).unwrap();
    writeln!(w).unwrap();
    writeln!(w, "Levels 1 and 2 are the target. Where the project stands:").unwrap();
    writeln!(w).unwrap();
    for (level, counts) in overall.iter().enumerate() {
        let [proven, partial, not_applicable, open] = *counts;
        let applicable = proven + partial + open;
        writeln!(
            w,
            "- Level {}: **{proven}** of {applicable} applicable requirements proven, {partial} partial, \
             {open} open ({not_applicable} n/a).",
            level + 1
        )
        .unwrap();
    }
    writeln!(w).unwrap();

    writeln!(w, "## Summary").unwrap();
    writeln!(w).unwrap();
    writeln!(w, "Each cell counts the requirements of that level as proven / partial / n/a / open.").unwrap();
    writeln!(w).unwrap();
    writeln!(w, "| chapter | L1 | L2 | L3 | all |").unwrap();
    writeln!(w, "| --- | --- | --- | --- | --- |").unwrap();
    for (chapter_id, chapter_name) in &chapters {
        let counts = tally(rows.iter().copied().filter(|(r, _)| r.chapter_id == *chapter_id));
        writeln!(
            w,
            "| [{chapter_id} {chapter_name}](#{}) | {} | {} | {} | {} |",
            anchor(chapter_id, chapter_name),
            cell(counts[0]),
            cell(counts[1]),
            cell(counts[2]),
            cell(sum(&counts))
        )
        .unwrap();
    }
    writeln!(
        w,
        "| **all** | {} | {} | {} | {} |",
        cell(overall[0]),
        cell(overall[1]),
        cell(overall[2]),
        cell(sum(&overall))
    )
    .unwrap();

    for (chapter_id, chapter_name) in &chapters {
        writeln!(w).unwrap();
        writeln!(w, "## {chapter_id} {chapter_name}").unwrap();
        writeln!(w).unwrap();
        writeln!(w, "| req | L | status | tests or note | requirement |").unwrap();
        writeln!(w, "| --- | --- | --- | --- | --- |").unwrap();
        for (requirement, entry) in rows.iter().filter(|(r, _)| r.chapter_id == *chapter_id) {
            let tests: Vec<String> = entry.tests.iter().map(|t| format!("`{t}`")).collect();
            let evidence = match (tests.is_empty(), entry.note.trim().is_empty()) {
                (false, false) => format!("{}: {}", tests.join(", "), entry.note.trim()),
                (false, true) => tests.join(", "),
                (true, _) => entry.note.trim().to_owned(),
            };
            writeln!(
                w,
                "| {} | {} | {} | {} | {} |",
                requirement.id,
                requirement.level,
                entry.status.label(),
                escape(&evidence),
                escape(&short_description(&requirement.description))
            )
            .unwrap();
        }
    }
    out
}

/// The anchor GitHub gives a `## {id} {name}` heading: lower case, spaces to hyphens, punctuation
/// other than hyphens and underscores dropped.
fn anchor(id: &str, name: &str) -> String {
    format!("{id} {name}")
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn the_key_inventory_names_every_keyring_purpose_and_algorithm() {
    let adr =
        std::fs::read_to_string(root().join("docs/decisions/0005-keyring-and-field-encryption.md")).unwrap();
    let inventory = adr.split("## Key inventory").nth(1).and_then(|rest| rest.split("\n## ").next()).unwrap();
    for purpose in portcullis_app::KeyPurpose::ALL {
        assert!(
            inventory.contains(&format!("| `{}` |", purpose.as_str())),
            "{} is not in the inventory",
            purpose.as_str()
        );
    }
    for algorithm in ["XChaCha20-Poly1305", "HMAC-SHA256", "EdDSA", "ES256", "Ed25519", "HKDF-SHA256"] {
        assert!(inventory.contains(algorithm), "{algorithm} is not in the inventory");
    }
    let config = std::fs::read_to_string(root().join("config/example.toml")).unwrap();
    assert!(
        inventory.contains("`keys.kek`") && config.contains("# kek = "),
        "the KEK is documented in both places"
    );
}

#[test]
fn the_log_inventory_names_every_security_event_kind_at_its_severity_and_every_metric() {
    let inventory = std::fs::read_to_string(root().join("docs/logging.md")).unwrap();
    for kind in portcullis_domain::SecurityEventKind::ALL {
        let row = format!("| {} |", kind.severity().as_str());
        let line = inventory.lines().find(|l| l.starts_with(&row)).unwrap_or_else(|| panic!("no {row} row"));
        assert!(line.contains(&format!("`{}`", kind.as_str())), "{} is not in the {row} row", kind.as_str());
    }
    // Every series the registry defines is in the architecture's metrics table.
    let source = std::fs::read_to_string(root().join("crates/app/src/metrics.rs")).unwrap();
    let architecture = std::fs::read_to_string(root().join("docs/architecture.md")).unwrap();
    let names: Vec<&str> = source.split('"').filter(|s| s.starts_with("portcullis_")).collect();
    assert!(names.len() >= 19, "{names:?}");
    for name in names {
        assert!(architecture.contains(&format!("`{name}`")), "{name} is not in docs/architecture.md");
    }
}

#[test]
fn env_example_lists_every_environment_variable_and_a_file_variant_for_every_secret() {
    let example = std::fs::read_to_string(root().join("config/example.toml")).unwrap();
    let env = std::fs::read_to_string(root().join(".env.example")).unwrap();
    let names = |text: &str| -> std::collections::BTreeSet<String> {
        text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("PORTCULLIS_") && !w.starts_with("PORTCULLIS_SECTION"))
            .map(str::to_owned)
            .collect()
    };
    let documented = names(&example);
    let listed: std::collections::BTreeSet<String> = env
        .lines()
        .filter_map(|l| {
            l.strip_prefix("# PORTCULLIS_")
                .map(|rest| format!("PORTCULLIS_{}", rest.split('=').next().unwrap()))
        })
        .collect();
    let missing: Vec<_> = documented.iter().filter(|n| !listed.contains(*n)).collect();
    assert!(missing.is_empty(), ".env.example lacks {missing:?}");
    for secret in portcullis::config::SECRET_KEYS {
        let (section, key) = secret.split_once('.').unwrap();
        let name = format!("PORTCULLIS_{}__{}", section.to_uppercase(), key.to_uppercase());
        assert!(listed.contains(&name), ".env.example lacks {name}");
        assert!(listed.contains(&format!("{name}_FILE")), ".env.example lacks {name}_FILE");
        assert!(env.contains(&format!("# {name}=\n")), "{name} has an example value in .env.example");
    }
    let unknown: Vec<_> =
        listed.iter().filter(|n| !documented.contains(*n) && !n.ends_with("_FILE")).collect();
    assert!(unknown.is_empty(), ".env.example names variables config/example.toml does not: {unknown:?}");
}
