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
