//! # kvtier-cli
//!
//! The tools built on the [`kvtier`] library, kept out of it so that a runtime embedding kvtier
//! compiles none of them: the Mooncake trace reader ([`trace`]), the replays ([`replay`]: the
//! kvcache-simulator-compatible hit-rate model, the engine replay through a real G1 + G2 + G3
//! [`kvtier::offload::TieredCache`], synthetic traces, SVG charts) and the `kvtier` command that
//! drives them, and the machine probe ([`probe`]: memcpy and SSD bandwidths through kvtier's own IO
//! engines, written as a profile the planners read).
//!
//! ## How a replay runs
//! 1. [`trace::Trace::read_path`] reads a JSONL trace; a bad line fails the read with its file
//!    and line number ([`Error::Trace`]), or is counted and skipped.
//! 2. [`replay::PrefixPlan::build`] turns it into a prefix tree, and [`replay::SimReport::run`]
//!    replays each capacity x policy point through it; or [`replay::engine::run`] drives the
//!    requests through the real engine with simulated lifetimes.
//! 3. The reports serialize to JSON, and [`replay::chart`] draws them.
//!
//! ```
//! use kvtier_cli::replay::{PrefixPlan, SimConfig, SimReport};
//! use kvtier_cli::trace::{Trace, TraceOptions};
//! let text = "{\"timestamp\": 0, \"input_length\": 600, \"output_length\": 9, \"hash_ids\": [7, 8]}\n";
//! let trace = Trace::parse_str(&text.repeat(2), &TraceOptions::default())?;
//! let report = SimReport::run(&PrefixPlan::build(&trace), &SimConfig::default().with_capacities(vec![2]), |_| {})?;
//! assert_eq!(report.points[0].hit_rate, 1.0); // the second request finds both blocks
//! # Ok::<(), kvtier_cli::Error>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod error;
pub mod model;
pub mod plan;
pub mod probe;
pub mod replay;
pub mod scratch;
pub mod trace;

pub use error::{Error, Result};
