#![no_main]
//! `cargo +nightly fuzz run tag_record`: see docs/fuzzing.md.
libfuzzer_sys::fuzz_target!(|data: &[u8]| vmt_registry::fuzz::tag_record(data));
