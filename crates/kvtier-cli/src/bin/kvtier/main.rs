//! `kvtier`: the command-line front end.
//!
//! `cargo run --release` replays a real trace bundled in the binary (the first 3,000 requests of
//! the Mooncake conversation trace) and prints prefix hit rates. Steps of a replay:
//! 1. Read the trace (`--trace PATH` or the bundled sample); a malformed line stops the run with
//!    its line number before anything is written (`--skip-bad-lines` counts and skips instead).
//! 2. Build the prefix tree once, then replay every capacity x policy point with a progress bar.
//! 3. Print the report and write the same as JSON into `--out` (default `out/`).
//!
//! A flag the chosen mode or command does not read is refused before anything runs. On SIGINT,
//! SIGTERM or SIGHUP the G3 (and probe) scratch of the run is removed before it exits
//! (`kvtier_cli::scratch`), and a run removes the scratch a killed run left in its directory.
//!
//! `--mode sim` uses the hit-rate definition of the public kvcache-simulator (see
//! `kvtier_cli::replay`), so its numbers compare with published tables. `--mode engine` replays
//! the trace through the real G1 + G2 + G3 engine with simulated request lifetimes
//! (`kvtier_cli::replay::engine`) and also writes a chart; its headline is the second half's
//! hit rate, every page it serves is verified, and it is compared with the same engine holding
//! one G1 of the summed capacity (`--no-reference` skips that second replay). `--mode both`
//! (the default) runs the two. `kvtier probe --dir DIR` measures memcpy and the SSD tier's IO on
//! this machine and writes a profile (`kvtier_cli::probe`); `kvtier plan` sweeps tier sizes per
//! GPU over a cluster's trace split by a routing rule, reading that profile with `--profile`
//! (`kvtier_cli::plan`). An error names the flag and value, or the file and line, it comes from.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use kvtier::KvLayout;
use kvtier::io::BackendKind;
use kvtier::offload::Admission;
use kvtier::policy::PolicyKind;
use kvtier_cli::Error;
use kvtier_cli::plan::PlanConfig;
use kvtier_cli::replay::synth::SynthPreset;
use kvtier_cli::replay::{EngineConfig, PrefixPlan, SimConfig, SimReport, chart, engine};
use kvtier_cli::trace::{TRACE_BLOCK_TOKENS, Trace, TraceOptions, TraceRecord};

use args::{
    AdmissionArg, Cli, Command, IoBackend, Mode, PlanArgs, ProbeArgs, ReplayArgs, RouteArg, Size, SynthArgs,
    TierPolicy, sim_policies,
};
use guard::{check_dir, check_rejections, check_unused_flags, remove_scratch_on_signal, remove_stale_scratch};
use layout::{layout_name, model_layout, per_gpu_layout};
use print::{print_engine, print_probe, print_report};

mod args;
mod guard;
mod layout;
mod print;

/// First 3,000 requests of Mooncake's conversation_trace.jsonl (Apache-2.0, see data/README.md).
const SAMPLE: &str = include_str!("../../../data/conversation_sample.jsonl");
const SAMPLE_NAME: &str = "bundled sample (first 3,000 requests of Mooncake conversation_trace.jsonl)";
const REPORT_FILE: &str = "replay_sim.json";
const ENGINE_REPORT_FILE: &str = "replay_engine.json";
const SIM_CHART_FILE: &str = "replay_sim.svg";
const ENGINE_CHART_FILE: &str = "replay_engine.svg";
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
    /// G1 could hold no request of the trace: the replay measured nothing.
    #[error(
        "every one of the {requests} requests was rejected as larger than {g1}; the longest prompt needs {longest} \
         blocks: raise --g1"
    )]
    AllRejected {
        /// Requests replayed.
        requests: usize,
        /// G1's size, as given and in blocks.
        g1: String,
        /// Blocks of the longest prompt.
        longest: u64,
    },
    /// The signal handler could not be installed.
    #[error("cannot handle signals: {0}")]
    Signals(std::io::Error),
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
            "prefill_tokens_per_sec" => flag("--prefill-tokens-per-sec", format!("{:?}", args.prefill_tokens_per_sec)),
            "decode_step" => flag("--decode-step-ms", format!("{:?}", args.decode_step_ms)),
            "g4_url" => flag("--g4", value),
            "admission_oracle_s" => flag("--oracle-horizon", value),
            _ => CliError::Replay(Error::InvalidConfig { setting, value, reason }),
        }
    }
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

