//! step-server's log written to a file: no colour codes, and with
//! `--log-format json` one JSON object per line.

mod support;

use support::ServerProc;

#[tokio::test]
async fn log_in_a_file_is_plain_text_or_one_json_object_per_line() {
    let dir = tempfile::tempdir().expect("dir");
    for format in ["text", "json"] {
        let log = dir.path().join(format!("{format}.log"));
        let server =
            ServerProc::start(&dir.path().join("data"), &log, &["--log-format", format]).await;
        // A connection opened and closed: lines with span fields.
        drop(
            tokio::net::TcpStream::connect(server.addr)
                .await
                .expect("connect"),
        );
        server.terminate();
        let text = std::fs::read_to_string(&log).expect("log");
        assert!(!text.contains("\x1b["), "colour codes in a file: {text}");
        assert!(text.contains("Server is ready"), "{text}");
        if format == "json" {
            for line in text.lines() {
                let v: serde_json::Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("not one JSON object ({e}): {line}"));
                assert!(v["level"].is_string() && v["message"].is_string(), "{v}");
            }
            assert!(text.contains("\"message\":\"connection closed\""), "{text}");
        }
    }
}
