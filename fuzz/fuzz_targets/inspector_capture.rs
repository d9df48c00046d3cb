//! The inspector's capture over scripts of bytes each way, as a relay hands them over.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| showoff_client::fuzzing::inspector_capture(data));