fn probe(args: &ProbeArgs) -> Result<(), CliError> {
    use kvtier_cli::probe::{ProbeConfig, SMALL_PAGE_BYTES, run};
    let layout = KvLayout::preset(&args.layout, args.block_size).map_err(|e| CliError::Flag {
        flag: "--block-size",
        value: args.block_size.to_string(),
        reason: e.to_string(),
    })?;
    let mut config = ProbeConfig::new(&args.dir)
        .with_page_sizes(vec![layout.page_bytes() as u64, SMALL_PAGE_BYTES])
        .with_backend(backend_kind(args.io_backend))
        .with_seconds(args.seconds)
        .with_scratch_bytes(args.scratch_size.bytes());
    if let Some(size) = args.memcpy_size {
        config = config.with_memcpy_bytes(size.bytes());
    }
    config.validate().map_err(|e| match e {
        Error::InvalidConfig { setting, value, reason } => {
            let flag = match setting {
                "seconds" => "--seconds",
                "scratch size" => "--scratch-size",
                "memcpy size" => "--memcpy-size",
                _ => return CliError::Replay(Error::InvalidConfig { setting, value, reason }),
            };
            CliError::Flag { flag, value, reason }
        }
        e => CliError::Replay(e),
    })?;
    remove_stale_scratch(&args.dir)?;
    println!("probing {} (about {:.0} s) ...", args.dir.display(), args.seconds * 9.0);
    let profile = run(&config)?;
    profile.save(&args.out)?;
    print_probe(&profile, &args.layout, args.block_size);
    println!("profile      {}", args.out.display());
    Ok(())
}

fn backend_kind(arg: IoBackend) -> BackendKind {
    match arg {
        IoBackend::Auto => BackendKind::Auto,
        IoBackend::Uring => BackendKind::Uring,
        IoBackend::Psync => BackendKind::Psync,
    }
}

fn main() -> ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let Err(e) = check_unused_flags(&cli, &matches).and_then(|()| remove_scratch_on_signal()) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Some(Command::Replay(args)) => replay(&args),
        Some(Command::Synth(args)) => synth(&args),
        Some(Command::Plan(args)) => plan(&args),
        Some(Command::Probe(args)) => probe(&args),
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

/// `plan`'s default sweep block: on the full conversation trace, 128-token blocks gave the
/// 16-token hit rate within 0.4 % and the mean wait within 3-12 % (512 tokens: +67 % on an
/// overloaded point) at a sixth of the replay time.
const DEFAULT_SWEEP_BLOCK_TOKENS: u32 = 128;

