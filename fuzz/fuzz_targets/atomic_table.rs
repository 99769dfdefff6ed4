#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| interlink_fuzz::atomic_table::run(data));
