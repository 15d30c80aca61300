//! What is checked before and around a run: flags the run would not read, an output directory
//! it could not write, a G1 that holds no request, and the scratch of interrupted runs.

use std::path::Path;

use kvtier_cli::replay::{EngineConfig, engine};
use kvtier_cli::trace::Trace;

use crate::CliError;
use crate::args::{self, Cli, Command, ReplayArgs};

/// Removes this run's scratch directories (the G3 files, the probe's file) on SIGINT, SIGTERM or
/// SIGHUP, then exits as the signal would (128 + its number): no destructor runs on a signal,
/// and an interrupted default replay would leave about 0.5 GB behind.
pub(crate) fn remove_scratch_on_signal() -> Result<(), CliError> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]).map_err(CliError::Signals)?;
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            let removed = kvtier_cli::scratch::remove_all_before_exit();
            eprintln!("\ninterrupted: removed {removed} scratch director{}", if removed == 1 { "y" } else { "ies" });
            std::process::exit(128 + signal);
        }
    });
    Ok(())
}

/// Removes the scratch that killed runs left in `dir` (see [`kvtier_cli::scratch::remove_stale`])
/// and says so.
pub(crate) fn remove_stale_scratch(dir: &Path) -> Result<(), CliError> {
    for removed in kvtier_cli::scratch::remove_stale(dir)? {
        eprintln!("removed {} (scratch of a kvtier run that was killed)", removed.display());
    }
    Ok(())
}

/// Refuses flags the chosen command or mode would not read (see [`args::check_unused_flags`]).
pub(crate) fn check_unused_flags(cli: &Cli, matches: &clap::ArgMatches) -> Result<(), CliError> {
    let (command, matches, mode) = match (&cli.command, matches.subcommand()) {
        (Some(Command::Replay(args)), Some((name, sub))) => (name, sub, args.mode),
        (Some(Command::Plan(args)), Some((name, sub))) => (name, sub, args.replay.mode),
        (None, _) => ("replay", matches, cli.replay.mode),
        _ => return Ok(()),
    };
    args::check_unused_flags(matches, command, mode).map_err(|(flag, value, reason)| CliError::Flag {
        flag,
        value,
        reason,
    })
}

/// Checks, before any work, that `dir` can be written or created: a replay must not run for
/// minutes to fail at its last step (the error names the flag and the path). Leaves nothing
/// behind: the check writes and removes a file in `dir` or in its nearest existing ancestor.
pub(crate) fn check_dir(flag: &'static str, dir: &Path) -> Result<(), CliError> {
    let refuse = |reason: String| CliError::Flag { flag, value: dir.display().to_string(), reason };
    let mut existing = dir;
    while !existing.exists() {
        existing = match existing.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
    }
    if !existing.is_dir() {
        return Err(refuse(format!("{} is not a directory", existing.display())));
    }
    let probe = existing.join(format!(".kvtier-write-check-{}", std::process::id()));
    let cannot = |e: std::io::Error| refuse(format!("cannot write in {}: {e}", existing.display()));
    std::fs::write(&probe, b"").map_err(cannot)?;
    std::fs::remove_file(&probe).map_err(cannot)
}

/// Fails when G1 could hold no request of the trace (the report would be of nothing), and warns
/// when it could not hold some (their prompts count as misses).
pub(crate) fn check_rejections(
    args: &ReplayArgs,
    trace: &Trace,
    config: &EngineConfig,
    report: &engine::report::EngineReport,
) -> Result<(), CliError> {
    if report.rejected == 0 {
        return Ok(());
    }
    let block = config.layout.block_size() as u64;
    let longest = trace.records().iter().map(|r| (r.input_length as u64).div_ceil(block)).max().unwrap_or(0);
    let g1 = format!("G1 (--g1 {} = {} blocks of {block} tokens)", args.g1, config.g1_blocks);
    if report.rejected == report.requests {
        return Err(CliError::AllRejected { requests: report.requests, g1, longest });
    }
    eprintln!(
        "warning: {} of {} requests rejected as larger than {g1}; their prompts count as misses (the longest \
         needs {longest} blocks)",
        report.rejected, report.requests
    );
    Ok(())
}
