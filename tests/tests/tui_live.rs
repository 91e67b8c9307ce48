//! Issue 5: `tgt-trace tui` attached live to a real tgtd inside tmux shows
//! the TMF libiscsi sends, quits on `q` (or SIGTERM) with status 0, restores
//! the terminal, and leaves a complete NDJSON trace behind (`-o`).
//!
//! Issue 14: the screen is a sink of the recording's own driver; the TMF
//! records it shows (saved with `s`) are those `replay` concludes from the
//! trace the same run wrote.

use std::{
    process::{Command, Output},
    time::{Duration, Instant},
};

use tgt_trace_e2e::tgtd::{Tgtd, TgtdOptions, tgt_trace_bin};

const DEADLINE: Duration = Duration::from_secs(20);

/// A tmux server of our own, killed when the test ends however it ends.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("tmux runs; install it with apt-get install tmux")
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", "t"]).stdout).into_owned()
    }

    /// Polls until `done` holds for the screen; the screen then.
    fn wait_for(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let screen = self.screen();
            if done(&screen) {
                return screen;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "waited {DEADLINE:?} for {what}; the screen is:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

/// How the test ends the TUI.
#[derive(Clone, Copy, PartialEq)]
enum Quit {
    Key,
    Sigterm,
    /// `q`, and no `-o`: nothing may be written to disk (issue 14).
    KeyWithoutOutput,
}

#[test]
fn live_tui_shows_a_real_tmf_and_leaves_a_complete_trace() {
    live_tui(Quit::Key);
}

#[test]
fn live_tui_on_sigterm_restores_the_terminal_and_ends_the_trace() {
    live_tui(Quit::Sigterm);
}

/// Issue 14: without `-o` the live TUI takes the recording's lines in
/// process: while it runs under load, tgt-trace holds no file open but its
/// terminal (everything else is a BPF object, a socket or a pipe), and no
/// trace is left behind.
#[test]
fn live_tui_without_output_writes_nothing_to_disk() {
    live_tui(Quit::KeyWithoutOutput);
}

/// The files (not devices, pipes, sockets or BPF objects) `pid` holds open.
fn open_files(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/PID/fd")
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .map(|target| target.display().to_string())
        .filter(|t| t.starts_with('/') && !t.starts_with("/dev/"))
        .collect()
}

/// The tgt-trace process the pane's shell runs.
fn tui_pid(tmux: &Tmux) -> u32 {
    let shell = String::from_utf8_lossy(
        &tmux
            .run(&["list-panes", "-t", "t", "-F", "#{pane_pid}"])
            .stdout,
    )
    .trim()
    .to_owned();
    let shell: u32 = shell.parse().expect("tmux names the pane's pid");
    let children: Vec<u32> = std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            // /proc/PID/stat: "pid (comm) state ppid ...".
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.rsplit_once(") ").is_some_and(|(head, tail)| {
                    head.ends_with("(tgt-trace")
                        && tail.split(' ').nth(1) == Some(shell.to_string().as_str())
                })
            })
        })
        .collect();
    match children[..] {
        [pid] => pid,
        _ => panic!("one tgt-trace under the pane's shell {shell}: {children:?}"),
    }
}

