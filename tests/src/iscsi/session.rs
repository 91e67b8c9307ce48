//! One iSCSI session over one TCP connection: login, commands and task
//! management that do not wait for their answers, and a log of every PDU.

use std::{
    collections::HashMap,
    io::Read as _,
    net::{Shutdown, SocketAddrV4, TcpStream},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use super::{
    Error, Itt,
    pdu::{
        self, DataOutPdu, Decoded, LoginRequest, Pdu, RESERVED_TAG, Residual, ScsiCommandPdu,
        TargetPdu, TaskManagementPdu, encode_lun, encode_text, opcode,
    },
    scsi_status,
};

#[derive(Debug, Clone)]
pub struct LoginOptions {
    /// Each session gets its own name, so that tgtd's I_T nexus (and the
    /// trace) can be told apart.
    pub initiator_name: String,
    pub target_name: String,
    /// `None`: one unique to this session. The same name and ISID twice
    /// makes tgtd reinstate (close) the older session.
    pub isid: Option<[u8; 6]>,
    /// What this initiator accepts per PDU; small values make the target
    /// split reads into many Data-In PDUs.
    pub max_recv_data_segment_length: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    /// For connecting, logging in, and [`Session::execute`] and friends.
    pub timeout: Duration,
}

impl LoginOptions {
    /// Defaults that make every write wait for R2Ts: `InitialR2T=Yes`,
    /// `ImmediateData=No`.
    pub fn new(initiator_name: impl Into<String>, target_name: impl Into<String>) -> LoginOptions {
        LoginOptions {
            initiator_name: initiator_name.into(),
            target_name: target_name.into(),
            isid: None,
            max_recv_data_segment_length: 8192,
            max_burst_length: 262_144,
            first_burst_length: 65_536,
            initial_r2t: true,
            immediate_data: false,
            timeout: Duration::from_secs(10),
        }
    }
}

/// The session's parameters after login, as the target answered them.
#[derive(Debug, Clone)]
pub struct Negotiated {
    pub isid: [u8; 6],
    pub tsih: u16,
    /// The target's MaxRecvDataSegmentLength: the most data one PDU to it
    /// may carry.
    pub target_max_recv_data_segment_length: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    pub max_outstanding_r2t: u32,
    /// Every key the target sent during login, in order.
    pub target_keys: Vec<(String, String)>,
}

/// The iSCSI ATTR field of a SCSI Command (RFC 7143 §11.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TaskAttr {
    Untagged = 0,
    Simple = 1,
    Ordered = 2,
    HeadOfQueue = 3,
    Aca = 4,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataDirection {
    None,
    /// Expects up to this many bytes from the target.
    Read(u32),
    Write(Vec<u8>),
}

#[derive(Debug, Clone)]
pub struct Command {
    pub lun: u16,
    pub cdb: Vec<u8>,
    pub attr: TaskAttr,
    pub data: DataDirection,
    /// `None`: the session picks a free tag.
    pub itt: Option<Itt>,
}

impl Command {
    pub fn new(lun: u16, cdb: impl Into<Vec<u8>>, data: DataDirection) -> Command {
        Command {
            lun,
            cdb: cdb.into(),
            attr: TaskAttr::Simple,
            data,
            itt: None,
        }
    }

    pub fn test_unit_ready(lun: u16) -> Command {
        Command::new(lun, [0u8; 6], DataDirection::None)
    }

    pub fn read_capacity10(lun: u16) -> Command {
        Command::new(
            lun,
            [0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            DataDirection::Read(8),
        )
    }

    pub fn read10(lun: u16, lba: u32, blocks: u16, block_size: u32) -> Command {
        Command::new(
            lun,
            rw10_cdb(0x28, lba, blocks),
            DataDirection::Read(u32::from(blocks) * block_size),
        )
    }

    /// `data` must be `blocks` whole blocks; the target checks.
    pub fn write10(lun: u16, lba: u32, blocks: u16, data: Vec<u8>) -> Command {
        Command::new(lun, rw10_cdb(0x2a, lba, blocks), DataDirection::Write(data))
    }

    pub fn with_attr(mut self, attr: TaskAttr) -> Command {
        self.attr = attr;
        self
    }

    pub fn with_itt(mut self, itt: Itt) -> Command {
        self.itt = Some(itt);
        self
    }
}

fn rw10_cdb(opcode: u8, lba: u32, blocks: u16) -> [u8; 10] {
    let lba = lba.to_be_bytes();
    let blocks = blocks.to_be_bytes();
    [
        opcode, 0, lba[0], lba[1], lba[2], lba[3], 0, blocks[0], blocks[1], 0,
    ]
}

/// Task management function codes (RFC 7143 §11.5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TmfFunction {
    AbortTask = 1,
    AbortTaskSet = 2,
    ClearAca = 3,
    ClearTaskSet = 4,
    LogicalUnitReset = 5,
    TargetWarmReset = 6,
    TargetColdReset = 7,
    TaskReassign = 8,
    /// 14 (0x0e): a code that neither RFC 7143 nor RFC 7144 (which adds
    /// 9-12) assigns, to see how a target treats an unknown function.
    Unassigned = 14,
}

impl TmfFunction {
    /// Every function this initiator can send, in code order.
    pub const ALL: [TmfFunction; 9] = [
        TmfFunction::AbortTask,
        TmfFunction::AbortTaskSet,
        TmfFunction::ClearAca,
        TmfFunction::ClearTaskSet,
        TmfFunction::LogicalUnitReset,
        TmfFunction::TargetWarmReset,
        TmfFunction::TargetColdReset,
        TmfFunction::TaskReassign,
        TmfFunction::Unassigned,
    ];

    /// The code in the Function field of the request.
    pub fn code(self) -> u8 {
        self as u8
    }
}

#[derive(Debug, Clone)]
pub struct Tmf {
    pub function: TmfFunction,
    pub lun: u16,
    /// Any value, including tags that never existed.
    pub referenced_itt: Itt,
    /// `None`: the CmdSN of the referenced command if this session sent it,
    /// else the next CmdSN.
    pub ref_cmd_sn: Option<u32>,
    pub itt: Option<Itt>,
}

impl Tmf {
    pub fn new(function: TmfFunction, lun: u16) -> Tmf {
        Tmf {
            function,
            lun,
            referenced_itt: Itt(RESERVED_TAG),
            ref_cmd_sn: None,
            itt: None,
        }
    }

    pub fn abort_task(lun: u16, referenced_itt: Itt) -> Tmf {
        Tmf {
            referenced_itt,
            ..Tmf::new(TmfFunction::AbortTask, lun)
        }
    }

    pub fn abort_task_set(lun: u16) -> Tmf {
        Tmf::new(TmfFunction::AbortTaskSet, lun)
    }

    pub fn clear_task_set(lun: u16) -> Tmf {
        Tmf::new(TmfFunction::ClearTaskSet, lun)
    }

    pub fn lun_reset(lun: u16) -> Tmf {
        Tmf::new(TmfFunction::LogicalUnitReset, lun)
    }

    pub fn with_itt(mut self, itt: Itt) -> Tmf {
        self.itt = Some(itt);
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Scsi(ScsiResponse),
    Tmf(TmfResponse),
    Logout {
        itt: Itt,
        response: u8,
    },
    /// The answer to a NOP-Out ping.
    NopIn {
        itt: Itt,
    },
    /// The target answered the task's PDU with a Reject.
    Rejected {
        itt: Itt,
        reason: u8,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScsiResponse {
    pub itt: Itt,
    /// The iSCSI Response field: 0 command completed at target.
    pub response: u8,
    pub status: u8,
    /// Data-In received, placed at its buffer offsets.
    pub data: Vec<u8>,
    pub sense: Vec<u8>,
    pub residual: Residual,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TmfResponse {
    pub itt: Itt,
    /// See [`super::tmf_response`].
    pub response: u8,
}

/// One PDU sent or received, or the connection dropped on purpose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exchange {
    Sent {
        itt: Itt,
        kind: SentKind,
        at: Instant,
    },
    Received {
        itt: Itt,
        kind: ReceivedKind,
        at: Instant,
    },
    Disconnected {
        at: Instant,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SentKind {
    Login {
        stage: u8,
    },
    Command {
        lun: u16,
        opcode: u8,
        attr: TaskAttr,
        cmd_sn: u32,
    },
    DataOut {
        offset: u32,
        length: u32,
        final_: bool,
    },
    Tmf {
        function: TmfFunction,
        lun: u16,
        referenced_itt: Itt,
        cmd_sn: u32,
    },
    NopOut {
        ttt: u32,
    },
    Logout,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceivedKind {
    Login {
        status_class: u8,
        status_detail: u8,
    },
    ScsiResponse {
        status: u8,
        response: u8,
    },
    DataIn {
        offset: u32,
        length: u32,
        status: Option<u8>,
    },
    R2t {
        offset: u32,
        length: u32,
    },
    TmfResponse {
        response: u8,
    },
    NopIn {
        ttt: u32,
    },
    Reject {
        reason: u8,
    },
    AsyncMessage {
        event: u8,
    },
    Logout {
        response: u8,
    },
    Other {
        opcode: u8,
    },
}

struct Task {
    lun: [u8; 8],
    kind: TaskKind,
}

enum TaskKind {
    Scsi {
        received: Vec<u8>,
        expected_length: u32,
        write_data: Vec<u8>,
    },
    Tmf,
    Nop,
    Logout,
}

pub struct Session {
    /// `None` once logged out or disconnected.
    stream: Option<TcpStream>,
    negotiated: Negotiated,
    /// The CmdSN the next non-immediate command takes.
    cmd_sn: u32,
    exp_stat_sn: u32,
    max_cmd_sn: u32,
    next_itt: u32,
    received: Vec<u8>,
    outstanding: HashMap<Itt, Task>,
    finished: HashMap<Itt, Response>,
    /// CmdSN of every command ever sent, for the RefCmdSN of ABORT TASK.
    cmd_sns: HashMap<Itt, u32>,
    exchanges: Vec<Exchange>,
    timeout: Duration,
    /// Commands whose R2Ts are answered only on `release_data_out`: the
    /// R2Ts received meanwhile (target transfer tag, offset, end).
    withheld: HashMap<Itt, Vec<(u32, u32, u32)>>,
}

const CID: u16 = 0;
const INITIAL_CMD_SN: u32 = 1;
/// tgtd has no use for larger reads; keeps a stack buffer reasonable.
const READ_CHUNK: usize = 64 * 1024;

static ISIDS_HANDED_OUT: AtomicU32 = AtomicU32::new(0);

/// A random-format ISID (RFC 7143 §11.12.5, T = 10b) from the process id and
/// a counter, so sessions of concurrent test binaries differ too.
fn unique_isid() -> [u8; 6] {
    let pid = (std::process::id() as u16).to_be_bytes();
    let n = ISIDS_HANDED_OUT
        .fetch_add(1, Ordering::Relaxed)
        .to_be_bytes();
    [0x80, pid[0], pid[1], n[1], n[2], n[3]]
}

/// `a <= b` in serial number arithmetic (RFC 1982), as CmdSN and StatSN wrap.
fn sn_at_most(a: u32, b: u32) -> bool {
    b.wrapping_sub(a) as i32 >= 0
}

impl Session {
    /// Connects and logs in, then pings once: tgtd's login response opens a
    /// command window of only two, and its NOP-In reports the real one.
    pub fn login(portal: SocketAddrV4, options: &LoginOptions) -> Result<Session, Error> {
        let stream = TcpStream::connect_timeout(&portal.into(), options.timeout)
            .map_err(|e| Error::io(format!("connecting to {portal}"), e))?;
        stream
            .set_nodelay(true)
            .and_then(|()| stream.set_write_timeout(Some(options.timeout)))
            .map_err(|e| Error::io("setting socket options", e))?;
        let isid = options.isid.unwrap_or_else(unique_isid);
        let mut session = Session {
            stream: Some(stream),
            negotiated: Negotiated {
                isid,
                tsih: 0,
                target_max_recv_data_segment_length: 8192,
                max_burst_length: options.max_burst_length,
                first_burst_length: options.first_burst_length,
                initial_r2t: options.initial_r2t,
                immediate_data: options.immediate_data,
                max_outstanding_r2t: 1,
                target_keys: Vec::new(),
            },
            cmd_sn: INITIAL_CMD_SN,
            exp_stat_sn: 0,
            max_cmd_sn: INITIAL_CMD_SN,
            next_itt: 1,
            received: Vec::new(),
            outstanding: HashMap::new(),
            finished: HashMap::new(),
            cmd_sns: HashMap::new(),
            withheld: HashMap::new(),
            exchanges: Vec::new(),
            timeout: options.timeout,
        };
        let deadline = Instant::now() + options.timeout;
        session.negotiate(options, deadline)?;
        let ping = session.send_nop_out()?;
        session.wait(ping, deadline.saturating_duration_since(Instant::now()))?;
        Ok(session)
    }

    fn negotiate(&mut self, options: &LoginOptions, deadline: Instant) -> Result<(), Error> {
        let yes_no = |b: bool| if b { "Yes" } else { "No" }.to_owned();
        let security = [
            ("InitiatorName", options.initiator_name.clone()),
            ("SessionType", "Normal".to_owned()),
            ("TargetName", options.target_name.clone()),
            ("AuthMethod", "None".to_owned()),
        ];
        let answer = self.login_step(
            pdu::SECURITY_NEGOTIATION,
            pdu::OPERATIONAL_NEGOTIATION,
            encode_text(&security),
            deadline,
        )?;
        if !answer.transit || answer.next_stage != pdu::OPERATIONAL_NEGOTIATION {
            return Err(Error::Protocol(format!(
                "target did not move on from security negotiation: {answer:?}"
            )));
        }
        self.negotiated.target_keys.extend(answer.text);

        let operational = [
            ("HeaderDigest", "None".to_owned()),
            ("DataDigest", "None".to_owned()),
            (
                "MaxRecvDataSegmentLength",
                options.max_recv_data_segment_length.to_string(),
            ),
            ("InitialR2T", yes_no(options.initial_r2t)),
            ("ImmediateData", yes_no(options.immediate_data)),
            ("MaxBurstLength", options.max_burst_length.to_string()),
            ("FirstBurstLength", options.first_burst_length.to_string()),
            ("MaxOutstandingR2T", "1".to_owned()),
            ("DataPDUInOrder", "Yes".to_owned()),
            ("DataSequenceInOrder", "Yes".to_owned()),
            ("ErrorRecoveryLevel", "0".to_owned()),
            ("MaxConnections", "1".to_owned()),
            ("DefaultTime2Wait", "2".to_owned()),
            ("DefaultTime2Retain", "0".to_owned()),
            ("IFMarker", "No".to_owned()),
            ("OFMarker", "No".to_owned()),
        ];
        let mut offer = encode_text(&operational);
        // A target that wants other values than the defaults for keys we did
        // not offer says so and stays in this stage; tgtd does this once.
        for _ in 0..4 {
            let answer = self.login_step(
                pdu::OPERATIONAL_NEGOTIATION,
                pdu::FULL_FEATURE_PHASE,
                offer,
                deadline,
            )?;
            let its_own: Vec<(&str, String)> = answer
                .text
                .iter()
                .filter(|(key, _)| {
                    // Declarative: the target's limit, not a proposal to echo.
                    key != "MaxRecvDataSegmentLength"
                        && !operational.iter().any(|(offered, _)| offered == key)
                })
                .map(|(key, value)| (key.as_str(), value.clone()))
                .collect();
            offer = encode_text(&its_own);
            self.negotiated
                .target_keys
                .extend(answer.text.iter().cloned());
            if answer.transit && answer.next_stage == pdu::FULL_FEATURE_PHASE {
                self.negotiated.tsih = answer.tsih;
                return self.apply_target_keys();
            }
        }
        Err(Error::Protocol(
            "target kept the login in operational negotiation".to_owned(),
        ))
    }

    fn apply_target_keys(&mut self) -> Result<(), Error> {
        let keys = self.negotiated.target_keys.clone();
        for (key, value) in &keys {
            let number = || {
                value.parse::<u32>().map_err(|_| {
                    Error::Protocol(format!("target answered {key}={value}, not a number"))
                })
            };
            let boolean = || match value.as_str() {
                "Yes" => Ok(true),
                "No" => Ok(false),
                _ => Err(Error::Protocol(format!(
                    "target answered {key}={value}, not Yes or No"
                ))),
            };
            let n = &mut self.negotiated;
            match key.as_str() {
                "MaxRecvDataSegmentLength" => n.target_max_recv_data_segment_length = number()?,
                "MaxBurstLength" => n.max_burst_length = number()?,
                "FirstBurstLength" => n.first_burst_length = number()?,
                "MaxOutstandingR2T" => n.max_outstanding_r2t = number()?,
                "InitialR2T" => n.initial_r2t = boolean()?,
                "ImmediateData" => n.immediate_data = boolean()?,
                "HeaderDigest" | "DataDigest" if value != "None" => {
                    return Err(Error::Protocol(format!(
                        "target insists on {key}={value}; this initiator has no digests"
                    )));
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn login_step(
        &mut self,
        current_stage: u8,
        next_stage: u8,
        text: Vec<u8>,
        deadline: Instant,
    ) -> Result<LoginAnswer, Error> {
        let login_itt = Itt(0);
        let request = LoginRequest {
            transit: true,
            current_stage,
            next_stage,
            isid: self.negotiated.isid,
            tsih: 0,
            itt: login_itt.0,
            cid: CID,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            text,
        };
        self.send(&request.to_pdu())?;
        self.record_sent(
            login_itt,
            SentKind::Login {
                stage: current_stage,
            },
        );
        let pdu = self.receive(deadline)?.ok_or_else(|| Error::Timeout {
            waiting_for: format!("the login response (stage {current_stage})"),
            after: self.timeout,
        })?;
        self.track_sequence_numbers(&pdu);
        match pdu.parse_target()? {
            TargetPdu::LoginResponse {
                transit,
                continue_,
                next_stage,
                tsih,
                status_class,
                status_detail,
                text,
                ..
            } => {
                self.record_received(
                    Itt(pdu.itt()),
                    ReceivedKind::Login {
                        status_class,
                        status_detail,
                    },
                );
                if status_class != 0 {
                    return Err(Error::LoginRejected {
                        status_class,
                        status_detail,
                    });
                }
                if continue_ {
                    return Err(Error::Protocol(
                        "target split its login text over several PDUs, which this initiator does not collect".to_owned(),
                    ));
                }
                Ok(LoginAnswer {
                    transit,
                    next_stage,
                    tsih,
                    text,
                })
            }
            other => {
                self.record_received(
                    Itt(pdu.itt()),
                    ReceivedKind::Other {
                        opcode: pdu.opcode(),
                    },
                );
                Err(Error::Protocol(format!(
                    "expected a login response, got opcode {:#04x}: {other:?}",
                    pdu.opcode()
                )))
            }
        }
    }

    pub fn negotiated(&self) -> &Negotiated {
        &self.negotiated
    }

    /// Every PDU sent and received so far, in order.
    pub fn exchanges(&self) -> &[Exchange] {
        &self.exchanges
    }

    pub fn into_exchanges(self) -> Vec<Exchange> {
        self.exchanges
    }

    /// The timeout of the blocking helpers ([`Session::execute`], ...).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Holds back the Data-Out that R2Ts ask for `itt` (a WRITE), so that
    /// the target keeps the command waiting for its data: tgtd's iSCSI layer
    /// then holds it outside the core. Call right after `submit`.
    pub fn withhold_data_out(&mut self, itt: Itt) {
        self.withheld.entry(itt).or_default();
    }

    /// Sends the Data-Out held back for `itt` and answers its R2Ts from now
    /// on as usual. Returns how many R2Ts were answered.
    pub fn release_data_out(&mut self, itt: Itt) -> Result<usize, Error> {
        let r2ts = self.withheld.remove(&itt).unwrap_or_default();
        for &(ttt, from, to) in &r2ts {
            self.send_data_out(itt, ttt, from, to)?;
        }
        Ok(r2ts.len())
    }

    /// R2Ts received and not answered for a command whose data is withheld.
    pub fn withheld_r2ts(&self, itt: Itt) -> usize {
        self.withheld.get(&itt).map_or(0, Vec::len)
    }

    /// Tags sent and not yet answered.
    pub fn outstanding(&self) -> Vec<Itt> {
        let mut tags: Vec<Itt> = self.outstanding.keys().copied().collect();
        tags.sort();
        tags
    }

    /// Sends the command (and any unsolicited data) without waiting for the
    /// target. Data asked for by R2T is sent while waiting for responses.
    pub fn submit(&mut self, command: Command) -> Result<Itt, Error> {
        self.make_room_in_command_window()?;
        let itt = self.allocate_itt(command.itt)?;
        let lun = encode_lun(command.lun)?;
        let (read, expected_length, write_data) = match command.data {
            DataDirection::None => (false, 0, Vec::new()),
            DataDirection::Read(len) => (true, len, Vec::new()),
            DataDirection::Write(data) => {
                let len = u32::try_from(data.len()).map_err(|_| {
                    Error::Protocol(format!("a write of {} bytes is too large", data.len()))
                })?;
                (false, len, data)
            }
        };
        // Immediate data and unsolicited Data-Out both count against
        // FirstBurstLength; the rest waits for R2Ts.
        let write_length = if write_data.is_empty() {
            0
        } else {
            expected_length
        };
        let n = &self.negotiated;
        let immediate_end = if n.immediate_data {
            write_length
                .min(n.first_burst_length)
                .min(n.target_max_recv_data_segment_length)
        } else {
            0
        };
        let unsolicited_end = if n.initial_r2t {
            immediate_end
        } else {
            write_length.min(n.first_burst_length)
        };
        let header = ScsiCommandPdu {
            lun,
            itt: itt.0,
            attr: command.attr as u8,
            read,
            write: !write_data.is_empty(),
            final_: unsolicited_end == immediate_end,
            expected_length,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            cdb: &command.cdb,
            immediate_data: write_data[..immediate_end as usize].to_vec(),
        }
        .to_pdu()?;
        self.send(&header)?;
        self.record_sent(
            itt,
            SentKind::Command {
                lun: command.lun,
                opcode: command.cdb.first().copied().unwrap_or_default(),
                attr: command.attr,
                cmd_sn: self.cmd_sn,
            },
        );
        self.cmd_sns.insert(itt, self.cmd_sn);
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        self.outstanding.insert(
            itt,
            Task {
                lun,
                kind: TaskKind::Scsi {
                    received: Vec::new(),
                    expected_length,
                    write_data,
                },
            },
        );
        if unsolicited_end > immediate_end {
            self.send_data_out(itt, RESERVED_TAG, immediate_end, unsolicited_end)?;
        }
        Ok(itt)
    }

    /// Sends a task management request as an immediate PDU, without waiting.
    pub fn submit_tmf(&mut self, tmf: Tmf) -> Result<Itt, Error> {
        let itt = self.allocate_itt(tmf.itt)?;
        let lun = encode_lun(tmf.lun)?;
        let ref_cmd_sn = match tmf.function {
            TmfFunction::AbortTask => tmf.ref_cmd_sn.unwrap_or_else(|| {
                self.cmd_sns
                    .get(&tmf.referenced_itt)
                    .copied()
                    .unwrap_or(self.cmd_sn)
            }),
            _ => tmf.ref_cmd_sn.unwrap_or(0),
        };
        let request = TaskManagementPdu {
            function: tmf.function as u8,
            lun,
            itt: itt.0,
            referenced_itt: tmf.referenced_itt.0,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            ref_cmd_sn,
        };
        self.send(&request.to_pdu())?;
        self.record_sent(
            itt,
            SentKind::Tmf {
                function: tmf.function,
                lun: tmf.lun,
                referenced_itt: tmf.referenced_itt,
                cmd_sn: self.cmd_sn,
            },
        );
        self.outstanding.insert(
            itt,
            Task {
                lun,
                kind: TaskKind::Tmf,
            },
        );
        Ok(itt)
    }

    /// Reads PDUs until `itt` is answered. Answers to other tasks read on
    /// the way are kept for their own `wait`.
    pub fn wait(&mut self, itt: Itt, timeout: Duration) -> Result<Response, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(response) = self.finished.remove(&itt) {
                return Ok(response);
            }
            if !self.outstanding.contains_key(&itt) {
                return Err(Error::Protocol(format!(
                    "no task with ITT {itt} is outstanding (never sent, or already waited for)"
                )));
            }
            match self.receive(deadline)? {
                Some(pdu) => self.handle(pdu)?,
                None => {
                    return Err(Error::Timeout {
                        waiting_for: format!("the response to ITT {itt}"),
                        after: timeout,
                    });
                }
            }
        }
    }

    /// Handles whatever the target has sent already, without waiting, and
    /// returns `itt`'s response if it is there.
    pub fn poll(&mut self, itt: Itt) -> Result<Option<Response>, Error> {
        while let Some(pdu) = self.receive(Instant::now())? {
            self.handle(pdu)?;
        }
        Ok(self.finished.remove(&itt))
    }

    pub fn wait_scsi(&mut self, itt: Itt, timeout: Duration) -> Result<ScsiResponse, Error> {
        match self.wait(itt, timeout)? {
            Response::Scsi(response) => Ok(response),
            other => Err(unexpected_response("a SCSI response", other)),
        }
    }

    pub fn wait_tmf(&mut self, itt: Itt, timeout: Duration) -> Result<TmfResponse, Error> {
        match self.wait(itt, timeout)? {
            Response::Tmf(response) => Ok(response),
            other => Err(unexpected_response("a task management response", other)),
        }
    }

    /// Submits and waits; any status is returned, not only GOOD.
    pub fn execute(&mut self, command: Command) -> Result<ScsiResponse, Error> {
        let itt = self.submit(command)?;
        self.wait_scsi(itt, self.timeout)
    }

    /// Submits and waits for the TMF's response code.
    pub fn task_management(&mut self, tmf: Tmf) -> Result<u8, Error> {
        let itt = self.submit_tmf(tmf)?;
        Ok(self.wait_tmf(itt, self.timeout)?.response)
    }

    pub fn test_unit_ready(&mut self, lun: u16) -> Result<ScsiResponse, Error> {
        self.execute(Command::test_unit_ready(lun))
    }

    /// The last LBA and the block size.
    pub fn read_capacity10(&mut self, lun: u16) -> Result<(u32, u32), Error> {
        let response = good(
            "READ CAPACITY(10)",
            self.execute(Command::read_capacity10(lun))?,
        )?;
        match response.data.get(..8) {
            Some(d) => Ok((
                u32::from_be_bytes([d[0], d[1], d[2], d[3]]),
                u32::from_be_bytes([d[4], d[5], d[6], d[7]]),
            )),
            None => Err(Error::Protocol(format!(
                "READ CAPACITY(10) returned {} bytes, not 8",
                response.data.len()
            ))),
        }
    }

    pub fn read10(
        &mut self,
        lun: u16,
        lba: u32,
        blocks: u16,
        block_size: u32,
    ) -> Result<Vec<u8>, Error> {
        let command = Command::read10(lun, lba, blocks, block_size);
        Ok(good("READ(10)", self.execute(command)?)?.data)
    }

    pub fn write10(&mut self, lun: u16, lba: u32, blocks: u16, data: Vec<u8>) -> Result<(), Error> {
        good(
            "WRITE(10)",
            self.execute(Command::write10(lun, lba, blocks, data))?,
        )?;
        Ok(())
    }

    /// Closes the session with a Logout Request and waits for its answer.
    /// Responses to other tasks that arrive first are kept.
    pub fn logout(&mut self) -> Result<(), Error> {
        let itt = self.allocate_itt(None)?;
        let request = pdu::logout_pdu(itt.0, CID, self.cmd_sn, self.exp_stat_sn);
        self.send(&request)?;
        self.record_sent(itt, SentKind::Logout);
        self.outstanding.insert(
            itt,
            Task {
                lun: [0; 8],
                kind: TaskKind::Logout,
            },
        );
        let result = self.wait(itt, self.timeout);
        if let Some(stream) = self.stream.take() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        match result? {
            Response::Logout { response: 0, .. } => Ok(()),
            other => Err(unexpected_response("a successful logout", other)),
        }
    }

    /// Drops the connection as a crashed initiator would: no logout, with
    /// whatever is outstanding left to the target. Returns the connection's
    /// local address (None when it was not connected).
    pub fn disconnect(&mut self) -> Option<std::net::SocketAddr> {
        let stream = self.stream.take()?;
        let local = stream.local_addr().ok();
        let _ = stream.shutdown(Shutdown::Both);
        self.exchanges
            .push(Exchange::Disconnected { at: Instant::now() });
        local
    }

    fn send_nop_out(&mut self) -> Result<Itt, Error> {
        let itt = self.allocate_itt(None)?;
        let mut ping = Pdu::new(opcode::NOP_OUT, true);
        ping.bhs[1] = 0x80;
        ping.bhs[16..20].copy_from_slice(&itt.0.to_be_bytes());
        ping.bhs[20..24].copy_from_slice(&RESERVED_TAG.to_be_bytes());
        ping.bhs[24..28].copy_from_slice(&self.cmd_sn.to_be_bytes());
        ping.bhs[28..32].copy_from_slice(&self.exp_stat_sn.to_be_bytes());
        self.send(&ping)?;
        self.record_sent(itt, SentKind::NopOut { ttt: RESERVED_TAG });
        self.outstanding.insert(
            itt,
            Task {
                lun: [0; 8],
                kind: TaskKind::Nop,
            },
        );
        Ok(itt)
    }

    fn allocate_itt(&mut self, chosen: Option<Itt>) -> Result<Itt, Error> {
        if let Some(itt) = chosen {
            if itt.0 == RESERVED_TAG || self.outstanding.contains_key(&itt) {
                return Err(Error::Protocol(format!(
                    "ITT {itt} is reserved or already outstanding"
                )));
            }
            return Ok(itt);
        }
        loop {
            let itt = Itt(self.next_itt);
            self.next_itt = self.next_itt.wrapping_add(1);
            if itt.0 != RESERVED_TAG
                && itt.0 != 0
                && !self.outstanding.contains_key(&itt)
                && !self.finished.contains_key(&itt)
            {
                return Ok(itt);
            }
        }
    }

    /// Waits while the target's MaxCmdSN forbids another command.
    fn make_room_in_command_window(&mut self) -> Result<(), Error> {
        let deadline = Instant::now() + self.timeout;
        while !sn_at_most(self.cmd_sn, self.max_cmd_sn) {
            match self.receive(deadline)? {
                Some(pdu) => self.handle(pdu)?,
                None => {
                    return Err(Error::Timeout {
                        waiting_for: format!(
                            "the target to open its command window (CmdSN {}, MaxCmdSN {})",
                            self.cmd_sn, self.max_cmd_sn
                        ),
                        after: self.timeout,
                    });
                }
            }
        }
        Ok(())
    }

    /// Data-Out PDUs for `[from, to)` of a write, as one sequence: DataSN
    /// from 0, F on the last, each no larger than the target accepts.
    fn send_data_out(&mut self, itt: Itt, ttt: u32, from: u32, to: u32) -> Result<(), Error> {
        let max_segment = self.negotiated.target_max_recv_data_segment_length.max(1);
        let Some(Task {
            lun,
            kind: TaskKind::Scsi { write_data, .. },
        }) = self.outstanding.get(&itt)
        else {
            return Err(Error::Protocol(format!(
                "asked for write data of ITT {itt}, which is not an outstanding command"
            )));
        };
        if to as usize > write_data.len() || from > to {
            return Err(Error::Protocol(format!(
                "asked for bytes {from}..{to} of ITT {itt}, which writes {} bytes",
                write_data.len()
            )));
        }
        let lun = *lun;
        let mut pdus = Vec::new();
        let mut offset = from;
        let mut data_sn = 0;
        while offset < to {
            let end = to.min(offset.saturating_add(max_segment));
            pdus.push(DataOutPdu {
                lun,
                itt: itt.0,
                ttt,
                exp_stat_sn: self.exp_stat_sn,
                data_sn,
                buffer_offset: offset,
                final_: end == to,
                data: write_data[offset as usize..end as usize].to_vec(),
            });
            data_sn += 1;
            offset = end;
        }
        for data_out in pdus {
            let kind = SentKind::DataOut {
                offset: data_out.buffer_offset,
                length: data_out.data.len() as u32,
                final_: data_out.final_,
            };
            self.send(&data_out.to_pdu())?;
            self.record_sent(itt, kind);
        }
        Ok(())
    }

    fn send(&mut self, pdu: &Pdu) -> Result<(), Error> {
        let stream = self.stream.as_mut().ok_or(Error::SessionEnded)?;
        pdu.write_to(stream)
    }

    /// The next whole PDU, reading until `deadline` (not at all if it has
    /// passed); `None` if none arrived in time.
    fn receive(&mut self, deadline: Instant) -> Result<Option<Pdu>, Error> {
        loop {
            if let Decoded::Pdu { pdu, consumed } = Pdu::decode(&self.received) {
                self.received.drain(..consumed);
                return Ok(Some(pdu));
            }
            let stream = self.stream.as_mut().ok_or(Error::SessionEnded)?;
            let now = Instant::now();
            let mut chunk = vec![0; READ_CHUNK];
            let read = if deadline <= now {
                stream
                    .set_nonblocking(true)
                    .map_err(|e| Error::io("polling the socket", e))?;
                let read = stream.read(&mut chunk);
                stream
                    .set_nonblocking(false)
                    .map_err(|e| Error::io("polling the socket", e))?;
                read
            } else {
                stream
                    .set_read_timeout(Some(deadline - now))
                    .map_err(|e| Error::io("setting the read timeout", e))?;
                stream.read(&mut chunk)
            };
            match read {
                Ok(0) => {
                    return Err(Error::ConnectionClosed {
                        context: format!(
                            "end of stream with {} tasks outstanding",
                            self.outstanding.len()
                        ),
                    });
                }
                Ok(n) => self.received.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io("reading from the target", e)),
            }
        }
    }

    fn track_sequence_numbers(&mut self, pdu: &Pdu) {
        if pdu.carries_status() && sn_at_most(self.exp_stat_sn, pdu.stat_sn()) {
            self.exp_stat_sn = pdu.stat_sn().wrapping_add(1);
        }
        // Ignored when MaxCmdSN < ExpCmdSN - 1 (RFC 7143 §4.2.2.1).
        if sn_at_most(pdu.exp_cmd_sn(), pdu.max_cmd_sn().wrapping_add(1))
            && sn_at_most(self.max_cmd_sn, pdu.max_cmd_sn())
        {
            self.max_cmd_sn = pdu.max_cmd_sn();
        }
    }

    /// Records a full-feature-phase PDU and does what it asks.
    fn handle(&mut self, pdu: Pdu) -> Result<(), Error> {
        self.track_sequence_numbers(&pdu);
        let itt = Itt(pdu.itt());
        let parsed = pdu.parse_target()?;
        let kind = match &parsed {
            TargetPdu::ScsiResponse {
                response, status, ..
            } => ReceivedKind::ScsiResponse {
                status: *status,
                response: *response,
            },
            TargetPdu::DataIn {
                buffer_offset,
                status,
                data,
                ..
            } => ReceivedKind::DataIn {
                offset: *buffer_offset,
                length: data.len() as u32,
                status: *status,
            },
            TargetPdu::R2t {
                buffer_offset,
                desired_length,
                ..
            } => ReceivedKind::R2t {
                offset: *buffer_offset,
                length: *desired_length,
            },
            TargetPdu::TaskManagementResponse { response } => ReceivedKind::TmfResponse {
                response: *response,
            },
            TargetPdu::LogoutResponse { response } => ReceivedKind::Logout {
                response: *response,
            },
            TargetPdu::NopIn { ttt } => ReceivedKind::NopIn { ttt: *ttt },
            TargetPdu::Reject { reason, .. } => ReceivedKind::Reject { reason: *reason },
            TargetPdu::AsyncMessage { event } => ReceivedKind::AsyncMessage { event: *event },
            TargetPdu::LoginResponse { .. } | TargetPdu::Other => ReceivedKind::Other {
                opcode: pdu.opcode(),
            },
        };
        self.record_received(itt, kind);

        match parsed {
            TargetPdu::DataIn {
                buffer_offset,
                status,
                residual,
                data,
                ..
            } => {
                let Some(Task {
                    kind:
                        TaskKind::Scsi {
                            received,
                            expected_length,
                            ..
                        },
                    ..
                }) = self.outstanding.get_mut(&itt)
                else {
                    return Err(unknown_task("Data-In", itt));
                };
                let end = buffer_offset as usize + data.len();
                if end > *expected_length as usize {
                    return Err(Error::Protocol(format!(
                        "Data-In for ITT {itt} ends at byte {end}, beyond the {expected_length} expected"
                    )));
                }
                if received.len() < end {
                    received.resize(end, 0);
                }
                received[buffer_offset as usize..end].copy_from_slice(&data);
                if let Some(status) = status {
                    self.finish_scsi(itt, 0, status, Vec::new(), residual)?;
                }
            }
            TargetPdu::ScsiResponse {
                response,
                status,
                residual,
                sense,
            } => self.finish_scsi(itt, response, status, sense, residual)?,
            TargetPdu::R2t {
                ttt,
                buffer_offset,
                desired_length,
                ..
            } => {
                let end = buffer_offset.checked_add(desired_length).ok_or_else(|| {
                    Error::Protocol(format!("R2T for ITT {itt} overflows the buffer offset"))
                })?;
                match self.withheld.get_mut(&itt) {
                    Some(held) => held.push((ttt, buffer_offset, end)),
                    None => self.send_data_out(itt, ttt, buffer_offset, end)?,
                }
            }
            TargetPdu::TaskManagementResponse { response } => {
                self.finish(itt, "task management response", |kind| {
                    matches!(kind, TaskKind::Tmf)
                        .then_some(Response::Tmf(TmfResponse { itt, response }))
                })?;
            }
            TargetPdu::LogoutResponse { response } => {
                self.finish(itt, "logout response", |kind| {
                    matches!(kind, TaskKind::Logout).then_some(Response::Logout { itt, response })
                })?;
            }
            TargetPdu::NopIn { ttt } => {
                if ttt != RESERVED_TAG {
                    let reply = pdu::nop_out_reply(&pdu, self.cmd_sn, self.exp_stat_sn);
                    self.send(&reply)?;
                    self.record_sent(Itt(RESERVED_TAG), SentKind::NopOut { ttt });
                }
                if itt.0 != RESERVED_TAG {
                    self.finish(itt, "NOP-In", |kind| {
                        matches!(kind, TaskKind::Nop).then_some(Response::NopIn { itt })
                    })?;
                }
            }
            TargetPdu::Reject {
                reason,
                rejected_itt,
            } => match rejected_itt.map(Itt) {
                Some(rejected) if self.outstanding.remove(&rejected).is_some() => {
                    self.finished.insert(
                        rejected,
                        Response::Rejected {
                            itt: rejected,
                            reason,
                        },
                    );
                }
                _ => {
                    return Err(Error::Protocol(format!(
                        "target rejected a PDU that is not an outstanding task (reason {reason:#04x})"
                    )));
                }
            },
            TargetPdu::AsyncMessage { .. } => {}
            TargetPdu::LoginResponse { .. } | TargetPdu::Other => {
                return Err(Error::Protocol(format!(
                    "unexpected opcode {:#04x} (ITT {itt}) in full feature phase",
                    pdu.opcode()
                )));
            }
        }
        Ok(())
    }

    fn finish_scsi(
        &mut self,
        itt: Itt,
        response: u8,
        status: u8,
        sense: Vec<u8>,
        residual: Residual,
    ) -> Result<(), Error> {
        self.finish(itt, "SCSI response", |kind| match kind {
            TaskKind::Scsi { received, .. } => Some(Response::Scsi(ScsiResponse {
                itt,
                response,
                status,
                data: received,
                sense,
                residual,
            })),
            _ => None,
        })
    }

    fn finish(
        &mut self,
        itt: Itt,
        what: &str,
        response: impl FnOnce(TaskKind) -> Option<Response>,
    ) -> Result<(), Error> {
        let task = self
            .outstanding
            .remove(&itt)
            .ok_or_else(|| unknown_task(what, itt))?;
        let response = response(task.kind).ok_or_else(|| {
            Error::Protocol(format!(
                "{what} for ITT {itt}, which is another kind of task"
            ))
        })?;
        self.finished.insert(itt, response);
        Ok(())
    }

    fn record_sent(&mut self, itt: Itt, kind: SentKind) {
        self.exchanges.push(Exchange::Sent {
            itt,
            kind,
            at: Instant::now(),
        });
    }

    fn record_received(&mut self, itt: Itt, kind: ReceivedKind) {
        self.exchanges.push(Exchange::Received {
            itt,
            kind,
            at: Instant::now(),
        });
    }
}

struct LoginAnswer {
    transit: bool,
    next_stage: u8,
    tsih: u16,
    text: Vec<(String, String)>,
}

impl std::fmt::Debug for LoginAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "transit {} next stage {} keys {:?}",
            self.transit, self.next_stage, self.text
        )
    }
}

fn unknown_task(what: &str, itt: Itt) -> Error {
    Error::Protocol(format!("{what} for ITT {itt}, which is not outstanding"))
}

fn unexpected_response(expected: &str, got: Response) -> Error {
    Error::Protocol(format!("expected {expected}, got {got:?}"))
}

/// The response if its status is GOOD, else an error naming the command.
fn good(command: &str, response: ScsiResponse) -> Result<ScsiResponse, Error> {
    if response.response == 0 && response.status == scsi_status::GOOD {
        Ok(response)
    } else {
        Err(Error::Protocol(format!(
            "{command} (ITT {}) ended with response {:#04x} status {:#04x} sense {:02x?}",
            response.itt, response.response, response.status, response.sense
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_number_comparison_wraps() {
        assert!(sn_at_most(1, 1));
        assert!(sn_at_most(1, 2));
        assert!(!sn_at_most(2, 1));
        assert!(sn_at_most(u32::MAX, 0));
        assert!(!sn_at_most(0, u32::MAX));
    }

    #[test]
    fn isids_are_random_format_and_unique() {
        let a = unique_isid();
        let b = unique_isid();
        assert_eq!(a[0] & 0xc0, 0x80);
        assert_ne!(a, b);
    }

    #[test]
    fn rw10_cdb_is_big_endian() {
        assert_eq!(
            rw10_cdb(0x28, 0x0102_0304, 0x0506),
            [0x28, 0, 1, 2, 3, 4, 0, 5, 6, 0]
        );
        let write = Command::write10(2, 8, 1, vec![0; 512]).with_attr(TaskAttr::Ordered);
        assert_eq!(write.cdb[0], 0x2a);
        assert_eq!(write.attr as u8, 2);
        assert_eq!(TaskAttr::HeadOfQueue as u8, 3);
        assert_eq!(TmfFunction::ClearTaskSet as u8, 4);
        assert_eq!(TmfFunction::LogicalUnitReset as u8, 5);
        let codes: Vec<u8> = TmfFunction::ALL.iter().map(|f| f.code()).collect();
        assert_eq!(codes, [1, 2, 3, 4, 5, 6, 7, 8, 14]);
    }
}