fn plan(args: &PlanArgs) -> Result<(), CliError> {
    use kvtier_cli::plan::profile::TierSpeeds;
    use kvtier_cli::plan::{Cluster, Route, chart};
    check_dir("--out", &args.replay.out)?;
    let route = match args.route {
        RouteArg::RoundRobin => Route::RoundRobin,
        RouteArg::PrefixAffinity => Route::PrefixAffinity,
    };
    let cluster = Cluster::new(args.gpus, args.replay.tp, route);
    // a setting the plan refused, named by the flag it came from
    let cluster_flag = |e: Error| {
        let Error::InvalidConfig { setting, value, reason } = e else { return CliError::Replay(e) };
        let flag = match setting {
            "gpus" => "--gpus",
            "tensor parallel" => "--tp",
            "G1 size" => "--g1-sizes",
            "G2 size" => "--g2-sizes",
            "target" => "--target",
            "sweep block tokens" => "--sweep-block-tokens",
            "HBM price" => "--price-hbm",
            "DRAM price" => "--price-dram",
            "SSD price" => "--price-ssd",
            _ => return CliError::Replay(Error::InvalidConfig { setting, value, reason }),
        };
        CliError::Flag { flag, value, reason }
    };
    cluster.validate().map_err(cluster_flag)?;
    if let Some(url) = &args.replay.g4 {
        // every point and instance would publish into one keyspace and hit each other's pages
        return Err(CliError::Flag {
            flag: "--g4",
            value: kvtier::tier::remote::redact(url),
            reason: "not for plan: its replays run side by side and would share one G4 keyspace".into(),
        });
    }
    // the live curve is a replay report's; the plan's points do not show it
    let mut base = engine_config(&args.replay, false)?.with_curve_keys(0);
    let per_gpu = cluster.per_gpu_layout(base.layout).map_err(cluster_flag)?;
    let page = per_gpu.page_bytes();
    let speeds = match &args.profile {
        Some(path) => Some(TierSpeeds::load(path, page)?),
        None => None,
    };
    if let Some(s) = &speeds {
        base = s.apply(base);
    }
    let (trace, source) = load_trace(&args.replay)?;
    remove_stale_scratch(&base.ssd_dir)?;
    let blocks = |sizes: &[Size]| sizes.iter().map(|s| s.blocks(page)).collect::<Vec<_>>();
    let mut config = PlanConfig::new(base, blocks(&args.g2_sizes), blocks(&args.g3_sizes)).with_cluster(cluster);
    config.g1_blocks = match args.g1_sizes.as_slice() {
        [] => blocks(&[args.replay.g1]),
        sizes => blocks(sizes),
    };
    if let Some(t) = args.threads {
        config.threads = t.max(1);
    }
    config.target = args.target;
    config.sweep_block_tokens =
        args.sweep_block_tokens.unwrap_or(DEFAULT_SWEEP_BLOCK_TOKENS.max(config.base.layout.block_size()));
    config.confirm = !args.no_confirm;
    let p = &mut config.prices;
    p.hbm_per_gb_hour = args.price_hbm.unwrap_or(p.hbm_per_gb_hour);
    p.dram_per_gb_hour = args.price_dram.unwrap_or(p.dram_per_gb_hour);
    p.ssd_per_gb_hour = args.price_ssd.unwrap_or(p.ssd_per_gb_hour);
    config.validate().map_err(cluster_flag)?;
    let bar = ProgressBar::new(config.replays() as u64);
    let report = kvtier_cli::plan::sweep(&trace, &config, |done| bar.set_position(done as u64))?;
    bar.finish_and_clear();
    let layout = layout_name(&args.replay);
    print::plan(&report, &source, &layout, speeds.as_ref());
    let json = serde_json::json!({ "trace": source, "layout": layout, "tier_speeds": speeds, "plan": report });
    let path = write_atomic(&args.replay.out, "plan.json", &json)?;
    println!("report       {}", path.display());
    let title = format!(
        "kvtier plan: {}, {} GPU(s) = {} instance(s) x TP {}, {}; {} requests",
        layout,
        cluster.gpus,
        cluster.instances(),
        cluster.tp,
        route.name(),
        trace.len()
    );
    let svg = args.replay.out.join("plan.svg");
    chart::write_svg(&report, &title, &svg)?;
    println!("chart        {}", svg.display());
    Ok(())
}

/// The trace a replay or plan reads: the file given, or the bundled sample; cut to
/// `--requests`.
fn load_trace(args: &ReplayArgs) -> Result<(Trace, String), CliError> {
    let options = TraceOptions::default().with_skip_bad_lines(args.skip_bad_lines);
    let (trace, source) = match &args.trace {
        Some(path) => (Trace::read_path(path, &options)?, path.display().to_string()),
        None => (Trace::parse_str(SAMPLE, &options)?, SAMPLE_NAME.to_string()),
    };
    let named = |e: Error| match &args.trace {
        Some(path) => e.in_file(path),
        None => e,
    };
    trace.require_requests().map_err(named)?;
    if let Some((line, reason)) = trace.first_skipped() {
        eprintln!(
            "warning: {} bad line(s) of {source} skipped (first: line {line}: {reason}); the replay is of the other {}",
            trace.skipped_lines(),
            trace.len()
        );
    }
    let (trace, source) = match args.from_request {
        0 => (trace, source),
        k if k >= trace.len() => {
            return Err(CliError::Flag {
                flag: "--from-request",
                value: k.to_string(),
                reason: format!("the trace has {} requests", trace.len()),
            });
        }
        k => {
            let base = trace.records()[k].timestamp_ms;
            let rest = trace.records()[k..]
                .iter()
                .map(|r| TraceRecord { timestamp_ms: r.timestamp_ms.saturating_sub(base), ..r.clone() })
                .collect();
            (Trace::from_records(rest), format!("{source}, from request {k}"))
        }
    };
    let (trace, source) = match args.requests {
        // (the count of skipped lines goes with the cut: `--skip-bad-lines` reports it per file)
        Some(n) if n < trace.len() => {
            (Trace::from_records(trace.records()[..n].to_vec()), format!("{source}, first {n} requests"))
        }
        _ => (trace, source),
    };
    trace.require_requests().map_err(named)?;
    Ok((trace, source))
}

