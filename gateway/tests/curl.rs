//! Runs tests/shell/curl_gateway.sh: the gateway binary driven by curl.
//! Without curl (or python3, which picks the script's free ports) the test is
//! reported as ignored with the reason (a failure under
//! `STEP_REQUIRE_ALL_TESTS`; see `step_tests::prereq`).

use std::process::Command;

use step_tests::prereq::{self, command_works};

fn main() {
    prereq::main(vec![prereq::needs(
        "curl_drives_the_gateway_binary",
        || command_works("curl", &[]).and_then(|()| command_works("python3", &[])),
        |()| curl_drives_the_gateway_binary(),
    )]);
}

fn curl_drives_the_gateway_binary() {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/shell/curl_gateway.sh"
    );
    let out = Command::new("bash")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_gateway"))
        .output()
        .expect("run the curl script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "curl script failed:\n{stdout}");
    assert!(stdout.contains("curl: 9 passed, 0 failed"), "{stdout}");
}
