//! The storage contract against the object-store implementation as several
//! instances run it with `--coord redis://…`: every instance of a place
//! shares one coordinator in a real Redis (Debian's redis-server, AOF with
//! `appendfsync always`, started by the test on a Unix socket), under a
//! namespace of the place's own; a case's "reopen" is a second instance
//! joining the same bucket.
//!
//! Reported as ignored, with the reason, where redis-server is not
//! installed; a failure instead under `STEP_REQUIRE_ALL_TESTS`.

use std::sync::Arc;
use std::time::Duration;

use step_server::store::object::coord::{Coord, RedisCoord};
use step_tests::contract::{CASES, run_case};
use step_tests::object_subject::ObjectSubject;
use step_tests::prereq::{self, block_on_threads};
use step_tests::redis::Redis;

fn main() {
    let args = libtest_mimic::Arguments::from_args();
    let redis: Result<Arc<Redis>, String> = if args.list {
        Err("only listing".into())
    } else {
        Redis::start().map(Arc::new)
    };
    let trials = CASES
        .iter()
        .map(|&case| {
            let redis = redis.clone();
            prereq::needs(
                case,
                move || redis,
                move |redis| {
                    block_on_threads(4, async move {
                        let url = redis.url();
                        let subject = ObjectSubject::in_memory().coordinated(move |ns| {
                            Arc::new(
                                RedisCoord::new(&url, ns, Duration::from_secs(3600))
                                    .expect("a redis URL"),
                            ) as Arc<dyn Coord>
                        });
                        run_case(&subject, case).await;
                    })
                },
            )
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    drop(redis);
    conclusion.exit()
}
