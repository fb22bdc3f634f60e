//! `aoai-operator`: controller + webhook (`run`), CRD printer (`crdgen`), offline injection (`inject`).
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller and the admission webhook.
    Run,
    /// Print the AzureOpenAIProxy CustomResourceDefinition as YAML.
    Crdgen,
    /// Inject the sidecar into the pod templates of Kubernetes manifests.
    Inject,
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Command::Run | Command::Crdgen | Command::Inject => {
            eprintln!("aoai-operator: not implemented yet");
            std::process::exit(2);
        }
    }
}
