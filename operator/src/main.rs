#![forbid(unsafe_code)]

use std::path::PathBuf;

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
    }
}
