//! `kvtier`: the command-line front end.
//!
//! `cargo run --release` replays a real trace bundled in the binary (the first 3,000 requests of
//! the Mooncake conversation trace) and prints prefix hit rates. Steps of a replay:
//! 1. Read the trace (`--trace PATH` or the bundled sample); a malformed line stops the run with
//!    its line number before anything is written (`--skip-bad-lines` counts and skips instead).
//! 2. Build the prefix tree once, then replay every capacity x policy point with a progress bar.
//! 3. Print the report and write the same as JSON into `--out` (default `out/`).
//!
//! `--mode sim` uses the hit-rate definition of the public kvcache-simulator (see
//! `kvtier_cli::replay`), so its numbers compare with published tables. `--mode engine` replays
//! the trace through the real G1 + G2 + G3 engine with simulated request lifetimes
//! (`kvtier_cli::replay::engine`) and also writes a chart. `--mode both` (the default) runs the
//! two. An error names the flag and value, or the file and line, it comes from.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::builder::PossibleValuesParser;
use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use kvtier::KvLayout;
use kvtier::io::BackendKind;
use kvtier::offload::Admission;
use kvtier::policy::PolicyKind;
use kvtier_cli::Error;
use kvtier_cli::replay::synth::SynthPreset;
use kvtier_cli::replay::{EngineConfig, EngineRun, PrefixPlan, SimConfig, SimPolicy, SimReport, chart, engine};
use kvtier_cli::trace::{Trace, TraceOptions};

/// First 3,000 requests of Mooncake's conversation_trace.jsonl (Apache-2.0, see data/README.md).
const SAMPLE: &str = include_str!("../../../data/conversation_sample.jsonl");
const SAMPLE_NAME: &str = "bundled sample (first 3,000 requests of Mooncake conversation_trace.jsonl)";
const REPORT_FILE: &str = "replay_sim.json";
const ENGINE_REPORT_FILE: &str = "replay_engine.json";
const SIM_CHART_FILE: &str = "replay_sim.svg";
const ENGINE_CHART_FILE: &str = "replay_engine.svg";

#[derive(Parser)]
#[command(
    name = "kvtier",
    version,
    about = "Paged KV cache with tiered offload: trace replay",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    replay: ReplayArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Replay a serving trace and report prefix hit rates (the default command).
    Replay(ReplayArgs),
    /// Build a Mooncake-format trace from an Azure LLM inference CSV (arrivals and lengths kept,
    /// prefix structure modelled: see `kvtier_cli::replay::synth`).
    Synth(SynthArgs),
}

