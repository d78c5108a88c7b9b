//! The bench report: `target/bench/report.json` (the data) and `report.md` (rendered from
//! it). Every bench run replaces its own section (control, micro, data, ...) and keeps the
//! others, so the report accumulates the latest run of each bench; each section carries the
//! date, commands, git revision and versions it was measured with.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Sections in this order first, then any other by key.
const SECTION_ORDER: [&str; 4] = ["data", "path", "control", "micro"];

/// The machine a section was measured on.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub kernel: String,
    pub memory_gib: f64,
}

impl Machine {
    pub fn detect() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".to_string());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            memory_gib: (memory_kib / (1024.0 * 1024.0) * 10.0).round() / 10.0,
        }
    }

    fn describe(&self) -> String {
        format!(
            "{}, {} cores, {} GiB, Linux {}",
            self.cpu, self.cores, self.memory_gib, self.kernel
        )
    }
}

/// A table column: `label` columns hold text (what a row is); the others must be numbers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Column {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub unit: String,
    #[serde(default)]
    pub label: bool,
}

impl Column {
    pub fn label(name: &str) -> Column {
        Column {
            name: name.to_string(),
            unit: String::new(),
            label: true,
        }
    }

    pub fn number(name: &str, unit: &str) -> Column {
        Column {
            name: name.to_string(),
            unit: unit.to_string(),
            label: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Table {
    pub title: String,
    pub columns: Vec<Column>,
    pub rows: Vec<Vec<Value>>,
}

impl Table {
    pub fn new(title: &str, columns: Vec<Column>) -> Table {
        Table {
            title: title.to_string(),
            columns,
            rows: Vec::new(),
        }
    }

    pub fn push(&mut self, row: Vec<Value>) {
        self.rows.push(row);
    }

    /// Every number column of every row holds a finite number (the smoke check).
    pub fn check_numbers(&self) -> Result<()> {
        if self.rows.is_empty() {
            bail!("table {:?} has no rows", self.title);
        }
        for (r, row) in self.rows.iter().enumerate() {
            if row.len() != self.columns.len() {
                bail!(
                    "table {:?} row {r} has {} cells for {} columns",
                    self.title,
                    row.len(),
                    self.columns.len()
                );
            }
            for (col, cell) in self.columns.iter().zip(row) {
                if col.label {
                    continue;
                }
                if !cell.as_f64().is_some_and(f64::is_finite) {
                    bail!(
                        "table {:?} row {r} ({}) column {:?} has no number: {cell}",
                        self.title,
                        label_of(&self.columns, row),
                        col.name
                    );
                }
            }
        }
        Ok(())
    }

    fn render(&self, out: &mut String) {
        let _ = writeln!(out, "**{}**\n", self.title);
        let header: Vec<String> = self
            .columns
            .iter()
            .map(|c| {
                if c.unit.is_empty() {
                    c.name.clone()
                } else {
                    format!("{} ({})", c.name, c.unit)
                }
            })
            .collect();
        let _ = writeln!(out, "| {} |", header.join(" | "));
        let align: Vec<&str> = self
            .columns
            .iter()
            .map(|c| if c.label { "---" } else { "---:" })
            .collect();
        let _ = writeln!(out, "| {} |", align.join(" | "));
        for row in &self.rows {
            let cells: Vec<String> = row.iter().map(format_cell).collect();
            let _ = writeln!(out, "| {} |", cells.join(" | "));
        }
        out.push('\n');
    }
}

fn label_of(columns: &[Column], row: &[Value]) -> String {
    columns
        .iter()
        .zip(row)
        .filter(|(c, _)| c.label)
        .map(|(_, v)| format_cell(v))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Numbers with three significant digits (at least the integer part); text as is; null as
/// an em dash (a value the run did not produce, e.g. after a timeout).
pub fn format_cell(v: &Value) -> String {
    match v {
        Value::Null => "—".to_string(),
        Value::String(s) => s.replace('|', "\\|"),
        Value::Number(n) => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{f:.0}"),
            Some(f) if f.abs() >= 100.0 => format!("{f:.0}"),
            Some(f) if f.abs() >= 10.0 => format!("{f:.1}"),
            Some(f) if f.abs() >= 1.0 => format!("{f:.2}"),
            Some(f) => format!("{f:.3}"),
            None => n.to_string(),
        },
        other => other.to_string(),
    }
}

/// One bench's part of the report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Section {
    pub key: String,
    pub title: String,
    pub date: String,
    pub commands: Vec<String>,
    pub git_rev: String,
    pub versions: BTreeMap<String, String>,
    pub machine: Machine,
    #[serde(default)]
    pub notes: Vec<String>,
    pub tables: Vec<Table>,
    /// The bench's own output, for whoever wants more than the tables.
    #[serde(default)]
    pub raw: Value,
}

impl Section {
    /// A section stamped with now, this checkout and this machine.
    pub fn new(root: &Path, key: &str, title: &str, commands: Vec<String>) -> Section {
        Section {
            key: key.to_string(),
            title: title.to_string(),
            date: now(),
            commands,
            git_rev: git_rev(root),
            versions: versions(),
            machine: Machine::detect(),
            notes: Vec::new(),
            tables: Vec::new(),
            raw: Value::Null,
        }
    }

    /// The smoke check: there are tables and every number cell has a number.
    pub fn check_numbers(&self) -> Result<()> {
        if self.tables.is_empty() {
            bail!("section {:?} has no tables", self.key);
        }
        for t in &self.tables {
            t.check_numbers()
                .with_context(|| format!("section {:?}", self.key))?;
        }
        Ok(())
    }

    fn render(&self, out: &mut String) {
        let _ = writeln!(out, "## {}\n", self.title);
        let _ = writeln!(
            out,
            "Measured {} at `{}` on {}.\n",
            self.date,
            self.git_rev,
            self.machine.describe()
        );
        let versions: Vec<String> = self
            .versions
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        if !versions.is_empty() {
            let _ = writeln!(out, "Versions: {}.\n", versions.join("; "));
        }
        let _ = writeln!(out, "```sh");
        for c in &self.commands {
            let _ = writeln!(out, "{c}");
        }
        let _ = writeln!(out, "```\n");
        for t in &self.tables {
            t.render(out);
        }
        for n in &self.notes {
            let _ = writeln!(out, "- {n}");
        }
        if !self.notes.is_empty() {
            out.push('\n');
        }
    }
}

/// The whole report.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Report {
    pub updated: String,
    pub sections: Vec<Section>,
}

impl Report {
    /// The report in `dir`, or an empty one (an unreadable file is replaced, with a warning).
    pub fn load(dir: &Path) -> Report {
        let path = dir.join("report.json");
        match std::fs::read_to_string(&path) {
            Err(_) => Report::default(),
            Ok(text) => serde_json::from_str(&text).unwrap_or_else(|e| {
                eprintln!(
                    "warning: {} is not a report ({e}); starting a new one",
                    path.display()
                );
                Report::default()
            }),
        }
    }

