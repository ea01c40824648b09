#![no_main]
//! `cargo +nightly fuzz run reference`: see docs/fuzzing.md.
libfuzzer_sys::fuzz_target!(|data: &[u8]| vmt_registry::fuzz::reference(data));
