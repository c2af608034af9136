//! The golden conformance vectors (as `conformance.rs` replays them over the
//! disk store) replayed against a step-server whose storage is the
//! object-store implementation on a real S3 server: one Garage node on free
//! loopback ports (`step_tests::garage`).
//!
//! Reported as ignored, with the reason, where Garage is not installed
//! (tests/garage/install.sh installs it); a failure instead under
//! `STEP_REQUIRE_ALL_TESTS` (see `step_tests::prereq`).

// The replay harness is shared with conformance.rs, whose own unit tests run
// there (this target has no test harness to run them).
#[allow(dead_code, unused_imports)]
#[path = "conformance/mod.rs"]
mod harness;

use std::sync::Arc;

use step_server::store::StoreLimits;
use step_server::store::object::ObjectStorage;
use step_tests::garage::Garage;
use step_tests::prereq::{self, block_on_threads};
use step_tests::{TestConfig, TestServer};

fn main() {
    prereq::main(vec![prereq::needs(
        "conformance_vectors_on_s3",
        Garage::start,
        |garage| {
            block_on_threads(2, async move {
                let storage = ObjectStorage::new(
                    garage.object_store(),
                    "conformance",
                    StoreLimits::default(),
                );
                let server = TestServer::start_with(TestConfig {
                    storage: Some(Arc::new(storage)),
                    ..TestConfig::default()
                })
                .await;
                harness::suite::replay_and_check(server).await;
            });
        },
    )]);
}
