//! Unit tests of the local store.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::*;
use crate::{NewFile, NewManifest};

fn req(id: &str, files: &[(&str, &[u8])]) -> PublishRequest {
    PublishRequest {
        publish_id: id.into(),
        files: files
            .iter()
            .map(|(n, d)| NewFile {
                name: (*n).into(),
                data: Bytes::copy_from_slice(d),
            })
            .collect(),
        semver: None,
        unique_semver: false,
        block_size: None,
    }
}

fn no_manifest() -> Box<BuildManifest<'static>> {
    Box::new(|_| Ok(None))
}

fn manifest(seq: u64) -> Box<BuildManifest<'static>> {
    Box::new(move |d: &Draft<'_>| {
        Ok(Some(NewManifest {
            name: format!("m.{}.suit", d.seq),
            data: Bytes::from(format!("manifest {seq}")),
            sequence_number: Some(seq),
            server_built: true,
        }))
    })
}

#[test]
fn versions_are_numbered_immutable_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let s = LocalStore::open(dir.path()).unwrap();
    let v1 = s
        .publish(req("fw/app/board", &[("a.bin", b"one")]), manifest(10))
        .unwrap();
    let v2 = s
        .publish(
            req("fw/app/board", &[("a.bin", b"two"), ("b.bin", b"one")]),
            manifest(11),
        )
        .unwrap();
    assert_eq!((v1.seq, v2.seq), (1, 2));
    assert_eq!(s.latest("fw/app/board").unwrap().seq, 2);
    assert_eq!(s.generation(), 2);
    // "one" is stored once.
    assert_eq!(v1.files[0].sha256, v2.files[1].sha256);
    drop(s);
    let s = LocalStore::open(dir.path()).unwrap();
    assert_eq!(s.publish_ids(), vec!["fw/app/board".to_string()]);
    assert_eq!(s.versions("fw/app/board").len(), 2);
    assert_eq!(*s.version("fw/app/board", 1).unwrap(), *v1);
    let f = s.latest("fw/app/board").unwrap().file("a.bin").unwrap().clone();
    assert_eq!(&s.read(&f.sha256).unwrap()[..], b"two");
    let m = s.latest("fw/app/board").unwrap().manifest.clone().unwrap();
    assert_eq!(m.sequence_number, Some(11));
    assert_eq!(&s.read(&m.file.sha256).unwrap()[..], b"manifest 11");
}

#[test]
fn sequence_numbers_must_grow() {
    let dir = tempfile::tempdir().unwrap();
    let s = LocalStore::open(dir.path()).unwrap();
    s.publish(req("x", &[("a.bin", b"1")]), manifest(5)).unwrap();
    let err = s.publish(req("x", &[("a.bin", b"2")]), manifest(5)).unwrap_err();
    assert!(matches!(err, StoreError::SequenceNotIncreasing { new: 5, current: 5 }));
    assert_eq!(s.versions("x").len(), 1);
}

#[test]
fn bad_requests_are_refused_without_side_effects() {
    let dir = tempfile::tempdir().unwrap();
    let s = LocalStore::open(dir.path()).unwrap();
    assert!(matches!(
        s.publish(req("../x", &[("a", b"1")]), no_manifest()),
        Err(StoreError::InvalidPublishId(_))
    ));
    assert!(matches!(
        s.publish(req("x", &[("../a", b"1")]), no_manifest()),
        Err(StoreError::InvalidFileName(_))
    ));
    assert!(matches!(
        s.publish(req("x", &[]), no_manifest()),
        Err(StoreError::BadRequest(_))
    ));
    assert!(matches!(
        s.publish(req("x", &[("a", b"1"), ("a", b"2")]), no_manifest()),
        Err(StoreError::BadRequest(_))
    ));
    let failing: Box<BuildManifest<'static>> = Box::new(|_| Err("no key".into()));
    assert!(matches!(
        s.publish(req("x", &[("a", b"1")]), failing),
        Err(StoreError::Manifest(_))
    ));
    assert!(s.publish_ids().is_empty());
    assert_eq!(s.generation(), 0);
}

#[test]
fn a_half_written_publish_is_invisible() {
    let dir = tempfile::tempdir().unwrap();
    let s = LocalStore::open(dir.path()).unwrap();
    s.publish(req("x", &[("a.bin", b"1")]), no_manifest()).unwrap();
    drop(s);
    // What a crash between blob writes and the record link leaves behind: staged files and
    // orphan blobs, plus a truncated record that never got linked.
    std::fs::write(dir.path().join("tmp/123-0"), b"{\"format\":1,").unwrap();
    let s = LocalStore::open(dir.path()).unwrap();
    assert_eq!(s.versions("x").len(), 1);
    assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
}

