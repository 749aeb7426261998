//! A shortened `make chaos` run (20 s of load and faults): every accepted
//! request is answered, none twice with different answers.

#[test]
fn twenty_seconds_of_chaos_lose_nothing() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgnm-chaos"))
        .args(["--duration-secs", "20", "--kill-every-ms", "2500", "--rate", "150"])
        .output()
        .expect("run pgnm-chaos");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pgnm-chaos failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("never answered: 0"), "{stdout}");
    assert!(stdout.contains("answered twice (different answers): 0"), "{stdout}");
    assert!(stdout.contains("pgnm-chaos: PASS"), "{stdout}");
}
