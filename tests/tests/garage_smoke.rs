//! The test S3 server works, and behaves as the storage layer assumes: a
//! Garage node (`step_tests::garage`) started on free loopback ports,
//! driven through `object_store`'s S3 client as the server drives it.
//!
//! Reported as ignored, with the reason, where Garage is not installed
//! (tests/garage/install.sh installs it); a failure instead under
//! `STEP_REQUIRE_ALL_TESTS` (see `step_tests::prereq`).
//!
//! The "facts" test pins down what Garage does where S3 servers differ, so
//! that a Garage upgrade that changes one is noticed: conditional writes are
//! ignored (never rely on them), parts have no minimum size (AWS has one:
//! never depend on that either), a multipart ETag is not the content md5.

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::multipart::MultipartStore;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use step_core::digest::md5_hex;
use step_tests::garage::Garage;
use step_tests::pattern;
use step_tests::prereq::{self, block_on};

fn main() {
    prereq::main(vec![
        prereq::needs(
            "objects_put_get_list_delete_and_a_three_part_multipart_upload",
            Garage::start,
            |g| block_on(objects_put_get_list_delete_and_a_three_part_multipart_upload(g)),
        ),
        prereq::needs(
            "garage_facts_the_store_must_not_rely_on",
            Garage::start,
            |g| block_on(garage_facts_the_store_must_not_rely_on(g)),
        ),
        prereq::needs(
            "a_multipart_upload_survives_a_new_client_and_a_garage_crash",
            Garage::start,
            |g| {
                block_on(a_multipart_upload_survives_a_new_client_and_a_garage_crash(
                    g,
                ))
            },
        ),
    ]);
}

const MIB: usize = 1 << 20;

async fn read_all(s3: &dyn ObjectStore, path: &Path) -> Bytes {
    s3.get(path)
        .await
        .unwrap_or_else(|e| panic!("get {path}: {e}"))
        .bytes()
        .await
        .unwrap_or_else(|e| panic!("read {path}: {e}"))
}

async fn keys(s3: &dyn ObjectStore, prefix: &str) -> Vec<String> {
    let mut keys: Vec<String> = s3
        .list(Some(&Path::from(prefix)))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .expect("list");
    keys.sort();
    keys
}

fn is_not_found(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. })
}

async fn objects_put_get_list_delete_and_a_three_part_multipart_upload(garage: Garage) {
    // The node's layout is what `--single-node` made: this node, one zone.
    let status = garage.cli(&["status"]).expect("garage status");
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "garage status: {status:?}");
    assert!(
        text.contains("dc1"),
        "one node with a role in zone dc1: {text}"
    );

    let s3 = garage.object_store();
    let s3 = s3.as_ref();
    let body = Bytes::from(pattern(100_000, 1));
    let a = Path::from("smoke/dir/a");
    let put = s3.put(&a, body.clone().into()).await.expect("put");
    assert_eq!(
        put.e_tag.as_deref().map(|t| t.trim_matches('"')),
        Some(md5_hex(&body).as_str()),
        "a single PUT's ETag is its md5"
    );
    assert_eq!(read_all(s3, &a).await, body);
    let head = s3.head(&a).await.expect("head");
    assert_eq!(head.size, body.len() as u64);
    assert_eq!(
        s3.get_range(&a, 1000..1010).await.expect("range"),
        body.slice(1000..1010)
    );
    // Keys sort as S3 sorts them (bytes), across "directories".
    for name in ["smoke/dir/b", "smoke/dir/c/d", "smoke/e"] {
        s3.put(&Path::from(name), Bytes::from_static(b"x").into())
            .await
            .expect("put");
    }
    assert_eq!(
        keys(s3, "smoke").await,
        ["smoke/dir/a", "smoke/dir/b", "smoke/dir/c/d", "smoke/e"]
    );
    let after: Vec<String> = s3
        .list_with_offset(Some(&Path::from("smoke")), &Path::from("smoke/dir/b"))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .expect("list after an offset");
    assert_eq!(
        after,
        ["smoke/dir/c/d", "smoke/e"],
        "listing resumes after a key"
    );
    let level = s3
        .list_with_delimiter(Some(&Path::from("smoke/dir")))
        .await
        .expect("list one level");
    let objects: Vec<String> = level
        .objects
        .iter()
        .map(|o| o.location.to_string())
        .collect();
    let dirs: Vec<String> = level
        .common_prefixes
        .iter()
        .map(|p| p.to_string())
        .collect();
    assert_eq!(objects, ["smoke/dir/a", "smoke/dir/b"]);
    assert_eq!(dirs, ["smoke/dir/c"]);

    s3.delete(&a).await.expect("delete");
    let gone = s3.head(&a).await.expect_err("deleted");
    assert!(is_not_found(&gone), "{gone}");
    let gone = s3.get(&a).await.expect_err("deleted");
    assert!(is_not_found(&gone), "{gone}");
    s3.delete(&a)
        .await
        .expect("deleting what is not there succeeds (S3 semantics)");

    // Three parts as AWS allows them (all but the last at least 5 MiB),
    // sent out of order as a threaded client's blocks complete.
    let s3m = garage.s3();
    let big = Path::from("smoke/multipart");
    let parts = [pattern(5 * MIB, 2), pattern(5 * MIB, 3), pattern(1234, 4)];
    let id = s3m.create_multipart(&big).await.expect("create multipart");
    let mut ids = vec![None, None, None];
    for idx in [2, 0, 1] {
        let part = Bytes::from(parts[idx].clone());
        ids[idx] = Some(
            s3m.put_part(&big, &id, idx, PutPayload::from(part))
                .await
                .expect("put part"),
        );
    }
    let ids = ids.into_iter().map(|p| p.expect("every part")).collect();
    assert!(
        s3.head(&big).await.is_err(),
        "an unfinished multipart upload is not an object"
    );
    let done = s3m
        .complete_multipart(&big, &id, ids)
        .await
        .expect("complete");
    let whole: Vec<u8> = parts.concat();
    assert_eq!(read_all(s3, &big).await.as_ref(), whole.as_slice());
    let etag = done.e_tag.expect("an ETag");
    assert!(
        etag.trim_matches('"').ends_with("-3") && !etag.contains(&md5_hex(&whole)),
        "a multipart ETag is md5-of-md5s-N, not the content md5: {etag}"
    );
}

