//! Task management scenarios against LIO, run inside the `cargo xtask vm`
//! guest: one JSON line per scenario on stdout with what the initiator saw
//! (each command's status or its lack, each TMF's response) and the
//! initiator-side checks, which are what LIO 6.1's source says it does.
//!
//! LUN 0 is a fileio disk; LUN 1 is an iblock disk on the device-mapper
//! device `slow`, which `dmsetup suspend` holds: a READ sent to LUN 1 then
//! stays in LIO's backend until `dmsetup resume`.
//!
//! `--demo SECONDS`: a load on LUN 0 from its own session, and the
//! scenarios in a loop, until then (`cargo xtask demo --target lio`).

use std::{
    net::SocketAddrV4,
    path::PathBuf,
    process::{Command as Process, ExitCode, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tgt_trace_e2e::iscsi::{
    Command, Error, Itt, LoginOptions, ScsiResponse, Session, Tmf, TmfFunction, scsi_status,
    tmf_response,
};

/// Waits that must end (a response LIO owes).
const ANSWER: Duration = Duration::from_secs(10);
/// How long a response must stay away while the backend is held: a check,
/// not synchronisation (what the scenarios wait for is a response, or the
/// next barrier's).
const HELD_CHECK: Duration = Duration::from_millis(1500);
const BLOCK: u32 = 512;

type Outcome<T> = Result<T, String>;

struct Options {
    portal: SocketAddrV4,
    target: String,
    dmsetup: PathBuf,
    device: String,
    demo: Option<Duration>,
}

impl Options {
    fn parse() -> Result<Options, String> {
        let mut options = Options {
            portal: SocketAddrV4::new([127, 0, 0, 1].into(), 3260),
            target: "iqn.2026-11.lio:t1".to_owned(),
            dmsetup: PathBuf::from("/sbin/dmsetup"),
            device: "slow".to_owned(),
            demo: None,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
            match arg.as_str() {
                "--portal" => {
                    options.portal = value()?.parse().map_err(|e| format!("--portal: {e}"))?;
                }
                "--target" => options.target = value()?,
                "--dmsetup" => options.dmsetup = value()?.into(),
                "--device" => options.device = value()?,
                "--demo" => {
                    let seconds: u64 = value()?.parse().map_err(|e| format!("--demo: {e}"))?;
                    options.demo = Some(Duration::from_secs(seconds));
                }
                other => {
                    return Err(format!(
                        "unknown argument {other}; usage: lio-scenarios [--portal ADDR:PORT] \
                         [--target IQN] [--dmsetup PATH] [--device DM-NAME] [--demo SECONDS]"
                    ));
                }
            }
        }
        Ok(options)
    }
}

/// The device-mapper device suspended: LUN 1's I/O queues in device-mapper
/// until released. Resumed when dropped, so a failed scenario leaves the
/// next one a working LUN.
struct Hold<'a> {
    options: &'a Options,
    held: bool,
}

impl<'a> Hold<'a> {
    fn new(options: &'a Options) -> Outcome<Hold<'a>> {
        dmsetup(options, "suspend")?;
        Ok(Hold {
            options,
            held: true,
        })
    }

    fn release(&mut self) -> Outcome<()> {
        if self.held {
            self.held = false;
            dmsetup(self.options, "resume")?;
        }
        Ok(())
    }
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            eprintln!("lio-scenarios: {e}");
        }
    }
}

