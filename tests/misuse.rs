//! Calls the docs rule out, made by a client written from the docs alone: each is refused with
//! an error that says what is wrong, and changes nothing.

use kvtier::{BatchTables, BlockCondition, BlockId, CacheConfig, Dtype, Error, ExtraKeys, KvCache, KvLayout};

fn cache(blocks: usize) -> KvCache {
    let layout = KvLayout::new(1, 1, 4, Dtype::F16, 4).unwrap();
    KvCache::new(CacheConfig::new(layout, blocks).with_watermark(0.0)).unwrap()
}

fn keys() -> ExtraKeys {
    ExtraKeys::default()
}

/// Two caches used to issue the same first id, and freeing cache 1's id on cache 2 freed
/// cache 2's own sequence.
#[test]
fn a_sequence_id_only_works_on_its_own_cache() {
    let (c1, c2) = (cache(8), cache(8));
    let a = c1.add_sequence(&[1, 2, 3], &keys()).unwrap().seq;
    let b = c2.add_sequence(&[4, 5, 6, 7, 8], &keys()).unwrap().seq;
    let before = c2.metrics();
    let foreign = |r: Result<(), Error>| matches!(r, Err(Error::ForeignSequence(s)) if s == a);
    assert!(foreign(c2.free(a)), "cache 2 freed an id cache 1 issued");
    assert!(foreign(c2.append_tokens(a, &[9]).map(|_| ())));
    assert!(foreign(c2.lock().tokens(a).map(|_| ())));
    assert!(foreign(c2.export_batch(&[b, a], &mut BatchTables::new())));
    assert_eq!(c2.metrics(), before);
    assert_eq!(c2.lock().tokens(b).unwrap(), &[4, 5, 6, 7, 8]);
    assert_ne!(a, b);
    c1.free(a).unwrap();
    c2.free(b).unwrap();
}

/// `decode_step` with a sequence twice used to append to it twice and export a slot mapping
/// with its slots twice; the docs say each sequence appears once.
#[test]
fn decode_step_refuses_a_repeated_sequence() {
    let c = cache(8);
    let s = c.add_sequence(&[1, 2, 3], &keys()).unwrap().seq;
    let t = c.add_sequence(&[4, 5], &keys()).unwrap().seq;
    let mut core = c.lock();
    core.commit(s).unwrap();
    core.commit(t).unwrap();
    let before = core.metrics();
    let (mut tables, mut copies) = (BatchTables::new(), Vec::new());
    let err = core.decode_step(&[s, t, s], &[7, 8, 9], &mut tables, &mut copies);
    assert!(
        matches!(err, Err(Error::DuplicateSequence(d)) if d == s),
        "a repeated sequence was not refused: {err:?}, slot mapping {:?}",
        tables.slot_mapping()
    );
    assert_eq!(core.metrics(), before);
    assert_eq!(core.tokens(s).unwrap(), &[1, 2, 3]);
    assert_eq!(core.tokens(t).unwrap(), &[4, 5]);
    // the same batch without the repeat goes through, and so does the next step
    core.decode_step(&[s, t], &[7, 8], &mut tables, &mut copies).unwrap();
    assert_eq!(tables.slot_mapping().len(), 2);
    core.decode_step(&[t, s], &[9, 9], &mut tables, &mut copies).unwrap();
    assert_eq!(tables.seq_lens(), &[4, 5]);
    core.check_invariants().unwrap();
}

/// Writing the page of a block that exists but may not be written used to say the block was
/// "outside the pool".
#[test]
fn writing_a_block_in_the_wrong_state_says_so() {
    let c = cache(4);
    let page = vec![7u8; c.layout().page_bytes()];
    let a = c.add_sequence(&[1, 2, 3, 4, 5], &keys()).unwrap().seq;
    let table = c.lock().block_table(a).unwrap().to_vec();
    c.write_page(table[0], &page).unwrap();
    c.commit(a).unwrap(); // block 0 is full: committed, its content final
    let committed = c.write_page(table[0], &page).unwrap_err();
    assert!(
        matches!(committed, Error::WrongBlockState { block, found: BlockCondition::Committed, needed: BlockCondition::Writable } if block == table[0]),
        "committed block: {committed}"
    );
    assert!(committed.to_string().contains("committed"), "{committed}");
    let free = BlockId(3); // in range, never allocated
    let unheld = c.write_page(free, &page).unwrap_err();
    assert!(matches!(unheld, Error::WrongBlockState { found: BlockCondition::Free, .. }), "free block: {unheld}");
    let mut out = vec![0u8; page.len()];
    let unread = c.read_page(free, &mut out).unwrap_err();
    assert!(
        matches!(unread, Error::WrongBlockState { found: BlockCondition::Free, needed: BlockCondition::Readable, .. }),
        "free block: {unread}"
    );
    // a block shared by a prefix hit is read-only too
    let b = c.add_sequence(&[1, 2, 3, 4, 6], &keys()).unwrap().seq;
    assert_eq!(c.lock().block_table(b).unwrap()[0], table[0]);
    let shared = c.write_page(table[0], &page).unwrap_err();
    assert!(matches!(shared, Error::WrongBlockState { found: BlockCondition::Committed, .. }), "{shared}");
    c.free(b).unwrap();
    // out of range is still out of range
    assert!(matches!(c.write_page(BlockId(4), &page), Err(Error::InvalidBlock { capacity: 4, .. })));
    c.free(a).unwrap();
}

/// `KvLayout::preset("foo")` used to say "layout preset unknown name" without the presets, and
/// a value out of range did not say which value it was.
#[test]
fn configuration_errors_carry_the_value_and_what_is_accepted() {
    let err = KvLayout::preset("foo", 16).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("\"foo\""), "{message}");
    for name in KvLayout::PRESETS {
        assert!(message.contains(name), "{message} does not list {name}");
    }
    assert_eq!(err.config_field(), Some("layout preset"));

    let layout = KvLayout::new(1, 1, 4, Dtype::F16, 4).unwrap();
    let err = KvCache::new(CacheConfig::new(layout, 8).with_watermark(1.5)).err().unwrap();
    assert!(
        matches!(&err, Error::OutOfRange { field: "watermark", value, expected: "in [0, 1)" } if value == "1.5"),
        "{err}"
    );
    let err = kvtier::offload::OffloadConfig::default().with_workers(65).validate().unwrap_err();
    assert!(matches!(&err, Error::OutOfRange { field: "workers", value, .. } if value == "65"), "{err}");
    assert_eq!(err.to_string(), "invalid configuration: workers = 65 is not accepted (expected 0..=64)");
    let err = KvLayout::new(1, 0, 4, Dtype::F16, 4).unwrap_err();
    assert!(matches!(&err, Error::OutOfRange { field: "kv_heads", value, .. } if value == "0"), "{err}");
}
