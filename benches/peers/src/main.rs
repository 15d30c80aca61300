//! Side-by-side microbenchmarks: kvtier vs kvbm-logical 1.6.1 (NVIDIA Dynamo), one process.
//!
//! Run: `cargo run --release --manifest-path benches/peers/Cargo.toml [-- OPTIONS]`
//!
//! Options:
//!   --quick                 10x fewer iterations (smoke test)
//!   --repeats N             timed repeats per workload and round, median taken (default 7)
//!   --only a,b              run only workloads whose key contains one of the words
//!                           (keys: alloc, hash, match, lifecycle, decode)
//!   --rounds N              run everything N times, report the median per cell (default 3)
//!   --verbose               print every repeat's value (stderr)
//!   --system kvtier|kvbm    run one side only (for profiling)
//!   --pool N                blocks per pool (default 100000)
//!   --kvbm-backend lru|lineage
//!                           kvbm inactive-pool backend (default lru, as in its README)
//!   --kvbm-no-tracker       kvbm registry without the TinyLFU frequency tracker

mod common;
mod kvbm;
mod kvtier_side;

use common::{Cfg, Results};

fn main() {
    let mut cfg = Cfg { repeats: 7, scale: 1.0, pool: common::POOL_BLOCKS, verbose: false };
    let mut only: Vec<String> = Vec::new();
    let (mut run_kvtier, mut run_kvbm) = (true, true);
    let mut rounds = 3usize;
    let mut kc = kvbm::KvbmCfg { backend: kvbm::Backend::Lru, tracker: true };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => cfg.scale = 0.1,
            "--repeats" => cfg.repeats = args.next().and_then(|v| v.parse().ok()).expect("--repeats N"),
            "--only" => only = args.next().expect("--only LIST").split(',').map(str::to_owned).collect(),
            "--kvbm-backend" => {
                kc.backend = match args.next().as_deref() {
                    Some("lru") => kvbm::Backend::Lru,
                    Some("lineage") => kvbm::Backend::Lineage,
                    other => panic!("--kvbm-backend lru|lineage, got {other:?}"),
                }
            }
            "--pool" => cfg.pool = args.next().and_then(|v| v.parse().ok()).expect("--pool N"),
            "--kvbm-no-tracker" => kc.tracker = false,
            "--verbose" => cfg.verbose = true,
            "--rounds" => rounds = args.next().and_then(|v| v.parse().ok()).expect("--rounds N"),
            "--system" => match args.next().as_deref() {
                Some("kvtier") => run_kvbm = false,
                Some("kvbm") => run_kvtier = false,
                Some("both") => {}
                other => panic!("--system kvtier|kvbm|both, got {other:?}"),
            },
            "--bench" => {} // passed by `cargo bench`; ignored
            other => panic!("unknown argument {other:?} (see src/main.rs for options)"),
        }
    }
    cfg.repeats = cfg.repeats.max(1);
    let only = move |key: &str| only.is_empty() || only.iter().any(|w| key.contains(w.as_str()));

    let rounds = rounds.max(1);
    println!(
        "kvtier vs kvbm-logical 1.6.1: pool {} blocks x {} tokens; median of {} rounds x {} repeats; scale {}; kvbm {:?}",
        cfg.pool,
        common::BLOCK_TOKENS,
        rounds,
        cfg.repeats,
        cfg.scale,
        kc
    );
    // Workload by workload, both systems back to back, so slow drifts in background load on
    // a shared machine hit both sides of a row alike.
    // The whole sequence is repeated `rounds` times and each cell is the median over rounds.
    let (mut ks, mut ts) = (Vec::new(), Vec::new());
    let load0 = common::loadavg();
    for round in 0..rounds {
        let (mut k, mut t) = (Results::default(), Results::default());
        for key in ["alloc", "hash", "match", "lifecycle", "decode"] {
            if !only(key) {
                continue;
            }
            let this = |k: &str| k == key;
            if run_kvtier {
                eprintln!("round {round}, {key}: kvtier ...");
                t.merge(kvtier_side::run(&cfg, &this));
            }
            if run_kvbm {
                eprintln!("round {round}, {key}: kvbm-logical ...");
                k.merge(kvbm::run(&cfg, kc, &this));
            }
        }
        ks.push(k);
        ts.push(t);
    }
    print_table(&Results::median(&ks), &Results::median(&ts));
    println!("\n(load average before / after: {load0} / {})", common::loadavg());
}

fn print_table(k: &Results, t: &Results) {
    let rows: [(&str, &str, Option<f64>, Option<f64>); 12] = [
        ("alloc+free, 1 block per op", "ns/block", k.alloc_free_1, t.alloc_free_1),
        ("alloc+free, 1 block per op, kvtier pool behind a Mutex", "ns/block", k.alloc_free_1, t.alloc_free_1_locked),
        ("alloc+free, 16 blocks per op", "ns/block", k.alloc_free_16, t.alloc_free_16),
        ("chained hash of 16-token blocks (4096-token prompt)", "ns/block", k.hash, t.hash),
        ("chained hash, raw hash functions only, no containers", "ns/block", k.hash_raw, t.hash_raw),
        ("match cached 256-block prefix", "ns/block", k.match_prefix, t.match_prefix),
        ("release the matched blocks", "ns/block", k.release_matched, t.release_matched),
        ("admit cached 4096-token prompt from tokens (hash+match), free", "ns/block", k.admit_cached, t.admit_cached),
        (
            "lifecycle, block at a time (alloc,fill,hash,register,release)",
            "ns/block",
            k.lifecycle_block,
            t.lifecycle_block,
        ),
        ("lifecycle, whole 256-block prompt at once", "ns/block", k.lifecycle_prompt, t.lifecycle_prompt),
        (
            "decode step, 256 seqs (+1 token each, export table)",
            "us/step",
            k.decode_step.map(|v| v / 1e3),
            t.decode_step.map(|v| v / 1e3),
        ),
        (
            "  of which: export block table + slot mapping",
            "us/step",
            k.decode_export.map(|v| v / 1e3),
            t.decode_export.map(|v| v / 1e3),
        ),
    ];
    let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
    println!();
    println!("| workload | unit | kvbm-logical 1.6.1 | kvtier | ratio kvbm/kvtier |");
    println!("|---|---|---:|---:|---:|");
    for (name, unit, kv, kt) in rows {
        let ratio = match (kv, kt) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
            _ => "-".to_string(),
        };
        println!("| {name} | {unit} | {} | {} | {ratio} |", f(kv), f(kt));
    }
}
