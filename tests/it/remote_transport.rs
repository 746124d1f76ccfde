//! The remote transport against the test server of the selected backend (S3, Azure or GCS behind
//! the fault-injecting proxy): verified round trips, no overwrites, compare-and-swap pointers,
//! a wrong key told from an outage, and bounded, loud failure when the server is down, stalls,
//! errors or corrupts data.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use crate::support::backend::Kind;
use crate::support::s3_server::TestS3;
use bytes::Bytes;
use rand::RngCore;
use warmcache::remote::{
    CondPut, NoProgress, Progress, PutOutcome, Remote, RemoteError, RemoteSettings, RemoteUrl,
};

fn remote(server: &TestS3, settings: RemoteSettings) -> Remote {
    let url = format!("{}://{}", server.kind().scheme(), server.bucket());
    Remote::new(&RemoteUrl::parse(&url).unwrap(), settings).unwrap()
}

fn random_file(path: &Path, len: usize) -> String {
    let mut data = vec![0u8; len];
    rand::rng().fill_bytes(&mut data);
    std::fs::write(path, &data).unwrap();
    blake3::hash(&data).to_hex().to_string()
}

#[derive(Default)]
struct Counter(std::sync::atomic::AtomicU64);

impl Progress for Counter {
    fn advance(&self, bytes: u64) {
        self.0.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
    }
}

#[test]
fn multipart_sized_file_round_trips_with_its_digest_verified() {
    let server = TestS3::start();
    let remote = remote(&server, server.settings());
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.bin");
    let len = 20 * 1024 * 1024 + 12_345;
    let digest = random_file(&src, len);

    let uploaded = Counter::default();
    assert_eq!(
        remote.put_file("blobs/big", &src, &uploaded).unwrap(),
        PutOutcome::Created
    );
    assert_eq!(uploaded.0.into_inner(), len as u64);
    let meta = remote.head("blobs/big").unwrap().expect("uploaded object");
    assert_eq!(meta.size, len as u64);
    // The large-object path was really taken: 5 parts of at most 5 MiB (S3 part uploads, Azure
    // blocks), as the server saw them.
    assert_eq!(server.part_uploads(), 5, "{meta:?}");

    let dest = dir.path().join("dest.bin");
    let downloaded = Counter::default();
    let report = remote
        .get_to_file("blobs/big", &dest, Some(&digest), &downloaded)
        .unwrap();
    assert_eq!(report.bytes, len as u64);
    assert_eq!(report.blake3, digest);
    assert_eq!(report.parts, 5, "20 MiB + a bit in 5 MiB parts");
    assert_eq!(downloaded.0.into_inner(), len as u64);
    assert!(std::fs::read(&src).unwrap() == std::fs::read(&dest).unwrap());
}

#[test]
fn streamed_upload_round_trips() {
    let server = TestS3::start();
    let remote = remote(&server, server.settings());
    let mut data = vec![0u8; 11 * 1024 * 1024];
    rand::rng().fill_bytes(&mut data);
    assert_eq!(
        remote.put_stream("streamed", &data[..]).unwrap(),
        PutOutcome::Created
    );
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("out");
    let expected = blake3::hash(&data).to_hex().to_string();
    remote
        .get_to_file("streamed", &dest, Some(&expected), &NoProgress)
        .unwrap();

    // A small stream is one create-only PUT.
    assert_eq!(
        remote.put_stream("small", &b"tiny"[..]).unwrap(),
        PutOutcome::Created
    );
    assert_eq!(
        remote.get_bytes("small").unwrap().unwrap(),
        Bytes::from_static(b"tiny")
    );
}

#[test]
fn missing_objects_are_none_or_not_found() {
    let server = TestS3::start();
    let remote = remote(&server, server.settings());
    assert!(remote.head("nope").unwrap().is_none());
    assert!(remote.get_bytes("nope").unwrap().is_none());
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("dest");
    let err = remote.get_to_file("nope", &dest, None, &NoProgress).unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(!dest.exists());
}

/// A wrong key is `Denied` (its message names the fix), not an outage that would be retried and
/// open the breaker; on the backends that check keys (s3s and Azurite; moto and fake-gcs-server
/// accept any).
#[test]
fn a_wrong_key_is_denied_not_an_outage() {
    let server = TestS3::start();
    let mut settings = server.settings();
    match server.kind() {
        Kind::S3s => settings.s3.secret_access_key = Some("not-the-secret-key".to_owned()),
        // Well-formed (base64), but not the account's key.
        Kind::Azurite => {
            settings.azure.access_key = Some("d3Jvbmcga2V5IGZvciBkZXZzdG9yZWFjY291bnQx".to_owned())
        }
        Kind::Moto | Kind::Gcs => {
            eprintln!(
                "a_wrong_key_is_denied_not_an_outage: skipped on {}: the emulator checks no keys",
                server.kind().name()
            );
            return;
        }
    }
    let err = remote(&server, settings).head("anything").unwrap_err();
    assert!(matches!(err, RemoteError::Denied { .. }), "{err}");
    assert!(!err.is_outage(), "{err}");
}

