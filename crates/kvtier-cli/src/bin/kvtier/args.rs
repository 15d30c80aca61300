//! The command line: subcommands, their flags and the values the flags take.

use std::path::PathBuf;

use clap::builder::PossibleValuesParser;
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, Parser, Subcommand, ValueEnum};
use kvtier::{Dtype, KvLayout};
use kvtier_cli::replay::SimPolicy;
use kvtier_cli::replay::synth::SynthPreset;

// `kvtier [replay flags]`, `kvtier replay [flags]` or `kvtier synth [flags]` (no doc comment:
// clap would show it as the long help).
#[derive(Parser)]
#[command(
    name = "kvtier",
    version,
    about = "Paged KV cache with tiered offload: trace replay",
    args_conflicts_with_subcommands = true
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
    #[command(flatten)]
    pub(crate) replay: ReplayArgs,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Replay a serving trace and report prefix hit rates (the default command).
    Replay(ReplayArgs),
    /// Build a Mooncake-format trace from an Azure LLM inference CSV (arrivals and lengths kept,
    /// prefix structure modelled: see `kvtier_cli::replay::synth`).
    Synth(SynthArgs),
    /// Size G1, G2 and G3 per GPU from a cluster's trace: split it over --gpus (by --route),
    /// replay each share through the engine at every point of a G1 x G2 x G3 grid (in
    /// parallel) and report hit rates, GPU time saved, SSD wear and cost per point, with a chart.
    Plan(PlanArgs),
    /// Measure this machine (memcpy, and SSD read/write bandwidth and latency of a directory
    /// through kvtier's IO engines) and write a JSON profile for the planners.
    Probe(ProbeArgs),
}

#[derive(Args, Clone)]
pub(crate) struct PlanArgs {
    /// G2 sizes to try, comma-separated, in blocks or bytes at the model layout (`64GiB`).
    #[arg(long, value_name = "SIZES", value_delimiter = ',', default_value = "16GiB,64GiB,256GiB")]
    pub(crate) g2_sizes: Vec<Size>,
    /// G3 sizes to try, comma-separated (0: no SSD tier).
    #[arg(long, value_name = "SIZES", value_delimiter = ',', default_value = "0,256GiB,1TiB")]
    pub(crate) g3_sizes: Vec<Size>,
    /// G1 sizes to try per GPU (the HBM left for KV after the weights), comma-separated, in
    /// blocks or bytes (`40GiB,60GiB`). Default: the single --g1.
    #[arg(long, value_name = "SIZES", value_delimiter = ',')]
    pub(crate) g1_sizes: Vec<Size>,
    /// GPUs serving the trace (the trace is the whole cluster's); every size is per GPU.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub(crate) gpus: usize,
    /// How requests are dealt out to the --gpus / --tp instances: `round-robin`, or
    /// `prefix-affinity` (to the instance already holding the longest prefix of the request,
    /// within a load bound).
    #[arg(long, value_enum, default_value_t = RouteArg::RoundRobin)]
    pub(crate) route: RouteArg,
    /// Machine profile written by `kvtier probe`: its memcpy and SSD read bandwidths become
    /// the simulated G2 -> G1 and G3 -> G1 speeds (default: 25 GB/s and 6 GB/s).
    #[arg(long, value_name = "PATH")]
    pub(crate) profile: Option<PathBuf>,
    /// Replays at once (default: the machine's cores).
    #[arg(long)]
    pub(crate) threads: Option<usize>,
    /// The cheapest point marked must reach this share of the best hit rate.
    #[arg(long, default_value_t = 0.95)]
    pub(crate) target: f64,
    /// Tokens per block of the sweep's replays, holding the same bytes per tier: a multiple of
    /// --block-size dividing 512 (--block-size itself: no coarsening). Default: 128, or
    /// --block-size if larger (a replay of 16-token blocks moves 8x fewer blocks). After a
    /// coarser sweep the best point and the cheapest at target are replayed again at
    /// --block-size and both results are shown.
    #[arg(long, value_name = "TOKENS")]
    pub(crate) sweep_block_tokens: Option<u32>,
    /// After a coarser sweep, do not replay the deciding points at --block-size.
    #[arg(long)]
    pub(crate) no_confirm: bool,
    /// Price of HBM per GB per hour (default: 20 per GB over three years).
    #[arg(long)]
    pub(crate) price_hbm: Option<f64>,
    /// Price of DRAM per GB per hour (default: 4 per GB over three years).
    #[arg(long)]
    pub(crate) price_dram: Option<f64>,
    /// Price of SSD per GB per hour (default: 0.10 per GB over three years).
    #[arg(long)]
    pub(crate) price_ssd: Option<f64>,
    /// The trace, G1 and engine settings, as for `replay --mode engine` (its --g2/--g3 are
    /// replaced by the grid).
    #[command(flatten)]
    pub(crate) replay: ReplayArgs,
}

