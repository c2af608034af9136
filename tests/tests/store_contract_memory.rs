//! The storage contract (`step_tests::contract`) against the object-store
//! implementation on `object_store`'s in-memory store: the same code that
//! serves S3, fast enough for every run. One test per case.

use step_tests::object_subject::ObjectSubject;

step_tests::storage_contract!(ObjectSubject::in_memory());
