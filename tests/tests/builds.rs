//! Issue 17: trust on any tgtd build. `cargo xtask tgtd-builds` builds tgtd
//! from Debian's source with several compilers and flags, and one with
//! `struct scsi_cmd`'s `tag` moved (`corrupt-layout`); its manifest lists
//! them. Each build must be proved field by field by `tgt-trace probes`, or
//! refused with the unproved fields named, and a refused build must be
//! refused by `record` too, naming the same fields. `cargo xtask test`
//! builds the manifest first; run alone, the test is skipped without it.

use std::{path::PathBuf, process::Command};

use tgt_trace_e2e::tgtd::{Tgtd, TgtdOptions, tgt_trace_bin};

/// The variant whose layout xtask corrupted, and the field it moved
/// (xtask/src/tgtd_builds.rs, CORRUPT_TO: eight bytes before `tag`).
const CORRUPT: &str = "corrupt-layout";
const MOVED: &str = "scsi_cmd.tag";

/// The functions probed once per command.
const COMMAND_PATH: [&str; 4] = [
    "target_cmd_queue",
    "scsi_cmd_perform",
    "target_cmd_io_done",
    "target_cmd_done",
];

struct Variant {
    name: String,
    path: PathBuf,
}

/// The built variants of target/tgtd-builds/manifest.json, or None when
/// there is no manifest.
fn built_variants() -> Option<Vec<Variant>> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/tgtd-builds/manifest.json");
    let text = std::fs::read_to_string(&path).ok()?;
    let manifest: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let variants = manifest["variants"]
        .as_array()
        .unwrap_or_else(|| panic!("{}: no variants", path.display()));
    let mut built = Vec::new();
    for v in variants {
        let name = v["name"].as_str().expect("a name").to_owned();
        if v["built"] == true {
            built.push(Variant {
                name,
                path: PathBuf::from(v["path"].as_str().expect("a path")),
            });
        } else {
            println!("{name}: not built: {}", v["why_not"]);
            // The corrupted layout is gcc -O2, as tgtd is normally built:
            // without it this test proves nothing about refusals.
            assert_ne!(name, CORRUPT, "{CORRUPT} must build: {}", v["why_not"]);
        }
    }
    Some(built)
}

/// What `tgt-trace probes --tgtd PATH --json` says of a build.
struct Verdict {
    traceable: bool,
    unproved: Vec<String>,
    facts: serde_json::Value,
}

fn probes(variant: &Variant) -> Verdict {
    let out = Command::new(tgt_trace_bin())
        .args(["probes", "--json", "--tgtd"])
        .arg(&variant.path)
        .output()
        .expect("tgt-trace runs");
    let facts: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{}: probes --json printed no JSON ({e}; {}); issue 17's contract is one JSON \
             object for every build, refusals included (traceable: false, refused: why):\n{}",
            variant.name,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let traceable = facts["traceable"]
        .as_bool()
        .unwrap_or_else(|| panic!("{}: no `traceable` in {facts}", variant.name));
    let fields = facts["fields"]
        .as_array()
        .unwrap_or_else(|| panic!("{}: no `fields` in {facts}", variant.name));
    let unproved: Vec<String> = fields
        .iter()
        .filter(|f| f["proved"] == false)
        .map(|f| {
            assert!(f["why_not"].is_string(), "an unproved field says why: {f}");
            f["field"].as_str().expect("a field name").to_owned()
        })
        .collect();
    if traceable {
        assert!(facts.get("refused").is_none(), "{facts}");
    } else {
        assert!(facts["refused"].is_string(), "a refusal says why: {facts}");
    }
    Verdict {
        traceable,
        unproved,
        facts,
    }
}