#[test]
fn a_corrupt_blob_is_reported_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let s = LocalStore::open(dir.path()).unwrap();
    let v = s.publish(req("x", &[("a.bin", b"good")]), no_manifest()).unwrap();
    let d = v.files[0].sha256;
    drop(s);
    let h = d.to_hex();
    std::fs::write(dir.path().join("blobs/sha256").join(&h[..2]).join(&h), b"evil").unwrap();
    let s = LocalStore::open(dir.path()).unwrap();
    assert!(matches!(s.read(&d), Err(StoreError::Corrupt { .. })));
}

#[test]
fn removed_versions_disappear_but_numbers_are_never_reused() {
    let dir = tempfile::tempdir().unwrap();
    let s = LocalStore::open(dir.path()).unwrap();
    s.publish(req("x", &[("a.bin", b"1")]), manifest(10)).unwrap();
    s.publish(req("x", &[("a.bin", b"2")]), manifest(20)).unwrap();
    let removed = s.remove("x", 2).unwrap();
    assert_eq!(removed.seq, 2);
    assert_eq!(s.latest("x").unwrap().seq, 1);
    assert!(matches!(s.remove("x", 2), Err(StoreError::NotFound(_))));
    // Sequence 15 is below the removed version's 20: refused, even after a restart.
    drop(s);
    let s = LocalStore::open(dir.path()).unwrap();
    assert_eq!(s.latest("x").unwrap().seq, 1);
    assert!(matches!(
        s.publish(req("x", &[("a.bin", b"3")]), manifest(15)),
        Err(StoreError::SequenceNotIncreasing { .. })
    ));
    let v = s.publish(req("x", &[("a.bin", b"3")]), manifest(21)).unwrap();
    assert_eq!(v.seq, 3, "version 2 is not given again");
    s.remove("x", 1).unwrap();
    s.remove("x", 3).unwrap();
    assert!(s.publish_ids().is_empty());
}

fn record(dir: &Path, id: &str, seq: u64, removed: bool) -> PathBuf {
    let ext = if removed { ".json.removed" } else { ".json" };
    dir.join("ids").join(dir_name(id)).join(format!("{seq:020}{ext}"))
}

#[test]
fn a_damaged_newest_record_is_reported_and_its_number_not_reused() {
    let dir = tempfile::tempdir().unwrap();
    let s = LocalStore::open(dir.path()).unwrap();
    s.publish(req("x", &[("a.bin", b"1")]), manifest(10)).unwrap();
    s.publish(req("x", &[("a.bin", b"2")]), manifest(20)).unwrap();
    s.publish(req("x", &[("a.bin", b"3")]), manifest(30)).unwrap();
    s.remove("x", 2).unwrap();
    drop(s);
    // The newest record truncated, the removed one damaged too.
    std::fs::write(record(dir.path(), "x", 3, false), b"{\"format\":1,").unwrap();
    std::fs::write(record(dir.path(), "x", 2, true), b"garbage").unwrap();
    let s = LocalStore::open(dir.path()).unwrap();
    assert_eq!(s.damaged().len(), 2, "{:?}", s.damaged());
    assert_eq!(s.latest("x").unwrap().seq, 1);
    // Before: "version 3 … published concurrently by another process", forever.
    let v = s.publish(req("x", &[("a.bin", b"4")]), manifest(40)).unwrap();
    assert_eq!(v.seq, 4);
    drop(s);
    let s = LocalStore::open(dir.path()).unwrap();
    assert_eq!(s.latest("x").unwrap().seq, 4);
}

#[test]
fn a_record_with_a_missing_blob_does_not_block_publishing() {
    let dir = tempfile::tempdir().unwrap();
    let s = LocalStore::open(dir.path()).unwrap();
    let v = s.publish(req("x", &[("a.bin", b"only")]), no_manifest()).unwrap();
    drop(s);
    let h = v.files[0].sha256.to_hex();
    std::fs::remove_file(dir.path().join("blobs/sha256").join(&h[..2]).join(&h)).unwrap();
    let s = LocalStore::open(dir.path()).unwrap();
    assert_eq!(s.damaged().len(), 1);
    assert_eq!(s.publish(req("x", &[("a.bin", b"new")]), no_manifest()).unwrap().seq, 2);
}

