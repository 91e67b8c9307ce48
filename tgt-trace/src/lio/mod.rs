//! The kernel's SCSI target, LIO (Linux `drivers/target/`): where its
//! structures are in the running kernel (from BTF), and its probes' records
//! turned into the same events as tgtd's (see `tgt-trace-ebpf/src/lio.rs`
//! for what each probe reads, and the README's "Kernel target (LIO)").

pub mod btf;

use std::{
    collections::{BTreeMap, HashMap},
    hash::{BuildHasher, RandomState},
};

use tgt_trace_common::{self as abi, kind, lio, tmf};

use crate::{
    decode::{DecodeError, decode},
    event::Event,
};
pub use btf::{Btf, BtfError};

/// Where the kernel keeps its BTF: the kernel's own, and one file per module.
pub const BTF_DIR: &str = "/sys/kernel/btf";
/// The modules whose types the probes read.
pub const MODULES: [&str; 2] = ["target_core_mod", "iscsi_target_mod"];

/// Why the kernel target cannot be traced here.
#[derive(Debug, thiserror::Error)]
pub enum LioError {
    #[error(
        "this kernel has no BTF ({BTF_DIR}/vmlinux: {0}); tracing LIO needs a kernel built with \
         CONFIG_DEBUG_INFO_BTF=y and CONFIG_DEBUG_INFO_BTF_MODULES=y (Debian's and most \
         distributions' are)"
    )]
    NoKernelBtf(#[source] std::io::Error),
    #[error(
        "LIO's module {module} is not loaded, or has no BTF ({path}: {source}); set up a target \
         first (targetcli, or configfs under /sys/kernel/config/target), or load it with \
         `modprobe {module}`"
    )]
    NotLoaded {
        module: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{0}; this kernel's LIO is not the one tgt-trace knows (Linux 5.10 to 6.x): report it \
         with `uname -r`"
    )]
    Layout(#[from] BtfError),
    #[error(
        "{strukt}.{member} is {size} bytes in this kernel, tgt-trace reads {expected}: its LIO \
         differs from the one tgt-trace knows; report it with `uname -r`"
    )]
    Size {
        strukt: &'static str,
        member: &'static str,
        size: u32,
        expected: u32,
    },
}

/// The probes' layout, and each offset by `struct.member` for the trace's
/// header.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub layout: lio::Layout,
    pub offsets: BTreeMap<String, u32>,
}

/// The offsets the probes read, from the running kernel's BTF.
pub fn layout_from_sysfs() -> Result<Resolved, LioError> {
    let base = std::fs::read(format!("{BTF_DIR}/vmlinux")).map_err(LioError::NoKernelBtf)?;
    let base = Btf::parse(&base, "vmlinux")?;
    let mut modules = Vec::new();
    for module in MODULES {
        let path = format!("{BTF_DIR}/{module}");
        let data = std::fs::read(&path).map_err(|source| LioError::NotLoaded {
            module,
            path: path.clone(),
            source,
        })?;
        modules.push(base.with_module(&data, module)?);
    }
    layout(&modules)
}

/// Each field the probes read, with the size they read it as (`None`: an
/// embedded struct or an array, whose offset alone is used).
const FIELDS: [(&str, &str, Option<u32>); 22] = [
    ("se_cmd", "tag", Some(8)),
    ("se_cmd", "orig_fe_lun", Some(8)),
    ("se_cmd", "se_sess", Some(8)),
    ("se_cmd", "se_tmr_req", Some(8)),
    ("se_cmd", "t_task_cdb", Some(8)),
    ("se_cmd", "scsi_status", Some(1)),
    ("se_cmd", "transport_state", Some(4)),
    ("se_cmd", "se_cmd_flags", Some(4)),
    ("se_cmd", "sam_task_attr", Some(4)),
    ("se_cmd", "work", None),
    ("se_tmr_req", "function", Some(1)),
    ("se_tmr_req", "response", Some(1)),
    ("se_tmr_req", "ref_task_tag", Some(8)),
    ("se_node_acl", "initiatorname", None),
    ("iscsit_cmd", "se_cmd", None),
    ("iscsit_conn", "sess", Some(8)),
    ("iscsit_session", "se_sess", Some(8)),
    ("iscsit_conn", "conn_state", Some(1)),
    ("iscsit_conn", "sock", Some(8)),
    ("socket", "sk", Some(8)),
    ("sock", "__sk_common", None),
    ("sock_common", "skc_state", Some(1)),
];

