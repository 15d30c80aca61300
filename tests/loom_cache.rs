//! loom models of the cache's concurrent paths. Run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release --test loom_cache`.
#![cfg(loom)]

use kvtier::{CacheConfig, Dtype, Error, ExtraKeys, KvCache, KvLayout};
use loom::sync::Arc;
use loom::thread;

fn small_cache(blocks: usize) -> Arc<KvCache> {
    let layout = KvLayout::new(1, 1, 2, Dtype::F16, 2).unwrap();
    let config = CacheConfig::new(layout, blocks).with_watermark(0.0).with_event_capacity(64);
    Arc::new(KvCache::new(config).unwrap())
}

/// Release-to-evictable (free of the owner) races a revive by a prefix hit and an eviction by
/// an unrelated request. Whatever the order: invariants hold, a hit never returns blocks whose
/// hash is not what was asked, and every block ends free or evictable.
#[test]
fn release_revive_evict() {
    loom::model(|| {
        let cache = small_cache(3);
        let prompt = [1u32, 2, 3, 4, 5];
        let owner = cache.add_sequence(&prompt, &ExtraKeys::default()).unwrap();
        cache.commit(owner.seq).unwrap();

        let c1 = cache.clone();
        let releaser = thread::spawn(move || c1.free(owner.seq).unwrap());

        let c2 = cache.clone();
        let reviver = thread::spawn(move || match c2.add_sequence(&prompt, &ExtraKeys::default()) {
            Ok(hit) => {
                // the hit may be shortened by the evictor (tail first), but every shared block
                // holds exactly the hash of its position in this prompt
                assert_eq!(hit.cached_tokens % 2, 0);
                let core = c2.lock();
                let mut hashes = Vec::new();
                core.hash_tokens(&prompt, &ExtraKeys::default(), &mut hashes);
                let table = core.block_table(hit.seq).unwrap().to_vec();
                assert_eq!(table.len(), 3);
                for (b, h) in table.iter().zip(&hashes).take(hit.cached_tokens / 2) {
                    assert_eq!(core.pool().hash_of(*b).unwrap(), Some(*h));
                }
                drop(core);
                c2.free(hit.seq).unwrap();
            }
            Err(Error::OutOfBlocks { .. }) => {}
            Err(e) => panic!("unexpected {e}"),
        });

        let c3 = cache.clone();
        let evictor = thread::spawn(move || match c3.add_sequence(&[9, 9, 9, 9], &ExtraKeys::default()) {
            Ok(o) => c3.free(o.seq).unwrap(),
            Err(Error::OutOfBlocks { .. }) => {}
            Err(e) => panic!("unexpected {e}"),
        });

        releaser.join().unwrap();
        reviver.join().unwrap();
        evictor.join().unwrap();
        let core = cache.lock();
        core.check_invariants().unwrap();
        let m = core.metrics();
        assert_eq!(m.in_use, 0);
        assert_eq!(m.free + m.evictable, 3);
    });
}

/// Two sequences forked from one parent append concurrently: exactly the writers that found
/// the partial block shared copy it, and no block leaks.
#[test]
fn concurrent_copy_on_write() {
    loom::model(|| {
        let cache = small_cache(4);
        let parent = cache.add_sequence(&[1, 2, 3], &ExtraKeys::default()).unwrap().seq;
        let child = cache.fork(parent).unwrap();
        let handles: Vec<_> = [parent, child]
            .into_iter()
            .map(|s| {
                let c = cache.clone();
                thread::spawn(move || {
                    let out = c.append_tokens(s, &[7]).unwrap();
                    c.free(s).unwrap();
                    out.copy.is_some()
                })
            })
            .collect();
        let copies = handles.into_iter().map(|h| h.join().unwrap()).filter(|c| *c).count();
        // whoever writes first copies; the other then owns the original alone and writes in place
        assert_eq!(copies, 1);
        let core = cache.lock();
        core.check_invariants().unwrap();
        assert_eq!(core.metrics().in_use, 0);
    });
}

/// Event sequence numbers stay gap-free when several threads commit and evict at once.
#[test]
fn events_are_totally_ordered() {
    loom::model(|| {
        let cache = small_cache(4);
        let handles: Vec<_> = (0..2u32)
            .map(|t| {
                let c = cache.clone();
                thread::spawn(move || {
                    let o = c.add_sequence(&[t, t, t], &ExtraKeys::default()).unwrap();
                    c.commit(o.seq).unwrap();
                    c.free(o.seq).unwrap();
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let mut events = Vec::new();
        cache.drain_events(&mut events);
        assert_eq!(events.len(), 2);
        assert!(events.windows(2).all(|w| w[1].seq_no == w[0].seq_no + 1));
        assert_eq!(cache.snapshot().hashes.len(), 2);
    });
}
