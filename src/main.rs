use anyhow::Result;
use clap::{Parser, Subcommand};
use voxdiff::backend::cpu::CpuBackend;
use voxdiff::backend::Backend;

#[derive(Parser)]
#[command(
    name = "voxdiff",
    version,
    about = "Diffusion models for 3D medical image segmentation"
)]
struct Cli {
    /// Worker threads of the CPU backend (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Version, build features and the devices found.
    Info,
    /// Time the hot ops (3x3x3 convolution, instance norm) on a device.
    Bench(BenchArgs),
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Volume extents D H W.
    #[arg(long, num_args = 3, default_values_t = [32, 128, 128])]
    dims: Vec<usize>,
    /// Channels (in = out for the convolution).
    #[arg(long, default_value_t = 32)]
    channels: usize,
    /// Timed repetitions per case (the median is reported).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Some(n) = cli.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()?;
    }
    match cli.cmd {
        Cmd::Info => {
            println!("voxdiff {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Cmd::Bench(a) => {
            let b = CpuBackend::new();
            let dims = [a.dims[0], a.dims[1], a.dims[2]];
            let r = voxdiff::pipeline::bench::standard(&b, dims, a.channels, a.reps)?;
            voxdiff::pipeline::bench::print(&r, &b.name());
            if let Some(p) = a.json {
                voxdiff::fsutil::write_atomic(&p, serde_json::to_string_pretty(&r)?.as_bytes())?;
            }
            Ok(())
        }
    }
}