#[derive(Args, Clone)]
pub(crate) struct ProbeArgs {
    /// Directory to measure (must exist); a scratch file is created in it and removed afterwards.
    #[arg(long, value_name = "DIR")]
    pub(crate) dir: PathBuf,
    /// Model layout preset whose page size is measured (besides 64 KiB).
    #[arg(long, value_name = "NAME", default_value = "llama-3.1-8b", value_parser = PossibleValuesParser::new(KvLayout::PRESETS))]
    pub(crate) layout: String,
    /// Tokens per block of the layout.
    #[arg(long, value_name = "TOKENS", default_value_t = 16)]
    pub(crate) block_size: u32,
    /// Profile file to write.
    #[arg(long, value_name = "PATH", default_value = "out/profile.json")]
    pub(crate) out: PathBuf,
    /// IO engine.
    #[arg(long, value_enum, default_value_t = IoBackend::Auto)]
    pub(crate) io_backend: IoBackend,
    /// Time bound of each measurement, seconds.
    #[arg(long, value_name = "S", default_value_t = 2.0)]
    pub(crate) seconds: f64,
    /// Size of the scratch file (`256MiB`, bytes without a unit).
    #[arg(long, value_name = "SIZE", default_value = "256MiB")]
    pub(crate) scratch_size: Size,
    /// Size of each memcpy buffer. Default: four times the last-level cache, at least 64 MiB.
    #[arg(long, value_name = "SIZE")]
    pub(crate) memcpy_size: Option<Size>,
}

#[derive(Args, Clone)]
pub(crate) struct SynthArgs {
    /// Azure CSV (TIMESTAMP, ContextTokens, GeneratedTokens).
    #[arg(long, value_name = "PATH")]
    pub(crate) csv: PathBuf,
    /// Workload shape.
    #[arg(long, default_value = "conv", value_parser = PossibleValuesParser::new(SynthPreset::ALL.map(SynthPreset::name)))]
    pub(crate) preset: String,
    /// Random seed (equal seeds give equal traces).
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Output JSONL path.
    #[arg(long, value_name = "PATH")]
    pub(crate) out: PathBuf,
}