fn replay(args: &ReplayArgs) -> Result<(), CliError> {
    let started = Instant::now();
    check_dir("--out", &args.out)?;
    if let (Some(dir), true) = (&args.ssd_dir, args.mode != Mode::Sim) {
        check_dir("--ssd-dir", dir)?;
    }
    let (trace, source) = load_trace(args)?;
    let parse_time = started.elapsed();
    // Both modes' configurations are checked before either runs or writes anything.
    let engine_config = engine_config(args, true)?;
    if args.mode != Mode::Engine {
        replay_sim(args, &trace, &source, started, parse_time)?;
    }
    if args.mode != Mode::Sim {
        if engine_config.g3_blocks > 0 {
            remove_stale_scratch(&engine_config.ssd_dir)?;
        }
        if args.mode == Mode::Both {
            println!();
        }
        replay_engine(args, &trace, &source, &engine_config)?;
    }
    Ok(())
}

/// The engine's configuration from the flags; its layout is one GPU's when `per_gpu` (a replay
/// of one serving instance), the whole model's otherwise (the plan splits it itself).
fn engine_config(args: &ReplayArgs, per_gpu: bool) -> Result<EngineConfig, CliError> {
    let config = engine_config_base(args, per_gpu)?;
    Ok(match args.tier_policy {
        None => config,
        Some(TierPolicy::Lru) => config.with_policy(PolicyKind::Lru),
        Some(TierPolicy::S3fifo) => config.with_policy(PolicyKind::S3Fifo),
        Some(TierPolicy::Arc) => config.with_policy(PolicyKind::Arc),
        Some(TierPolicy::Lhd) => config.with_policy(PolicyKind::Lhd),
        Some(TierPolicy::Adaptive) => config.with_policy(PolicyKind::Adaptive),
    })
}

