use anyhow::Result;
use clap::{Parser, Subcommand};

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
    /// Version, build features, the devices found and each kernel's resources.
    Info,
    /// The main job: train on the built-in phantom, segment a held-out one, report
    /// (`demo segdiff`: the 2D SegDiff path on the shared dermoscopy photos).
    Demo(DemoCmd),
    /// Train a model.
    #[command(subcommand)]
    Train(TrainCmd),
    /// Segment a scan with a trained run.
    Segment(voxdiff::pipeline::segment::SegmentArgs),
    /// Time the hot ops (3x3x3 convolution, instance norm) on a device.
    Bench(BenchArgs),
    /// Score predicted label maps against references (per-class CSV + JSON summary).
    Evaluate(voxdiff::pipeline::evaluate::EvaluateArgs),
    /// Body-part regression: score a CT's slices, write a coordinate volume.
    Bpr(voxdiff::pipeline::bpr_infer::BprArgs),
}

#[derive(clap::Args)]
struct DemoCmd {
    #[command(subcommand)]
    system: Option<DemoSystem>,
    #[command(flatten)]
    args: voxdiff::pipeline::demo::DemoArgs,
}

#[derive(Subcommand)]
enum DemoSystem {
    /// SegDiff 2D on the shared dermoscopy photos: train minutes, segment a held-out photo.
    Segdiff(voxdiff::pipeline::segdiff_demo::SegDiffDemoArgs),
}

#[derive(Subcommand)]
enum TrainCmd {
    /// Diffusion segmentation (ImgX-DiffSeg) or the supervised UNet baseline.
    Seg(voxdiff::pipeline::seg_train::TrainSegArgs),
    /// SegDiff 2D: image-conditioned ε-diffusion on image/mask folders.
    Segdiff(voxdiff::pipeline::segdiff_train::TrainSegDiffArgs),
    /// Self-supervised body-part regression (SSBR / bpreg) on CT slices.
    Bpr(voxdiff::pipeline::bpr_train::TrainBprArgs),
    /// DDPM pretraining of the FPN3d backbone on CT patches, conditioned on coordinates.
    Pretrain(voxdiff::pipeline::pretrain_train::TrainPretrainArgs),
    /// Train a probe head on frozen diffusion features of labelled CTs (docs/pretraining.md).
    Probe(voxdiff::pipeline::probe_train::TrainProbeArgs),
}

#[derive(clap::Args)]
struct BenchArgs {
    /// auto, cpu, emu, cuda, cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
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
    /// Time one ImgX-DiffSeg training step (forward, backward, AdamW) on a
    /// patch of `--dims` instead of the op cases; with `--suite pretrain`,
    /// the pretraining step (with and without attention).
    #[arg(long)]
    step: bool,
    /// Classes of the training step (background included).
    #[arg(long, default_value_t = 14)]
    classes: usize,
    /// standard (convolution, norm, softmax at --dims/--channels) or
    /// pretrain (linear attention and batch norm at --sizes).
    #[arg(long, default_value = "standard")]
    suite: String,
    /// The pretrain suite's sizes, CxDxHxW comma-separated.
    #[arg(long, default_value = voxdiff::pipeline::bench_pretrain::PAPER_SIZES)]
    sizes: String,
    /// Instead of timing ops: print the static plan of the paper's training
    /// step on --dims (launches, memory, modelled time on --gpu); runs nothing.
    #[arg(long)]
    plan: bool,
    /// The GPU the plan's time is modelled on.
    #[arg(long, default_value = "h100")]
    gpu: String,
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
            info();
            Ok(())
        }
        Cmd::Demo(DemoCmd {
            system: Some(DemoSystem::Segdiff(a)),
            ..
        }) => voxdiff::pipeline::segdiff_demo::run(&a),
        Cmd::Demo(DemoCmd { args, .. }) => voxdiff::pipeline::demo::run(&args),
        Cmd::Train(TrainCmd::Seg(a)) => voxdiff::pipeline::seg_train::run(&a),
        Cmd::Train(TrainCmd::Segdiff(a)) => voxdiff::pipeline::segdiff_train::run(&a),
        Cmd::Train(TrainCmd::Bpr(a)) => voxdiff::pipeline::bpr_train::run(&a),
        Cmd::Train(TrainCmd::Pretrain(a)) => voxdiff::pipeline::pretrain_train::run(&a),
        Cmd::Train(TrainCmd::Probe(a)) => voxdiff::pipeline::probe_train::run(&a),
        Cmd::Segment(a) => voxdiff::pipeline::segment::run(&a),
        Cmd::Bench(a) if a.plan => {
            let dims = [a.dims[0], a.dims[1], a.dims[2]];
            let plan = voxdiff::pipeline::plan_step::bench_plan(dims, &a.gpu)?;
            if let Some(p) = a.json {
                let json = serde_json::to_string_pretty(&plan.summary())?;
                voxdiff::fsutil::write_atomic(&p, json.as_bytes())?;
            }
            Ok(())
        }
        Cmd::Bench(a) => {
            let b = voxdiff::backend::select(&a.device)?;
            let b = b.as_ref();
            let dims = [a.dims[0], a.dims[1], a.dims[2]];
            let r = if a.step && a.suite == "pretrain" {
                voxdiff::pipeline::bench_pretrain::pretrain_step(b, dims, a.reps)?
            } else if a.step {
                vec![voxdiff::pipeline::bench::imgx_step(
                    b, dims, a.classes, a.reps,
                )?]
            } else {
                match a.suite.as_str() {
                    "standard" => voxdiff::pipeline::bench::standard(b, dims, a.channels, a.reps)?,
                    "pretrain" => {
                        let sizes = voxdiff::pipeline::bench_pretrain::parse_sizes(&a.sizes)?;
                        voxdiff::pipeline::bench_pretrain::run(b, &sizes, a.reps)?
                    }
                    other => anyhow::bail!("--suite: {other:?} is not standard or pretrain"),
                }
            };
            voxdiff::pipeline::bench::print(&r, &b.name());
            if let Some(p) = a.json {
                voxdiff::fsutil::write_atomic(&p, serde_json::to_string_pretty(&r)?.as_bytes())?;
            }
            Ok(())
        }
        Cmd::Evaluate(args) => voxdiff::pipeline::evaluate::run(&args),
        Cmd::Bpr(a) => voxdiff::pipeline::bpr_infer::run(&a),
    }
}