#[test]
fn an_empty_format_file_from_an_interrupted_first_start_is_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("FORMAT"), b"").unwrap();
    let s = LocalStore::open(dir.path()).unwrap();
    drop(s);
    assert_eq!(std::fs::read_to_string(dir.path().join("FORMAT")).unwrap(), FORMAT);
    std::fs::write(dir.path().join("FORMAT"), b"suitcase-store 9\n").unwrap();
    assert!(matches!(LocalStore::open(dir.path()), Err(StoreError::Corrupt { .. })));
}

#[test]
fn drafts_carry_the_highest_sequence_number_ever_stored() {
    let dir = tempfile::tempdir().unwrap();
    let s = LocalStore::open(dir.path()).unwrap();
    s.publish(req("x", &[("a.bin", b"1")]), manifest(10)).unwrap();
    s.publish(req("x", &[("a.bin", b"2")]), manifest(9_999_999_999))
        .unwrap();
    s.remove("x", 2).unwrap();
    let seen = std::sync::Arc::new(Mutex::new(None));
    let seen2 = seen.clone();
    s.publish(
        req("x", &[("a.bin", b"3")]),
        Box::new(move |d: &Draft<'_>| {
            *seen2.lock() = Some((d.previous.map(|p| p.seq), d.max_sequence_number));
            Ok(None)
        }),
    )
    .unwrap();
    assert_eq!(*seen.lock(), Some((Some(1), Some(9_999_999_999))));
}

#[test]
fn a_panicking_manifest_builder_leaves_the_store_usable() {
    let dir = tempfile::tempdir().unwrap();
    let s = LocalStore::open(dir.path()).unwrap();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        s.publish(req("x", &[("a.bin", b"1")]), Box::new(|_| panic!("builder bug")))
    }));
    assert!(r.is_err());
    // Before: "store lock poisoned" for every later publish and remove.
    let v = s.publish(req("x", &[("a.bin", b"2")]), no_manifest()).unwrap();
    assert_eq!(v.seq, 1);
    assert_eq!(s.latest("x").unwrap().seq, 1);
    s.remove("x", 1).unwrap();
}

#[test]
fn a_unique_semver_is_checked_under_the_publish_lock() {
    let dir = tempfile::tempdir().unwrap();
    let s = std::sync::Arc::new(LocalStore::open(dir.path()).unwrap());
    let results: Vec<_> = (0..8)
        .map(|i| {
            let s = s.clone();
            std::thread::spawn(move || {
                let mut r = req("esp", &[("esp_v1.0.0.bin", format!("image {i}").as_bytes())]);
                r.semver = Some(semver::Version::new(1, 0, 0));
                r.unique_semver = true;
                s.publish(r, no_manifest())
            })
        })
        .map(|h| h.join().unwrap())
        .collect();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 1, "{results:?}");
    assert!(results
        .iter()
        .all(|r| r.is_ok() || matches!(r, Err(StoreError::Conflict(_)))));
    assert_eq!(s.versions("esp").len(), 1);
}

#[test]
fn large_files_are_served_range_by_range_within_the_memory_budget() {
    let dir = tempfile::tempdir().unwrap();
    let s = LocalStore::open(dir.path()).unwrap();
    s.set_cache_budget(1 << 20);
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let small = vec![7u8; 1000];
    let v = s
        .publish(req("x", &[("big.bin", &big), ("small.bin", &small)]), no_manifest())
        .unwrap();
    for _ in 0..3 {
        let b = s.blob(&v.files[0]).unwrap();
        assert!(matches!(b, Blob::File { .. }));
        assert_eq!(&b.range(2_999_000, 3_000_000).unwrap()[..], &big[2_999_000..]);
    }
    assert!(matches!(s.blob(&v.files[1]).unwrap(), Blob::Memory(_)));
    assert!(s.cache_bytes() <= 1 << 20, "{}", s.cache_bytes());
    // A large blob whose file was truncated is refused, not served short.
    drop(s);
    let h = v.files[0].sha256.to_hex();
    let p = dir.path().join("blobs/sha256").join(&h[..2]).join(&h);
    std::fs::write(&p, &big[..1000]).unwrap();
    let s = LocalStore::open(dir.path()).unwrap();
    s.set_cache_budget(1 << 20);
    assert!(s.damaged().is_empty(), "the blob exists; only its length is wrong");
    assert!(matches!(s.blob(&v.files[0]), Err(StoreError::Corrupt { .. })));
}

#[test]
fn record_numbers_come_from_names() {
    assert_eq!(record_number("00000000000000000003.json"), Some(3));
    assert_eq!(record_number("00000000000000000003.json.removed"), Some(3));
    assert_eq!(record_number("00000000000000000012.json.removed.bak"), Some(12));
    assert_eq!(record_number("x.json"), None);
    assert_eq!(record_number("12.txt"), None);
}