fn engine_config_base(args: &ReplayArgs, per_gpu: bool) -> Result<EngineConfig, CliError> {
    let layout = match per_gpu {
        true => per_gpu_layout(args)?,
        false => model_layout(args)?,
    };
    if let (Some(h), false) = (args.oracle_horizon, matches!(args.admission, AdmissionArg::Oracle)) {
        return Err(CliError::Flag {
            flag: "--oracle-horizon",
            value: h.to_string(),
            reason: "only applies with --admission oracle".into(),
        });
    }
    let page = layout.page_bytes();
    let decode_step = Duration::try_from_secs_f64(args.decode_step_ms.max(0.0) / 1e3).map_err(|e| CliError::Flag {
        flag: "--decode-step-ms",
        value: format!("{:?}", args.decode_step_ms),
        reason: e.to_string(),
    })?;
    let config = EngineConfig::default()
        .with_layout(layout)
        .with_capacities(args.g1.blocks(page), args.g2.blocks(page), args.g3.blocks(page))
        .with_speeds(decode_step, args.prefill_tokens_per_sec)
        .with_admission(match args.admission {
            AdmissionArg::All => Admission::All,
            AdmissionArg::SeenTwice => Admission::SeenTwice,
            AdmissionArg::Adaptive | AdmissionArg::Oracle => Admission::Adaptive,
        })
        .with_admission_oracle(match args.admission {
            AdmissionArg::Oracle => Some(args.oracle_horizon.unwrap_or(f64::INFINITY)),
            _ => None,
        })
        .with_admission_hits_per_write(args.admission_hits_per_write)
        .with_curve_keys(args.live_curve)
        .with_write_through_g2(args.write_through)
        .with_exclusive_g3(args.exclusive_g3)
        .with_prefetch_waiting(args.prefetch_waiting)
        .with_onboard_rule(args.onboard_rule)
        .with_full_data(args.full_data)
        .with_reference(!args.no_reference)
        .with_ssd_dir(args.ssd_dir.clone().unwrap_or_else(|| args.out.clone()))
        .with_io_backend(backend_kind(args.io_backend))
        .with_g4(args.g4.clone());
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
    // Bytes of one 512-token trace block on one GPU: sim capacities given in bytes count these.
    let block_bytes = per_gpu_layout(args)?.bytes_per_token() as u64 * TRACE_BLOCK_TOKENS as u64;
    let capacities = args
        .capacity
        .iter()
        .map(|size| {
            let blocks = match *size {
                Size::Blocks(n) => n,
                Size::Bytes(n) => n / block_bytes,
            };
            u32::try_from(blocks).map_err(|_| CliError::Flag {
                flag: "--capacity",
                value: size.to_string(),
                reason: format!("{blocks} blocks of {TRACE_BLOCK_TOKENS} tokens: at most {}", u32::MAX),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let config = SimConfig::default().with_capacities(capacities).with_policies(policies).with_pool(args.in_pool);
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

    print_report(&report, trace, source, &config, block_bytes, [parse_time, plan_time, total_time], &point_times);
    let path = write_json(&args.out, &report, trace, source, [parse_time, plan_time, total_time], &point_times)?;
    println!("report       {}", path.display());
    if config.policies().len() > 1 {
        let svg = args.out.join(SIM_CHART_FILE);
        let title = format!("kvtier replay --mode sim: {} requests\n{source}", trace.len());
        chart::write_sim_svg(&report, &title, &svg)?;
        println!("chart        {}", svg.display());
    }
    Ok(())
}

fn replay_engine(args: &ReplayArgs, trace: &Trace, source: &str, config: &EngineConfig) -> Result<(), CliError> {
    // The reference replays the trace a second time through one large G1.
    let replays = if config.reference { 2 } else { 1 };
    let bar = ProgressBar::new((replays * trace.len()) as u64).with_style(
        ProgressStyle::with_template("{spinner} engine replay [{bar:30}] {pos}/{len} requests {elapsed}")?
            .progress_chars("=> "),
    );
    let run = engine::run(trace, config, |done| bar.set_position(done as u64))?;
    bar.finish_and_clear();
    check_rejections(args, trace, config, &run.report)?;
    print_engine(&run, source, &layout_name(args));
    let json = serde_json::json!({
        "kvtier_version": env!("CARGO_PKG_VERSION"),
        "mode": "engine",
        "definition": "headline (report.hit_rate.second_half): prompt tokens served from G1/G2/G3 at each request's \
                       first admission / all prompt tokens, over the second half of the requests (the first half warms \
                       the cache, as sim mode counts it); all_requests includes the cold start; requests hold their \
                       blocks from arrival through prefill and output_length decode steps; every served page is \
                       checked against the stamp written for its hash (report.verification); report.reference is the \
                       same engine with one G1 of the summed capacity, ratio = tiered / reference second-half rates",
        "trace": { "source": source, "skipped_lines": trace.skipped_lines() },
        "layout": layout_name(args),
        "report": run.report,
        "timing": run.timing,
    });
    let path = write_atomic(&args.out, ENGINE_REPORT_FILE, &json)?;
    let svg = args.out.join(format!("{ENGINE_CHART_FILE}.tmp"));
    let gib = |blocks: usize| {
        let gib = blocks as f64 * config.layout.page_bytes() as f64 / (1u64 << 30) as f64;
        if gib >= 10.0 { format!("{gib:.0} GiB") } else { format!("{gib:.2} GiB") }
    };
    let g3 = match config.g3_blocks {
        0 => "no G3".to_string(),
        n => format!("G3 {}", gib(n)),
    };
    let title = format!(
        "kvtier replay --mode engine: {}; G1 {}, G2 {}, {g3}\n{source}; {} requests",
        layout_name(args),
        gib(config.g1_blocks),
        gib(config.g2_blocks),
        trace.len()
    );
    chart::write_svg(&run.report, &title, &svg)?;
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
