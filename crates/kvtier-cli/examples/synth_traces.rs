//! Builds every synthetic preset from both Azure traces and prints how much of each one is reused.
//!
//! `cargo run --release -p kvtier-cli --example synth_traces [OUT_DIR] [SEED]` writes
//! `OUT_DIR/azure_{code,conv}_{conv,code,mixed}.jsonl` (default `target/synth/`, seed 1), ready
//! for `kvtier replay --trace` or `../shared/tools/refsim.sh TRACE 512 1,5,10,25`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use kvtier_cli::replay::synth::{SynthPreset, read_azure_csv, synthesize, trace_stats, write_jsonl_path};

use kvtier_cli::{Error, Result};

const TRACES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/traces");

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let out = PathBuf::from(args.next().unwrap_or_else(|| "target/synth".into()));
    let seed = match args.next() {
        Some(value) => value.parse::<u64>().map_err(|_| Error::InvalidConfig {
            setting: "seed",
            value,
            reason: "must be a non-negative integer".into(),
        })?,
        None => 1,
    };
    std::fs::create_dir_all(&out).map_err(|source| Error::Io { op: "create directory", path: out.clone(), source })?;
    println!(
        "{:<26} {:>8} {:>9} {:>9} {:>7} {:>9} {:>8}",
        "trace", "requests", "blocks", "unique", "reused", "avg in", "ms"
    );
    for source in ["code", "conv"] {
        let csv = Path::new(TRACES).join(format!("AzureLLMInferenceTrace_{source}.csv"));
        let rows = read_azure_csv(&csv)?;
        for preset in SynthPreset::ALL {
            let started = Instant::now();
            let trace = synthesize(&rows, &preset.config(), seed)?;
            let elapsed = started.elapsed().as_millis();
            let name = format!("azure_{source}_{}.jsonl", preset.name());
            write_jsonl_path(&trace, out.join(&name))?;
            let stats = trace_stats(&trace);
            println!(
                "{:<26} {:>8} {:>9} {:>9} {:>6.1}% {:>9.0} {:>8}",
                name,
                stats.requests,
                stats.blocks,
                stats.unique_blocks,
                100.0 * stats.reused_block_share,
                stats.prompt_tokens as f64 / stats.requests.max(1) as f64,
                elapsed
            );
        }
    }
    println!("written to {}", out.display());
    Ok(())
}