fn dmsetup(options: &Options, verb: &str) -> Outcome<()> {
    // No udev in the guest: without --noudevsync dmsetup waits for it.
    let out = Process::new(&options.dmsetup)
        .args(["--noudevsync", verb, &options.device])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", options.dmsetup.display()))?;
    if !out.status.success() {
        return Err(format!(
            "dmsetup {verb} {} failed ({}): {}",
            options.device,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

fn tmf_response_name(code: u8) -> &'static str {
    match code {
        tmf_response::FUNCTION_COMPLETE => "FUNCTION COMPLETE",
        tmf_response::TASK_DOES_NOT_EXIST => "TASK DOES NOT EXIST",
        tmf_response::LUN_DOES_NOT_EXIST => "LUN DOES NOT EXIST",
        tmf_response::TASK_STILL_ALLEGIANT => "TASK STILL ALLEGIANT",
        tmf_response::REASSIGNMENT_NOT_SUPPORTED => "TASK ALLEGIANCE REASSIGNMENT NOT SUPPORTED",
        tmf_response::NOT_SUPPORTED => "TASK MANAGEMENT FUNCTION NOT SUPPORTED",
        tmf_response::AUTHORIZATION_FAILED => "FUNCTION AUTHORIZATION FAILED",
        tmf_response::REJECTED => "FUNCTION REJECTED",
        _ => "unknown",
    }
}

fn status_name(status: u8) -> &'static str {
    match status {
        scsi_status::GOOD => "GOOD",
        scsi_status::CHECK_CONDITION => "CHECK CONDITION",
        scsi_status::BUSY => "BUSY",
        scsi_status::RESERVATION_CONFLICT => "RESERVATION CONFLICT",
        scsi_status::TASK_SET_FULL => "TASK SET FULL",
        scsi_status::TASK_ABORTED => "TASK ABORTED",
        _ => "other",
    }
}

fn function_name(function: TmfFunction) -> &'static str {
    match function {
        TmfFunction::AbortTask => "ABORT TASK",
        TmfFunction::AbortTaskSet => "ABORT TASK SET",
        TmfFunction::ClearAca => "CLEAR ACA",
        TmfFunction::ClearTaskSet => "CLEAR TASK SET",
        TmfFunction::LogicalUnitReset => "LOGICAL UNIT RESET",
        TmfFunction::TargetWarmReset => "TARGET WARM RESET",
        TmfFunction::TargetColdReset => "TARGET COLD RESET",
        TmfFunction::TaskReassign => "TASK REASSIGN",
        TmfFunction::Unassigned => "unassigned",
    }
}

/// Sense key, ASC and ASCQ, fixed or descriptor format.
fn sense_triple(sense: &[u8]) -> Option<(u8, u8, u8)> {
    match sense.first().map(|b| b & 0x7f) {
        Some(0x70 | 0x71) if sense.len() >= 14 => Some((sense[2] & 0x0f, sense[12], sense[13])),
        Some(0x72 | 0x73) if sense.len() >= 4 => Some((sense[1] & 0x0f, sense[2], sense[3])),
        _ => None,
    }
}

fn sense_text(response: &ScsiResponse) -> String {
    match sense_triple(&response.sense) {
        Some((key, asc, ascq)) => format!("{key:#x}/{asc:#04x}/{ascq:#04x}"),
        None if response.sense.is_empty() => "none".to_owned(),
        None => format!("{:02x?}", response.sense),
    }
}

/// A Unit Attention for "bus device reset function occurred" (29h/03h),
/// which LIO sets on every I_T nexus of a device after a LUN RESET
/// (target_core_transport.c target_tmr_work: target_dev_ua_allocate).
fn is_reset_ua(response: &ScsiResponse) -> bool {
    response.status == scsi_status::CHECK_CONDITION
        && sense_triple(&response.sense) == Some((0x06, 0x29, 0x03))
}

/// What one scenario saw and checked.
struct Report {
    name: &'static str,
    started: Instant,
    sessions: Vec<Value>,
    commands: Vec<Value>,
    tmfs: Vec<Value>,
    checks: Vec<Value>,
    notes: Vec<String>,
}

impl Report {
    fn new(name: &'static str) -> Report {
        Report {
            name,
            started: Instant::now(),
            sessions: Vec::new(),
            commands: Vec::new(),
            tmfs: Vec::new(),
            checks: Vec::new(),
            notes: Vec::new(),
        }
    }

    fn check(&mut self, check: &str, passed: bool, detail: impl Into<String>) {
        self.checks
            .push(json!({"check": check, "passed": passed, "detail": detail.into()}));
    }

    fn command(
        &mut self,
        session: &str,
        itt: Itt,
        lun: u16,
        opcode: u8,
        response: Option<&ScsiResponse>,
    ) {
        let mut entry = json!({
            "session": session,
            "itt": itt.to_string(),
            "lun": lun,
            "opcode": format!("{opcode:#04x}"),
        });
        match response {
            Some(r) => {
                entry["status"] = json!(r.status);
                entry["outcome"] = json!(status_name(r.status));
                if !r.sense.is_empty() {
                    entry["sense"] = json!(sense_text(r));
                }
            }
            None => {
                entry["status"] = Value::Null;
                entry["outcome"] = json!("no response");
            }
        }
        self.commands.push(entry);
    }

    fn tmf(
        &mut self,
        session: &str,
        itt: Itt,
        tmf: &Tmf,
        response: Option<u8>,
        none_because: &str,
    ) {
        let mut entry = json!({
            "session": session,
            "itt": itt.to_string(),
            "function": function_name(tmf.function),
            "lun": tmf.lun,
        });
        if tmf.function == TmfFunction::AbortTask {
            entry["referenced_itt"] = json!(tmf.referenced_itt.to_string());
        }
        match response {
            Some(code) => {
                entry["response"] = json!(code);
                entry["response_name"] = json!(tmf_response_name(code));
            }
            None => {
                entry["response"] = Value::Null;
                entry["response_name"] = json!(format!("none ({none_because})"));
            }
        }
        self.tmfs.push(entry);
    }

    fn finish(self, error: Option<String>) -> Value {
        let passed = error.is_none() && self.checks.iter().all(|c| c["passed"] == true);
        let mut line = json!({
            "scenario": self.name,
            "passed": passed,
            "sessions": self.sessions,
            "commands": self.commands,
            "tmfs": self.tmfs,
            "checks": self.checks,
            "ms": u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        });
        if let Some(error) = error {
            line["error"] = json!(error);
        }
        if !self.notes.is_empty() {
            line["notes"] = json!(self.notes);
        }
        line
    }
}

/// Runs scenarios, each with its own initiator names.
struct Runner<'a> {
    options: &'a Options,
    /// Distinguishes the names of repeated runs (the demo's loop): LIO
    /// keeps a dynamic ACL per initiator name, with its unit attentions.
    round: u32,
}

