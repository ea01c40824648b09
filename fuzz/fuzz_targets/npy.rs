#![no_main]
//! `cargo +nightly fuzz run npy`: see docs/fuzzing.md.
libfuzzer_sys::fuzz_target!(|data: &[u8]| vmt_hub::fuzz::npy(data));
