//! The real binary replaying a real tgtd trace inside tmux: keys are typed
//! with `tmux send-keys` and the screen read with `tmux capture-pane`, as a
//! person would use it. Needs tmux (installed by `cargo xtask setup`), not root.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

const DEADLINE: Duration = Duration::from_secs(20);

/// A tmux server of our own, killed when the test ends however it ends.
struct Tmux {
    socket: String,
}

impl Tmux {
    /// `name` keeps the servers of tests running at once apart.
    fn start(name: &str, command: &str) -> Tmux {
        let tmux = Tmux {
            socket: format!("tgt-trace-test-{name}-{}", std::process::id()),
        };
        let out = tmux.run(&[
            "new-session",
            "-d",
            "-s",
            "t",
            "-x",
            "80",
            "-y",
            "24",
            command,
        ]);
        assert!(
            out.status.success(),
            "tmux cannot start (install it: apt-get install tmux): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tmux
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("tmux runs; install it with apt-get install tmux")
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "t"];
        args.extend_from_slice(keys);
        assert!(self.run(&args).status.success());
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", "t"]).stdout).into_owned()
    }

    /// Polls the screen until every text is on it; the screen when they are.
    fn wait_for(&self, texts: &[&str]) -> String {
        let start = Instant::now();
        loop {
            let screen = self.screen();
            if texts.iter().all(|t| screen.contains(t)) {
                return screen;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "waited {DEADLINE:?} for {texts:?}; the screen is:\n{screen}"
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

fn trace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/libiscsi-tmf.ndjson")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tgt-trace-tui-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}

fn tui_command(args: &str, save_dir: &Path) -> String {
    // The shell line after the TUI shows its exit status on the restored screen.
    format!(
        "{} tui --replay {} --save-dir {} {args}; echo EXITED $?; sleep 60",
        env!("CARGO_BIN_EXE_tgt-trace"),
        trace().display(),
        save_dir.display()
    )
}

#[test]
fn replay_shows_tmfs_and_histograms_saves_and_quits_cleanly() {
    let dir = scratch("replay");
    let tmux = Tmux::start("replay", &tui_command("", &dir));
    tmux.wait_for(&["ENDED", "events 90", "orphans 0"]);

    tmux.keys(&["2"]);
    let screen = tmux.wait_for(&["TMFs: 2 shown"]);
    let rows: Vec<&str> = screen
        .lines()
        .filter(|l| l.contains("ABORT_TASK") || l.contains("LUN_RESET"))
        .collect();
    assert_eq!(rows.len(), 2, "{screen}");
    assert!(
        rows[0].contains("ABORT_TASK")
            && rows[0].contains("0x1461bd33")
            && rows[0].contains("no task: done"),
        "{screen}"
    );
    assert!(
        rows[1].contains("LUN_RESET") && rows[1].contains("deferred") && rows[1].contains("633µs"),
        "{screen}"
    );

    // The LUN RESET's timeline names the command it waited for.
    tmux.keys(&["Down"]);
    tmux.keys(&["Enter"]);
    tmux.wait_for(&["TMF timeline", "0x4f77fa4c released; the TMF waited 630µs"]);
    tmux.keys(&["q"]);
    tmux.wait_for(&["TMFs: 2 shown"]);

    tmux.keys(&["4"]);
    let screen = tmux.wait_for(&["TMF LUN_RESET", "count by latency"]);
    let line = |name: &str| {
        screen
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} line:\n{screen}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(line("command  "), "command 36 30µs 114µs 656µs 656µs 656µs");
    assert_eq!(
        line("TMF ABORT_TASK"),
        "TMF ABORT_TASK 1 216µs 216µs 216µs 216µs 216µs"
    );
    assert_eq!(
        line("TMF LUN_RESET"),
        "TMF LUN_RESET 1 633µs 633µs 633µs 633µs 633µs"
    );

    tmux.keys(&["s"]);
    tmux.wait_for(&["saved "]);
    let text =
        std::fs::read_to_string(dir.join("tgt-trace-histograms-1.txt")).expect("saved screen");
    assert!(text.contains("TMF LUN_RESET"), "{text}");
    let ndjson =
        std::fs::read_to_string(dir.join("tgt-trace-histograms-1.ndjson")).expect("saved records");
    assert!(
        ndjson.starts_with("{\"type\":\"matched_summary\""),
        "{ndjson}"
    );

    tmux.keys(&["q"]);
    let screen = tmux.wait_for(&["EXITED 0"]);
    assert!(
        !screen.contains("Overview"),
        "the alternate screen is gone:\n{screen}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn step_mode_applies_one_batch_per_key() {
    let dir = scratch("step");
    let tmux = Tmux::start("step", &tui_command("--step --poll 2ms", &dir));
    tmux.wait_for(&["space: next batch", "events 0 "]);
    tmux.keys(&["Space"]);
    let first = tmux.wait_for(&["events "]);
    assert!(!first.contains("ENDED"), "{first}");
    // Step on until the trace ends: each key one batch, 2 ms of trace time.
    let start = Instant::now();
    let mut steps = 1;
    while !tmux.screen().contains("ENDED") {
        assert!(
            start.elapsed() < DEADLINE,
            "never ended:\n{}",
            tmux.screen()
        );
        tmux.keys(&["Space"]);
        steps += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(steps > 3, "the 16 ms trace took {steps} steps");
    tmux.keys(&["2"]);
    tmux.wait_for(&["TMFs: 2 shown"]);
    tmux.keys(&["C-c"]);
    tmux.wait_for(&["EXITED 0"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sigterm_restores_the_terminal() {
    let dir = scratch("sigterm");
    let pid_file = dir.join("pid");
    let tui = tui_command("", &dir);
    let tui = tui.split(';').next().expect("the tui command");
    let tmux = Tmux::start(
        "sigterm",
        &format!(
            "{tui} & echo $! > {}; wait $!; echo EXITED $?; sleep 60",
            pid_file.display()
        ),
    );
    tmux.wait_for(&["ENDED"]);
    let pid = std::fs::read_to_string(&pid_file).expect("the shell wrote the pid");
    let out = Command::new("kill")
        .args(["-TERM", pid.trim()])
        .output()
        .expect("kill runs");
    assert!(out.status.success(), "{out:?}");
    let screen = tmux.wait_for(&["EXITED 0"]);
    assert!(!screen.contains("Overview"), "{screen}");
    let _ = std::fs::remove_dir_all(&dir);
}
