//! The command with input a new user gets wrong: bad traces, degenerate runs, flags that do not
//! apply, and capacities and layouts given in the operator's units.

use std::path::Path;
use std::process::{Command, Output};

fn kvtier(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kvtier")).args(args).output().expect("the kvtier binary runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn line(ms: u64, input_length: &str, ids: &str) -> String {
    format!(r#"{{"timestamp": {ms}, "input_length": {input_length}, "output_length": 4, "hash_ids": [{ids}]}}"#)
}

/// Runs `kvtier replay --mode sim` on a trace of `bytes`, returning the output.
fn sim_on(dir: &Path, bytes: &[u8], extra: &[&str]) -> Output {
    let path = dir.join("trace.jsonl");
    std::fs::write(&path, bytes).unwrap();
    let out = dir.join("out");
    let args = ["replay", "--mode", "sim", "--trace", path.to_str().unwrap(), "--out", out.to_str().unwrap()];
    kvtier(&[&args[..], extra].concat())
}

/// Asserts that the run failed and said `expected` on stderr.
fn refused(out: &Output, expected: &str) {
    assert!(!out.status.success(), "ran: {}", String::from_utf8_lossy(&out.stdout));
    assert!(stderr(out).contains(expected), "expected {expected:?} in: {}", stderr(out));
}

#[test]
fn bad_traces_are_refused_naming_the_line_and_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let good = line(0, "5", "1");
    // too large: a number past 64 bits used to be "has the wrong type"
    let huge = format!("{good}\n{}\n", line(1, "99999999999999999999", "1"));
    refused(&sim_on(dir.path(), huge.as_bytes(), &[]), "line 2: field `input_length` is too large");
    let huge_id = format!("{good}\n{}\n", line(1, "5", "18446744073709551616"));
    refused(&sim_on(dir.path(), huge_id.as_bytes(), &[]), "line 2: field `hash_ids` is too large");
    // backwards
    let backwards = [line(10, "5", "1"), line(20, "5", "1"), line(15, "5", "2")].join("\n");
    refused(&sim_on(dir.path(), backwards.as_bytes(), &[]), "line 3: timestamp 15 ms is earlier than");
    // undecodable bytes
    let mut bytes = format!("{good}\n{good}\n").into_bytes();
    bytes.extend_from_slice(b"{\"timestamp\": 3, \xff}\n");
    refused(&sim_on(dir.path(), &bytes, &[]), "line 3: not UTF-8 text");
    // empty, blank, and every line bad
    refused(&sim_on(dir.path(), b"", &[]), "trace.jsonl: no request");
    refused(&sim_on(dir.path(), b"\n  \n", &[]), "trace.jsonl: no request");
    refused(
        &sim_on(dir.path(), b"oops\n{}\n", &["--skip-bad-lines"]),
        "no request: all 2 non-blank line(s) are bad (first: line 1: not valid JSON)",
    );
    refused(&sim_on(dir.path(), format!("{good}\n").as_bytes(), &["--requests", "0"]), "no request");
    // some lines bad, skipped: a partial result, said loudly
    let partly = format!("{good}\noops\n{}\n", line(2, "5", "1"));
    let run = sim_on(dir.path(), partly.as_bytes(), &["--skip-bad-lines"]);
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(stderr(&run).contains("warning: 1 bad line(s)"), "{}", stderr(&run));
}

#[test]
fn a_run_whose_g1_holds_no_request_fails_and_one_that_rejects_some_warns() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let common = ["replay", "--mode", "engine", "--no-reference", "--g3", "0", "--requests", "40", "--out"];
    let none = kvtier(&[&common[..], &[out.to_str().unwrap(), "--g1", "10"]].concat());
    refused(&none, "every one of the 40 requests was rejected as larger than G1 (--g1 10 = 10 blocks");
    assert!(!out.join("replay_engine.json").exists(), "no report of nothing");
    let some = kvtier(&[&common[..], &[out.to_str().unwrap(), "--g1", "300"]].concat());
    assert!(some.status.success(), "{}", stderr(&some));
    assert!(stderr(&some).contains("requests rejected as larger than G1 (--g1 300"), "{}", stderr(&some));
}

#[test]
fn flags_the_mode_or_command_does_not_read_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let out = out.to_str().unwrap();
    let sim = ["replay", "--mode", "sim", "--requests", "10", "--out", out];
    refused(&kvtier(&[&sim[..], &["--g2", "64GiB"]].concat()), "--g2 64GiB: only applies to --mode engine or both");
    refused(&kvtier(&[&sim[..], &["--full-data"]].concat()), "--full-data");
    let engine = ["replay", "--mode", "engine", "--requests", "10", "--out", out];
    refused(&kvtier(&[&engine[..], &["--policy", "lru"]].concat()), "--policy lru: only applies to --mode sim");
    refused(&kvtier(&[&engine[..], &["--in-pool"]].concat()), "--in-pool");
    let plan = ["plan", "--requests", "10", "--g2-sizes", "1GiB", "--g3-sizes", "0", "--out", out];
    refused(&kvtier(&[&plan[..], &["--capacity", "5"]].concat()), "--capacity 5: not read by plan");
    refused(&kvtier(&[&plan[..], &["--g2", "8GiB"]].concat()), "--g2 8GiB: not read by plan");
    refused(&kvtier(&[&plan[..], &["--live-curve", "4096"]].concat()), "--live-curve 4096: not read by plan");
    // the top-level form (no subcommand) is checked too, and both modes take every flag
    refused(&kvtier(&["--mode", "sim", "--g1", "5", "--out", out]), "--g1 5");
    let both = kvtier(&["--requests", "20", "--g1", "4GiB", "--capacity", "5", "--no-reference", "--out", out]);
    assert!(both.status.success(), "{}", stderr(&both));
}

