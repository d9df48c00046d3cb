//! Control and data frames, both directions.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| showoff_server::fuzzing::frame_codec(data));
