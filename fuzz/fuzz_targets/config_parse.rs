//! Any text gives a config or errors, never a panic; errors carry a message.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(errors) = kaname_config::parse("fuzz.yaml", text) {
        assert!(!errors.0.is_empty(), "an Err without an error");
        for e in &errors.0 {
            let _ = e.to_string();
        }
    }
});