/// The probes' layout from LIO's modules' types (each on the kernel's).
pub fn layout(modules: &[Btf]) -> Result<Resolved, LioError> {
    let mut offsets = [0u32; 22];
    let mut by_name = BTreeMap::new();
    for (slot, (strukt, member, expected)) in offsets.iter_mut().zip(FIELDS) {
        let mut found = Err(BtfError::NoStruct(strukt.to_owned()));
        for btf in modules {
            found = btf.member(strukt, member);
            if !matches!(found, Err(BtfError::NoStruct(_))) {
                break;
            }
        }
        let (offset, size) = found?;
        if let Some(expected) = expected
            && size != expected
        {
            return Err(LioError::Size {
                strukt,
                member,
                size,
                expected,
            });
        }
        *slot = offset;
        by_name.insert(format!("{strukt}.{member}"), offset);
    }
    let [
        se_cmd_tag,
        se_cmd_orig_fe_lun,
        se_cmd_se_sess,
        se_cmd_se_tmr_req,
        se_cmd_t_task_cdb,
        se_cmd_scsi_status,
        se_cmd_transport_state,
        se_cmd_se_cmd_flags,
        se_cmd_sam_task_attr,
        se_cmd_work,
        se_tmr_req_function,
        se_tmr_req_response,
        se_tmr_req_ref_task_tag,
        se_node_acl_initiatorname,
        iscsit_cmd_se_cmd,
        iscsit_conn_sess,
        iscsit_session_se_sess,
        iscsit_conn_conn_state,
        iscsit_conn_sock,
        socket_sk,
        sock_sk_common,
        sock_common_skc_state,
    ] = offsets;
    let layout = lio::Layout {
        se_cmd_tag,
        se_cmd_orig_fe_lun,
        se_cmd_se_sess,
        se_cmd_se_tmr_req,
        se_cmd_t_task_cdb,
        se_cmd_scsi_status,
        se_cmd_transport_state,
        se_cmd_se_cmd_flags,
        se_cmd_sam_task_attr,
        se_cmd_work,
        se_tmr_req_function,
        se_tmr_req_response,
        se_tmr_req_ref_task_tag,
        se_node_acl_initiatorname,
        iscsit_cmd_se_cmd,
        iscsit_conn_sess,
        iscsit_session_se_sess,
        iscsit_conn_conn_state,
        iscsit_conn_sock,
        socket_sk,
        sock_skc_state: sock_sk_common + sock_common_skc_state,
        _pad: 0,
    };
    Ok(Resolved {
        layout,
        offsets: by_name,
    })
}

/// The kernel release (`uname -r`), which names what was traced.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// LIO's TMF function (`enum tcm_tmreq_table`, the iSCSI codes 1..7) as
/// SAM numbers it, which is how events carry functions.
pub fn sam_function(lio_function: u8) -> u8 {
    match lio_function {
        1 => tmf::ABORT_TASK,
        2 => tmf::ABORT_TASK_SET,
        3 => tmf::CLEAR_ACA,
        4 => tmf::CLEAR_TASK_SET,
        5 => tmf::LOGICAL_UNIT_RESET,
        _ => 0,
    }
}

/// The core's response (`enum tcm_tmrsp_table`) in the convention of
/// `tmf_response.result` (tgtd's `mreq->result`): 0, -EEXIST for no task,
/// -EINVAL for not supported, -ENODEV for no LUN, -EIO for failed or
/// rejected.
pub fn response_result(code: u8) -> i32 {
    match code {
        lio::rsp::FUNCTION_COMPLETE => 0,
        lio::rsp::TASK_DOES_NOT_EXIST => -17,
        lio::rsp::NOT_SUPPORTED => -22,
        lio::rsp::LUN_DOES_NOT_EXIST => -19,
        _ => -5,
    }
}

/// A SCSI status as tgt keeps results: TASK ABORTED (0x40) becomes tgt's
/// 0x20 ([`abi::TASK_ABORTED`]); the others are the same numbers.
pub fn result_of_status(status: i32) -> i32 {
    if status == 0x40 {
        abi::TASK_ABORTED
    } else {
        status
    }
}