static SESSIONS: AtomicU32 = AtomicU32::new(0);

impl Runner<'_> {
    fn login(&self, report: &mut Report, role: &str) -> Outcome<(Session, String)> {
        self.login_with(report, role, |_| {})
    }

    fn login_with(
        &self,
        report: &mut Report,
        role: &str,
        tune: impl FnOnce(&mut LoginOptions),
    ) -> Outcome<(Session, String)> {
        let name = match self.round {
            0 => format!("iqn.2026-11.lio-scenarios:{}-{role}", report.name),
            n => format!("iqn.2026-11.lio-scenarios:{}-{role}-{n}", report.name),
        };
        let mut login = LoginOptions::new(&name, &self.options.target);
        login.timeout = ANSWER;
        tune(&mut login);
        let session = Session::login(self.options.portal, &login)
            .map_err(|e| format!("login as {name}: {e}"))?;
        SESSIONS.fetch_add(1, Ordering::Relaxed);
        let n = session.negotiated();
        report.sessions.push(json!({
            "role": role,
            "initiator": name,
            "isid": n.isid.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            "tsih": n.tsih,
            "initial_r2t": n.initial_r2t,
            "immediate_data": n.immediate_data,
        }));
        let mut session = session;
        clear_unit_attentions(report, &mut session, &name)?;
        Ok((session, name))
    }

    fn run_all(&self) -> bool {
        let scenarios: [(&'static str, Scenario); 7] = [
            ("abort-task-held", abort_task_held),
            ("abort-task-finished", abort_task_finished),
            ("lun-reset-other-session", lun_reset_other_session),
            (
                "abort-task-write-awaiting-data",
                abort_task_write_awaiting_data,
            ),
            (
                "disconnect-with-tmf-outstanding",
                disconnect_with_tmf_outstanding,
            ),
            ("abort-task-set", abort_task_set),
            ("clear-task-set", clear_task_set),
        ];
        let mut all = true;
        for (name, scenario) in scenarios {
            let mut report = Report::new(name);
            let error = scenario(self, &mut report).err();
            let line = report.finish(error);
            all &= line["passed"] == true;
            println!("{line}");
        }
        all
    }
}

