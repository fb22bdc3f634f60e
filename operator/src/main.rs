//! `aoai-operator`: controller + webhook (`run`), CRD printer (`crdgen`), offline injection (`inject`).
use std::process::ExitCode;

use aoai_operator::crd::AzureOpenAIProxy;
use clap::{Parser, Subcommand};
use kube::CustomResourceExt;

#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the AzureOpenAIProxy CustomResourceDefinition as YAML.
    Crdgen,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Crdgen => {
            print!(
                "{}",
                serde_saphyr::to_string(&AzureOpenAIProxy::crd()).expect("the CRD serializes")
            );
            ExitCode::SUCCESS
        }
    }
}