    /// Replaces (or adds) the section with the same key.
    pub fn put(&mut self, section: Section) {
        self.updated = section.date.clone();
        self.sections.retain(|s| s.key != section.key);
        self.sections.push(section);
        let rank = |k: &str| {
            SECTION_ORDER
                .iter()
                .position(|o| *o == k)
                .unwrap_or(SECTION_ORDER.len())
        };
        self.sections
            .sort_by(|a, b| (rank(&a.key), &a.key).cmp(&(rank(&b.key), &b.key)));
    }

    /// Writes `report.json` and `report.md` into `dir`; returns the markdown's path.
    pub fn save(&self, dir: &Path) -> Result<PathBuf> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let json = dir.join("report.json");
        std::fs::write(&json, serde_json::to_string_pretty(self)?)
            .with_context(|| format!("writing {}", json.display()))?;
        let md = dir.join("report.md");
        std::fs::write(&md, self.render()).with_context(|| format!("writing {}", md.display()))?;
        Ok(md)
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# Benchmarks\n");
        let _ = writeln!(
            out,
            "Last updated {}. Each section is the latest run of one bench (`cargo xtask bench <name>`), with the machine, versions and commands it was measured with. The data is in `report.json` next to this file.\n",
            self.updated
        );
        for s in &self.sections {
            s.render(&mut out);
        }
        out
    }
}

/// UTC now, to the second.
pub fn now() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| jiff::Timestamp::now().to_string())
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    let s = String::from_utf8_lossy(&text)
        .lines()
        .next()?
        .trim()
        .to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

