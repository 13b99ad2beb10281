//! Harness item 6 at a small size: random byte flips in a real replica
//! (the demo's: L0, L1, L2 and snapshot files), each followed by `sluice
//! drill`. Every flip is detected or harmless; no drill passes on a wrong
//! database. `integration/scripts/fault-byteflip.sh N` runs more.

use std::time::{Duration, Instant};

use integration::byteflip::{flips, truth};
use integration::env::state_checksum;
use integration::{s, sluice, stderr};

#[test]
fn byte_flips_are_detected_or_harmless_and_never_pass_a_wrong_database() {
    let dir = tempfile::tempdir().unwrap();
    let o = sluice(&["demo", "--dir", s(dir.path()), "--transactions", "100"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let replica = dir.path().join("replica");
    let scratch = dir.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let truth = truth(&replica, &scratch);
    let (&latest, sum) = truth.iter().last().unwrap();
    // The truth from the L0 chain is the source database itself.
    assert_eq!(*sum, state_checksum(&dir.path().join("app.db")));
    assert!(latest > 10, "{latest}");
    let started = Instant::now();
    let mut lines = Vec::new();
    let summary = flips(&replica, &truth, 40, 0x5eed, &scratch, &mut |l| {
        eprintln!("{l}");
        lines.push(l.to_string());
    })
    .unwrap();
    eprintln!("{summary:?} in {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(120));
    assert_eq!(summary.flips, 40);
    assert!(summary.passed(), "{summary:?}\n{}", lines.join("\n"));
    // The run exercised both outcomes, in planned files too.
    assert!(
        summary.detected >= 5 && summary.harmless >= 5,
        "{summary:?}"
    );
    assert!(summary.in_plan >= 10, "{summary:?}");
    // Headers and trailers were hit too.
    for place in ["(header, in the plan)", "(trailer, in the plan)"] {
        assert!(
            lines.iter().any(|l| l.contains(place)),
            "{place}\n{}",
            lines.join("\n")
        );
    }
    // Detected flips name a file and a broken rule on one line.
    assert!(
        lines
            .iter()
            .filter(|l| l.contains("Detected"))
            .all(|l| l.contains(".ltx")),
        "{}",
        lines.join("\n")
    );
    // Every flip was undone: the replica drills ok again.
    let o = sluice(&["drill", &format!("file://{}", replica.display())]);
    assert!(o.status.success(), "{}", stderr(&o));
}
