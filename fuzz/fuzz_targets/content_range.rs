#![no_main]
//! `cargo +nightly fuzz run content_range`: see docs/fuzzing.md.
libfuzzer_sys::fuzz_target!(|data: &[u8]| vmt_registry::fuzz::content_range(data));
