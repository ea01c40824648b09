#![no_main]
//! `cargo +nightly fuzz run signature_files`: see docs/fuzzing.md.
libfuzzer_sys::fuzz_target!(|data: &[u8]| vmt_registry::fuzz::signature_files(data));
