//! The serving example's equivalence check: a small G1 (prefixes offloaded to G2/G3 and
//! onboarded again) gives every token and logit bit-identical to a G1 that never onboards.

#[allow(dead_code)] // the example's `main` is not called here
#[path = "../examples/serve.rs"]
mod serve;

mod common;
use common::TestDir;

#[test]
fn offloaded_and_onboarded_prefixes_give_bit_identical_outputs() {
    let dir = TestDir::new("serve");
    let (small, large) = serve::equivalence(serve::SMALL_G1, dir.path(), false).unwrap();
    let e = &small.metrics.engine;
    assert!(e.g2_to_g1.pages > 0 && e.g3_to_g1.pages > 0, "prefixes must come back from both tiers: {e:?}");
    assert_eq!(small.metrics.g3.map(|d| d.corrupt), Some(0));
    let l = &large.metrics.engine;
    assert_eq!(l.g2_to_g1.pages + l.g3_to_g1.pages, 0, "the large G1 never onboards");
    assert!(small.outputs.iter().all(|o| !o.tokens.is_empty() && o.logits.len() == o.tokens.len()));
    // The prefix cache did its job in both runs.
    assert!(small.cached_tokens > 0 && large.cached_tokens >= small.cached_tokens);
}
