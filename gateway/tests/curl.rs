//! Runs tests/shell/curl_gateway.sh: the gateway binary driven by curl.

use std::process::Command;

#[test]
fn curl_drives_the_gateway_binary() {
    if Command::new("curl").arg("--version").output().is_err() {
        eprintln!("skipped: curl is not installed");
        return;
    }
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