type Scenario = fn(&Runner<'_>, &mut Report) -> Outcome<()>;

fn e(context: &str) -> impl FnOnce(Error) -> String + '_ {
    move |err| format!("{context}: {err}")
}

/// A TEST UNIT READY on LUN 0, answered: LIO's receive thread handles one
/// connection's PDUs in order, so every command sent before it on this
/// session has reached LIO's core (a READ to LUN 1 is then in the
/// backend, held while `slow` is suspended).
fn barrier(session: &mut Session, what: &str) -> Outcome<()> {
    let response = session
        .execute(Command::test_unit_ready(0))
        .map_err(e(&format!("barrier TEST UNIT READY on LUN 0 ({what})")))?;
    if response.status != scsi_status::GOOD {
        return Err(format!(
            "barrier TEST UNIT READY on LUN 0 ({what}) ended {:#04x}",
            response.status
        ));
    }
    Ok(())
}

/// Takes the unit attentions a new I_T nexus has pending on each LUN (LIO
/// reports "reported LUNs data has changed", 3Fh/0Eh, to a nexus whose
/// LUN list grew as its dynamic ACL was filled in), so that a scenario's
/// first command on a LUN reaches the backend instead of ending at once
/// with CHECK CONDITION.
fn clear_unit_attentions(report: &mut Report, session: &mut Session, name: &str) -> Outcome<()> {
    for lun in [0, 1] {
        let mut attentions = Vec::new();
        loop {
            let response = session
                .execute(Command::test_unit_ready(lun))
                .map_err(e(&format!("TEST UNIT READY on LUN {lun} after login")))?;
            if response.status == scsi_status::GOOD {
                break;
            }
            let sense = sense_triple(&response.sense);
            if response.status != scsi_status::CHECK_CONDITION
                || sense.is_none_or(|(key, _, _)| key != 0x06)
                || attentions.len() >= 8
            {
                return Err(format!(
                    "TEST UNIT READY on LUN {lun} after login: status {:#04x} sense {:02x?}",
                    response.status, response.sense
                ));
            }
            if let Some((key, asc, ascq)) = sense {
                attentions.push(format!("{key:#x}/{asc:#04x}/{ascq:#04x}"));
            }
        }
        if !attentions.is_empty() {
            report.notes.push(format!(
                "{name}: unit attention(s) on LUN {lun} after login: {}",
                attentions.join(", ")
            ));
        }
    }
    Ok(())
}

/// Checks that `itt`'s answer stays away for [`HELD_CHECK`].
fn absent_while_held(
    report: &mut Report,
    session: &mut Session,
    itt: Itt,
    check: &str,
) -> Outcome<()> {
    match session.wait(itt, HELD_CHECK) {
        Err(Error::Timeout { .. }) => {
            report.check(check, true, format!("none within {HELD_CHECK:?}"));
            Ok(())
        }
        Ok(response) => {
            report.check(check, false, format!("answered: {response:?}"));
            Err(format!("failed: {check}"))
        }
        Err(err) => Err(format!("{check}: {err}")),
    }
}

/// After a barrier, whether `itt` got a SCSI response: LIO queues a
/// connection's responses in order, so one not there by then is not coming.
fn response_after_barrier(session: &mut Session, itt: Itt) -> Outcome<Option<ScsiResponse>> {
    barrier(session, "settling")?;
    match session.poll(itt).map_err(e("polling"))? {
        Some(tgt_trace_e2e::iscsi::Response::Scsi(r)) => Ok(Some(r)),
        Some(other) => Err(format!("ITT {itt} was answered with {other:?}")),
        None => Ok(None),
    }
}