#[test]
fn existing_objects_are_never_overwritten() {
    let server = TestS3::start();
    let remote = remote(&server, server.settings());
    let dir = tempfile::tempdir().unwrap();

    // Small objects.
    let first = dir.path().join("first");
    let second = dir.path().join("second");
    std::fs::write(&first, b"first").unwrap();
    std::fs::write(&second, b"second").unwrap();
    assert_eq!(
        remote.put_file("k", &first, &NoProgress).unwrap(),
        PutOutcome::Created
    );
    assert_eq!(
        remote.put_file("k", &second, &NoProgress).unwrap(),
        PutOutcome::AlreadyExisted
    );
    assert_eq!(
        remote.get_bytes("k").unwrap().unwrap(),
        Bytes::from_static(b"first")
    );

    // Large (multipart-sized) objects.
    let big_a = dir.path().join("big-a");
    let big_b = dir.path().join("big-b");
    let digest_a = random_file(&big_a, 6 * 1024 * 1024);
    random_file(&big_b, 6 * 1024 * 1024);
    assert_eq!(
        remote.put_file("big", &big_a, &NoProgress).unwrap(),
        PutOutcome::Created
    );
    assert_eq!(
        remote.put_file("big", &big_b, &NoProgress).unwrap(),
        PutOutcome::AlreadyExisted
    );
    let dest = dir.path().join("dest");
    remote
        .get_to_file("big", &dest, Some(&digest_a), &NoProgress)
        .unwrap();

    // A writer that found the key free but lost the race to another writer: the store's
    // create-only PUT keeps the winner's bytes.
    let mut late = remote.writer("raced").unwrap().expect("key is free");
    assert_eq!(
        remote.put_stream("raced", &b"winner"[..]).unwrap(),
        PutOutcome::Created
    );
    late.write_all(b"loser").unwrap();
    assert_eq!(late.finish().unwrap(), PutOutcome::AlreadyExisted);
    assert_eq!(
        remote.get_bytes("raced").unwrap().unwrap(),
        Bytes::from_static(b"winner")
    );
}

#[test]
fn conditional_pointer_updates_let_exactly_one_concurrent_writer_win() {
    let server = TestS3::start();
    let remote = remote(&server, server.settings());

    let CondPut::Done(mut version) = remote.put_if("pointer", Bytes::from_static(b"v0"), None).unwrap()
    else {
        panic!("creating an absent pointer must succeed");
    };
    assert_eq!(
        remote
            .put_if("pointer", Bytes::from_static(b"again"), None)
            .unwrap(),
        CondPut::Conflict
    );

    for round in 0..10 {
        let barrier = Arc::new(Barrier::new(2));
        let writers: Vec<_> = (0..2)
            .map(|writer| {
                let remote = remote.clone();
                let barrier = barrier.clone();
                let version = version.clone();
                std::thread::spawn(move || {
                    let body = Bytes::from(format!("round {round} writer {writer}"));
                    barrier.wait();
                    (
                        body.clone(),
                        remote.put_if("pointer", body, Some(&version)).unwrap(),
                    )
                })
            })
            .collect();
        let results: Vec<_> = writers.into_iter().map(|w| w.join().unwrap()).collect();
        let winners: Vec<_> = results
            .iter()
            .filter(|(_, r)| matches!(r, CondPut::Done(_)))
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        let (body, CondPut::Done(new_version)) = winners[0].clone() else {
            unreachable!()
        };
        let (current, current_version) = remote.get_versioned("pointer").unwrap().unwrap();
        assert_eq!(
            current, body,
            "round {round}: the winner's pointer is the one stored"
        );
        assert_eq!(current_version.e_tag, new_version.e_tag);
        // The version both started from is stale now.
        assert_eq!(
            remote
                .put_if("pointer", Bytes::from_static(b"stale"), Some(&version))
                .unwrap(),
            CondPut::Conflict
        );
        version = new_version;
    }
}

#[test]
fn server_down_is_an_outage_error_not_a_hang() {
    let server = TestS3::start();
    let remote = remote(&server, server.settings());
    remote.put_stream("k", &b"v"[..]).unwrap();

    server.set_down(true);
    let started = Instant::now();
    let err = remote.head("k").unwrap_err();
    eprintln!("down: {:?}: {err}", started.elapsed());
    assert!(
        matches!(
            err,
            RemoteError::Unreachable { .. } | RemoteError::TimedOut { .. }
        ),
        "{err:?}"
    );
    assert!(err.is_outage());
    assert!(err.to_string().contains(&server.url("k")), "{err}");

    server.set_down(false);
    assert!(
        remote.head("k").unwrap().is_some(),
        "works again once the server is back"
    );
}

