#![no_main]
//! `cargo +nightly fuzz run bundle_config`: see docs/fuzzing.md.
libfuzzer_sys::fuzz_target!(|data: &[u8]| vmt_registry::fuzz::bundle_config(data));
