//! Sessions that already exist when tracing starts: their I_T nexuses were
//! created before the probes were attached, so no `nexus_create` event names
//! their initiators. tgtd tells them to `tgtadm` (`--op show --mode target`
//! lists each target's I_T nexuses with the session text that
//! `it_nexus_create` was given); tgt-trace asks once, at attach time, and
//! writes what it learns as `nexus_create` events stamped with the start of
//! the trace.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::{decode::initiator_name, event::Event};

/// How long tgtadm may take: tgtd answers it from its event loop.
const TGTADM_TIMEOUT: Duration = Duration::from_secs(2);

/// The I_T nexuses tgtd `pid` has now, as `nexus_create` events at `ts_ns`;
/// or why they cannot be known.
pub fn nexuses(pid: u32, ts_ns: u64) -> Result<Vec<Event>, String> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map_err(|e| format!("tgtd {pid}'s command line: {e}"))?;
    let args: Vec<String> = cmdline
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let control = control_port(&args);
    let text = tgtadm(&[
        "-C",
        &control.to_string(),
        "--lld",
        "iscsi",
        "--op",
        "show",
        "--mode",
        "target",
    ])?;
    Ok(parse_show_target(&text)
        .into_iter()
        .map(|(tid, itn_id, info)| Event::NexusCreate {
            ts_ns,
            pid,
            tid,
            itn_id,
            initiator: initiator_name(&info),
            info,
        })
        .collect())
}

/// tgtd's control port (`-C N`, `--control-port N` or `=N`; 0 by default,
/// tgt `usr/tgtd.c`).
fn control_port(args: &[String]) -> u32 {
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let value = match arg.as_str() {
            "-C" | "--control-port" => it.next().map(String::as_str),
            other => other
                .strip_prefix("--control-port=")
                .or_else(|| other.strip_prefix("-C").filter(|v| !v.is_empty())),
        };
        if let Some(port) = value.and_then(|v| v.parse().ok()) {
            return port;
        }
    }
    0
}

fn tgtadm(args: &[&str]) -> Result<String, String> {
    let mut child = Command::new("tgtadm")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run tgtadm ({e}); install tgt"))?;
    let deadline = Instant::now() + TGTADM_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => {
                // Polling a child bounded by TGTADM_TIMEOUT.
                std::thread::sleep(Duration::from_millis(10));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "tgtadm did not answer within {} s",
                    TGTADM_TIMEOUT.as_secs()
                ));
            }
        }
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "tgtadm {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// (tid, itn_id, session text) of every I_T nexus in tgtadm's
/// `--op show --mode target` output (tgt `usr/target.c`
/// `tgt_target_show_all`: "Target N: iqn", then "I_T nexus: N" followed by
/// the nexus's info lines, until the next nexus or "LUN information:").
pub fn parse_show_target(text: &str) -> Vec<(i32, u64, String)> {
    let mut out: Vec<(i32, u64, String)> = Vec::new();
    let mut tid = -1;
    let mut current: Option<(u64, String)> = None;
    let flush = |current: &mut Option<(u64, String)>, out: &mut Vec<(i32, u64, String)>, tid| {
        if let Some((itn, info)) = current.take() {
            out.push((tid, itn, info));
        }
    };
    for line in text.lines() {
        let trimmed = line.trim();
        if let Some(rest) = line.strip_prefix("Target ") {
            flush(&mut current, &mut out, tid);
            tid = rest
                .split(':')
                .next()
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or(-1);
        } else if let Some(n) = trimmed.strip_prefix("I_T nexus:") {
            flush(&mut current, &mut out, tid);
            current = n.trim().parse().ok().map(|itn| (itn, String::new()));
        } else if trimmed.ends_with("information:") && !trimmed.starts_with("I_T nexus") {
            flush(&mut current, &mut out, tid);
        } else if let Some((_, info)) = current.as_mut() {
            info.push_str(line);
            info.push('\n');
        }
    }
    flush(&mut current, &mut out, tid);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// tgtadm's output for a target with two sessions (tgt 1.0.85).
    const SHOW: &str = "Target 1: iqn.2026-11.test:t1
    System information:
        Driver: iscsi
        State: ready
    I_T nexus information:
        I_T nexus: 3
            Initiator: iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-perf alias: none
            Connection: 0
                IP Address: 127.0.0.1
        I_T nexus: 7
            Initiator: iqn.2026-11.io.tgt-trace:a alias: box
            Connection: 0
                IP Address: 127.0.0.1
    LUN information:
        LUN: 0
            Type: controller
    Account information:
    ACL information:
        ALL
Target 2: iqn.2026-11.test:t2
    System information:
        Driver: iscsi
        State: ready
    I_T nexus information:
    LUN information:
";

    #[test]
    fn nexuses_are_read_from_tgtadm_show() {
        let found = parse_show_target(SHOW);
        let names: Vec<(i32, u64, Option<String>)> = found
            .iter()
            .map(|(tid, itn, info)| (*tid, *itn, initiator_name(info)))
            .collect();
        assert_eq!(
            names,
            [
                (
                    1,
                    3,
                    Some("iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-perf".to_owned())
                ),
                (1, 7, Some("iqn.2026-11.io.tgt-trace:a".to_owned())),
            ]
        );
    }

    #[test]
    fn the_control_port_is_read_as_tgtd_takes_it() {
        let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(control_port(&args(&["tgtd", "-f"])), 0);
        assert_eq!(control_port(&args(&["tgtd", "-f", "-C", "1003"])), 1003);
        assert_eq!(control_port(&args(&["tgtd", "--control-port=9"])), 9);
        assert_eq!(
            control_port(&args(&["tgtd", "-C7", "--iscsi", "portal=x"])),
            7
        );
    }
}
