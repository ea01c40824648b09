#![no_main]
//! `cargo +nightly fuzz run mat`: see docs/fuzzing.md.
libfuzzer_sys::fuzz_target!(|data: &[u8]| vmt_hub::fuzz::mat(data));