/// What stops a command: a flag's value, or an error of the replay tools (which names the file
/// and line, or the setting and value, it concerns).
#[derive(Debug, thiserror::Error)]
enum CliError {
    /// A flag's value was refused.
    #[error("{flag} {value}: {reason}")]
    Flag {
        /// The flag, as typed (`--g1`).
        flag: &'static str,
        /// Its value.
        value: String,
        /// Why it was refused.
        reason: String,
    },
    /// Reading, replaying, charting or writing failed.
    #[error(transparent)]
    Replay(#[from] Error),
    /// A progress bar template did not parse (a bug of this program).
    #[error("progress bar: {0}")]
    Progress(#[from] indicatif::style::TemplateError),
}

impl CliError {
    /// The flag whose value made a replay setting invalid, if the setting comes from one.
    fn from_setting(args: &ReplayArgs, error: Error) -> Self {
        let Error::InvalidConfig { setting, value, reason } = error else { return CliError::Replay(error) };
        let flag = |flag, value| CliError::Flag { flag, value, reason: reason.clone() };
        match setting {
            "capacity" => flag("--capacity", value),
            "policies" => flag("--policy", value),
            "block_size" => flag("--block-size", args.block_size.to_string()),
            "g1_blocks" => flag("--g1", format!("{} ({value} blocks)", args.g1)),
            "g2_blocks" => flag("--g2", format!("{} ({value} blocks)", args.g2)),
            "prefill_tokens_per_sec" => flag("--prefill-tokens-per-sec", value),
            "decode_step" => flag("--decode-step-ms", args.decode_step_ms.to_string()),
            _ => CliError::Replay(Error::InvalidConfig { setting, value, reason }),
        }
    }
}

#[derive(Args, Clone)]
struct SynthArgs {
    /// Azure CSV (TIMESTAMP, ContextTokens, GeneratedTokens).
    #[arg(long, value_name = "PATH")]
    csv: PathBuf,
    /// Workload shape.
    #[arg(long, default_value = "conv", value_parser = PossibleValuesParser::new(SynthPreset::ALL.map(SynthPreset::name)))]
    preset: String,
    /// Random seed (equal seeds give equal traces).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Output JSONL path.
    #[arg(long, value_name = "PATH")]
    out: PathBuf,
}

fn synth(args: &SynthArgs) -> Result<(), CliError> {
    use kvtier_cli::replay::synth;
    let rows = synth::read_azure_csv(&args.csv)?;
    let config = SynthPreset::from_name(&args.preset)?.config();
    let trace = synth::synthesize(&rows, &config, args.seed)?;
    synth::write_jsonl_path(&trace, &args.out)?;
    let stats = synth::trace_stats(&trace);
    println!(
        "{}: {} requests, {} blocks, {} unique, {:.1} % of blocks reused",
        args.out.display(),
        stats.requests,
        stats.blocks,
        stats.unique_blocks,
        100.0 * stats.reused_block_share
    );
    Ok(())
}

#[derive(Args, Clone)]
struct ReplayArgs {
    /// Mooncake-format JSONL trace (timestamp, input_length, output_length, hash_ids).
    /// Default: the bundled sample.
    #[arg(long, value_name = "PATH")]
    trace: Option<PathBuf>,
    /// Cache capacities in 512-token blocks, comma-separated (e.g. 1827,9139).
    /// Default: 1,5,10,25,50 % of the trace's unique blocks.
    #[arg(long, value_name = "BLOCKS", value_delimiter = ',')]
    capacity: Vec<u32>,
    /// Replay mode: `sim` is the kvcache-simulator-compatible hit-rate model, `engine` the real
    /// tiered engine with simulated request lifetimes, `both` runs the two.
    #[arg(long, value_enum, default_value_t = Mode::Both)]
    mode: Mode,
    /// Engine mode: G1 capacity, in blocks (`32768`) or bytes at the model layout (`64GiB`).
    #[arg(long, value_name = "SIZE", default_value = "32768")]
    g1: Size,
    /// Engine mode: G2 capacity, in blocks or bytes (`128GiB`).
    #[arg(long, value_name = "SIZE", default_value = "65536")]
    g2: Size,
    /// Engine mode: G3 capacity, in blocks or bytes (`256GiB`); 0 for no SSD tier.
    #[arg(long, value_name = "SIZE", default_value = "131072")]
    g3: Size,
    /// Engine mode: model layout preset.
    #[arg(long, value_name = "NAME", default_value = "llama-3.1-8b", value_parser = PossibleValuesParser::new(KvLayout::PRESETS))]
    layout: String,
    /// Engine mode: tokens per block (must divide 512).
    #[arg(long, value_name = "TOKENS", default_value_t = 16)]
    block_size: u32,
    /// Engine mode: G3 IO engine.
    #[arg(long, value_enum, default_value_t = IoBackend::Auto)]
    io_backend: IoBackend,
    /// Engine mode: pages G3 takes from G2.
    #[arg(long, value_enum, default_value_t = AdmissionArg::SeenTwice)]
    admission: AdmissionArg,
    /// Engine mode: eviction policy of every tier (default: each tier's own, G1 LHD, G2 and
    /// G3 LRU).
    #[arg(long, value_enum)]
    tier_policy: Option<TierPolicy>,
    /// Engine mode: no write-through (G1 pages are copied to G2 only when G1 runs low).
    #[arg(long)]
    no_write_through: bool,
    /// Engine mode: move full model-size pages (real offload/onboard throughput; G1 and G2 are
    /// mapped at full size, so keep capacities and --requests small).
    #[arg(long)]
    full_data: bool,
    /// Replay only the first N requests of the trace.
    #[arg(long, value_name = "N")]
    requests: Option<usize>,
    /// Engine mode: simulated duration of one decode step, milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 20.0)]
    decode_step_ms: f64,
    /// Engine mode: simulated prefill speed, computed tokens per second.
    #[arg(long, value_name = "TOKENS", default_value_t = 100_000.0)]
    prefill_tokens_per_sec: f64,
    /// Engine mode: directory for the G3 files (a fresh subdirectory, removed afterwards).
    /// Default: the --out directory.
    #[arg(long, value_name = "DIR")]
    ssd_dir: Option<PathBuf>,
    /// Eviction policies to replay at each capacity, comma-separated; `all` is every one
    /// (fifo, lru, s3fifo, arc, lhd, opt). Sim mode only: the engine uses the tiers' policy.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Policy::Lru, Policy::Lhd, Policy::Opt])]
    policy: Vec<Policy>,
    /// Sim mode: run the tier policies in a real block pool (which knows nothing of the prefix
    /// tree) instead of the prefix-tree model. FIFO and OPT still run in the model.
    #[arg(long)]
    in_pool: bool,
    /// Directory for the JSON report (created if missing).
    #[arg(long, value_name = "DIR", default_value = "out")]
    out: PathBuf,
    /// Skip (and count) malformed trace lines instead of failing.
    #[arg(long)]
    skip_bad_lines: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// kvcache-simulator-compatible: one request at a time, first half warms, longest cached prefix.
    Sim,
    /// The real G1 + G2 + G3 engine, simulated request lifetimes.
    Engine,
    /// Both, one after the other.
    Both,
}

#[derive(Clone, Copy, ValueEnum)]
enum TierPolicy {
    Lru,
    S3fifo,
    Arc,
    Lhd,
}

#[derive(Clone, Copy, ValueEnum)]
enum AdmissionArg {
    /// Every page spilled from G2.
    All,
    /// Pages seen at least twice recently (TinyLFU-style sketch).
    SeenTwice,
}

#[derive(Clone, Copy, ValueEnum)]
enum IoBackend {
    Auto,
    Uring,
    Psync,
}

/// A capacity: blocks, or bytes at the model layout (`4GiB`, `512MiB`, `1TB`).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Size {
    Blocks(u64),
    Bytes(u64),
}

impl std::str::FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
        let (number, unit) = (&s[..split], s[split..].trim().to_ascii_lowercase());
        let value: f64 = number.parse().map_err(|_| format!("`{s}` is not a size (e.g. 2048 or 4GiB)"))?;
        let scale: u64 = match unit.as_str() {
            "" | "blocks" => {
                return number.parse().map(Size::Blocks).map_err(|_| format!("`{s}`: blocks are a whole number"));
            }
            "b" => 1,
            "k" | "kib" => 1 << 10,
            "m" | "mib" => 1 << 20,
            "g" | "gib" => 1 << 30,
            "t" | "tib" => 1 << 40,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "tb" => 1_000_000_000_000,
            _ => return Err(format!("`{s}`: unknown unit (use blocks, B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)")),
        };
        Ok(Size::Bytes((value * scale as f64) as u64))
    }
}

