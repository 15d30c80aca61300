//! `kvtier`: the command-line front end.
//!
//! `cargo run --release` replays a real trace bundled in the binary (the first 3,000 requests of
//! the Mooncake conversation trace) and prints prefix hit rates. Steps of a replay:
//! 1. Read the trace (`--trace PATH` or the bundled sample); a malformed line stops the run with
//!    its line number before anything is written (`--skip-bad-lines` counts and skips instead).
//! 2. Build the prefix tree once, then replay every capacity x policy point with a progress bar.
//! 3. Print the report and write the same as JSON into `--out` (default `out/`).
//!
//! `--mode sim` (the default and, for now, the only mode) uses the hit-rate definition of the
//! public kvcache-simulator (see `kvtier::replay`), so its numbers compare with published tables.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use kvtier::replay::{PrefixPlan, SimConfig, SimPolicy, SimReport};
use kvtier::trace::{Trace, TraceOptions};

/// First 3,000 requests of Mooncake's conversation_trace.jsonl (Apache-2.0, see data/README.md).
const SAMPLE: &str = include_str!("../../data/conversation_sample.jsonl");
const SAMPLE_NAME: &str = "bundled sample (first 3,000 requests of Mooncake conversation_trace.jsonl)";
const REPORT_FILE: &str = "replay_sim.json";

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
    /// Replay mode: `sim` is the kvcache-simulator-compatible hit-rate model.
    #[arg(long, value_enum, default_value_t = Mode::Sim)]
    mode: Mode,
    /// Eviction policies to replay at each capacity, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Policy::Lru, Policy::Opt])]
    policy: Vec<Policy>,
    /// Directory for the JSON report (created if missing).
    #[arg(long, value_name = "DIR", default_value = "out")]
    out: PathBuf,
    /// Skip (and count) malformed trace lines instead of failing.
    #[arg(long)]
    skip_bad_lines: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    /// kvcache-simulator-compatible: one request at a time, first half warms, longest cached prefix.
    Sim,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Policy {
    Fifo,
    Lru,
    Opt,
}

impl From<Policy> for SimPolicy {
    fn from(p: Policy) -> Self {
        match p {
            Policy::Fifo => SimPolicy::Fifo,
            Policy::Lru => SimPolicy::Lru,
            Policy::Opt => SimPolicy::Opt,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Replay(args)) => args,
        None => cli.replay,
    };
    match replay(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn replay(args: &ReplayArgs) -> Result<(), Box<dyn std::error::Error>> {
    let Mode::Sim = args.mode;
    let started = Instant::now();
    let options = TraceOptions::default().with_skip_bad_lines(args.skip_bad_lines);
    let (trace, source) = match &args.trace {
        Some(path) => (Trace::read_path(path, &options)?, path.display().to_string()),
        None => (Trace::parse_str(SAMPLE, &options)?, SAMPLE_NAME.to_string()),
    };
    let parse_time = started.elapsed();

    let plan_started = Instant::now();
    let plan = PrefixPlan::build(&trace);
    let plan_time = plan_started.elapsed();

    let policies: Vec<SimPolicy> = args.policy.iter().map(|&p| p.into()).collect();
    let config = SimConfig::default().with_capacities(args.capacity.clone()).with_policies(policies);
    config.validate()?;
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

    print_report(&report, &trace, &source, &config, [parse_time, plan_time, total_time], &point_times);
    let path = write_json(&args.out, &report, &trace, &source, [parse_time, plan_time, total_time], &point_times)?;
    println!("report       {}", path.display());
    Ok(())
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

/// Writes the report next to a temporary file and renames it, so a failed run never leaves a
/// partial report that looks like a result.
fn write_json(
    dir: &Path,
    report: &SimReport,
    trace: &Trace,
    source: &str,
    [parse, plan, total]: [Duration; 3],
    point_times: &[Duration],
) -> Result<PathBuf, Box<dyn std::error::Error>> {
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
    std::fs::create_dir_all(dir)?;
    let path = dir.join(REPORT_FILE);
    let tmp = dir.join(format!("{REPORT_FILE}.tmp"));
    std::fs::write(&tmp, serde_json::to_string_pretty(&json)? + "\n")?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}