fn live_tui(quit: Quit) {
    let tgtd = Tgtd::start(&TgtdOptions::default()).expect("tgtd starts");
    tgtd.add_lun(1, 16 << 20).expect("LUN 1");
    let out = tgtd.dir.join("live.ndjson");
    let status = tgtd.dir.join("tui.status");
    let tmux = Tmux {
        socket: format!("tgt-trace-live-{}", std::process::id()),
    };
    // The shell records the TUI's exit status, then stays, so the screen
    // after the TUI has gone can be read.
    let output = match quit {
        Quit::KeyWithoutOutput => String::new(),
        Quit::Key | Quit::Sigterm => format!("-o {}", out.display()),
    };
    let command = format!(
        "{} tui --pid {} {output} --save-dir {}; echo $? > {}; sleep 60",
        tgt_trace_bin().display(),
        tgtd.pid(),
        tgtd.dir.display(),
        status.display()
    );
    let started = tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "t",
        "-x",
        "80",
        "-y",
        "24",
        &command,
    ]);
    assert!(started.status.success(), "tmux starts");
    tmux.wait_for("the live header", |s| {
        s.contains("tgt-trace live") && s.contains(&format!("tgtd pid {}", tgtd.pid()))
    });
    for test in [
        "iSCSI.iSCSITMF.AbortTaskSimpleAsync",
        "iSCSI.iSCSITMF.LUNResetSimpleAsync",
    ] {
        let cu = Command::new("iscsi-test-cu")
            .args(["--dataloss", "-t", test, &tgtd.url(1)])
            .stdout(std::process::Stdio::null())
            .status()
            .expect("iscsi-test-cu runs");
        eprintln!("iscsi-test-cu {test}: {cu}");
    }
    tmux.run(&["send-keys", "-t", "t", "2"]);
    let screen = tmux.wait_for("the LUN RESET row", |s| s.contains("LUN_RESET"));
    assert!(screen.contains("drops 0"), "{screen}");
    // The TMFs view's records, as the screen's sink got them.
    let saved = tgtd.dir.join("tgt-trace-tmfs-1.ndjson");
    if quit == Quit::Key {
        tmux.run(&["send-keys", "-t", "t", "s"]);
        tmux.wait_for("the saved screen", |s| s.contains("saved "));
    }
    if quit == Quit::KeyWithoutOutput {
        let pid = tui_pid(&tmux);
        assert_eq!(open_files(pid), Vec::<String>::new(), "tgt-trace {pid}");
    }
    match quit {
        Quit::Key | Quit::KeyWithoutOutput => {
            tmux.run(&["send-keys", "-t", "t", "q"]);
        }
        Quit::Sigterm => {
            let pid = tui_pid(&tmux);
            let kill = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .expect("kill runs");
            assert!(kill.success(), "SIGTERM to {pid}");
        }
    }
    let start = Instant::now();
    let code = loop {
        if let Ok(text) = std::fs::read_to_string(&status)
            && !text.trim().is_empty()
        {
            break text.trim().to_owned();
        }
        assert!(start.elapsed() < DEADLINE, "the TUI did not quit on q");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(code, "0", "exit status");
    let screen = tmux.screen();
    assert!(
        !screen.contains("1 Overview"),
        "the terminal was not restored:\n{screen}"
    );
    if quit == Quit::KeyWithoutOutput {
        assert!(!out.exists());
        let leftovers: Vec<_> = std::fs::read_dir(std::env::temp_dir())
            .expect("the temp dir")
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("tgt-trace-tui-")
            })
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        return;
    }
    let text = std::fs::read_to_string(&out).expect("the -o trace");
    let last = text.lines().last().expect("lines");
    let summary: serde_json::Value = serde_json::from_str(last).expect("JSON");
    assert_eq!(summary["type"], "summary", "{last}");
    assert_eq!(summary["drops"]["ring_full"], 0);
    // `q` stops the recording through its stop handle; a SIGTERM reaches the
    // recording's own handler and the TUI's, and either may act first.
    let stopped_by = summary["stopped_by"].as_str().expect("stopped_by");
    match quit {
        Quit::Key | Quit::KeyWithoutOutput => assert_eq!(stopped_by, "stopped", "{last}"),
        Quit::Sigterm => assert!(["signal", "stopped"].contains(&stopped_by), "{last}"),
    }
    let matched_final = text
        .lines()
        .rev()
        .nth(1)
        .expect("a line before the summary");
    assert!(
        matched_final.contains(r#""type":"matched_summary""#)
            && matched_final.contains(r#""final":true"#),
        "the matched records were drained: {matched_final}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains(r#""type":"tmf""#) && l.contains("LOGICAL_UNIT_RESET")),
        "the trace has the matched LUN RESET"
    );
    if quit == Quit::Key {
        screen_records_are_replays(&saved, &out);
    }
}

/// Every TMF record the screen showed is one `replay` concludes from the
/// run's trace, field for field.
fn screen_records_are_replays(saved: &std::path::Path, trace: &std::path::Path) {
    let shown: Vec<serde_json::Value> = std::fs::read_to_string(saved)
        .expect("the saved TMFs view")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    assert!(!shown.is_empty(), "the TMFs view showed concluded TMFs");
    let replayed = Command::new(tgt_trace_bin())
        .arg("replay")
        .arg(trace)
        .output()
        .expect("replay runs");
    assert!(replayed.status.success(), "replay");
    let replayed: Vec<serde_json::Value> = String::from_utf8_lossy(&replayed.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .filter(|v: &serde_json::Value| v["type"] == "tmf")
        .collect();
    for record in &shown {
        assert!(
            replayed.contains(record),
            "the screen showed a TMF record replay does not conclude:\n{record}\nreplay: {replayed:?}"
        );
    }
}
