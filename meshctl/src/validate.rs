//! `meshctl validate -f FILE|DIR|-`: checks Istio resources the way the admission webhook
//! does (schema, then Istio's semantic rules), every document of every file, and reports
//! every problem with its file, line, resource and field path.
//!
//! Exit codes: 0 when everything is valid (one summary line), 1 when any document is
//! invalid (every error, then the summary), 2 when the command itself fails (a file that
//! cannot be read, bad arguments). Kubernetes kinds the mesh does not read (Deployment,
//! ServiceAccount, ...) are skipped with a note, not failed.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use mesh_api::document::Resource;

/// Arguments of `meshctl validate`.
#[derive(clap::Args)]
pub struct Args {
    /// A file, a directory (searched recursively for .yaml, .yml and .json) or `-` for
    /// stdin. Repeatable.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<String>,
    /// Print only errors and the summary (no notes about skipped kinds).
    #[arg(short, long)]
    quiet: bool,
}

/// What was found across all inputs.
#[derive(Debug, Default, PartialEq, Eq)]
struct Tally {
    files: usize,
    istio: usize,
    kubernetes: usize,
    skipped: usize,
    invalid_documents: usize,
    errors: usize,
}

pub fn run(args: &Args) -> Result<ExitCode> {
    let mut inputs = Vec::new();
    for f in &args.files {
        collect_inputs(f, &mut inputs)?;
    }
    let mut tally = Tally::default();
    for input in &inputs {
        let (name, text) = read_input(input)?;
        tally.files += 1;
        check_text(&text, &name, args.quiet, &mut tally);
    }
    let total = tally.istio + tally.kubernetes;
    let skipped = if tally.skipped > 0 {
        format!(", skipped {} of other kinds", tally.skipped)
    } else {
        String::new()
    };
    if tally.invalid_documents == 0 {
        println!(
            "validated {total} resources ({} Istio, {} Kubernetes) in {} files{skipped}: all valid",
            tally.istio, tally.kubernetes, tally.files
        );
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "{} errors in {} invalid documents; {total} valid resources in {} files{skipped}",
            tally.errors, tally.invalid_documents, tally.files
        );
        Ok(ExitCode::from(1))
    }
}

fn check_text(text: &str, name: &str, quiet: bool, tally: &mut Tally) {
    for result in mesh_api::validation::validate_text(text, name) {
        match result {
            Ok(Resource::Unowned(u)) => {
                tally.skipped += 1;
                if !quiet {
                    eprintln!(
                        "note: {name}: skipping {} {} {}: not a kind the mesh reads",
                        u.api_version,
                        u.kind,
                        u.name.as_deref().unwrap_or("<unnamed>")
                    );
                }
            }
            Ok(r) if r.kind().is_some_and(|k| k.is_istio()) => tally.istio += 1,
            Ok(_) => tally.kubernetes += 1,
            Err(e) => {
                tally.invalid_documents += 1;
                tally.errors += e.errors.len();
                eprintln!("{e}");
            }
        }
    }
}

/// An input: a file or stdin.
enum Input {
    Stdin,
    File(PathBuf),
}

fn collect_inputs(arg: &str, out: &mut Vec<Input>) -> Result<()> {
    if arg == "-" {
        out.push(Input::Stdin);
        return Ok(());
    }
    let path = Path::new(arg);
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read {arg}"))?;
    if meta.is_dir() {
        let mut files = Vec::new();
        walk_dir(path, &mut files)?;
        files.sort();
        out.extend(files.into_iter().map(Input::File));
    } else {
        out.push(Input::File(path.to_path_buf()));
    }
    Ok(())
}

fn walk_dir(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir)
        .with_context(|| format!("cannot read directory {}", dir.display()))?
    {
        let path = entry
            .with_context(|| format!("cannot read directory {}", dir.display()))?
            .path();
        if path.is_dir() {
            walk_dir(&path, out)?;
        } else if path
            .extension()
            .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
        {
            out.push(path);
        }
    }
    Ok(())
}

fn read_input(input: &Input) -> Result<(String, String)> {
    match input {
        Input::Stdin => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("cannot read stdin")?;
            Ok(("-".to_string(), text))
        }
        Input::File(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            Ok((path.display().to_string(), text))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_kinds() {
        let text = "apiVersion: networking.istio.io/v1beta1\nkind: Gateway\nmetadata: {name: gw}\nspec:\n  servers:\n  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: ['*']\n---\napiVersion: v1\nkind: Service\nmetadata: {name: s}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: bad}\nspec: {hosts: [a], http: [{retries: {attempts: -1}}]}\n";
        let mut tally = Tally::default();
        check_text(text, "t.yaml", true, &mut tally);
        assert_eq!(
            tally,
            Tally {
                files: 0,
                istio: 1,
                kubernetes: 1,
                skipped: 1,
                invalid_documents: 1,
                errors: 2,
            }
        );
    }
}
