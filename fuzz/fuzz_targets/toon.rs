#![no_main]
// The target itself lives in sluice_proxy::fuzzing, where `cargo test` replays the corpus.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(e) = sluice_proxy::fuzzing::toon(data) {
        panic!("toon: {e}");
    }
});