#[derive(Args, Clone)]
pub(crate) struct ReplayArgs {
    /// Mooncake-format JSONL trace (timestamp, input_length, output_length, hash_ids).
    /// Default: the bundled sample.
    #[arg(long, value_name = "PATH")]
    pub(crate) trace: Option<PathBuf>,
    /// Sim mode: cache capacities, comma-separated, in bytes at the model layout per GPU
    /// (`16GiB,64GiB`) or in 512-token blocks without a unit (`1827,9139`).
    /// Default: 1,5,10,25,50 % of the trace's unique blocks.
    #[arg(long, value_name = "SIZES", value_delimiter = ',')]
    pub(crate) capacity: Vec<Size>,
    /// Replay mode: `sim` is the kvcache-simulator-compatible hit-rate model, `engine` the real
    /// tiered engine with simulated request lifetimes, `both` runs the two.
    #[arg(long, value_enum, default_value_t = Mode::Both)]
    pub(crate) mode: Mode,
    /// Engine mode: G1 capacity per GPU, in bytes at the model layout (`64GiB`) or in blocks
    /// without a unit (`32768`).
    #[arg(long, value_name = "SIZE", default_value = "64GiB")]
    pub(crate) g1: Size,
    /// Engine mode: G2 capacity per GPU, in bytes (`128GiB`) or blocks.
    #[arg(long, value_name = "SIZE", default_value = "128GiB")]
    pub(crate) g2: Size,
    /// Engine mode: G3 capacity per GPU, in bytes (`256GiB`) or blocks; 0 for no SSD tier.
    #[arg(long, value_name = "SIZE", default_value = "256GiB")]
    pub(crate) g3: Size,
    /// Model layout preset (the page size that turns GiB into blocks).
    #[arg(long, value_name = "NAME", default_value = "llama-3.1-8b", value_parser = PossibleValuesParser::new(KvLayout::PRESETS))]
    pub(crate) layout: String,
    /// A model's HuggingFace `config.json` instead of a preset: num_hidden_layers,
    /// num_key_value_heads (or num_attention_heads), head_dim (or hidden_size /
    /// num_attention_heads), torch_dtype.
    #[arg(long, value_name = "PATH", conflicts_with = "layout")]
    pub(crate) layout_config: Option<PathBuf>,
    /// Dtype of the KV cache (default: the model's): f32, f16, bf16, fp8.
    #[arg(long, value_name = "DTYPE", value_parser = parse_dtype)]
    pub(crate) kv_dtype: Option<Dtype>,
    /// Tensor-parallel degree: GPUs per serving instance; each holds 1/T of the KV heads of
    /// every block (T must divide them), and every capacity is per GPU. With `plan`, T must
    /// also divide --gpus.
    #[arg(long, value_name = "T", default_value_t = 1)]
    pub(crate) tp: usize,
    /// Engine mode: tokens per block (must divide 512).
    #[arg(long, value_name = "TOKENS", default_value_t = 16)]
    pub(crate) block_size: u32,
    /// Engine mode: G3 IO engine.
    #[arg(long, value_enum, default_value_t = IoBackend::Auto)]
    pub(crate) io_backend: IoBackend,
    /// Engine mode: pages G3 takes from G2.
    #[arg(long, value_enum, default_value_t = AdmissionArg::Adaptive)]
    pub(crate) admission: AdmissionArg,
    /// Engine mode: the adaptive filter's price of an SSD write in hits (it picks the use
    /// count threshold with the most `hits - price x writes`; 0 maximises hits).
    #[arg(long, value_name = "HITS", default_value_t = 0.25)]
    pub(crate) admission_hits_per_write: f64,
    /// Engine mode, with `--admission oracle`: G3 takes a page only if a request not yet
    /// admitted asks for it within this many simulated seconds (default: any later request).
    #[arg(long, value_name = "SECONDS")]
    pub(crate) oracle_horizon: Option<f64>,
    /// Engine mode: G1's live hit-rate-vs-capacity estimate (SHARDS with heavy hitters)
    /// tracking this many sampled blocks (about 10 MiB at the default), reported beside the
    /// exact LRU (0: off).
    #[arg(long, value_name = "BLOCKS", default_value_t = 65_536)]
    pub(crate) live_curve: usize,
    /// Engine mode: eviction policy of every tier (default: each tier's own, G1 adaptive, G2
    /// and G3 LRU).
    #[arg(long, value_enum)]
    pub(crate) tier_policy: Option<TierPolicy>,
    /// Engine mode: write-through (every committed G1 block is copied to G2 at once; by
    /// default G1 pages are copied to G2 only when G1 runs low).
    #[arg(long)]
    pub(crate) write_through: bool,
    /// Engine mode: the first this many waiting requests have their prefix prefetched from G3
    /// to G2 while they wait (0: off).
    #[arg(long, default_value_t = 8)]
    pub(crate) prefetch_waiting: usize,
    /// Engine mode: follow the onboard-or-recompute rule (load only the part of a found prefix
    /// whose transfer at the simulated G2/G3 bandwidth beats recomputing it at the prefill
    /// speed); without it the rule's choices are only counted.
    #[arg(long)]
    pub(crate) onboard_rule: bool,
    /// Engine mode: a page promoted from G3 to G1 leaves its G3 copy cold (evicted first)
    /// instead of keeping it (more SSD writes, more distinct pages cached).
    #[arg(long)]
    pub(crate) exclusive_g3: bool,
    /// Engine mode: move full model-size pages (real offload/onboard throughput; G1 and G2 are
    /// mapped at full size, so keep capacities and --requests small).
    #[arg(long)]
    pub(crate) full_data: bool,
    /// Engine mode: skip the reference replay (the same engine with one G1 of the summed
    /// capacity, and sim-mode LRU/OPT at that capacity) for a quicker run.
    #[arg(long)]
    pub(crate) no_reference: bool,
    /// Replay only the first N requests of the trace (after --from-request).
    #[arg(long, value_name = "N")]
    pub(crate) requests: Option<usize>,
    /// Start at request K of the trace (0-based; timestamps are shifted to start at 0), e.g.
    /// the second half of a trace as a second pod: `--from-request 1500`.
    #[arg(long, value_name = "K", default_value_t = 0)]
    pub(crate) from_request: usize,
    /// Engine mode: a shared G4 tier on a Valkey/Redis server, `redis://[:password@]host:port`
    /// (credentials are never printed). Pages are published as G1 gives them up and found by
    /// any replay of the same layout against the same server.
    #[arg(long, value_name = "URL")]
    pub(crate) g4: Option<String>,
    /// Engine mode: simulated duration of one decode step, milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 20.0)]
    pub(crate) decode_step_ms: f64,
    /// Engine mode: simulated prefill speed, computed tokens per second.
    #[arg(long, value_name = "TOKENS", default_value_t = 100_000.0)]
    pub(crate) prefill_tokens_per_sec: f64,
    /// Engine mode: directory for the G3 files (a fresh subdirectory, removed afterwards).
    /// Default: the --out directory.
    #[arg(long, value_name = "DIR")]
    pub(crate) ssd_dir: Option<PathBuf>,
    /// Eviction policies to replay at each capacity, comma-separated; `all` is every one
    /// (fifo, lru, s3fifo, arc, lhd, opt). Sim mode only: the engine uses the tiers' policy.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Policy::Lru, Policy::Lhd, Policy::Opt])]
    pub(crate) policy: Vec<Policy>,
    /// Sim mode: run the tier policies in a real block pool (which knows nothing of the prefix
    /// tree) instead of the prefix-tree model. FIFO and OPT still run in the model.
    #[arg(long)]
    pub(crate) in_pool: bool,
    /// Directory for the JSON report (created if missing).
    #[arg(long, value_name = "DIR", default_value = "out")]
    pub(crate) out: PathBuf,
    /// Skip (and count) malformed trace lines instead of failing.
    #[arg(long)]
    pub(crate) skip_bad_lines: bool,
}