/// `git rev-parse --short HEAD`, with `+dirty` when the tree has changes.
pub fn git_rev(root: &Path) -> String {
    let rev = output(
        Command::new("git")
            .current_dir(root)
            .args(["rev-parse", "--short", "HEAD"]),
    )
    .unwrap_or_else(|| "unknown".to_string());
    let dirty = Command::new("git")
        .current_dir(root)
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .is_ok_and(|o| !o.stdout.is_empty());
    if dirty { format!("{rev}+dirty") } else { rev }
}

/// The toolchain and, when installed, the proxies a data-plane run compares against. Nothing
/// is installed here: an absent tool is left out.
pub fn versions() -> BTreeMap<String, String> {
    let mut v = BTreeMap::new();
    if let Some(s) = output(Command::new("rustc").arg("-V")) {
        v.insert(
            "rustc".to_string(),
            s.trim_start_matches("rustc ").to_string(),
        );
    }
    if let Some(envoy) = envoy_binary()
        && let Some(s) = output(Command::new(envoy).arg("--version"))
    {
        // "envoy  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL"
        let version = s
            .split('/')
            .nth(1)
            .map(str::to_string)
            .unwrap_or_else(|| s.clone());
        v.insert("envoy".to_string(), version);
    }
    if let Some(s) = output(Command::new("nginx").arg("-v")) {
        v.insert(
            "nginx".to_string(),
            s.trim_start_matches("nginx version: nginx/").to_string(),
        );
    }
    if let Some(s) = output(Command::new("haproxy").arg("-v")) {
        let version = s.split_whitespace().nth(2).unwrap_or(&s).to_string();
        v.insert("haproxy".to_string(), version);
    }
    v
}

/// `$MESH_ENVOY`, else the binary `tools/envoy.sh` installs, if it is there (never installs).
fn envoy_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MESH_ENVOY") {
        return Some(PathBuf::from(p));
    }
    let venv = std::env::var_os("MESH_ENVOY_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/mesh-tools/envoy-venv"));
    std::fs::read_dir(venv.join("lib"))
        .ok()?
        .flatten()
        .map(|e| e.path().join("site-packages/envoy/_bin/envoy"))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn table() -> Table {
        let mut t = Table::new(
            "t",
            vec![Column::label("case"), Column::number("time", "ms")],
        );
        t.push(vec![json!("a"), json!(1.234)]);
        t
    }

    #[test]
    fn numbers_are_checked() {
        let mut t = table();
        t.check_numbers().unwrap();
        t.push(vec![json!("b"), Value::Null]);
        let err = t.check_numbers().unwrap_err().to_string();
        assert!(err.contains("row 1 (b)") && err.contains("time"), "{err}");
        let empty = Table::new("e", vec![]);
        assert!(empty.check_numbers().is_err());
    }

    #[test]
    fn sections_replace_and_order() {
        let dir = tempfile::tempdir().unwrap();
        let root = Path::new(".");
        let mut r = Report::default();
        let mut micro = Section::new(
            root,
            "micro",
            "Micro",
            vec!["cargo xtask bench micro".into()],
        );
        micro.tables.push(table());
        r.put(micro.clone());
        let mut control = Section::new(root, "control", "Control", vec![]);
        control.tables.push(table());
        r.put(control);
        micro.notes.push("second run".into());
        r.put(micro);
        assert_eq!(
            r.sections
                .iter()
                .map(|s| s.key.as_str())
                .collect::<Vec<_>>(),
            ["control", "micro"]
        );
        r.save(dir.path()).unwrap();
        let back = Report::load(dir.path());
        assert_eq!(back.sections.len(), 2);
        assert_eq!(back.sections[1].notes, ["second run"]);
        let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
        assert!(md.contains("| case | time (ms) |"), "{md}");
        assert!(md.contains("| a | 1.23 |"), "{md}");
        assert!(md.find("## Control").unwrap() < md.find("## Micro").unwrap());
    }

    #[test]
    fn cells_format() {
        assert_eq!(format_cell(&json!(1234.4)), "1234");
        assert_eq!(format_cell(&json!(12.345)), "12.3");
        assert_eq!(format_cell(&json!(0.01234)), "0.012");
        assert_eq!(format_cell(&json!(7)), "7");
        assert_eq!(format_cell(&Value::Null), "—");
        assert_eq!(format_cell(&json!("a|b")), "a\\|b");
    }
}
