//! Scratch of an interrupted run: removed on SIGINT/SIGTERM, and by the next run after SIGKILL;
//! never a user's file or a live run's scratch.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

fn spawn(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_kvtier"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the kvtier binary runs")
}

/// The scratch directories of kind `prefix` in `dir`.
fn scratch(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .filter(|e| e.path().join(kvtier_cli::scratch::OWNER_FILE).exists())
        .map(|e| e.path())
        .collect()
}

/// Waits until `child` has a scratch directory of kind `prefix` in `dir` (the run is long enough
/// for the poll to see it; if it ended first the test says so rather than passing).
fn wait_for_scratch(child: &mut Child, dir: &Path, prefix: &str) -> PathBuf {
    loop {
        if let Some(found) = scratch(dir, prefix).pop() {
            return found;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before its scratch directory was seen");
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill").args([&format!("-{name}"), &child.id().to_string()]).status().unwrap();
    assert!(status.success());
}

#[test]
fn sigint_during_an_engine_replay_removes_its_g3_files() {
    let base = tempfile::tempdir().unwrap();
    let out = base.path().join("out");
    let out_arg = out.to_str().unwrap();
    let mut child = spawn(&["replay", "--mode", "engine", "--no-reference", "--out", out_arg]);
    let dir = wait_for_scratch(&mut child, &out, "kvtier-replay-g3-");
    signal(&child, "INT");
    let run = child.wait_with_output().unwrap();
    assert_eq!(run.status.code(), Some(130), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(String::from_utf8_lossy(&run.stderr).contains("interrupted: removed 1 scratch directory"));
    assert!(!dir.exists());
    // `out/` was made by the run for its scratch only, and went with it.
    assert!(!out.exists(), "{:?}", std::fs::read_dir(&out).map(|d| d.count()));
}

#[test]
fn sigterm_during_a_probe_removes_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("profile.json");
    let args = ["probe", "--dir", dir.path().to_str().unwrap(), "--seconds", "5", "--scratch-size", "16MiB"];
    let mut child = spawn(&[&args[..], &["--out", profile.to_str().unwrap(), "--memcpy-size", "1MiB"]].concat());
    let scratch_dir = wait_for_scratch(&mut child, dir.path(), "kvtier-probe-");
    signal(&child, "TERM");
    let run = child.wait_with_output().unwrap();
    assert_eq!(run.status.code(), Some(128 + 15), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(!scratch_dir.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no profile from an interrupted probe");
}

#[test]
fn the_next_run_removes_a_killed_runs_scratch_and_nothing_else() {
    let out = tempfile::tempdir().unwrap();
    let out_arg = out.path().to_str().unwrap();
    // A user's files, one of them with a kvtier-like name but no owner file: both stay.
    let notes = out.path().join("notes.txt");
    std::fs::write(&notes, b"mine").unwrap();
    let lookalike = out.path().join("kvtier-replay-g3-keep");
    std::fs::create_dir(&lookalike).unwrap();
    std::fs::write(lookalike.join("data"), b"mine").unwrap();

    // A live run, then one killed (SIGKILL: nothing of it gets to clean up) while the first runs.
    let mut live = spawn(&["replay", "--mode", "engine", "--no-reference", "--out", out_arg]);
    let live_dir = wait_for_scratch(&mut live, out.path(), "kvtier-replay-g3-");
    let mut killed = spawn(&["replay", "--mode", "engine", "--no-reference", "--out", out_arg]);
    let left = loop {
        if let Some(d) = scratch(out.path(), "kvtier-replay-g3-").into_iter().find(|d| *d != live_dir) {
            break d;
        }
        assert!(killed.try_wait().unwrap().is_none(), "the run ended before its scratch was seen");
        std::thread::sleep(std::time::Duration::from_millis(2));
    };
    killed.kill().unwrap();
    killed.wait().unwrap();
    assert!(left.join(kvtier_cli::scratch::OWNER_FILE).exists(), "a killed run leaves its scratch");

    let next = Command::new(env!("CARGO_BIN_EXE_kvtier"))
        .args(["replay", "--mode", "engine", "--no-reference", "--requests", "20", "--out", out_arg])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&next.stderr);
    assert!(next.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("removed {}", left.display())), "{stderr}");
    assert!(!left.exists());
    assert!(live_dir.exists(), "a live run's scratch is never removed");
    assert!(notes.is_file() && lookalike.join("data").is_file());
    signal(&live, "INT");
    assert_eq!(live.wait().unwrap().code(), Some(130));
    assert!(!live_dir.exists());
}
