#![no_main]
//! Models built from arbitrary tensors and config, then projecting arbitrary batches
//! (see `fuzz/harness.rs`).

include!("../harness.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| build_and_project(data));