#[test]
fn stalled_download_is_abandoned_and_leaves_nothing() {
    let server = TestS3::start();
    let remote = remote(&server, server.settings());
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let digest = random_file(&src, 7 * 1024 * 1024);
    remote.put_file("stalls", &src, &NoProgress).unwrap();

    server.set_stall(true);
    let dest = dir.path().join("dest");
    let started = Instant::now();
    let err = remote
        .get_to_file("stalls", &dest, Some(&digest), &NoProgress)
        .unwrap_err();
    eprintln!("stall: {:?}: {err}", started.elapsed());
    // The stall timeout (2 s) is far below the request timeout (20 s), so it is the stall
    // detector, not a generic timeout, that must fire.
    assert!(matches!(err, RemoteError::Stalled { .. }), "{err:?}");
    assert!(err.is_outage());
    assert!(!dest.exists(), "a stalled download must not leave a file behind");
}

#[test]
fn server_errors_are_retried_then_reported() {
    let server = TestS3::start();
    let remote = remote(&server, server.settings()); // 2 retries
    remote.put_stream("k", &b"v"[..]).unwrap();

    // Fewer failures than retries: the caller never sees them.
    server.fail_next(2);
    let before = server.requests();
    assert!(remote.head("k").unwrap().is_some());
    assert_eq!(
        server.requests() - before,
        3,
        "two failures then the retry that worked"
    );

    // More failures than retries: a clear HTTP error after 1 + 2 attempts.
    server.fail_next(1000);
    let before = server.requests();
    let err = remote.get_bytes("k").unwrap_err();
    eprintln!("500s: {err}");
    assert!(matches!(err, RemoteError::Status { status: 500, .. }), "{err:?}");
    assert!(err.is_outage());
    assert_eq!(server.requests() - before, 3);
}

#[test]
fn corrupt_bytes_fail_verification_and_leave_nothing() {
    let server = TestS3::start();
    let remote = remote(&server, server.settings());
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let digest = random_file(&src, 6 * 1024 * 1024);
    remote.put_file("obj", &src, &NoProgress).unwrap();

    server.set_corrupt(true);
    let dest = dir.path().join("dest");
    let err = remote
        .get_to_file("obj", &dest, Some(&digest), &NoProgress)
        .unwrap_err();
    eprintln!("corrupt: {err}");
    assert!(matches!(err, RemoteError::DigestMismatch { .. }), "{err:?}");
    assert!(!err.is_outage());
    assert!(
        !dest.exists(),
        "unverified bytes must not be left at the destination"
    );

    server.set_corrupt(false);
    remote
        .get_to_file("obj", &dest, Some(&digest), &NoProgress)
        .unwrap();
}

#[test]
fn breaker_opens_after_repeated_failures_and_fails_fast() {
    let server = TestS3::start();
    let settings = RemoteSettings {
        breaker_threshold: 2,
        breaker_cooldown: Duration::from_secs(600),
        ..server.settings()
    };
    let remote = remote(&server, settings.clone());
    remote.put_stream("k", &b"v"[..]).unwrap();

    server.fail_next(usize::MAX);
    for _ in 0..2 {
        let err = remote.head("k").unwrap_err();
        assert!(matches!(err, RemoteError::Status { status: 500, .. }), "{err:?}");
    }
    server.fail_next(0);
    let before = server.requests();
    let err = remote.head("k").unwrap_err();
    eprintln!("breaker: {err}");
    assert!(
        matches!(err, RemoteError::CoolingDown { failures: 2, .. }),
        "{err:?}"
    );
    assert!(err.is_outage());
    assert_eq!(server.requests(), before, "an open breaker sends no request");

    // Another client of the same endpoint and bucket in this process shares the breaker.
    let other = self::remote(&server, settings);
    assert!(matches!(
        other.head("k").unwrap_err(),
        RemoteError::CoolingDown { .. }
    ));
    assert_eq!(server.requests(), before);
}

#[test]
fn works_when_called_from_inside_another_runtime() {
    let server = TestS3::start();
    let settings = server.settings();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let server = &server;
    runtime.block_on(async move {
        let remote = remote(server, settings);
        remote.put_stream("k", &b"inside"[..]).unwrap();
        assert_eq!(
            remote.get_bytes("k").unwrap().unwrap(),
            Bytes::from_static(b"inside")
        );
        drop(remote); // dropping the client's own runtime here must not panic either
    });
}