fn expect_tmf(report: &mut Report, got: u8, want: u8, why: &str) {
    report.check(
        &format!("TMF response {}", tmf_response_name(want)),
        got == want,
        format!("got {got} ({}); {why}", tmf_response_name(got)),
    );
}

fn logout(report: &mut Report, session: &mut Session, name: &str) {
    if let Err(err) = session.logout() {
        report.notes.push(format!("logout of {name}: {err}"));
    }
}

/// a. ABORT TASK for a READ held in the backend.
///
/// core_tmr_abort_task (target_core_tmr.c) finds the READ in the device's
/// state list and waits for it (target_put_cmd_and_wait): the response
/// comes only after the backend lets the READ go. It marks the READ
/// aborted with tas = 0 (__target_check_io_state), so the READ itself gets
/// no response (target_handle_abort: no TASK ABORTED status without
/// CMD_T_TAS). Response: FUNCTION COMPLETE.
fn abort_task_held(runner: &Runner<'_>, report: &mut Report) -> Outcome<()> {
    let (mut s, name) = runner.login(report, "a")?;
    let mut hold = Hold::new(runner.options)?;
    let read = s
        .submit(Command::read10(1, 0, 8, BLOCK))
        .map_err(e("READ"))?;
    barrier(&mut s, "READ reached LIO")?;
    let tmf = Tmf::abort_task(1, read);
    let abort = s.submit_tmf(tmf.clone()).map_err(e("ABORT TASK"))?;
    absent_while_held(
        report,
        &mut s,
        abort,
        "no ABORT TASK response while the READ is held",
    )?;
    hold.release()?;
    let answer = s
        .wait_tmf(abort, ANSWER)
        .map_err(e("ABORT TASK response"))?;
    report.tmf(&name, abort, &tmf, Some(answer.response), "");
    expect_tmf(
        report,
        answer.response,
        tmf_response::FUNCTION_COMPLETE,
        "core_tmr_abort_task found the READ",
    );
    let response = response_after_barrier(&mut s, read)?;
    report.command(&name, read, 1, 0x28, response.as_ref());
    report.check(
        "aborted READ has no response",
        response.is_none(),
        "ABORT TASK aborts with tas = 0: no TASK ABORTED status",
    );
    logout(report, &mut s, &name);
    Ok(())
}

/// b. ABORT TASK for a READ already answered.
///
/// The READ is off the device's state list once completed, so
/// core_tmr_abort_task does not find it: TASK DOES NOT EXIST. (If the
/// iSCSI layer no longer knows the tag, iscsit_tmr_abort_task answers the
/// same, as the READ's CmdSN is below ExpCmdSN.)
fn abort_task_finished(runner: &Runner<'_>, report: &mut Report) -> Outcome<()> {
    let (mut s, name) = runner.login(report, "a")?;
    let read = s
        .submit(Command::read10(1, 0, 8, BLOCK))
        .map_err(e("READ"))?;
    let response = s.wait_scsi(read, ANSWER).map_err(e("READ"))?;
    report.command(&name, read, 1, 0x28, Some(&response));
    report.check(
        "READ GOOD",
        response.status == scsi_status::GOOD,
        format!("status {:#04x}", response.status),
    );
    let tmf = Tmf::abort_task(1, read);
    let abort = s.submit_tmf(tmf.clone()).map_err(e("ABORT TASK"))?;
    let answer = s
        .wait_tmf(abort, ANSWER)
        .map_err(e("ABORT TASK response"))?;
    report.tmf(&name, abort, &tmf, Some(answer.response), "");
    expect_tmf(
        report,
        answer.response,
        tmf_response::TASK_DOES_NOT_EXIST,
        "the READ had completed",
    );
    logout(report, &mut s, &name);
    Ok(())
}