/// A LUN number in SAM's 8-byte form (peripheral addressing below 256,
/// flat space up to 16383), as the wire carries it.
fn sam_lun(lun: u64) -> [u8; 8] {
    let mut bytes = [0u8; 8];
    if lun < 256 {
        bytes[1] = lun as u8;
    } else {
        bytes[0] = 0x40 | ((lun >> 8) & 0x3f) as u8;
        bytes[1] = lun as u8;
    }
    bytes
}

/// Kernel pointers never leave the tracer: sessions get small numbers in
/// the order they are seen, and commands, TMFs and connections an opaque
/// 64-bit id (a hash keyed afresh for every trace).
#[derive(Debug, Default)]
pub struct Ids {
    key: RandomState,
    sessions: HashMap<u64, u64>,
    next_session: u64,
}

impl Ids {
    fn opaque(&self, pointer: u64) -> u64 {
        if pointer == 0 {
            0
        } else {
            // Never 0, which events use for "none".
            self.key.hash_one(pointer) | 1
        }
    }

    fn session(&mut self, pointer: u64) -> u64 {
        if pointer == 0 {
            return 0;
        }
        let next = &mut self.next_session;
        *self.sessions.entry(pointer).or_insert_with(|| {
            *next += 1;
            *next
        })
    }

    /// Decodes one LIO record into an event.
    pub fn decode(&mut self, bytes: &[u8]) -> Result<Event, DecodeError> {
        let Some(&record_kind) = bytes.first() else {
            return Err(DecodeError::Empty);
        };
        let size = if record_kind == kind::NEXUS_CREATE {
            abi::NEXUS_EVENT_SIZE
        } else {
            abi::EVENT_SIZE
        };
        if bytes.len() < size {
            return Err(DecodeError::Short {
                kind: record_kind,
                len: bytes.len(),
                expected: size,
            });
        }
        let mut buffer = bytes[..size].to_vec();
        // SAFETY: the length was checked above; integers and byte arrays
        // only, so every bit pattern is a valid Event.
        let mut raw: abi::Event = unsafe { buffer.as_ptr().cast::<abi::Event>().read_unaligned() };
        // One target: the kernel. Its threads are not what names a command.
        raw.pid = 0;
        raw.tid = -1;
        let destroyed = record_kind == kind::NEXUS_DESTROY;
        let session = raw.itn_id;
        raw.itn_id = self.session(session);
        if destroyed {
            self.sessions.remove(&session);
        }
        raw.cookie = self.opaque(raw.cookie);
        raw.tmf_mid = self.opaque(raw.tmf_mid);
        let lun = u64::from_le_bytes(raw.lun);
        match record_kind {
            lio::TMF_EXECUTE => {
                return Ok(Event::TmfExecute {
                    ts_ns: raw.ts_ns,
                    pid: 0,
                    mid: raw.cookie,
                    function: sam_function(raw.function),
                });
            }
            lio::ABORT_WAIT => {
                let state = raw.value as u32;
                let flags = raw.aux as u32;
                return Ok(Event::AbortWait {
                    ts_ns: raw.ts_ns,
                    pid: 0,
                    mid: raw.cookie,
                    itn_id: raw.itn_id,
                    tag: raw.tag,
                    lun,
                    opcode: raw.opcode,
                    cmd: raw.tmf_mid,
                    tas: state & lio::CMD_T_TAS != 0,
                    is_tmf: flags & lio::SCF_SCSI_TMR_CDB != 0,
                });
            }
            lio::ABORT_WAITED => {
                return Ok(Event::AbortWaited {
                    ts_ns: raw.ts_ns,
                    pid: 0,
                    mid: raw.cookie,
                    cmd: raw.tmf_mid,
                });
            }
            kind::CMD_QUEUE | kind::TMF_REQUEST => {
                raw.lun = sam_lun(lun);
            }
            // Built for a connection the initiator has closed (its FIN is
            // in: CLOSE_WAIT), or that LIO is tearing down: the initiator
            // never reads it. As tgtd's response freed on a closed
            // connection.
            kind::TMF_SENT
                if raw.attribute != lio::TARG_CONN_STATE_LOGGED_IN
                    || raw.opcode != lio::TCP_ESTABLISHED =>
            {
                return Ok(Event::TmfResponse {
                    ts_ns: raw.ts_ns,
                    pid: 0,
                    mid: raw.cookie,
                    function: sam_function(raw.function),
                    result: match raw.value as u8 {
                        abi::iscsi_rsp::FUNCTION_COMPLETE => 0,
                        abi::iscsi_rsp::TASK_DOES_NOT_EXIST => -17,
                        abi::iscsi_rsp::NOT_SUPPORTED => -22,
                        _ => -5,
                    },
                    connection_closed: Some(true),
                });
            }
            _ => {}
        }
        match record_kind {
            kind::CMD_RESULT => raw.value = result_of_status(raw.value),
            kind::TMF_REQUEST => raw.function = sam_function(raw.function),
            kind::TMF_RESPONSE => {
                raw.function = sam_function(raw.function);
                raw.value = response_result(raw.value as u8);
            }
            // TMF_RECEIVED and TMF_SENT carry iSCSI function codes, which
            // LIO's core numbers the same.
            _ => {}
        }
        // SAFETY: `buffer` is `size` bytes, at least size_of::<Event>().
        unsafe {
            buffer
                .as_mut_ptr()
                .cast::<abi::Event>()
                .write_unaligned(raw)
        };
        let mut event = decode(&buffer)?;
        if let Event::NexusCreate {
            initiator, info, ..
        } = &mut event
        {
            // LIO's probe copies the initiator's name alone
            // (`se_node_acl->initiatorname`).
            *initiator = (!info.is_empty()).then(|| info.clone());
        }
        Ok(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: u8, f: impl FnOnce(&mut abi::Event)) -> Vec<u8> {
        let mut raw = abi::Event {
            kind,
            pid: 1234,
            ts_ns: 5,
            ..abi::Event::default()
        };
        f(&mut raw);
        let mut bytes = vec![0u8; abi::EVENT_SIZE];
        // SAFETY: the buffer is one Event long.
        unsafe { bytes.as_mut_ptr().cast::<abi::Event>().write_unaligned(raw) };
        bytes
    }

    #[test]
    fn kernel_pointers_become_ids_and_lio_codes_become_the_events_conventions() {
        let mut ids = Ids::default();
        let sess = 0xffff_8880_1234_5000;
        let cmd = 0xffff_8880_dead_b000;
        let queued = ids
            .decode(&record(kind::CMD_QUEUE, |r| {
                r.itn_id = sess;
                r.cookie = cmd;
                r.tag = 0x10;
                r.lun = 1u64.to_le_bytes();
            }))
            .expect("the test's input");
        let Event::CmdQueue {
            itn_id,
            cmd: id,
            lun,
            pid,
            ..
        } = queued
        else {
            panic!("{queued:?}");
        };
        assert_eq!((itn_id, lun, pid), (1, 1, 0));
        assert_ne!(id, cmd);
        let done = ids
            .decode(&record(kind::CMD_RESULT, |r| {
                r.itn_id = sess;
                r.cookie = cmd;
                r.value = 0x40;
            }))
            .expect("the test's input");
        assert!(
            matches!(done, Event::CmdResult { itn_id: 1, cmd: c, result: 0x20, .. } if c == id),
            "{done:?}"
        );
        let response = ids
            .decode(&record(kind::TMF_RESPONSE, |r| {
                r.value = i32::from(lio::rsp::NOT_SUPPORTED);
                r.function = 4;
            }))
            .expect("the test's input");
        assert!(
            matches!(
                response,
                Event::TmfResponse {
                    result: -22,
                    function: tmf::CLEAR_TASK_SET,
                    ..
                }
            ),
            "{response:?}"
        );
        // A second session gets the next number; a destroyed one's pointer
        // is a new session when reused.
        let gone = ids
            .decode(&record(kind::NEXUS_DESTROY, |r| r.itn_id = sess))
            .expect("the test's input");
        assert!(matches!(gone, Event::NexusDestroy { itn_id: 1, .. }));
        let again = ids
            .decode(&record(lio::ABORT_WAIT, |r| {
                r.itn_id = sess;
                r.value = lio::CMD_T_TAS as i32;
            }))
            .expect("the test's input");
        assert!(
            matches!(
                again,
                Event::AbortWait {
                    itn_id: 2,
                    tas: true,
                    is_tmf: false,
                    ..
                }
            ),
            "{again:?}"
        );
    }
}
