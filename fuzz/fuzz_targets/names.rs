//! Host values and the tunnel naming rules.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| showoff_server::fuzzing::names(data));