/// Flags of `replay` that only the engine reads, by clap id and as typed.
const ENGINE_FLAGS: &[(&str, &str)] = &[
    ("g1", "--g1"),
    ("g2", "--g2"),
    ("g3", "--g3"),
    ("block_size", "--block-size"),
    ("io_backend", "--io-backend"),
    ("admission", "--admission"),
    ("admission_hits_per_write", "--admission-hits-per-write"),
    ("oracle_horizon", "--oracle-horizon"),
    ("live_curve", "--live-curve"),
    ("tier_policy", "--tier-policy"),
    ("write_through", "--write-through"),
    ("prefetch_waiting", "--prefetch-waiting"),
    ("onboard_rule", "--onboard-rule"),
    ("exclusive_g3", "--exclusive-g3"),
    ("full_data", "--full-data"),
    ("no_reference", "--no-reference"),
    ("g4", "--g4"),
    ("decode_step_ms", "--decode-step-ms"),
    ("prefill_tokens_per_sec", "--prefill-tokens-per-sec"),
    ("ssd_dir", "--ssd-dir"),
];

/// Flags of `replay` that only sim mode reads.
const SIM_FLAGS: &[(&str, &str)] = &[("capacity", "--capacity"), ("policy", "--policy"), ("in_pool", "--in-pool")];

/// Flags of `replay` that `plan` takes but does not read (its grid and its own reference-free
/// engine replace them).
const NOT_PLAN_FLAGS: &[(&str, &str)] = &[
    ("mode", "--mode"),
    ("g2", "--g2"),
    ("g3", "--g3"),
    ("no_reference", "--no-reference"),
    ("live_curve", "--live-curve"),
];

