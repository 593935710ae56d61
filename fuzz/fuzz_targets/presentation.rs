#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = test_support::fuzzing::presentation(data);
});