async fn garage_facts_the_store_must_not_rely_on(garage: Garage) {
    let s3 = garage.object_store();
    let s3 = s3.as_ref();
    let key = Path::from("facts/first-save-wins");
    s3.put(&key, Bytes::from_static(b"first").into())
        .await
        .expect("put");
    // If-None-Match: * — AWS answers 412 to a second create; Garage does not.
    let create = PutOptions::from(PutMode::Create);
    let second = s3
        .put_opts(&key, Bytes::from_static(b"second").into(), create)
        .await;
    assert!(
        second.is_ok(),
        "Garage now honours If-None-Match ({second:?}): the notes say it ignores it; update them"
    );
    assert_eq!(
        read_all(s3, &key).await.as_ref(),
        b"second",
        "PutMode::Create replaced an existing object on Garage: never rely on it"
    );
    // If-Match with an ETag that is not the object's: ignored as well.
    let stale = PutOptions::from(PutMode::Update(UpdateVersion {
        e_tag: Some("\"00000000000000000000000000000000\"".into()),
        version: None,
    }));
    let third = s3
        .put_opts(&key, Bytes::from_static(b"third").into(), stale)
        .await;
    assert!(
        third.is_ok(),
        "Garage now honours If-Match ({third:?}): update the notes"
    );
    assert_eq!(read_all(s3, &key).await.as_ref(), b"third");

    // No minimum part size on Garage (AWS refuses parts under 5 MiB but the
    // last with EntityTooSmall): a store must not depend on this.
    let s3m = garage.s3();
    let tiny = Path::from("facts/tiny-parts");
    let id = s3m.create_multipart(&tiny).await.expect("create");
    let mut ids = Vec::new();
    for (idx, byte) in [b"a", b"b", b"c"].into_iter().enumerate() {
        ids.push(
            s3m.put_part(&tiny, &id, idx, PutPayload::from_static(byte))
                .await
                .expect("part"),
        );
    }
    s3m.complete_multipart(&tiny, &id, ids)
        .await
        .expect("Garage completes 1-byte parts");
    assert_eq!(read_all(s3, &tiny).await.as_ref(), b"abc");
}

async fn a_multipart_upload_survives_a_new_client_and_a_garage_crash(mut garage: Garage) {
    // A server that restarts keeps only the upload id (in its own records
    // in the bucket): the parts must still complete from a new client, and
    // after the S3 server itself crashed.
    let path = Path::from("resume/file");
    let first = pattern(5 * MIB, 5);
    let second = pattern(77, 6);
    let id = {
        let s3m = garage.s3();
        let id = s3m.create_multipart(&path).await.expect("create");
        s3m.put_part(&path, &id, 0, Bytes::from(first.clone()).into())
            .await
            .expect("part 0");
        id
    };
    let kept = Path::from("resume/kept");
    garage
        .object_store()
        .put(&kept, Bytes::from_static(b"kept").into())
        .await
        .expect("put");

    garage.kill();
    let down = garage.object_store().head(&kept).await.expect_err("down");
    assert!(
        !is_not_found(&down),
        "an unreachable server is an error, never \"not found\": {down}"
    );
    garage.restart().expect("garage restarts on its data");

    let s3m = garage.s3();
    let s3 = garage.object_store();
    assert_eq!(read_all(s3.as_ref(), &kept).await.as_ref(), b"kept");
    // Part 0 again (a retry after an unknown outcome) replaces it.
    let p0 = s3m
        .put_part(&path, &id, 0, Bytes::from(first.clone()).into())
        .await
        .expect("part 0 again");
    let p1 = s3m
        .put_part(&path, &id, 1, Bytes::from(second.clone()).into())
        .await
        .expect("part 1");
    s3m.complete_multipart(&path, &id, vec![p0, p1])
        .await
        .expect("complete after the crash");
    assert_eq!(
        read_all(s3.as_ref(), &path).await.as_ref(),
        [first, second].concat().as_slice()
    );

    // An aborted upload leaves nothing.
    let gone = Path::from("resume/aborted");
    let id = s3m.create_multipart(&gone).await.expect("create");
    s3m.put_part(&gone, &id, 0, PutPayload::from_static(b"x"))
        .await
        .expect("part");
    s3m.abort_multipart(&gone, &id).await.expect("abort");
    assert_eq!(
        keys(s3.as_ref(), "resume").await,
        ["resume/file", "resume/kept"]
    );
    let err = s3m
        .put_part(&gone, &id, 1, PutPayload::from_static(b"y"))
        .await
        .expect_err("no parts into an aborted upload");
    assert!(!err.to_string().is_empty());
}