/// A flag typed on the command line that the command will not read: (flag, value, why).
pub(crate) type Unused = (&'static str, String, String);

/// The first of `flags` typed on the command line, with its value.
fn typed(matches: &ArgMatches, flags: &[(&str, &'static str)]) -> Option<(&'static str, String)> {
    flags.iter().find(|(id, _)| matches.value_source(id) == Some(ValueSource::CommandLine)).map(|&(id, flag)| {
        let value = matches
            .get_raw(id)
            .map(|values| values.map(|v| v.to_string_lossy()).collect::<Vec<_>>().join(","))
            .unwrap_or_default();
        (flag, value)
    })
}

/// Refuses a flag of `replay` (or of the replay part of `plan`) that the chosen mode or command
/// does not read: silently ignoring it would report a run other than the one asked for.
pub(crate) fn check_unused_flags(matches: &ArgMatches, command: &str, mode: Mode) -> Result<(), Unused> {
    let unused = |(flag, value): (&'static str, String), why: &str| (flag, value, why.to_string());
    if command == "plan" {
        let refused = typed(matches, NOT_PLAN_FLAGS).or_else(|| typed(matches, SIM_FLAGS));
        return refused.map_or(Ok(()), |f| {
            Err(unused(f, "not read by plan (it sweeps --g1-sizes/--g2-sizes/--g3-sizes through the engine)"))
        });
    }
    match mode {
        Mode::Sim => typed(matches, ENGINE_FLAGS)
            .map_or(Ok(()), |f| Err(unused(f, "only applies to --mode engine or both (this run is --mode sim)"))),
        Mode::Engine => typed(matches, SIM_FLAGS)
            .map_or(Ok(()), |f| Err(unused(f, "only applies to --mode sim or both (this run is --mode engine)"))),
        Mode::Both => Ok(()),
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Mode {
    /// kvcache-simulator-compatible: one request at a time, first half warms, longest cached prefix.
    Sim,
    /// The real G1 + G2 + G3 engine, simulated request lifetimes.
    Engine,
    /// Both, one after the other.
    Both,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum RouteArg {
    /// Request i to instance i mod n.
    RoundRobin,
    /// To the instance already holding the longest prefix of the request (load-bounded).
    PrefixAffinity,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum TierPolicy {
    Lru,
    S3fifo,
    Arc,
    Lhd,
    Adaptive,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum AdmissionArg {
    /// Every page spilled from G2.
    All,
    /// Pages seen at least twice recently (TinyLFU-style sketch).
    SeenTwice,
    /// Classes of pages (by use count) that a sampled shadow of the spills sees coming back.
    Adaptive,
    /// Offline bound, not a policy: pages the rest of the trace asks for again (knows the
    /// future; see `--oracle-horizon`).
    Oracle,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum IoBackend {
    Auto,
    Uring,
    Psync,
}

/// A capacity: blocks, or bytes at the model layout (`4GiB`, `512MiB`, `1TB`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Size {
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
    /// Bytes, reading a plain number as bytes (not blocks).
    pub(crate) fn bytes(self) -> u64 {
        match self {
            Size::Blocks(n) | Size::Bytes(n) => n,
        }
    }

    pub(crate) fn blocks(self, page_bytes: usize) -> usize {
        match self {
            Size::Blocks(n) => n as usize,
            Size::Bytes(n) => (n / page_bytes as u64) as usize,
        }
    }
}

/// A KV dtype by name (see [`kvtier_cli::model::dtype_named`]).
fn parse_dtype(s: &str) -> Result<Dtype, String> {
    kvtier_cli::model::dtype_named(s).ok_or_else(|| format!("`{s}`: expected f32, f16, bf16 or fp8"))
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Policy {
    Fifo,
    Lru,
    S3fifo,
    Arc,
    Lhd,
    Adaptive,
    Opt,
    All,
}

/// The policies named on the command line, `all` expanded, each once, in the given order.
pub(crate) fn sim_policies(named: &[Policy]) -> Vec<SimPolicy> {
    let mut out: Vec<SimPolicy> = Vec::new();
    for &p in named {
        let add: &[SimPolicy] = match p {
            Policy::Fifo => &[SimPolicy::Fifo],
            Policy::Lru => &[SimPolicy::Lru],
            Policy::S3fifo => &[SimPolicy::S3Fifo],
            Policy::Arc => &[SimPolicy::Arc],
            Policy::Lhd => &[SimPolicy::Lhd],
            Policy::Adaptive => &[SimPolicy::Adaptive],
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
