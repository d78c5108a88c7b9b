//! `mesh-cni`: run by a container runtime (with `CNI_COMMAND` set) it is the chained CNI
//! plugin; run by a person or an init container it applies, prints or removes the
//! capture rules directly (`mesh-cni iptables`).

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use mesh_cni::capture::iptables::clean_input;
use mesh_cni::capture::{BackendChoice, CaptureConfig, Iptables, RuleSet};
use mesh_cni::cni::{self, CniEnv};
use mesh_cni::netns;

#[derive(Parser)]
#[command(
    name = "mesh-cni",
    about = "Traffic capture for the mesh: CNI plugin and iptables rules"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Apply (default), check, print or remove the capture rules, as istio-iptables does.
    Iptables(IptablesArgs),
}

#[derive(clap::Args)]
struct IptablesArgs {
    /// Print the iptables-restore input instead of applying it.
    #[arg(long)]
    dry_run: bool,
    /// Remove the capture rules and chains instead of installing them.
    #[arg(long, conflicts_with = "check")]
    clean: bool,
    /// Verify that exactly these rules are in force (exit 1 with the difference if not).
    #[arg(long)]
    check: bool,
    /// Network namespace to work in (e.g. /run/netns/NAME); default: the current one.
    #[arg(long)]
    netns: Option<PathBuf>,
    /// Read the capture annotations from this Pod manifest (YAML or JSON).
    #[arg(long)]
    pod_file: Option<PathBuf>,
    /// A capture annotation, KEY=VALUE (repeatable; overrides --pod-file).
    #[arg(long = "annotation", value_name = "KEY=VALUE")]
    annotations: Vec<String>,
    /// iptables implementation.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    iptables: BackendChoice,
}

fn main() -> ExitCode {
    if std::env::var_os("CNI_COMMAND").is_some() {
        return cni_main();
    }
    match Cli::parse().command {
        Cmd::Iptables(args) => match iptables(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("mesh-cni: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn cni_main() -> ExitCode {
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let env = CniEnv::from_lookup(|k| std::env::var(k).ok());
    let env = match read {
        Ok(_) => env,
        Err(e) => Err(cni::CniError::new(cni::Code::Io, "cannot read stdin", e)),
    };
    let outcome = cni::run(env, &stdin);
    println!("{}", outcome.stdout);
    if outcome.success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn annotations(args: &IptablesArgs) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    if let Some(path) = &args.pod_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let pod: k8s_openapi::api::core::v1::Pod = serde_yaml::from_str(&text)
            .with_context(|| format!("{} is not a Pod manifest", path.display()))?;
        out.extend(pod.metadata.annotations.unwrap_or_default());
    }
    for kv in &args.annotations {
        let Some((k, v)) = kv.split_once('=') else {
            bail!("--annotation {kv:?}: expected KEY=VALUE");
        };
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

fn iptables(args: IptablesArgs) -> Result<()> {
    let rules = RuleSet::generate(&CaptureConfig::from_annotations(&annotations(&args)?)?);
    let choice = args.iptables;
    let work = move || -> Result<()> {
        if args.dry_run && !args.clean {
            print!("{}", rules.restore_input(&[]));
            return Ok(());
        }
        let ipt = Iptables::detect(choice)?;
        if args.check {
            ipt.check(&rules)?;
            eprintln!("capture rules in force (iptables-{})", ipt.backend().name());
        } else if args.clean && args.dry_run {
            match clean_input(&ipt.save()?) {
                Some(input) => print!("{input}"),
                None => eprintln!("no capture rules to remove"),
            }
        } else if args.clean {
            let removed = ipt.clean()?;
            eprintln!(
                "{}",
                if removed {
                    "capture rules removed"
                } else {
                    "no capture rules to remove"
                }
            );
        } else {
            ipt.apply(&rules)?;
            eprintln!(
                "{} capture rules applied (iptables-{})",
                rules.rules.len(),
                ipt.backend().name()
            );
        }
        Ok(())
    };
    match &args.netns {
        Some(path) => netns::run_in(&path.clone(), work)?,
        None => work(),
    }
}