/// `voxdiff info`: what this binary was built with and what it can run on.
fn info() {
    use voxdiff::backend::gpu::registry::{
        ptxas_info, Family, Kernel, CUBIN_ARCHS, NVRTC_AT_BUILD, PTXAS_AT_BUILD, PTX_ARCHS,
    };
    use voxdiff::backend::gpu::{cuda, emu};

    println!("voxdiff {}", env!("CARGO_PKG_VERSION"));
    println!("build:");
    match NVRTC_AT_BUILD {
        Some(v) => {
            let bytes = |f: &dyn Fn(Family, usize) -> usize, n: usize| -> usize {
                (0..n)
                    .map(|i| Family::ALL.iter().map(|&fam| f(fam, i)).sum::<usize>())
                    .sum()
            };
            let cubin = bytes(
                &|f, i| f.cubin(i).map_or(0, |c| c.len()),
                CUBIN_ARCHS.len(),
            );
            let ptx = bytes(&|f, i| f.ptx(i).map_or(0, |p| p.len()), PTX_ARCHS.len());
            println!(
                "  NVRTC at build: yes ({v}); embedded for each of {} kernel families:",
                Family::ALL.len()
            );
            println!(
                "    CUBIN for {} ({:.1} MB in all)",
                CUBIN_ARCHS.join(", "),
                cubin as f64 / 1e6
            );
            println!(
                "    PTX for {} ({:.1} MB in all)",
                PTX_ARCHS.join(", "),
                ptx as f64 / 1e6
            );
            println!("    the sources (for the machine's NVRTC when neither loads)");
        }
        None => println!(
            "  NVRTC at build: no (sources embedded; CUDA compiles them at run time with the machine's NVRTC)"
        ),
    }
    match PTXAS_AT_BUILD {
        Some(v) => println!("  ptxas at build: {v}"),
        None => println!("  ptxas at build: no (no register/spill report)"),
    }
    println!("devices:");
    println!(
        "  cpu: available ({} threads)",
        rayon::current_num_threads()
    );
    println!(
        "  emu: available (CUDA execution model on the CPU; blocks over {} threads)",
        emu::pool_threads()
    );
    match cuda::list_devices() {
        Ok(gpus) => {
            println!("  CUDA driver: present, {} GPU(s)", gpus.len());
            for (i, g) in gpus.iter().enumerate() {
                println!("    {g}");
                // Opening the device loads every family: show which form was used.
                match cuda::Cuda::new(i) {
                    Ok(dev) => {
                        for (family, origin) in dev.code_origin() {
                            println!("      {:12} {origin}", family.name());
                        }
                    }
                    Err(e) => println!("      cannot open: {e:#}"),
                }
            }
        }
        Err(e) => println!("  CUDA driver: {e:#}"),
    }
    if PTXAS_AT_BUILD.is_some() {
        println!(
            "kernels ({}; registers, static shared memory bytes, spill store/load bytes):",
            Kernel::ALL.len()
        );
        let width = Kernel::ALL
            .iter()
            .map(|k| k.name().len())
            .max()
            .unwrap_or(0);
        println!("  {:width$}  {:>20}  {:>20}", "kernel", "sm_80", "sm_90");
        for &k in Kernel::ALL {
            let cell = |sm: &str| match ptxas_info(k, sm) {
                Some(i) => format!(
                    "{:>3} r {:>6} B {:>3}/{:<3}",
                    i.registers, i.shared_bytes, i.spill_store_bytes, i.spill_load_bytes
                ),
                None => "-".to_string(),
            };
            println!(
                "  {:width$}  {:>20}  {:>20}",
                k.name(),
                cell("sm_80"),
                cell("sm_90")
            );
        }
    } else {
        println!("kernels: {} (no ptxas report)", Kernel::ALL.len());
    }
}
