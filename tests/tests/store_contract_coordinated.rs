//! The storage contract against the object-store implementation as several
//! instances run it (`--coord`): every instance of a place shares one
//! coordinator, so a case's "reopen" is a second instance joining the same
//! bucket, and each operation goes through leases, the coordinator's
//! current upload and its block marks. Coordinated in memory here (fast,
//! every run); `store_contract_redis.rs` runs the same with Redis.

use step_tests::object_subject::ObjectSubject;

step_tests::storage_contract!(ObjectSubject::coordinated_in_memory());
