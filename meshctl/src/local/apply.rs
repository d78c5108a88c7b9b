//! `apply -f` and `delete -f`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::Value;

use super::cluster::{Dir, resource_file};

#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// A file, a directory (its .yaml, .yml and .json files) or `-` for stdin. Repeatable.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<String>,
    #[arg(from_global)]
    local: bool,
}

#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    /// A file, a directory or `-`: the resources it names are removed.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<String>,
    /// Succeed when a resource does not exist (kubectl's --ignore-not-found).
    #[arg(long)]
    ignore_not_found: bool,
    #[arg(from_global)]
    local: bool,
}

/// (source name, text) of every input.
fn read_inputs(files: &[String]) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for f in files {
        if f == "-" {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .context("cannot read stdin")?;
            out.push(("-".to_string(), text));
            continue;
        }
        let path = Path::new(f);
        let mut paths = Vec::new();
        if path.is_dir() {
            collect(path, &mut paths).with_context(|| format!("cannot read directory {f}"))?;
            paths.sort();
        } else {
            paths.push(path.to_path_buf());
        }
        for p in paths {
            let text = std::fs::read_to_string(&p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            out.push((p.display().to_string(), text));
        }
    }
    Ok(out)
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let p = entry?.path();
        if p.is_dir() {
            collect(&p, out)?;
        } else if matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            out.push(p);
        }
    }
    Ok(())
}

/// A document's identity: (kind, namespace, name).
fn identity(doc: &Value, source: &str, index: usize) -> Result<(String, String, String)> {
    let kind = doc["kind"]
        .as_str()
        .with_context(|| format!("{source}: document {}: missing kind", index + 1))?;
    let name = doc["metadata"]["name"].as_str().with_context(|| {
        format!(
            "{source}: document {} ({kind}): missing metadata.name",
            index + 1
        )
    })?;
    let ns = doc["metadata"]["namespace"].as_str().unwrap_or("default");
    Ok((kind.to_string(), ns.to_string(), name.to_string()))
}

fn documents(text: &str, source: &str) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let v = Value::deserialize(doc)
            .with_context(|| format!("{source}: document {}: invalid YAML", i + 1))?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

fn group(doc: &Value) -> String {
    let api = doc["apiVersion"].as_str().unwrap_or("v1");
    match api.split_once('/') {
        Some((g, _)) => format!(".{g}"),
        None => String::new(),
    }
}

pub fn apply(args: &ApplyArgs, dir: &Dir) -> Result<ExitCode> {
    super::require_local(args.local, "apply")?;
    dir.state()?;
    let inputs = read_inputs(&args.files)?;
    // Everything is validated before anything is written.
    let mut errors = Vec::new();
    let mut writes = Vec::new();
    for (source, text) in &inputs {
        for result in mesh_api::validation::validate_text(text, source) {
            if let Err(e) = result {
                errors.push(e.to_string());
            }
        }
        for (i, doc) in documents(text, source)?.into_iter().enumerate() {
            let (kind, ns, name) = identity(&doc, source, i)?;
            writes.push((kind, ns, name, doc));
        }
    }
    if !errors.is_empty() {
        for e in &errors {
            eprintln!("{e}");
        }
        eprintln!(
            "error: {} invalid document(s); nothing applied",
            errors.len()
        );
        return Ok(ExitCode::from(1));
    }
    let user = dir.user_dir();
    std::fs::create_dir_all(&user).with_context(|| format!("cannot create {}", user.display()))?;
    for (kind, ns, name, doc) in writes {
        let path = resource_file(&user, &kind, &ns, &name);
        let verb = if path.exists() {
            "configured"
        } else {
            "created"
        };
        let yaml = serde_yaml::to_string(&doc)?;
        // Aside and renamed: the control plane's watcher never sees half a file.
        let tmp = path.with_extension("yaml.tmp");
        std::fs::write(&tmp, yaml).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
        println!("{}{}/{name} {verb}", kind.to_lowercase(), group(&doc));
    }
    Ok(ExitCode::SUCCESS)
}

pub fn delete(args: &DeleteArgs, dir: &Dir) -> Result<ExitCode> {
    super::require_local(args.local, "delete")?;
    dir.state()?;
    let user = dir.user_dir();
    let mut missing = 0;
    for (source, text) in read_inputs(&args.files)? {
        for (i, doc) in documents(&text, &source)?.into_iter().enumerate() {
            let (kind, ns, name) = identity(&doc, &source, i)?;
            let path = resource_file(&user, &kind, &ns, &name);
            let shown = format!("{}{}/{name}", kind.to_lowercase(), group(&doc));
            if path.exists() {
                std::fs::remove_file(&path)
                    .with_context(|| format!("cannot remove {}", path.display()))?;
                println!("{shown} deleted");
            } else if !args.ignore_not_found {
                eprintln!("error: {shown} not found in namespace {ns}");
                missing += 1;
            }
        }
    }
    if missing > 0 {
        bail!("{missing} resource(s) not found (use --ignore-not-found to ignore)");
    }
    Ok(ExitCode::SUCCESS)
}
