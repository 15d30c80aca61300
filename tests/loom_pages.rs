//! loom models of page memory: every page access goes through a lease of the arena, and under
//! `--cfg loom` every lease holds a loom-tracked cell access, so a model in which a page is
//! read while it is written fails. These models check that the leases themselves never let
//! that happen, whatever the interleaving (the G2 spill-versus-store model, which needs the
//! tier's crate-private staging, lives in `src/tier/host.rs` and runs with `--lib loom_`).
//! Run with `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 CARGO_TARGET_DIR=target/loom cargo
//! test --release --test loom_pages`.
#![cfg(loom)]

use kvtier::{Arena, BlockId, Error};
use loom::sync::Arc;
use loom::thread;

/// A reader and a writer race for one page, and a third thread copies it to another page:
/// every lease granted sees a whole page (never half written), and the leases that conflict
/// are refused with `PageBusy`, never granted. If the arena granted a write lease while a read
/// lease lives (or the reverse), loom's cell tracking fails the model.
#[test]
fn page_leases_never_overlap() {
    loom::model(|| {
        let arena = Arc::new(Arena::new(2, 64).unwrap());
        let writer = {
            let arena = arena.clone();
            thread::spawn(move || match arena.write(BlockId(0)) {
                Ok(mut page) => {
                    page.fill(0x55);
                    true
                }
                Err(Error::PageBusy { .. }) => false,
                Err(e) => panic!("unexpected {e}"),
            })
        };
        let copier = {
            let arena = arena.clone();
            thread::spawn(move || match arena.copy_page(BlockId(0), BlockId(1)) {
                Ok(()) => {}
                Err(Error::PageBusy { .. }) => {}
                Err(e) => panic!("unexpected {e}"),
            })
        };
        let seen = match arena.read(BlockId(0)) {
            Ok(page) => {
                let first = page[0];
                assert!(page.iter().all(|&b| b == first), "a page was read while it was written");
                Some(first)
            }
            Err(Error::PageBusy { .. }) => None,
            Err(e) => panic!("unexpected {e}"),
        };
        let wrote = writer.join().unwrap();
        copier.join().unwrap();
        if !wrote {
            // refused only because a reader held the page; it is free again now
            assert!(arena.write(BlockId(0)).is_ok());
        }
        assert!(seen.is_none_or(|b| b == 0 || b == 0x55));
        let copy = arena.read(BlockId(1)).unwrap();
        assert!(copy.iter().all(|&b| b == copy[0]), "a copy tore its source");
        assert!(!arena.is_leased(BlockId(0)));
    });
}
