//! The tracker against a real SQLite database and a real store: block events in, states out.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use suitcase_coap::BlockServed;
use suitcase_fleet::{Config, Fleet, NewDevice, Report, Reporter, State};
use suitcase_store::{LocalStore, NewFile, NewManifest, PublishRequest, Store};

fn publish(store: &LocalStore, seq: u64, image: &[u8]) -> ([u8; 8], [u8; 8]) {
    let v = store
        .publish(
            PublishRequest {
                publish_id: "fw/app".into(),
                files: vec![NewFile {
                    name: "image.bin".into(),
                    data: Bytes::copy_from_slice(image),
                }],
                semver: Some(semver::Version::new(1, seq, 0)),
                ..Default::default()
            },
            Box::new(move |_| {
                Ok(Some(NewManifest {
                    name: "manifest.suit".into(),
                    data: Bytes::from(format!("manifest {seq}")),
                    sequence_number: Some(seq),
                    server_built: true,
                }))
            }),
        )
        .unwrap();
    let e = |sha: &[u8; 32]| {
        let mut e = [0u8; 8];
        e.copy_from_slice(&sha[..8]);
        e
    };
    (e(&v.manifest.as_ref().unwrap().file.sha256.0), e(&v.files[0].sha256.0))
}

async fn until(fleet: &Fleet, id: &str, what: impl Fn(&suitcase_fleet::Device) -> bool) -> suitcase_fleet::Device {
    for _ in 0..100 {
        if let Some(d) = fleet.get(id).await.unwrap() {
            if what(&d) {
                return d;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{id}: {:?}", fleet.get(id).await.unwrap());
}

#[tokio::test]
async fn blocks_and_reports_drive_device_state_and_it_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LocalStore::open(dir.path().join("store")).unwrap());
    let (manifest, image) = publish(&store, 3, &[7u8; 1000]);
    let url = format!("sqlite:{}?mode=rwc", dir.path().join("fleet.db").display());
    let config = Config {
        flush_interval: Duration::from_millis(50),
        progress_interval: Duration::from_millis(100),
        install_timeout: Duration::from_millis(600),
        ..Config::default()
    };
    let fleet = Fleet::open(&url, store.clone(), config.clone(), None, None)
        .await
        .unwrap();
    let a: SocketAddr = "127.0.0.2:5683".parse().unwrap();
    let b: SocketAddr = "[::ffff:127.0.0.3]:40000".parse().unwrap();
    fleet
        .add(
            vec![
                NewDevice {
                    id: "a".into(),
                    coap: Some("127.0.0.2".into()),
                    groups: vec!["lab".into()],
                    ..Default::default()
                },
                NewDevice {
                    id: "b".into(),
                    coap: Some("127.0.0.3:5683".into()),
                    ..Default::default()
                },
            ],
            false,
        )
        .await
        .unwrap();
    // Adding an existing id again is refused and changes nothing.
    assert!(fleet
        .add(
            vec![NewDevice {
                id: "a".into(),
                ..Default::default()
            }],
            false
        )
        .await
        .is_err());
    let sink = fleet.block_sink().tx;
    let block = |peer, etag, end, size| BlockServed { peer, etag, end, size };
    // a: the manifest, then every block of the image; b: the manifest and 4 of 16 blocks.
    let mut batch = vec![block(a, manifest, 10, 10)];
    batch.extend((1..=16).map(|i| block(a, image, (i * 64).min(1000), 1000)));
    batch.push(block(b, manifest, 10, 10));
    batch.extend((1..=4).map(|i| block(b, image, i * 64, 1000)));
    sink.send(batch).await.unwrap();
    let d = until(&fleet, "a", |d| d.state == State::Downloaded).await;
    assert_eq!(
        (d.target_version, d.target_seq, d.progress()),
        (Some(1), Some(3), Some(100))
    );
    let d = until(&fleet, "b", |d| d.state == State::Downloading).await;
    assert_eq!((d.bytes_done, d.bytes_total, d.progress()), (256, 1000, Some(25)));
    // An unknown peer fetching the manifest is recorded; fetching only an image is not.
    let c: SocketAddr = "[2001:db8::9]:1234".parse().unwrap();
    let z: SocketAddr = "[2001:db8::10]:1234".parse().unwrap();
    sink.send(vec![block(c, manifest, 10, 10), block(z, image, 64, 1000)])
        .await
        .unwrap();
    let d = until(&fleet, "coap-2001:db8::9", |d| d.state == State::Manifest).await;
    assert!(!d.registered);
    assert_eq!(d.publish_id.as_deref(), Some("fw/app"));
    // a reports success over CoAP (by its address), b is never heard of again.
    let ok = Report {
        sequence_number: Some(3),
        ok: true,
        reason: None,
        reference: None,
    };
    let d = fleet.report(Reporter::Peer(a, "fw/app".into()), ok).await.unwrap();
    assert_eq!(
        (d.state, d.running_seq, d.running_semver.as_deref()),
        (State::Installed, Some(3), Some("1.3.0"))
    );
    let bad = Report {
        sequence_number: None,
        ok: false,
        reason: Some("flash".into()),
        reference: None,
    };
    assert!(fleet.report(Reporter::Id("nobody".into()), bad.clone()).await.is_err());
    drop(fleet);
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Reopened: everything acknowledged is there.
    let fleet = Fleet::open(&url, store.clone(), config, None, None).await.unwrap();
    let all = fleet.list(&Default::default(), 100).await.unwrap();
    let ids: Vec<&str> = all.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, vec!["a", "b", "coap-2001:db8::9"]);
    assert_eq!(all[0].state, State::Installed);
    assert_eq!(all[1].progress(), Some(25));
    let lab = fleet
        .list(
            &suitcase_fleet::Filter {
                group: Some("lab".into()),
                ..Default::default()
            },
            100,
        )
        .await
        .unwrap();
    assert_eq!(lab.len(), 1);
    // '_' in a group name is no wildcard: `x_y` does not find `xzy`, and LIMIT 1 counts
    // members only (`g1`, sorting first, is in `xzy`).
    fleet
        .add(
            vec![
                NewDevice {
                    id: "g1".into(),
                    groups: vec!["xzy".into()],
                    ..Default::default()
                },
                NewDevice {
                    id: "g2".into(),
                    groups: vec!["x_y".into()],
                    ..Default::default()
                },
            ],
            false,
        )
        .await
        .unwrap();
    let group = |g: &str| suitcase_fleet::Filter {
        group: Some(g.into()),
        ..Default::default()
    };
    let x_y = fleet.list(&group("x_y"), 1).await.unwrap();
    assert_eq!(x_y.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), vec!["g2"]);
    assert!(fleet.list(&group("x%"), 10).await.is_err(), "not a group name");
    assert!(fleet.list(&group("lab,x_y"), 10).await.is_err());
    // b finishes and never reports: failed (timeout).
    let sink = fleet.block_sink().tx;
    sink.send((5..=16).map(|i| block(b, image, (i * 64).min(1000), 1000)).collect())
        .await
        .unwrap();
    until(&fleet, "b", |d| d.state == State::Downloaded).await;
    let d = until(&fleet, "b", |d| d.state == State::Failed).await;
    assert_eq!(d.reason.as_deref(), Some("timeout"));
    // A failure reported right after the last block is not undone by that block arriving
    // late; a success for an older sequence number is no install.
    fleet
        .add(
            vec![NewDevice {
                id: "e".into(),
                coap: Some("127.0.0.6".into()),
                ..Default::default()
            }],
            false,
        )
        .await
        .unwrap();
    let e: SocketAddr = "127.0.0.6:41000".parse().unwrap();
    sink.send((1..=15).map(|i| block(e, image, i * 64, 1000)).collect())
        .await
        .unwrap();
    until(&fleet, "e", |d| d.state == State::Downloading).await;
    let failed = Report {
        sequence_number: Some(3),
        ok: false,
        reason: Some("digest".into()),
        reference: None,
    };
    fleet.report(Reporter::Id("e".into()), failed).await.unwrap();
    sink.send(vec![block(e, image, 1000, 1000)]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let d = fleet.get("e").await.unwrap().unwrap();
    assert_eq!((d.state, d.reason.as_deref()), (State::Failed, Some("digest")));
    let older = Report {
        sequence_number: Some(2),
        ok: true,
        reason: None,
        reference: None,
    };
    let d = fleet.report(Reporter::Id("e".into()), older).await.unwrap();
    assert_eq!((d.state, d.running_seq), (State::Failed, Some(2)));
    assert!(d.reason.unwrap().contains("older"));
    // Adding the unregistered device under a name adopts its record.
    let added = fleet
        .add(
            vec![NewDevice {
                id: "c".into(),
                coap: Some("[2001:db8::9]".into()),
                ..Default::default()
            }],
            false,
        )
        .await
        .unwrap();
    assert!(
        added[0].first_seen.is_some() && added[0].publish_id.as_deref() == Some("fw/app"),
        "the history moved: {:?}",
        added[0]
    );
    assert!(fleet.get("coap-2001:db8::9").await.unwrap().is_none());
    assert!(fleet.remove("c").await.unwrap());
    assert!(!fleet.remove("c").await.unwrap());
}
