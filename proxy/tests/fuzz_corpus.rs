//! Replays every fuzz target's corpus (`fuzz/corpus/<target>/`): the seeds, and every input
//! the fuzzer kept or found a crash with. Runs on every CI run, without a fuzzing engine.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

#[test]
fn every_corpus_input_replays_clean() {
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus"));
    let mut replayed = 0;
    for (name, target) in sluice_proxy::fuzzing::TARGETS {
        let dir = root.join(name);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        inputs.sort();
        assert!(inputs.len() >= 3, "{name}: the seed corpus is missing");
        for path in inputs {
            let data = std::fs::read(&path).unwrap();
            if let Err(e) = target(&data) {
                panic!("{name}: {} breaks an invariant: {e}", path.display());
            }
            replayed += 1;
        }
    }
    eprintln!("replayed {replayed} corpus inputs");
}