/// c. LUN RESET from session B while session A has READs held on LUN 1.
///
/// core_tmr_lun_reset drains the device's state list with the device's TAS
/// (emulate_tas, 1 by default) and waits for each command: the response
/// comes after the backend lets them go, FUNCTION COMPLETE. A's READs are
/// from another I_T nexus than the reset's, so they get CMD_T_TAS
/// (core_tmr_drain_state_list): status TASK ABORTED. target_tmr_work then
/// sets a unit attention 29h/03h on every nexus of the device, B's too.
fn lun_reset_other_session(runner: &Runner<'_>, report: &mut Report) -> Outcome<()> {
    let (mut a, name_a) = runner.login(report, "a")?;
    let (mut b, name_b) = runner.login(report, "b")?;
    // The unit attention is reported to a nexus that exists at the reset.
    barrier(&mut b, "B logged in")?;
    let mut hold = Hold::new(runner.options)?;
    let reads = [
        a.submit(Command::read10(1, 0, 8, BLOCK))
            .map_err(e("READ 1"))?,
        a.submit(Command::read10(1, 64, 8, BLOCK))
            .map_err(e("READ 2"))?,
    ];
    barrier(&mut a, "READs reached LIO")?;
    let tmf = Tmf::lun_reset(1);
    let reset = b.submit_tmf(tmf.clone()).map_err(e("LUN RESET"))?;
    absent_while_held(
        report,
        &mut b,
        reset,
        "no LUN RESET response while A's READs are held",
    )?;
    hold.release()?;
    for read in reads {
        let response = match a.wait_scsi(read, ANSWER) {
            Ok(r) => Some(r),
            Err(Error::Timeout { .. }) => None,
            Err(err) => return Err(format!("A's READ {read}: {err}")),
        };
        report.command(&name_a, read, 1, 0x28, response.as_ref());
        report.check(
            &format!("A's READ {read} TASK ABORTED"),
            response.as_ref().map(|r| r.status) == Some(scsi_status::TASK_ABORTED),
            "TAS is on and the reset came from another nexus",
        );
    }
    // core_tmr_drain_state_list waits (target_put_cmd_and_wait) until each
    // aborted command is released, and iSCSI releases a command only when
    // its initiator acknowledges the status (ExpStatSN): the reset's
    // response waits for A's next PDU.
    match b.wait_tmf(reset, HELD_CHECK) {
        Err(Error::Timeout { .. }) => report.check(
            "no LUN RESET response before A acknowledges its TASK ABORTED statuses",
            true,
            format!("none within {HELD_CHECK:?}"),
        ),
        Ok(answer) => {
            report.check(
                "no LUN RESET response before A acknowledges its TASK ABORTED statuses",
                false,
                format!("answered {}", answer.response),
            );
            report.tmf(&name_b, reset, &tmf, Some(answer.response), "");
            return Err("LUN RESET answered early".to_owned());
        }
        Err(err) => return Err(format!("LUN RESET response: {err}")),
    }
    barrier(&mut a, "A acknowledges its statuses")?;
    let answer = b.wait_tmf(reset, ANSWER).map_err(e("LUN RESET response"))?;
    report.tmf(&name_b, reset, &tmf, Some(answer.response), "");
    expect_tmf(
        report,
        answer.response,
        tmf_response::FUNCTION_COMPLETE,
        "core_tmr_lun_reset succeeded",
    );
    for (session, name, who) in [(&mut a, &name_a, "A"), (&mut b, &name_b, "B")] {
        let tur = session
            .submit(Command::test_unit_ready(1))
            .map_err(e("TEST UNIT READY"))?;
        let response = session
            .wait_scsi(tur, ANSWER)
            .map_err(e("TEST UNIT READY"))?;
        report.command(name, tur, 1, 0x00, Some(&response));
        report.check(
            &format!("{who} sees unit attention 29h/03h on LUN 1"),
            is_reset_ua(&response),
            format!(
                "status {:#04x} sense {}",
                response.status,
                sense_text(&response)
            ),
        );
    }
    logout(report, &mut a, &name_a);
    logout(report, &mut b, &name_b);
    Ok(())
}