#[test]
fn every_build_is_proved_or_refused_naming_its_fields() {
    let Some(variants) = built_variants() else {
        // CI runs `cargo xtask test`, which builds them first.
        assert!(
            std::env::var_os("CI").is_none(),
            "no target/tgtd-builds/manifest.json under CI"
        );
        println!(
            "skipped: no target/tgtd-builds/manifest.json; run `cargo xtask tgtd-builds` \
             (cargo xtask test does) to build the tgtd variants"
        );
        return;
    };
    assert!(
        variants.iter().any(|v| v.name == CORRUPT),
        "the manifest lists no {CORRUPT}"
    );
    for variant in &variants {
        let verdict = probes(variant);
        assert!(
            verdict.traceable || !verdict.unproved.is_empty(),
            "{}: refused without naming a field: {}",
            variant.name,
            verdict.facts
        );
        if variant.name == CORRUPT {
            assert!(
                verdict.unproved.iter().any(|f| f == MOVED),
                "{CORRUPT} moved {MOVED}, which is not named unproved: {}",
                verdict.facts
            );
        }
        // The same source, built correctly: the proof must hold, whatever
        // the compiler did; gcc -O2, as Debian builds it, with nothing left
        // unproved.
        if variant.name != CORRUPT {
            assert!(
                verdict.traceable,
                "{}: refused: {}",
                variant.name, verdict.facts
            );
        }
        if variant.name == "gcc-O2" {
            assert!(
                verdict.unproved.is_empty(),
                "gcc-O2: {:?}",
                verdict.unproved
            );
        }
        // Issue 15: no command-path probe single-steps, on any build.
        if verdict.traceable {
            for p in verdict.facts["points"].as_array().expect("points") {
                let name = p["point"].as_str().unwrap_or_default();
                if COMMAND_PATH.contains(&name) && p["found"] == true {
                    assert_eq!(
                        p["uprobe"], "emulated",
                        "{}: {name} is probed at {}",
                        variant.name, p["instruction"]
                    );
                }
            }
        }
        if verdict.traceable {
            println!(
                "{}: traceable (unproved, not needed: {:?})",
                variant.name, verdict.unproved
            );
            continue;
        }
        let stderr = record_refusal(variant);
        for field in &verdict.unproved {
            assert!(
                stderr.contains(field.as_str()),
                "{}: record's refusal does not name {field}:\n{stderr}",
                variant.name
            );
        }
        println!(
            "{}: refused, unproved {:?}; record refused too",
            variant.name, verdict.unproved
        );
    }
}

/// Starts the build, and runs `record` on it, which must refuse: its
/// standard error.
fn record_refusal(variant: &Variant) -> String {
    let tgtd = Tgtd::start(&TgtdOptions {
        tgtd: variant.path.clone(),
        ..TgtdOptions::default()
    })
    .unwrap_or_else(|e| panic!("{} starts: {e}", variant.name));
    let out = Command::new(tgt_trace_bin())
        .args(["record", "--pid", &tgtd.pid().to_string(), "--tgtd"])
        .arg(tgtd.binary())
        .arg("-o")
        .arg(tgtd.dir.join("refused.ndjson"))
        .args(["--duration", "2s"])
        .output()
        .expect("tgt-trace runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "{}: probes refused it, but record traced it:\n{stderr}",
        variant.name
    );
    stderr
}

/// Each build is driven by Debian's tgtadm (the same tgt 1.0.85), as every
/// scenario run on it is: a target, a LUN, and `show` lists them.
#[test]
fn every_build_answers_debians_tgtadm() {
    let Some(variants) = built_variants() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "no target/tgtd-builds/manifest.json under CI"
        );
        println!("skipped: no target/tgtd-builds/manifest.json; run `cargo xtask tgtd-builds`");
        return;
    };
    for variant in &variants {
        let tgtd = Tgtd::start(&TgtdOptions {
            tgtd: variant.path.clone(),
            ..TgtdOptions::default()
        })
        .unwrap_or_else(|e| panic!("{} starts: {e}", variant.name));
        tgtd.add_lun(1, 1 << 20)
            .unwrap_or_else(|e| panic!("{}: tgtadm adds a LUN: {e}", variant.name));
        let show = tgtd
            .tgtadm(&["--op", "show", "--mode", "target"])
            .unwrap_or_else(|e| panic!("{}: tgtadm show: {e}", variant.name));
        assert!(
            show.contains(&tgtd.target_iqn) && show.contains("LUN: 1"),
            "{}: {show}",
            variant.name
        );
        println!(
            "{}: tgtadm creates and shows a target and LUN",
            variant.name
        );
    }
}
