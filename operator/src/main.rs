#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(version, about = "tokenplane operator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CRDs as YAML, or write one file per kind into --out.
    Crdgen {
        /// Folder to write `<kind>.yaml` files into (the repository's `crds/`).
        #[arg(long, env = "TOKENPLANE_CRD_OUT")]
        out: Option<PathBuf>,
    },
    /// Print the Kubernetes objects the operator would create for the
    /// OAuth2Clients (and their TokenPolicies) in some YAML files, offline.
    /// Generated secrets show as placeholders.
    Render {
        /// YAML files with OAuth2Client and TokenPolicy documents.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crdgen { out: Some(dir) } => tokenplane_operator::crdgen::write(&dir),
        Command::Crdgen { out: None } => {
            for (_, yaml) in tokenplane_operator::crdgen::render()? {
                print!("---\n{yaml}");
            }
            Ok(())
        }
        Command::Render { files } => {
            let mut resources = tokenplane_operator::render::Resources::default();
            for file in files {
                let text = std::fs::read_to_string(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?;
                resources.add(file, &text)?;
            }
            print!("{}", resources.render()?);
            Ok(())
        }
    }
}