/// d. ABORT TASK for a WRITE whose Data-Out the initiator withholds
/// (InitialR2T=Yes, ImmediateData=No: nothing is sent before LIO's R2T).
///
/// The WRITE is on the device's state list from transport_generic_new_cmd
/// on (before write_pending), so core_tmr_abort_task finds it and waits for
/// it to be released, which takes its data: the response comes after the
/// Data-Out, FUNCTION COMPLETE. The WRITE itself gets no response (tas = 0).
fn abort_task_write_awaiting_data(runner: &Runner<'_>, report: &mut Report) -> Outcome<()> {
    let (mut s, name) = runner.login_with(report, "a", |o| {
        o.initial_r2t = true;
        o.immediate_data = false;
    })?;
    let write = s
        .submit(Command::write10(0, 128, 8, vec![0xa5; 8 * BLOCK as usize]))
        .map_err(e("WRITE"))?;
    s.withhold_data_out(write);
    let deadline = Instant::now() + ANSWER;
    while s.withheld_r2ts(write) == 0 {
        if Instant::now() >= deadline {
            return Err(format!("no R2T for the WRITE within {ANSWER:?}"));
        }
        if let Some(r) = s.poll(write).map_err(e("waiting for the R2T"))? {
            return Err(format!("WRITE answered without its data: {r:?}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    report.check(
        "R2T received",
        true,
        format!("{} R2T(s)", s.withheld_r2ts(write)),
    );
    let tmf = Tmf::abort_task(0, write);
    let abort = s.submit_tmf(tmf.clone()).map_err(e("ABORT TASK"))?;
    // core_tmr_abort_task waits for the WRITE to be released, which needs
    // its data: no response while the Data-Out is withheld (checked for
    // less than LIO's 3 s Data-Out timeout).
    absent_while_held(
        report,
        &mut s,
        abort,
        "no ABORT TASK response while the Data-Out is withheld",
    )?;
    let sent = s.release_data_out(write).map_err(e("Data-Out"))?;
    report
        .notes
        .push(format!("Data-Out sent for {sent} R2T(s)"));
    let answer = s
        .wait_tmf(abort, ANSWER)
        .map_err(e("ABORT TASK response after the Data-Out"))?
        .response;
    report.tmf(&name, abort, &tmf, Some(answer), "");
    expect_tmf(
        report,
        answer,
        tmf_response::FUNCTION_COMPLETE,
        "the WRITE was on the state list",
    );
    let response = response_after_barrier(&mut s, write)?;
    report.command(&name, write, 0, 0x2a, response.as_ref());
    report.check(
        "aborted WRITE has no response",
        response.is_none(),
        "ABORT TASK aborts with tas = 0",
    );
    logout(report, &mut s, &name);
    Ok(())
}

/// e. The initiator drops the connection while its LUN RESET waits for a
/// held READ. The next session's login and commands must work.
fn disconnect_with_tmf_outstanding(runner: &Runner<'_>, report: &mut Report) -> Outcome<()> {
    let (mut s, name) = runner.login(report, "a")?;
    let mut hold = Hold::new(runner.options)?;
    let read = s
        .submit(Command::read10(1, 0, 8, BLOCK))
        .map_err(e("READ"))?;
    barrier(&mut s, "READ reached LIO")?;
    let tmf = Tmf::lun_reset(1);
    let reset = s.submit_tmf(tmf.clone()).map_err(e("LUN RESET"))?;
    absent_while_held(
        report,
        &mut s,
        reset,
        "no LUN RESET response while the READ is held",
    )?;
    s.disconnect();
    report.command(&name, read, 1, 0x28, None);
    report.tmf(&name, reset, &tmf, None, "disconnected");
    hold.release()?;
    // LIO tears the old session down in the background; a new one must log
    // in and reach both LUNs meanwhile.
    let (mut next, next_name) = runner.login(report, "after")?;
    for lun in [0, 1] {
        let tur = next
            .submit(Command::test_unit_ready(lun))
            .map_err(e("TEST UNIT READY"))?;
        let response = next.wait_scsi(tur, ANSWER).map_err(e("TEST UNIT READY"))?;
        report.command(&next_name, tur, lun, 0x00, Some(&response));
        report.check(
            &format!("next session's TEST UNIT READY on LUN {lun} GOOD"),
            response.status == scsi_status::GOOD,
            format!(
                "status {:#04x} sense {}",
                response.status,
                sense_text(&response)
            ),
        );
    }
    let read = next
        .submit(Command::read10(1, 0, 8, BLOCK))
        .map_err(e("READ after"))?;
    let response = next.wait_scsi(read, ANSWER).map_err(e("READ after"))?;
    report.command(&next_name, read, 1, 0x28, Some(&response));
    report.check(
        "next session's READ on LUN 1 GOOD",
        response.status == scsi_status::GOOD,
        format!("status {:#04x}", response.status),
    );
    logout(report, &mut next, &next_name);
    Ok(())
}

/// f. ABORT TASK SET: iscsit_handle_task_mgt_cmd passes it to the core,
/// whose target_tmr_work answers TMR_TASK_MGMT_FUNCTION_NOT_SUPPORTED:
/// iSCSI response 5.
fn abort_task_set(runner: &Runner<'_>, report: &mut Report) -> Outcome<()> {
    not_supported(runner, report, Tmf::abort_task_set(1))
}

/// f. CLEAR TASK SET: the same path and answer as ABORT TASK SET.
fn clear_task_set(runner: &Runner<'_>, report: &mut Report) -> Outcome<()> {
    not_supported(runner, report, Tmf::clear_task_set(1))
}

fn not_supported(runner: &Runner<'_>, report: &mut Report, tmf: Tmf) -> Outcome<()> {
    let (mut s, name) = runner.login(report, "a")?;
    let itt = s.submit_tmf(tmf.clone()).map_err(e("TMF"))?;
    let answer = s.wait_tmf(itt, ANSWER).map_err(e("TMF response"))?;
    report.tmf(&name, itt, &tmf, Some(answer.response), "");
    expect_tmf(
        report,
        answer.response,
        tmf_response::NOT_SUPPORTED,
        "target_tmr_work does not support it",
    );
    logout(report, &mut s, &name);
    Ok(())
}

/// The demo's load: READs and WRITEs on LUN 0 from a session of its own.
fn load(options: &Options, until: Instant) -> Outcome<u64> {
    let mut login = LoginOptions::new("iqn.2026-11.lio-scenarios:load", &options.target);
    login.initial_r2t = false;
    login.immediate_data = true;
    let mut s = Session::login(options.portal, &login).map_err(e("load login"))?;
    let mut done = 0u64;
    let data = vec![0x5a; 8 * BLOCK as usize];
    while Instant::now() < until {
        let lba = u32::try_from(done % 1024).unwrap_or(0) * 8;
        let mut inflight = Vec::new();
        for i in 0..8u32 {
            let command = if i % 2 == 0 {
                Command::read10(0, lba + i, 8, BLOCK)
            } else {
                Command::write10(0, lba + i, 8, data.clone())
            };
            inflight.push(s.submit(command).map_err(e("load"))?);
        }
        for itt in inflight {
            s.wait_scsi(itt, ANSWER).map_err(e("load"))?;
            done += 1;
        }
    }
    let _ = s.logout();
    Ok(done)
}

fn main() -> ExitCode {
    let options = match Options::parse() {
        Ok(o) => o,
        Err(err) => {
            eprintln!("lio-scenarios: {err}");
            return ExitCode::from(2);
        }
    };
    let Some(duration) = options.demo else {
        let runner = Runner {
            options: &options,
            round: 0,
        };
        return if runner.run_all() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    };
    let until = Instant::now() + duration;
    std::thread::scope(|scope| {
        let load = scope.spawn(|| load(&options, until));
        let mut round = 1;
        while Instant::now() < until {
            Runner {
                options: &options,
                round,
            }
            .run_all();
            round += 1;
        }
        match load.join() {
            Ok(Ok(n)) => eprintln!("lio-scenarios: load: {n} commands"),
            Ok(Err(err)) => eprintln!("lio-scenarios: load: {err}"),
            Err(_) => eprintln!("lio-scenarios: load panicked"),
        }
    });
    ExitCode::SUCCESS
}
