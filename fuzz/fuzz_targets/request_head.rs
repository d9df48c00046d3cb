//! The HTTP edge's request head parser (every visitor request starts here).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| showoff_server::fuzzing::request_head(data));
