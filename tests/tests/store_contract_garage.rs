//! The storage contract (`step_tests::contract`) against the object-store
//! implementation on a real S3 server: one Garage node on free loopback
//! ports (`step_tests::garage`) shared by every case, each case under a
//! prefix of its own in the one bucket.
//!
//! Reported as ignored, with the reason, where Garage is not installed
//! (tests/garage/install.sh installs it); a failure instead under
//! `STEP_REQUIRE_ALL_TESTS` (see `step_tests::prereq`).

use std::sync::Arc;

use step_tests::contract::{CASES, run_case};
use step_tests::garage::Garage;
use step_tests::object_subject::ObjectSubject;
use step_tests::prereq::{self, block_on_threads};

fn main() {
    let args = libtest_mimic::Arguments::from_args();
    let garage: Result<Arc<Garage>, String> = if args.list {
        Err("only listing".into())
    } else {
        Garage::start().map(Arc::new)
    };
    let trials = CASES
        .iter()
        .map(|&case| {
            let garage = garage.clone();
            prereq::needs(
                case,
                move || garage,
                move |garage| {
                    block_on_threads(4, async move {
                        let subject = ObjectSubject::on(move || garage.object_store());
                        run_case(&subject, case).await;
                    })
                },
            )
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    // Stops the Garage node (exit would skip its drop).
    drop(garage);
    conclusion.exit()
}