#[test]
fn capacities_are_gib_per_gpu_whatever_the_layout_and_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let run = |extra: &[&str]| {
        let args = ["replay", "--mode", "engine", "--no-reference", "--requests", "20", "--out", out.to_str().unwrap()];
        let run = kvtier(&[&args[..], extra].concat());
        assert!(run.status.success(), "{}", stderr(&run));
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("replay_engine.json")).unwrap()).unwrap();
        let r = &json["report"];
        let blocks = [&r["g1_blocks"], &r["g2_blocks"], &r["g3_blocks"]].map(|v| v.as_u64().unwrap());
        (blocks, r["model_page_bytes"].as_u64().unwrap(), json["layout"].as_str().unwrap().to_string())
    };
    // llama-3.1-8b: 2 MiB pages; the defaults are 64, 128 and 256 GiB
    let (blocks, page, _) = run(&[]);
    assert_eq!((blocks, page), ([32768, 65536, 131072], 2 << 20));
    // llama-3.1-70b: 5 MiB pages, the same GiB (G2 used to become 320 GiB)
    let (blocks, page, _) = run(&["--layout", "llama-3.1-70b"]);
    assert_eq!(page, 5 << 20);
    assert_eq!(blocks.map(|b| b * page), [64 << 30, 128 << 30, 256 << 30].map(|gib: u64| gib / page * page));
    // FP8 halves the page, tensor parallelism splits it per GPU; a plain number is blocks
    let (blocks, page, name) = run(&["--layout", "llama-3.1-70b", "--kv-dtype", "fp8", "--tp", "4", "--g1", "1000"]);
    assert_eq!((blocks[0], page), (1000, (5 << 20) / 2 / 4));
    assert_eq!(name, "llama-3.1-70b, KV fp8, TP 4 (sizes per GPU)");
    assert_eq!(blocks[1], (128 << 30) / page);
    refused(
        &kvtier(&["replay", "--mode", "engine", "--tp", "3", "--out", out.to_str().unwrap()]),
        "--tp 3: must divide the layout's 8 KV heads",
    );
    refused(&kvtier(&["replay", "--kv-dtype", "int4", "--out", out.to_str().unwrap()]), "int4");
    // sim capacities in GiB are 512-token blocks at the layout: 1 GiB = 16 blocks of 64 MiB
    let sim =
        kvtier(&["replay", "--mode", "sim", "--requests", "50", "--capacity", "1GiB", "--out", out.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&sim.stdout);
    assert!(sim.status.success() && stdout.contains("(64.0 MiB per block)"), "{stdout}{}", stderr(&sim));
    assert!(stdout.contains("          16    1.0 GiB"), "{stdout}");
}

#[test]
fn a_layout_from_a_models_config_json() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let config = dir.path().join("config.json");
    let run = |json: &str| {
        std::fs::write(&config, json).unwrap();
        let args = ["replay", "--mode", "engine", "--no-reference", "--requests", "10", "--out"];
        kvtier(&[&args[..], &[out.to_str().unwrap(), "--layout-config", config.to_str().unwrap()]].concat())
    };
    // Qwen2.5-7B's: 28 layers, 4 KV heads, 3584 / 28 = 128 dims, bfloat16: 896 KiB per 16 tokens
    let qwen = r#"{"architectures": ["Qwen2ForCausalLM"], "hidden_size": 3584, "num_attention_heads": 28,
        "num_hidden_layers": 28, "num_key_value_heads": 4, "torch_dtype": "bfloat16"}"#;
    let ok = run(qwen);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("replay_engine.json")).unwrap()).unwrap();
    assert_eq!(json["report"]["model_page_bytes"], 28 * 4 * 128 * 2 * 2 * 16);
    refused(&run(r#"{"hidden_size": 3584, "num_attention_heads": 28}"#), "config.json: num_hidden_layers: missing");
    refused(
        &run(r#"{"num_hidden_layers": 28, "num_attention_heads": 28, "hidden_size": 3584, "torch_dtype": "int3"}"#),
        "torch_dtype: `int3` is not a known dtype",
    );
    refused(&run("not json"), "config.json: config.json: not a JSON object");
    let both = kvtier(&["replay", "--layout", "mistral-7b", "--layout-config", config.to_str().unwrap()]);
    refused(&both, "cannot be used with");
}
