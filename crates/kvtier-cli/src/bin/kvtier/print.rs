//! The reports as text, for the terminal.

use std::time::Duration;

use kvtier_cli::probe::{IoStats, Profile};
use kvtier_cli::replay::{EngineRun, Reference, SimConfig, SimReport};
use kvtier_cli::trace::Trace;

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

fn us(ns: u64) -> String {
    if ns >= 10_000 { format!("{:.1} us", ns as f64 / 1e3) } else { format!("{ns} ns") }
}

pub(crate) fn print_engine(run: &EngineRun, source: &str, layout: &str) {
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
                "{} ({}; slots of {} B on disk, {backend}, {} admission{})",
                r.g3_blocks,
                model(r.g3_blocks),
                r.g3_slot_bytes,
                r.admission,
                if r.exclusive_g3 { ", exclusive" } else { "" }
            ),
            None => "none".to_string(),
        },
        if r.write_through_g2 { "on" } else { "off" }
    );
    println!(
        "requests     {} ({} finished, {} rejected: larger than G1, {} cut short), {} preemptions, peak {} running, {} prefetched while waiting",
        r.requests, r.finished, r.rejected, r.truncated, r.preemptions, r.peaks.running, r.prefetched_requests
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
    let g4 = |rate: f64| if r.g4.is_some() { format!(" + G4 {rate:.4}") } else { String::new() };
    println!(
        "hit rate     {:.4} second half (headline: the first half warms the cache) = G1 {:.4} + G2 {:.4} + G3 {:.4}{}",
        h.second_half,
        h.second_half_g1,
        h.second_half_g2,
        h.second_half_g3,
        g4(h.second_half_g4)
    );
    println!(
        "             {:.4} all requests = G1 {:.4} + G2 {:.4} + G3 {:.4}{}",
        h.all_requests,
        h.g1,
        h.g2,
        h.g3,
        g4(h.g4)
    );
    if let Some(g) = &r.g4 {
        println!(
            "g4           {}: {:.4} of all prompt tokens onboarded from G4 ({:.4} second half); {} pages ({}) in, {} ({}) out, {} round trips; {} absent, {} rejected, {} refused, {} failed round trips",
            g.server,
            h.g4,
            h.second_half_g4,
            g.get_hits,
            format_bytes(g.get_bytes),
            g.put_stored,
            format_bytes(g.put_bytes),
            g.round_trips,
            g.get_absent,
            g.get_rejected,
            g.put_rejected,
            g.errors
        );
    }
    match &r.reference {
        Some(reference) => print_reference(reference, h.second_half),
        None => println!("reference    skipped (--no-reference)"),
    }
    if let Some(c) = &r.live_curve {
        let exact = r.reference.as_ref().map_or(String::new(), |x| {
            format!(" (exact sim LRU there {:.4}: error {:+.4})", x.sim.lru, c.at_summed - x.sim.lru)
        });
        println!(
            "live curve   the engine's own LRU estimate, second half ({} accesses counted, {} blocks sampled at rate {:.2e}, {} hot blocks exact): at G1 {:.4}, G1+G2 {:.4}, summed {:.4}{}",
            c.sampled_accesses, c.tracked_blocks, c.sample_rate, c.hot_blocks, c.at_g1, c.at_g1_g2, c.at_summed, exact
        );
        let points: Vec<String> = c.points.iter().map(|(b, h)| format!("{b}: {h:.4}")).collect();
        println!("             blocks: estimated hit rate  {}", points.join(", "));
    }
    let v = &r.verification;
    println!(
        "verified     {} served pages checked against their hash's stamp (G1 {}, G2 {}, G3 {}, G4 {}; {} B at each end), {} wrong; {} pages stamped",
        v.pages_checked.total(),
        v.pages_checked.g1,
        v.pages_checked.g2,
        v.pages_checked.g3,
        v.pages_checked.g4,
        v.stamp_bytes,
        v.mismatches,
        v.pages_stamped
    );
    if let Some(w) = &r.ssd_wear {
        println!(
            "ssd wear     G3 wrote {} pages = {} at the model ({} on disk): {}/h of simulated time, {:.2} drive writes per day of {}",
            w.pages_written,
            format_bytes(w.bytes_written_at_model),
            format_bytes(w.bytes_written_on_disk),
            format_bytes(w.bytes_per_hour as u64),
            w.drive_writes_per_day,
            format_bytes(w.capacity_bytes)
        );
    }
    let c = &r.onboard_choices;
    if c.decisions > 0 {
        println!(
            "onboarding   load or recompute ({:.0} tok/s prefill vs G2/G3 bandwidth; {}): {} prefixes found below G1: load all {}, part {}, none {}; {} blocks recomputed; time to the prefix end {:.1} s (load all {:.1} s, recompute all {:.1} s)",
            r.prefill_tokens_per_sec,
            if c.acted { "followed" } else { "counted, not followed: --onboard-rule" },
            c.decisions,
            c.load_all,
            c.load_part,
            c.load_none,
            c.blocks_recomputed,
            c.seconds_rule,
            c.seconds_load_all,
            c.seconds_load_none
        );
    }
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
    let reuse: Vec<String> = r
        .admission_reuse_per_mille
        .iter()
        .zip(["1", "2", "3", "4+"])
        .map(|(r, uses)| format!("{uses}: {}", r.map_or("-".into(), |r| format!("{:.1} %", f64::from(r) / 10.0))))
        .collect();
    let threshold = r.admission_min_uses.map_or("not yet chosen".into(), |m| format!("use count >= {m}"));
    println!(
        "spill reuse  pages back within the G3 lifetime, by use count at spill: {}; adaptive admission: {threshold}",
        reuse.join(", ")
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
    let total = t.wall_seconds + t.reference_seconds + t.sim_reference_seconds;
    println!(
        "elapsed      {total:.3} s (tiered {:.3} s, one large G1 {:.3} s, sim LRU/OPT {:.3} s)",
        t.wall_seconds, t.reference_seconds, t.sim_reference_seconds
    );
}

fn print_reference(reference: &Reference, tiered: f64) {
    let ratio = |r: Option<f64>| r.map_or("n/a (the reference hits nothing)".to_string(), |r| format!("{r:.3}x"));
    println!(
        "reference    one G1 of {} blocks, no G2/G3, same scheduler: {:.4} second half ({:.4} all requests)",
        reference.g1_blocks, reference.second_half, reference.all_requests
    );
    println!(
        "             tiered / one large G1 = {} ({:.4} / {:.4}; all requests {})",
        ratio(reference.ratio),
        tiered,
        reference.second_half,
        ratio(reference.ratio_all_requests)
    );
    let s = &reference.sim;
    println!(
        "             sim mode at {} blocks of 512 tokens (the same capacity): LRU {:.4}, OPT {:.4}",
        s.capacity_blocks, s.lru, s.opt
    );
    let v = &reference.verification;
    println!("             {} served pages checked, {} wrong", v.pages_checked.total(), v.mismatches);
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

pub(crate) fn print_report(
    report: &SimReport,
    trace: &Trace,
    source: &str,
    config: &SimConfig,
    block_bytes: u64,
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
    println!("capacity     512-token blocks, and their size at the layout ({} per block)", format_bytes(block_bytes));
    print!("  {:>10} {:>10} {:>8}", "blocks", "size", "%unique");
    for policy in config.policies() {
        print!(" {:>8}", policy.name());
    }
    println!(" {:>10}", "ms/point");
    for (row, times) in report.points.chunks(config.policies().len()).zip(point_times.chunks(config.policies().len())) {
        let capacity = row[0].capacity_blocks;
        let share = 100.0 * capacity as f64 / report.unique_blocks.max(1) as f64;
        print!("  {capacity:>10} {:>10} {share:>7.1}%", format_bytes(capacity as u64 * block_bytes));
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

/// The plan's table: one line per grid point (capacities and cost per GPU, hit rate and
/// savings of the whole cluster), the cheapest point reaching the target marked; with more
/// than one instance, each instance's hit rate per point.
pub(crate) fn plan(
    r: &kvtier_cli::plan::PlanReport,
    source: &str,
    layout: &str,
    speeds: Option<&kvtier_cli::plan::profile::TierSpeeds>,
) {
    let c = &r.cluster;
    println!("kvtier plan (G1 x G2 x G3 grid, each point one engine replay per instance; hit rate = second half)");
    println!("trace        {source}");
    println!(
        "cluster      {} GPU(s) = {} instance(s) x tensor-parallel {}, {} routing; requests per instance {:?}",
        c.gpus,
        c.instances(),
        c.tp,
        c.route.name(),
        r.instance_requests
    );
    println!(
        "layout       {layout}: {} per block on each GPU; sizes and cost below are per GPU",
        format_bytes(r.per_gpu_page_bytes as u64)
    );
    if r.sweep_block_tokens != r.block_tokens {
        println!(
            "blocks       swept with {}-token blocks (same bytes per tier), the deciding points confirmed at {} tokens",
            r.sweep_block_tokens, r.block_tokens
        );
    }
    let idle = r.instance_requests.iter().filter(|&&n| n == 0).count();
    if idle > 0 {
        println!(
            "warning      {idle} of {} instances received no request (more instances than requests)",
            c.instances()
        );
    }
    if let Some(s) = speeds {
        println!(
            "speeds       from {}: G2->G1 {} (memcpy median), G3->G1 {} (read at {} pages)",
            s.profile.display(),
            gib_per_sec(s.g2_bytes_per_sec),
            gib_per_sec(s.g3_bytes_per_sec),
            format_bytes(s.g3_page_bytes)
        );
    }
    println!(
        "{:>9} {:>9} {:>9} {:>8} {:>7} {:>7} {:>7} {:>11} {:>10} {:>10} {:>8} {:>9} {:>10}",
        "G1 GiB",
        "G2 GiB",
        "G3 GiB",
        "hit",
        "G1",
        "G2",
        "G3",
        "GPU-s saved",
        "wait ms",
        "SSD GiB/h",
        "DWPD",
        "cost/h",
        "cluster/h"
    );
    for (i, p) in r.points.iter().enumerate() {
        println!(
            "{:>9.0} {:>9.0} {:>9.0} {:>8.4} {:>7.4} {:>7.4} {:>7.4} {:>11.0} {:>10.0} {:>10.1} {:>8.1} {:>9.4} {:>10.4}{}",
            p.g1_gib,
            p.g2_gib,
            p.g3_gib,
            p.hit_rate,
            p.hit_rate_g1,
            p.hit_rate_g2,
            p.hit_rate_g3,
            p.gpu_seconds_saved,
            p.mean_wait_ms,
            p.ssd_bytes_per_hour / (1u64 << 30) as f64,
            p.ssd_dwpd,
            p.cost_per_hour,
            p.cluster_cost_per_hour,
            if r.cheapest == Some(i) { "  <- cheapest at target" } else { "" }
        );
    }
    if c.instances() > 1 {
        println!("per instance hit rate (second half of its requests) and mean wait");
        for p in &r.points {
            let each: Vec<String> =
                p.instances.iter().map(|i| format!("{:.4} ({:.0} ms)", i.hit_rate, i.mean_wait_ms)).collect();
            println!("  G1 {:>5.0} G2 {:>5.0} G3 {:>5.0}: {}", p.g1_gib, p.g2_gib, p.g3_gib, each.join("  "));
        }
    }
    println!(
        "target       {:.0} % of the best hit rate ({:.4}); prices per GB-hour: HBM {:.6}, DRAM {:.6}, SSD {:.7}",
        r.target * 100.0,
        r.best_hit_rate(),
        r.prices.hbm_per_gb_hour,
        r.prices.dram_per_gb_hour,
        r.prices.ssd_per_gb_hour
    );
    for c in &r.confirmed {
        let Some(swept) = r.points.get(c.index) else { continue };
        let role = match (Some(c.index) == r.best(), Some(c.index) == r.cheapest) {
            (true, true) => "best, cheapest at target",
            (true, false) => "best",
            _ => "cheapest at target",
        };
        let f = &c.point;
        println!(
            "confirmed    G1 {:.0} G2 {:.0} G3 {:.0} GiB ({role}) at {} tokens: hit {:.4} (G1 {:.4} G2 {:.4} G3 {:.4}), \
             wait {:.0} ms; swept {:.4} ({:+.1} %)",
            f.g1_gib,
            f.g2_gib,
            f.g3_gib,
            r.block_tokens,
            f.hit_rate,
            f.hit_rate_g1,
            f.hit_rate_g2,
            f.hit_rate_g3,
            f.mean_wait_ms,
            swept.hit_rate,
            if f.hit_rate > 0.0 { (swept.hit_rate / f.hit_rate - 1.0) * 100.0 } else { 0.0 }
        );
    }
    match r.confirmation_holds() {
        Some(true) => println!(
            "confirmed    at {} tokens the cheapest point still reaches {:.0} % of the best",
            r.block_tokens,
            r.target * 100.0
        ),
        Some(false) => println!(
            "warning      at {} tokens the cheapest point falls below {:.0} % of the best: rerun with --sweep-block-tokens {}",
            r.block_tokens,
            r.target * 100.0,
            r.block_tokens
        ),
        None => {}
    }
    let replays: usize = r.points.iter().map(|p| p.instances.iter().filter(|i| i.requests > 0).count()).sum();
    let confirmations: usize =
        r.confirmed.iter().map(|c| c.point.instances.iter().filter(|i| i.requests > 0).count()).sum();
    println!(
        "elapsed      {:.1} s for {} points ({replays} replays{}) on {} threads",
        r.elapsed_seconds,
        r.points.len(),
        if confirmations > 0 { format!(" + {confirmations} confirming") } else { String::new() },
        r.threads
    );
}

fn gib_per_sec(bytes_per_sec: f64) -> String {
    format!("{:.2} GiB/s", bytes_per_sec / (1u64 << 30) as f64)
}

/// The probe's numbers: bandwidths in GiB/s, each IO bandwidth also as a share of memcpy.
pub(crate) fn print_probe(profile: &Profile, layout: &str, block_size: u32) {
    let m = &profile.machine;
    let io = &profile.io;
    println!("kvtier probe (kvtier {})", profile.kvtier_version);
    println!(
        "machine      {} cores, {}, kernel {}",
        m.cores,
        m.cpu.as_deref().unwrap_or("CPU unknown"),
        m.kernel.as_deref().unwrap_or("unknown")
    );
    let memcpy = profile.memcpy.best_bytes_per_sec;
    println!(
        "memcpy       {} best, {} median ({} passes over {})",
        gib_per_sec(memcpy),
        gib_per_sec(profile.memcpy.median_bytes_per_sec),
        profile.memcpy.passes,
        format_bytes(profile.memcpy.buffer_bytes)
    );
    println!(
        "io           {} on {} ({}), {}, queue depth {}, scratch {}",
        io.dir.display(),
        io.fs_type.as_deref().unwrap_or("unknown fs"),
        io.backend,
        if io.direct { "O_DIRECT" } else { "buffered" },
        io.queue_depth,
        format_bytes(io.scratch_bytes)
    );
    if let Some(note) = &io.note {
        println!("note         {note}");
    }
    println!("layout       {layout}, {block_size}-token blocks");
    println!(
        "{:>10} {:>6} {:>4} {:>12} {:>10} {:>12} {:>12}",
        "page", "op", "qd", "bandwidth", "x memcpy", "p50", "p99"
    );
    let row = |page: u64, op: &str, stats: &IoStats| {
        let ratio = if memcpy > 0.0 { stats.bytes_per_sec / memcpy } else { 0.0 };
        println!(
            "{:>10} {:>6} {:>4} {:>12} {:>10.3} {:>9.0} us {:>9.0} us",
            format_bytes(page),
            op,
            stats.queue_depth,
            gib_per_sec(stats.bytes_per_sec),
            ratio,
            stats.latency_p50_us,
            stats.latency_p99_us
        );
    };
    for page in &io.pages {
        row(page.page_bytes, "write", &page.write);
        row(page.page_bytes, "read", &page.read);
        row(page.page_bytes, "write", &page.write_qd1);
        row(page.page_bytes, "read", &page.read_qd1);
    }
}
