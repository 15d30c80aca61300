//! `kvtier probe` end to end at tiny sizes, and the profile's loader on bad files. No timed
//! assertions: only that the numbers exist and are positive.

use std::path::Path;
use std::process::{Command, Output};

use kvtier_cli::Error;
use kvtier_cli::probe::{ProbeConfig, Profile, SCHEMA_VERSION, run};

fn kvtier(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kvtier")).args(args).output().expect("the kvtier binary runs")
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read the probed directory")
        .map(|e| e.expect("directory entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn probe_writes_a_profile_that_loads_back_and_leaves_no_scratch() {
    let probed = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let profile_path = out.path().join("nested/profile.json");
    let run = kvtier(&[
        "probe",
        "--dir",
        probed.path().to_str().unwrap(),
        "--out",
        profile_path.to_str().unwrap(),
        "--seconds",
        "0.05",
        "--scratch-size",
        "4MiB",
        "--memcpy-size",
        "1MiB",
        "--io-backend",
        "psync",
    ]);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "stdout: {stdout}\nstderr: {}", String::from_utf8_lossy(&run.stderr));
    assert!(stdout.contains("GiB/s") && stdout.contains("x memcpy"), "{stdout}");

    let profile = Profile::load(&profile_path).unwrap();
    assert_eq!(profile.schema_version, SCHEMA_VERSION);
    assert_eq!(profile.io.backend, "psync");
    assert!(profile.machine.cores >= 1);
    assert!(profile.memcpy.best_bytes_per_sec > 0.0 && profile.memcpy.median_bytes_per_sec > 0.0);
    let pages: Vec<u64> = profile.io.pages.iter().map(|p| p.page_bytes).collect();
    assert_eq!(pages, [2 << 20, 64 << 10], "the llama-3.1-8b 16-token page and 64 KiB");
    for page in &profile.io.pages {
        for stats in [&page.write, &page.read, &page.write_qd1, &page.read_qd1] {
            assert!(stats.ops > 0 && stats.bytes_per_sec > 0.0, "{page:?}");
            assert!(stats.latency_p50_us > 0.0 && stats.latency_p99_us >= stats.latency_p50_us, "{page:?}");
        }
        assert_eq!(page.read_qd1.queue_depth, 1);
    }
    assert_eq!(profile.io.pages[0].read.queue_depth, 2, "a 4 MiB scratch file holds two 2 MiB pages");
    assert!(entries(probed.path()).is_empty(), "scratch left behind: {:?}", entries(probed.path()));
}

#[test]
fn the_library_probe_runs_with_the_default_engine() {
    let probed = tempfile::tempdir().unwrap();
    let config = ProbeConfig::new(probed.path())
        .with_seconds(0.02)
        .with_scratch_bytes(1 << 20)
        .with_memcpy_bytes(1 << 20)
        .with_page_sizes(vec![64 << 10, 64 << 10, 128 << 10]);
    let profile = run(&config).unwrap();
    let pages: Vec<u64> = profile.io.pages.iter().map(|p| p.page_bytes).collect();
    assert_eq!(pages, [64 << 10, 128 << 10], "duplicates measured once");
    assert!(["io_uring", "psync"].contains(&profile.io.backend.as_str()));
    assert!(profile.io.pages.iter().all(|p| p.write.bytes_per_sec > 0.0 && p.read.bytes_per_sec > 0.0));
    assert!(profile.io.direct || profile.io.note.is_some(), "buffered IO is explained");
    assert!(entries(probed.path()).is_empty());

    let path = probed.path().join("p.json");
    profile.save(&path).unwrap();
    let loaded = Profile::load(&path).unwrap();
    // (serde_json may round the last digit of a float: compare what is exact, and one rate)
    assert_eq!(
        (&loaded.machine, &loaded.io.backend, loaded.io.pages.len()),
        (&profile.machine, &profile.io.backend, 2)
    );
    let (a, b) = (loaded.io.pages[0].read.bytes_per_sec, profile.io.pages[0].read.bytes_per_sec);
    assert!((a - b).abs() <= 1e-9 * b, "{a} vs {b}");
}

#[test]
fn a_missing_directory_is_a_clear_error() {
    let parent = tempfile::tempdir().unwrap();
    let missing = parent.path().join("no-such-dir");
    let run =
        kvtier(&["probe", "--dir", missing.to_str().unwrap(), "--out", parent.path().join("p.json").to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(stderr.contains(missing.to_str().unwrap()), "{stderr}");
    assert!(!parent.path().join("p.json").exists());

    let err = run_error(ProbeConfig::new(&missing));
    assert!(matches!(&err, Error::Io { path, .. } if *path == missing), "{err:?}");
    let file = parent.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    assert!(matches!(run_error(ProbeConfig::new(&file)), Error::InvalidConfig { setting: "dir", .. }));
}

fn run_error(config: ProbeConfig) -> Error {
    run(&config.with_seconds(0.01).with_scratch_bytes(2 << 20).with_memcpy_bytes(1 << 20)).unwrap_err()
}

#[test]
fn bad_settings_name_their_flag() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let run = kvtier(&["probe", "--dir", d, "--seconds", "0"]);
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("--seconds"));
    let run = kvtier(&["probe", "--dir", d, "--scratch-size", "1MiB"]);
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("--scratch-size"));
    assert!(entries(dir.path()).is_empty());
}

#[test]
fn bad_profiles_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("profile.json");
    let load = |text: &str| {
        std::fs::write(&path, text).unwrap();
        Profile::load(&path)
    };
    assert!(matches!(load("{not json"), Err(Error::BadProfile { .. })));
    assert!(matches!(load(""), Err(Error::BadProfile { .. })));
    assert!(matches!(load("[1, 2]"), Err(Error::ProfileVersion { found: None, .. })));
    assert!(matches!(load(r#"{"schema_version": "1"}"#), Err(Error::ProfileVersion { found: None, .. })));
    let err = load(r#"{"schema_version": 2, "memcpy": {}}"#).unwrap_err();
    assert!(matches!(err, Error::ProfileVersion { found: Some(2), expected: SCHEMA_VERSION, .. }));
    assert!(err.to_string().contains("profile.json") && err.to_string().contains("kvtier probe"), "{err}");
    let err = load(&format!(r#"{{"schema_version": {SCHEMA_VERSION}, "kvtier_version": "0.1.0"}}"#)).unwrap_err();
    assert!(matches!(err, Error::BadProfile { .. }), "a missing field: {err:?}");
    assert!(matches!(Profile::load(&dir.path().join("absent.json")), Err(Error::Io { op: "read", .. })));
}
