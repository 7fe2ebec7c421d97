use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "voxdiff",
    version,
    about = "Diffusion models for 3D medical image segmentation"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Version, build features and the devices found.
    Info,
    /// Score predicted label maps against references (per-class CSV + JSON summary).
    Evaluate(voxdiff::pipeline::evaluate::EvaluateArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Info => {
            println!("voxdiff {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Cmd::Evaluate(args) => voxdiff::pipeline::evaluate::run(&args),
    }
}
