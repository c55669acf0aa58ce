#![no_main]
//! Model and index files from arbitrary bytes (see `fuzz/harness.rs`).

include!("../harness.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| load_file(data));