impl std::fmt::Display for Size {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Size::Blocks(n) => write!(f, "{n}"),
            Size::Bytes(n) => write!(f, "{n}B"),
        }
    }
}

impl Size {
    fn blocks(self, page_bytes: usize) -> usize {
        match self {
            Size::Blocks(n) => n as usize,
            Size::Bytes(n) => (n / page_bytes as u64) as usize,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Policy {
    Fifo,
    Lru,
    S3fifo,
    Arc,
    Lhd,
    Opt,
    All,
}

/// The policies named on the command line, `all` expanded, each once, in the given order.
fn sim_policies(named: &[Policy]) -> Vec<SimPolicy> {
    let mut out: Vec<SimPolicy> = Vec::new();
    for &p in named {
        let add: &[SimPolicy] = match p {
            Policy::Fifo => &[SimPolicy::Fifo],
            Policy::Lru => &[SimPolicy::Lru],
            Policy::S3fifo => &[SimPolicy::S3Fifo],
            Policy::Arc => &[SimPolicy::Arc],
            Policy::Lhd => &[SimPolicy::Lhd],
            Policy::Opt => &[SimPolicy::Opt],
            Policy::All => &SimPolicy::ALL,
        };
        for &policy in add {
            if !out.contains(&policy) {
                out.push(policy);
            }
        }
    }
    out
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Replay(args)) => replay(&args),
        Some(Command::Synth(args)) => synth(&args),
        None => replay(&cli.replay),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn replay(args: &ReplayArgs) -> Result<(), CliError> {
    let started = Instant::now();
    let options = TraceOptions::default().with_skip_bad_lines(args.skip_bad_lines);
    let (trace, source) = match &args.trace {
        Some(path) => (Trace::read_path(path, &options)?, path.display().to_string()),
        None => (Trace::parse_str(SAMPLE, &options)?, SAMPLE_NAME.to_string()),
    };
    let (trace, source) = match args.requests {
        // (the count of skipped lines goes with the cut: `--skip-bad-lines` reports it per file)
        Some(n) if n < trace.len() => {
            (Trace::from_records(trace.records()[..n].to_vec()), format!("{source}, first {n} requests"))
        }
        _ => (trace, source),
    };
    let parse_time = started.elapsed();
    // Both modes' configurations are checked before either runs or writes anything.
    let engine_config = engine_config(args)?;
    if args.mode != Mode::Engine {
        replay_sim(args, &trace, &source, started, parse_time)?;
    }
    if args.mode != Mode::Sim {
        if args.mode == Mode::Both {
            println!();
        }
        replay_engine(args, &trace, &source, &engine_config)?;
    }
    Ok(())
}

fn engine_config(args: &ReplayArgs) -> Result<EngineConfig, CliError> {
    let config = engine_config_base(args)?;
    Ok(match args.tier_policy {
        None => config,
        Some(TierPolicy::Lru) => config.with_policy(PolicyKind::Lru),
        Some(TierPolicy::S3fifo) => config.with_policy(PolicyKind::S3Fifo),
        Some(TierPolicy::Arc) => config.with_policy(PolicyKind::Arc),
        Some(TierPolicy::Lhd) => config.with_policy(PolicyKind::Lhd),
    })
}

fn engine_config_base(args: &ReplayArgs) -> Result<EngineConfig, CliError> {
    let layout = KvLayout::preset(&args.layout, args.block_size).map_err(|e| match e {
        kvtier::Error::InvalidConfig { field: "layout preset", .. } => CliError::Flag {
            flag: "--layout",
            value: args.layout.clone(),
            reason: format!("unknown preset (expected one of {})", KvLayout::PRESETS.join(", ")),
        },
        e => CliError::Flag { flag: "--block-size", value: args.block_size.to_string(), reason: e.to_string() },
    })?;
    let page = layout.page_bytes();
    let decode_step = Duration::try_from_secs_f64(args.decode_step_ms.max(0.0) / 1e3).map_err(|e| CliError::Flag {
        flag: "--decode-step-ms",
        value: args.decode_step_ms.to_string(),
        reason: e.to_string(),
    })?;
    let config = EngineConfig::default()
        .with_layout(layout)
        .with_capacities(args.g1.blocks(page), args.g2.blocks(page), args.g3.blocks(page))
        .with_speeds(decode_step, args.prefill_tokens_per_sec)
        .with_admission(match args.admission {
            AdmissionArg::All => Admission::All,
            AdmissionArg::SeenTwice => Admission::SeenTwice,
        })
        .with_write_through_g2(!args.no_write_through)
        .with_full_data(args.full_data)
        .with_ssd_dir(args.ssd_dir.clone().unwrap_or_else(|| args.out.clone()))
        .with_io_backend(match args.io_backend {
            IoBackend::Auto => BackendKind::Auto,
            IoBackend::Uring => BackendKind::Uring,
            IoBackend::Psync => BackendKind::Psync,
        });
    config.validate().map_err(|e| CliError::from_setting(args, e))?;
    Ok(config)
}

fn replay_sim(
    args: &ReplayArgs,
    trace: &Trace,
    source: &str,
    started: Instant,
    parse_time: Duration,
) -> Result<(), CliError> {
    let plan_started = Instant::now();
    let plan = PrefixPlan::build(trace);
    let plan_time = plan_started.elapsed();

    let policies = sim_policies(&args.policy);
    let config =
        SimConfig::default().with_capacities(args.capacity.clone()).with_policies(policies).with_pool(args.in_pool);
    config.validate().map_err(|e| CliError::from_setting(args, e))?;
    let points = config.capacities_for(&plan).len() * config.policies().len();
    let bar = ProgressBar::new(points as u64).with_style(
        ProgressStyle::with_template("{spinner} replay [{bar:30}] {pos}/{len} points {msg}")?.progress_chars("=> "),
    );
    let mut point_times = Vec::with_capacity(points);
    let mut last = Instant::now();
    let report = SimReport::run(&plan, &config, |result| {
        point_times.push(last.elapsed());
        last = Instant::now();
        bar.set_message(format!("{} @ {} blocks", result.policy.name(), result.capacity_blocks));
        bar.inc(1);
    })?;
    bar.finish_and_clear();
    let total_time = started.elapsed();

    print_report(&report, trace, source, &config, [parse_time, plan_time, total_time], &point_times);
    let path = write_json(&args.out, &report, trace, source, [parse_time, plan_time, total_time], &point_times)?;
    println!("report       {}", path.display());
    if config.policies().len() > 1 {
        let svg = args.out.join(SIM_CHART_FILE);
        chart::write_sim_svg(&report, source, &svg)?;
        println!("chart        {}", svg.display());
    }
    Ok(())
}

fn replay_engine(args: &ReplayArgs, trace: &Trace, source: &str, config: &EngineConfig) -> Result<(), CliError> {
    let bar = ProgressBar::new(trace.len() as u64).with_style(
        ProgressStyle::with_template("{spinner} engine replay [{bar:30}] {pos}/{len} requests {elapsed}")?
            .progress_chars("=> "),
    );
    let run = engine::run(trace, config, |done| bar.set_position(done as u64))?;
    bar.finish_and_clear();
    print_engine(&run, source, &args.layout);
    let json = serde_json::json!({
        "kvtier_version": env!("CARGO_PKG_VERSION"),
        "mode": "engine",
        "definition": "prompt tokens served from G1/G2/G3 at each request's first admission / all prompt tokens; \
                       requests hold their blocks from arrival through prefill and output_length decode steps",
        "trace": { "source": source, "skipped_lines": trace.skipped_lines() },
        "layout": args.layout,
        "report": run.report,
        "timing": run.timing,
    });
    let path = write_atomic(&args.out, ENGINE_REPORT_FILE, &json)?;
    let svg = args.out.join(format!("{ENGINE_CHART_FILE}.tmp"));
    chart::write_svg(&run.report, &svg)?;
    let chart = args.out.join(ENGINE_CHART_FILE);
    std::fs::rename(&svg, &chart).map_err(|source| Error::Io { op: "write", path: chart.clone(), source })?;
    println!("report       {}", path.display());
    println!("chart        {}", chart.display());
    Ok(())
}

/// Writes `json` to `dir/name` through a temporary file and a rename, so that a failed run never
/// leaves a partial report that looks like a result.
fn write_atomic(dir: &Path, name: &str, json: &serde_json::Value) -> Result<PathBuf, Error> {
    let path = dir.join(name);
    fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.to_path_buf();
        move |source| Error::Io { op, path, source }
    }
    std::fs::create_dir_all(dir).map_err(io("create directory", dir))?;
    let text = serde_json::to_string_pretty(json).map_err(|source| Error::Json { path: path.clone(), source })?;
    let tmp = dir.join(format!("{name}.tmp"));
    std::fs::write(&tmp, text + "\n").map_err(io("write", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(io("write", &path))?;
    Ok(path)
}

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

fn us(ns: u64) -> String {
    if ns >= 10_000 { format!("{:.1} us", ns as f64 / 1e3) } else { format!("{ns} ns") }
}

fn print_engine(run: &EngineRun, source: &str, layout: &str) {
    let r = &run.report;
    let t = &run.timing;
    let model = |blocks: usize| gib(blocks as u64 * r.model_page_bytes as u64);
    println!("kvtier replay --mode engine (G1 + G2 + G3 engine, simulated request lifetimes)");
    println!("trace        {source}");
    println!(
        "layout       {layout}, {}-token blocks: {} per block at the model, {} B moved per block{}",
        r.block_size,
        format_bytes(r.model_page_bytes as u64),
        r.payload_page_bytes,
        if r.full_data { " (full data)" } else { " (small payload)" }
    );
    println!(
        "capacity     G1 {} blocks ({}), G2 {} ({}), G3 {}; write-through {}",
        r.g1_blocks,
        model(r.g1_blocks),
        r.g2_blocks,
        model(r.g2_blocks),
        match &r.g3_backend {
            Some(backend) => format!(
                "{} ({}; slots of {} B on disk, {backend}, {} admission)",
                r.g3_blocks,
                model(r.g3_blocks),
                r.g3_slot_bytes,
                r.admission
            ),
            None => "none".to_string(),
        },
        if r.write_through_g2 { "on" } else { "off" }
    );
    println!(
        "requests     {} ({} finished, {} rejected: larger than G1, {} cut short), {} preemptions, peak {} running",
        r.requests, r.finished, r.rejected, r.truncated, r.preemptions, r.peaks.running
    );
    println!(
        "tokens       {} prompt, {} decoded; {} scheduler steps over {:.0} s simulated ({} ms/step + prefill at {:.0} tok/s)",
        r.prompt_tokens, r.decode_tokens, r.steps, r.simulated_seconds, r.decode_step_ms, r.prefill_tokens_per_sec
    );
    let w = &r.admission_wait;
    println!(
        "wait         arrival to admission (queue + onboarding, simulated): mean {:.1} ms, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        w.mean_ms, w.p50_ms, w.p99_ms, w.max_ms
    );
    let h = &r.hit_rate;
    println!(
        "hit rate     {:.4} overall = G1 {:.4} + G2 {:.4} + G3 {:.4}; second half {:.4}",
        h.overall, h.g1, h.g2, h.g3, h.second_half
    );
    println!(
        "prefill      {} tokens saved (G1 {}, G2 {}, G3 {}), {} computed (recomputation included)",
        r.prefill_tokens_saved, r.hit_tokens.g1, r.hit_tokens.g2, r.hit_tokens.g3, r.prefill_tokens_computed
    );
    println!("traffic      {:>8} {:>12} {:>14} {:>14}", "", "pages", "bytes moved", "at the model");
    for row in &r.traffic {
        println!(
            "             {:>8} {:>12} {:>14} {:>14}  ({}/s simulated)",
            format!("{}->{}", row.from, row.to),
            row.pages,
            format_bytes(row.bytes_moved),
            format_bytes(row.bytes_at_model),
            format_bytes(row.model_bytes_per_sim_sec as u64)
        );
    }
    println!(
        "throughput   offload {}/s over {:.3} s of maintenance, onboard {}/s over {:.3} s (actual payload bytes)",
        format_bytes(t.offload_bytes_per_sec as u64),
        t.maintenance_seconds,
        format_bytes(t.onboard_bytes_per_sec as u64),
        t.onboard_seconds
    );
    println!(
        "evictions    G1 {} ({} unbacked), G2 {} ({} unbacked), G3 {}; G3 admission declined {}, onboard failed {}",
        r.g1_evictions,
        r.g1_unbacked_evictions,
        r.g2_evictions,
        r.g2_unbacked_evictions,
        r.g3_evictions,
        r.admission_declined,
        r.onboard_failed
    );
    let p = &r.peaks;
    println!(
        "peak usage   G1 {} blocks held ({:.1} %), {} holding data ({:.1} %); G2 {} ({:.1} %); G3 {} ({:.1} %)",
        p.g1_in_use,
        pct(p.g1_in_use, r.g1_blocks),
        p.g1_resident,
        pct(p.g1_resident, r.g1_blocks),
        p.g2_used,
        pct(p.g2_used, r.g2_blocks),
        p.g3_used,
        pct(p.g3_used, r.g3_blocks)
    );
    for (name, l) in [("add_sequence", t.add_sequence), ("decode_step", t.decode_step), ("free", t.free)] {
        println!("latency      {name:<13} p50 {:>9}  p99 {:>9}  ({} calls)", us(l.p50_ns), us(l.p99_ns), l.count);
    }
    for (name, l) in [
        ("offload/page", t.offload_page_latency),
        ("spill/batch", t.spill_batch_latency),
        ("onboard G2/pg", t.onboard_g2_page_latency),
        ("onboard G3/bt", t.onboard_g3_batch_latency),
    ] {
        println!("engine       {name:<13} p50 {:>9}  p99 {:>9}  ({} ops)", us(l.p50_ns), us(l.p99_ns), l.count);
    }
    println!("elapsed      {:.3} s", t.wall_seconds);
}

fn pct(n: usize, of: usize) -> f64 {
    100.0 * n as f64 / of.max(1) as f64
}

fn format_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{b} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

fn print_report(
    report: &SimReport,
    trace: &Trace,
    source: &str,
    config: &SimConfig,
    [parse, plan, total]: [Duration; 3],
    point_times: &[Duration],
) {
    println!("kvtier replay --mode sim (kvcache-simulator-compatible prefix hit rate)");
    println!("trace        {source}");
    println!(
        "requests     {} ({} warm-up, {} measured), bad lines skipped: {}",
        report.requests,
        report.warmup_requests,
        report.requests - report.warmup_requests,
        trace.skipped_lines()
    );
    if let Some((line, reason)) = trace.first_skipped() {
        println!("             first skipped: line {line}: {reason}");
    }
    println!(
        "tokens       {} prompt tokens, {} measured; {} block ids, {} unique 512-token blocks",
        report.prompt_tokens, report.measured_tokens, report.block_events, report.unique_blocks
    );
    println!("ceiling      {:.4} (unbounded cache)", report.ceiling_hit_rate);
    println!("hit rate     tokens in the longest cached prefix / all prompt tokens, second half of the requests");
    print!("  {:>10} {:>8}", "capacity", "%unique");
    for policy in config.policies() {
        print!(" {:>8}", policy.name());
    }
    println!(" {:>10}", "ms/point");
    for (row, times) in report.points.chunks(config.policies().len()).zip(point_times.chunks(config.policies().len())) {
        let capacity = row[0].capacity_blocks;
        let share = 100.0 * capacity as f64 / report.unique_blocks.max(1) as f64;
        print!("  {capacity:>10} {share:>7.1}%");
        for point in row {
            let flag = if point.underfilled { "*" } else { " " };
            print!(" {:>7.4}{flag}", point.hit_rate);
        }
        let ms = times.iter().map(Duration::as_secs_f64).sum::<f64>() * 1e3 / times.len().max(1) as f64;
        println!(" {ms:>10.2}");
    }
    if report.points.iter().any(|p| p.underfilled) {
        println!("  * the cache never filled during warm-up (kvcache-simulator reports no rate there)");
    }
    let replay: f64 = point_times.iter().map(Duration::as_secs_f64).sum();
    println!(
        "elapsed      {:.3} s (parse {:.3} s, prefix tree {:.3} s, replay {:.3} s)",
        total.as_secs_f64(),
        parse.as_secs_f64(),
        plan.as_secs_f64(),
        replay
    );
}

/// Writes the report as JSON into `dir` (see [`write_atomic`]).
fn write_json(
    dir: &Path,
    report: &SimReport,
    trace: &Trace,
    source: &str,
    [parse, plan, total]: [Duration; 3],
    point_times: &[Duration],
) -> Result<PathBuf, Error> {
    let points: Vec<_> = report
        .points
        .iter()
        .zip(point_times)
        .map(|(p, t)| {
            serde_json::json!({ "capacity_blocks": p.capacity_blocks, "policy": p.policy, "seconds": t.as_secs_f64() })
        })
        .collect();
    let json = serde_json::json!({
        "kvtier_version": env!("CARGO_PKG_VERSION"),
        "mode": "sim",
        "definition": "kvcache-simulator 0.1.3: file order, first half warms, hit rate = tokens in the longest \
                       continuously cached prefix / all prompt tokens over the second half, capacity in \
                       512-token prefix-tree nodes, LRU/OPT evict leaves only",
        "trace": {
            "source": source,
            "skipped_lines": trace.skipped_lines(),
            "first_skipped": trace.first_skipped().map(|(line, reason)| serde_json::json!({ "line": line, "reason": reason.to_string() })),
        },
        "report": report,
        "timing": { "total_seconds": total.as_secs_f64(), "parse_seconds": parse.as_secs_f64(), "prefix_tree_seconds": plan.as_secs_f64(), "points": points },
    });
    write_atomic(dir, REPORT_FILE, &json)
}

#[cfg(test)]
mod tests {
    use super::Size;

    #[test]
    fn sizes_are_blocks_or_bytes() {
        assert_eq!("2048".parse(), Ok(Size::Blocks(2048)));
        assert_eq!("4GiB".parse(), Ok(Size::Bytes(4 << 30)));
        assert_eq!("1.5 TiB".parse(), Ok(Size::Bytes(3 << 39)));
        assert_eq!("512mb".parse(), Ok(Size::Bytes(512_000_000)));
        assert_eq!(Size::Bytes(4 << 30).blocks(2 << 20), 2048);
        assert!("4XB".parse::<Size>().is_err());
        assert!("GiB".parse::<Size>().is_err());
        assert!("1.5".parse::<Size>().is_err(), "blocks are whole");
    }
}
